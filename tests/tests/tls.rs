//! TLS: protocol versions (1.3 by default, 1.2 accepted, 1.1 refused, `min_version = "1.3"`), and
//! certificates loaded from PEM (RSA, ECDSA) and from a password-protected PFX, pinned by openconnect.

use std::time::Duration;

use anyhow::{ensure, Result};
use e2e::certs::{self, KeyKind};
use e2e::process::{self, Output};
use e2e::{Client, ClientOpts, Gateway, GatewayConfig, Topology, CORP_ADDR};

const USER: &str = "alice";
const PASSWORD: &str = "alice-pw";

/// Runs `openssl s_client` from the device namespace with `flags`; returns its output.
fn s_client(topo: &Topology, connect: &str, flags: &[&str]) -> Result<Output> {
    let mut cmd = topo.command_in(topo.first_device(), "openssl")?;
    cmd.args(["s_client", "-connect", connect, "-brief"])
        .args(flags);
    process::run(&mut cmd, None, Duration::from_secs(20))
}

/// The "Protocol version: TLSv1.x" that `s_client -brief` reports, if the handshake completed.
fn negotiated(out: &Output) -> Option<String> {
    let text = format!("{}\n{}", out.stdout, out.stderr);
    text.lines().find_map(|l| {
        l.trim()
            .strip_prefix("Protocol version:")
            .map(|v| v.trim().to_string())
    })
}

#[test]
fn tls13_is_negotiated_by_default() -> Result<()> {
    let topo = Topology::standard()?;
    let gw = Gateway::start(&topo, GatewayConfig::new())?;
    let out = s_client(&topo, gw.listen(), &[])?;
    ensure!(
        negotiated(&out).as_deref() == Some("TLSv1.3"),
        "expected TLSv1.3: {out}"
    );
    Ok(())
}

#[test]
fn tls12_is_accepted_when_min_version_is_1_2() -> Result<()> {
    let topo = Topology::standard()?;
    let gw = Gateway::start(&topo, GatewayConfig::new().set("tls.min_version", "1.2"))?;
    let out = s_client(&topo, gw.listen(), &["-tls1_2"])?;
    ensure!(
        negotiated(&out).as_deref() == Some("TLSv1.2"),
        "expected TLSv1.2: {out}"
    );
    Ok(())
}

#[test]
fn tls11_is_refused() -> Result<()> {
    let topo = Topology::standard()?;
    let gw = Gateway::start(&topo, GatewayConfig::new())?;
    // OpenSSL 3 only offers TLS 1.1 at security level 0; prove this client really can speak it by
    // completing a TLS 1.1 handshake with a local openssl s_server first (-www: it must not read
    // stdin, which is closed, or it quits at once).
    let ctl = certs::self_signed(topo.dir(), "control", KeyKind::Rsa)?;
    let (cert, key) = (
        ctl.cert.display().to_string(),
        ctl.key.display().to_string(),
    );
    let lax = ["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"];
    let mut server = topo.spawn_in(
        topo.first_device(),
        &[
            "openssl",
            "s_server",
            "-www",
            "-accept",
            "127.0.0.1:4433",
            "-cert",
            &cert,
            "-key",
            &key,
            "-naccept",
            "1",
        ]
        .iter()
        .chain(lax.iter())
        .copied()
        .collect::<Vec<_>>(),
        "s_server.log",
    )?;
    e2e::wait_until(Duration::from_secs(10), "the control s_server", || {
        Ok(server.log().contains("ACCEPT"))
    })?;
    let control = s_client(&topo, "127.0.0.1:4433", &lax)?;
    ensure!(
        negotiated(&control).as_deref() == Some("TLSv1.1"),
        "control TLS 1.1 handshake failed: {control}"
    );
    let _ = server.wait(Duration::from_secs(5));

    let out = s_client(&topo, gw.listen(), &lax)?;
    ensure!(
        !out.success() && negotiated(&out).is_none(),
        "TLS 1.1 was accepted: {out}"
    );
    // The refusal must come from the server (a TLS alert), not from this client's own settings.
    ensure!(
        out.stderr.contains("alert") && !out.stderr.contains("no protocols available"),
        "TLS 1.1 should be refused by the server with an alert: {out}"
    );
    Ok(())
}

