//! The metrics listener: counters and gauges move as sessions come and go and as traffic flows, the
//! output passes `promtool check metrics`, `/readyz` follows the TUN device, and the access log
//! (`tunneld --log-format json`) has one JSON line per session start and end.

use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use e2e::process::{self, tail};
use e2e::{Client, ClientOpts, Gateway, GatewayConfig, Topology, CORP_ADDR};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);

/// `promtool check metrics` on the text: Prometheus' own parser and linter.
fn promtool_passes(text: &str) -> Result<()> {
    let out = process::run(
        Command::new("promtool").args(["check", "metrics"]),
        Some(text),
        Duration::from_secs(30),
    )?;
    ensure!(
        out.success() && out.stderr.trim().is_empty() && out.stdout.trim().is_empty(),
        "promtool check metrics complained: {out}\n--- metrics ---\n{}",
        tail(text, 80)
    );
    Ok(())
}

/// The JSON log lines whose `message` is `msg`.
fn json_lines(gw: &Gateway, msg: &str) -> Vec<Value> {
    gw.log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == msg)
        .collect()
}

/// The `process_*` series agree with what /proc says of the daemon (`pid`): its open-files limit
/// exactly, its open files within the scrape's own connection, its resident memory within a
/// tenth, its CPU time between two readings taken around the scrape. Returns `process_open_fds`.
fn process_metrics_match_proc(gw: &Gateway, pid: u32) -> Result<f64> {
    let ticks = |pid: u32| -> Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let f: Vec<&str> = stat[stat.rfind(')').context("stat")? + 1..]
            .split_whitespace()
            .collect();
        // utime and stime, in USER_HZ ticks (100 a second on Linux).
        Ok((f[11].parse::<u64>()? + f[12].parse::<u64>()?) as f64 / 100.0)
    };
    let cpu_before = ticks(pid)?;
    let text = gw.metrics()?;
    let cpu_after = ticks(pid)?;
    let fds_now = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as f64;
    let get =
        |name: &str| e2e::metric_value(&text, name, &[]).with_context(|| format!("no {name}"));
    let max_files = process::open_files_limit(pid)?.0 as f64;
    ensure!(
        get("process_max_fds")? == max_files,
        "process_max_fds vs {max_files}"
    );
    let fds = get("process_open_fds")?;
    ensure!(
        (fds - fds_now).abs() <= 1.0,
        "process_open_fds {fds}, /proc/{pid}/fd lists {fds_now} (the scrape's connection may differ)"
    );
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("VmRSS")?
        .parse()?;
    let rss = get("process_resident_memory_bytes")?;
    ensure!(
        (rss / 1024.0 - rss_kib).abs() <= rss_kib / 10.0,
        "process_resident_memory_bytes {rss}, VmRSS {rss_kib} KiB"
    );
    ensure!(
        rss <= get("process_virtual_memory_bytes")?,
        "rss above vsize"
    );
    let cpu = get("process_cpu_seconds_total")?;
    ensure!(
        cpu >= cpu_before && cpu <= cpu_after && cpu > 0.0,
        "process_cpu_seconds_total {cpu}, /proc says {cpu_before} then {cpu_after}"
    );
    let threads = get("process_threads")?;
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))?.count() as f64;
    // Tokio's blocking threads (password checks) come and go between the two readings.
    ensure!(
        threads >= 2.0 && (threads - tasks).abs() <= 2.0,
        "process_threads {threads}, /proc lists {tasks}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64();
    let start = get("process_start_time_seconds")?;
    ensure!(
        start <= now && start > now - 600.0,
        "process_start_time_seconds {start}, now {now}"
    );
    Ok(fds)
}

