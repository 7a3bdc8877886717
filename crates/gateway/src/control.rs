//! The control socket: a Unix socket (mode 0600, root only) where `tunnelctl` asks the running
//! daemon for its status and sessions, disconnects sessions, manages bans and triggers a reload.
//!
//! The protocol is JSON lines: each request is one JSON object on one line (`{"cmd":"sessions"}`),
//! answered by one line, `{"ok":true,"result":...}` or `{"ok":false,"error":"..."}`. A connection
//! may carry several requests. Peers are checked with `SO_PEERCRED`: only root and the daemon's own
//! user are served, whatever the file mode.
//!
//! The same types serve both ends: [`serve`] in the daemon, [`call`] (blocking, no runtime) in
//! `tunnelctl`.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use crate::ban::BanTarget;
use crate::reload::{self, CertInfo, ReloadReport};
use crate::server::Shared;
use crate::sessions::{EndReason, Session};

/// Longest request line accepted, in bytes.
const MAX_LINE: usize = 64 * 1024;
/// How long a connection may sit idle between requests.
const IDLE: Duration = Duration::from_secs(60);

/// One request. On the wire: `{"cmd":"<snake_case name>", ...fields}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Request {
    /// The daemon's status: [`StatusInfo`].
    Status,
    /// Every session: a list of [`SessionInfo`].
    Sessions,
    /// Ends sessions (each live client gets a DISCONNECT; cookies are revoked): [`Disconnected`].
    /// Exactly one of the fields must be set.
    Disconnect {
        /// Every session of this user.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        /// The session with this id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session: Option<u64>,
    },
    /// Banned and scored source addresses: a list of [`BanEntry`](crate::ban::BanEntry).
    BanList,
    /// Bans a source address or prefix: the resulting [`BanEntry`](crate::ban::BanEntry).
    BanAdd {
        /// The address (an IPv6 address bans its /64) or prefix (`ADDR/LEN`).
        address: BanTarget,
        /// How long, in seconds; absent or 0 means until removed (saved bans outlive a restart).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        secs: Option<u64>,
    },
    /// Lifts a ban and forgets the address's failure score: `null`.
    BanRemove {
        /// The address or prefix, as it was banned.
        address: BanTarget,
    },
    /// Reloads the configuration: [`ReloadReport`].
    Reload,
}

/// One answer line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    /// True when the request succeeded.
    pub ok: bool,
    /// The result, when `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// What went wrong, when not `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The client address pool and its use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolInfo {
    /// The IPv4 pool.
    pub ipv4: String,
    /// The IPv6 pool, if any.
    pub ipv6: Option<String>,
    /// Client addresses in the pool.
    pub size: u32,
    /// Client addresses leased now.
    pub in_use: u32,
}

