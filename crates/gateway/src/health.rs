//! What `/readyz` answers: the daemon is ready when its TLS listener is accepting, its TUN device is
//! up and running with both data-plane tasks alive, and it is not draining.
//!
//! The listener and data-plane tasks set their flags; the TUN's flags (IFF_UP and IFF_RUNNING) are
//! read from the kernel at each probe, so `ip link set tunneld0 down` makes the node unready.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::dataplane::Tun;

/// Liveness flags of the parts `/readyz` depends on.
#[derive(Debug)]
pub struct Health {
    listening: AtomicBool,
    downstream: AtomicBool,
    upstream: AtomicBool,
    tun: Option<Tun>,
}

/// A data-plane direction, for [`Health::set_dataplane`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// TUN to clients.
    Down,
    /// Clients to TUN.
    Up,
}

impl Health {
    /// Flags for a gateway whose TUN device is `tun` (`None` in tests without one); everything
    /// starts "not running" until its task reports in.
    pub fn new(tun: Option<Tun>) -> Self {
        Self {
            listening: AtomicBool::new(false),
            downstream: AtomicBool::new(false),
            upstream: AtomicBool::new(false),
            tun,
        }
    }

    /// The TLS accept loop is running (`true`) or has stopped.
    pub fn set_listening(&self, on: bool) {
        self.listening.store(on, Ordering::Relaxed);
    }

    /// A data-plane task is running (`true`) or has stopped.
    pub fn set_dataplane(&self, dir: Direction, on: bool) {
        match dir {
            Direction::Down => self.downstream.store(on, Ordering::Relaxed),
            Direction::Up => self.upstream.store(on, Ordering::Relaxed),
        }
    }

    /// True while the TLS listener accepts connections.
    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Relaxed)
    }

    /// Whether the TUN device is up and running and both data-plane tasks are alive; `Err` says
    /// which part is not.
    pub fn tun_state(&self) -> Result<(), String> {
        if !self.downstream.load(Ordering::Relaxed) {
            return Err("TUN reader stopped".to_owned());
        }
        if !self.upstream.load(Ordering::Relaxed) {
            return Err("TUN writer stopped".to_owned());
        }
        match &self.tun {
            None => Ok(()),
            Some(t) => match t.dev.is_running() {
                Ok(true) => Ok(()),
                Ok(false) => Err("TUN device is down".to_owned()),
                Err(e) => Err(format!("TUN device state unknown: {e}")),
            },
        }
    }

    /// `Ok` when ready; otherwise every reason it is not, for the `/readyz` body.
    pub fn readiness(&self, draining: bool) -> Result<(), Vec<String>> {
        let mut why = Vec::new();
        if draining {
            why.push("draining".to_owned());
        }
        if !self.is_listening() {
            why.push("not listening".to_owned());
        }
        if let Err(e) = self.tun_state() {
            why.push(e);
        }
        if why.is_empty() {
            Ok(())
        } else {
            Err(why)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_listening_with_both_dataplane_tasks_and_not_draining() {
        let h = Health::new(None);
        assert_eq!(
            h.readiness(false).unwrap_err(),
            vec!["not listening", "TUN reader stopped"]
        );
        h.set_listening(true);
        h.set_dataplane(Direction::Down, true);
        assert_eq!(h.readiness(false).unwrap_err(), vec!["TUN writer stopped"]);
        h.set_dataplane(Direction::Up, true);
        assert!(h.readiness(false).is_ok());
        assert_eq!(h.readiness(true).unwrap_err(), vec!["draining"]);
        h.set_dataplane(Direction::Down, false);
        assert!(h.readiness(false).is_err());
    }
}
