//! Client-certificate login (`auth.method = "certificate"`), as Microsoft Tunnel devices log in:
//! openconnect with a device certificate from the configured CA gets in and its traffic flows;
//! a certificate from another CA, a revoked one, none at all, and a locked user are refused and
//! counted; health probes work without a certificate; a certificate session's cookie connects on
//! its own (as NetworkManager-openconnect uses it), or, with `auth.bind_cookie_to_certificate`,
//! only with its own certificate; a CRL rotated by reload revokes at once and ends the revoked
//! device's live sessions, and no one else's; a CA removed by reload ends the sessions it issued.
//!
//! One topology and one gateway for the whole file: each step below is a separate claim, checked
//! in order.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use e2e::certs::{CertFiles, DeviceCa};
use e2e::process::tail;
use e2e::{
    authenticate_certificate, gateway::users_file_line, run_expecting_exit, Client, ClientOpts,
    Gateway, GatewayConfig, Topology, CORP_ADDR,
};

const WAIT: Duration = Duration::from_secs(10);

fn failures(gw: &Gateway, reason: &str) -> Result<f64> {
    gw.metric_or_zero("tunneld_auth_failures_total", &[("reason", reason)])
}

/// Runs openconnect with `opts` on a spare interface, expects it to be refused, and returns its
/// log.
fn refused(topo: &Topology, gw: &Gateway, opts: ClientOpts, what: &str) -> Result<String> {
    let (code, log) = run_expecting_exit(topo, gw, opts.interface("oc1"))
        .with_context(|| format!("{what} should be refused"))?;
    ensure!(
        code != Some(0),
        "{what}: openconnect exited 0:\n{}",
        tail(&log, 20)
    );
    Ok(log)
}

