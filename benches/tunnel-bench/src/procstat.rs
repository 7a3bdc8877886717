//! The server's memory and CPU from /proc, for a process and all its descendants (ocserv forks a
//! worker per client, tunneld is one process). Memory is read both as RSS and as PSS: RSS counts
//! pages shared by forked workers once per process, PSS splits them, so PSS is the fair sum.
//!
//! A server on another host is read over HTTP instead, from the standard Prometheus
//! `process_cpu_seconds_total` and `process_resident_memory_bytes` that tunneld's metrics listener
//! serves ([`scrape`]): RSS only, since a PSS is not exported.

use std::collections::{HashMap, HashSet};
use std::fs;

use serde::{Deserialize, Serialize};

/// One reading.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct ServerSample {
    /// Processes in the tree.
    pub(crate) processes: u32,
    /// Sum of VmRSS, KiB.
    pub(crate) rss_kib: u64,
    /// Sum of Pss, KiB (0 when read from a metrics endpoint, which has no PSS).
    pub(crate) pss_kib: u64,
    /// user + system CPU seconds: the tree's living processes plus children already reaped.
    pub(crate) cpu_s: f64,
}

fn clock_ticks() -> f64 {
    #[allow(unsafe_code)]
    // SAFETY: sysconf only reads a system constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// (ppid, utime+stime, cutime+cstime) in ticks from /proc/<pid>/stat.
fn stat(pid: u32) -> Option<(u32, u64, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields start after the last ')'.
    let rest = s.get(s.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    // After the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14).
    let ppid = u32::try_from(num(1)?).ok()?;
    Some((ppid, num(11)? + num(12)?, num(13)? + num(14)?))
}

fn kib_field(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// `root` and every process descending from it.
fn tree(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if let Some((ppid, _, _)) = stat(pid) {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut out = vec![root];
    let mut seen: HashSet<u32> = HashSet::from([root]);
    let mut i = 0;
    while let Some(&p) = out.get(i) {
        for &c in children.get(&p).map(Vec::as_slice).unwrap_or_default() {
            if seen.insert(c) {
                out.push(c);
            }
        }
        i += 1;
    }
    out
}

/// Reads the tree rooted at `pid`; `None` if the process is gone.
pub(crate) fn sample(pid: u32) -> Option<ServerSample> {
    let (_, _, root_children) = stat(pid)?;
    let ticks = clock_ticks();
    let mut s = ServerSample {
        cpu_s: root_children as f64 / ticks,
        ..ServerSample::default()
    };
    for p in tree(pid) {
        let Some((_, own, _)) = stat(p) else { continue };
        s.processes += 1;
        s.cpu_s += own as f64 / ticks;
        if let Ok(st) = fs::read_to_string(format!("/proc/{p}/status")) {
            s.rss_kib += kib_field(&st, "VmRSS:");
        }
        if let Ok(sm) = fs::read_to_string(format!("/proc/{p}/smaps_rollup")) {
            s.pss_kib += kib_field(&sm, "Pss:");
        }
    }
    Some(s)
}

/// Where the server's readings come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Probe {
    /// A local process (and its descendants), from /proc.
    Pid(u32),
    /// A Prometheus metrics endpoint, `http://HOST:PORT/PATH`.
    Metrics {
        /// `HOST:PORT`, as given.
        authority: String,
        /// The path, `/metrics` unless given.
        path: String,
    },
}

impl Probe {
    /// Parses `http://HOST:PORT[/PATH]` (the path defaults to `/metrics`).
    pub(crate) fn metrics_url(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!("{url}: only http:// URLs (the metrics listener is plain HTTP)")
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, "/metrics"),
        };
        if authority
            .rsplit_once(':')
            .is_none_or(|(_, p)| p.parse::<u16>().is_err())
        {
            return Err(format!(
                "{url}: give the port, e.g. http://10.0.0.5:9477/metrics"
            ));
        }
        Ok(Self::Metrics {
            authority: authority.to_owned(),
            path: path.to_owned(),
        })
    }

    /// One reading. An error says why none could be taken.
    pub(crate) fn read(&self) -> Result<ServerSample, String> {
        match self {
            Self::Pid(pid) => {
                sample(*pid).ok_or_else(|| format!("--server-pid {pid}: no such process"))
            }
            Self::Metrics { authority, path } => scrape(authority, path),
        }
    }
}

/// Reads `process_cpu_seconds_total` and `process_resident_memory_bytes` from the metrics endpoint
/// at `authority` (`HOST:PORT`) and `path`.
fn scrape(authority: &str, path: &str) -> Result<ServerSample, String> {
    use std::io::{Read as _, Write as _};
    use std::net::{TcpStream, ToSocketAddrs as _};
    use std::time::Duration;

    const TIMEOUT: Duration = Duration::from_secs(5);
    let fail =
        |e: &dyn std::fmt::Display| format!("--server-metrics http://{authority}{path}: {e}");
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| fail(&e))?
        .next()
        .ok_or_else(|| fail(&"no address"))?;
    let mut tcp = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| fail(&e))?;
    tcp.set_read_timeout(Some(TIMEOUT)).map_err(|e| fail(&e))?;
    let req = tunnel_proto::http_client::request(
        "GET",
        path,
        &[("Host", authority), ("Connection", "close")],
        b"",
    );
    tcp.write_all(&req).map_err(|e| fail(&e))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let resp = loop {
        if let Some((resp, _)) =
            tunnel_proto::http_client::parse_response(&buf, false).map_err(|e| fail(&e))?
        {
            break resp;
        }
        match tcp.read(&mut chunk).map_err(|e| fail(&e))? {
            0 => return Err(fail(&"connection closed before a whole response")),
            n => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
        }
    };
    if resp.code != 200 {
        return Err(fail(&format!("HTTP {} {}", resp.code, resp.reason)));
    }
    let text = String::from_utf8_lossy(&resp.body);
    let value = |name: &str| {
        exposition_value(&text, name).ok_or_else(|| fail(&format!("no {name} (not a tunneld?)")))
    };
    Ok(ServerSample {
        processes: 1,
        rss_kib: (value("process_resident_memory_bytes")? / 1024.0) as u64,
        pss_kib: 0,
        cpu_s: value("process_cpu_seconds_total")?,
    })
}

