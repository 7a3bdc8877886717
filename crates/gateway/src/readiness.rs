//! `tunnelctl readiness`: checks a host and a configuration before tunneld runs there, the way
//! Microsoft Tunnel's `mst-readiness` does for its gateway. Each check ends PASS, WARN or FAIL
//! (SKIP when it does not apply), and every WARN and FAIL says how to fix it.
//!
//! What is checked: IPv4 (and IPv6) forwarding; the TUN device; nftables when NAT is on; a container
//! runtime when asked; that the listen ports are free; that the pools and routes do not overlap the
//! Docker or Podman default bridges or this host's own networks; and the certificate: readable (PEM
//! or PFX), key matches, not expired, validity at most two years, SAN matches the public name,
//! wildcards only as a whole left-most label, full chain present, OCSP/CRL URLs reported.
//!
//! The facts come through [`Host`] (paths, `PATH`, host networks), so tests can point every check at
//! a fake machine; [`Host::system`] is the real one.

use std::ffi::OsString;
use std::fmt;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use ipnet::IpNet;
use openssl::asn1::Asn1Time;
use openssl::nid::Nid;
use openssl::pkcs12::Pkcs12;
use openssl::pkey::{PKey, Private};
use openssl::stack::Stack;
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::verify::X509VerifyFlags;
use openssl::x509::{X509Ref, X509StoreContext, X509};
use serde::{Deserialize, Serialize};

use crate::config::Config;

/// Docker's default bridge network.
pub const DOCKER_BRIDGE: &str = "172.17.0.0/16";
/// Podman's default bridge network.
pub const PODMAN_BRIDGE: &str = "10.88.0.0/16";
/// Longest certificate validity accepted: two years (with one leap day). iOS and macOS refuse TLS
/// server certificates valid for longer.
pub const MAX_VALIDITY_DAYS: i32 = 731;
/// A certificate expiring within this many days gets a WARN.
pub const EXPIRY_WARN_DAYS: i32 = 30;

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    /// Fine.
    Pass,
    /// Works, but worth a look.
    Warn,
    /// Will not work (or not safely) as it is.
    Fail,
    /// Does not apply to this configuration.
    Skip,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pass => "PASS",
            Self::Warn => "WARN",
            Self::Fail => "FAIL",
            Self::Skip => "SKIP",
        })
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// Stable identifier, e.g. `cert.san`.
    pub id: String,
    /// The outcome.
    pub status: Status,
    /// What was found.
    pub summary: String,
    /// How to fix it (set for WARN and FAIL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    fn new(id: &str, status: Status, summary: impl Into<String>, fix: Option<String>) -> Self {
        Self {
            id: id.to_owned(),
            status,
            summary: summary.into(),
            fix,
        }
    }

    fn pass(id: &str, summary: impl Into<String>) -> Self {
        Self::new(id, Status::Pass, summary, None)
    }

    fn skip(id: &str, summary: impl Into<String>) -> Self {
        Self::new(id, Status::Skip, summary, None)
    }

    fn warn(id: &str, summary: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::new(id, Status::Warn, summary, Some(fix.into()))
    }

    fn fail(id: &str, summary: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::new(id, Status::Fail, summary, Some(fix.into()))
    }
}

/// Every check's result, in a fixed order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The checks.
    pub checks: Vec<Check>,
}

impl Report {
    /// The check with this id.
    pub fn get(&self, id: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.id == id)
    }

    /// How many checks ended with `status`.
    pub fn count(&self, status: Status) -> usize {
        self.checks.iter().filter(|c| c.status == status).count()
    }

    /// True when any check failed.
    pub fn has_failures(&self) -> bool {
        self.count(Status::Fail) > 0
    }

    /// A report for a configuration that could not be loaded at all.
    pub fn config_error(error: &dyn fmt::Display) -> Self {
        Self {
            checks: vec![Check::fail(
                "config",
                format!("the configuration cannot be used: {error}"),
                "fix the fields named above (config/tunneld.toml documents every field), then run readiness again",
            )],
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self.checks.iter().map(|c| c.id.len()).max().unwrap_or(0);
        for c in &self.checks {
            writeln!(f, "{}  {:width$}  {}", c.status, c.id, c.summary)?;
            if let Some(fix) = &c.fix {
                writeln!(f, "      {:width$}  fix: {fix}", "")?;
            }
        }
        write!(
            f,
            "{} passed, {} warning{}, {} failed, {} skipped",
            self.count(Status::Pass),
            self.count(Status::Warn),
            if self.count(Status::Warn) == 1 {
                ""
            } else {
                "s"
            },
            self.count(Status::Fail),
            self.count(Status::Skip)
        )
    }
}

/// What the operator asked for beyond the configuration.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Check for a container runtime (Docker >= 19.03 or Podman >= 3).
    pub container_runtime: bool,
    /// The public FQDN or IP clients use; default `server.server_name`.
    pub public_name: Option<String>,
    /// Extra trusted root certificates (PEM) for the chain check, for a private CA.
    pub ca_file: Option<PathBuf>,
}

