//! The data-plane threads (`server.threads`, default one per CPU): thread per core.
//!
//! Each thread runs its own current-thread tokio runtime with its own TLS listener on
//! `server.listen` (`SO_REUSEPORT`: the kernel spreads new connections over the threads) and its
//! own queue of the multi-queue TUN device. A connection's tasks (TLS, the HTTP phase, the
//! tunnel and its DTLS channel) live on the thread that accepted it, so a session's upstream
//! packets always leave through the same TUN queue, from the same CPU, in order. Each session
//! takes its address from its thread's stripe of the pool, and the steering program
//! ([`crate::steering`]) puts every packet for that address on the thread's queue, so downstream
//! packets are read on the session's own thread too: no hand-off to another thread, no
//! cross-thread wake-up, nothing reordered between threads.
//!
//! Why: with one work-stealing runtime a session's task moved between worker threads, and the
//! kernel queues a forwarded packet on the backlog of the CPU that wrote it, so one TCP flow's
//! packets reached the far end out of order (an openconnect upload through the gateway: 85,578
//! TCP retransmits in 10 s, against 537 with pinned sessions; docs/architecture.md, "Threads").
//!
//! Everything else stays shared through memory: the session registry, the address pool and route
//! table (`Arc`s), metrics and config. A session that reconnects onto another thread steers its
//! address to that thread's queue ([`crate::steering::Steering::steer`]). A packet read on another
//! thread's queue all the same (no steering program, or one in flight while the session moved)
//! goes to its session through the session's channel. The main runtime keeps the TUN device's first queue (and its
//! reader), the DTLS demux, the admin and control listeners and the reaper.
//!
//! ## Private file tables (`server.private_file_tables`)
//!
//! Every TCP session is one open file. A process's open-files limit (`RLIMIT_NOFILE`) caps the
//! file *numbers* of each file table, and all threads normally share one table, so on a host
//! whose limit can't be raised (20,000 on the benchmark machine) one process holds fewer sessions
//! than that. On Linux a thread that calls `unshare(CLONE_FILES)` gets a private copy of the table,
//! whose numbers start over: N such threads hold up to N x the limit. With the option on, each
//! thread unshares its table before it binds its listener and opens its TUN queue, so those and
//! every connection it accepts are numbered in its own table and only ever used by it.
//!
//! Every thread's runtime is built first, on the starting thread, while the table is still
//! shared: a thread wakes another's tasks (a downstream packet read on the wrong queue, the
//! registry kicking a session) by writing to that runtime's eventfd, so every runtime's epoll
//! and eventfd must have numbers that are valid in every table.
//!
//! This is off by default: on a real host, raise `LimitNOFILE=` in the unit instead. Its cost:
//! the copied tables hold extra references to descriptors that were open when the threads
//! started (the TUN device among them), which only matters for descriptors closed later (none
//! are, until exit).

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::oneshot;

use crate::dataplane::{self, Tun};
use crate::health::Direction;
use crate::server::{self, Shared};

/// Listen backlog of each thread's listening socket.
const BACKLOG: u32 = 4096;

/// Why the data-plane threads could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// `unshare(CLONE_FILES)` failed (not Linux, or forbidden by a seccomp policy).
    #[error("server.private_file_tables: unshare(CLONE_FILES) failed in data-plane thread {thread}: {source}")]
    Unshare {
        /// The thread's number.
        thread: usize,
        /// The OS error.
        source: std::io::Error,
    },
    /// The thread's runtime could not be built.
    #[error("server.threads: data-plane thread {thread} could not build its runtime: {source}")]
    Runtime {
        /// The thread's number.
        thread: usize,
        /// The OS error.
        source: std::io::Error,
    },
    /// The thread's `SO_REUSEPORT` listener could not be bound.
    #[error("cannot listen on {addr} (server.listen, data-plane thread {thread}): {source}")]
    Bind {
        /// The thread's number.
        thread: usize,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The thread's TUN queue could not be opened.
    #[error("server.threads: data-plane thread {thread} could not open its TUN queue: {source}")]
    Queue {
        /// The thread's number.
        thread: usize,
        /// The OS error.
        source: std::io::Error,
    },
    /// The thread could not be spawned, or died before reporting.
    #[error("server.threads: data-plane thread {thread} did not start: {reason}")]
    Spawn {
        /// The thread's number.
        thread: usize,
        /// What happened.
        reason: String,
    },
}