#[test]
fn device_certificates_log_in_and_foreign_revoked_missing_or_locked_ones_are_refused() -> Result<()>
{
    let topo = Topology::new()
        .device("dev")
        .device("dev2")
        .device("dev3")
        .gateway()
        .corp()
        .build()?;
    let ca = DeviceCa::new(topo.dir(), "device-ca")?;
    let other = DeviceCa::new(topo.dir(), "other-ca")?;
    let devices = topo.subdir("devices")?;
    let foreign_dir = topo.subdir("foreign")?;
    let alice = ca.issue(&devices, "alice")?;
    let rita = ca.issue(&devices, "rita")?;
    let dave = ca.issue(&devices, "dave")?;
    let bob = ca.issue(&devices, "bob")?;
    // Same name as a real user, issued by a CA the gateway does not trust.
    let foreign_alice = other.issue(&foreign_dir, "alice")?;
    ca.revoke(&rita)?;
    let crl = ca.crl()?;

    // The users file only gives alice her group and locks dave; rita and others are not listed.
    let users = topo.dir().join("cert-users");
    let alice_line = users_file_line("alice", "unused")?.replacen("alice::", "alice:eng:", 1);
    std::fs::write(&users, format!("{alice_line}\ndave:*:!\n"))?;
    let mut gw = Gateway::start(
        &topo,
        GatewayConfig::new()
            .set("auth.method", "certificate")
            .set("auth.ca_file", ca.cert.display().to_string())
            .set("auth.crl_files", vec![crl.display().to_string()])
            .set("auth.users_file", users.display().to_string()),
    )?;

    // Health probes need no certificate.
    let health = gw.https_get(&topo, topo.first_device(), "/health")?;
    ensure!(
        health.status == 200 && health.body == "OK\n",
        "health without a client certificate: {health:?}"
    );

    // A device certificate from the CA: logged in as its CN, with the users file's group.
    let client = Client::connect(
        &topo,
        &gw,
        ClientOpts::certificate(&alice.cert, &alice.key).dtls(true),
    )?;
    let pool: ipnet::Ipv4Net = gw
        .config()
        .get_str("network.ipv4_pool")
        .context("pool")?
        .parse()?;
    let addr = client.ipv4()?;
    ensure!(pool.contains(&addr), "address {addr} not in {pool}");
    client.ping(&topo, CORP_ADDR, 3)?;
    let list = gw.tunnelctl_json(&["sessions"])?;
    let session = list
        .as_array()
        .and_then(|a| a.iter().find(|s| s["user"] == "alice"))
        .with_context(|| format!("no session of alice: {list}"))?;
    ensure!(
        session["group"] == "eng" && session["ipv4"] == addr.to_string(),
        "alice's session: {session}"
    );
    // The session names the device certificate by its serial number, as openssl prints it.
    let serial = serial_of(&alice)?;
    ensure!(
        session["certificate_serial"] == serial.as_str(),
        "alice's session should name serial {serial}: {session}"
    );
    let table = gw.tunnelctl(&["sessions"])?.check()?.stdout;
    ensure!(
        table.contains("CERTIFICATE SERIAL") && table.contains(&serial),
        "tunnelctl sessions: {table}"
    );

    // A certificate from another CA fails the handshake, counted and logged as a failed login.
    refused(
        &topo,
        &gw,
        ClientOpts::certificate(&foreign_alice.cert, &foreign_alice.key),
        "a certificate from another CA",
    )?;
    gw.wait_metric(
        "tunneld_auth_failures_total",
        &[("reason", "bad_certificate")],
        1.0,
        WAIT,
    )?;
    gw.wait_for_log(&["client certificate refused", "UnknownIssuer"], WAIT)?;

    // A revoked certificate (listed in the CRL) is refused.
    refused(
        &topo,
        &gw,
        ClientOpts::certificate(&rita.cert, &rita.key),
        "a revoked certificate",
    )?;
    gw.wait_metric(
        "tunneld_auth_failures_total",
        &[("reason", "bad_certificate")],
        2.0,
        WAIT,
    )?;
    gw.wait_for_log(&["client certificate refused", "Revoked"], WAIT)?;

    // No certificate at all (a password client): refused at login with the reason logged. After
    // the 401 to its POST, openconnect 9.01 tries once more with a legacy GET: two refusals.
    refused(
        &topo,
        &gw,
        ClientOpts::password("alice", "unused"),
        "a client without a certificate",
    )?;
    gw.wait_metric(
        "tunneld_auth_failures_total",
        &[("reason", "no_certificate")],
        2.0,
        WAIT,
    )?;
    gw.wait_for_log(
        &["certificate authentication failed", "no client certificate"],
        WAIT,
    )?;

    // A valid certificate of a user locked in the users file.
    refused(
        &topo,
        &gw,
        ClientOpts::certificate(&dave.cert, &dave.key),
        "a locked user's certificate",
    )?;
    gw.wait_metric(
        "tunneld_auth_failures_total",
        &[("reason", "locked")],
        2.0,
        WAIT,
    )?;
    gw.wait_for_log(
        &["certificate authentication failed", "\"dave\" is locked"],
        WAIT,
    )?;
    ensure!(
        failures(&gw, "bad_certificate")? == 2.0,
        "the locked user was not counted as a bad certificate"
    );

    // By default a certificate session's cookie connects on its own, as NetworkManager-openconnect
    // does it: its auth dialog logs in with the certificate (here `--authenticate`), then the VPN
    // service connects with the cookie and no certificate. That gives alice a second session.
    let nm_login = authenticate_certificate(&topo, &gw, "dev2", &alice.cert, &alice.key)?;
    let nm_cookie = nm_login
        .cookie
        .with_context(|| format!("no cookie from --authenticate: {}", nm_login.output))?;
    let alice_nm = Client::connect(&topo, &gw, ClientOpts::cookie(&nm_cookie).device("dev2"))?;
    alice_nm.ping(&topo, CORP_ADDR, 2)?;

    // With auth.bind_cookie_to_certificate, a cookie works only with the certificate that logged
    // in. A third session of alice: from another device (another source address for the ban
    // score), its cookie alone or with bob's valid certificate is refused; with hers it connects.
    let config = gw
        .config()
        .clone()
        .set("auth.bind_cookie_to_certificate", true);
    gw.write_config(config)?;
    gw.tunnelctl(&["reload"])?.check()?;
    let auth = authenticate_certificate(&topo, &gw, "dev3", &alice.cert, &alice.key)?;
    let cookie = auth
        .cookie
        .with_context(|| format!("no cookie from --authenticate: {}", auth.output))?;
    refused(
        &topo,
        &gw,
        ClientOpts::cookie(&cookie).device("dev3"),
        "alice's cookie without a certificate",
    )?;
    refused(
        &topo,
        &gw,
        with_certificate(ClientOpts::cookie(&cookie).device("dev3"), &bob),
        "alice's cookie with bob's certificate",
    )?;
    gw.wait_metric(
        "tunneld_auth_failures_total",
        &[("reason", "cookie_certificate")],
        2.0,
        WAIT,
    )?;
    gw.wait_for_log(&["not its device certificate", "no certificate"], WAIT)?;
    gw.wait_for_log(&["not its device certificate", "another certificate"], WAIT)?;
    let alice3 = Client::connect(
        &topo,
        &gw,
        with_certificate(ClientOpts::cookie(&cookie).device("dev3"), &alice),
    )?;
    alice3.ping(&topo, CORP_ADDR, 2)?;
    // bob's device shares the first device's namespace, on its own interface.
    let bob_client = Client::connect(
        &topo,
        &gw,
        ClientOpts::certificate(&bob.cert, &bob.key).interface("oc2"),
    )?;
    ensure!(
        gw.metric("tunneld_auth_successes_total", &[])? == 4.0,
        "exactly four logins succeeded (alice three times, bob)"
    );

    // Rotating the CRL: revoke alice and reload. All three of her live sessions end at once, her
    // next login is refused at the handshake, and bob's session goes on.
    ca.revoke(&alice)?;
    ca.crl()?;
    let out = gw.tunnelctl(&["reload"])?.check()?;
    ensure!(
        out.stdout
            .contains("3 session(s) whose device certificate is now revoked"),
        "reload: {out}"
    );
    gw.wait_metric(
        "tunneld_sessions_ended_total",
        &[("reason", "revoked")],
        3.0,
        WAIT,
    )?;
    gw.wait_for_log(
        &[
            "ending the session: its device certificate is revoked",
            "alice",
        ],
        WAIT,
    )?;
    let (mut client, mut alice_nm, mut alice3) = (client, alice_nm, alice3);
    for (c, which) in [
        (&mut client, "first"),
        (&mut alice_nm, "cookie-only"),
        (&mut alice3, "third"),
    ] {
        ensure!(
            c.wait_exit(Duration::from_secs(15))?.is_some(),
            "alice's {which} openconnect still runs after her certificate was revoked"
        );
    }
    refused(
        &topo,
        &gw,
        ClientOpts::certificate(&alice.cert, &alice.key),
        "alice after her certificate was revoked",
    )?;
    gw.wait_metric(
        "tunneld_auth_failures_total",
        &[("reason", "bad_certificate")],
        3.0,
        WAIT,
    )?;
    // Her cookies died with their sessions: the NetworkManager-style one (no certificate) gets a
    // 401, and her revoked certificate cannot carry the other back either (its handshake fails).
    refused(
        &topo,
        &gw,
        ClientOpts::cookie(&nm_cookie).device("dev2"),
        "alice's cookie-only session's cookie after the revocation",
    )?;
    refused(
        &topo,
        &gw,
        with_certificate(ClientOpts::cookie(&cookie).device("dev3"), &alice),
        "alice's cookie with her revoked certificate",
    )?;
    bob_client.ping(&topo, CORP_ADDR, 2)?;
    let list = gw.tunnelctl_json(&["sessions"])?;
    let users: Vec<_> = list
        .as_array()
        .context("sessions is a list")?
        .iter()
        .map(|s| s["user"].clone())
        .collect();
    ensure!(users == ["bob"], "sessions after the revocation: {list}");

    // Changing the CAs by reload. Adding the other CA next to the device CA ends nothing, and a
    // device of the other CA can now log in.
    let bundle = topo.dir().join("both-cas.pem");
    std::fs::write(
        &bundle,
        [std::fs::read(&ca.cert)?, std::fs::read(&other.cert)?].concat(),
    )?;
    let config = gw
        .config()
        .clone()
        .set("auth.ca_file", bundle.display().to_string());
    gw.write_config(config)?;
    let out = gw.tunnelctl(&["reload"])?.check()?;
    ensure!(!out.stdout.contains("ended:"), "reload: {out}");
    let foreign = Client::connect(
        &topo,
        &gw,
        ClientOpts::certificate(&foreign_alice.cert, &foreign_alice.key).device("dev2"),
    )?;
    foreign.ping(&topo, CORP_ADDR, 2)?;
    // Removing the device CA ends the session it issued (bob's) with a logged reason; the other
    // CA's session goes on.
    let config = gw
        .config()
        .clone()
        .set("auth.ca_file", other.cert.display().to_string());
    gw.write_config(config)?;
    let out = gw.tunnelctl(&["reload"])?.check()?;
    ensure!(
        out.stdout
            .contains("1 session(s) whose device certificate no longer chains to auth.ca_file"),
        "reload: {out}"
    );
    gw.wait_metric(
        "tunneld_sessions_ended_total",
        &[("reason", "untrusted")],
        1.0,
        WAIT,
    )?;
    gw.wait_for_log(&["no longer chains to a CA of auth.ca_file", "bob"], WAIT)?;
    let mut bob_client = bob_client;
    ensure!(
        bob_client.wait_exit(Duration::from_secs(15))?.is_some(),
        "bob's openconnect still runs after his CA was removed"
    );
    foreign.ping(&topo, CORP_ADDR, 2)?;
    let list = gw.tunnelctl_json(&["sessions"])?;
    ensure!(
        list.as_array().map(Vec::len) == Some(1) && list[0]["user"] == "alice",
        "sessions after the CA was removed: {list}"
    );
    Ok(())
}

/// The serial number of `cert` in hex, from `openssl x509 -serial`.
fn serial_of(cert: &CertFiles) -> Result<String> {
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(&cert.cert)
        .output()?;
    let text = String::from_utf8(out.stdout)?;
    text.trim()
        .strip_prefix("serial=")
        .map(str::to_owned)
        .with_context(|| format!("openssl x509 -serial printed {text:?}"))
}

/// `opts` plus a device certificate (`--certificate`, `--sslkey`): for a cookie login.
fn with_certificate(opts: ClientOpts, cert: &CertFiles) -> ClientOpts {
    opts.arg(&format!("--certificate={}", cert.cert.display()))
        .arg(&format!("--sslkey={}", cert.key.display()))
}
