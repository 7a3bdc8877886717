//! Live reload (SIGHUP or `tunnelctl reload`): re-reads the configuration file, the certificate,
//! the users file and the client CA and CRLs (certificate mode), and swaps them in for new
//! connections. Live sessions keep what they were given, with one exception: a session whose
//! device certificate a CRL now lists is ended.
//!
//! Everything is loaded and checked before anything is swapped, so a reload either applies as a
//! whole or not at all: an invalid file, an unreadable certificate or users file, or a change that
//! cannot be applied to a running daemon is refused with the reason, and the running configuration
//! stays. What applies live: the certificate, `tls.min_version` and `tls.cipher_suites`, routes,
//! DNS and everything else pushed at CONNECT, the users file, limits, timers and ban settings.
//! What needs a restart (and is refused here): the listen addresses, the control socket, the TUN
//! device (name, MTU), NAT, and the address pools — a pool change while sessions exist would
//! orphan their addresses.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tokio_rustls::TlsAcceptor;

use crate::client_cert::{Anchors, ClientCaError, Revoked};
use crate::config::{Config, ConfigError, FieldError};
use crate::server::Shared;
use crate::tls::{self, LoadedCert, TlsError};
use crate::users::{UserDb, UsersError};

/// The certificate being served, as status and reload reports show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertInfo {
    /// The leaf's subject.
    pub subject: String,
    /// The leaf's notAfter date.
    pub not_after: String,
    /// `pin-sha256:...` for `openconnect --servercert`.
    pub pin: String,
}

impl From<&LoadedCert> for CertInfo {
    fn from(c: &LoadedCert) -> Self {
        Self {
            subject: c.subject.clone(),
            not_after: c.not_after.clone(),
            pin: c.pin_sha256.clone(),
        }
    }
}

/// What a successful reload changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    /// The file that was read; `None` when the daemon runs on its embedded defaults (then only the
    /// certificate and the users file are re-read).
    pub config_file: Option<PathBuf>,
    /// Dotted names of the settings that changed (`certificate` when the served certificate did).
    pub changed: Vec<String>,
    /// The certificate now served.
    pub certificate: CertInfo,
    /// Users in the users file now.
    pub users: usize,
    /// Sessions ended because a CRL now lists their device certificate (ids, in order).
    #[serde(default)]
    pub revoked_sessions: Vec<u64>,
    /// Sessions ended because `auth.ca_file` no longer holds a CA their device certificate chains
    /// to (ids, in order).
    #[serde(default)]
    pub untrusted_sessions: Vec<u64>,
}

