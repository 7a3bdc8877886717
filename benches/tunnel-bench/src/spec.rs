//! What the orchestrating process tells each worker process, and what workers report back.
//!
//! A worker gets its [`WorkerSpec`] as a JSON argument, reads [`Action`]s as JSON lines on stdin,
//! and writes [`Msg`]s as JSON lines on stdout. Several workers run when the sessions don't fit in
//! one process (the open-files limit), and their reports merge.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::hist::Hist;

/// One worker's share of the run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WorkerSpec {
    /// This worker's number (0-based).
    pub(crate) worker: u32,
    /// The server's TLS address.
    pub(crate) server: SocketAddr,
    /// `pin-sha256:` of the server certificate; `None` accepts any certificate.
    pub(crate) pin: Option<String>,
    /// Username.
    pub(crate) user: String,
    /// With `user_count` > 0, session `i` logs in as `<user><i % user_count>` (same password).
    pub(crate) user_count: u32,
    /// Password.
    pub(crate) password: String,
    /// Client certificates `<dir>/<username>.pem` + `.key`, when logging in with certificates.
    #[serde(default)]
    pub(crate) cert_dir: Option<std::path::PathBuf>,
    /// Group to pick, if offered.
    pub(crate) group: Option<String>,
    /// Global number of this worker's first session.
    pub(crate) first_session: u32,
    /// Sessions this worker opens.
    pub(crate) sessions: u32,
    /// Setups in flight at once in this worker.
    pub(crate) concurrency: u32,
    /// Local source addresses; session `i` uses `sources[i % len]` (empty: the kernel picks).
    pub(crate) sources: Vec<IpAddr>,
    /// Where probes go (a host behind the gateway that answers ICMP echo, or the UDP echo port).
    pub(crate) target: Ipv4Addr,
    /// UDP echo port for probes; `None` uses ICMP echo.
    pub(crate) udp_port: Option<u16>,
    /// Send one probe per session right after it comes up and count the replies.
    pub(crate) verify: bool,
    /// Deadline for one setup, seconds.
    pub(crate) setup_timeout_s: u64,
    /// Keepalive interval override, seconds (0: off); `None` uses the server's value.
    pub(crate) keepalive_s: Option<u32>,
    /// DPD interval override, seconds (0: off); `None` uses the server's value.
    pub(crate) dpd_s: Option<u32>,
    /// Offer DTLS and wait for its handshake as part of each setup.
    pub(crate) dtls: bool,
    /// Deadline for one DTLS handshake, seconds.
    pub(crate) dtls_timeout_s: u64,
    /// Seconds after a DTLS failure before a new handshake; 0: none.
    pub(crate) dtls_retry_s: u64,
}

/// How the storm drops and brings back sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum StormMode {
    /// Reset every TCP connection, then reconnect with the session cookie (no login).
    Cookie,
    /// Log every session out, then log in again from scratch (full authentication).
    Reauth,
}

/// A phase the orchestrator starts in every worker at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub(crate) enum Action {
    /// Keep sessions up for `secs` with keepalive/DPD and one probe per `trickle_ms` per session.
    Hold {
        /// Duration.
        secs: f64,
        /// Probe interval per session (0: none).
        trickle_ms: u64,
    },
    /// The first `sessions` sessions of the worker push probes for `secs`, `window` in flight each.
    Throughput {
        /// Duration.
        secs: f64,
        /// Sessions of this worker that push.
        sessions: u32,
        /// Probes in flight per session.
        window: u32,
        /// IP packet size in bytes.
        size: u32,
    },
    /// Drop every session at once and bring it back.
    Storm {
        /// How.
        mode: StormMode,
        /// Bound reconnects in flight by the connect concurrency (false: all at once).
        bounded: bool,
        /// Wait between the drop and the reconnect, milliseconds (a device noticing its loss).
        delay_ms: u64,
    },
    /// Log out every session and exit.
    End,
}