/// Where the checks read the machine from.
#[derive(Debug, Clone)]
pub struct Host {
    /// `/proc/sys`.
    pub proc_sys: PathBuf,
    /// `/dev/net/tun`.
    pub dev_tun: PathBuf,
    /// `/sys/module` (to tell "tun module loaded" from "not loaded").
    pub sys_module: PathBuf,
    /// The search path for `nft`, `iptables`, `docker`, `podman`, `ip`; `None` means `$PATH`.
    pub path: Option<OsString>,
    /// The host's own networks (interface, prefix); `None` means ask `ip -json address`.
    pub networks: Option<Vec<(String, IpNet)>>,
    /// Trust the system's root certificates in the chain check.
    pub system_roots: bool,
}

impl Host {
    /// The real machine.
    pub fn system() -> Self {
        Self {
            proc_sys: PathBuf::from("/proc/sys"),
            dev_tun: PathBuf::from("/dev/net/tun"),
            sys_module: PathBuf::from("/sys/module"),
            path: None,
            networks: None,
            system_roots: true,
        }
    }

    fn which(&self, program: &str) -> Option<PathBuf> {
        let path = self.path.clone().or_else(|| std::env::var_os("PATH"))?;
        std::env::split_paths(&path)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    }

    /// Runs `program args` found on the search path: `None` when it is not installed, else its
    /// success and its stdout (or stderr when it failed).
    fn run(&self, program: &str, args: &[&str]) -> Option<(bool, String)> {
        let exe = self.which(program)?;
        match Command::new(&exe).args(args).output() {
            Ok(out) => {
                let text = if out.status.success() {
                    out.stdout
                } else {
                    out.stderr
                };
                Some((
                    out.status.success(),
                    String::from_utf8_lossy(&text).trim().to_owned(),
                ))
            }
            Err(e) => Some((false, e.to_string())),
        }
    }

    fn host_networks(&self, skip_if: &str) -> Result<Vec<(String, IpNet)>, String> {
        if let Some(n) = &self.networks {
            return Ok(n.clone());
        }
        let (ok, text) = self
            .run("ip", &["-json", "address", "show"])
            .ok_or("the `ip` command (iproute2) is not installed")?;
        if !ok {
            return Err(format!("`ip -json address show` failed: {text}"));
        }
        parse_ip_json(&text, skip_if)
    }
}

/// Reads `ip -json address show` output: every global- or site-scope address as its network,
/// except on `skip_if` (tunneld's own TUN).
pub fn parse_ip_json(text: &str, skip_if: &str) -> Result<Vec<(String, IpNet)>, String> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("cannot parse `ip -json address`: {e}"))?;
    let mut out = Vec::new();
    for iface in v.as_array().map(Vec::as_slice).unwrap_or_default() {
        let name = iface["ifname"].as_str().unwrap_or("?");
        if name == skip_if {
            continue;
        }
        for a in iface["addr_info"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let scope = a["scope"].as_str().unwrap_or("");
            if scope == "host" || scope == "link" {
                continue;
            }
            let (Some(local), Some(len)) = (
                a["local"].as_str().and_then(|s| s.parse::<IpAddr>().ok()),
                a["prefixlen"].as_u64().and_then(|l| u8::try_from(l).ok()),
            ) else {
                continue;
            };
            if let Ok(net) = IpNet::new(local, len) {
                out.push((name.to_owned(), net.trunc()));
            }
        }
    }
    Ok(out)
}

/// Runs every check of `config` on `host`.
pub fn run(config: &Config, opts: &Options, host: &Host) -> Report {
    let mut checks = vec![Check::pass("config", "the configuration is valid")];
    checks.push(check_forwarding(
        host,
        "ip_forward",
        "net/ipv4/ip_forward",
        "net.ipv4.ip_forward",
    ));
    if config.network.ipv6_pool.is_some() {
        checks.push(check_forwarding(
            host,
            "ipv6_forward",
            "net/ipv6/conf/all/forwarding",
            "net.ipv6.conf.all.forwarding",
        ));
    }
    if config.dtls.enabled {
        checks.push(check_udp_buffers(host));
    }
    checks.push(check_tun(host));
    checks.push(check_nat(config, host));
    checks.push(check_container_runtime(opts, host));
    checks.push(check_port(
        "listen.tls",
        "server.listen",
        Some(config.server.listen),
    ));
    checks.push(check_port(
        "listen.metrics",
        "metrics.listen",
        config.metrics.listen,
    ));
    let networks = host.host_networks(&config.network.tun_name);
    checks.push(check_pool_overlap(config, &networks));
    checks.push(check_route_overlap(config, &networks));
    checks.extend(check_certificate(config, opts, host));
    Report { checks }
}

fn check_forwarding(host: &Host, id: &str, rel: &str, sysctl: &str) -> Check {
    let path = host.proc_sys.join(rel);
    let fix = format!(
        "run `sysctl -w {sysctl}=1` and make it permanent with a drop-in: `echo '{sysctl} = 1' > /etc/sysctl.d/90-tunneld.conf` (tunneld also tries at start, which fails in a container without the right)"
    );
    match std::fs::read_to_string(&path) {
        Ok(v) if v.trim() == "1" => Check::pass(id, format!("{sysctl} = 1")),
        Ok(v) => Check::fail(
            id,
            format!(
                "{sysctl} = {}: the gateway would not forward client packets",
                v.trim()
            ),
            fix,
        ),
        Err(e) => Check::fail(id, format!("cannot read {}: {e}", path.display()), fix),
    }
}