#[test]
fn metrics_follow_sessions_and_traffic_and_pass_promtool() -> Result<()> {
    let topo = Topology::new()
        .device("dev")
        .device("dev2")
        .gateway()
        .corp()
        .build()?;
    let cfg = GatewayConfig::new()
        .user("alice", "alice-pw")
        .user("bob", "bob-pw")
        .daemon_arg("--log-format")
        .daemon_arg("json");
    let gw = Gateway::start(&topo, cfg)?;

    // At rest: every series present, valid exposition.
    let idle = gw.metrics()?;
    promtool_passes(&idle)?;
    for (name, labels, want) in [
        ("tunneld_sessions_active", vec![("transport", "cstp")], 0.0),
        ("tunneld_pool_size", vec![], 253.0),
        ("tunneld_pool_addresses_in_use", vec![], 0.0),
        ("tunneld_build_info", vec![], 1.0),
        (
            "tunneld_packets_dropped_total",
            vec![("reason", "spoofed_source")],
            0.0,
        ),
        (
            "tunneld_connections_refused_total",
            vec![("reason", "banned")],
            0.0,
        ),
        ("tunneld_bans_active", vec![], 0.0),
    ] {
        let v = e2e::metric_value(&idle, name, &labels);
        ensure!(
            v == Some(want),
            "{name}{labels:?} = {v:?} at rest, want {want}"
        );
    }
    ensure!(gw.admin_get("/healthz")?.status == 200, "/healthz");
    ensure!(gw.admin_get("/readyz")?.status == 200, "/readyz at rest");
    let pid = gw.pid().context("tunneld pid")?;
    let fds_at_rest = process_metrics_match_proc(&gw, pid)?;

    // A wrong password is counted by reason.
    let bad = e2e::authenticate(&topo, &gw, "dev", "alice", "wrong")?;
    ensure!(bad.code != Some(0), "wrong password accepted");
    gw.wait_metric(
        "tunneld_auth_failures_total",
        &[("reason", "bad_password")],
        1.0,
        WAIT,
    )?;

    // Sessions come: gauges and counters move.
    let mut alice = Client::connect(&topo, &gw, ClientOpts::password("alice", "alice-pw"))?;
    gw.wait_metric(
        "tunneld_sessions_active",
        &[("transport", "cstp")],
        1.0,
        WAIT,
    )?;
    let bob = Client::connect(
        &topo,
        &gw,
        ClientOpts::password("bob", "bob-pw").device("dev2"),
    )?;
    gw.wait_metric(
        "tunneld_sessions_active",
        &[("transport", "cstp")],
        2.0,
        WAIT,
    )?;
    gw.wait_metric("tunneld_pool_addresses_in_use", &[], 2.0, WAIT)?;
    // Each session's TLS connection is an open file of the daemon.
    let fds = process_metrics_match_proc(&gw, pid)?;
    ensure!(
        fds >= fds_at_rest + 2.0,
        "process_open_fds {fds_at_rest} at rest, {fds} with two sessions"
    );
    ensure!(
        gw.metric("tunneld_sessions_started_total", &[])? == 2.0,
        "started"
    );
    ensure!(
        gw.metric("tunneld_auth_successes_total", &[])? == 2.0,
        "auth successes"
    );
    ensure!(
        gw.metric("tunneld_session_setup_seconds_count", &[])? == 2.0,
        "setup histogram"
    );
    ensure!(
        gw.metric("tunneld_tls_handshake_seconds_count", &[])? >= 3.0,
        "handshake histogram (2 logins + the failed one, at least)"
    );

    // Traffic flows: packets and bytes both ways.
    let (up0, down0) = (
        gw.metric("tunneld_packets_total", &[("direction", "up")])?,
        gw.metric("tunneld_packets_total", &[("direction", "down")])?,
    );
    let bytes_up0 = gw.metric("tunneld_bytes_total", &[("direction", "up")])?;
    alice.ping(&topo, CORP_ADDR, 5)?;
    let busy = gw.metrics()?;
    let up =
        e2e::metric_value(&busy, "tunneld_packets_total", &[("direction", "up")]).unwrap_or(0.0);
    let down =
        e2e::metric_value(&busy, "tunneld_packets_total", &[("direction", "down")]).unwrap_or(0.0);
    let bytes_up =
        e2e::metric_value(&busy, "tunneld_bytes_total", &[("direction", "up")]).unwrap_or(0.0);
    ensure!(
        up - up0 >= 5.0 && down - down0 >= 5.0,
        "packets up {up0}->{up}, down {down0}->{down}"
    );
    ensure!(
        bytes_up - bytes_up0 >= 5.0 * 84.0,
        "bytes up {bytes_up0}->{bytes_up}"
    );
    promtool_passes(&busy)?;

    // A session goes: ended by reason, address returned.
    let code = alice.quit()?;
    ensure!(code == Some(0), "logout exit {code:?}");
    gw.wait_metric(
        "tunneld_sessions_active",
        &[("transport", "cstp")],
        1.0,
        WAIT,
    )?;
    gw.wait_metric(
        "tunneld_sessions_ended_total",
        &[("reason", "logout")],
        1.0,
        WAIT,
    )?;
    gw.wait_metric("tunneld_pool_addresses_in_use", &[], 1.0, WAIT)?;

    // The access log: one JSON line per start and end, flat fields.
    let started = json_lines(&gw, "session started");
    ensure!(started.len() == 2, "session started lines: {started:?}");
    let a = started
        .iter()
        .find(|v| v["user"] == "alice")
        .context("no session started line for alice")?;
    ensure!(
        a["ipv4"] == alice.ipv4()?.to_string()
            && a["peer"]
                .as_str()
                .is_some_and(|p| p.starts_with("198.18.1.2:"))
            && a["target"] == "access",
        "session started line: {a}"
    );
    let ended = json_lines(&gw, "session ended");
    ensure!(ended.len() == 1, "session ended lines: {ended:?}");
    let e = &ended[0];
    ensure!(
        e["user"] == "alice"
            && e["reason"] == "logout"
            && e["ipv4"] == alice.ipv4()?.to_string()
            && e["bytes_up"].as_u64().is_some_and(|b| b >= 5 * 84)
            && e["bytes_down"].as_u64().is_some_and(|b| b >= 5 * 84)
            && e["duration_secs"].is_u64(),
        "session ended line: {e}"
    );
    drop(bob);
    Ok(())
}

#[test]
fn readyz_is_503_while_the_tun_device_is_down() -> Result<()> {
    let topo = Topology::new().device("dev").gateway().build()?;
    let gw = Gateway::start(&topo, GatewayConfig::new())?;
    let ready = gw.admin_get("/readyz")?;
    ensure!(
        ready.status == 200 && ready.body.trim() == "ready",
        "ready at start: {} {:?}",
        ready.status,
        ready.body
    );
    topo.run_in("gw", &["ip", "link", "set", "tg0", "down"])?;
    let down = gw.admin_get("/readyz")?;
    ensure!(
        down.status == 503 && down.body.contains("TUN device is down"),
        "/readyz with tg0 down: {} {:?}",
        down.status,
        down.body
    );
    ensure!(
        gw.admin_get("/healthz")?.status == 200,
        "/healthz stays 200: the process is alive"
    );
    let status = gw.tunnelctl_json(&["status"])?;
    ensure!(
        status["ready"] == false,
        "tunnelctl status while unready: {status}"
    );
    topo.run_in("gw", &["ip", "link", "set", "tg0", "up"])?;
    ensure!(
        gw.admin_get("/readyz")?.status == 200,
        "ready again after ip link set up"
    );
    Ok(())
}
