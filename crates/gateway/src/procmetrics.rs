//! The daemon's own CPU, memory, threads and open files as the standard Prometheus `process_*`
//! metrics, read from `/proc/self` at each scrape.
//!
//! Every Prometheus-instrumented server exports these, and they are how an operator watches the
//! open-files limit: each TCP session is one open file, so `process_open_fds` against
//! `process_max_fds` says how close the daemon is to refusing connections (`EMFILE`). They also
//! let the capacity harness read a server's CPU and memory over HTTP from another host
//! (`tunnel-bench --server-metrics`), where `/proc/<pid>` is out of reach.
//!
//! Why not the `prometheus` crate's own collector (feature `process`): it counts CPU in whole
//! seconds (an integer counter, truncated at each scrape), too coarse for a ten-second benchmark
//! at a fraction of a core, and it pulls in `procfs` for what is a few lines of parsing here. This
//! one reports CPU at the kernel's resolution (clock ticks, 10 ms) as a float, as the Go client
//! does.
//!
//! With `server.private_file_tables`, `/proc/self/fd` lists the main thread's table only; each
//! data-plane thread's own table is counted in `tunneld_thread_open_files{thread}` (the threads
//! register themselves with [`ProcessCollector::add_thread_table`]), each against the same
//! `process_max_fds`.

use std::sync::{Arc, Mutex, PoisonError};

use prometheus::core::{Collector, Desc, Describer as _};
use prometheus::proto::MetricFamily;
use prometheus::{Counter, Gauge, IntGauge, IntGaugeVec, Opts};

/// What `/proc/self/stat` says (the fields used here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stat {
    /// User plus system CPU time of every thread, in clock ticks.
    pub(crate) cpu_ticks: u64,
    /// Threads in the process.
    pub(crate) threads: i64,
    /// Start time after boot, in clock ticks.
    pub(crate) start_ticks: u64,
    /// Virtual memory size, bytes.
    pub(crate) vsize: u64,
    /// Resident set size, pages.
    pub(crate) rss_pages: u64,
}

