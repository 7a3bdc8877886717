//! The DTLS (UDP) data channel (protocol doc §7): a listening UDP socket on `server.listen`, a
//! demultiplexer task that hands each of its datagrams to its session, the per-session DTLS 1.2
//! PSK endpoint that the session's tunnel task owns and drives, and (by default) one UDP socket per
//! established channel, connected to the client.
//!
//! ```text
//!  listening socket ─recvmmsg/GRO─▶ demux task ──bounded queue per session──▶ tunnel task: DtlsLink
//!      ▲                           (peer -> session;                          (OpenSSL, sans-IO)
//!      └──── sendmsg/GSO ───────── ClientHello App-ID -> session)                  │    ▲
//!                                                                                  ▼    │
//!  session's own socket (bound to the listen port, connected to the client) ◀─sendmsg/GSO, recvmmsg─
//! ```
//!
//! * **Own sockets** (`dtls.socket_per_session`, as ocserv does). When a handshake completes, the
//!   session opens a UDP socket with `SO_REUSEADDR` on the listening address and port and connects
//!   it to the client. Linux prefers a connected socket to the listening one for that client's
//!   datagrams, so from then on they reach the session's task directly: no demux task, no queue,
//!   no wake-up of another task per batch. Datagrams already queued on the listening socket still
//!   come through the demux, so nothing is lost at the switch. If the socket can't be opened (say,
//!   no file left under the open-files limit) the channel keeps using the listening socket.
//! * **Matching.** A datagram from a bound peer address goes to that peer's session. Anything else
//!   must be a well-formed ClientHello whose `session_id` is a live App-ID (registered with its PSK
//!   before the CONNECT reply is written); then the peer is bound to that session. Everything else
//!   is dropped and counted by reason, before any allocation or handshake state.
//! * **No locks on the packet path.** The peer map belongs to the demux task alone; the App-ID
//!   registry (a sharded map) is read only for ClientHellos. Each session's OpenSSL state belongs
//!   to its tunnel task; the shared socket is written with `sendmsg`, which is atomic per call.
//! * **Replacing DTLS state.** A ClientHello naming the session starts a *pending* handshake; the
//!   established channel keeps working until the new handshake completes, and only then is
//!   replaced. Someone who sees an App-ID on the wire (it is sent in clear) but lacks the PSK can
//!   make a handshake fail, never take the channel away.
//! * **OpenSSL, sans-IO.** The `Ssl` reads from and writes to `Shim`: a read hands OpenSSL
//!   exactly one datagram or "would block", each write is one outgoing datagram. DTLS 1.2 only,
//!   PSK AES-GCM and ChaCha20-Poly1305, no tickets, no session cache, no renegotiation, an explicit
//!   MTU, and the handshake retransmit timer driven from the session's timer (§14).

use std::collections::HashMap;
use std::io::{self, IoSliceMut, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use dashmap::DashMap;
use foreign_types::ForeignTypeRef;
use openssl::error::ErrorStack;
use openssl::ex_data::Index;
use openssl::ssl::{
    ErrorCode, Ssl, SslContext, SslContextBuilder, SslMethod, SslOptions, SslRef,
    SslSessionCacheMode, SslStream, SslVersion,
};
use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tunnel_proto::cstp;
use tunnel_proto::dtls::{self as wire, HelloError, Payload, APP_ID_LEN};
use tunnel_proto::dtls_record::{last_epoch_seq, Channel, Opened, Refused, Role};
use tunnel_proto::mtu;
use tunnel_proto::timers::DtlsDpd;

use crate::metrics::{
    DtlsDrop, Metrics, DTLS_DPD_ANSWERED, DTLS_DPD_SENT, DTLS_OVERSIZE, DTLS_OWN_SOCKET,
    DTLS_OWN_SOCKET_FAILED,
};
use crate::udp_own::OwnSocket;

/// The TLS exporter label openconnect derives the DTLS PSK with (§7.2).
pub const PSK_LABEL: &[u8] = b"EXPORTER-openconnect-psk";
/// Length of the PSK.
pub const PSK_LEN: usize = 32;
/// The PSK cipher suites offered, best first (the server's order wins); openconnect offers all
/// three (§7.3, §14). AES-128-GCM first, as in the TLS default order: with AES-NI it seals a
/// 1,400-byte record about a tenth faster than AES-256-GCM.
pub const CIPHERS: &str = "PSK-AES128-GCM-SHA256:PSK-AES256-GCM-SHA384:PSK-CHACHA20-POLY1305";
/// Datagrams queued from the demux to one session before further ones are dropped.
const SESSION_QUEUE: usize = 1024;
/// A handshake that has not completed this long after its ClientHello fails.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes per receive slot: with GRO one slot can hold up to 64 KiB of coalesced datagrams.
const RECV_SLOT: usize = 65535;
/// Arena chunk that the demux copies forwarded datagrams into.
const ARENA_CHUNK: usize = 256 * 1024;
/// Arena chunk a session copies its decrypted upstream packets into (small: there is one per
/// session).
const SESSION_ARENA_CHUNK: usize = 16 * 1024;
/// Largest DTLS record plaintext (2^14), plus room to spare: a read must take a whole record.
const MAX_PLAINTEXT: usize = 16 * 1024 + 1024;
/// How often the demux forgets peers of sessions that ended while their datagrams were queued.
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);
/// Socket buffer sizes asked for (the kernel caps them at `net.core.{r,w}mem_max`).
pub(crate) const SOCKET_BUFFER: usize = 4 << 20;
/// Buffer sizes asked for on a session's own socket. The kernel's default receive buffer (about
/// 208 KiB, some 50 datagrams by their kernel size) overflowed at one client's full speed
/// whenever the session's task waited a moment for a core; a limit costs nothing until used.
const OWN_SOCKET_BUFFER: usize = 1 << 20;
/// `recvmmsg` calls per wake-up of the demux task before it yields (and datagrams a session
/// takes from its queue per wake-up).
pub(crate) const RECV_BATCH: usize = 64;

/// A datagram on its way from the demux task to its session.
#[derive(Debug)]
pub(crate) struct Inbound {
    peer: SocketAddr,
    /// The local address it was sent to (IP_PKTINFO), so replies leave from the same address: the
    /// client's UDP socket is connected (§7.5).
    local: Option<IpAddr>,
    data: Bytes,
}

/// Why a session's [`DtlsLink::recv`] returned: hand it to [`DtlsLink::receive`].
#[derive(Debug)]
pub(crate) enum Wake {
    /// A datagram from the demux task.
    Queued(Inbound),
    /// The session's own socket has datagrams.
    Socket,
    /// The demux queue is closed (the DTLS server stopped).
    Closed,
}

/// A live App-ID: which session it names and where its datagrams go.
#[derive(Debug, Clone)]
struct Registration {
    session_id: u64,
    tx: mpsc::Sender<Inbound>,
}

/// From a session to the demux task.
#[derive(Debug)]
pub(crate) enum Ctl {
    /// The session no longer talks to `peer` (failed or replaced handshake, session over).
    Forget {
        /// The session.
        session_id: u64,
        /// The peer address to unbind.
        peer: SocketAddr,
    },
    /// A datagram from another peer that reached a session's own socket (in the moment between
    /// its `bind` and `connect`, the kernel may pick it for any peer): the demux sorts it as if
    /// the listening socket had received it.
    Redispatch(Inbound),
}

/// The shared half of the DTLS channel: the socket, the OpenSSL context and the App-ID registry.
pub struct DtlsServer {
    socket: UdpSocket,
    state: UdpSocketState,
    ctx: SslContext,
    psk_index: Index<Ssl, [u8; PSK_LEN]>,
    registry: DashMap<[u8; APP_ID_LEN], Registration>,
    ctl: mpsc::UnboundedSender<Ctl>,
    metrics: Metrics,
    /// The listening socket's address (the port clients are told).
    local: SocketAddr,
}

impl std::fmt::Debug for DtlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DtlsServer")
            .field("local", &self.local)
            .field("app_ids", &self.registry.len())
            .finish_non_exhaustive()
    }
}

/// The OpenSSL server context: DTLS 1.2 only, the PSK suites, the key read from each `Ssl`.
fn context(psk_index: Index<Ssl, [u8; PSK_LEN]>) -> Result<SslContext, ErrorStack> {
    let mut b = SslContextBuilder::new(SslMethod::dtls())?;
    b.set_min_proto_version(Some(SslVersion::DTLS1_2))?;
    b.set_max_proto_version(Some(SslVersion::DTLS1_2))?;
    b.set_cipher_list(CIPHERS)?;
    b.set_options(
        SslOptions::NO_TICKET
            | SslOptions::NO_QUERY_MTU
            | SslOptions::NO_RENEGOTIATION
            | SslOptions::CIPHER_SERVER_PREFERENCE,
    );
    b.set_session_cache_mode(SslSessionCacheMode::OFF);
    // The client's identity is always "psk" (§7.2): the key comes from the session this Ssl
    // belongs to, stored on it as ex-data.
    b.set_psk_server_callback(move |ssl, _identity, out| {
        let key = ssl.ex_data(psk_index).ok_or_else(ErrorStack::get)?;
        let dst = out.get_mut(..PSK_LEN).ok_or_else(ErrorStack::get)?;
        dst.copy_from_slice(key);
        Ok(PSK_LEN)
    });
    Ok(b.build())
}

impl DtlsServer {
    /// Binds the UDP socket on `addr` and prepares the OpenSSL context. Returns the server and the
    /// control queue that [`run_demux`] must consume.
    pub(crate) async fn bind(
        addr: SocketAddr,
        metrics: Metrics,
    ) -> io::Result<(Arc<Self>, mpsc::UnboundedReceiver<Ctl>)> {
        // SO_REUSEADDR: sessions' own sockets bind the same address and port (see the module docs).
        let std_socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        std_socket.set_reuse_address(true)?;
        std_socket.set_nonblocking(true)?;
        std_socket.bind(&addr.into())?;
        let socket = UdpSocket::from_std(std_socket.into())?;
        let state = UdpSocketState::new((&socket).into())?;
        enlarge_buffers(&socket, &state, SOCKET_BUFFER);
        let psk_index = Ssl::new_ex_index::<[u8; PSK_LEN]>().map_err(io::Error::other)?;
        let ctx = context(psk_index).map_err(io::Error::other)?;
        let local = socket.local_addr()?;
        let (ctl, ctl_rx) = mpsc::unbounded_channel();
        tracing::info!(
            listen = %addr,
            gro_segments = state.gro_segments(),
            gso_segments = state.max_gso_segments(),
            "DTLS listening"
        );
        Ok((
            Arc::new(Self {
                socket,
                state,
                ctx,
                psk_index,
                registry: DashMap::new(),
                ctl,
                metrics,
                local,
            }),
            ctl_rx,
        ))
    }

    /// The UDP port clients are told (`X-DTLS-Port`).
    pub fn port(&self) -> u16 {
        self.local.port()
    }

    /// Registers a fresh random App-ID for session `session_id` with its `psk`, before the CONNECT
    /// reply that announces it is written. The returned link unregisters it when dropped.
    pub(crate) fn register(
        self: &Arc<Self>,
        session_id: u64,
        psk: [u8; PSK_LEN],
        params: LinkParams,
    ) -> DtlsLink {
        let (tx, rx) = mpsc::channel(SESSION_QUEUE);
        let mut app_id = [0u8; APP_ID_LEN];
        loop {
            rand::Rng::fill(&mut rand::thread_rng(), &mut app_id);
            if let dashmap::Entry::Vacant(v) = self.registry.entry(app_id) {
                v.insert(Registration {
                    session_id,
                    tx: tx.clone(),
                });
                break;
            }
        }
        drop(tx);
        DtlsLink {
            server: Arc::clone(self),
            session_id,
            app_id,
            psk,
            params,
            rx,
            established: None,
            pending: None,
            last_rx: Instant::now(),
            active: false,
            dpd: DtlsDpd::new(params.dpd, params.switch_after, Instant::now()),
            plain: Vec::new(),
            reply: Vec::new(),
            arena: BytesMut::new(),
            up_packets: 0,
            up_bytes: 0,
        }
    }

