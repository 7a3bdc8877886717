//! The orchestrating process: starts the worker processes, shows progress, starts each phase in
//! every worker at once (after all of them finished the previous one), samples the server from
//! /proc between phases, and merges the workers' reports.

use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::procstat::{self, ServerSample};
use crate::report::Report;
use crate::spec::{Action, ActionReport, ConnectReport, Msg, WorkerSpec};
use crate::Common;

struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        drop(self.stdin.take());
        // Workers exit after End; one that hangs is killed (it is ours).
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Open files a worker keeps for itself (stdio, the runtime, pipes) besides its sessions.
const FD_RESERVE: u64 = 256;

/// Most sessions one worker can hold within an open-files limit of `nofile` when each session
/// costs `fds_per_session` descriptors (TCP, plus UDP with DTLS).
pub(crate) fn sessions_within(nofile: u64, fds_per_session: u64) -> u32 {
    let budget = nofile.saturating_sub(FD_RESERVE) / fds_per_session.max(1);
    u32::try_from(budget).unwrap_or(u32::MAX).max(1)
}

/// The hard open-files limit a worker raises its soft limit to.
#[allow(unsafe_code)]
fn nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the rlimit struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_max
    } else {
        20_000
    }
}

/// The split of `n` sessions over workers: (first session, count) each.
pub(crate) fn split(n: u32, per_process: u32, processes: Option<u32>) -> Vec<(u32, u32)> {
    let min = n.div_ceil(per_process.max(1)).max(1);
    let k = processes.unwrap_or(min).max(min).min(n.max(1));
    let base = n / k;
    let extra = n % k;
    let mut first = 0;
    (0..k)
        .map(|i| {
            let count = base + u32::from(i < extra);
            let r = (first, count);
            first += count;
            r
        })
        .collect()
}

fn send(workers: &mut [Worker], action: &Action) -> Result<()> {
    let line = serde_json::to_string(action)?;
    for w in workers.iter_mut() {
        if let Some(stdin) = w.stdin.as_mut() {
            writeln!(stdin, "{line}").context("writing to a worker")?;
            stdin.flush()?;
        }
    }
    Ok(())
}

fn bar(quiet: bool, len: u64, template: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(
        Some(len),
        if quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        },
    );
    if let Ok(style) = ProgressStyle::with_template(template) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb
}

/// Runs the scenario and returns the merged report.
pub(crate) fn run(
    c: &Common,
    sources: &[IpAddr],
    action: Option<Action>,
    scenario: &str,
) -> Result<Report> {
    let fds_per_session = if c.dtls { 2 } else { 1 };
    let per_process = c
        .per_process
        .min(sessions_within(nofile_limit(), fds_per_session));
    let shares = split(c.sessions, per_process, c.processes);
    let k = shares.len() as u32;
    let exe = std::env::current_exe().context("finding the tunnel-bench executable")?;
    let (tx, rx) = mpsc::channel::<(usize, Option<Msg>)>();
    let mut workers = Vec::with_capacity(shares.len());
    let probe = c
        .server_pid
        .map(procstat::Probe::Pid)
        .or_else(|| c.server_metrics.clone());
    let read = |probe: &procstat::Probe| {
        probe
            .read()
            .map_err(|e| eprintln!("tunnel-bench: {e}"))
            .ok()
    };
    let before = match &probe {
        Some(p) => Some(p.read().map_err(anyhow::Error::msg)?),
        None => None,
    };
    for (i, (first, count)) in shares.iter().enumerate() {
        let spec = WorkerSpec {
            worker: i as u32,
            server: c.server,
            pin: c.pin.clone(),
            user: c.user.clone(),
            user_count: c.user_count,
            password: c.password.clone(),
            cert_dir: c.cert_dir.clone(),
            group: c.group.clone(),
            first_session: *first,
            sessions: *count,
            concurrency: c.concurrency.div_ceil(k).max(1),
            sources: sources.to_vec(),
            target: c.target.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
            udp_port: c.udp_port,
            verify: !c.no_verify && c.target.is_some(),
            setup_timeout_s: c.setup_timeout,
            keepalive_s: c.keepalive,
            dpd_s: c.dpd,
            dtls: c.dtls,
            dtls_timeout_s: c.dtls_timeout,
            dtls_retry_s: c.dtls_retry,
        };
        let mut child = Command::new(&exe)
            .arg("worker")
            .arg(serde_json::to_string(&spec)?)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting a worker process")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        let stdin = child.stdin.take();
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Msg>(&line) {
                    Ok(m) => {
                        if tx.send((i, Some(m))).is_err() {
                            return;
                        }
                    }
                    Err(_) => eprintln!("worker {i}: {line}"),
                }
            }
            let _ = tx.send((i, None));
        });
        workers.push(Worker { child, stdin });
    }
    drop(tx);

    // Connect phase.
    let pb = bar(
        c.quiet,
        u64::from(c.sessions),
        "connect [{elapsed_precise}] {bar:40} {pos}/{len} {msg}",
    );
    let mut progress = vec![(0u64, 0u64); shares.len()];
    let mut ready: Vec<Option<ConnectReport>> = vec![None; shares.len()];
    let started = Instant::now();
    while ready.iter().any(Option::is_none) {
        let (i, msg) = rx.recv().context("workers stopped")?;
        match msg {
            Some(Msg::Progress { up, failed }) => {
                if let Some(p) = progress.get_mut(i) {
                    *p = (up, failed);
                }
                let (up, failed) = progress
                    .iter()
                    .fold((0, 0), |(a, b), (u, f)| (a + u, b + f));
                pb.set_position(up + failed);
                pb.set_message(format!("up {up} failed {failed}"));
            }
            Some(Msg::Ready(r)) => {
                if let Some(p) = progress.get_mut(i) {
                    *p = (r.up, r.attempted - r.up);
                }
                if let Some(slot) = ready.get_mut(i) {
                    *slot = Some(r);
                }
            }
            Some(Msg::Fatal { error }) => bail!("worker {i} failed: {error}"),
            Some(Msg::Done(_)) => {}
            None => bail!("worker {i} exited during the connect phase"),
        }
    }
    let connect_wall = started.elapsed();
    pb.finish_and_clear();
    let after_connect = probe.as_ref().and_then(read);
    let connect: Vec<ConnectReport> = ready.into_iter().flatten().collect();

    let mut action_report = None;
    let mut after_action = None;
    let mut action_wall = Duration::ZERO;
    if let Some(a) = &action {
        let a = match a {
            // Each worker pushes with its share of the pushing sessions.
            Action::Throughput {
                secs,
                sessions,
                window,
                size,
            } => Action::Throughput {
                secs: *secs,
                sessions: sessions.div_ceil(k),
                window: *window,
                size: *size,
            },
            other => other.clone(),
        };
        let secs = match &a {
            Action::Hold { secs, .. } | Action::Throughput { secs, .. } => *secs,
            _ => 0.0,
        };
        let pb = bar(
            c.quiet,
            (secs.ceil() as u64).max(1),
            &format!("{scenario} [{{elapsed_precise}}] {{bar:40}} {{pos}}/{{len}} s"),
        );
        let t = Instant::now();
        send(&mut workers, &a)?;
        let done = collect_done(&rx, shares.len(), || {
            pb.set_position(t.elapsed().as_secs());
        })?;
        action_wall = t.elapsed();
        pb.finish_and_clear();
        after_action = probe.as_ref().and_then(read);
        action_report = Some(done);
    }

    send(&mut workers, &Action::End)?;
    let end = collect_done(&rx, shares.len(), || {})?;
    drop(workers);

    Ok(Report::build(
        c,
        scenario,
        k,
        sources.len(),
        &connect,
        connect_wall,
        action.as_ref(),
        action_report.as_deref(),
        action_wall,
        &end,
        ServerSamples {
            before,
            after_connect,
            after_action,
        },
    ))
}

