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
