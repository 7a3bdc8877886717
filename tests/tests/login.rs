//! Logging in with openconnect: what the client is given (address, MTU, DNS, domains, split routes,
//! checked against the config), users made by tunnelctl, and wrong passwords.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use e2e::process::{self, tail};
use e2e::{run_expecting_exit, Client, ClientOpts, Gateway, GatewayConfig, Topology, CORP_ADDR};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

const USER: &str = "alice";
const PASSWORD: &str = "correct horse battery staple";

fn nets(list: &[String], v4: bool) -> Result<BTreeSet<IpNet>> {
    let mut out = BTreeSet::new();
    for s in list {
        let n: IpNet = s.parse().with_context(|| format!("config route {s}"))?;
        if matches!(n, IpNet::V4(_)) == v4 {
            out.insert(n);
        }
    }
    Ok(out)
}

#[test]
fn openconnect_gets_pool_address_mtu_dns_domain_and_split_routes_from_config() -> Result<()> {
    let topo = Topology::standard()?;
    let gw = Gateway::start(&topo, GatewayConfig::new().user(USER, PASSWORD))?;
    let client = Client::connect(&topo, &gw, ClientOpts::password(USER, PASSWORD))?;
    let env = client.connect_env()?;
    let cfg = gw.config();

    let pool4: Ipv4Net = cfg
        .get_str("network.ipv4_pool")
        .context("ipv4_pool")?
        .parse()?;
    let addr4 = env.ipv4()?;
    ensure!(
        pool4.contains(&addr4),
        "INTERNAL_IP4_ADDRESS {addr4} not in {pool4}"
    );
    let gateway_own = pool4.hosts().next().context("pool has hosts")?;
    ensure!(
        addr4 != gateway_own,
        "client got the gateway's own TUN address {addr4}"
    );

    let pool6: Ipv6Net = cfg
        .get_str("network.ipv6_pool")
        .context("ipv6_pool")?
        .parse()?;
    let addr6 = env.ipv6()?;
    ensure!(
        pool6.contains(&addr6),
        "INTERNAL_IP6_ADDRESS {addr6} not in {pool6}"
    );

    let mtu = cfg.get_int("network.mtu").context("mtu")?.to_string();
    ensure!(
        env.var("INTERNAL_IP4_MTU")? == mtu,
        "INTERNAL_IP4_MTU {:?} != {mtu}",
        env.var("INTERNAL_IP4_MTU")
    );

    // openconnect puts IPv6 DNS servers into INTERNAL_IP4_DNS too; compare parsed addresses as a set.
    let mut dns_got: BTreeSet<IpAddr> = BTreeSet::new();
    for name in ["INTERNAL_IP4_DNS", "INTERNAL_IP6_DNS"] {
        for s in env.set_of(name) {
            dns_got.insert(s.parse().with_context(|| format!("{name} item {s}"))?);
        }
    }
    let dns_want: BTreeSet<IpAddr> = cfg
        .get_strs("network.dns")
        .iter()
        .map(|s| s.parse())
        .collect::<Result<_, _>>()?;
    ensure!(
        dns_got == dns_want,
        "DNS servers: got {dns_got:?}, config {dns_want:?}"
    );

    let domain = cfg
        .get_str("network.default_domain")
        .context("default_domain")?;
    ensure!(
        env.var("CISCO_DEF_DOMAIN")? == domain,
        "CISCO_DEF_DOMAIN {:?}",
        env.var("CISCO_DEF_DOMAIN")
    );

    let split_dns_want: BTreeSet<String> = cfg.get_strs("network.split_dns").into_iter().collect();
    ensure!(
        env.set_of("CISCO_SPLIT_DNS") == split_dns_want,
        "CISCO_SPLIT_DNS {:?}",
        env.var("CISCO_SPLIT_DNS")
    );

    let inc = cfg.get_strs("network.split_include");
    let exc = cfg.get_strs("network.split_exclude");
    for (var, want) in [
        ("CISCO_SPLIT_INC", nets(&inc, true)?),
        ("CISCO_IPV6_SPLIT_INC", nets(&inc, false)?),
        ("CISCO_SPLIT_EXC", nets(&exc, true)?),
        ("CISCO_IPV6_SPLIT_EXC", nets(&exc, false)?),
    ] {
        let got = env.split_routes(var)?;
        ensure!(got == want, "{var}: got {got:?}, config {want:?}");
    }

    gw.wait_for_log(&["session started"], Duration::from_secs(5))?;
    ensure!(
        gw.metric("tunneld_sessions_active", &[])? == 1.0,
        "tunneld_sessions_active should be 1 with one client"
    );
    Ok(())
}

