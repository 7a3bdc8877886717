//! deploy/install.sh in a scratch root (`--root DIR --no-start`), the unit files, and shellcheck
//! over every shell script of the repository.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use e2e::certs::{self, KeyKind};
use e2e::container::repo_root;
use e2e::process::{self, Output};
use e2e::Topology;

fn install_sh() -> PathBuf {
    repo_root().join("deploy/install.sh")
}

/// Runs install.sh with `args` (optionally inside network namespace `netns`).
fn install(args: &[&str], netns: Option<&str>) -> Result<Output> {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "bash"]);
            c
        }
        None => Command::new("bash"),
    };
    // The full readiness checks too: `tunnelctl readiness` from this build.
    cmd.arg(install_sh())
        .arg("--tunnelctl")
        .arg(e2e::gateway::tunnelctl_bin()?)
        .args(args);
    process::run(&mut cmd, None, Duration::from_secs(120))
}

/// Every path under `root`, relative, with `/` after directories.
fn tree(root: &Path) -> Result<BTreeSet<String>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) -> Result<()> {
        for e in fs::read_dir(dir)? {
            let p = e?.path();
            let rel = p.strip_prefix(root)?.display().to_string();
            if p.is_dir() && !p.is_symlink() {
                out.insert(format!("{rel}/"));
                walk(root, &p, out)?;
            } else {
                out.insert(rel);
            }
        }
        Ok(())
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out)?;
    Ok(out)
}