/// `tunnelctl status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusInfo {
    /// tunneld's version.
    pub version: String,
    /// When the daemon started (UTC, RFC 3339).
    pub started_at: String,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// The TLS listener.
    pub listen: SocketAddr,
    /// The metrics listener, if on.
    pub metrics_listen: Option<SocketAddr>,
    /// The control socket.
    pub control_socket: Option<PathBuf>,
    /// The configuration file reloads read (`None`: embedded defaults).
    pub config_file: Option<PathBuf>,
    /// The TUN device's name.
    pub tun: String,
    /// Data-plane threads, each with its own TUN queue.
    pub threads: usize,
    /// Live tunnel connections on each data-plane thread, in thread order: a connection stays on
    /// the thread that accepted it, so this shows how evenly the kernel spread them.
    #[serde(default)]
    pub tunnels_per_thread: Vec<u64>,
    /// How downstream packets find their session's thread: `address` (the steering program reads
    /// the destination) or `flow` (the TUN driver's flow table; the program could not be loaded).
    pub tun_steering: String,
    /// `server.rx_coalesce_usecs` of the running threads (0: off).
    #[serde(default)]
    pub rx_coalesce_usecs: u32,
    /// Naps the data-plane threads took to coalesce arriving packets (see [`crate::coalesce`]).
    #[serde(default)]
    pub rx_coalesce_naps: u64,
    /// Open files in the main file table (every one, without `server.private_file_tables`):
    /// one per TCP session, plus the listeners, the TUN queues and the like.
    #[serde(default)]
    pub open_files: Option<u64>,
    /// The open-files limit, which caps each file table: sessions stop 32 files short of it
    /// ([`crate::workers::FILES_HEADROOM`]), and new connections beyond are reset.
    #[serde(default)]
    pub max_open_files: Option<u64>,
    /// With `server.private_file_tables`: open files in each data-plane thread's own table, in
    /// thread order.
    #[serde(default)]
    pub open_files_per_thread: Vec<u64>,
    /// True when `/readyz` answers 200.
    pub ready: bool,
    /// Why it is not ready (empty when ready).
    pub not_ready: Vec<String>,
    /// True while draining.
    pub draining: bool,
    /// Sessions (connected or waiting for a reconnect).
    pub sessions: usize,
    /// Sessions with a live connection.
    pub connected: usize,
    /// The address pool.
    pub pool: PoolInfo,
    /// Source addresses banned now.
    pub bans_active: usize,
    /// The certificate served.
    pub certificate: CertInfo,
}

/// One row of `tunnelctl sessions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// Session id (for `tunnelctl disconnect --session`).
    pub id: u64,
    /// The user.
    pub user: String,
    /// The user's group, if any.
    pub group: Option<String>,
    /// The device's address and port (the TLS peer that logged in).
    pub device: SocketAddr,
    /// IPv4 tunnel address (none before the first CONNECT).
    pub ipv4: Option<Ipv4Addr>,
    /// IPv6 tunnel address.
    pub ipv6: Option<Ipv6Addr>,
    /// `cstp` while a connection carries the session; `None` while it waits for a reconnect.
    pub transport: Option<String>,
    /// IP bytes from the device.
    pub bytes_up: u64,
    /// IP bytes to the device.
    pub bytes_down: u64,
    /// Packets from the device.
    pub packets_up: u64,
    /// Packets to the device.
    pub packets_down: u64,
    /// Login time (UTC, RFC 3339).
    pub connected_since: String,
    /// Seconds since login.
    pub duration_secs: u64,
    /// Certificate mode: the serial number (hex) of the device certificate that logged in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_serial: Option<String>,
}

/// The answer to [`Request::Disconnect`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disconnected {
    /// The sessions ended.
    pub sessions: Vec<u64>,
}

/// Why the control socket could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// Another process serves the socket (a second tunneld with the same `control.socket`?).
    #[error("control.socket: {} is in use by a running process (another tunneld?); stop it or set another path", path.display())]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// The path exists and is not a socket.
    #[error("control.socket: {} exists and is not a socket; remove it or set another path", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// Creating the directory, binding or setting the mode failed.
    #[error("control.socket: cannot create {}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Why a `tunnelctl` request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("cannot connect to the control socket {}: {source}{hint}", path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
        /// What to try.
        hint: &'static str,
    },
    /// Reading or writing the socket failed.
    #[error("control socket I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The answer was not what the protocol says.
    #[error("unexpected answer from tunneld: {0}")]
    Protocol(String),
    /// tunneld refused the request; the text is its reason.
    #[error("{0}")]
    Refused(String),
}

/// Binds the control socket at `path`: creates its directory (mode 0700) if missing, replaces a
/// stale socket left by a dead daemon, refuses one a live process still serves, and sets mode 0600.
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let io = |source| ControlError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io)?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ControlError::InUse {
                    path: path.to_owned(),
                });
            }
            std::fs::remove_file(path).map_err(io)?;
        }
        Ok(_) => {
            return Err(ControlError::NotASocket {
                path: path.to_owned(),
            })
        }
        Err(_) => {}
    }
    let std_listener = std::os::unix::net::UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    std_listener.set_nonblocking(true).map_err(io)?;
    UnixListener::from_std(std_listener).map_err(io)
}

