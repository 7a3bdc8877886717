//! One live CSTP tunnel: the CONNECT reply, then frames both ways on the TLS stream.
//!
//! One task per connection, one `select!` over: the client's bytes, this session's downstream queue,
//! commands from the session registry (kick, replaced), and the DPD/idle timer from `tunnel-proto`.
//! Downstream frames arrive ready-made from the data plane; each is handed to rustls as its own
//! record (openconnect needs one frame per record), and a batch of records goes out in one flush.
//!
//! With DTLS (protocol doc §7) the task also owns the session's [`DtlsLink`]: datagrams from the
//! UDP demux, the DTLS timers, and the choice of channel for downstream frames (DTLS while it is
//! alive, CSTP otherwise). DISCONNECT and TERMINATE always go over CSTP.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tunnel_proto::connect::{self, ConnectRequest, ConnectResponse, DtlsOffer};
use tunnel_proto::cstp::{self, FrameType};
use tunnel_proto::mtu;
use tunnel_proto::timers::{SessionTimers, TimerConfig, TimerEvent};

use crate::dtls::{DtlsLink, LinkEvent, LinkParams, PSK_LABEL, PSK_LEN};
use crate::metrics::DropReason;
use crate::packet::{self, OwnAddrs};
use crate::server::Shared;
use crate::sessions::{AttachError, Control, EndReason, Session};
use crate::table::Route;
use crate::tls_read;

/// Downstream frames written per flush, at most.
const WRITE_BATCH: usize = 64;
/// Bytes reserved before a TLS read: an idle session keeps a small buffer (memory per idle session
/// is what sizes a server), a busy one doubles its reservation up to [`READ_MAX`].
const READ_MIN: usize = 2 * 1024;
/// The most a busy connection reserves per read.
const READ_MAX: usize = 32 * 1024;

/// Checks the upstream IP packets of one read (from CSTP or DTLS), drops and counts bad ones, and
/// writes the rest to the TUN. False when the data plane has stopped (the TUN device is gone).
fn upstream(
    sh: &Shared,
    session: &Session,
    own: &OwnAddrs,
    batch: &mut Vec<Bytes>,
    span: &tracing::Span,
) -> bool {
    batch.retain(|payload| match packet::check_upstream(payload, own) {
        Ok(()) => {
            session.stats.add_up(payload.len());
            true
        }
        Err(reason) => {
            if reason == DropReason::SpoofedSource {
                session
                    .stats
                    .dropped_spoofed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            sh.metrics.drop_packet(reason);
            tracing::debug!(parent: span, reason = reason.as_str(), "upstream packet dropped");
            false
        }
    });
    match sh.up.write(batch) {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(parent: span, error = %e, "TUN write failed: data plane down");
            sh.health.set_dataplane(crate::health::Direction::Up, false);
            false
        }
    }
}

/// Waits for datagrams of the session's DTLS link; never resolves without a link.
async fn recv_dtls(link: &mut Option<Box<DtlsLink>>) -> crate::dtls::Wake {
    match link {
        Some(l) => l.recv().await,
        None => std::future::pending().await,
    }
}

