//! The container image (deploy/Containerfile, built by deploy/build-image.sh with Podman): what is in
//! it, and tunneld run from it with `podman run` serving a real openconnect over TLS and DTLS.
//!
//! The image is built from the debug binaries the other end-to-end tests use (scripts/test.sh builds
//! them anyway; a release build would add minutes of CI on two cores for the same code). The script
//! strips their debug information, as it does for release binaries. Each test builds into a Podman
//! storage of its own (see `e2e::container`), removed afterwards.

use std::io::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use e2e::container::{repo_root, Podman};
use e2e::privileges::check_dropped;
use e2e::process;
use e2e::{Client, ClientOpts, Gateway, GatewayConfig, Launcher, Topology, CORP_ADDR};

const TAG: &str = "localhost/tunneld-e2e:test";
/// The `tunneld` user of the image (deploy/build-image.sh).
const TUNNELD_ID: u32 = 65532;

/// Whether Podman's default seccomp profile allows `bpf()` to a container that has `CAP_BPF` (and
/// not `CAP_SYS_ADMIN`).
fn seccomp_allows_bpf_with_cap_bpf() -> Result<bool> {
    let path = "/usr/share/containers/seccomp.json";
    let profile: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).context(path)?)?;
    let rules = profile["syscalls"]
        .as_array()
        .context("no syscalls in the profile")?;
    Ok(rules.iter().any(|r| {
        r["action"] == "SCMP_ACT_ALLOW"
            && r["names"]
                .as_array()
                .is_some_and(|n| n.iter().any(|n| n == "bpf"))
            && r["includes"]["caps"]
                .as_array()
                .is_none_or(|c| c.iter().any(|c| c == "CAP_BPF"))
    }))
}

fn build(podman: &Podman) -> Result<()> {
    let started = Instant::now();
    let out = podman.build_image(TAG)?;
    eprintln!(
        "image built in {:.1} s:\n{}",
        started.elapsed().as_secs_f64(),
        out.stdout.lines().last().unwrap_or("")
    );
    Ok(())
}

/// `--ulimit` flags for open files and processes. Rootful Podman asks for 1048576 of each unless
/// told otherwise, which fails where root lacks CAP_SYS_RESOURCE (as on this CI machine): a
/// container cannot get more than the podman process has. Podman caps its own process limit at
/// kernel.pid_max, hence the minimum.
fn ulimits() -> Result<[String; 2]> {
    let nofile = e2e::process::limit(std::process::id(), "Max open files")?.1;
    let pid_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")?
        .trim()
        .parse()?;
    let nproc = e2e::process::limit(std::process::id(), "Max processes")?
        .1
        .min(pid_max);
    Ok([
        format!("--ulimit=nofile={nofile}:{nofile}"),
        format!("--ulimit=nproc={nproc}:{nproc}"),
    ])
}

/// The arguments of `@ENGINE@ run ... @IMAGE@` in deploy/systemd/tunneld.service, between `run`
/// and the image.
fn unit_run_flags() -> Result<Vec<String>> {
    let unit = std::fs::read_to_string(repo_root().join("deploy/systemd/tunneld.service"))?;
    let joined = unit.replace("\\\n", " ");
    let exec = joined
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart=@ENGINE@ run "))
        .context("no `ExecStart=@ENGINE@ run` in tunneld.service")?;
    let words: Vec<String> = exec.split_whitespace().map(str::to_string).collect();
    ensure!(
        words.last().map(String::as_str) == Some("@IMAGE@"),
        "ExecStart does not end with the image: {exec}"
    );
    let flags = words[..words.len() - 1].to_vec();
    for want in [
        "--device",
        "--cap-drop",
        "--security-opt",
        "--ulimit",
        "--network",
    ] {
        ensure!(
            flags.iter().any(|f| f == want),
            "{want} not in the unit: {exec}"
        );
    }
    Ok(flags)
}

