//! Authenticated sessions: cookies, leases, and the connection that currently carries each one.
//!
//! A session is born at a successful login (it has a cookie but no address yet), gets its address at
//! its first CONNECT, and outlives TCP connections: after a connection drops, the session and its
//! address stay reserved for `cookie_timeout` so the client can reconnect with its cookie and get the
//! same address back. It ends on logout, a kick, a protocol error, a timeout, or expiry; ending drops
//! its [`Lease`], which returns the address to the pool exactly once.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use dashmap::DashMap;
use tokio::sync::mpsc;

use crate::client_cert::{Anchors, DeviceCert, Revoked};
use crate::metrics::Metrics;
use crate::pool::{Lease, Pool, PoolError};
use crate::table::{SessionStats, SessionTable};

/// Why a session (or one connection of it) ended. The `reason` label and log field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndReason {
    /// The client logged out (DISCONNECT with 0xB0).
    Logout,
    /// An operator or the server kicked it.
    Kicked,
    /// The server is shutting down.
    Shutdown,
    /// The client sent something that breaks the protocol (a malformed frame).
    ProtocolError,
    /// No data in either direction for `idle_timeout`.
    IdleTimeout,
    /// The absolute `session_timeout` passed.
    SessionTimeout,
    /// The client did not come back within `cookie_timeout` after its connection dropped.
    CookieExpired,
    /// A reload found the session's device certificate in a CRL.
    Revoked,
    /// A reload removed every CA the session's device certificate chained to.
    Untrusted,
}

impl EndReason {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Logout => "logout",
            Self::Kicked => "kicked",
            Self::Shutdown => "shutdown",
            Self::ProtocolError => "protocol_error",
            Self::IdleTimeout => "idle_timeout",
            Self::SessionTimeout => "session_timeout",
            Self::CookieExpired => "cookie_expired",
            Self::Revoked => "revoked",
            Self::Untrusted => "untrusted",
        }
    }
}

/// A command to the task that runs a session's live connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Send DISCONNECT to the client and close: the session is over.
    Kick(EndReason),
    /// A newer connection of the same session took over; close quietly.
    Replaced,
}

/// The live connection of a session, as the session sees it.
#[derive(Debug)]
struct ConnHandle {
    id: u64,
    control: mpsc::Sender<Control>,
}

#[derive(Debug)]
struct Inner {
    lease: Option<Lease>,
    conn: Option<ConnHandle>,
    /// Since when no connection carries the session (creation time until the first CONNECT).
    detached_since: Option<Instant>,
    ended: bool,
}

/// One authenticated user session.
#[derive(Debug)]
pub struct Session {
    /// Unique id, for logs and the control socket.
    pub id: u64,
    /// The authenticated user name.
    pub user: String,
    /// The user's group, if the users file names one.
    pub group: Option<String>,
    /// The address that authenticated.
    pub peer: SocketAddr,
    /// When the login succeeded.
    pub created: Instant,
    /// The same, as wall-clock time, for operators.
    pub created_wall: SystemTime,
    /// Traffic counters, shared with the session's routes.
    pub stats: Arc<SessionStats>,
    /// The device certificate of a certificate login: its cookie is good only on a TLS connection
    /// that presents the same certificate, and a reload ends the session once a CRL lists it.
    pub device: Option<Box<DeviceCert>>,
    cookie_hash: [u8; 32],
    inner: Mutex<Inner>,
}

/// The addresses a CONNECT hands to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assigned {
    /// Slot index in the pool and table.
    pub index: u32,
    /// IPv4 tunnel address.
    pub v4: Ipv4Addr,
    /// IPv6 tunnel address, when the pool has IPv6.
    pub v6: Option<Ipv6Addr>,
    /// True when this CONNECT gave the session its first address.
    pub first: bool,
}

/// Why a CONNECT could not attach to its session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AttachError {
    /// The session ended (logout, kick, expiry) before this CONNECT.
    #[error("session has ended")]
    Ended,
    /// No address was free.
    #[error(transparent)]
    Pool(#[from] PoolError),
}

