//! The client's side of the HTTP phase: writing a request and reading the server's response.
//!
//! A client of the gateway (the capacity harness, tests) speaks the same keep-alive HTTP/1.1 over
//! TLS as openconnect (protocol doc §3.1): auth POSTs whose answers are framed by `Content-Length`,
//! then a `CONNECT` whose `200` answer has no body, after which the stream carries CSTP frames.
//! [`parse_response`] reads one response from the front of a buffer and says how many bytes it
//! used, so bytes after a `CONNECT` answer are kept for the CSTP decoder.

use crate::http::{collect_headers, find_header, header_safe, FramingError};

/// Largest response header block accepted, in bytes.
pub const MAX_RESPONSE_HEAD: usize = 16 * 1024;
/// Largest response body accepted, in bytes.
pub const MAX_RESPONSE_BODY: usize = 256 * 1024;
/// Largest number of response header lines.
const MAX_RESPONSE_HEADERS: usize = 96;

/// One HTTP response as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub code: u16,
    /// The reason phrase (`CONNECTED` for a tunnel), as sent.
    pub reason: String,
    /// Header lines in order, names as sent (case kept: the CONNECT answer's names are
    /// case-sensitive, protocol doc §4.2), values trimmed.
    pub headers: Vec<(String, String)>,
    /// The body (empty for a `CONNECT` answer).
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name`, compared case-insensitively.
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// Every `Set-Cookie` as `(name, value)`: the value ends at the first `;` (attributes dropped).
    /// An empty value means the server deletes that cookie.
    pub fn set_cookies(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie"))
            .filter_map(|(_, v)| {
                let pair = v.split(';').next().unwrap_or_default();
                let (name, value) = pair.split_once('=')?;
                Some((name.trim(), value.trim()))
            })
    }

    /// True if the server said it will close the connection after this response.
    #[must_use]
    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// Why a response could not be read. The connection can't be used further.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResponseError {
    /// The header block is larger than [`MAX_RESPONSE_HEAD`].
    #[error("HTTP response header block of at least {len} bytes exceeds {MAX_RESPONSE_HEAD}")]
    HeadTooLarge {
        /// Bytes seen so far.
        len: usize,
    },
    /// `Content-Length` is larger than [`MAX_RESPONSE_BODY`].
    #[error("HTTP response body of {len} bytes exceeds {MAX_RESPONSE_BODY}")]
    BodyTooLarge {
        /// The announced length.
        len: u64,
    },
    /// The status line or a header is not HTTP/1.x syntax.
    #[error("malformed HTTP response: {0}")]
    Malformed(&'static str),
    /// `Content-Length` is not a number, or several disagree.
    #[error("invalid Content-Length in response: {0:?}")]
    BadContentLength(String),
    /// The response uses `Transfer-Encoding` (chunked), which neither the gateway nor ocserv sends.
    #[error("response Transfer-Encoding {0:?} is not supported")]
    ChunkedUnsupported(String),
}

/// Parses one response from the front of `buf`.
///
/// `Ok(None)` means incomplete: read more and call again. `Ok(Some((response, used)))` gives the
/// response and the bytes it used. With `head_only` (the answer to a `CONNECT`) a `200` response
/// ends at its blank line whatever its headers say, since CSTP frames follow it; other responses
/// have a body of `Content-Length` bytes (none when absent).
pub fn parse_response(
    buf: &[u8],
    head_only: bool,
) -> Result<Option<(Response, usize)>, ResponseError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut slots);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_RESPONSE_HEAD {
                return Err(ResponseError::HeadTooLarge { len: buf.len() });
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ResponseError::Malformed("too many headers"))
        }
        Err(_) => return Err(ResponseError::Malformed("invalid status or header line")),
    };
    if head_len > MAX_RESPONSE_HEAD {
        return Err(ResponseError::HeadTooLarge { len: head_len });
    }
    let Some(code) = resp.code else {
        return Err(ResponseError::Malformed("no status code"));
    };
    let reason = resp.reason.unwrap_or_default().to_owned();
    let (headers, content_length) = collect_headers(resp.headers).map_err(|e| match e {
        FramingError::TransferEncoding(v) => ResponseError::ChunkedUnsupported(v),
        FramingError::BadContentLength(v) => ResponseError::BadContentLength(v),
    })?;
    let body_len = if head_only && code == 200 {
        0
    } else {
        let n = content_length.unwrap_or(0);
        match usize::try_from(n) {
            Ok(n) if n <= MAX_RESPONSE_BODY => n,
            _ => return Err(ResponseError::BodyTooLarge { len: n }),
        }
    };
    let end = head_len + body_len;
    let Some(body) = buf.get(head_len..end) else {
        return Ok(None);
    };
    Ok(Some((
        Response {
            code,
            reason,
            headers,
            body: body.to_vec(),
        },
        end,
    )))
}

/// Builds a request: `{method} {path} HTTP/1.1`, the headers in order, `Content-Length` when there
/// is a body (or always for `POST`), then the body. Control characters in names and values are
/// removed so that a value can't add header lines.
#[must_use]
pub fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    use std::fmt::Write as _;
    let mut head = String::with_capacity(256 + headers.len() * 32);
    let _ = write!(
        head,
        "{} {} HTTP/1.1\r\n",
        header_safe(method),
        header_safe(path)
    );
    for (name, value) in headers {
        let _ = write!(head, "{}: {}\r\n", header_safe(name), header_safe(value));
    }
    if !body.is_empty() || method == "POST" {
        let _ = write!(head, "Content-Length: {}\r\n", body.len());
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_with_body_reports_bytes_used_and_keeps_the_rest() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nSet-Cookie: webvpn=abc; Secure\r\n\r\nxyzNEXT";
        let (r, used) = parse_response(raw, false).unwrap().unwrap();
        assert_eq!(r.code, 200);
        assert_eq!(r.body, b"xyz");
        assert_eq!(&raw[used..], b"NEXT");
        assert_eq!(r.set_cookies().collect::<Vec<_>>(), vec![("webvpn", "abc")]);
    }

    #[test]
    fn partial_head_or_body_asks_for_more() {
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-", false),
            Ok(None)
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", false),
            Ok(None)
        );
    }

    #[test]
    fn connect_answer_ends_at_blank_line_and_frames_follow() {
        let raw = b"HTTP/1.1 200 CONNECTED\r\nX-CSTP-MTU: 1400\r\n\r\nSTF\x01";
        let (r, used) = parse_response(raw, true).unwrap().unwrap();
        assert_eq!(r.reason, "CONNECTED");
        assert_eq!(r.headers[0].0, "X-CSTP-MTU");
        assert_eq!(&raw[used..], b"STF\x01");
    }

    #[test]
    fn refused_connect_body_is_consumed() {
        let raw = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\n\r\nno";
        let (r, used) = parse_response(raw, true).unwrap().unwrap();
        assert_eq!((r.code, used), (401, raw.len()));
    }

    #[test]
    fn oversized_and_chunked_responses_are_errors() {
        let big = format!("HTTP/1.1 200 OK\r\nX: {}", "a".repeat(MAX_RESPONSE_HEAD));
        assert!(matches!(
            parse_response(big.as_bytes(), false),
            Err(ResponseError::HeadTooLarge { .. })
        ));
        assert!(matches!(
            parse_response(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false
            ),
            Err(ResponseError::ChunkedUnsupported(_))
        ));
        assert!(matches!(
            parse_response(
                b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n",
                false
            ),
            Err(ResponseError::BodyTooLarge { .. })
        ));
    }

    #[test]
    fn request_is_parsed_back_by_the_servers_reader() {
        let raw = request(
            "POST",
            "/auth",
            &[("Host", "h:443"), ("X-Evil", "a\r\nInjected: 1")],
            b"<x/>",
        );
        let (req, used) = crate::http::parse_request(&raw, &crate::http::Limits::default())
            .unwrap()
            .unwrap();
        assert_eq!(used, raw.len());
        assert_eq!(req.path, "/auth");
        assert_eq!(req.body, b"<x/>");
        assert_eq!(req.header("X-Evil"), Some("aInjected: 1"));
        assert!(req.header("Injected").is_none());
    }
}
