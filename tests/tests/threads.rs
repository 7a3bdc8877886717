//! `server.threads`: data-plane threads, each with its own listener and TUN queue, keep a session's
//! packets on the session's thread; with `server.private_file_tables` their sockets live outside
//! the main file table (which is what lets one process hold more sessions than its open-files
//! limit).

use std::collections::BTreeMap;
use std::fs;
use std::thread;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use e2e::bench::{add_source_addresses, run_bench, Login};
use e2e::{wait_until, Gateway, GatewayConfig, Topology, CORP_ADDR};

const USER: &str = "bench";
const PASSWORD: &str = "bench-pw";

/// Open descriptors per file table of `pid`: each thread's `/proc/<pid>/task/<tid>/fd` lists its
/// table; threads sharing a table list the same set. Keyed by (thread name, tid).
fn fds_per_thread(pid: u32) -> Result<BTreeMap<(String, u32), usize>> {
    let mut out = BTreeMap::new();
    for task in fs::read_dir(format!("/proc/{pid}/task"))? {
        let task = task?;
        let tid: u32 = task.file_name().to_string_lossy().parse()?;
        let comm = fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let Ok(fds) = fs::read_dir(task.path().join("fd")) else {
            continue;
        };
        out.insert((comm.trim().to_owned(), tid), fds.count());
    }
    Ok(out)
}

/// A gateway with two data-plane threads and the harness's user.
fn two_threads() -> GatewayConfig {
    GatewayConfig::new()
        .user(USER, PASSWORD)
        .set("server.threads", 2)
}

/// Arguments of a `hold` run: 200 sessions over two source addresses, each pinging the corp
/// host every 500 ms for 6 s.
fn hold_args(topo: &Topology) -> Result<Vec<String>> {
    let sources = add_source_addresses(topo, "dev", 100, 2)?;
    let mut args = vec![
        "--target".to_owned(),
        CORP_ADDR.to_owned(),
        "--sessions".to_owned(),
        "200".to_owned(),
        "--duration".to_owned(),
        "6".to_owned(),
        "--trickle-ms".to_owned(),
        "500".to_owned(),
    ];
    for s in &sources {
        args.extend(["--source".to_owned(), s.clone()]);
    }
    Ok(args)
}

fn run_hold(topo: &Topology, gw: &Gateway, args: &[String]) -> Result<e2e::bench::BenchRun> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_bench(
        topo,
        gw,
        "dev",
        Login {
            user: USER,
            password: PASSWORD,
        },
        "hold",
        &args,
        Duration::from_secs(120),
    )
}

fn check_hold(run: &e2e::bench::BenchRun) -> Result<()> {
    ensure!(
        run.report["ok"] == true,
        "harness reported problems: {}",
        run.output
    );
    ensure!(run.num("/connect/up") == 200.0, "{}", run.output);
    ensure!(
        run.num("/action/probes_unanswered") == 0.0,
        "{}",
        run.output
    );
    Ok(())
}

/// The TUN queues `pid` holds open: descriptors whose fdinfo names the device `tun`.
fn tun_queues(pid: u32, tun: &str) -> Result<usize> {
    let mut n = 0;
    for fd in fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        let info = fs::read_to_string(fd?.path()).unwrap_or_default();
        if info.lines().any(|l| l == format!("iff:\t{tun}")) {
            n += 1;
        }
    }
    Ok(n)
}

#[test]
fn threads_read_their_sessions_replies_from_their_own_tun_queues() -> Result<()> {
    let topo = Topology::standard()?;
    let gw = Gateway::start(&topo, two_threads())?;
    let pid = gw.pid().context("tunneld pid")?;
    let args = hold_args(&topo)?;
    let per_thread = |gw: &Gateway| -> Result<[f64; 2]> {
        Ok([
            gw.metric_or_zero("tunneld_thread_tunnels", &[("thread", "0")])?,
            gw.metric_or_zero("tunneld_thread_tunnels", &[("thread", "1")])?,
        ])
    };
    let run = thread::scope(|s| -> Result<e2e::bench::BenchRun> {
        let hold = s.spawn(|| run_hold(&topo, &gw, &args));
        // While the sessions hold: each thread carries the connections it accepted (the kernel
        // spreads 200 over two listeners; all on one would be a 2^-199 chance), and status says
        // the same.
        let seen = wait_until(
            Duration::from_secs(30),
            "200 tunnels over the two threads",
            || Ok(per_thread(&gw)?.iter().sum::<f64>() == 200.0),
        )
        .and_then(|()| {
            let [a, b] = per_thread(&gw)?;
            ensure!(a > 0.0 && b > 0.0, "tunnels per thread: {a} / {b}");
            let status = gw.tunnelctl_json(&["status"])?;
            let listed: Vec<u64> = serde_json::from_value(status["tunnels_per_thread"].clone())?;
            ensure!(
                listed.iter().sum::<u64>() == 200 && listed.len() == 2,
                "status: {listed:?}"
            );
            Ok(())
        });
        let run = hold
            .join()
            .map_err(|_| anyhow::anyhow!("the hold thread panicked"))??;
        seen.with_context(|| run.output.to_string())?;
        Ok(run)
    })?;
    check_hold(&run)?;
    ensure!(per_thread(&gw)? == [0.0, 0.0], "tunnels left after logout");
    // The main runtime's queue plus one per thread.
    let queues = tun_queues(pid, "tg0")?;
    ensure!(queues == 3, "expected 3 TUN queues open, found {queues}");
    // Every reply was steered to the queue of its session's thread: the steering program sends a
    // packet to the thread whose stripe of the pool holds its destination, and each session took
    // its address from its own thread's stripe. Unsteered, two packets in three would cross.
    let down = gw.metric("tunneld_packets_total", &[("direction", "down")])?;
    let handoffs = gw.metric("tunneld_downstream_handoffs_total", &[])?;
    ensure!(
        down >= 1000.0,
        "only {down} downstream packets: {}",
        run.output
    );
    ensure!(
        handoffs == 0.0,
        "{handoffs} of {down} downstream packets crossed threads"
    );
    Ok(())
}

