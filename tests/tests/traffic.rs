//! Traffic through the tunnel between a device and the corporate host: ping (IPv4 and IPv6) and
//! 50 MiB TCP transfers in both directions whose bytes are verified by SHA-256 on arrival (the
//! upload with the data-plane thread coalescing openconnect's packets, and without when
//! `server.rx_coalesce_usecs = 0`).

use anyhow::{ensure, Result};
use e2e::transfer::{download, random_file, upload};
use e2e::{Client, ClientOpts, Gateway, GatewayConfig, Topology, CORP_ADDR, CORP_ADDR6};

const USER: &str = "alice";
const PASSWORD: &str = "alice-pw";
/// 50 MiB (52,428,800 bytes), more than the 50 MB asked for.
const BULK: u64 = 50 * 1024 * 1024;

fn connected() -> Result<(Topology, Gateway, Client)> {
    let topo = Topology::standard()?;
    let gw = Gateway::start(&topo, GatewayConfig::new().user(USER, PASSWORD))?;
    let client = Client::connect(&topo, &gw, ClientOpts::password(USER, PASSWORD))?;
    Ok((topo, gw, client))
}

#[test]
fn ipv4_ping_reaches_corp_host_through_the_tunnel() -> Result<()> {
    let (topo, gw, client) = connected()?;
    let up_before = gw.metric_or_zero("tunneld_packets_total", &[("direction", "up")])?;
    client.ping(&topo, CORP_ADDR, 5)?;
    let up_after = gw.metric("tunneld_packets_total", &[("direction", "up")])?;
    let down_after = gw.metric("tunneld_packets_total", &[("direction", "down")])?;
    ensure!(
        up_after >= up_before + 5.0,
        "packets up {up_before} -> {up_after}"
    );
    ensure!(down_after >= 5.0, "packets down {down_after}");
    Ok(())
}

#[test]
fn ipv6_ping_reaches_corp_host_through_the_tunnel() -> Result<()> {
    let (topo, _gw, client) = connected()?;
    client.ping(&topo, CORP_ADDR6, 5)?;
    Ok(())
}

#[test]
fn fifty_mib_download_through_the_tunnel_arrives_intact() -> Result<()> {
    let (topo, gw, client) = connected()?;
    let (file, sha) = random_file(&topo, "bulk-down.bin", BULK)?;
    let bytes_before = gw.metric_or_zero("tunneld_bytes_total", &[("direction", "down")])?;
    let got = download(
        &topo,
        "corp",
        client.device(),
        &format!("{CORP_ADDR}:5001"),
        &file,
    )?;
    eprintln!(
        "download: {} bytes in {:?} ({:.0} Mbit/s)",
        got.bytes,
        got.elapsed,
        got.mbit_per_s()
    );
    ensure!(got.bytes == BULK, "received {} of {BULK} bytes", got.bytes);
    ensure!(
        got.sha256 == sha,
        "SHA-256 mismatch: sent {sha}, received {}",
        got.sha256
    );
    let bytes_after = gw.metric("tunneld_bytes_total", &[("direction", "down")])?;
    ensure!(
        bytes_after - bytes_before >= BULK as f64,
        "bytes down counted {bytes_before} -> {bytes_after}"
    );
    Ok(())
}

#[test]
fn fifty_mib_upload_through_the_tunnel_arrives_intact() -> Result<()> {
    let (topo, gw, client) = connected()?;
    upload_checked(&topo, &gw, &client)?;
    // openconnect sends one packet at a time: the data-plane thread coalesced them (default
    // server.rx_coalesce_usecs), and the bytes above arrived intact through its naps.
    let naps = gw.metric("tunneld_rx_coalesce_naps_total", &[])?;
    eprintln!("receive-coalescing naps during the upload: {naps}");
    ensure!(
        naps > 0.0,
        "no receive-coalescing nap during a 50 MiB upload"
    );
    Ok(())
}

#[test]
fn with_receive_coalescing_off_an_upload_takes_no_nap() -> Result<()> {
    let topo = Topology::standard()?;
    let gw = Gateway::start(
        &topo,
        GatewayConfig::new()
            .user(USER, PASSWORD)
            .set("server.rx_coalesce_usecs", 0),
    )?;
    let client = Client::connect(&topo, &gw, ClientOpts::password(USER, PASSWORD))?;
    upload_checked(&topo, &gw, &client)?;
    let naps = gw.metric("tunneld_rx_coalesce_naps_total", &[])?;
    ensure!(naps == 0.0, "{naps} naps with server.rx_coalesce_usecs = 0");
    Ok(())
}

/// Uploads 50 MiB from the client's device to the corp host and checks that every byte arrived
/// and was counted.
fn upload_checked(topo: &Topology, gw: &Gateway, client: &Client) -> Result<()> {
    let (file, sha) = random_file(topo, "bulk-up.bin", BULK)?;
    let got = upload(
        topo,
        "corp",
        client.device(),
        &format!("{CORP_ADDR}:5002"),
        &file,
    )?;
    eprintln!(
        "upload: {} bytes in {:?} ({:.0} Mbit/s)",
        got.bytes,
        got.elapsed,
        got.mbit_per_s()
    );
    ensure!(got.bytes == BULK, "received {} of {BULK} bytes", got.bytes);
    ensure!(
        got.sha256 == sha,
        "SHA-256 mismatch: sent {sha}, received {}",
        got.sha256
    );
    let bytes_up = gw.metric("tunneld_bytes_total", &[("direction", "up")])?;
    ensure!(bytes_up >= BULK as f64, "bytes up counted {bytes_up}");
    Ok(())
}

#[test]
fn fifty_mib_download_over_ipv6_through_the_tunnel_arrives_intact() -> Result<()> {
    let (topo, _gw, client) = connected()?;
    let (file, sha) = random_file(&topo, "bulk-down6.bin", BULK)?;
    let got = download(
        &topo,
        "corp",
        client.device(),
        &format!("[{CORP_ADDR6}]:5003"),
        &file,
    )?;
    eprintln!(
        "download v6: {} bytes in {:?} ({:.0} Mbit/s)",
        got.bytes,
        got.elapsed,
        got.mbit_per_s()
    );
    ensure!(
        got.bytes == BULK && got.sha256 == sha,
        "received {} bytes, sha {} (want {sha})",
        got.bytes,
        got.sha256
    );
    Ok(())
}

#[test]
fn packets_to_an_unassigned_pool_address_are_dropped_and_counted_as_no_session() -> Result<()> {
    let topo = Topology::standard()?;
    let gw = Gateway::start(&topo, GatewayConfig::new().user(USER, PASSWORD))?;
    let before = gw.metric_or_zero("tunneld_packets_dropped_total", &[("reason", "no_session")])?;
    // corp routes the pool through the gateway; nobody holds .200, so the gateway must drop these.
    let out = topo.exec_in(
        "corp",
        &[
            "ping",
            "-n",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "1",
            "198.18.128.200",
        ],
    )?;
    ensure!(!out.success(), "an unassigned pool address answered: {out}");
    let after = gw.metric("tunneld_packets_dropped_total", &[("reason", "no_session")])?;
    ensure!(
        after - before >= 3.0,
        "no_session drops counted {before} -> {after}"
    );
    Ok(())
}
