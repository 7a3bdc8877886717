//! The merged report: JSON for machines and the docs, a table for people, and the list of
//! problems (`--check`): a session that did not come up, a packet not answered, a session lost.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::hist::{Hist, LatencySummary};
use crate::orchestrate::ServerSamples;
use crate::procstat::ServerSample;
use crate::spec::{Action, ActionReport, ConnectReport};
use crate::worker::add_counts;
use crate::Common;

/// The connect phase over all workers.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ConnectSummary {
    attempted: u64,
    up: u64,
    failed: BTreeMap<String, u64>,
    failure_examples: BTreeMap<String, String>,
    /// Wall time from start to the last setup.
    elapsed_s: f64,
    /// Sessions up per second of that wall time.
    setups_per_s: f64,
    setup_ms: LatencySummary,
    tcp_ms: LatencySummary,
    tls_ms: LatencySummary,
    auth_ms: LatencySummary,
    connect_ms: LatencySummary,
    verify_sent: u64,
    verify_received: u64,
    /// Sessions up with DTLS established (`--dtls`).
    dtls_up: u64,
    /// DTLS outcome per session up, by label (`up`, `not_offered`, `handshake_timeout`, ...).
    dtls: BTreeMap<String, u64>,
    dtls_failure_examples: BTreeMap<String, String>,
    /// CONNECT answer to DTLS outcome (included in `setup_ms`).
    dtls_ms: LatencySummary,
}

/// The server's resources.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ServerSummary {
    before: ServerSample,
    after_connect: Option<ServerSample>,
    after_action: Option<ServerSample>,
    /// (RSS after connect - before) / sessions up.
    rss_per_session_kib: f64,
    /// (PSS after connect - before) / sessions up; null when read from a metrics endpoint
    /// (`--server-metrics`), which exports no PSS.
    pss_per_session_kib: Option<f64>,
    /// Server CPU seconds during the connect phase.
    connect_cpu_s: f64,
    /// Sessions set up per server CPU second (setups per second per core).
    setups_per_cpu_s: f64,
    /// Server CPU seconds during the action.
    action_cpu_s: Option<f64>,
    /// Server cores busy during the action (CPU s / wall s).
    action_cores: Option<f64>,
    /// Server cores per Gbit/s moved (throughput only).
    cores_per_gbit: Option<f64>,
}

/// The action over all workers.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ActionSummary {
    kind: String,
    wall_s: f64,
    sessions: u64,
    lost_sessions: BTreeMap<String, u64>,
    loss_examples: BTreeMap<String, String>,
    probes_sent: u64,
    probes_received: u64,
    probes_unanswered: u64,
    rtt_ms: LatencySummary,
    bytes_sent: u64,
    bytes_received: u64,
    /// Packets per second, both directions.
    packets_per_s: f64,
    /// Mbit/s of IP packets, both directions.
    mbit_per_s: f64,
    /// Mbit/s received by the slowest, median and fastest pushing session.
    per_session_mbit: Option<[f64; 3]>,
    /// Jain's fairness index over pushing sessions (1 = all equal).
    fairness: Option<f64>,
    keepalives: u64,
    dpd_sent: u64,
    dpd_answered: u64,
    recovered: u64,
    recovery_ms: LatencySummary,
    address_changed: u64,
    /// IP packets sent over DTLS (the rest went over CSTP).
    dtls_packets_sent: u64,
    /// IP packets received over DTLS.
    dtls_packets_received: u64,
    dtls_keepalives: u64,
    dtls_dpd_sent: u64,
    dtls_dpd_answered: u64,
    /// New DTLS handshakes after a failure (`--dtls-retry`).
    dtls_restarts: u64,
    /// `--dtls`: each session's DTLS state at the end of the action, by label.
    dtls: BTreeMap<String, u64>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    label: String,
    scenario: String,
    server_addr: String,
    sessions: u32,
    processes: u32,
    source_addresses: usize,
    /// `dtls` when the sessions were asked to carry packets over DTLS, else `cstp`.
    transport: &'static str,
    connect: ConnectSummary,
    server: Option<ServerSummary>,
    action: Option<ActionSummary>,
    logout_failed: u64,
    /// What `--check` fails on; empty when every session came up and every packet came back.
    pub(crate) problems: Vec<String>,
    /// No problems.
    pub(crate) ok: bool,
}

