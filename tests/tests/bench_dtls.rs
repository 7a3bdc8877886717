//! The capacity harness with `--dtls` (the Rust client's DTLS 1.2 PSK channel) against the real
//! tunneld: every session gets DTLS as part of its setup, every probe goes over it both ways, and
//! DTLS comes back after a cookie-reconnect storm; with the gateway's `[dtls]` off, the same sessions come up over CSTP and say DTLS was not
//! offered. Correctness only, never speed.

use std::time::Duration;

use anyhow::{ensure, Result};
use e2e::bench::{add_source_addresses, run_smoke, BenchRun, Login};
use e2e::{Gateway, GatewayConfig, Topology, GW_DEVICE_ADDR};

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

/// Blocks UDP between the `dev` namespace and the gateway's DTLS port (both ways).
fn set_udp_blocked(topo: &Topology, blocked: bool) -> Result<()> {
    if !blocked {
        topo.run_in("dev", &["nft", "delete", "table", "inet", "e2e_bench_udp"])?;
        return Ok(());
    }
    let rules = format!(
        "table inet e2e_bench_udp {{\n\
         chain out {{ type filter hook output priority 0; ip daddr {GW_DEVICE_ADDR} udp dport 443 drop; }}\n\
         chain in {{ type filter hook input priority 0; ip saddr {GW_DEVICE_ADDR} udp sport 443 drop; }}\n\
         }}\n"
    );
    let path = topo.dir().join("block-bench-udp.nft");
    std::fs::write(&path, rules)?;
    topo.run_in("dev", &["nft", "-f", &path.display().to_string()])?;
    Ok(())
}

#[test]
fn dtls_lost_to_blocked_udp_comes_back_by_a_new_handshake_as_openconnect_retries() -> Result<()> {
    // Short timers: the client sees DTLS fail within seconds of the block (a refused send or
    // DPD), the gateway moves downstream to CSTP after 3 s without UDP.
    let (topo, gw, sources) = setup(
        GatewayConfig::new()
            .set("timers.dpd_secs", 2)
            .set("dtls.switch_to_tcp_secs", 3),
    )?;
    const N: f64 = 20.0;
    let wait = Duration::from_secs(30);
    let on = |transport: &str| -> Result<f64> {
        gw.metric_or_zero("tunneld_sessions_active", &[("transport", transport)])
    };
    let run = std::thread::scope(|s| -> Result<BenchRun> {
        let bench = s.spawn(|| {
            let login = Login {
                user: USER,
                password: PASSWORD,
            };
            let args = [
                "--sessions",
                "20",
                "--dtls",
                "--dtls-retry",
                "2",
                "--duration",
                "40",
                "--trickle-ms",
                "0",
            ];
            run_smoke(&topo, &gw, login, &sources, "hold", &args, TIMEOUT)
        });
        let result = (|| -> Result<()> {
            gw.wait_metric("tunneld_sessions_active", &[("transport", "dtls")], N, wait)?;
            set_udp_blocked(&topo, true)?;
            gw.wait_metric("tunneld_sessions_active", &[("transport", "cstp")], N, wait)?;
            // Failed attempts while blocked are restarts too; let a few happen.
            std::thread::sleep(Duration::from_secs(5));
            ensure!(on("dtls")? == 0.0, "DTLS came back while UDP was blocked?");
            set_udp_blocked(&topo, false)?;
            gw.wait_metric("tunneld_sessions_active", &[("transport", "dtls")], N, wait)
        })();
        let run = bench
            .join()
            .map_err(|_| anyhow::anyhow!("the bench thread panicked"))??;
        result.map_err(|e| anyhow::anyhow!("{e:#}\n{}", run.output))?;
        Ok(run)
    })?;
    ensure!(run.num("/action/sessions") == N, "{}", run.output);
    ensure!(
        run.report["action"]["lost_sessions"]
            .as_object()
            .is_some_and(|m| m.is_empty()),
        "TLS must survive the loss of UDP: {}",
        run.output
    );
    ensure!(
        run.num("/action/dtls/up") == N,
        "every session on DTLS again at the end: {}",
        run.output
    );
    ensure!(
        run.num("/action/dtls_restarts") >= N,
        "each session started DTLS again: {}",
        run.output
    );
    ensure!(
        gw.metric("tunneld_dtls_handshakes_total", &[("result", "ok")])? >= 2.0 * N,
        "a second handshake per session at the gateway: {}",
        gw.metrics()?
    );
    Ok(())
}
