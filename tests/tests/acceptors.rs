//! `server.acceptor_threads`: acceptor threads with their own file tables carry sessions like the
//! default listener, and their sockets live outside the main file table (which is what lets one
//! process hold more sessions than its open-files limit).

use std::collections::BTreeMap;
use std::fs;
use std::thread;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use e2e::bench::{add_source_addresses, run_bench, Login};
use e2e::{Gateway, GatewayConfig, Topology, CORP_ADDR};

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

#[test]
fn acceptor_threads_carry_sessions_in_their_own_file_tables() -> Result<()> {
    let topo = Topology::standard()?;
    let gw = Gateway::start(
        &topo,
        GatewayConfig::new()
            .user(USER, PASSWORD)
            .set("server.acceptor_threads", 2),
    )?;
    let pid = gw.pid().context("tunneld pid")?;
    let sources = add_source_addresses(&topo, "dev", 100, 2)?;
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
    let run = thread::scope(|scope| -> Result<_> {
        let bench = scope.spawn(|| {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_bench(
                &topo,
                &gw,
                "dev",
                Login {
                    user: USER,
                    password: PASSWORD,
                },
                "hold",
                &args,
                Duration::from_secs(120),
            )
        });
        // While all 200 sessions are held: their sockets are in the acceptor threads' tables,
        // not in the main one.
        gw.wait_metric(
            "tunneld_sessions_active",
            &[],
            200.0,
            Duration::from_secs(60),
        )?;
        let tables = fds_per_thread(pid)?;
        let main = fs::read_dir(format!("/proc/{pid}/fd"))?.count();
        let acceptor: Vec<usize> = tables
            .iter()
            .filter(|((name, _), _)| name.starts_with("tunneld-accept"))
            .map(|(_, n)| *n)
            .collect();
        ensure!(
            acceptor.len() == 2,
            "expected 2 acceptor threads: {tables:?}"
        );
        ensure!(
            main < 150,
            "the main file table holds {main} descriptors with 200 sessions up: {tables:?}"
        );
        ensure!(
            acceptor.iter().sum::<usize>() >= 200,
            "acceptor tables hold {acceptor:?} descriptors, main {main}: {tables:?}"
        );
        bench
            .join()
            .map_err(|_| anyhow::anyhow!("bench thread panicked"))?
    })?;
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