    fn lookup(&self, sid: &[u8]) -> Option<Registration> {
        let key: &[u8; APP_ID_LEN] = sid.try_into().ok()?;
        self.registry.get(key).map(|r| r.value().clone())
    }

    /// `addr` as the listening socket reports its peers: IPv4-mapped when it is an IPv6 socket.
    fn as_listened(&self, addr: SocketAddr) -> SocketAddr {
        match addr.ip() {
            IpAddr::V4(v4) if self.local.is_ipv6() => {
                SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), addr.port())
            }
            _ => addr,
        }
    }

    /// Opens a session's own socket for `peer`: bound to the listening port on the address the
    /// peer sends to (`local`, from IP_PKTINFO, when listening on a wildcard address), connected
    /// to the peer.
    fn own_socket(&self, peer: SocketAddr, local: Option<IpAddr>) -> io::Result<OwnSocket> {
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let ip = if self.local.ip().is_unspecified() {
            local.ok_or_else(|| io::Error::other("no destination address (IP_PKTINFO)"))?
        } else {
            self.local.ip()
        }
        .to_canonical();
        if ip.is_ipv4() != peer.is_ipv4() {
            return Err(io::Error::other("address families differ"));
        }
        let s = Socket::new(Domain::for_address(peer), Type::DGRAM, Some(Protocol::UDP))?;
        if crate::workers::in_headroom(std::os::fd::AsRawFd::as_raw_fd(&s)) {
            return Err(io::Error::other(
                "the file table is full but for its headroom (open-files limit)",
            ));
        }
        s.set_reuse_address(true)?;
        s.set_nonblocking(true)?;
        s.bind(&SocketAddr::new(ip, self.local.port()).into())?;
        s.connect(&peer.into())?;
        let own = OwnSocket::new(s.into(), peer)?;
        enlarge_buffers(own.socket(), own.state(), OWN_SOCKET_BUFFER);
        Ok(own)
    }
}

/// Asks for `size`-byte receive and send buffers on `socket`; the kernel caps them at
/// `net.core.{r,w}mem_max`, and a refusal only costs speed, so it is logged at debug level.
fn enlarge_buffers<S: std::os::fd::AsFd>(socket: &S, state: &UdpSocketState, size: usize) {
    for r in [
        state.set_recv_buffer_size(UdpSockRef::from(socket), size),
        state.set_send_buffer_size(UdpSockRef::from(socket), size),
    ] {
        if let Err(e) = r {
            tracing::debug!(error = %e, "cannot enlarge the UDP socket buffers");
        }
    }
}

/// Where a link's datagrams go out.
#[derive(Debug, Clone, Copy)]
enum Tx<'a> {
    /// The listening socket, shared by every link without an own socket.
    Listening(&'a UdpSocket, &'a UdpSocketState),
    /// The session's own socket (registered for reading only).
    Own(&'a OwnSocket),
}

impl Tx<'_> {
    fn state(&self) -> &UdpSocketState {
        match self {
            Self::Listening(_, state) => state,
            Self::Own(own) => own.state(),
        }
    }

    /// Sends `t`, waiting while the socket buffer is full.
    async fn send(&self, t: &Transmit<'_>) -> io::Result<()> {
        match *self {
            Self::Listening(socket, state) => loop {
                socket.writable().await?;
                match socket.try_io(Interest::WRITABLE, || state.try_send(socket.into(), t)) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    other => return other,
                }
            },
            Self::Own(own) => own.send(t).await.map(drop),
        }
    }
}

/// Sends the datagrams in `out` (their lengths in `lens`) to `peer` through `tx`, as few `sendmsg`
/// calls as GSO allows: a run of equal-sized datagrams (the last may be shorter) goes in one call.
async fn send_batch(
    tx: Tx<'_>,
    peer: SocketAddr,
    local: Option<IpAddr>,
    out: &[u8],
    lens: &[usize],
) {
    let state = tx.state();
    let mut off = 0;
    let mut i = 0;
    while let Some(rest) = lens.get(i..) {
        let Some(&size) = rest.first() else {
            return;
        };
        let (n, total) = wire::gso_batch(rest, state.max_gso_segments().max(1));
        let Some(contents) = out.get(off..off + total) else {
            return;
        };
        let t = Transmit {
            destination: peer,
            ecn: None,
            contents,
            segment_size: (n > 1).then_some(size),
            src_ip: local,
        };
        let sent = match tx.send(&t).await {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "UDP send failed");
                false
            }
        };
        // A device without GSO fails the batch once and quinn-udp turns GSO off: send the same
        // datagrams again one by one instead of losing them.
        if !sent && n > 1 && state.max_gso_segments() == 1 {
            continue;
        }
        off += total;
        i += n;
    }
}

/// Copies datagrams into shared chunks: one allocation per chunk, not per datagram.
#[derive(Debug, Default)]
struct Arena {
    buf: BytesMut,
}

impl Arena {
    fn copy(&mut self, d: &[u8]) -> Bytes {
        copy_into(&mut self.buf, d, ARENA_CHUNK)
    }
}

/// `recvmmsg` calls a session makes on its own socket per wake-up before it yields.
const OWN_RECV_CALLS: usize = 4;

/// Receive buffers for sessions' own sockets, one set per thread: a session's task uses them only
/// while it handles a wake-up, so the sessions of one thread share them.
#[derive(Debug)]
struct RecvScratch {
    storage: Vec<u8>,
    meta: [RecvMeta; quinn_udp::BATCH_SIZE],
    arena: Arena,
}

thread_local! {
    static RECV_SCRATCH: std::cell::RefCell<RecvScratch> = std::cell::RefCell::new(RecvScratch {
        storage: Vec::new(),
        meta: [RecvMeta::default(); quinn_udp::BATCH_SIZE],
        arena: Arena::default(),
    });
}

/// Appends `d` to the arena `buf` (a new `chunk`-sized allocation when it is full) and splits it
/// off as its own `Bytes`.
fn copy_into(buf: &mut BytesMut, d: &[u8], chunk: usize) -> Bytes {
    if buf.capacity() < d.len() {
        *buf = BytesMut::with_capacity(chunk.max(d.len()));
    }
    buf.extend_from_slice(d);
    buf.split().freeze()
}

/// The peer map: which session each bound UDP peer belongs to. Owned by the demux task.
#[derive(Debug, Default)]
pub(crate) struct Demux {
    peers: HashMap<SocketAddr, Registration>,
}

impl Demux {
    /// Hands one datagram from `peer` to its session, or says why it was dropped. Only a
    /// datagram that reaches a session is copied.
    fn dispatch(
        &mut self,
        server: &DtlsServer,
        peer: SocketAddr,
        local: Option<IpAddr>,
        d: &[u8],
        arena: &mut Arena,
    ) -> Result<(), DtlsDrop> {
        let hello = wire::client_hello_session_id(d);
        if let Some(bound) = self.peers.get(&peer) {
            // A bound peer that sends a ClientHello for another live session moved to it (a new
            // CONNECT reusing the same UDP port).
            let target = match hello {
                Ok(sid) => server
                    .lookup(sid)
                    .filter(|r| r.session_id != bound.session_id),
                Err(_) => None,
            };
            match target {
                Some(reg) => {
                    self.peers.remove(&peer);
                    return self.bind(peer, local, reg, d, arena);
                }
                None => match bound.tx.try_send(Inbound {
                    peer,
                    local,
                    data: arena.copy(d),
                }) {
                    Ok(()) => return Ok(()),
                    Err(mpsc::error::TrySendError::Full(_)) => return Err(DtlsDrop::QueueFull),
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        // The session is gone; the datagram may still be a new ClientHello.
                        self.peers.remove(&peer);
                    }
                },
            }
        }
        let sid = match hello {
            Ok(sid) => sid,
            Err(HelloError::NotHandshake | HelloError::NotClientHello) => {
                return Err(DtlsDrop::UnknownPeer)
            }
            Err(_) => return Err(DtlsDrop::MalformedHello),
        };
        let reg = server.lookup(sid).ok_or(DtlsDrop::UnknownAppId)?;
        self.bind(peer, local, reg, d, arena)
    }

    fn bind(
        &mut self,
        peer: SocketAddr,
        local: Option<IpAddr>,
        reg: Registration,
        d: &[u8],
        arena: &mut Arena,
    ) -> Result<(), DtlsDrop> {
        match reg.tx.try_send(Inbound {
            peer,
            local,
            data: arena.copy(d),
        }) {
            Ok(()) => {
                self.peers.insert(peer, reg);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => Err(DtlsDrop::QueueFull),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(DtlsDrop::UnknownAppId),
        }
    }

    /// Forgets peers whose session has ended (normally they are forgotten when the session ends or
    /// on their next datagram; this catches peers that went quiet).
    fn sweep(&mut self) {
        self.peers.retain(|_, r| !r.tx.is_closed());
    }

    /// Applies one message from a session; a redispatched datagram that reaches no session says
    /// why.
    fn apply(&mut self, server: &DtlsServer, ctl: Ctl, arena: &mut Arena) -> Result<(), DtlsDrop> {
        match ctl {
            Ctl::Redispatch(inb) => {
                return self.dispatch(server, inb.peer, inb.local, &inb.data, arena);
            }
            Ctl::Forget { session_id, peer } => {
                if self
                    .peers
                    .get(&peer)
                    .is_some_and(|r| r.session_id == session_id)
                {
                    self.peers.remove(&peer);
                }
            }
        }
        Ok(())
    }

    /// Bound peers (for tests and debugging).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.peers.len()
    }
}

/// Receives datagrams in batches (recvmmsg, GRO) and hands each to its session, until the socket
/// fails or the task is cancelled.
pub(crate) async fn run_demux(server: Arc<DtlsServer>, mut ctl: mpsc::UnboundedReceiver<Ctl>) {
    let mut demux = Demux::default();
    let mut arena = Arena::default();
    let mut storage = vec![0u8; RECV_SLOT * quinn_udp::BATCH_SIZE];
    let mut meta = [RecvMeta::default(); quinn_udp::BATCH_SIZE];
    let mut drops = [0u64; DtlsDrop::COUNT];
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            c = ctl.recv() => match c {
                Some(c) => {
                    if let Err(reason) = demux.apply(&server, c, &mut arena) {
                        server.metrics.dtls_drop(reason, 1);
                    }
                    continue;
                }
                None => return,
            },
            _ = sweep.tick() => {
                demux.sweep();
                continue;
            }
            r = server.socket.readable() => if let Err(e) = r {
                tracing::error!(error = %e, "DTLS socket failed; DTLS stopped");
                return;
            },
        }
        while let Ok(c) = ctl.try_recv() {
            if let Err(reason) = demux.apply(&server, c, &mut arena) {
                server.metrics.dtls_drop(reason, 1);
            }
        }
        for _ in 0..RECV_BATCH {
            let res = {
                let mut chunks = storage.chunks_mut(RECV_SLOT);
                let mut bufs: [IoSliceMut<'_>; quinn_udp::BATCH_SIZE] =
                    std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
                server.socket.try_io(Interest::READABLE, || {
                    server
                        .state
                        .recv((&server.socket).into(), &mut bufs, &mut meta)
                })
            };
            let n = match res {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    // ICMP errors from earlier sends surface here; the socket is fine.
                    tracing::debug!(error = %e, "UDP receive error");
                    continue;
                }
            };
            for (m, slot) in meta.iter().zip(storage.chunks(RECV_SLOT)).take(n) {
                let Some(data) = slot.get(..m.len) else {
                    continue;
                };
                for d in data.chunks(m.stride.max(1)) {
                    if let Err(reason) = demux.dispatch(&server, m.addr, m.dst_ip, d, &mut arena) {
                        if let Some(c) = drops.get_mut(reason.index()) {
                            *c += 1;
                        }
                    }
                }
            }
        }
        for (reason, n) in DtlsDrop::ALL.iter().zip(drops.iter_mut()) {
            server.metrics.dtls_drop(*reason, std::mem::take(n));
        }
    }
}

