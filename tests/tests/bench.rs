//! The capacity harness (`tunnel-bench`, on the Rust client `tunnel-client`) against the real
//! tunneld: a small version of every scenario, checked for correctness only (every session up,
//! every probe answered, every session back after a storm), never for speed.

use std::time::Duration;

use anyhow::{ensure, Result};
use e2e::bench::{add_source_addresses, run_bench, run_smoke, BenchRun, Login};
use e2e::certs::DeviceCa;
use e2e::process::Background;
use e2e::{Gateway, GatewayConfig, Topology, CORP_ADDR};

const USER: &str = "bench";
const PASSWORD: &str = "bench-pw";
/// The smoke size: every scenario opens this many sessions (the test pool holds 253).
const SMOKE_SESSIONS: &str = "200";
const TIMEOUT: Duration = Duration::from_secs(120);

fn setup() -> Result<(Topology, Gateway, Vec<String>)> {
    let topo = Topology::standard()?;
    let gw = Gateway::start(&topo, GatewayConfig::new().user(USER, PASSWORD))?;
    let sources = add_source_addresses(&topo, "dev", 100, 4)?;
    Ok((topo, gw, sources))
}

fn bench(
    topo: &Topology,
    gw: &Gateway,
    sources: &[String],
    scenario: &str,
    args: &[&str],
) -> Result<BenchRun> {
    let all = [&["--sessions", SMOKE_SESSIONS][..], args].concat();
    let login = Login {
        user: USER,
        password: PASSWORD,
    };
    run_smoke(topo, gw, login, sources, scenario, &all, TIMEOUT)
}

fn ensure_all_up(run: &BenchRun) -> Result<()> {
    ensure!(
        run.num("/connect/up") == 200.0 && run.num("/connect/attempted") == 200.0,
        "not every session came up: {}",
        run.output
    );
    ensure!(
        run.num("/connect/verify_received") == 200.0,
        "a verification probe went unanswered: {}",
        run.output
    );
    ensure!(
        run.report["ok"] == true,
        "harness reported problems: {}",
        run.output
    );
    Ok(())
}

#[test]
fn rust_client_sessions_come_up_and_each_one_round_trips_a_ping() -> Result<()> {
    let (topo, gw, sources) = setup()?;
    // `ip netns exec` execs tunneld, so the child's pid is the daemon's.
    let pid = gw.pid().map(|p| p.to_string()).unwrap_or_default();
    // 80 sessions per process: three worker processes share the 200 sessions.
    let run = bench(
        &topo,
        &gw,
        &sources,
        "connect",
        &["--server-pid", &pid, "--per-process", "80"],
    )?;
    ensure_all_up(&run)?;
    // The gateway saw 200 sessions start and answered every probe's path through TUN and corp.
    ensure!(
        gw.metric("tunneld_sessions_started_total", &[])? >= 200.0,
        "sessions_started metric: {}",
        gw.metrics()?
    );
    ensure!(
        run.num("/server/after_connect/rss_kib") > 0.0,
        "no server memory reading: {}",
        run.output
    );
    ensure!(run.num("/source_addresses") == 4.0);
    ensure!(
        run.num("/processes") == 3.0,
        "expected 3 worker processes: {}",
        run.output
    );
    ensure!(
        run.num("/logout_failed") == 0.0,
        "logouts failed: {}",
        run.output
    );
    Ok(())
}

