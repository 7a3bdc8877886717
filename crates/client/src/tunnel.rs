//! A live CSTP tunnel on the client side: IP packets out as DATA frames, frames in.
//!
//! Each frame goes to rustls as its own write, so it becomes its own TLS record (openconnect and
//! ocserv both need that, protocol doc §1 item 6); frames are queued and sent with one flush, so a
//! burst costs one socket write. Incoming bytes are read into one growing buffer and frames are cut
//! from it without copying. DPD requests from the server are answered automatically; DISCONNECT and
//! TERMINATE end the tunnel with [`ClientError::Disconnected`].
//!
//! With DTLS (protocol doc §7) the tunnel also owns a connected UDP socket and its
//! [`DtlsChannel`]: [`Tunnel::read`] waits on TLS, UDP and the DTLS timers at once, IP packets go
//! over DTLS while it is up and over CSTP before and after, and DATA arriving on either channel
//! comes out of [`Tunnel::next_frame`]. CSTP keepalive and DPD frames stay on CSTP (the caller's);
//! the DTLS channel runs its own (`X-DTLS-*`). A DTLS failure never ends the tunnel: it is recorded
//! in [`Tunnel::dtls_status`] and the socket is closed.

use std::collections::VecDeque;
use std::io::{IoSliceMut, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_rustls::client::TlsStream;
use tunnel_proto::connect_client::ConnectReply;
use tunnel_proto::cstp::{self, FrameType};

use crate::dtls::{
    ChannelChange, ChannelParams, DtlsChannel, DtlsFailure, DtlsStats, DtlsStatus, PSK_LABEL,
    PSK_LEN,
};
use crate::error::ClientError;

/// `recvmmsg` calls per wake-up at most (each takes up to `quinn_udp::BATCH_SIZE` datagrams).
const UDP_RECV_CALLS: usize = 4;
/// Bytes per receive slot: with GRO one slot can hold up to 64 KiB of coalesced datagrams.
const RECV_SLOT: usize = 64 * 1024;

/// Receive buffers, one set per thread, shared by every tunnel on it (filled and used without an
/// await in between).
struct RecvBufs {
    storage: Vec<u8>,
    meta: [RecvMeta; quinn_udp::BATCH_SIZE],
}

thread_local! {
    static RECV_BUFS: std::cell::RefCell<RecvBufs> = std::cell::RefCell::new(RecvBufs {
        // Zeroed pages from the allocator: only the pages datagrams land in get touched.
        storage: vec![0; RECV_SLOT * quinn_udp::BATCH_SIZE],
        meta: [RecvMeta::default(); quinn_udp::BATCH_SIZE],
    });
}

/// Which channel a frame came over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// CSTP frames on the TLS connection.
    Cstp,
    /// DTLS records on UDP.
    Dtls,
}

impl Transport {
    /// `cstp` or `dtls`.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Cstp => "cstp",
            Self::Dtls => "dtls",
        }
    }
}

/// How a tunnel should try DTLS.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DtlsRequest {
    /// The client's own link MTU, when the server sends no `X-CSTP-Base-MTU`.
    pub(crate) base_mtu: u32,
    /// How long the handshake may take.
    pub(crate) handshake_timeout: Duration,
    /// After a failure (handshake, DPD, socket), start a new handshake this much later, as
    /// openconnect does every 60 s; `None`: stay on CSTP.
    pub(crate) retry_after: Option<Duration>,
}

/// The UDP side of a tunnel.
#[derive(Debug)]
struct DtlsIo {
    sock: UdpSocket,
    /// GSO sends and `recvmmsg`/GRO receives.
    state: UdpSocketState,
    /// The server's UDP address, which `sock` is connected to.
    peer: SocketAddr,
    chan: DtlsChannel,
}

