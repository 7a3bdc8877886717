//! The control socket and `tunnelctl status|sessions|disconnect`: a live openconnect session is
//! listed; `disconnect` ends it with a DISCONNECT (openconnect exits "terminated by server") and
//! revokes its cookie (reusing it gets 401); the socket is root-only.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use e2e::process::tail;
use e2e::{
    authenticate, run_expecting_exit, Client, ClientOpts, Gateway, GatewayConfig, Topology,
    CORP_ADDR,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);

fn session_of<'a>(list: &'a Value, user: &str) -> Result<&'a Value> {
    list.as_array()
        .context("sessions --json is not an array")?
        .iter()
        .find(|s| s["user"] == user)
        .with_context(|| format!("no session of {user} in {list}"))
}

#[test]
fn disconnect_ends_a_listed_session_and_its_cookie_gets_401() -> Result<()> {
    let topo = Topology::new()
        .device("dev")
        .device("dev2")
        .gateway()
        .corp()
        .build()?;
    let gw = Gateway::start(
        &topo,
        GatewayConfig::new()
            .user("alice", "alice-pw")
            .user("bob", "bob-pw"),
    )?;
    let auth = authenticate(&topo, &gw, "dev", "alice", "alice-pw")?;
    ensure!(
        auth.code == Some(0),
        "--authenticate failed: {}",
        auth.output
    );
    let cookie = auth.cookie.context("no COOKIE= from --authenticate")?;
    let mut alice = Client::connect(&topo, &gw, ClientOpts::cookie(&cookie))?;
    alice.ping(&topo, CORP_ADDR, 2)?;
    let bob = Client::connect(
        &topo,
        &gw,
        ClientOpts::password("bob", "bob-pw").device("dev2"),
    )?;

    // Listed, with what an operator needs.
    let list = gw.tunnelctl_json(&["sessions"])?;
    ensure!(
        list.as_array().map(Vec::len) == Some(2),
        "two sessions: {list}"
    );
    let s = session_of(&list, "alice")?;
    ensure!(
        s["ipv4"] == alice.ipv4()?.to_string()
            && s["ipv6"] == alice.connect_env()?.ipv6()?.to_string()
            && s["device"]
                .as_str()
                .is_some_and(|d| d.starts_with("198.18.1.2:"))
            && s["transport"] == "cstp"
            && s["bytes_up"].as_u64().is_some_and(|b| b >= 2 * 84)
            && s["bytes_down"].as_u64().is_some_and(|b| b >= 2 * 84)
            && s["connected_since"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z')),
        "alice's row: {s}"
    );
    let table = gw.tunnelctl(&["sessions"])?.check()?.stdout;
    ensure!(
        table.contains("alice")
            && table.contains(&alice.ipv4()?.to_string())
            && table.contains("cstp"),
        "sessions table:\n{table}"
    );
    let status = gw.tunnelctl_json(&["status"])?;
    ensure!(
        status["sessions"] == 2
            && status["connected"] == 2
            && status["pool"]["in_use"] == 2
            && status["ready"] == true
            && status["draining"] == false
            && status["listen"] == gw.listen(),
        "status: {status}"
    );
    ensure!(
        status["threads"].as_u64() == Some(std::thread::available_parallelism()?.get() as u64)
            && status["tun_steering"] == "address"
            && status["rx_coalesce_usecs"] == 100
            && status["rx_coalesce_naps"].is_u64(),
        "status: {status}"
    );
    // Open files against the limit, as /proc shows them (the two sessions' connections among
    // them; no private tables by default).
    let pid = gw.pid().context("tunneld pid")?;
    let limit = e2e::process::open_files_limit(pid)?.0;
    let in_proc = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64;
    let files = status["open_files"].as_u64().context("open_files")?;
    ensure!(
        status["max_open_files"].as_u64() == Some(limit)
            && files.abs_diff(in_proc) <= 1
            && files >= 2
            && status["open_files_per_thread"] == serde_json::json!([]),
        "status: {status} (limit {limit}, /proc lists {in_proc} files)"
    );
    let text = gw.tunnelctl(&["status"])?.check()?.stdout;
    ensure!(
        text.contains("steering by destination address")
            && text.contains("coalescing:  100 µs naps under sustained traffic")
            && text.contains(&format!(" of {limit} (")),
        "tunnelctl status: {text}"
    );

    // Disconnect by user: a proper DISCONNECT, openconnect exits and says so.
    let out = gw.tunnelctl(&["disconnect", "--user", "alice"])?.check()?;
    ensure!(out.stdout.contains("disconnected 1 session"), "{out}");
    let code = alice.wait_exit(Duration::from_secs(15))?;
    let log = alice.log();
    ensure!(
        code == Some(1) && log.contains("terminated by server"),
        "openconnect after disconnect: exit {code:?}\n{}",
        tail(&log, 20)
    );
    gw.wait_metric(
        "tunneld_sessions_ended_total",
        &[("reason", "kicked")],
        1.0,
        WAIT,
    )?;
    gw.wait_metric("tunneld_pool_addresses_in_use", &[], 1.0, WAIT)?;

    // The cookie is revoked: a CONNECT with it is answered 401.
    let (code, log) = run_expecting_exit(&topo, &gw, ClientOpts::cookie(&cookie))?;
    ensure!(
        code == Some(2) && log.contains("401"),
        "reusing the disconnected cookie: exit {code:?}\n{}",
        tail(&log, 20)
    );

    // Disconnect by session id.
    let list = gw.tunnelctl_json(&["sessions"])?;
    let id = session_of(&list, "bob")?["id"].as_u64().context("id")?;
    gw.tunnelctl(&["disconnect", "--session", &id.to_string()])?
        .check()?;
    let mut bob = bob;
    ensure!(
        bob.wait_exit(Duration::from_secs(15))? == Some(1),
        "bob's exit"
    );
    ensure!(
        gw.tunnelctl_json(&["sessions"])?.as_array().map(Vec::len) == Some(0),
        "no sessions left"
    );

    // Unknown targets are refused with the reason.
    let out = gw.tunnelctl(&["disconnect", "--user", "nobody"])?;
    ensure!(
        !out.success() && out.stderr.contains("\"nobody\" has no session"),
        "{out}"
    );
    let out = gw.tunnelctl(&["disconnect", "--session", "999"])?;
    ensure!(
        !out.success() && out.stderr.contains("no session with id 999"),
        "{out}"
    );
    Ok(())
}

#[test]
fn control_socket_is_mode_0600_and_refuses_other_users() -> Result<()> {
    let topo = Topology::new().device("dev").gateway().build()?;
    let cfg = GatewayConfig::new()
        .daemon_arg("--drain-secs")
        .daemon_arg("1");
    let mut gw = Gateway::start(&topo, cfg)?;
    let sock = gw.control_socket();
    let mode = std::fs::metadata(&sock)?.permissions().mode() & 0o777;
    ensure!(mode == 0o600, "control socket mode {mode:o}");
    // The same request as an unprivileged user is refused.
    let bin = e2e::gateway::tunnelctl_bin()?;
    let out = e2e::process::run(
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&bin)
            .arg("--socket")
            .arg(&sock)
            .arg("status"),
        None,
        Duration::from_secs(30),
    )?;
    ensure!(
        !out.success() && out.stderr.contains("Permission denied"),
        "tunnelctl status as nobody: {out}"
    );
    let status = gw.tunnelctl_json(&["status"])?;
    ensure!(status["version"].is_string(), "status as root: {status}");
    // The socket file goes away when the daemon exits.
    gw.signal("TERM")?;
    gw.wait_exit(Duration::from_secs(30))?;
    ensure!(!sock.exists(), "{} left behind after exit", sock.display());
    Ok(())
}
