//! Setting up a session: TCP, TLS, the login exchange, and the CONNECT (protocol doc §3-§4).
//!
//! The exchange is openconnect's: `POST /` with the XML `init`, then each form the server sends is
//! filled and POSTed to its action with every cookie set so far, until `<auth id="success">` (at
//! once, for a gateway that authenticates the TLS client certificate); the
//! `webvpn` cookie (from `Set-Cookie` or `<session-token>`) then goes into a `CONNECT` on the same
//! connection. A reconnect skips the login and sends the CONNECT with the cookie it already has.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout_at;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tunnel_proto::auth_form::{self, ServerMessage};
use tunnel_proto::connect_client::{self, ConnectParams, ConnectReply};
use tunnel_proto::http_client::{self, Response};

use crate::error::ClientError;
use crate::tls::{client_config, Verify};
use crate::tunnel::{DtlsRequest, Tunnel};

/// Most forms a login may take before we give up (the gateway needs 1, ocserv 2).
const MAX_FORMS: usize = 6;

/// Where and how to connect. Cheap to share between thousands of sessions (clone the `Arc`s).
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The server's TLS address.
    pub server: SocketAddr,
    /// The `Host:` header (`ip` or `ip:port` when the port is not 443).
    pub host: String,
    /// The TLS server name (an IP address sends no SNI).
    pub server_name: ServerName<'static>,
    /// The TLS client configuration.
    pub tls: Arc<rustls::ClientConfig>,
    /// Deadline for a whole setup (TCP through the CONNECT answer).
    pub setup_timeout: Duration,
    /// `X-CSTP-Base-MTU` to send.
    pub base_mtu: u32,
    /// `X-CSTP-MTU` to ask for.
    pub mtu: u32,
    /// Offer DTLS (PSK-NEGOTIATE) in the CONNECT and run it when the server accepts.
    pub dtls: bool,
    /// How long a DTLS handshake may take before the tunnel goes on over CSTP.
    pub dtls_handshake_timeout: Duration,
    /// After DTLS fails (handshake, DPD, socket), try a new handshake this much later; `None`:
    /// CSTP for the rest of the tunnel. Default 60 s, openconnect's `dtls_attempt_period`.
    pub dtls_retry: Option<Duration>,
}

impl Endpoint {
    /// An endpoint for `server`, accepting its certificate as `verify` says, with a 30 s setup
    /// deadline and openconnect's MTU request for a 1500-byte link.
    pub fn new(server: SocketAddr, verify: Verify) -> Result<Self, rustls::Error> {
        let host = if server.port() == 443 {
            server.ip().to_string()
        } else {
            server.to_string()
        };
        Ok(Self {
            server,
            host,
            server_name: ServerName::IpAddress(server.ip().into()),
            tls: client_config(verify)?,
            setup_timeout: Duration::from_secs(30),
            base_mtu: 1500,
            mtu: 1390,
            dtls: false,
            dtls_handshake_timeout: Duration::from_secs(10),
            dtls_retry: Some(Duration::from_secs(60)),
        })
    }

    /// The same endpoint presenting `cert` when the server asks for a client certificate (a
    /// gateway in certificate-authentication mode then logs the session in as the certificate's
    /// user, without a form; [`Credentials`] are not used).
    pub fn with_client_cert(
        mut self,
        verify: Verify,
        cert: &crate::tls::ClientCert,
    ) -> Result<Self, rustls::Error> {
        self.tls = crate::tls::client_config_with_cert(verify, Some(cert))?;
        Ok(self)
    }
}

/// Login credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The username.
    pub username: String,
    /// The password.
    pub password: String,
    /// The group to pick from a `group_list`, if the server offers one.
    pub group: Option<String>,
}

/// How long each stage of a setup took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetupTimings {
    /// TCP connect.
    pub tcp: Duration,
    /// TLS handshake.
    pub tls: Duration,
    /// The login exchange (zero on a reconnect).
    pub auth: Duration,
    /// CONNECT request to its answer.
    pub connect: Duration,
    /// The CONNECT answer to the DTLS outcome, when the caller waited for it
    /// ([`Tunnel::wait_dtls`]); zero otherwise.
    pub dtls: Duration,
}

impl SetupTimings {
    /// The whole setup.
    #[must_use]
    pub fn total(&self) -> Duration {
        self.tcp + self.tls + self.auth + self.connect + self.dtls
    }
}

