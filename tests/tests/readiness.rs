//! `tunnelctl readiness` as an operator runs it, inside the test's namespaces: forwarding on in the
//! gateway namespace and off in a device namespace, and the TLS port reported busy while tunneld
//! holds it. (Every check's pass and fail cases are unit tests in tunnel-gateway's readiness.)

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use e2e::gateway::tunnelctl_bin;
use e2e::process::{self, Output};
use e2e::{Gateway, GatewayConfig, Topology};
use serde_json::Value;

fn readiness(topo: &Topology, role: &str, gw: &Gateway) -> Result<(Output, Value)> {
    let bin = tunnelctl_bin()?;
    let mut cmd = topo.command_in(role, &bin.display().to_string())?;
    cmd.arg("--config")
        .arg(gw.config_path())
        .args(["readiness", "--json"]);
    let out = process::run(&mut cmd, None, Duration::from_secs(60))?;
    let json = serde_json::from_str(&out.stdout)
        .with_context(|| format!("readiness --json printed no JSON: {out}"))?;
    Ok((out, json))
}

fn status<'a>(report: &'a Value, id: &str) -> Result<&'a Value> {
    report["checks"]
        .as_array()
        .context("no checks")?
        .iter()
        .find(|c| c["id"] == id)
        .with_context(|| format!("no check {id} in {report}"))
}

#[test]
fn readiness_sees_forwarding_and_the_busy_tls_port_per_namespace() -> Result<()> {
    let topo = Topology::new().device("dev").gateway().build()?;
    let gw = Gateway::start(&topo, GatewayConfig::new())?;

    let (out, report) = readiness(&topo, "gw", &gw)?;
    ensure!(
        out.code == Some(1),
        "a FAIL must make the exit status 1: {out}"
    );
    ensure!(
        status(&report, "ip_forward")?["status"] == "PASS",
        "{report}"
    );
    ensure!(
        status(&report, "tun_device")?["status"] == "PASS",
        "{report}"
    );
    let tls = status(&report, "listen.tls")?;
    ensure!(
        tls["status"] == "FAIL"
            && tls["summary"]
                .as_str()
                .is_some_and(|s| s.contains("in use")),
        "the port tunneld holds: {tls}"
    );
    ensure!(
        status(&report, "address_overlap.pool")?["status"] == "PASS",
        "{report}"
    );

    topo.run_in("dev", &["sysctl", "-q", "-w", "net.ipv4.ip_forward=0"])?;
    let (_, report) = readiness(&topo, "dev", &gw)?;
    let fwd = status(&report, "ip_forward")?;
    ensure!(
        fwd["status"] == "FAIL"
            && fwd["fix"]
                .as_str()
                .is_some_and(|f| f.contains("sysctl -w net.ipv4.ip_forward=1")),
        "forwarding off: {fwd}"
    );
    topo.run_in("dev", &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])?;
    let (_, report) = readiness(&topo, "dev", &gw)?;
    ensure!(
        status(&report, "ip_forward")?["status"] == "PASS",
        "forwarding on: {report}"
    );
    Ok(())
}
