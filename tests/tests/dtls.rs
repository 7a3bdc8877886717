//! The DTLS (UDP) channel with the real openconnect 9.01: PSK-NEGOTIATE comes up at once and
//! carries the traffic, UDP loss falls back to TLS and DTLS comes back, `--no-dtls` clients share the
//! gateway, junk datagrams are dropped and counted without memory growth, and a vanished DTLS client
//! is detected and its address returned.

use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{ensure, Context, Result};
use e2e::metrics::metric_value;
use e2e::process::tail;
use e2e::transfer::{download, random_file};
use e2e::wait::wait_until;
use e2e::{Client, ClientOpts, Gateway, GatewayConfig, Topology, CORP_ADDR, GW_DEVICE_ADDR};

const USER: &str = "alice";
const PASSWORD: &str = "alice-pw";
/// 50 MiB, more than the 50 MB asked for.
const BULK: u64 = 50 * 1024 * 1024;

fn junk_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/dtls_junk.py")
}

/// The JSON line a dtls_junk.py command printed.
fn run_junk(topo: &Topology, role: &str, args: &[&str]) -> Result<serde_json::Value> {
    let script = junk_script().display().to_string();
    let mut all = vec!["python3", "-B", script.as_str()];
    all.extend_from_slice(args);
    let out = topo.run_in(role, &all)?;
    out.stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .with_context(|| format!("no JSON from dtls_junk.py: {out}"))
}

/// Every `X-DTLS-App-ID` openconnect was given, oldest first (it logs the CONNECT reply headers).
fn app_ids(client: &Client) -> Vec<String> {
    client
        .log()
        .lines()
        .filter_map(|l| l.split("X-DTLS-App-ID: ").nth(1))
        .map(|v| v.trim().to_string())
        .collect()
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}

/// `Udp: RcvbufErrors` of the gateway namespace: datagrams the kernel dropped before tunneld saw
/// them.
fn udp_rcvbuf_errors(topo: &Topology) -> Result<f64> {
    let snmp = topo.run_in("gw", &["cat", "/proc/net/snmp"])?.stdout;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (
        udp.next().context("Udp header")?,
        udp.next().context("Udp values")?,
    );
    let i = names
        .split_whitespace()
        .position(|n| n == "RcvbufErrors")
        .context("RcvbufErrors")?;
    Ok(values
        .split_whitespace()
        .nth(i)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0))
}

fn dropped(gw: &Gateway, reason: &str) -> Result<f64> {
    metric(
        gw,
        "tunneld_dtls_datagrams_dropped_total",
        &[("reason", reason)],
    )
}

fn handshakes(gw: &Gateway, result: &str) -> Result<f64> {
    metric(gw, "tunneld_dtls_handshakes_total", &[("result", result)])
}

/// Pings through the tunnel and checks that the echoes went both ways over DTLS.
fn ping_over_dtls(topo: &Topology, gw: &Gateway, client: &Client, count: u32) -> Result<()> {
    let (up0, down0) = (dtls_packets(gw, "up")?, dtls_packets(gw, "down")?);
    client.ping(topo, CORP_ADDR, count)?;
    let (up1, down1) = (dtls_packets(gw, "up")?, dtls_packets(gw, "down")?);
    let n = f64::from(count);
    ensure!(
        up1 - up0 >= n && down1 - down0 >= n,
        "the pings did not travel over DTLS: packets up {up0}->{up1}, down {down0}->{down1}"
    );
    Ok(())
}

/// nftables in a device namespace: drop all UDP to and from the gateway's port 443.
fn block_udp(topo: &Topology, device: &str) -> Result<()> {
    let rules = format!(
        "table inet e2e_dtls {{\n\
         chain out {{ type filter hook output priority 0; ip daddr {GW_DEVICE_ADDR} udp dport 443 drop; }}\n\
         chain in {{ type filter hook input priority 0; ip saddr {GW_DEVICE_ADDR} udp sport 443 drop; }}\n\
         }}\n"
    );
    let path = topo.dir().join(format!("block-udp-{device}.nft"));
    std::fs::write(&path, rules)?;
    topo.run_in(device, &["nft", "-f", &path.display().to_string()])?;
    Ok(())
}

