//! A DTLS session's own UDP socket (connected to its client), registered for reading only.
//!
//! tokio's `UdpSocket` registers every socket for readability and writability, and the kernel
//! reports a UDP socket writable again each time a datagram it sent is freed: on a veth at once,
//! on a NIC at its transmit completion. So every send woke the session's thread once more, for
//! nothing (strace of a ping over DTLS: `sendmsg`, then an `epoll_wait` that only returns
//! `EPOLLOUT`). Here the socket is registered for `EPOLLIN` alone; a send that finds the socket
//! buffer full waits on a duplicate of the descriptor registered for `EPOLLOUT`, for that wait
//! only. With a socket buffer of [`crate::dtls`]'s size this is rare.
//!
//! Reads go on until `recvmmsg` returns `EAGAIN`. Clearing the readiness after a short batch
//! instead (what [`crate::tls_read`] does on TCP) cost the harness's UDP echo over DTLS 5-10 % in
//! cores per Gbit/s and in throughput, by hand in two alternating runs: under load a second
//! `recvmmsg` often finds datagrams that arrived during the first batch's decryption, where
//! waiting for the next readiness event costs a trip through the reactor.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// A connected UDP socket polled for reading only.
#[derive(Debug)]
pub(crate) struct OwnSocket {
    io: AsyncFd<std::net::UdpSocket>,
    state: UdpSocketState,
    /// The client, as the socket is connected to it (IPv4-mapped addresses unmapped).
    peer: SocketAddr,
}

/// Registers `socket` with the current runtime's reactor for `interest` only.
#[allow(unsafe_code)]
fn register(
    socket: std::net::UdpSocket,
    interest: Interest,
) -> io::Result<AsyncFd<std::net::UdpSocket>> {
    // SAFETY: the `AsyncFd` owns the socket, so its descriptor stays open and names the same
    // socket until the `AsyncFd` is dropped, and `as_raw_fd` always returns that descriptor.
    unsafe { AsyncFd::register_with_interest(socket, interest) }.map_err(|e| e.into_parts().1)
}

impl OwnSocket {
    /// Takes a non-blocking UDP socket connected to `peer`. Must be called within a runtime.
    pub(crate) fn new(socket: std::net::UdpSocket, peer: SocketAddr) -> io::Result<Self> {
        let state = UdpSocketState::new((&socket).into())?;
        Ok(Self {
            io: register(socket, Interest::READABLE)?,
            state,
            peer,
        })
    }

    /// The client.
    pub(crate) fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The socket's offload state (GSO segments, buffer sizes).
    pub(crate) fn state(&self) -> &UdpSocketState {
        &self.state
    }

    /// The socket.
    pub(crate) fn socket(&self) -> &std::net::UdpSocket {
        self.io.get_ref()
    }

    /// Waits until the socket may have datagrams (or an error) to read.
    pub(crate) async fn readable(&self) -> io::Result<()> {
        // The guard is dropped without clearing: a `recv` that finds nothing clears it.
        self.io.readable().await.map(drop)
    }

    /// One `recvmmsg` into `bufs`: the number of messages filled (each may hold several GRO
    /// segments). `WouldBlock` when the socket had nothing.
    pub(crate) fn recv(
        &self,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> io::Result<usize> {
        self.io.try_io(Interest::READABLE, |s| {
            self.state.recv(s.into(), bufs, meta)
        })
    }

    /// Sends `t` (one datagram, or a GSO batch), waiting while the socket buffer is full.
    /// Returns whether it had to wait.
    pub(crate) async fn send(&self, t: &Transmit<'_>) -> io::Result<bool> {
        let mut waiter: Option<AsyncFd<std::net::UdpSocket>> = None;
        loop {
            match self.state.try_send(self.socket().into(), t) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                other => return other.map(|()| waiter.is_some()),
            }
            // A registration made now reports space freed since the failed send at once.
            let w = match waiter.take() {
                Some(w) => w,
                None => register(self.socket().try_clone()?, Interest::WRITABLE)?,
            };
            w.writable().await?.clear_ready();
            waiter = Some(w);
        }
    }

    /// The raw descriptor (tests).
    #[cfg(test)]
    pub(crate) fn raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn connected_pair() -> (OwnSocket, std::net::UdpSocket) {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        a.connect(b.local_addr().unwrap()).unwrap();
        b.connect(a.local_addr().unwrap()).unwrap();
        a.set_nonblocking(true).unwrap();
        let peer = b.local_addr().unwrap();
        (OwnSocket::new(a, peer).unwrap(), b)
    }

