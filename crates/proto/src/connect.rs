//! Tunnel setup: the `CONNECT /CSCOSSLC/tunnel` request and its `200 CONNECTED` answer.
//!
//! openconnect reads the CONNECT response one line at a time and matches header names
//! **case-sensitively** (protocol doc §4.2): `X-Cstp-Mtu` is silently ignored and a missing MTU
//! aborts the session. So the response is written here byte for byte, never through a generic HTTP
//! library. The status line must start with exactly `HTTP/1.1 200 `.

use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::http::{self, header_safe, Method};

/// The only tunnel path openconnect uses (not `/CSTP/tunnel`).
pub const TUNNEL_PATH: &str = "/CSCOSSLC/tunnel";

/// The name of the session cookie.
pub const COOKIE_NAME: &str = "webvpn";

/// What the client asked for in its CONNECT request (§4.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRequest {
    /// The `webvpn` cookie value (the session token). Never empty.
    pub cookie: String,
    /// `X-CSTP-Hostname`: the client's local hostname.
    pub hostname: Option<String>,
    /// `User-Agent`.
    pub user_agent: Option<String>,
    /// `X-CSTP-Base-MTU`: the client's link MTU (65535 on loopback).
    pub base_mtu: Option<u32>,
    /// `X-CSTP-MTU`: the tunnel MTU the client proposes.
    pub mtu: Option<u32>,
    /// `X-CSTP-Full-IPv6-Capability: true`, or `X-CSTP-Address-Type` lists `IPv6`.
    pub ipv6_capable: bool,
    /// `X-CSTP-Address-Type` is absent or lists `IPv4`.
    pub ipv4_wanted: bool,
    /// The previous IPv4 address (`X-CSTP-Address`, sent on reconnect).
    pub prev_ipv4: Option<Ipv4Addr>,
    /// The previous IPv6 address (`X-CSTP-Address`, sent on reconnect).
    pub prev_ipv6: Option<Ipv6Addr>,
    /// The client offers PSK DTLS: `PSK-NEGOTIATE` is a whole `:`-separated token of
    /// `X-DTLS-CipherSuite` or `X-DTLS12-CipherSuite`.
    pub dtls_psk: bool,
}

/// Why a request is not a usable CONNECT.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The method is not `CONNECT`.
    #[error("expected CONNECT, got {0}")]
    NotConnect(String),
    /// The target is not [`TUNNEL_PATH`]; answer 404 like ocserv.
    #[error("CONNECT to unknown path {0:?} (only {TUNNEL_PATH})")]
    NotFound(String),
    /// No `webvpn` cookie, or an empty one; answer 401.
    #[error("CONNECT without a webvpn cookie")]
    MissingCookie,
    /// `webvpn=(null)`: the client never received a cookie from the auth exchange; answer 401.
    #[error("CONNECT with webvpn=(null): the client got no session cookie")]
    NullCookie,
}

impl ConnectRequest {
    /// Extract the CONNECT parameters from a parsed request.
    ///
    /// Malformed optional headers (a non-numeric MTU, an unparsable address) are ignored, as
    /// ocserv does; only the method, path and cookie are checked.
    pub fn from_request(req: &http::Request) -> Result<Self, ConnectError> {
        if req.method != Method::Connect {
            return Err(ConnectError::NotConnect(req.method.as_str().to_owned()));
        }
        if req.path != TUNNEL_PATH {
            return Err(ConnectError::NotFound(req.path.clone()));
        }
        let cookie = match req.cookie(COOKIE_NAME) {
            None | Some("") => return Err(ConnectError::MissingCookie),
            Some("(null)") => return Err(ConnectError::NullCookie),
            Some(c) => c.to_owned(),
        };
        let num = |name: &str| req.header(name).and_then(|v| v.trim().parse::<u32>().ok());
        let address_type = req.header("X-CSTP-Address-Type");
        let type_lists = |family: &str| {
            address_type
                .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(family)))
        };
        let full_v6 = req
            .header("X-CSTP-Full-IPv6-Capability")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));

        let mut prev_ipv4 = None;
        let mut prev_ipv6 = None;
        for v in req.headers_named("X-CSTP-Address") {
            match v.trim().parse::<IpAddr>() {
                Ok(IpAddr::V4(a)) if prev_ipv4.is_none() => prev_ipv4 = Some(a),
                Ok(IpAddr::V6(a)) if prev_ipv6.is_none() => prev_ipv6 = Some(a),
                _ => {}
            }
        }
        let dtls_psk = req
            .headers_named("X-DTLS-CipherSuite")
            .chain(req.headers_named("X-DTLS12-CipherSuite"))
            .flat_map(|v| v.split(':'))
            .any(|t| t.trim() == "PSK-NEGOTIATE");

        Ok(Self {
            cookie,
            hostname: req.header("X-CSTP-Hostname").map(str::to_owned),
            user_agent: req.header("User-Agent").map(str::to_owned),
            base_mtu: num("X-CSTP-Base-MTU"),
            mtu: num("X-CSTP-MTU"),
            ipv6_capable: full_v6 || type_lists("IPv6"),
            ipv4_wanted: address_type.is_none() || type_lists("IPv4"),
            prev_ipv4,
            prev_ipv6,
            dtls_psk,
        })
    }
}