/// The largest socket buffer the DTLS sockets ask for (the listening socket's; sessions' own
/// sockets ask for less).
const UDP_BUFFER_WANTED: usize = crate::dtls::SOCKET_BUFFER;

/// `net.core.rmem_max` and `wmem_max` must let the DTLS sockets have the buffers they ask for: at
/// the stock cap a session's socket overflows when its client sends at full speed.
fn check_udp_buffers(host: &Host) -> Check {
    const ID: &str = "udp_buffers";
    let fix = format!(
        "run `sysctl -w net.core.rmem_max={UDP_BUFFER_WANTED} net.core.wmem_max={UDP_BUFFER_WANTED}` and keep both in /etc/sysctl.d/90-tunneld.conf (deploy/sysctl.d/90-tunneld.conf has them; in a container, set them on the host)"
    );
    let mut low = Vec::new();
    for name in ["rmem_max", "wmem_max"] {
        let path = host.proc_sys.join("net/core").join(name);
        match std::fs::read_to_string(&path) {
            Ok(v) => match v.trim().parse::<usize>() {
                Ok(n) if n >= UDP_BUFFER_WANTED => {}
                Ok(n) => low.push(format!("net.core.{name} = {n}")),
                Err(_) => low.push(format!("net.core.{name} = {:?} (not a number)", v.trim())),
            },
            Err(e) => low.push(format!("cannot read {}: {e}", path.display())),
        }
    }
    if low.is_empty() {
        Check::pass(
            ID,
            format!("net.core.rmem_max and wmem_max allow the {UDP_BUFFER_WANTED}-byte DTLS socket buffers"),
        )
    } else {
        Check::warn(
            ID,
            format!(
                "{}: DTLS sockets get smaller buffers than they ask for, and drop datagrams when a client sends at full speed",
                low.join(", ")
            ),
            fix,
        )
    }
}

fn check_tun(host: &Host) -> Check {
    const ID: &str = "tun_device";
    let path = &host.dev_tun;
    match std::fs::metadata(path) {
        Ok(m) if m.file_type().is_char_device() => {
            let rdev = m.rdev();
            let (major, minor) = (
                (rdev >> 8) & 0xfff,
                (rdev & 0xff) | ((rdev >> 12) & 0xfff00),
            );
            if (major, minor) == (10, 200) {
                Check::pass(ID, format!("{} is the TUN device (10:200)", path.display()))
            } else {
                Check::fail(
                    ID,
                    format!(
                        "{} is character device {major}:{minor}, not the TUN device 10:200",
                        path.display()
                    ),
                    format!(
                        "recreate it: `rm {p} && mknod {p} c 10 200 && chmod 0666 {p}`",
                        p = path.display()
                    ),
                )
            }
        }
        Ok(_) => Check::fail(
            ID,
            format!("{} exists but is not a character device", path.display()),
            format!(
                "recreate it: `rm {p} && mknod {p} c 10 200 && chmod 0666 {p}`",
                p = path.display()
            ),
        ),
        Err(e) => {
            let loaded = host.sys_module.join("tun").exists();
            let fix = if loaded {
                format!(
                    "the tun module is loaded but the device node is missing: `mkdir -p {d} && mknod {p} c 10 200`; in a container pass `--device /dev/net/tun --cap-add NET_ADMIN`",
                    d = path.parent().unwrap_or(Path::new("/")).display(),
                    p = path.display()
                )
            } else {
                "load the module: `modprobe tun` (and add `tun` to /etc/modules-load.d/tunneld.conf); in a container pass `--device /dev/net/tun --cap-add NET_ADMIN`".to_owned()
            };
            Check::fail(ID, format!("{}: {e}", path.display()), fix)
        }
    }
}

fn check_nat(config: &Config, host: &Host) -> Check {
    const ID: &str = "nat_firewall";
    if !config.network.nat {
        return Check::skip(
            ID,
            "network.nat is off (routed mode): no NAT rules are needed",
        );
    }
    match host.run("nft", &["list", "tables"]) {
        Some((true, _)) => {
            let version = host
                .run("nft", &["--version"])
                .map(|(_, v)| v)
                .unwrap_or_default();
            Check::pass(ID, format!("nftables works ({version})"))
        }
        Some((false, err)) => Check::fail(
            ID,
            format!("`nft list tables` failed: {err}"),
            "load nf_tables (`modprobe nf_tables`) and run tunneld as root or with CAP_NET_ADMIN; or set network.nat = false and route the pool back to this host",
        ),
        None => {
            let iptables = if host.which("iptables").is_some() {
                " (iptables is installed, but tunneld installs its NAT rules with nft)"
            } else {
                ""
            };
            Check::fail(
                ID,
                format!("network.nat is on but `nft` is not installed{iptables}"),
                "install nftables (`apt-get install nftables`), or set network.nat = false and route the pool back to this host",
            )
        }
    }
}

