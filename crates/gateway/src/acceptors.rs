//! Opt-in acceptor threads, each with its own file table (`server.acceptor_threads`).
//!
//! Every TCP session is one open file. A process's open-files limit (`RLIMIT_NOFILE`) caps the
//! file *numbers* of each file table, and all threads normally share one table, so on a host
//! whose limit can't be raised (20,000 on the benchmark machine) one process holds fewer sessions
//! than that. On Linux a thread that calls `unshare(CLONE_FILES)` gets a private copy of the table,
//! whose numbers start over: N such threads hold up to N x the limit.
//!
//! Each acceptor thread therefore, in this order: builds a current-thread tokio runtime while it
//! still shares the process's table (so the runtime's epoll and eventfd have numbers valid in every
//! table: a main-runtime thread that wakes one of its tasks writes to that eventfd), then unshares
//! its file table, binds its own listener on `server.listen` with `SO_REUSEPORT` (the kernel
//! spreads new connections over the threads' listeners), and runs the ordinary accept loop
//! ([`crate::server::serve`]) there. Sockets are only ever used by the thread whose table holds
//! them: a connection's task lives on the current-thread runtime that accepted it. TLS, the HTTP phase and the tunnel tasks of its connections
//! run on that thread. Everything else stays shared through memory, not descriptors: the session
//! registry, the address pool and route table (`Arc`s), the TUN data plane (an mpsc channel up,
//! each route's channel down), metrics and config. The main runtime keeps the TUN device, the admin
//! listener and the reaper, in the original file table.
//!
//! This is off by default: on a real host, raise `LimitNOFILE=` in the unit and keep the single
//! listener and multi-threaded runtime. Costs of the opt-in: a connection stays on the thread that
//! accepted it (no work stealing between acceptor threads), and the copied tables hold extra
//! references to descriptors that were open when the threads started (the TUN device among them),
//! which only matters for descriptors closed later (none are, until exit).

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::oneshot;

use crate::server::{self, Shared};

/// Listen backlog of each acceptor's socket.
const BACKLOG: u32 = 4096;

/// Why the acceptor threads could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AcceptorError {
    /// `unshare(CLONE_FILES)` failed (not Linux, or forbidden by a seccomp policy).
    #[error("server.acceptor_threads: unshare(CLONE_FILES) failed in acceptor thread {thread}: {source}")]
    Unshare {
        /// The thread's number.
        thread: usize,
        /// The OS error.
        source: std::io::Error,
    },
    /// The thread's runtime could not be built.
    #[error(
        "server.acceptor_threads: acceptor thread {thread} could not build its runtime: {source}"
    )]
    Runtime {
        /// The thread's number.
        thread: usize,
        /// The OS error.
        source: std::io::Error,
    },
    /// The thread's `SO_REUSEPORT` listener could not be bound.
    #[error("cannot listen on {addr} (server.listen, acceptor thread {thread}): {source}")]
    Bind {
        /// The thread's number.
        thread: usize,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The thread could not be spawned, or died before reporting.
    #[error("server.acceptor_threads: acceptor thread {thread} did not start: {reason}")]
    Spawn {
        /// The thread's number.
        thread: usize,
        /// What happened.
        reason: String,
    },
}

/// The running acceptor threads. Dropping this stops them (their connections close).
#[derive(Debug)]
pub struct Acceptors {
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
}

impl Acceptors {
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

impl Drop for Acceptors {
    fn drop(&mut self) {
        self.stop();
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

/// Starts `n` acceptor threads listening on `addr`, serving connections with `shared`. Returns once
/// every thread has its own file table, runtime and listener, or the first error.
pub fn start(n: usize, addr: SocketAddr, shared: &Arc<Shared>) -> Result<Acceptors, AcceptorError> {
    let mut acceptors = Acceptors {
        stops: Vec::with_capacity(n),
        threads: Vec::with_capacity(n),
    };
    for thread in 0..n {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), AcceptorError>>();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let shared = Arc::clone(shared);
        let handle = std::thread::Builder::new()
            .name(format!("tunneld-acceptor-{thread}"))
            .spawn(move || run_thread(thread, addr, shared, &ready_tx, stop_rx))
            .map_err(|e| AcceptorError::Spawn {
                thread,
                reason: e.to_string(),
            })?;
        acceptors.stops.push(stop_tx);
        acceptors.threads.push(handle);
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(AcceptorError::Spawn {
                    thread,
                    reason: "exited before reporting".to_owned(),
                })
            }
        }
    }
    tracing::info!(threads = n, listen = %addr, "acceptor threads with private file tables listening");
    Ok(acceptors)
}

fn run_thread(
    thread: usize,
    addr: SocketAddr,
    shared: Arc<Shared>,
    ready: &std::sync::mpsc::Sender<Result<(), AcceptorError>>,
    stop: oneshot::Receiver<()>,
) {
    // First the runtime, while this thread still shares the process's file table: its epoll and
    // eventfd (and the signal pipe's copy) get numbers that stay valid in every table, so threads
    // of the main runtime that wake this runtime's tasks (the data plane delivering downstream
    // frames, the registry kicking a session) write to the same eventfd. Waking it through a
    // number that only exists in a private table would hit the wrong file or none.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(source) => {
            let _ = ready.send(Err(AcceptorError::Runtime { thread, source }));
            return;
        }
    };
    // Then the private table: every socket opened from here on (the listener, each accepted
    // connection) is numbered in it and counts only against it.
    if let Err(source) = unshare_files() {
        let _ = ready.send(Err(AcceptorError::Unshare { thread, source }));
        return;
    }
    let listener = match rt.block_on(async { bind_reuseport(addr) }) {
        Ok(l) => l,
        Err(source) => {
            let _ = ready.send(Err(AcceptorError::Bind {
                thread,
                addr,
                source,
            }));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    rt.block_on(async move {
        tokio::select! {
            () = server::serve(listener, shared) => {}
            _ = stop => {}
        }
    });
    // Dropping the runtime cancels every connection task of this thread.
    rt.shutdown_background();
}
