//! Running the real openconnect 9.01 client inside a device namespace.
//!
//! openconnect runs in the foreground as a direct child (`ip netns exec` execs it), so the test has
//! its pid for signals and its real exit status. Readiness is the client script's record of
//! `reason=connect`: the script (tests/scripts/record-env.sh) configures the TUN first and then writes
//! the environment, so a recorded `connect` means the interface is up with its address and routes.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ipnet::IpNet;

use crate::gateway::Gateway;
use crate::process::{self, read_log, tail, with_log};
use crate::topology::Topology;
use crate::wait::wait_for;

/// How long a client gets to authenticate and bring the tunnel up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(40);

/// Path of the client script shipped with the tests.
pub fn record_env_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/record-env.sh")
}

/// How to log in.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// `--user U --passwd-on-stdin`.
    Password {
        /// User name.
        user: String,
        /// Password (fed on stdin).
        password: String,
    },
    /// `--cookie-on-stdin` with a cookie from `openconnect --authenticate`.
    Cookie(String),
    /// `--certificate` and `--sslkey`: a client certificate and its key (PEM), no password.
    Certificate {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
}

/// Options for one openconnect run.
#[derive(Debug, Clone)]
pub struct ClientOpts {
    /// Which device namespace it runs in (default: the topology's first device).
    pub device: Option<String>,
    /// How it logs in.
    pub credentials: Credentials,
    /// TUN interface name (`--interface`); must be unique within the device namespace.
    pub interface: String,
    /// Whether to allow DTLS (default false: `--no-dtls`).
    pub dtls: bool,
    /// `--reconnect-timeout` seconds.
    pub reconnect_timeout: u32,
    /// `--servercert` value; default: the gateway's pin.
    pub pin: Option<String>,
    /// Extra arguments.
    pub extra_args: Vec<String>,
}

impl ClientOpts {
    /// Password login as `user`.
    pub fn password(user: &str, password: &str) -> Self {
        Self::with(Credentials::Password {
            user: user.to_string(),
            password: password.to_string(),
        })
    }

    /// Cookie login (`--cookie-on-stdin`).
    pub fn cookie(cookie: &str) -> Self {
        Self::with(Credentials::Cookie(cookie.to_string()))
    }

    /// Client-certificate login (`--certificate`, `--sslkey`).
    pub fn certificate(cert: &Path, key: &Path) -> Self {
        Self::with(Credentials::Certificate {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        })
    }

    fn with(credentials: Credentials) -> Self {
        Self {
            device: None,
            credentials,
            interface: "oc0".to_string(),
            dtls: false,
            reconnect_timeout: 30,
            pin: None,
            extra_args: Vec::new(),
        }
    }

    /// Runs in device namespace `device`.
    pub fn device(mut self, device: &str) -> Self {
        self.device = Some(device.to_string());
        self
    }

    /// Uses TUN interface `name`.
    pub fn interface(mut self, name: &str) -> Self {
        self.interface = name.to_string();
        self
    }

    /// Allows (true) or forbids (false, the default) DTLS.
    pub fn dtls(mut self, on: bool) -> Self {
        self.dtls = on;
        self
    }

    /// Pins `pin` (`pin-sha256:...`) instead of the gateway's certificate.
    pub fn pin(mut self, pin: &str) -> Self {
        self.pin = Some(pin.to_string());
        self
    }

    /// Adds an extra openconnect argument.
    pub fn arg(mut self, a: &str) -> Self {
        self.extra_args.push(a.to_string());
        self
    }
}

/// One run of the client script: its `reason` and the environment openconnect gave it.
#[derive(Debug, Clone)]
pub struct ScriptRun {
    /// `connect`, `reconnect`, `disconnect`, `attempt-reconnect`, `pre-init`.
    pub reason: String,
    /// The whole environment.
    pub env: BTreeMap<String, String>,
}

impl ScriptRun {
    /// A variable, or an error naming it.
    pub fn var(&self, name: &str) -> Result<&str> {
        self.env
            .get(name)
            .map(String::as_str)
            .with_context(|| format!("{name} not in the {} script environment", self.reason))
    }

    /// `INTERNAL_IP4_ADDRESS`.
    pub fn ipv4(&self) -> Result<Ipv4Addr> {
        Ok(self.var("INTERNAL_IP4_ADDRESS")?.parse()?)
    }

