//! The TLS listener and the HTTP phase of a connection: health probes, the XML login exchange, and
//! the CONNECT that turns the connection into a tunnel (handed to `crate::tunnel`).
//!
//! Every connection gets `auth_timeout` from TCP accept to reach its CONNECT; header blocks and
//! bodies have size limits; anything malformed is answered (400/404/431) and closed with a logged
//! reason. None of this touches other connections.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout_at;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tunnel_proto::auth_xml::{self, ClientMessage, Form};
use tunnel_proto::connect::{self, ConnectError, ConnectRequest};
use tunnel_proto::http::{self, Limits, Method, Request};

use crate::ban::{Bans, UnauthGuard};
use crate::client_cert::{self, DeviceCert};
use crate::config::{AuthMethod, Config};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::reload::ReloadState;
use crate::sessions::{Session, Sessions};
use crate::table::SessionTable;
use crate::tunnel::Connected;
use crate::users::{UserDb, VerifyOutcome};

/// The fixed body of the health page. No version, no counts: probes learn nothing internal.
pub const HEALTH_BODY: &[u8] = b"OK\n";
const DRAINING_BODY: &[u8] = b"draining\n";
/// Wrong passwords allowed on one connection before it is closed with 401.
const MAX_TRIES_PER_CONNECTION: u32 = 3;