/// The DTLS part of a CONNECT answer (PSK-NEGOTIATE mode, §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtlsOffer {
    /// UDP port on the same server IP (`X-DTLS-Port`).
    pub port: u16,
    /// Session identifier the client puts in the ClientHello `session_id` (`X-DTLS-App-ID`,
    /// written as 64 lowercase hex digits).
    pub app_id: [u8; 32],
    /// `X-DTLS-DPD` in seconds.
    pub dpd_secs: u32,
    /// `X-DTLS-Keepalive` in seconds.
    pub keepalive_secs: u32,
}

/// Everything the gateway pushes to the client in `200 CONNECTED` (§4.3).
///
/// At least one of `ipv4`/`ipv6` must be set, and `mtu` must be nonzero, or the client aborts.
/// Strings from configuration (domains, server name) have control characters removed; the banner
/// is percent-encoded, which the client decodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectResponse {
    /// Client IPv4 address and netmask (`X-CSTP-Address`, `X-CSTP-Netmask`). Must be identical
    /// on reconnect.
    pub ipv4: Option<(Ipv4Addr, Ipv4Addr)>,
    /// Client IPv6 address and prefix length (`X-CSTP-Address-IP6: addr/len`).
    pub ipv6: Option<(Ipv6Addr, u8)>,
    /// Tunnel MTU (`X-CSTP-MTU`), mandatory.
    pub mtu: u32,
    /// Link MTU (`X-CSTP-Base-MTU`); strongly recommended with DTLS.
    pub base_mtu: Option<u32>,
    /// `X-CSTP-DPD` in seconds.
    pub dpd_secs: u32,
    /// `X-CSTP-Keepalive` in seconds.
    pub keepalive_secs: u32,
    /// `X-CSTP-Idle-Timeout` in seconds; `None` is sent as `none`.
    pub idle_timeout_secs: Option<u32>,
    /// `X-CSTP-Session-Timeout` in seconds; `None` is sent as `none`.
    pub session_timeout_secs: Option<u32>,
    /// DNS servers, one `X-CSTP-DNS` (IPv4) or `X-CSTP-DNS-IP6` (IPv6) header each. The client
    /// keeps at most 3.
    pub dns: Vec<IpAddr>,
    /// `X-CSTP-Default-Domain`.
    pub default_domain: Option<String>,
    /// One `X-CSTP-Split-DNS` header per domain.
    pub split_dns: Vec<String>,
    /// Routes through the tunnel (`X-CSTP-Split-Include` / `X-CSTP-Split-Include-IP6`). Empty
    /// means "everything".
    pub split_include: Vec<IpNet>,
    /// Routes kept off the tunnel (`X-CSTP-Split-Exclude` / `X-CSTP-Split-Exclude-IP6`).
    pub split_exclude: Vec<IpNet>,
    /// `X-CSTP-Banner` (percent-encoded on the wire).
    pub banner: Option<String>,
    /// `X-CSTP-Server-Name` (informational).
    pub server_name: Option<String>,
    /// `X-CSTP-Rekey-Time` with `X-CSTP-Rekey-Method: new-tunnel`: the client reconnects with its
    /// cookie after this many seconds.
    pub rekey_secs: Option<u32>,
    /// The DTLS offer; `None` keeps the client on TLS only.
    pub dtls: Option<DtlsOffer>,
}

/// Writes one `Name: value\r\n` line.
struct Head(String);