    /// `INTERNAL_IP6_ADDRESS`.
    pub fn ipv6(&self) -> Result<Ipv6Addr> {
        Ok(self.var("INTERNAL_IP6_ADDRESS")?.parse()?)
    }

    /// The split routes openconnect exported under `prefix` (`CISCO_SPLIT_INC`, `CISCO_SPLIT_EXC`,
    /// `CISCO_IPV6_SPLIT_INC`, `CISCO_IPV6_SPLIT_EXC`) as a set: the indices come in reverse header
    /// order, so only the set is meaningful. Empty when the count variable is absent.
    pub fn split_routes(&self, prefix: &str) -> Result<BTreeSet<IpNet>> {
        let mut out = BTreeSet::new();
        let count: usize = match self.env.get(prefix) {
            Some(n) => n.parse().with_context(|| format!("{prefix}={n:?}"))?,
            None => return Ok(out),
        };
        for i in 0..count {
            let addr: IpAddr = self.var(&format!("{prefix}_{i}_ADDR"))?.parse()?;
            let len: u8 = self.var(&format!("{prefix}_{i}_MASKLEN"))?.parse()?;
            out.insert(IpNet::new(addr, len)?);
        }
        Ok(out)
    }

    /// A space- or comma-separated list variable as a set of its items (empty when absent).
    pub fn set_of(&self, name: &str) -> BTreeSet<String> {
        self.env
            .get(name)
            .map(|v| {
                v.split([' ', ','])
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Reads every script run recorded in `env_dir`, oldest first.
pub fn read_script_runs(env_dir: &Path) -> Result<Vec<ScriptRun>> {
    let mut names: Vec<PathBuf> = match fs::read_dir(env_dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "env"))
            .collect(),
        Err(_) => return Ok(Vec::new()),
    };
    names.sort();
    let mut runs = Vec::new();
    for p in names {
        let raw = fs::read(&p)?;
        let mut env = BTreeMap::new();
        for item in raw.split(|b| *b == 0) {
            let item = String::from_utf8_lossy(item);
            if let Some((k, v)) = item.split_once('=') {
                env.insert(k.to_string(), v.to_string());
            }
        }
        let reason = env.get("reason").cloned().unwrap_or_default();
        runs.push(ScriptRun { reason, env });
    }
    Ok(runs)
}

/// What became of a launch.
#[derive(Debug)]
pub enum Launch {
    /// The tunnel came up (script ran with `reason=connect`).
    Connected(Client),
    /// openconnect exited before the tunnel came up.
    Exited {
        /// Its exit code.
        code: Option<i32>,
        /// Its log (stdout and stderr).
        log: String,
    },
}

static NEXT_CLIENT: AtomicU32 = AtomicU32::new(0);

/// A running openconnect. On drop it gets SIGINT (a clean logout) and is waited for; its log tail is
/// printed (cargo test shows it only for failed tests).
#[derive(Debug)]
pub struct Client {
    child: Option<Child>,
    exit_code: Option<Option<i32>>,
    log_path: PathBuf,
    env_dir: PathBuf,
    device: String,
    interface: String,
}

impl Client {
    /// Starts openconnect and waits until the tunnel is up; an error (with the client's log) if it
    /// exits first.
    pub fn connect(topo: &Topology, gw: &Gateway, opts: ClientOpts) -> Result<Self> {
        match Self::launch(topo, gw, opts)? {
            Launch::Connected(c) => Ok(c),
            Launch::Exited { code, log } => {
                bail!(
                    "openconnect exited with {code:?} before connecting; its log:\n{}",
                    tail(&log, 40)
                )
            }
        }
    }

    /// Starts openconnect and waits until the tunnel is up or the client exits.
    pub fn launch(topo: &Topology, gw: &Gateway, opts: ClientOpts) -> Result<Launch> {
        let opts = match opts.pin {
            Some(_) => opts,
            None => opts.pin(gw.pin()),
        };
        Self::launch_to(topo, &gw.url(), opts)
    }

    /// Starts openconnect against any server `url` (`opts.pin` is required) and waits until the
    /// tunnel is up or the client exits.
    pub fn launch_to(topo: &Topology, url: &str, opts: ClientOpts) -> Result<Launch> {
        let pin = opts
            .pin
            .clone()
            .context("ClientOpts::pin is required with launch_to")?;
        let device = opts
            .device
            .clone()
            .unwrap_or_else(|| topo.first_device().to_string());
        let n = NEXT_CLIENT.fetch_add(1, Ordering::Relaxed);
        let dir = topo.subdir(&format!("client{n}-{device}-{}", opts.interface))?;
        let env_dir = dir.join("env");
        fs::create_dir_all(&env_dir)?;
        let log_path = dir.join("openconnect.log");
        let input_path = dir.join("stdin");
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            topo.ns(&device)?,
            "openconnect",
            "--non-inter",
        ]);
        let input = match &opts.credentials {
            Credentials::Password { user, password } => {
                cmd.args(["--user", user, "--passwd-on-stdin"]);
                format!("{password}\n")
            }
            Credentials::Cookie(cookie) => {
                cmd.arg("--cookie-on-stdin");
                format!("{cookie}\n")
            }
            Credentials::Certificate { cert, key } => {
                cmd.arg("--certificate").arg(cert).arg("--sslkey").arg(key);
                String::new()
            }
        };
        let script = format!("/bin/sh '{}'", record_env_script().display());
        cmd.args([
            "--servercert",
            &pin,
            "--script",
            &script,
            "--interface",
            &opts.interface,
        ]);
        cmd.args([
            "-v",
            "--timestamp",
            "--reconnect-timeout",
            &opts.reconnect_timeout.to_string(),
        ]);
        if !opts.dtls {
            cmd.arg("--no-dtls");
        }
        cmd.args(&opts.extra_args);
        cmd.arg(url);
        cmd.env("E2E_ENV_DIR", &env_dir);
        fs::write(&input_path, input)?;
        let log = fs::File::create(&log_path)?;
        let child = cmd
            .stdin(Stdio::from(fs::File::open(&input_path)?))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start openconnect")?;
        let mut client = Self {
            child: Some(child),
            exit_code: None,
            log_path,
            env_dir,
            device,
            interface: opts.interface.clone(),
        };
        let outcome = wait_for(
            CONNECT_TIMEOUT,
            "openconnect to connect (script reason=connect) or exit",
            || {
                if client.runs()?.iter().any(|r| r.reason == "connect") {
                    return Ok(Some(None));
                }
                Ok(client.poll_exit()?.map(Some))
            },
        );
        match outcome {
            Ok(None) => Ok(Launch::Connected(client)),
            Ok(Some(code)) => Ok(Launch::Exited {
                code,
                log: client.log(),
            }),
            Err(e) => Err(with_log(e, "openconnect log", &tail(&client.log(), 40))),
        }
    }