/// OpenSSL's view of the network for one DTLS endpoint: exactly one datagram per read, one
/// datagram per write.
#[derive(Debug, Default)]
struct Shim {
    inbox: Option<Bytes>,
    out: Vec<u8>,
    lens: Vec<usize>,
}

impl Read for Shim {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(d) = self.inbox.take() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        let n = d.len().min(buf.len());
        if let (Some(dst), Some(src)) = (buf.get_mut(..n), d.get(..n)) {
            dst.copy_from_slice(src);
        }
        Ok(n)
    }
}

impl Write for Shim {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.extend_from_slice(buf);
        self.lens.push(buf.len());
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The `DTLSv1_get_timeout` / `DTLSv1_handle_timeout` control commands (macros in ssl.h that the
/// openssl crate does not wrap).
const DTLS_CTRL_GET_TIMEOUT: libc::c_int = 73;
const DTLS_CTRL_HANDLE_TIMEOUT: libc::c_int = 74;

/// Time left on the handshake retransmit timer, if it runs.
#[allow(unsafe_code)]
fn retransmit_in(ssl: &SslRef) -> Option<Duration> {
    let mut tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    // SAFETY: `ssl` is a live SSL object borrowed for the call; DTLS_CTRL_GET_TIMEOUT (the
    // DTLSv1_get_timeout macro) writes one `struct timeval` through `parg`, which points to `tv`.
    let r = unsafe {
        openssl_sys::SSL_ctrl(
            ssl.as_ptr(),
            DTLS_CTRL_GET_TIMEOUT,
            0,
            (&mut tv as *mut libc::timeval).cast(),
        )
    };
    (r == 1).then(|| {
        Duration::from_secs(u64::try_from(tv.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(tv.tv_usec).unwrap_or(0))
    })
}

/// Retransmits the last handshake flight if its timer expired (`DTLSv1_handle_timeout`).
#[allow(unsafe_code)]
fn handle_retransmit(ssl: &SslRef) {
    // SAFETY: `ssl` is a live SSL object borrowed for the call; DTLS_CTRL_HANDLE_TIMEOUT takes no
    // argument (NULL parg) and only writes through the SSL's own BIO, our `Shim`.
    unsafe {
        openssl_sys::SSL_ctrl(
            ssl.as_ptr(),
            DTLS_CTRL_HANDLE_TIMEOUT,
            0,
            std::ptr::null_mut(),
        );
    }
}

// `DTLS_get_data_mtu` (OpenSSL 1.1.1+), which the openssl crates do not wrap.
#[allow(unsafe_code)]
extern "C" {
    fn DTLS_get_data_mtu(s: *const openssl_sys::SSL) -> libc::size_t;
}

/// The largest record plaintext that fits one datagram of the MTU set on `ssl`, for its
/// negotiated cipher (`DTLS_get_data_mtu`); `fallback` when OpenSSL cannot say (no cipher yet).
#[allow(unsafe_code)]
fn data_mtu(ssl: &SslRef, fallback: usize) -> usize {
    // SAFETY: `ssl` is a live SSL object borrowed for the call; the function only reads it.
    let n = unsafe { DTLS_get_data_mtu(ssl.as_ptr()) };
    if n == 0 {
        fallback
    } else {
        n
    }
}

/// One DTLS association with one peer address.
struct Endpoint {
    peer: SocketAddr,
    /// Largest record plaintext (type byte + payload) that fits one datagram of the link's MTU
    /// with the negotiated cipher; set when the handshake completes.
    data_mtu: usize,
    /// The gateway address the peer sends to; replies leave from it.
    local: Option<IpAddr>,
    /// The `random` of the ClientHello that started it, to recognise late retransmits.
    hello_random: [u8; 32],
    stream: SslStream<Shim>,
    /// The gateway's own record layer once established with an AES-GCM suite; OpenSSL's
    /// `SSL_read`/`SSL_write` otherwise (see [`tunnel_proto::dtls_record`]).
    records: Option<Channel>,
    /// Its own connected socket, once established (`dtls.socket_per_session`).
    own: Option<OwnSocket>,
}

impl Endpoint {
    /// Queues one application-data record carrying `plain` (type byte and payload) for
    /// [`DtlsLink::flush`]. False when the channel can write no more.
    fn write_record(&mut self, plain: &[u8]) -> bool {
        match &mut self.records {
            Some(ch) => seal_into(ch, self.stream.get_mut(), plain),
            None => self.stream.ssl_write(plain).is_ok(),
        }
    }
}

/// Seals one record with the gateway's own record layer into the datagrams waiting in `shim`.
fn seal_into(ch: &mut Channel, shim: &mut Shim, plain: &[u8]) -> bool {
    ch.seal(plain, &mut shim.out)
        .map(|n| shim.lens.push(n))
        .is_some()
}

/// Where the IP packets of decrypted records go.
struct UpSink<'a> {
    up: &'a mut Vec<Bytes>,
    arena: &'a mut BytesMut,
    packets: &'a mut u64,
    bytes: &'a mut u64,
}

/// [`DtlsLink::reading`].
struct Reading<'a> {
    ep: Option<&'a mut Endpoint>,
    sink: UpSink<'a>,
    plain: &'a mut Vec<u8>,
    reply: &'a mut Vec<u8>,
    server: &'a DtlsServer,
}

/// What reading the established channel found.
#[derive(Debug, Default, Clone, Copy)]
struct ReadOutcome {
    /// At least one record authenticated: the peer is alive.
    valid: bool,
    /// The channel is over (closed by the peer, or it can write no more).
    closed: bool,
}

/// Handles one decrypted application-data record (type byte and payload): an IP packet goes to
/// `sink`, a DPD request is answered through `write`. False when `write` failed.
fn on_plaintext(
    record: &[u8],
    sink: &mut UpSink<'_>,
    reply: &mut Vec<u8>,
    server: &DtlsServer,
    mut write: impl FnMut(&[u8]) -> bool,
) -> bool {
    match wire::decode(record) {
        Ok(Payload::Data(pkt)) => {
            *sink.packets += 1;
            *sink.bytes += pkt.len() as u64;
            sink.up
                .push(copy_into(sink.arena, pkt, SESSION_ARENA_CHUNK));
        }
        Ok(Payload::DpdRequest(rest)) => {
            reply.clear();
            wire::dpd_response(rest, reply);
            return write(reply);
        }
        Ok(Payload::DpdResponse) => {
            // The gateway sends no MTU probes: this answers its DPD request.
            server
                .metrics
                .dtls_events
                .with_label_values(&[DTLS_DPD_ANSWERED])
                .inc();
        }
        Ok(Payload::Keepalive) => {}
        Ok(_) | Err(_) => server.metrics.dtls_drop(DtlsDrop::BadRecord, 1),
    }
    true
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

/// A handshake in progress.
#[derive(Debug)]
struct Pending {
    ep: Endpoint,
    deadline: Instant,
}

/// Per-session settings of a DTLS link.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LinkParams {
    /// Largest datagram (UDP payload) OpenSSL may build during the handshake.
    pub(crate) mtu: u32,
    /// UDP silence after which downstream traffic goes back to CSTP.
    pub(crate) switch_after: Duration,
    /// The DTLS DPD interval announced in `X-DTLS-DPD` (zero: the gateway sends no DTLS DPD).
    pub(crate) dpd: Duration,
    /// Open an own socket for the established channel (`dtls.socket_per_session`).
    pub(crate) own_socket: bool,
}

/// What one inbound datagram did to the link, for the tunnel task's logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkEvent {
    /// A handshake completed: DTLS is (again) established with `peer`.
    Established {
        /// The client's UDP address.
        peer: SocketAddr,
    },
    /// A handshake failed.
    HandshakeFailed,
    /// The established channel was closed or broke.
    Closed,
}

/// One session's DTLS channel, owned by its tunnel task.
pub(crate) struct DtlsLink {
    server: Arc<DtlsServer>,
    session_id: u64,
    app_id: [u8; APP_ID_LEN],
    psk: [u8; PSK_LEN],
    params: LinkParams,
    rx: mpsc::Receiver<Inbound>,
    established: Option<Endpoint>,
    pending: Option<Pending>,
    /// Last valid DTLS record from the established peer.
    last_rx: Instant,
    /// Downstream goes over DTLS.
    active: bool,
    /// When to ask a silent peer for a DTLS DPD response.
    dpd: DtlsDpd,
    plain: Vec<u8>,
    reply: Vec<u8>,
    arena: BytesMut,
    up_packets: u64,
    up_bytes: u64,
}

impl std::fmt::Debug for DtlsLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DtlsLink")
            .field("session_id", &self.session_id)
            .field("established", &self.established)
            .field("pending", &self.pending)
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

fn hello_random(d: &[u8]) -> [u8; 32] {
    let mut r = [0u8; 32];
    if let Some(src) = d.get(27..59) {
        r.copy_from_slice(src);
    }
    r
}

impl DtlsLink {
    /// The App-ID announced in `X-DTLS-App-ID`.
    pub(crate) fn app_id(&self) -> [u8; APP_ID_LEN] {
        self.app_id
    }

    /// The shared server (port, socket).
    pub(crate) fn server(&self) -> &Arc<DtlsServer> {
        &self.server
    }

    /// True while downstream traffic should go over DTLS: established, and UDP heard from within
    /// `switch_after`, and the client has not sent DATA over CSTP since.
    pub(crate) fn is_active(&self) -> bool {
        self.active && self.established.is_some()
    }

    /// The client sent DATA over CSTP: it has lost DTLS, so downstream goes over CSTP until the
    /// next valid DTLS record.
    pub(crate) fn on_cstp_data(&mut self) {
        self.active = false;
    }

    /// Waits until there are datagrams for the link: from the demux, or on its own socket.
    pub(crate) async fn recv(&mut self) -> Wake {
        let Self {
            rx, established, ..
        } = self;
        let queued = |r: Option<Inbound>| r.map_or(Wake::Closed, Wake::Queued);
        match established.as_ref().and_then(|e| e.own.as_ref()) {
            None => queued(rx.recv().await),
            Some(own) => tokio::select! {
                r = rx.recv() => queued(r),
                // An error is the socket's to report: `receive` reads it.
                _ = own.readable() => Wake::Socket,
            },
        }
    }

    /// The next datagram the demux has queued, if any (tests).
    #[cfg(test)]
    fn try_recv(&mut self) -> Option<Inbound> {
        self.rx.try_recv().ok()
    }

    /// Handles what woke [`Self::recv`] and whatever else is ready, up to a batch: the demux's
    /// queue, then the own socket. Decrypted IP packets are appended to `up`. Returns the last
    /// event of the datagrams handled.
    pub(crate) fn receive(
        &mut self,
        wake: Wake,
        now: Instant,
        up: &mut Vec<Bytes>,
    ) -> Option<LinkEvent> {
        let mut event = None;
        let mut next = match wake {
            Wake::Queued(inb) => Some(inb),
            Wake::Socket => self.rx.try_recv().ok(),
            Wake::Closed => return None,
        };
        let mut n = 0;
        while let Some(inb) = next {
            event = self.on_datagram(inb, now, up).or(event);
            n += 1;
            next = if n < RECV_BATCH {
                self.rx.try_recv().ok()
            } else {
                None
            };
        }
        self.receive_own(now, up).or(event)
    }