/// The first `major.minor` in `text` (e.g. `Docker version 20.10.24+dfsg1` gives (20, 10)).
fn parse_version(text: &str) -> Option<(u32, u32)> {
    text.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter(|w| w.contains('.'))
        .find_map(|w| {
            let mut it = w.split('.');
            let major = it.next()?.parse().ok()?;
            let minor = it.next()?.parse().ok()?;
            Some((major, minor))
        })
}

fn check_container_runtime(opts: &Options, host: &Host) -> Check {
    const ID: &str = "container_runtime";
    if !opts.container_runtime {
        return Check::skip(
            ID,
            "not asked for (tunneld runs natively; use --container-runtime to check)",
        );
    }
    let mut found = Vec::new();
    for (program, min, label) in [("docker", (19, 3), "Docker"), ("podman", (3, 0), "Podman")] {
        let Some((ok, text)) = host.run(program, &["--version"]) else {
            continue;
        };
        match parse_version(&text).filter(|_| ok) {
            Some(v) if v >= min => {
                return Check::pass(ID, format!("{label} {}.{} ({text})", v.0, v.1));
            }
            Some(v) => found.push(format!(
                "{label} {}.{} is older than {}.{:02}",
                v.0, v.1, min.0, min.1
            )),
            None => found.push(format!("`{program} --version` gave no version: {text:?}")),
        }
    }
    let summary = if found.is_empty() {
        "neither docker nor podman is installed".to_owned()
    } else {
        found.join("; ")
    };
    Check::fail(
        ID,
        summary,
        "install Docker 19.03 or later, or Podman 3 or later (`apt-get install podman`)",
    )
}

fn check_port(id: &str, field: &str, addr: Option<SocketAddr>) -> Check {
    let Some(addr) = addr else {
        return Check::skip(id, format!("{field} is off"));
    };
    match TcpListener::bind(addr) {
        Ok(_) => Check::pass(id, format!("{addr} ({field}) is free")),
        Err(e) => {
            let (what, fix) = match e.kind() {
                ErrorKind::AddrInUse => (
                    "is in use".to_owned(),
                    format!(
                        "find the owner with `ss -ltnp 'sport = :{}'` and stop it, or change {field} (if tunneld is already running there, this is expected)",
                        addr.port()
                    ),
                ),
                ErrorKind::PermissionDenied => (
                    "cannot be bound without privileges".to_owned(),
                    "run tunneld as root or give it CAP_NET_BIND_SERVICE".to_owned(),
                ),
                ErrorKind::AddrNotAvailable => (
                    "is not an address of this host".to_owned(),
                    format!("use one of this host's addresses (or 0.0.0.0) in {field}"),
                ),
                _ => (format!("cannot be bound ({e})"), format!("check {field}")),
            };
            Check::fail(id, format!("{addr} ({field}) {what}"), fix)
        }
    }
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(b) || b.contains(a)
}