/// Why a reload was refused. The running configuration is unchanged in every case.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// The daemon is draining: nothing is reloaded any more.
    #[error("the gateway is draining")]
    Draining,
    /// The configuration file cannot be read, parsed or validated.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The certificate named by the new configuration cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The users file named by the new configuration cannot be read.
    #[error("auth.users_file: {0}")]
    Users(#[from] UsersError),
    /// A CRL named by the new configuration cannot be read.
    #[error(transparent)]
    Crl(#[from] ClientCaError),
    /// The new configuration changes settings a running daemon cannot change; each names the
    /// field and why.
    #[error("{} cannot change while tunneld runs:\n{}", if .0.len() == 1 { "a setting" } else { "settings" }, .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
    NeedsRestart(Vec<FieldError>),
    /// The loader task failed (a bug).
    #[error("reload task failed: {0}")]
    Task(String),
}

/// Reload bookkeeping kept in [`Shared`]: where the configuration came from, the certificate in
/// use, and a lock so reloads do not interleave.
#[derive(Debug)]
pub struct ReloadState {
    config_path: Option<PathBuf>,
    lock: tokio::sync::Mutex<()>,
    cert: ArcSwap<CertInfo>,
}

impl ReloadState {
    /// State for a daemon started from `config_path` (`None`: embedded defaults) serving `cert`.
    pub fn new(config_path: Option<PathBuf>, cert: CertInfo) -> Self {
        Self {
            config_path,
            lock: tokio::sync::Mutex::new(()),
            cert: ArcSwap::from_pointee(cert),
        }
    }

    /// The configuration file reloads read.
    pub fn config_path(&self) -> Option<&Path> {
        self.config_path.as_deref()
    }

    /// The certificate served now.
    pub fn certificate(&self) -> Arc<CertInfo> {
        self.cert.load_full()
    }
}

/// Everything a new configuration needs, loaded and checked.
struct Prepared {
    config: Config,
    cert: LoadedCert,
    tls: Arc<rustls::ServerConfig>,
    users: UserDb,
    revoked: Revoked,
    anchors: Option<Anchors>,
}

fn prepare(path: Option<&Path>, current: &Config) -> Result<Prepared, ReloadError> {
    let config = match path {
        Some(p) => Config::load(p)?,
        None => current.clone(),
    };
    let cert = tls::load_certificate(&config)?;
    let tls = tls::server_config(&cert, &config.tls, &config.auth)?;
    let users = UserDb::load_for(&config.auth)?;
    let revoked = Revoked::load(&config.auth)?;
    let anchors = Anchors::load(&config.auth)?;
    Ok(Prepared {
        config,
        cert,
        tls,
        users,
        revoked,
        anchors,
    })
}

/// Settings that only take effect at start, with the reason; `live_sessions` decides how a pool
/// change is explained.
fn restart_only(old: &Config, new: &Config, live_sessions: usize) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let mut restart = |field: &str, changed: bool, what: &str| {
        if changed {
            errs.push(FieldError {
                field: field.to_owned(),
                reason: format!("{what}; restart tunneld to change it"),
            });
        }
    };
    restart(
        "server.listen",
        old.server.listen != new.server.listen,
        "the listening socket is bound at start",
    );
    restart(
        "server.threads",
        old.server.threads != new.server.threads,
        "the data-plane threads start with the daemon",
    );
    restart(
        "server.private_file_tables",
        old.server.private_file_tables != new.server.private_file_tables,
        "the data-plane threads' file tables are set up at start",
    );
    restart(
        "server.rx_coalesce_usecs",
        old.server.rx_coalesce_usecs != new.server.rx_coalesce_usecs,
        "the data-plane threads' runtimes are built at start",
    );
    restart(
        "metrics.listen",
        old.metrics.listen != new.metrics.listen,
        "the metrics socket is bound at start",
    );
    restart(
        "control.socket",
        old.control.socket != new.control.socket,
        "the control socket is bound at start",
    );
    restart(
        "dtls.enabled",
        !old.dtls.enabled && new.dtls.enabled,
        "the UDP socket is bound at start (turning DTLS off works live)",
    );
    let n = &old.network;
    let m = &new.network;
    restart(
        "network.tun_name",
        n.tun_name != m.tun_name,
        "the TUN device is created at start",
    );
    restart(
        "network.mtu",
        n.mtu != m.mtu,
        "it is also the TUN device's MTU, set at start",
    );
    restart(
        "network.nat",
        n.nat != m.nat || (n.nat && n.nat_interface != m.nat_interface),
        "the NAT rules are installed at start",
    );
    for (field, changed, from, to) in [
        (
            "network.ipv4_pool",
            n.ipv4_pool != m.ipv4_pool,
            n.ipv4_pool.to_string(),
            m.ipv4_pool.to_string(),
        ),
        (
            "network.ipv6_pool",
            n.ipv6_pool != m.ipv6_pool,
            n.ipv6_pool
                .map_or_else(|| "none".to_owned(), |p| p.to_string()),
            m.ipv6_pool
                .map_or_else(|| "none".to_owned(), |p| p.to_string()),
        ),
    ] {
        if !changed {
            continue;
        }
        let reason = if live_sessions > 0 {
            format!(
                "changing the pool from {from} to {to} would orphan the addresses of {live_sessions} live session{}; \
                 disconnect them (tunnelctl disconnect) or drain and restart tunneld",
                if live_sessions == 1 { "" } else { "s" }
            )
        } else {
            format!(
                "changing the pool from {from} to {to} needs a restart (the TUN address, the session table and the NAT rules are set up for the pool at start)"
            )
        };
        errs.push(FieldError {
            field: field.to_owned(),
            reason,
        });
    }
    errs
}

/// Dotted names of the settings whose values differ.
fn changed_fields(old: &Config, new: &Config) -> Vec<String> {
    let (Ok(toml::Value::Table(a)), Ok(toml::Value::Table(b))) =
        (toml::Value::try_from(old), toml::Value::try_from(new))
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let empty = toml::Table::new();
    let sections: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for section in sections {
        let sa = a
            .get(section)
            .and_then(toml::Value::as_table)
            .unwrap_or(&empty);
        let sb = b
            .get(section)
            .and_then(toml::Value::as_table)
            .unwrap_or(&empty);
        let keys: std::collections::BTreeSet<&String> = sa.keys().chain(sb.keys()).collect();
        for key in keys {
            if sa.get(key) != sb.get(key) {
                out.push(format!("{section}.{key}"));
            }
        }
    }
    out
}

/// Reloads the configuration (see the module docs). Logs the outcome and counts it in
/// `tunneld_config_reloads_total`.
pub async fn reload(sh: &Arc<Shared>) -> Result<ReloadReport, ReloadError> {
    let result = reload_inner(sh).await;
    match &result {
        Ok(r) => {
            sh.metrics
                .config_reloads
                .with_label_values(&["success"])
                .inc();
            tracing::info!(
                file = ?r.config_file,
                changed = %r.changed.join(","),
                users = r.users,
                pin = %r.certificate.pin,
                "configuration reloaded"
            );
        }
        Err(e) => {
            sh.metrics
                .config_reloads
                .with_label_values(&["failure"])
                .inc();
            // One log line, whatever the number of problems.
            let error = e.to_string().replace(":\n  ", ": ").replace("\n  ", "; ");
            tracing::error!(%error, "configuration reload refused; the running configuration is unchanged");
        }
    }
    result
}

