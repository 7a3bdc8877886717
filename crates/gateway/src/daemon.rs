//! Assembles a running gateway from a validated [`Config`]: certificate, users, pool, TUN, egress,
//! listeners and background tasks; then drains and stops on request.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpSocket};
use tokio_rustls::TlsAcceptor;

use crate::ban::Bans;
use crate::config::Config;
use crate::control::{self, ControlError};
use crate::dataplane::{self, TunParams};
use crate::egress::{self, EgressError, Nat};
use crate::health::{Direction, Health};
use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::reload::{CertInfo, ReloadState};
use crate::server::Shared;
use crate::sessions::{EndReason, Sessions};
use crate::steering::{Plan, SlotMap, Steering};
use crate::table::SessionTable;
use crate::tls::{self, TlsError};
use crate::users::{UserDb, UsersError};
use crate::workers::{self, WorkerError, Workers};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The certificate or key could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The users file could not be loaded.
    #[error("auth.users_file: {0}")]
    Users(#[from] UsersError),
    /// The TUN device could not be created.
    #[error("cannot create TUN device {name:?}: {source} (needs /dev/net/tun and CAP_NET_ADMIN)")]
    Tun {
        /// `network.tun_name`.
        name: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Forwarding or NAT could not be set up.
    #[error(transparent)]
    Egress(#[from] EgressError),
    /// The data-plane threads (`server.threads`) could not start.
    #[error(transparent)]
    Workers(#[from] WorkerError),
    /// The control socket could not be set up.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// A listening socket could not be bound.
    #[error("cannot listen on {addr} ({field}): {source}")]
    Bind {
        /// The config field.
        field: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// A TCP socket bound to `addr` with `SO_REUSEADDR`, not listening yet.
fn bound(addr: SocketAddr, field: &'static str) -> Result<TcpSocket, StartError> {
    let err = |source| StartError::Bind {
        field,
        addr,
        source,
    };
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(err)?;
    sock.set_reuseaddr(true).map_err(err)?;
    sock.bind(addr).map_err(err)?;
    Ok(sock)
}

fn bind(addr: SocketAddr, field: &'static str, backlog: u32) -> Result<TcpListener, StartError> {
    bound(addr, field)?
        .listen(backlog)
        .map_err(|source| StartError::Bind {
            field,
            addr,
            source,
        })
}

/// Fails with the usual bind error if something listens on `addr` already (a listener of
/// another process, even one with `SO_REUSEPORT`, makes this plain bind fail).
fn check_free(addr: SocketAddr) -> Result<(), StartError> {
    bound(addr, "server.listen").map(drop)
}

/// A started gateway: listeners bound, TUN up, tasks running.
#[derive(Debug)]
pub struct Gateway {
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _nat: Option<Nat>,
    workers: Workers,
    listen: SocketAddr,
    control_socket: Option<PathBuf>,
}

impl Gateway {
    /// Starts everything. Must be called inside a tokio runtime. Reloads re-read the certificate
    /// and users file only; see [`Self::start_from`].
    pub async fn start(config: Config) -> Result<Self, StartError> {
        Self::start_from(config, None).await
    }

    /// Starts everything from `config`, which was read from `config_path` (the file that SIGHUP
    /// and `tunnelctl reload` re-read; `None` for embedded defaults). Must be called inside a
    /// tokio runtime.
    pub async fn start_from(
        config: Config,
        config_path: Option<PathBuf>,
    ) -> Result<Self, StartError> {
        let cert = tls::load_certificate(&config)?;
        tracing::info!(subject = %cert.subject, not_after = %cert.not_after, pin = %cert.pin_sha256, "certificate loaded");
        let acceptor = TlsAcceptor::from(tls::server_config(&cert, &config.tls, &config.auth)?);
        let users = UserDb::load_for(&config.auth)?;
        tracing::info!(users = users.len(), file = %config.auth.users_file.display(), "users loaded");

        let net = &config.network;
        let pool = Pool::new(net.ipv4_pool, net.ipv6_pool);
        let table = Arc::new(SessionTable::new(Arc::clone(&pool)));
        let metrics = Metrics::new();
        let sessions = Sessions::new(Arc::clone(&pool), Arc::clone(&table), metrics.clone());

        let params = TunParams {
            name: net.tun_name.clone(),
            v4: (net.gateway_ipv4(), net.ipv4_pool.prefix_len()),
            v6: net
                .ipv6_pool
                .and_then(|p| net.gateway_ipv6().map(|a| (a, p.prefix_len()))),
            mtu: u16::try_from(net.mtu).unwrap_or(1400),
            offload: true,
            multi_queue: true,
        };
        let tun = dataplane::open_tun(&params).map_err(|source| StartError::Tun {
            name: net.tun_name.clone(),
            source,
        })?;
        tracing::info!(tun = %net.tun_name, offload = tun.offload, gateway = %params.v4.0, "TUN device up");
        egress::enable_forwarding(net.ipv6_pool.is_some())?;
        let nat = if net.nat {
            Some(Nat::install(
                &net.tun_name,
                net.ipv4_pool,
                net.ipv6_pool,
                net.nat_interface.as_deref(),
            )?)
        } else {
            None
        };

        // Each data-plane thread binds its own listener with SO_REUSEPORT, which a second daemon
        // (or anything else) already listening there would share without a word: first make sure
        // the address is free.
        check_free(config.server.listen)?;
        let admin = config
            .metrics
            .listen
            .map(|a| bind(a, "metrics.listen", 128))
            .transpose()?;
        let control_listener = config
            .control
            .socket
            .as_deref()
            .map(control::bind)
            .transpose()?;

        let dtls = if config.dtls.enabled {
            let (server, ctl) =
                crate::dtls::DtlsServer::bind(config.server.listen, metrics.clone())
                    .await
                    .map_err(|source| StartError::Bind {
                        field: "server.listen (UDP, for [dtls])",
                        addr: config.server.listen,
                        source,
                    })?;
            Some((server, ctl))
        } else {
            None
        };

        let shared = Arc::new(Shared {
            config: ArcSwap::from_pointee(config.clone()),
            users: ArcSwap::from_pointee(users),
            tls: ArcSwap::from_pointee(acceptor),
            pool,
            table: Arc::clone(&table),
            sessions,
            metrics: metrics.clone(),
            draining: false.into(),
            up: dataplane::Upstream::new(tun.clone(), metrics.clone()),
            started: Instant::now(),
            pin: cert.pin_sha256.clone(),
            dtls: dtls.as_ref().map(|(server, _)| Arc::clone(server)),
            bans: Bans::persistent(
                metrics.clone(),
                config.server.state_dir.join(crate::ban::BANS_FILE),
            ),
            health: Health::new(Some(tun.clone())),
            reload: ReloadState::new(config_path, CertInfo::from(&cert)),
            threads: config.server.thread_count(),
            steering: std::sync::OnceLock::new(),
        });

        let mut tasks = Vec::new();
        shared.health.set_dataplane(Direction::Down, true);
        shared.health.set_dataplane(Direction::Up, true);
        let down = tokio::spawn({
            let (tun, table, metrics) = (tun.clone(), Arc::clone(&table), metrics.clone());
            let sh = Arc::clone(&shared);
            async move {
                if let Err(e) = dataplane::run_downstream(tun, table, metrics).await {
                    tracing::error!(error = %e, "TUN reader stopped");
                }
                sh.health.set_dataplane(Direction::Down, false);
            }
        });
        tasks.push(down);
        let threads = shared.threads;
        // Each thread's sessions take their addresses from its own stripe of the pool, which is
        // what the steering program reads.
        shared.pool.set_stripes(threads);
        // The map that lets a session's replies follow it to another thread is created before the
        // threads start, so that threads with private file tables hold it too.
        let plan = Plan::new(&shared.pool, threads);
        let slots = SlotMap::create(&plan)
            .inspect_err(|e| tracing::debug!(error = %e, "no TUN steering map"))
            .ok();
        let (workers, listen) = workers::start(
            threads,
            config.server.private_file_tables,
            config.server.listen,
            &shared,
            &tun,
        )?;
        // With every thread's queue attached (thread t reads queue 1 + t).
        let steering = Steering::load(plan, slots).and_then(|s| {
            s.program().attach(&*tun.dev)?;
            Ok(s)
        });
        match steering {
            Ok(s) => {
                tracing::info!(
                    threads,
                    follows_reconnects = s.follows_moves(),
                    "TUN steering: by destination address (eBPF program)"
                );
                let _ = shared.steering.set(s);
            }
            Err(e) => tracing::warn!(
                error = %e,
                threads,
                "TUN steering program not loaded (needs CAP_BPF or CAP_SYS_ADMIN); the TUN driver's \
                 flow table steers replies instead, and some cross threads (tunneld_downstream_handoffs_total)"
            ),
        }
        if let Some((server, ctl)) = dtls {
            tasks.push(tokio::spawn(crate::dtls::run_demux(server, ctl)));
        }
        if let Some(admin) = admin {
            tracing::info!(listen = ?config.metrics.listen, "metrics listening");
            tasks.push(tokio::spawn(crate::admin::serve(
                admin,
                Arc::clone(&shared),
            )));
        }
        if let (Some(l), Some(path)) = (control_listener, config.control.socket.clone()) {
            tracing::info!(socket = %path.display(), "control socket listening");
            tasks.push(tokio::spawn(control::serve(l, path, Arc::clone(&shared))));
        }
        tasks.push(tokio::spawn(reaper(Arc::clone(&shared))));
        tracing::info!(%listen, pool = %net.ipv4_pool, ipv6_pool = ?net.ipv6_pool, "gateway listening");
        Ok(Self {
            shared,
            tasks,
            _nat: nat,
            workers,
            listen,
            control_socket: config.control.socket.clone(),
        })
    }

    /// The shared state, for the control socket and tests.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The TLS listen address.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// Runs until `shutdown` resolves, then drains: health probes answer 503, new logins are
    /// refused, every client gets a DISCONNECT, and after `drain` the tasks stop.
    pub async fn run_until(mut self, shutdown: impl Future<Output = ()>, drain: Duration) {
        shutdown.await;
        tracing::info!(
            drain_secs = drain.as_secs(),
            sessions = self.shared.sessions.len(),
            "draining"
        );
        self.shared.draining.store(true, Ordering::Relaxed);
        self.shared.sessions.end_all(EndReason::Shutdown);
        save_bans(&self.shared).await;
        tokio::time::sleep(drain).await;
        for t in &self.tasks {
            t.abort();
        }
        self.workers.stop();
        if let Some(p) = &self.control_socket {
            let _ = std::fs::remove_file(p);
        }
        tracing::info!("stopped");
    }
}

/// Ends sessions whose cookie or session time ran out, once a second.
async fn reaper(sh: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let cfg = sh.config.load();
        let cookie = Duration::from_secs(u64::from(cfg.timers.cookie_timeout_secs));
        let session = (cfg.timers.session_timeout_secs > 0)
            .then(|| Duration::from_secs(u64::from(cfg.timers.session_timeout_secs)));
        sh.sessions.reap(Instant::now(), cookie, session);
        sh.bans.sweep(&cfg.ban, Instant::now());
        if sh.bans.unsaved() {
            save_bans(&sh).await;
        }
    }
}

/// Saves the bans off the runtime's threads (a small synced file); a failure is logged by `save`
/// and retried at the next change or tick.
pub(crate) async fn save_bans(sh: &Arc<Shared>) {
    let bans = Arc::clone(&sh.bans);
    let _ = tokio::task::spawn_blocking(move || bans.save()).await;
}
