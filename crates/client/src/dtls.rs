//! The client end of the DTLS 1.2 PSK channel (protocol doc §7), sans-IO: OpenSSL reads whole
//! datagrams from and writes whole datagrams to an in-memory shim; the tunnel owns the UDP socket.
//!
//! The handshake is openconnect's PSK-NEGOTIATE (its OpenSSL backend, `openssl-dtls.c`):
//! * the key is the 32-byte TLS exporter output for `EXPORTER-openconnect-psk`, no context, taken
//!   from the TLS connection that carried the CONNECT; the PSK identity is `psk`;
//! * the App-ID goes into the ClientHello `session_id`, by handing OpenSSL a made-up session to
//!   "resume" (an `SSL_SESSION` in its ASN.1 form whose id is the App-ID and whose master key is
//!   random): the server matches the session on it and then does a full PSK handshake;
//! * the record MTU is `X-CSTP-Base-MTU` − 28 (IPv4 and UDP headers).
//!
//! Once up with an AES-GCM suite, the records are sealed and opened by the same record layer as
//! the gateway's ([`tunnel_proto::dtls_record`]), in place, and OpenSSL writes nothing more
//! (ChaCha20-Poly1305 stays with OpenSSL).
//!
//! Each record is `[type] + payload` ([`tunnel_proto::dtls`]): IP packets as DATA, DPD
//! requests answered with a one-byte DPD response, and this side's own keepalives and DPD requests
//! from [`ChannelTimers`] (`X-DTLS-Keepalive`, `X-DTLS-DPD`). A channel that fails (handshake
//! timeout or error, DPD dead, closed by the server, a write error) reports why and the tunnel
//! carries on over CSTP.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use foreign_types::ForeignTypeRef;
use openssl::ex_data::Index;
use openssl::ssl::{
    ErrorCode, Ssl, SslContext, SslContextBuilder, SslMethod, SslOptions, SslRef, SslSession,
    SslStream, SslVersion,
};
use tunnel_proto::cstp::FrameType;
use tunnel_proto::dtls::{self as wire, Payload};
use tunnel_proto::dtls_record::{last_epoch_seq, Channel, Opened, Role};

use crate::channel_timers::{ChannelEvent, ChannelTimers};

/// The TLS exporter label of the DTLS PSK (§7.2).
pub(crate) const PSK_LABEL: &[u8] = b"EXPORTER-openconnect-psk";
/// Length of the PSK.
pub(crate) const PSK_LEN: usize = 32;
/// The PSK identity openconnect sends (§7.2).
const PSK_IDENTITY: &[u8] = b"psk\0";
/// The PSK suites offered, best first (the ones the gateway and ocserv pick from).
const CIPHERS: &str = "PSK-AES256-GCM-SHA384:PSK-CHACHA20-POLY1305:PSK-AES128-GCM-SHA256";
/// IPv4 + UDP headers: the record MTU is the link MTU less these (§7.7).
const IP_UDP: u32 = 28;
/// Smallest record MTU set, whatever the server says.
const MIN_RECORD_MTU: u32 = 256;
/// Largest record plaintext (2^14) plus room: a read must take a whole record.
const MAX_PLAINTEXT: usize = 16 * 1024 + 256;
/// Bytes allocated at once for received packets, which are split off it.
const PACKET_ARENA: usize = 64 * 1024;

/// Why the DTLS channel did not come up or went down. The tunnel keeps working over CSTP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DtlsFailure {
    /// The TLS exporter could not derive the PSK from the CONNECT's TLS session.
    #[error("TLS exporter failed: {0}")]
    Exporter(String),
    /// OpenSSL could not set up the DTLS state.
    #[error("DTLS setup failed: {0}")]
    Setup(String),
    /// The UDP socket could not be opened, bound or connected.
    #[error("UDP socket: {0}")]
    Socket(String),
    /// The handshake did not finish within its deadline (UDP blackholed, or no server there).
    #[error("DTLS handshake timed out after {0:?}")]
    HandshakeTimeout(Duration),
    /// The handshake failed (wrong key, alert, protocol error).
    #[error("DTLS handshake failed: {0}")]
    Handshake(String),
    /// Nothing received over DTLS for twice the DPD interval.
    #[error("DTLS dead peer detection: nothing received for {0:?}")]
    PeerDead(Duration),
    /// The server closed the channel or sent a fatal alert.
    #[error("DTLS channel closed by the server: {0}")]
    Closed(String),
    /// Sending or receiving a datagram failed (e.g. ICMP port unreachable: connection refused).
    #[error("UDP I/O failed: {0}")]
    Io(String),
}

impl DtlsFailure {
    /// A short stable label for reports (`handshake_timeout`, `dpd_dead`, ...).
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Exporter(_) => "exporter",
            Self::Setup(_) => "setup",
            Self::Socket(_) => "udp_socket",
            Self::HandshakeTimeout(_) => "handshake_timeout",
            Self::Handshake(_) => "handshake",
            Self::PeerDead(_) => "dpd_dead",
            Self::Closed(_) => "closed",
            Self::Io(_) => "udp_io",
        }
    }
}