async fn reload_inner(sh: &Arc<Shared>) -> Result<ReloadReport, ReloadError> {
    let _one_at_a_time = sh.reload.lock.lock().await;
    if sh.is_draining() {
        return Err(ReloadError::Draining);
    }
    let path = sh.reload.config_path.clone();
    let current = sh.config.load_full();
    let mut prepared = {
        let (path, current) = (path.clone(), Arc::clone(&current));
        tokio::task::spawn_blocking(move || prepare(path.as_deref(), &current))
            .await
            .map_err(|e| ReloadError::Task(e.to_string()))??
    };
    // server.user is applied once at start, and may come from `--user`/TUNNELD_USER: keep it.
    prepared.config.server.user.clone_from(&current.server.user);
    let refused = restart_only(&current, &prepared.config, sh.sessions.len());
    if !refused.is_empty() {
        return Err(ReloadError::NeedsRestart(refused));
    }
    let mut changed = changed_fields(&current, &prepared.config);
    let cert = CertInfo::from(&prepared.cert);
    if cert != *sh.reload.cert.load_full() {
        changed.push("certificate".to_owned());
    }
    let users = prepared.users.len();
    sh.users.store(Arc::new(prepared.users));
    sh.tls.store(Arc::new(TlsAcceptor::from(prepared.tls)));
    sh.config.store(Arc::new(prepared.config));
    sh.reload.cert.store(Arc::new(cert.clone()));
    // New connections are checked against the new CAs and CRLs from here on; sessions that logged
    // in with a certificate they would now refuse end (a reconnect with that certificate fails its
    // handshake, and their cookies work with no other certificate).
    let (revoked_sessions, untrusted_sessions) = sh
        .sessions
        .end_distrusted(&prepared.revoked, prepared.anchors.as_ref());
    Ok(ReloadReport {
        config_file: path,
        changed,
        certificate: cert,
        users,
        revoked_sessions,
        untrusted_sessions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(toml: &str) -> Config {
        Config::from_toml_str(toml).unwrap()
    }

    #[test]
    fn routes_dns_and_limits_reload_but_listeners_tun_and_nat_do_not() {
        let old = cfg("");
        let new = cfg(
            "[network]\nsplit_include = [\"10.1.0.0/16\"]\ndns = [\"192.0.2.53\"]\n[server]\nmax_sessions = 5\n",
        );
        assert!(restart_only(&old, &new, 3).is_empty());
        assert_eq!(
            changed_fields(&old, &new),
            vec![
                "network.dns",
                "network.split_include",
                "server.max_sessions"
            ]
        );
        let new = cfg(
            "[server]\nlisten = \"0.0.0.0:8443\"\nthreads = 3\nprivate_file_tables = true\n[network]\ntun_name = \"x0\"\nmtu = 1300\nnat = true\n[metrics]\nlisten = \"off\"\n[control]\nsocket = \"/tmp/c.sock\"\n",
        );
        let fields: Vec<String> = restart_only(&old, &new, 0)
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            vec![
                "server.listen",
                "server.threads",
                "server.private_file_tables",
                "metrics.listen",
                "control.socket",
                "network.tun_name",
                "network.mtu",
                "network.nat"
            ]
        );
    }

    #[test]
    fn dtls_can_be_turned_off_live_but_on_only_by_restart() {
        let on = cfg("");
        let off = cfg("[dtls]\nenabled = false\n");
        assert!(restart_only(&on, &off, 1).is_empty());
        let fields: Vec<String> = restart_only(&off, &on, 1)
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, vec!["dtls.enabled"]);
        assert!(restart_only(&on, &cfg("[dtls]\nswitch_to_tcp_secs = 5\n"), 1).is_empty());
    }

    #[test]
    fn pool_change_with_live_sessions_says_it_would_orphan_them() {
        let old = cfg("");
        let new = cfg("[network]\nipv4_pool = \"10.9.0.0/24\"\n");
        let e = restart_only(&old, &new, 2);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].field, "network.ipv4_pool");
        assert!(
            e[0].reason.contains("orphan") && e[0].reason.contains("2 live sessions"),
            "{}",
            e[0].reason
        );
        let e = restart_only(&old, &new, 0);
        assert!(e[0].reason.contains("needs a restart"), "{}", e[0].reason);
        let text = ReloadError::NeedsRestart(restart_only(&old, &new, 1)).to_string();
        assert!(text.contains("network.ipv4_pool: changing the pool from 192.168.100.0/24 to 10.9.0.0/24 would orphan the addresses of 1 live session;"), "{text}");
    }

    #[test]
    fn invalid_file_is_refused_with_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.toml");
        std::fs::write(&p, "[network]\nmtu = 100\n").unwrap();
        let e = prepare(Some(&p), &Config::default()).err().unwrap();
        assert!(matches!(e, ReloadError::Config(_)));
        assert!(e.to_string().contains("network.mtu"), "{e}");
    }
}
