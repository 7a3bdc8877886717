//! Running helper programs (ip, openconnect, curl, openssl, python3) with a deadline.
//!
//! Output goes to files, never to pipes that nobody drains, so a chatty program cannot block, and a
//! program that hangs is killed when its deadline passes instead of hanging the test.

use std::fmt;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// What a finished command left behind.
#[derive(Debug, Clone)]
pub struct Output {
    /// The command line, for messages.
    pub command: String,
    /// Exit code; `None` when it died from a signal.
    pub code: Option<i32>,
    /// Everything it wrote to stdout.
    pub stdout: String,
    /// Everything it wrote to stderr.
    pub stderr: String,
}

impl Output {
    /// True when the command exited with status 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Turns a non-zero exit into an error that shows the command and both outputs.
    pub fn check(self) -> Result<Self> {
        if self.success() {
            Ok(self)
        } else {
            bail!("command failed: {self}")
        }
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` exited with {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command,
            self.code,
            tail(&self.stdout, 40),
            tail(&self.stderr, 40)
        )
    }
}

/// Renders a command line for messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

static SCRATCH: AtomicU64 = AtomicU64::new(0);

fn scratch_path(tag: &str) -> PathBuf {
    let n = SCRATCH.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("e2e-{}-{n}.{tag}", std::process::id()))
}

/// A resource limit of process `pid` as `/proc/<pid>/limits` shows it, by the name it has there
/// (`Max open files`, `Max processes`): (soft, hard).
pub fn limit(pid: u32, name: &str) -> Result<(u64, u64)> {
    let limits = fs::read_to_string(format!("/proc/{pid}/limits"))?;
    let rest = limits
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .with_context(|| format!("no {name:?} line in /proc/{pid}/limits"))?;
    let words: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| -> Result<u64> {
        words
            .get(i)
            .with_context(|| format!("short line: {name}{rest}"))?
            .parse()
            .with_context(|| format!("not a number: {name}{rest}"))
    };
    Ok((num(0)?, num(1)?))
}

/// The open-files limit of process `pid`: (soft, hard).
pub fn open_files_limit(pid: u32) -> Result<(u64, u64)> {
    limit(pid, "Max open files")
}

/// Runs `cmd` to completion (stdin closed, or fed `input`), killing it if it outlives `timeout`.
pub fn run(cmd: &mut Command, input: Option<&str>, timeout: Duration) -> Result<Output> {
    let command = describe(cmd);
    let out_path = scratch_path("out");
    let err_path = scratch_path("err");
    let in_path = scratch_path("in");
    let stdin = match input {
        Some(text) => {
            fs::write(&in_path, text)?;
            Stdio::from(File::open(&in_path)?)
        }
        None => Stdio::null(),
    };
    cmd.stdin(stdin)
        .stdout(File::create(&out_path)?)
        .stderr(File::create(&err_path)?);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start `{command}`"))?;
    let status = wait_timeout(&mut child, timeout)?;
    let stdout = fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = fs::read_to_string(&err_path).unwrap_or_default();
    for p in [&out_path, &err_path, &in_path] {
        let _ = fs::remove_file(p);
    }
    match status {
        Some(status) => Ok(Output { command, code: status.code(), stdout, stderr }),
        None => bail!(
            "`{command}` did not finish within {timeout:?}; killed\n--- stdout ---\n{}\n--- stderr ---\n{}",
            tail(&stdout, 40),
            tail(&stderr, 40)
        ),
    }
}

/// Waits for `child` up to `timeout`; on timeout kills it, reaps it and returns `None`.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends a signal by name (`INT`, `TERM`, `USR2`, `KILL`, ...) to one process id, via kill(1).
pub fn signal(pid: u32, sig: &str) -> Result<()> {
    let out = run(
        Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string()),
        None,
        Duration::from_secs(5),
    )?;
    out.check().map(|_| ())
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    all[start..].join("\n")
}

/// Reads a log file, dropping ANSI colour escapes so that `user=alice` matches however it was printed.
pub fn read_log(path: &Path) -> String {
    let raw = fs::read(path).unwrap_or_default();
    strip_ansi(&String::from_utf8_lossy(&raw))
}

/// Removes `ESC [ ... letter` sequences.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A program that runs in the background for the length of a test (a server in the corp namespace,
/// a long ping). It is killed on drop.
#[derive(Debug)]
pub struct Background {
    child: Child,
    what: String,
    log: PathBuf,
}

impl Background {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(cmd: &mut Command, log: PathBuf) -> Result<Self> {
        let what = describe(cmd);
        let file = File::create(&log)?;
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start `{what}`"))?;
        Ok(Self { child, what, log })
    }

    /// The process id (the program itself: `ip netns exec` execs it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it has printed so far.
    pub fn log(&self) -> String {
        read_log(&self.log)
    }

    /// Waits for it to exit by itself; returns its exit code, or an error with its output on timeout.
    pub fn wait(&mut self, timeout: Duration) -> Result<Option<i32>> {
        match wait_timeout(&mut self.child, timeout)? {
            Some(status) => Ok(status.code()),
            None => bail!(
                "`{}` did not finish within {timeout:?}; output:\n{}",
                self.what,
                tail(&self.log(), 30)
            ),
        }
    }

    /// Exit code if it has exited already.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Appends a program's log to an error, after the error's own message (so the reason comes first).
pub fn with_log(err: anyhow::Error, label: &str, log: &str) -> anyhow::Error {
    anyhow::anyhow!("{err:#}\n----- {label} -----\n{log}\n----- end {label} -----")
}
