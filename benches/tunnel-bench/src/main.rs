//! `tunnel-bench`: how many devices one VPN server carries, measured with real sessions of the
//! AnyConnect protocol (the same one openconnect speaks), against tunneld or ocserv alike.
//!
//! Scenarios: `connect` (setup rate, latency, failures, server memory per session), `hold`
//! (sessions kept alive with keepalive/DPD and a trickle of packets), `throughput` (sessions
//! pushing packets both ways through the gateway to an echo host), `storm` (every session dropped
//! and brought back at once). Sessions are spread over worker processes (the open-files limit) and
//! over source addresses (ephemeral ports); the report is a table and, with `--json`, a JSON file.
//! With `--dtls` every scenario runs its sessions' packets over DTLS (PSK-NEGOTIATE, as
//! openconnect), the handshake counted as part of each setup; a session whose DTLS fails goes on
//! over CSTP and, like openconnect, tries a new handshake `--dtls-retry` seconds later.

mod hist;
mod orchestrate;
mod procstat;
mod report;
mod spec;
mod worker;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::spec::{Action, StormMode};

/// Capacity benchmark for AnyConnect-protocol VPN servers (tunneld, ocserv).
#[derive(Debug, Parser)]
#[command(name = "tunnel-bench", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Open N sessions at a bounded concurrency: setup rate, latency, failures, server memory.
    Connect {
        #[command(flatten)]
        common: Common,
    },
    /// Keep N sessions alive for a duration with keepalive/DPD and a trickle of probes.
    Hold {
        #[command(flatten)]
        common: Common,
        /// How long to hold, seconds.
        #[arg(long, default_value_t = 30.0)]
        duration: f64,
        /// One probe per session every this many milliseconds (0: none).
        #[arg(long, default_value_t = 1000)]
        trickle_ms: u64,
    },
    /// M sessions push probes both ways through the gateway: packets/s, bits/s, fairness, latency.
    Throughput {
        #[command(flatten)]
        common: Common,
        /// How long to push, seconds.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Sessions that push (default: all).
        #[arg(long)]
        pushers: Option<u32>,
        /// Probes in flight per pushing session.
        #[arg(long, default_value_t = 16)]
        window: u32,
        /// IP packet size in bytes (at most the tunnel MTU each session was given).
        #[arg(long, default_value_t = 1000)]
        size: u32,
    },
    /// Drop every session at once and bring all back: time to recover.
    Storm {
        #[command(flatten)]
        common: Common,
        /// cookie: TCP reset then cookie reconnect; reauth: logout then full login.
        #[arg(long, value_enum, default_value_t = StormMode::Cookie)]
        mode: StormMode,
        /// Bound reconnects in flight by --concurrency (default: all at once).
        #[arg(long)]
        bounded: bool,
        /// Wait this long between the drop and the reconnect, milliseconds.
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
    },
    /// Print one reading of a server's memory and CPU (it and its descendants) as JSON.
    Sample {
        /// The server's pid.
        #[arg(long, required_unless_present = "metrics")]
        pid: Option<u32>,
        /// Or its metrics endpoint, for a server on another host (see `connect --server-metrics`).
        #[arg(long, value_name = "URL", conflicts_with = "pid", value_parser = procstat::Probe::metrics_url)]
        metrics: Option<procstat::Probe>,
    },
    /// Answer UDP probes (the far end of `--udp-port`): send every datagram back to its sender,
    /// one per call, as a plain UDP service does. Runs until killed.
    Echo {
        /// Address and port to listen on.
        #[arg(long)]
        listen: SocketAddr,
        /// Threads answering, each with its own socket on the port (`SO_REUSEPORT`: the kernel
        /// keeps each flow on one of them), so the echo host is not the bottleneck of a run;
        /// 0: one per CPU.
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
    /// Internal: one worker process (started by the others).
    #[command(hide = true)]
    Worker {
        /// The worker's spec as JSON.
        spec: String,
    },
}

/// Output format on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// A human table.
    Table,
    /// The JSON report.
    Json,
}