fn sha(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// A scratch root that already holds some of the host's usual files, which the script must leave.
fn scratch_root() -> Result<tempfile::TempDir> {
    let root = tempfile::Builder::new().prefix("e2e-install-").tempdir()?;
    fs::create_dir_all(root.path().join("etc/sysctl.d"))?;
    fs::write(
        root.path().join("etc/sysctl.d/99-other.conf"),
        "vm.swappiness = 10\n",
    )?;
    fs::create_dir_all(root.path().join("etc/systemd/system"))?;
    fs::write(
        root.path().join("etc/systemd/system/other.service"),
        "[Service]\n",
    )?;
    Ok(root)
}

#[test]
fn install_in_a_scratch_root_then_uninstall_leaves_it_as_it_was() -> Result<()> {
    let root = scratch_root()?;
    let r = root.path().display().to_string();
    let before = tree(root.path())?;

    // In a fresh namespace forwarding is off, as on a fresh host: the drop-in this script installs
    // sets it, so that is no reason to refuse.
    let topo = Topology::new().device("dev").gateway().build()?;
    let dev = topo.ns("dev")?.to_string();
    let forwarding = topo.exec_in("dev", &["sysctl", "-n", "net.ipv4.ip_forward"])?;
    ensure!(forwarding.stdout.trim() == "0", "{forwarding}");
    let out = install(
        &["--root", &r, "--no-start", "--engine", "docker"],
        Some(&dev),
    )?
    .check()?;
    eprintln!("{}", out.stdout);
    ensure!(
        out.stdout.contains("[warn] sysctl: ip_forward")
            && out.stdout.contains("--no-start applies it only at boot"),
        "the drop-in's settings were not reported as such:\n{}",
        out.stdout
    );
    let installed = tree(root.path())?;
    for want in [
        "etc/tunneld/tunneld.toml",
        "etc/tunneld/users",
        "etc/sysctl.d/90-tunneld.conf",
        "etc/modules-load.d/tunneld.conf",
        "etc/systemd/system/tunneld.service",
        "var/lib/tunneld/",
    ] {
        ensure!(
            installed.contains(want),
            "{want} not installed: {installed:?}"
        );
    }
    let unit = fs::read_to_string(root.path().join("etc/systemd/system/tunneld.service"))?;
    ensure!(
        unit.contains("run --rm --name tunneld") && unit.contains("Requires=docker.service"),
        "docker unit:\n{unit}"
    );
    ensure!(
        !unit.contains('@'),
        "unfilled placeholder in the unit:\n{unit}"
    );
    let sysctl = fs::read_to_string(root.path().join("etc/sysctl.d/90-tunneld.conf"))?;
    ensure!(sysctl.lines().any(|l| l == "net.ipv4.ip_forward = 1"));
    for cap in ["net.core.rmem_max = 4194304", "net.core.wmem_max = 4194304"] {
        ensure!(sysctl.lines().any(|l| l == cap), "{cap} missing");
    }
    let modules = fs::read_to_string(root.path().join("etc/modules-load.d/tunneld.conf"))?;
    ensure!(modules.lines().any(|l| l == "tun") && modules.lines().any(|l| l == "ip_tables"));
    let config = fs::read_to_string(root.path().join("etc/tunneld/tunneld.toml"))?;
    ensure!(config.contains("user = \"tunneld\""), "config:\n{config}");
    ensure!(out.stdout.contains("Health URL:  https://"), "{out}");

    install(&["--root", &r, "--no-start", "--uninstall"], None)?.check()?;
    let after = tree(root.path())?;
    ensure!(
        after == before,
        "left behind: {:?}; removed: {:?}",
        after.difference(&before).collect::<Vec<_>>(),
        before.difference(&after).collect::<Vec<_>>()
    );
    Ok(())
}

#[test]
fn install_twice_changes_nothing_and_a_new_certificate_replaces_the_old_one() -> Result<()> {
    let root = scratch_root()?;
    let r = root.path().display().to_string();
    let certs_dir = tempfile::tempdir()?;
    let first = certs::self_signed(certs_dir.path(), "first", KeyKind::Rsa)?;
    let second = certs::self_signed(certs_dir.path(), "second", KeyKind::Rsa)?;
    let (c1, k1) = (
        first.cert.display().to_string(),
        first.key.display().to_string(),
    );
    let args = |c: &str, k: &str| {
        vec![
            "--root".to_string(),
            r.clone(),
            "--no-start".into(),
            "--engine".into(),
            "podman".into(),
            "--unit".into(),
            "quadlet".into(),
            "--cert".into(),
            c.to_string(),
            "--key".into(),
            k.to_string(),
        ]
    };
    let run = |a: Vec<String>| {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        install(&a, None)?.check()
    };

    let out1 = run(args(&c1, &k1))?;
    let tree1 = tree(root.path())?;
    let manifest1 = fs::read_to_string(root.path().join("etc/tunneld/.install-manifest"))?;
    let quadlet = root.path().join("etc/containers/systemd/tunneld.container");
    ensure!(quadlet.is_file(), "no quadlet unit: {tree1:?}");
    ensure!(
        fs::read_to_string(&quadlet)?.contains("Image=localhost/tunneld:latest"),
        "image not filled in"
    );
    let pin1 = e2e::gateway::cert_pin(&first.cert)?;
    ensure!(
        out1.stdout.contains(&pin1),
        "pin {pin1} not printed:\n{out1}"
    );

    // Again, unchanged: same files, same manifest (no duplicate lines), same content.
    let out2 = run(args(&c1, &k1))?;
    ensure!(
        tree(root.path())? == tree1,
        "second run changed the file list"
    );
    let manifest2 = fs::read_to_string(root.path().join("etc/tunneld/.install-manifest"))?;
    ensure!(
        manifest1 == manifest2,
        "manifest changed:\n{manifest1}\n---\n{manifest2}"
    );
    ensure!(out2.stdout.contains(&pin1));

    // Renewal: the new certificate and key replace the old ones; the pin printed is the new one.
    let (c2, k2) = (
        second.cert.display().to_string(),
        second.key.display().to_string(),
    );
    let out3 = run(args(&c2, &k2))?;
    let installed_cert = root.path().join("etc/tunneld/server-cert.pem");
    ensure!(
        sha(&installed_cert)? == sha(&second.cert)?,
        "certificate not replaced"
    );
    ensure!(
        sha(&root.path().join("etc/tunneld/server-key.pem"))? == sha(&second.key)?,
        "key not replaced"
    );
    let pin2 = e2e::gateway::cert_pin(&second.cert)?;
    ensure!(pin2 != pin1 && out3.stdout.contains(&pin2), "{out3}");
    let config = fs::read_to_string(root.path().join("etc/tunneld/tunneld.toml"))?;
    ensure!(
        config.contains("cert = \"/etc/tunneld/server-cert.pem\""),
        "config:\n{config}"
    );

    install(&["--root", &r, "--no-start", "--uninstall"], None)?.check()?;
    ensure!(
        !root.path().join("etc/tunneld").exists() && !root.path().join("etc/containers").exists(),
        "left behind: {:?}",
        tree(root.path())?
    );
    Ok(())
}

#[test]
fn install_of_a_pfx_installs_it_with_its_password_file_and_prints_its_pin() -> Result<()> {
    let root = scratch_root()?;
    let r = root.path().display().to_string();
    let dir = tempfile::tempdir()?;
    let pem = certs::self_signed(dir.path(), "srv", KeyKind::Rsa)?;
    let pfx = certs::pfx(dir.path(), "srv", &pem, "pfx-secret")?;
    let pass = dir.path().join("pfx.pass");
    fs::write(&pass, "pfx-secret\n")?;
    let out = install(
        &[
            "--root",
            &r,
            "--no-start",
            "--engine",
            "docker",
            "--pfx",
            &pfx.display().to_string(),
            "--pfx-password-file",
            &pass.display().to_string(),
        ],
        None,
    )?
    .check()?;
    let pin = e2e::gateway::cert_pin(&pem.cert)?;
    ensure!(out.stdout.contains(&pin), "pin {pin} not printed:\n{out}");
    let config = fs::read_to_string(root.path().join("etc/tunneld/tunneld.toml"))?;
    ensure!(
        config.contains("pfx = \"/etc/tunneld/server.pfx\"")
            && config.contains("pfx_password_file = \"/etc/tunneld/server.pfx.pass\""),
        "config:\n{config}"
    );
    ensure!(root.path().join("etc/tunneld/server.pfx.pass").is_file());
    install(&["--root", &r, "--no-start", "--uninstall"], None)?.check()?;
    Ok(())
}

#[test]
fn readiness_checks_refuse_a_mismatched_key_and_change_nothing() -> Result<()> {
    let root = scratch_root()?;
    let r = root.path().display().to_string();
    let before = tree(root.path())?;
    let dir = tempfile::tempdir()?;
    let a = certs::self_signed(dir.path(), "a", KeyKind::Rsa)?;
    let b = certs::self_signed(dir.path(), "b", KeyKind::Rsa)?;
    let out = install(
        &[
            "--root",
            &r,
            "--no-start",
            "--cert",
            &a.cert.display().to_string(),
            "--key",
            &b.key.display().to_string(),
        ],
        None,
    )?;
    ensure!(!out.success(), "a mismatched key was accepted:\n{out}");
    ensure!(out.stdout.contains("[FAIL] certificate"), "{out}");
    // tunnelctl readiness ran too, and said the same.
    ensure!(
        out.stdout.contains("FAIL  cert.key_match")
            && out.stdout.contains("[FAIL] tunnelctl readiness"),
        "{out}"
    );
    ensure!(tree(root.path())? == before, "files were written");
    Ok(())
}

#[test]
fn readiness_checks_refuse_a_pool_that_collides_with_a_host_route() -> Result<()> {
    // The gateway namespace has 198.18.1.0/24 on br0: a pool there would steal those addresses.
    let topo = Topology::new().device("dev").gateway().build()?;
    let root = scratch_root()?;
    let r = root.path().display().to_string();
    let before = tree(root.path())?;
    let gw = topo.ns("gw")?.to_string();
    let out = install(
        &["--root", &r, "--no-start", "--pool", "198.18.1.0/25"],
        Some(&gw),
    )?;
    ensure!(!out.success(), "a colliding pool was accepted:\n{out}");
    ensure!(
        out.stdout.contains("[FAIL] networks") && out.stdout.contains("198.18.1.0/24"),
        "{out}"
    );
    ensure!(tree(root.path())? == before, "files were written");
    // The same from an operator's configuration file, where the pool is in [network].
    let cfg = root.path().join("../").join(format!(
        "{}-tunneld.toml",
        root.path()
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
    ));
    fs::write(
        &cfg,
        "[server]\nlisten = \"0.0.0.0:443\"\n[metrics]\nlisten = \"127.0.0.1:9477\"\n\
         [network]\nipv4_pool = \"198.18.1.128/25\" # a comment\n",
    )?;
    let out = install(
        &[
            "--root",
            &r,
            "--no-start",
            "--config",
            &cfg.display().to_string(),
        ],
        Some(&gw),
    );
    fs::remove_file(&cfg)?;
    let out = out?;
    ensure!(
        !out.success() && out.stdout.contains("client pool 198.18.1.128/25 overlaps"),
        "a colliding pool in --config was accepted:\n{out}"
    );
    ensure!(tree(root.path())? == before, "files were written");
    // A pool elsewhere passes in the same namespace.
    install(
        &["--root", &r, "--no-start", "--pool", "198.18.64.0/24"],
        Some(&gw),
    )?
    .check()?;
    install(&["--root", &r, "--no-start", "--uninstall"], None)?.check()?;
    Ok(())
}

#[test]
fn the_plain_systemd_unit_passes_systemd_analyze_verify() -> Result<()> {
    // Fill in the placeholders the way install.sh does, for Docker.
    let dir = tempfile::tempdir()?;
    let text = fs::read_to_string(repo_root().join("deploy/systemd/tunneld.service"))?
        .replace("@IMAGE@", "localhost/tunneld:latest")
        .replace("@ENGINE@", "/bin/true")
        .replace("Requires=docker.service\n", "")
        .replace(" docker.service", "");
    let unit = dir.path().join("tunneld.service");
    fs::write(&unit, text)?;
    let out = process::run(
        Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&unit),
        None,
        Duration::from_secs(60),
    )?;
    // verify reports problems on stderr; complaints about other units of this machine are not ours.
    let ours: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("tunneld.service"))
        .collect();
    ensure!(ours.is_empty(), "systemd-analyze verify: {ours:#?}\n{out}");
    Ok(())
}