/// Opens the UDP socket (bound to the TLS connection's local address, connected to the server's
/// address at `port`) and starts the handshake.
fn start_dtls(
    tls: &TlsStream<TcpStream>,
    reply: &ConnectReply,
    req: DtlsRequest,
) -> Result<DtlsIo, DtlsFailure> {
    let offer = reply
        .dtls
        .as_ref()
        .ok_or(DtlsFailure::Setup("no offer".into()))?;
    let psk = tls
        .get_ref()
        .1
        .export_keying_material([0u8; PSK_LEN], PSK_LABEL, None)
        .map_err(|e| DtlsFailure::Exporter(e.to_string()))?;
    let sock_err = |e: std::io::Error| DtlsFailure::Socket(e.to_string());
    let tcp = tls.get_ref().0;
    let local = tcp.local_addr().map_err(sock_err)?;
    let server = tcp.peer_addr().map_err(sock_err)?;
    let std_sock = std::net::UdpSocket::bind(SocketAddr::new(local.ip(), 0)).map_err(sock_err)?;
    let peer = SocketAddr::new(server.ip(), offer.port);
    std_sock.connect(peer).map_err(sock_err)?;
    std_sock.set_nonblocking(true).map_err(sock_err)?;
    let sock = UdpSocket::from_std(std_sock).map_err(sock_err)?;
    let state = UdpSocketState::new((&sock).into()).map_err(sock_err)?;
    let secs = |s: u32| (s > 0).then(|| Duration::from_secs(u64::from(s)));
    let chan = DtlsChannel::start(
        &offer.app_id,
        psk,
        ChannelParams {
            base_mtu: reply.base_mtu.unwrap_or(req.base_mtu),
            handshake_timeout: req.handshake_timeout,
            dpd: secs(offer.dpd_secs),
            keepalive: secs(offer.keepalive_secs),
        },
        Instant::now(),
    )?;
    Ok(DtlsIo {
        sock,
        state,
        peer,
        chan,
    })
}

/// Sends the datagrams in `out` (lengths `lens`) on the connected `sock`, in as few `sendmsg`
/// calls as GSO allows ([`tunnel_proto::dtls::gso_batch`]).
async fn send_batches(
    sock: &UdpSocket,
    state: &UdpSocketState,
    peer: SocketAddr,
    out: &[u8],
    lens: &[usize],
) -> Result<(), DtlsFailure> {
    let (mut off, mut i) = (0, 0);
    while let Some(rest) = lens.get(i..) {
        let Some(&size) = rest.first() else { break };
        let (n, total) = tunnel_proto::dtls::gso_batch(rest, state.max_gso_segments().max(1));
        let Some(contents) = out.get(off..off + total) else {
            break;
        };
        let t = Transmit {
            destination: peer,
            ecn: None,
            contents,
            segment_size: (n > 1).then_some(size),
            src_ip: None,
        };
        let res = loop {
            sock.writable()
                .await
                .map_err(|e| DtlsFailure::Io(e.to_string()))?;
            match sock.try_io(Interest::WRITABLE, || state.try_send(sock.into(), &t)) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                r => break r,
            }
        };
        if let Err(e) = res {
            // A path without GSO fails the batch once and quinn-udp turns GSO off: send the same
            // datagrams again one by one.
            if n > 1 && state.max_gso_segments() == 1 {
                continue;
            }
            return Err(DtlsFailure::Io(e.to_string()));
        }
        off += total;
        i += n;
    }
    Ok(())
}

/// What woke [`Tunnel::read`].
enum Woke {
    Tls(std::io::Result<usize>),
    Udp(std::io::Result<()>),
    DtlsTimer,
    DtlsRetry,
}

async fn sleep_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// Bytes reserved before each read.
const READ_RESERVE: usize = 16 * 1024;
/// Largest frame payload accepted from the server (any MTU up to a 64 KiB link).
const MAX_PAYLOAD: usize = cstp::MAX_PAYLOAD;

/// One frame from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Its type.
    pub kind: FrameType,
    /// Its payload (for DATA, one IP packet). Shares the read buffer: no copy.
    pub payload: Bytes,
    /// The channel it came over (only DATA comes out of DTLS).
    pub transport: Transport,
}