fn unblock_udp(topo: &Topology, device: &str) -> Result<()> {
    topo.run_in(device, &["nft", "delete", "table", "inet", "e2e_dtls"])?;
    Ok(())
}

fn dtls_client() -> ClientOpts {
    ClientOpts::password(USER, PASSWORD).dtls(true)
}

fn metric(gw: &Gateway, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
    gw.metric_or_zero(name, labels)
}

fn dtls_packets(gw: &Gateway, direction: &str) -> Result<f64> {
    metric(
        gw,
        "tunneld_dtls_packets_total",
        &[("direction", direction)],
    )
}

fn dtls_bytes(gw: &Gateway, direction: &str) -> Result<f64> {
    metric(gw, "tunneld_dtls_bytes_total", &[("direction", direction)])
}

fn sessions_on(gw: &Gateway, transport: &str) -> Result<f64> {
    metric(gw, "tunneld_sessions_active", &[("transport", transport)])
}

fn wait_sessions_on(gw: &Gateway, transport: &str, want: f64, timeout: Duration) -> Result<()> {
    gw.wait_metric(
        "tunneld_sessions_active",
        &[("transport", transport)],
        want,
        timeout,
    )
}

/// Seconds since the epoch of an RFC 3339 UTC timestamp as tracing prints it
/// (`2026-11-29T00:28:34.123456Z`).
fn parse_utc(ts: &str) -> Option<f64> {
    let ts = ts.trim().strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (h, min) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let sec: f64 = t.next()?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86400 + h * 3600 + min * 60) as f64 + sec)
}

/// Seconds from the gateway's "session started" log line (written right after the CONNECT reply)
/// to the client script's `connect` record (written once the TUN is up).
fn connect_to_tunnel_up(gw: &Gateway, client: &Client) -> Result<f64> {
    let line = gw
        .log_lines(&["session started"])
        .into_iter()
        .next()
        .context("no 'session started' line in the tunneld log")?;
    let started = line
        .split_whitespace()
        .next()
        .and_then(parse_utc)
        .with_context(|| format!("no timestamp in {line:?}"))?;
    let env = client.connect_env()?;
    let dir = env
        .env
        .get("E2E_ENV_DIR")
        .context("E2E_ENV_DIR not recorded")?;
    let file = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.to_string_lossy().ends_with("-connect.env"))
        .context("no connect record")?;
    let up = std::fs::metadata(&file)?
        .modified()?
        .duration_since(UNIX_EPOCH)?
        .as_secs_f64();
    Ok(up - started)
}

