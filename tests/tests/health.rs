//! The health page on the TLS port, and drain: after SIGTERM probes get 503, connected clients are
//! told to go, and the daemon exits 0 when the drain period is over.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use e2e::{Client, ClientOpts, Gateway, GatewayConfig, Topology};

const USER: &str = "alice";
const PASSWORD: &str = "alice-pw";

#[test]
fn health_path_answers_200_over_https() -> Result<()> {
    let topo = Topology::standard()?;
    let gw = Gateway::start(&topo, GatewayConfig::new())?;
    let reply = gw.https_get(&topo, topo.first_device(), "/health")?;
    ensure!(
        reply.status == 200,
        "GET /health: {} ({})",
        reply.status,
        reply.detail
    );
    ensure!(!reply.body.is_empty(), "the health page has a body");
    let again = gw.https_get(&topo, topo.first_device(), "/health")?;
    ensure!(again.body == reply.body, "the health body is fixed");
    Ok(())
}

#[test]
fn configured_health_path_is_served() -> Result<()> {
    let topo = Topology::standard()?;
    let gw = Gateway::start(
        &topo,
        GatewayConfig::new().set("server.health_path", "/lb-probe"),
    )?;
    let reply = gw.https_get(&topo, topo.first_device(), "/lb-probe")?;
    ensure!(
        reply.status == 200,
        "GET /lb-probe: {} ({})",
        reply.status,
        reply.detail
    );
    Ok(())
}

#[test]
fn plain_get_of_root_from_a_browser_gets_the_health_page() -> Result<()> {
    let topo = Topology::standard()?;
    let gw = Gateway::start(&topo, GatewayConfig::new())?;
    let health = gw.https_get(&topo, topo.first_device(), "/health")?;
    let root = gw.https_get(&topo, topo.first_device(), "/")?;
    ensure!(
        root.status == 200,
        "GET /: {} ({})",
        root.status,
        root.detail
    );
    ensure!(
        root.body == health.body,
        "GET / should show the health page: {:?} vs {:?}",
        root.body,
        health.body
    );
    Ok(())
}

#[test]
fn drain_after_sigterm_answers_503_to_probes_and_logins_tells_clients_to_go_and_exits_0(
) -> Result<()> {
    const DRAIN_SECS: u64 = 4;
    let topo = Topology::standard()?;
    let cfg = GatewayConfig::new()
        .user(USER, PASSWORD)
        .daemon_arg("--drain-secs")
        .daemon_arg(&DRAIN_SECS.to_string());
    let mut gw = Gateway::start(&topo, cfg)?;
    let mut client = Client::connect(&topo, &gw, ClientOpts::password(USER, PASSWORD))?;
    let before = gw.https_get(&topo, topo.first_device(), "/health")?;
    let ready = gw.admin_get("/readyz")?;
    ensure!(
        ready.status == 200,
        "/readyz before drain: {} ({})",
        ready.status,
        ready.detail
    );
    ensure!(
        before.status == 200,
        "before drain: {} ({})",
        before.status,
        before.detail
    );

    let sent = Instant::now();
    gw.signal("TERM")?;
    let during = gw.https_get(&topo, topo.first_device(), "/health")?;
    let asked_after = sent.elapsed();
    ensure!(
        during.status == 503,
        "GET /health {asked_after:?} after SIGTERM (drain {DRAIN_SECS} s): {} ({})",
        during.status,
        during.detail
    );
    let ready = gw.admin_get("/readyz")?;
    ensure!(
        ready.status == 503,
        "/readyz while draining: {} ({})",
        ready.status,
        ready.detail
    );
    // New logins are refused while draining.
    let late = e2e::raw::run(&topo, &gw, topo.first_device(), USER, PASSWORD, &["login"])?;
    ensure!(
        late.code == Some(2) && late.result["status"].as_u64() == Some(503),
        "a login while draining should get 503: {}",
        late.output
    );
    ensure!(
        sent.elapsed() < Duration::from_secs(DRAIN_SECS),
        "the drain checks took longer than the drain window; raise DRAIN_SECS"
    );
    // Connected clients are told to leave (DISCONNECT), so openconnect exits instead of reconnecting.
    let code = client.wait_exit(Duration::from_secs(DRAIN_SECS + 10))?;
    ensure!(
        code == Some(1),
        "openconnect told to go by a draining gateway should exit 1, got {code:?}"
    );
    let exit = gw.wait_exit(Duration::from_secs(DRAIN_SECS + 20))?;
    ensure!(exit == Some(0), "tunneld exit code after drain: {exit:?}");
    ensure!(
        sent.elapsed() >= Duration::from_secs(DRAIN_SECS) - Duration::from_millis(500),
        "tunneld exited after {:?}, before the {DRAIN_SECS} s drain period",
        sent.elapsed()
    );
    Ok(())
}
