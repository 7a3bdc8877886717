//! Brute-force protection: a failure score per source address that turns into a ban (like ocserv's
//! ban points), manual bans from the operator (of a source, or of a whole prefix), and a cap on
//! concurrent unauthenticated connections per source.
//!
//! Both are enforced at TCP accept, before the TLS handshake, so a banned or flooding address costs
//! the gateway one `accept` and one `close`. An IPv6 source counts per /64 (one host usually holds a
//! whole /64); an IPv4-mapped IPv6 address counts as its IPv4 address.
//!
//! Bans outlive a restart: the daemon keeps them in [`BANS_FILE`] in `server.state_dir`, rewritten
//! (atomically) when a ban starts, ends or is lifted, and reads the ones still running at start-up.
//! Scores and unauthenticated counts are not kept: they are minutes old at most.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::config::BanConfig;
use crate::metrics::Metrics;

/// Why a connection was refused at accept. Its [`Refusal::as_str`] is the metrics `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The source address is banned.
    Banned,
    /// The source already holds `server.max_unauthenticated_per_source` unauthenticated
    /// connections.
    UnauthenticatedLimit,
}

impl Refusal {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Banned => "banned",
            Self::UnauthenticatedLimit => "unauthenticated_limit",
        }
    }
}

/// What an operator's ban covers: one source (an IPv4 address, or the /64 of an IPv6 address),
/// or a whole prefix, shorter than that. Written `ADDR` or `ADDR/LEN` (an IPv4 /32 or an IPv6 /64
/// is the source itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BanTarget {
    /// One source.
    Source(IpAddr),
    /// Every source in the prefix (host bits cleared).
    Prefix(IpNet),
}

impl FromStr for BanTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if !s.contains('/') {
            return s.parse().map(Self::Source).map_err(|e| format!("{s}: {e}"));
        }
        let net: IpNet = s.parse().map_err(|e| format!("{s}: {e}"))?;
        match net {
            _ if net.prefix_len() == 0 => Err(format!("{s} would ban every address")),
            IpNet::V4(n) if n.prefix_len() == 32 => Ok(Self::Source(IpAddr::V4(n.addr()))),
            IpNet::V6(n) if n.prefix_len() == 64 => Ok(Self::Source(IpAddr::V6(n.addr()))),
            IpNet::V6(n) if n.prefix_len() > 64 => Err(format!(
                "{s}: IPv6 sources are scored and banned per /64; ban the /64 or a shorter prefix"
            )),
            net => Ok(Self::Prefix(net.trunc())),
        }
    }
}

impl fmt::Display for BanTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Source(a) => a.fmt(f),
            Self::Prefix(n) => n.fmt(f),
        }
    }
}

impl Serialize for BanTarget {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BanTarget {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// At most this many prefix bans: every accepted connection is checked against each.
pub const MAX_PREFIX_BANS: usize = 1_000;

/// A ban of a whole prefix (always the operator's).
#[derive(Debug, Clone, Copy)]
struct PrefixBan {
    net: IpNet,
    /// `None`: until removed.
    until: Option<Instant>,
}

impl PrefixBan {
    fn active(&self, now: Instant) -> bool {
        self.until.is_none_or(|t| now < t)
    }
}

/// One source address's state, or one prefix ban, as `tunnelctl ban list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanEntry {
    /// The source (an IPv4 address, or the network address of an IPv6 /64), or the network
    /// address of a banned prefix.
    pub address: IpAddr,
    /// The prefix length of a prefix ban; `None` for a source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_len: Option<u8>,
    /// Its failure score now (0 after a ban starts).
    pub score: u32,
    /// True while it is banned.
    pub banned: bool,
    /// Seconds left of the ban; `None` when not banned or banned until removed.
    pub ban_remaining_secs: Option<u64>,
    /// True when the operator imposed the ban.
    pub manual: bool,
    /// Its connections that have not reached a tunnel yet.
    pub unauthenticated: u32,
}

#[derive(Debug, Default)]
struct Entry {
    score: u32,
    last_failure: Option<Instant>,
    /// `Some(None)`: banned until removed. `Some(Some(t))`: banned until `t`.
    ban: Option<Option<Instant>>,
    manual: bool,
    unauthenticated: u32,
}

impl Entry {
    fn banned_at(&self, now: Instant) -> bool {
        match self.ban {
            Some(None) => true,
            Some(Some(until)) => now < until,
            None => false,
        }
    }

    fn score_at(&self, now: Instant, reset: Duration) -> u32 {
        match self.last_failure {
            Some(t) if now.saturating_duration_since(t) < reset => self.score,
            _ => 0,
        }
    }
}

/// File name of the saved bans in `server.state_dir`.
pub const BANS_FILE: &str = "bans.json";

/// At most this many bans are saved (about 600 KB): the operator's first, then the automatic
/// ones that end last. An attack from many addresses bans each of them in memory, but does not
/// make every save of the file as large as the attack.
pub const MAX_SAVED_BANS: usize = 10_000;

/// At most this many source addresses are tracked (about 10 MB) when a failure would add one.
/// A failed login costs an attacker little (an unknown cookie costs the gateway one TLS
/// handshake), and an IPv6 attacker has more /64s than memory has room for; each score lives
/// `ban.score_reset_secs`. At the cap, the scored sources with the lowest score and oldest failure
/// are forgotten first (a source near its ban keeps its score), and when only bans and
/// unauthenticated connections are left, a failure from a new source is not scored
/// (`tunneld_ban_untracked_failures_total`). Bans, manual or automatic, and the per-source cap on
/// unauthenticated connections (bounded by the open connections) are never dropped for room.
pub const MAX_TRACKED_SOURCES: usize = 100_000;

/// The saved form: wall-clock ends, since an `Instant` means nothing to the next process.
#[derive(Debug, Serialize, Deserialize)]
struct SavedBans {
    bans: Vec<SavedBan>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedBan {
    address: IpAddr,
    /// A prefix ban's length; absent for a source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prefix_len: Option<u8>,
    /// Seconds since the Unix epoch when the ban ends; `None`: until removed.
    until_unix_secs: Option<u64>,
    manual: bool,
}

/// Where the bans are saved, and whether they changed since.
#[derive(Debug)]
struct Store {
    path: PathBuf,
    /// Set by every change to a ban, cleared by the write that saves it.
    dirty: AtomicBool,
    /// One writer at a time (the temporary file's name is per process).
    writing: Mutex<()>,
    /// The last write failed: warn once per run of failures, not every second.
    failing: AtomicBool,
}

/// The per-source table. One short mutex-held update per accepted connection and per failed login,
/// never per packet.
#[derive(Debug)]
pub struct Bans {
    entries: Mutex<HashMap<IpAddr, Entry>>,
    metrics: Metrics,
    store: Option<Store>,
    /// [`MAX_TRACKED_SOURCES`], smaller in tests.
    max_sources: usize,
    /// Forgetting scores could not bring the table down to [`Self::target`]: bans and open logins
    /// fill it. No scan for room again until the sweep finds it there (one scan per episode, not
    /// one per failure while an attack goes on).
    full: AtomicBool,
    /// The operator's prefix bans: read at every accept without a lock, replaced whole.
    prefixes: ArcSwap<Vec<PrefixBan>>,
    /// One writer of `prefixes` at a time.
    prefixes_writer: Mutex<()>,
}

/// The source key: IPv4 as is, IPv4-mapped IPv6 as IPv4, other IPv6 truncated to its /64.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
    }
}

