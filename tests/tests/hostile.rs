//! Misbehaving clients: forged source addresses, broken CSTP frames, oversized HTTP heads, clients
//! that say nothing. Each is handled on its own connection; everyone else keeps working.
//!
//! The misbehaving side is tests/scripts/cstp_raw_client.py, a real TLS client that logs in like
//! openconnect and then sends what openconnect never would.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use e2e::raw::{self, RawOutcome};
use e2e::{Client, ClientOpts, Gateway, GatewayConfig, Topology, CORP_ADDR, CORP_ADDR6};

const PASSWORD: &str = "pw-for-tests";
/// The auth timeout used here, short so the silent-client tests are quick.
const AUTH_TIMEOUT_SECS: i64 = 3;

fn gateway(topo: &Topology) -> Result<Gateway> {
    Gateway::start(
        topo,
        GatewayConfig::new()
            .set("timers.auth_timeout_secs", AUTH_TIMEOUT_SECS)
            .user("alice", PASSWORD)
            .user("eve", PASSWORD),
    )
}

/// Two devices: `dev1` runs a well-behaved openconnect (the bystander), `dev2` the raw client.
fn setup() -> Result<(Topology, Gateway, Client)> {
    setup_with(gateway)
}

/// [`setup`] with the gateway `start` starts.
fn setup_with(
    start: impl FnOnce(&Topology) -> Result<Gateway>,
) -> Result<(Topology, Gateway, Client)> {
    let topo = Topology::new()
        .device("dev1")
        .device("dev2")
        .gateway()
        .corp()
        .build()?;
    let gw = start(&topo)?;
    let bystander = Client::connect(
        &topo,
        &gw,
        ClientOpts::password("alice", PASSWORD).device("dev1"),
    )?;
    Ok((topo, gw, bystander))
}

fn raw(topo: &Topology, gw: &Gateway, args: &[&str]) -> Result<RawOutcome> {
    let out = raw::run(topo, gw, "dev2", "eve", PASSWORD, args)?;
    eprintln!("raw client {args:?}: {}", out.result);
    Ok(out)
}

/// The daemon still serves: the bystander pings, and a fresh raw login works end to end.
fn still_serving(topo: &Topology, gw: &Gateway, bystander: &Client) -> Result<()> {
    bystander.ping(topo, CORP_ADDR, 3)?;
    let fresh = raw(topo, gw, &["login"])?;
    ensure!(
        fresh.code == Some(0) && fresh.flag("dpd_answered"),
        "a new session after the abuse failed: {}",
        fresh.output
    );
    let health = gw.https_get(topo, "dev2", "/health")?;
    ensure!(
        health.status == 200,
        "health after the abuse: {} {}",
        health.status,
        health.detail
    );
    Ok(())
}

#[test]
fn spoofed_source_is_dropped_and_counted() -> Result<()> {
    let (topo, gw, bystander) = setup()?;
    let before = gw.metric_or_zero(
        "tunneld_packets_dropped_total",
        &[("reason", "spoofed_source")],
    )?;
    // Forged sources: unassigned addresses of the client pools (anything answered would come back to
    // the gateway and be dropped there), never a third party's address.
    let out = raw(
        &topo,
        &gw,
        &[
            "spoof",
            "--spoof-src",
            "198.18.128.250",
            "--spoof-src6",
            "fd00:198:18:128::fa",
            "--dst",
            CORP_ADDR,
            "--dst6",
            CORP_ADDR6,
            "--count",
            "3",
        ],
    )?;
    ensure!(out.code == Some(0), "raw client: {}", out.output);
    let sent = out.result["spoofed_v4_sent"].as_u64().unwrap_or(0)
        + out.result["spoofed_v6_sent"].as_u64().unwrap_or(0);
    ensure!(
        sent == 6,
        "the raw client should have sent 3 forged IPv4 and 3 forged IPv6 packets: {}",
        out.output
    );
    ensure!(
        out.flag("legit_reply_v4"),
        "the session's own (unforged) ping got no reply: {}",
        out.output
    );
    ensure!(
        out.flag("legit_reply_v6"),
        "the session's own (unforged) IPv6 ping got no reply: {}",
        out.output
    );
    ensure!(
        out.flag("alive_after"),
        "forged packets must be dropped, not end the session: {}",
        out.output
    );
    let after = gw.metric(
        "tunneld_packets_dropped_total",
        &[("reason", "spoofed_source")],
    )?;
    ensure!(
        after - before == sent as f64,
        "spoofed_source drops counted {before} -> {after}, sent {sent}"
    );
    still_serving(&topo, &gw, &bystander)
}