/// A session that is up: its tunnel, the cookie to reconnect with, and how long the setup took.
#[derive(Debug)]
pub struct Established {
    /// The tunnel.
    pub tunnel: Tunnel,
    /// The `webvpn` cookie.
    pub cookie: String,
    /// Per-stage timings.
    pub timings: SetupTimings,
}

/// An HTTP connection during setup: the TLS stream and the bytes read but not yet used.
struct Conn {
    tls: TlsStream<TcpStream>,
    buf: BytesMut,
    deadline: tokio::time::Instant,
}

impl Conn {
    async fn roundtrip(
        &mut self,
        request: &[u8],
        head_only: bool,
        stage: &'static str,
    ) -> Result<Response, ClientError> {
        let dl = self.deadline;
        let write = async {
            self.tls.write_all(request).await?;
            self.tls.flush().await
        };
        timeout_at(dl, write)
            .await
            .map_err(|_| ClientError::Timeout { stage })??;
        loop {
            if let Some((resp, used)) = http_client::parse_response(&self.buf, head_only)? {
                let _ = self.buf.split_to(used);
                return Ok(resp);
            }
            self.buf.reserve(4096);
            let n = timeout_at(dl, self.tls.read_buf(&mut self.buf))
                .await
                .map_err(|_| ClientError::Timeout { stage })??;
            if n == 0 {
                return Err(ClientError::Closed { stage });
            }
        }
    }
}

