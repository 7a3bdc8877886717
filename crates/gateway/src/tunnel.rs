//! One live CSTP tunnel: the CONNECT reply, then frames both ways on the TLS stream.
//!
//! One task per connection, one `select!` over: the client's bytes, this session's downstream queue,
//! commands from the session registry (kick, replaced), and the DPD/idle timer from `tunnel-proto`.
//! Downstream frames arrive ready-made from the data plane; each is handed to rustls as its own
//! record (openconnect needs one frame per record), and a batch of records goes out in one flush.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tunnel_proto::connect::{self, ConnectRequest, ConnectResponse};
use tunnel_proto::cstp::{self, FrameType};
use tunnel_proto::mtu;
use tunnel_proto::timers::{SessionTimers, TimerConfig, TimerEvent};

use crate::metrics::DropReason;
use crate::packet::{self, OwnAddrs};
use crate::server::Shared;
use crate::sessions::{AttachError, Control, EndReason, Session};
use crate::table::Route;

/// Downstream frames written per flush, at most.
const WRITE_BATCH: usize = 64;
/// Bytes reserved before each TLS read.
const READ_RESERVE: usize = 8 * 1024;

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

/// Runs the tunnel after a CONNECT with a valid cookie, until the connection ends.
pub(crate) async fn run(
    sh: Arc<Shared>,
    mut tls: TlsStream<TcpStream>,
    mut buf: BytesMut,
    session: Arc<Session>,
    req: ConnectRequest,
    peer: SocketAddr,
    accepted: Instant,
) {
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
    let link_mtu = req.base_mtu.map_or(net.link_mtu, |b| b.min(net.link_mtu));
    let tunnel_mtu = net.mtu.min(mtu::mtu_for(link_mtu, peer.is_ipv6(), false));
    let ipv6 = assigned.v6.filter(|_| req.ipv6_capable);
    let resp = ConnectResponse {
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
        dtls: None,
    };

    let (tx, mut rx) = mpsc::channel::<Bytes>(net.queue_len.max(1));
    let route = Arc::new(Route {
        session_id: session.id,
        tx,
        stats: Arc::clone(&session.stats),
    });
    if let Some(old) = sh.table.install(assigned.index, Arc::clone(&route)) {
        tracing::debug!(
            session = session.id,
            old_session = old.session_id,
            "route replaced"
        );
    }
    if let Err(e) = tls.write_all(&resp.encode()).await.and(tls.flush().await) {
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
    let active = sh.metrics.sessions_active.with_label_values(&["cstp"]);
    active.inc();
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
    buf.reserve(READ_RESERVE);

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
                FrameType::Data => match packet::check_upstream(&payload, &own) {
                    Ok(()) => {
                        session.stats.add_up(payload.len());
                        if sh.tun_tx.send(payload.freeze()).await.is_err() {
                            break 'conn Outcome::Lost("data plane stopped");
                        }
                    }
                    Err(reason) => {
                        if reason == DropReason::SpoofedSource {
                            session
                                .stats
                                .dropped_spoofed
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        sh.metrics.drop_packet(reason);
                        tracing::debug!(parent: &span, reason = reason.as_str(), "upstream packet dropped");
                    }
                },
                FrameType::DpdRequest => {
                    if let Err(e) = send_frame(&mut tls, FrameType::DpdResponse, &payload).await {
                        tracing::debug!(parent: &span, error = %e, "DPD response failed");
                        break 'conn Outcome::Lost("write error");
                    }
                }
                FrameType::DpdResponse | FrameType::Keepalive => {}
                FrameType::Disconnect => {
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
        if let Some(t) = timers.poll_timeout() {
            let t = tokio::time::Instant::from_std(t);
            if t < sleep.deadline() {
                sleep.as_mut().reset(t);
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
            frame = rx.recv() => {
                let Some(frame) = frame else { break Outcome::Lost("route closed") };
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
            r = tls.read_buf(&mut buf) => match r {
                Ok(0) => break Outcome::Lost("connection closed by client"),
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(parent: &span, error = %e, "read error");
                    break Outcome::Lost("read error");
                }
            },
        }
        if buf.capacity() - buf.len() < 2048 {
            buf.reserve(READ_RESERVE);
        }
    };

    active.dec();
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