#[test]
fn image_holds_only_the_binaries_their_libraries_and_the_user_files() -> Result<()> {
    let podman = Podman::new()?;
    build(&podman)?;

    let entrypoint = podman.inspect_image(TAG, "{{json .Config.Entrypoint}}")?;
    ensure!(
        entrypoint == r#"["/usr/bin/tunneld"]"#,
        "entrypoint {entrypoint}"
    );
    let user = podman.inspect_image(TAG, "{{.Config.User}}")?;
    ensure!(
        user == "0:0",
        "image user {user:?}: tunneld starts as root and drops itself"
    );
    let env = podman.inspect_image(TAG, "{{json .Config.Env}}")?;
    for want in [
        "TUNNELD_USER=tunneld",
        "TUNNELD_CONFIG=/etc/tunneld/tunneld.toml",
    ] {
        ensure!(env.contains(want), "image env {env} lacks {want}");
    }
    let volumes = podman.inspect_image(TAG, "{{json .Config.Volumes}}")?;
    ensure!(volumes.contains("/var/lib/tunneld"), "volumes {volumes}");
    let size: u64 = podman.inspect_image(TAG, "{{.Size}}")?.parse()?;

    let image = podman.export_image(TAG)?;
    eprintln!("image contents:\n  {}", image.entries.join("\n  "));
    let files = image.files();
    for want in [
        "usr/bin/tunneld",
        "usr/bin/tunnelctl",
        "etc/passwd",
        "etc/group",
    ] {
        ensure!(files.contains(&want), "{want} missing from the image");
    }
    // Everything else is a shared library: no shell, no other program.
    let others: Vec<&&str> = files
        .iter()
        .filter(|f| {
            let expected = matches!(
                **f,
                "usr/bin/tunneld" | "usr/bin/tunnelctl" | "etc/passwd" | "etc/group"
            );
            let library = f.ends_with(".so") || f.contains(".so.");
            !expected && !library
        })
        .collect();
    ensure!(
        others.is_empty(),
        "files that are neither the binaries, the user files nor libraries: {others:?}"
    );
    for lib in [
        "libc.so.6",
        "libssl.so.3",
        "libcrypto.so.3",
        "ld-linux-x86-64.so.2",
    ] {
        ensure!(
            files.iter().any(|f| f.ends_with(lib)),
            "{lib} missing from the image"
        );
    }
    ensure!(
        !image
            .entries
            .iter()
            .any(|e| e.starts_with("bin") || e.starts_with("usr/bin/sh") || e.starts_with("sbin")),
        "a shell or /bin found"
    );
    let passwd = image.read("etc/passwd")?;
    ensure!(
        passwd
            .lines()
            .any(|l| l.starts_with(&format!("tunneld:x:{TUNNELD_ID}:{TUNNELD_ID}:"))),
        "/etc/passwd: {passwd}"
    );
    let group = image.read("etc/group")?;
    ensure!(
        group
            .lines()
            .any(|l| l == format!("tunneld:x:{TUNNELD_ID}:")),
        "/etc/group: {group}"
    );

    // Both binaries run from the image (libraries and loader complete), and there is no shell.
    let [nofile, nproc] = ulimits()?;
    let run = ["run", "--rm", "--network", "none", &nofile, &nproc];
    let version = podman.run(&[&run[..], &[TAG, "--version"][..]].concat())?;
    ensure!(
        version.stdout.starts_with("tunneld "),
        "tunneld --version: {version}"
    );
    let ctl = podman.run(
        &[
            &run[..],
            &["--entrypoint", "/usr/bin/tunnelctl", TAG, "--version"][..],
        ]
        .concat(),
    )?;
    ensure!(
        ctl.stdout.starts_with("tunnelctl "),
        "tunnelctl --version: {ctl}"
    );
    // Straight to stderr, past the test harness's output capture, so CI logs show it on success.
    writeln!(
        std::io::stderr(),
        "container image {TAG}: {size} bytes ({:.1} MiB), {} files, user {user} (drops to tunneld), entrypoint {entrypoint}",
        size as f64 / 1048576.0,
        files.len()
    )?;
    let mut sh = podman.command();
    sh.args(&run[..])
        .args(["--entrypoint", "/bin/sh", TAG, "-c", "true"]);
    let sh = process::run(&mut sh, None, Duration::from_secs(60))?;
    ensure!(!sh.success(), "/bin/sh ran in the image: {sh}");
    Ok(())
}

