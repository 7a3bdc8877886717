//! The packet path between the TUN device and the sessions.
//!
//! Downstream (network to client): on each data-plane thread ([`crate::workers`]) one task reads
//! that thread's queue of the TUN in batches (with offload on, one read returns a GSO super-packet
//! that tun-rs splits into MTU-sized segments), finds each packet's session in the lock-free
//! [`SessionTable`], and queues a ready CSTP frame on that session's bounded queue. The frame is
//! built once, header included, in a shared arena chunk, so the session's writer hands it to TLS
//! as is. A full queue drops that client's packet and nobody else's.
//!
//! Upstream (client to network): each session writes the checked IP packets of one read of its
//! connection straight to the TUN with `send_multiple` ([`Upstream`]), which coalesces TCP/UDP
//! flows (GRO) into few TUN writes when offload is on.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;
use tun_rs::{AsyncDevice, DeviceBuilder, GROTable, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};
use tunnel_proto::cstp;

use crate::metrics::{DropReason, Metrics};
use crate::packet;
use crate::table::SessionTable;

/// How the TUN device is set up.
#[derive(Debug, Clone)]
pub struct TunParams {
    /// Interface name.
    pub name: String,
    /// The gateway's IPv4 address on the TUN and the pool's prefix length.
    pub v4: (Ipv4Addr, u8),
    /// The gateway's IPv6 address and prefix length, when the pool has IPv6.
    pub v6: Option<(Ipv6Addr, u8)>,
    /// Interface MTU (the tunnel MTU).
    pub mtu: u16,
    /// Try GSO/GRO offload (falls back to plain I/O if the kernel refuses).
    pub offload: bool,
    /// Open the device with several queues (`IFF_MULTI_QUEUE`), so that data-plane threads can
    /// each attach their own ([`Tun::attach_queue`]).
    pub multi_queue: bool,
}

/// An open TUN device and whether offload is on.
#[derive(Clone)]
pub struct Tun {
    /// The device.
    pub dev: Arc<AsyncDevice>,
    /// True when GSO/GRO offload is active.
    pub offload: bool,
}

impl std::fmt::Debug for Tun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tun")
            .field("offload", &self.offload)
            .finish_non_exhaustive()
    }
}

/// Creates and brings up the TUN device.
pub fn open_tun(p: &TunParams) -> io::Result<Tun> {
    let build = |offload: bool| {
        let mut b = DeviceBuilder::new()
            .name(p.name.clone())
            .mtu(p.mtu)
            .ipv4(p.v4.0, p.v4.1, None)
            .tx_queue_len(4096)
            .offload(offload)
            .multi_queue(p.multi_queue)
            .enable(true);
        if let Some((a, len)) = p.v6 {
            b = b.ipv6(a, len);
        }
        b.build_async()
    };
    if p.offload {
        match build(true) {
            Ok(dev) => {
                return Ok(Tun {
                    dev: Arc::new(dev),
                    offload: true,
                })
            }
            Err(e) => {
                tracing::warn!(error = %e, tun = %p.name, "TUN offload unavailable; using plain I/O")
            }
        }
    }
    Ok(Tun {
        dev: Arc::new(build(false)?),
        offload: false,
    })
}

impl Tun {
    /// Opens another queue of this multi-queue device, registered with the current tokio runtime,
    /// and makes it the calling thread's queue for upstream writes ([`Upstream::write`]). Returns
    /// the queue, for the thread's downstream reader ([`run_downstream`]).
    ///
    /// Queues are numbered in the order they are attached (the device's first one is 0), which is
    /// what the steering program counts on ([`crate::steering`]).
    pub fn attach_queue(&self, thread: u16) -> io::Result<Self> {
        let queue = Self {
            dev: Arc::new(self.dev.try_clone()?),
            offload: self.offload,
        };
        SCRATCH.with(|cell| cell.borrow_mut().queue = Some(queue.clone()));
        THREAD.set(thread);
        Ok(queue)
    }
}

/// Forgets the calling thread's own queue ([`Tun::attach_queue`]); its upstream writes go to the
/// main queue again. Called before the thread's runtime goes away.
pub fn detach_queue() {
    SCRATCH.with(|cell| cell.borrow_mut().queue = None);
    THREAD.set(NO_THREAD);
}

/// [`thread_index`] of a thread without its own queue (the main runtime's).
pub const NO_THREAD: u16 = u16::MAX;

thread_local! {
    static THREAD: std::cell::Cell<u16> = const { std::cell::Cell::new(NO_THREAD) };
}