    /// Reads the own socket until it would block (at most [`OWN_RECV_CALLS`] `recvmmsg` calls).
    fn receive_own(&mut self, now: Instant, up: &mut Vec<Bytes>) -> Option<LinkEvent> {
        let mut event = None;
        RECV_SCRATCH.with_borrow_mut(|scratch| {
            let RecvScratch {
                storage,
                meta,
                arena,
            } = scratch;
            if storage.is_empty() {
                // Zeroed pages from the allocator: only the pages datagrams land in get touched.
                *storage = vec![0; RECV_SLOT * quinn_udp::BATCH_SIZE];
            }
            for _ in 0..OWN_RECV_CALLS {
                let Some((peer, own)) = self
                    .established
                    .as_ref()
                    .and_then(|e| Some((e.peer, e.own.as_ref()?)))
                else {
                    return;
                };
                let own_peer = own.peer();
                let res = {
                    let mut chunks = storage.chunks_mut(RECV_SLOT);
                    let mut bufs: [IoSliceMut<'_>; quinn_udp::BATCH_SIZE] =
                        std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
                    own.recv(&mut bufs, meta)
                };
                let n = match res {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(e) => {
                        // ICMP errors from earlier sends (the client's port closed) surface here.
                        tracing::debug!(session = self.session_id, error = %e, "UDP receive error");
                        continue;
                    }
                };
                for (m, slot) in meta.iter().zip(storage.chunks_mut(RECV_SLOT)).take(n) {
                    let Some(data) = slot.get_mut(..m.len) else {
                        continue;
                    };
                    let ours = m.addr.ip().to_canonical() == own_peer.ip()
                        && m.addr.port() == own_peer.port();
                    for d in data.chunks_mut(m.stride.max(1)) {
                        if ours && self.opens_in_place(d) {
                            // Application data of the channel: opened where it landed.
                            let outcome = self.open_own(d, up);
                            event = self.finish_read(outcome, now).or(event);
                        } else if ours {
                            // The address it was sent to (IP_PKTINFO) goes along: a new handshake
                            // from this peer needs it to open its own socket.
                            let inb = Inbound {
                                peer,
                                local: m.dst_ip,
                                data: arena.copy(d),
                            };
                            event = self.on_datagram(inb, now, up).or(event);
                        } else {
                            let _ = self.server.ctl.send(Ctl::Redispatch(Inbound {
                                peer: self.server.as_listened(m.addr),
                                local: m.dst_ip,
                                data: arena.copy(d),
                            }));
                        }
                    }
                }
            }
        });
        event
    }

    /// True when `d`, from the established peer, is for the gateway's own record layer to open
    /// as it is: application data or an alert, with that layer in charge. Anything else (a new
    /// ClientHello, the handshake again) takes the general path of [`Self::on_datagram`].
    fn opens_in_place(&self, d: &[u8]) -> bool {
        self.established
            .as_ref()
            .is_some_and(|e| e.records.is_some())
            && matches!(
                d.first(),
                Some(&wire::CONTENT_APPLICATION_DATA) | Some(&wire::CONTENT_ALERT)
            )
    }

    fn forget(&self, peer: SocketAddr) {
        let _ = self.server.ctl.send(Ctl::Forget {
            session_id: self.session_id,
            peer,
        });
    }

    fn new_endpoint(
        &self,
        peer: SocketAddr,
        local: Option<IpAddr>,
        d: &[u8],
    ) -> Result<Endpoint, ErrorStack> {
        let mut ssl = Ssl::new(&self.server.ctx)?;
        ssl.set_ex_data(self.server.psk_index, self.psk);
        ssl.set_mtu(self.params.mtu)?;
        let stream = SslStream::new(ssl, Shim::default())?;
        Ok(Endpoint {
            peer,
            data_mtu: 0,
            local,
            hello_random: hello_random(d),
            stream,
            records: None,
            own: None,
        })
    }

    fn fail_pending(&mut self, why: &'static str) {
        if let Some(p) = self.pending.take() {
            self.server
                .metrics
                .dtls_handshakes
                .with_label_values(&["failed"])
                .inc();
            // Debug level: anyone who saw the App-ID on the wire can make handshakes fail.
            tracing::debug!(session = self.session_id, peer = %p.ep.peer, why, "DTLS handshake failed");
            if self.established.as_ref().map(|e| e.peer) != Some(p.ep.peer) {
                self.forget(p.ep.peer);
            }
        }
    }

    fn close_established(&mut self) {
        if let Some(ep) = self.established.take() {
            if self.pending.as_ref().map(|p| p.ep.peer) != Some(ep.peer) {
                self.forget(ep.peer);
            }
        }
        self.active = false;
    }

    /// Handles one datagram: handshake progress, or records of the established channel. Decrypted
    /// IP packets are appended to `up` (unchecked: the caller applies the same checks as for
    /// CSTP). Replies (handshake flights, DPD answers) wait in the endpoints until [`Self::flush`].
    pub(crate) fn on_datagram(
        &mut self,
        inb: Inbound,
        now: Instant,
        up: &mut Vec<Bytes>,
    ) -> Option<LinkEvent> {
        let Inbound { peer, local, data } = inb;
        let names_us = wire::client_hello_session_id(&data).is_ok_and(|sid| sid == self.app_id);
        if names_us {
            let random = hello_random(&data);
            if self
                .established
                .as_ref()
                .is_some_and(|e| e.peer == peer && e.hello_random == random)
            {
                // A late copy of the ClientHello that started the channel we already have.
                return None;
            }
            // A ClientHello from the peer whose handshake is in progress is a retransmit (or the
            // answer to a HelloVerifyRequest) and belongs to it; any other starts a new handshake.
            if self.pending.as_ref().is_none_or(|p| p.ep.peer != peer) {
                self.fail_pending("replaced by a new ClientHello");
                match self.new_endpoint(peer, local, &data) {
                    Ok(ep) => {
                        self.pending = Some(Pending {
                            ep,
                            deadline: now + HANDSHAKE_TIMEOUT,
                        })
                    }
                    Err(e) => {
                        tracing::warn!(session = self.session_id, error = %e, "cannot create DTLS state");
                        self.forget(peer);
                        return None;
                    }
                }
            }
        }
        // Records of the established channel (application data, alerts) go to it; handshake
        // records to a handshake from the same peer if there is one.
        let app_record = matches!(
            data.first(),
            Some(&wire::CONTENT_APPLICATION_DATA) | Some(&wire::CONTENT_ALERT)
        );
        let to_established = self.established.as_ref().is_some_and(|e| e.peer == peer)
            && (app_record || self.pending.as_ref().is_none_or(|p| p.ep.peer != peer));
        if !to_established {
            if let Some(p) = self.pending.as_mut().filter(|p| p.ep.peer == peer) {
                if data.first() == Some(&wire::CONTENT_APPLICATION_DATA) {
                    // A client sends no application data before the handshake completes.
                    self.server.metrics.dtls_drop(DtlsDrop::StalePeer, 1);
                    return None;
                }
                p.ep.stream.get_mut().inbox = Some(data);
                return match p.ep.stream.accept() {
                    Ok(()) => Some(self.promote(now, up)),
                    Err(e) if e.code() == ErrorCode::WANT_READ => None,
                    Err(e) => {
                        tracing::debug!(session = self.session_id, error = %e, "DTLS handshake error");
                        self.fail_pending("handshake error");
                        Some(LinkEvent::HandshakeFailed)
                    }
                };
            }
            self.server.metrics.dtls_drop(DtlsDrop::StalePeer, 1);
            self.forget(peer);
            return None;
        }
        if let Some(ep) = self.established.as_mut() {
            ep.stream.get_mut().inbox = Some(data);
        }
        self.read_established(now, up)
    }

    /// The pending handshake completed: it becomes the established channel.
    fn promote(&mut self, now: Instant, up: &mut Vec<Bytes>) -> LinkEvent {
        let Some(p) = self.pending.take() else {
            return LinkEvent::HandshakeFailed;
        };
        let peer = p.ep.peer;
        let mut ep = p.ep;
        let fallback = usize::try_from(self.params.mtu)
            .unwrap_or(usize::MAX)
            .saturating_sub(mtu::DTLS_GCM_OVERHEAD as usize);
        ep.data_mtu = data_mtu(ep.stream.ssl(), fallback);
        if self.params.own_socket {
            let event = match self.server.own_socket(peer, ep.local) {
                Ok(own) => {
                    ep.own = Some(own);
                    DTLS_OWN_SOCKET
                }
                Err(e) => {
                    tracing::debug!(session = self.session_id, %peer, error = %e, "no own UDP socket; using the listening socket");
                    DTLS_OWN_SOCKET_FAILED
                }
            };
            self.server
                .metrics
                .dtls_events
                .with_label_values(&[event])
                .inc();
        }
        if let Some(old) = self.established.replace(ep) {
            if old.peer != peer {
                self.forget(old.peer);
            }
        }
        self.server
            .metrics
            .dtls_handshakes
            .with_label_values(&["ok"])
            .inc();
        if let Some(ep) = &self.established {
            let ssl = ep.stream.ssl();
            tracing::info!(
                session = self.session_id,
                %peer,
                version = ssl.version_str(),
                cipher = ssl.current_cipher().map_or("?", |c| c.name()),
                data_mtu = ep.data_mtu,
                "DTLS established"
            );
        }
        self.last_rx = now;
        self.active = true;
        self.dpd.on_receive(now);
        // The datagram that finished the handshake may carry records already: OpenSSL reads
        // those, then hands the channel over with what it has written.
        let _ = self.read_established(now, up);
        if let Some(ep) = self.established.as_mut() {
            let shim = ep.stream.get_ref();
            ep.records = last_epoch_seq(&shim.out, &shim.lens).and_then(|last| {
                let flight = (shim.out.clone(), shim.lens.clone());
                Channel::take_over(ep.stream.ssl(), Role::Server, last, Some(flight))
            });
            tracing::debug!(
                session = self.session_id,
                own = ep.records.is_some(),
                "DTLS record layer"
            );
        }
        LinkEvent::Established { peer }
    }

    fn read_established(&mut self, now: Instant, up: &mut Vec<Bytes>) -> Option<LinkEvent> {
        let ep = self.established.as_mut()?;
        let outcome = if ep.records.is_some() {
            // A datagram that came as `Bytes` (through the demux): opened in a scratch copy.
            let data = ep.stream.get_mut().inbox.take()?;
            let mut scratch = std::mem::take(&mut self.plain);
            scratch.clear();
            scratch.extend_from_slice(&data);
            let outcome = self.open_own(&mut scratch, up);
            self.plain = scratch;
            outcome
        } else {
            self.read_openssl(up)
        };
        self.finish_read(outcome, now)
    }

    /// Reads the established channel's records through OpenSSL (a suite the gateway's own
    /// record layer does not do, or the datagram that completed the handshake).
    fn read_openssl(&mut self, up: &mut Vec<Bytes>) -> ReadOutcome {
        let mut outcome = ReadOutcome::default();
        let Reading {
            ep: Some(ep),
            mut sink,
            plain,
            reply,
            server,
        } = self.reading(up)
        else {
            return outcome;
        };
        if plain.len() < MAX_PLAINTEXT {
            plain.resize(MAX_PLAINTEXT, 0);
        }
        loop {
            let n = match ep.stream.ssl_read(plain) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.code() == ErrorCode::WANT_READ => break,
                Err(e) => {
                    if e.code() != ErrorCode::ZERO_RETURN {
                        server.metrics.dtls_drop(DtlsDrop::BadRecord, 1);
                        tracing::debug!(error = %e, "DTLS read error");
                    }
                    outcome.closed = true;
                    break;
                }
            };
            let Some(record) = plain.get(..n) else { break };
            outcome.valid = true;
            if !on_plaintext(record, &mut sink, reply, server, |r| {
                ep.stream.ssl_write(r).is_ok()
            }) {
                outcome.closed = true;
                break;
            }
        }
        ep.stream.get_mut().inbox = None;
        outcome
    }