/// How a connection ended.
#[derive(Debug)]
enum Outcome {
    /// The session is over (logout, protocol error, timeout): end it.
    End(EndReason),
    /// Someone else ended the session and asked us to tell the client.
    Kicked(EndReason),
    /// A newer connection took over.
    Replaced,
    /// The connection died (EOF, error, dead peer); the session waits for a reconnect.
    Lost(&'static str),
}

async fn send_frame(
    tls: &mut TlsStream<TcpStream>,
    kind: FrameType,
    payload: &[u8],
) -> std::io::Result<()> {
    let mut f = Vec::with_capacity(cstp::HEADER_LEN + payload.len());
    cstp::encode(kind, payload, &mut f).map_err(std::io::Error::other)?;
    tls.get_mut().1.writer().write_all(&f)?;
    tls.flush().await
}

/// A connection whose CONNECT named a valid cookie, as the HTTP phase hands it over.
pub(crate) struct Connected {
    /// The TLS connection.
    pub tls: TlsStream<TcpStream>,
    /// Bytes already read past the CONNECT.
    pub buf: BytesMut,
    /// The session the cookie names.
    pub session: Arc<Session>,
    /// The CONNECT's headers.
    pub req: ConnectRequest,
    /// When the TCP connection was accepted.
    pub accepted: Instant,
}

/// Runs the tunnel after a CONNECT with a valid cookie, until the connection ends.
///
/// `conn` comes boxed: this future lives as long as the session, and an async fn keeps its
/// arguments in its state next to the locals they are moved into (the TLS stream alone is
/// 1.2 KiB); unpacked here, they are kept once.
pub(crate) async fn run(sh: Arc<Shared>, conn: Box<Connected>, peer: SocketAddr) {
    // Only three facts of the CONNECT are needed; the request itself ends with this block.
    let (mut tls, mut buf, session, accepted, base_mtu, dtls_psk, ipv6_capable) = {
        let Connected {
            tls,
            buf,
            session,
            req,
            accepted,
        } = *conn;
        let ConnectRequest {
            base_mtu,
            dtls_psk,
            ipv6_capable,
            ..
        } = req;
        (
            tls,
            buf,
            session,
            accepted,
            base_mtu,
            dtls_psk,
            ipv6_capable,
        )
    };
    let cfg = sh.config.load_full();
    let (assigned, conn_id, mut control) = match sh.sessions.attach(&session) {
        Ok(x) => x,
        Err(e) => {
            let resp = match &e {
                AttachError::Pool(p) => {
                    tracing::warn!(session = session.id, user = %session.user, %peer, error = %p, "CONNECT refused: pool exhausted");
                    connect::error_response(503, "Service Unavailable", Some(&p.to_string()))
                }
                _ => {
                    tracing::info!(session = session.id, %peer, error = %e, "CONNECT refused");
                    connect::error_response(401, "Cookie is not acceptable", None)
                }
            };
            let _ = tls.write_all(&resp).await;
            let _ = tls.shutdown().await;
            return;
        }
    };
    let net = &cfg.network;
    let link_mtu = base_mtu.map_or(net.link_mtu, |b| b.min(net.link_mtu));
    // DTLS when the client offers PSK-NEGOTIATE and it is enabled: the PSK comes from this TLS
    // connection, and the App-ID is registered before the reply announcing it is written (§7.1).
    let mut dtls = match (&sh.dtls, cfg.dtls.enabled && dtls_psk) {
        (Some(server), true) => {
            match tls
                .get_ref()
                .1
                .export_keying_material([0u8; PSK_LEN], PSK_LABEL, None)
            {
                Ok(psk) => {
                    let ip_udp = if peer.is_ipv6() { 48 } else { 28 };
                    Some(Box::new(server.register(
                        session.id,
                        psk,
                        LinkParams {
                            mtu: link_mtu.saturating_sub(ip_udp).max(256),
                            switch_after: Duration::from_secs(u64::from(
                                cfg.dtls.switch_to_tcp_secs.max(1),
                            )),
                            dpd: Duration::from_secs(u64::from(cfg.timers.dpd_secs)),
                            own_socket: cfg.dtls.socket_per_session,
                        },
                    )))
                }
                Err(e) => {
                    tracing::warn!(session = session.id, %peer, error = %e, "TLS exporter failed; no DTLS");
                    None
                }
            }
        }
        _ => None,
    };
    let tunnel_mtu = net
        .mtu
        .min(mtu::mtu_for(link_mtu, peer.is_ipv6(), dtls.is_some()));
    let ipv6 = assigned.v6.filter(|_| ipv6_capable);
    let reply = ConnectResponse {
        ipv4: Some((assigned.v4, net.ipv4_pool.netmask())),
        ipv6: ipv6.map(|a| (a, 128)),
        mtu: tunnel_mtu,
        base_mtu: Some(link_mtu),
        dpd_secs: cfg.timers.dpd_secs,
        keepalive_secs: cfg.timers.keepalive_secs,
        idle_timeout_secs: (cfg.timers.idle_timeout_secs > 0)
            .then_some(cfg.timers.idle_timeout_secs),
        session_timeout_secs: (cfg.timers.session_timeout_secs > 0)
            .then_some(cfg.timers.session_timeout_secs),
        dns: net.dns.clone(),
        default_domain: net.default_domain.clone(),
        split_dns: net.split_dns.clone(),
        split_include: net.split_include.clone(),
        split_exclude: net.split_exclude.clone(),
        banner: cfg.server.banner.clone(),
        server_name: cfg.server.server_name.clone(),
        rekey_secs: None,
        dtls: dtls.as_ref().map(|l| DtlsOffer {
            port: l.server().port(),
            app_id: l.app_id(),
            dpd_secs: cfg.timers.dpd_secs,
            // An idle client keeps its UDP path (and NAT binding) proven well within
            // switch_to_tcp_secs, so silence really means loss.
            keepalive_secs: cfg
                .timers
                .keepalive_secs
                .min((cfg.dtls.switch_to_tcp_secs / 2).max(1)),
        }),
    }
    .encode();

    let (tx, mut rx) = mpsc::channel::<Bytes>(net.queue_len.max(1));
    let route = Arc::new(Route {
        session_id: session.id,
        tx,
        stats: Arc::clone(&session.stats),
        thread: crate::dataplane::thread_index(),
    });
    if let Some(old) = sh.table.install(assigned.index, Arc::clone(&route)) {
        tracing::debug!(
            session = session.id,
            old_session = old.session_id,
            "route replaced"
        );
    }
    if let Some(steering) = sh.steering.get() {
        // A reconnect on another thread than the address's stripe: its replies follow it.
        match steering.steer(assigned.index, route.thread) {
            Ok(true) => sh.metrics.steering_updates.inc(),
            Ok(false) => {}
            Err(e) => tracing::warn!(
                session = session.id,
                error = %e,
                "cannot update the TUN steering map (kernels before 6.5 need CAP_BPF for it); \
                 replies of sessions that reconnect onto another thread are handed over from now on"
            ),
        }
    }
    if let Err(e) = tls.write_all(&reply).await.and(tls.flush().await) {
        tracing::info!(session = session.id, %peer, error = %e, "CONNECT reply failed");
        sh.table.remove_if(assigned.index, &route);
        sh.sessions.detach(&session, conn_id);
        return;
    }
    sh.metrics
        .setup_seconds
        .observe(accepted.elapsed().as_secs_f64());
    let span = tracing::info_span!("session", id = session.id, user = %session.user, %peer);
    if assigned.first {
        sh.metrics.sessions_started.inc();
        // The access log: one line per session start, flat fields (JSON-friendly), no span.
        tracing::info!(
            target: "access",
            parent: None,
            session = session.id,
            user = %session.user,
            peer = %peer,
            ipv4 = %assigned.v4,
            ipv6 = %ipv6.map_or_else(|| "-".to_owned(), |a| a.to_string()),
            transport = "cstp",
            mtu = tunnel_mtu,
            "session started"
        );
    } else {
        tracing::info!(parent: &span, ipv4 = %assigned.v4, ipv6 = ?ipv6, mtu = tunnel_mtu, "session reconnected");
    }
    let active_cstp = sh.metrics.sessions_active.with_label_values(&["cstp"]);
    let active_dtls = sh.metrics.sessions_active.with_label_values(&["dtls"]);
    let dtls_up = (
        sh.metrics.dtls_packets.with_label_values(&["up"]),
        sh.metrics.dtls_bytes.with_label_values(&["up"]),
    );
    let dtls_down = (
        sh.metrics.dtls_packets.with_label_values(&["down"]),
        sh.metrics.dtls_bytes.with_label_values(&["down"]),
    );
    active_cstp.inc();
    let on_thread = sh
        .metrics
        .thread_tunnels
        .with_label_values(&[&thread_label(route.thread)]);
    on_thread.inc();
    let mut on_dtls = false;
    let mut up_batch: Vec<Bytes> = Vec::new();
    // Every frame is one record: rustls must accept each whole frame without splitting it, so the
    // send buffer is unbounded here and bounded by WRITE_BATCH and the flush below instead.
    tls.get_mut().1.set_buffer_limit(None);

    let own = OwnAddrs {
        v4: assigned.v4,
        v6: ipv6,
    };
    let max_payload = (net.link_mtu.max(tunnel_mtu)) as usize;
    let secs = |s: u32| (s > 0).then(|| Duration::from_secs(u64::from(s)));
    let mut timers = SessionTimers::new(
        TimerConfig {
            dpd: Duration::from_secs(u64::from(cfg.timers.dpd_secs.max(1))),
            idle_timeout: secs(cfg.timers.idle_timeout_secs),
            session_timeout: None,
        },
        Instant::now(),
    );
    let write_timeout = Duration::from_secs(u64::from(cfg.timers.dpd_secs.max(5)));
    let far = || tokio::time::Instant::now() + Duration::from_secs(86400 * 365);
    let sleep = tokio::time::sleep_until(
        timers
            .poll_timeout()
            .map_or_else(far, tokio::time::Instant::from_std),
    );
    tokio::pin!(sleep);
    let dtls_sleep = tokio::time::sleep_until(far());
    tokio::pin!(dtls_sleep);
    let mut read_chunk = READ_MIN;
    buf.reserve(read_chunk);
    // What rustls read past the CONNECT request is the tunnel's first bytes.
    let mut peer_closed = match tls_read::take_buffered(tls.get_mut().1, &mut buf) {
        Ok(read) => read.closed,
        Err(e) => {
            tracing::debug!(parent: &span, error = %e, "read error");
            true
        }
    };

    let outcome = 'conn: loop {
        // Handle every complete frame already buffered.
        loop {
            let header = match cstp::parse_header(&buf, max_payload) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => {
                    sh.metrics.drop_packet(DropReason::Malformed);
                    tracing::warn!(parent: &span, error = %e, "malformed CSTP frame; ending session");
                    break 'conn Outcome::End(EndReason::ProtocolError);
                }
            };
            if buf.len() < header.frame_len() {
                break;
            }
            buf.advance(cstp::HEADER_LEN);
            let payload = buf.split_to(header.payload_len);
            let now = Instant::now();
            timers.on_receive(now, header.kind == FrameType::Data);
            match header.kind {
                FrameType::Data => {
                    // DATA over CSTP means the client has lost DTLS (§7.8).
                    if let Some(l) = dtls.as_mut() {
                        l.on_cstp_data();
                    }
                    up_batch.push(payload.freeze());
                }
                FrameType::DpdRequest => {
                    // Packets decoded before the request go out before this task awaits.
                    if !upstream(&sh, &session, &own, &mut up_batch, &span) {
                        break 'conn Outcome::Lost("data plane stopped");
                    }
                    if let Err(e) = send_frame(&mut tls, FrameType::DpdResponse, &payload).await {
                        tracing::debug!(parent: &span, error = %e, "DPD response failed");
                        break 'conn Outcome::Lost("write error");
                    }
                }
                FrameType::DpdResponse | FrameType::Keepalive => {}
                FrameType::Disconnect => {
                    if !upstream(&sh, &session, &own, &mut up_batch, &span) {
                        break 'conn Outcome::Lost("data plane stopped");
                    }
                    if cstp::is_logout(&payload) {
                        tracing::info!(parent: &span, reason = cstp::disconnect_reason(&payload).unwrap_or(""), "client logged out");
                        break 'conn Outcome::End(EndReason::Logout);
                    }
                    break 'conn Outcome::Lost("client disconnect (temporary)");
                }
                FrameType::Compressed | FrameType::Terminate => {
                    // No compression was negotiated, and TERMINATE is server-to-client only.
                    sh.metrics.drop_packet(DropReason::Malformed);
                    tracing::warn!(parent: &span, kind = ?header.kind, "unexpected CSTP frame type; ending session");
                    break 'conn Outcome::End(EndReason::ProtocolError);
                }
            }
        }
        // Everything this read decoded goes to the TUN in one batch.
        if !upstream(&sh, &session, &own, &mut up_batch, &span) {
            break 'conn Outcome::Lost("data plane stopped");
        }
        if peer_closed {
            break 'conn Outcome::Lost("connection closed by client");
        }
        if let Some(t) = timers.poll_timeout() {
            let t = tokio::time::Instant::from_std(t);
            if t < sleep.deadline() {
                sleep.as_mut().reset(t);
            }
        }
        if let Some(l) = dtls.as_ref() {
            let t = l
                .poll_timeout(Instant::now())
                .map_or_else(far, tokio::time::Instant::from_std);
            if t != dtls_sleep.deadline() {
                dtls_sleep.as_mut().reset(t);
            }
            // Move the session between the transport gauges when its downstream channel changes.
            if l.is_active() != on_dtls {
                on_dtls = l.is_active();
                let (from, to) = if on_dtls {
                    (&active_cstp, &active_dtls)
                } else {
                    (&active_dtls, &active_cstp)
                };
                from.dec();
                to.inc();
                tracing::info!(parent: &span, transport = if on_dtls { "dtls" } else { "cstp" }, "downstream channel switched");
            }
        }

