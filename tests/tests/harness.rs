//! Tests of the harness itself (no tunneld needed): the topology forwards and cleans up, the client
//! script configures a TUN and records the environment, openconnect fails fast against nothing.

use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Result};
use e2e::client::read_script_runs;
use e2e::process;
use e2e::{Topology, CORP_ADDR, CORP_ADDR6, GW_DEVICE_ADDR};

fn namespaces() -> Result<String> {
    Ok(process::run(
        Command::new("ip").args(["netns", "list"]),
        None,
        Duration::from_secs(10),
    )?
    .check()?
    .stdout)
}

#[test]
fn topology_links_devices_to_gateway_and_gateway_to_corp() -> Result<()> {
    let topo = Topology::new()
        .device("dev1")
        .device("dev2")
        .gateway()
        .corp()
        .build()?;
    topo.ping("dev1", GW_DEVICE_ADDR, 1)?;
    topo.ping("dev2", GW_DEVICE_ADDR, 1)?;
    topo.ping("dev1", "198.18.1.3", 1)?;
    topo.ping("gw", CORP_ADDR, 1)?;
    topo.ping("gw", CORP_ADDR6, 1)?;
    let routes = topo.run_in("corp", &["ip", "route"])?.stdout;
    ensure!(
        routes.contains("198.18.128.0/24 via 198.18.2.1"),
        "corp routes: {routes}"
    );
    let routes6 = topo.run_in("corp", &["ip", "-6", "route"])?.stdout;
    ensure!(
        routes6.contains("fd00:198:18:128::/64 via fd00:198:18:2::1"),
        "corp routes: {routes6}"
    );
    let fwd = topo
        .run_in(
            "gw",
            &[
                "sysctl",
                "-n",
                "net.ipv4.ip_forward",
                "net.ipv6.conf.all.forwarding",
            ],
        )?
        .stdout;
    ensure!(
        fwd.split_whitespace().all(|v| v == "1"),
        "forwarding: {fwd}"
    );
    // Devices have no route to corp except through a tunnel.
    let out = topo.exec_in("dev1", &["ping", "-c", "1", "-W", "1", CORP_ADDR])?;
    ensure!(
        !out.success(),
        "corp must be unreachable from a device without the VPN: {out}"
    );
    Ok(())
}

#[test]
fn topology_namespaces_are_deleted_on_drop_even_when_the_test_panics() -> Result<()> {
    let names = std::thread::spawn(|| {
        let topo = Topology::standard().expect("topology");
        let names: Vec<String> = ["dev", "gw", "corp"]
            .iter()
            .map(|r| topo.ns(r).expect("role").to_string())
            .collect();
        let moved = (topo, names.clone());
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _held = moved;
            panic!("simulated test failure");
        }));
        assert!(result.is_err());
        names
    })
    .join()
    .expect("thread");
    let list = namespaces()?;
    for n in names {
        ensure!(
            !list.contains(&n),
            "namespace {n} survived the drop: {list}"
        );
    }
    Ok(())
}

#[test]
fn background_processes_in_namespaces_are_ended_at_teardown() -> Result<()> {
    let pid;
    {
        let topo = Topology::standard()?;
        let sleeper = topo.spawn_in("corp", &["sleep", "300"], "sleep.log")?;
        pid = sleeper.pid();
        std::mem::forget(sleeper); // even a leaked handle must not outlive the topology
    }
    e2e::wait_until(
        Duration::from_secs(10),
        "the leaked sleeper to be gone",
        || {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // gone, or a zombie waiting to be reaped by us
            Ok(stat.is_empty() || stat.split_whitespace().nth(2) == Some("Z"))
        },
    )
}

#[test]
fn record_env_script_configures_tun_routes_and_records_environment() -> Result<()> {
    let topo = Topology::new().device("dev").gateway().build()?;
    topo.run_in("dev", &["ip", "tuntap", "add", "dev", "oc9", "mode", "tun"])?;
    let env_dir = topo.subdir("env")?;
    let script = e2e::client::record_env_script();
    let mut cmd = topo.command_in("dev", "sh")?;
    cmd.arg(&script)
        .env("E2E_ENV_DIR", &env_dir)
        .env("reason", "connect")
        .env("TUNDEV", "oc9")
        .env("INTERNAL_IP4_ADDRESS", "198.18.128.7")
        .env("INTERNAL_IP4_MTU", "1400")
        .env("INTERNAL_IP6_ADDRESS", "fd00:198:18:128::7")
        .env("CISCO_SPLIT_INC", "2")
        .env("CISCO_SPLIT_INC_0_ADDR", "198.18.2.0")
        .env("CISCO_SPLIT_INC_0_MASKLEN", "24")
        .env("CISCO_SPLIT_INC_1_ADDR", "198.18.7.0")
        .env("CISCO_SPLIT_INC_1_MASKLEN", "25")
        .env("CISCO_IPV6_SPLIT_INC", "1")
        .env("CISCO_IPV6_SPLIT_INC_0_ADDR", "fd00:198:18:2::")
        .env("CISCO_IPV6_SPLIT_INC_0_MASKLEN", "64")
        .env("CISCO_CSTP_OPTIONS", "X-CSTP-A=1\nX-CSTP-B=2");
    process::run(&mut cmd, None, Duration::from_secs(20))?.check()?;
    let link = topo.run_in("dev", &["ip", "link", "show", "oc9"])?.stdout;
    ensure!(link.contains("mtu 1400") && link.contains(",UP"), "{link}");
    let addrs = topo.run_in("dev", &["ip", "addr", "show", "oc9"])?.stdout;
    ensure!(
        addrs.contains("198.18.128.7/32") && addrs.contains("fd00:198:18:128::7/128"),
        "{addrs}"
    );
    let routes = topo.run_in("dev", &["ip", "route"])?.stdout;
    ensure!(
        routes.contains("198.18.2.0/24 dev oc9") && routes.contains("198.18.7.0/25 dev oc9"),
        "{routes}"
    );
    let routes6 = topo.run_in("dev", &["ip", "-6", "route"])?.stdout;
    ensure!(routes6.contains("fd00:198:18:2::/64 dev oc9"), "{routes6}");
    let runs = read_script_runs(&env_dir)?;
    ensure!(runs.len() == 1 && runs[0].reason == "connect", "{runs:?}");
    ensure!(
        runs[0].var("E2E_SETUP_ERRORS")?.is_empty(),
        "{:?}",
        runs[0].var("E2E_SETUP_ERRORS")
    );
    ensure!(
        runs[0].var("CISCO_CSTP_OPTIONS")? == "X-CSTP-A=1\nX-CSTP-B=2",
        "multi-line values survive"
    );
    let inc = runs[0].split_routes("CISCO_SPLIT_INC")?;
    ensure!(
        inc.len() == 2 && inc.contains(&"198.18.7.0/25".parse()?),
        "{inc:?}"
    );
    Ok(())
}

#[test]
fn openconnect_against_a_closed_port_exits_1() -> Result<()> {
    let topo = Topology::new().device("dev").gateway().build()?;
    let pin = "pin-sha256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let mut cmd = topo.command_in("dev", "openconnect")?;
    cmd.args([
        "--non-inter",
        "--user",
        "nobody",
        "--passwd-on-stdin",
        "--servercert",
        pin,
        "--no-dtls",
    ]);
    cmd.arg(format!("https://{GW_DEVICE_ADDR}/"));
    let out = process::run(&mut cmd, Some("x\n"), Duration::from_secs(30))?;
    ensure!(
        out.code == Some(1),
        "expected exit 1 with nothing listening: {out}"
    );
    Ok(())
}
