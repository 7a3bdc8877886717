//! The capacity harness with `--dtls` (the Rust client's DTLS 1.2 PSK channel) against the real
//! tunneld: every session gets DTLS as part of its setup, every probe goes over it both ways, and
//! DTLS comes back after a cookie-reconnect storm; with the gateway's `[dtls]` off, the same sessions come up over CSTP and say DTLS was not
//! offered. Correctness only, never speed.

use std::time::Duration;

use anyhow::{ensure, Result};
use e2e::bench::{add_source_addresses, run_smoke, BenchRun, Login};
use e2e::{Gateway, GatewayConfig, Topology};

const USER: &str = "bench";
const PASSWORD: &str = "bench-pw";
/// Sessions per run (the test pool holds 253).
const SESSIONS: f64 = 200.0;
const TIMEOUT: Duration = Duration::from_secs(120);

fn setup(config: GatewayConfig) -> Result<(Topology, Gateway, Vec<String>)> {
    let topo = Topology::standard()?;
    let gw = Gateway::start(&topo, config.user(USER, PASSWORD))?;
    let sources = add_source_addresses(&topo, "dev", 100, 4)?;
    Ok((topo, gw, sources))
}

/// `tunnel-bench <scenario> --dtls` with 200 sessions in three worker processes.
fn bench(
    topo: &Topology,
    gw: &Gateway,
    sources: &[String],
    scenario: &str,
    args: &[&str],
) -> Result<BenchRun> {
    let n = SESSIONS.to_string();
    let common = ["--sessions", &n, "--per-process", "80", "--dtls"];
    let all = [&common[..], args].concat();
    let login = Login {
        user: USER,
        password: PASSWORD,
    };
    run_smoke(topo, gw, login, sources, scenario, &all, TIMEOUT)
}

fn dtls_packets(gw: &Gateway, direction: &str) -> Result<f64> {
    gw.metric_or_zero("tunneld_dtls_packets_total", &[("direction", direction)])
}

const THROUGHPUT: [&str; 8] = [
    "--duration",
    "2",
    "--pushers",
    "50",
    "--window",
    "8",
    "--size",
    "1000",
];

#[test]
fn every_dtls_session_comes_up_over_dtls_and_every_probe_crosses_it_both_ways() -> Result<()> {
    let (topo, gw, sources) = setup(GatewayConfig::new())?;

    // Connect: the DTLS handshake is part of each setup.
    let run = bench(&topo, &gw, &sources, "connect", &[])?;
    ensure!(run.report["ok"] == true, "problems: {}", run.output);
    ensure!(run.report["transport"] == "dtls", "{}", run.output);
    ensure!(run.num("/connect/up") == SESSIONS, "{}", run.output);
    ensure!(run.num("/connect/dtls_up") == SESSIONS, "{}", run.output);
    ensure!(run.num("/connect/dtls/up") == SESSIONS, "{}", run.output);
    ensure!(run.num("/processes") == 3.0, "{}", run.output);
    ensure!(
        run.num("/connect/verify_received") == SESSIONS,
        "{}",
        run.output
    );
    ensure!(
        gw.metric("tunneld_dtls_handshakes_total", &[("result", "ok")])? >= SESSIONS,
        "gateway handshakes: {}",
        gw.metrics()?
    );

    // Throughput: every probe goes out and comes back over DTLS, and none is lost.
    let (up0, down0) = (dtls_packets(&gw, "up")?, dtls_packets(&gw, "down")?);
    let run = bench(&topo, &gw, &sources, "throughput", &THROUGHPUT)?;
    ensure!(run.report["ok"] == true, "problems: {}", run.output);
    ensure!(run.num("/connect/dtls_up") == SESSIONS, "{}", run.output);
    let sent = run.num("/action/probes_sent");
    ensure!(sent > 50.0 * 8.0, "too few probes: {}", run.output);
    ensure!(
        run.num("/action/probes_received") == sent,
        "probes lost: {}",
        run.output
    );
    ensure!(
        run.num("/action/dtls_packets_sent") == sent,
        "not every probe went over DTLS: {}",
        run.output
    );
    ensure!(
        run.num("/action/dtls_packets_received") == sent,
        "not every reply came over DTLS: {}",
        run.output
    );
    ensure!(run.num("/action/dtls/up") == SESSIONS, "{}", run.output);
    // The gateway agrees: at least that many packets crossed its DTLS channel each way (the
    // verification probes add 200 more).
    let (up1, down1) = (dtls_packets(&gw, "up")?, dtls_packets(&gw, "down")?);
    ensure!(
        up1 - up0 >= sent && down1 - down0 >= sent,
        "gateway DTLS packets up {} down {}, harness sent {sent}",
        up1 - up0,
        down1 - down0
    );

    // A cookie-reconnect storm: every new CONNECT has a new App-ID and PSK, and DTLS comes back
    // on each of them before the session counts as recovered.
    let run = bench(&topo, &gw, &sources, "storm", &["--mode", "cookie"])?;
    ensure!(run.report["ok"] == true, "problems: {}", run.output);
    ensure!(run.num("/action/recovered") == SESSIONS, "{}", run.output);
    ensure!(run.num("/action/dtls/up") == SESSIONS, "{}", run.output);
    ensure!(
        run.num("/action/dtls_packets_received") == SESSIONS,
        "the probe after each reconnect came back over DTLS: {}",
        run.output
    );
    Ok(())
}

#[test]
fn with_dtls_off_at_the_gateway_dtls_sessions_run_over_cstp_and_say_it_was_not_offered(
) -> Result<()> {
    let (topo, gw, sources) = setup(GatewayConfig::new().set("dtls.enabled", false))?;
    let run = bench(&topo, &gw, &sources, "throughput", &THROUGHPUT)?;
    ensure!(run.num("/connect/up") == SESSIONS, "{}", run.output);
    ensure!(
        run.num("/connect/verify_received") == SESSIONS,
        "{}",
        run.output
    );
    ensure!(run.num("/connect/dtls_up") == 0.0, "{}", run.output);
    ensure!(
        run.num("/connect/dtls/not_offered") == SESSIONS,
        "{}",
        run.output
    );
    let sent = run.num("/action/probes_sent");
    ensure!(sent > 50.0 * 8.0, "too few probes: {}", run.output);
    ensure!(
        run.num("/action/probes_received") == sent,
        "probes lost: {}",
        run.output
    );
    ensure!(
        run.num("/action/dtls_packets_sent") == 0.0,
        "{}",
        run.output
    );
    // Asked for DTLS and did not get it: that is the one problem `--check` reports.
    let problems = run.report["problems"].to_string();
    ensure!(
        run.report["ok"] == false && problems.contains("200 of 200 sessions without DTLS"),
        "{problems}"
    );
    ensure!(
        gw.metric_or_zero("tunneld_dtls_handshakes_total", &[("result", "ok")])? == 0.0,
        "{}",
        gw.metrics()?
    );
    Ok(())
}