        tokio::select! {
            biased;
            cmd = control.recv() => match cmd {
                Some(Control::Kick(reason)) => break Outcome::Kicked(reason),
                Some(Control::Replaced) | None => break Outcome::Replaced,
            },
            () = &mut sleep => {
                let now = Instant::now();
                match timers.handle_timeout(now) {
                    Some(TimerEvent::SendDpdRequest) => {
                        if send_frame(&mut tls, FrameType::DpdRequest, &[]).await.is_err() {
                            break Outcome::Lost("write error");
                        }
                    }
                    Some(TimerEvent::PeerDead) => break Outcome::Lost("dead peer (no DPD answer)"),
                    Some(TimerEvent::IdleTimeout) => break Outcome::End(EndReason::IdleTimeout),
                    Some(TimerEvent::SessionTimeout) => break Outcome::End(EndReason::SessionTimeout),
                    Some(_) | None => {}
                }
                sleep.as_mut().reset(timers.poll_timeout().map_or_else(far, tokio::time::Instant::from_std));
            }
            wake = recv_dtls(&mut dtls) => {
                let Some(link) = dtls.as_mut() else { continue };
                let now = Instant::now();
                if let Some(LinkEvent::Established { peer: udp_peer }) =
                    link.receive(wake, now, &mut up_batch)
                {
                    tracing::debug!(parent: &span, %udp_peer, "DTLS up");
                }
                link.flush().await;
                let (packets, bytes) = link.take_up_counts();
                dtls_up.0.inc_by(packets);
                dtls_up.1.inc_by(bytes);
                if !up_batch.is_empty() {
                    // DATA counts for the idle timeout; CSTP's DPD clock is left to CSTP.
                    timers.on_send_data(now);
                }
                if !upstream(&sh, &session, &own, &mut up_batch, &span) {
                    break 'conn Outcome::Lost("data plane stopped");
                }
            }
            () = &mut dtls_sleep, if dtls.is_some() => {
                if let Some(l) = dtls.as_mut() {
                    let _ = l.handle_timeout(Instant::now());
                    l.flush().await;
                }
                dtls_sleep.as_mut().reset(far());
            }
            frame = rx.recv() => {
                let Some(frame) = frame else { break Outcome::Lost("route closed") };
                if let Some(link) = dtls.as_mut().filter(|l| l.is_active()) {
                    // Downstream over DTLS: each frame becomes one record, sent in GSO batches.
                    let mut spill: Vec<Bytes> = Vec::new();
                    let (mut packets, mut bytes) = (0u64, 0u64);
                    let mut next = Some(frame);
                    let mut n = 0;
                    while let Some(f) = next {
                        if link.encrypt_frame(&f) {
                            packets += 1;
                            bytes += f.len().saturating_sub(cstp::HEADER_LEN) as u64;
                        } else {
                            spill.push(f);
                        }
                        n += 1;
                        next = if n < WRITE_BATCH { rx.try_recv().ok() } else { None };
                    }
                    link.flush().await;
                    dtls_down.0.inc_by(packets);
                    dtls_down.1.inc_by(bytes);
                    timers.on_send_data(Instant::now());
                    if !spill.is_empty() {
                        let conn = tls.get_mut().1;
                        let ok = spill.iter().all(|f| conn.writer().write_all(f).is_ok());
                        match tokio::time::timeout(write_timeout, tls.flush()).await {
                            Ok(Ok(())) if ok => {}
                            Ok(_) => break Outcome::Lost("write error"),
                            Err(_) => break Outcome::Lost("client stopped reading"),
                        }
                    }
                    continue;
                }
                let conn = tls.get_mut().1;
                let mut ok = conn.writer().write_all(&frame).is_ok();
                let mut n = 1;
                while ok && n < WRITE_BATCH {
                    match rx.try_recv() {
                        Ok(f) => {
                            ok = conn.writer().write_all(&f).is_ok();
                            n += 1;
                        }
                        Err(_) => break,
                    }
                }
                timers.on_send_data(Instant::now());
                match tokio::time::timeout(write_timeout, tls.flush()).await {
                    Ok(Ok(())) if ok => {}
                    Ok(_) => break Outcome::Lost("write error"),
                    Err(_) => break Outcome::Lost("client stopped reading"),
                }
            }
            r = tls.get_ref().0.readable() => {
                let (tcp, conn) = tls.get_mut();
                match r.and_then(|()| tls_read::read_available(tcp, conn, &mut buf)) {
                    Ok(read) => {
                        let n = read.bytes;
                        if n >= read_chunk / 2 {
                            read_chunk = (read_chunk * 2).min(READ_MAX);
                        } else if n < read_chunk / 8 {
                            read_chunk = (read_chunk / 2).max(READ_MIN);
                        }
                        // The frames read before the close are handled first (a logout's DISCONNECT).
                        peer_closed = read.closed;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        tracing::debug!(parent: &span, error = %e, "read error");
                        // A record that did not decrypt has an alert queued: send it.
                        let _ = tokio::time::timeout(Duration::from_secs(1), tls.flush()).await;
                        break Outcome::Lost("read error");
                    }
                }
            }
        }
        if buf.is_empty() && read_chunk == READ_MIN && buf.capacity() > 4 * READ_MIN {
            // Gone quiet after a burst: give the big buffers back.
            buf = BytesMut::with_capacity(READ_MIN);
            up_batch = Vec::new();
        } else if buf.capacity() - buf.len() < read_chunk / 2 {
            buf.reserve(read_chunk);
        }
    };

    if on_dtls {
        active_dtls.dec();
    } else {
        active_cstp.dec();
    }
    on_thread.dec();
    // Unregisters the App-ID and unbinds the UDP peers.
    drop(dtls);
    sh.table.remove_if(assigned.index, &route);
    match outcome {
        Outcome::End(reason) => {
            if reason != EndReason::ProtocolError && reason != EndReason::Logout {
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    send_frame(&mut tls, FrameType::Disconnect, &[]),
                )
                .await;
            }
            sh.sessions.end(&session, reason);
        }
        Outcome::Kicked(reason) => {
            tracing::info!(parent: &span, reason = reason.as_str(), "disconnecting client");
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                send_frame(&mut tls, FrameType::Disconnect, &[]),
            )
            .await;
        }
        Outcome::Replaced => tracing::info!(parent: &span, "connection replaced by a reconnect"),
        Outcome::Lost(why) => {
            tracing::info!(parent: &span, why, "connection lost; session kept for reconnect");
            sh.sessions.detach(&session, conn_id);
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), tls.shutdown()).await;
}

/// The `thread` label of [`crate::metrics::Metrics::thread_tunnels`] for a data-plane thread index.
pub(crate) fn thread_label(thread: u16) -> String {
    if thread == crate::dataplane::NO_THREAD {
        "main".to_owned()
    } else {
        thread.to_string()
    }
}