/// Why a login could not create a session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitError {
    /// The server holds `max_sessions` already.
    #[error("server is at its session limit ({0})")]
    Server(u32),
    /// This user holds `max_sessions_per_user` already.
    #[error("user is at the per-user session limit ({0})")]
    User(u32),
}

impl Session {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The session's tunnel addresses, if it has a lease.
    pub fn addresses(&self) -> Option<(Ipv4Addr, Option<Ipv6Addr>)> {
        self.lock().lease.as_ref().map(|l| (l.ipv4(), l.ipv6()))
    }

    /// True once the session has ended.
    pub fn is_ended(&self) -> bool {
        self.lock().ended
    }

    /// True while a connection carries the session (false while it waits for a reconnect).
    pub fn is_connected(&self) -> bool {
        self.lock().conn.is_some()
    }
}

/// All sessions, indexed by cookie and by id.
#[derive(Debug)]
pub struct Sessions {
    by_cookie: DashMap<[u8; 32], Arc<Session>>,
    by_id: DashMap<u64, Arc<Session>>,
    per_user: DashMap<String, u32>,
    next_id: AtomicU64,
    next_conn: AtomicU64,
    pool: Arc<Pool>,
    table: Arc<SessionTable>,
    metrics: Metrics,
}

impl Sessions {
    /// An empty registry over `pool` and `table`.
    pub fn new(pool: Arc<Pool>, table: Arc<SessionTable>, metrics: Metrics) -> Self {
        metrics.pool_size.set(i64::from(pool.size()));
        Self {
            by_cookie: DashMap::new(),
            by_id: DashMap::new(),
            per_user: DashMap::new(),
            next_id: AtomicU64::new(1),
            next_conn: AtomicU64::new(1),
            pool,
            table,
            metrics,
        }
    }

    /// How many sessions exist (connected or waiting for a reconnect).
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// True when there are no sessions.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Every session, for status listings.
    pub fn all(&self) -> Vec<Arc<Session>> {
        self.by_id.iter().map(|e| Arc::clone(e.value())).collect()
    }

    /// Creates a session for a user who just authenticated (with `device`, for a certificate
    /// login); returns it and its cookie token.
    pub fn create(
        &self,
        user: &str,
        group: Option<String>,
        device: Option<DeviceCert>,
        peer: SocketAddr,
        max_sessions: u32,
        max_per_user: u32,
    ) -> Result<(Arc<Session>, String), LimitError> {
        if self.by_id.len() >= max_sessions as usize {
            return Err(LimitError::Server(max_sessions));
        }
        {
            let mut n = self.per_user.entry(user.to_owned()).or_insert(0);
            if max_per_user > 0 && *n >= max_per_user {
                return Err(LimitError::User(max_per_user));
            }
            *n += 1;
        }
        let mut raw = [0u8; 32];
        rand::Rng::fill(&mut rand::thread_rng(), &mut raw);
        let token = hex::encode(raw);
        let cookie_hash = cookie_digest(&token);
        let now = Instant::now();
        let session = Arc::new(Session {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            user: user.to_owned(),
            group,
            peer,
            created: now,
            created_wall: SystemTime::now(),
            stats: Arc::default(),
            device: device.map(Box::new),
            cookie_hash,
            inner: Mutex::new(Inner {
                lease: None,
                conn: None,
                detached_since: Some(now),
                ended: false,
            }),
        });
        self.by_cookie.insert(cookie_hash, Arc::clone(&session));
        self.by_id.insert(session.id, Arc::clone(&session));
        Ok((session, token))
    }

    /// The live session a cookie token names. The stored hash is compared in constant time.
    pub fn find_by_cookie(&self, token: &str) -> Option<Arc<Session>> {
        let hash = cookie_digest(token);
        let s = self.by_cookie.get(&hash).map(|e| Arc::clone(e.value()))?;
        (openssl::memcmp::eq(&s.cookie_hash, &hash) && !s.is_ended()).then_some(s)
    }