/// The client end of a tunnel. Dropping it closes the connection without a logout (the server
/// keeps the session for a cookie reconnect).
#[derive(Debug)]
pub struct Tunnel {
    tls: TlsStream<TcpStream>,
    rbuf: BytesMut,
    scratch: Vec<u8>,
    reply: ConnectReply,
    pending: bool,
    dtls: Option<Box<DtlsIo>>,
    dtls_status: DtlsStatus,
    /// IP packets received over DTLS, not yet taken by `next_frame`.
    dtls_packets: VecDeque<Bytes>,
    /// Counters of channels that are gone (a failed one's counts stay counted).
    dtls_past: DtlsStats,
    /// How DTLS was asked for: kept to start it again after a failure.
    dtls_request: Option<DtlsRequest>,
    /// When to start a new handshake, while the channel is down.
    dtls_retry_at: Option<Instant>,
    /// DPD and keepalive intervals set with [`Tunnel::set_dtls_timers`], for new channels too.
    dtls_timers: Option<(Option<Duration>, Option<Duration>)>,
}

impl Tunnel {
    pub(crate) fn new(
        mut tls: TlsStream<TcpStream>,
        rbuf: BytesMut,
        reply: ConnectReply,
        dtls: Option<DtlsRequest>,
    ) -> Self {
        // Whole frames must reach rustls unsplit; the caller bounds what it queues before a flush.
        tls.get_mut().1.set_buffer_limit(None);
        let (dtls_io, dtls_status) = match dtls {
            None => (None, DtlsStatus::NotRequested),
            Some(_) if reply.dtls.is_none() => (None, DtlsStatus::NotOffered),
            Some(req) => match start_dtls(&tls, &reply, req) {
                Ok(io) => (Some(Box::new(io)), DtlsStatus::Connecting),
                Err(f) => (None, DtlsStatus::Failed(f)),
            },
        };
        let dtls_retry_at = match (&dtls_status, dtls) {
            (DtlsStatus::Failed(_), Some(req)) => req.retry_after.map(|d| Instant::now() + d),
            _ => None,
        };
        let dtls_request = dtls.filter(|_| reply.dtls.is_some());
        Self {
            tls,
            rbuf,
            scratch: Vec::with_capacity(2048),
            reply,
            pending: false,
            dtls: dtls_io,
            dtls_status,
            dtls_packets: VecDeque::new(),
            dtls_past: DtlsStats::default(),
            dtls_request,
            dtls_retry_at,
            dtls_timers: None,
        }
    }

    /// Where the DTLS channel stands.
    #[must_use]
    pub fn dtls_status(&self) -> &DtlsStatus {
        &self.dtls_status
    }

    /// The DTLS counters since the tunnel came up.
    #[must_use]
    pub fn dtls_stats(&self) -> DtlsStats {
        let cur = self
            .dtls
            .as_ref()
            .map(|d| d.chan.stats())
            .unwrap_or_default();
        let p = self.dtls_past;
        DtlsStats {
            packets_sent: p.packets_sent + cur.packets_sent,
            packets_received: p.packets_received + cur.packets_received,
            keepalives: p.keepalives + cur.keepalives,
            dpd_sent: p.dpd_sent + cur.dpd_sent,
            dpd_answered: p.dpd_answered + cur.dpd_answered,
            restarts: p.restarts,
        }
    }

    /// Overrides the DTLS keepalive and DPD intervals the server pushed (`None` or zero: off),
    /// for this channel and any started after a failure.
    pub fn set_dtls_timers(&mut self, dpd: Option<Duration>, keepalive: Option<Duration>) {
        self.dtls_timers = Some((dpd, keepalive));
        if let Some(d) = self.dtls.as_mut() {
            d.chan.set_timers(dpd, keepalive);
        }
    }

