//! The small HTTP/1.1 request reader and response writer the gateway needs before the tunnel starts.
//!
//! openconnect speaks plain HTTP/1.1 over TLS, several requests per keep-alive connection, ending with
//! a `CONNECT` after which the stream carries CSTP frames (protocol doc §3.1, §4). This module parses
//! one request at a time from the front of a buffer with [`httparse`], enforcing size limits even
//! while the header block is still incomplete, and reports how many bytes the request used so that
//! bytes after a `CONNECT` header block are kept for the CSTP decoder.

use std::fmt;

/// Size limits applied while parsing a request. They bound the memory a peer can make us hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest header block (request line + headers + blank line) in bytes.
    pub max_header_bytes: usize,
    /// Largest number of header lines.
    pub max_headers: usize,
    /// Largest `Content-Length` body in bytes.
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 8192,
            max_headers: 64,
            max_body: 65536,
        }
    }
}

/// The request method.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Method {
    /// `GET` (legacy-mode form fetch, with `Content-Length: 0`).
    Get,
    /// `POST` (XML or urlencoded auth exchange).
    Post,
    /// `CONNECT` (tunnel setup).
    Connect,
    /// `HEAD`.
    Head,
    /// Any other method token, as sent.
    Other(String),
}

impl Method {
    fn from_token(s: &str) -> Self {
        match s {
            "GET" => Self::Get,
            "POST" => Self::Post,
            "CONNECT" => Self::Connect,
            "HEAD" => Self::Head,
            other => Self::Other(other.to_owned()),
        }
    }

    /// The method token as it appears on the wire.
    #[must_use]
    pub fn as_str(&self) -> &str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
            Self::Connect => "CONNECT",
            Self::Head => "HEAD",
            Self::Other(s) => s,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One parsed HTTP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method.
    pub method: Method,
    /// The request target exactly as sent (e.g. `/`, `/auth`, `/CSCOSSLC/tunnel`).
    pub path: String,
    /// Headers in the order received: (name as sent, value with surrounding whitespace trimmed).
    /// Non-UTF-8 bytes in values are replaced with U+FFFD.
    pub headers: Vec<(String, String)>,
    /// The body (`Content-Length` bytes; always empty for `CONNECT`).
    pub body: Vec<u8>,
}

impl Request {
    /// The value of the first header called `name` (case-insensitive).
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// The values of all headers called `name` (case-insensitive), in order.
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The value of cookie `name` from the `Cookie` header(s), e.g. `webvpn` in
    /// `Cookie: a=b; webvpn=TOKEN`. Cookie names are case-sensitive; the first match wins.
    #[must_use]
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.headers_named("cookie")
            .flat_map(|h| h.split(';'))
            .filter_map(|pair| pair.split_once('='))
            .find(|(n, _)| n.trim() == name)
            .map(|(_, v)| v.trim())
    }

    /// Whether the client asked to close the connection after this request (`Connection: close`).
    /// openconnect always speaks HTTP/1.1 with keep-alive, so the absence of this means keep-alive.
    #[must_use]
    pub fn wants_close(&self) -> bool {
        self.headers_named("connection")
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("close"))
    }
}

/// Why a request could not be parsed. Every variant means: answer 400 (or just close) and drop the
/// connection; the stream can't be resynchronised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The header block is (or, while still incomplete, already is) larger than the limit.
    #[error("HTTP header block of at least {len} bytes exceeds the limit of {max}")]
    HeaderTooLarge {
        /// Bytes of header seen so far.
        len: usize,
        /// `Limits::max_header_bytes`.
        max: usize,
    },
    /// More header lines than `Limits::max_headers`.
    #[error("more than {max} HTTP headers")]
    TooManyHeaders {
        /// `Limits::max_headers`.
        max: usize,
    },
    /// `Content-Length` announces a body larger than the limit.
    #[error("HTTP body of {len} bytes exceeds the limit of {max}")]
    BodyTooLarge {
        /// The announced `Content-Length`.
        len: u64,
        /// `Limits::max_body`.
        max: usize,
    },
    /// The request line or a header line is not valid HTTP/1.x syntax.
    #[error("malformed HTTP request: {0}")]
    Malformed(&'static str),
    /// The request target is not valid UTF-8.
    #[error("HTTP request path is not UTF-8")]
    PathNotUtf8,
    /// A `Content-Length` header is not a decimal number, or several disagree.
    #[error("invalid Content-Length: {0:?}")]
    BadContentLength(String),
    /// The request uses `Transfer-Encoding` (e.g. chunked), which openconnect never sends.
    #[error("request Transfer-Encoding {0:?} is not supported")]
    ChunkedUnsupported(String),
    /// The request line names an HTTP version other than 1.0 or 1.1 (e.g. an HTTP/2 preface).
    #[error("unsupported HTTP version (only HTTP/1.x)")]
    UnsupportedVersion,
}

