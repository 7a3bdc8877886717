//! The login exchange before CONNECT (protocol doc §3): what the client POSTs, and the XML the
//! gateway answers with.
//!
//! openconnect normally sends XML (`<config-auth type="init">`, then `type="auth-reply"` with the
//! filled-in form); in its legacy mode it sends `application/x-www-form-urlencoded` instead. Both are
//! reduced to a [`ClientMessage`]. The answers are a single-round-trip form ([`auth_request`]) and
//! the success document carrying the session token ([`auth_success`]).

use std::borrow::Cow;
use std::fmt::Write as _;

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

/// Longest accepted value (username, password, group) in bytes, after unescaping.
pub const MAX_VALUE_LEN: usize = 1024;

/// Deepest element nesting accepted in a client document.
pub const MAX_DEPTH: usize = 32;

/// The `version` text the gateway reports in its documents (`<version who="sg">`).
const SG_VERSION: &str = "0.1(1)";

/// What the client said in an auth POST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    /// Start (or restart, after a group change) of the login: send the form.
    Init {
        /// `<group-select>` (XML) or `group_list` (urlencoded), if the client picked a group.
        group: Option<String>,
    },
    /// The filled-in form.
    Reply {
        /// `<auth><username>` / `username=`.
        username: Option<String>,
        /// `<auth><password>` / `password=`.
        password: Option<String>,
        /// `<group-select>` / `group_list=`.
        group: Option<String>,
    },
}

/// Why an auth POST body could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthXmlError {
    /// The body looked like XML but is not well-formed (or not UTF-8); quick-xml's message.
    #[error("malformed auth XML: {0}")]
    Xml(String),
    /// The XML ended before the root element was closed.
    #[error("auth XML ends before </config-auth>")]
    Truncated,
    /// The root element is not `<config-auth>`.
    #[error("auth XML root is <{0}>, expected <config-auth>")]
    WrongRoot(String),
    /// `<config-auth>` has no `type` attribute.
    #[error("<config-auth> has no type attribute")]
    MissingType,
    /// `<config-auth type=...>` is neither `init` nor `auth-reply`.
    #[error("unsupported <config-auth type={0:?}>")]
    UnknownType(String),
    /// Elements nested deeper than [`MAX_DEPTH`].
    #[error("auth XML nested deeper than {max} elements")]
    TooDeep {
        /// [`MAX_DEPTH`].
        max: usize,
    },
    /// A value is longer than [`MAX_VALUE_LEN`] bytes.
    #[error("auth {field} longer than {max} bytes")]
    ValueTooLong {
        /// Which value: `username`, `password` or `group`.
        field: &'static str,
        /// [`MAX_VALUE_LEN`].
        max: usize,
    },
    /// The body is neither XML nor valid `application/x-www-form-urlencoded`.
    #[error("malformed urlencoded auth body: {0}")]
    Urlencoded(&'static str),
}

/// Parse a POST body from the auth phase.
///
/// After an optional UTF-8 BOM and whitespace, a body starting with `<` is XML; anything else is
/// urlencoded (`username=a&password=b%21&group_list=x`, `+` is a space). An empty body is an
/// [`ClientMessage::Init`] without a group.
///
/// XML: the root must be `<config-auth>` with `type="init"` or `type="auth-reply"`; the group is
/// `<config-auth><group-select>`, the credentials `<config-auth><auth><username>` and `<password>`
/// (first occurrence wins). Unknown elements and attributes are ignored. Entities (`&lt;`, `&#33;`,
/// ...) and CDATA are decoded. A urlencoded body is a `Reply` if it has a `username` or `password`
/// field, else an `Init`.
pub fn parse_client_message(body: &[u8]) -> Result<ClientMessage, AuthXmlError> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let start = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(body.len());
    let trimmed = body.get(start..).unwrap_or_default();
    match trimmed.first() {
        None => Ok(ClientMessage::Init { group: None }),
        Some(b'<') => parse_xml(trimmed),
        Some(_) => parse_urlencoded(body),
    }
}