/// The data-plane thread the caller runs on (the number given to [`Tun::attach_queue`]), or
/// [`NO_THREAD`].
#[must_use]
pub fn thread_index() -> u16 {
    THREAD.get()
}

/// Bytes per arena chunk that downstream frames are carved from (about 40 full-size frames).
const ARENA_CHUNK: usize = 64 * 1024;

/// Builds CSTP DATA frames in shared chunks: one allocation per chunk, not per packet.
#[derive(Debug, Default)]
struct FrameArena {
    buf: BytesMut,
}

impl FrameArena {
    fn frame(&mut self, pkt: &[u8]) -> Option<Bytes> {
        let mut hdr = [0u8; cstp::HEADER_LEN];
        cstp::write_header(cstp::FrameType::Data, pkt.len(), &mut hdr).ok()?;
        let need = cstp::HEADER_LEN + pkt.len();
        if self.buf.capacity() < need {
            self.buf = BytesMut::with_capacity(ARENA_CHUNK.max(need));
        }
        self.buf.extend_from_slice(&hdr);
        self.buf.extend_from_slice(pkt);
        Some(self.buf.split().freeze())
    }
}

/// Counts for one batch, flushed to the shared metrics once per batch.
#[derive(Debug, Default)]
struct BatchCounts {
    packets: u64,
    bytes: u64,
    no_session: u64,
    queue_full: u64,
    malformed: u64,
    handoffs: u64,
}

/// TUN reads the downstream task makes after the awaited one before it yields (measured: yielding
/// sooner cost throughput and CPU; docs/benchmarks.md, "Thread per core").
const DRAIN_READS: usize = 64;

/// Reads the TUN and queues each packet to its session, until the device fails.
pub async fn run_downstream(
    tun: Tun,
    table: Arc<SessionTable>,
    metrics: Metrics,
) -> io::Result<()> {
    let mut original = vec![0u8; VIRTIO_NET_HDR_LEN + 65535];
    let mut bufs = vec![vec![0u8; 65535]; IDEAL_BATCH_SIZE];
    let mut sizes = vec![0usize; IDEAL_BATCH_SIZE];
    let mut arena = FrameArena::default();
    let thread = thread_index();
    loop {
        let mut next = tun
            .dev
            .recv_multiple(&mut original, &mut bufs, &mut sizes, 0)
            .await;
        let mut counts = BatchCounts::default();
        // The awaited read, then what is already queued in the kernel without another wakeup, a
        // bounded number of times so the task yields to the runtime.
        for drained in 0..=DRAIN_READS {
            match next {
                Ok(n) => dispatch(
                    bufs.get(..n).unwrap_or_default(),
                    &sizes,
                    thread,
                    &table,
                    &mut arena,
                    &mut counts,
                ),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if is_fatal(&e) => return Err(e),
                Err(e) => tracing::debug!(error = %e, "TUN read error"),
            }
            if drained == DRAIN_READS {
                break;
            }
            next = tun
                .dev
                .try_recv_multiple(&mut original, &mut bufs, &mut sizes, 0);
        }
        metrics.add_down(counts.packets, counts.bytes);
        metrics.add_handoffs(counts.handoffs);
        for (reason, n) in [
            (DropReason::NoSession, counts.no_session),
            (DropReason::QueueFull, counts.queue_full),
            (DropReason::Malformed, counts.malformed),
        ] {
            metrics.drop_packets(reason, n);
        }
    }
}

fn is_fatal(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EBADFD) | Some(libc::EBADF) | Some(libc::ENODEV)
    )
}