    /// Opens the records of one datagram from the established peer with the gateway's own record
    /// layer, in place in `d`.
    fn open_own(&mut self, d: &mut [u8], up: &mut Vec<Bytes>) -> ReadOutcome {
        let mut outcome = ReadOutcome::default();
        let Reading {
            ep:
                Some(Endpoint {
                    records: Some(ch),
                    stream,
                    ..
                }),
            mut sink,
            reply,
            server,
            ..
        } = self.reading(up)
        else {
            return outcome;
        };
        let shim = stream.get_mut();
        let mut handshake = false;
        let mut recs = wire::RecordsMut::new(d);
        for (h, record) in recs.by_ref() {
            match ch.open(&h, record) {
                Ok(Opened::Data(plain)) => {
                    outcome.valid = true;
                    let written =
                        on_plaintext(plain, &mut sink, reply, server, |r| seal_into(ch, shim, r));
                    if !written {
                        outcome.closed = true;
                        break;
                    }
                }
                Ok(Opened::Closed) => {
                    outcome.valid = true;
                    outcome.closed = true;
                    break;
                }
                Ok(Opened::Warning) => outcome.valid = true,
                Ok(Opened::Handshake) => handshake = true,
                Err(Refused::Replayed) => server.metrics.dtls_drop(DtlsDrop::Replayed, 1),
                Err(Refused::Bad) => server.metrics.dtls_drop(DtlsDrop::BadRecord, 1),
            }
        }
        if recs.truncated() {
            server.metrics.dtls_drop(DtlsDrop::BadRecord, 1);
        }
        // The client's last flight again, in one datagram or several: one answer each.
        if handshake {
            ch.resend_final(&mut shim.out, &mut shim.lens);
        }
        outcome
    }

    /// The parts of the link that reading the established channel uses, borrowed apart.
    fn reading<'a>(&'a mut self, up: &'a mut Vec<Bytes>) -> Reading<'a> {
        Reading {
            ep: self.established.as_mut(),
            sink: UpSink {
                up,
                arena: &mut self.arena,
                packets: &mut self.up_packets,
                bytes: &mut self.up_bytes,
            },
            plain: &mut self.plain,
            reply: &mut self.reply,
            server: &self.server,
        }
    }

    fn finish_read(&mut self, outcome: ReadOutcome, now: Instant) -> Option<LinkEvent> {
        if outcome.valid {
            self.last_rx = now;
            self.active = true;
            self.dpd.on_receive(now);
        }
        if outcome.closed {
            tracing::info!(session = self.session_id, "DTLS channel closed");
            self.close_established();
            return Some(LinkEvent::Closed);
        }
        None
    }

    /// IP packets and bytes received over DTLS since the last call.
    pub(crate) fn take_up_counts(&mut self) -> (u64, u64) {
        (
            std::mem::take(&mut self.up_packets),
            std::mem::take(&mut self.up_bytes),
        )
    }

    /// Encrypts one downstream CSTP DATA frame (as the data plane builds it) as one DTLS record.
    /// The record is `[0x00] + IP packet`, which is exactly the frame from its byte 7 on (byte 7
    /// of a CSTP header is always zero), so nothing is copied. False if DTLS is not established,
    /// the frame is not DATA, or its record would not fit one datagram of the session's DTLS MTU
    /// (counted as `oversize_to_cstp`; as ocserv does): send it over CSTP then. OpenSSL itself
    /// would write such a record as one datagram larger than the MTU, which the path drops.
    pub(crate) fn encrypt_frame(&mut self, frame: &[u8]) -> bool {
        let Some(ep) = self.established.as_mut() else {
            return false;
        };
        if frame.get(6..8) != Some(&[cstp::FrameType::Data as u8, 0]) {
            return false;
        }
        let Some(record) = frame.get(cstp::HEADER_LEN - 1..) else {
            return false;
        };
        if record.len() > ep.data_mtu {
            self.server
                .metrics
                .dtls_events
                .with_label_values(&[DTLS_OVERSIZE])
                .inc();
            return false;
        }
        if ep.write_record(record) {
            return true;
        }
        tracing::info!(session = self.session_id, "DTLS write failed; back to CSTP");
        self.close_established();
        false
    }

    /// Sends every datagram the endpoints have produced (handshake flights, DPD answers, data).
    pub(crate) async fn flush(&mut self) {
        let server = &self.server;
        for ep in [
            self.established.as_mut(),
            self.pending.as_mut().map(|p| &mut p.ep),
        ]
        .into_iter()
        .flatten()
        {
            let shim = ep.stream.get_mut();
            if !shim.lens.is_empty() {
                match &ep.own {
                    Some(own) => {
                        send_batch(Tx::Own(own), own.peer(), None, &shim.out, &shim.lens).await
                    }
                    None => {
                        send_batch(
                            Tx::Listening(&server.socket, &server.state),
                            ep.peer,
                            ep.local,
                            &shim.out,
                            &shim.lens,
                        )
                        .await
                    }
                }
                shim.out.clear();
                shim.lens.clear();
            }
        }
    }

    /// When [`Self::handle_timeout`] must run next: the handshake deadline or retransmit timer,
    /// the next DTLS DPD request, or the moment UDP has been silent for `switch_after`.
    pub(crate) fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        let pending = self.pending.as_ref().map(|p| {
            retransmit_in(p.ep.stream.ssl()).map_or(p.deadline, |d| (now + d).min(p.deadline))
        });
        let switch = self
            .is_active()
            .then(|| self.last_rx + self.params.switch_after);
        let dpd = self.is_active().then(|| self.dpd.poll_timeout()).flatten();
        [pending, switch, dpd].into_iter().flatten().min()
    }

    /// Runs the timers: fails an expired handshake, retransmits a handshake flight, moves
    /// downstream traffic back to CSTP after `switch_after` without UDP, and while DTLS carries
    /// traffic asks a silent peer for a DPD response ([`DtlsDpd`]; the request waits in the
    /// endpoint until [`Self::flush`]).
    pub(crate) fn handle_timeout(&mut self, now: Instant) -> Option<LinkEvent> {
        let mut event = None;
        if self.pending.as_ref().is_some_and(|p| now >= p.deadline) {
            self.fail_pending("timed out");
            event = Some(LinkEvent::HandshakeFailed);
        } else if let Some(p) = &self.pending {
            handle_retransmit(p.ep.stream.ssl());
        }
        if self.is_active() && now >= self.last_rx + self.params.switch_after {
            self.active = false;
        }
        if self.is_active() && self.dpd.handle_timeout(now) {
            if let Some(ep) = self.established.as_mut() {
                if !ep.write_record(&[cstp::FrameType::DpdRequest as u8]) {
                    tracing::info!(
                        session = self.session_id,
                        "DTLS DPD write failed; back to CSTP"
                    );
                    self.close_established();
                    return Some(LinkEvent::Closed);
                }
                self.server
                    .metrics
                    .dtls_events
                    .with_label_values(&[DTLS_DPD_SENT])
                    .inc();
            }
        }
        event
    }
}