/// Serves the control socket until the task is cancelled. `owner` is the uid allowed besides root
/// (the daemon's own, read from the socket file).
pub async fn serve(listener: UnixListener, path: PathBuf, shared: Arc<Shared>) {
    let owner = std::fs::metadata(&path).map(|m| m.uid()).unwrap_or(0);
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let uid = stream.peer_cred().map(|c| c.uid()).ok();
                if !uid.is_some_and(|u| u == 0 || u == owner) {
                    tracing::warn!(uid = ?uid, "control socket: peer refused (root only)");
                    continue;
                }
                tokio::spawn(handle(Arc::clone(&shared), stream));
            }
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle(sh: Arc<Shared>, stream: UnixStream) {
    let (read, mut write) = stream.into_split();
    let mut reader = tokio::io::BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = match tokio::time::timeout(
            IDLE,
            (&mut reader)
                .take(MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut line),
        )
        .await
        {
            Ok(Ok(n)) => n,
            _ => return,
        };
        if n == 0 {
            return;
        }
        let reply = if line.len() > MAX_LINE {
            error_reply(format!("request longer than {MAX_LINE} bytes"))
        } else {
            match serde_json::from_slice::<Request>(&line) {
                Ok(req) => dispatch(&sh, req).await,
                Err(e) => error_reply(format!("bad request: {e}")),
            }
        };
        let mut out = serde_json::to_vec(&reply).unwrap_or_else(|_| b"{\"ok\":false}".to_vec());
        out.push(b'\n');
        if write.write_all(&out).await.is_err() || line.len() > MAX_LINE {
            return;
        }
    }
}

fn error_reply(error: String) -> Reply {
    Reply {
        ok: false,
        result: None,
        error: Some(error),
    }
}

fn ok_reply<T: Serialize>(value: &T) -> Reply {
    match serde_json::to_value(value) {
        Ok(v) => Reply {
            ok: true,
            result: Some(v),
            error: None,
        },
        Err(e) => error_reply(format!("cannot encode the answer: {e}")),
    }
}

async fn dispatch(sh: &Arc<Shared>, req: Request) -> Reply {
    let now = Instant::now();
    match req {
        Request::Status => ok_reply(&status(sh)),
        Request::Sessions => ok_reply(&sessions(sh)),
        Request::Disconnect { user, session } => match disconnect(sh, user, session) {
            Ok(d) => ok_reply(&d),
            Err(e) => error_reply(e),
        },
        Request::BanList => ok_reply(&sh.bans.list(&sh.config.load().ban, now)),
        Request::BanAdd { address, secs } => {
            let secs = secs.filter(|s| *s > 0).map(Duration::from_secs);
            if let Err(e) = sh.bans.ban_target(address, secs, now) {
                return error_reply(e);
            }
            // Saved before the reply: a ban the operator was told about survives a crash.
            crate::daemon::save_bans(sh).await;
            let (key, len) = match address {
                BanTarget::Source(ip) => (crate::ban::source_key(ip), None),
                BanTarget::Prefix(net) => (net.network(), Some(net.prefix_len())),
            };
            let entry = sh
                .bans
                .list(&sh.config.load().ban, now)
                .into_iter()
                .find(|e| e.address == key && e.prefix_len == len);
            ok_reply(&entry)
        }
        Request::BanRemove { address } => {
            if sh.bans.unban_target(address, now) {
                crate::daemon::save_bans(sh).await;
                ok_reply(&())
            } else {
                error_reply(format!("{address} is not banned and has no failure score"))
            }
        }
        Request::Reload => match reload::reload(sh).await {
            Ok(report) => ok_reply::<ReloadReport>(&report),
            Err(e) => error_reply(format!(
                "reload refused, the running configuration is unchanged: {e}"
            )),
        },
    }
}