/// Which value a text node belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Group,
    Username,
    Password,
}

impl Field {
    fn name(self) -> &'static str {
        match self {
            Self::Group => "group",
            Self::Username => "username",
            Self::Password => "password",
        }
    }
}

/// The elements we care about; anything else is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    ConfigAuth,
    Auth,
    Value(Field),
    Other,
}

#[derive(Default)]
struct Values {
    group: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

impl Values {
    fn slot(&mut self, f: Field) -> &mut Option<String> {
        match f {
            Field::Group => &mut self.group,
            Field::Username => &mut self.username,
            Field::Password => &mut self.password,
        }
    }
}

fn xml_err(e: impl std::fmt::Display) -> AuthXmlError {
    AuthXmlError::Xml(e.to_string())
}

fn parse_xml(xml: &[u8]) -> Result<ClientMessage, AuthXmlError> {
    let mut reader = Reader::from_reader(xml);
    let mut stack: Vec<Tag> = Vec::with_capacity(8);
    let mut is_init: Option<bool> = None;
    let mut values = Values::default();
    // The value currently being read, if this is its first occurrence.
    let mut capturing: Option<Field> = None;

    loop {
        let event = reader.read_event().map_err(xml_err)?;
        match event {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let empty = matches!(event, Event::Empty(_));
                let tag = if let Some(parent) = stack.last().copied() {
                    child_tag(parent, stack.len(), e)
                } else {
                    if is_init.is_some() {
                        // A second root element: not well-formed.
                        return Err(AuthXmlError::Xml("more than one root element".into()));
                    }
                    is_init = Some(root_type(e)?);
                    Tag::ConfigAuth
                };
                if let Tag::Value(f) = tag {
                    let slot = values.slot(f);
                    if slot.is_none() {
                        *slot = Some(String::new());
                        if !empty {
                            capturing = Some(f);
                        }
                    }
                }
                if !empty {
                    if stack.len() >= MAX_DEPTH {
                        return Err(AuthXmlError::TooDeep { max: MAX_DEPTH });
                    }
                    stack.push(tag);
                }
            }
            Event::End(_) => {
                if let Some(Tag::Value(f)) = stack.pop() {
                    if capturing == Some(f) {
                        capturing = None;
                    }
                }
            }
            Event::Text(t) => {
                let text = t.unescape().map_err(xml_err)?;
                if stack.is_empty() && !text.trim().is_empty() {
                    return Err(AuthXmlError::Xml("text outside the root element".into()));
                }
                append(&mut values, capturing, &text)?;
            }
            Event::CData(c) => {
                let text = std::str::from_utf8(&c).map_err(xml_err)?;
                append(&mut values, capturing, text)?;
            }
            Event::Eof => break,
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {}
        }
    }
    if !stack.is_empty() {
        return Err(AuthXmlError::Truncated);
    }
    let Some(is_init) = is_init else {
        return Err(AuthXmlError::Xml("no root element".into()));
    };
    Ok(if is_init {
        ClientMessage::Init {
            group: values.group,
        }
    } else {
        ClientMessage::Reply {
            username: values.username,
            password: values.password,
            group: values.group,
        }
    })
}

/// Check the root element; `Ok(true)` for an init, `Ok(false)` for an auth-reply.
fn root_type(e: &BytesStart<'_>) -> Result<bool, AuthXmlError> {
    if e.name().as_ref() != b"config-auth" {
        return Err(AuthXmlError::WrongRoot(
            String::from_utf8_lossy(e.name().as_ref()).into_owned(),
        ));
    }
    let attr = e
        .try_get_attribute("type")
        .map_err(xml_err)?
        .ok_or(AuthXmlError::MissingType)?;
    let ty = attr.unescape_value().map_err(xml_err)?;
    match ty.as_ref() {
        "init" => Ok(true),
        "auth-reply" => Ok(false),
        other => Err(AuthXmlError::UnknownType(other.to_owned())),
    }
}

