//! Prometheus metrics: the gateway's counters, in one registry per running server.
//!
//! Labels are bounded (direction, reason, transport); there is never a per-user or per-address label.
//! The hot path touches only pre-resolved counter handles (no label lookup per packet).

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Why a packet was dropped. Used as the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DropReason {
    /// Upstream packet whose source is not the session's tunnel address.
    SpoofedSource,
    /// Upstream packet that is not a well-formed IPv4/IPv6 packet.
    Malformed,
    /// Downstream packet for a client whose queue is full (a slow client).
    QueueFull,
    /// Downstream packet for an address with no live session.
    NoSession,
    /// Upstream IPv6 packet from the client's link-local or unspecified address (router
    /// solicitations, MLD): harmless, not forwarded.
    LinkLocal,
}

impl DropReason {
    const ALL: [Self; 5] = [
        Self::SpoofedSource,
        Self::Malformed,
        Self::QueueFull,
        Self::NoSession,
        Self::LinkLocal,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SpoofedSource => "spoofed_source",
            Self::Malformed => "malformed",
            Self::QueueFull => "queue_full",
            Self::NoSession => "no_session",
            Self::LinkLocal => "link_local",
        }
    }
}

/// `event` of `tunneld_dtls_events_total`: a downstream packet too big for one DTLS datagram of
/// its session went over CSTP instead.
pub const DTLS_OVERSIZE: &str = "oversize_to_cstp";
/// `event` of `tunneld_dtls_events_total`: the gateway sent a DTLS DPD request to a silent peer.
pub const DTLS_DPD_SENT: &str = "dpd_request_sent";
/// `event` of `tunneld_dtls_events_total`: a DTLS DPD response arrived (an answer to the
/// gateway's request).
pub const DTLS_DPD_ANSWERED: &str = "dpd_response_received";
/// `event` of `tunneld_dtls_events_total`: an established DTLS channel got its own UDP socket,
/// connected to the client (`dtls.socket_per_session`).
pub const DTLS_OWN_SOCKET: &str = "own_socket";
/// `event` of `tunneld_dtls_events_total`: that socket could not be opened (e.g. no file left
/// under the open-files limit); the channel uses the shared listening socket instead.
pub const DTLS_OWN_SOCKET_FAILED: &str = "own_socket_failed";
/// Every `event` of `tunneld_dtls_events_total`.
const DTLS_EVENTS: [&str; 5] = [
    DTLS_OVERSIZE,
    DTLS_DPD_SENT,
    DTLS_DPD_ANSWERED,
    DTLS_OWN_SOCKET,
    DTLS_OWN_SOCKET_FAILED,
];

/// Why a UDP datagram was dropped before or instead of reaching a DTLS session. The `reason` label
/// of `tunneld_dtls_datagrams_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DtlsDrop {
    /// From an address bound to no session, and not a ClientHello.
    UnknownPeer,
    /// A ClientHello that is truncated, fragmented or otherwise inconsistent.
    MalformedHello,
    /// A well-formed ClientHello whose session_id names no live App-ID (unknown, expired, or not
    /// 32 bytes).
    UnknownAppId,
    /// The session's inbound datagram queue was full.
    QueueFull,
    /// Reached its session from an address that is neither its DTLS peer nor its handshake in
    /// progress, or application data from a peer whose handshake has not completed.
    StalePeer,
    /// Not accepted by the session's DTLS state (bad record, alert, unexpected type).
    BadRecord,
    /// A record of the established channel whose sequence number was already seen or is too old
    /// for the anti-replay window (RFC 6347 §4.1.2.6).
    Replayed,
}

