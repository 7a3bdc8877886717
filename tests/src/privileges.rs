//! What a running process may do, read from `/proc/<pid>/task/<tid>/status`: its ids, its
//! capability sets per thread, and `no_new_privs`.

use std::fs;

use anyhow::{ensure, Context, Result};

/// `CAP_NET_ADMIN` (12) and `CAP_NET_BIND_SERVICE` (10): what tunneld keeps after `server.user`.
pub const KEPT_CAPS: u64 = (1 << 12) | (1 << 10);

/// The credentials of one thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadCreds {
    /// Thread id.
    pub tid: u32,
    /// Real, effective, saved and filesystem uid.
    pub uids: Vec<u32>,
    /// Real, effective, saved and filesystem gid.
    pub gids: Vec<u32>,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Permitted capabilities (bit mask).
    pub cap_prm: u64,
    /// Effective capabilities.
    pub cap_eff: u64,
    /// Bounding set.
    pub cap_bnd: u64,
    /// Ambient set.
    pub cap_amb: u64,
    /// `no_new_privs`.
    pub no_new_privs: bool,
}

fn field<'a>(status: &'a str, name: &str) -> Result<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
        .map(str::trim)
        .with_context(|| format!("no {name} in /proc status"))
}

fn ids(s: &str) -> Vec<u32> {
    s.split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect()
}

fn mask(status: &str, name: &str) -> Result<u64> {
    let v = field(status, name)?;
    u64::from_str_radix(v, 16).with_context(|| format!("{name}: {v:?}"))
}

/// Parses one `/proc/.../status` text.
pub fn parse_status(tid: u32, status: &str) -> Result<ThreadCreds> {
    Ok(ThreadCreds {
        tid,
        uids: ids(field(status, "Uid")?),
        gids: ids(field(status, "Gid")?),
        groups: ids(field(status, "Groups").unwrap_or("")),
        cap_prm: mask(status, "CapPrm")?,
        cap_eff: mask(status, "CapEff")?,
        cap_bnd: mask(status, "CapBnd")?,
        cap_amb: mask(status, "CapAmb")?,
        no_new_privs: field(status, "NoNewPrivs")? == "1",
    })
}

/// Every thread of `pid`, the main thread (tid == pid) first.
pub fn threads(pid: u32) -> Result<Vec<ThreadCreds>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(format!("/proc/{pid}/task")).context("reading the task list")? {
        let tid: u32 = entry?.file_name().to_string_lossy().parse()?;
        let Ok(status) = fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")) else {
            continue; // the thread ended meanwhile
        };
        out.push(parse_status(tid, &status)?);
    }
    out.sort_by_key(|t| (t.tid != pid, t.tid));
    ensure!(
        out.first().is_some_and(|t| t.tid == pid),
        "no main thread for {pid}"
    );
    Ok(out)
}

/// Checks that `pid` has dropped root the way tunneld's `server.user` does: every thread runs as
/// `uid`/`gid` with `no_new_privs`; the main thread holds exactly [`KEPT_CAPS`] as its permitted,
/// effective, ambient and bounding sets; no other thread holds any capability beyond them.
/// Returns a one-line summary per thread for the test's output.
pub fn check_dropped(pid: u32, uid: u32, gid: u32) -> Result<String> {
    let threads = threads(pid)?;
    let mut summary = String::new();
    for (i, t) in threads.iter().enumerate() {
        summary.push_str(&format!(
            "tid {} uids {:?} gids {:?} groups {:?} CapPrm {:016x} CapEff {:016x} CapBnd {:016x} CapAmb {:016x} NoNewPrivs {}\n",
            t.tid, t.uids, t.gids, t.groups, t.cap_prm, t.cap_eff, t.cap_bnd, t.cap_amb, t.no_new_privs
        ));
        ensure!(
            t.uids.iter().all(|&u| u == uid) && t.gids.iter().all(|&g| g == gid),
            "thread {} still has uids {:?} gids {:?} (want {uid}/{gid}):\n{summary}",
            t.tid,
            t.uids,
            t.gids
        );
        ensure!(
            t.groups.iter().all(|&g| g == gid),
            "thread {} keeps supplementary groups {:?}",
            t.tid,
            t.groups
        );
        ensure!(t.no_new_privs, "thread {} lacks no_new_privs", t.tid);
        ensure!(
            (t.cap_prm | t.cap_eff | t.cap_amb) & !KEPT_CAPS == 0,
            "thread {} holds capabilities beyond NET_ADMIN and NET_BIND_SERVICE: CapPrm {:x} CapEff {:x}",
            t.tid,
            t.cap_prm,
            t.cap_eff
        );
        if i == 0 {
            for (name, v) in [
                ("CapPrm", t.cap_prm),
                ("CapEff", t.cap_eff),
                ("CapAmb", t.cap_amb),
                ("CapBnd", t.cap_bnd),
            ] {
                ensure!(
                    v == KEPT_CAPS,
                    "main thread {name} is {v:016x}, want {KEPT_CAPS:016x}:\n{summary}"
                );
            }
        }
    }
    ensure!(
        threads.len() > 1,
        "expected the runtime's worker threads too"
    );
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_are_parsed() {
        let s = "Name:\tx\nUid:\t0\t65532\t65532\t65532\nGid:\t1\t1\t1\t1\nGroups:\t1 \n\
                 NoNewPrivs:\t1\nCapInh:\t0000000000001400\nCapPrm:\t0000000000001400\n\
                 CapEff:\t0000000000001000\nCapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\n";
        let t = parse_status(7, s).unwrap();
        assert_eq!(t.uids, [0, 65532, 65532, 65532]);
        assert_eq!(t.groups, [1]);
        assert_eq!(t.cap_prm, KEPT_CAPS);
        assert_eq!(t.cap_eff, 1 << 12);
        assert_eq!(t.cap_bnd, 0x1ff_ffff_ffff);
        assert!(t.no_new_privs);
    }
}