#[test]
fn dtls_comes_up_at_once_and_carries_ping_and_a_50mib_transfer() -> Result<()> {
    let topo = Topology::standard()?;
    let gw = Gateway::start(&topo, GatewayConfig::new().user(USER, PASSWORD))?;
    let mut client = Client::connect(&topo, &gw, dtls_client())?;
    let log = client.log();
    ensure!(
        log.contains("Established DTLS connection") && log.contains("(DTLS1.2)-(PSK)-(AES-128-GCM)"),
        "openconnect did not log a DTLS 1.2 PSK connection with AES-128-GCM (the server's first choice):\n{}",
        tail(&log, 30)
    );
    let secs = connect_to_tunnel_up(&gw, &client)?;
    ensure!(
        (0.0..2.0).contains(&secs),
        "the tunnel came up {secs:.2} s after the CONNECT reply (want < 2 s: no DTLS or MTU-probe timeout)"
    );
    eprintln!("tunnel up {secs:.3} s after the CONNECT reply");
    wait_sessions_on(&gw, "dtls", 1.0, Duration::from_secs(5))?;
    ensure!(
        sessions_on(&gw, "cstp")? == 0.0,
        "session still counted on CSTP"
    );
    ensure!(
        metric(&gw, "tunneld_dtls_handshakes_total", &[("result", "ok")])? >= 1.0,
        "no DTLS handshake counted"
    );
    // The channel got its own connected UDP socket (dtls.socket_per_session, the default).
    let own = metric(&gw, "tunneld_dtls_events_total", &[("event", "own_socket")])?;
    let own_failed = metric(
        &gw,
        "tunneld_dtls_events_total",
        &[("event", "own_socket_failed")],
    )?;
    ensure!(
        own >= 1.0 && own_failed == 0.0,
        "the DTLS channel has no socket of its own: own_socket {own}, own_socket_failed {own_failed}"
    );

    let (up0, down0) = (dtls_packets(&gw, "up")?, dtls_packets(&gw, "down")?);
    client.ping(&topo, CORP_ADDR, 5)?;
    let (up1, down1) = (dtls_packets(&gw, "up")?, dtls_packets(&gw, "down")?);
    ensure!(
        up1 - up0 >= 5.0 && down1 - down0 >= 5.0,
        "the pings did not travel over DTLS: packets up {up0}->{up1}, down {down0}->{down1}"
    );

    let (file, sha) = random_file(&topo, "bulk-down.bin", BULK)?;
    let total0 = metric(&gw, "tunneld_bytes_total", &[("direction", "down")])?;
    let dtls0 = dtls_bytes(&gw, "down")?;
    let dtls_up0 = dtls_packets(&gw, "up")?;
    let got = download(
        &topo,
        "corp",
        client.device(),
        &format!("{CORP_ADDR}:5001"),
        &file,
    )?;
    eprintln!(
        "download over DTLS: {} bytes in {:?} ({:.0} Mbit/s)",
        got.bytes,
        got.elapsed,
        got.mbit_per_s()
    );
    ensure!(got.bytes == BULK, "received {} of {BULK} bytes", got.bytes);
    ensure!(got.sha256 == sha, "SHA-256 mismatch");
    let total = metric(&gw, "tunneld_bytes_total", &[("direction", "down")])? - total0;
    let over_dtls = dtls_bytes(&gw, "down")? - dtls0;
    ensure!(
        over_dtls >= BULK as f64,
        "only {over_dtls} of the {BULK} bytes went down over DTLS"
    );
    ensure!(
        over_dtls >= 0.99 * total,
        "{over_dtls} of {total} bytes down went over DTLS"
    );
    let acks = dtls_packets(&gw, "up")? - dtls_up0;
    ensure!(
        acks >= 1000.0,
        "the TCP ACKs did not come up over DTLS ({acks} packets)"
    );
    ensure!(
        client.poll_exit()?.is_none(),
        "openconnect exited during the transfer"
    );
    Ok(())
}

#[test]
fn udp_blocked_falls_back_to_tls_and_dtls_returns_when_udp_is_allowed() -> Result<()> {
    let topo = Topology::standard()?;
    // Short timers so the loss is noticed in seconds: the client declares DTLS dead after 2 x
    // X-DTLS-DPD without UDP, the gateway moves downstream to TLS after switch_to_tcp_secs.
    let gw = Gateway::start(
        &topo,
        GatewayConfig::new()
            .user(USER, PASSWORD)
            .set("timers.dpd_secs", 2)
            .set("dtls.switch_to_tcp_secs", 3),
    )?;
    let mut client = Client::connect(&topo, &gw, dtls_client())?;
    wait_sessions_on(&gw, "dtls", 1.0, Duration::from_secs(5))?;
    ping_over_dtls(&topo, &gw, &client, 3)?;

    block_udp(&topo, client.device())?;
    wait_sessions_on(&gw, "cstp", 1.0, Duration::from_secs(15))?;
    // The client notices by a failed UDP send (nftables drops locally with EPERM) or by DTLS DPD.
    wait_until(
        Duration::from_secs(20),
        "openconnect to give up on DTLS",
        || {
            let log = client.log();
            Ok([
                "DTLS Dead Peer Detection detected dead peer",
                "Write error on DTLS session",
            ]
            .iter()
            .any(|m| log.contains(m)))
        },
    )
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", tail(&client.log(), 20)))?;
    let (dtls0, total0) = (
        dtls_packets(&gw, "up")?,
        metric(&gw, "tunneld_packets_total", &[("direction", "up")])?,
    );
    client.ping(&topo, CORP_ADDR, 5)?;
    let (dtls1, total1) = (
        dtls_packets(&gw, "up")?,
        metric(&gw, "tunneld_packets_total", &[("direction", "up")])?,
    );
    ensure!(
        dtls1 == dtls0 && total1 - total0 >= 5.0,
        "with UDP blocked the pings must go over TLS: DTLS up {dtls0}->{dtls1}, all up {total0}->{total1}"
    );
    ensure!(
        client.poll_exit()?.is_none() && client.runs()?.iter().all(|r| r.reason != "reconnect"),
        "losing UDP must not cost the TLS connection"
    );

    unblock_udp(&topo, client.device())?;
    // openconnect retries DTLS every 60 s after a failure.
    wait_sessions_on(&gw, "dtls", 1.0, Duration::from_secs(90))?;
    ensure!(
        handshakes(&gw, "ok")? >= 2.0,
        "DTLS came back without a new handshake?"
    );
    ping_over_dtls(&topo, &gw, &client, 3)?;
    Ok(())
}