/// Classify an element by its parent. `depth` is the parent's depth (1 = root).
fn child_tag(parent: Tag, depth: usize, e: &BytesStart<'_>) -> Tag {
    match (parent, depth, e.name().as_ref()) {
        (Tag::ConfigAuth, 1, b"group-select") => Tag::Value(Field::Group),
        (Tag::ConfigAuth, 1, b"auth") => Tag::Auth,
        (Tag::Auth, 2, b"username") => Tag::Value(Field::Username),
        (Tag::Auth, 2, b"password") => Tag::Value(Field::Password),
        _ => Tag::Other,
    }
}

fn append(values: &mut Values, capturing: Option<Field>, text: &str) -> Result<(), AuthXmlError> {
    let Some(f) = capturing else {
        return Ok(());
    };
    let slot = values.slot(f).get_or_insert_with(String::new);
    if slot.len() + text.len() > MAX_VALUE_LEN {
        return Err(AuthXmlError::ValueTooLong {
            field: f.name(),
            max: MAX_VALUE_LEN,
        });
    }
    slot.push_str(text);
    Ok(())
}

fn parse_urlencoded(body: &[u8]) -> Result<ClientMessage, AuthXmlError> {
    let mut values = Values::default();
    for pair in body.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
        let eq = pair
            .iter()
            .position(|&b| b == b'=')
            .ok_or(AuthXmlError::Urlencoded("field without '='"))?;
        let (Some(key), Some(value)) = (pair.get(..eq), pair.get(eq + 1..)) else {
            return Err(AuthXmlError::Urlencoded("field without '='"));
        };
        let field = match percent_decode(key)?.as_ref() {
            "username" => Field::Username,
            "password" => Field::Password,
            "group_list" => Field::Group,
            _ => continue,
        };
        let value = percent_decode(value)?;
        if value.len() > MAX_VALUE_LEN {
            return Err(AuthXmlError::ValueTooLong {
                field: field.name(),
                max: MAX_VALUE_LEN,
            });
        }
        let slot = values.slot(field);
        if slot.is_none() {
            *slot = Some(value.into_owned());
        }
    }
    Ok(if values.username.is_some() || values.password.is_some() {
        ClientMessage::Reply {
            username: values.username,
            password: values.password,
            group: values.group,
        }
    } else {
        ClientMessage::Init {
            group: values.group,
        }
    })
}

/// Decode one urlencoded component: `+` is a space, `%xx` a byte; the result must be UTF-8.
fn percent_decode(s: &[u8]) -> Result<Cow<'_, str>, AuthXmlError> {
    if !s.iter().any(|&b| b == b'%' || b == b'+') {
        return std::str::from_utf8(s)
            .map(Cow::Borrowed)
            .map_err(|_| AuthXmlError::Urlencoded("not UTF-8"));
    }
    let mut out = Vec::with_capacity(s.len());
    let mut it = s.iter();
    while let Some(&b) = it.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = it.next().and_then(|&h| char::from(h).to_digit(16));
                let lo = it.next().and_then(|&l| char::from(l).to_digit(16));
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(AuthXmlError::Urlencoded("bad %-escape"));
                };
                out.push(u8::try_from(hi * 16 + lo).unwrap_or_default());
            }
            _ => out.push(b),
        }
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| AuthXmlError::Urlencoded("not UTF-8"))
}