fn broken_frame_ends_only_that_session(kind: &str) -> Result<()> {
    let (topo, gw, bystander) = setup()?;
    let ended_before = gw.metric_or_zero("tunneld_sessions_ended_total", &[])?;
    let out = raw(
        &topo,
        &gw,
        &["--max-wait", "10", "bad-frame", "--kind", kind],
    )?;
    ensure!(out.code == Some(0), "raw client: {}", out.output);
    ensure!(
        out.flag("alive_before"),
        "the session should work before the broken frame: {}",
        out.output
    );
    ensure!(
        out.flag("closed"),
        "the gateway kept a session open after a {kind} frame: {}",
        out.output
    );
    gw.wait_for_log(&["session ended", "user=eve"], Duration::from_secs(10))?;
    gw.wait_metric("tunneld_sessions_active", &[], 1.0, Duration::from_secs(10))?;
    let ended_after = gw.metric("tunneld_sessions_ended_total", &[])?;
    ensure!(
        ended_after == ended_before + 1.0,
        "sessions ended {ended_before} -> {ended_after}"
    );
    ensure!(
        gw.log_lines(&["session ended", "user=alice"]).is_empty(),
        "the bystander's session ended too"
    );
    still_serving(&topo, &gw, &bystander)
}

#[test]
fn frame_with_bad_magic_ends_only_that_session() -> Result<()> {
    broken_frame_ends_only_that_session("magic")
}

#[test]
fn frame_with_nonzero_byte_7_ends_only_that_session() -> Result<()> {
    broken_frame_ends_only_that_session("byte7")
}

#[test]
fn frame_longer_than_the_mtu_ends_only_that_session() -> Result<()> {
    broken_frame_ends_only_that_session("oversize")
}

#[test]
fn http_header_block_over_the_limit_is_refused_and_closed() -> Result<()> {
    let (topo, gw, bystander) = setup()?;
    let limit = gw
        .config()
        .get_int("server.max_header_bytes")
        .unwrap_or(8192);
    let size = (limit * 3).to_string();
    let out = raw(
        &topo,
        &gw,
        &["--max-wait", "10", "header-flood", "--size", &size],
    )?;
    ensure!(out.code == Some(0), "raw client: {}", out.output);
    ensure!(
        out.flag("closed"),
        "a {size}-byte header block (limit {limit}) left the connection open: {}",
        out.output
    );
    if let Some(status) = out.text("status_line") {
        ensure!(
            status.contains(" 431 ") || status.contains(" 400 ") || status.contains(" 413 "),
            "an oversized head may only be answered with 431/400/413, got {status:?}"
        );
    }
    still_serving(&topo, &gw, &bystander)
}

fn silent_client_is_closed_at_auth_timeout(phase: &str) -> Result<()> {
    let (topo, gw, bystander) = setup()?;
    let max_wait = (AUTH_TIMEOUT_SECS * 4).to_string();
    let out = raw(
        &topo,
        &gw,
        &["--max-wait", &max_wait, "silent", "--phase", phase],
    )?;
    ensure!(out.code == Some(0), "raw client: {}", out.output);
    ensure!(
        out.flag("closed"),
        "a silent client ({phase}) was not closed within {max_wait} s: {}",
        out.output
    );
    let secs = out.result["seconds"].as_f64().unwrap_or(0.0);
    ensure!(
        secs >= AUTH_TIMEOUT_SECS as f64 - 0.5 && secs <= AUTH_TIMEOUT_SECS as f64 + 3.0,
        "closed after {secs} s; expected about auth_timeout_secs = {AUTH_TIMEOUT_SECS}"
    );
    still_serving(&topo, &gw, &bystander)
}

#[test]
fn client_silent_after_the_tls_handshake_is_closed_at_the_auth_timeout() -> Result<()> {
    silent_client_is_closed_at_auth_timeout("tls")
}

#[test]
fn client_silent_before_the_tls_handshake_is_closed_at_the_auth_timeout() -> Result<()> {
    silent_client_is_closed_at_auth_timeout("tcp")
}

/// Opens `n` TCP connections to `host:port` from the namespace it runs in, says nothing on them,
/// waits two seconds, and reports how each stands: `reset` by the server, `open` (no data, no
/// close: accepted and waiting for a TLS ClientHello, or still in the listen backlog), `closed`.
/// Then, with the connections still open, it fetches `metrics` and reports its status, writes
/// `ready` and keeps the connections until `release` exists (at most 60 s).
const FLOOD: &str = r#"
import json, os, socket, sys, time, urllib.request
host, port, n, metrics, ready, release = sys.argv[1:7]
socks, failed = [], 0
for _ in range(int(n)):
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect((host, int(port)))
        socks.append(s)
    except OSError:
        failed += 1
time.sleep(2)
counts = {"reset": 0, "open": 0, "closed": 0, "connect_failed": failed}
for s in socks:
    s.setblocking(False)
    try:
        counts["closed" if s.recv(1) == b"" else "open"] += 1
    except BlockingIOError:
        counts["open"] += 1
    except ConnectionResetError:
        counts["reset"] += 1
