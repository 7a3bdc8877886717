//! The commands that talk to the running daemon over its control socket: `status`, `sessions`,
//! `disconnect`, `ban` and `reload`. Each sends one request (see `tunnel_gateway::control`) and
//! prints the answer as text, or as JSON with `--json`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use tunnel_gateway::ban::{BanEntry, BanTarget};
use tunnel_gateway::config::Config;
use tunnel_gateway::control::{self, Disconnected, Request, SessionInfo, StatusInfo};
use tunnel_gateway::reload::ReloadReport;

/// The socket used when neither `--socket` nor `--config` names one.
const DEFAULT_SOCKET: &str = "/run/tunneld/control.sock";
/// How long to wait for an answer (a reload reads files and may hash nothing; seconds suffice).
const TIMEOUT: Duration = Duration::from_secs(30);

/// `tunnelctl disconnect`: exactly one of `--user` or `--session`.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub(crate) struct DisconnectArgs {
    /// End every session of this user.
    #[arg(long, value_name = "USER")]
    user: Option<String>,
    /// End the session with this id (see `tunnelctl sessions`).
    #[arg(long, value_name = "ID")]
    session: Option<u64>,
}

/// `tunnelctl ban ...`
#[derive(Debug, Subcommand)]
pub(crate) enum BanCommand {
    /// List banned source addresses, failure scores and unauthenticated connections.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Ban a source address (an IPv6 address bans its /64) or a whole prefix (ADDR/LEN, e.g.
    /// an attacker's IPv6 /48). The ban is saved in `server.state_dir` before this answers, so
    /// it outlives a restart.
    Add {
        /// The address, or ADDR/LEN.
        address: BanTarget,
        /// How long, in seconds; default: until removed.
        #[arg(long, value_name = "SECS")]
        secs: Option<u64>,
    },
    /// Lift a ban and forget the address's failure score.
    Remove {
        /// The address, or ADDR/LEN as it was banned.
        address: BanTarget,
    },
}

/// `--socket`, else `control.socket` of `--config`, else the default.
pub(crate) fn socket_path(arg: Option<&Path>, config: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = arg {
        return Ok(p.to_owned());
    }
    let Some(c) = config else {
        return Ok(PathBuf::from(DEFAULT_SOCKET));
    };
    let cfg = Config::load(c).with_context(|| {
        format!(
            "cannot take control.socket from {} (or pass --socket)",
            c.display()
        )
    })?;
    cfg.control.socket.with_context(|| {
        format!(
            "control.socket is \"off\" in {}: the daemon has no control socket",
            c.display()
        )
    })
}

fn call<T: serde::de::DeserializeOwned>(socket: &Path, req: &Request) -> Result<T> {
    Ok(control::call(socket, req, TIMEOUT)?)
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// `1h 2m 3s`.
fn duration(secs: u64) -> String {
    let (d, h, m, s) = (
        secs / 86400,
        secs % 86400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m {s}s"),
        _ => format!("{d}d {h}h {m}m"),
    }
}

/// `12 of 20000 (0%)`, or with private file tables `main 40, threads 9000 / 9100, each of 20000
/// (46% at most)`: how close each file table is to the open-files limit.
fn open_files_line(s: &StatusInfo) -> Option<String> {
    let main = s.open_files?;
    let per: Vec<String> = s.open_files_per_thread.iter().map(u64::to_string).collect();
    let tables = if per.is_empty() {
        main.to_string()
    } else {
        format!("main {main}, threads {}", per.join(" / "))
    };
    let Some(limit) = s.max_open_files.filter(|&m| m > 0) else {
        return Some(format!("{tables} (no limit)"));
    };
    let fullest = s.open_files_per_thread.iter().copied().fold(main, u64::max);
    let pct = fullest * 100 / limit;
    Some(if per.is_empty() {
        format!("{tables} of {limit} ({pct}%)")
    } else {
        format!("{tables}, each of {limit} ({pct}% at most)")
    })
}

/// `1.5 MiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS.get(unit).copied().unwrap_or("B"))
    }
}