/// Parse one request from the front of `buf`.
///
/// Returns `Ok(None)` if the request is incomplete (read more and call again with the grown
/// buffer), or `Ok(Some((request, consumed)))` where `consumed` is the number of bytes the request
/// used; anything after it belongs to the next request, or for `CONNECT` to the CSTP stream.
///
/// A `CONNECT` never has a body: `consumed` ends at the blank line whatever `Content-Length` says.
/// Errors are returned as early as possible: an over-long header block is reported before its
/// blank line arrives, and an over-limit `Content-Length` before the body arrives.
pub fn parse_request(buf: &[u8], limits: &Limits) -> Result<Option<(Request, usize)>, HttpError> {
    let mut slots = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut req = httparse::Request::new(&mut slots);
    let header_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > limits.max_header_bytes {
                return Err(HttpError::HeaderTooLarge {
                    len: buf.len(),
                    max: limits.max_header_bytes,
                });
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HttpError::TooManyHeaders {
                max: limits.max_headers,
            })
        }
        Err(httparse::Error::Version) => return Err(HttpError::UnsupportedVersion),
        Err(httparse::Error::HeaderName) => {
            return Err(HttpError::Malformed("invalid header name"))
        }
        Err(httparse::Error::HeaderValue) => {
            return Err(HttpError::Malformed("invalid header value"))
        }
        Err(httparse::Error::NewLine) => return Err(HttpError::Malformed("invalid line ending")),
        Err(httparse::Error::Token) => {
            return Err(HttpError::Malformed("invalid token in request line"))
        }
        Err(_) => return Err(HttpError::Malformed("invalid request")),
    };
    if header_len > limits.max_header_bytes {
        return Err(HttpError::HeaderTooLarge {
            len: header_len,
            max: limits.max_header_bytes,
        });
    }
    // httparse only reports Complete once method, path and version are all present.
    let (Some(method), Some(path), Some(_version)) = (req.method, req.path, req.version) else {
        return Err(HttpError::Malformed("incomplete request line"));
    };
    let method = Method::from_token(method);
    let path = path.to_owned();

    let (headers, content_length) = collect_headers(req.headers).map_err(|e| match e {
        FramingError::TransferEncoding(v) => HttpError::ChunkedUnsupported(v),
        FramingError::BadContentLength(v) => HttpError::BadContentLength(v),
    })?;

    let body_len = if method == Method::Connect {
        0
    } else {
        let n = content_length.unwrap_or(0);
        match usize::try_from(n) {
            Ok(n) if n <= limits.max_body => n,
            _ => {
                return Err(HttpError::BodyTooLarge {
                    len: n,
                    max: limits.max_body,
                })
            }
        }
    };
    let Some(end) = header_len.checked_add(body_len) else {
        return Err(HttpError::Malformed("length overflow"));
    };
    let Some(body) = buf.get(header_len..end) else {
        return Ok(None);
    };
    Ok(Some((
        Request {
            method,
            path,
            headers,
            body: body.to_vec(),
        },
        end,
    )))
}

/// The first header called `name` (case-insensitive) in a parsed message's header list.
pub(crate) fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Header (name as sent, trimmed value) pairs in the order received.
pub(crate) type HeaderList = Vec<(String, String)>;

/// Why a message's framing headers are unusable (shared by the request and response readers).
#[derive(Debug)]
pub(crate) enum FramingError {
    /// A `Transfer-Encoding` header (neither side of this protocol uses one).
    TransferEncoding(String),
    /// A `Content-Length` that is not a plain decimal number, or several that disagree.
    BadContentLength(String),
}

