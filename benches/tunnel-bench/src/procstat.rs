//! The server's memory and CPU from /proc, for a process and all its descendants (ocserv forks a
//! worker per client, tunneld is one process). Memory is read both as RSS and as PSS: RSS counts
//! pages shared by forked workers once per process, PSS splits them, so PSS is the fair sum.

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
    /// Sum of Pss, KiB.
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

#[cfg(test)]
mod tests {
    use super::*;

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
