//! The client's side of tunnel setup (protocol doc §4): the `CONNECT /CSCOSSLC/tunnel` request, and
//! reading the `X-CSTP-*` headers of its `200 CONNECTED` answer into a [`ConnectReply`].
//!
//! Header names are matched exactly, as openconnect does (`X-Cstp-Mtu` would be ignored by it, so
//! it is ignored here too); the status line must begin with `HTTP/1.1 200 `.
//!
//! DTLS (§7.1): a request may offer `PSK-NEGOTIATE` (with the `X-DTLS-Master-Secret` openconnect
//! always sends); the answer's `X-DTLS-*` headers become a [`DtlsReply`] only when the server chose
//! `PSK-NEGOTIATE` and named its port and App-ID. A malformed App-ID aborts the CONNECT, as it does
//! in openconnect.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::connect::{COOKIE_NAME, TUNNEL_PATH};
use crate::http_client::{self, Response};

/// What the client asks for in its CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectParams<'a> {
    /// `Host:` value (`host` or `host:port`).
    pub host: &'a str,
    /// The `webvpn` cookie from the login.
    pub cookie: &'a str,
    /// `X-CSTP-Hostname`.
    pub hostname: &'a str,
    /// `X-CSTP-Base-MTU` (the client's link MTU).
    pub base_mtu: u32,
    /// `X-CSTP-MTU` (what the client would like for the tunnel).
    pub mtu: u32,
    /// On a reconnect, the IPv4 address the session had (`X-CSTP-Address`).
    pub prev_ipv4: Option<Ipv4Addr>,
    /// Offer IPv6 (`X-CSTP-Full-IPv6-Capability: true`, address types `IPv6,IPv4`).
    pub ipv6: bool,
    /// Offer DTLS in PSK-NEGOTIATE mode, sending these 48 random bytes as `X-DTLS-Master-Secret`
    /// (used only by legacy DTLS, but openconnect always sends it and ocserv looks for it).
    /// `None`: no `X-DTLS-*` header, CSTP over TLS only (openconnect's `--no-dtls`).
    pub dtls_master_secret: Option<[u8; 48]>,
}

/// Upper-case hex, as openconnect writes `X-DTLS-Master-Secret`.
fn hex_upper(bytes: &[u8]) -> String {
    let digit = |n: u8| char::from_digit(u32::from(n), 16).map_or('0', |c| c.to_ascii_uppercase());
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(digit(b >> 4));
        s.push(digit(b & 0xf));
    }
    s
}

/// Builds the CONNECT request (DTLS offered only with [`ConnectParams::dtls_master_secret`]).
#[must_use]
pub fn connect_request(p: &ConnectParams<'_>) -> Vec<u8> {
    let cookie = format!("{COOKIE_NAME}={}", p.cookie);
    let base = p.base_mtu.to_string();
    let mtu = p.mtu.to_string();
    let prev = p.prev_ipv4.map(|a| a.to_string());
    let secret = p.dtls_master_secret.map(|m| hex_upper(&m));
    let mut headers: Vec<(&str, &str)> = vec![
        ("Host", p.host),
        ("User-Agent", "Open AnyConnect VPN Agent v9.01-3"),
        ("Cookie", &cookie),
        ("X-CSTP-Version", "1"),
        ("X-CSTP-Hostname", p.hostname),
        ("X-CSTP-Base-MTU", &base),
        ("X-CSTP-MTU", &mtu),
        (
            "X-CSTP-Address-Type",
            if p.ipv6 { "IPv6,IPv4" } else { "IPv4" },
        ),
    ];
    if let Some(prev) = &prev {
        headers.push(("X-CSTP-Address", prev));
    }
    if p.ipv6 {
        headers.push(("X-CSTP-Full-IPv6-Capability", "true"));
    }
    if let Some(secret) = &secret {
        headers.push(("X-DTLS-Master-Secret", secret));
        headers.push(("X-DTLS-CipherSuite", PSK_NEGOTIATE));
    }
    http_client::request("CONNECT", TUNNEL_PATH, &headers, b"")
}

/// The DTLS mode this client speaks (§7.1).
pub const PSK_NEGOTIATE: &str = "PSK-NEGOTIATE";

