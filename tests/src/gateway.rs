//! Running the real `tunneld` inside the gateway namespace.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::metrics::metric_value;
use crate::process::{self, read_log, tail, with_log};
use crate::topology::{Topology, GW_DEVICE_ADDR};
use crate::wait::{wait_for, wait_until};

/// How long the daemon gets to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A tunneld configuration, kept as a TOML table so that any field can be set by path. Starts from
/// the values every test assumes (see [`GatewayConfig::new`]); `state_dir` and `users_file` are filled
/// in by [`Gateway::start`].
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    table: toml::Table,
    users: Vec<(String, String)>,
    cert_pem: Option<PathBuf>,
    args: Vec<String>,
    launcher: Option<Launcher>,
}

/// What a [`Launcher`] is told about the daemon it starts.
#[derive(Debug)]
pub struct LaunchInfo<'a> {
    /// The gateway namespace's name (`/run/netns/<name>`).
    pub gw_ns: &'a str,
    /// The daemon's directory: `tunneld.toml`, `users`, `state/`, the log.
    pub dir: &'a Path,
    /// The tunneld arguments added with [`GatewayConfig::daemon_arg`].
    pub args: &'a [String],
}

/// Builds the command that starts the daemon, instead of `ip netns exec <gw> tunneld --config ...`
/// (e.g. `podman run` of the container image). It must run in the gateway namespace and in the
/// foreground; its stdout and stderr are the daemon's log.
#[derive(Clone)]
pub struct Launcher(std::sync::Arc<dyn Fn(&LaunchInfo<'_>) -> Command + Send + Sync>);

impl Launcher {
    /// Wraps `f`.
    pub fn new(f: impl Fn(&LaunchInfo<'_>) -> Command + Send + Sync + 'static) -> Self {
        Self(std::sync::Arc::new(f))
    }
}

impl Launcher {
    /// Runs tunneld as usual, under `prlimit --nofile=SOFT:HARD`: an open-files limit other than
    /// the test process's (`nofile` is `SOFT:HARD`).
    pub fn open_files_limit(nofile: &str) -> Result<Self> {
        let bin = tunneld_bin()?;
        let nofile = format!("--nofile={nofile}");
        Ok(Self::new(move |info| {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", info.gw_ns, "prlimit", &nofile, "--"])
                .arg(&bin)
                .arg("--config")
                .arg(info.dir.join("tunneld.toml"))
                .args(info.args);
            cmd
        }))
    }
}

impl std::fmt::Debug for Launcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Launcher(..)")
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl GatewayConfig {
    /// The baseline configuration the tests share: listen on the gateway's device-link address,
    /// pools 198.18.128.0/24 and fd00:198:18:128::/64, split routes into corp's networks, MTU 1400.
    pub fn new() -> Self {
        let text = format!(
            r#"
[server]
listen = "{GW_DEVICE_ADDR}:443"
health_path = "/health"
max_sessions = 64000
max_sessions_per_user = 0
banner = "Welcome"
max_header_bytes = 8192

[tls]
min_version = "1.2"

[network]
ipv4_pool = "198.18.128.0/24"
ipv6_pool = "fd00:198:18:128::/64"
dns = ["198.18.2.53", "fd00:198:18:2::53"]
default_domain = "corp.example"
split_dns = ["corp.example", "lab.example"]
split_include = ["198.18.2.0/24", "fd00:198:18:2::/64"]
split_exclude = ["198.18.2.128/25", "fd00:198:18:2:8000::/65"]
mtu = 1400
link_mtu = 1500
tun_name = "tg0"
nat = false
queue_len = 256

[timers]
dpd_secs = 90
keepalive_secs = 32
idle_timeout_secs = 0
session_timeout_secs = 0
cookie_timeout_secs = 300
auth_timeout_secs = 30

[auth]

[metrics]
listen = "127.0.0.1:9477"
"#
        );
        let table = text
            .parse::<toml::Table>()
            .expect("baseline config is valid TOML");
        Self {
            table,
            users: Vec::new(),
            cert_pem: None,
            args: Vec::new(),
            launcher: None,
        }
    }

    /// Starts the daemon with `launcher` instead of running the tunneld binary directly.
    pub fn launcher(mut self, launcher: Launcher) -> Self {
        self.launcher = Some(launcher);
        self
    }

    /// Sets `section.key` (e.g. `"network.ipv4_pool"`) to `value`, creating the section if needed.
    pub fn set(mut self, path: &str, value: impl Into<toml::Value>) -> Self {
        let (section, key) = path.split_once('.').expect("path is section.key");
        let entry = self
            .table
            .entry(section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        entry
            .as_table_mut()
            .expect("section is a table")
            .insert(key.to_string(), value.into());
        self
    }

    /// Removes `section.key`.
    pub fn unset(mut self, path: &str) -> Self {
        let (section, key) = path.split_once('.').expect("path is section.key");
        if let Some(t) = self
            .table
            .get_mut(section)
            .and_then(toml::Value::as_table_mut)
        {
            t.remove(key);
        }
        self
    }

    /// Adds a user with a password to the users file.
    pub fn user(mut self, name: &str, password: &str) -> Self {
        self.users.push((name.to_string(), password.to_string()));
        self
    }

    /// Tells the harness which PEM certificate the daemon will present (for the client's pin) when
    /// the config names its own certificate (PEM or PFX). Without it the self-signed one is pinned.
    pub fn pin_certificate(mut self, cert_pem: &Path) -> Self {
        self.cert_pem = Some(cert_pem.to_path_buf());
        self
    }

    /// Adds a command-line argument for tunneld (after `--config FILE`), e.g. `--drain-secs`.
    pub fn daemon_arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_string());
        self
    }

    /// A value by `section.key`.
    pub fn get(&self, path: &str) -> Option<&toml::Value> {
        let (section, key) = path.split_once('.')?;
        self.table.get(section)?.as_table()?.get(key)
    }

    /// A string value by `section.key`.
    pub fn get_str(&self, path: &str) -> Option<&str> {
        self.get(path)?.as_str()
    }

    /// An integer value by `section.key`.
    pub fn get_int(&self, path: &str) -> Option<i64> {
        self.get(path)?.as_integer()
    }

    /// A list of strings by `section.key` (empty when absent).
    pub fn get_strs(&self, path: &str) -> Vec<String> {
        self.get(path)
            .and_then(toml::Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The TOML text.
    pub fn to_toml(&self) -> String {
        toml::to_string(&self.table).expect("table serialises")
    }
}

/// Finds the tunneld binary: `$TUNNELD_BIN`, else next to the test executable's target directory
/// (`target/debug/deps/<test>` → `target/debug/tunneld`).
pub fn tunneld_bin() -> Result<PathBuf> {
    sibling_bin("tunneld", "TUNNELD_BIN")
}

/// Finds the tunnelctl binary: `$TUNNELCTL_BIN`, else beside tunneld.
pub fn tunnelctl_bin() -> Result<PathBuf> {
    sibling_bin("tunnelctl", "TUNNELCTL_BIN")
}

/// Finds the tunnel-bench binary (the capacity harness): `$TUNNEL_BENCH_BIN`, else beside tunneld.
pub fn tunnel_bench_bin() -> Result<PathBuf> {
    sibling_bin("tunnel-bench", "TUNNEL_BENCH_BIN")
}

fn sibling_bin(name: &str, env: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test executable has no target dir")?;
    let p = dir.join(name);
    if p.is_file() {
        Ok(p)
    } else {
        bail!(
            "{name} binary not found at {} (set ${env}, or run `cargo build --workspace --bins` first; \
             scripts/test.sh does)",
            p.display()
        )
    }
}

/// Writes a users file line for `name` with a SHA-512 crypt hash made by `openssl passwd -6`.
pub fn users_file_line(name: &str, password: &str) -> Result<String> {
    static SALT: AtomicU32 = AtomicU32::new(0);
    let salt = format!("e2esalt{}", SALT.fetch_add(1, Ordering::Relaxed));
    let out = process::run(
        Command::new("openssl").args(["passwd", "-6", "-salt", &salt, "-stdin"]),
        Some(&format!("{password}\n")),
        Duration::from_secs(10),
    )?
    .check()?;
    Ok(format!("{name}::{}", out.stdout.trim()))
}

/// `pin-sha256:<base64 SHA-256 of the SubjectPublicKeyInfo>` of a PEM certificate, as openconnect's
/// `--servercert` wants it.
pub fn cert_pin(cert_pem: &Path) -> Result<String> {
    let script = format!(
        "openssl x509 -in '{}' -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64",
        cert_pem.display()
    );
    let out = process::run(
        Command::new("sh").args(["-c", &script]),
        None,
        Duration::from_secs(10),
    )?
    .check()?;
    let b64 = out.stdout.trim();
    if b64.len() != 44 {
        bail!(
            "could not compute the pin of {}: got {b64:?}",
            cert_pem.display()
        );
    }
    Ok(format!("pin-sha256:{b64}"))
}

/// An HTTP answer seen by curl.
#[derive(Debug, Clone)]
pub struct HttpReply {
    /// Status code (0 when no HTTP answer came).
    pub status: u16,
    /// The body.
    pub body: String,
    /// curl's exit code and stderr, for messages.
    pub detail: String,
}

static NEXT_GATEWAY: AtomicU32 = AtomicU32::new(0);

/// A running tunneld. Killed on drop; the tail of its log is printed then (cargo test shows it only
/// when the test failed).
#[derive(Debug)]
pub struct Gateway {
    child: Option<Child>,
    exit_code: Option<Option<i32>>,
    dir: PathBuf,
    log_path: PathBuf,
    config: GatewayConfig,
    gw_ns: String,
    pin: String,
}

impl Gateway {
    /// Writes the config and users file, starts `ip netns exec <gw> tunneld --config <file>`, and
    /// waits until its TLS port completes a handshake from the first device namespace.
    pub fn start(topo: &Topology, config: GatewayConfig) -> Result<Self> {
        let bin = tunneld_bin()?;
        let n = NEXT_GATEWAY.fetch_add(1, Ordering::Relaxed);
        let dir = topo.subdir(&format!("gateway{n}"))?;
        let state_dir = dir.join("state");
        fs::create_dir_all(&state_dir)?;
        let users_path = dir.join("users");
        let mut users = String::new();
        for (name, pw) in &config.users {
            users.push_str(&users_file_line(name, pw)?);
            users.push('\n');
        }
        fs::write(&users_path, users)?;
        let mut config = config;
        if config.get_str("server.state_dir").is_none() {
            config = config.set("server.state_dir", state_dir.display().to_string());
        }
        if config.get_str("auth.users_file").is_none() {
            config = config.set("auth.users_file", users_path.display().to_string());
        }
        // Every daemon gets its own control socket: tests (and other engineers' runs) never share
        // /run/tunneld/control.sock.
        if config.get_str("control.socket").is_none() {
            config = config.set(
                "control.socket",
                dir.join("control.sock").display().to_string(),
            );
        }
        let config_path = dir.join("tunneld.toml");
        fs::write(&config_path, config.to_toml())?;
        let log_path = dir.join("tunneld.log");
        let log = fs::File::create(&log_path)?;
        let rust_log = std::env::var("E2E_RUST_LOG").unwrap_or_else(|_| "info".to_string());
        let gw_ns = topo.ns("gw")?.to_string();
        let mut cmd = match &config.launcher {
            Some(launcher) => (launcher.0)(&LaunchInfo {
                gw_ns: &gw_ns,
                dir: &dir,
                args: &config.args,
            }),
            None => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", &gw_ns])
                    .arg(&bin)
                    .arg("--config")
                    .arg(&config_path)
                    .args(&config.args);
                cmd
            }
        };
        let child = cmd
            .env("RUST_LOG", rust_log)
            .env("NO_COLOR", "1")
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut gw = Self {
            child: Some(child),
            exit_code: None,
            dir,
            log_path,
            config,
            gw_ns,
            pin: String::new(),
        };
        gw.wait_ready(topo)?;
        gw.pin = match &gw.config.cert_pem {
            Some(pem) => cert_pin(pem)?,
            None => {
                let pem = state_dir.join("selfsigned-cert.pem");
                if !pem.is_file() {
                    bail!(
                        "tunneld started without [tls] cert but wrote no {}",
                        pem.display()
                    );
                }
                cert_pin(&pem)?
            }
        };
        Ok(gw)
    }

    fn wait_ready(&mut self, topo: &Topology) -> Result<()> {
        let listen = self.listen().to_string();
        let device = topo.first_device().to_string();
        let result = wait_until(
            START_TIMEOUT,
            &format!("tunneld to complete a TLS handshake on {listen}"),
            || {
                if let Some(code) = self.poll_exit()? {
                    // Name the daemon's own error line: with RUST_BACKTRACE=1 the log's tail is
                    // all backtrace, and the reason sits above it.
                    let log = self.log();
                    let reason = log
                        .lines()
                        .find(|l| l.starts_with("Error:"))
                        .unwrap_or("(no Error: line)");
                    bail!("tunneld exited with {code:?} during start-up; {reason}");
                }
                let mut cmd = topo.command_in(&device, "openssl")?;
                cmd.args(["s_client", "-connect", &listen, "-brief"]);
                Ok(process::run(&mut cmd, None, Duration::from_secs(5))?.success())
            },
        );
        result.map_err(|e| with_log(e, "tunneld log", &tail(&self.log(), 40)))
    }

    /// `host:port` the daemon listens on (from the config).
    pub fn listen(&self) -> &str {
        self.config
            .get_str("server.listen")
            .unwrap_or("198.18.1.1:443")
    }

    /// The URL clients use.
    pub fn url(&self) -> String {
        format!("https://{}/", self.listen())
    }

    /// The `--servercert` value for the certificate this daemon presents.
    pub fn pin(&self) -> &str {
        &self.pin
    }

    /// The configuration it was started with (after `state_dir`/`users_file` were filled in).
    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    /// Its working directory (config, users file, log, state).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configuration file it reads (and re-reads on reload).
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("tunneld.toml")
    }

    /// Rewrites its configuration file with `config` (for reload tests; the daemon only notices on
    /// SIGHUP or `tunnelctl reload`). Start from [`Self::config`] to keep the paths it was given.
    pub fn write_config(&mut self, config: GatewayConfig) -> Result<()> {
        fs::write(self.config_path(), config.to_toml())?;
        self.config = config;
        Ok(())
    }

    /// Writes raw text as its configuration file (e.g. an invalid one); the harness's own copy of
    /// the configuration is unchanged.
    pub fn write_config_text(&self, text: &str) -> Result<()> {
        Ok(fs::write(self.config_path(), text)?)
    }

    /// Rewrites its users file with these users and passwords.
    pub fn write_users(&self, users: &[(&str, &str)]) -> Result<()> {
        let path = self
            .config
            .get_str("auth.users_file")
            .context("auth.users_file not set")?;
        let mut text = String::new();
        for (name, pw) in users {
            text.push_str(&users_file_line(name, pw)?);
            text.push('\n');
        }
        Ok(fs::write(path, text)?)
    }

    /// Its control socket.
    pub fn control_socket(&self) -> PathBuf {
        PathBuf::from(
            self.config
                .get_str("control.socket")
                .unwrap_or("/run/tunneld/control.sock"),
        )
    }

    /// Runs `tunnelctl --socket <its socket> ARGS` (any exit code; see [`process::Output::check`]).
    pub fn tunnelctl(&self, args: &[&str]) -> Result<process::Output> {
        let bin = tunnelctl_bin()?;
        let mut cmd = Command::new(&bin);
        cmd.arg("--socket").arg(self.control_socket()).args(args);
        cmd.env_remove("TUNNELD_CONFIG");
        cmd.env_remove("TUNNELD_CONTROL_SOCKET");
        process::run(&mut cmd, None, Duration::from_secs(60))
    }

    /// Runs `tunnelctl ARGS --json` and parses its standard output; fails unless it exits 0.
    pub fn tunnelctl_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.tunnelctl(&all)?.check()?;
        serde_json::from_str(&out.stdout)
            .with_context(|| format!("tunnelctl {args:?} --json printed no JSON: {out}"))
    }

    /// Its `pin-sha256:` for a certificate it will present after a reload.
    pub fn set_pin(&mut self, pin: &str) {
        self.pin = pin.to_string();
    }

    /// Its process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything it has logged so far (colour codes removed).
    pub fn log(&self) -> String {
        read_log(&self.log_path)
    }

    /// Waits until its log contains a line that contains every one of `needles`; returns that line.
    pub fn wait_for_log(&self, needles: &[&str], timeout: Duration) -> Result<String> {
        wait_for(
            timeout,
            &format!("a tunneld log line containing {needles:?}"),
            || {
                Ok(self
                    .log()
                    .lines()
                    .find(|l| needles.iter().all(|n| l.contains(n)))
                    .map(str::to_string))
            },
        )
        .map_err(|e| with_log(e, "tunneld log", &tail(&self.log(), 30)))
    }

    /// Lines of its log that contain every one of `needles`.
    pub fn log_lines(&self, needles: &[&str]) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_string)
            .collect()
    }

    /// `GET <path>` on the plain-HTTP metrics listener (`/metrics`, `/healthz`, `/readyz`), with curl
    /// inside the gateway namespace.
    pub fn admin_get(&self, path: &str) -> Result<HttpReply> {
        let listen = self
            .config
            .get_str("metrics.listen")
            .unwrap_or("127.0.0.1:9477");
        let url = format!("http://{listen}{path}");
        let out = process::run(
            Command::new("ip").args([
                "netns",
                "exec",
                &self.gw_ns,
                "curl",
                "-sS",
                "--max-time",
                "5",
                "-w",
                "\n%{http_code}",
                &url,
            ]),
            None,
            Duration::from_secs(10),
        )?;
        let (body, code) = out
            .stdout
            .rsplit_once('\n')
            .unwrap_or(("", out.stdout.as_str()));
        Ok(HttpReply {
            status: code.trim().parse().unwrap_or(0),
            body: body.to_string(),
            detail: format!("curl exit {:?}: {}", out.code, out.stderr.trim()),
        })
    }

    /// The Prometheus text from the metrics listener, fetched with curl inside the gateway namespace.
    pub fn metrics(&self) -> Result<String> {
        let reply = self.admin_get("/metrics")?;
        anyhow::ensure!(
            reply.status == 200,
            "fetching /metrics: HTTP {} ({})",
            reply.status,
            reply.detail
        );
        Ok(reply.body)
    }

    /// One metric's value (summed over series whose labels include `labels`); an error if absent.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
        let text = self.metrics()?;
        metric_value(&text, name, labels).with_context(|| {
            format!(
                "metric {name}{labels:?} not in /metrics:\n{}",
                tail(&text, 60)
            )
        })
    }

    /// Like [`Self::metric`] but 0 when the series does not exist yet (counters with labels often
    /// appear only once incremented).
    pub fn metric_or_zero(&self, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
        Ok(metric_value(&self.metrics()?, name, labels).unwrap_or(0.0))
    }

    /// Waits until `name{labels}` equals `want`.
    pub fn wait_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        want: f64,
        timeout: Duration,
    ) -> Result<()> {
        let mut last = None;
        let r = wait_until(timeout, &format!("{name}{labels:?} == {want}"), || {
            let v = metric_value(&self.metrics()?, name, labels);
            last = v;
            Ok(v == Some(want))
        });
        r.map_err(|e| anyhow::anyhow!("{e:#} (last value: {last:?})"))
    }

    /// `GET <path>` over HTTPS from the namespace of `device`, as curl sees it (no certificate check:
    /// the pin is checked instead).
    pub fn https_get(&self, topo: &Topology, device: &str, path: &str) -> Result<HttpReply> {
        let url = format!("https://{}{}", self.listen(), path);
        let pin = self.pin.trim_start_matches("pin-sha256:");
        let mut cmd = topo.command_in(device, "curl")?;
        cmd.args([
            "-sS",
            "-k",
            "--pinnedpubkey",
            &format!("sha256//{pin}"),
            "--max-time",
            "10",
            "-w",
            "\n%{http_code}",
            &url,
        ]);
        let out = process::run(&mut cmd, None, Duration::from_secs(20))?;
        let (body, code) = out
            .stdout
            .rsplit_once('\n')
            .unwrap_or(("", out.stdout.as_str()));
        Ok(HttpReply {
            status: code.trim().parse().unwrap_or(0),
            body: body.to_string(),
            detail: format!("curl exit {:?}: {}", out.code, out.stderr.trim()),
        })
    }

    /// Sends a signal (`TERM`, `HUP`, ...) to the daemon.
    pub fn signal(&self, sig: &str) -> Result<()> {
        process::signal(self.pid().context("tunneld already reaped")?, sig)
    }

    /// Exit code if it has exited (`Some(None)` = killed by a signal).
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

    /// Waits for the daemon to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<i32>> {
        wait_for(timeout, "tunneld to exit", || self.poll_exit())
            .map_err(|e| with_log(e, "tunneld log", &tail(&self.log(), 30)))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        eprintln!(
            "----- tunneld log ({}), last 60 lines -----\n{}\n----- end tunneld log -----",
            self.log_path.display(),
            tail(&self.log(), 60)
        );
    }
}