fn jain(xs: &[u64]) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let sum: f64 = xs.iter().map(|&x| x as f64).sum();
    let sq: f64 = xs.iter().map(|&x| (x as f64).powi(2)).sum();
    (sq > 0.0).then(|| sum * sum / (xs.len() as f64 * sq))
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn build(
        c: &Common,
        scenario: &str,
        processes: u32,
        sources: usize,
        connect: &[ConnectReport],
        connect_wall: Duration,
        action: Option<&Action>,
        acts: Option<&[ActionReport]>,
        action_wall: Duration,
        end: &[ActionReport],
        samples: ServerSamples,
    ) -> Self {
        let mut problems = Vec::new();
        let mut failed = BTreeMap::new();
        let mut examples = BTreeMap::new();
        let (mut up, mut attempted, mut vs, mut vr) = (0, 0, 0, 0);
        let mut elapsed = 0f64;
        let mut hs: [Hist; 5] = Default::default();
        let mut dtls_up = 0;
        let mut dtls = BTreeMap::new();
        let mut dtls_examples = BTreeMap::new();
        let mut dtls_time = Hist::default();
        for r in connect {
            dtls_up += r.dtls_up;
            add_counts(&mut dtls, &r.dtls);
            for (k, v) in &r.dtls_examples {
                dtls_examples.entry(k.clone()).or_insert_with(|| v.clone());
            }
            dtls_time.merge(&r.dtls_time);
            up += r.up;
            attempted += r.attempted;
            vs += r.verify_sent;
            vr += r.verify_received;
            elapsed = elapsed.max(r.elapsed_s);
            add_counts(&mut failed, &r.failed);
            for (k, v) in &r.examples {
                examples.entry(k.clone()).or_insert_with(|| v.clone());
            }
            for (h, src) in hs
                .iter_mut()
                .zip([&r.setup, &r.tcp, &r.tls, &r.auth, &r.connect])
            {
                h.merge(src);
            }
        }
        let elapsed = if elapsed > 0.0 {
            elapsed
        } else {
            connect_wall.as_secs_f64()
        };
        if up < attempted {
            problems.push(format!(
                "{} of {attempted} sessions did not come up: {failed:?}",
                attempted - up
            ));
        }
        if vr < vs {
            problems.push(format!(
                "{} of {vs} verification probes unanswered",
                vs - vr
            ));
        }
        if c.dtls && dtls_up < up {
            let without: BTreeMap<_, _> = dtls.iter().filter(|(k, _)| *k != "up").collect();
            problems.push(format!(
                "{} of {up} sessions without DTLS: {without:?}",
                up - dtls_up
            ));
        }
        let [setup, tcp, tls, auth, conn] = hs;
        let connect_summary = ConnectSummary {
            attempted,
            up,
            failed,
            failure_examples: examples,
            elapsed_s: elapsed,
            setups_per_s: if elapsed > 0.0 {
                up as f64 / elapsed
            } else {
                0.0
            },
            setup_ms: setup.summary_ms(),
            tcp_ms: tcp.summary_ms(),
            tls_ms: tls.summary_ms(),
            auth_ms: auth.summary_ms(),
            connect_ms: conn.summary_ms(),
            verify_sent: vs,
            verify_received: vr,
            dtls_up,
            dtls,
            dtls_failure_examples: dtls_examples,
            dtls_ms: dtls_time.summary_ms(),
        };

        let action_summary = acts.map(|acts| {
            let mut a = ActionReport::default();
            for r in acts {
                a.sessions += r.sessions;
                add_counts(&mut a.lost, &r.lost);
                for (k, v) in &r.examples {
                    a.examples.entry(k.clone()).or_insert_with(|| v.clone());
                }
                a.sent += r.sent;
                a.received += r.received;
                a.bytes_sent += r.bytes_sent;
                a.bytes_received += r.bytes_received;
                a.rtt.merge(&r.rtt);
                a.per_session_bytes.extend_from_slice(&r.per_session_bytes);
                a.elapsed_s = a.elapsed_s.max(r.elapsed_s);
                a.keepalives += r.keepalives;
                a.dpd_sent += r.dpd_sent;
                a.dpd_answered += r.dpd_answered;
                a.recovered += r.recovered;
                a.recovery.merge(&r.recovery);
                a.address_changed += r.address_changed;
                a.dtls_sent += r.dtls_sent;
                a.dtls_received += r.dtls_received;
                a.dtls_keepalives += r.dtls_keepalives;
                a.dtls_dpd_sent += r.dtls_dpd_sent;
                a.dtls_dpd_answered += r.dtls_dpd_answered;
                a.dtls_restarts += r.dtls_restarts;
                add_counts(&mut a.dtls, &r.dtls);
            }
            let secs = if a.elapsed_s > 0.0 {
                a.elapsed_s
            } else {
                action_wall.as_secs_f64()
            };
            let rate = |x: f64| if secs > 0.0 { x / secs } else { 0.0 };
            let mut per = a.per_session_bytes.clone();
            per.sort_unstable();
            let mbit = |b: u64| rate(b as f64 * 8.0) / 1e6;
            let per_session_mbit = (!per.is_empty()).then(|| {
                [
                    mbit(per.first().copied().unwrap_or(0)),
                    mbit(per.get(per.len() / 2).copied().unwrap_or(0)),
                    mbit(per.last().copied().unwrap_or(0)),
                ]
            });
            let kind = match action {
                Some(Action::Storm { mode, .. }) => format!("storm-{mode:?}").to_lowercase(),
                _ => scenario.to_owned(),
            };
            if !a.lost.is_empty() {
                problems.push(format!("sessions lost during {kind}: {:?}", a.lost));
            }
            if a.received < a.sent {
                problems.push(format!(
                    "{} of {} probes unanswered during {kind}",
                    a.sent - a.received,
                    a.sent
                ));
            }
            if matches!(action, Some(Action::Storm { .. })) && a.recovered < up {
                problems.push(format!(
                    "{} of {up} sessions did not recover",
                    up - a.recovered
                ));
            }
            if a.address_changed > 0 {
                problems.push(format!(
                    "{} sessions got a different address on cookie reconnect",
                    a.address_changed
                ));
            }
            if matches!(action, Some(Action::Hold { .. })) && a.dpd_answered < a.dpd_sent {
                problems.push(format!(
                    "{} of {} DPD requests unanswered",
                    a.dpd_sent - a.dpd_answered,
                    a.dpd_sent
                ));
            }
            let off_dtls: u64 = a
                .dtls
                .iter()
                .filter(|(k, _)| *k != "up")
                .map(|(_, v)| v)
                .sum();
            if c.dtls && off_dtls > 0 {
                problems.push(format!(
                    "{off_dtls} sessions not on DTLS at the end of {kind}: {:?}",
                    a.dtls
                ));
            }
            ActionSummary {
                kind,
                wall_s: action_wall.as_secs_f64(),
                sessions: a.sessions,
                lost_sessions: a.lost,
                loss_examples: a.examples,
                probes_sent: a.sent,
                probes_received: a.received,
                probes_unanswered: a.sent.saturating_sub(a.received),
                rtt_ms: a.rtt.summary_ms(),
                bytes_sent: a.bytes_sent,
                bytes_received: a.bytes_received,
                packets_per_s: rate((a.sent + a.received) as f64),
                mbit_per_s: mbit(a.bytes_sent + a.bytes_received),
                per_session_mbit,
                fairness: jain(&per),
                keepalives: a.keepalives,
                dpd_sent: a.dpd_sent,
                dpd_answered: a.dpd_answered,
                recovered: a.recovered,
                recovery_ms: a.recovery.summary_ms(),
                address_changed: a.address_changed,
                dtls_packets_sent: a.dtls_sent,
                dtls_packets_received: a.dtls_received,
                dtls_keepalives: a.dtls_keepalives,
                dtls_dpd_sent: a.dtls_dpd_sent,
                dtls_dpd_answered: a.dtls_dpd_answered,
                dtls_restarts: a.dtls_restarts,
                dtls: a.dtls,
            }
        });

        let server = samples.before.map(|before| {
            let per = |after: Option<ServerSample>, f: fn(&ServerSample) -> u64| {
                after.map_or(0.0, |a| {
                    (f(&a) as f64 - f(&before) as f64) / (up.max(1) as f64)
                })
            };
            let connect_cpu = samples
                .after_connect
                .map_or(0.0, |a| a.cpu_s - before.cpu_s);
            let action_cpu = match (samples.after_connect, samples.after_action) {
                (Some(a), Some(b)) => Some(b.cpu_s - a.cpu_s),
                _ => None,
            };
            let wall = action_wall.as_secs_f64();
            let cores = action_cpu.filter(|_| wall > 0.0).map(|c| c / wall);
            let gbit = action_summary
                .as_ref()
                .filter(|a| a.kind == "throughput")
                .map(|a| a.mbit_per_s / 1000.0);
            ServerSummary {
                before,
                after_connect: samples.after_connect,
                after_action: samples.after_action,
                rss_per_session_kib: per(samples.after_connect, |s| s.rss_kib),
                pss_per_session_kib: (before.pss_kib > 0)
                    .then(|| per(samples.after_connect, |s| s.pss_kib)),
                connect_cpu_s: connect_cpu,
                setups_per_cpu_s: if connect_cpu > 0.0 {
                    up as f64 / connect_cpu
                } else {
                    0.0
                },
                action_cpu_s: action_cpu,
                action_cores: cores,
                cores_per_gbit: match (cores, gbit) {
                    (Some(c), Some(g)) if g > 0.0 => Some(c / g),
                    _ => None,
                },
            }
        });

        let logout_failed: u64 = end.iter().map(|r| r.logout_failed).sum();
        if logout_failed > 0 {
            problems.push(format!(
                "{logout_failed} logouts not acknowledged by a close"
            ));
        }
        Self {
            label: c.label.clone(),
            scenario: scenario.to_owned(),
            server_addr: c.server.to_string(),
            sessions: c.sessions,
            processes,
            source_addresses: sources,
            transport: if c.dtls { "dtls" } else { "cstp" },
            connect: connect_summary,
            server,
            action: action_summary,
            logout_failed,
            ok: problems.is_empty(),
            problems,
        }
    }

    /// The human table.
    pub(crate) fn table(&self) -> String {
        let mut t = String::new();
        let mut row = |k: &str, v: String| {
            let _ = writeln!(t, "  {k:<34} {v}");
        };
        let lat = |l: &LatencySummary| {
            format!(
                "p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
                l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms
            )
        };
        let c = &self.connect;
        row("server", format!("{} ({})", self.label, self.server_addr));
        row("scenario", self.scenario.clone());
        row(
            "processes / source addresses",
            format!("{} / {}", self.processes, self.source_addresses),
        );
        row("transport", self.transport.to_owned());
        row("sessions up", format!("{} of {}", c.up, c.attempted));
        if self.transport == "dtls" {
            row(
                "DTLS up",
                format!("{} of {} ({:?})", c.dtls_up, c.up, c.dtls),
            );
            row("DTLS handshake", lat(&c.dtls_ms));
        }
        if !c.failed.is_empty() {
            row("failures by reason", format!("{:?}", c.failed));
        }
        row(
            "setup rate",
            format!("{:.0} sessions/s over {:.2} s", c.setups_per_s, c.elapsed_s),
        );
        row("setup latency", lat(&c.setup_ms));
        row(
            "  tcp / tls / auth / connect p50",
            format!(
                "{:.2} / {:.2} / {:.2} / {:.2} ms",
                c.tcp_ms.p50_ms, c.tls_ms.p50_ms, c.auth_ms.p50_ms, c.connect_ms.p50_ms
            ),
        );
        if c.verify_sent > 0 {
            row(
                "verification probes",
                format!("{} of {} answered", c.verify_received, c.verify_sent),
            );
        }
        if let Some(s) = &self.server {
            row(
                "server memory per session",
                match s.pss_per_session_kib {
                    Some(pss) => format!(
                        "{:.1} KiB RSS, {pss:.1} KiB PSS ({} processes after connect)",
                        s.rss_per_session_kib,
                        s.after_connect.map_or(0, |a| a.processes)
                    ),
                    None => format!("{:.1} KiB RSS (from its metrics)", s.rss_per_session_kib),
                },
            );
            row(
                "server CPU during connect",
                format!(
                    "{:.2} s ({:.0} setups per CPU second)",
                    s.connect_cpu_s, s.setups_per_cpu_s
                ),
            );
            if let Some(cores) = s.action_cores {
                row("server cores during action", format!("{cores:.2}"));
            }
            if let Some(cpg) = s.cores_per_gbit {
                row("server cores per Gbit/s", format!("{cpg:.2}"));
            }
        }
        if let Some(a) = &self.action {
            row(&format!("{} sessions", a.kind), a.sessions.to_string());
            if !a.lost_sessions.is_empty() {
                row("sessions lost", format!("{:?}", a.lost_sessions));
            }
            if a.probes_sent > 0 {
                row(
                    "probes",
                    format!(
                        "{} sent, {} answered, {} unanswered",
                        a.probes_sent, a.probes_received, a.probes_unanswered
                    ),
                );
                row("round trip", lat(&a.rtt_ms));
            }
            if a.kind == "throughput" {
                row(
                    "throughput (both directions)",
                    format!(
                        "{:.0} packets/s, {:.1} Mbit/s",
                        a.packets_per_s, a.mbit_per_s
                    ),
                );
                if let (Some([lo, med, hi]), Some(f)) = (a.per_session_mbit, a.fairness) {
                    row(
                        "per session received",
                        format!("min {lo:.2} / median {med:.2} / max {hi:.2} Mbit/s, Jain {f:.3}"),
                    );
                }
            }
            if self.transport == "dtls" {
                row(
                    "packets over DTLS",
                    format!(
                        "{} sent, {} received; {} keepalives, {} of {} DPD answered; {} new handshakes after a failure",
                        a.dtls_packets_sent,
                        a.dtls_packets_received,
                        a.dtls_keepalives,
                        a.dtls_dpd_answered,
                        a.dtls_dpd_sent,
                        a.dtls_restarts
                    ),
                );
            }
            if a.dpd_sent > 0 || a.keepalives > 0 {
                row(
                    "keepalive / DPD",
                    format!(
                        "{} keepalives, {} of {} DPD answered",
                        a.keepalives, a.dpd_answered, a.dpd_sent
                    ),
                );
            }
            if a.kind.starts_with("storm") {
                row("recovered", format!("{} of {}", a.recovered, c.up));
                row(
                    "time to recover",
                    format!(
                        "all in {:.2} s; {}",
                        a.recovery_ms.max_ms / 1000.0,
                        lat(&a.recovery_ms)
                    ),
                );
            }
        }
        row(
            "result",
            if self.ok {
                "ok: every session up, every packet answered".to_owned()
            } else {
                format!("PROBLEMS: {}", self.problems.join("; "))
            },
        );
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jain_index_is_one_for_equal_shares_and_falls_with_skew() {
        assert_eq!(jain(&[5, 5, 5, 5]), Some(1.0));
        let skewed = jain(&[1, 1, 1, 97]).unwrap();
        assert!(skewed < 0.3, "{skewed}");
        assert_eq!(jain(&[]), None);
    }
}
