//! The hand-driven CSTP client (tests/scripts/cstp_raw_client.py): a real TLS client that logs in
//! like openconnect and then sends frames openconnect never would.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::gateway::Gateway;
use crate::process::{self, Output};
use crate::topology::Topology;

/// Path of the raw client script.
pub fn raw_client_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cstp_raw_client.py")
}

/// What one scenario run reported.
#[derive(Debug, Clone)]
pub struct RawOutcome {
    /// The script's exit code (0: scenario ran to its end; 2: login/CONNECT refused; 1: error).
    pub code: Option<i32>,
    /// The `{"result": ...}` object.
    pub result: Value,
    /// The full output, for messages.
    pub output: String,
}

impl RawOutcome {
    /// A boolean field of the result (false when absent).
    pub fn flag(&self, key: &str) -> bool {
        self.result[key].as_bool().unwrap_or(false)
    }

    /// A string field of the result.
    pub fn text(&self, key: &str) -> Option<&str> {
        self.result[key].as_str()
    }
}

/// Runs the raw client in the namespace of `device` against `gw` as `user`/`password` with the
/// scenario arguments `args` (e.g. `["bad-frame", "--kind", "byte7"]`).
pub fn run(
    topo: &Topology,
    gw: &Gateway,
    device: &str,
    user: &str,
    password: &str,
    args: &[&str],
) -> Result<RawOutcome> {
    run_at(topo, gw.listen(), device, user, password, args)
}

/// Like [`run`], against any server `host:port`.
pub fn run_at(
    topo: &Topology,
    server: &str,
    device: &str,
    user: &str,
    password: &str,
    args: &[&str],
) -> Result<RawOutcome> {
    let script = raw_client_script().display().to_string();
    let mut cmd = topo.command_in(device, "python3")?;
    cmd.args([
        "-B",
        &script,
        "--server",
        server,
        "--user",
        user,
        "--password",
        password,
    ]);
    cmd.args(args);
    let out: Output = process::run(&mut cmd, None, Duration::from_secs(90))?;
    let result = out
        .stdout
        .lines()
        .rev()
        .find_map(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .and_then(|v| v.get("result").cloned())
        })
        .with_context(|| format!("raw client printed no result: {out}"))?;
    Ok(RawOutcome {
        code: out.code,
        result,
        output: out.to_string(),
    })
}