/// A cookie reconnect lands on whichever thread's listener the kernel picks (about half of them
/// on the other thread, with two), while the session keeps its address and so its pool stripe.
/// The reconnecting thread steers the address to its own queue: the replies after the storm do not
/// cross threads either. Also with private file tables (the steering map's descriptor must be in
/// each thread's table).
#[test]
fn replies_follow_a_session_that_reconnects_on_the_other_thread() -> Result<()> {
    for private in [false, true] {
        storm_and_count_handoffs(private)
            .with_context(|| format!("server.private_file_tables = {private}"))?;
    }
    Ok(())
}

fn storm_and_count_handoffs(private_file_tables: bool) -> Result<()> {
    let topo = Topology::standard()?;
    let gw = Gateway::start(
        &topo,
        two_threads().set("server.private_file_tables", private_file_tables),
    )?;
    let sources = add_source_addresses(&topo, "dev", 100, 2)?;
    let mut args = vec![
        "--target",
        CORP_ADDR,
        "--sessions",
        "200",
        "--mode",
        "cookie",
    ];
    for s in &sources {
        args.extend(["--source", s.as_str()]);
    }
    let run = run_bench(
        &topo,
        &gw,
        "dev",
        Login {
            user: USER,
            password: PASSWORD,
        },
        "storm",
        &args,
        Duration::from_secs(120),
    )?;
    ensure!(
        run.report["ok"] == true && run.num("/action/recovered") == 200.0,
        "storm: {}",
        run.output
    );
    ensure!(
        run.num("/action/probes_unanswered") == 0.0,
        "{}",
        run.output
    );
    let moved = gw.metric_or_zero("tunneld_steering_updates_total", &[])?;
    ensure!(
        moved >= 20.0,
        "only {moved} of 200 reconnects landed on the other thread: {}",
        gw.metrics()?
    );
    let down = gw.metric("tunneld_packets_total", &[("direction", "down")])?;
    let handoffs = gw.metric("tunneld_downstream_handoffs_total", &[])?;
    ensure!(
        handoffs == 0.0,
        "{handoffs} of {down} downstream packets crossed threads after {moved} sessions moved"
    );
    Ok(())
}