    /// The session with this id.
    pub fn find_by_id(&self, id: u64) -> Option<Arc<Session>> {
        self.by_id.get(&id).map(|e| Arc::clone(e.value()))
    }

    /// Attaches a new connection to `session`: leases an address on the first CONNECT (or keeps the
    /// one it has), and tells a previous live connection that it was replaced. Returns the addresses,
    /// the connection id and the control channel the connection must listen on.
    pub fn attach(
        &self,
        session: &Session,
    ) -> Result<(Assigned, u64, mpsc::Receiver<Control>), AttachError> {
        let mut inner = session.lock();
        if inner.ended {
            return Err(AttachError::Ended);
        }
        let first = inner.lease.is_none();
        if first {
            // From this thread's stripe, so that its downstream packets are steered here.
            inner.lease = Some(
                self.pool
                    .allocate_on(usize::from(crate::dataplane::thread_index()))?,
            );
            self.metrics.pool_in_use.set(i64::from(self.pool.in_use()));
        }
        let (tx, rx) = mpsc::channel(2);
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        if let Some(old) = inner.conn.replace(ConnHandle { id, control: tx }) {
            let _ = old.control.try_send(Control::Replaced);
        }
        inner.detached_since = None;
        let lease = inner.lease.as_ref().ok_or(AttachError::Ended)?;
        let assigned = Assigned {
            index: lease.index(),
            v4: lease.ipv4(),
            v6: lease.ipv6(),
            first,
        };
        Ok((assigned, id, rx))
    }

    /// A connection ended without ending its session (TCP loss, dead peer, temporary disconnect):
    /// the session waits `cookie_timeout` for a reconnect. A replaced connection changes nothing.
    pub fn detach(&self, session: &Session, conn_id: u64) {
        let mut inner = session.lock();
        if inner.conn.as_ref().is_some_and(|c| c.id == conn_id) {
            inner.conn = None;
            inner.detached_since = Some(Instant::now());
        }
    }

    /// Ends a session: forgets its cookie, kicks its live connection, returns its address.
    /// Ending twice is harmless; only the first call counts.
    pub fn end(&self, session: &Session, reason: EndReason) {
        let (lease, conn) = {
            let mut inner = session.lock();
            if inner.ended {
                return;
            }
            inner.ended = true;
            (inner.lease.take(), inner.conn.take())
        };
        self.by_cookie.remove(&session.cookie_hash);
        self.by_id.remove(&session.id);
        if let Some(mut n) = self.per_user.get_mut(&session.user) {
            *n = n.saturating_sub(1);
        }
        self.per_user.remove_if(&session.user, |_, n| *n == 0);
        if let Some(conn) = conn {
            let _ = conn.control.try_send(Control::Kick(reason));
        }
        let addrs = lease.as_ref().map(|l| (l.ipv4(), l.ipv6()));
        if let Some(l) = &lease {
            // The connection task removes its own route too; this covers a kick racing a reconnect.
            for ip in [Some(IpAddr::V4(l.ipv4())), l.ipv6().map(IpAddr::V6)]
                .into_iter()
                .flatten()
            {
                if let Some(route) = self.table.lookup(ip) {
                    if route.session_id == session.id {
                        self.table.remove_if(l.index(), &route);
                    }
                }
            }
        }
        drop(lease);
        self.metrics.pool_in_use.set(i64::from(self.pool.in_use()));
        self.metrics
            .sessions_ended
            .with_label_values(&[reason.as_str()])
            .inc();
        let s = &session.stats;
        // The access log: one line per session end, flat fields (JSON-friendly), no span.
        tracing::info!(
            target: "access",
            session = session.id,
            user = %session.user,
            login_peer = %session.peer,
            ipv4 = %addrs.map_or_else(|| "-".to_owned(), |a| a.0.to_string()),
            ipv6 = %addrs.and_then(|a| a.1).map_or_else(|| "-".to_owned(), |a| a.to_string()),
            duration_secs = session.created.elapsed().as_secs(),
            bytes_up = s.bytes_up.load(Ordering::Relaxed),
            bytes_down = s.bytes_down.load(Ordering::Relaxed),
            packets_up = s.packets_up.load(Ordering::Relaxed),
            packets_down = s.packets_down.load(Ordering::Relaxed),
            reason = reason.as_str(),
            "session ended"
        );
    }