    #[tokio::test]
    async fn datagrams_are_read_in_batches_until_the_socket_is_empty() {
        let (own, peer) = connected_pair();
        for i in 0..=quinn_udp::BATCH_SIZE {
            peer.send(&[i as u8]).unwrap();
        }
        let mut storage = vec![0u8; 2048 * quinn_udp::BATCH_SIZE];
        let mut meta = [RecvMeta::default(); quinn_udp::BATCH_SIZE];
        let mut got = Vec::new();
        loop {
            tokio::time::timeout(Duration::from_secs(5), own.readable())
                .await
                .unwrap()
                .unwrap();
            let mut chunks = storage.chunks_mut(2048);
            let mut bufs: [IoSliceMut<'_>; quinn_udp::BATCH_SIZE] =
                std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap()));
            match own.recv(&mut bufs, &mut meta) {
                Ok(n) => got.extend(
                    meta.iter()
                        .zip(&bufs)
                        .take(n)
                        .map(|(m, b)| b[..m.len].to_vec()),
                ),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        let want: Vec<Vec<u8>> = (0..=quinn_udp::BATCH_SIZE).map(|i| vec![i as u8]).collect();
        assert_eq!(got, want);
    }

    /// The epoll registrations of the socket `fd` and of any duplicate of it, as
    /// /proc/self/fdinfo of the epoll instances shows them (matched by the socket's inode: tests
    /// in other threads reuse descriptor numbers).
    fn registered_events(fd: std::os::fd::RawFd) -> Vec<u32> {
        use std::os::unix::fs::MetadataExt;
        let ino = std::fs::metadata(format!("/proc/self/fd/{fd}"))
            .unwrap()
            .ino();
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc/self/fdinfo").unwrap() {
            let Ok(text) = std::fs::read_to_string(entry.unwrap().path()) else {
                continue;
            };
            // tfd:       12 events: 80002019 data: 7f...  pos:0 ino:5f3a sdev:8
            for line in text.lines().filter(|l| l.starts_with("tfd:")) {
                let field = |name: &str| {
                    let mut words = line.split_whitespace();
                    words.find(|w| *w == name)?;
                    words.next()
                };
                let this_ino = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("ino:"))
                    .and_then(|h| u64::from_str_radix(h, 16).ok());
                if this_ino == Some(ino) {
                    found.push(u32::from_str_radix(field("events:").unwrap(), 16).unwrap());
                }
            }
        }
        found
    }

    /// Every epoll registration of the socket (tokio's reactor may hold its epoll under two
    /// descriptors) asks for EPOLLIN and not EPOLLOUT.
    fn assert_reads_only(own: &OwnSocket) {
        let events = registered_events(own.raw_fd());
        let (epollin, epollout) = (0x001, 0x004);
        assert!(!events.is_empty(), "not registered");
        for e in events {
            assert_eq!(e & epollin, epollin, "{e:x}");
            assert_eq!(
                e & epollout,
                0,
                "{e:x}: EPOLLOUT would wake the thread after every send"
            );
        }
    }

    #[tokio::test]
    async fn registered_for_reading_only_and_sends_arrive() {
        let (own, peer) = connected_pair();
        assert_reads_only(&own);
        let t = Transmit {
            destination: own.peer(),
            ecn: None,
            contents: b"hello",
            segment_size: None,
            src_ip: None,
        };
        assert!(!own.send(&t).await.unwrap());
        let mut buf = [0u8; 16];
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = peer.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");
    }

    /// Runs `f` on a thread of its own in a new network namespace whose loopback sends through a
    /// token bucket of 100 kbit/s: datagrams wait in the qdisc, still charged to their socket's
    /// send buffer, so a small buffer fills (on a plain loopback or veth the kernel frees the
    /// buffer at once and a UDP send never blocks).
    fn in_slow_namespace(f: impl FnOnce() + Send + 'static) {
        std::thread::spawn(move || {
            #[allow(unsafe_code)]
            // SAFETY: unshare only changes this thread's namespaces; nothing here depends on
            // the old one (no socket exists yet on this thread).
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "unshare(CLONE_NEWNET): {}",
                io::Error::last_os_error()
            );
            for cmd in [
                "ip link set lo up",
                "tc qdisc add dev lo root tbf rate 100kbit burst 1600 limit 1000000",
            ] {
                let args: Vec<&str> = cmd.split(' ').collect();
                let st = std::process::Command::new(args[0])
                    .args(&args[1..])
                    .status()
                    .unwrap();
                assert!(st.success(), "{cmd}");
            }
            f();
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_full_send_buffer_waits_for_room_and_loses_nothing() {
        in_slow_namespace(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let (own, peer) = connected_pair();
                socket2::SockRef::from(own.socket())
                    .set_send_buffer_size(4096)
                    .unwrap();
                let mut waited = 0;
                for i in 0..12u8 {
                    let payload = [i; 1000];
                    let t = Transmit {
                        destination: own.peer(),
                        ecn: None,
                        contents: &payload,
                        segment_size: None,
                        src_ip: None,
                    };
                    let w = tokio::time::timeout(Duration::from_secs(20), own.send(&t))
                        .await
                        .expect("a send waits for room, never forever")
                        .unwrap();
                    waited += usize::from(w);
                }
                assert!(
                    waited > 0,
                    "the send buffer never filled: the test proves nothing"
                );
                peer.set_read_timeout(Some(Duration::from_secs(20)))
                    .unwrap();
                let mut buf = [0u8; 2048];
                for i in 0..12u8 {
                    let n = peer.recv(&mut buf).unwrap();
                    assert_eq!((n, buf[0]), (1000, i), "datagram {i}");
                }
                // Still registered for reading only: the waits left no EPOLLOUT behind.
                assert_reads_only(&own);
            });
        });
    }
}