/// Copies httparse's header slices into owned (name, trimmed value) pairs and reads the framing:
/// `Content-Length` (strict decimal, duplicates must agree); any `Transfer-Encoding` is refused.
pub(crate) fn collect_headers(
    raw: &[httparse::Header<'_>],
) -> Result<(HeaderList, Option<u64>), FramingError> {
    let mut headers = Vec::with_capacity(raw.len());
    let mut content_length: Option<u64> = None;
    for h in raw {
        let value = String::from_utf8_lossy(h.value).trim().to_owned();
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(FramingError::TransferEncoding(value));
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = (!value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()))
                .then(|| value.parse::<u64>().ok())
                .flatten();
            match n {
                Some(n) if content_length.is_none_or(|prev| prev == n) => content_length = Some(n),
                _ => return Err(FramingError::BadContentLength(value)),
            }
        }
        headers.push((h.name.to_owned(), value));
    }
    Ok((headers, content_length))
}

/// Remove CR, LF and other control characters (except tab) so a value can't break out of its
/// header line.
pub(crate) fn header_safe(s: &str) -> impl fmt::Display + '_ {
    struct Safe<'a>(&'a str);
    impl fmt::Display for Safe<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            if !self.0.chars().any(|c| c.is_control() && c != '\t') {
                return f.write_str(self.0);
            }
            for c in self.0.chars().filter(|c| !c.is_control() || *c == '\t') {
                fmt::Write::write_char(f, c)?;
            }
            Ok(())
        }
    }
    Safe(s)
}