/// Lets many sockets share one source address: the local port is chosen at connect time for the
/// whole 4-tuple instead of at bind time (`IP_BIND_ADDRESS_NO_PORT`), so a source address is not
/// limited to one ephemeral range for all destinations.
#[allow(unsafe_code)]
fn bind_address_no_port(sock: &TcpSocket) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: the fd is a valid open socket owned by `sock` for the duration of the call, and the
    // option value points to a live c_int whose size is passed.
    let _ = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            std::ptr::addr_of!(one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

async fn open(
    ep: &Endpoint,
    source: Option<IpAddr>,
    deadline: tokio::time::Instant,
    timings: &mut SetupTimings,
) -> Result<Conn, ClientError> {
    let t0 = Instant::now();
    let tcp_err = |source| ClientError::TcpConnect {
        server: ep.server,
        source,
    };
    let sock = if ep.server.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(tcp_err)?;
    if let Some(src) = source {
        bind_address_no_port(&sock);
        sock.bind(SocketAddr::new(src, 0)).map_err(tcp_err)?;
    }
    let tcp = timeout_at(deadline, sock.connect(ep.server))
        .await
        .map_err(|_| ClientError::Timeout {
            stage: "tcp_connect",
        })?
        .map_err(tcp_err)?;
    let _ = tcp.set_nodelay(true);
    let t1 = Instant::now();
    timings.tcp = t1 - t0;
    let connector = TlsConnector::from(Arc::clone(&ep.tls));
    let tls = timeout_at(deadline, connector.connect(ep.server_name.clone(), tcp))
        .await
        .map_err(|_| ClientError::Timeout {
            stage: "tls_handshake",
        })?
        .map_err(ClientError::TlsHandshake)?;
    timings.tls = t1.elapsed();
    Ok(Conn {
        tls,
        buf: BytesMut::with_capacity(8192),
        deadline,
    })
}

/// Sets `name=value` in the jar (an empty value deletes it, as openconnect does).
fn store_cookie(jar: &mut Vec<(String, String)>, name: &str, value: &str) {
    jar.retain(|(n, _)| n != name);
    if !value.is_empty() {
        jar.push((name.to_owned(), value.to_owned()));
    }
}

fn cookie_header(jar: &[(String, String)]) -> String {
    jar.iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn auth_post(ep: &Endpoint, path: &str, jar: &[(String, String)], body: &str) -> Vec<u8> {
    let cookies = cookie_header(jar);
    let mut headers: Vec<(&str, &str)> = vec![
        ("Host", &ep.host),
        ("User-Agent", "Open AnyConnect VPN Agent v9.01-3"),
        ("Accept", "*/*"),
        ("Accept-Encoding", "identity"),
        ("X-Transcend-Version", "1"),
        ("X-Aggregate-Auth", "1"),
        ("X-Support-HTTP-Auth", "true"),
        ("Content-Type", "application/xml; charset=utf-8"),
    ];
    if !cookies.is_empty() {
        headers.insert(2, ("Cookie", &cookies));
    }
    http_client::request("POST", path, &headers, body.as_bytes())
}

/// Runs the login exchange on `conn`; returns the `webvpn` cookie.
async fn login(ep: &Endpoint, conn: &mut Conn, creds: &Credentials) -> Result<String, ClientError> {
    let mut jar: Vec<(String, String)> = Vec::new();
    let group_access = format!("https://{}/", ep.host);
    let mut path = "/".to_owned();
    let mut body = auth_form::init_body(&group_access, creds.group.as_deref());
    for _ in 0..MAX_FORMS {
        let resp = conn
            .roundtrip(&auth_post(ep, &path, &jar, &body), false, "login")
            .await?;
        for (name, value) in resp.set_cookies() {
            store_cookie(&mut jar, name, value);
        }
        if resp.code != 200 {
            return Err(ClientError::AuthRefused {
                code: resp.code,
                reason: resp.reason,
            });
        }
        match auth_form::parse_server_message(&resp.body)? {
            ServerMessage::Success { session_token } => {
                if let Some(t) = session_token.filter(|t| !t.is_empty()) {
                    store_cookie(&mut jar, tunnel_proto::connect::COOKIE_NAME, &t);
                }
                return jar
                    .into_iter()
                    .find(|(n, _)| n == tunnel_proto::connect::COOKIE_NAME)
                    .map(|(_, v)| v)
                    .ok_or(ClientError::NoCookie);
            }
            ServerMessage::Form(form) => {
                if let Some(err) = form.error.clone().filter(|e| !e.is_empty()) {
                    return Err(ClientError::LoginFailed(err));
                }
                let filled = form.fill(&creds.username, &creds.password, creds.group.as_deref())?;
                body = auth_form::reply_body(&filled);
                path = form.action;
            }
            _ => return Err(ClientError::LoginFailed("unexpected auth document".into())),
        }
    }
    Err(ClientError::TooManyForms(MAX_FORMS))
}

async fn tunnel_up(
    ep: &Endpoint,
    mut conn: Conn,
    cookie: &str,
    prev_ipv4: Option<Ipv4Addr>,
) -> Result<Tunnel, ClientError> {
    let req = connect_client::connect_request(&ConnectParams {
        host: &ep.host,
        cookie,
        hostname: "tunnel-bench",
        base_mtu: ep.base_mtu,
        mtu: ep.mtu,
        prev_ipv4,
        ipv6: false,
        dtls_master_secret: ep.dtls.then(master_secret),
    });
    let resp = conn.roundtrip(&req, true, "connect").await?;
    let reply = ConnectReply::from_response(&resp)?;
    let dtls = ep.dtls.then_some(DtlsRequest {
        base_mtu: ep.base_mtu,
        handshake_timeout: ep.dtls_handshake_timeout,
        retry_after: ep.dtls_retry,
    });
    Ok(Tunnel::new(conn.tls, conn.buf, reply, dtls))
}

/// 48 random bytes for `X-DTLS-Master-Secret` (unused in PSK mode; zeros if the RNG fails).
fn master_secret() -> [u8; 48] {
    let mut m = [0u8; 48];
    let _ = openssl::rand::rand_bytes(&mut m);
    m
}

/// Opens a session: TCP (from `source`, when given), TLS, login as `creds`, CONNECT.
pub async fn connect(
    ep: &Endpoint,
    creds: &Credentials,
    source: Option<IpAddr>,
) -> Result<Established, ClientError> {
    let deadline = tokio::time::Instant::now() + ep.setup_timeout;
    let mut timings = SetupTimings::default();
    let mut conn = open(ep, source, deadline, &mut timings).await?;
    let t = Instant::now();
    let cookie = login(ep, &mut conn, creds).await?;
    timings.auth = t.elapsed();
    let t = Instant::now();
    let tunnel = tunnel_up(ep, conn, &cookie, None).await?;
    timings.connect = t.elapsed();
    Ok(Established {
        tunnel,
        cookie,
        timings,
    })
}

/// Reopens a session with its cookie after the connection was lost: TCP, TLS, CONNECT (no login),
/// sending the previous address so the server can check it hands back the same one.
pub async fn reconnect(
    ep: &Endpoint,
    cookie: &str,
    prev_ipv4: Option<Ipv4Addr>,
    source: Option<IpAddr>,
) -> Result<Established, ClientError> {
    let deadline = tokio::time::Instant::now() + ep.setup_timeout;
    let mut timings = SetupTimings::default();
    let conn = open(ep, source, deadline, &mut timings).await?;
    let t = Instant::now();
    let tunnel = tunnel_up(ep, conn, cookie, prev_ipv4).await?;
    timings.connect = t.elapsed();
    Ok(Established {
        tunnel,
        cookie: cookie.to_owned(),
        timings,
    })
}