#[test]
fn no_dtls_and_dtls_clients_share_the_gateway_with_the_right_mtus() -> Result<()> {
    let topo = Topology::new()
        .device("dev1")
        .device("dev2")
        .gateway()
        .corp()
        .build()?;
    // A tunnel MTU above what fits in a DTLS datagram, so the DTLS overhead shows in X-CSTP-MTU.
    let gw = Gateway::start(
        &topo,
        GatewayConfig::new()
            .user(USER, PASSWORD)
            .set("network.mtu", 1472),
    )?;
    let with = Client::connect(&topo, &gw, dtls_client().device("dev1"))?;
    let without = Client::connect(
        &topo,
        &gw,
        ClientOpts::password(USER, PASSWORD).device("dev2"),
    )?;
    wait_sessions_on(&gw, "dtls", 1.0, Duration::from_secs(5))?;
    wait_sessions_on(&gw, "cstp", 1.0, Duration::from_secs(5))?;
    // 1500 - 20 (IPv4) - 8 (UDP) - 37 (DTLS AES-GCM record) - 1 (type byte), as ocserv sends.
    let mtu_with = with.connect_env()?.var("INTERNAL_IP4_MTU")?.to_string();
    let mtu_without = without.connect_env()?.var("INTERNAL_IP4_MTU")?.to_string();
    ensure!(
        mtu_with == "1434" && mtu_without == "1472",
        "tunnel MTUs: DTLS client {mtu_with} (want 1434), --no-dtls client {mtu_without} (want 1472)"
    );
    ensure!(
        !without.log().contains("X-DTLS-App-ID"),
        "a --no-dtls client was offered DTLS"
    );

    let dtls0 = dtls_packets(&gw, "up")?;
    without.ping(&topo, CORP_ADDR, 5)?;
    ensure!(
        dtls_packets(&gw, "up")? == dtls0,
        "the --no-dtls client's pings were counted on DTLS"
    );
    ping_over_dtls(&topo, &gw, &with, 5)?;
    // Both at once.
    let a = topo.spawn_in(
        "dev1",
        &["ping", "-n", "-c", "20", "-i", "0.05", CORP_ADDR],
        "ping-dev1.log",
    )?;
    let b = topo.spawn_in(
        "dev2",
        &["ping", "-n", "-c", "20", "-i", "0.05", CORP_ADDR],
        "ping-dev2.log",
    )?;
    for (name, mut p) in [("dev1", a), ("dev2", b)] {
        let code = p.wait(Duration::from_secs(20))?;
        ensure!(
            code == Some(0) && p.log().contains(" 0% packet loss"),
            "concurrent ping from {name}: {code:?}\n{}",
            p.log()
        );
    }
    Ok(())
}