/// Holds one unauthenticated-connection slot of a source; dropping it (the connection closed or
/// became a tunnel) frees the slot.
#[derive(Debug)]
#[must_use = "dropping the guard frees the slot at once"]
pub struct UnauthGuard {
    bans: Arc<Bans>,
    key: IpAddr,
}

impl Drop for UnauthGuard {
    fn drop(&mut self) {
        let mut map = self.bans.lock();
        if let Some(e) = map.get_mut(&self.key) {
            e.unauthenticated = e.unauthenticated.saturating_sub(1);
        }
        self.bans.metrics.unauthenticated_connections.dec();
    }
}

impl Bans {
    /// An empty table that lives in memory only.
    pub fn new(metrics: Metrics) -> Arc<Self> {
        Arc::new(Self::in_memory(metrics))
    }

    fn in_memory(metrics: Metrics) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            metrics,
            store: None,
            max_sources: MAX_TRACKED_SOURCES,
            full: AtomicBool::new(false),
            prefixes: ArcSwap::from_pointee(Vec::new()),
            prefixes_writer: Mutex::new(()),
        }
    }

    #[cfg(test)]
    fn with_max_sources(metrics: Metrics, max_sources: usize) -> Arc<Self> {
        Arc::new(Self {
            max_sources,
            ..Self::in_memory(metrics)
        })
    }

    /// A table saved to `path`, starting with the bans saved there that have not ended. A missing
    /// file is an empty table; an unreadable one is logged and replaced at the next change.
    pub fn persistent(metrics: Metrics, path: PathBuf) -> Arc<Self> {
        let bans = Self::in_memory(metrics);
        match bans.restore(&path, SystemTime::now(), Instant::now()) {
            Ok(0) => {}
            Ok(n) => tracing::info!(bans = n, file = %path.display(), "bans restored"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(
                file = %path.display(),
                error = %e,
                "saved bans not read; starting with none"
            ),
        }
        Arc::new(Self {
            store: Some(Store {
                path,
                dirty: AtomicBool::new(false),
                writing: Mutex::new(()),
                failing: AtomicBool::new(false),
            }),
            ..bans
        })
    }

    /// Adds the bans saved in `path` that are still running at `wall` (= `now`).
    fn restore(&self, path: &Path, wall: SystemTime, now: Instant) -> io::Result<usize> {
        let text = std::fs::read(path)?;
        let saved: SavedBans = serde_json::from_slice(&text)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let wall_secs = unix_secs(wall);
        let mut map = self.lock();
        let mut n = 0;
        let mut prefixes = Vec::new();
        for b in saved.bans {
            let ban = match b.until_unix_secs {
                None => None,
                Some(until) if until > wall_secs => {
                    Some(now + Duration::from_secs(until - wall_secs))
                }
                Some(_) => continue,
            };
            if let Some(len) = b.prefix_len {
                let Ok(net) = IpNet::new(b.address, len) else {
                    continue;
                };
                if prefixes.len() < MAX_PREFIX_BANS {
                    prefixes.push(PrefixBan {
                        net: net.trunc(),
                        until: ban,
                    });
                    n += 1;
                }
                continue;
            }
            let e = map.entry(source_key(b.address)).or_default();
            e.ban = Some(ban);
            e.manual = b.manual;
            n += 1;
        }
        let active = count_banned(&map, now) + count_active(&prefixes, now);
        drop(map);
        self.prefixes.store(Arc::new(prefixes));
        self.metrics.bans_active.set(active);
        Ok(n)
    }

    /// The running bans at `wall` (= `now`), in address order.
    fn snapshot(&self, wall: SystemTime, now: Instant) -> SavedBans {
        let wall_secs = unix_secs(wall);
        let map = self.lock();
        let mut bans: Vec<SavedBan> = map
            .iter()
            .filter(|(_, e)| e.banned_at(now))
            .map(|(addr, e)| SavedBan {
                address: *addr,
                prefix_len: None,
                until_unix_secs: e.ban.flatten().map(|t| wall_end(t, now, wall_secs)),
                manual: e.manual,
            })
            .collect();
        drop(map);
        bans.extend(self.running_prefixes(now).into_iter().map(|p| SavedBan {
            address: p.net.network(),
            prefix_len: Some(p.net.prefix_len()),
            until_unix_secs: p.until.map(|t| wall_end(t, now, wall_secs)),
            manual: true,
        }));
        if bans.len() > MAX_SAVED_BANS {
            // Manual first, then the latest end (until removed counts as the latest).
            bans.sort_by_key(|b| {
                std::cmp::Reverse((b.manual, b.until_unix_secs.unwrap_or(u64::MAX)))
            });
            bans.truncate(MAX_SAVED_BANS);
        }
        bans.sort_by_key(|b| (b.address, b.prefix_len));
        SavedBans { bans }
    }

    fn changed(&self) {
        if let Some(s) = &self.store {
            s.dirty.store(true, Ordering::Release);
        }
    }

    /// True when a ban changed since the last [`Self::save`].
    pub fn unsaved(&self) -> bool {
        self.store
            .as_ref()
            .is_some_and(|s| s.dirty.load(Ordering::Acquire))
    }

    /// Writes the running bans to the file if they changed since the last write (blocking: a
    /// small file, replaced atomically and synced). Returns whether it wrote. A failed write is
    /// retried by the next call.
    pub fn save(&self) -> io::Result<bool> {
        let Some(store) = &self.store else {
            return Ok(false);
        };
        let _one = store.writing.lock().unwrap_or_else(PoisonError::into_inner);
        if !store.dirty.swap(false, Ordering::AcqRel) {
            return Ok(false);
        }
        let saved = self.snapshot(SystemTime::now(), Instant::now());
        let result = serde_json::to_vec(&saved)
            .map_err(io::Error::other)
            .and_then(|json| {
                if let Some(dir) = store.path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                crate::atomic_file::write_atomically(&store.path, &json, 0o600, None)
            });
        match result {
            Ok(()) => {
                if store.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(file = %store.path.display(), "bans saved again");
                }
                Ok(true)
            }
            Err(e) => {
                store.dirty.store(true, Ordering::Release);
                if !store.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(file = %store.path.display(), error = %e, "cannot save the bans: a restart would forget changes since the last save; retrying");
                }
                Err(e)
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Decides at TCP accept whether a connection from `ip` may proceed. On success the returned
    /// guard holds one of the source's `max_unauthenticated` slots (0 = no limit) until dropped.
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        max_unauthenticated: u32,
        now: Instant,
    ) -> Result<UnauthGuard, Refusal> {
        let key = source_key(ip);
        if self.prefix_banned(ip, now) {
            self.metrics
                .connections_refused
                .with_label_values(&[Refusal::Banned.as_str()])
                .inc();
            return Err(Refusal::Banned);
        }
        let mut map = self.lock();
        let e = map.entry(key).or_default();
        let refusal = if e.banned_at(now) {
            Some(Refusal::Banned)
        } else if max_unauthenticated > 0 && e.unauthenticated >= max_unauthenticated {
            Some(Refusal::UnauthenticatedLimit)
        } else {
            None
        };
        if let Some(r) = refusal {
            if e.unauthenticated == 0 && e.ban.is_none() && e.score == 0 {
                map.remove(&key);
            }
            drop(map);
            self.metrics
                .connections_refused
                .with_label_values(&[r.as_str()])
                .inc();
            return Err(r);
        }
        e.unauthenticated += 1;
        drop(map);
        self.metrics.unauthenticated_connections.inc();
        Ok(UnauthGuard {
            bans: Arc::clone(self),
            key,
        })
    }

    /// True when `ip` is banned now, by itself or by a prefix ban.
    pub fn is_banned(&self, ip: IpAddr, now: Instant) -> bool {
        self.prefix_banned(ip, now)
            || self
                .lock()
                .get(&source_key(ip))
                .is_some_and(|e| e.banned_at(now))
    }

    /// True when a running prefix ban covers `ip`.
    fn prefix_banned(&self, ip: IpAddr, now: Instant) -> bool {
        let prefixes = self.prefixes.load();
        if prefixes.is_empty() {
            return false;
        }
        let ip = ip.to_canonical();
        prefixes
            .iter()
            .any(|p| p.active(now) && p.net.contains(&ip))
    }

    /// The prefix bans running at `now`.
    fn running_prefixes(&self, now: Instant) -> Vec<PrefixBan> {
        self.prefixes
            .load()
            .iter()
            .filter(|p| p.active(now))
            .copied()
            .collect()
    }

    /// Applies `f` to a copy of the prefix bans and publishes the result (one writer at a time;
    /// readers keep the list they loaded).
    fn update_prefixes<R>(&self, f: impl FnOnce(&mut Vec<PrefixBan>) -> R) -> R {
        let _one = self
            .prefixes_writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut list = Vec::clone(&self.prefixes.load());
        let r = f(&mut list);
        self.prefixes.store(Arc::new(list));
        r
    }

    /// Bans `target` by operator request, for `duration` or (with `None`) until removed.
    ///
    /// # Errors
    /// [`MAX_PREFIX_BANS`] prefixes are banned already.
    pub fn ban_target(
        &self,
        target: BanTarget,
        duration: Option<Duration>,
        now: Instant,
    ) -> Result<(), String> {
        let net = match target {
            BanTarget::Source(ip) => {
                self.ban(ip, duration, now);
                return Ok(());
            }
            BanTarget::Prefix(net) => net,
        };
        let ban = PrefixBan {
            net,
            until: duration.map(|d| now + d),
        };
        let was_banned = self.update_prefixes(|list| {
            let full = list.len() >= MAX_PREFIX_BANS;
            match list.iter_mut().find(|p| p.net == net) {
                Some(p) => Ok(std::mem::replace(p, ban).active(now)),
                None if full => Err(format!(
                    "{MAX_PREFIX_BANS} prefixes are banned already: remove some, or filter the traffic upstream"
                )),
                None => {
                    list.push(ban);
                    Ok(false)
                }
            }
        })?;
        self.changed();
        self.metrics.bans.with_label_values(&["manual"]).inc();
        if !was_banned {
            self.metrics.bans_active.inc();
        }
        tracing::warn!(prefix = %net, secs = duration.map(|d| d.as_secs()), "source prefix banned by the operator");
        Ok(())
    }

    /// Lifts the operator's ban of `target` (a source's also clears its score). Returns false when
    /// there was none (nor a score).
    pub fn unban_target(&self, target: BanTarget, now: Instant) -> bool {
        let net = match target {
            BanTarget::Source(ip) => return self.unban(ip, now),
            BanTarget::Prefix(net) => net,
        };
        let Some(was_banned) = self.update_prefixes(|list| {
            let i = list.iter().position(|p| p.net == net)?;
            Some(list.swap_remove(i).active(now))
        }) else {
            return false;
        };
        self.changed();
        if was_banned {
            self.metrics.bans_active.dec();
        }
        tracing::info!(prefix = %net, "prefix ban lifted by the operator");
        true
    }

    /// Adds a failed login of `ip` to its score; bans it when the score reaches
    /// `policy.max_score`. Returns true when this failure started a ban.
    pub fn record_failure(&self, ip: IpAddr, policy: &BanConfig, now: Instant) -> bool {
        if policy.max_score == 0 || policy.auth_failure_points == 0 {
            return false;
        }
        let key = source_key(ip);
        let reset = Duration::from_secs(u64::from(policy.score_reset_secs));
        let mut map = self.lock();
        if !map.contains_key(&key) && !self.make_room(&mut map, now, reset) {
            drop(map);
            self.metrics.ban_untracked_failures.inc();
            return false;
        }
        let e = map.entry(key).or_default();
        if e.banned_at(now) {
            return false;
        }
        e.score = e
            .score_at(now, reset)
            .saturating_add(policy.auth_failure_points);
        e.last_failure = Some(now);
        if e.score < policy.max_score {
            return false;
        }
        let secs = u64::from(policy.ban_secs);
        e.ban = Some(Some(now + Duration::from_secs(secs)));
        e.manual = false;
        let score = e.score;
        e.score = 0;
        drop(map);
        self.changed();
        self.metrics.bans.with_label_values(&["automatic"]).inc();
        self.metrics.bans_active.inc();
        tracing::warn!(address = %key, score, ban_secs = secs, "source address banned after repeated login failures");
        true
    }

    /// Bans `ip` by operator request, for `duration` or (with `None`) until removed.
    pub fn ban(&self, ip: IpAddr, duration: Option<Duration>, now: Instant) {
        let key = source_key(ip);
        let mut map = self.lock();
        let e = map.entry(key).or_default();
        let was_banned = e.banned_at(now);
        e.ban = Some(duration.map(|d| now + d));
        e.manual = true;
        e.score = 0;
        drop(map);
        self.changed();
        self.metrics.bans.with_label_values(&["manual"]).inc();
        if !was_banned {
            self.metrics.bans_active.inc();
        }
        tracing::warn!(address = %key, secs = duration.map(|d| d.as_secs()), "source address banned by the operator");
    }

    /// Lifts a ban on `ip` and forgets its score. Returns false when it was neither banned nor
    /// scored.
    pub fn unban(&self, ip: IpAddr, now: Instant) -> bool {
        let key = source_key(ip);
        let mut map = self.lock();
        let Some(e) = map.get_mut(&key) else {
            return false;
        };
        let had = e.ban.is_some() || e.score > 0;
        let was_banned = e.banned_at(now);
        if e.ban.is_some() {
            self.changed();
        }
        e.ban = None;
        e.manual = false;
        e.score = 0;
        e.last_failure = None;
        if e.unauthenticated == 0 {
            map.remove(&key);
        }
        drop(map);
        if was_banned {
            self.metrics.bans_active.dec();
        }
        if had {
            tracing::info!(address = %key, "ban lifted by the operator");
        }
        had
    }

    /// Every address with a score, a ban or an unauthenticated connection, banned first.
    pub fn list(&self, policy: &BanConfig, now: Instant) -> Vec<BanEntry> {
        let reset = Duration::from_secs(u64::from(policy.score_reset_secs));
        let map = self.lock();
        let mut out: Vec<BanEntry> = map
            .iter()
            .filter_map(|(addr, e)| {
                let banned = e.banned_at(now);
                let score = e.score_at(now, reset);
                (banned || score > 0 || e.unauthenticated > 0).then(|| BanEntry {
                    address: *addr,
                    prefix_len: None,
                    score,
                    banned,
                    ban_remaining_secs: match e.ban {
                        Some(Some(until)) if banned => Some(secs_left(until, now)),
                        _ => None,
                    },
                    manual: banned && e.manual,
                    unauthenticated: e.unauthenticated,
                })
            })
            .collect();
        drop(map);
        out.extend(self.running_prefixes(now).into_iter().map(|p| BanEntry {
            address: p.net.network(),
            prefix_len: Some(p.net.prefix_len()),
            score: 0,
            banned: true,
            ban_remaining_secs: p.until.map(|until| secs_left(until, now)),
            manual: true,
            unauthenticated: 0,
        }));
        out.sort_by(|a, b| {
            b.banned
                .cmp(&a.banned)
                .then(a.address.cmp(&b.address))
                .then(a.prefix_len.cmp(&b.prefix_len))
        });
        out
    }

    /// Ends expired bans (logging each), forgets stale scores, drops empty entries and updates
    /// the `bans_active` gauge. Called once a second.
    pub fn sweep(&self, policy: &BanConfig, now: Instant) {
        let reset = Duration::from_secs(u64::from(policy.score_reset_secs));
        let mut expired = false;
        let mut map = self.lock();
        map.retain(|addr, e| {
            if let Some(Some(until)) = e.ban {
                if now >= until {
                    tracing::info!(address = %addr, "ban expired");
                    e.ban = None;
                    e.manual = false;
                    expired = true;
                }
            }
            if e.score_at(now, reset) == 0 {
                e.score = 0;
                e.last_failure = None;
            }
            e.ban.is_some() || e.score > 0 || e.unauthenticated > 0
        });
        let mut active = count_banned(&map, now);
        let room = map.len() <= self.target();
        drop(map);
        if self.prefixes.load().iter().any(|p| !p.active(now)) {
            self.update_prefixes(|list| {
                list.retain(|p| {
                    let keep = p.active(now);
                    if !keep {
                        tracing::info!(prefix = %p.net, "ban expired");
                    }
                    keep
                });
            });
            expired = true;
        }
        active += count_active(&self.prefixes.load(), now);
        if expired {
            self.changed();
        }
        if room && self.full.swap(false, Ordering::Relaxed) {
            tracing::info!("failed logins from new source addresses are scored again");
        }
        // Exact once a second; the changes in between move it by one.
        self.metrics.bans_active.set(active);
    }

    /// How far [`Self::make_room`] shrinks a full table: three quarters of it.
    fn target(&self) -> usize {
        self.max_sources - self.max_sources / 4
    }

    /// Before a new source is added: true when the table has room for it, after forgetting, if
    /// it is full, the scores of a quarter of it (lowest score, then oldest failure first). Only
    /// entries with a score and nothing else are forgotten. Each scan frees a quarter of the
    /// table, or sets [`Self::full`] until the sweep sees it at [`Self::target`] again.
    fn make_room(&self, map: &mut HashMap<IpAddr, Entry>, now: Instant, reset: Duration) -> bool {
        if map.len() < self.max_sources {
            return true;
        }
        if self.full.load(Ordering::Relaxed) {
            return false;
        }
        let mut scored: Vec<(u32, Option<Instant>, IpAddr)> = map
            .iter()
            .filter(|(_, e)| e.ban.is_none() && e.unauthenticated == 0)
            .map(|(addr, e)| (e.score_at(now, reset), e.last_failure, *addr))
            .collect();
        let target = self.target();
        let forget = (map.len() - target.min(map.len())).min(scored.len());
        if forget > 0 {
            scored.select_nth_unstable(forget - 1);
            for (_, _, addr) in scored.iter().take(forget) {
                map.remove(addr);
            }
            self.metrics.ban_scores_forgotten.inc_by(forget as u64);
            tracing::warn!(
                forgotten = forget,
                tracked = self.max_sources,
                "too many source addresses with failed logins: forgot the lowest and oldest scores"
            );
        }
        if map.len() > target {
            self.full.store(true, Ordering::Relaxed);
            tracing::warn!(
                tracked = map.len(),
                "the ban table is full of bans and connections still logging in: failed logins from new addresses are not scored until some end"
            );
        }
        map.len() < self.max_sources
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The wall-clock second (Unix) at which a ban ending at `until` ends, `now` being `wall_secs`;
/// rounded up, so a restored ban never ends early.
fn wall_end(until: Instant, now: Instant, wall_secs: u64) -> u64 {
    let left = until.saturating_duration_since(now);
    wall_secs + left.as_secs() + u64::from(left.subsec_nanos() > 0)
}

fn count_banned(map: &HashMap<IpAddr, Entry>, now: Instant) -> i64 {
    let n = map.values().filter(|e| e.banned_at(now)).count();
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Whole seconds left of a ban ending at `until`, at least 1 while it runs.
fn secs_left(until: Instant, now: Instant) -> u64 {
    until.saturating_duration_since(now).as_secs().max(1)
}

fn count_active(prefixes: &[PrefixBan], now: Instant) -> i64 {
    let n = prefixes.iter().filter(|p| p.active(now)).count();
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> BanConfig {
        BanConfig {
            max_score: 100,
            auth_failure_points: 10,
            ban_secs: 60,
            score_reset_secs: 300,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn tenth_failure_bans_and_the_ban_expires() {
        let bans = Bans::new(Metrics::new());
        let t0 = Instant::now();
        for i in 0..9 {
            assert!(!bans.record_failure(ip("192.0.2.7"), &policy(), t0), "{i}");
        }
        assert!(bans.admit(ip("192.0.2.7"), 0, t0).is_ok());
        assert!(bans.record_failure(ip("192.0.2.7"), &policy(), t0));
        assert_eq!(
            bans.admit(ip("192.0.2.7"), 0, t0).unwrap_err(),
            Refusal::Banned
        );
        // Another address is not affected.
        assert!(bans.admit(ip("192.0.2.8"), 0, t0).is_ok());
        let listed = bans.list(&policy(), t0);
        assert_eq!(listed.len(), 1);
        assert!(listed[0].banned && !listed[0].manual);
        assert_eq!(listed[0].ban_remaining_secs, Some(60));
        assert_eq!(bans.metrics.bans_active.get(), 1);

        let later = t0 + Duration::from_secs(61);
        assert!(bans.admit(ip("192.0.2.7"), 0, later).is_ok());
        bans.sweep(&policy(), later);
        assert_eq!(bans.metrics.bans_active.get(), 0);
        assert!(bans.list(&policy(), later).is_empty());
    }

    #[test]
    fn score_is_forgotten_after_the_reset_time() {
        let bans = Bans::new(Metrics::new());
        let t0 = Instant::now();
        for _ in 0..9 {
            bans.record_failure(ip("192.0.2.7"), &policy(), t0);
        }
        let later = t0 + Duration::from_secs(301);
        assert!(!bans.record_failure(ip("192.0.2.7"), &policy(), later));
        assert_eq!(bans.list(&policy(), later)[0].score, 10);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let bans = Bans::new(Metrics::new());
        let now = Instant::now();
        bans.ban(ip("2001:db8:1:2::5"), None, now);
        assert!(bans.is_banned(ip("2001:db8:1:2:ffff::1"), now));
        assert!(!bans.is_banned(ip("2001:db8:1:3::5"), now));
        bans.ban(ip("192.0.2.9"), None, now);
        assert!(bans.is_banned(ip("::ffff:192.0.2.9"), now));
        assert_eq!(
            bans.list(&policy(), now)
                .iter()
                .map(|e| e.address)
                .collect::<Vec<_>>(),
            vec![ip("192.0.2.9"), ip("2001:db8:1:2::")]
        );
    }

    #[test]
    fn manual_ban_lasts_until_removed() {
        let bans = Bans::new(Metrics::new());
        let now = Instant::now();
        bans.ban(ip("192.0.2.1"), None, now);
        let far = now + Duration::from_secs(86400 * 365);
        bans.sweep(&policy(), far);
        assert!(bans.is_banned(ip("192.0.2.1"), far));
        let e = &bans.list(&policy(), far)[0];
        assert!(e.manual && e.ban_remaining_secs.is_none());
        assert!(bans.unban(ip("192.0.2.1"), far));
        assert!(!bans.is_banned(ip("192.0.2.1"), far));
        assert!(!bans.unban(ip("192.0.2.1"), far));
    }

    #[test]
    fn unauthenticated_cap_counts_live_guards_per_source() {
        let bans = Bans::new(Metrics::new());
        let now = Instant::now();
        let a = bans.admit(ip("192.0.2.1"), 2, now).unwrap();
        let _b = bans.admit(ip("192.0.2.1"), 2, now).unwrap();
        assert_eq!(
            bans.admit(ip("192.0.2.1"), 2, now).unwrap_err(),
            Refusal::UnauthenticatedLimit
        );
        assert!(bans.admit(ip("192.0.2.2"), 2, now).is_ok());
        assert_eq!(bans.list(&policy(), now)[0].unauthenticated, 2);
        drop(a);
        let _c = bans.admit(ip("192.0.2.1"), 2, now).unwrap();
        assert_eq!(bans.metrics.unauthenticated_connections.get(), 2);
        assert_eq!(
            bans.metrics
                .connections_refused
                .with_label_values(&["unauthenticated_limit"])
                .get(),
            1
        );
    }

    fn listed(bans: &Bans, now: Instant) -> Vec<(IpAddr, bool, Option<u64>)> {
        bans.list(&policy(), now)
            .into_iter()
            .filter(|e| e.banned)
            .map(|e| (e.address, e.manual, e.ban_remaining_secs))
            .collect()
    }

    #[test]
    fn bans_are_saved_and_restored_by_the_next_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state").join(BANS_FILE);
        let first = Bans::persistent(Metrics::new(), path.clone());
        assert!(
            !first.unsaved() && !first.save().unwrap(),
            "nothing to save yet"
        );
        let now = Instant::now();
        first.ban(ip("192.0.2.1"), None, now);
        first.ban(ip("2001:db8:1:2::5"), Some(Duration::from_secs(600)), now);
        for _ in 0..10 {
            first.record_failure(ip("192.0.2.3"), &policy(), now);
        }
        // A score alone is not saved.
        first.record_failure(ip("192.0.2.4"), &policy(), now);
        assert!(first.unsaved());
        assert!(first.save().unwrap());
        assert!(
            !first.save().unwrap(),
            "unchanged bans are not written again"
        );

        let second = Bans::persistent(Metrics::new(), path.clone());
        let now = Instant::now();
        assert_eq!(second.metrics.bans_active.get(), 3);
        let got = listed(&second, now);
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[0], (ip("192.0.2.1"), true, None));
        assert_eq!((got[1].0, got[1].1), (ip("192.0.2.3"), false));
        assert!(matches!(got[1].2, Some(59..=61)), "{got:?}");
        assert_eq!((got[2].0, got[2].1), (ip("2001:db8:1:2::"), true));
        assert!(matches!(got[2].2, Some(599..=601)), "{got:?}");
        assert!(!second.unsaved(), "restoring is not a change");

        // Lifting a ban is saved too.
        assert!(second.unban(ip("192.0.2.1"), now));
        assert!(second.save().unwrap());
        let third = Bans::persistent(Metrics::new(), path);
        assert!(!third.is_banned(ip("192.0.2.1"), Instant::now()));
        assert!(third.is_banned(ip("192.0.2.3"), Instant::now()));
    }

    #[test]
    fn an_attack_from_many_addresses_saves_the_manual_and_the_latest_bans_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(BANS_FILE);
        let bans = Bans::persistent(Metrics::new(), path.clone());
        let now = Instant::now();
        bans.ban(ip("192.0.2.1"), None, now);
        bans.ban(ip("192.0.2.2"), Some(Duration::from_secs(5)), now);
        for i in 0..MAX_SAVED_BANS {
            let a = u32::from(std::net::Ipv4Addr::new(10, 0, 0, 0)) + i as u32;
            // Later ones end later.
            let secs = 100 + i as u64;
            bans.ban(IpAddr::V4(a.into()), Some(Duration::from_secs(secs)), now);
            // As if the failure score had banned it.
            bans.lock().get_mut(&IpAddr::V4(a.into())).unwrap().manual = false;
        }
        assert!(bans.save().unwrap());
        let again = Bans::persistent(Metrics::new(), path);
        let now = Instant::now();
        assert_eq!(again.lock().len(), MAX_SAVED_BANS);
        assert!(
            again.is_banned(ip("192.0.2.1"), now),
            "the operator's ban was dropped"
        );
        assert!(
            again.is_banned(ip("192.0.2.2"), now),
            "a short manual ban was dropped"
        );
        assert!(
            !again.is_banned(ip("10.0.0.0"), now),
            "not the earliest automatic end"
        );
        assert!(!again.is_banned(ip("10.0.0.1"), now));
        assert!(again.is_banned(ip("10.0.0.2"), now));
        let last = u32::from(std::net::Ipv4Addr::new(10, 0, 0, 0)) + MAX_SAVED_BANS as u32 - 1;
        assert!(again.is_banned(IpAddr::V4(last.into()), now));
    }

    #[test]
    fn bans_that_ended_while_stopped_are_not_restored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(BANS_FILE);
        let first = Bans::persistent(Metrics::new(), path.clone());
        let now = Instant::now();
        first.ban(ip("192.0.2.1"), Some(Duration::from_secs(60)), now);
        first.ban(ip("192.0.2.2"), Some(Duration::from_secs(600)), now);
        first.save().unwrap();

        let second = Bans::new(Metrics::new());
        let later = SystemTime::now() + Duration::from_secs(120);
        let now = Instant::now();
        assert_eq!(second.restore(&path, later, now).unwrap(), 1);
        let got = listed(&second, now);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, ip("192.0.2.2"));
        assert!(matches!(got[0].2, Some(479..=481)), "{got:?}");
    }

    #[test]
    fn an_unreadable_file_starts_empty_and_is_replaced_at_the_next_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(BANS_FILE);
        std::fs::write(&path, b"{ not json").unwrap();
        let bans = Bans::persistent(Metrics::new(), path.clone());
        assert!(listed(&bans, Instant::now()).is_empty());
        bans.ban(ip("192.0.2.9"), None, Instant::now());
        assert!(bans.save().unwrap());
        let again = Bans::persistent(Metrics::new(), path);
        assert!(again.is_banned(ip("192.0.2.9"), Instant::now()));
    }

    #[test]
    fn an_expired_ban_is_a_change_to_save_and_a_failed_save_is_retried() {
        let dir = tempfile::tempdir().unwrap();
        // The state directory's parent is a file: every write fails.
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, b"").unwrap();
        let bans = Bans::persistent(Metrics::new(), blocker.join(BANS_FILE));
        let now = Instant::now();
        bans.ban(ip("192.0.2.1"), Some(Duration::from_secs(1)), now);
        assert!(bans.save().is_err());
        assert!(bans.unsaved(), "a failed save stays pending");

        let path = dir.path().join(BANS_FILE);
        let bans = Bans::persistent(Metrics::new(), path);
        bans.ban(ip("192.0.2.1"), Some(Duration::from_secs(1)), now);
        assert!(bans.save().unwrap());
        bans.sweep(&policy(), now + Duration::from_secs(2));
        assert!(bans.unsaved(), "the end of a ban is saved");
        assert!(bans.save().unwrap());
        let text = std::fs::read_to_string(dir.path().join(BANS_FILE)).unwrap();
        assert!(!text.contains("192.0.2.1"), "{text}");
    }

    #[test]
    fn a_flood_of_new_sources_forgets_the_lowest_scores_and_keeps_bans_and_logins() {
        let bans = Bans::with_max_sources(Metrics::new(), 8);
        let now = Instant::now();
        let p = policy();
        // One failure short of a ban, an operator's ban, an older one-failure score, and a
        // connection still logging in.
        for _ in 0..9 {
            bans.record_failure(ip("192.0.2.1"), &p, now);
        }
        bans.ban(ip("192.0.2.2"), None, now);
        bans.record_failure(ip("192.0.2.3"), &p, now);
        let _open = bans.admit(ip("192.0.2.4"), 0, now).unwrap();
        // An attacker with a /48: one failure from each of 1,000 /64s, a second later.
        let later = now + Duration::from_secs(1);
        for i in 0..1000u32 {
            let addr = IpAddr::V6(Ipv6Addr::from(
                (0x2001_0db8_0001_u128 << 80) | (u128::from(i) << 64) | 1,
            ));
            bans.record_failure(addr, &p, later);
            assert!(bans.lock().len() <= 8, "after {i}");
        }
        assert!(bans.metrics.ban_scores_forgotten.get() >= 1000 - 8);
        assert_eq!(bans.metrics.ban_untracked_failures.get(), 0);
        let listed = bans.list(&p, later);
        let score = |a: &str| listed.iter().find(|e| e.address == ip(a)).map(|e| e.score);
        assert_eq!(score("192.0.2.1"), Some(90));
        assert!(bans.is_banned(ip("192.0.2.2"), later));
        assert_eq!(score("192.0.2.3"), None, "the oldest low score goes first");
        assert_eq!(
            listed
                .iter()
                .find(|e| e.address == ip("192.0.2.4"))
                .unwrap()
                .unauthenticated,
            1
        );
        // The source near its ban is still counted: its tenth failure bans it.
        assert!(bans.record_failure(ip("192.0.2.1"), &p, later));
        assert_eq!(bans.metrics.bans_active.get(), 2);
    }

    #[test]
    fn a_table_full_of_bans_does_not_score_new_sources_until_one_ends() {
        let bans = Bans::with_max_sources(Metrics::new(), 4);
        let now = Instant::now();
        let p = policy();
        for i in 1..=3 {
            bans.ban(
                ip(&format!("192.0.2.{i}")),
                Some(Duration::from_secs(10)),
                now,
            );
        }
        // Banning a banned address again is still one ban.
        bans.ban(ip("192.0.2.3"), None, now);
        bans.record_failure(ip("192.0.2.4"), &p, now);
        assert_eq!(bans.metrics.bans_active.get(), 3);
        // Three bans and a score: the score makes room for one new source, then no more.
        for _ in 0..10 {
            bans.record_failure(ip("198.51.100.1"), &p, now);
        }
        assert!(bans.is_banned(ip("198.51.100.1"), now));
        assert_eq!(bans.metrics.bans_active.get(), 4);
        assert!(!bans.record_failure(ip("198.51.100.2"), &p, now));
        assert_eq!(bans.metrics.ban_untracked_failures.get(), 1);
        assert_eq!(bans.lock().len(), 4);
        // Lifting one, and two ending, make room again.
        assert!(bans.unban(ip("192.0.2.3"), now));
        assert_eq!(bans.metrics.bans_active.get(), 3);
        // Full again, the table is not scanned at every failure: a login that ended (an empty
        // entry, forgettable) waits for the sweep.
        let login = bans.admit(ip("192.0.2.5"), 0, now).unwrap();
        drop(login);
        assert!(!bans.record_failure(ip("198.51.100.3"), &p, now));
        assert_eq!(bans.metrics.ban_untracked_failures.get(), 2);
        let later = now + Duration::from_secs(11);
        bans.sweep(&p, later);
        assert_eq!(bans.metrics.bans_active.get(), 1);
        bans.record_failure(ip("198.51.100.2"), &p, later);
        assert_eq!(
            bans.list(&p, later)
                .iter()
                .filter(|e| e.score == 10)
                .count(),
            1
        );
        assert_eq!(bans.metrics.ban_untracked_failures.get(), 2);
    }

    #[test]
    fn ban_targets_parse_as_sources_or_prefixes() {
        let t = |s: &str| s.parse::<BanTarget>();
        assert_eq!(t("192.0.2.7"), Ok(BanTarget::Source(ip("192.0.2.7"))));
        assert_eq!(t("192.0.2.7/32"), Ok(BanTarget::Source(ip("192.0.2.7"))));
        assert_eq!(
            t("2001:db8::5/64"),
            Ok(BanTarget::Source(ip("2001:db8::5")))
        );
        assert_eq!(
            t("192.0.2.77/24"),
            Ok(BanTarget::Prefix("192.0.2.0/24".parse().unwrap()))
        );
        assert_eq!(
            t("2001:db8:1:2::/48").map(|b| b.to_string()),
            Ok("2001:db8:1::/48".to_owned())
        );
        for bad in [
            "2001:db8::/80",
            "0.0.0.0/0",
            "::/0",
            "192.0.2.1/33",
            "example",
        ] {
            assert!(t(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_prefix_ban_refuses_every_source_in_it_until_lifted_or_ended() {
        let bans = Bans::new(Metrics::new());
        let now = Instant::now();
        let p48: BanTarget = "2001:db8:1::/48".parse().unwrap();
        let p24: BanTarget = "192.0.2.0/24".parse().unwrap();
        bans.ban_target(p48, None, now).unwrap();
        bans.ban_target(p24, Some(Duration::from_secs(30)), now)
            .unwrap();
        // Banning it again replaces its end: still one ban.
        bans.ban_target(p24, Some(Duration::from_secs(60)), now)
            .unwrap();
        assert_eq!(bans.metrics.bans_active.get(), 2);
        assert_eq!(
            bans.admit(ip("2001:db8:1:ffff::1"), 0, now).unwrap_err(),
            Refusal::Banned
        );
        assert!(bans.admit(ip("2001:db8:2::1"), 0, now).is_ok());
        assert!(bans.is_banned(ip("::ffff:192.0.2.200"), now), "IPv4-mapped");
        assert!(!bans.is_banned(ip("192.0.3.1"), now));
        let listed = bans.list(&policy(), now);
        let prefixes: Vec<_> = listed
            .iter()
            .filter_map(|e| {
                e.prefix_len
                    .map(|l| (e.address, l, e.ban_remaining_secs, e.manual))
            })
            .collect();
        assert_eq!(
            prefixes,
            vec![
                (ip("192.0.2.0"), 24, Some(60), true),
                (ip("2001:db8:1::"), 48, None, true)
            ]
        );
        // Lifting needs the prefix as banned, not an address in it.
        assert!(!bans.unban_target(BanTarget::Source(ip("2001:db8:1::9")), now));
        assert!(bans.unban_target(p48, now));
        assert!(!bans.unban_target(p48, now));
        assert!(!bans.is_banned(ip("2001:db8:1:ffff::1"), now));
        assert_eq!(bans.metrics.bans_active.get(), 1);
        let later = now + Duration::from_secs(61);
        bans.sweep(&policy(), later);
        assert!(!bans.is_banned(ip("192.0.2.200"), later));
        assert!(bans.list(&policy(), later).is_empty());
        assert_eq!(bans.metrics.bans_active.get(), 0);
        assert_eq!(bans.metrics.bans.with_label_values(&["manual"]).get(), 3);
    }

    #[test]
    fn prefix_bans_are_saved_restored_and_capped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(BANS_FILE);
        let first = Bans::persistent(Metrics::new(), path.clone());
        let now = Instant::now();
        first
            .ban_target("2001:db8:1::/48".parse().unwrap(), None, now)
            .unwrap();
        first
            .ban_target(
                "198.51.100.0/24".parse().unwrap(),
                Some(Duration::from_secs(600)),
                now,
            )
            .unwrap();
        first.ban(ip("198.51.100.7"), None, now);
        assert!(first.save().unwrap());

        let second = Bans::persistent(Metrics::new(), path);
        let now = Instant::now();
        assert_eq!(second.metrics.bans_active.get(), 3);
        assert!(second.is_banned(ip("2001:db8:1:5::1"), now));
        assert!(second.is_banned(ip("198.51.100.99"), now));
        let e = second
            .list(&policy(), now)
            .into_iter()
            .find(|e| e.prefix_len == Some(24))
            .unwrap();
        assert!(matches!(e.ban_remaining_secs, Some(599..=601)), "{e:?}");
        // The address banned inside the prefix is its own ban: lifting the prefix keeps it.
        assert!(second.unban_target("198.51.100.0/24".parse().unwrap(), now));
        assert!(second.is_banned(ip("198.51.100.7"), now));
        assert!(!second.is_banned(ip("198.51.100.8"), now));

        for i in 0..MAX_PREFIX_BANS - 1 {
            let net = IpNet::new(ip(&format!("10.{}.{}.0", i / 256, i % 256)), 24).unwrap();
            second
                .ban_target(BanTarget::Prefix(net), None, now)
                .unwrap();
        }
        let err = second
            .ban_target("203.0.113.0/24".parse().unwrap(), None, now)
            .unwrap_err();
        assert!(err.contains("prefixes are banned already"), "{err}");
    }

    #[test]
    fn automatic_bans_off_when_max_score_is_zero() {
        let bans = Bans::new(Metrics::new());
        let p = BanConfig {
            max_score: 0,
            ..policy()
        };
        let now = Instant::now();
        for _ in 0..100 {
            assert!(!bans.record_failure(ip("192.0.2.1"), &p, now));
        }
        assert!(bans.admit(ip("192.0.2.1"), 0, now).is_ok());
    }
}
