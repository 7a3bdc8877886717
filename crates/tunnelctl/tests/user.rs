//! Runs the built `tunnelctl` binary against temporary users files and checks the results with the
//! gateway's own [`UserDb`], the code the daemon authenticates with.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use tunnel_gateway::users::{UserDb, VerifyOutcome};

/// Runs `tunnelctl ARGS` with `stdin` fed to it.
fn tunnelctl(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tunnelctl"))
        .args(args)
        .env_remove("TUNNELD_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tunnelctl");
    // tunnelctl may exit before reading stdin (e.g. "user exists"): a closed pipe is not an error.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child.wait_with_output().unwrap()
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "tunnelctl failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn fails_with(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, got success");
    assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn add_passwd_del_round_trip_verifies_with_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users");
    let f = path_str(&file);

    let out = tunnelctl(
        &[
            "user",
            "add",
            "alice",
            "--group",
            "staff",
            "--users-file",
            f,
            "--password-stdin",
        ],
        "s3cret pass\n",
    );
    ok(&out);
    let db = UserDb::load(&file).unwrap();
    assert_eq!(
        db.verify("alice", "s3cret pass"),
        VerifyOutcome::Ok {
            group: Some("staff".into())
        }
    );
    assert_eq!(
        db.verify("alice", "s3cret pass\n"),
        VerifyOutcome::BadPassword
    );

    // Adding again fails and changes nothing.
    let before = std::fs::read_to_string(&file).unwrap();
    let out = tunnelctl(
        &[
            "user",
            "add",
            "alice",
            "--users-file",
            f,
            "--password-stdin",
        ],
        "other\n",
    );
    fails_with(&out, "already exists");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), before);

    // passwd keeps the group and changes the password (CRLF stripped too).
    let out = tunnelctl(
        &[
            "user",
            "passwd",
            "alice",
            "--users-file",
            f,
            "--password-stdin",
        ],
        "n3w\r\n",
    );
    ok(&out);
    let db = UserDb::load(&file).unwrap();
    assert_eq!(
        db.verify("alice", "n3w"),
        VerifyOutcome::Ok {
            group: Some("staff".into())
        }
    );
    assert_eq!(
        db.verify("alice", "s3cret pass"),
        VerifyOutcome::BadPassword
    );

    // passwd of an unknown user fails.
    let out = tunnelctl(
        &[
            "user",
            "passwd",
            "bob",
            "--users-file",
            f,
            "--password-stdin",
        ],
        "x\n",
    );
    fails_with(&out, "no user \"bob\"");

    // del removes; a second del fails.
    ok(&tunnelctl(&["user", "del", "alice", "--users-file", f], ""));
    assert!(!UserDb::load(&file).unwrap().contains("alice"));
    fails_with(
        &tunnelctl(&["user", "del", "alice", "--users-file", f], ""),
        "no user",
    );
}

#[test]
fn users_file_comes_from_the_daemon_config() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("from-config-users");
    let config = dir.path().join("tunneld.toml");
    std::fs::write(
        &config,
        format!("[auth]\nusers_file = {:?}\n", path_str(&users)),
    )
    .unwrap();
    let out = tunnelctl(
        &[
            "--config",
            path_str(&config),
            "user",
            "add",
            "carol",
            "--password-stdin",
        ],
        "pw\n",
    );
    ok(&out);
    assert_eq!(
        UserDb::load(&users).unwrap().verify("carol", "pw"),
        VerifyOutcome::Ok { group: None }
    );
    // The global flag is accepted after the subcommand too.
    let out = tunnelctl(&["user", "del", "carol", "-c", path_str(&config)], "");
    ok(&out);

    // A broken config is reported with its path.
    std::fs::write(&config, "[auth]\nusers_fil = 1\n").unwrap();
    let out = tunnelctl(
        &[
            "--config",
            path_str(&config),
            "user",
            "add",
            "dave",
            "--password-stdin",
        ],
        "pw\n",
    );
    fails_with(&out, "tunneld.toml");
}

#[test]
fn bad_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users");
    let f = path_str(&file);
    fails_with(
        &tunnelctl(
            &["user", "add", "eve", "--users-file", f, "--password-stdin"],
            "\n",
        ),
        "empty password",
    );
    fails_with(
        &tunnelctl(
            &["user", "add", "a:b", "--users-file", f, "--password-stdin"],
            "pw\n",
        ),
        "invalid username",
    );
    assert!(!file.exists());
    // Without --password-stdin and without a terminal, the error says what to do. `setsid`
    // detaches the child from any controlling terminal the test run has, so it cannot prompt.
    let Ok(out) = Command::new("setsid")
        .args(["-w", env!("CARGO_BIN_EXE_tunnelctl")])
        .args(["user", "add", "frank", "--users-file", f])
        .env_remove("TUNNELD_CONFIG")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .output()
    else {
        return; // no setsid(1) here
    };
    fails_with(&out, "--password-stdin");
}

#[test]
fn help_explains_every_flag() {
    let out = tunnelctl(&["user", "add", "--help"], "");
    ok(&out);
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--group", "--users-file", "--password-stdin", "--config"] {
        assert!(help.contains(flag), "{flag} not in\n{help}");
    }
}