#[test]
fn junk_replays_and_second_addresses_are_dropped_and_counted_without_growing_memory() -> Result<()>
{
    let topo = Topology::new()
        .device("dev")
        .device("dev2")
        .gateway()
        .corp()
        .build()?;
    let gw = Gateway::start(&topo, GatewayConfig::new().user(USER, PASSWORD))?;
    let gw_pid = gw.pid().context("tunneld pid")?;
    let target = format!("{GW_DEVICE_ADDR}:443");
    let script = junk_script().display().to_string();

    // Record the client's real handshakes, to replay them later.
    let capture = topo.spawn_in(
        "dev",
        &[
            "python3",
            "-B",
            &script,
            "capture",
            "--iface",
            "eth0",
            "--dst",
            GW_DEVICE_ADDR,
            "--dport",
            "443",
        ],
        "capture.log",
    )?;
    wait_until(Duration::from_secs(10), "the capture to start", || {
        Ok(capture.log().contains("capturing"))
    })?;
    let client = Client::connect(&topo, &gw, dtls_client().device("dev"))?;
    wait_sessions_on(&gw, "dtls", 1.0, Duration::from_secs(5))?;
    // A cookie reconnect: a new CONNECT, a new App-ID, a new DTLS handshake. The first App-ID is
    // now expired.
    client.signal("USR2")?;
    client.wait_reason("reconnect", 1, Duration::from_secs(30))?;
    wait_until(Duration::from_secs(10), "DTLS after the reconnect", || {
        Ok(handshakes(&gw, "ok")? >= 2.0 && sessions_on(&gw, "dtls")? == 1.0)
    })?;
    let ids = app_ids(&client);
    ensure!(
        ids.len() == 2,
        "expected two App-IDs in the client log, got {ids:?}"
    );
    let (expired, live) = (ids[0].clone(), ids[1].clone());
    ensure!(expired != live, "the App-ID must change on every CONNECT");
    // Split the capture into handshakes: each starts with a ClientHello; its session_id (bytes
    // 60..92) says which CONNECT it belongs to.
    let captured = capture.log();
    drop(capture);
    let mut flights: Vec<(String, Vec<String>)> = Vec::new();
    for line in captured
        .lines()
        .filter(|l| l.len() > 2 && !l.starts_with("capturing"))
    {
        let is_hello = line.starts_with("16feff") || line.starts_with("16fefd");
        let is_hello = is_hello && line.get(26..28) == Some("01") && line.len() >= 184;
        if is_hello {
            let sid = line.get(120..184).unwrap_or_default().to_string();
            if flights.last().is_some_and(|(s, _)| *s == sid) {
                continue; // a retransmitted ClientHello
            }
            flights.push((sid, vec![line.to_string()]));
        } else if let Some((_, f)) = flights.last_mut() {
            f.push(line.to_string());
        }
    }
    let old = flights
        .iter()
        .find(|(sid, _)| *sid == expired)
        .with_context(|| format!("no captured handshake for the first App-ID:\n{captured}"))?;
    let new = flights
        .iter()
        .find(|(sid, _)| *sid == live)
        .with_context(|| format!("no captured handshake for the live App-ID:\n{captured}"))?;
    ensure!(
        old.1.len() >= 2 && new.1.len() >= 2,
        "captured handshakes are incomplete: {flights:?}"
    );
    ping_over_dtls(&topo, &gw, &client, 3)?;

    // 1. A flood of junk from another machine: random datagrams, truncated ClientHellos naming the
    //    live App-ID, ClientHellos naming unknown and expired App-IDs.
    let flood = |count: u32, seed: u32| {
        run_junk(
            &topo,
            "dev2",
            &[
                "flood",
                "--dst",
                &target,
                "--count",
                &count.to_string(),
                "--app-id",
                &live,
                "--expired",
                &expired,
                "--seed",
                &seed.to_string(),
            ],
        )
    };
    flood(5_000, 7)?; // warm-up: the receive buffers' pages get touched once
    let reasons = ["unknown_peer", "malformed_hello", "unknown_app_id"];
    let before: Vec<f64> = reasons
        .iter()
        .map(|r| dropped(&gw, r))
        .collect::<Result<_>>()?;
    let failed0 = handshakes(&gw, "failed")?;
    let kernel0 = udp_rcvbuf_errors(&topo)?;
    let rss0 = rss_kib(gw_pid)?;
    let sent = flood(100_000, 8)?;
    let total = sent["total"].as_f64().context("total")?;
    let mut deltas = Vec::new();
    wait_until(
        Duration::from_secs(30),
        "every junk datagram to be counted",
        || {
            let kernel = udp_rcvbuf_errors(&topo)? - kernel0;
            deltas = reasons
                .iter()
                .zip(&before)
                .map(|(r, b)| Ok(dropped(&gw, r)? - b))
                .collect::<Result<Vec<f64>>>()?;
            Ok(deltas.iter().sum::<f64>() + kernel >= total)
        },
    )
    .map_err(|e| anyhow::anyhow!("{e:#}: counted {deltas:?} of {sent}"))?;
    let rss1 = rss_kib(gw_pid)?;
    let kernel = udp_rcvbuf_errors(&topo)? - kernel0;
    eprintln!(
        "flood: sent {sent}, counted {deltas:?}, kernel drops {kernel}, RSS {rss0} -> {rss1} KiB"
    );
    let num = |k: &str| sent["sent"][k].as_f64().unwrap_or(0.0);
    let want = [
        num("random"),
        num("truncated"),
        num("unknown") + num("expired"),
    ];
    for ((reason, got), want) in reasons.iter().zip(&deltas).zip(want) {
        ensure!(
            *got <= want && *got >= want - kernel,
            "{reason}: counted {got}, sent {want} (kernel dropped {kernel})"
        );
    }
    ensure!(
        kernel <= 0.05 * total,
        "the kernel dropped {kernel} of {total} datagrams: the gateway did not keep up"
    );
    ensure!(
        handshakes(&gw, "failed")? == failed0,
        "junk created handshake state"
    );
    ensure!(
        rss1 <= rss0 + 1024,
        "tunneld's memory grew from {rss0} KiB to {rss1} KiB over {total} junk datagrams"
    );
    ping_over_dtls(&topo, &gw, &client, 3)?;

    // 2. A second address names the live session: a ClientHello (the App-ID travels in clear),
    //    then 1000 application-data records. The handshake cannot complete without the PSK; the
    //    records are dropped; the client's channel is untouched.
    let stale0 = dropped(&gw, "stale_peer")?;
    run_junk(
        &topo,
        "dev2",
        &[
            "hello", "--dst", &target, "--app-id", &live, "--then", "1000",
        ],
    )?;
    wait_until(Duration::from_secs(10), "1000 stale_peer drops", || {
        Ok(dropped(&gw, "stale_peer")? - stale0 >= 1000.0)
    })?;
    ping_over_dtls(&topo, &gw, &client, 3)?;

    // 3. Replays of the client's real handshakes from the second address: the old one names an
    //    expired App-ID; the current one cannot finish (fresh server random).
    let app0 = dropped(&gw, "unknown_app_id")?;
    for (name, flight) in [("old", &old.1), ("current", &new.1)] {
        let path = topo.dir().join(format!("replay-{name}.hex"));
        std::fs::write(&path, flight.join("\n"))?;
        run_junk(
            &topo,
            "dev2",
            &[
                "replay",
                "--dst",
                &target,
                "--file",
                &path.display().to_string(),
            ],
        )?;
    }
    ensure!(
        dropped(&gw, "unknown_app_id")? - app0 >= 1.0,
        "the replayed ClientHello naming the expired App-ID was not counted"
    );
    // The second-address handshake and the replayed current one both fail (one replaced by the
    // other, the other by its timeout).
    wait_until(
        Duration::from_secs(20),
        "both forged handshakes to fail",
        || Ok(handshakes(&gw, "failed")? - failed0 >= 2.0),
    )?;
    ensure!(
        handshakes(&gw, "ok")? == 2.0,
        "a forged handshake completed"
    );
    ensure!(sessions_on(&gw, "dtls")? == 1.0, "the session lost DTLS");
    ping_over_dtls(&topo, &gw, &client, 3)?;
    let log = client.log();
    ensure!(
        !log.contains("DTLS Dead Peer")
            && client
                .runs()?
                .iter()
                .filter(|r| r.reason == "reconnect")
                .count()
                == 1,
        "the client noticed the attack:\n{}",
        tail(&log, 30)
    );
    Ok(())
}