/// The contents of the login form sent in answer to an init ([`auth_request`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Form<'a> {
    /// Path the client POSTs the filled-in form to (e.g. `/auth`); all later POSTs go there.
    pub action: &'a str,
    /// `<message>`: shown to the user (e.g. "Please enter your username and password.").
    pub message: Option<&'a str>,
    /// `<error>`: shown to the user (e.g. "Login failed.") when re-sending the form.
    pub error: Option<&'a str>,
    /// `<banner>`: shown to the user.
    pub banner: Option<&'a str>,
    /// Groups for `<select name="group_list">`, as `(value, label)`; empty means no selector.
    pub groups: &'a [(&'a str, &'a str)],
    /// The `value` of the group to mark `selected`, if any.
    pub selected_group: Option<&'a str>,
}

/// The XML declaration and `<config-auth ... type="{ty}">` + version header of a server document.
fn doc_start(out: &mut String, ty: &str) {
    out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = write!(
        out,
        "<config-auth client=\"vpn\" type=\"{ty}\">\n<version who=\"sg\">{SG_VERSION}</version>\n"
    );
}

/// The `auth-request` document: one round trip with a username text input and a password input,
/// plus a `<select name="group_list">` when `form.groups` is non-empty. All text is XML-escaped.
#[must_use]
pub fn auth_request(form: &Form<'_>) -> String {
    let mut out = String::with_capacity(512 + form.groups.len() * 64);
    doc_start(&mut out, "auth-request");
    out.push_str("<auth id=\"main\">\n");
    if let Some(b) = form.banner {
        let _ = writeln!(out, "<banner>{}</banner>", xml_escape(b));
    }
    if let Some(m) = form.message {
        let _ = writeln!(out, "<message>{}</message>", xml_escape(m));
    }
    if let Some(e) = form.error {
        let _ = writeln!(out, "<error>{}</error>", xml_escape(e));
    }
    let _ = writeln!(
        out,
        "<form method=\"post\" action=\"{}\">",
        xml_escape(form.action)
    );
    if !form.groups.is_empty() {
        out.push_str("<select name=\"group_list\" label=\"GROUP:\">\n");
        for (value, label) in form.groups {
            let selected = if form.selected_group == Some(*value) {
                " selected=\"true\""
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "<option value=\"{}\"{selected}>{}</option>",
                xml_escape(value),
                xml_escape(label)
            );
        }
        out.push_str("</select>\n");
    }
    out.push_str("<input type=\"text\" name=\"username\" label=\"Username:\" />\n");
    out.push_str("<input type=\"password\" name=\"password\" label=\"Password:\" />\n");
    out.push_str("</form></auth>\n</config-auth>\n");
    out
}

/// The success document: `<config-auth client="vpn" type="complete">` with `<auth id="success">`
/// (and `<banner>` if given) and `<session-token>`. Send it with `Set-Cookie: webvpn=TOKEN` too.
#[must_use]
pub fn auth_success(token: &str, banner: Option<&str>) -> String {
    let mut out = String::with_capacity(256);
    doc_start(&mut out, "complete");
    out.push_str("<auth id=\"success\">");
    if let Some(b) = banner {
        let _ = write!(out, "<banner>{}</banner>", xml_escape(b));
    }
    let _ = write!(
        out,
        "</auth>\n<session-token>{}</session-token>\n</config-auth>\n",
        xml_escape(token)
    );
    out
}

