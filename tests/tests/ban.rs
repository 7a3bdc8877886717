//! Brute-force protection: ten wrong passwords from one address ban it (its next connection is
//! refused before TLS) while other addresses are unaffected, and the ban expires; the cap on
//! concurrent unauthenticated connections per source; manual bans with `tunnelctl ban`; bans kept
//! across restarts.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use e2e::{authenticate, wait_until, Gateway, GatewayConfig, Topology};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);
const DEV: &str = "198.18.1.2";
const DEV2: &str = "198.18.1.3";

/// `tunnelctl ban list --json` entry for `addr`.
fn ban_entry(gw: &Gateway, addr: &str) -> Result<Option<Value>> {
    Ok(gw
        .tunnelctl_json(&["ban", "list"])?
        .as_array()
        .context("ban list --json is not an array")?
        .iter()
        .find(|e| e["address"] == addr)
        .cloned())
}

/// A TLS handshake from `device` to the gateway: true when it completes.
fn tls_handshake(topo: &Topology, gw: &Gateway, device: &str) -> Result<bool> {
    let out = topo.exec_in(
        device,
        &["openssl", "s_client", "-connect", gw.listen(), "-brief"],
    )?;
    Ok(out.success())
}

#[test]
fn ten_wrong_passwords_ban_the_source_only_until_the_ban_expires() -> Result<()> {
    // Long enough for the checks made while banned, even on a loaded machine.
    const BAN_SECS: u64 = 6;
    let topo = Topology::new()
        .device("dev")
        .device("dev2")
        .gateway()
        .build()?;
    let cfg = GatewayConfig::new()
        .user("alice", "alice-pw")
        .set("ban.max_score", 100)
        .set("ban.auth_failure_points", 10)
        .set("ban.ban_secs", BAN_SECS as i64);
    let gw = Gateway::start(&topo, cfg)?;

    for i in 1..=10 {
        let out = authenticate(&topo, &gw, "dev", "alice", "wrong-pw")?;
        ensure!(out.code != Some(0), "attempt {i}: wrong password accepted");
        // Every attempt reached the password check: the ban starts with the tenth failure.
        gw.wait_metric(
            "tunneld_auth_failures_total",
            &[("reason", "bad_password")],
            f64::from(i),
            WAIT,
        )?;
        if i < 10 {
            ensure!(
                gw.metric("tunneld_bans_active", &[])? == 0.0,
                "banned after only {i} failures"
            );
        }
    }
    gw.wait_metric("tunneld_bans_active", &[], 1.0, WAIT)?;
    ensure!(
        gw.metric("tunneld_bans_total", &[("origin", "automatic")])? == 1.0,
        "bans_total"
    );
    let entry = ban_entry(&gw, DEV)?.context("dev's address not in ban list")?;
    ensure!(
        entry["banned"] == true && entry["manual"] == false && entry["ban_remaining_secs"].is_u64(),
        "ban list entry: {entry}"
    );
    let table = gw.tunnelctl(&["ban", "list"])?.check()?.stdout;
    ensure!(
        table.contains(DEV) && table.contains("banned (automatic"),
        "ban list:\n{table}"
    );

    // Its next connection is refused, even with the right password, before any TLS.
    let refused = authenticate(&topo, &gw, "dev", "alice", "alice-pw")?;
    ensure!(
        refused.code != Some(0),
        "banned address logged in: {}",
        refused.output
    );
    ensure!(
        gw.metric("tunneld_connections_refused_total", &[("reason", "banned")])? >= 1.0,
        "refusal not counted"
    );
    ensure!(
        gw.metric("tunneld_auth_failures_total", &[("reason", "bad_password")])? == 10.0,
        "the banned connection reached the login"
    );
    // Another address is not affected.
    let other = authenticate(&topo, &gw, "dev2", "alice", "alice-pw")?;
    ensure!(other.code == Some(0), "dev2 refused: {}", other.output);

    // The ban expires.
    wait_until(
        Duration::from_secs(BAN_SECS + 5),
        "the ban on dev to expire",
        || Ok(ban_entry(&gw, DEV)?.is_none_or(|e| e["banned"] == false)),
    )?;
    gw.wait_metric("tunneld_bans_active", &[], 0.0, WAIT)?;
    let after = authenticate(&topo, &gw, "dev", "alice", "alice-pw")?;
    ensure!(
        after.code == Some(0),
        "dev after the ban expired: {}",
        after.output
    );
    gw.wait_for_log(&["ban expired", DEV], WAIT)?;
    Ok(())
}