#[test]
fn private_file_tables_carry_sessions_outside_the_main_table() -> Result<()> {
    let topo = Topology::standard()?;
    let gw = Gateway::start(&topo, two_threads().set("server.private_file_tables", true))?;
    let pid = gw.pid().context("tunneld pid")?;
    let args = hold_args(&topo)?;
    let run = thread::scope(|scope| -> Result<_> {
        let bench = scope.spawn(|| run_hold(&topo, &gw, &args));
        // While all 200 sessions are held: their sockets are in the threads' own tables,
        // not in the main one.
        gw.wait_metric(
            "tunneld_sessions_active",
            &[],
            200.0,
            Duration::from_secs(60),
        )?;
        let tables = fds_per_thread(pid)?;
        let main = fs::read_dir(format!("/proc/{pid}/fd"))?.count();
        let own: Vec<usize> = tables
            .iter()
            .filter(|((name, _), _)| name.starts_with("tunneld-dp-"))
            .map(|(_, n)| *n)
            .collect();
        ensure!(own.len() == 2, "expected 2 data-plane threads: {tables:?}");
        ensure!(
            main < 150,
            "the main file table holds {main} descriptors with 200 sessions up: {tables:?}"
        );
        ensure!(
            own.iter().sum::<usize>() >= 200,
            "the threads' tables hold {own:?} descriptors, main {main}: {tables:?}"
        );
        // The metrics count each table: the main one in process_open_fds, each thread's in
        // tunneld_thread_open_files (read a moment apart from /proc: a few may differ).
        let status = gw.tunnelctl_json(&["status"])?;
        let listed: Vec<u64> = serde_json::from_value(status["open_files_per_thread"].clone())?;
        ensure!(
            listed.len() == 2 && listed.iter().sum::<u64>() >= 200,
            "status open_files_per_thread: {status}"
        );
        let text = gw.tunnelctl(&["status"])?.check()?.stdout;
        ensure!(
            text.contains("open files:  main "),
            "tunnelctl status: {text}"
        );
        let text = gw.metrics()?;
        let near = |metric: Option<f64>, want: usize| {
            metric.is_some_and(|m| (m - want as f64).abs() <= 4.0)
        };
        let open = e2e::metric_value(&text, "process_open_fds", &[]);
        ensure!(
            near(open, main),
            "process_open_fds {open:?}, main table {main}"
        );
        for ((name, _), n) in &tables {
            if let Some(t) = name.strip_prefix("tunneld-dp-") {
                let m = e2e::metric_value(&text, "tunneld_thread_open_files", &[("thread", t)]);
                ensure!(
                    near(m, *n),
                    "tunneld_thread_open_files{{thread={t}}} {m:?}, /proc {n}"
                );
            }
        }
        bench
            .join()
            .map_err(|_| anyhow::anyhow!("bench thread panicked"))?
    })?;
    check_hold(&run)
}

/// Each thread listens with `SO_REUSEPORT`, which would let a second daemon share the port with a
/// running one; tunneld checks that the address is free first and refuses, as a single listener
/// did, and the running daemon keeps its listeners.
#[test]
fn a_second_daemon_on_the_same_address_is_refused() -> Result<()> {
    let topo = Topology::standard()?;
    let gw = Gateway::start(&topo, two_threads())?;
    let dir = topo.subdir("second")?;
    let second = gw
        .config()
        .clone()
        .set("network.tun_name", "tg9")
        .set("server.state_dir", dir.display().to_string())
        .set(
            "control.socket",
            dir.join("control.sock").display().to_string(),
        )
        .set("metrics.listen", "off");
    let config = dir.join("tunneld.toml");
    fs::write(&config, second.to_toml())?;
    let out = topo.sh_in(
        "gw",
        &format!(
            "timeout 20 {} --config {} 2>&1",
            e2e::gateway::tunneld_bin()?.display(),
            config.display()
        ),
        Duration::from_secs(30),
    )?;
    ensure!(
        out.code == Some(1)
            && out
                .stdout
                .contains(&format!("cannot listen on {} (server.listen)", gw.listen()))
            && out.stdout.contains("in use"),
        "second daemon: {out}"
    );
    // The first still holds its two listeners, and nobody else's.
    let ss = topo.run_in("gw", &["ss", "-Hltn", &format!("sport = :{}", 443)])?;
    ensure!(
        ss.stdout.lines().count() == 2,
        "listeners on :443 in the gateway's namespace:\n{}",
        ss.stdout
    );
    let status = gw.tunnelctl_json(&["status"])?;
    ensure!(status["ready"] == true, "status: {status}");
    Ok(())
}

/// A daemon started with a low soft open-files limit (a shell's or a unit's default is 1,024)
/// takes its hard limit at start, so its sessions are bounded by what the host allows and not by
/// that default: started here with a soft limit of 128, it holds 200 sessions. It also says when
/// even the hard limit holds fewer sessions than `server.max_sessions` (20,000 here, against the
/// default 64,000).
#[test]
fn a_low_soft_open_files_limit_is_raised_at_start() -> Result<()> {
    let topo = Topology::standard()?;
    let hard = e2e::process::open_files_limit(std::process::id())?.1;
    let launcher = e2e::Launcher::open_files_limit(&format!("128:{hard}"))?;
    let gw = Gateway::start(&topo, two_threads().launcher(launcher))?;
    let pid = gw.pid().context("tunneld pid")?;
    let limits = e2e::process::open_files_limit(pid)?;
    ensure!(limits == (hard, hard), "the daemon's limits: {limits:?}");
    let log = gw.log();
    ensure!(
        log.contains("raised the open-files limit to its hard limit")
            && log.contains("from=128")
            && log.contains(&format!("to={hard}")),
        "no line about the raised limit:\n{log}"
    );
    ensure!(
        hard >= 64_000 || log.contains("the open-files limit holds only about this many sessions"),
        "no warning that {hard} files hold fewer than 64000 sessions:\n{log}"
    );
    let args = hold_args(&topo)?;
    check_hold(&run_hold(&topo, &gw, &args)?)
}