/// The value of the unlabelled series `name` in a Prometheus text exposition.
fn exposition_value(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let mut words = l.split_whitespace();
        (words.next()? == name).then(|| words.next()?.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_urls_and_expositions_are_read() {
        assert_eq!(
            Probe::metrics_url("http://10.0.0.5:9477"),
            Ok(Probe::Metrics {
                authority: "10.0.0.5:9477".into(),
                path: "/metrics".into()
            })
        );
        assert_eq!(
            Probe::metrics_url("http://[fd00::5]:9477/m"),
            Ok(Probe::Metrics {
                authority: "[fd00::5]:9477".into(),
                path: "/m".into()
            })
        );
        assert!(Probe::metrics_url("https://10.0.0.5:9477/metrics").is_err());
        assert!(Probe::metrics_url("http://10.0.0.5/metrics").is_err());
        let text = "# HELP process_cpu_seconds_total Total CPU.\n\
                    # TYPE process_cpu_seconds_total counter\n\
                    process_cpu_seconds_total_extra 9\n\
                    process_cpu_seconds_total 12.34\n\
                    tunneld_packets_total{direction=\"up\"} 5\n";
        assert_eq!(
            exposition_value(text, "process_cpu_seconds_total"),
            Some(12.34)
        );
        assert_eq!(exposition_value(text, "tunneld_packets_total"), None);
        assert_eq!(exposition_value(text, "process_open_fds"), None);
    }

    #[test]
    fn own_process_has_memory_and_cpu() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.processes >= 1);
        assert!(s.rss_kib > 0 && s.pss_kib > 0);
        assert!(s.cpu_s >= 0.0);
    }

    #[test]
    fn missing_process_is_none() {
        assert!(sample(u32::MAX - 1).is_none());
    }
}