/// Build a complete response: `HTTP/1.1 {code} {reason}`, the given headers in order, then
/// `Content-Length` (always added; a `Content-Length` in `headers` is ignored) and `body`.
///
/// Control characters (CR, LF, ...) in the reason, names and values are removed, so text from
/// configuration or from a peer can't inject header lines.
#[must_use]
pub fn response(code: u16, reason: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    use std::fmt::Write as _;
    let mut head = String::with_capacity(64 + headers.len() * 40);
    let _ = write!(head, "HTTP/1.1 {code} {}\r\n", header_safe(reason));
    for (name, value) in headers {
        if name.trim().eq_ignore_ascii_case("content-length") {
            continue;
        }
        let _ = write!(head, "{}: {}\r\n", header_safe(name), header_safe(value));
    }
    let _ = write!(head, "Content-Length: {}\r\n\r\n", body.len());
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const INIT_BODY: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<config-auth client=\"vpn\" type=\"init\" aggregate-auth-version=\"2\"><version who=\"vpn\">v9.01-3</version><device-id>linux-64</device-id><capabilities><auth-method>single-sign-on-v2</auth-method><auth-method>single-sign-on-external-browser</auth-method></capabilities><group-access>https://127.0.0.1:4443/</group-access></config-auth>";

    fn init_post() -> Vec<u8> {
        let mut r = format!(
            "POST / HTTP/1.1\r\nHost: 127.0.0.1:4443\r\nUser-Agent: Open AnyConnect VPN Agent v9.01-3\r\nAccept: */*\r\nAccept-Encoding: identity\r\nX-Transcend-Version: 1\r\nX-Aggregate-Auth: 1\r\nX-Support-HTTP-Auth: true\r\nX-Pad: 0000000000\r\nContent-Type: application/xml; charset=utf-8\r\nContent-Length: {}\r\n\r\n",
            INIT_BODY.len()
        )
        .into_bytes();
        r.extend_from_slice(INIT_BODY.as_bytes());
        r
    }

    fn parse(buf: &[u8]) -> Result<Option<(Request, usize)>, HttpError> {
        parse_request(buf, &Limits::default())
    }

    #[test]
    fn parses_the_openconnect_init_post() {
        let raw = init_post();
        let (req, used) = parse(&raw).unwrap().unwrap();
        assert_eq!(used, raw.len());
        assert_eq!(req.method, Method::Post);
        assert_eq!(req.path, "/");
        assert_eq!(req.header("x-aggregate-auth"), Some("1"));
        assert_eq!(req.header("HOST"), Some("127.0.0.1:4443"));
        assert_eq!(req.body, INIT_BODY.as_bytes());
        assert!(!req.wants_close());
    }

    #[test]
    fn every_prefix_is_incomplete_not_an_error() {
        let raw = init_post();
        for n in 0..raw.len() {
            assert_eq!(parse(&raw[..n]), Ok(None), "prefix {n}");
        }
    }

    #[test]
    fn keep_alive_requests_are_parsed_one_at_a_time() {
        let mut raw = init_post();
        raw.extend_from_slice(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n");
        let (first, used) = parse(&raw).unwrap().unwrap();
        assert_eq!(first.method, Method::Post);
        let (second, used2) = parse(&raw[used..]).unwrap().unwrap();
        assert_eq!(second.method, Method::Get);
        assert_eq!(second.path, "/x");
        assert_eq!(used + used2, raw.len());
    }

    #[test]
    fn legacy_get_with_zero_content_length_parses() {
        let raw = b"GET / HTTP/1.1\r\nHost: vpn.example\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 0\r\n\r\n";
        let (req, used) = parse(raw).unwrap().unwrap();
        assert_eq!(req.method, Method::Get);
        assert!(req.body.is_empty());
        assert_eq!(used, raw.len());
    }

    #[test]
    fn connect_has_no_body_and_leaves_following_bytes() {
        let mut raw =
            b"CONNECT /CSCOSSLC/tunnel HTTP/1.1\r\nHost: h\r\nCookie: webvpn=abc\r\nContent-Length: 5\r\n\r\n"
                .to_vec();
        let header_len = raw.len();
        raw.extend_from_slice(b"STF\x01\x00\x00\x07\x00");
        let (req, used) = parse(&raw).unwrap().unwrap();
        assert_eq!(req.method, Method::Connect);
        assert!(req.body.is_empty());
        assert_eq!(used, header_len);
    }

    #[test]
    fn body_waits_until_complete() {
        let raw = b"POST /auth HTTP/1.1\r\nContent-Length: 10\r\n\r\n12345";
        assert_eq!(parse(raw), Ok(None));
    }

    #[test]
    fn header_block_over_limit_errors_before_blank_line() {
        let limits = Limits {
            max_header_bytes: 100,
            ..Limits::default()
        };
        let mut raw = b"GET / HTTP/1.1\r\nX-Pad: ".to_vec();
        raw.extend(std::iter::repeat_n(b'0', 200));
        assert!(matches!(
            parse_request(&raw, &limits),
            Err(HttpError::HeaderTooLarge { max: 100, .. })
        ));
        // And a complete block over the limit is also rejected.
        raw.extend_from_slice(b"\r\n\r\n");
        assert!(matches!(
            parse_request(&raw, &limits),
            Err(HttpError::HeaderTooLarge { max: 100, .. })
        ));
        // A trickle of bytes with no blank line can't grow us past the default either.
        let endless = vec![b'a'; 9000];
        let mut line = b"GET / HTTP/1.1\r\nX: ".to_vec();
        line.extend_from_slice(&endless);
        assert!(matches!(
            parse(&line),
            Err(HttpError::HeaderTooLarge { .. })
        ));
    }

    #[test]
    fn too_many_headers_is_an_error() {
        let limits = Limits {
            max_headers: 3,
            ..Limits::default()
        };
        let raw = b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n";
        assert_eq!(
            parse_request(raw, &limits),
            Err(HttpError::TooManyHeaders { max: 3 })
        );
        let ok = b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
        assert!(parse_request(ok, &limits).unwrap().is_some());
    }

    #[test]
    fn body_over_limit_is_rejected_before_it_arrives() {
        let raw = b"POST / HTTP/1.1\r\nContent-Length: 65537\r\n\r\n";
        assert_eq!(
            parse(raw),
            Err(HttpError::BodyTooLarge {
                len: 65537,
                max: 65536
            })
        );
        let huge = b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n";
        assert!(matches!(parse(huge), Err(HttpError::BadContentLength(_))));
    }

    #[test]
    fn bad_content_length_values_are_rejected() {
        for v in ["-1", "+5", "abc", "1 2", ""] {
            let raw = format!("POST / HTTP/1.1\r\nContent-Length: {v}\r\n\r\n");
            assert!(
                matches!(parse(raw.as_bytes()), Err(HttpError::BadContentLength(_))),
                "{v:?}"
            );
        }
        let dup = b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab";
        assert!(matches!(parse(dup), Err(HttpError::BadContentLength(_))));
        let same = b"POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab";
        assert_eq!(parse(same).unwrap().unwrap().0.body, b"ab");
    }

    #[test]
    fn chunked_bodies_are_unsupported() {
        let raw = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        assert_eq!(
            parse(raw),
            Err(HttpError::ChunkedUnsupported("chunked".into()))
        );
    }

    #[test]
    fn only_http_1x_is_accepted() {
        assert_eq!(
            parse(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Err(HttpError::UnsupportedVersion)
        );
        assert_eq!(
            parse(b"GET / HTTP/3.1\r\n\r\n"),
            Err(HttpError::UnsupportedVersion)
        );
        assert!(parse(b"GET / HTTP/1.0\r\n\r\n").unwrap().is_some());
    }

    #[test]
    fn malformed_requests_are_errors() {
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n"),
            Err(HttpError::Malformed(_))
        ));
        assert!(matches!(
            parse(b"G(T / HTTP/1.1\r\n\r\n"),
            Err(HttpError::Malformed(_))
        ));
        assert!(parse(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03").is_err());
    }

    #[test]
    fn other_methods_are_kept() {
        let (r, _) = parse(b"OPTIONS / HTTP/1.1\r\n\r\n").unwrap().unwrap();
        assert_eq!(r.method, Method::Other("OPTIONS".into()));
        assert_eq!(r.method.to_string(), "OPTIONS");
        let (r, _) = parse(b"HEAD / HTTP/1.1\r\n\r\n").unwrap().unwrap();
        assert_eq!(r.method, Method::Head);
    }

    #[test]
    fn cookies_and_repeated_headers() {
        let raw = b"GET / HTTP/1.1\r\nCookie: a=b; webvpncontext=ctx\r\nX-Multi: one\r\ncookie: webvpn=TOKEN+/=; c=d\r\nx-multi: two\r\nConnection: close\r\n\r\n";
        let (r, _) = parse(raw).unwrap().unwrap();
        assert_eq!(r.cookie("webvpn"), Some("TOKEN+/="));
        assert_eq!(r.cookie("webvpncontext"), Some("ctx"));
        assert_eq!(r.cookie("a"), Some("b"));
        assert_eq!(r.cookie("c"), Some("d"));
        assert_eq!(r.cookie("WEBVPN"), None);
        assert_eq!(r.cookie("missing"), None);
        assert_eq!(
            r.headers_named("X-MULTI").collect::<Vec<_>>(),
            vec!["one", "two"]
        );
        assert!(r.wants_close());
    }

    #[test]
    fn response_has_status_headers_and_length() {
        let r = response(
            200,
            "OK",
            &[
                ("Content-Type", "text/xml"),
                ("Set-Cookie", "webvpn=abc; Secure"),
                ("Content-Length", "999"),
            ],
            b"<x/>",
        );
        assert_eq!(
            String::from_utf8(r).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nSet-Cookie: webvpn=abc; Secure\r\nContent-Length: 4\r\n\r\n<x/>"
        );
    }

    #[test]
    fn response_strips_injected_line_breaks() {
        let r = response(
            401,
            "Bad\r\nX-Evil: 1",
            &[("X-Reason", "a\r\nSet-Cookie: x=y")],
            b"",
        );
        let s = String::from_utf8(r).unwrap();
        assert_eq!(
            s,
            "HTTP/1.1 401 BadX-Evil: 1\r\nX-Reason: aSet-Cookie: x=y\r\nContent-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn mutated_requests_never_panic() {
        let mut seed = init_post();
        seed.extend_from_slice(
            b"CONNECT /CSCOSSLC/tunnel HTTP/1.1\r\nCookie: webvpn=abc\r\n\r\nSTF\x01\x00\x00\x07\x00",
        );
        let limits = Limits {
            max_header_bytes: 600,
            max_headers: 16,
            max_body: 400,
        };
        for m in crate::testutil::mutations(&seed, 20_000, 2) {
            let mut rest = &m[..];
            while let Ok(Some((req, used))) = parse_request(rest, &limits) {
                assert!(used > 0 && used <= rest.len());
                assert!(req.body.len() <= limits.max_body);
                assert!(req.headers.len() <= limits.max_headers);
                let _ = (req.cookie("webvpn"), req.wants_close());
                rest = &rest[used..];
            }
        }
    }
}
