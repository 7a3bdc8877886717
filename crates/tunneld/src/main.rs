//! `tunneld`: the tunnel-gateway daemon. Thin: parse flags, set up logging, load the config, run.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use tunnel_gateway::config::Config;
use tunnel_gateway::daemon::Gateway;

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line, for log shippers.
    Json,
}

/// tunnel-gateway daemon: an AnyConnect-compatible VPN gateway (openconnect clients connect over TLS
/// on TCP 443, get an address from the pool, and their traffic flows through one TUN device).
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// Configuration file (TOML; every field is documented in config/tunneld.toml). Without it the
    /// embedded defaults are used: listen on 0.0.0.0:443, pool 192.168.100.0/24, a self-signed
    /// certificate and a generated first user in the state directory.
    #[arg(short, long, env = "TUNNELD_CONFIG")]
    config: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value = "human", env = "TUNNELD_LOG_FORMAT")]
    log_format: LogFormat,
    /// Log filter, e.g. `info` or `tunnel_gateway=debug` (RUST_LOG syntax). RUST_LOG overrides it.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Validate the configuration (and the certificate and users file it names) and exit.
    #[arg(long)]
    check: bool,
    /// Seconds to keep answering health probes with 503 after SIGTERM before exiting.
    #[arg(long, default_value_t = 5)]
    drain_secs: u64,
    /// Unprivileged user to switch to after start-up; overrides `server.user` in the config.
    #[arg(long, env = "TUNNELD_USER")]
    user: Option<String>,
}

fn init_logging(args: &Args) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&args.log_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Human => builder.with_ansi(false).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// On embedded defaults with no users file yet, create one in the state directory with one user
/// and a random password, and say so once. A configured deployment never takes this path.
fn bootstrap_first_user(config: &mut Config) -> anyhow::Result<()> {
    if config.auth.users_file.exists() {
        return Ok(());
    }
    let path = config.server.state_dir.join("users");
    config.auth.users_file = path.clone();
    if path.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(&config.server.state_dir).with_context(|| {
        format!(
            "creating state directory {}",
            config.server.state_dir.display()
        )
    })?;
    let mut raw = [0u8; 12];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut raw)?;
    let password: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let hash = tunnel_gateway::users::hash_password(&password)?;
    tunnel_gateway::users::set_user(&path, "vpn", None, &hash)?;
    tracing::warn!(
        user = "vpn",
        password = %password,
        file = %path.display(),
        "no users file: created one with a first user; change it with `tunnelctl user passwd vpn --users-file {}`",
        path.display()
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(&args);
    let mut config = match &args.config {
        Some(path) => {
            Config::load(path).with_context(|| format!("configuration {}", path.display()))?
        }
        None => {
            let mut c = Config::default();
            bootstrap_first_user(&mut c)?;
            c
        }
    };
    if let Some(user) = args.user.as_deref().filter(|u| !u.is_empty()) {
        config.server.user = Some(user.to_owned());
        config.validate()?;
    }
    if args.check {
        tunnel_gateway::tls::server_config(
            &tunnel_gateway::tls::load_certificate(&config)?,
            &config.tls,
            &config.auth,
        )?;
        tunnel_gateway::users::UserDb::load_for(&config.auth)?;
        if let Some(user) = &config.server.user {
            tunnel_gateway::privdrop::lookup(user)?;
        }
        println!("configuration OK");
        return Ok(());
    }
    open_files_limit(&config);
    // Before the runtime's threads exist, so that all of them inherit no_new_privs.
    let privdrop = config
        .server
        .user
        .as_deref()
        .map(tunnel_gateway::privdrop::prepare)
        .transpose()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listen = config.server.listen;
        let state_dir = config.server.state_dir.clone();
        let gw = Gateway::start_from(config, args.config.clone()).await?;
        // Runs on the main thread (block_on), which keeps CAP_NET_ADMIN for the NAT teardown.
        if let Some(p) = &privdrop {
            if let Err(e) = p.hand_over(&state_dir) {
                tracing::warn!(error = %e, "the state directory stays root's: a reload cannot re-read a self-signed certificate (give the container CAP_CHOWN)");
            }
            let d = p.apply()?;
            tracing::info!(user = %d.name, uid = d.uid, gid = d.gid, capabilities = ?d.capabilities, already = d.already, "dropped privileges");
        }
        let pin = gw.shared().pin.clone();
        tokio::spawn(reload_on_sighup(std::sync::Arc::clone(gw.shared())));
        println!(
            "tunneld listening on {listen}; connect with:\n  openconnect --servercert {pin} https://<this-host>:{}/",
            listen.port()
        );
        gw.run_until(shutdown_signal(), Duration::from_secs(args.drain_secs)).await;
        Ok(())
    })
}

/// Takes the open-files limit the hard limit allows (see
/// [`tunnel_gateway::workers::raise_open_files_limit`]) and warns when it holds fewer sessions
/// than `server.max_sessions`.
fn open_files_limit(config: &Config) {
    use tunnel_gateway::workers::{raise_open_files_limit, sessions_within};
    let limit = match raise_open_files_limit() {
        Ok(l) => {
            if l.now > l.was {
                tracing::info!(
                    from = l.was,
                    to = l.now,
                    "raised the open-files limit to its hard limit"
                );
            }
            l.now
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open-files limit");
            return;
        }
    };
    let fit = sessions_within(&config.server, limit);
    if fit < u64::from(config.server.max_sessions) {
        tracing::warn!(
            open_files_limit = limit,
            sessions = fit,
            max_sessions = config.server.max_sessions,
            "the open-files limit holds only about this many sessions (one file each), fewer than server.max_sessions: raise LimitNOFILE= in the unit (--ulimit nofile= for a container), or see server.private_file_tables"
        );
    }
}

/// Reloads the configuration on every SIGHUP (the outcome is logged by the reload itself).
async fn reload_on_sighup(shared: std::sync::Arc<tunnel_gateway::server::Shared>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot install the SIGHUP handler; reload with `tunnelctl reload`");
        return;
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the configuration");
        let _ = tunnel_gateway::reload::reload(&shared).await;
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
}
