//! The test network: device namespaces, the gateway namespace and a corporate host, wired with veths.
//!
//! ```text
//!   dev (198.18.1.2) ─┐                       ┌──────────── gw ─────────────┐
//!   dev2 (198.18.1.3) ┼─ veth ─ br0 198.18.1.1 │ tunneld, tg0 = pool .1      │ corp0 198.18.2.1 ─ veth ─ corp
//!   ...               ┘                       └─────────────────────────────┘ fd00:198:18:2::1     198.18.2.10
//!                                                                                                 fd00:198:18:2::10
//! ```
//!
//! Every namespace name carries the test process id and a per-process counter, so tests may run in
//! parallel threads and in parallel processes. Interface names live inside the namespaces and are the
//! same in every test. Everything is torn down on drop, also when the test panics: processes still
//! inside the namespaces (all started by the test) are killed, then the namespaces are deleted.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use tempfile::TempDir;

use crate::process::{self, Background, Output};

/// The gateway's address on the device link (where tunneld listens).
pub const GW_DEVICE_ADDR: &str = "198.18.1.1";
/// The gateway's address on the corporate link.
pub const GW_CORP_ADDR: &str = "198.18.2.1";
/// The gateway's IPv6 address on the corporate link.
pub const GW_CORP_ADDR6: &str = "fd00:198:18:2::1";
/// The corporate host.
pub const CORP_ADDR: &str = "198.18.2.10";
/// The corporate host's IPv6 address.
pub const CORP_ADDR6: &str = "fd00:198:18:2::10";
/// The client address pool's covering prefix; corp routes it back through the gateway.
pub const POOL_ROUTE: &str = "198.18.128.0/24";
/// The IPv6 pool's prefix; corp routes it back through the gateway.
pub const POOL_ROUTE6: &str = "fd00:198:18:128::/64";

/// Prefix of every namespace this harness makes (used to find ones left by a killed run).
const NS_PREFIX: &str = "tge";

static NEXT_TOPOLOGY: AtomicU32 = AtomicU32::new(0);

/// Builder returned by [`Topology::new`].
#[derive(Debug, Default)]
#[must_use = "call .build() to create the namespaces"]
pub struct TopologyBuilder {
    devices: Vec<String>,
    gateway: bool,
    corp: bool,
}

impl TopologyBuilder {
    /// Adds a device namespace (a VPN client machine) named `name` (letters and digits, at most 8).
    pub fn device(mut self, name: &str) -> Self {
        self.devices.push(name.to_string());
        self
    }

    /// Adds the gateway namespace (`gw`), where tunneld runs.
    pub fn gateway(mut self) -> Self {
        self.gateway = true;
        self
    }

    /// Adds the corporate host namespace (`corp`) behind the gateway.
    pub fn corp(mut self) -> Self {
        self.corp = true;
        self
    }

    /// Creates the namespaces and links. Fails with a clear message when the machine cannot run the
    /// end-to-end tests (not root, no /dev/net/tun, a tool missing): these tests are never skipped.
    pub fn build(self) -> Result<Topology> {
        preflight()?;
        ensure!(self.gateway, "a topology needs .gateway()");
        ensure!(
            !self.devices.is_empty(),
            "a topology needs at least one .device(..)"
        );
        for d in &self.devices {
            ensure!(
                !d.is_empty() && d.len() <= 8 && d.chars().all(|c| c.is_ascii_alphanumeric()),
                "device name {d:?}: use 1-8 letters/digits"
            );
            ensure!(d != "gw" && d != "corp", "device name {d:?} is reserved");
        }
        remove_stale_namespaces();
        let n = NEXT_TOPOLOGY.fetch_add(1, Ordering::Relaxed);
        let id = format!("{NS_PREFIX}{}x{n}", std::process::id());
        let dir = tempfile::Builder::new()
            .prefix(&format!("e2e-{id}-"))
            .tempdir()
            .context("creating the test's temp dir")?;
        let mut topo = Topology {
            id,
            dir: Some(dir),
            namespaces: BTreeMap::new(),
            devices: Vec::new(),
            has_corp: self.corp,
        };
        topo.create(&self.devices)?;
        Ok(topo)
    }
}

/// One device namespace.
#[derive(Debug, Clone)]
pub struct Device {
    /// The name given to [`TopologyBuilder::device`].
    pub name: String,
    /// Its address on the device link.
    pub addr: String,
}

/// A set of network namespaces for one test. See the module docs for the picture.
#[derive(Debug)]
pub struct Topology {
    id: String,
    dir: Option<TempDir>,
    /// role ("gw", "corp", a device name) -> namespace name
    namespaces: BTreeMap<String, String>,
    devices: Vec<Device>,
    has_corp: bool,
}