#[test]
fn vanished_dtls_client_falls_back_then_ends_and_returns_its_address() -> Result<()> {
    let topo = Topology::standard()?;
    let gw = Gateway::start(
        &topo,
        GatewayConfig::new()
            .user(USER, PASSWORD)
            .set("timers.dpd_secs", 2)
            .set("timers.cookie_timeout_secs", 3)
            .set("dtls.switch_to_tcp_secs", 3),
    )?;
    let mut client = Client::connect(&topo, &gw, dtls_client())?;
    wait_sessions_on(&gw, "dtls", 1.0, Duration::from_secs(5))?;
    gw.wait_metric(
        "tunneld_pool_addresses_in_use",
        &[],
        1.0,
        Duration::from_secs(5),
    )?;
    ping_over_dtls(&topo, &gw, &client, 2)?;
    // The client freezes: its sockets stay open (TCP is still acknowledged by its kernel) but
    // nothing more comes over UDP or TLS.
    client.signal("STOP")?;
    let result = (|| -> Result<()> {
        wait_sessions_on(&gw, "dtls", 0.0, Duration::from_secs(10))?;
        // The DPD window (3 x dpd) ends the connection; the cookie timeout then ends the session.
        gw.wait_metric("tunneld_sessions_active", &[], 0.0, Duration::from_secs(15))?;
        gw.wait_metric(
            "tunneld_sessions_ended_total",
            &[("reason", "cookie_expired")],
            1.0,
            Duration::from_secs(15),
        )?;
        gw.wait_metric(
            "tunneld_pool_addresses_in_use",
            &[],
            0.0,
            Duration::from_secs(5),
        )?;
        Ok(())
    })();
    client.signal("KILL")?;
    let _ = client.wait_exit(Duration::from_secs(10));
    result?;
    ensure!(
        !gw.log_lines(&["downstream channel switched", "cstp"])
            .is_empty(),
        "the gateway never moved the silent client back to CSTP"
    );
    ensure!(
        !gw.log_lines(&["dead peer"]).is_empty(),
        "the connection did not end by DPD"
    );
    Ok(())
}