fn status(sh: &Shared) -> StatusInfo {
    let cfg = sh.config.load();
    let uptime = sh.started.elapsed();
    let all = sh.sessions.all();
    let readiness = sh.health.readiness(sh.is_draining());
    let mut files = sh.metrics.process.open_files();
    files.threads.sort_unstable();
    StatusInfo {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started_at: format_utc(SystemTime::now() - uptime),
        uptime_secs: uptime.as_secs(),
        listen: cfg.server.listen,
        metrics_listen: cfg.metrics.listen,
        control_socket: cfg.control.socket.clone(),
        config_file: sh.reload.config_path().map(Path::to_owned),
        tun: cfg.network.tun_name.clone(),
        threads: sh.threads,
        tunnels_per_thread: (0..sh.threads)
            .map(|i| {
                let gauge = sh
                    .metrics
                    .thread_tunnels
                    .with_label_values(&[&i.to_string()]);
                u64::try_from(gauge.get()).unwrap_or(0)
            })
            .collect(),
        tun_steering: if sh.steering.get().is_some() {
            "address"
        } else {
            "flow"
        }
        .to_owned(),
        rx_coalesce_usecs: cfg.server.rx_coalesce_usecs,
        rx_coalesce_naps: sh.metrics.rx_coalesce_naps.get(),
        open_files: files.main.and_then(|n| u64::try_from(n).ok()),
        max_open_files: files.limit.and_then(|n| u64::try_from(n).ok()),
        open_files_per_thread: files
            .threads
            .iter()
            .filter_map(|&(_, n)| u64::try_from(n).ok())
            .collect(),
        ready: readiness.is_ok(),
        not_ready: readiness.err().unwrap_or_default(),
        draining: sh.is_draining(),
        sessions: all.len(),
        connected: all.iter().filter(|s| s.is_connected()).count(),
        pool: PoolInfo {
            ipv4: sh.pool.ipv4_net().to_string(),
            ipv6: sh.pool.ipv6_net().map(|n| n.to_string()),
            size: sh.pool.size(),
            in_use: sh.pool.in_use(),
        },
        bans_active: sh
            .bans
            .list(&cfg.ban, Instant::now())
            .iter()
            .filter(|b| b.banned)
            .count(),
        certificate: (*sh.reload.certificate()).clone(),
    }
}

/// A session as `tunnelctl sessions` shows it.
pub fn session_info(s: &Session) -> SessionInfo {
    use std::sync::atomic::Ordering::Relaxed;
    let addrs = s.addresses();
    SessionInfo {
        id: s.id,
        user: s.user.clone(),
        group: s.group.clone(),
        device: s.peer,
        ipv4: addrs.map(|a| a.0),
        ipv6: addrs.and_then(|a| a.1),
        transport: s.is_connected().then(|| "cstp".to_owned()),
        bytes_up: s.stats.bytes_up.load(Relaxed),
        bytes_down: s.stats.bytes_down.load(Relaxed),
        packets_up: s.stats.packets_up.load(Relaxed),
        packets_down: s.stats.packets_down.load(Relaxed),
        connected_since: format_utc(s.created_wall),
        duration_secs: s.created.elapsed().as_secs(),
        certificate_serial: s.device.as_ref().map(|d| d.serial_hex()),
    }
}

fn sessions(sh: &Shared) -> Vec<SessionInfo> {
    let mut v: Vec<SessionInfo> = sh.sessions.all().iter().map(|s| session_info(s)).collect();
    v.sort_by_key(|s| s.id);
    v
}

fn disconnect(
    sh: &Shared,
    user: Option<String>,
    session: Option<u64>,
) -> Result<Disconnected, String> {
    let targets: Vec<Arc<Session>> = match (&user, session) {
        (Some(u), None) => {
            let v: Vec<_> = sh
                .sessions
                .all()
                .into_iter()
                .filter(|s| s.user == *u)
                .collect();
            if v.is_empty() {
                return Err(format!("user {u:?} has no session"));
            }
            v
        }
        (None, Some(id)) => match sh.sessions.find_by_id(id) {
            Some(s) => vec![s],
            None => return Err(format!("no session with id {id}")),
        },
        _ => return Err("give exactly one of user or session".to_owned()),
    };
    let mut ended = Vec::new();
    for s in targets {
        tracing::info!(session = s.id, user = %s.user, peer = %s.peer, "disconnecting session at the operator's request");
        sh.sessions.end(&s, EndReason::Kicked);
        ended.push(s.id);
    }
    ended.sort_unstable();
    Ok(Disconnected { sessions: ended })
}