    /// Drives the tunnel until the DTLS handshake has an outcome (up or failed; at most its
    /// handshake timeout). Frames arriving meanwhile stay buffered for [`Self::next_frame`].
    pub async fn wait_dtls(&mut self) -> Result<&DtlsStatus, ClientError> {
        while self.dtls_status == DtlsStatus::Connecting {
            // The ClientHello (and anything else queued) goes out before we wait for answers.
            self.flush().await?;
            self.read().await?;
        }
        Ok(&self.dtls_status)
    }

    fn dtls_change(&mut self, change: Option<ChannelChange>) {
        match change {
            None => {}
            Some(ChannelChange::Up) => self.dtls_status = DtlsStatus::Up,
            Some(ChannelChange::Failed(f)) => self.dtls_fail(f),
        }
    }

    /// Drops the DTLS channel: from now on everything goes over CSTP.
    fn dtls_fail(&mut self, f: DtlsFailure) {
        if let Some(d) = self.dtls.take() {
            let s = d.chan.stats();
            let p = &mut self.dtls_past;
            p.packets_sent += s.packets_sent;
            p.packets_received += s.packets_received;
            p.keepalives += s.keepalives;
            p.dpd_sent += s.dpd_sent;
            p.dpd_answered += s.dpd_answered;
        }
        self.dtls_status = DtlsStatus::Failed(f);
        self.dtls_retry_at = self
            .dtls_request
            .and_then(|r| r.retry_after)
            .map(|d| Instant::now() + d);
    }

    /// Starts a new DTLS handshake (new UDP socket, the same PSK and App-ID) after a failure.
    fn dtls_restart(&mut self) {
        self.dtls_retry_at = None;
        let Some(req) = self.dtls_request else { return };
        self.dtls_past.restarts += 1;
        match start_dtls(&self.tls, &self.reply, req) {
            Ok(mut io) => {
                if let Some((dpd, keepalive)) = self.dtls_timers {
                    io.chan.set_timers(dpd, keepalive);
                }
                self.dtls = Some(Box::new(io));
                self.dtls_status = DtlsStatus::Connecting;
            }
            Err(f) => self.dtls_fail(f),
        }
    }

    /// Reads every datagram waiting on the UDP socket into the channel.
    fn dtls_receive(&mut self) {
        let Some(d) = self.dtls.as_mut() else { return };
        let now = Instant::now();
        let mut change = None;
        RECV_BUFS.with_borrow_mut(|RecvBufs { storage, meta }| {
            for _ in 0..UDP_RECV_CALLS {
                let res = {
                    let mut chunks = storage.chunks_mut(RECV_SLOT);
                    let mut bufs: [IoSliceMut<'_>; quinn_udp::BATCH_SIZE] =
                        std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
                    d.sock.try_io(Interest::READABLE, || {
                        d.state.recv((&d.sock).into(), &mut bufs, meta)
                    })
                };
                let n = match res {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                    Err(e) => {
                        change = Some(ChannelChange::Failed(DtlsFailure::Io(e.to_string())));
                        return;
                    }
                };
                for (m, slot) in meta.iter().zip(storage.chunks_mut(RECV_SLOT)).take(n) {
                    let Some(data) = slot.get_mut(..m.len) else {
                        continue;
                    };
                    for dgram in data.chunks_mut(m.stride.max(1)) {
                        let next = d.chan.on_datagram(dgram, now, &mut self.dtls_packets);
                        change = batch_change(change.take(), next);
                        if matches!(change, Some(ChannelChange::Failed(_))) {
                            return;
                        }
                    }
                }
            }
        });
        self.dtls_change(change);
    }

    /// Sends the datagrams the DTLS channel has produced.
    async fn dtls_send(&mut self) {
        let Some(d) = self.dtls.as_mut() else { return };
        if !d.chan.has_datagrams() {
            return;
        }
        let (out, lens) = d.chan.datagrams();
        let failed = send_batches(&d.sock, &d.state, d.peer, out, lens)
            .await
            .err();
        d.chan.sent_all();
        if let Some(f) = failed {
            self.dtls_fail(f);
        }
    }

    /// What the server pushed in its CONNECT answer (address, MTU, timers).
    #[must_use]
    pub fn reply(&self) -> &ConnectReply {
        &self.reply
    }

    /// The IPv4 address the server assigned (the source of every packet we send).
    #[must_use]
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        self.reply.ipv4
    }

