//! The client's side of the login exchange (protocol doc §3.2-§3.5): the `init` it POSTs, reading
//! the server's form or success document, filling the form, and the `auth-reply` it sends back.
//!
//! It follows openconnect's rules, so that one client logs in to the gateway (one round trip:
//! username and password in one form) and to ocserv (two round trips: a username form, then a
//! password form) alike: a text input whose name starts with `user` or `uname` gets the username,
//! the first password input gets the password, hidden inputs go back unchanged, and a `group_list`
//! select becomes `<group-select>`.

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

use crate::auth_xml::xml_escape;

/// Longest text value kept from a server document, in bytes.
const MAX_TEXT: usize = 4096;
/// Most inputs kept from one form.
const MAX_INPUTS: usize = 32;

/// What kind of input a form field is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InputKind {
    /// `type="text"`: a prompt (the username when its name starts with `user`/`uname`).
    Text,
    /// `type="password"`.
    Password,
    /// `type="hidden"`: sent back with its value.
    Hidden,
    /// `<select>`: the options' `value`s in order.
    Select(Vec<String>),
    /// Anything else (`submit`, `reset`, ...): ignored.
    Other,
}

/// One input of a login form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// Its kind.
    pub kind: InputKind,
    /// The `name` attribute.
    pub name: String,
    /// The `value` attribute (hidden inputs), or empty.
    pub value: String,
}

/// A form the server wants filled in (`<auth id="...">` other than `success`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoginForm {
    /// The `<auth id>`.
    pub auth_id: String,
    /// Where the answer goes (`<form action>`; `/` when absent).
    pub action: String,
    /// The inputs in document order.
    pub inputs: Vec<Input>,
    /// The `<message>` text, if any.
    pub message: Option<String>,
    /// The `<error>` text, if any (a wrong password, a session limit, ...).
    pub error: Option<String>,
}

/// What the server answered to an auth POST.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerMessage {
    /// Fill in this form and POST it to its action.
    Form(LoginForm),
    /// Logged in. The cookie is in `Set-Cookie: webvpn=` and/or here.
    Success {
        /// `<session-token>`, if the server sent one.
        session_token: Option<String>,
    },
}

/// The form filled in: what to put in the `auth-reply`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FilledForm {
    /// `(input name, value)` for `<auth>`, in form order.
    pub fields: Vec<(String, String)>,
    /// `<group-select>` value, if the form had a `group_list`.
    pub group: Option<String>,
}

/// Why a server document could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthFormError {
    /// Not well-formed XML.
    #[error("server auth document is not XML: {0}")]
    Xml(String),
    /// No `<auth>` element (openconnect: "XML response has no auth node").
    #[error("server auth document has no <auth> element")]
    NoAuth,
    /// The form has `method` other than `post`.
    #[error("login form method {0:?} is not post")]
    NotPost(String),
    /// The form asks for something we can't answer (an unknown text prompt, a second password).
    #[error("login form asks for {0:?}, which this client can't answer")]
    Unanswerable(String),
    /// A text value or the input list is over its limit.
    #[error("server auth document is over a size limit")]
    TooLarge,
}

fn xml_err(e: impl std::fmt::Display) -> AuthFormError {
    AuthFormError::Xml(e.to_string())
}

fn attr(e: &BytesStart<'_>, name: &str) -> Result<Option<String>, AuthFormError> {
    match e.try_get_attribute(name).map_err(xml_err)? {
        Some(a) => Ok(Some(a.unescape_value().map_err(xml_err)?.into_owned())),
        None => Ok(None),
    }
}

/// Which text we are collecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Capture {
    Message,
    Error,
    Token,
}

