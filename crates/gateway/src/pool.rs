//! The client address pool.
//!
//! Every client session gets one *slot*: an index into the pool. Slot `i` maps to the IPv4 address
//! `network + 2 + i` (the first host address, `network + 1`, is the gateway's own address on the TUN)
//! and, when an IPv6 pool is configured, to `prefix + 2 + i`. One index for both families keeps the
//! session table a flat array (see [`crate::table`]).
//!
//! Allocation and release are O(1): a FIFO free list, so a released address is reused last, which
//! keeps a reconnecting client's stale packets from reaching a newcomer. A [`Lease`] releases its
//! slot when dropped, so an address goes back exactly once, whatever path ends the session.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};

use ipnet::{Ipv4Net, Ipv6Net};

/// The pool's address plan plus its free list.
#[derive(Debug)]
pub struct Pool {
    v4: Ipv4Net,
    v6: Option<Ipv6Net>,
    size: u32,
    state: Mutex<FreeList>,
}

#[derive(Debug)]
struct FreeList {
    free: VecDeque<u32>,
    in_use: Vec<bool>,
}

/// Why an address could not be handed out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// Every address of the pool is leased.
    #[error("no free address in pool {pool} ({size} addresses, all in use)")]
    Exhausted {
        /// The configured IPv4 pool.
        pool: Ipv4Net,
        /// How many client addresses it has.
        size: u32,
    },
}

impl Pool {
    /// Builds a pool from the configured networks. The IPv4 pool's first host is the gateway's; the
    /// broadcast address is never handed out. An IPv6 pool mirrors the IPv4 slots.
    pub fn new(v4: Ipv4Net, v6: Option<Ipv6Net>) -> Arc<Self> {
        let size = client_slots(v4);
        let size = match v6 {
            Some(v6) => size.min(v6_slots(v6)),
            None => size,
        };
        let free = (0..size).collect();
        let in_use = vec![false; size as usize];
        Arc::new(Self {
            v4,
            v6,
            size,
            state: Mutex::new(FreeList { free, in_use }),
        })
    }

    /// How many client addresses the pool has.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// How many are leased now.
    pub fn in_use(&self) -> u32 {
        let st = self.lock();
        self.size - st.free.len() as u32
    }

    /// The configured IPv4 network.
    pub fn ipv4_net(&self) -> Ipv4Net {
        self.v4
    }

    /// The configured IPv6 network, if any.
    pub fn ipv6_net(&self) -> Option<Ipv6Net> {
        self.v6
    }

    /// Leases the address that has been free the longest.
    pub fn allocate(self: &Arc<Self>) -> Result<Lease, PoolError> {
        let mut st = self.lock();
        let index = st.free.pop_front().ok_or(PoolError::Exhausted {
            pool: self.v4,
            size: self.size,
        })?;
        if let Some(flag) = st.in_use.get_mut(index as usize) {
            *flag = true;
        }
        drop(st);
        Ok(Lease {
            pool: Arc::clone(self),
            index,
        })
    }

    /// The IPv4 address of slot `index`.
    pub fn ipv4_of(&self, index: u32) -> Ipv4Addr {
        Ipv4Addr::from(
            u32::from(self.v4.network())
                .wrapping_add(2)
                .wrapping_add(index),
        )
    }

    /// The IPv6 address of slot `index`, if an IPv6 pool is configured.
    pub fn ipv6_of(&self, index: u32) -> Option<Ipv6Addr> {
        self.v6.map(|n| {
            Ipv6Addr::from(
                u128::from(n.network())
                    .wrapping_add(2)
                    .wrapping_add(u128::from(index)),
            )
        })
    }

    /// The slot an IPv4 address belongs to, if it is a client address of this pool.
    #[inline]
    pub fn index_of_v4(&self, addr: Ipv4Addr) -> Option<u32> {
        let off = u32::from(addr)
            .wrapping_sub(u32::from(self.v4.network()))
            .wrapping_sub(2);
        (off < self.size).then_some(off)
    }

    /// The slot an IPv6 address belongs to, if it is a client address of this pool.
    #[inline]
    pub fn index_of_v6(&self, addr: Ipv6Addr) -> Option<u32> {
        let net = self.v6?;
        let off = u128::from(addr)
            .wrapping_sub(u128::from(net.network()))
            .wrapping_sub(2);
        (off < u128::from(self.size)).then_some(off as u32)
    }