#[test]
fn the_quadlet_unit_uses_only_keys_podman_4_4_knows() -> Result<()> {
    // Podman's quadlet generator (4.4+) is not in Debian 12, so its keys are checked against the
    // list in podman-systemd.unit(5) of 4.4: a typo would make the generator skip the unit.
    const CONTAINER_KEYS: &[&str] = &[
        "AddCapability",
        "AddDevice",
        "Annotation",
        "ContainerName",
        "DropCapability",
        "Environment",
        "EnvironmentFile",
        "EnvironmentHost",
        "Exec",
        "ExposeHostPort",
        "Group",
        "HealthCmd",
        "Image",
        "IP",
        "IP6",
        "Label",
        "LogDriver",
        "Network",
        "NoNewPrivileges",
        "Notify",
        "PodmanArgs",
        "PublishPort",
        "ReadOnly",
        "RemapGid",
        "RemapUid",
        "RemapUidSize",
        "RemapUsers",
        "RunInit",
        "SeccompProfile",
        "SecurityLabelDisable",
        "SecurityLabelFileType",
        "SecurityLabelLevel",
        "SecurityLabelType",
        "Timezone",
        "User",
        "UserNS",
        "Volume",
    ];
    let text = fs::read_to_string(repo_root().join("deploy/systemd/tunneld.container"))?;
    let mut section = String::new();
    let mut seen = BTreeSet::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('[') {
            section = line.to_string();
            continue;
        }
        let (key, value) = line.split_once('=').context(line.to_string())?;
        if section == "[Container]" {
            ensure!(CONTAINER_KEYS.contains(&key), "unknown Quadlet key {key}");
            seen.insert(format!("{key}={value}"));
        }
    }
    for want in [
        "Network=host",
        "AddDevice=/dev/net/tun",
        "DropCapability=all",
        "AddCapability=NET_ADMIN NET_BIND_SERVICE BPF SETUID SETGID SETPCAP CHOWN",
        "Volume=/etc/tunneld:/etc/tunneld:ro,z",
    ] {
        ensure!(seen.contains(want), "{want} missing from the Quadlet unit");
    }
    ensure!(text.contains("Restart=on-failure") && text.contains("LimitNOFILE=1048576"));
    Ok(())
}