/// Parses the body of a `200` answer to an auth POST.
///
/// The root may be `<config-auth>` or a bare `<auth>`; `<auth id="success">` is success, any other
/// id a form. Unknown elements are ignored, as openconnect does.
pub fn parse_server_message(body: &[u8]) -> Result<ServerMessage, AuthFormError> {
    let mut reader = Reader::from_reader(body);
    let mut form = LoginForm {
        action: "/".to_owned(),
        ..LoginForm::default()
    };
    let mut saw_auth = false;
    let mut token: Option<String> = None;
    let mut capture: Option<Capture> = None;
    let mut text = String::new();
    // The select being read: (name, option values).
    let mut select: Option<(String, Vec<String>)> = None;
    loop {
        let event = reader.read_event().map_err(xml_err)?;
        match event {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let empty = matches!(event, Event::Empty(_));
                match e.name().as_ref() {
                    b"auth" if !saw_auth => {
                        saw_auth = true;
                        form.auth_id = attr(e, "id")?.unwrap_or_default();
                    }
                    b"form" => {
                        if let Some(m) = attr(e, "method")? {
                            if !m.eq_ignore_ascii_case("post") {
                                return Err(AuthFormError::NotPost(m));
                            }
                        }
                        if let Some(a) = attr(e, "action")? {
                            form.action = a;
                        }
                    }
                    b"input" => {
                        let kind = match attr(e, "type")?.unwrap_or_default().as_str() {
                            "text" => InputKind::Text,
                            "password" => InputKind::Password,
                            "hidden" => InputKind::Hidden,
                            _ => InputKind::Other,
                        };
                        if form.inputs.len() >= MAX_INPUTS {
                            return Err(AuthFormError::TooLarge);
                        }
                        form.inputs.push(Input {
                            kind,
                            name: attr(e, "name")?.unwrap_or_default(),
                            value: attr(e, "value")?.unwrap_or_default(),
                        });
                    }
                    b"select" if !empty => {
                        select = Some((attr(e, "name")?.unwrap_or_default(), Vec::new()));
                    }
                    b"option" => {
                        if let (Some((_, opts)), Some(v)) = (select.as_mut(), attr(e, "value")?) {
                            opts.push(v);
                        }
                    }
                    b"message" if !empty => capture = Some(Capture::Message),
                    b"error" if !empty => capture = Some(Capture::Error),
                    b"session-token" if !empty => capture = Some(Capture::Token),
                    _ => {}
                }
            }
            Event::End(ref e) => match e.name().as_ref() {
                b"select" => {
                    if let Some((name, opts)) = select.take() {
                        if form.inputs.len() >= MAX_INPUTS {
                            return Err(AuthFormError::TooLarge);
                        }
                        form.inputs.push(Input {
                            kind: InputKind::Select(opts),
                            name,
                            value: String::new(),
                        });
                    }
                }
                b"message" | b"error" | b"session-token" => {
                    let value = std::mem::take(&mut text).trim().to_owned();
                    match capture.take() {
                        Some(Capture::Message) => form.message = Some(value),
                        Some(Capture::Error) => form.error = Some(value),
                        Some(Capture::Token) => token = Some(value),
                        None => {}
                    }
                }
                _ => {}
            },
            Event::Text(t) if capture.is_some() => {
                let s = t.unescape().map_err(xml_err)?;
                if text.len() + s.len() > MAX_TEXT {
                    return Err(AuthFormError::TooLarge);
                }
                text.push_str(&s);
            }
            Event::CData(c) if capture.is_some() => {
                let s = std::str::from_utf8(&c).map_err(xml_err)?;
                if text.len() + s.len() > MAX_TEXT {
                    return Err(AuthFormError::TooLarge);
                }
                text.push_str(s);
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !saw_auth {
        return Err(AuthFormError::NoAuth);
    }
    if form.auth_id == "success" {
        return Ok(ServerMessage::Success {
            session_token: token,
        });
    }
    Ok(ServerMessage::Form(form))
}

impl LoginForm {
    /// Fills the form with `username` and `password` the way openconnect does (module docs). A
    /// `group_list` select takes `group` if it is one of its values, else its first option.
    pub fn fill(
        &self,
        username: &str,
        password: &str,
        group: Option<&str>,
    ) -> Result<FilledForm, AuthFormError> {
        let mut out = FilledForm::default();
        let mut password_used = false;
        for input in &self.inputs {
            let lower = input.name.to_ascii_lowercase();
            match &input.kind {
                InputKind::Text if lower.starts_with("user") || lower.starts_with("uname") => {
                    out.fields.push((input.name.clone(), username.to_owned()));
                }
                InputKind::Text => return Err(AuthFormError::Unanswerable(input.name.clone())),
                InputKind::Password if !password_used => {
                    password_used = true;
                    out.fields.push((input.name.clone(), password.to_owned()));
                }
                InputKind::Password => return Err(AuthFormError::Unanswerable(input.name.clone())),
                InputKind::Hidden => out.fields.push((input.name.clone(), input.value.clone())),
                InputKind::Select(opts) if input.name == "group_list" => {
                    out.group = group
                        .filter(|g| opts.iter().any(|o| o == g))
                        .map(str::to_owned)
                        .or_else(|| opts.first().cloned());
                }
                InputKind::Select(opts) => {
                    if let Some(first) = opts.first() {
                        out.fields.push((input.name.clone(), first.clone()));
                    }
                }
                InputKind::Other => {}
            }
        }
        Ok(out)
    }
}

const CLIENT_HEAD: &str = concat!(
    "<version who=\"vpn\">v9.01-3</version><device-id>linux-64</device-id>",
    "<capabilities><auth-method>single-sign-on-v2</auth-method></capabilities>"
);

/// The XML `init` (`<config-auth type="init">`) openconnect sends first; `group_access` is the
/// server URL (`https://host:port/`).
#[must_use]
pub fn init_body(group_access: &str, group: Option<&str>) -> String {
    let group = group
        .map(|g| format!("<group-select>{}</group-select>", xml_escape(g)))
        .unwrap_or_default();
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<config-auth client=\"vpn\" type=\"init\" \
         aggregate-auth-version=\"2\">{CLIENT_HEAD}{group}<group-access>{}</group-access></config-auth>",
        xml_escape(group_access)
    )
}

/// The XML `auth-reply` for a filled form: each field `<NAME>value</NAME>` inside `<auth>`
/// (values escaped), the group as `<group-select>`.
#[must_use]
pub fn reply_body(filled: &FilledForm) -> String {
    let mut out = String::with_capacity(512);
    out.push_str(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<config-auth client=\"vpn\" \
         type=\"auth-reply\" aggregate-auth-version=\"2\">",
    );
    out.push_str(CLIENT_HEAD);
    if let Some(g) = &filled.group {
        out.push_str("<group-select>");
        out.push_str(&xml_escape(g));
        out.push_str("</group-select>");
    }
    out.push_str("<auth>");
    for (name, value) in &filled.fields {
        // Element names come from the server's form: keep only name characters.
        let tag: String = name
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            .collect();
        if tag.is_empty() {
            continue;
        }
        out.push('<');
        out.push_str(&tag);
        out.push('>');
        out.push_str(&xml_escape(value));
        out.push_str("</");
        out.push_str(&tag);
        out.push('>');
    }
    out.push_str("</auth></config-auth>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth_xml::{self, ClientMessage, Form};

    #[test]
    fn gateway_form_is_filled_in_one_round_trip_and_parsed_back_by_the_server() {
        let xml = auth_xml::auth_request(&Form {
            action: "/auth",
            message: Some("hi"),
            error: None,
            banner: None,
            groups: &[],
            selected_group: None,
        });
        let ServerMessage::Form(form) = parse_server_message(xml.as_bytes()).unwrap() else {
            panic!("expected a form");
        };
        assert_eq!(form.action, "/auth");
        let filled = form.fill("alice", "p<&>w", None).unwrap();
        let body = reply_body(&filled);
        match auth_xml::parse_client_message(body.as_bytes()).unwrap() {
            ClientMessage::Reply {
                username, password, ..
            } => {
                assert_eq!(username.as_deref(), Some("alice"));
                assert_eq!(password.as_deref(), Some("p<&>w"));
            }
            other => panic!("server read {other:?}"),
        }
    }

    #[test]
    fn init_is_an_init_to_the_server() {
        let body = init_body("https://198.18.1.1/", None);
        assert!(matches!(
            auth_xml::parse_client_message(body.as_bytes()).unwrap(),
            ClientMessage::Init { group: None }
        ));
    }

    #[test]
    fn ocserv_style_two_step_forms_fill_username_then_password() {
        let user_form = br#"<?xml version="1.0" encoding="UTF-8"?>
<config-auth client="vpn" type="auth-request"><version who="sg">0.1(1)</version>
<auth id="main"><message>Please enter your username.</message>
<form method="post" action="/auth"><input type="text" name="username" label="Username:" /></form></auth></config-auth>"#;
        let ServerMessage::Form(f) = parse_server_message(user_form).unwrap() else {
            panic!()
        };
        assert_eq!(
            f.fill("bob", "pw", None).unwrap().fields,
            vec![("username".to_owned(), "bob".to_owned())]
        );
        let pass_form = br#"<config-auth client="vpn" type="auth-request"><auth id="passwd">
<message>Please enter your password.</message><form method="post" action="/auth">
<input type="password" name="password" label="Password:" /><input type="hidden" name="k" value="v&amp;1"/></form></auth></config-auth>"#;
        let ServerMessage::Form(f) = parse_server_message(pass_form).unwrap() else {
            panic!()
        };
        assert_eq!(
            f.fill("bob", "pw", None).unwrap().fields,
            vec![
                ("password".to_owned(), "pw".to_owned()),
                ("k".to_owned(), "v&1".to_owned())
            ]
        );
    }

    #[test]
    fn success_carries_the_session_token_and_errors_are_reported() {
        let ok = auth_xml::auth_success("TOKEN123", Some("Welcome"));
        assert_eq!(
            parse_server_message(ok.as_bytes()).unwrap(),
            ServerMessage::Success {
                session_token: Some("TOKEN123".to_owned())
            }
        );
        let retry = auth_xml::auth_request(&Form {
            action: "/auth",
            message: None,
            error: Some("Login failed."),
            banner: None,
            groups: &[("a", "A"), ("b", "B")],
            selected_group: None,
        });
        let ServerMessage::Form(f) = parse_server_message(retry.as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(f.error.as_deref(), Some("Login failed."));
        assert_eq!(
            f.fill("u", "p", Some("b")).unwrap().group.as_deref(),
            Some("b")
        );
    }

    #[test]
    fn unanswerable_prompts_and_broken_documents_are_errors() {
        let otp = br#"<config-auth><auth id="x"><form action="/a"><input type="text" name="otp"/></form></auth></config-auth>"#;
        let ServerMessage::Form(f) = parse_server_message(otp).unwrap() else {
            panic!()
        };
        assert!(matches!(
            f.fill("u", "p", None),
            Err(AuthFormError::Unanswerable(_))
        ));
        assert!(matches!(
            parse_server_message(b"<config-auth></config-auth>"),
            Err(AuthFormError::NoAuth)
        ));
        assert!(matches!(
            parse_server_message(br#"<auth id="x"><form method="get"/></auth>"#),
            Err(AuthFormError::NotPost(_))
        ));
    }
}