impl DtlsDrop {
    /// How many reasons there are.
    pub(crate) const COUNT: usize = 7;
    /// Every reason, in [`Self::index`] order.
    pub(crate) const ALL: [Self; Self::COUNT] = [
        Self::UnknownPeer,
        Self::MalformedHello,
        Self::UnknownAppId,
        Self::QueueFull,
        Self::StalePeer,
        Self::BadRecord,
        Self::Replayed,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownPeer => "unknown_peer",
            Self::MalformedHello => "malformed_hello",
            Self::UnknownAppId => "unknown_app_id",
            Self::QueueFull => "queue_full",
            Self::StalePeer => "stale_peer",
            Self::BadRecord => "bad_record",
            Self::Replayed => "replayed",
        }
    }

    /// Position in [`Self::ALL`].
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Every metric the gateway exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Live tunnel connections, by transport (`cstp`; `dtls` once DTLS is up).
    pub sessions_active: IntGaugeVec,
    /// Live tunnel connections per data-plane thread (`0`, `1`, ...; `main`: the main runtime).
    pub thread_tunnels: IntGaugeVec,
    /// Sessions started (a successful first CONNECT).
    pub sessions_started: IntCounter,
    /// Sessions ended, by reason.
    pub sessions_ended: IntCounterVec,
    /// Authentication successes.
    pub auth_successes: IntCounter,
    /// Authentication failures, by reason.
    pub auth_failures: IntCounterVec,
    /// Client addresses in the pool.
    pub pool_size: IntGauge,
    /// Client addresses leased.
    pub pool_in_use: IntGauge,
    /// Packets moved, by direction (`up`: client to network, `down`: network to client).
    pub packets: IntCounterVec,
    /// IP bytes moved, by direction.
    pub bytes: IntCounterVec,
    /// Packets dropped, by reason.
    pub drops: IntCounterVec,
    /// TLS handshakes that failed or timed out.
    pub tls_handshake_failures: IntCounter,
    /// Connections closed before authentication for a protocol reason (oversized or slow HTTP, ...).
    pub http_rejects: IntCounterVec,
    /// Seconds from TCP accept to the CONNECT reply.
    pub setup_seconds: Histogram,
    /// Build information (`version` label), always 1.
    pub build_info: IntGaugeVec,
    /// DTLS handshakes, by `result` (`ok`, `failed`).
    pub dtls_handshakes: IntCounterVec,
    /// UDP datagrams dropped, by reason (see [`DtlsDrop`]).
    pub dtls_drops: IntCounterVec,
    /// IP packets carried over DTLS, by direction (a subset of `tunneld_packets_total`).
    pub dtls_packets: IntCounterVec,
    /// IP bytes carried over DTLS, by direction (a subset of `tunneld_bytes_total`).
    pub dtls_bytes: IntCounterVec,
    /// Events on sessions' DTLS channels, by `event` ([`DTLS_OVERSIZE`], ...).
    pub dtls_events: IntCounterVec,
    /// Seconds from TCP accept to a completed TLS handshake.
    pub tls_handshake_seconds: Histogram,
    /// Connections closed at TCP accept, by reason (`banned`, `unauthenticated_limit`).
    pub connections_refused: IntCounterVec,
    /// Connections that have not reached a tunnel yet (TLS handshake, login, CONNECT).
    pub unauthenticated_connections: IntGauge,
    /// Source addresses banned now.
    pub bans_active: IntGauge,
    /// Bans imposed, by origin (`automatic`: failure score; `manual`: `tunnelctl ban add`).
    pub bans: IntCounterVec,
    /// Scores of source addresses forgotten to make room ([`crate::ban::MAX_TRACKED_SOURCES`]).
    pub ban_scores_forgotten: IntCounter,
    /// Failed logins not scored because the ban table was full of bans and open logins.
    pub ban_untracked_failures: IntCounter,
    /// Configuration reloads, by result (`success`, `failure`).
    pub config_reloads: IntCounterVec,
    drop_handles: [IntCounter; 5],
    dtls_drop_handles: [IntCounter; DtlsDrop::COUNT],
    up_packets: IntCounter,
    up_bytes: IntCounter,
    down_packets: IntCounter,
    down_bytes: IntCounter,
    downstream_handoffs: IntCounter,
    /// Times a session's address was steered to another thread's TUN queue (a reconnect on
    /// another thread than the address's stripe, or back).
    pub steering_updates: IntCounter,
    /// Times a data-plane thread slept before parking to take arriving packets in one batch
    /// (`server.rx_coalesce_usecs`, see [`crate::coalesce`]).
    pub rx_coalesce_naps: IntCounter,
    /// The `process_*` metrics (CPU, memory, threads, open files), read at each scrape.
    pub process: crate::procmetrics::ProcessCollector,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g =
                IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric name");
            g
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)
                .expect("static metric definition");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric name");
            c
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("static metric definition");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric name");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("static metric definition");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric name");
            g
        };
        let sessions_active = gauge_vec(
            "tunneld_sessions_active",
            "Live tunnel connections.",
            &["transport"],
        );
        let thread_tunnels = gauge_vec(
            "tunneld_thread_tunnels",
            "Live tunnel connections carried by each data-plane thread (a connection stays on the \
             thread that accepted it).",
            &["thread"],
        );
        let sessions_started = counter("tunneld_sessions_started_total", "Sessions started.");
        let sessions_ended = counter_vec(
            "tunneld_sessions_ended_total",
            "Sessions ended, by reason.",
            &["reason"],
        );
        let auth_successes = counter(
            "tunneld_auth_successes_total",
            "Successful authentications.",
        );
        let auth_failures = counter_vec(
            "tunneld_auth_failures_total",
            "Failed authentications, by reason.",
            &["reason"],
        );
        let pool_size = gauge("tunneld_pool_size", "Client addresses in the pool.");
        let pool_in_use = gauge("tunneld_pool_addresses_in_use", "Client addresses leased.");
        let packets = counter_vec(
            "tunneld_packets_total",
            "IP packets moved, by direction.",
            &["direction"],
        );
        let bytes = counter_vec(
            "tunneld_bytes_total",
            "IP bytes moved, by direction.",
            &["direction"],
        );
        let drops = counter_vec(
            "tunneld_packets_dropped_total",
            "Packets dropped, by reason.",
            &["reason"],
        );
        let tls_handshake_failures = counter(
            "tunneld_tls_handshake_failures_total",
            "TLS handshakes that failed or timed out.",
        );
        let http_rejects = counter_vec(
            "tunneld_http_rejects_total",
            "Connections closed before a tunnel for a protocol reason.",
            &["reason"],
        );
        let setup_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "tunneld_session_setup_seconds",
                "Seconds from TCP accept to the CONNECT reply.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )
        .expect("static metric definition");
        registry
            .register(Box::new(setup_seconds.clone()))
            .expect("unique metric name");
        let build_info = gauge_vec("tunneld_build_info", "Build information.", &["version"]);
        let tls_handshake_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "tunneld_tls_handshake_seconds",
                "Seconds from TCP accept to a completed TLS handshake.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        )
        .expect("static metric definition");
        registry
            .register(Box::new(tls_handshake_seconds.clone()))
            .expect("unique metric name");
        let connections_refused = counter_vec(
            "tunneld_connections_refused_total",
            "Connections closed at TCP accept, by reason.",
            &["reason"],
        );
        let unauthenticated_connections = gauge(
            "tunneld_unauthenticated_connections",
            "Connections that have not reached a tunnel yet.",
        );
        let bans_active = gauge("tunneld_bans_active", "Source addresses banned now.");
        let bans = counter_vec(
            "tunneld_bans_total",
            "Bans imposed, by origin.",
            &["origin"],
        );
        let ban_scores_forgotten = counter(
            "tunneld_ban_scores_forgotten_total",
            "Failure scores of source addresses forgotten to keep the ban table bounded.",
        );
        let ban_untracked_failures = counter(
            "tunneld_ban_untracked_failures_total",
            "Failed logins from new source addresses not scored: the ban table was full of bans and open logins.",
        );
        let config_reloads = counter_vec(
            "tunneld_config_reloads_total",
            "Configuration reloads, by result.",
            &["result"],
        );
        for reason in [
            "banned",
            "unauthenticated_limit",
            crate::server::REFUSED_OPEN_FILES,
        ] {
            connections_refused.with_label_values(&[reason]);
        }
        for origin in ["automatic", "manual"] {
            bans.with_label_values(&[origin]);
        }
        for result in ["success", "failure"] {
            config_reloads.with_label_values(&[result]);
        }
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        sessions_active.with_label_values(&["cstp"]).set(0);
        sessions_active.with_label_values(&["dtls"]).set(0);
        let dtls_handshakes = counter_vec(
            "tunneld_dtls_handshakes_total",
            "DTLS handshakes, by result.",
            &["result"],
        );
        for r in ["ok", "failed"] {
            dtls_handshakes.with_label_values(&[r]);
        }
        let dtls_drops = counter_vec(
            "tunneld_dtls_datagrams_dropped_total",
            "UDP datagrams dropped, by reason.",
            &["reason"],
        );
        let dtls_drop_handles = DtlsDrop::ALL.map(|r| dtls_drops.with_label_values(&[r.as_str()]));
        let dtls_packets = counter_vec(
            "tunneld_dtls_packets_total",
            "IP packets carried over DTLS, by direction.",
            &["direction"],
        );
        let dtls_bytes = counter_vec(
            "tunneld_dtls_bytes_total",
            "IP bytes carried over DTLS, by direction.",
            &["direction"],
        );
        for d in ["up", "down"] {
            dtls_packets.with_label_values(&[d]);
            dtls_bytes.with_label_values(&[d]);
        }
        let dtls_events = counter_vec(
            "tunneld_dtls_events_total",
            "Events on DTLS channels, by event.",
            &["event"],
        );
        for e in DTLS_EVENTS {
            dtls_events.with_label_values(&[e]);
        }
        let downstream_handoffs = IntCounter::new(
            "tunneld_downstream_handoffs_total",
            "Downstream packets read from the TUN on another data-plane thread than their session's \
             (near zero while the steering program runs; see tunnelctl status).",
        )
        .expect("static metric definition");
        registry
            .register(Box::new(downstream_handoffs.clone()))
            .expect("unique metric name");
        let steering_updates = IntCounter::new(
            "tunneld_steering_updates_total",
            "Times a session's address was steered to the TUN queue of another data-plane thread \
             (a cookie reconnect landing on another thread than before).",
        )
        .expect("static metric definition");
        registry
            .register(Box::new(steering_updates.clone()))
            .expect("unique metric name");
        let rx_coalesce_naps = IntCounter::new(
            "tunneld_rx_coalesce_naps_total",
            "Times a data-plane thread under sustained traffic slept server.rx_coalesce_usecs \
             before waiting for more, to handle what arrived meanwhile in one batch.",
        )
        .expect("static metric definition");
        registry
            .register(Box::new(rx_coalesce_naps.clone()))
            .expect("unique metric name");
        let drop_handles = DropReason::ALL.map(|r| drops.with_label_values(&[r.as_str()]));
        let process = crate::procmetrics::ProcessCollector::new();
        registry
            .register(Box::new(process.clone()))
            .expect("unique metric name");
        let up_packets = packets.with_label_values(&["up"]);
        let down_packets = packets.with_label_values(&["down"]);
        let up_bytes = bytes.with_label_values(&["up"]);
        let down_bytes = bytes.with_label_values(&["down"]);
        Self {
            registry,
            sessions_active,
            thread_tunnels,
            sessions_started,
            sessions_ended,
            auth_successes,
            auth_failures,
            pool_size,
            pool_in_use,
            packets,
            bytes,
            drops,
            tls_handshake_failures,
            http_rejects,
            setup_seconds,
            build_info,
            dtls_handshakes,
            dtls_drops,
            dtls_packets,
            dtls_bytes,
            dtls_events,
            tls_handshake_seconds,
            connections_refused,
            unauthenticated_connections,
            bans_active,
            bans,
            ban_scores_forgotten,
            ban_untracked_failures,
            config_reloads,
            drop_handles,
            dtls_drop_handles,
            up_packets,
            up_bytes,
            down_packets,
            down_bytes,
            downstream_handoffs,
            steering_updates,
            rx_coalesce_naps,
            process,
        }
    }

    /// Counts one dropped packet.
    #[inline]
    pub fn drop_packet(&self, reason: DropReason) {
        self.drop_packets(reason, 1);
    }

    /// Counts `n` dropped packets.
    #[inline]
    pub fn drop_packets(&self, reason: DropReason, n: u64) {
        let i = DropReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        if let (Some(c), true) = (self.drop_handles.get(i), n > 0) {
            c.inc_by(n);
        }
    }

    /// Counts `n` UDP datagrams dropped for `reason`.
    #[inline]
    pub fn dtls_drop(&self, reason: DtlsDrop, n: u64) {
        if let (Some(c), true) = (self.dtls_drop_handles.get(reason.index()), n > 0) {
            c.inc_by(n);
        }
    }

    /// Counts `n` packets of `bytes` total travelling from clients to the network.
    #[inline]
    pub fn add_up(&self, n: u64, bytes: u64) {
        self.up_packets.inc_by(n);
        self.up_bytes.inc_by(bytes);
    }

    /// Counts `n` packets of `bytes` total travelling to clients.
    #[inline]
    pub fn add_down(&self, n: u64, bytes: u64) {
        self.down_packets.inc_by(n);
        self.down_bytes.inc_by(bytes);
    }

    /// Counts `n` downstream packets read on another thread than their session's.
    #[inline]
    pub fn add_handoffs(&self, n: u64) {
        if n > 0 {
            self.downstream_handoffs.inc_by(n);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8192);
        // Encoding into a Vec cannot fail for well-formed metrics.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