/// Everything the connection tasks share.
pub struct Shared {
    /// The configuration (swapped on reload).
    pub config: ArcSwap<Config>,
    /// The users file (swapped on reload).
    pub users: ArcSwap<UserDb>,
    /// The TLS acceptor (swapped when the certificate changes).
    pub tls: ArcSwap<TlsAcceptor>,
    /// The address pool.
    pub pool: Arc<Pool>,
    /// Address to live connection.
    pub table: Arc<SessionTable>,
    /// Every session.
    pub sessions: Sessions,
    /// The metrics.
    pub metrics: Metrics,
    /// True after SIGTERM: probes get 503, logins and CONNECTs are refused.
    pub draining: AtomicBool,
    /// Writes sessions' upstream packets to the TUN.
    pub up: crate::dataplane::Upstream,
    /// When the server started.
    pub started: Instant,
    /// The certificate's `pin-sha256:` value at start, for clients that pin it (after a reload
    /// see [`crate::reload::ReloadState::certificate`]).
    pub pin: String,
    /// The DTLS (UDP) channel, when `[dtls] enabled`.
    pub dtls: Option<Arc<crate::dtls::DtlsServer>>,
    /// Failure scores, bans and unauthenticated connections per source address.
    pub bans: Arc<Bans>,
    /// What `/readyz` checks.
    pub health: Health,
    /// Live reload state (config path, certificate in use).
    pub reload: ReloadState,
    /// How many data-plane threads run ([`crate::workers`]).
    pub threads: usize,
    /// The TUN steering program, once attached ([`crate::steering`]).
    pub steering: std::sync::OnceLock<crate::steering::Steering>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("sessions", &self.sessions.len())
            .field("draining", &self.is_draining())
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// True while the server drains.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// `reason` of `tunneld_connections_refused_total`: the file table was full (`EMFILE`, `ENFILE`),
/// so the connection was reset at once instead of being left to wait in the listen backlog.
pub const REFUSED_OPEN_FILES: &str = "open_files";
/// Held by each TLS listener's `accept` (the data-plane threads each have one, and normally share
/// one file table), so that the descriptor a loop frees from its reserve is taken by its own
/// accept and not by another thread's. An `accept` call takes microseconds, once per connection.
static ACCEPTING: std::sync::Mutex<()> = std::sync::Mutex::new(());
/// How often the "open-files limit reached" warning may be logged.
const OUT_OF_FILES_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Accepts TLS connections until the listener fails or the task is cancelled. A banned source,
/// or one at `server.max_unauthenticated_per_source`, is closed here before the TLS handshake.
///
/// Every session is an open file, and the open-files limit caps them. A connection that lands in
/// the top [`crate::workers::FILES_HEADROOM`] numbers of the file table is reset at once: the
/// client learns that this gateway is full and can try another, every established session keeps
/// working, and the headroom stays free for the metrics listener, `tunnelctl` and reloads. Should
/// something else fill the table, `accept` fails with `EMFILE`, and the connection would wait in
/// the backlog until its client gives up: for that the loop keeps one descriptor in reserve
/// (`/dev/null`, opened in the table of the thread that runs it), which it closes to take the
/// waiting connection and reset it, and then opens again. Such refusals are counted
/// (`tunneld_connections_refused_total{reason="open_files"}`) and logged at most every ten seconds.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    shared.health.set_listening(true);
    let mut spare = std::fs::File::open("/dev/null").ok();
    let mut out_of_files = OutOfFiles::new(
        shared
            .metrics
            .connections_refused
            .with_label_values(&[REFUSED_OPEN_FILES]),
    );
    loop {
        let accepted = std::future::poll_fn(|cx| {
            let _one = ACCEPTING.lock().unwrap_or_else(PoisonError::into_inner);
            listener.poll_accept(cx)
        })
        .await;
        match accepted {
            Ok((tcp, _)) if crate::workers::in_headroom(std::os::fd::AsRawFd::as_raw_fd(&tcp)) => {
                // The table is full but for its headroom: keep that for the operator's tools.
                let _ = tcp.set_zero_linger();
                drop(tcp);
                out_of_files.note(true, None, Instant::now());
            }
            Ok((tcp, peer)) => {
                let limit = shared.config.load().server.max_unauthenticated_per_source;
                match shared.bans.admit(peer.ip(), limit, Instant::now()) {
                    Ok(guard) => {
                        let _ = tcp.set_nodelay(true);
                        tokio::spawn(handle_connection(Arc::clone(&shared), tcp, peer, guard));
                    }
                    Err(refusal) => {
                        tracing::debug!(%peer, reason = refusal.as_str(), "connection refused at accept");
                        // Reset rather than close: no TIME_WAIT on our side for a refused peer.
                        let _ = tcp.set_zero_linger();
                        drop(tcp);
                    }
                }
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                // The reserve makes room for exactly one accept, and no other listener's accept
                // can take that room meanwhile.
                let refused = {
                    let _one = ACCEPTING.lock().unwrap_or_else(PoisonError::into_inner);
                    let refused = spare.take().is_some() && refuse_one(&listener);
                    spare = std::fs::File::open("/dev/null").ok();
                    refused
                };
                out_of_files.note(refused, Some(&e), Instant::now());
                if !refused {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
            Err(e) => {
                // ENOBUFS, ENOMEM and the like: back off briefly instead of spinning; the listener
                // stays.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Takes one waiting connection from `listener` and resets it. False if none was waiting or the
/// accept failed again.
fn refuse_one(listener: &TcpListener) -> bool {
    match socket2::SockRef::from(listener).accept() {
        Ok((sock, _)) => {
            let _ = sock.set_linger(Some(std::time::Duration::ZERO));
            true
        }
        Err(_) => false,
    }
}

/// Connections refused for want of files: counted, and warned about at most every
/// [`OUT_OF_FILES_LOG_EVERY`].
#[derive(Debug)]
struct OutOfFiles {
    counter: prometheus::IntCounter,
    last_log: Option<Instant>,
    refused: u64,
    failed: u64,
}

impl OutOfFiles {
    fn new(counter: prometheus::IntCounter) -> Self {
        Self {
            counter,
            last_log: None,
            refused: 0,
            failed: 0,
        }
    }

    /// A connection was reset (`refused`), or `accept` failed (`error`) with none to reset.
    fn note(&mut self, refused: bool, error: Option<&std::io::Error>, now: Instant) {
        if refused {
            self.counter.inc();
            self.refused += 1;
        } else {
            self.failed += 1;
        }
        if self
            .last_log
            .is_some_and(|t| now.duration_since(t) < OUT_OF_FILES_LOG_EVERY)
        {
            return;
        }
        tracing::warn!(
            error = error.map(tracing::field::display),
            refused = self.refused,
            retried = self.failed,
            "open-files limit reached: new connections are reset (counts since the last such line); established sessions are not affected; raise LimitNOFILE= (--ulimit nofile= for a container)"
        );
        self.last_log = Some(now);
        self.refused = 0;
        self.failed = 0;
    }
}

/// What the HTTP phase decided after one request.
enum Next {
    /// Keep reading requests on this connection.
    Continue,
    /// Close the connection.
    Close,
    /// The CONNECT was accepted: run the tunnel.
    Tunnel(Arc<Session>, ConnectRequest),
}

async fn handle_connection(
    sh: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    unauthenticated: UnauthGuard,
) {
    // Two phases awaited one after the other, so that the HTTP phase's state (the handshake, the
    // request being handled) and the tunnel's share memory in this task: the tunnel's lives as
    // long as the session.
    if let Some(conn) = http_phase(&sh, tcp, peer, unauthenticated).await {
        crate::tunnel::run(sh, conn, peer).await;
    }
}

/// The TLS handshake and the HTTP requests up to a CONNECT with a valid cookie; `None` when the
/// connection ended without one.
async fn http_phase(
    sh: &Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    unauthenticated: UnauthGuard,
) -> Option<Box<Connected>> {
    let cfg = sh.config.load_full();
    let accepted = Instant::now();
    let deadline = tokio::time::Instant::from_std(accepted)
        + std::time::Duration::from_secs(u64::from(cfg.timers.auth_timeout_secs));
    let acceptor = sh.tls.load_full();
    let mut tls = match timeout_at(deadline, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => {
            sh.metrics
                .tls_handshake_seconds
                .observe(accepted.elapsed().as_secs_f64());
            s
        }
        Ok(Err(e)) => {
            sh.metrics.tls_handshake_failures.inc();
            if is_refused_client_certificate(&e) {
                // A device certificate that does not verify is a failed login (certificate mode).
                sh.metrics
                    .auth_failures
                    .with_label_values(&["bad_certificate"])
                    .inc();
                tracing::warn!(%peer, error = %e, "client certificate refused at the TLS handshake");
                sh.bans.record_failure(peer.ip(), &cfg.ban, Instant::now());
                return None;
            }
            tracing::info!(%peer, error = %e, "TLS handshake failed");
            return None;
        }
        Err(_) => {
            sh.metrics.tls_handshake_failures.inc();
            tracing::info!(%peer, "TLS handshake timed out");
            return None;
        }
    };
    let limits = Limits {
        max_header_bytes: cfg.server.max_header_bytes,
        ..Limits::default()
    };
    let mut buf = BytesMut::with_capacity(4096);
    let mut failures = 0u32;
    loop {
        match http::parse_request(&buf, &limits) {
            Ok(Some((req, used))) => {
                buf.advance(used);
                let next = handle_request(sh, &cfg, &mut tls, &req, peer, &mut failures).await;
                match next {
                    Ok(Next::Continue) if !req.wants_close() => continue,
                    Ok(Next::Continue) | Ok(Next::Close) => break,
                    Ok(Next::Tunnel(session, req)) => {
                        drop(unauthenticated);
                        return Some(Box::new(Connected {
                            tls,
                            buf,
                            session,
                            req,
                            accepted,
                        }));
                    }
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "write failed during HTTP phase");
                        return None;
                    }
                }
            }
            Ok(None) => {
                buf.reserve(4096);
                match timeout_at(deadline, tls.read_buf(&mut buf)).await {
                    Ok(Ok(0)) => return None,
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "read failed during HTTP phase");
                        return None;
                    }
                    Err(_) => {
                        sh.metrics
                            .http_rejects
                            .with_label_values(&["auth_timeout"])
                            .inc();
                        tracing::info!(%peer, timeout_secs = cfg.timers.auth_timeout_secs, "no CONNECT before auth timeout; closing");
                        let _ = tls.shutdown().await;
                        return None;
                    }
                }
            }
            Err(e) => {
                let (code, reason, label) = match e {
                    http::HttpError::HeaderTooLarge { .. }
                    | http::HttpError::TooManyHeaders { .. } => {
                        (431, "Request Header Fields Too Large", "header_too_large")
                    }
                    http::HttpError::BodyTooLarge { .. } => {
                        (413, "Payload Too Large", "body_too_large")
                    }
                    _ => (400, "Bad Request", "malformed"),
                };
                sh.metrics.http_rejects.with_label_values(&[label]).inc();
                tracing::info!(%peer, error = %e, "bad HTTP request; closing");
                let _ =
                    write_response(&mut tls, &connect::error_response(code, reason, None)).await;
                let _ = tls.shutdown().await;
                return None;
            }
        }
    }
    let _ = tls.shutdown().await;
    None
}

/// Whether a handshake failed because the client's certificate did not verify (unknown CA,
/// expired, revoked, wrong key usage...).
fn is_refused_client_certificate(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|r| matches!(r, rustls::Error::InvalidCertificate(_)))
}

async fn write_response(tls: &mut TlsStream<TcpStream>, bytes: &[u8]) -> std::io::Result<()> {
    tls.write_all(bytes).await?;
    tls.flush().await
}

fn path_only(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or(path)
}

/// A plain browser or load balancer, as opposed to an AnyConnect client in legacy GET mode.
fn is_vpn_client(req: &Request) -> bool {
    req.header("X-Aggregate-Auth").is_some()
        || req.header("X-Transcend-Version").is_some()
        || req
            .header("Content-Type")
            .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"))
        || req
            .header("User-Agent")
            .is_some_and(|u| u.contains("AnyConnect") || u.contains("OpenConnect"))
}

fn xml_response(body: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut headers: Vec<(&str, &str)> = vec![
        ("Connection", "Keep-Alive"),
        ("Content-Type", "text/xml"),
        ("X-Transcend-Version", "1"),
    ];
    headers.extend_from_slice(extra);
    http::response(200, "OK", &headers, body.as_bytes())
}

fn login_form(error: Option<&str>) -> String {
    auth_xml::auth_request(&Form {
        action: "/auth",
        message: Some("Please enter your username and password."),
        error,
        banner: None,
        groups: &[],
        selected_group: None,
    })
}

/// The health page: 200 and a fixed body, or 503 while draining. HEAD gets the headers only.
fn health_response(draining: bool, head: bool) -> Vec<u8> {
    let (code, reason, body) = if draining {
        (503, "Service Unavailable", DRAINING_BODY)
    } else {
        (200, "OK", HEALTH_BODY)
    };
    let mut r = http::response(
        code,
        reason,
        &[
            ("Content-Type", "text/plain"),
            ("Cache-Control", "no-store"),
        ],
        body,
    );
    if head {
        r.truncate(r.len() - body.len());
    }
    r
}

async fn handle_request(
    sh: &Arc<Shared>,
    cfg: &Config,
    tls: &mut TlsStream<TcpStream>,
    req: &Request,
    peer: SocketAddr,
    failures: &mut u32,
) -> std::io::Result<Next> {
    let path = path_only(&req.path);
    match (&req.method, path) {
        (Method::Get | Method::Head, p) if p == cfg.server.health_path => {
            write_response(
                tls,
                &health_response(sh.is_draining(), matches!(req.method, Method::Head)),
            )
            .await?;
            Ok(Next::Continue)
        }
        (Method::Get | Method::Head, "/") if !is_vpn_client(req) => {
            write_response(
                tls,
                &health_response(sh.is_draining(), matches!(req.method, Method::Head)),
            )
            .await?;
            Ok(Next::Continue)
        }
        (Method::Post, "/" | "/auth") | (Method::Get, "/") => {
            if sh.is_draining() {
                write_response(
                    tls,
                    &connect::error_response(
                        503,
                        "Service Unavailable",
                        Some("server is shutting down"),
                    ),
                )
                .await?;
                return Ok(Next::Close);
            }
            handle_auth(sh, cfg, tls, req, peer, failures).await
        }
        (Method::Connect, _) => handle_connect(sh, tls, req, peer).await,
        _ => {
            tracing::debug!(%peer, method = req.method.as_str(), path, "unknown request; 404");
            write_response(tls, &connect::error_response(404, "Not Found", None)).await?;
            Ok(Next::Close)
        }
    }
}

async fn handle_auth(
    sh: &Arc<Shared>,
    cfg: &Config,
    tls: &mut TlsStream<TcpStream>,
    req: &Request,
    peer: SocketAddr,
    failures: &mut u32,
) -> std::io::Result<Next> {
    let msg = match auth_xml::parse_client_message(&req.body) {
        Ok(m) => m,
        Err(e) => {
            sh.metrics
                .http_rejects
                .with_label_values(&["bad_auth_body"])
                .inc();
            tracing::info!(%peer, error = %e, "unparsable auth request; closing");
            write_response(tls, &connect::error_response(400, "Bad Request", None)).await?;
            return Ok(Next::Close);
        }
    };
    if cfg.auth.method == AuthMethod::Certificate {
        // Whatever the client posted (normally the init request), the certificate decides.
        let users = sh.users.load();
        let identity = client_cert::login_identity(
            tls.get_ref().1.peer_certificates(),
            cfg.auth.cert_username,
            &users,
        );
        return match identity {
            Ok(login) => {
                finish_login(
                    sh,
                    cfg,
                    tls,
                    peer,
                    &login.user,
                    login.group,
                    Some(login.device),
                )
                .await
            }
            Err(refusal) => {
                sh.metrics
                    .auth_failures
                    .with_label_values(&[refusal.label()])
                    .inc();
                tracing::warn!(%peer, reason = %refusal, "certificate authentication failed");
                sh.bans.record_failure(peer.ip(), &cfg.ban, Instant::now());
                write_response(tls, &auth_failed_response()).await?;
                Ok(Next::Close)
            }
        };
    }
    let (username, password) = match msg {
        ClientMessage::Init { .. } => {
            write_response(tls, &xml_response(&login_form(None), &[])).await?;
            return Ok(Next::Continue);
        }
        ClientMessage::Reply {
            username: Some(u),
            password: Some(p),
            ..
        } => (u, p),
        ClientMessage::Reply { .. } => {
            write_response(
                tls,
                &xml_response(
                    &login_form(Some("Please enter your username and password.")),
                    &[],
                ),
            )
            .await?;
            return Ok(Next::Continue);
        }
    };
    let users = sh.users.load_full();
    let (user_for_check, pass_for_check) = (username.clone(), password);
    // Password hashing is deliberately slow: keep it off the async workers.
    let outcome =
        tokio::task::spawn_blocking(move || users.verify(&user_for_check, &pass_for_check))
            .await
            .unwrap_or(VerifyOutcome::BadPassword);
    let group = match outcome {
        VerifyOutcome::Ok { group } => group,
        other => {
            let reason = match other {
                VerifyOutcome::UnknownUser => "unknown_user",
                VerifyOutcome::Locked => "locked",
                _ => "bad_password",
            };
            sh.metrics.auth_failures.with_label_values(&[reason]).inc();
            *failures += 1;
            tracing::warn!(user = %username, %peer, reason, attempt = *failures, "authentication failed");
            let banned = sh.bans.record_failure(peer.ip(), &cfg.ban, Instant::now());
            if banned || *failures >= MAX_TRIES_PER_CONNECTION {
                write_response(tls, &auth_failed_response()).await?;
                return Ok(Next::Close);
            }
            write_response(tls, &xml_response(&login_form(Some("Login failed.")), &[])).await?;
            return Ok(Next::Continue);
        }
    };
    finish_login(sh, cfg, tls, peer, &username, group, None).await
}

/// The 401 that ends a connection whose login failed.
fn auth_failed_response() -> Vec<u8> {
    http::response(
        401,
        "Authentication failed",
        &[("Connection", "close")],
        b"",
    )
}

/// An authenticated user: creates the session and answers with its cookie.
async fn finish_login(
    sh: &Arc<Shared>,
    cfg: &Config,
    tls: &mut TlsStream<TcpStream>,
    peer: SocketAddr,
    username: &str,
    group: Option<String>,
    device: Option<DeviceCert>,
) -> std::io::Result<Next> {
    let created = sh.sessions.create(
        username,
        group,
        device,
        peer,
        cfg.server.max_sessions,
        cfg.server.max_sessions_per_user,
    );
    let (session, token) = match created {
        Ok(x) => x,
        Err(e) => {
            sh.metrics
                .auth_failures
                .with_label_values(&["session_limit"])
                .inc();
            tracing::warn!(user = %username, %peer, error = %e, "login refused: session limit");
            write_response(tls, &xml_response(&login_form(Some(&e.to_string())), &[])).await?;
            return Ok(Next::Close);
        }
    };
    sh.metrics.auth_successes.inc();
    tracing::info!(session = session.id, user = %username, %peer, "authenticated");
    let cookie = format!("webvpn={token}; Secure; HttpOnly");
    let body = auth_xml::auth_success(&token, cfg.server.banner.as_deref());
    write_response(tls, &xml_response(&body, &[("Set-Cookie", &cookie)])).await?;
    Ok(Next::Continue)
}

async fn handle_connect(
    sh: &Arc<Shared>,
    tls: &mut TlsStream<TcpStream>,
    req: &Request,
    peer: SocketAddr,
) -> std::io::Result<Next> {
    let creq = match ConnectRequest::from_request(req) {
        Ok(c) => c,
        Err(e @ ConnectError::NotFound(_)) => {
            tracing::info!(%peer, error = %e, "CONNECT refused");
            write_response(tls, &connect::error_response(404, "Not Found", None)).await?;
            return Ok(Next::Close);
        }
        Err(e) => {
            tracing::info!(%peer, error = %e, "CONNECT refused");
            write_response(tls, &connect::error_response(401, "Unauthorized", None)).await?;
            return Ok(Next::Close);
        }
    };
    if sh.is_draining() {
        write_response(
            tls,
            &connect::error_response(503, "Service Unavailable", Some("server is shutting down")),
        )
        .await?;
        return Ok(Next::Close);
    }
    let Some(session) = sh.sessions.find_by_cookie(&creq.cookie) else {
        tracing::info!(%peer, "CONNECT with an unknown or expired cookie; 401");
        return refuse_cookie(sh, tls, peer, "bad_cookie").await;
    };
    let bind = sh.config.load().auth.bind_cookie_to_certificate;
    if let Some(device) = session.device.as_ref().filter(|_| bind) {
        // The cookie works only with the certificate that logged in; the TLS handshake has just
        // checked that certificate against the current CRLs.
        let presented = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
        if !presented.is_some_and(|leaf| device.is(leaf.as_ref())) {
            tracing::warn!(
                session = session.id,
                user = %session.user,
                %peer,
                presented = if presented.is_some() { "another certificate" } else { "no certificate" },
                "CONNECT with a certificate session's cookie but not its device certificate; 401"
            );
            return refuse_cookie(sh, tls, peer, "cookie_certificate").await;
        }
    }
    Ok(Next::Tunnel(session, creq))
}

/// Refuses a CONNECT's cookie: counted as an auth failure (`reason`), scored against `peer` like a
/// failed login, answered with `401`, and the connection closed.
async fn refuse_cookie(
    sh: &Arc<Shared>,
    tls: &mut TlsStream<TcpStream>,
    peer: SocketAddr,
    reason: &str,
) -> std::io::Result<Next> {
    sh.metrics.auth_failures.with_label_values(&[reason]).inc();
    let ban = sh.config.load().ban.clone();
    sh.bans.record_failure(peer.ip(), &ban, Instant::now());
    write_response(
        tls,
        &connect::error_response(401, "Cookie is not acceptable", None),
    )
    .await?;
    Ok(Next::Close)
}