fn bridges() -> [(&'static str, IpNet); 2] {
    [
        (
            "Docker's default bridge",
            DOCKER_BRIDGE.parse().unwrap_or_default(),
        ),
        (
            "Podman's default bridge",
            PODMAN_BRIDGE.parse().unwrap_or_default(),
        ),
    ]
}

fn check_pool_overlap(config: &Config, networks: &Result<Vec<(String, IpNet)>, String>) -> Check {
    const ID: &str = "address_overlap.pool";
    let n = &config.network;
    let pools: Vec<(&str, IpNet)> = std::iter::once(("network.ipv4_pool", IpNet::V4(n.ipv4_pool)))
        .chain(n.ipv6_pool.map(|p| ("network.ipv6_pool", IpNet::V6(p))))
        .collect();
    let mut problems = Vec::new();
    for (field, pool) in &pools {
        for (name, bridge) in bridges() {
            if overlaps(pool, &bridge) {
                problems.push(format!("{field} {pool} overlaps {name} {bridge}"));
            }
        }
        if let Ok(nets) = networks {
            for (ifname, net) in nets {
                if overlaps(pool, net) {
                    problems.push(format!("{field} {pool} overlaps {net} on {ifname}"));
                }
            }
        }
    }
    if !problems.is_empty() {
        return Check::fail(
            ID,
            problems.join("; "),
            "choose a pool that no network on this host (nor a container bridge) uses, e.g. a free 10.x.0.0/16 or 100.64.0.0/10 range",
        );
    }
    match networks {
        Ok(_) => Check::pass(
            ID,
            format!(
                "{} overlap{} no container bridge and none of this host's networks",
                pools
                    .iter()
                    .map(|p| p.1.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                if pools.len() == 1 { "s" } else { "" }
            ),
        ),
        Err(e) => Check::warn(
            ID,
            format!("no container-bridge overlap, but this host's networks are unknown: {e}"),
            "install iproute2 so the host's networks can be compared",
        ),
    }
}

fn check_route_overlap(config: &Config, networks: &Result<Vec<(String, IpNet)>, String>) -> Check {
    const ID: &str = "address_overlap.routes";
    let n = &config.network;
    let routes: Vec<(String, IpNet)> = n
        .split_include
        .iter()
        .enumerate()
        .map(|(i, r)| (format!("network.split_include[{i}]"), r.trunc()))
        .collect();
    if routes.is_empty() {
        return Check::skip(
            ID,
            "no split_include routes (all traffic goes through the tunnel)",
        );
    }
    let mut bridge_hits = Vec::new();
    for (field, route) in &routes {
        for (name, bridge) in bridges() {
            if overlaps(route, &bridge) {
                bridge_hits.push(format!("{field} {route} overlaps {name} {bridge}"));
            }
        }
    }
    if !bridge_hits.is_empty() {
        return Check::fail(
            ID,
            bridge_hits.join("; "),
            "clients' packets for those addresses would go to a local container bridge instead of the corporate network: move the bridge (Docker: \"bip\" in /etc/docker/daemon.json; Podman: the default network's subnet in containers.conf) or narrow the routes",
        );
    }
    let host_hits: Vec<String> = match networks {
        Ok(nets) => routes
            .iter()
            .flat_map(|(field, route)| {
                nets.iter()
                    .filter(move |(_, net)| overlaps(route, net))
                    .map(move |(ifname, net)| format!("{field} {route} overlaps {net} on {ifname}"))
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    if !host_hits.is_empty() {
        return Check::warn(
            ID,
            host_hits.join("; "),
            "fine when that network is the corporate network behind this gateway; wrong when it is the network clients reach the gateway through (their tunnel would carry its own connection)",
        );
    }
    Check::pass(
        ID,
        format!(
            "{} route{} overlap no container bridge{}",
            routes.len(),
            if routes.len() == 1 { "" } else { "s" },
            if networks.is_ok() {
                " and none of this host's networks"
            } else {
                ""
            }
        ),
    )
}

/// A certificate source read for checking.
struct Material {
    /// Leaf first, then the rest in file order.
    chain: Vec<X509>,
    key: Option<PKey<Private>>,
    source: String,
}

const CERT_IDS: [&str; 8] = [
    "cert.readable",
    "cert.key_match",
    "cert.expiry",
    "cert.validity_period",
    "cert.san",
    "cert.wildcard",
    "cert.chain",
    "cert.revocation",
];

fn read_material(config: &Config) -> Result<Option<Material>, (String, String)> {
    let tls = &config.tls;
    if let Some(pfx) = &tls.pfx {
        let der = std::fs::read(pfx).map_err(|e| {
            (
                format!("tls.pfx: cannot read {}: {e}", pfx.display()),
                "check the path and that it is readable by root".to_owned(),
            )
        })?;
        let password = match (&tls.pfx_password, &tls.pfx_password_file) {
            (Some(p), _) => p.clone(),
            (None, Some(f)) => {
                let t = std::fs::read_to_string(f).map_err(|e| {
                    (
                        format!("tls.pfx_password_file: cannot read {}: {e}", f.display()),
                        "check the path of the password file".to_owned(),
                    )
                })?;
                let t = t.strip_suffix('\n').unwrap_or(&t);
                t.strip_suffix('\r').unwrap_or(t).to_owned()
            }
            (None, None) => String::new(),
        };
        let parsed = Pkcs12::from_der(&der)
            .map_err(|e| {
                (
                    format!("tls.pfx: {} is not a DER PKCS#12 file: {e}", pfx.display()),
                    "export the certificate as .pfx/.p12, or use a PEM pair in tls.cert and tls.key".to_owned(),
                )
            })?
            .parse2(&password)
            .map_err(|e| {
                let mac = e.errors().iter().any(|x| {
                    x.reason()
                        .is_some_and(|r| r.to_ascii_lowercase().contains("mac verify"))
                });
                if mac {
                    (
                        format!(
                            "tls.pfx: wrong or missing password for {} ({})",
                            pfx.display(),
                            if password.is_empty() { "no password configured" } else { "the configured password does not open it" }
                        ),
                        "set tls.pfx_password_file (or tls.pfx_password) to the PFX's export password".to_owned(),
                    )
                } else {
                    (
                        format!("tls.pfx: cannot decrypt {}: {e}", pfx.display()),
                        "re-export it with AES: `openssl pkcs12 -legacy -in OLD -nodes | openssl pkcs12 -export -out NEW`".to_owned(),
                    )
                }
            })?;
        let leaf = parsed.cert.ok_or_else(|| {
            (
                format!("tls.pfx: {} holds no certificate", pfx.display()),
                "export the PFX with the certificate and its private key".to_owned(),
            )
        })?;
        let mut chain = vec![leaf];
        chain.extend(
            parsed
                .ca
                .map(|s| s.into_iter().collect::<Vec<_>>())
                .unwrap_or_default(),
        );
        return Ok(Some(Material {
            chain,
            key: parsed.pkey,
            source: format!("PKCS#12 {}", pfx.display()),
        }));
    }
    let (Some(cert), Some(key)) = (&tls.cert, &tls.key) else {
        return Ok(None);
    };
    let pem = std::fs::read(cert).map_err(|e| {
        (
            format!("tls.cert: cannot read {}: {e}", cert.display()),
            "check the path and that it is readable by root".to_owned(),
        )
    })?;
    let chain = X509::stack_from_pem(&pem).unwrap_or_default();
    if chain.is_empty() {
        return Err((
            format!("tls.cert: no PEM certificate in {}", cert.display()),
            "tls.cert must hold \"-----BEGIN CERTIFICATE-----\" blocks, the server's first (convert DER with `openssl x509 -inform der -in CERT -out CERT.pem`)".to_owned(),
        ));
    }
    let key_pem = std::fs::read(key).map_err(|e| {
        (
            format!("tls.key: cannot read {}: {e}", key.display()),
            "check the path and that it is readable by root".to_owned(),
        )
    })?;
    let pkey = PKey::private_key_from_pem(&key_pem).map_err(|e| {
        (
            format!(
                "tls.key: no usable unencrypted PEM private key in {}: {e}",
                key.display()
            ),
            "store the key unencrypted with mode 0600 (`openssl pkey -in KEY -out KEY.plain`)"
                .to_owned(),
        )
    })?;
    Ok(Some(Material {
        chain,
        key: Some(pkey),
        source: format!("PEM {} + {}", cert.display(), key.display()),
    }))
}

fn check_certificate(config: &Config, opts: &Options, host: &Host) -> Vec<Check> {
    let skip_rest = |why: &str| -> Vec<Check> {
        CERT_IDS
            .iter()
            .skip(1)
            .map(|id| Check::skip(id, why.to_owned()))
            .collect()
    };
    let m = match read_material(config) {
        Ok(Some(m)) => m,
        Ok(None) => {
            let mut v = vec![Check::warn(
                "cert.readable",
                "no certificate configured: tunneld uses a self-signed certificate, which clients must pin (--servercert)",
                "set tls.cert and tls.key (PEM) or tls.pfx to a certificate from a CA your clients trust",
            )];
            v.extend(skip_rest("no certificate configured"));
            return v;
        }
        Err((summary, fix)) => {
            let mut v = vec![Check::fail("cert.readable", summary, fix)];
            v.extend(skip_rest("the certificate could not be read"));
            return v;
        }
    };
    let Some(leaf) = m.chain.first() else {
        return skip_rest("no certificate");
    };
    vec![
        Check::pass(
            "cert.readable",
            format!(
                "{}: {} certificate{}{}",
                m.source,
                m.chain.len(),
                if m.chain.len() == 1 { "" } else { "s" },
                if m.key.is_some() {
                    " and a private key"
                } else {
                    ""
                }
            ),
        ),
        check_key(&m),
        check_expiry(leaf),
        check_validity_period(leaf),
        check_san(
            leaf,
            opts.public_name
                .as_deref()
                .or(config.server.server_name.as_deref()),
        ),
        check_wildcards(leaf),
        check_chain(&m.chain, opts, host),
        check_revocation(leaf),
    ]
}

fn subject(c: &X509Ref) -> String {
    c.subject_name()
        .entries()
        .map(|e| {
            format!(
                "{}={}",
                e.object().nid().short_name().unwrap_or("?"),
                e.data().to_string().unwrap_or_else(|_| "?".to_owned())
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn check_key(m: &Material) -> Check {
    const ID: &str = "cert.key_match";
    let Some(key) = &m.key else {
        return Check::fail(
            ID,
            "no private key found",
            "include the private key (PFX: export with the key; PEM: tls.key)",
        );
    };
    let matches = |c: &X509| c.public_key().is_ok_and(|p| p.public_eq(key));
    if m.chain.first().is_some_and(matches) {
        return Check::pass(ID, "the private key belongs to the server certificate");
    }
    let hint = match m.chain.iter().skip(1).position(matches) {
        Some(i) => format!(
            "; it belongs to certificate #{} in the file: put the server's own certificate first",
            i + 2
        ),
        None => String::new(),
    };
    Check::fail(
        ID,
        format!("the private key does not belong to the server certificate{hint}"),
        "use the key the certificate was issued for (compare `openssl x509 -noout -pubkey -in CERT` with `openssl pkey -pubout -in KEY`)",
    )
}

fn check_expiry(leaf: &X509Ref) -> Check {
    const ID: &str = "cert.expiry";
    let fix = "renew the certificate and reload tunneld (`tunnelctl reload`)";
    let Ok(now) = Asn1Time::days_from_now(0) else {
        return Check::warn(ID, "cannot read the clock", fix);
    };
    let (nb, na) = (leaf.not_before(), leaf.not_after());
    match now.diff(na) {
        Ok(d) if d.days < 0 || (d.days == 0 && d.secs < 0) => {
            Check::fail(ID, format!("expired on {na}"), fix)
        }
        Ok(d) => match now.diff(nb) {
            Ok(b) if b.days > 0 || (b.days == 0 && b.secs > 0) => Check::fail(
                ID,
                format!("not valid before {nb} (is the clock right?)"),
                "check the system clock (timedatectl), or wait until the certificate's start date",
            ),
            _ if d.days < EXPIRY_WARN_DAYS => {
                Check::warn(ID, format!("expires in {} days, on {na}", d.days), fix)
            }
            _ => Check::pass(ID, format!("valid until {na} ({} days left)", d.days)),
        },
        Err(e) => Check::fail(ID, format!("cannot read the validity dates: {e}"), fix),
    }
}

fn check_validity_period(leaf: &X509Ref) -> Check {
    const ID: &str = "cert.validity_period";
    match leaf.not_before().diff(leaf.not_after()) {
        Ok(d) if d.days > MAX_VALIDITY_DAYS || (d.days == MAX_VALIDITY_DAYS && d.secs > 0) => {
            Check::fail(
                ID,
                format!(
                    "valid for {} days ({} to {}): more than 2 years, which iOS and macOS reject",
                    d.days,
                    leaf.not_before(),
                    leaf.not_after()
                ),
                "have the certificate reissued with a validity of at most 2 years (public CAs issue at most 398 days)",
            )
        }
        Ok(d) => Check::pass(ID, format!("valid for {} days (at most 2 years)", d.days)),
        Err(e) => Check::fail(
            ID,
            format!("cannot read the validity dates: {e}"),
            "reissue the certificate",
        ),
    }
}

/// DNS names and IP addresses in the subjectAltName extension; `None` when there is none.
fn sans(leaf: &X509Ref) -> Option<(Vec<String>, Vec<IpAddr>)> {
    let names = leaf.subject_alt_names()?;
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    for n in &names {
        if let Some(d) = n.dnsname() {
            dns.push(d.to_owned());
        }
        match n.ipaddress() {
            Some(b) if b.len() == 4 => {
                let a: [u8; 4] = b.try_into().unwrap_or_default();
                ips.push(IpAddr::from(a));
            }
            Some(b) if b.len() == 16 => {
                let a: [u8; 16] = b.try_into().unwrap_or_default();
                ips.push(IpAddr::from(a));
            }
            _ => {}
        }
    }
    Some((dns, ips))
}

/// Whether `pattern` is a wildcard that clients accept: `*` only as the whole left-most label,
/// followed by at least two labels (`*.contoso.com`, not `cont*.com`, `*.com` or `a.*.com`).
pub fn wildcard_is_valid(pattern: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(rest) => !rest.contains('*') && rest.split('.').filter(|l| !l.is_empty()).count() >= 2,
        None => !pattern.contains('*'),
    }
}

/// Whether a SAN DNS `pattern` covers `name` (case-insensitive; a valid wildcard covers exactly
/// one label).
pub fn dns_matches(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.to_ascii_lowercase(), name.to_ascii_lowercase());
    let n = n.trim_end_matches('.');
    let p = p.trim_end_matches('.');
    if !p.contains('*') {
        return p == n;
    }
    if !wildcard_is_valid(p) {
        return false;
    }
    let Some(suffix) = p.strip_prefix('*') else {
        return false;
    }; // ".contoso.com"
    n.strip_suffix(suffix)
        .is_some_and(|label| !label.is_empty() && !label.contains('.'))
}

fn check_san(leaf: &X509Ref, public: Option<&str>) -> Check {
    const ID: &str = "cert.san";
    let Some(public) = public else {
        return Check::warn(
            ID,
            "server.server_name is not set, so the SAN cannot be checked against the name clients use",
            "set server.server_name to the public FQDN or IP clients connect to (or pass --public-name)",
        );
    };
    let Some((dns, ips)) = sans(leaf) else {
        return Check::fail(
            ID,
            format!(
                "the certificate ({}) has no subjectAltName; clients ignore the CN",
                subject(leaf)
            ),
            format!("reissue it with subjectAltName DNS:{public} (or IP:{public})"),
        );
    };
    let listed = dns
        .iter()
        .map(|d| format!("DNS:{d}"))
        .chain(ips.iter().map(|i| format!("IP:{i}")))
        .collect::<Vec<_>>()
        .join(", ");
    let ok = match public.parse::<IpAddr>() {
        Ok(ip) => ips.contains(&ip),
        Err(_) => dns.iter().any(|d| dns_matches(d, public)),
    };
    if ok {
        Check::pass(ID, format!("{public} is covered by the SAN ({listed})"))
    } else {
        Check::fail(
            ID,
            format!("{public} is not in the SAN ({listed}): clients will refuse the certificate"),
            format!(
                "reissue the certificate with subjectAltName {}:{public}, or set server.server_name to a name it covers",
                if public.parse::<IpAddr>().is_ok() { "IP" } else { "DNS" }
            ),
        )
    }
}

fn check_wildcards(leaf: &X509Ref) -> Check {
    const ID: &str = "cert.wildcard";
    let mut names: Vec<String> = sans(leaf).map(|s| s.0).unwrap_or_default();
    names.extend(
        leaf.subject_name()
            .entries_by_nid(Nid::COMMONNAME)
            .filter_map(|e| e.data().to_string().ok().map(|s| s.to_string())),
    );
    let wild: Vec<&String> = names.iter().filter(|n| n.contains('*')).collect();
    let bad: Vec<&&String> = wild.iter().filter(|n| !wildcard_is_valid(n)).collect();
    if !bad.is_empty() {
        return Check::fail(
            ID,
            format!(
                "invalid wildcard{}: {} (a wildcard must be the whole left-most label, like *.contoso.com)",
                if bad.len() == 1 { "" } else { "s" },
                bad.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            ),
            "reissue the certificate with exact names or a *.domain wildcard",
        );
    }
    if wild.is_empty() {
        Check::pass(ID, "no wildcard names")
    } else {
        Check::pass(
            ID,
            format!(
                "wildcard{} well formed: {}",
                if wild.len() == 1 { "" } else { "s" },
                wild.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    }
}

fn is_self_signed(c: &X509Ref) -> bool {
    c.issuer_name().try_cmp(c.subject_name()).ok() == Some(std::cmp::Ordering::Equal)
        && c.public_key().is_ok_and(|k| c.verify(&k).unwrap_or(false))
}

fn check_chain(chain: &[X509], opts: &Options, host: &Host) -> Check {
    const ID: &str = "cert.chain";
    let Some(leaf) = chain.first() else {
        return Check::skip(ID, "no certificate");
    };
    if is_self_signed(leaf) {
        return Check::warn(
            ID,
            format!(
                "self-signed ({}): clients must pin it or trust it explicitly",
                subject(leaf)
            ),
            "use a certificate from a CA your clients trust, with its intermediates",
        );
    }
    let verdict = (|| -> Result<Result<Vec<String>, (i32, String)>, String> {
        let mut store = X509StoreBuilder::new().map_err(|e| e.to_string())?;
        if host.system_roots {
            store.set_default_paths().map_err(|e| e.to_string())?;
        }
        if let Some(ca) = &opts.ca_file {
            let pem = std::fs::read(ca).map_err(|e| format!("--ca-file {}: {e}", ca.display()))?;
            for c in X509::stack_from_pem(&pem)
                .map_err(|e| format!("--ca-file {}: {e}", ca.display()))?
            {
                store.add_cert(c).map_err(|e| e.to_string())?;
            }
        }
        // Dates are the expiry check's business; this one is about the chain only.
        store
            .set_flags(X509VerifyFlags::NO_CHECK_TIME)
            .map_err(|e| e.to_string())?;
        let store = store.build();
        let mut untrusted = Stack::new().map_err(|e| e.to_string())?;
        for c in chain.iter().skip(1) {
            untrusted.push(c.clone()).map_err(|e| e.to_string())?;
        }
        let mut ctx = X509StoreContext::new().map_err(|e| e.to_string())?;
        ctx.init(&store, leaf, &untrusted, |c| {
            let ok = c.verify_cert()?;
            if ok {
                Ok(Ok(c
                    .chain()
                    .map(|s| s.iter().map(subject).collect())
                    .unwrap_or_default()))
            } else {
                let err = c.error();
                let at = c.current_cert().map(|x| {
                    format!(
                        "{} (issued by {})",
                        subject(x),
                        x.issuer_name()
                            .entries()
                            .map(|e| e
                                .data()
                                .to_string()
                                .map(|s| s.to_string())
                                .unwrap_or_default())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                });
                Ok(Err((
                    err.as_raw(),
                    format!(
                        "{}{}",
                        err.error_string(),
                        at.map(|a| format!(" at {a}")).unwrap_or_default()
                    ),
                )))
            }
        })
        .map_err(|e| e.to_string())
    })();
    const UNABLE_TO_GET_ISSUER_CERT: i32 = 2;
    const UNABLE_TO_GET_ISSUER_CERT_LOCALLY: i32 = 20;
    match verdict {
        Ok(Ok(path)) => Check::pass(ID, format!("complete: {}", path.join(" -> "))),
        Ok(Err((code, why)))
            if code == UNABLE_TO_GET_ISSUER_CERT || code == UNABLE_TO_GET_ISSUER_CERT_LOCALLY =>
        {
            Check::fail(
                ID,
                format!("incomplete: {why}; that issuer is neither in the file nor a trusted root"),
                "append the intermediate CA certificate(s) after the server certificate in tls.cert (or include them in the PFX); for a private root CA, pass it with --ca-file and make sure clients trust it",
            )
        }
        Ok(Err((_, why))) => Check::fail(
            ID,
            format!("does not verify: {why}"),
            "check that the file holds the server certificate and the intermediates that issued it",
        ),
        Err(e) => Check::fail(ID, format!("cannot check the chain: {e}"), "check --ca-file"),
    }
}

fn check_revocation(leaf: &X509Ref) -> Check {
    const ID: &str = "cert.revocation";
    let ocsp: Vec<String> = leaf
        .ocsp_responders()
        .map(|s| s.iter().map(|u| u.to_string()).collect())
        .unwrap_or_default();
    let crl: Vec<String> = leaf
        .crl_distribution_points()
        .map(|points| {
            points
                .iter()
                .filter_map(|p| p.distpoint().and_then(|d| d.fullname()))
                .flat_map(|names| {
                    names
                        .iter()
                        .filter_map(|n| n.uri().map(str::to_owned))
                        .collect::<Vec<_>>()
                })
                .collect()
        })
        .unwrap_or_default();
    if ocsp.is_empty() && crl.is_empty() {
        return Check::warn(
            ID,
            "no OCSP responder and no CRL distribution point: clients cannot check whether the certificate was revoked",
            "fine for a pinned or private certificate; a public CA's certificate normally carries them",
        );
    }
    let mut parts = Vec::new();
    if !ocsp.is_empty() {
        parts.push(format!("OCSP {}", ocsp.join(", ")));
    }
    if !crl.is_empty() {
        parts.push(format!("CRL {}", crl.join(", ")));
    }
    Check::pass(ID, parts.join("; "))
}

#[cfg(test)]
mod tests;