/// Options every scenario shares.
#[derive(Debug, Clone, Args)]
struct Common {
    /// The server's TLS address, e.g. 198.18.1.1:443.
    #[arg(long)]
    server: SocketAddr,
    /// Accept only the certificate with this `pin-sha256:...` value.
    #[arg(long, conflicts_with = "insecure")]
    pin: Option<String>,
    /// Accept any server certificate (a lab only).
    #[arg(long)]
    insecure: bool,
    /// Username.
    #[arg(long, short)]
    user: String,
    /// Spread sessions over this many users: session i logs in as <user><i % count> (all with
    /// the same password). 0: every session logs in as --user.
    #[arg(long, default_value_t = 0)]
    user_count: u32,
    /// Password (not needed with --cert-dir).
    #[arg(
        long,
        env = "TUNNEL_BENCH_PASSWORD",
        hide_env_values = true,
        required_unless_present = "cert_dir",
        default_value = ""
    )]
    password: String,
    /// Log in with client certificates instead of passwords (a gateway in certificate mode):
    /// each session presents DIR/<username>.pem and DIR/<username>.key (PEM), its username being
    /// --user or, with --user-count, <user><i % count>.
    #[arg(long, value_name = "DIR")]
    cert_dir: Option<PathBuf>,
    /// Group to pick when the server offers a list.
    #[arg(long)]
    group: Option<String>,
    /// Sessions to open.
    #[arg(long, short = 'n', default_value_t = 100)]
    sessions: u32,
    /// Setups in flight at once (over all worker processes).
    #[arg(long, short = 'c', default_value_t = 64)]
    concurrency: u32,
    /// Local source address for sessions (repeat, or a range `A-B`); sessions take them in turn.
    #[arg(long = "source", value_name = "ADDR|A-B")]
    sources: Vec<String>,
    /// Most sessions per worker process (each is one open file, two with --dtls; it is lowered
    /// further if the process's open-files limit would not hold them).
    #[arg(long, default_value_t = 8000)]
    per_process: u32,
    /// Worker processes (default: as few as --per-process allows).
    #[arg(long)]
    processes: Option<u32>,
    /// Host behind the gateway that answers probes (ICMP echo, or --udp-port). Without it no
    /// probes are sent.
    #[arg(long)]
    target: Option<Ipv4Addr>,
    /// Probe with UDP to this echo port instead of ICMP echo.
    #[arg(long)]
    udp_port: Option<u16>,
    /// Don't send a verification probe through each session after it comes up.
    #[arg(long)]
    no_verify: bool,
    /// Deadline for one setup, seconds.
    #[arg(long, default_value_t = 30)]
    setup_timeout: u64,
    /// Keepalive interval, seconds (0: off; default: what the server pushes). Applies to the
    /// DTLS channel too.
    #[arg(long)]
    keepalive: Option<u32>,
    /// DPD interval, seconds (0: off; default: what the server pushes). Applies to the DTLS
    /// channel too.
    #[arg(long)]
    dpd: Option<u32>,
    /// Offer DTLS and send packets over it once up (CSTP until then, and if it fails); the
    /// handshake is part of each setup and the report says how many sessions got it.
    #[arg(long)]
    dtls: bool,
    /// Deadline for one DTLS handshake, seconds.
    #[arg(long, default_value_t = 10)]
    dtls_timeout: u64,
    /// After a session's DTLS fails (handshake, DPD, UDP error), start a new handshake this many
    /// seconds later, as openconnect does (its default is 60); 0: stay on CSTP.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    dtls_retry: u64,
    /// The server's pid: report its (and its children's) memory and CPU from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// The server's metrics endpoint, for a server on another host: report its memory (RSS) and
    /// CPU from the `process_*` metrics that tunneld serves on `metrics.listen`, e.g.
    /// http://10.0.0.5:9477/metrics (the listener binds to loopback unless configured otherwise).
    #[arg(long, value_name = "URL", conflicts_with = "server_pid", value_parser = procstat::Probe::metrics_url)]
    server_metrics: Option<procstat::Probe>,
    /// A name for the server in the report (e.g. tunneld, ocserv).
    #[arg(long, default_value = "server")]
    label: String,
    /// Also write the JSON report to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// What to print on stdout.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Exit with status 1 unless every session came up and every packet is accounted for.
    #[arg(long)]
    check: bool,
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
}