    /// Every script run so far, oldest first.
    pub fn runs(&self) -> Result<Vec<ScriptRun>> {
        read_script_runs(&self.env_dir)
    }

    /// The script run for the first `connect`.
    pub fn connect_env(&self) -> Result<ScriptRun> {
        self.runs()?
            .into_iter()
            .find(|r| r.reason == "connect")
            .context("no reason=connect script run recorded")
    }

    /// The address the tunnel got (`INTERNAL_IP4_ADDRESS` at connect).
    pub fn ipv4(&self) -> Result<Ipv4Addr> {
        self.connect_env()?.ipv4()
    }

    /// Waits until the script has run with `reason` at least `count` times; returns the last such run.
    pub fn wait_reason(&self, reason: &str, count: usize, timeout: Duration) -> Result<ScriptRun> {
        wait_for(
            timeout,
            &format!("{count} script run(s) with reason={reason}"),
            || {
                let runs: Vec<ScriptRun> = self
                    .runs()?
                    .into_iter()
                    .filter(|r| r.reason == reason)
                    .collect();
                Ok(if runs.len() >= count {
                    runs.last().cloned()
                } else {
                    None
                })
            },
        )
        .map_err(|e| with_log(e, "openconnect log", &tail(&self.log(), 40)))
    }

    /// The device namespace role it runs in.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// Its TUN interface name.
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// Its pid (openconnect itself).
    pub fn pid(&self) -> Result<u32> {
        self.child
            .as_ref()
            .map(Child::id)
            .context("openconnect already exited")
    }

    /// Everything it has printed.
    pub fn log(&self) -> String {
        read_log(&self.log_path)
    }

    /// Sends a signal by name (`INT`, `USR2`, `HUP`, ...).
    pub fn signal(&self, sig: &str) -> Result<()> {
        process::signal(self.pid()?, sig)
    }