/// Sends one request to the daemon at `path` and decodes its result (blocking; for `tunnelctl`).
pub fn call<T: DeserializeOwned>(
    path: &Path,
    req: &Request,
    timeout: Duration,
) -> Result<T, ClientError> {
    let stream = std::os::unix::net::UnixStream::connect(path).map_err(|source| {
        let hint = match source.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                " (is tunneld running? does control.socket in its configuration name another path? pass --socket or --config)"
            }
            std::io::ErrorKind::PermissionDenied => " (the control socket is for root only)",
            _ => "",
        };
        ClientError::Connect {
            path: path.to_owned(),
            source,
            hint,
        }
    })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_vec(req).map_err(|e| ClientError::Protocol(e.to_string()))?;
    line.push(b'\n');
    (&stream).write_all(&line)?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer)?;
    if answer.is_empty() {
        return Err(ClientError::Protocol(
            "tunneld closed the connection without answering".to_owned(),
        ));
    }
    let reply: Reply = serde_json::from_str(&answer)
        .map_err(|e| ClientError::Protocol(format!("{e}: {answer:?}")))?;
    if !reply.ok {
        return Err(ClientError::Refused(
            reply.error.unwrap_or_else(|| "request failed".to_owned()),
        ));
    }
    serde_json::from_value(reply.result.unwrap_or(serde_json::Value::Null))
        .map_err(|e| ClientError::Protocol(e.to_string()))
}

/// A wall-clock time as UTC RFC 3339 with whole seconds (`2024-06-01T12:00:00Z`).
pub fn format_utc(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86400).unwrap_or(0);
    let rem = secs % 86400;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formatting_matches_known_dates() {
        let at = |s: u64| format_utc(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_709_210_096), "2024-02-29T12:34:56Z");
        assert_eq!(at(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn requests_have_a_stable_wire_form() {
        let r = Request::Disconnect {
            user: Some("alice".into()),
            session: None,
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"cmd":"disconnect","user":"alice"}"#
        );
        let r: Request =
            serde_json::from_str(r#"{"cmd":"ban_add","address":"192.0.2.1","secs":60}"#).unwrap();
        assert_eq!(
            r,
            Request::BanAdd {
                address: "192.0.2.1".parse().unwrap(),
                secs: Some(60)
            }
        );
        let r: Request =
            serde_json::from_str(r#"{"cmd":"ban_remove","address":"2001:db8:7::/48"}"#).unwrap();
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"cmd":"ban_remove","address":"2001:db8:7::/48"}"#
        );
        assert!(
            serde_json::from_str::<Request>(r#"{"cmd":"ban_add","address":"10.0.0.0/0"}"#).is_err()
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"format_disk"}"#).is_err());
    }

    #[test]
    fn stale_socket_is_replaced_and_a_live_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("c.sock");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let l = bind(&path).unwrap();
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            let dir_mode = std::fs::metadata(path.parent().unwrap())
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(dir_mode, 0o700);
            assert!(matches!(bind(&path), Err(ControlError::InUse { .. })));
            drop(l);
            // The file is left behind, as after a crash: the next bind replaces it. Other tests
            // of this binary start processes (the openssl tool), and a child holds a copy of the
            // listener until its exec closes it: wait until nothing accepts on the socket.
            assert!(path.exists());
            for _ in 0..200 {
                if std::os::unix::net::UnixStream::connect(&path).is_err() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            let _l = bind(&path).unwrap();
        });
        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(bind(&file), Err(ControlError::NotASocket { .. })));
    }
}