impl Topology {
    /// Starts describing a topology: `Topology::new().device("dev").gateway().corp().build()`.
    #[allow(clippy::new_ret_no_self)]
    pub fn new() -> TopologyBuilder {
        TopologyBuilder::default()
    }

    /// The usual shape: one device `dev`, the gateway, and the corporate host.
    pub fn standard() -> Result<Self> {
        Self::new().device("dev").gateway().corp().build()
    }

    /// The per-test temporary directory (configs, logs, generated files). Deleted on drop.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("temp dir lives until drop").path()
    }

    /// A fresh subdirectory of [`Self::dir`].
    pub fn subdir(&self, name: &str) -> Result<PathBuf> {
        let p = self.dir().join(name);
        std::fs::create_dir_all(&p)?;
        Ok(p)
    }

    /// The namespace name for a role: `gw`, `corp`, or a device name.
    pub fn ns(&self, role: &str) -> Result<&str> {
        self.namespaces
            .get(role)
            .map(String::as_str)
            .with_context(|| format!("no namespace with role {role:?} in this topology"))
    }

    /// The device namespaces, in the order they were added.
    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    /// The first device's name (the usual client machine).
    pub fn first_device(&self) -> &str {
        &self.devices[0].name
    }

    /// A `Command` that runs `program` inside the namespace of `role`.
    pub fn command_in(&self, role: &str, program: &str) -> Result<Command> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.ns(role)?, program]);
        Ok(cmd)
    }

    /// Runs `args` inside the namespace of `role` and returns what it printed (any exit code).
    pub fn exec_in(&self, role: &str, args: &[&str]) -> Result<Output> {
        let (program, rest) = args.split_first().context("empty command")?;
        let mut cmd = self.command_in(role, program)?;
        cmd.args(rest);
        process::run(&mut cmd, None, Duration::from_secs(60))
    }

    /// Like [`Self::exec_in`] but fails unless the command exits 0.
    pub fn run_in(&self, role: &str, args: &[&str]) -> Result<Output> {
        self.exec_in(role, args)?.check()
    }

    /// Runs a `sh -c` script inside the namespace of `role`, with a deadline.
    pub fn sh_in(&self, role: &str, script: &str, timeout: Duration) -> Result<Output> {
        let mut cmd = self.command_in(role, "sh")?;
        cmd.args(["-c", script]);
        process::run(&mut cmd, None, timeout)
    }

    /// Starts a long-running program inside the namespace of `role`; its output goes to
    /// `<dir>/<log_name>`. Killed when the handle drops.
    pub fn spawn_in(&self, role: &str, args: &[&str], log_name: &str) -> Result<Background> {
        let (program, rest) = args.split_first().context("empty command")?;
        let mut cmd = self.command_in(role, program)?;
        cmd.args(rest);
        Background::spawn(&mut cmd, self.dir().join(log_name))
    }

    /// Pings `dst` from the namespace of `role`; `Ok` only if every one of `count` echoes is answered.
    pub fn ping(&self, role: &str, dst: &str, count: u32) -> Result<Output> {
        let count = count.to_string();
        let out = self.exec_in(
            role,
            &["ping", "-n", "-c", &count, "-i", "0.2", "-W", "2", dst],
        )?;
        if out.success() && out.stdout.contains(" 0% packet loss") {
            Ok(out)
        } else {
            bail!("ping {dst} from {role} lost packets: {out}")
        }
    }

    fn create(&mut self, devices: &[String]) -> Result<()> {
        let gw = self.add_namespace("gw")?;
        ip(&["-n", &gw, "link", "add", "br0", "type", "bridge"])?;
        ip(&[
            "-n",
            &gw,
            "addr",
            "add",
            &format!("{GW_DEVICE_ADDR}/24"),
            "dev",
            "br0",
        ])?;
        ip(&["-n", &gw, "link", "set", "br0", "up"])?;
        for (i, name) in devices.iter().enumerate() {
            let ns = self.add_namespace(name)?;
            let addr = format!("198.18.1.{}", 2 + i);
            let port = format!("d-{name}");
            ip(&[
                "-n", &gw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            ip(&["-n", &gw, "link", "set", &port, "master", "br0", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            self.devices.push(Device {
                name: name.clone(),
                addr,
            });
        }
        if self.has_corp {
            let corp = self.add_namespace("corp")?;
            ip(&[
                "-n", &gw, "link", "add", "corp0", "type", "veth", "peer", "name", "eth0", "netns",
                &corp,
            ])?;
            ip(&[
                "-n",
                &gw,
                "addr",
                "add",
                &format!("{GW_CORP_ADDR}/24"),
                "dev",
                "corp0",
            ])?;
            ip(&[
                "-n",
                &gw,
                "addr",
                "add",
                &format!("{GW_CORP_ADDR6}/64"),
                "dev",
                "corp0",
                "nodad",
            ])?;
            ip(&["-n", &gw, "link", "set", "corp0", "up"])?;
            ip(&[
                "-n",
                &corp,
                "addr",
                "add",
                &format!("{CORP_ADDR}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&[
                "-n",
                &corp,
                "addr",
                "add",
                &format!("{CORP_ADDR6}/64"),
                "dev",
                "eth0",
                "nodad",
            ])?;
            ip(&["-n", &corp, "link", "set", "eth0", "up"])?;
            ip(&["-n", &corp, "route", "add", POOL_ROUTE, "via", GW_CORP_ADDR])?;
            ip(&[
                "-n",
                &corp,
                "-6",
                "route",
                "add",
                POOL_ROUTE6,
                "via",
                GW_CORP_ADDR6,
            ])?;
        }
        self.run_in(
            "gw",
            &[
                "sysctl",
                "-q",
                "-w",
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
            ],
        )?;
        Ok(())
    }

    fn add_namespace(&mut self, role: &str) -> Result<String> {
        let ns = format!("{}-{role}", self.id);
        ip(&["netns", "add", &ns])?;
        self.namespaces.insert(role.to_string(), ns.clone());
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        // Interfaces made later (veth ends, TUNs) inherit `default`: no duplicate address detection,
        // so IPv6 addresses are usable at once.
        self.run_in(
            role,
            &[
                "sysctl",
                "-q",
                "-w",
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
            ],
        )?;
        Ok(ns)
    }

    /// Kills what is left in the namespaces and deletes them. Called by drop; safe to call twice.
    fn teardown(&mut self) {
        for ns in self.namespaces.values() {
            delete_namespace(ns);
        }
        self.namespaces.clear();
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.teardown();
        // E2E_KEEP=1 keeps configs, logs and client environment records for a look afterwards.
        if std::env::var_os("E2E_KEEP").is_some() {
            if let Some(dir) = self.dir.take() {
                eprintln!("E2E_KEEP: test files kept in {}", dir.keep().display());
            }
        }
    }
}

fn ip(args: &[&str]) -> Result<()> {
    process::run(Command::new("ip").args(args), None, Duration::from_secs(30))?.check()?;
    Ok(())
}

/// Kills every process still inside `ns` (all of them were started by this harness), then deletes it.
fn delete_namespace(ns: &str) {
    if let Ok(out) = process::run(
        Command::new("ip").args(["netns", "pids", ns]),
        None,
        Duration::from_secs(10),
    ) {
        for pid in out
            .stdout
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
        {
            let _ = process::signal(pid, "KILL");
        }
    }
    let _ = process::run(
        Command::new("ip").args(["netns", "del", ns]),
        None,
        Duration::from_secs(30),
    );
}

/// Deletes namespaces left behind by an earlier test process that was killed before its drops ran
/// (names are `tge<pid>x<n>-<role>`; only those whose pid is gone are touched).
fn remove_stale_namespaces() {
    let Ok(out) = process::run(
        Command::new("ip").args(["netns", "list"]),
        None,
        Duration::from_secs(10),
    ) else {
        return;
    };
    for line in out.stdout.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(NS_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('x').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            delete_namespace(name);
        }
    }
}

/// Checks that this machine can run the end-to-end tests, and says what is missing if not.
pub fn preflight() -> Result<()> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?");
    ensure!(
        euid == "0",
        "the end-to-end tests need root (network namespaces, TUN devices); effective uid is {euid}. \
         Run them with scripts/test.sh as root. They are not optional and are never skipped."
    );
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .context("the end-to-end tests need /dev/net/tun (TUN devices); it cannot be opened")?;
    let mut missing = Vec::new();
    for tool in [
        "ip",
        "openconnect",
        "openssl",
        "curl",
        "python3",
        "ping",
        "ss",
        "sysctl",
        "kill",
        "sha256sum",
    ] {
        if which(tool).is_none() {
            missing.push(tool);
        }
    }
    ensure!(
        missing.is_empty(),
        "the end-to-end tests need these programs, which are missing: {}. scripts/test.sh installs them.",
        missing.join(", ")
    );
    Ok(())
}

/// Finds `program` on PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}
