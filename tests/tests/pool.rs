//! The address pool: concurrent clients get distinct addresses, a full pool refuses with 503 and a
//! reason, and an address comes back to the pool when its client leaves.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{ensure, Result};
use e2e::process::tail;
use e2e::{run_expecting_exit, Client, ClientOpts, Gateway, GatewayConfig, Topology, CORP_ADDR};

const PASSWORD: &str = "pool-pw";

#[test]
fn two_clients_get_distinct_addresses_both_pass_traffic_and_a_leaving_one_frees_its_address(
) -> Result<()> {
    let topo = Topology::new()
        .device("dev1")
        .device("dev2")
        .gateway()
        .corp()
        .build()?;
    let gw = Gateway::start(
        &topo,
        GatewayConfig::new()
            .user("alice", PASSWORD)
            .user("bob", PASSWORD),
    )?;
    let mut a = Client::connect(
        &topo,
        &gw,
        ClientOpts::password("alice", PASSWORD).device("dev1"),
    )?;
    let b = Client::connect(
        &topo,
        &gw,
        ClientOpts::password("bob", PASSWORD).device("dev2"),
    )?;
    let (addr_a, addr_b) = (a.ipv4()?, b.ipv4()?);
    ensure!(addr_a != addr_b, "both clients got {addr_a}");
    let (v6_a, v6_b) = (a.connect_env()?.ipv6()?, b.connect_env()?.ipv6()?);
    ensure!(v6_a != v6_b, "both clients got {v6_a}");
    a.ping(&topo, CORP_ADDR, 3)?;
    b.ping(&topo, CORP_ADDR, 3)?;
    // corp sees each client by its own tunnel address (no NAT): the replies found their way back.
    gw.wait_metric("tunneld_sessions_active", &[], 2.0, Duration::from_secs(5))?;
    gw.wait_metric(
        "tunneld_pool_addresses_in_use",
        &[],
        2.0,
        Duration::from_secs(5),
    )?;

    let code = a.quit()?;
    ensure!(
        code == Some(0),
        "a logout with SIGINT should exit 0, got {code:?}"
    );
    gw.wait_metric(
        "tunneld_pool_addresses_in_use",
        &[],
        1.0,
        Duration::from_secs(10),
    )?;
    gw.wait_metric("tunneld_sessions_active", &[], 1.0, Duration::from_secs(10))?;
    gw.wait_for_log(&["session ended", "reason="], Duration::from_secs(10))?;
    b.ping(&topo, CORP_ADDR, 3)?;
    Ok(())
}

/// A /29 has 8 addresses: network, broadcast and the gateway's own (.1) leave 5 for clients.
#[test]
fn pool_of_five_admits_five_clients_refuses_the_sixth_with_503_reason_and_refills_after_a_logout(
) -> Result<()> {
    const POOL: &str = "198.18.128.0/29";
    const CAPACITY: usize = 5;
    let topo = Topology::standard()?;
    let gw = Gateway::start(
        &topo,
        GatewayConfig::new()
            .set("network.ipv4_pool", POOL)
            .user("carol", PASSWORD),
    )?;
    ensure!(
        gw.metric("tunneld_pool_size", &[])? == CAPACITY as f64,
        "a {POOL} pool should offer {CAPACITY} client addresses"
    );
    let mut clients = Vec::new();
    for i in 0..CAPACITY {
        let opts = ClientOpts::password("carol", PASSWORD).interface(&format!("oc{i}"));
        clients.push(Client::connect(&topo, &gw, opts)?);
    }
    let addrs: BTreeSet<_> = clients.iter().map(Client::ipv4).collect::<Result<_>>()?;
    ensure!(addrs.len() == CAPACITY, "addresses not distinct: {addrs:?}");
    let pool: ipnet::Ipv4Net = POOL.parse()?;
    ensure!(
        addrs.iter().all(|a| pool.contains(a)),
        "{addrs:?} not all in {POOL}"
    );
    gw.wait_metric(
        "tunneld_pool_addresses_in_use",
        &[],
        CAPACITY as f64,
        Duration::from_secs(5),
    )?;

    let (code, log) = run_expecting_exit(
        &topo,
        &gw,
        ClientOpts::password("carol", PASSWORD).interface("oc9"),
    )?;
    ensure!(
        code == Some(1),
        "client {} of a full pool: exit {code:?}\n{}",
        CAPACITY + 1,
        tail(&log, 20)
    );
    ensure!(
        log.contains("VPN service unavailable; reason:"),
        "openconnect should print the server's 503 X-Reason:\n{}",
        tail(&log, 20)
    );
    gw.wait_metric(
        "tunneld_sessions_active",
        &[],
        CAPACITY as f64,
        Duration::from_secs(5),
    )?;

    let leaving = clients.remove(2);
    let freed = leaving.ipv4()?;
    let mut leaving = leaving;
    ensure!(leaving.quit()? == Some(0), "logout exit code");
    gw.wait_metric(
        "tunneld_pool_addresses_in_use",
        &[],
        (CAPACITY - 1) as f64,
        Duration::from_secs(10),
    )?;

    let newcomer = Client::connect(
        &topo,
        &gw,
        ClientOpts::password("carol", PASSWORD).interface("oc9"),
    )?;
    ensure!(
        newcomer.ipv4()? == freed,
        "the only free address was {freed}, newcomer got {}",
        newcomer.ipv4()?
    );
    gw.wait_metric(
        "tunneld_pool_addresses_in_use",
        &[],
        CAPACITY as f64,
        Duration::from_secs(5),
    )?;
    Ok(())
}