    fn release(&self, index: u32) {
        let mut st = self.lock();
        match st.in_use.get_mut(index as usize) {
            Some(flag) if *flag => {
                *flag = false;
                st.free.push_back(index);
            }
            // A Lease is the only owner of its index, so this cannot happen; never push twice.
            _ => tracing::error!(index, "pool slot released twice or out of range; ignored"),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FreeList> {
        // The free list stays consistent even if a holder panicked: every update is one push/pop.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Client addresses in an IPv4 pool: hosts minus the gateway's own, broadcast excluded.
fn client_slots(v4: Ipv4Net) -> u32 {
    let total: u64 = 1u64 << (32 - u32::from(v4.prefix_len()));
    // network, gateway and broadcast are not handed out.
    total.saturating_sub(3).min(u64::from(u32::MAX)) as u32
}

fn v6_slots(v6: Ipv6Net) -> u32 {
    let host_bits = 128 - u32::from(v6.prefix_len());
    if host_bits >= 32 {
        u32::MAX
    } else {
        ((1u64 << host_bits).saturating_sub(2)) as u32
    }
}

/// One leased slot. Dropping it returns the address to the pool, exactly once.
#[derive(Debug)]
pub struct Lease {
    pool: Arc<Pool>,
    index: u32,
}

impl Lease {
    /// The slot index (the session table's key).
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The leased IPv4 address.
    pub fn ipv4(&self) -> Ipv4Addr {
        self.pool.ipv4_of(self.index)
    }

    /// The leased IPv6 address, when the pool has IPv6.
    pub fn ipv6(&self) -> Option<Ipv6Addr> {
        self.pool.ipv6_of(self.index)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.pool.release(self.index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slash_29_has_five_client_addresses_after_gateway_and_broadcast() {
        let pool = Pool::new("10.0.0.0/29".parse().unwrap(), None);
        assert_eq!(pool.size(), 5);
        let leases: Vec<_> = (0..5).map(|_| pool.allocate().unwrap()).collect();
        let addrs: Vec<_> = leases.iter().map(Lease::ipv4).collect();
        assert_eq!(
            addrs.first().unwrap(),
            &"10.0.0.2".parse::<Ipv4Addr>().unwrap()
        );
        assert_eq!(
            addrs.last().unwrap(),
            &"10.0.0.6".parse::<Ipv4Addr>().unwrap()
        );
        assert!(matches!(
            pool.allocate(),
            Err(PoolError::Exhausted { size: 5, .. })
        ));
        assert_eq!(pool.in_use(), 5);
    }

    #[test]
    fn dropped_lease_returns_its_address_once_and_last() {
        let pool = Pool::new("10.0.0.0/29".parse().unwrap(), None);
        let a = pool.allocate().unwrap();
        let a_ip = a.ipv4();
        drop(a);
        assert_eq!(pool.in_use(), 0);
        // FIFO: the four never-used addresses come before the released one.
        let next: Vec<_> = (0..5).map(|_| pool.allocate().unwrap()).collect();
        assert_eq!(next.last().unwrap().ipv4(), a_ip);
        drop(next);
        assert_eq!(pool.in_use(), 0);
        assert_eq!(pool.lock().free.len(), 5);
    }

    #[test]
    fn index_round_trips_and_rejects_foreign_addresses() {
        let pool = Pool::new(
            "10.1.0.0/24".parse().unwrap(),
            Some("fd00:1::/64".parse().unwrap()),
        );
        assert_eq!(pool.size(), 253);
        for i in [0, 1, 100, 252] {
            assert_eq!(pool.index_of_v4(pool.ipv4_of(i)), Some(i));
            assert_eq!(pool.index_of_v6(pool.ipv6_of(i).unwrap()), Some(i));
        }
        for bad in [
            "10.1.0.0",
            "10.1.0.1",
            "10.1.0.255",
            "10.1.1.2",
            "10.0.255.255",
        ] {
            assert_eq!(pool.index_of_v4(bad.parse().unwrap()), None, "{bad}");
        }
        for bad in ["fd00:1::", "fd00:1::1", "fd00:2::2", "fd00:1::ffff"] {
            assert_eq!(pool.index_of_v6(bad.parse().unwrap()), None, "{bad}");
        }
    }

    #[test]
    fn small_ipv6_pool_limits_the_slots() {
        let pool = Pool::new(
            "10.1.0.0/24".parse().unwrap(),
            Some("fd00:1::/126".parse().unwrap()),
        );
        assert_eq!(pool.size(), 2);
    }

    #[test]
    fn concurrent_allocate_release_never_duplicates() {
        let pool = Pool::new("10.2.0.0/22".parse().unwrap(), None);
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let pool = Arc::clone(&pool);
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        let l: Vec<_> = (0..50).map(|_| pool.allocate().unwrap()).collect();
                        let mut ix: Vec<_> = l.iter().map(Lease::index).collect();
                        ix.sort_unstable();
                        ix.dedup();
                        assert_eq!(ix.len(), 50);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(pool.in_use(), 0);
    }
}
