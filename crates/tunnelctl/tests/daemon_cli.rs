//! The daemon-facing commands and `readiness` as the built binary runs them, without a daemon:
//! where the socket comes from, what an operator is told when it is not there, argument rules, and
//! readiness on a configuration that does not load.

use std::process::{Command, Output};

fn tunnelctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tunnelctl"))
        .args(args)
        .env_remove("TUNNELD_CONFIG")
        .env_remove("TUNNELD_CONTROL_SOCKET")
        .output()
        .expect("run tunnelctl")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn status_without_a_daemon_names_the_socket_and_what_to_check() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("none.sock");
    let out = tunnelctl(&["--socket", sock.to_str().unwrap(), "status"]);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(
        e.contains(sock.to_str().unwrap()) && e.contains("is tunneld running?"),
        "{e}"
    );
}

#[test]
fn socket_comes_from_the_config_and_off_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("t.toml");
    let sock = dir.path().join("from-config.sock");
    std::fs::write(
        &cfg,
        format!("[control]\nsocket = \"{}\"\n", sock.display()),
    )
    .unwrap();
    let out = tunnelctl(&["--config", cfg.to_str().unwrap(), "sessions"]);
    assert!(
        stderr(&out).contains("from-config.sock"),
        "{}",
        stderr(&out)
    );
    std::fs::write(&cfg, "[control]\nsocket = \"off\"\n").unwrap();
    let out = tunnelctl(&["--config", cfg.to_str().unwrap(), "reload"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("control.socket is \"off\""),
        "{}",
        stderr(&out)
    );
}

#[test]
fn disconnect_takes_exactly_one_of_user_or_session() {
    for args in [
        &["disconnect"][..],
        &["disconnect", "--user", "a", "--session", "1"][..],
    ] {
        let out = tunnelctl(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn readiness_on_an_invalid_config_fails_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("t.toml");
    std::fs::write(&cfg, "[network]\nmtu = 100\n").unwrap();
    let out = tunnelctl(&["--config", cfg.to_str().unwrap(), "readiness"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("FAIL  config") && text.contains("network.mtu"),
        "{text}"
    );
    let out = tunnelctl(&["--config", cfg.to_str().unwrap(), "readiness", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["checks"][0]["status"], "FAIL");
}