/// Parses the text of `/proc/<pid>/stat`.
pub(crate) fn parse_stat(text: &str) -> Option<Stat> {
    // The command name is in parentheses and may hold spaces or parentheses: the other fields
    // start after the last ')'.
    let rest = text.get(text.rfind(')')? + 1..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    // Fields after the name, from 0 (proc(5) numbers them from 3): state(0) ... utime(11)
    // stime(12) ... num_threads(17) ... starttime(19) vsize(20) rss(21).
    Some(Stat {
        cpu_ticks: num(11)?.checked_add(num(12)?)?,
        threads: i64::try_from(num(17)?).ok()?,
        start_ticks: num(19)?,
        vsize: num(20)?,
        rss_pages: num(21)?,
    })
}

/// The boot time (`btime`) from the text of `/proc/stat`, in seconds since the epoch.
fn parse_btime(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// Open files in the table `/proc/self/...` shows at `dir` (`/proc/self/fd`, or a thread's
/// `/proc/self/task/<tid>/fd`). The listing itself holds one descriptor of the table it reads
/// while it runs (the caller's table, which is the main one: scrapes run on the main runtime), so
/// it is not counted there.
fn count_fds(dir: &str, own_table: bool) -> Option<i64> {
    let n = std::fs::read_dir(dir).ok()?.count();
    let n = i64::try_from(n).ok()?;
    Some(if own_table { n.saturating_sub(1) } else { n })
}

/// The soft limit on open files (`RLIMIT_NOFILE`), if there is one.
fn max_fds() -> Option<i64> {
    crate::workers::open_files_limit()
        .ok()
        .filter(|l| l.rlim_cur != libc::RLIM_INFINITY)
        .and_then(|l| i64::try_from(l.rlim_cur).ok())
}

fn sysconf(name: libc::c_int) -> Option<u64> {
    #[allow(unsafe_code)]
    // SAFETY: sysconf only reads a system constant.
    let v = unsafe { libc::sysconf(name) };
    u64::try_from(v).ok().filter(|&v| v > 0)
}

/// Open files of the daemon (see [`ProcessCollector::open_files`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenFiles {
    /// In the main file table (all of them without `server.private_file_tables`).
    pub main: Option<i64>,
    /// The open-files limit (soft `RLIMIT_NOFILE`), which caps each table.
    pub limit: Option<i64>,
    /// (thread, files) of each data-plane thread with a private table.
    pub threads: Vec<(usize, i64)>,
}

/// Data-plane threads with a private file table: (thread number, kernel thread id).
type Tables = Arc<Mutex<Vec<(usize, libc::pid_t)>>>;

/// The `process_*` collector (see the module doc). Register it once per registry.
#[derive(Debug, Clone)]
pub struct ProcessCollector {
    descs: Vec<Desc>,
    tables: Tables,
    ticks_per_s: f64,
    page_size: u64,
}

const CPU: (&str, &str) = (
    "process_cpu_seconds_total",
    "Total user and system CPU time spent in seconds.",
);
const OPEN_FDS: (&str, &str) = ("process_open_fds", "Number of open file descriptors.");
const MAX_FDS: (&str, &str) = (
    "process_max_fds",
    "Maximum number of open file descriptors.",
);
const RSS: (&str, &str) = (
    "process_resident_memory_bytes",
    "Resident memory size in bytes.",
);
const VSIZE: (&str, &str) = (
    "process_virtual_memory_bytes",
    "Virtual memory size in bytes.",
);
const START: (&str, &str) = (
    "process_start_time_seconds",
    "Start time of the process since unix epoch in seconds.",
);
const THREADS: (&str, &str) = ("process_threads", "Number of OS threads in the process.");
const THREAD_FDS: (&str, &str) = (
    "tunneld_thread_open_files",
    "Open files in a data-plane thread's private file table (server.private_file_tables).",
);

impl ProcessCollector {
    /// A collector of this process.
    #[must_use]
    pub fn new() -> Self {
        let descs = [CPU, OPEN_FDS, MAX_FDS, RSS, VSIZE, START, THREADS]
            .iter()
            .filter_map(|(name, help)| Opts::new(*name, *help).describe().ok())
            .chain(
                Opts::new(THREAD_FDS.0, THREAD_FDS.1)
                    .variable_label("thread")
                    .describe()
                    .ok(),
            )
            .collect();
        Self {
            descs,
            tables: Arc::default(),
            ticks_per_s: sysconf(libc::_SC_CLK_TCK).unwrap_or(100) as f64,
            page_size: sysconf(libc::_SC_PAGESIZE).unwrap_or(4096),
        }
    }

    /// Counts the file table of the calling thread, data-plane thread `thread`, which has just
    /// unshared it (`server.private_file_tables`).
    pub fn add_thread_table(&self, thread: usize) {
        #[allow(unsafe_code)]
        // SAFETY: gettid has no arguments and cannot fail.
        let tid = unsafe { libc::gettid() };
        self.tables
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((thread, tid));
    }

    /// Open files now: in the main table, the limit, and in each data-plane thread's private
    /// table (thread number, files), for `tunnelctl status`.
    #[must_use]
    pub fn open_files(&self) -> OpenFiles {
        OpenFiles {
            main: count_fds("/proc/self/fd", true),
            limit: max_fds(),
            threads: self.thread_tables(),
        }
    }

    fn thread_tables(&self) -> Vec<(usize, i64)> {
        let tables = self
            .tables
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        tables
            .into_iter()
            .filter_map(|(thread, tid)| {
                count_fds(&format!("/proc/self/task/{tid}/fd"), false).map(|n| (thread, n))
            })
            .collect()
    }

    fn families(&self) -> Vec<MetricFamily> {
        let mut out = Vec::with_capacity(8);
        let mut gauge = |(name, help): (&str, &str), v: Option<i64>| {
            if let (Some(v), Ok(g)) = (v, IntGauge::new(name, help)) {
                g.set(v);
                out.extend(g.collect());
            }
        };
        gauge(OPEN_FDS, count_fds("/proc/self/fd", true));
        gauge(MAX_FDS, max_fds());
        let stat = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .as_deref()
            .and_then(parse_stat);
        if let Some(s) = stat {
            gauge(
                RSS,
                i64::try_from(s.rss_pages.saturating_mul(self.page_size)).ok(),
            );
            gauge(VSIZE, i64::try_from(s.vsize).ok());
            gauge(THREADS, Some(s.threads));
            if let Ok(c) = Counter::new(CPU.0, CPU.1) {
                c.inc_by(s.cpu_ticks as f64 / self.ticks_per_s);
                out.extend(c.collect());
            }
            let btime = std::fs::read_to_string("/proc/stat")
                .ok()
                .as_deref()
                .and_then(parse_btime);
            if let (Some(b), Ok(g)) = (btime, Gauge::new(START.0, START.1)) {
                g.set(b as f64 + s.start_ticks as f64 / self.ticks_per_s);
                out.extend(g.collect());
            }
        }
        let tables = self.thread_tables();
        if !tables.is_empty() {
            if let Ok(v) = IntGaugeVec::new(Opts::new(THREAD_FDS.0, THREAD_FDS.1), &["thread"]) {
                for (thread, n) in tables {
                    v.with_label_values(&[&thread.to_string()]).set(n);
                }
                out.extend(v.collect());
            }
        }
        out
    }
}

impl Default for ProcessCollector {
    fn default() -> Self {
        Self::new()
    }
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.families()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_the_last_parenthesis() {
        // A command name with a space and a parenthesis, as `prctl` may set it.
        let text = "4242 (tun d) x) S 1 4242 4242 0 -1 4194560 2500 0 0 0 731 269 0 0 20 0 \
                    7 0 123456 987654321 3210 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 \
                    17 1 0 0 0 0 0";
        assert_eq!(
            parse_stat(text),
            Some(Stat {
                cpu_ticks: 1000,
                threads: 7,
                start_ticks: 123_456,
                vsize: 987_654_321,
                rss_pages: 3210,
            })
        );
        assert_eq!(parse_stat("4242 (truncated) S 1 2"), None);
        assert_eq!(
            parse_btime("cpu 1 2 3\nbtime 1764400000\nprocesses 9\n"),
            Some(1_764_400_000)
        );
    }

    /// The value of the one sample of family `name`, with its label pairs.
    fn sample(fams: &[MetricFamily], name: &str) -> Vec<(Vec<(String, String)>, f64)> {
        fams.iter()
            .filter(|f| f.get_name() == name)
            .flat_map(|f| {
                let counter = f.get_field_type() == prometheus::proto::MetricType::COUNTER;
                f.get_metric().iter().map(move |m| (counter, m))
            })
            .map(|(counter, m)| {
                let labels = m
                    .get_label()
                    .iter()
                    .map(|l| (l.get_name().to_owned(), l.get_value().to_owned()))
                    .collect();
                let v = if counter {
                    m.get_counter().get_value()
                } else {
                    m.get_gauge().get_value()
                };
                (labels, v)
            })
            .collect()
    }

    fn one(fams: &[MetricFamily], name: &str) -> f64 {
        let s = sample(fams, name);
        assert_eq!(s.len(), 1, "{name}: {s:?}");
        s[0].1
    }

    #[test]
    fn the_process_is_measured_and_files_are_counted() {
        let c = ProcessCollector::new();
        let before = c.collect();
        // Burn some CPU so that the counter moves by at least a few ticks.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(150) {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let after = c.collect();
        // Other tests open and close files in parallel: the exact count is checked below, in a
        // table of its own.
        assert!(one(&after, OPEN_FDS.0) >= 3.0);
        let cpu = one(&after, CPU.0) - one(&before, CPU.0);
        assert!(cpu >= 0.05, "{cpu} s of CPU after 150 ms of spinning");
        let lim = crate::workers::open_files_limit().unwrap();
        assert_eq!(one(&after, MAX_FDS.0), lim.rlim_cur as f64);
        let rss = one(&after, RSS.0);
        assert!(rss > 1e6 && rss <= one(&after, VSIZE.0), "rss {rss}");
        assert!(one(&after, THREADS.0) >= 1.0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let started = one(&after, START.0);
        assert!(
            started <= now + 1.0 && started > now - 3600.0,
            "{started} vs {now}"
        );
        // No private tables registered: no per-thread series.
        assert!(sample(&after, THREAD_FDS.0).is_empty());
    }

    /// Descriptors open in the calling thread's table, by asking for each number's flags.
    fn open_by_fcntl() -> i64 {
        (0..65_536)
            .filter(|&fd| {
                #[allow(unsafe_code)]
                // SAFETY: F_GETFD only reads the descriptor's flags; a closed one gives EBADF.
                let rc = unsafe { libc::fcntl(fd, libc::F_GETFD) };
                rc != -1
            })
            .count() as i64
    }

    #[test]
    fn open_files_are_counted_exactly() {
        std::thread::spawn(|| {
            #[allow(unsafe_code)]
            // SAFETY: unshare only changes this thread's file table, so that no other test's
            // files come and go in it.
            let rc = unsafe { libc::unshare(libc::CLONE_FILES) };
            assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
            let here = "/proc/thread-self/fd";
            assert_eq!(count_fds(here, true), Some(open_by_fcntl()));
            let before = open_by_fcntl();
            let files: Vec<std::fs::File> = (0..25)
                .map(|_| std::fs::File::open("/proc/self/stat").unwrap())
                .collect();
            assert_eq!(count_fds(here, true), Some(before + 25));
            assert_eq!(open_by_fcntl(), before + 25);
            drop(files);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_thread_with_a_private_table_is_counted_apart_and_exactly() {
        let c = ProcessCollector::new();
        let (step_tx, step_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let c2 = c.clone();
        let t = std::thread::spawn(move || {
            #[allow(unsafe_code)]
            // SAFETY: unshare only changes this thread's file table.
            let rc = unsafe { libc::unshare(libc::CLONE_FILES) };
            assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
            c2.add_thread_table(3);
            step_tx.send(()).unwrap();
            go_rx.recv().unwrap();
            // Nothing else opens files in this table: the count moves by exactly these.
            let files: Vec<std::fs::File> = (0..40)
                .map(|_| std::fs::File::open("/proc/self/stat").unwrap())
                .collect();
            step_tx.send(()).unwrap();
            go_rx.recv().unwrap();
            drop(files);
        });
        let per_thread = |c: &ProcessCollector| {
            let s = sample(&c.collect(), THREAD_FDS.0);
            assert_eq!(s.len(), 1, "{s:?}");
            assert_eq!(s[0].0, vec![("thread".to_owned(), "3".to_owned())]);
            s[0].1
        };
        step_rx.recv().unwrap();
        let before = per_thread(&c);
        go_tx.send(()).unwrap();
        step_rx.recv().unwrap();
        let after = per_thread(&c);
        assert_eq!(after - before, 40.0, "{before} -> {after}");
        go_tx.send(()).unwrap();
        t.join().unwrap();
        // The thread is gone: its table is no longer reported.
        assert!(sample(&c.collect(), THREAD_FDS.0)
            .first()
            .is_none_or(|s| s.1 == 0.0));
    }
}