#[test]
fn tunneld_from_the_image_serves_openconnect_as_the_unprivileged_tunneld_user() -> Result<()> {
    let podman = Podman::new()?;
    build(&podman)?;
    let topo = Topology::standard()?;
    let name = format!("tunneld-e2e-{}", std::process::id());
    let limits = ulimits()?;
    let env = podman.env_vars();
    let container = name.clone();
    // The flags of deploy/systemd/tunneld.service's `run`, as they are, except: the test's gateway
    // namespace instead of the host network, the daemon's directory as /etc/tunneld and its state
    // directory as /var/lib/tunneld, this machine's limits, and a name of its own.
    let unit_flags = unit_run_flags()?;
    let launcher = Launcher::new(move |info| {
        let dir = info.dir.display().to_string();
        let mut cmd = Command::new("podman");
        cmd.envs(env.clone()).arg("run");
        let mut flags = unit_flags.iter();
        while let Some(flag) = flags.next() {
            let value = || flags.clone().next().cloned().unwrap_or_default();
            match flag.as_str() {
                "--name" => {
                    cmd.args(["--name", &container]);
                    flags.next();
                }
                "--network" => {
                    cmd.arg(format!("--network=ns:/run/netns/{}", info.gw_ns));
                    flags.next();
                }
                "--ulimit" => {
                    cmd.args(&limits);
                    flags.next();
                }
                "--volume" => {
                    let v = value()
                        .replacen("/etc/tunneld:", &format!("{dir}:"), 1)
                        .replacen("/var/lib/tunneld:", &format!("{dir}/state:"), 1);
                    cmd.args(["--volume", &v]);
                    flags.next();
                }
                _ => {
                    cmd.arg(flag);
                }
            }
        }
        cmd.args(["--env", "RUST_LOG", "--env", "NO_COLOR"])
            .arg(TAG)
            .args(info.args);
        cmd
    });
    let mut gw = Gateway::start(
        &topo,
        GatewayConfig::new()
            .user("alice", "alice-pw")
            .set("server.state_dir", "/var/lib/tunneld")
            .set("auth.users_file", "/etc/tunneld/users")
            .set("control.socket", "/run/tunneld/control.sock")
            .daemon_arg("--drain-secs")
            .daemon_arg("1")
            .launcher(launcher),
    )?;
    gw.wait_for_log(&["dropped privileges"], Duration::from_secs(10))?;
    // The unit's CAP_BPF lets it load the TUN steering program before the drop, where the
    // engine's seccomp profile lets bpf() through with CAP_BPF. Podman 4.3's (Debian 12) only
    // does with CAP_SYS_ADMIN, which the unit does not grant: there the daemon must say that it
    // fell back to the TUN driver's flow steering, and serve all the same.
    // "TUN steering: by destination address" or "TUN steering program not loaded".
    let steering = gw.wait_for_log(&["TUN steering"], Duration::from_secs(1))?;
    let loaded = steering.contains("by destination address");
    let allowed = seccomp_allows_bpf_with_cap_bpf()?;
    ensure!(
        loaded == allowed,
        "seccomp lets bpf() through with CAP_BPF: {allowed}, but the daemon says: {steering}"
    );
    let pid = podman.container_pid(&name)?;
    eprintln!(
        "container process {pid}:\n{}",
        check_dropped(pid, TUNNELD_ID, TUNNELD_ID)?
    );

    // DTLS on, as a real client has it: the data then flows over UDP 443 through the container.
    let client = Client::connect(
        &topo,
        &gw,
        ClientOpts::password("alice", "alice-pw").dtls(true),
    )?;
    gw.wait_metric(
        "tunneld_sessions_active",
        &[("transport", "dtls")],
        1.0,
        Duration::from_secs(10),
    )?;
    let dtls_up = gw.metric_or_zero("tunneld_dtls_packets_total", &[("direction", "up")])?;
    client.ping(&topo, CORP_ADDR, 3)?;
    let dtls_up_after = gw.metric("tunneld_dtls_packets_total", &[("direction", "up")])?;
    ensure!(
        dtls_up_after >= dtls_up + 3.0,
        "pings did not go over DTLS: {dtls_up} -> {dtls_up_after}"
    );

    // The operator's tunnelctl, run in the container, reaches the control socket there.
    let status = podman.run(&["exec", &name, "/usr/bin/tunnelctl", "sessions"])?;
    ensure!(
        status.stdout.contains("alice"),
        "tunnelctl sessions: {status}"
    );

    // A reload (SIGHUP through the engine) works as the tunneld user: it re-reads the mounted
    // configuration and users file and the self-signed certificate in the state volume.
    podman.run(&["kill", "--signal", "HUP", &name])?;
    let line = gw.wait_for_log(&["configuration reload"], Duration::from_secs(10))?;
    ensure!(line.contains("configuration reloaded"), "reload: {line}");

    // `podman stop` sends the image's STOPSIGNAL (SIGTERM): the daemon drains and exits 0.
    podman.run(&["stop", "--time", "15", &name])?;
    let code = gw.wait_exit(Duration::from_secs(30))?;
    ensure!(code == Some(0), "podman run exited with {code:?}");
    Ok(())
}