#[test]
fn min_version_1_3_refuses_tls12() -> Result<()> {
    let topo = Topology::standard()?;
    let gw = Gateway::start(
        &topo,
        GatewayConfig::new()
            .set("tls.min_version", "1.3")
            .user(USER, PASSWORD),
    )?;
    let out = s_client(&topo, gw.listen(), &["-tls1_2"])?;
    ensure!(
        !out.success() && negotiated(&out).is_none(),
        "TLS 1.2 was accepted with min_version 1.3: {out}"
    );
    let out = s_client(&topo, gw.listen(), &["-tls1_3"])?;
    ensure!(
        negotiated(&out).as_deref() == Some("TLSv1.3"),
        "TLS 1.3 refused: {out}"
    );
    Client::connect(&topo, &gw, ClientOpts::password(USER, PASSWORD))?.ping(&topo, CORP_ADDR, 1)?;
    Ok(())
}

fn pem_certificate_is_served_and_pinned(kind: KeyKind) -> Result<()> {
    let topo = Topology::standard()?;
    let files = certs::self_signed(topo.dir(), "server", kind)?;
    let cfg = GatewayConfig::new()
        .set("tls.cert", files.cert.display().to_string())
        .set("tls.key", files.key.display().to_string())
        .pin_certificate(&files.cert)
        .user(USER, PASSWORD);
    let gw = Gateway::start(&topo, cfg)?;
    ensure!(
        !gw.dir().join("state/selfsigned-cert.pem").exists(),
        "a configured certificate must not be replaced by a self-signed one"
    );
    let client = Client::connect(&topo, &gw, ClientOpts::password(USER, PASSWORD))?;
    client.ping(&topo, CORP_ADDR, 1)?;
    Ok(())
}

#[test]
fn pem_rsa_certificate_is_served_and_openconnect_accepts_its_pin() -> Result<()> {
    pem_certificate_is_served_and_pinned(KeyKind::Rsa)
}

#[test]
fn pem_ecdsa_certificate_is_served_and_openconnect_accepts_its_pin() -> Result<()> {
    pem_certificate_is_served_and_pinned(KeyKind::EcdsaP256)
}

fn pfx_certificate_is_served_and_pinned(kind: KeyKind) -> Result<()> {
    let topo = Topology::standard()?;
    let files = certs::self_signed(topo.dir(), "server", kind)?;
    let pfx = certs::pfx(topo.dir(), "server", &files, "pfx secret")?;
    let cfg = GatewayConfig::new()
        .set("tls.pfx", pfx.display().to_string())
        .set("tls.pfx_password", "pfx secret")
        .pin_certificate(&files.cert)
        .user(USER, PASSWORD);
    let gw = Gateway::start(&topo, cfg)?;
    let client = Client::connect(&topo, &gw, ClientOpts::password(USER, PASSWORD))?;
    client.ping(&topo, CORP_ADDR, 1)?;
    Ok(())
}

#[test]
fn pfx_rsa_with_password_is_served_and_openconnect_accepts_its_pin() -> Result<()> {
    pfx_certificate_is_served_and_pinned(KeyKind::Rsa)
}

#[test]
fn pfx_ecdsa_with_password_is_served_and_openconnect_accepts_its_pin() -> Result<()> {
    pfx_certificate_is_served_and_pinned(KeyKind::EcdsaP256)
}

#[test]
fn openconnect_refuses_a_gateway_whose_key_does_not_match_the_pin() -> Result<()> {
    let topo = Topology::standard()?;
    let gw = Gateway::start(&topo, GatewayConfig::new().user(USER, PASSWORD))?;
    let other = certs::self_signed(topo.dir(), "other", KeyKind::EcdsaP256)?;
    let wrong_pin = e2e::gateway::cert_pin(&other.cert)?;
    let (code, _log) = e2e::run_expecting_exit(
        &topo,
        &gw,
        ClientOpts::password(USER, PASSWORD).pin(&wrong_pin),
    )?;
    ensure!(
        code == Some(1),
        "openconnect with a wrong pin exited {code:?}"
    );
    Ok(())
}