/// Where a tunnel's DTLS channel stands.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DtlsStatus {
    /// The client did not offer DTLS.
    NotRequested,
    /// The server's CONNECT answer offered no PSK-NEGOTIATE DTLS (disabled, or no UDP port).
    NotOffered,
    /// The handshake is under way; packets go over CSTP meanwhile.
    Connecting,
    /// Established: IP packets go over DTLS.
    Up,
    /// It failed or went down; packets go over CSTP.
    Failed(DtlsFailure),
}

impl DtlsStatus {
    /// A short stable label: `not_requested`, `not_offered`, `connecting`, `up`, or the failure's
    /// [`DtlsFailure::reason`].
    #[must_use]
    pub fn label(&self) -> &'static str {
        match self {
            Self::NotRequested => "not_requested",
            Self::NotOffered => "not_offered",
            Self::Connecting => "connecting",
            Self::Up => "up",
            Self::Failed(f) => f.reason(),
        }
    }
}

/// Counters of one tunnel's DTLS channel, cumulative since the tunnel came up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DtlsStats {
    /// IP packets sent over DTLS.
    pub packets_sent: u64,
    /// IP packets received over DTLS.
    pub packets_received: u64,
    /// Keepalives sent over DTLS.
    pub keepalives: u64,
    /// DPD requests sent over DTLS.
    pub dpd_sent: u64,
    /// DPD responses received over DTLS.
    pub dpd_answered: u64,
    /// New handshakes started after the channel failed (see `Endpoint::dtls_retry`).
    pub restarts: u64,
}

/// OpenSSL's view of the network: one datagram per read, one datagram per write.
#[derive(Debug, Default)]
struct Shim {
    inbox: Vec<u8>,
    has_inbox: bool,
    out: Vec<u8>,
    lens: VecDeque<usize>,
    /// The highest epoch-1 sequence number OpenSSL wrote: the own record layer goes on after it.
    last_seq: Option<u64>,
}

impl Read for Shim {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.has_inbox {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.has_inbox = false;
        let n = self.inbox.len().min(buf.len());
        if let (Some(dst), Some(src)) = (buf.get_mut(..n), self.inbox.get(..n)) {
            dst.copy_from_slice(src);
        }
        Ok(n)
    }
}