    /// Queues one frame as its own TLS record; [`Self::flush`] sends what is queued.
    pub fn queue(&mut self, kind: FrameType, payload: &[u8]) -> Result<(), ClientError> {
        self.scratch.clear();
        cstp::encode(kind, payload, &mut self.scratch)?;
        self.tls.get_mut().1.writer().write_all(&self.scratch)?;
        self.pending = true;
        Ok(())
    }

    /// Queues one IP packet: as a DTLS record while DTLS is up, else as a CSTP DATA frame.
    pub fn queue_data(&mut self, packet: &[u8]) -> Result<(), ClientError> {
        if let Some(d) = self.dtls.as_mut().filter(|d| d.chan.is_up()) {
            match d.chan.send_packet(packet, Instant::now()) {
                Ok(()) => return Ok(()),
                Err(f) => self.dtls_fail(f),
            }
        }
        self.queue(FrameType::Data, packet)
    }

    /// True if frames or datagrams are queued but not sent (e.g. an automatic DPD answer).
    #[must_use]
    pub fn has_pending(&self) -> bool {
        self.pending || self.dtls.as_ref().is_some_and(|d| d.chan.has_datagrams())
    }

    /// Sends everything queued.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        self.dtls_send().await;
        if self.pending {
            self.tls.flush().await?;
            self.pending = false;
        }
        Ok(())
    }

    /// Queues and sends one IP packet.
    pub async fn send_data(&mut self, packet: &[u8]) -> Result<(), ClientError> {
        self.queue_data(packet)?;
        self.flush().await
    }

    /// The next complete frame already read, if any. DPD requests are answered (queued; flush to
    /// send); DISCONNECT and TERMINATE end the tunnel with an error.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, ClientError> {
        if let Some(payload) = self.dtls_packets.pop_front() {
            return Ok(Some(Frame {
                kind: FrameType::Data,
                payload,
                transport: Transport::Dtls,
            }));
        }
        let Some(header) = cstp::parse_header(&self.rbuf, MAX_PAYLOAD)? else {
            return Ok(None);
        };
        if self.rbuf.len() < header.frame_len() {
            return Ok(None);
        }
        self.rbuf.advance(cstp::HEADER_LEN);
        let payload = self.rbuf.split_to(header.payload_len).freeze();
        match header.kind {
            FrameType::DpdRequest => self.queue(FrameType::DpdResponse, &payload)?,
            FrameType::Disconnect | FrameType::Terminate => {
                let reason = cstp::disconnect_reason(&payload).map(str::to_owned);
                return Err(ClientError::Disconnected(reason));
            }
            _ => {}
        }
        Ok(Some(Frame {
            kind: header.kind,
            payload,
            transport: Transport::Cstp,
        }))
    }

    /// Reads more from the server: TLS bytes, or DTLS datagrams, or runs a due DTLS timer
    /// (cancel-safe: use it in `select!`; what a timer or datagram produced is sent before it
    /// returns). A closed TLS connection is [`ClientError::Closed`]; DTLS trouble only changes
    /// [`Self::dtls_status`].
    pub async fn read(&mut self) -> Result<(), ClientError> {
        if self.rbuf.capacity() - self.rbuf.len() < 4096 {
            self.rbuf.reserve(READ_RESERVE);
        }
        // Datagrams still queued (the ClientHello of a new tunnel) go before we sleep.
        self.dtls_send().await;
        let woke = match self.dtls.as_ref() {
            None => match self.dtls_retry_at {
                None => Woke::Tls(self.tls.read_buf(&mut self.rbuf).await),
                Some(at) => tokio::select! {
                    r = self.tls.read_buf(&mut self.rbuf) => Woke::Tls(r),
                    () = tokio::time::sleep_until(at.into()) => Woke::DtlsRetry,
                },
            },
            Some(d) => {
                let timer = d.chan.poll_timeout(Instant::now());
                tokio::select! {
                    r = self.tls.read_buf(&mut self.rbuf) => Woke::Tls(r),
                    r = d.sock.readable() => Woke::Udp(r),
                    () = sleep_opt(timer) => Woke::DtlsTimer,
                }
            }
        };
        match woke {
            Woke::Tls(r) => {
                if r? == 0 {
                    return Err(ClientError::Closed { stage: "tunnel" });
                }
            }
            Woke::Udp(Ok(())) => self.dtls_receive(),
            Woke::Udp(Err(e)) => self.dtls_fail(DtlsFailure::Io(e.to_string())),
            Woke::DtlsTimer => {
                let change = self
                    .dtls
                    .as_mut()
                    .and_then(|d| d.chan.handle_timeout(Instant::now()));
                self.dtls_change(change);
            }
            Woke::DtlsRetry => self.dtls_restart(),
        }
        self.dtls_send().await;
        Ok(())
    }

    /// The next frame, reading as needed (and sending any automatic DPD answer first).
    pub async fn recv(&mut self) -> Result<Frame, ClientError> {
        loop {
            if let Some(f) = self.next_frame()? {
                return Ok(f);
            }
            if self.pending {
                self.flush().await?;
            }
            self.read().await?;
        }
    }

    /// Logs out: DISCONNECT with the logout code, then waits (at most `wait`) for the server to
    /// close the connection, which it does once the session is ended and its address is free.
    /// Returns whether the server closed within `wait`.
    pub async fn logout(mut self, wait: std::time::Duration) -> Result<bool, ClientError> {
        // No new DTLS handshake while the session ends.
        self.dtls_request = None;
        self.dtls_retry_at = None;
        if let Some(d) = self.dtls.as_mut() {
            d.chan.close();
        }
        self.dtls_send().await;
        let mut payload = Vec::with_capacity(16);
        payload.push(cstp::LOGOUT_CODE);
        payload.extend_from_slice(b"User logged out");
        self.queue(FrameType::Disconnect, &payload)?;
        self.flush().await?;
        let closed = tokio::time::timeout(wait, async {
            loop {
                self.rbuf.clear();
                match self.read().await {
                    Ok(()) => {}
                    Err(_) => break,
                }
            }
        })
        .await
        .is_ok();
        let _ = tokio::time::timeout(wait, self.tls.shutdown()).await;
        Ok(closed)
    }

    /// Drops the connection abruptly (TCP reset, no logout): what a device losing its network
    /// looks like to the server. The session stays for a cookie reconnect.
    pub fn abort(self) {
        let _ = self.tls.get_ref().0.set_zero_linger();
    }
}

/// What a batch of datagrams did to the DTLS channel so far (`prev`) and then one more datagram
/// (`next`): the newest change, and an earlier one when the newest datagram changed nothing. The
/// datagram that completes the handshake is often followed by more in the same batch (a server
/// repeating its last flight, a first DPD); taking only the last datagram's answer lost the `Up`
/// and left the session waiting for DTLS for ever.
fn batch_change(prev: Option<ChannelChange>, next: Option<ChannelChange>) -> Option<ChannelChange> {
    next.or(prev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_keeps_the_handshake_completing_datagrams_up_when_more_follow() {
        let up = Some(ChannelChange::Up);
        // Up, then a repeated flight or a DPD that changes nothing: still Up.
        assert_eq!(batch_change(batch_change(None, up.clone()), None), up);
        // A failure after it wins.
        let failed = Some(ChannelChange::Failed(DtlsFailure::Closed("x".into())));
        assert_eq!(batch_change(up.clone(), failed.clone()), failed);
        assert_eq!(batch_change(None, None), None);
    }
}