impl Drop for DtlsLink {
    fn drop(&mut self) {
        let id = self.session_id;
        self.server
            .registry
            .remove_if(&self.app_id, |_, r| r.session_id == id);
        let peers: Vec<SocketAddr> = self
            .established
            .iter()
            .map(|e| e.peer)
            .chain(self.pending.iter().map(|p| p.ep.peer))
            .collect();
        for peer in peers {
            self.forget(peer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn server() -> (Arc<DtlsServer>, mpsc::UnboundedReceiver<Ctl>) {
        DtlsServer::bind("127.0.0.1:0".parse().unwrap(), Metrics::new())
            .await
            .unwrap()
    }

    fn params() -> LinkParams {
        LinkParams {
            mtu: 1472,
            switch_after: Duration::from_secs(25),
            // No DTLS DPD unless a test asks for it.
            dpd: Duration::ZERO,
            own_socket: false,
        }
    }

    /// A ClientHello in openconnect's shape (protocol doc §7.3) naming `sid`.
    fn hello(sid: &[u8]) -> Vec<u8> {
        let mut body = vec![0xFE, 0xFD];
        body.extend([7u8; 32]);
        body.push(u8::try_from(sid.len()).unwrap());
        body.extend_from_slice(sid);
        body.extend_from_slice(&[0, 0, 2, 0x00, 0xA9, 1, 0]);
        let len = u32::try_from(body.len()).unwrap().to_be_bytes();
        let mut hs = vec![
            1, len[1], len[2], len[3], 0, 0, 0, 0, 0, len[1], len[2], len[3],
        ];
        hs.extend_from_slice(&body);
        let mut d = vec![22, 0xFE, 0xFF, 0, 0, 0, 0, 0, 0, 0, 0];
        d.extend_from_slice(&u16::try_from(hs.len()).unwrap().to_be_bytes());
        d.extend_from_slice(&hs);
        d
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([198, 18, 1, 2], port))
    }

    #[tokio::test]
    async fn junk_from_unknown_peers_is_dropped_by_reason_without_binding() {
        let (srv, _ctl) = server().await;
        let mut link = srv.register(1, [1; 32], params());
        let mut demux = Demux::default();
        let mut arena = Arena::default();
        let live = hello(&link.app_id());
        let cases: Vec<(Vec<u8>, DtlsDrop)> = vec![
            (vec![], DtlsDrop::UnknownPeer),
            (vec![0x17, 0xfe, 0xfd, 0, 1], DtlsDrop::UnknownPeer),
            (b"GET / HTTP/1.1\r\n".to_vec(), DtlsDrop::UnknownPeer),
            (live[..70].to_vec(), DtlsDrop::MalformedHello),
            (live[..13].to_vec(), DtlsDrop::MalformedHello),
            (hello(&[0xAB; 32]), DtlsDrop::UnknownAppId),
            (hello(&link.app_id()[..16]), DtlsDrop::UnknownAppId),
            (hello(&[]), DtlsDrop::UnknownAppId),
        ];
        for (i, (d, want)) in cases.iter().enumerate() {
            let got = demux.dispatch(&srv, addr(1000 + i as u16), None, d, &mut arena);
            assert_eq!(got, Err(*want), "case {i}");
        }
        assert_eq!(demux.len(), 0, "no junk may bind a peer");
        assert!(link.try_recv().is_none(), "no junk may reach the session");
        assert!(arena.buf.capacity() == 0, "no junk may be copied");
    }

    #[tokio::test]
    async fn hello_naming_a_live_app_id_binds_its_peer_and_later_datagrams_follow() {
        let (srv, _ctl) = server().await;
        let mut a = srv.register(1, [1; 32], params());
        let mut b = srv.register(2, [2; 32], params());
        let mut demux = Demux::default();
        let mut arena = Arena::default();
        let pa = addr(4000);
        demux
            .dispatch(&srv, pa, None, &hello(&a.app_id()), &mut arena)
            .unwrap();
        let got = a.try_recv().unwrap();
        assert_eq!(got.peer, pa);
        // Application data from the bound peer now goes to the same session, not by App-ID.
        demux
            .dispatch(&srv, pa, None, &[0x17, 0xfe, 0xfd, 0, 1, 2], &mut arena)
            .unwrap();
        assert_eq!(
            &a.try_recv().unwrap().data[..],
            &[0x17, 0xfe, 0xfd, 0, 1, 2]
        );
        assert!(b.try_recv().is_none());
        // The same data from a second address is not matched by IP or anything else.
        assert_eq!(
            demux.dispatch(
                &srv,
                addr(4001),
                None,
                &[0x17, 0xfe, 0xfd, 0, 1, 2],
                &mut arena
            ),
            Err(DtlsDrop::UnknownPeer)
        );
        // A new CONNECT's ClientHello from the same port moves the peer to the other session.
        demux
            .dispatch(&srv, pa, None, &hello(&b.app_id()), &mut arena)
            .unwrap();
        assert_eq!(b.try_recv().unwrap().peer, pa);
        assert!(a.try_recv().is_none());
    }

    #[tokio::test]
    async fn forget_and_ended_sessions_unbind_peers() {
        let (srv, mut ctl) = server().await;
        let a = srv.register(1, [1; 32], params());
        let app_id = a.app_id();
        let mut demux = Demux::default();
        let mut arena = Arena::default();
        demux
            .dispatch(&srv, addr(5000), None, &hello(&app_id), &mut arena)
            .unwrap();
        assert_eq!(demux.len(), 1);
        // A Forget for another session changes nothing.
        demux
            .apply(
                &srv,
                Ctl::Forget {
                    session_id: 9,
                    peer: addr(5000),
                },
                &mut arena,
            )
            .unwrap();
        assert_eq!(demux.len(), 1);
        drop(a);
        assert!(srv.registry.is_empty(), "the App-ID dies with its link");
        // The link knew no peer (it never processed the datagram), so nothing was queued...
        assert!(ctl.try_recv().is_err());
        // ...and the closed queue unbinds the peer on its next datagram.
        assert_eq!(
            demux.dispatch(&srv, addr(5000), None, &[0x17, 0xfe, 0xfd], &mut arena),
            Err(DtlsDrop::UnknownPeer)
        );
        assert_eq!(demux.len(), 0);
        assert_eq!(
            demux.dispatch(&srv, addr(5001), None, &hello(&app_id), &mut arena),
            Err(DtlsDrop::UnknownAppId),
            "an expired App-ID matches nothing"
        );
        // A peer of an ended session that never sends again is swept.
        let b = srv.register(2, [2; 32], params());
        demux
            .dispatch(&srv, addr(5002), None, &hello(&b.app_id()), &mut arena)
            .unwrap();
        demux.sweep();
        assert_eq!(demux.len(), 1, "a live session's peer stays");
        drop(b);
        demux.sweep();
        assert_eq!(demux.len(), 0);
    }

    #[tokio::test]
    async fn a_full_session_queue_drops_instead_of_growing() {
        let (srv, _ctl) = server().await;
        let _a = srv.register(1, [1; 32], params());
        let app_id = _a.app_id();
        let mut demux = Demux::default();
        let mut arena = Arena::default();
        let h = hello(&app_id);
        let mut full = 0;
        for _ in 0..SESSION_QUEUE + 10 {
            if demux.dispatch(&srv, addr(6000), None, &h, &mut arena) == Err(DtlsDrop::QueueFull) {
                full += 1;
            }
        }
        assert_eq!(full, 10);
    }

    #[tokio::test]
    async fn stale_peer_datagrams_are_dropped_and_unbound_by_the_session() {
        let (srv, mut ctl) = server().await;
        let mut a = srv.register(1, [1; 32], params());
        let mut up = Vec::new();
        let ev = a.on_datagram(
            Inbound {
                peer: addr(7000),
                local: None,
                data: Bytes::from_static(&[0x17, 0xfe, 0xfd, 0, 1]),
            },
            Instant::now(),
            &mut up,
        );
        assert_eq!(ev, None);
        assert!(up.is_empty());
        assert!(matches!(
            ctl.try_recv(),
            Ok(Ctl::Forget { session_id: 1, peer }) if peer == addr(7000)
        ));
    }

    /// An OpenSSL DTLS 1.2 PSK client standing in for openconnect: identity "psk", the PSK suites,
    /// and a session whose id is the App-ID, so its ClientHello carries the App-ID in `session_id`
    /// exactly as GnuTLS does (§7.3); the server's full handshake then replaces that "session".
    struct Client {
        stream: SslStream<Shim>,
        peer: SocketAddr,
    }

    /// A DER `SSL_SESSION` (OpenSSL's ASN.1 form): version 1, DTLS 1.2, PSK-AES256-GCM-SHA384,
    /// session id = `app_id`, a throwaway master key.
    fn session_der(app_id: &[u8; 32]) -> Vec<u8> {
        let mut inner = vec![
            0x02, 0x01, 0x01, 0x02, 0x03, 0x00, 0xFE, 0xFD, 0x04, 0x02, 0x00, 0xA9,
        ];
        inner.extend_from_slice(&[0x04, 0x20]);
        inner.extend_from_slice(app_id);
        inner.extend_from_slice(&[0x04, 0x30]);
        inner.extend_from_slice(&[0x5A; 48]);
        let mut der = vec![0x30, u8::try_from(inner.len()).unwrap()];
        der.extend_from_slice(&inner);
        der
    }

    impl Client {
        fn new(app_id: &[u8; 32], psk: [u8; 32], port: u16) -> Self {
            Self::offering(app_id, psk, port, CIPHERS)
        }

        /// A client that offers only `ciphers`.
        fn offering(app_id: &[u8; 32], psk: [u8; 32], port: u16, ciphers: &str) -> Self {
            use openssl::ssl::SslSession;
            let mut b = SslContextBuilder::new(SslMethod::dtls()).unwrap();
            b.set_min_proto_version(Some(SslVersion::DTLS1_2)).unwrap();
            b.set_max_proto_version(Some(SslVersion::DTLS1_2)).unwrap();
            b.set_cipher_list(ciphers).unwrap();
            b.set_options(SslOptions::NO_QUERY_MTU | SslOptions::NO_TICKET);
            b.set_psk_client_callback(move |_, _, identity, key| {
                identity[..4].copy_from_slice(b"psk\0");
                key[..32].copy_from_slice(&psk);
                Ok(32)
            });
            let ctx = b.build();
            let mut ssl = Ssl::new(&ctx).unwrap();
            ssl.set_mtu(1400).unwrap();
            let session = SslSession::from_der(&session_der(app_id)).unwrap();
            // SAFETY: the session was made for this protocol and cipher list, and OpenSSL takes
            // its own reference to it.
            #[allow(unsafe_code)]
            unsafe {
                ssl.set_session(&session).unwrap();
            }
            ssl.set_connect_state();
            Self {
                stream: SslStream::new(ssl, Shim::default()).unwrap(),
                peer: addr(port),
            }
        }

        /// Datagrams the client has produced.
        fn take(&mut self) -> Vec<Bytes> {
            take_out(self.stream.get_mut())
        }

        /// Feeds one datagram from the gateway; returns decrypted application records.
        fn feed(&mut self, d: Bytes) -> Vec<Vec<u8>> {
            self.stream.get_mut().inbox = Some(d);
            let mut records = Vec::new();
            if !self.stream.ssl().is_init_finished() {
                match self.stream.do_handshake() {
                    Ok(()) => {}
                    Err(e) if e.code() == ErrorCode::WANT_READ => return records,
                    Err(e) => panic!("client handshake failed: {e}"),
                }
            }
            let mut buf = vec![0u8; MAX_PLAINTEXT];
            while let Ok(n) = self.stream.ssl_read(&mut buf) {
                records.push(buf[..n].to_vec());
            }
            records
        }

        fn send(&mut self, record: &[u8]) -> Vec<Bytes> {
            self.stream.ssl_write(record).unwrap();
            self.take()
        }
    }

    fn take_out(shim: &mut Shim) -> Vec<Bytes> {
        let mut off = 0;
        let out = shim
            .lens
            .iter()
            .map(|&l| {
                let d = Bytes::copy_from_slice(&shim.out[off..off + l]);
                off += l;
                d
            })
            .collect();
        shim.out.clear();
        shim.lens.clear();
        out
    }

    /// What the link has produced for its peers (handshake flights, replies, data).
    fn link_out(link: &mut DtlsLink) -> Vec<(SocketAddr, Bytes)> {
        let mut v = Vec::new();
        for ep in [
            link.established.as_mut(),
            link.pending.as_mut().map(|p| &mut p.ep),
        ]
        .into_iter()
        .flatten()
        {
            let peer = ep.peer;
            v.extend(take_out(ep.stream.get_mut()).into_iter().map(|d| (peer, d)));
        }
        v
    }

    /// Runs a handshake between `client` and `link` in memory; returns the link's last event.
    fn handshake(client: &mut Client, link: &mut DtlsLink, now: Instant) -> Option<LinkEvent> {
        handshake_flights(client, link, now).0
    }

    /// [`handshake`], also returning the last flight each side sent (client, then gateway).
    fn handshake_flights(
        client: &mut Client,
        link: &mut DtlsLink,
        now: Instant,
    ) -> (Option<LinkEvent>, Vec<Bytes>, Vec<Bytes>) {
        let mut up = Vec::new();
        let _ = client.stream.do_handshake();
        let mut last = None;
        let (mut client_flight, mut gw_flight) = (Vec::new(), Vec::new());
        for _ in 0..10 {
            let to_gw = client.take();
            if to_gw.is_empty() && client.stream.ssl().is_init_finished() {
                break;
            }
            if !to_gw.is_empty() {
                client_flight.clone_from(&to_gw);
            }
            for d in to_gw {
                let inb = Inbound {
                    peer: client.peer,
                    local: None,
                    data: d,
                };
                if let Some(ev) = link.on_datagram(inb, now, &mut up) {
                    last = Some(ev);
                }
            }
            let out = link_out(link);
            if !out.is_empty() {
                gw_flight = out.iter().map(|(_, d)| d.clone()).collect();
            }
            for (peer, d) in out {
                if peer == client.peer {
                    client.feed(d);
                }
            }
        }
        (last, client_flight, gw_flight)
    }

    /// A minimal IPv4 packet for the record-layer tests.
    const PKT: [u8; 20] = [
        0x45, 0, 0, 20, 1, 2, 3, 4, 64, 17, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1,
    ];

    fn inbound(port: u16, data: Bytes) -> Inbound {
        Inbound {
            peer: addr(port),
            local: None,
            data,
        }
    }

    fn drops(srv: &DtlsServer, reason: &str) -> u64 {
        srv.metrics.dtls_drops.with_label_values(&[reason]).get()
    }

    /// Sends one DATA record each way between an established `client` and `link`; true if both
    /// arrived intact.
    fn data_both_ways(client: &mut Client, link: &mut DtlsLink, port: u16, now: Instant) -> bool {
        let pkt = PKT;
        let mut up = Vec::new();
        for d in client.send(&[&[0x00][..], &pkt].concat()) {
            link.on_datagram(inbound(port, d), now, &mut up);
        }
        let mut frame = Vec::new();
        cstp::encode(cstp::FrameType::Data, &pkt, &mut frame).unwrap();
        let sent = link.encrypt_frame(&frame);
        let got: Vec<Vec<u8>> = link_out(link)
            .into_iter()
            .flat_map(|(_, d)| client.feed(d))
            .collect();
        sent && up.len() == 1 && up[0][..] == pkt[..] && got == vec![[&[0x00][..], &pkt].concat()]
    }

    #[tokio::test]
    async fn aes_gcm_channels_move_to_the_gateways_record_layer_and_chacha_stays_with_openssl() {
        for (i, (ciphers, own)) in [
            ("PSK-AES128-GCM-SHA256", true),
            ("PSK-AES256-GCM-SHA384", true),
            ("PSK-CHACHA20-POLY1305", false),
        ]
        .into_iter()
        .enumerate()
        {
            let (srv, _ctl) = server().await;
            let psk = [0x42; 32];
            let mut link = srv.register(1, psk, params());
            let port = 9400 + u16::try_from(i).unwrap();
            let mut client = Client::offering(&link.app_id(), psk, port, ciphers);
            let now = Instant::now();
            assert_eq!(
                handshake(&mut client, &mut link, now),
                Some(LinkEvent::Established { peer: addr(port) })
            );
            assert_eq!(
                client.stream.ssl().current_cipher().unwrap().name(),
                ciphers
            );
            let ep = link.established.as_ref().unwrap();
            assert_eq!(ep.records.is_some(), own, "{ciphers}");
            // OpenSSL's client decrypts what the gateway sealed and the other way round, many
            // times (the sequence numbers continue from OpenSSL's Finished).
            for _ in 0..3 {
                assert!(
                    data_both_ways(&mut client, &mut link, port, now),
                    "{ciphers}"
                );
            }
            assert_eq!(drops(&srv, "bad_record") + drops(&srv, "replayed"), 0);
        }
    }

    #[tokio::test]
    async fn every_damaged_copy_of_a_record_is_dropped_and_the_genuine_one_still_opens() {
        let (srv, _ctl) = server().await;
        let psk = [0x42; 32];
        let mut link = srv.register(1, psk, params());
        let port = 9420;
        let mut client = Client::new(&link.app_id(), psk, port);
        let now = Instant::now();
        handshake(&mut client, &mut link, now);
        assert!(link.established.as_ref().unwrap().records.is_some());
        let pkt = PKT;
        let genuine = client.send(&[&[0x00][..], &pkt].concat()).remove(0);
        let mut damaged: Vec<Vec<u8>> = Vec::new();
        // Every bit of every byte flipped, every truncation, and a junk tail.
        for i in 0..genuine.len() {
            for bit in 0..8 {
                let mut d = genuine.to_vec();
                d[i] ^= 1 << bit;
                damaged.push(d);
            }
            damaged.push(genuine[..i].to_vec());
        }
        let mut tail = genuine.to_vec();
        tail.extend_from_slice(&[23, 0xFE, 0xFD, 0, 1, 0, 0, 0, 0, 0, 9, 0xFF, 0xFF, 1, 2]);
        damaged.push(tail);
        let mut up = Vec::new();
        for d in damaged {
            let d = Bytes::from(d);
            let _ = link.on_datagram(inbound(port, d.clone()), now, &mut up);
            // The own socket's path opens in place.
            if link.opens_in_place(&d) {
                let mut m = d.to_vec();
                let _ = link.open_own(&mut m, &mut up);
            }
        }
        // The damaged copy with the junk tail carries the genuine record: that one opens once.
        assert_eq!(up.len(), 1);
        link.on_datagram(inbound(port, genuine), now, &mut up);
        assert_eq!(up.len(), 1, "the genuine record was already seen");
        assert!(drops(&srv, "replayed") >= 1);
        assert!(link.established.is_some());
        assert!(data_both_ways(&mut client, &mut link, port, now));
    }

    #[tokio::test]
    async fn replayed_and_forged_records_are_dropped_and_the_last_flight_is_sent_again() {
        let (srv, _ctl) = server().await;
        let psk = [0x42; 32];
        let mut link = srv.register(1, psk, params());
        let port = 9410;
        let mut client = Client::new(&link.app_id(), psk, port);
        let now = Instant::now();
        let (event, client_flight, gw_flight) = handshake_flights(&mut client, &mut link, now);
        assert_eq!(event, Some(LinkEvent::Established { peer: addr(port) }));
        assert!(link.established.as_ref().unwrap().records.is_some());
        assert!(!client_flight.is_empty() && !gw_flight.is_empty());

        // The client's last flight again (ours was lost): the same bytes answer it.
        for d in &client_flight {
            assert_eq!(
                link.on_datagram(inbound(port, d.clone()), now, &mut Vec::new()),
                None
            );
        }
        let again: Vec<Bytes> = link_out(&mut link).into_iter().map(|(_, d)| d).collect();
        assert_eq!(again, gw_flight);

        let pkt = PKT;
        let rec = [&[0x00][..], &pkt].concat();
        let mut up = Vec::new();
        let first = client.send(&rec);
        assert_eq!(first.len(), 1);
        link.on_datagram(inbound(port, first[0].clone()), now, &mut up);
        assert_eq!(up.len(), 1);
        // The same datagram again is a replay.
        link.on_datagram(inbound(port, first[0].clone()), now, &mut up);
        assert_eq!(up.len(), 1);
        assert_eq!(drops(&srv, "replayed"), 1);

        // A flipped bit anywhere after the header fails authentication and does not use up the
        // record's sequence number: the genuine record still gets through.
        let genuine = client.send(&rec).remove(0);
        for at in [
            wire::RECORD_HEADER_LEN,
            wire::RECORD_HEADER_LEN + 9,
            genuine.len() - 1,
        ] {
            let mut forged = genuine.to_vec();
            forged[at] ^= 0x01;
            link.on_datagram(inbound(port, Bytes::from(forged)), now, &mut up);
        }
        // So does a changed header (it is authenticated data): another sequence number.
        let mut forged = genuine.to_vec();
        forged[10] ^= 0x01;
        link.on_datagram(inbound(port, Bytes::from(forged)), now, &mut up);
        assert_eq!(drops(&srv, "bad_record"), 4);
        assert_eq!(up.len(), 1);
        link.on_datagram(inbound(port, genuine), now, &mut up);
        assert_eq!(up.len(), 2);
        assert!(link.is_active());

        // Once the client has sent data it has our Finished: its old flight gets no answer.
        for d in &client_flight {
            link.on_datagram(inbound(port, d.clone()), now, &mut up);
        }
        assert!(link_out(&mut link).is_empty());
        assert!(data_both_ways(&mut client, &mut link, port, now));

        // A close_notify ends the channel.
        client.stream.shutdown().unwrap();
        for d in client.take() {
            assert_eq!(
                link.on_datagram(inbound(port, d), now, &mut up),
                Some(LinkEvent::Closed)
            );
        }
        assert!(link.established.is_none());
    }

    #[tokio::test]
    async fn in_memory_psk_handshake_then_probes_echo_and_data_flows_both_ways() {
        let (srv, _ctl) = server().await;
        let psk = [0x42; 32];
        let mut link = srv.register(1, psk, params());
        let mut client = Client::new(&link.app_id(), psk, 9000);
        let now = Instant::now();
        assert_eq!(
            handshake(&mut client, &mut link, now),
            Some(LinkEvent::Established { peer: addr(9000) })
        );
        assert!(client.stream.ssl().is_init_finished());
        assert!(link.is_active());
        assert_eq!(
            client.stream.ssl().current_cipher().unwrap().name(),
            "PSK-AES128-GCM-SHA256"
        );
        assert_eq!(client.stream.ssl().version_str(), "DTLSv1.2");

        // An MTU probe is echoed byte for byte with its length (§7.7).
        let mut probe = vec![0x03, 1, 2, 3, 4];
        probe.resize(1401, 0);
        let mut up = Vec::new();
        for d in client.send(&probe) {
            let inb = Inbound {
                peer: addr(9000),
                local: None,
                data: d,
            };
            assert_eq!(link.on_datagram(inb, now, &mut up), None);
        }
        let replies: Vec<Vec<u8>> = link_out(&mut link)
            .into_iter()
            .flat_map(|(_, d)| client.feed(d))
            .collect();
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0].len(), probe.len());
        assert_eq!(replies[0][0], 0x04);
        assert_eq!(&replies[0][1..], &probe[1..]);

        // Upstream DATA comes out as the bare IP packet; keepalives produce nothing.
        let pkt = [
            0x45u8, 0, 0, 20, 9, 9, 9, 9, 64, 17, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1,
        ];
        let mut rec = vec![0x00];
        rec.extend_from_slice(&pkt);
        for d in client.send(&rec).into_iter().chain(client.send(&[0x07])) {
            let inb = Inbound {
                peer: addr(9000),
                local: None,
                data: d,
            };
            link.on_datagram(inb, now, &mut up);
        }
        assert_eq!(up.len(), 1);
        assert_eq!(&up[0][..], &pkt[..]);
        assert!(
            link_out(&mut link).is_empty(),
            "a keepalive is never answered"
        );

        // Downstream: a CSTP DATA frame from the data plane becomes one [0x00] + packet record.
        let mut frame = Vec::new();
        cstp::encode(cstp::FrameType::Data, &pkt, &mut frame).unwrap();
        assert!(link.encrypt_frame(&frame));
        let got: Vec<Vec<u8>> = link_out(&mut link)
            .into_iter()
            .flat_map(|(_, d)| client.feed(d))
            .collect();
        assert_eq!(got, vec![rec.clone()]);
        // Anything but DATA is refused (it goes over CSTP).
        let mut dpd = Vec::new();
        cstp::encode(cstp::FrameType::DpdRequest, &[], &mut dpd).unwrap();
        assert!(!link.encrypt_frame(&dpd));
    }

