//! Dropping root once the privileged start-up is done (`server.user`).
//!
//! tunneld needs root, or at least `CAP_NET_ADMIN` and `CAP_NET_BIND_SERVICE`, to create its TUN
//! device, turn on forwarding, install the NAT table and bind port 443. After that it only moves
//! packets through descriptors it already holds. With `server.user` set it then switches every thread
//! to that user and keeps only those two capabilities:
//!
//! 1. [`prepare`], called in `main` **before the tokio runtime starts its threads**, looks the user up
//!    and sets `no_new_privs`. That flag is inherited by every thread created afterwards, so no thread
//!    can ever regain a capability by executing a set-user-ID or file-capability program.
//! 2. [`PrivDrop::apply`], called on the main thread once the gateway has started, sets
//!    `PR_SET_KEEPCAPS` on the main thread only, then changes the groups, gid and uid. glibc applies
//!    uid/gid changes to every thread of the process; the kernel clears all capabilities of every
//!    thread that did not ask to keep them, i.e. of every runtime worker. The main thread then drops
//!    every capability except `CAP_NET_ADMIN` and `CAP_NET_BIND_SERVICE` from its bounding set (when
//!    it may), and sets those two as its permitted, effective, inheritable and ambient sets.
//!
//! The result: worker threads (everything that handles client traffic) run as the user with no
//! capability at all; the main thread, which only waits for the shutdown signal and then drains and
//! removes the NAT table (`nft`, which inherits `CAP_NET_ADMIN` through the ambient set), keeps the
//! two. Capabilities are per thread in Linux; code that needs `CAP_NET_ADMIN` after the drop must run
//! on the main thread (the future given to `block_on`).

use std::collections::HashSet;
use std::path::Path;

use caps::{CapSet, Capability, CapsHashSet};
use nix::unistd::{Gid, Uid, User};

/// The capabilities kept after the drop.
pub const KEPT: [Capability; 2] = [Capability::CAP_NET_ADMIN, Capability::CAP_NET_BIND_SERVICE];

/// Why privileges could not be dropped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PrivDropError {
    /// The user name is not known to the system (`/etc/passwd` or another NSS source).
    #[error("server.user: no user named {0:?} on this system (add it, or in the container image use \"tunneld\")")]
    UnknownUser(String),
    /// Looking the user up failed.
    #[error("server.user: cannot look up user {name:?}: {source}")]
    Lookup {
        /// The user name.
        name: String,
        /// The underlying error.
        source: nix::Error,
    },
    /// The user is root: nothing would be dropped.
    #[error("server.user: {0:?} has uid 0; name an unprivileged user")]
    RootUser(String),
    /// The process is neither root nor already the target user.
    #[error("server.user: cannot switch to {name:?} (uid {uid}): the daemon runs as uid {current}, not root")]
    NotRoot {
        /// The user name.
        name: String,
        /// The target uid.
        uid: u32,
        /// The current effective uid.
        current: u32,
    },
    /// A system call of the drop failed.
    #[error("dropping privileges to {name:?}: {step}: {reason}")]
    Syscall {
        /// The user name.
        name: String,
        /// What was being done.
        step: &'static str,
        /// The error.
        reason: String,
    },
}

/// A looked-up user to switch to; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrivDrop {
    /// The user name.
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid (the only group kept).
    pub gid: u32,
}

/// What the process looks like after [`PrivDrop::apply`], for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// The user name.
    pub name: String,
    /// Real, effective and saved uid (all equal).
    pub uid: u32,
    /// Real, effective and saved gid (all equal).
    pub gid: u32,
    /// The main thread's effective capabilities, by name (`CAP_NET_ADMIN`, ...), sorted.
    pub capabilities: Vec<String>,
    /// True when the process already ran as the user (e.g. `--user` on the container) and nothing
    /// had to change.
    pub already: bool,
}

/// Looks `name` up and sets `no_new_privs` for this thread and every thread it creates later. Call
/// it before the tokio runtime is built.
pub fn prepare(name: &str) -> Result<PrivDrop, PrivDropError> {
    let target = lookup(name)?;
    nix::sys::prctl::set_no_new_privs().map_err(|e| target.fail("PR_SET_NO_NEW_PRIVS", e))?;
    Ok(target)
}

/// Looks `name` up without changing anything (for `tunneld --check`).
pub fn lookup(name: &str) -> Result<PrivDrop, PrivDropError> {
    let user = User::from_name(name)
        .map_err(|source| PrivDropError::Lookup {
            name: name.to_owned(),
            source,
        })?
        .ok_or_else(|| PrivDropError::UnknownUser(name.to_owned()))?;
    if user.uid.is_root() {
        return Err(PrivDropError::RootUser(name.to_owned()));
    }
    Ok(PrivDrop {
        name: name.to_owned(),
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
    })
}

impl PrivDrop {
    fn fail(&self, step: &'static str, reason: impl ToString) -> PrivDropError {
        PrivDropError::Syscall {
            name: self.name.clone(),
            step,
            reason: reason.to_string(),
        }
    }