/// The `data_mtu` the gateway logged when DTLS came up: the largest record plaintext (type byte +
/// IP packet) one datagram of the session's DTLS MTU holds.
fn logged_data_mtu(gw: &Gateway) -> Result<usize> {
    let line = gw
        .wait_for_log(&["DTLS established", "data_mtu="], Duration::from_secs(5))
        .context("no DTLS established line with data_mtu")?;
    line.split("data_mtu=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no data_mtu in {line:?}"))
}

#[test]
fn a_packet_too_big_for_the_dtls_mtu_goes_down_over_tls_and_dtls_stays_up() -> Result<()> {
    // The client's link is 1300 bytes (both ends of its veth), and openconnect says so in
    // X-CSTP-Base-MTU. The tunnel MTU cannot go below 1280 (IPv6 minimum), but one DTLS datagram
    // of a 1300 link holds only 1300 - 28 - 37 bytes of record: so packets between those sizes fit
    // the tunnel but not one DTLS datagram. Before the fix such a packet left as one 1.3 KiB
    // datagram that the 1300 link refused (EMSGSIZE at the gateway), and was lost.
    const LINK: &str = "1300";
    let topo = Topology::standard()?;
    let dev = topo.devices().first().context("no device")?.name.clone();
    topo.run_in(&dev, &["ip", "link", "set", "eth0", "mtu", LINK])?;
    topo.run_in(
        "gw",
        &["ip", "link", "set", &format!("d-{dev}"), "mtu", LINK],
    )?;
    let gw = Gateway::start(&topo, GatewayConfig::new().user(USER, PASSWORD))?;
    let client = Client::connect(&topo, &gw, dtls_client().arg(&format!("--base-mtu={LINK}")))?;
    wait_sessions_on(&gw, "dtls", 1.0, Duration::from_secs(5))?;
    let data_mtu = logged_data_mtu(&gw)?;
    let tunnel_mtu: usize = client.connect_env()?.var("INTERNAL_IP4_MTU")?.parse()?;
    let session_mtu = gw
        .log_lines(&["session started", "mtu="])
        .first()
        .and_then(|l| l.split(" mtu=").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<usize>().ok())
        .context("no mtu in the session started line")?;
    // One byte more than a record can hold, as an IP packet no bigger than the tunnel MTU the
    // gateway announced.
    let packet = data_mtu;
    ensure!(
        packet <= session_mtu,
        "no packet is too big for DTLS yet within the tunnel MTU: data_mtu {data_mtu}, tunnel MTU {session_mtu}"
    );
    eprintln!(
        "DTLS data_mtu {data_mtu}, tunnel MTU {session_mtu} (openconnect's tun: {tunnel_mtu}), packet {packet}"
    );
    ping_over_dtls(&topo, &gw, &client, 2)?;

    let oversize = || {
        metric(
            &gw,
            "tunneld_dtls_events_total",
            &[("event", "oversize_to_cstp")],
        )
    };
    let before = oversize()?;
    let ip = client.ipv4()?.to_string();
    let size = (packet - 28).to_string();
    let out = topo.exec_in(
        "corp",
        &[
            "ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", "-M", "dont", "-s", &size, &ip,
        ],
    )?;
    ensure!(
        out.success() && out.stdout.contains(" 0% packet loss"),
        "{packet}-byte echo requests from corp to the client were lost: {out}\nopenconnect:\n{}",
        tail(&client.log(), 15)
    );
    let sent = oversize()? - before;
    ensure!(
        sent >= 3.0,
        "only {sent} oversize packets counted as sent over TLS"
    );

    // DTLS is still up and carries everything else.
    wait_sessions_on(&gw, "dtls", 1.0, Duration::from_secs(5))?;
    ping_over_dtls(&topo, &gw, &client, 3)?;
    ensure!(
        !client.log().contains("DTLS Dead Peer Detection"),
        "openconnect lost DTLS:\n{}",
        tail(&client.log(), 20)
    );
    Ok(())
}