impl Head {
    fn line(&mut self, name: &str, value: impl fmt::Display) {
        let _ = write!(self.0, "{name}: {value}\r\n");
    }
}

/// `X-CSTP-Banner` value: `%`, control characters and non-ASCII bytes percent-encoded (the client
/// decodes `%XX` back to bytes, so UTF-8 survives).
struct Banner<'a>(&'a str);

impl fmt::Display for Banner<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in self.0.as_bytes() {
            if b == b'%' || b.is_ascii_control() || !b.is_ascii() {
                write!(f, "%{b:02X}")?;
            } else {
                f.write_char(char::from(b))?;
            }
        }
        Ok(())
    }
}

/// Seconds or `none`.
struct OrNone(Option<u32>);

impl fmt::Display for OrNone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(n) => write!(f, "{n}"),
            None => f.write_str("none"),
        }
    }
}

/// 32 bytes as 64 lowercase hex digits.
struct Hex<'a>(&'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl ConnectResponse {
    /// The complete response header block, `HTTP/1.1 200 CONNECTED\r\n` through the final blank
    /// line, with exact-case header names. Send it as its own TLS record(s); CSTP frames follow.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut h = Head(String::with_capacity(1024));
        h.0.push_str("HTTP/1.1 200 CONNECTED\r\n");
        h.line("X-CSTP-Version", 1);
        if let Some(name) = &self.server_name {
            h.line("X-CSTP-Server-Name", header_safe(name));
        }
        h.line("X-CSTP-DPD", self.dpd_secs);
        if let Some(d) = &self.default_domain {
            h.line("X-CSTP-Default-Domain", header_safe(d));
        }
        if let Some((addr, mask)) = self.ipv4 {
            h.line("X-CSTP-Address", addr);
            h.line("X-CSTP-Netmask", mask);
        }
        if let Some((addr, len)) = self.ipv6 {
            h.line(
                "X-CSTP-Address-IP6",
                format_args!("{addr}/{}", len.min(128)),
            );
        }
        for dns in &self.dns {
            match dns {
                IpAddr::V4(a) => h.line("X-CSTP-DNS", a),
                IpAddr::V6(a) => h.line("X-CSTP-DNS-IP6", a),
            }
        }
        for d in &self.split_dns {
            h.line("X-CSTP-Split-DNS", header_safe(d));
        }
        for net in &self.split_include {
            route_line(&mut h, "X-CSTP-Split-Include", net);
        }
        h.line("X-CSTP-Tunnel-All-DNS", "false");
        for net in &self.split_exclude {
            route_line(&mut h, "X-CSTP-Split-Exclude", net);
        }
        h.line("X-CSTP-Keepalive", self.keepalive_secs);
        h.line("X-CSTP-Idle-Timeout", OrNone(self.idle_timeout_secs));
        if let Some(t) = self.rekey_secs {
            h.line("X-CSTP-Rekey-Time", t);
            h.line("X-CSTP-Rekey-Method", "new-tunnel");
        }
        h.line("X-CSTP-Session-Timeout", OrNone(self.session_timeout_secs));
        h.line("X-CSTP-Keep", "true");
        if let Some(d) = &self.dtls {
            h.line("X-DTLS-DPD", d.dpd_secs);
            h.line("X-DTLS-Port", d.port);
            h.line("X-DTLS-Keepalive", d.keepalive_secs);
            h.line("X-DTLS-App-ID", Hex(&d.app_id));
            h.line("X-DTLS-CipherSuite", "PSK-NEGOTIATE");
        }
        if let Some(b) = self.base_mtu {
            h.line("X-CSTP-Base-MTU", b);
        }
        h.line("X-CSTP-MTU", self.mtu);
        if let Some(b) = &self.banner {
            h.line("X-CSTP-Banner", Banner(b));
        }
        h.0.push_str("\r\n");
        h.0.into_bytes()
    }
}

/// `X-CSTP-Split-Include: 10.0.0.0/255.0.0.0` for IPv4, `X-CSTP-Split-Include-IP6: fd00::/64` for
/// IPv6. Host bits are cleared (the client would clear them with a warning).
fn route_line(h: &mut Head, name: &str, net: &IpNet) {
    match net {
        IpNet::V4(n) => h.line(name, format_args!("{}/{}", n.network(), n.netmask())),
        IpNet::V6(n) => h.line(
            &format!("{name}-IP6"),
            format_args!("{}/{}", n.network(), n.prefix_len()),
        ),
    }
}

