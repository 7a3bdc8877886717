//! `server.user`: after start-up tunneld runs as an unprivileged user with only CAP_NET_ADMIN and
//! CAP_NET_BIND_SERVICE, clients still connect and pass traffic, and the NAT table is still removed on
//! exit (by `nft`, which gets CAP_NET_ADMIN through the ambient set), and a reload still re-reads the
//! self-signed certificate (its state directory was given to the user) and the users file.

use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use e2e::privileges::check_dropped;
use e2e::process;
use e2e::{Client, ClientOpts, Gateway, GatewayConfig, Topology, CORP_ADDR};

const USER: &str = "alice";
const PASSWORD: &str = "alice-pw";
/// Present on every Debian and RHEL system.
const UNPRIVILEGED: &str = "nobody";

fn id_of(flag: &str, user: &str) -> Result<u32> {
    let out = process::run(
        Command::new("id").args([flag, user]),
        None,
        Duration::from_secs(10),
    )?
    .check()?;
    out.stdout.trim().parse().context("id output")
}

#[test]
fn daemon_runs_as_the_configured_user_with_only_net_admin_and_net_bind_service() -> Result<()> {
    let (uid, gid) = (id_of("-u", UNPRIVILEGED)?, id_of("-g", UNPRIVILEGED)?);
    let topo = Topology::standard()?;
    let gw = Gateway::start(
        &topo,
        GatewayConfig::new()
            .user(USER, PASSWORD)
            .set("server.user", UNPRIVILEGED),
    )?;
    let line = gw.wait_for_log(&["dropped privileges"], Duration::from_secs(10))?;
    ensure!(
        line.contains("CAP_NET_ADMIN") && line.contains("CAP_NET_BIND_SERVICE"),
        "log line: {line}"
    );
    let pid = gw.pid().context("tunneld pid")?;
    eprintln!("{}", check_dropped(pid, uid, gid)?);

    // Logins, the tunnel and forwarding all happen after the drop.
    let client = Client::connect(&topo, &gw, ClientOpts::password(USER, PASSWORD))?;
    client.ping(&topo, CORP_ADDR, 3)?;
    // Still nothing more after serving a session (new threads inherit the dropped state).
    check_dropped(pid, uid, gid)?;
    Ok(())
}

#[test]
fn nat_table_installed_as_root_is_removed_on_exit_after_the_drop() -> Result<()> {
    let topo = Topology::standard()?;
    let mut gw = Gateway::start(
        &topo,
        GatewayConfig::new()
            .user(USER, PASSWORD)
            .set("server.user", UNPRIVILEGED)
            .set("network.nat", true)
            .daemon_arg("--drain-secs")
            .daemon_arg("1"),
    )?;
    gw.wait_for_log(&["dropped privileges"], Duration::from_secs(10))?;
    topo.run_in("gw", &["nft", "list", "table", "inet", "tunneld_tg0"])
        .context("the NAT table should exist while the daemon runs")?;
    gw.signal("TERM")?;
    let code = gw.wait_exit(Duration::from_secs(20))?;
    ensure!(code == Some(0), "tunneld exited with {code:?}");
    let after = topo.exec_in("gw", &["nft", "list", "table", "inet", "tunneld_tg0"])?;
    ensure!(
        !after.success(),
        "the NAT table is still there after exit:\n{after}\nlog:\n{}",
        gw.log()
    );
    ensure!(
        gw.log_lines(&["could not remove the NAT table"]).is_empty(),
        "{}",
        gw.log()
    );
    Ok(())
}

#[test]
fn unknown_user_stops_the_daemon_before_it_serves() -> Result<()> {
    let topo = Topology::standard()?;
    let err = Gateway::start(
        &topo,
        GatewayConfig::new()
            .user(USER, PASSWORD)
            .set("server.user", "no-such-user-e2e"),
    )
    .expect_err("tunneld must refuse an unknown user");
    let text = format!("{err:#}");
    ensure!(
        text.contains("no user named \"no-such-user-e2e\""),
        "error: {text}"
    );
    Ok(())
}

#[test]
fn reload_after_the_drop_rereads_the_self_signed_certificate_and_a_new_user() -> Result<()> {
    let topo = Topology::standard()?;
    // Like /etc/tunneld on a host: the user may traverse to the configuration.
    std::fs::set_permissions(topo.dir(), std::fs::Permissions::from_mode(0o755))?;
    let gw = Gateway::start(
        &topo,
        GatewayConfig::new()
            .user(USER, PASSWORD)
            .set("server.user", UNPRIVILEGED),
    )?;
    gw.wait_for_log(&["dropped privileges"], Duration::from_secs(10))?;
    let key = gw.dir().join("state/selfsigned-key.pem");
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&key)?);
    ensure!(
        owner == id_of("-u", UNPRIVILEGED)?,
        "the self-signed key belongs to uid {owner}"
    );

    let users = gw.dir().join("users");
    let mut text = std::fs::read_to_string(&users)?;
    text.push_str(&e2e::gateway::users_file_line("bob", "bob-pw")?);
    text.push('\n');
    std::fs::write(&users, text)?;
    gw.signal("HUP")?;
    let line = gw.wait_for_log(&["configuration reload"], Duration::from_secs(10))?;
    ensure!(
        line.contains("configuration reloaded") && line.contains("users=2"),
        "reload as {UNPRIVILEGED}: {line}"
    );
    let client = Client::connect(&topo, &gw, ClientOpts::password("bob", "bob-pw"))?;
    client.ping(&topo, CORP_ADDR, 2)?;
    Ok(())
}