    /// Exit code if it has exited (`Some(None)`: killed by a signal).
    pub fn poll_exit(&mut self) -> Result<Option<Option<i32>>> {
        if let Some(code) = self.exit_code {
            return Ok(Some(code));
        }
        if let Some(child) = self.child.as_mut() {
            if let Some(status) = child.try_wait()? {
                self.exit_code = Some(status.code());
                self.child = None;
            }
        }
        Ok(self.exit_code)
    }

    /// Waits for it to exit; returns the exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<i32>> {
        wait_for(timeout, "openconnect to exit", || self.poll_exit())
            .map_err(|e| with_log(e, "openconnect log", &tail(&self.log(), 40)))
    }

    /// Logs out (SIGINT: openconnect sends DISCONNECT 0xB0) and waits; returns the exit code.
    pub fn quit(&mut self) -> Result<Option<i32>> {
        if self.poll_exit()?.is_none() {
            self.signal("INT")?;
        }
        self.wait_exit(Duration::from_secs(15))
    }

    /// Pings `dst` through the tunnel from the client's namespace; every echo must be answered.
    pub fn ping(&self, topo: &Topology, dst: &str, count: u32) -> Result<()> {
        topo.ping(&self.device, dst, count)
            .map_err(|e| with_log(e, "openconnect log", &tail(&self.log(), 15)))?;
        Ok(())
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(None) = child.try_wait() {
                let _ = process::signal(child.id(), "INT");
                if !matches!(
                    process::wait_timeout(&mut child, Duration::from_secs(10)),
                    Ok(Some(_))
                ) {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        eprintln!(
            "----- openconnect log ({}), last 25 lines -----\n{}\n----- end openconnect log -----",
            self.log_path.display(),
            tail(&self.log(), 25)
        );
    }
}

/// The result of `openconnect --authenticate`.
#[derive(Debug, Clone)]
pub struct AuthOutcome {
    /// Exit code.
    pub code: Option<i32>,
    /// The `COOKIE=` value (shell quoting removed), when authentication succeeded.
    pub cookie: Option<String>,
    /// stdout and stderr, for messages.
    pub output: String,
}

/// Runs `openconnect --authenticate` as `user` from `device` and returns the cookie it prints.
pub fn authenticate(
    topo: &Topology,
    gw: &Gateway,
    device: &str,
    user: &str,
    password: &str,
) -> Result<AuthOutcome> {
    authenticate_with(
        topo,
        gw,
        device,
        &["--user", user, "--passwd-on-stdin"],
        Some(&format!("{password}\n")),
    )
}

/// Runs `openconnect --authenticate` with the device certificate `cert` (key `key`) from
/// `device` (certificate mode) and returns the cookie it prints.
pub fn authenticate_certificate(
    topo: &Topology,
    gw: &Gateway,
    device: &str,
    cert: &Path,
    key: &Path,
) -> Result<AuthOutcome> {
    let cert = format!("--certificate={}", cert.display());
    let key = format!("--sslkey={}", key.display());
    authenticate_with(topo, gw, device, &[&cert, &key], None)
}

fn authenticate_with(
    topo: &Topology,
    gw: &Gateway,
    device: &str,
    credentials: &[&str],
    input: Option<&str>,
) -> Result<AuthOutcome> {
    let mut cmd = topo.command_in(device, "openconnect")?;
    cmd.args(["--authenticate", "--non-inter"])
        .args(credentials);
    cmd.args(["--servercert", gw.pin(), "-v", &gw.url()]);
    let out = process::run(&mut cmd, input, Duration::from_secs(30))?;
    let cookie = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("COOKIE="))
        .map(|v| v.trim().trim_matches('\'').to_string());
    Ok(AuthOutcome {
        code: out.code,
        cookie,
        output: out.to_string(),
    })
}

/// Runs openconnect once in the foreground without keeping it (for runs expected to fail quickly):
/// returns its exit code and log.
pub fn run_expecting_exit(
    topo: &Topology,
    gw: &Gateway,
    opts: ClientOpts,
) -> Result<(Option<i32>, String)> {
    match Client::launch(topo, gw, opts)? {
        Launch::Exited { code, log } => Ok((code, log)),
        Launch::Connected(mut c) => {
            let log = c.log();
            let _ = c.quit();
            bail!(
                "openconnect connected, but the test expected it to be refused; its log:\n{}",
                tail(&log, 30)
            )
        }
    }
}