/// Outcome of the connect phase in one worker.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct ConnectReport {
    /// Sessions tried.
    pub(crate) attempted: u64,
    /// Sessions up.
    pub(crate) up: u64,
    /// Failures by reason.
    pub(crate) failed: BTreeMap<String, u64>,
    /// Whole setup latency, microseconds.
    pub(crate) setup: Hist,
    /// TCP connect.
    pub(crate) tcp: Hist,
    /// TLS handshake.
    pub(crate) tls: Hist,
    /// Login exchange.
    pub(crate) auth: Hist,
    /// CONNECT round trip.
    pub(crate) connect: Hist,
    /// Seconds from the first setup start to the last setup end.
    pub(crate) elapsed_s: f64,
    /// Verification probes sent (one per session up, when asked).
    pub(crate) verify_sent: u64,
    /// Verification replies received.
    pub(crate) verify_received: u64,
    /// One example error text per failure reason.
    pub(crate) examples: BTreeMap<String, String>,
    /// Sessions up with DTLS established (with `dtls`).
    pub(crate) dtls_up: u64,
    /// DTLS outcome of each session up, by label (`up`, `not_offered`, `handshake_timeout`...).
    pub(crate) dtls: BTreeMap<String, u64>,
    /// One example text per DTLS failure reason.
    pub(crate) dtls_examples: BTreeMap<String, String>,
    /// CONNECT answer to DTLS outcome (part of `setup`), microseconds.
    pub(crate) dtls_time: Hist,
}

/// Outcome of one action in one worker (fields unused by an action stay zero).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct ActionReport {
    /// Sessions that took part.
    pub(crate) sessions: u64,
    /// Sessions that died (before or during the phase), by reason.
    pub(crate) lost: BTreeMap<String, u64>,
    /// Probes sent.
    pub(crate) sent: u64,
    /// Probe replies received.
    pub(crate) received: u64,
    /// IP bytes sent.
    pub(crate) bytes_sent: u64,
    /// IP bytes received.
    pub(crate) bytes_received: u64,
    /// Probe round trips, microseconds.
    pub(crate) rtt: Hist,
    /// Bytes received per pushing session (throughput fairness).
    pub(crate) per_session_bytes: Vec<u64>,
    /// Seconds the sending part lasted (the longest session).
    pub(crate) elapsed_s: f64,
    /// Keepalives sent.
    pub(crate) keepalives: u64,
    /// DPD requests sent.
    pub(crate) dpd_sent: u64,
    /// DPD responses received.
    pub(crate) dpd_answered: u64,
    /// Storm: sessions back up.
    pub(crate) recovered: u64,
    /// Storm: time from the drop to each session being back, microseconds.
    pub(crate) recovery: Hist,
    /// Storm: sessions that came back with a different address.
    pub(crate) address_changed: u64,
    /// Logout failures (End).
    pub(crate) logout_failed: u64,
    /// IP packets sent over DTLS.
    pub(crate) dtls_sent: u64,
    /// IP packets received over DTLS.
    pub(crate) dtls_received: u64,
    /// DTLS keepalives sent.
    pub(crate) dtls_keepalives: u64,
    /// DTLS DPD requests sent.
    pub(crate) dtls_dpd_sent: u64,
    /// DTLS DPD responses received.
    pub(crate) dtls_dpd_answered: u64,
    /// New DTLS handshakes started after a failure.
    #[serde(default)]
    pub(crate) dtls_restarts: u64,
    /// With DTLS: each session's DTLS state at the end of the phase, by label.
    pub(crate) dtls: BTreeMap<String, u64>,
    /// One example error text per loss reason.
    pub(crate) examples: BTreeMap<String, String>,
}

/// A line from a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "kebab-case")]
pub(crate) enum Msg {
    /// Setups done so far.
    Progress {
        /// Up.
        up: u64,
        /// Failed.
        failed: u64,
    },
    /// Every setup finished.
    Ready(ConnectReport),
    /// An action finished.
    Done(ActionReport),
    /// The worker can't go on.
    Fatal {
        /// Why.
        error: String,
    },
}
