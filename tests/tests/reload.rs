//! Live reload (`tunnelctl reload` and SIGHUP): new split routes, a new user and a new certificate
//! reach new clients while a connected client stays up and passes traffic; an invalid configuration
//! and a pool change under live sessions are refused with the reason, and the old configuration
//! keeps serving.

use std::time::Duration;

use anyhow::{ensure, Result};
use e2e::certs::{self, KeyKind};
use e2e::gateway::cert_pin;
use e2e::process::tail;
use e2e::{authenticate, Client, ClientOpts, Gateway, GatewayConfig, Topology, CORP_ADDR};
use ipnet::IpNet;

const NEW_ROUTE: &str = "198.18.3.0/24";
const WAIT: Duration = Duration::from_secs(10);

/// The IPv4 split-include routes the client got at connect.
fn includes(client: &Client) -> Result<Vec<IpNet>> {
    Ok(client
        .connect_env()?
        .split_routes("CISCO_SPLIT_INC")?
        .into_iter()
        .collect())
}

/// The connected client is still the same tunnel: process alive, no reconnect, traffic passes.
fn still_up(topo: &Topology, client: &mut Client) -> Result<()> {
    ensure!(
        client.poll_exit()?.is_none(),
        "the connected client exited:\n{}",
        tail(&client.log(), 20)
    );
    let reconnects = client
        .runs()?
        .iter()
        .filter(|r| r.reason == "reconnect")
        .count();
    ensure!(reconnects == 0, "the connected client had to reconnect");
    client.ping(topo, CORP_ADDR, 3)
}

#[test]
fn reload_reaches_new_clients_keeps_live_ones_and_refuses_bad_configs() -> Result<()> {
    let topo = Topology::new()
        .device("dev")
        .device("dev2")
        .gateway()
        .corp()
        .build()?;
    let mut gw = Gateway::start(
        &topo,
        GatewayConfig::new()
            .user("alice", "alice-pw")
            .user("bob", "bob-pw"),
    )?;
    let new_route: IpNet = NEW_ROUTE.parse()?;
    let mut alice = Client::connect(&topo, &gw, ClientOpts::password("alice", "alice-pw"))?;
    ensure!(
        !includes(&alice)?.contains(&new_route),
        "route present before reload"
    );
    alice.ping(&topo, CORP_ADDR, 2)?;

    // A good reload: one more route, a new user, a new certificate.
    let cert = certs::self_signed(gw.dir(), "reloaded", KeyKind::EcdsaP256)?;
    let mut routes = gw.config().get_strs("network.split_include");
    routes.push(NEW_ROUTE.to_string());
    let good = gw
        .config()
        .clone()
        .set("network.split_include", routes)
        .set("tls.cert", cert.cert.display().to_string())
        .set("tls.key", cert.key.display().to_string());
    gw.write_config(good.clone())?;
    gw.write_users(&[
        ("alice", "alice-pw"),
        ("bob", "bob-pw"),
        ("carol", "carol-pw"),
    ])?;
    let out = gw.tunnelctl(&["reload"])?.check()?;
    ensure!(
        out.stdout.contains("network.split_include")
            && out.stdout.contains("tls.cert")
            && out.stdout.contains("certificate")
            && out.stdout.contains("users:       3"),
        "reload report: {out}"
    );
    // New clients see the new certificate (the harness now pins it) and the new route.
    gw.set_pin(&cert_pin(&cert.cert)?);
    let bob = Client::connect(
        &topo,
        &gw,
        ClientOpts::password("bob", "bob-pw").device("dev2"),
    )?;
    ensure!(
        includes(&bob)?.contains(&new_route),
        "a client after the reload lacks {NEW_ROUTE}: {:?}",
        includes(&bob)?
    );
    let carol = authenticate(&topo, &gw, "dev2", "carol", "carol-pw")?;
    ensure!(
        carol.code == Some(0),
        "a user added by the reload cannot log in: {}",
        carol.output
    );
    // The client connected before the reload is untouched.
    still_up(&topo, &mut alice)?;
    ensure!(
        !includes(&alice)?.contains(&new_route),
        "old client's routes changed"
    );

    // An invalid configuration is refused with the reason, by tunnelctl and by SIGHUP.
    gw.write_config_text(&good.clone().set("network.mtu", 100).to_toml())?;
    let out = gw.tunnelctl(&["reload"])?;
    ensure!(
        !out.success()
            && out.stderr.contains("network.mtu")
            && out
                .stderr
                .contains("the running configuration is unchanged"),
        "invalid reload: {out}"
    );
    gw.signal("HUP")?;
    gw.wait_metric(
        "tunneld_config_reloads_total",
        &[("result", "failure")],
        2.0,
        WAIT,
    )?;
    gw.wait_for_log(&["configuration reload refused", "network.mtu"], WAIT)?;

    // A pool change while sessions hold addresses would orphan them: refused, saying so.
    gw.write_config_text(
        &good
            .clone()
            .set("network.ipv4_pool", "198.18.129.0/24")
            .to_toml(),
    )?;
    let out = gw.tunnelctl(&["reload"])?;
    ensure!(
        !out.success()
            && out.stderr.contains("network.ipv4_pool")
            && out.stderr.contains("would orphan the addresses of"),
        "pool change reload: {out}"
    );

    // The last good configuration keeps serving: a new client still gets the new route.
    let again = Client::connect(
        &topo,
        &gw,
        ClientOpts::password("alice", "alice-pw")
            .device("dev2")
            .interface("oc1"),
    )?;
    ensure!(
        includes(&again)?.contains(&new_route),
        "after refused reloads"
    );
    again.ping(&topo, CORP_ADDR, 2)?;
    still_up(&topo, &mut alice)?;

    // SIGHUP applies a good file.
    let mut dns = gw.config().get_strs("network.split_dns");
    dns.push("hup.example".to_string());
    let hup = good.set("network.split_dns", dns);
    gw.write_config(hup)?;
    gw.signal("HUP")?;
    gw.wait_metric(
        "tunneld_config_reloads_total",
        &[("result", "success")],
        2.0,
        WAIT,
    )?;
    let line = gw.wait_for_log(&["configuration reloaded", "network.split_dns"], WAIT)?;
    ensure!(
        !line.contains("network.split_include"),
        "second reload re-reported routes: {line}"
    );
    ensure!(
        gw.metric("tunneld_sessions_active", &[])? == 3.0,
        "live sessions across reloads"
    );
    drop(bob);
    Ok(())
}