/// Queues each of `bufs` (its length in `sizes`) to its session, counting packets whose session
/// lives on another thread than `thread`.
fn dispatch(
    bufs: &[Vec<u8>],
    sizes: &[usize],
    thread: u16,
    table: &SessionTable,
    arena: &mut FrameArena,
    counts: &mut BatchCounts,
) {
    for (buf, &len) in bufs.iter().zip(sizes) {
        let Some(pkt) = buf.get(..len) else { continue };
        let Some(dst) = packet::destination(pkt) else {
            counts.malformed += 1;
            continue;
        };
        let Some(route) = table.lookup(dst) else {
            counts.no_session += 1;
            continue;
        };
        let Some(frame) = arena.frame(pkt) else {
            counts.malformed += 1;
            continue;
        };
        match route.tx.try_send(frame) {
            Ok(()) => {
                route.stats.add_down(len);
                counts.handoffs += u64::from(route.thread != thread);
                counts.packets += 1;
                counts.bytes += len as u64;
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                route
                    .stats
                    .dropped_queue_full
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                counts.queue_full += 1;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => counts.no_session += 1,
        }
    }
}

/// Most packets handed to one `send_multiple` call.
const WRITE_MAX: usize = IDEAL_BATCH_SIZE;
/// Room before each packet for the virtio header that `send_multiple` writes.
const OFFSET: usize = VIRTIO_NET_HDR_LEN;
/// A write buffer's usual capacity: a whole 64 KiB super-packet plus two headers, so GRO can merge
/// segments into it without growing it.
const WRITE_BUF: usize = 2 * OFFSET + 65535;

/// Per-thread state of the upstream writes: the GRO table and the write buffers. Only borrowed
/// inside [`Upstream::write`], which never awaits.
#[derive(Default)]
struct WriteScratch {
    gro: GROTable,
    bufs: Vec<BytesMut>,
    /// This thread's own TUN queue, when it has one ([`Tun::attach_queue`]).
    queue: Option<Tun>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<WriteScratch> = std::cell::RefCell::new(WriteScratch::default());
}

/// The upstream half of the data plane: each session writes its own checked packets to the TUN,
/// on its own task, as soon as one read of its connection has been decoded. The packets of one
/// read go in one `send_multiple`, which coalesces each TCP/UDP flow (GRO) into few TUN writes when
/// offload is on. Nothing is queued between the session and the device: no channel hop, no
/// wakeup of another task, and a session's packets reach the TUN in the order it sent them.
#[derive(Clone, Debug)]
pub struct Upstream {
    tun: Tun,
    metrics: Metrics,
}

impl Upstream {
    /// The writer for `tun`, counting into `metrics`.
    pub fn new(tun: Tun, metrics: Metrics) -> Self {
        Self { tun, metrics }
    }

    /// Writes `pkts` (checked IP packets) to the TUN now and empties the vector. A TUN write that
    /// fails for one batch is logged and its packets dropped; `Err` only when the device is gone
    /// (the data plane is down for every session).
    pub fn write(&self, pkts: &mut Vec<Bytes>) -> io::Result<()> {
        if pkts.is_empty() {
            return Ok(());
        }
        let result = SCRATCH.with(|cell| {
            let mut scratch = cell.borrow_mut();
            let WriteScratch { gro, bufs, queue } = &mut *scratch;
            let dev: &tun_rs::DeviceImpl = &queue.as_ref().unwrap_or(&self.tun).dev;
            for chunk in pkts.chunks(WRITE_MAX) {
                while bufs.len() < chunk.len() {
                    bufs.push(BytesMut::with_capacity(WRITE_BUF));
                }
                let mut bytes = 0u64;
                for (buf, pkt) in bufs.iter_mut().zip(chunk) {
                    buf.clear();
                    buf.resize(OFFSET, 0);
                    buf.extend_from_slice(pkt);
                    bytes += pkt.len() as u64;
                }
                let Some(out) = bufs.get_mut(..chunk.len()) else {
                    continue;
                };
                // The blocking-style call on the non-blocking descriptor: a TUN write never waits.
                if let Err(e) = dev.send_multiple(gro, out, OFFSET) {
                    if is_fatal(&e) {
                        return Err(e);
                    }
                    tracing::debug!(error = %e, "TUN write error");
                }
                self.metrics.add_up(chunk.len() as u64, bytes);
                // Buffers that GRO grew past their usual size are given back to keep memory flat.
                for buf in bufs.iter_mut() {
                    if buf.capacity() > 4 * WRITE_BUF {
                        *buf = BytesMut::with_capacity(WRITE_BUF);
                    }
                }
            }
            Ok(())
        });
        pkts.clear();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arena_frames_carry_a_cstp_header_and_share_chunks() {
        let mut arena = FrameArena::default();
        let a = arena.frame(&[0x45; 100]).unwrap();
        let b = arena.frame(&[0x45; 1400]).unwrap();
        assert_eq!(a.len(), 108);
        assert_eq!(b.len(), 1408);
        let (kind, payload, used) = cstp::decode(&b, 1500).unwrap().unwrap();
        assert_eq!(kind, cstp::FrameType::Data);
        assert_eq!(payload.len(), 1400);
        assert_eq!(used, 1408);
        // Same chunk: b starts right after a.
        assert_eq!(a.as_ptr().wrapping_add(a.len()), b.as_ptr());
    }
}