/// A non-200 answer to CONNECT: `HTTP/1.1 {code} {reason}`, `Content-Length: 0`,
/// `Connection: close`, and `X-Reason` when given.
///
/// openconnect treats 401 as "cookie rejected" (exit 2, no reconnect) and prints `X-Reason` for
/// 503; anything else is a generic failure. Close the connection after sending it.
#[must_use]
pub fn error_response(code: u16, reason: &str, x_reason: Option<&str>) -> Vec<u8> {
    let mut head = Head(String::with_capacity(128));
    let _ = write!(head.0, "HTTP/1.1 {code} {}\r\n", header_safe(reason));
    head.line("Content-Length", 0);
    head.line("Connection", "close");
    if let Some(x) = x_reason {
        head.line("X-Reason", header_safe(x));
    }
    head.0.push_str("\r\n");
    head.0.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{parse_request, Limits};

    /// The CONNECT request from §4.1, as openconnect 9.01 sends it on a reconnect with DTLS.
    const CONNECT_RECONNECT: &str = "CONNECT /CSCOSSLC/tunnel HTTP/1.1\r\n\
Host: 127.0.0.1:4443\r\n\
User-Agent: Open AnyConnect VPN Agent v9.01-3\r\n\
Cookie: webvpn=3A0F1C2D3E4F5A6B7C8D9E0F\r\n\
X-CSTP-Version: 1\r\n\
X-CSTP-Hostname: vm\r\n\
X-AnyConnect-STRAP-Verify: MEUCIQDk\r\n\
X-AnyConnect-STRAP-Pubkey: MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\r\n\
X-CSTP-Accept-Encoding: oc-lz4,lzs\r\n\
X-CSTP-Base-MTU: 1500\r\n\
X-CSTP-MTU: 1390\r\n\
X-CSTP-Address-Type: IPv6,IPv4\r\n\
X-CSTP-Address: 192.168.77.10\r\n\
X-CSTP-Full-IPv6-Capability: true\r\n\
X-CSTP-Address: fd91:1234::8f78\r\n\
X-DTLS-Master-Secret: 6F1E7A3C9B2D4E5F60718293A4B5C6D7E8F90112233445566778899AABBCCDDEEFF00112233445566778899AABBCC\r\n\
X-DTLS-CipherSuite: PSK-NEGOTIATE:OC-DTLS1_2-AES256-GCM:OC2-DTLS1_2-CHACHA20-POLY1305:OC-DTLS1_2-AES128-GCM:DHE-RSA-AES256-SHA:DHE-RSA-AES128-SHA:AES256-SHA:AES128-SHA\r\n\
X-DTLS12-CipherSuite: ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256:AES256-GCM-SHA384:AES128-GCM-SHA256:DHE-RSA-AES256-SHA:DHE-RSA-AES128-SHA:AES256-SHA:AES128-SHA\r\n\
X-DTLS-Accept-Encoding: oc-lz4,lzs\r\n\
\r\n";

    fn req(raw: &str) -> http::Request {
        parse_request(raw.as_bytes(), &Limits::default())
            .unwrap()
            .unwrap()
            .0
    }

    fn connect(raw: &str) -> Result<ConnectRequest, ConnectError> {
        ConnectRequest::from_request(&req(raw))
    }

    #[test]
    fn parses_the_openconnect_reconnect_request() {
        let c = connect(CONNECT_RECONNECT).unwrap();
        assert_eq!(
            c,
            ConnectRequest {
                cookie: "3A0F1C2D3E4F5A6B7C8D9E0F".into(),
                hostname: Some("vm".into()),
                user_agent: Some("Open AnyConnect VPN Agent v9.01-3".into()),
                base_mtu: Some(1500),
                mtu: Some(1390),
                ipv6_capable: true,
                ipv4_wanted: true,
                prev_ipv4: Some(Ipv4Addr::new(192, 168, 77, 10)),
                prev_ipv6: Some("fd91:1234::8f78".parse().unwrap()),
                dtls_psk: true,
            }
        );
    }

    #[test]
    fn first_connect_without_dtls_or_ipv6() {
        let raw = "CONNECT /CSCOSSLC/tunnel HTTP/1.1\r\nHost: h\r\nCookie: webvpn=tok\r\nX-CSTP-Address-Type: IPv4\r\nX-CSTP-MTU: abc\r\n\r\n";
        let c = connect(raw).unwrap();
        assert_eq!(c.cookie, "tok");
        assert!(!c.ipv6_capable);
        assert!(c.ipv4_wanted);
        assert!(!c.dtls_psk);
        assert_eq!(c.mtu, None);
        assert_eq!(c.prev_ipv4, None);
        assert_eq!(c.prev_ipv6, None);
    }

    #[test]
    fn address_type_without_ipv4_means_ipv4_not_wanted() {
        let raw = "CONNECT /CSCOSSLC/tunnel HTTP/1.1\r\nCookie: webvpn=t\r\nX-CSTP-Address-Type: IPv6\r\n\r\n";
        let c = connect(raw).unwrap();
        assert!(!c.ipv4_wanted);
        assert!(c.ipv6_capable);
        let raw = "CONNECT /CSCOSSLC/tunnel HTTP/1.1\r\nCookie: webvpn=t\r\n\r\n";
        let c = connect(raw).unwrap();
        assert!(c.ipv4_wanted);
        assert!(!c.ipv6_capable);
    }

    #[test]
    fn psk_negotiate_must_be_a_whole_token() {
        let base = "CONNECT /CSCOSSLC/tunnel HTTP/1.1\r\nCookie: webvpn=t\r\n";
        let with = |h: &str| connect(&format!("{base}{h}\r\n\r\n")).unwrap().dtls_psk;
        assert!(with("X-DTLS-CipherSuite: PSK-NEGOTIATE"));
        assert!(with("X-DTLS-CipherSuite: AES128-SHA:PSK-NEGOTIATE"));
        assert!(with("X-DTLS12-CipherSuite: AES128-SHA:PSK-NEGOTIATE"));
        assert!(!with("X-DTLS-CipherSuite: PSK-NEGOTIATE2:AES128-SHA"));
        assert!(!with("X-DTLS-CipherSuite: XPSK-NEGOTIATE"));
        assert!(!with("X-DTLS-CipherSuite: AES128-SHA"));
    }

    #[test]
    fn rejects_wrong_method_path_and_cookies() {
        assert_eq!(
            connect("GET /CSCOSSLC/tunnel HTTP/1.1\r\nCookie: webvpn=t\r\n\r\n"),
            Err(ConnectError::NotConnect("GET".into()))
        );
        assert_eq!(
            connect("CONNECT /CSTP/tunnel HTTP/1.1\r\nCookie: webvpn=t\r\n\r\n"),
            Err(ConnectError::NotFound("/CSTP/tunnel".into()))
        );
        assert_eq!(
            connect("CONNECT /CSCOSSLC/tunnel HTTP/1.1\r\n\r\n"),
            Err(ConnectError::MissingCookie)
        );
        assert_eq!(
            connect("CONNECT /CSCOSSLC/tunnel HTTP/1.1\r\nCookie: webvpn=\r\n\r\n"),
            Err(ConnectError::MissingCookie)
        );
        assert_eq!(
            connect("CONNECT /CSCOSSLC/tunnel HTTP/1.1\r\nCookie: other=x\r\n\r\n"),
            Err(ConnectError::MissingCookie)
        );
        assert_eq!(
            connect("CONNECT /CSCOSSLC/tunnel HTTP/1.1\r\nCookie: webvpn=(null)\r\n\r\n"),
            Err(ConnectError::NullCookie)
        );
    }

    fn full_response() -> ConnectResponse {
        ConnectResponse {
            ipv4: Some((
                Ipv4Addr::new(192, 168, 77, 10),
                Ipv4Addr::new(255, 255, 255, 0),
            )),
            ipv6: Some(("fd91:1234::8f78".parse().unwrap(), 128)),
            mtu: 1434,
            base_mtu: Some(1500),
            dpd_secs: 90,
            keepalive_secs: 32400,
            idle_timeout_secs: Some(1200),
            session_timeout_secs: None,
            dns: vec![
                "192.168.77.1".parse().unwrap(),
                "fd91:1234::1".parse().unwrap(),
            ],
            default_domain: Some("corp.example".into()),
            split_dns: vec!["corp.example".into(), "lab.example".into()],
            split_include: vec![
                "10.10.10.0/24".parse().unwrap(),
                "172.16.5.1/12".parse().unwrap(),
                "fd00:1234::/64".parse().unwrap(),
            ],
            split_exclude: vec![
                "10.10.10.128/25".parse().unwrap(),
                "fd00:1234::8000/113".parse().unwrap(),
            ],
            banner: Some("Welcome 100%\nauthorised use only".into()),
            server_name: Some("tunnel-gateway 0.1".into()),
            rekey_secs: Some(172_800),
            dtls: Some(DtlsOffer {
                port: 443,
                app_id: core::array::from_fn(|i| u8::try_from(i).unwrap() * 8),
                dpd_secs: 90,
                keepalive_secs: 32400,
            }),
        }
    }

    #[test]
    fn encoded_response_has_exact_case_headers() {
        let bytes = full_response().encode();
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 "));
        assert!(text.starts_with("HTTP/1.1 200 CONNECTED\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
        assert_eq!(text.matches("\r\n\r\n").count(), 1);
        let lines: Vec<&str> = text.trim_end().split("\r\n").skip(1).collect();
        for expected in [
            "X-CSTP-Version: 1",
            "X-CSTP-Server-Name: tunnel-gateway 0.1",
            "X-CSTP-DPD: 90",
            "X-CSTP-Default-Domain: corp.example",
            "X-CSTP-Address: 192.168.77.10",
            "X-CSTP-Netmask: 255.255.255.0",
            "X-CSTP-Address-IP6: fd91:1234::8f78/128",
            "X-CSTP-DNS: 192.168.77.1",
            "X-CSTP-DNS-IP6: fd91:1234::1",
            "X-CSTP-Split-DNS: corp.example",
            "X-CSTP-Split-DNS: lab.example",
            "X-CSTP-Split-Include: 10.10.10.0/255.255.255.0",
            "X-CSTP-Split-Include: 172.16.0.0/255.240.0.0",
            "X-CSTP-Split-Include-IP6: fd00:1234::/64",
            "X-CSTP-Split-Exclude: 10.10.10.128/255.255.255.128",
            "X-CSTP-Split-Exclude-IP6: fd00:1234::8000/113",
            "X-CSTP-Tunnel-All-DNS: false",
            "X-CSTP-Keepalive: 32400",
            "X-CSTP-Idle-Timeout: 1200",
            "X-CSTP-Session-Timeout: none",
            "X-CSTP-Rekey-Time: 172800",
            "X-CSTP-Rekey-Method: new-tunnel",
            "X-CSTP-Keep: true",
            "X-DTLS-Port: 443",
            "X-DTLS-App-ID: 0008101820283038404850586068707880889098a0a8b0b8c0c8d0d8e0e8f0f8",
            "X-DTLS-CipherSuite: PSK-NEGOTIATE",
            "X-DTLS-DPD: 90",
            "X-DTLS-Keepalive: 32400",
            "X-CSTP-Base-MTU: 1500",
            "X-CSTP-MTU: 1434",
            "X-CSTP-Banner: Welcome 100%25%0Aauthorised use only",
        ] {
            assert!(lines.contains(&expected), "missing {expected:?} in\n{text}");
        }
        // Every line is a well-formed exact-case X-CSTP-/X-DTLS- header.
        for l in &lines {
            assert!(
                l.starts_with("X-CSTP-") || l.starts_with("X-DTLS-"),
                "unexpected line {l:?}"
            );
            assert!(l.contains(": "), "{l:?}");
        }
        // Split-Include order is preserved.
        let inc: Vec<_> = lines
            .iter()
            .filter(|l| l.starts_with("X-CSTP-Split-Include: "))
            .collect();
        assert_eq!(
            inc,
            [
                &"X-CSTP-Split-Include: 10.10.10.0/255.255.255.0",
                &"X-CSTP-Split-Include: 172.16.0.0/255.240.0.0"
            ]
        );
    }

    #[test]
    fn minimal_response_omits_optional_headers() {
        let r = ConnectResponse {
            ipv4: Some((
                Ipv4Addr::new(10, 0, 0, 2),
                Ipv4Addr::new(255, 255, 255, 255),
            )),
            ipv6: None,
            mtu: 1400,
            base_mtu: None,
            dpd_secs: 30,
            keepalive_secs: 20,
            idle_timeout_secs: None,
            session_timeout_secs: Some(3600),
            dns: vec![],
            default_domain: None,
            split_dns: vec![],
            split_include: vec![],
            split_exclude: vec![],
            banner: None,
            server_name: None,
            rekey_secs: None,
            dtls: None,
        };
        let text = String::from_utf8(r.encode()).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 200 CONNECTED\r\n\
X-CSTP-Version: 1\r\n\
X-CSTP-DPD: 30\r\n\
X-CSTP-Address: 10.0.0.2\r\n\
X-CSTP-Netmask: 255.255.255.255\r\n\
X-CSTP-Tunnel-All-DNS: false\r\n\
X-CSTP-Keepalive: 20\r\n\
X-CSTP-Idle-Timeout: none\r\n\
X-CSTP-Session-Timeout: 3600\r\n\
X-CSTP-Keep: true\r\n\
X-CSTP-MTU: 1400\r\n\
\r\n"
        );
    }

    #[test]
    fn config_strings_cannot_inject_header_lines() {
        let mut r = full_response();
        r.default_domain = Some("corp\r\nX-CSTP-MTU: 1".into());
        r.split_dns = vec!["a\nb".into()];
        r.server_name = Some("srv\r".into());
        r.banner = Some("line1\r\nX-CSTP-MTU: 1".into());
        let text = String::from_utf8(r.encode()).unwrap();
        let mtu_lines = text
            .split("\r\n")
            .filter(|l| l.starts_with("X-CSTP-MTU:"))
            .count();
        assert_eq!(mtu_lines, 1, "{text}");
        assert!(text.contains("X-CSTP-Default-Domain: corpX-CSTP-MTU: 1\r\n"));
        assert!(text.contains("X-CSTP-Split-DNS: ab\r\n"));
        assert!(text.contains("X-CSTP-Server-Name: srv\r\n"));
        assert!(text.contains("X-CSTP-Banner: line1%0D%0AX-CSTP-MTU: 1\r\n"));
        // No bare CR or LF anywhere except as line terminators.
        let stripped = text.replace("\r\n", "");
        assert!(!stripped.contains('\r') && !stripped.contains('\n'));
    }

    #[test]
    fn banner_keeps_utf8_via_percent_encoding() {
        let mut r = full_response();
        r.banner = Some("Grüß".into());
        let text = String::from_utf8(r.encode()).unwrap();
        assert!(text.contains("X-CSTP-Banner: Gr%C3%BC%C3%9F\r\n"), "{text}");
    }

    #[test]
    fn error_responses() {
        assert_eq!(
            String::from_utf8(error_response(
                503,
                "Service Unavailable",
                Some("no free address in pool")
            ))
            .unwrap(),
            "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\nX-Reason: no free address in pool\r\n\r\n"
        );
        assert_eq!(
            String::from_utf8(error_response(401, "Unauthorized", None)).unwrap(),
            "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let evil = String::from_utf8(error_response(503, "x", Some("a\r\nb"))).unwrap();
        assert!(evil.contains("X-Reason: ab\r\n"));
    }

    #[test]
    fn mutated_connect_requests_never_panic() {
        for m in crate::testutil::mutations(CONNECT_RECONNECT.as_bytes(), 20_000, 4) {
            if let Ok(Some((r, _))) = parse_request(&m, &Limits::default()) {
                if let Ok(c) = ConnectRequest::from_request(&r) {
                    assert!(!c.cookie.is_empty());
                }
            }
        }
    }

    #[test]
    fn arbitrary_config_strings_never_break_the_header_block() {
        let mut rng = crate::testutil::Rng::new(5);
        let alphabet: Vec<char> = "a%\r\n\0\t :é\u{7f}\u{85}\u{2028}".chars().collect();
        let random = |rng: &mut crate::testutil::Rng| -> String {
            (0..rng.below(20))
                .map(|_| alphabet[rng.below(alphabet.len())])
                .collect()
        };
        for _ in 0..2000 {
            let mut r = full_response();
            r.banner = Some(random(&mut rng));
            r.default_domain = Some(random(&mut rng));
            r.server_name = Some(random(&mut rng));
            r.split_dns = vec![random(&mut rng), random(&mut rng)];
            let text = String::from_utf8(r.encode()).unwrap();
            let body = text.strip_suffix("\r\n\r\n").unwrap();
            for line in body.split("\r\n").skip(1) {
                assert!(
                    line.starts_with("X-CSTP-") || line.starts_with("X-DTLS-"),
                    "{line:?}"
                );
                assert!(!line.contains('\r') && !line.contains('\n'), "{line:?}");
            }
        }
    }
}