    #[tokio::test]
    async fn a_packet_too_big_for_one_datagram_is_refused_and_counted_and_dtls_stays_up() {
        let (srv, _ctl) = server().await;
        let psk = [0x42; 32];
        let mut link = srv.register(1, psk, params());
        let mut client = Client::new(&link.app_id(), psk, 9050);
        let now = Instant::now();
        handshake(&mut client, &mut link, now);
        assert!(link.is_active());
        // PSK-AES128-GCM-SHA256: 13-byte header, 8-byte nonce, 16-byte tag.
        let limit = params().mtu as usize - 37;
        let oversize = || {
            srv.metrics
                .dtls_events
                .with_label_values(&[DTLS_OVERSIZE])
                .get()
        };
        let frame = |pkt_len: usize| {
            let mut f = Vec::new();
            cstp::encode(cstp::FrameType::Data, &vec![0x45; pkt_len], &mut f).unwrap();
            f
        };
        // Type byte + packet = exactly the limit: one datagram of exactly the MTU.
        assert!(link.encrypt_frame(&frame(limit - 1)));
        let out = link_out(&mut link);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1.len(), params().mtu as usize);
        assert_eq!(oversize(), 0);
        // One byte more would not fit: refused (the caller sends it over CSTP), counted.
        assert!(!link.encrypt_frame(&frame(limit)));
        assert!(link_out(&mut link).is_empty(), "nothing went over UDP");
        assert_eq!(oversize(), 1);
        // DTLS stays up for everything else.
        assert!(link.is_active());
        assert!(link.encrypt_frame(&frame(100)));
        let got: Vec<Vec<u8>> = link_out(&mut link)
            .into_iter()
            .flat_map(|(_, d)| client.feed(d))
            .collect();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].len(), 101);
    }

    #[tokio::test]
    async fn a_silent_peer_gets_a_dtls_dpd_request_and_its_answer_counts_as_liveness() {
        let (srv, _ctl) = server().await;
        let psk = [0x42; 32];
        let p = LinkParams {
            dpd: Duration::from_secs(90),
            ..params()
        };
        let mut link = srv.register(1, psk, p);
        let mut client = Client::new(&link.app_id(), psk, 9400);
        let now = Instant::now();
        handshake(&mut client, &mut link, now);
        assert!(link.is_active());
        let event = |e: &str| srv.metrics.dtls_events.with_label_values(&[e]).get();
        // DPD 90 s, switch after 25 s: the first request is due at 12.5 s of silence.
        let due = now + Duration::from_millis(12_500);
        assert_eq!(link.poll_timeout(now), Some(due));
        assert_eq!(link.handle_timeout(due - Duration::from_millis(1)), None);
        assert!(
            link_out(&mut link).is_empty(),
            "nothing sent before the interval"
        );
        assert_eq!(link.handle_timeout(due), None);
        let got: Vec<Vec<u8>> = link_out(&mut link)
            .into_iter()
            .flat_map(|(_, d)| client.feed(d))
            .collect();
        assert_eq!(got, vec![vec![0x03]], "one DTLS DPD request");
        assert_eq!(event(DTLS_DPD_SENT), 1);
        // Still silent: repeated after half the interval, still before the switch.
        let again = link.poll_timeout(due).unwrap();
        assert_eq!(again, due + Duration::from_millis(6_250));
        link.handle_timeout(again);
        assert_eq!(link_out(&mut link).len(), 1);
        assert_eq!(event(DTLS_DPD_SENT), 2);

        // openconnect answers with a 1-byte DPD response: counted, and the path is alive.
        let answered = again + Duration::from_secs(1);
        let mut up = Vec::new();
        for d in client.send(&[0x04]) {
            let inb = Inbound {
                peer: addr(9400),
                local: None,
                data: d,
            };
            assert_eq!(link.on_datagram(inb, answered, &mut up), None);
        }
        assert_eq!(event(DTLS_DPD_ANSWERED), 1);
        assert!(up.is_empty());
        // The switch to CSTP (25 s after the last record) and the next request moved on.
        link.handle_timeout(now + Duration::from_secs(25));
        assert!(link.is_active(), "the answer kept DTLS in use");
        assert_eq!(
            link.poll_timeout(answered),
            Some(answered + Duration::from_millis(12_500))
        );

        // A peer that never answers: after switch_to_tcp_secs the channel is given up and no
        // more requests go out.
        let silent = answered + Duration::from_secs(25);
        let mut t = answered;
        while let Some(at) = link.poll_timeout(t).filter(|&at| at <= silent) {
            link.handle_timeout(at);
            t = at;
        }
        assert!(!link.is_active());
        let sent = event(DTLS_DPD_SENT);
        assert_eq!(sent, 4, "two more requests before giving the path up");
        assert_eq!(link.poll_timeout(silent), None);
        link.handle_timeout(silent + Duration::from_secs(60));
        assert_eq!(event(DTLS_DPD_SENT), sent);
    }

    /// A handshake and data both ways over real UDP on loopback, through the demux task; returns
    /// how the link was woken for the upstream DATA datagram sent after the handshake.
    async fn over_udp(own_socket: bool) -> (DtlsLink, Wake) {
        let (srv, ctl) = server().await;
        tokio::spawn(run_demux(Arc::clone(&srv), ctl));
        let psk = [0x42; 32];
        let p = LinkParams {
            own_socket,
            ..params()
        };
        let mut link = srv.register(1, psk, p);
        let csock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        // Connected: datagrams from any other source than the listening port are not received.
        csock.connect(("127.0.0.1", srv.port())).await.unwrap();
        let mut client = Client::new(&link.app_id(), psk, 0);
        client.peer = csock.local_addr().unwrap();
        let wait = Duration::from_secs(5);
        let mut buf = vec![0u8; 65536];
        let mut up = Vec::new();
        let _ = client.stream.do_handshake();
        for _ in 0..20 {
            for d in client.take() {
                csock.send(&d).await.unwrap();
            }
            if client.stream.ssl().is_init_finished() && link.is_active() {
                break;
            }
            if !link.is_active() {
                let wake = tokio::time::timeout(wait, link.recv()).await.unwrap();
                assert!(
                    matches!(wake, Wake::Queued(_)),
                    "the handshake comes through the demux"
                );
                link.receive(wake, Instant::now(), &mut up);
                link.flush().await;
            }
            while let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(100), csock.recv(&mut buf)).await
            {
                client.feed(Bytes::copy_from_slice(&buf[..n]));
            }
        }
        assert!(client.stream.ssl().is_init_finished() && link.is_active());
        assert_eq!(link.established.as_ref().unwrap().own.is_some(), own_socket);

        let pkt = [
            0x45u8, 0, 0, 20, 9, 9, 9, 9, 64, 17, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1,
        ];
        let mut rec = vec![0x00];
        rec.extend_from_slice(&pkt);
        for d in client.send(&rec) {
            csock.send(&d).await.unwrap();
        }
        let wake = tokio::time::timeout(wait, link.recv()).await.unwrap();
        let how = match &wake {
            Wake::Queued(_) => Wake::Closed,
            Wake::Socket => Wake::Socket,
            Wake::Closed => panic!("demux queue closed"),
        };
        link.receive(wake, Instant::now(), &mut up);
        assert_eq!(up.len(), 1);
        assert_eq!(&up[0][..], &pkt[..]);

        // Downstream leaves from the listening address and port (the client's socket is
        // connected to it).
        let mut frame = Vec::new();
        cstp::encode(cstp::FrameType::Data, &pkt, &mut frame).unwrap();
        assert!(link.encrypt_frame(&frame));
        link.flush().await;
        let n = tokio::time::timeout(wait, csock.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(client.feed(Bytes::copy_from_slice(&buf[..n])), vec![rec]);
        (link, how)
    }

    #[tokio::test]
    async fn an_established_channel_gets_its_own_connected_socket_which_the_kernel_prefers() {
        let (link, how) = over_udp(true).await;
        assert!(
            matches!(how, Wake::Socket),
            "data after the handshake reaches the session's own socket, not the demux"
        );
        let events = &link.server.metrics.dtls_events;
        assert_eq!(events.with_label_values(&[DTLS_OWN_SOCKET]).get(), 1);
        assert_eq!(events.with_label_values(&[DTLS_OWN_SOCKET_FAILED]).get(), 0);
        // Its receive buffer is enlarged like the listening socket's: the kernel's default
        // overflowed at one client's full speed. Linux doubles the size asked for, up to
        // twice `net.core.rmem_max`.
        let own = link.established.as_ref().unwrap().own.as_ref().unwrap();
        let got = socket2::SockRef::from(own.socket())
            .recv_buffer_size()
            .unwrap();
        let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(got, 2 * OWN_SOCKET_BUFFER.min(rmem_max));
        assert!(
            rmem_max <= 212_992 || got > 2 * 212_992,
            "the buffer is larger than the kernel's default"
        );
    }

    #[tokio::test]
    async fn datagrams_of_other_peers_on_an_own_socket_are_sorted_by_the_demux() {
        // Between its bind and connect, a session's new socket can receive anyone's datagrams.
        // Stand in for that moment: an established link whose own socket is bound but not
        // connected.
        let (mut first, _) = over_udp(true).await;
        let srv = Arc::clone(&first.server);
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        s.set_reuse_address(true).unwrap();
        s.set_nonblocking(true).unwrap();
        s.bind(&srv.local.into()).unwrap();
        let ep = first.established.as_mut().unwrap();
        let peer = ep.peer;
        ep.own = Some(OwnSocket::new(s.into(), peer).unwrap());

        // A second session's ClientHello, from another client.
        let mut second = srv.register(2, [7; 32], params());
        let other = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        other.connect(srv.local).await.unwrap();
        let hello = hello(&second.app_id());
        other.send(&hello).await.unwrap();

        let wait = Duration::from_secs(5);
        let mut up = Vec::new();
        // Linux picks the newest of two equally good sockets: the unconnected own socket. The
        // first session hands the datagram to the demux, and the second session gets it, from the
        // right peer, through its queue.
        let mut via_own = false;
        let got = loop {
            tokio::select! {
                w = first.recv() => {
                    assert!(matches!(w, Wake::Socket), "nothing else is sent to the first session");
                    via_own = true;
                    first.receive(w, Instant::now(), &mut up);
                }
                w = second.recv() => break w,
                () = tokio::time::sleep(wait) => panic!("the ClientHello was lost"),
            }
        };
        let Wake::Queued(inb) = got else {
            panic!("not queued by the demux")
        };
        assert_eq!(inb.peer, other.local_addr().unwrap());
        assert_eq!(&inb.data[..], &hello[..]);
        assert!(via_own, "the datagram reached the own socket");
        assert!(up.is_empty());
    }

    #[tokio::test]
    async fn without_socket_per_session_everything_goes_through_the_listening_socket() {
        let (link, how) = over_udp(false).await;
        assert!(matches!(how, Wake::Closed), "queued by the demux");
        let events = &link.server.metrics.dtls_events;
        assert_eq!(events.with_label_values(&[DTLS_OWN_SOCKET]).get(), 0);
    }

    #[tokio::test]
    async fn a_wrong_psk_never_establishes() {
        let (srv, _ctl) = server().await;
        let mut link = srv.register(1, [0x42; 32], params());
        let mut client = Client::new(&link.app_id(), [0x43; 32], 9100);
        let now = Instant::now();
        let ev = handshake(&mut client, &mut link, now);
        assert_ne!(ev, Some(LinkEvent::Established { peer: addr(9100) }));
        assert!(link.established.is_none() && !link.is_active());
        if link.pending.is_some() {
            assert_eq!(
                link.handle_timeout(now + HANDSHAKE_TIMEOUT),
                Some(LinkEvent::HandshakeFailed)
            );
        }
        assert!(link.pending.is_none());
    }

    #[tokio::test]
    async fn a_new_handshake_replaces_the_channel_only_once_it_completes() {
        let (srv, mut ctl) = server().await;
        let psk = [0x42; 32];
        let mut link = srv.register(1, psk, params());
        let now = Instant::now();
        let mut first = Client::new(&link.app_id(), psk, 9200);
        handshake(&mut first, &mut link, now);
        assert_eq!(link.established.as_ref().unwrap().peer, addr(9200));

        // A ClientHello from another port (the client redoing DTLS, or someone who saw the
        // App-ID): the old channel keeps carrying data meanwhile.
        let mut second = Client::new(&link.app_id(), psk, 9201);
        let _ = second.stream.do_handshake();
        let mut up = Vec::new();
        for d in second.take() {
            let inb = Inbound {
                peer: addr(9201),
                local: None,
                data: d,
            };
            link.on_datagram(inb, now, &mut up);
        }
        assert!(link.pending.is_some());
        assert_eq!(link.established.as_ref().unwrap().peer, addr(9200));
        let mut frame = Vec::new();
        cstp::encode(cstp::FrameType::Data, &[0x45; 20], &mut frame).unwrap();
        assert!(link.encrypt_frame(&frame));
        let (to_first, to_second): (Vec<_>, Vec<_>) = link_out(&mut link)
            .into_iter()
            .partition(|(p, _)| *p == addr(9200));
        assert_eq!(to_first.len(), 1, "data still goes to the established peer");
        assert!(
            !to_second.is_empty(),
            "the new peer got a ServerHello flight"
        );
        // Application data from the handshaking peer is dropped and counted.
        let stale0 = srv
            .metrics
            .dtls_drops
            .with_label_values(&["stale_peer"])
            .get();
        let inb = Inbound {
            peer: addr(9201),
            local: None,
            data: Bytes::from_static(&[0x17, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0]),
        };
        link.on_datagram(inb, now, &mut up);
        assert_eq!(
            srv.metrics
                .dtls_drops
                .with_label_values(&["stale_peer"])
                .get(),
            stale0 + 1
        );

        // Once the new handshake completes it takes over and the old peer is unbound.
        for (_, d) in to_second {
            second.feed(d);
        }
        assert_eq!(
            handshake(&mut second, &mut link, now),
            Some(LinkEvent::Established { peer: addr(9201) })
        );
        assert_eq!(link.established.as_ref().unwrap().peer, addr(9201));
        let mut forgot = Vec::new();
        while let Ok(Ctl::Forget { peer, .. }) = ctl.try_recv() {
            forgot.push(peer);
        }
        assert!(
            forgot.contains(&addr(9200)),
            "old peer not unbound: {forgot:?}"
        );
    }

    #[tokio::test]
    async fn silence_and_cstp_data_move_downstream_to_cstp_until_the_next_record() {
        let (srv, _ctl) = server().await;
        let psk = [0x42; 32];
        let mut link = srv.register(1, psk, params());
        let mut client = Client::new(&link.app_id(), psk, 9300);
        let now = Instant::now();
        handshake(&mut client, &mut link, now);
        assert!(link.is_active());
        let switch = params().switch_after;
        assert_eq!(link.poll_timeout(now), Some(now + switch));
        link.handle_timeout(now + switch - Duration::from_millis(1));
        assert!(link.is_active());
        link.handle_timeout(now + switch);
        assert!(!link.is_active(), "UDP silent for switch_to_tcp_secs");
        assert_eq!(link.poll_timeout(now + switch), None);

        let later = now + switch + Duration::from_secs(1);
        let mut up = Vec::new();
        for d in client.send(&[0x07]) {
            let inb = Inbound {
                peer: addr(9300),
                local: None,
                data: d,
            };
            link.on_datagram(inb, later, &mut up);
        }
        assert!(link.is_active(), "any valid record revives DTLS");
        link.on_cstp_data();
        assert!(
            !link.is_active(),
            "DATA over CSTP means the client lost DTLS"
        );
    }

    #[tokio::test]
    async fn a_hello_without_the_psk_never_establishes_and_times_out() {
        let (srv, _ctl) = server().await;
        let mut a = srv.register(1, [1; 32], params());
        let now = Instant::now();
        let mut up = Vec::new();
        let ev = a.on_datagram(
            Inbound {
                peer: addr(8000),
                local: None,
                data: Bytes::from(hello(&a.app_id())),
            },
            now,
            &mut up,
        );
        assert_eq!(ev, None, "a ClientHello alone starts a handshake");
        assert!(!a.is_active());
        let flight = &a.pending.as_mut().unwrap().ep.stream.get_mut().out;
        assert!(
            flight.first() == Some(&wire::CONTENT_HANDSHAKE) && flight.get(13) == Some(&2),
            "OpenSSL answered the ClientHello with a ServerHello"
        );
        let t = a.poll_timeout(now).unwrap();
        assert!(t <= now + HANDSHAKE_TIMEOUT);
        assert_eq!(
            a.handle_timeout(now + HANDSHAKE_TIMEOUT),
            Some(LinkEvent::HandshakeFailed)
        );
        assert!(a.pending.is_none());
        assert!(!a.is_active());
    }
}