/// The server readings taken between phases.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ServerSamples {
    /// Before any session.
    pub(crate) before: Option<ServerSample>,
    /// When every setup had finished.
    pub(crate) after_connect: Option<ServerSample>,
    /// When the action had finished.
    pub(crate) after_action: Option<ServerSample>,
}

fn collect_done(
    rx: &mpsc::Receiver<(usize, Option<Msg>)>,
    n: usize,
    mut tick: impl FnMut(),
) -> Result<Vec<ActionReport>> {
    let mut done: Vec<Option<ActionReport>> = vec![None; n];
    while done.iter().any(Option::is_none) {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok((i, Some(Msg::Done(r)))) => {
                if let Some(slot) = done.get_mut(i) {
                    *slot = Some(r);
                }
            }
            Ok((i, Some(Msg::Fatal { error }))) => bail!("worker {i} failed: {error}"),
            Ok((_, Some(_))) => {}
            // A worker exits after reporting End; only an exit before its report is a failure.
            Ok((i, None)) if done.get(i).is_some_and(Option::is_some) => {}
            Ok((i, None)) => bail!("worker {i} exited during a phase"),
            Err(mpsc::RecvTimeoutError::Timeout) => tick(),
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("workers stopped"),
        }
    }
    Ok(done.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_every_session_once_within_the_per_process_limit() {
        for (n, per, procs) in [
            (1, 8000, None),
            (20_000, 8000, None),
            (64_000, 8000, Some(4)),
            (5, 8000, Some(9)),
        ] {
            let s = split(n, per, procs);
            assert_eq!(s.iter().map(|x| x.1).sum::<u32>(), n);
            assert!(s.iter().all(|x| x.1 <= per));
            let mut next = 0;
            for (first, count) in &s {
                assert_eq!(*first, next);
                next += count;
            }
        }
        assert_eq!(split(20_000, 8000, None).len(), 3);
        assert_eq!(split(64_000, 8000, Some(4)).len(), 8);
    }

    #[test]
    fn dtls_sessions_cost_two_descriptors_in_the_per_process_budget() {
        assert_eq!(sessions_within(20_000, 1), 19_744);
        assert_eq!(sessions_within(20_000, 2), 9_872);
        // 16,000 DTLS sessions don't fit one process under a 20,000 limit: 2 workers.
        let per = 16_000u32.min(sessions_within(20_000, 2));
        assert_eq!(split(16_000, per, None).len(), 2);
        assert_eq!(sessions_within(100, 2), 1, "never zero");
    }
}