impl Write for Shim {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.last_seq = self.last_seq.max(last_epoch_seq(buf, &[buf.len()]));
        self.out.extend_from_slice(buf);
        self.lens.push_back(buf.len());
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The process-wide client context and the ex-data slot each `Ssl` keeps its PSK in (the PSK
/// callback is per context).
struct Context {
    ctx: SslContext,
    psk: Index<Ssl, [u8; PSK_LEN]>,
}

fn build_context() -> Result<Context, openssl::error::ErrorStack> {
    let psk = Ssl::new_ex_index::<[u8; PSK_LEN]>()?;
    let mut b = SslContextBuilder::new(SslMethod::dtls())?;
    b.set_min_proto_version(Some(SslVersion::DTLS1_2))?;
    b.set_max_proto_version(Some(SslVersion::DTLS1_2))?;
    b.set_cipher_list(CIPHERS)?;
    b.set_options(SslOptions::NO_TICKET | SslOptions::NO_QUERY_MTU | SslOptions::NO_RENEGOTIATION);
    b.set_psk_client_callback(move |ssl, _hint, identity, key| {
        let k = ssl
            .ex_data(psk)
            .ok_or_else(openssl::error::ErrorStack::get)?;
        let (Some(id), Some(dst)) = (
            identity.get_mut(..PSK_IDENTITY.len()),
            key.get_mut(..PSK_LEN),
        ) else {
            return Err(openssl::error::ErrorStack::get());
        };
        id.copy_from_slice(PSK_IDENTITY);
        dst.copy_from_slice(k);
        Ok(PSK_LEN)
    });
    Ok(Context {
        ctx: b.build(),
        psk,
    })
}

fn context() -> Result<&'static Context, DtlsFailure> {
    static CTX: OnceLock<Result<Context, String>> = OnceLock::new();
    CTX.get_or_init(|| build_context().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| DtlsFailure::Setup(e.clone()))
}

/// The made-up session whose id carries the App-ID: OpenSSL's `SSL_SESSION` ASN.1 form
/// (SEQUENCE of: format version 1, protocol DTLS 1.2, cipher PSK-AES256-GCM-SHA384, session id,
/// master key), with a random master key. It is never resumed: the server does a full handshake.
fn app_id_session(app_id: &[u8]) -> Result<Vec<u8>, DtlsFailure> {
    let sid_len = u8::try_from(app_id.len())
        .ok()
        .filter(|l| (1..=32).contains(l))
        .ok_or_else(|| DtlsFailure::Setup(format!("App-ID of {} bytes", app_id.len())))?;
    let mut master = [0u8; 48];
    openssl::rand::rand_bytes(&mut master).map_err(|e| DtlsFailure::Setup(e.to_string()))?;
    let mut inner = vec![
        0x02, 0x01, 0x01, 0x02, 0x03, 0x00, 0xFE, 0xFD, 0x04, 0x02, 0x00, 0xA9,
    ];
    inner.extend_from_slice(&[0x04, sid_len]);
    inner.extend_from_slice(app_id);
    inner.extend_from_slice(&[0x04, 48]);
    inner.extend_from_slice(&master);
    // At most 12 + 34 + 50 = 96 bytes: a one-byte DER length.
    let mut der = vec![0x30, u8::try_from(inner.len()).unwrap_or(0x7f)];
    der.extend_from_slice(&inner);
    Ok(der)
}

/// `DTLSv1_get_timeout` / `DTLSv1_handle_timeout` (ssl.h macros the openssl crate lacks).
const DTLS_CTRL_GET_TIMEOUT: libc::c_int = 73;
const DTLS_CTRL_HANDLE_TIMEOUT: libc::c_int = 74;

/// Time left on the handshake retransmit timer, if it runs.
#[allow(unsafe_code)]
fn retransmit_in(ssl: &SslRef) -> Option<Duration> {
    let mut tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    // SAFETY: `ssl` is a live SSL object borrowed for the call; DTLS_CTRL_GET_TIMEOUT writes one
    // `struct timeval` through `parg`, which points to `tv`.
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

/// Retransmits the last handshake flight if its timer expired.
#[allow(unsafe_code)]
fn handle_retransmit(ssl: &SslRef) {
    // SAFETY: `ssl` is a live SSL object borrowed for the call; DTLS_CTRL_HANDLE_TIMEOUT takes no
    // argument and writes only through the SSL's own BIO, our `Shim`.
    unsafe {
        openssl_sys::SSL_ctrl(
            ssl.as_ptr(),
            DTLS_CTRL_HANDLE_TIMEOUT,
            0,
            std::ptr::null_mut(),
        );
    }
}

/// What a datagram or a timer did to the channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ChannelChange {
    /// The handshake completed.
    Up,
    /// The channel failed; drop it and use CSTP.
    Failed(DtlsFailure),
}

/// Settings of one channel.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChannelParams {
    /// `X-CSTP-Base-MTU` (or the client's own link MTU).
    pub(crate) base_mtu: u32,
    /// How long the handshake may take.
    pub(crate) handshake_timeout: Duration,
    /// `X-DTLS-DPD` (or an override).
    pub(crate) dpd: Option<Duration>,
    /// `X-DTLS-Keepalive` (or an override).
    pub(crate) keepalive: Option<Duration>,
}

/// One DTLS channel, sans-IO. Datagrams to send wait in it until [`Self::datagrams`].
pub(crate) struct DtlsChannel {
    stream: SslStream<Shim>,
    params: ChannelParams,
    /// `Some` while the handshake runs.
    handshake_deadline: Option<Instant>,
    timers: Option<ChannelTimers>,
    /// The own record layer, once up with an AES-GCM suite.
    records: Option<Channel>,
    /// Received packets are copied into it and split off as `Bytes`.
    plain: BytesMut,
    /// OpenSSL's decrypted records are read into it.
    read_buf: Vec<u8>,
    record: Vec<u8>,
    stats: DtlsStats,
}

