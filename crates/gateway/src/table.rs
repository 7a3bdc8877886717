//! The session table: from a tunnel address to the connection that carries it.
//!
//! The packet path looks up every downstream packet here, so the lookup takes no lock: the table is
//! a flat array with one atomic pointer ([`ArcSwapOption`]) per pool slot, indexed by the slot number
//! that [`Pool`] derives from the address with two subtractions. Writers (a CONNECT, a disconnect)
//! swap the pointer; readers never wait for them.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use tokio::sync::mpsc;

use crate::pool::Pool;

/// The downstream end of one live tunnel connection.
#[derive(Debug)]
pub struct Route {
    /// The session this connection belongs to.
    pub session_id: u64,
    /// Bounded queue of ready CSTP frames (header included) for the connection's writer.
    pub tx: mpsc::Sender<Bytes>,
    /// Per-session traffic counters.
    pub stats: Arc<SessionStats>,
    /// The data-plane thread the session lives on ([`crate::dataplane::thread_index`]).
    pub thread: u16,
}

/// Per-session counters, updated without locks.
#[derive(Debug, Default)]
pub struct SessionStats {
    /// Packets from the client to the network.
    pub packets_up: AtomicU64,
    /// Bytes (IP packets) from the client to the network.
    pub bytes_up: AtomicU64,
    /// Packets from the network to the client.
    pub packets_down: AtomicU64,
    /// Bytes (IP packets) from the network to the client.
    pub bytes_down: AtomicU64,
    /// Downstream packets dropped because this client's queue was full.
    pub dropped_queue_full: AtomicU64,
    /// Upstream packets dropped because their source was not the session's address.
    pub dropped_spoofed: AtomicU64,
}

impl SessionStats {
    /// Adds one packet of `len` bytes travelling to the client.
    #[inline]
    pub fn add_down(&self, len: usize) {
        self.packets_down.fetch_add(1, Ordering::Relaxed);
        self.bytes_down.fetch_add(len as u64, Ordering::Relaxed);
    }

    /// Adds one packet of `len` bytes travelling from the client.
    #[inline]
    pub fn add_up(&self, len: usize) {
        self.packets_up.fetch_add(1, Ordering::Relaxed);
        self.bytes_up.fetch_add(len as u64, Ordering::Relaxed);
    }
}

/// Tunnel address to live connection, one slot per pool address.
#[derive(Debug)]
pub struct SessionTable {
    pool: Arc<Pool>,
    slots: Box<[ArcSwapOption<Route>]>,
}

impl SessionTable {
    /// An empty table sized for `pool`.
    pub fn new(pool: Arc<Pool>) -> Self {
        let slots = (0..pool.size()).map(|_| ArcSwapOption::empty()).collect();
        Self { pool, slots }
    }

    /// The route for a destination address, if a live connection holds it. Lock-free.
    #[inline]
    pub fn lookup(&self, dst: IpAddr) -> Option<Arc<Route>> {
        let index = match dst {
            IpAddr::V4(a) => self.pool.index_of_v4(a)?,
            IpAddr::V6(a) => self.pool.index_of_v6(a)?,
        };
        self.slots.get(index as usize)?.load_full()
    }

    /// Installs `route` for slot `index`, returning the connection it replaces (a reconnect that
    /// arrived before the old TCP connection died).
    pub fn install(&self, index: u32, route: Arc<Route>) -> Option<Arc<Route>> {
        self.slots.get(index as usize)?.swap(Some(route))
    }

    /// Removes the route of slot `index` only if it is still `route` (a newer connection of the same
    /// session may have replaced it already).
    pub fn remove_if(&self, index: u32, route: &Arc<Route>) -> bool {
        let Some(slot) = self.slots.get(index as usize) else {
            return false;
        };
        let prev = slot.compare_and_swap(&Some(Arc::clone(route)), None);
        matches!(&*prev, Some(p) if Arc::ptr_eq(p, route))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(id: u64) -> Arc<Route> {
        let (tx, _rx) = mpsc::channel(1);
        Arc::new(Route {
            session_id: id,
            tx,
            stats: Arc::default(),
            thread: 0,
        })
    }

    #[test]
    fn lookup_finds_installed_route_by_v4_and_v6() {
        let pool = Pool::new(
            "10.9.0.0/24".parse().unwrap(),
            Some("fd00:9::/64".parse().unwrap()),
        );
        let table = SessionTable::new(Arc::clone(&pool));
        let lease = pool.allocate().unwrap();
        assert!(table.lookup(IpAddr::V4(lease.ipv4())).is_none());
        table.install(lease.index(), route(7));
        assert_eq!(
            table.lookup(IpAddr::V4(lease.ipv4())).unwrap().session_id,
            7
        );
        assert_eq!(
            table
                .lookup(IpAddr::V6(lease.ipv6().unwrap()))
                .unwrap()
                .session_id,
            7
        );
        assert!(table.lookup("10.9.0.1".parse().unwrap()).is_none());
        assert!(table.lookup("8.8.8.8".parse().unwrap()).is_none());
    }

    #[test]
    fn remove_if_only_removes_the_same_connection() {
        let pool = Pool::new("10.9.0.0/24".parse().unwrap(), None);
        let table = SessionTable::new(Arc::clone(&pool));
        let old = route(1);
        let new = route(1);
        table.install(0, Arc::clone(&old));
        let replaced = table.install(0, Arc::clone(&new)).unwrap();
        assert!(Arc::ptr_eq(&replaced, &old));
        assert!(
            !table.remove_if(0, &old),
            "stale connection must not remove its successor"
        );
        assert!(table.lookup(IpAddr::V4(pool.ipv4_of(0))).is_some());
        assert!(table.remove_if(0, &new));
        assert!(table.lookup(IpAddr::V4(pool.ipv4_of(0))).is_none());
    }

    #[test]
    fn lookups_under_two_threads_while_swapping() {
        let pool = Pool::new("10.9.0.0/24".parse().unwrap(), None);
        let table = Arc::new(SessionTable::new(Arc::clone(&pool)));
        let addr = IpAddr::V4(pool.ipv4_of(3));
        let reader = {
            let table = Arc::clone(&table);
            std::thread::spawn(move || {
                let mut seen = 0u32;
                for _ in 0..200_000 {
                    if let Some(r) = table.lookup(addr) {
                        assert!(r.session_id < 1000);
                        seen += 1;
                    }
                }
                seen
            })
        };
        for i in 0..1000 {
            let r = route(i);
            table.install(3, Arc::clone(&r));
            table.remove_if(3, &r);
        }
        reader.join().unwrap();
        assert!(table.lookup(addr).is_none());
    }
}