/// The DTLS channel the server offered in PSK-NEGOTIATE mode (§7.1, §4.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DtlsReply {
    /// `X-DTLS-Port`: the UDP port on the server's IP address.
    pub port: u16,
    /// `X-DTLS-App-ID` decoded (1 to 32 bytes): the ClientHello `session_id`.
    pub app_id: Vec<u8>,
    /// `X-DTLS-DPD` seconds (0 when absent).
    pub dpd_secs: u32,
    /// `X-DTLS-Keepalive` seconds (0 when absent).
    pub keepalive_secs: u32,
}

/// `X-DTLS-App-ID`: even-length hex of 2 to 64 digits (openconnect aborts the CONNECT otherwise).
fn parse_app_id(v: &str) -> Option<Vec<u8>> {
    if v.is_empty() || v.len() > 64 || v.len() % 2 != 0 {
        return None;
    }
    let digit = |c: u8| {
        char::from(c)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    v.as_bytes()
        .chunks_exact(2)
        .map(|pair| match pair {
            [hi, lo] => Some(digit(*hi)? << 4 | digit(*lo)?),
            _ => None,
        })
        .collect()
}

/// The tunnel parameters the server pushed in its `200 CONNECTED` answer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnectReply {
    /// `X-CSTP-Address` (IPv4).
    pub ipv4: Option<Ipv4Addr>,
    /// `X-CSTP-Netmask` (IPv4).
    pub netmask: Option<Ipv4Addr>,
    /// `X-CSTP-Address-IP6` address part.
    pub ipv6: Option<Ipv6Addr>,
    /// `X-CSTP-MTU`.
    pub mtu: u32,
    /// `X-CSTP-DPD` seconds (0 when absent).
    pub dpd_secs: u32,
    /// `X-CSTP-Keepalive` seconds (0 when absent).
    pub keepalive_secs: u32,
    /// `X-CSTP-Split-Include` values as sent.
    pub split_include: Vec<String>,
    /// `X-CSTP-Base-MTU`: the link MTU the DTLS record size is derived from (§7.7).
    pub base_mtu: Option<u32>,
    /// The DTLS offer, when the server chose PSK-NEGOTIATE and sent its port and App-ID.
    pub dtls: Option<DtlsReply>,
}

/// Why a CONNECT answer can't start a tunnel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectReplyError {
    /// The server refused (401: cookie rejected; 503: unavailable, with `X-Reason`).
    #[error("CONNECT refused: {code} {reason}{}", x_reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default())]
    Refused {
        /// Status code.
        code: u16,
        /// Reason phrase.
        reason: String,
        /// `X-Reason`, if sent.
        x_reason: Option<String>,
    },
    /// `X-CSTP-MTU` is missing or not a number (openconnect requires it).
    #[error("CONNECT answer has no valid X-CSTP-MTU")]
    NoMtu,
    /// Neither an IPv4 nor an IPv6 address was pushed.
    #[error("CONNECT answer has no X-CSTP-Address")]
    NoAddress,
    /// A pushed value is not what its header must hold.
    #[error("CONNECT answer header {name} has a bad value {value:?}")]
    BadValue {
        /// Header name.
        name: String,
        /// Its value.
        value: String,
    },
}

fn bad(name: &str, value: &str) -> ConnectReplyError {
    ConnectReplyError::BadValue {
        name: name.to_owned(),
        value: value.to_owned(),
    }
}