/// The running data-plane threads. Dropping this stops them (their connections close).
#[derive(Debug)]
pub struct Workers {
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// How many threads run.
    #[must_use]
    pub fn len(&self) -> usize {
        self.threads.len()
    }

    /// True if none run.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.threads.is_empty()
    }

    /// Tells every thread to stop; their runtimes drop every connection they hold.
    pub fn stop(&mut self) {
        for s in self.stops.drain(..) {
            let _ = s.send(());
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Descriptors a file table keeps for things other than sessions: listeners, TUN queues, epoll
/// and eventfd of each runtime, the metrics and control listeners, the log, files being read.
const FIXED_FILES: u64 = 64;
/// Per data-plane thread on top of [`FIXED_FILES`]: its listener, TUN queue, epoll and eventfd.
const FILES_PER_THREAD: u64 = 4;

/// The open-files limit, before and after [`raise_open_files_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilesLimit {
    /// The soft limit the daemon was started with.
    pub was: u64,
    /// The soft limit now (the hard limit, when it could be raised).
    pub now: u64,
}

/// Raises the soft open-files limit (`RLIMIT_NOFILE`) to the hard one, which needs no privilege.
///
/// A daemon started from a shell, or by a unit without `LimitNOFILE=`, gets a soft limit of
/// 1,024 (systemd's default; its hard default is 524,288), and every TCP session is one open
/// file: such a gateway would stop accepting at about a thousand devices. The soft limit exists
/// for programs that use `select()`, which tunneld does not, so it takes what the hard limit
/// allows, as systemd's documentation advises such programs to do. `RLIM_INFINITY` counts as
/// `u64::MAX`.
///
/// # Errors
/// `getrlimit` or `setrlimit` failed.
#[allow(unsafe_code)]
pub fn raise_open_files_limit() -> std::io::Result<FilesLimit> {
    let mut lim = open_files_limit()?;
    let was = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit reads one `rlimit`; a soft limit up to the hard one needs no right.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(FilesLimit {
        was,
        now: lim.rlim_cur,
    })
}

/// The open-files limit (`RLIMIT_NOFILE`), soft and hard.
///
/// # Errors
/// `getrlimit` failed.
#[allow(unsafe_code)]
pub(crate) fn open_files_limit() -> std::io::Result<libc::rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` into `lim`, which lives on this stack.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(lim)
}

/// Descriptors kept free at the top of every file table: sessions (TLS connections, DTLS sockets
/// of their own) stop this far below the open-files limit, so that what must keep working when
/// sessions fill the table still can: a scrape of the metrics listener, `tunnelctl`, a reload
/// reading the certificate and users file, the bans file.
pub const FILES_HEADROOM: u64 = 32;

/// True when `fd`, just opened for a session, lies in the last [`FILES_HEADROOM`] numbers under
/// the open-files limit. Linux hands out the lowest free number, so every number below it is in
/// use: the table is that full. The limit is read once, after the daemon raised it at start.
pub fn in_headroom(fd: std::os::fd::RawFd) -> bool {
    static FIRST_RESERVED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let first = *FIRST_RESERVED
        .get_or_init(|| open_files_limit().map_or(u64::MAX, |l| first_reserved(l.rlim_cur)));
    u64::try_from(fd).is_ok_and(|fd| fd >= first)
}

/// The lowest descriptor number of the headroom under an open-files limit of `limit`.
fn first_reserved(limit: u64) -> u64 {
    limit.saturating_sub(FILES_HEADROOM)
}

/// About how many sessions fit under an open-files limit of `limit` with `server`'s threads and
/// file tables: one file per session (a DTLS session also asks for a socket of its own, and
/// shares the listening one when none is left).
#[must_use]
pub fn sessions_within(server: &crate::config::ServerConfig, limit: u64) -> u64 {
    let threads = server.thread_count() as u64;
    if server.private_file_tables {
        // Each thread's table holds its own sessions; the main one holds none.
        threads.saturating_mul(
            limit.saturating_sub(FIXED_FILES + FILES_HEADROOM + FILES_PER_THREAD * threads),
        )
    } else {
        limit.saturating_sub(FIXED_FILES + FILES_HEADROOM + FILES_PER_THREAD * threads)
    }
}

/// Gives the calling thread its own copy of the file table.
#[allow(unsafe_code)]
fn unshare_files() -> std::io::Result<()> {
    // SAFETY: unshare takes a flags word and touches only the calling thread's task state; with
    // CLONE_FILES it copies the descriptor table, which no Rust object's validity depends on
    // (every descriptor number open now stays valid, in both tables).
    let rc = unsafe { libc::unshare(libc::CLONE_FILES) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn bind_reuseport(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }?;
    sock.set_reuseaddr(true)?;
    sock.set_reuseport(true)?;
    sock.bind(addr)?;
    sock.listen(BACKLOG)
}

/// Starts `n` data-plane threads listening on `addr`, serving connections with `shared`, each on its
/// own queue of `tun` and, with `private_files`, in its own file table. Returns once every thread
/// has its runtime, listener and queue, with the address they listen on (the port the first one
/// got, when `addr` asks for port 0), or the first error.
pub fn start(
    n: usize,
    private_files: bool,
    mut addr: SocketAddr,
    shared: &Arc<Shared>,
    tun: &Tun,
) -> Result<(Workers, SocketAddr), WorkerError> {
    let mut workers = Workers {
        stops: Vec::with_capacity(n),
        threads: Vec::with_capacity(n),
    };
    // Every runtime first, in the shared table (see the module doc).
    let mut runtimes = Vec::with_capacity(n);
    // Receive coalescing (see crate::coalesce): fixed for the threads' lifetime.
    let nap =
        std::time::Duration::from_micros(u64::from(shared.config.load().server.rx_coalesce_usecs));
    for thread in 0..n {
        let (before_park, after_unpark) =
            crate::coalesce::hooks(nap, shared.metrics.rx_coalesce_naps.clone());
        runtimes.push(
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .on_thread_park(before_park)
                .on_thread_unpark(after_unpark)
                .build()
                .map_err(|source| WorkerError::Runtime { thread, source })?,
        );
    }
    for (thread, rt) in runtimes.into_iter().enumerate() {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<SocketAddr, WorkerError>>();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let shared = Arc::clone(shared);
        let tun = tun.clone();
        let setup = Setup {
            thread,
            private_files,
            addr,
        };
        let handle = std::thread::Builder::new()
            .name(format!("tunneld-dp-{thread}"))
            .spawn(move || run_thread(&setup, rt, shared, &tun, &ready_tx, stop_rx))
            .map_err(|e| WorkerError::Spawn {
                thread,
                reason: e.to_string(),
            })?;
        workers.stops.push(stop_tx);
        workers.threads.push(handle);
        match ready_rx.recv() {
            Ok(Ok(bound)) => addr = bound,
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(WorkerError::Spawn {
                    thread,
                    reason: "exited before reporting".to_owned(),
                })
            }
        }
    }
    tracing::info!(threads = n, private_file_tables = private_files, listen = %addr, "data-plane threads listening");
    Ok((workers, addr))
}

/// What one thread is to set up.
struct Setup {
    thread: usize,
    private_files: bool,
    addr: SocketAddr,
}

fn run_thread(
    setup: &Setup,
    rt: tokio::runtime::Runtime,
    shared: Arc<Shared>,
    tun: &Tun,
    ready: &std::sync::mpsc::Sender<Result<SocketAddr, WorkerError>>,
    stop: oneshot::Receiver<()>,
) {
    let Setup {
        thread,
        private_files,
        addr,
    } = *setup;
    // The private table first: the listener, the TUN queue and each accepted connection are
    // numbered in it and count only against it.
    if private_files {
        if let Err(source) = unshare_files() {
            let _ = ready.send(Err(WorkerError::Unshare { thread, source }));
            return;
        }
        shared.metrics.process.add_thread_table(thread);
    }
    let (listener, bound) = match rt.block_on(async {
        let l = bind_reuseport(addr)?;
        let bound = l.local_addr()?;
        Ok::<_, std::io::Error>((l, bound))
    }) {
        Ok(l) => l,
        Err(source) => {
            let _ = ready.send(Err(WorkerError::Bind {
                thread,
                addr,
                source,
            }));
            return;
        }
    };
    let queue = match rt.block_on(async {
        tun.attach_queue(u16::try_from(thread).unwrap_or(dataplane::NO_THREAD - 1))
    }) {
        Ok(q) => q,
        Err(source) => {
            let _ = ready.send(Err(WorkerError::Queue { thread, source }));
            return;
        }
    };
    let _ = ready.send(Ok(bound));
    let down = rt.spawn({
        let sh = Arc::clone(&shared);
        async move {
            if let Err(e) =
                dataplane::run_downstream(queue, Arc::clone(&sh.table), sh.metrics.clone()).await
            {
                tracing::error!(error = %e, thread, "TUN reader stopped");
            }
            sh.health.set_dataplane(Direction::Down, false);
        }
    });
    rt.block_on(async move {
        tokio::select! {
            () = server::serve(listener, shared) => {}
            _ = stop => {}
        }
    });
    down.abort();
    dataplane::detach_queue();
    // Dropping the runtime cancels every connection task of this thread.
    rt.shutdown_background();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServerConfig;

    fn nofile() -> libc::rlimit {
        open_files_limit().unwrap()
    }

    #[test]
    #[allow(unsafe_code)]
    fn the_soft_open_files_limit_is_raised_to_the_hard_one() {
        let hard = nofile().rlim_max;
        // Lower the soft limit a little (other tests in this process keep far fewer files).
        let low = libc::rlimit {
            rlim_cur: hard - 100,
            rlim_max: hard,
        };
        // SAFETY: setrlimit reads one `rlimit`.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &low) }, 0);
        let l = raise_open_files_limit().unwrap();
        assert_eq!((l.was, l.now), (hard - 100, hard));
        assert_eq!(nofile().rlim_cur, hard);
        // Already at the hard limit: nothing changes.
        let again = raise_open_files_limit().unwrap();
        assert_eq!((again.was, again.now), (hard, hard));
    }

    #[test]
    fn the_headroom_is_the_top_of_the_table() {
        assert_eq!(first_reserved(20_000), 19_968);
        assert_eq!(first_reserved(10), 0);
        assert_eq!(
            first_reserved(libc::RLIM_INFINITY),
            libc::RLIM_INFINITY - 32
        );
        // This process's table is nowhere near its limit.
        assert!(!in_headroom(3));
        assert!(!in_headroom(-1));
    }

    #[test]
    fn sessions_fit_under_the_limit_per_file_table() {
        let mut s = ServerConfig {
            threads: 2,
            ..ServerConfig::default()
        };
        assert_eq!(sessions_within(&s, 20_000), 20_000 - 64 - 32 - 8);
        assert_eq!(sessions_within(&s, 50), 0);
        s.private_file_tables = true;
        s.threads = 4;
        assert_eq!(sessions_within(&s, 20_000), 4 * (20_000 - 64 - 32 - 16));
        assert_eq!(sessions_within(&s, u64::MAX), u64::MAX);
    }
}