    /// Ends every session whose client has been away longer than `cookie_timeout`, or that has
    /// outlived `session_timeout`. Called periodically.
    pub fn reap(&self, now: Instant, cookie_timeout: Duration, session_timeout: Option<Duration>) {
        let mut expired = Vec::new();
        for e in self.by_id.iter() {
            let s = e.value();
            if session_timeout.is_some_and(|t| now.saturating_duration_since(s.created) >= t) {
                expired.push((Arc::clone(s), EndReason::SessionTimeout));
                continue;
            }
            let inner = s.lock();
            if inner.conn.is_none()
                && inner
                    .detached_since
                    .is_some_and(|t| now.saturating_duration_since(t) >= cookie_timeout)
            {
                expired.push((Arc::clone(s), EndReason::CookieExpired));
            }
        }
        for (s, reason) in expired {
            self.end(&s, reason);
        }
    }

    /// After a reload: ends every certificate session whose device certificate `revoked` lists
    /// (reason `revoked`) or whose chain names none of `anchors` (reason `untrusted`; `None`:
    /// no CA applies, in password mode). Returns the ids of each kind, in order.
    pub fn end_distrusted(
        &self,
        revoked: &Revoked,
        anchors: Option<&Anchors>,
    ) -> (Vec<u64>, Vec<u64>) {
        let (mut gone, mut untrusted) = (Vec::new(), Vec::new());
        for s in self.all() {
            let Some(device) = s.device.as_deref() else {
                continue;
            };
            let (reason, why, ids) = if revoked.contains(device) {
                (
                    EndReason::Revoked,
                    "its device certificate is revoked",
                    &mut gone,
                )
            } else if anchors.is_some_and(|a| !a.cover(device)) {
                (
                    EndReason::Untrusted,
                    "its device certificate no longer chains to a CA of auth.ca_file",
                    &mut untrusted,
                )
            } else {
                continue;
            };
            tracing::warn!(
                session = s.id,
                user = %s.user,
                serial = %device.serial_hex(),
                "ending the session: {why}"
            );
            self.end(&s, reason);
            ids.push(s.id);
        }
        gone.sort_unstable();
        untrusted.sort_unstable();
        (gone, untrusted)
    }

    /// Ends every session (drain): each live client gets a DISCONNECT.
    pub fn end_all(&self, reason: EndReason) {
        for s in self.all() {
            self.end(&s, reason);
        }
    }

    /// The table the sessions' routes live in.
    pub fn table(&self) -> &Arc<SessionTable> {
        &self.table
    }