/// Files under the repository that are shell scripts: `*.sh`, or a shell in the `#!` line.
fn shell_scripts(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in fs::read_dir(dir)? {
        let p = e?.path();
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if p.is_dir() {
            if !matches!(name.as_str(), "target" | ".git") {
                shell_scripts(&p, out)?;
            }
            continue;
        }
        let head = fs::read(&p)
            .map(|b| String::from_utf8_lossy(&b[..b.len().min(64)]).into_owned())
            .unwrap_or_default();
        let first = head.lines().next().unwrap_or("");
        let shebang_shell = first.starts_with("#!")
            && ["/sh", "bash", " sh", "dash"]
                .iter()
                .any(|s| first.contains(s));
        if name.ends_with(".sh") || shebang_shell {
            out.push(p);
        }
    }
    Ok(())
}

#[test]
fn every_shell_script_in_the_repository_passes_shellcheck() -> Result<()> {
    let mut scripts = Vec::new();
    shell_scripts(&repo_root(), &mut scripts)?;
    scripts.sort();
    let names: Vec<String> = scripts.iter().map(|p| p.display().to_string()).collect();
    for want in [
        "deploy/install.sh",
        "deploy/build-image.sh",
        "scripts/test.sh",
        ".ci/run",
    ] {
        ensure!(
            names.iter().any(|n| n.ends_with(want)),
            "{want} not found among {names:?}"
        );
    }
    let out = process::run(
        Command::new("shellcheck").args(&scripts),
        None,
        Duration::from_secs(120),
    )
    .context("running shellcheck (scripts/test.sh installs it)")?;
    ensure!(out.success(), "shellcheck found problems:\n{}", out.stdout);
    eprintln!("shellcheck clean: {}", names.join(" "));
    Ok(())
}
