//! Running the capacity harness (`tunnel-bench`) from a device namespace against the gateway, and
//! reading its JSON report.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::gateway::{tunnel_bench_bin, Gateway};
use crate::process::{self, Output};
use crate::topology::Topology;

/// Adds `count` extra addresses `198.18.1.<first>`.. to the device's link, for the harness to
/// spread its sessions over; returns them as `--source` values.
pub fn add_source_addresses(
    topo: &Topology,
    device: &str,
    first: u8,
    count: u8,
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for i in 0..count {
        let addr = format!("198.18.1.{}", first.saturating_add(i));
        topo.run_in(
            device,
            &["ip", "addr", "add", &format!("{addr}/24"), "dev", "eth0"],
        )?;
        out.push(addr);
    }
    Ok(out)
}

/// The harness's report and its output.
#[derive(Debug)]
pub struct BenchRun {
    /// The JSON report.
    pub report: Value,
    /// The process output, for messages.
    pub output: Output,
}

impl BenchRun {
    /// A number by JSON pointer (`/connect/up`); NaN when absent.
    pub fn num(&self, pointer: &str) -> f64 {
        self.report
            .pointer(pointer)
            .and_then(Value::as_f64)
            .unwrap_or(f64::NAN)
    }
}

/// Who logs in.
#[derive(Debug, Clone, Copy)]
pub struct Login<'a> {
    /// Username.
    pub user: &'a str,
    /// Password.
    pub password: &'a str,
}

/// Runs `tunnel-bench <scenario> <args>` in the namespace of `device` against `gw`, logging in as
/// `login`, with the gateway's pin and the JSON report on stdout.
pub fn run_bench(
    topo: &Topology,
    gw: &Gateway,
    device: &str,
    login: Login<'_>,
    scenario: &str,
    args: &[&str],
    timeout: Duration,
) -> Result<BenchRun> {
    let bin = tunnel_bench_bin()?;
    let mut cmd = topo.command_in(device, &bin.display().to_string())?;
    cmd.args([
        scenario,
        "--server",
        gw.listen(),
        "--pin",
        gw.pin(),
        "--user",
        login.user,
    ])
    .args(["--format", "json", "--quiet"])
    .args(args)
    .env("TUNNEL_BENCH_PASSWORD", login.password);
    let output = process::run(&mut cmd, None, timeout)?;
    let report: Value = serde_json::from_str(&output.stdout)
        .with_context(|| format!("tunnel-bench printed no JSON report: {output}"))?;
    Ok(BenchRun { report, output })
}

/// The smoke runs' harness: `tunnel-bench <scenario>` from the `dev` namespace as `login`, probing
/// corp, 32 setups at a time, sessions spread over `sources`, then `args`.
pub fn run_smoke(
    topo: &Topology,
    gw: &Gateway,
    login: Login<'_>,
    sources: &[String],
    scenario: &str,
    args: &[&str],
    timeout: Duration,
) -> Result<BenchRun> {
    let mut all: Vec<&str> = vec!["--target", crate::CORP_ADDR, "--concurrency", "32"];
    for s in sources {
        all.extend(["--source", s.as_str()]);
    }
    all.extend_from_slice(args);
    run_bench(topo, gw, "dev", login, scenario, &all, timeout)
}