impl ConnectReply {
    /// Reads the answer to a CONNECT (parsed with
    /// [`parse_response`](crate::http_client::parse_response) in head-only mode).
    pub fn from_response(r: &Response) -> Result<Self, ConnectReplyError> {
        if r.code != 200 {
            return Err(ConnectReplyError::Refused {
                code: r.code,
                reason: r.reason.clone(),
                x_reason: r.header("X-Reason").map(str::to_owned),
            });
        }
        let mut out = Self::default();
        let mut mtu = None;
        let (mut port, mut app_id, mut psk) = (None, None, false);
        let (mut dtls_dpd, mut dtls_ka) = (0, 0);
        for (name, value) in &r.headers {
            let v = value.as_str();
            let num = || v.parse::<u32>().map_err(|_| bad(name, v));
            match name.as_str() {
                "X-CSTP-Address" if v.contains(':') => {
                    out.ipv6 = Some(v.parse().map_err(|_| bad(name, v))?);
                }
                "X-CSTP-Address" => out.ipv4 = Some(v.parse().map_err(|_| bad(name, v))?),
                "X-CSTP-Netmask" if !v.contains(':') => {
                    out.netmask = Some(v.parse().map_err(|_| bad(name, v))?);
                }
                "X-CSTP-Address-IP6" => {
                    let addr = v.split('/').next().unwrap_or(v);
                    out.ipv6 = Some(addr.parse().map_err(|_| bad(name, v))?);
                }
                "X-CSTP-MTU" => mtu = Some(num()?),
                "X-CSTP-DPD" => out.dpd_secs = num()?,
                "X-CSTP-Keepalive" => out.keepalive_secs = num()?,
                "X-CSTP-Split-Include" => out.split_include.push(v.to_owned()),
                "X-CSTP-Base-MTU" => out.base_mtu = Some(num()?),
                "X-DTLS-Port" => port = Some(v.parse::<u16>().map_err(|_| bad(name, v))?),
                "X-DTLS-App-ID" => app_id = Some(parse_app_id(v).ok_or_else(|| bad(name, v))?),
                "X-DTLS-CipherSuite" => psk = v == PSK_NEGOTIATE,
                "X-DTLS-DPD" => dtls_dpd = num()?,
                "X-DTLS-Keepalive" => dtls_ka = num()?,
                _ => {}
            }
        }
        if let (Some(port), Some(app_id), true) = (port, app_id, psk) {
            out.dtls = Some(DtlsReply {
                port,
                app_id,
                dpd_secs: dtls_dpd,
                keepalive_secs: dtls_ka,
            });
        }
        out.mtu = mtu.ok_or(ConnectReplyError::NoMtu)?;
        if out.ipv4.is_none() && out.ipv6.is_none() {
            return Err(ConnectReplyError::NoAddress);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connect::{ConnectRequest, ConnectResponse};
    use crate::http_client::parse_response;

    fn server_reply() -> ConnectResponse {
        ConnectResponse {
            ipv4: Some((
                "198.18.128.7".parse().unwrap(),
                "255.255.255.0".parse().unwrap(),
            )),
            ipv6: Some(("fd00::7".parse().unwrap(), 128)),
            mtu: 1400,
            base_mtu: Some(1500),
            dpd_secs: 90,
            keepalive_secs: 32,
            idle_timeout_secs: None,
            session_timeout_secs: None,
            dns: vec![],
            default_domain: None,
            split_dns: vec![],
            split_include: vec!["198.18.2.0/24".parse().unwrap()],
            split_exclude: vec![],
            banner: None,
            server_name: None,
            rekey_secs: None,
            dtls: None,
        }
    }

    #[test]
    fn the_gateways_connect_answer_reads_back_into_the_same_values() {
        let raw = server_reply().encode();
        let (resp, used) = parse_response(&raw, true).unwrap().unwrap();
        assert_eq!(used, raw.len());
        let r = ConnectReply::from_response(&resp).unwrap();
        assert_eq!(r.ipv4, Some("198.18.128.7".parse().unwrap()));
        assert_eq!(r.netmask, Some("255.255.255.0".parse().unwrap()));
        assert_eq!(r.ipv6, Some("fd00::7".parse().unwrap()));
        assert_eq!((r.mtu, r.dpd_secs, r.keepalive_secs), (1400, 90, 32));
        assert_eq!(r.split_include, vec!["198.18.2.0/255.255.255.0"]);
    }

    #[test]
    fn connect_request_is_accepted_by_the_servers_parser() {
        let raw = connect_request(&ConnectParams {
            host: "198.18.1.1",
            cookie: "abcDEF123",
            hostname: "bench",
            base_mtu: 1500,
            mtu: 1390,
            prev_ipv4: Some("198.18.128.9".parse().unwrap()),
            ipv6: false,
            dtls_master_secret: None,
        });
        let (req, used) = crate::http::parse_request(&raw, &crate::http::Limits::default())
            .unwrap()
            .unwrap();
        assert_eq!(used, raw.len());
        let c = ConnectRequest::from_request(&req).unwrap();
        assert_eq!(c.cookie, "abcDEF123");
        assert_eq!(c.prev_ipv4, Some("198.18.128.9".parse().unwrap()));
        assert_eq!(c.base_mtu, Some(1500));
        assert!(!c.dtls_psk, "no DTLS offered without a master secret");
    }

    #[test]
    fn a_dtls_offer_is_read_by_the_server_as_psk_negotiate() {
        let raw = connect_request(&ConnectParams {
            host: "198.18.1.1",
            cookie: "abc",
            hostname: "bench",
            base_mtu: 1500,
            mtu: 1390,
            prev_ipv4: None,
            ipv6: false,
            dtls_master_secret: Some([0xab; 48]),
        });
        let text = String::from_utf8(raw.clone()).unwrap();
        assert!(text.contains(&format!("X-DTLS-Master-Secret: {}\r\n", "AB".repeat(48))));
        let (req, _) = crate::http::parse_request(&raw, &crate::http::Limits::default())
            .unwrap()
            .unwrap();
        assert!(ConnectRequest::from_request(&req).unwrap().dtls_psk);
    }

    #[test]
    fn the_gateways_dtls_offer_reads_back_with_its_app_id_and_timers() {
        let mut reply = server_reply();
        let app_id: [u8; 32] = std::array::from_fn(|i| u8::try_from(i * 7).unwrap());
        reply.dtls = Some(crate::connect::DtlsOffer {
            port: 4443,
            app_id,
            dpd_secs: 30,
            keepalive_secs: 12,
        });
        let raw = reply.encode();
        let (resp, _) = parse_response(&raw, true).unwrap().unwrap();
        let r = ConnectReply::from_response(&resp).unwrap();
        assert_eq!(r.base_mtu, Some(1500));
        assert_eq!(
            r.dtls,
            Some(DtlsReply {
                port: 4443,
                app_id: app_id.to_vec(),
                dpd_secs: 30,
                keepalive_secs: 12
            })
        );
        // Without DTLS in the answer there is no offer.
        let raw = server_reply().encode();
        let (resp, _) = parse_response(&raw, true).unwrap().unwrap();
        assert_eq!(ConnectReply::from_response(&resp).unwrap().dtls, None);
    }

    #[test]
    fn a_bad_app_id_aborts_and_a_legacy_suite_is_no_offer() {
        let head = "HTTP/1.1 200 CONNECTED\r\nX-CSTP-MTU: 1400\r\nX-CSTP-Address: 1.2.3.4\r\nX-DTLS-Port: 443\r\n";
        let read = |extra: &str| {
            let raw = format!("{head}{extra}\r\n");
            let (resp, _) = parse_response(raw.as_bytes(), true).unwrap().unwrap();
            ConnectReply::from_response(&resp)
        };
        for bad_id in ["abc", "", "zz", &"00".repeat(33)] {
            assert!(
                matches!(
                    read(&format!(
                        "X-DTLS-App-ID: {bad_id}\r\nX-DTLS-CipherSuite: PSK-NEGOTIATE\r\n"
                    )),
                    Err(ConnectReplyError::BadValue { .. })
                ),
                "{bad_id:?} accepted"
            );
        }
        let legacy = read("X-DTLS-App-ID: 0a0b\r\nX-DTLS-CipherSuite: AES128-SHA\r\n").unwrap();
        assert_eq!(legacy.dtls, None);
        let short = read("X-DTLS-App-ID: 0A0b\r\nX-DTLS-CipherSuite: PSK-NEGOTIATE\r\n").unwrap();
        assert_eq!(short.dtls.map(|d| d.app_id), Some(vec![0x0a, 0x0b]));
    }

    #[test]
    fn refusals_missing_mtu_and_wrong_case_names_are_errors() {
        let raw = crate::connect::error_response(503, "Service Unavailable", Some("pool empty"));
        let (resp, _) = parse_response(&raw, true).unwrap().unwrap();
        assert_eq!(
            ConnectReply::from_response(&resp),
            Err(ConnectReplyError::Refused {
                code: 503,
                reason: "Service Unavailable".into(),
                x_reason: Some("pool empty".into())
            })
        );
        let raw = b"HTTP/1.1 200 CONNECTED\r\nX-Cstp-Mtu: 1400\r\nX-CSTP-Address: 1.2.3.4\r\n\r\n";
        let (resp, _) = parse_response(raw, true).unwrap().unwrap();
        assert_eq!(
            ConnectReply::from_response(&resp),
            Err(ConnectReplyError::NoMtu)
        );
    }
}
