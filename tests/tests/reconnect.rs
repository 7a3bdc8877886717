//! Cookie reconnect: a lost TCP connection (SIGUSR2 to openconnect, or the socket killed with
//! `ss -K`) comes back on the same cookie with the same addresses; after a logout the cookie is dead.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use e2e::process::tail;
use e2e::{
    authenticate, run_expecting_exit, Client, ClientOpts, Gateway, GatewayConfig, Topology,
    CORP_ADDR,
};

const USER: &str = "alice";
const PASSWORD: &str = "alice-pw";
const RECONNECT: Duration = Duration::from_secs(30);

fn assert_same_addresses(client: &Client) -> Result<()> {
    let first = client.connect_env()?;
    let again = client.wait_reason("reconnect", 1, RECONNECT)?;
    ensure!(
        again.ipv4()? == first.ipv4()?,
        "reconnect changed INTERNAL_IP4_ADDRESS {} -> {}",
        first.ipv4()?,
        again.ipv4()?
    );
    ensure!(
        again.var("INTERNAL_IP4_NETMASK")? == first.var("INTERNAL_IP4_NETMASK")?,
        "reconnect changed the netmask"
    );
    ensure!(
        again.ipv6()? == first.ipv6()?,
        "reconnect changed INTERNAL_IP6_ADDRESS"
    );
    Ok(())
}

#[test]
fn sigusr2_reconnect_reuses_the_cookie_and_keeps_the_address() -> Result<()> {
    let topo = Topology::standard()?;
    let gw = Gateway::start(&topo, GatewayConfig::new().user(USER, PASSWORD))?;
    let mut client = Client::connect(&topo, &gw, ClientOpts::password(USER, PASSWORD))?;
    client.ping(&topo, CORP_ADDR, 2)?;
    client.signal("USR2")?;
    assert_same_addresses(&client)?;
    ensure!(
        client.poll_exit()?.is_none(),
        "openconnect exited after the reconnect:\n{}",
        tail(&client.log(), 20)
    );
    client.ping(&topo, CORP_ADDR, 3)?;
    ensure!(
        gw.log_lines(&["authentication failed"]).is_empty(),
        "a cookie reconnect must not authenticate again"
    );
    gw.wait_metric("tunneld_sessions_active", &[], 1.0, Duration::from_secs(10))?;
    gw.wait_metric(
        "tunneld_pool_addresses_in_use",
        &[],
        1.0,
        Duration::from_secs(10),
    )?;
    Ok(())
}

#[test]
fn tcp_connection_killed_with_ss_reconnects_with_the_cookie_and_keeps_the_address() -> Result<()> {
    let topo = Topology::standard()?;
    let gw = Gateway::start(&topo, GatewayConfig::new().user(USER, PASSWORD))?;
    let mut client = Client::connect(&topo, &gw, ClientOpts::password(USER, PASSWORD))?;
    client.ping(&topo, CORP_ADDR, 2)?;
    // Destroy the client's TCP socket to the gateway (SOCK_DESTROY: the peer gets a RST).
    let port = gw
        .listen()
        .rsplit(':')
        .next()
        .context("listen port")?
        .to_string();
    let filter = format!("dport = :{port}");
    let out = topo.run_in(
        client.device(),
        &["ss", "-K", "-t", "state", "established", &filter],
    )?;
    ensure!(
        out.stdout.lines().count() >= 2,
        "ss -K killed no socket:\n{}",
        out.stdout
    );
    assert_same_addresses(&client)?;
    ensure!(
        client.poll_exit()?.is_none(),
        "openconnect exited after the reconnect:\n{}",
        tail(&client.log(), 20)
    );
    client.ping(&topo, CORP_ADDR, 3)?;
    gw.wait_metric("tunneld_sessions_active", &[], 1.0, Duration::from_secs(10))?;
    Ok(())
}

#[test]
fn cookie_from_authenticate_connects_and_is_refused_after_logout() -> Result<()> {
    let topo = Topology::standard()?;
    let gw = Gateway::start(&topo, GatewayConfig::new().user(USER, PASSWORD))?;
    let auth = authenticate(&topo, &gw, topo.first_device(), USER, PASSWORD)?;
    ensure!(
        auth.code == Some(0),
        "openconnect --authenticate failed: {}",
        auth.output
    );
    let cookie = auth.cookie.context("no COOKIE= line from --authenticate")?;
    ensure!(cookie.contains("webvpn="), "COOKIE has no webvpn: {cookie}");

    let mut client = Client::connect(&topo, &gw, ClientOpts::cookie(&cookie))?;
    client.ping(&topo, CORP_ADDR, 2)?;
    let code = client.quit()?;
    ensure!(code == Some(0), "logout (SIGINT) exit {code:?}");
    gw.wait_metric("tunneld_sessions_active", &[], 0.0, Duration::from_secs(10))?;

    let (code, log) = run_expecting_exit(&topo, &gw, ClientOpts::cookie(&cookie))?;
    ensure!(
        code == Some(2),
        "a logged-out cookie should be rejected (exit 2), got {code:?}:\n{}",
        tail(&log, 20)
    );
    Ok(())
}