#[test]
fn unauthenticated_connections_are_capped_per_source_and_manual_bans_apply() -> Result<()> {
    let topo = Topology::new()
        .device("dev")
        .device("dev2")
        .gateway()
        .build()?;
    let gw = Gateway::start(
        &topo,
        GatewayConfig::new().set("server.max_unauthenticated_per_source", 2),
    )?;
    // Two idle TCP connections from dev: unauthenticated until the auth timeout.
    let holder = topo.spawn_in(
        "dev",
        &[
            "python3",
            "-c",
            &format!(
                "import socket,time\ns=[socket.create_connection(('{}',443)) for _ in range(2)]\nprint('held',flush=True)\ntime.sleep(60)",
                e2e::GW_DEVICE_ADDR
            ),
        ],
        "holder.log",
    )?;
    wait_until(WAIT, "two unauthenticated connections from dev", || {
        Ok(ban_entry(&gw, DEV)?.is_some_and(|e| e["unauthenticated"] == 2))
    })?;
    ensure!(
        gw.metric("tunneld_unauthenticated_connections", &[])? == 2.0,
        "gauge"
    );
    ensure!(
        !tls_handshake(&topo, &gw, "dev")?,
        "a third connection from dev was served"
    );
    ensure!(
        gw.metric(
            "tunneld_connections_refused_total",
            &[("reason", "unauthenticated_limit")]
        )? >= 1.0,
        "refusal not counted"
    );
    ensure!(
        tls_handshake(&topo, &gw, "dev2")?,
        "dev2 refused while dev is capped"
    );
    drop(holder);
    wait_until(WAIT, "dev's held connections to close", || {
        Ok(ban_entry(&gw, DEV)?.is_none())
    })?;
    ensure!(
        tls_handshake(&topo, &gw, "dev")?,
        "dev refused after its connections closed"
    );

    // Manual ban and its removal.
    let out = gw.tunnelctl(&["ban", "add", DEV2])?.check()?;
    ensure!(
        out.stdout.contains("banned (manual, until removed)"),
        "{out}"
    );
    ensure!(
        !tls_handshake(&topo, &gw, "dev2")?,
        "manually banned dev2 was served"
    );
    ensure!(
        tls_handshake(&topo, &gw, "dev")?,
        "dev refused by dev2's ban"
    );
    gw.tunnelctl(&["ban", "remove", DEV2])?.check()?;
    ensure!(
        tls_handshake(&topo, &gw, "dev2")?,
        "dev2 refused after the ban was lifted"
    );
    let out = gw.tunnelctl(&["ban", "remove", DEV2])?;
    ensure!(
        !out.success() && out.stderr.contains("is not banned"),
        "{out}"
    );
    ensure!(
        gw.metric("tunneld_bans_total", &[("origin", "manual")])? == 1.0,
        "manual bans_total"
    );

    // A prefix ban covers every address in it: 198.18.1.0/30 holds dev (.2) and dev2 (.3).
    let out = gw
        .tunnelctl(&["ban", "add", "198.18.1.1/30", "--secs", "600"])?
        .check()?;
    ensure!(
        out.stdout.contains("198.18.1.0/30: banned (manual, ") && out.stdout.contains(" left)"),
        "{out}"
    );
    ensure!(
        !tls_handshake(&topo, &gw, "dev")? && !tls_handshake(&topo, &gw, "dev2")?,
        "an address in the banned prefix was served"
    );
    let list = gw.tunnelctl(&["ban", "list"])?.check()?.stdout;
    ensure!(list.contains("198.18.1.0/30"), "{list}");
    ensure!(
        ban_entry(&gw, "198.18.1.0")?.is_some_and(|e| e["prefix_len"] == 30 && e["manual"] == true),
        "ban list --json"
    );
    let out = gw.tunnelctl(&["ban", "add", "198.18.1.0/120"])?;
    ensure!(
        !out.success() && out.stderr.contains("198.18.1.0/120"),
        "{out}"
    );
    gw.tunnelctl(&["ban", "remove", "198.18.1.0/30"])?.check()?;
    ensure!(
        tls_handshake(&topo, &gw, "dev")? && tls_handshake(&topo, &gw, "dev2")?,
        "refused after the prefix ban was lifted"
    );
    Ok(())
}