/// An operator measuring a server on another host reads its CPU and memory from its metrics
/// listener (`--server-metrics`) instead of /proc: here the harness runs in the device namespace,
/// where the daemon's /proc entry means nothing to it, and reaches the listener over the network.
#[test]
fn the_server_is_measured_through_its_metrics_endpoint() -> Result<()> {
    let topo = Topology::standard()?;
    let listen = format!("{}:9477", e2e::topology::GW_DEVICE_ADDR);
    let gw = Gateway::start(
        &topo,
        GatewayConfig::new()
            .user(USER, PASSWORD)
            .set("metrics.listen", listen.as_str()),
    )?;
    let sources = add_source_addresses(&topo, "dev", 100, 4)?;
    let url = format!("http://{listen}/metrics");
    let run = bench(&topo, &gw, &sources, "connect", &["--server-metrics", &url])?;
    ensure_all_up(&run)?;
    let before = run.num("/server/before/cpu_s");
    let after = run.num("/server/after_connect/cpu_s");
    // 200 password checks (SHA-512 crypt, 5,000 rounds) and TLS handshakes: tens of ms at least.
    ensure!(
        before > 0.0 && after - before >= 0.05,
        "server CPU {before} s before, {after} s after 200 logins: {}",
        run.output
    );
    ensure!(
        run.num("/server/setups_per_cpu_s") > 0.0,
        "no setup rate: {}",
        run.output
    );
    let rss = run.num("/server/rss_per_session_kib");
    ensure!(
        rss > 0.0 && rss < 256.0,
        "RSS per session {rss} KiB: {}",
        run.output
    );
    ensure!(
        run.report["server"]["pss_per_session_kib"].is_null(),
        "a PSS from a metrics endpoint: {}",
        run.output
    );
    // One reading, as the anchor takes around an openconnect + iperf3 run.
    let bin = e2e::gateway::tunnel_bench_bin()?;
    let mut cmd = topo.command_in("dev", &bin.display().to_string())?;
    cmd.args(["sample", "--metrics", &url]);
    let one = e2e::process::run(&mut cmd, None, TIMEOUT)?.check()?;
    let sample: serde_json::Value = serde_json::from_str(one.stdout.trim())?;
    ensure!(
        sample["cpu_s"].as_f64().is_some_and(|c| c >= after)
            && sample["rss_kib"].as_u64().is_some_and(|r| r > 1024)
            && sample["processes"] == 1,
        "sample --metrics: {sample}"
    );
    // A wrong URL is a clear error before any session is opened.
    let mut cmd = topo.command_in("dev", &bin.display().to_string())?;
    cmd.args([
        "connect",
        "--server",
        gw.listen(),
        "--pin",
        gw.pin(),
        "--user",
        USER,
    ])
    .args(["--sessions", "5", "--quiet", "--server-metrics"])
    .arg(format!("http://{listen}/nothing"))
    .env("TUNNEL_BENCH_PASSWORD", PASSWORD);
    let bad = e2e::process::run(&mut cmd, None, TIMEOUT)?;
    ensure!(
        !bad.success() && bad.stderr.contains("/nothing: HTTP 404"),
        "a 404 metrics URL: {bad}"
    );
    ensure!(
        gw.metric("tunneld_sessions_started_total", &[])? == 200.0,
        "sessions were opened despite the bad URL"
    );
    Ok(())
}

#[test]
fn rust_client_sessions_log_in_with_client_certificates() -> Result<()> {
    const CERT_USERS: u32 = 20;
    let topo = Topology::standard()?;
    let ca = DeviceCa::new(topo.dir(), "device-ca")?;
    let certs = topo.subdir("bench-certs")?;
    for i in 0..CERT_USERS {
        ca.issue(&certs, &format!("{USER}{i}"))?;
    }
    let gw = Gateway::start(
        &topo,
        GatewayConfig::new()
            .set("auth.method", "certificate")
            .set("auth.ca_file", ca.cert.display().to_string()),
    )?;
    let sources = add_source_addresses(&topo, "dev", 100, 4)?;
    let cert_dir = certs.display().to_string();
    let user_count = CERT_USERS.to_string();
    let mut all: Vec<&str> = vec![
        "--target",
        CORP_ADDR,
        "--sessions",
        SMOKE_SESSIONS,
        "--concurrency",
        "32",
        "--per-process",
        "80",
        "--cert-dir",
        &cert_dir,
        "--user-count",
        &user_count,
    ];
    for s in &sources {
        all.extend(["--source", s.as_str()]);
    }
    // No password at all: the certificate is the login.
    let login = Login {
        user: USER,
        password: "",
    };
    let run = run_bench(&topo, &gw, "dev", login, "connect", &all, TIMEOUT)?;
    ensure_all_up(&run)?;
    ensure!(
        gw.metric("tunneld_auth_successes_total", &[])? == 200.0
            && gw.metric_or_zero("tunneld_auth_failures_total", &[])? == 0.0,
        "200 certificate logins and no failure: {}",
        gw.metrics()?
    );
    let log = gw.log();
    ensure!(
        log.contains("user=bench0 ") && log.contains(&format!("user=bench{}", CERT_USERS - 1)),
        "sessions were not logged in as their certificates' users"
    );
    // A certificate session's cookie reconnects only with its own certificate: the client
    // presents it on every connection, so a cookie storm brings every session back.
    all.extend(["--mode", "cookie"]);
    let storm = run_bench(&topo, &gw, "dev", login, "storm", &all, TIMEOUT)?;
    ensure_all_up(&storm)?;
    ensure!(
        storm.num("/action/recovered") == 200.0
            && gw.metric_or_zero("tunneld_auth_failures_total", &[])? == 0.0,
        "cookie storm with certificates: {}\n{}",
        storm.output,
        gw.metrics()?
    );
    Ok(())
}