try:
    with urllib.request.urlopen(metrics, timeout=5) as r:
        counts["metrics_status"] = r.status
        counts["metrics"] = r.read().decode()
except OSError as e:
    counts["metrics_status"] = str(e)
print(json.dumps(counts), flush=True)
open(ready, "w").close()
deadline = time.time() + 60
while not os.path.exists(release) and time.time() < deadline:
    time.sleep(0.1)
"#;

/// At its open-files limit (every connection is an open file) the gateway resets new connections
/// at once instead of leaving them in the listen backlog until their clients give up, counts
/// them, and says so in its log without flooding it; the session that was already up keeps
/// working, and once files are free again new clients log in.
#[test]
fn connections_beyond_the_open_files_limit_are_reset_and_sessions_keep_working() -> Result<()> {
    let metrics_listen = format!("{}:9477", e2e::GW_DEVICE_ADDR);
    let (topo, gw, bystander) = setup_with(|topo| {
        Gateway::start(
            topo,
            GatewayConfig::new()
                .set("timers.auth_timeout_secs", 60)
                .set("metrics.listen", metrics_listen.as_str())
                .user("alice", PASSWORD)
                .user("eve", PASSWORD)
                // Soft and hard limit alike, so that the daemon cannot raise it.
                .launcher(e2e::Launcher::open_files_limit("160:160")?),
        )
    })?;
    let (host, port) = gw.listen().rsplit_once(':').context("listen address")?;
    let dir = topo.subdir("flood")?;
    let (ready, release) = (dir.join("ready"), dir.join("release"));
    let mut cmd = topo.command_in("dev2", "python3")?;
    cmd.args(["-c", FLOOD, host, port, "300"])
        .arg(format!("http://{metrics_listen}/metrics"))
        .args([&ready, &release]);
    let mut flood = e2e::process::Background::spawn(&mut cmd, dir.join("flood.log"))?;
    e2e::wait_until(Duration::from_secs(60), "the flood to report", || {
        Ok(ready.exists())
    })?;
    let counts: serde_json::Value = serde_json::from_str(
        flood
            .log()
            .lines()
            .next()
            .context("no report from the flood")?,
    )?;
    // While the 300 connections are open: tunnelctl still answers, and saw the table full.
    let status = gw.tunnelctl_json(&["status"]);
    std::fs::write(&release, b"")?;
    flood.wait(Duration::from_secs(30))?;
    let status = status?;
    let count = |k: &str| counts[k].as_f64().unwrap_or(0.0);
    let (reset, open, failed) = (count("reset"), count("open"), count("connect_failed"));
    eprintln!("300 silent connections at a limit of 160 files: reset {reset}, open {open}, connect failed {failed}");
    // Some fit under the limit; every other one was reset (a reset that overtakes the handshake
    // fails the connect itself), none left hanging in the backlog.
    ensure!(
        (20.0..160.0).contains(&open) && reset >= 100.0 && failed <= 5.0,
        "connections: {counts}"
    );
    ensure!(reset + open + failed == 300.0, "connections: {counts}");
    // The metrics listener answered with the table full, and counted every reset.
    ensure!(
        counts["metrics_status"] == 200,
        "metrics at the limit: {counts}"
    );
    let scraped = counts["metrics"].as_str().unwrap_or_default();
    let refused = e2e::metric_value(
        scraped,
        "tunneld_connections_refused_total",
        &[("reason", "open_files")],
    )
    .unwrap_or(-1.0);
    ensure!(
        refused >= reset && refused <= reset + failed,
        "{refused} counted, {reset} reset: {counts}"
    );
    let open_fds = e2e::metric_value(scraped, "process_open_fds", &[]).unwrap_or(0.0);
    ensure!(
        (120.0..160.0).contains(&open_fds),
        "process_open_fds {open_fds} at the limit of 160"
    );
    ensure!(
        status["max_open_files"] == 160 && status["open_files"].as_u64().is_some_and(|n| n >= 120),
        "tunnelctl status at the limit: {status}"
    );
    let lines = gw
        .log()
        .lines()
        .filter(|l| l.contains("open-files limit reached"))
        .count();
    ensure!(
        (1..=3).contains(&lines),
        "{lines} log lines about the limit:\n{}",
        gw.log()
    );
    // The session that was up never noticed.
    bystander.ping(&topo, CORP_ADDR, 3)?;
    // The flood is gone: its files are freed, and a new client gets in.
    let fresh = e2e::wait_for(Duration::from_secs(20), "a login after the flood", || {
        let r = raw(&topo, &gw, &["login"])?;
        Ok((r.code == Some(0)).then_some(r))
    })?;
    ensure!(fresh.flag("dpd_answered"), "{}", fresh.output);
    Ok(())
}