impl std::fmt::Debug for DtlsChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DtlsChannel")
            .field("up", &self.is_up())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl DtlsChannel {
    /// Starts a handshake for `app_id` with key `psk` at `now`: the ClientHello is ready to send.
    pub(crate) fn start(
        app_id: &[u8],
        psk: [u8; PSK_LEN],
        params: ChannelParams,
        now: Instant,
    ) -> Result<Self, DtlsFailure> {
        let cx = context()?;
        let setup = |e: openssl::error::ErrorStack| DtlsFailure::Setup(e.to_string());
        let mut ssl = Ssl::new(&cx.ctx).map_err(setup)?;
        ssl.set_ex_data(cx.psk, psk);
        ssl.set_mtu(params.base_mtu.saturating_sub(IP_UDP).max(MIN_RECORD_MTU))
            .map_err(setup)?;
        let session = SslSession::from_der(&app_id_session(app_id)?).map_err(setup)?;
        // SAFETY: the session was built for this context's protocol version and one of its
        // ciphers; OpenSSL takes its own reference to it.
        #[allow(unsafe_code)]
        unsafe {
            ssl.set_session(&session).map_err(setup)?;
        }
        ssl.set_connect_state();
        let stream = SslStream::new(ssl, Shim::default()).map_err(setup)?;
        let mut ch = Self {
            stream,
            params,
            handshake_deadline: Some(now + params.handshake_timeout),
            timers: None,
            records: None,
            plain: BytesMut::new(),
            read_buf: Vec::new(),
            record: Vec::with_capacity(2048),
            stats: DtlsStats::default(),
        };
        match ch.stream.do_handshake() {
            Err(e) if e.code() == ErrorCode::WANT_READ => Ok(ch),
            Ok(()) => Err(DtlsFailure::Handshake("finished without the server".into())),
            Err(e) => Err(DtlsFailure::Handshake(e.to_string())),
        }
    }

    /// True once the handshake completed.
    pub(crate) fn is_up(&self) -> bool {
        self.timers.is_some()
    }

    /// The counters.
    pub(crate) fn stats(&self) -> DtlsStats {
        self.stats
    }

    /// Changes the keepalive and DPD intervals.
    pub(crate) fn set_timers(&mut self, dpd: Option<Duration>, keepalive: Option<Duration>) {
        self.params.dpd = dpd;
        self.params.keepalive = keepalive;
        if let Some(t) = self.timers.as_mut() {
            t.set(dpd, keepalive);
        }
    }

    /// Every datagram waiting to be sent: their bytes back to back, and their lengths. Call
    /// [`Self::sent_all`] once they are sent.
    pub(crate) fn datagrams(&mut self) -> (&[u8], &[usize]) {
        let shim = self.stream.get_mut();
        (&shim.out, shim.lens.make_contiguous())
    }

    /// The datagrams returned by [`Self::datagrams`] were sent (or given up on).
    pub(crate) fn sent_all(&mut self) {
        let shim = self.stream.get_mut();
        shim.out.clear();
        shim.lens.clear();
    }

    /// True if datagrams wait to be sent.
    pub(crate) fn has_datagrams(&self) -> bool {
        !self.stream.get_ref().lens.is_empty()
    }

    /// Handles one datagram from the server, which may be opened in place. IP packets it carried
    /// are appended to `packets`.
    pub(crate) fn on_datagram(
        &mut self,
        d: &mut [u8],
        now: Instant,
        packets: &mut VecDeque<Bytes>,
    ) -> Option<ChannelChange> {
        if self.records.is_some() {
            return self
                .open_records(d, now, packets)
                .map(ChannelChange::Failed);
        }
        let shim = self.stream.get_mut();
        shim.inbox.clear();
        shim.inbox.extend_from_slice(d);
        shim.has_inbox = true;
        let mut change = None;
        if self.handshake_deadline.is_some() {
            match self.stream.do_handshake() {
                Ok(()) => {
                    self.handshake_deadline = None;
                    self.timers = Some(ChannelTimers::new(
                        self.params.dpd,
                        self.params.keepalive,
                        now,
                    ));
                    change = Some(ChannelChange::Up);
                }
                Err(e) if e.code() == ErrorCode::WANT_READ => return None,
                Err(e) => {
                    return Some(ChannelChange::Failed(DtlsFailure::Handshake(e.to_string())))
                }
            }
        }
        // Records behind the server's Finished in the same datagram are OpenSSL's to read; then
        // the own record layer takes over, after the last record OpenSSL wrote.
        if let Some(failed) = self.read_records(now, packets) {
            return Some(ChannelChange::Failed(failed));
        }
        let shim = self.stream.get_mut();
        shim.has_inbox = false;
        if change.is_some() {
            let last = shim.last_seq;
            self.records =
                last.and_then(|l| Channel::take_over(self.stream.ssl(), Role::Client, l, None));
        }
        change
    }

    /// Opens the records of one datagram with the own record layer, in place.
    fn open_records(
        &mut self,
        d: &mut [u8],
        now: Instant,
        packets: &mut VecDeque<Bytes>,
    ) -> Option<DtlsFailure> {
        for (h, record) in wire::RecordsMut::new(d) {
            let ch = self.records.as_mut()?;
            // Forgeries, replays and a copy of the server's last flight are dropped unseen.
            match ch.open(&h, record) {
                Ok(Opened::Data(plain)) => {
                    if let Some(f) = self.on_record(plain, now, packets) {
                        return Some(f);
                    }
                }
                Ok(Opened::Closed) => return Some(DtlsFailure::Closed("close_notify".into())),
                Ok(Opened::Warning | Opened::Handshake) | Err(_) => {}
            }
        }
        None
    }

    /// Reads the records OpenSSL has decrypted (a suite the own layer does not do, or records
    /// in the datagram that completed the handshake).
    fn read_records(&mut self, now: Instant, packets: &mut VecDeque<Bytes>) -> Option<DtlsFailure> {
        let mut buf = std::mem::take(&mut self.read_buf);
        buf.resize(MAX_PLAINTEXT, 0);
        let failed = loop {
            let n = match self.stream.ssl_read(&mut buf) {
                Ok(0) => break None,
                Ok(n) => n,
                Err(e) if e.code() == ErrorCode::WANT_READ => break None,
                Err(e) if e.code() == ErrorCode::ZERO_RETURN => {
                    break Some(DtlsFailure::Closed("close_notify".into()))
                }
                Err(e) => break Some(DtlsFailure::Closed(e.to_string())),
            };
            if let Some(f) = buf
                .get(..n)
                .and_then(|plain| self.on_record(plain, now, packets))
            {
                break Some(f);
            }
        };
        self.read_buf = buf;
        failed
    }

    /// Handles one decrypted application-data record: `[type] + payload`.
    fn on_record(
        &mut self,
        plain: &[u8],
        now: Instant,
        packets: &mut VecDeque<Bytes>,
    ) -> Option<DtlsFailure> {
        if let Some(t) = self.timers.as_mut() {
            t.on_receive(now);
        }
        match wire::decode(plain) {
            Ok(Payload::Data(packet)) => {
                self.stats.packets_received += 1;
                // Packets share one allocation, split off as `Bytes` (no allocation each).
                if self.plain.capacity() < packet.len() {
                    self.plain.reserve(PACKET_ARENA.max(packet.len()));
                }
                self.plain.extend_from_slice(packet);
                packets.push_back(self.plain.split().freeze());
            }
            Ok(Payload::DpdRequest(_)) => {
                // openconnect answers a server's DPD with a one-byte response (§7.6).
                return self.write(FrameType::DpdResponse, &[], now).err();
            }
            Ok(Payload::DpdResponse) => self.stats.dpd_answered += 1,
            Ok(_) | Err(_) => {}
        }
        None
    }

    fn write(&mut self, kind: FrameType, payload: &[u8], now: Instant) -> Result<(), DtlsFailure> {
        self.record.clear();
        wire::encode(kind, payload, &mut self.record);
        if let Some(ch) = self.records.as_mut() {
            let shim = self.stream.get_mut();
            let len = ch
                .seal(&self.record, &mut shim.out)
                .ok_or_else(|| DtlsFailure::Io("DTLS sequence numbers used up".into()))?;
            shim.lens.push_back(len);
        } else {
            self.stream
                .ssl_write(&self.record)
                .map_err(|e| DtlsFailure::Io(format!("DTLS write: {e}")))?;
        }
        if let Some(t) = self.timers.as_mut() {
            t.on_send(now);
        }
        Ok(())
    }

    /// Encrypts one IP packet as a DATA record. Fails if the channel is not up or OpenSSL refuses.
    pub(crate) fn send_packet(&mut self, packet: &[u8], now: Instant) -> Result<(), DtlsFailure> {
        if !self.is_up() {
            return Err(DtlsFailure::Io("DTLS is not up".into()));
        }
        self.write(FrameType::Data, packet, now)?;
        self.stats.packets_sent += 1;
        Ok(())
    }

    /// When [`Self::handle_timeout`] must run next.
    pub(crate) fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        match self.handshake_deadline {
            Some(deadline) => {
                Some(retransmit_in(self.stream.ssl()).map_or(deadline, |d| (now + d).min(deadline)))
            }
            None => self.timers.as_ref().and_then(ChannelTimers::poll_timeout),
        }
    }

    /// Runs the timers: the handshake deadline and retransmits, then keepalive and DPD.
    pub(crate) fn handle_timeout(&mut self, now: Instant) -> Option<ChannelChange> {
        if let Some(deadline) = self.handshake_deadline {
            if now >= deadline {
                return Some(ChannelChange::Failed(DtlsFailure::HandshakeTimeout(
                    self.params.handshake_timeout,
                )));
            }
            handle_retransmit(self.stream.ssl());
            return None;
        }
        while let Some(ev) = self.timers.as_mut().and_then(|t| t.handle_timeout(now)) {
            let sent = match ev {
                ChannelEvent::Dead => {
                    let dpd = self.params.dpd.unwrap_or_default();
                    return Some(ChannelChange::Failed(DtlsFailure::PeerDead(dpd * 2)));
                }
                ChannelEvent::SendDpd => {
                    self.stats.dpd_sent += 1;
                    self.write(FrameType::DpdRequest, &[], now)
                }
                ChannelEvent::SendKeepalive => {
                    self.stats.keepalives += 1;
                    self.write(FrameType::Keepalive, &[], now)
                }
            };
            if let Err(f) = sent {
                return Some(ChannelChange::Failed(f));
            }
        }
        None
    }

    /// Queues a close_notify alert (a logout's courtesy to the server). With the own record
    /// layer it seals the alert itself: OpenSSL's would reuse a sequence number.
    pub(crate) fn close(&mut self) {
        if !self.is_up() {
            return;
        }
        match self.records.as_mut() {
            Some(ch) => {
                let shim = self.stream.get_mut();
                if let Some(len) = ch.seal_close_notify(&mut shim.out) {
                    shim.lens.push_back(len);
                }
            }
            None => {
                let _ = self.stream.shutdown();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DTLS 1.2 PSK server set up as the gateway's (`crates/gateway/src/dtls.rs`): the same
    /// suites, no tickets or session cache, an explicit MTU, the key for any identity.
    struct Server {
        stream: SslStream<Shim>,
        identity: std::sync::Arc<std::sync::Mutex<Option<Vec<u8>>>>,
    }

    impl Server {
        fn new(psk: [u8; 32]) -> Self {
            Self::with_ciphers(psk, CIPHERS)
        }

        fn with_ciphers(psk: [u8; 32], ciphers: &str) -> Self {
            let identity = std::sync::Arc::new(std::sync::Mutex::new(None));
            let seen = std::sync::Arc::clone(&identity);
            let mut b = SslContextBuilder::new(SslMethod::dtls()).unwrap();
            b.set_min_proto_version(Some(SslVersion::DTLS1_2)).unwrap();
            b.set_max_proto_version(Some(SslVersion::DTLS1_2)).unwrap();
            b.set_cipher_list(ciphers).unwrap();
            b.set_options(SslOptions::NO_TICKET | SslOptions::NO_QUERY_MTU);
            b.set_session_cache_mode(openssl::ssl::SslSessionCacheMode::OFF);
            b.set_psk_server_callback(move |_, id, key| {
                *seen.lock().unwrap() = id.map(<[u8]>::to_vec);
                key[..32].copy_from_slice(&psk);
                Ok(32)
            });
            let ctx = b.build();
            let mut ssl = Ssl::new(&ctx).unwrap();
            ssl.set_mtu(1400).unwrap();
            ssl.set_accept_state();
            Self {
                stream: SslStream::new(ssl, Shim::default()).unwrap(),
                identity,
            }
        }

        fn take(&mut self) -> Vec<Vec<u8>> {
            take_all(self.stream.get_mut())
        }

        /// Feeds one datagram; returns decrypted records (after the handshake).
        fn feed(&mut self, d: &[u8]) -> Vec<Vec<u8>> {
            let shim = self.stream.get_mut();
            shim.inbox = d.to_vec();
            shim.has_inbox = true;
            if !self.stream.ssl().is_init_finished() {
                match self.stream.do_handshake() {
                    Ok(()) => {}
                    Err(e) if e.code() == ErrorCode::WANT_READ => return vec![],
                    Err(e) => panic!("server handshake failed: {e}"),
                }
            }
            let mut out = vec![];
            let mut buf = vec![0u8; MAX_PLAINTEXT];
            while let Ok(n) = self.stream.ssl_read(&mut buf) {
                out.push(buf[..n].to_vec());
            }
            out
        }

        fn send(&mut self, record: &[u8]) -> Vec<Vec<u8>> {
            self.stream.ssl_write(record).unwrap();
            self.take()
        }
    }

    fn take_all(shim: &mut Shim) -> Vec<Vec<u8>> {
        let mut v = vec![];
        while let Some(len) = shim.lens.pop_front() {
            v.push(shim.out.drain(..len).collect());
        }
        v
    }

    fn client_out(c: &mut DtlsChannel) -> Vec<Vec<u8>> {
        let (out, lens) = c.datagrams();
        let mut off = 0;
        let v = lens
            .iter()
            .map(|&l| {
                off += l;
                out[off - l..off].to_vec()
            })
            .collect();
        c.sent_all();
        v
    }

    fn params() -> ChannelParams {
        ChannelParams {
            base_mtu: 1500,
            handshake_timeout: Duration::from_secs(5),
            dpd: Some(Duration::from_secs(10)),
            keepalive: Some(Duration::from_secs(4)),
        }
    }

    /// Runs the handshake in memory; returns the client's last change.
    fn handshake(c: &mut DtlsChannel, s: &mut Server, now: Instant) -> Option<ChannelChange> {
        let mut last = None;
        let mut packets = VecDeque::new();
        for _ in 0..10 {
            let to_server = client_out(c);
            if to_server.is_empty() && c.is_up() {
                break;
            }
            for d in to_server {
                s.feed(&d);
            }
            for mut d in s.take() {
                if let Some(ch) = c.on_datagram(&mut d, now, &mut packets) {
                    last = Some(ch);
                }
            }
        }
        last
    }

    #[test]
    fn client_hello_carries_the_app_id_as_session_id() {
        let app_id: [u8; 32] = std::array::from_fn(|i| u8::try_from(i + 100).unwrap());
        let mut c = DtlsChannel::start(&app_id, [7; 32], params(), Instant::now()).unwrap();
        let hello = client_out(&mut c);
        assert_eq!(hello.len(), 1, "one ClientHello datagram");
        assert_eq!(wire::client_hello_session_id(&hello[0]), Ok(&app_id[..]));
        assert!(!c.is_up());
    }

    #[test]
    fn psk_handshake_with_identity_psk_then_packets_and_dpd_both_ways() {
        let psk = [0x42; 32];
        let now = Instant::now();
        let mut c = DtlsChannel::start(&[9; 32], psk, params(), now).unwrap();
        let mut s = Server::new(psk);
        assert_eq!(handshake(&mut c, &mut s, now), Some(ChannelChange::Up));
        assert!(c.is_up());
        assert_eq!(s.identity.lock().unwrap().as_deref(), Some(&b"psk"[..]));
        assert_eq!(
            s.stream.ssl().current_cipher().unwrap().name(),
            "PSK-AES256-GCM-SHA384"
        );

        // Upstream: one DATA record per packet.
        c.send_packet(&[0x45, 1, 2, 3], now).unwrap();
        let up: Vec<_> = client_out(&mut c).iter().flat_map(|d| s.feed(d)).collect();
        assert_eq!(up, vec![vec![0x00, 0x45, 1, 2, 3]]);

        // Downstream DATA comes out as the packet, without the type byte; a server DPD request
        // is answered with a one-byte DPD response; keepalives are swallowed.
        let mut packets = VecDeque::new();
        for rec in [&[0x00, 0x45, 9][..], &[0x03, 1, 2, 3, 4], &[0x07]] {
            for mut d in s.send(rec) {
                assert_eq!(c.on_datagram(&mut d, now, &mut packets), None);
            }
        }
        assert_eq!(packets, VecDeque::from([Bytes::from_static(&[0x45, 9])]));
        let answers: Vec<_> = client_out(&mut c).iter().flat_map(|d| s.feed(d)).collect();
        assert_eq!(answers, vec![vec![0x04]]);
        assert_eq!(c.stats().packets_sent, 1);
        assert_eq!(c.stats().packets_received, 1);
    }

    #[test]
    fn every_suite_carries_packets_both_ways_and_aes_gcm_on_the_own_record_layer() {
        for (suite, own) in [
            ("PSK-AES256-GCM-SHA384", true),
            ("PSK-AES128-GCM-SHA256", true),
            ("PSK-CHACHA20-POLY1305", false),
        ] {
            let psk = [0x24; 32];
            let now = Instant::now();
            let mut c = DtlsChannel::start(&[8; 32], psk, params(), now).unwrap();
            let mut s = Server::with_ciphers(psk, suite);
            assert_eq!(handshake(&mut c, &mut s, now), Some(ChannelChange::Up));
            assert_eq!(s.stream.ssl().current_cipher().unwrap().name(), suite);
            assert_eq!(c.records.is_some(), own, "{suite}");
            // Many records each way: sequence numbers and nonces go on past the handshake's.
            for i in 0..50u8 {
                c.send_packet(&[0x45, i], now).unwrap();
                let up: Vec<_> = client_out(&mut c).iter().flat_map(|d| s.feed(d)).collect();
                assert_eq!(up, vec![vec![0x00, 0x45, i]], "{suite}");
                let mut packets = VecDeque::new();
                for mut d in s.send(&[0x00, 0x45, i, 7]) {
                    assert_eq!(c.on_datagram(&mut d, now, &mut packets), None);
                }
                assert_eq!(packets, VecDeque::from([Bytes::from(vec![0x45, i, 7])]));
            }
            // The server's DPD request is answered through the same layer.
            let mut packets = VecDeque::new();
            for mut d in s.send(&[0x03, 9]) {
                c.on_datagram(&mut d, now, &mut packets);
            }
            let answers: Vec<_> = client_out(&mut c).iter().flat_map(|d| s.feed(d)).collect();
            assert_eq!(answers, vec![vec![0x04]], "{suite}");
        }
    }

    #[test]
    fn close_notify_from_either_side_reaches_the_other() {
        let psk = [0x11; 32];
        let now = Instant::now();
        // The client's close: OpenSSL's server reads a close_notify.
        let mut c = DtlsChannel::start(&[1; 32], psk, params(), now).unwrap();
        let mut s = Server::new(psk);
        handshake(&mut c, &mut s, now);
        assert!(c.records.is_some());
        c.close();
        let out = client_out(&mut c);
        assert_eq!(out.len(), 1);
        let shim = s.stream.get_mut();
        shim.inbox.clone_from(&out[0]);
        shim.has_inbox = true;
        let mut buf = [0u8; 64];
        let e = s.stream.ssl_read(&mut buf).unwrap_err();
        assert_eq!(e.code(), ErrorCode::ZERO_RETURN);
        // The server's close: the client's channel fails as closed.
        let mut c = DtlsChannel::start(&[2; 32], psk, params(), now).unwrap();
        let mut s = Server::new(psk);
        handshake(&mut c, &mut s, now);
        let _ = s.stream.shutdown();
        let mut packets = VecDeque::new();
        let changes: Vec<_> = s
            .take()
            .iter_mut()
            .filter_map(|d| c.on_datagram(d, now, &mut packets))
            .collect();
        assert_eq!(
            changes,
            vec![ChannelChange::Failed(DtlsFailure::Closed(
                "close_notify".into()
            ))]
        );
    }

    #[test]
    fn replays_forgeries_and_a_late_copy_of_the_servers_last_flight_are_dropped() {
        let psk = [0x33; 32];
        let now = Instant::now();
        let mut c = DtlsChannel::start(&[4; 32], psk, params(), now).unwrap();
        let mut s = Server::new(psk);
        // The handshake by hand, keeping the server's last flight.
        let mut last_flight = vec![];
        let mut packets = VecDeque::new();
        while !c.is_up() {
            for d in client_out(&mut c) {
                s.feed(&d);
            }
            last_flight = s.take();
            for d in &last_flight {
                c.on_datagram(&mut d.clone(), now, &mut packets);
            }
        }
        assert!(c.records.is_some());
        for d in &last_flight {
            assert_eq!(c.on_datagram(&mut d.clone(), now, &mut packets), None);
        }
        let data = s.send(&[0x00, 0x45, 1]);
        for d in &data {
            c.on_datagram(&mut d.clone(), now, &mut packets);
        }
        // The same record again, and one with a bit flipped: nothing more.
        let mut flipped = data[0].clone();
        *flipped.last_mut().unwrap() ^= 1;
        for mut d in [data[0].clone(), flipped] {
            assert_eq!(c.on_datagram(&mut d, now, &mut packets), None);
        }
        assert_eq!(packets, VecDeque::from([Bytes::from_static(&[0x45, 1])]));
        assert!(client_out(&mut c).is_empty(), "nothing answered");
        assert_eq!(c.stats().packets_received, 1);
    }

    #[test]
    fn keepalive_and_dpd_follow_the_dtls_timers_and_silence_kills_the_channel() {
        let psk = [1; 32];
        let t0 = Instant::now();
        let mut c = DtlsChannel::start(&[3; 32], psk, params(), t0).unwrap();
        let mut s = Server::new(psk);
        handshake(&mut c, &mut s, t0);
        // Keepalive after 4 s of sending nothing.
        assert_eq!(c.poll_timeout(t0), Some(t0 + Duration::from_secs(4)));
        assert_eq!(c.handle_timeout(t0 + Duration::from_secs(4)), None);
        let recs: Vec<_> = client_out(&mut c).iter().flat_map(|d| s.feed(d)).collect();
        assert_eq!(recs, vec![vec![0x07]]);
        // DPD after 10 s of hearing nothing; the answer counts.
        assert_eq!(c.handle_timeout(t0 + Duration::from_secs(10)), None);
        let recs: Vec<_> = client_out(&mut c).iter().flat_map(|d| s.feed(d)).collect();
        assert!(recs.contains(&vec![0x03]), "{recs:?}");
        let mut packets = VecDeque::new();
        for mut d in s.send(&[0x04]) {
            c.on_datagram(&mut d, t0 + Duration::from_secs(11), &mut packets);
        }
        assert_eq!((c.stats().dpd_sent, c.stats().dpd_answered), (1, 1));
        // Silence for 2 × DPD after that: dead.
        let mut dead = None;
        let mut now = t0 + Duration::from_secs(11);
        while dead.is_none() {
            now = c.poll_timeout(now).unwrap();
            dead = c.handle_timeout(now);
        }
        assert_eq!(now, t0 + Duration::from_secs(31));
        assert_eq!(
            dead,
            Some(ChannelChange::Failed(DtlsFailure::PeerDead(
                Duration::from_secs(20)
            )))
        );
    }

    #[test]
    fn a_wrong_key_never_comes_up_and_the_handshake_times_out() {
        let now = Instant::now();
        let mut c = DtlsChannel::start(&[5; 32], [1; 32], params(), now).unwrap();
        let mut s = Server::new([2; 32]);
        let mut packets = VecDeque::new();
        for _ in 0..10 {
            for d in client_out(&mut c) {
                let shim = s.stream.get_mut();
                shim.inbox = d;
                shim.has_inbox = true;
                let _ = s.stream.do_handshake();
            }
            for mut d in s.take() {
                assert_eq!(c.on_datagram(&mut d, now, &mut packets), None);
            }
        }
        // The server cannot read the client's Finished, and DTLS drops such records silently.
        assert!(!c.is_up());
        assert_eq!(
            c.handle_timeout(now + Duration::from_secs(5)),
            Some(ChannelChange::Failed(DtlsFailure::HandshakeTimeout(
                Duration::from_secs(5)
            )))
        );
    }

    #[test]
    fn an_unanswered_handshake_retransmits_then_times_out() {
        let t0 = Instant::now();
        let mut c = DtlsChannel::start(&[5; 32], [1; 32], params(), t0).unwrap();
        let first = client_out(&mut c);
        let at = c.poll_timeout(t0).unwrap();
        assert!(
            at > t0 && at <= t0 + Duration::from_secs(2),
            "retransmit timer"
        );
        // OpenSSL's timer runs on the real clock: wait for it, then the hello goes again.
        std::thread::sleep(at - t0 + Duration::from_millis(20));
        assert_eq!(c.handle_timeout(Instant::now()), None);
        assert_eq!(client_out(&mut c).len(), first.len(), "ClientHello resent");
        assert_eq!(
            c.handle_timeout(t0 + Duration::from_secs(5)),
            Some(ChannelChange::Failed(DtlsFailure::HandshakeTimeout(
                Duration::from_secs(5)
            )))
        );
    }
}