    /// The metrics the sessions update.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

/// SHA-256 of a cookie token: the key sessions are stored under (the token itself is never kept).
fn cookie_digest(token: &str) -> [u8; 32] {
    crate::client_cert::sha256(token.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(pool: &str) -> (Arc<Pool>, Sessions) {
        let pool = Pool::new(pool.parse().unwrap(), None);
        let table = Arc::new(SessionTable::new(Arc::clone(&pool)));
        let s = Sessions::new(Arc::clone(&pool), table, Metrics::new());
        (pool, s)
    }

    fn peer() -> SocketAddr {
        "192.0.2.1:5000".parse().unwrap()
    }

    #[test]
    fn cookie_finds_its_session_and_nothing_else() {
        let (_, s) = setup("10.0.0.0/29");
        let (a, tok) = s.create("alice", None, None, peer(), 10, 0).unwrap();
        assert_eq!(tok.len(), 64);
        assert_eq!(s.find_by_cookie(&tok).unwrap().id, a.id);
        assert!(s.find_by_cookie("00").is_none());
        let mut wrong = tok.clone();
        wrong.replace_range(0..1, if tok.starts_with('a') { "b" } else { "a" });
        assert!(s.find_by_cookie(&wrong).is_none());
    }

    #[test]
    fn reconnect_keeps_the_address_and_end_returns_it_once() {
        let (pool, s) = setup("10.0.0.0/29");
        let (a, tok) = s.create("alice", None, None, peer(), 10, 0).unwrap();
        let (first, c1, _rx1) = s.attach(&a).unwrap();
        assert!(first.first);
        assert_eq!(pool.in_use(), 1);
        s.detach(&a, c1);
        let (again, _c2, _rx2) = s.attach(&a).unwrap();
        assert!(!again.first);
        assert_eq!(again.v4, first.v4);
        assert_eq!(pool.in_use(), 1);
        s.end(&a, EndReason::Logout);
        s.end(&a, EndReason::Logout);
        assert_eq!(pool.in_use(), 0);
        assert!(s.find_by_cookie(&tok).is_none());
        assert!(matches!(s.attach(&a), Err(AttachError::Ended)));
    }

    #[test]
    fn new_connection_replaces_the_old_one() {
        let (_, s) = setup("10.0.0.0/29");
        let (a, _) = s.create("alice", None, None, peer(), 10, 0).unwrap();
        let (_, c1, mut rx1) = s.attach(&a).unwrap();
        let (_, _c2, mut rx2) = s.attach(&a).unwrap();
        assert_eq!(rx1.try_recv().unwrap(), Control::Replaced);
        // The replaced connection's detach must not detach its successor.
        s.detach(&a, c1);
        s.reap(
            Instant::now() + Duration::from_secs(1000),
            Duration::from_secs(1),
            None,
        );
        assert!(!a.is_ended());
        s.end(&a, EndReason::Kicked);
        assert_eq!(rx2.try_recv().unwrap(), Control::Kick(EndReason::Kicked));
    }

    #[test]
    fn pool_exhaustion_and_limits() {
        let (pool, s) = setup("10.0.0.0/30");
        assert_eq!(pool.size(), 1);
        let (a, _) = s.create("alice", None, None, peer(), 10, 2).unwrap();
        let (b, _) = s.create("alice", None, None, peer(), 10, 2).unwrap();
        assert_eq!(
            s.create("alice", None, None, peer(), 10, 2).unwrap_err(),
            LimitError::User(2)
        );
        assert_eq!(
            s.create("bob", None, None, peer(), 2, 0).unwrap_err(),
            LimitError::Server(2)
        );
        s.attach(&a).unwrap();
        assert!(matches!(
            s.attach(&b),
            Err(AttachError::Pool(PoolError::Exhausted { .. }))
        ));
        s.end(&a, EndReason::Logout);
        assert!(s.attach(&b).is_ok());
    }

    #[test]
    fn detached_sessions_expire_after_cookie_timeout() {
        let (pool, s) = setup("10.0.0.0/29");
        let (a, _) = s.create("alice", None, None, peer(), 10, 0).unwrap();
        let (_, c1, _rx) = s.attach(&a).unwrap();
        s.reap(
            Instant::now() + Duration::from_secs(1000),
            Duration::from_secs(60),
            None,
        );
        assert!(
            !a.is_ended(),
            "a connected session never expires by cookie timeout"
        );
        s.detach(&a, c1);
        s.reap(Instant::now(), Duration::from_secs(60), None);
        assert!(!a.is_ended());
        s.reap(
            Instant::now() + Duration::from_secs(61),
            Duration::from_secs(60),
            None,
        );
        assert!(a.is_ended());
        assert_eq!(pool.in_use(), 0);
        assert!(s.is_empty());
    }
}
