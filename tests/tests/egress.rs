//! Egress modes. Routed mode (the default) is what every other test uses: corp routes the pool back
//! to the gateway. NAT mode masquerades the pool with an nftables table the daemon owns, so corp
//! needs no return route; the table goes away when the daemon stops.

use std::time::Duration;

use anyhow::{ensure, Result};
use e2e::topology::{POOL_ROUTE, POOL_ROUTE6};
use e2e::{Client, ClientOpts, Gateway, GatewayConfig, Topology, CORP_ADDR};

const USER: &str = "nat-user";
const PASSWORD: &str = "nat-pw";

fn nft_table_exists(topo: &Topology) -> Result<bool> {
    let out = topo.exec_in("gw", &["nft", "list", "table", "inet", "tunneld_tg0"])?;
    Ok(out.success())
}

#[test]
fn nat_mode_masquerades_the_pool_so_corp_needs_no_return_route() -> Result<()> {
    let topo = Topology::standard()?;
    // Without the return route corp cannot answer a pool address: only NAT makes the ping work.
    topo.run_in("corp", &["ip", "route", "del", POOL_ROUTE])?;
    topo.run_in("corp", &["ip", "-6", "route", "del", POOL_ROUTE6])?;
    let mut gw = Gateway::start(
        &topo,
        GatewayConfig::new()
            .user(USER, PASSWORD)
            .set("network.nat", true),
    )?;
    ensure!(
        nft_table_exists(&topo)?,
        "NAT table missing while the daemon runs"
    );
    let client = Client::connect(&topo, &gw, ClientOpts::password(USER, PASSWORD))?;
    client.ping(&topo, CORP_ADDR, 3)?;
    let rules = topo.exec_in("gw", &["nft", "list", "table", "inet", "tunneld_tg0"])?;
    ensure!(
        rules.stdout.contains("masquerade"),
        "ruleset: {}",
        rules.stdout
    );

    drop(client);
    gw.signal("TERM")?;
    let code = gw.wait_exit(Duration::from_secs(30))?;
    ensure!(code == Some(0), "daemon exit code {code:?}");
    ensure!(
        !nft_table_exists(&topo)?,
        "NAT table left behind after the daemon stopped"
    );
    Ok(())
}

#[test]
fn routed_mode_installs_no_nat_table() -> Result<()> {
    let topo = Topology::standard()?;
    let gw = Gateway::start(&topo, GatewayConfig::new().user(USER, PASSWORD))?;
    let client = Client::connect(&topo, &gw, ClientOpts::password(USER, PASSWORD))?;
    client.ping(&topo, CORP_ADDR, 2)?;
    ensure!(
        !nft_table_exists(&topo)?,
        "routed mode must not install a NAT table"
    );
    Ok(())
}