#[test]
fn bans_outlive_a_restart_even_a_crash() -> Result<()> {
    const DEV3: &str = "198.18.1.4";
    let topo = Topology::new()
        .device("dev")
        .device("dev2")
        .device("dev3")
        .gateway()
        .build()?;
    let mut first = Gateway::start(&topo, GatewayConfig::new())?;
    let state = first.dir().join("state");
    first.tunnelctl(&["ban", "add", DEV2])?.check()?;
    first
        .tunnelctl(&["ban", "add", DEV3, "--secs", "600"])?
        .check()?;
    // Killed without a chance to clean up: `ban add` saved the ban before it answered.
    first.signal("KILL")?;
    first.wait_exit(WAIT)?;
    ensure!(
        state.join("bans.json").is_file(),
        "no bans.json in {}",
        state.display()
    );

    // The same state directory, hence the same self-signed certificate.
    let cert = state.join("selfsigned-cert.pem");
    let same_state = || {
        GatewayConfig::new()
            .set("server.state_dir", state.display().to_string())
            .pin_certificate(&cert)
    };
    let mut second = Gateway::start(&topo, same_state())?;
    second.wait_for_log(&["bans restored", "bans=2"], WAIT)?;
    let manual = ban_entry(&second, DEV2)?.context("dev2's ban was forgotten")?;
    ensure!(
        manual["banned"] == true
            && manual["manual"] == true
            && manual["ban_remaining_secs"].is_null(),
        "{manual}"
    );
    let timed = ban_entry(&second, DEV3)?.context("dev3's ban was forgotten")?;
    let left = timed["ban_remaining_secs"]
        .as_u64()
        .context("no time left")?;
    ensure!(
        timed["banned"] == true && (500..=600).contains(&left),
        "{timed}"
    );
    ensure!(
        second.metric("tunneld_bans_active", &[])? == 2.0,
        "bans_active gauge"
    );
    ensure!(
        !tls_handshake(&topo, &second, "dev2")?,
        "dev2 served after the restart"
    );
    ensure!(
        !tls_handshake(&topo, &second, "dev3")?,
        "dev3 served after the restart"
    );
    ensure!(tls_handshake(&topo, &second, "dev")?, "dev refused");

    // Lifting a ban is kept as well, through an orderly stop this time.
    second.tunnelctl(&["ban", "remove", DEV2])?.check()?;
    second.signal("TERM")?;
    second.wait_exit(Duration::from_secs(30))?;
    let third = Gateway::start(&topo, same_state())?;
    ensure!(
        ban_entry(&third, DEV2)?.is_none(),
        "dev2's lifted ban came back"
    );
    ensure!(
        tls_handshake(&topo, &third, "dev2")?,
        "dev2 refused after its ban was lifted and the daemon restarted"
    );
    ensure!(
        !tls_handshake(&topo, &third, "dev3")?,
        "dev3's ban ended early"
    );
    Ok(())
}