    /// Gives `dir` and the regular files directly in it to the user, so that the daemon can still
    /// read and regenerate its own state after the drop (a reload re-reads the self-signed
    /// certificate and key, which are created mode 0600). Needs CAP_CHOWN; call it before
    /// [`Self::apply`]. Returns how many files changed owner.
    pub fn hand_over(&self, dir: &Path) -> Result<usize, PrivDropError> {
        let chown = |p: &Path| {
            std::os::unix::fs::chown(p, Some(self.uid), Some(self.gid)).map_err(|e| {
                self.fail(
                    "chown of the state directory",
                    format!("{}: {e}", p.display()),
                )
            })
        };
        if !dir.is_dir() {
            return Ok(0);
        }
        chown(dir)?;
        let mut n = 0;
        let entries =
            std::fs::read_dir(dir).map_err(|e| self.fail("reading the state directory", e))?;
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_file()) {
                chown(&entry.path())?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Switches the whole process to the user and keeps only [`KEPT`] on this (the main) thread.
    /// Call it on the main thread, after every privileged set-up step.
    pub fn apply(&self) -> Result<Dropped, PrivDropError> {
        let (uid, gid) = (Uid::from_raw(self.uid), Gid::from_raw(self.gid));
        let current = Uid::effective();
        if current == uid {
            return self.report(true);
        }
        if !current.is_root() {
            return Err(PrivDropError::NotRoot {
                name: self.name.clone(),
                uid: self.uid,
                current: current.as_raw(),
            });
        }
        caps::securebits::set_keepcaps(true).map_err(|e| self.fail("PR_SET_KEEPCAPS", e))?;
        nix::unistd::setgroups(&[gid]).map_err(|e| self.fail("setgroups", e))?;
        nix::unistd::setresgid(gid, gid, gid).map_err(|e| self.fail("setresgid", e))?;
        nix::unistd::setresuid(uid, uid, uid).map_err(|e| self.fail("setresuid", e))?;

        let permitted = caps::read(None, CapSet::Permitted)
            .map_err(|e| self.fail("reading capabilities", e))?;
        let keep: CapsHashSet = KEPT
            .iter()
            .copied()
            .filter(|c| permitted.contains(c))
            .collect();
        // The bounding set limits what any later execve could grant. Changing it needs
        // CAP_SETPCAP; a container started with only the needed capabilities has a bounding set
        // that is already small, and no_new_privs covers the rest.
        if permitted.contains(&Capability::CAP_SETPCAP) {
            caps::raise(None, CapSet::Effective, Capability::CAP_SETPCAP)
                .map_err(|e| self.fail("raising CAP_SETPCAP", e))?;
            let bounding = caps::read(None, CapSet::Bounding)
                .map_err(|e| self.fail("reading the bounding set", e))?;
            for cap in bounding.difference(&keep) {
                caps::drop(None, CapSet::Bounding, *cap)
                    .map_err(|e| self.fail("PR_CAPBSET_DROP", e))?;
            }
        }
        for set in [CapSet::Effective, CapSet::Inheritable, CapSet::Permitted] {
            caps::set(None, set, &keep).map_err(|e| self.fail("capset", e))?;
        }
        // Ambient: inherited by programs the main thread runs (nft removing the NAT table on exit).
        caps::set(None, CapSet::Ambient, &keep)
            .map_err(|e| self.fail("PR_CAP_AMBIENT_RAISE", e))?;
        caps::securebits::set_keepcaps(false).map_err(|e| self.fail("PR_SET_KEEPCAPS", e))?;
        self.report(false)
    }

    /// Reads back what the process now is, and checks it is what was asked for.
    fn report(&self, already: bool) -> Result<Dropped, PrivDropError> {
        let uids = nix::unistd::getresuid().map_err(|e| self.fail("getresuid", e))?;
        let gids = nix::unistd::getresgid().map_err(|e| self.fail("getresgid", e))?;
        let all_uid = [uids.real, uids.effective, uids.saved]
            .iter()
            .all(|u| u.as_raw() == self.uid);
        let all_gid = [gids.real, gids.effective, gids.saved]
            .iter()
            .all(|g| g.as_raw() == self.gid);
        if !all_uid || !(all_gid || already) {
            return Err(self.fail(
                "checking the result",
                format!("uids {uids:?} gids {gids:?} after the switch"),
            ));
        }
        let effective = caps::read(None, CapSet::Effective)
            .map_err(|e| self.fail("reading capabilities", e))?;
        let allowed: HashSet<Capability> = KEPT.into_iter().collect();
        if !already && !effective.is_subset(&allowed) {
            return Err(self.fail(
                "checking the result",
                format!("capabilities {effective:?} left after the switch"),
            ));
        }
        let mut capabilities: Vec<String> = effective.iter().map(ToString::to_string).collect();
        capabilities.sort();
        Ok(Dropped {
            name: self.name.clone(),
            uid: self.uid,
            gid: gids.effective.as_raw(),
            capabilities,
            already,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_user_is_an_error_naming_it() {
        let err = lookup("no-such-user-tunneld-test").unwrap_err();
        assert!(matches!(err, PrivDropError::UnknownUser(_)), "{err}");
        assert!(err.to_string().contains("no-such-user-tunneld-test"));
    }

    #[test]
    fn root_is_refused_as_the_target_user() {
        let err = lookup("root").unwrap_err();
        assert!(matches!(err, PrivDropError::RootUser(_)), "{err}");
    }

    #[test]
    fn an_existing_unprivileged_user_resolves_to_its_ids() {
        // `nobody` exists on every Debian/RHEL system (uid 65534).
        let p = lookup("nobody").unwrap();
        assert_eq!(p.name, "nobody");
        assert_ne!(p.uid, 0);
    }

    #[test]
    fn kept_capabilities_are_net_admin_and_net_bind_service() {
        let mask: u64 = KEPT.iter().map(Capability::bitmask).sum();
        assert_eq!(mask, (1 << 12) | (1 << 10));
    }
}