/// Prints rows as left-aligned columns separated by two spaces.
fn table(rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

pub(crate) fn status(socket: &Path, json: bool) -> Result<()> {
    let s: StatusInfo = call(socket, &Request::Status)?;
    if json {
        return print_json(&s);
    }
    let ready = if s.ready {
        "yes".to_owned()
    } else {
        format!("no ({})", s.not_ready.join("; "))
    };
    let mut listeners = vec![format!("{} (TLS)", s.listen)];
    if let Some(m) = s.metrics_listen {
        listeners.push(format!("{m} (metrics)"));
    }
    if let Some(c) = &s.control_socket {
        listeners.push(format!("{} (control)", c.display()));
    }
    let pool = match &s.pool.ipv6 {
        Some(v6) => format!("{} + {v6}", s.pool.ipv4),
        None => s.pool.ipv4.clone(),
    };
    println!(
        "tunneld {}, up {} (since {})",
        s.version,
        duration(s.uptime_secs),
        s.started_at
    );
    println!("ready:       {ready}");
    println!("draining:    {}", if s.draining { "yes" } else { "no" });
    println!("listening:   {}", listeners.join(", "));
    println!(
        "tun:         {}, {} threads, steering by {}",
        s.tun,
        s.threads,
        if s.tun_steering == "address" {
            "destination address"
        } else {
            "flow table (no steering program)"
        }
    );
    if s.rx_coalesce_usecs == 0 {
        println!("coalescing:  off");
    } else {
        println!(
            "coalescing:  {} µs naps under sustained traffic, {} taken",
            s.rx_coalesce_usecs, s.rx_coalesce_naps
        );
    }
    println!("sessions:    {} ({} connected)", s.sessions, s.connected);
    if s.tunnels_per_thread.len() > 1 {
        let per: Vec<String> = s.tunnels_per_thread.iter().map(u64::to_string).collect();
        println!("per thread:  {} connections", per.join(" / "));
    }
    if let Some(line) = open_files_line(&s) {
        println!("open files:  {line}");
    }
    println!(
        "pool:        {pool}: {} of {} addresses in use",
        s.pool.in_use, s.pool.size
    );
    println!("bans:        {} active", s.bans_active);
    println!(
        "certificate: {}, until {}, {}",
        s.certificate.subject, s.certificate.not_after, s.certificate.pin
    );
    println!(
        "config:      {}",
        s.config_file.as_ref().map_or_else(
            || "embedded defaults".to_owned(),
            |p| p.display().to_string()
        )
    );
    Ok(())
}

pub(crate) fn sessions(socket: &Path, json: bool) -> Result<()> {
    let list: Vec<SessionInfo> = call(socket, &Request::Sessions)?;
    if json {
        return print_json(&list);
    }
    if list.is_empty() {
        println!("no sessions");
        return Ok(());
    }
    let mut rows = vec![[
        "ID",
        "USER",
        "DEVICE",
        "TUNNEL ADDRESSES",
        "TRANSPORT",
        "UP",
        "DOWN",
        "CONNECTED SINCE",
    ]
    .map(str::to_owned)
    .to_vec()];
    for s in &list {
        let addrs: Vec<String> = s
            .ipv4
            .map(|a| a.to_string())
            .into_iter()
            .chain(s.ipv6.map(|a| a.to_string()))
            .collect();
        rows.push(vec![
            s.id.to_string(),
            s.user.clone(),
            s.device.to_string(),
            if addrs.is_empty() {
                "-".to_owned()
            } else {
                addrs.join(", ")
            },
            s.transport
                .clone()
                .unwrap_or_else(|| "- (awaiting reconnect)".to_owned()),
            bytes(s.bytes_up),
            bytes(s.bytes_down),
            format!("{} ({})", s.connected_since, duration(s.duration_secs)),
        ]);
    }
    if list.iter().any(|s| s.certificate_serial.is_some()) {
        rows[0].push("CERTIFICATE SERIAL".to_owned());
        for (row, s) in rows.iter_mut().skip(1).zip(&list) {
            row.push(
                s.certificate_serial
                    .clone()
                    .unwrap_or_else(|| "-".to_owned()),
            );
        }
    }
    table(&rows);
    Ok(())
}

pub(crate) fn disconnect(socket: &Path, args: &DisconnectArgs) -> Result<()> {
    let d: Disconnected = call(
        socket,
        &Request::Disconnect {
            user: args.user.clone(),
            session: args.session,
        },
    )?;
    let ids: Vec<String> = d.sessions.iter().map(u64::to_string).collect();
    println!(
        "disconnected {} session{}: {}",
        ids.len(),
        if ids.len() == 1 { "" } else { "s" },
        ids.join(", ")
    );
    Ok(())
}

/// A prefix ban as ADDR/LEN; an IPv4 source as is; an IPv6 source as the /64 it stands for.
fn source(e: &BanEntry) -> String {
    match (e.prefix_len, e.address) {
        (Some(len), a) => format!("{a}/{len}"),
        (None, IpAddr::V4(a)) => a.to_string(),
        (None, IpAddr::V6(a)) => format!("{a}/64"),
    }
}

fn ban_state(e: &BanEntry) -> String {
    if !e.banned {
        return "-".to_owned();
    }
    let origin = if e.manual { "manual" } else { "automatic" };
    match e.ban_remaining_secs {
        Some(s) => format!("banned ({origin}, {} left)", duration(s)),
        None => format!("banned ({origin}, until removed)"),
    }
}

pub(crate) fn ban(socket: &Path, cmd: BanCommand) -> Result<()> {
    match cmd {
        BanCommand::List { json } => {
            let list: Vec<BanEntry> = call(socket, &Request::BanList)?;
            if json {
                return print_json(&list);
            }
            if list.is_empty() {
                println!("no banned or scored addresses");
                return Ok(());
            }
            let mut rows = vec![["ADDRESS", "STATE", "SCORE", "UNAUTHENTICATED"]
                .map(str::to_owned)
                .to_vec()];
            for e in &list {
                rows.push(vec![
                    source(e),
                    ban_state(e),
                    e.score.to_string(),
                    e.unauthenticated.to_string(),
                ]);
            }
            table(&rows);
        }
        BanCommand::Add { address, secs } => {
            let e: Option<BanEntry> = call(socket, &Request::BanAdd { address, secs })?;
            match e {
                Some(e) => println!("{}: {}", source(&e), ban_state(&e)),
                None => println!("{address}: banned"),
            }
        }
        BanCommand::Remove { address } => {
            call::<()>(socket, &Request::BanRemove { address })?;
            println!("{address}: ban lifted, score cleared");
        }
    }
    Ok(())
}

pub(crate) fn reload(socket: &Path) -> Result<()> {
    let r: ReloadReport = call(socket, &Request::Reload)?;
    println!(
        "configuration reloaded from {}",
        r.config_file.as_ref().map_or_else(
            || "embedded defaults".to_owned(),
            |p| p.display().to_string()
        )
    );
    println!(
        "changed:     {}",
        if r.changed.is_empty() {
            "nothing".to_owned()
        } else {
            r.changed.join(", ")
        }
    );
    println!(
        "certificate: {}, until {}, {}",
        r.certificate.subject, r.certificate.not_after, r.certificate.pin
    );
    println!("users:       {}", r.users);
    for (ids, why) in [
        (
            &r.revoked_sessions,
            "whose device certificate is now revoked",
        ),
        (
            &r.untrusted_sessions,
            "whose device certificate no longer chains to auth.ca_file",
        ),
    ] {
        if !ids.is_empty() {
            println!(
                "ended:       {} session(s) {why}: {}",
                ids.len(),
                ids.iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    println!("(live sessions keep their settings; new sessions get the new ones)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_read_naturally() {
        assert_eq!(duration(5), "5s");
        assert_eq!(duration(125), "2m 5s");
        assert_eq!(duration(3725), "1h 2m 5s");
        assert_eq!(duration(90061), "1d 1h 1m");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 * 1024 * 1024), "5.0 MiB");
    }

    #[test]
    fn open_files_are_shown_against_the_limit_per_table() {
        let mut s: StatusInfo = serde_json::from_value(serde_json::json!({
            "version": "0", "started_at": "", "uptime_secs": 0, "listen": "0.0.0.0:443",
            "metrics_listen": null, "control_socket": null, "config_file": null, "tun": "t",
            "threads": 2, "tun_steering": "address", "ready": true, "not_ready": [],
            "draining": false, "sessions": 0, "connected": 0,
            "pool": {"ipv4": "10.0.0.0/24", "ipv6": null, "size": 253, "in_use": 0},
            "bans_active": 0,
            "certificate": {"subject": "", "not_after": "", "pin": ""}
        }))
        .unwrap();
        // An older daemon says nothing about files.
        assert_eq!(open_files_line(&s), None);
        s.open_files = Some(1_200);
        s.max_open_files = Some(20_000);
        assert_eq!(open_files_line(&s).unwrap(), "1200 of 20000 (6%)");
        s.open_files = Some(40);
        s.open_files_per_thread = vec![9_000, 18_500];
        assert_eq!(
            open_files_line(&s).unwrap(),
            "main 40, threads 9000 / 18500, each of 20000 (92% at most)"
        );
        s.max_open_files = None;
        assert_eq!(
            open_files_line(&s).unwrap(),
            "main 40, threads 9000 / 18500 (no limit)"
        );
    }
}