#[test]
fn hold_keeps_every_session_with_dpd_answered_and_no_probe_lost() -> Result<()> {
    let (topo, gw, sources) = setup()?;
    let run = bench(
        &topo,
        &gw,
        &sources,
        "hold",
        &[
            "--duration",
            "4",
            "--trickle-ms",
            "500",
            "--dpd",
            "1",
            "--keepalive",
            "1",
        ],
    )?;
    ensure_all_up(&run)?;
    ensure!(run.num("/action/sessions") == 200.0, "{}", run.output);
    ensure!(
        run.num("/action/probes_sent") >= 200.0 * 6.0,
        "too few probes: {}",
        run.output
    );
    ensure!(
        run.num("/action/probes_unanswered") == 0.0,
        "{}",
        run.output
    );
    ensure!(
        run.num("/action/dpd_sent") >= 200.0 * 2.0,
        "too few DPDs: {}",
        run.output
    );
    ensure!(
        run.num("/action/dpd_answered") == run.num("/action/dpd_sent"),
        "{}",
        run.output
    );
    Ok(())
}

/// The throughput scenario, 2 s with 50 of the sessions pushing 8 probes in flight each, plus
/// `args`; checks that every session came up and every probe was answered. Returns the run and
/// the probes sent.
fn push(
    topo: &Topology,
    gw: &Gateway,
    sources: &[String],
    args: &[&str],
) -> Result<(BenchRun, f64)> {
    let all = [
        &["--duration", "2", "--pushers", "50", "--window", "8"][..],
        args,
    ]
    .concat();
    let run = bench(topo, gw, sources, "throughput", &all)?;
    ensure_all_up(&run)?;
    let sent = run.num("/action/probes_sent");
    ensure!(sent > 50.0 * 8.0, "too few probes: {}", run.output);
    ensure!(
        run.num("/action/probes_received") == sent,
        "probes lost: {}",
        run.output
    );
    Ok((run, sent))
}

#[test]
fn throughput_accounts_for_every_probe_both_ways() -> Result<()> {
    let (topo, gw, sources) = setup()?;
    let up_before = gw.metric_or_zero("tunneld_packets_total", &[("direction", "up")])?;
    let (run, sent) = push(&topo, &gw, &sources, &["--size", "1000"])?;
    ensure!(
        run.report["action"]["per_session_mbit"]
            .as_array()
            .map(Vec::len)
            == Some(3)
    );
    let up_after = gw.metric("tunneld_packets_total", &[("direction", "up")])?;
    ensure!(
        up_after - up_before >= sent,
        "gateway counted {} packets up, harness sent {sent}",
        up_after - up_before
    );
    Ok(())
}

#[test]
fn throughput_with_udp_probes_is_answered_by_the_echo_service_and_fits_the_mtu() -> Result<()> {
    let topo = Topology::standard()?;
    // A tunnel MTU below the harness's largest packet size (1400).
    let gw = Gateway::start(
        &topo,
        GatewayConfig::new()
            .user(USER, PASSWORD)
            .set("network.mtu", 1300),
    )?;
    let sources = add_source_addresses(&topo, "dev", 100, 4)?;
    let bin = e2e::gateway::tunnel_bench_bin()?;
    let listen = format!("{CORP_ADDR}:7");
    let mut echo = Background::spawn(
        topo.command_in("corp", &bin.display().to_string())?
            .args(["echo", "--listen", &listen]),
        topo.dir().join("echo.log"),
    )?;
    // The harness is asked for more than the tunnel MTU: it must send packets of at most the MTU
    // the server announced, so that none is fragmented on its way.
    let pushed = push(&topo, &gw, &sources, &["--size", "1400", "--udp-port", "7"]);
    ensure!(
        echo.try_wait()?.is_none(),
        "the echo service exited: {}",
        echo.log()
    );
    let (run, sent) = pushed?;
    // Every echo comes back whole: as many bytes back as sent, all in MTU-sized packets.
    ensure!(
        run.num("/action/bytes_received") == run.num("/action/bytes_sent"),
        "echoes came back short: {}",
        run.output
    );
    ensure!(
        run.num("/action/bytes_sent") == sent * 1300.0,
        "probes are not 1300-byte packets: {}",
        run.output
    );
    Ok(())
}

#[test]
fn storm_with_cookie_reconnect_brings_every_session_back_on_its_address() -> Result<()> {
    let (topo, gw, sources) = setup()?;
    let run = bench(&topo, &gw, &sources, "storm", &["--mode", "cookie"])?;
    ensure_all_up(&run)?;
    ensure!(run.num("/action/recovered") == 200.0, "{}", run.output);
    ensure!(run.num("/action/address_changed") == 0.0, "{}", run.output);
    ensure!(
        run.num("/action/probes_unanswered") == 0.0,
        "{}",
        run.output
    );
    Ok(())
}

#[test]
fn storm_with_full_reauth_brings_every_session_back() -> Result<()> {
    let (topo, gw, sources) = setup()?;
    let run = bench(&topo, &gw, &sources, "storm", &["--mode", "reauth"])?;
    ensure_all_up(&run)?;
    ensure!(run.num("/action/recovered") == 200.0, "{}", run.output);
    ensure!(
        run.num("/action/probes_unanswered") == 0.0,
        "{}",
        run.output
    );
    Ok(())
}