#[test]
fn the_gateway_probes_an_idle_dtls_client_and_openconnect_answers() -> Result<()> {
    // X-DTLS-DPD 2 s: once the UDP path has been quiet for 2 s the gateway sends a DTLS DPD
    // request. openconnect's own DPD is held at 30 s (--force-dpd), and its DTLS keepalive is 12 s
    // here, so an idle client stays quiet long enough and only the gateway probes.
    let topo = Topology::standard()?;
    let gw = Gateway::start(
        &topo,
        GatewayConfig::new()
            .user(USER, PASSWORD)
            .set("timers.dpd_secs", 2),
    )?;
    let client = Client::connect(&topo, &gw, dtls_client().arg("--force-dpd=30"))?;
    wait_sessions_on(&gw, "dtls", 1.0, Duration::from_secs(5))?;
    let mut last = (0.0, 0.0);
    wait_until(
        Duration::from_secs(15),
        "three DTLS DPD requests answered",
        || {
            // Both counters from one scrape, so an answer is never counted before its request.
            let text = gw.metrics()?;
            let event = |e: &str| {
                metric_value(&text, "tunneld_dtls_events_total", &[("event", e)]).unwrap_or(0.0)
            };
            last = (event("dpd_request_sent"), event("dpd_response_received"));
            Ok(last.1 >= 3.0)
        },
    )
    .with_context(|| {
        format!(
            "(requests sent, answers) = {last:?}\nopenconnect:\n{}",
            tail(&client.log(), 20)
        )
    })?;
    ensure!(
        last.0 >= last.1,
        "more answers than requests: {last:?} (the gateway sends no MTU probes)"
    );
    ensure!(sessions_on(&gw, "dtls")? == 1.0, "the session left DTLS");
    ping_over_dtls(&topo, &gw, &client, 2)?;
    Ok(())
}