/// Expands `--source` values: single addresses and `A-B` IPv4 ranges.
fn parse_sources(values: &[String]) -> Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for v in values {
        if let Some((a, b)) = v.split_once('-') {
            let a: Ipv4Addr = a.trim().parse().with_context(|| format!("--source {v}"))?;
            let b: Ipv4Addr = b.trim().parse().with_context(|| format!("--source {v}"))?;
            let (a, b) = (u32::from(a), u32::from(b));
            if b < a || b - a > 65_535 {
                bail!("--source {v}: range must go up and hold at most 65,536 addresses");
            }
            out.extend((a..=b).map(|x| IpAddr::V4(Ipv4Addr::from(x))));
        } else {
            out.push(v.trim().parse().with_context(|| format!("--source {v}"))?);
        }
    }
    Ok(out)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let (common, action, name) = match cli.scenario {
        Scenario::Worker { spec } => {
            let spec = serde_json::from_str(&spec).context("worker spec")?;
            return worker::run(spec);
        }
        Scenario::Sample { pid, metrics } => {
            let probe = pid
                .map(procstat::Probe::Pid)
                .or(metrics)
                .context("--pid or --metrics")?;
            let s = probe.read().map_err(anyhow::Error::msg)?;
            println!("{}", serde_json::to_string(&s)?);
            return Ok(());
        }
        Scenario::Echo { listen, threads } => return echo(listen, threads),
        Scenario::Connect { common } => (common, None, "connect"),
        Scenario::Hold {
            common,
            duration,
            trickle_ms,
        } => (
            common,
            Some(Action::Hold {
                secs: duration,
                trickle_ms,
            }),
            "hold",
        ),
        Scenario::Throughput {
            common,
            duration,
            pushers,
            window,
            size,
        } => {
            let m = pushers.unwrap_or(common.sessions).min(common.sessions);
            (
                common,
                Some(Action::Throughput {
                    secs: duration,
                    sessions: m,
                    window,
                    size: size.clamp(64, 1400),
                }),
                "throughput",
            )
        }
        Scenario::Storm {
            common,
            mode,
            bounded,
            delay_ms,
        } => (
            common,
            Some(Action::Storm {
                mode,
                bounded,
                delay_ms,
            }),
            "storm",
        ),
    };
    if common.pin.is_none() && !common.insecure {
        bail!("give --pin pin-sha256:... (the server certificate's key) or --insecure");
    }
    if common.sessions == 0 {
        bail!("--sessions must be at least 1");
    }
    let sources = parse_sources(&common.sources)?;
    let report = orchestrate::run(&common, &sources, action, name)?;
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &common.json {
        std::fs::write(path, format!("{json}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    match common.format {
        Format::Json => println!("{json}"),
        Format::Table => print!("{}", report.table()),
    }
    if common.check && !report.ok {
        eprintln!("tunnel-bench: check failed: {}", report.problems.join("; "));
        std::process::exit(1);
    }
    Ok(())
}

/// The UDP echo service: every datagram goes back to its sender, payload unchanged (a probe
/// carries its own sequence number and timestamp). `threads` sockets share the port.
fn echo(listen: SocketAddr, threads: usize) -> Result<()> {
    let threads = match threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let socks = (0..threads)
        .map(|_| echo_socket(listen))
        .collect::<Result<Vec<_>>>()?;
    std::thread::scope(|scope| {
        let handles: Vec<_> = socks
            .into_iter()
            .map(|sock| scope.spawn(move || echo_loop(&sock)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| bail!("echo thread panicked")))
            .collect::<Result<Vec<()>>>()
            .map(|_| ())
    })
}

/// One of the echo's sockets: `SO_REUSEPORT`, so several bind the same port.
fn echo_socket(listen: SocketAddr) -> Result<std::net::UdpSocket> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(listen),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    sock.set_reuse_port(true)?;
    // Room for the bursts a hundred sessions send at once (the kernel caps it at
    // net.core.rmem_max); what still overflows shows up as unanswered probes.
    let _ = sock.set_recv_buffer_size(4 << 20);
    sock.bind(&listen.into())
        .with_context(|| format!("binding UDP {listen}"))?;
    Ok(sock.into())
}

fn echo_loop(sock: &std::net::UdpSocket) -> Result<()> {
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = sock.recv_from(&mut buf).context("UDP receive")?;
        let Some(payload) = buf.get(..n) else {
            continue;
        };
        // A full send buffer or an unreachable sender loses this one answer, as on a network.
        let _ = sock.send_to(payload, from);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_sockets_share_a_port() {
        let a = echo_socket("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = a.local_addr().unwrap();
        let b = echo_socket(port).unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        for sock in [a, b] {
            std::thread::spawn(move || echo_loop(&sock));
        }
        client.send_to(b"probe", port).unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = client.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"probe");
        assert_eq!(from, port);
    }

    #[test]
    fn sources_expand_ranges_and_reject_backwards_ones() {
        let s = parse_sources(&["198.18.1.2".into(), "198.18.1.10-198.18.1.12".into()]).unwrap();
        assert_eq!(s.len(), 4);
        assert_eq!(s[3], "198.18.1.12".parse::<IpAddr>().unwrap());
        assert!(parse_sources(&["198.18.1.12-198.18.1.10".into()]).is_err());
        assert!(parse_sources(&["nope".into()]).is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
