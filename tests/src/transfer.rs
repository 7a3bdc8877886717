//! Bulk TCP transfers through the tunnel whose bytes are verified by SHA-256 on the receiving side
//! (tests/scripts/tcpblob.py at both ends).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::process;
use crate::topology::Topology;
use crate::wait::wait_until;

/// How long one transfer may take.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(180);

/// Path of the transfer helper.
pub fn tcpblob_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/tcpblob.py")
}

/// A file of `bytes` random bytes in the test's directory, and its SHA-256 (hex).
pub fn random_file(topo: &Topology, name: &str, bytes: u64) -> Result<(PathBuf, String)> {
    let path = topo.dir().join(name);
    let script = format!(
        "head -c {bytes} /dev/urandom > '{}' && sha256sum '{}'",
        path.display(),
        path.display()
    );
    let out = process::run(
        Command::new("sh").args(["-c", &script]),
        None,
        Duration::from_secs(60),
    )?
    .check()?;
    let digest = out
        .stdout
        .split_whitespace()
        .next()
        .context("sha256sum printed nothing")?;
    Ok((path, digest.to_string()))
}

/// What the receiving side saw.
#[derive(Debug, Clone)]
pub struct Received {
    /// Bytes received.
    pub bytes: u64,
    /// SHA-256 of the received bytes (hex).
    pub sha256: String,
    /// Wall time of the transfer.
    pub elapsed: Duration,
}

impl Received {
    /// Throughput in Mbit/s.
    pub fn mbit_per_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / 1e6 / self.elapsed.as_secs_f64().max(1e-6)
    }
}

fn last_json(text: &str) -> Result<Value> {
    text.lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
        .with_context(|| format!("no JSON result in:\n{text}"))
}

/// `server_role` listens on `listen` (`addr:port`) and sends `file`; `client_role` connects and
/// reads to EOF. Returns what the client received.
pub fn download(
    topo: &Topology,
    server_role: &str,
    client_role: &str,
    listen: &str,
    file: &Path,
) -> Result<Received> {
    let script = tcpblob_script().display().to_string();
    let file_s = file.display().to_string();
    let mut server = topo.spawn_in(
        server_role,
        &[
            "python3", "-B", &script, "serve", "--listen", listen, "--file", &file_s,
        ],
        "tcpblob-serve.log",
    )?;
    wait_until(
        Duration::from_secs(15),
        "the download server to listen",
        || {
            if let Some(status) = server.try_wait()? {
                bail!("download server exited with {status}: {}", server.log());
            }
            Ok(server.log().contains("listening"))
        },
    )?;
    let start = Instant::now();
    let mut cmd = topo.command_in(client_role, "python3")?;
    cmd.args(["-B", &script, "fetch", "--connect", listen]);
    let out = process::run(&mut cmd, None, TRANSFER_TIMEOUT)?.check()?;
    let elapsed = start.elapsed();
    server.wait(Duration::from_secs(30))?;
    let v = last_json(&out.stdout)?;
    Ok(Received {
        bytes: v["received"].as_u64().context("received")?,
        sha256: v["sha256"].as_str().context("sha256")?.to_string(),
        elapsed,
    })
}

/// `server_role` listens on `listen` and reads to EOF; `client_role` connects and sends `file`.
/// Returns what the server received.
pub fn upload(
    topo: &Topology,
    server_role: &str,
    client_role: &str,
    listen: &str,
    file: &Path,
) -> Result<Received> {
    let script = tcpblob_script().display().to_string();
    let file_s = file.display().to_string();
    let mut server = topo.spawn_in(
        server_role,
        &["python3", "-B", &script, "sink", "--listen", listen],
        "tcpblob-sink.log",
    )?;
    wait_until(Duration::from_secs(15), "the upload sink to listen", || {
        if let Some(status) = server.try_wait()? {
            bail!("upload sink exited with {status}: {}", server.log());
        }
        Ok(server.log().contains("listening"))
    })?;
    let start = Instant::now();
    let mut cmd = topo.command_in(client_role, "python3")?;
    cmd.args([
        "-B",
        &script,
        "push",
        "--connect",
        listen,
        "--file",
        &file_s,
    ]);
    process::run(&mut cmd, None, TRANSFER_TIMEOUT)?.check()?;
    let elapsed = start.elapsed();
    server.wait(Duration::from_secs(30))?;
    let v = last_json(&server.log())?;
    Ok(Received {
        bytes: v["received"].as_u64().context("received")?,
        sha256: v["sha256"].as_str().context("sha256")?.to_string(),
        elapsed,
    })
}