/// Escape text for XML content or a double- or single-quoted attribute: `& < > " '` become
/// entities. Control characters that XML 1.0 forbids (all except tab, LF, CR) are removed.
#[must_use]
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if c.is_control() && u32::from(c) < 0x20 => {}
            '\u{FFFE}' | '\u{FFFF}' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// §3.2: the init openconnect 9.01 (Debian) POSTs to `/`.
    const INIT: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<config-auth client=\"vpn\" type=\"init\" aggregate-auth-version=\"2\"><version who=\"vpn\">v9.01-3</version><device-id>linux-64</device-id><capabilities><auth-method>single-sign-on-v2</auth-method><auth-method>single-sign-on-external-browser</auth-method></capabilities><group-access>https://127.0.0.1:4443/</group-access></config-auth>";

    /// §3.4: the auth-reply (capabilities abridged as in the capture).
    const REPLY: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<config-auth client=\"vpn\" type=\"auth-reply\" aggregate-auth-version=\"2\"><version who=\"vpn\">v9.01-3</version><device-id>linux-64</device-id><capabilities>...</capabilities><auth><username>testuser</username><password>secret123</password></auth></config-auth>";

    fn parse(s: &str) -> Result<ClientMessage, AuthXmlError> {
        parse_client_message(s.as_bytes())
    }

    fn reply(u: Option<&str>, p: Option<&str>, g: Option<&str>) -> ClientMessage {
        ClientMessage::Reply {
            username: u.map(Into::into),
            password: p.map(Into::into),
            group: g.map(Into::into),
        }
    }

    #[test]
    fn parses_the_captured_init() {
        assert_eq!(parse(INIT), Ok(ClientMessage::Init { group: None }));
    }

    #[test]
    fn parses_the_captured_auth_reply() {
        assert_eq!(
            parse(REPLY),
            Ok(reply(Some("testuser"), Some("secret123"), None))
        );
    }

    #[test]
    fn init_with_group_select() {
        let xml = INIT.replace(
            "<group-access>",
            "<group-select>engineering</group-select><group-access>",
        );
        assert_eq!(
            parse(&xml),
            Ok(ClientMessage::Init {
                group: Some("engineering".into())
            })
        );
    }

    #[test]
    fn reply_with_group_select_next_to_auth() {
        let xml = REPLY.replace("<auth>", "<group-select>ops</group-select><auth>");
        assert_eq!(
            parse(&xml),
            Ok(reply(Some("testuser"), Some("secret123"), Some("ops")))
        );
    }

    #[test]
    fn empty_body_is_an_init() {
        assert_eq!(parse(""), Ok(ClientMessage::Init { group: None }));
        assert_eq!(parse(" \r\n"), Ok(ClientMessage::Init { group: None }));
    }

    #[test]
    fn bom_and_leading_whitespace_are_skipped() {
        let mut body = b"\xEF\xBB\xBF\n  ".to_vec();
        body.extend_from_slice(REPLY.as_bytes());
        assert_eq!(
            parse_client_message(&body),
            Ok(reply(Some("testuser"), Some("secret123"), None))
        );
    }

    #[test]
    fn entities_and_cdata_are_decoded() {
        let xml = "<config-auth type=\"auth-reply\"><auth><username>a&lt;b&gt;&amp;&quot;&apos;</username><password>p&#33;&#x41;<![CDATA[<raw>&amp;]]> x</password></auth></config-auth>";
        assert_eq!(
            parse(xml),
            Ok(reply(Some("a<b>&\"'"), Some("p!A<raw>&amp; x"), None))
        );
    }

    #[test]
    fn unknown_entities_are_errors() {
        let xml = "<config-auth type=\"auth-reply\"><auth><username>&bogus;</username></auth></config-auth>";
        assert!(matches!(parse(xml), Err(AuthXmlError::Xml(_))));
    }

    #[test]
    fn whitespace_in_values_is_kept_and_empty_elements_are_empty_strings() {
        let xml = "<config-auth type=\"auth-reply\"><auth><username> u </username><password/></auth></config-auth>";
        assert_eq!(parse(xml), Ok(reply(Some(" u "), Some(""), None)));
    }

    #[test]
    fn only_the_documented_positions_count() {
        // username outside <auth>, password nested too deep, group-select inside auth: all ignored.
        let xml = "<config-auth type=\"auth-reply\"><username>x</username><auth><group-select>g</group-select><opaque><password>y</password></opaque><username>real</username><username>second</username></auth></config-auth>";
        assert_eq!(parse(xml), Ok(reply(Some("real"), None, None)));
    }

    #[test]
    fn unknown_elements_and_comments_are_ignored() {
        let xml = "<?xml version=\"1.0\"?><!-- hi --><config-auth client=\"vpn\" type=\"auth-reply\"><foo bar=\"1\"><baz/></foo><opaque is-for=\"sg\"><x>1</x></opaque><auth><username>u</username><password>p</password><extra>z</extra></auth></config-auth>";
        assert_eq!(parse(xml), Ok(reply(Some("u"), Some("p"), None)));
    }

    #[test]
    fn wrong_root_missing_and_unknown_type() {
        assert_eq!(
            parse("<auth><username>u</username></auth>"),
            Err(AuthXmlError::WrongRoot("auth".into()))
        );
        assert_eq!(
            parse("<config-auth client=\"vpn\"></config-auth>"),
            Err(AuthXmlError::MissingType)
        );
        assert_eq!(
            parse("<config-auth type=\"logout\"></config-auth>"),
            Err(AuthXmlError::UnknownType("logout".into()))
        );
        assert_eq!(
            parse("<config-auth type=\"init\"/>"),
            Ok(ClientMessage::Init { group: None })
        );
    }

    #[test]
    fn malformed_xml_is_rejected() {
        for bad in [
            "<config-auth type=\"init\"><a></b></config-auth>",
            "<config-auth type=\"auth-reply\"><auth><username>u</username>",
            "<config-auth type=\"init\"></config-auth><config-auth type=\"init\"/>",
            "<config-auth type=\"init\"></config-auth>trailing",
            "<config-auth type=init></config-auth>",
            "<",
            "<!-- only a comment -->",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
        assert_eq!(
            parse("<config-auth type=\"auth-reply\"><auth><username>u</username>"),
            Err(AuthXmlError::Truncated)
        );
        let not_utf8 = b"<config-auth type=\"auth-reply\"><auth><username>\xff\xfe</username></auth></config-auth>";
        assert!(parse_client_message(not_utf8).is_err());
    }

    #[test]
    fn deep_nesting_is_bounded() {
        let mut xml = String::from("<config-auth type=\"init\">");
        for _ in 0..100 {
            xml.push_str("<a>");
        }
        assert_eq!(parse(&xml), Err(AuthXmlError::TooDeep { max: MAX_DEPTH }));
    }

    #[test]
    fn overlong_values_are_rejected() {
        let long = "x".repeat(MAX_VALUE_LEN + 1);
        let xml = format!(
            "<config-auth type=\"auth-reply\"><auth><password>{long}</password></auth></config-auth>"
        );
        assert_eq!(
            parse(&xml),
            Err(AuthXmlError::ValueTooLong {
                field: "password",
                max: MAX_VALUE_LEN
            })
        );
        let exact = "x".repeat(MAX_VALUE_LEN);
        let xml = format!(
            "<config-auth type=\"auth-reply\"><auth><username>{exact}</username></auth></config-auth>"
        );
        assert!(parse(&xml).is_ok());
        // Entities can't sneak past the limit by expanding.
        let amps = "&amp;".repeat(MAX_VALUE_LEN / 5 + 1);
        let xml = format!(
            "<config-auth type=\"init\"><group-select>{amps}{exact}</group-select></config-auth>"
        );
        assert!(matches!(
            parse(&xml),
            Err(AuthXmlError::ValueTooLong { field: "group", .. })
        ));
        let form = format!("username={long}");
        assert!(matches!(
            parse(&form),
            Err(AuthXmlError::ValueTooLong {
                field: "username",
                ..
            })
        ));
    }

    #[test]
    fn urlencoded_legacy_bodies() {
        assert_eq!(
            parse("username=testuser&password=secret123"),
            Ok(reply(Some("testuser"), Some("secret123"), None))
        );
        assert_eq!(
            parse("username=a&password=b%21&group_list=x"),
            Ok(reply(Some("a"), Some("b!"), Some("x")))
        );
        assert_eq!(
            parse("username=John+Doe&password=p%2bq%26r%3D%c3%a9&other=1"),
            Ok(reply(Some("John Doe"), Some("p+q&r=é"), None))
        );
        assert_eq!(
            parse("group_list=eng"),
            Ok(ClientMessage::Init {
                group: Some("eng".into())
            })
        );
        assert_eq!(
            parse("password=&&username="),
            Ok(reply(Some(""), Some(""), None))
        );
    }

    #[test]
    fn malformed_urlencoded_is_rejected() {
        for bad in [
            "username=a%2",
            "username=a%zz",
            "password=%ff",
            "garbage",
            "username=a&oops",
        ] {
            assert!(
                matches!(parse(bad), Err(AuthXmlError::Urlencoded(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn escape_covers_the_five_entities_and_drops_controls() {
        assert_eq!(
            xml_escape("a<b>&\"c'\u{1}\u{0}\td\n"),
            "a&lt;b&gt;&amp;&quot;c&apos;\td\n"
        );
        assert_eq!(xml_escape("plain"), "plain");
    }

    /// Reads back a server document with quick-xml, to prove it is well-formed, and returns the
    /// (element, attributes, text) sequence.
    /// (element name, attributes, text content) of one element.
    type Element = (String, Vec<(String, String)>, String);

    fn read_back(doc: &str) -> Vec<Element> {
        let mut r = Reader::from_str(doc);
        let mut out: Vec<Element> = Vec::new();
        let mut open: Vec<usize> = Vec::new();
        loop {
            let ev = r.read_event().unwrap();
            match &ev {
                Event::Start(e) | Event::Empty(e) => {
                    let attrs = e
                        .attributes()
                        .map(|a| {
                            let a = a.unwrap();
                            (
                                String::from_utf8(a.key.as_ref().to_vec()).unwrap(),
                                a.unescape_value().unwrap().into_owned(),
                            )
                        })
                        .collect();
                    out.push((
                        String::from_utf8(e.name().as_ref().to_vec()).unwrap(),
                        attrs,
                        String::new(),
                    ));
                    if matches!(ev, Event::Start(_)) {
                        open.push(out.len() - 1);
                    }
                }
                Event::Text(t) => {
                    if let Some(&i) = open.last() {
                        out[i].2.push_str(&t.unescape().unwrap());
                    }
                }
                Event::End(_) => {
                    open.pop();
                }
                Event::Eof => break,
                _ => {}
            }
        }
        assert!(open.is_empty());
        out
    }

    #[test]
    fn auth_request_is_well_formed_and_escaped() {
        let doc = auth_request(&Form {
            action: "/auth?a=1&b=\"2\"",
            message: Some("Please enter your username and password."),
            error: Some("Login <failed>."),
            banner: Some("Tom & Jerry's VPN"),
            groups: &[("eng", "Engineering"), ("ops", "Ops & <Infra>")],
            selected_group: Some("ops"),
        });
        assert!(doc.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<config-auth client=\"vpn\" type=\"auth-request\">"));
        assert!(doc.contains("<form method=\"post\" action=\"/auth?a=1&amp;b=&quot;2&quot;\">"));
        assert!(doc.contains("<input type=\"text\" name=\"username\" label=\"Username:\" />"));
        assert!(doc.contains("<input type=\"password\" name=\"password\" label=\"Password:\" />"));
        assert!(doc.contains("<select name=\"group_list\" label=\"GROUP:\">"));
        assert!(doc
            .contains("<option value=\"ops\" selected=\"true\">Ops &amp; &lt;Infra&gt;</option>"));
        assert!(doc.contains("<option value=\"eng\">Engineering</option>"));

        let els = read_back(&doc);
        let find = |name: &str| els.iter().find(|(n, _, _)| n == name).unwrap();
        assert_eq!(find("auth").1, vec![("id".into(), "main".into())]);
        assert_eq!(find("error").2, "Login <failed>.");
        assert_eq!(find("banner").2, "Tom & Jerry's VPN");
        assert_eq!(
            find("form").1,
            vec![
                ("method".into(), "post".into()),
                ("action".into(), "/auth?a=1&b=\"2\"".into())
            ]
        );
    }

    #[test]
    fn minimal_form_matches_the_documented_shape() {
        let doc = auth_request(&Form {
            action: "/auth",
            message: Some("Please enter your username and password."),
            error: None,
            banner: None,
            groups: &[],
            selected_group: None,
        });
        assert_eq!(
            doc,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<config-auth client=\"vpn\" type=\"auth-request\">\n<version who=\"sg\">0.1(1)</version>\n<auth id=\"main\">\n<message>Please enter your username and password.</message>\n<form method=\"post\" action=\"/auth\">\n<input type=\"text\" name=\"username\" label=\"Username:\" />\n<input type=\"password\" name=\"password\" label=\"Password:\" />\n</form></auth>\n</config-auth>\n"
        );
        assert!(!doc.contains("select"));
    }

    #[test]
    fn auth_success_carries_token_and_banner() {
        let doc = auth_success("AbC123+/=_-", Some("Welcome <user>"));
        assert!(doc.contains("<config-auth client=\"vpn\" type=\"complete\">"));
        assert!(doc.contains("<auth id=\"success\"><banner>Welcome &lt;user&gt;</banner></auth>"));
        assert!(doc.contains("<session-token>AbC123+/=_-</session-token>"));
        let els = read_back(&doc);
        assert!(els
            .iter()
            .any(|(n, _, t)| n == "session-token" && t == "AbC123+/=_-"));
        let plain = auth_success("t", None);
        assert!(plain.contains("<auth id=\"success\"></auth>"));
        read_back(&plain);
    }

    #[test]
    fn mutated_bodies_never_panic_and_respect_the_value_limit() {
        let long_xml = REPLY.replace("testuser", &"u".repeat(1000));
        let seeds: [&[u8]; 4] = [
            INIT.as_bytes(),
            REPLY.as_bytes(),
            long_xml.as_bytes(),
            b"username=John+Doe&password=p%21q&group_list=eng",
        ];
        for (i, seed) in seeds.iter().enumerate() {
            for m in crate::testutil::mutations(seed, 10_000, 3 + i as u64) {
                match parse_client_message(&m) {
                    Ok(ClientMessage::Init { group }) => {
                        assert!(group.map_or(0, |g| g.len()) <= MAX_VALUE_LEN);
                    }
                    Ok(ClientMessage::Reply {
                        username,
                        password,
                        group,
                    }) => {
                        for v in [username, password, group].into_iter().flatten() {
                            assert!(v.len() <= MAX_VALUE_LEN);
                        }
                    }
                    Err(_) => {}
                }
            }
        }
    }

    #[test]
    fn escaped_text_reads_back_unchanged() {
        let mut rng = crate::testutil::Rng::new(11);
        let alphabet: Vec<char> = "ab<>&\"' \t\n\r\u{1}é€😀;#x".chars().collect();
        for _ in 0..2000 {
            let s: String = (0..rng.below(40))
                .map(|_| alphabet[rng.below(alphabet.len())])
                .collect();
            let xml = format!(
                "<config-auth type=\"auth-reply\"><auth><username>{}</username></auth></config-auth>",
                xml_escape(&s)
            );
            let expected: String = s.chars().filter(|c| *c != '\u{1}').collect();
            // XML normalises CR and CRLF to LF in text content.
            let expected = expected.replace("\r\n", "\n").replace('\r', "\n");
            let got = match parse(&xml).unwrap() {
                ClientMessage::Reply { username, .. } => username.unwrap(),
                other => panic!("{other:?}"),
            };
            let got = got.replace("\r\n", "\n").replace('\r', "\n");
            assert_eq!(got, expected, "input {s:?}");
        }
    }
}