#[test]
fn user_added_with_tunnelctl_can_log_in() -> Result<()> {
    let topo = Topology::standard()?;
    let users = topo.dir().join("users-by-tunnelctl");
    let tunnelctl = e2e::gateway::tunnelctl_bin()?;
    let mut cmd = std::process::Command::new(&tunnelctl);
    cmd.args(["user", "add", "bob", "--users-file"])
        .arg(&users)
        .arg("--password-stdin");
    process::run(&mut cmd, Some("bob's password\n"), Duration::from_secs(30))?.check()?;
    let line = std::fs::read_to_string(&users)?;
    ensure!(
        line.starts_with("bob:"),
        "users file written by tunnelctl: {line:?}"
    );
    ensure!(
        !line.contains("bob's password"),
        "the users file must not hold the password in clear"
    );
    let cfg = GatewayConfig::new().set("auth.users_file", users.display().to_string());
    let gw = Gateway::start(&topo, cfg)?;
    let client = Client::connect(&topo, &gw, ClientOpts::password("bob", "bob's password"))?;
    client.ping(&topo, CORP_ADDR, 2)?;
    Ok(())
}

#[test]
fn wrong_password_exits_nonzero_is_logged_and_leaves_other_sessions_untouched() -> Result<()> {
    let topo = Topology::new()
        .device("dev1")
        .device("dev2")
        .gateway()
        .corp()
        .build()?;
    let gw = Gateway::start(
        &topo,
        GatewayConfig::new()
            .user(USER, PASSWORD)
            .user("mallory", "her real one"),
    )?;
    let good = Client::connect(
        &topo,
        &gw,
        ClientOpts::password(USER, PASSWORD).device("dev1"),
    )?;
    let failures_before = gw.metric_or_zero("tunneld_auth_failures_total", &[])?;

    // A ping that runs across the failed login: every echo must come back.
    let mut pinger = topo.spawn_in(
        "dev1",
        &["ping", "-n", "-c", "25", "-i", "0.2", "-W", "2", CORP_ADDR],
        "ping.log",
    )?;
    let (code, log) = run_expecting_exit(
        &topo,
        &gw,
        ClientOpts::password("mallory", "a guess").device("dev2"),
    )?;
    ensure!(
        matches!(code, Some(c) if c != 0),
        "openconnect with a wrong password exited {code:?}:\n{}",
        tail(&log, 20)
    );

    let line = gw.wait_for_log(
        &["authentication failed", "user=mallory"],
        Duration::from_secs(10),
    )?;
    ensure!(
        line.contains("peer=198.18.1.3"),
        "the failure log line should name the peer: {line}"
    );
    ensure!(
        !line.contains("a guess"),
        "the password must never be logged: {line}"
    );
    let failures_after = gw.metric("tunneld_auth_failures_total", &[])?;
    ensure!(
        failures_after >= failures_before + 1.0,
        "auth failures {failures_before} -> {failures_after}"
    );

    let ping_code = pinger.wait(Duration::from_secs(30))?;
    ensure!(
        ping_code == Some(0) && pinger.log().contains(" 0% packet loss"),
        "the connected client lost packets:\n{}",
        pinger.log()
    );
    ensure!(
        gw.metric("tunneld_sessions_active", &[])? == 1.0,
        "the good session must still be there"
    );
    ensure!(
        gw.log_lines(&["session ended"]).is_empty(),
        "no session may end: {:?}",
        gw.log_lines(&["session ended"])
    );
    drop(good);
    Ok(())
}

#[test]
fn unknown_user_is_refused_like_a_wrong_password() -> Result<()> {
    let topo = Topology::standard()?;
    let gw = Gateway::start(&topo, GatewayConfig::new().user(USER, PASSWORD))?;
    let (code, log) = run_expecting_exit(&topo, &gw, ClientOpts::password("nosuchuser", PASSWORD))?;
    ensure!(
        matches!(code, Some(c) if c != 0),
        "exit {code:?}:\n{}",
        tail(&log, 20)
    );
    gw.wait_for_log(
        &["authentication failed", "user=nosuchuser"],
        Duration::from_secs(10),
    )?;
    Ok(())
}
