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
//!
//! The free list is split into *stripes*, one per data-plane thread ([`Pool::set_stripes`]): slot
//! `i` belongs to stripe `i % stripes`. A session takes its address from its own thread's stripe
//! ([`Pool::allocate_on`]), so the TUN steering program ([`crate::steering`]) can send every
//! downstream packet to the right thread's queue from its destination address alone. When a
//! stripe runs dry the session takes a slot from the fullest other stripe: every address of the
//! pool stays usable, and such a session's replies are only read on another thread.

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
    /// Free slots, one FIFO per stripe (at least one): slot `i` is in `free[i % free.len()]`.
    free: Vec<VecDeque<u32>>,
    in_use: Vec<bool>,
}

impl FreeList {
    /// How many slots are free, over all stripes (one per data-plane thread).
    fn len(&self) -> usize {
        self.free.iter().map(VecDeque::len).sum()
    }

    /// The oldest free slot of `stripe`, or of the fullest stripe when that one is empty.
    fn pop(&mut self, stripe: usize) -> Option<u32> {
        let own = self.free.get_mut(stripe).and_then(VecDeque::pop_front);
        own.or_else(|| {
            self.free
                .iter_mut()
                .max_by_key(|f| f.len())
                .and_then(VecDeque::pop_front)
        })
    }

    fn push(&mut self, index: u32) {
        let stripes = self.free.len().max(1);
        if let Some(f) = self.free.get_mut(index as usize % stripes) {
            f.push_back(index);
        }
    }
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
        let free = vec![(0..size).collect()];
        let in_use = vec![false; size as usize];
        Arc::new(Self {
            v4,
            v6,
            size,
            state: Mutex::new(FreeList { free, in_use }),
        })
    }

    /// Splits the free list into `n` stripes (at least one): slot `i` goes to stripe `i % n`.
    /// Free slots keep their order within each stripe; leased ones join their stripe when released.
    pub fn set_stripes(&self, n: usize) {
        let n = n.max(1);
        let mut st = self.lock();
        let mut free = vec![VecDeque::new(); n];
        for index in st.free.iter().flatten().copied() {
            if let Some(f) = free.get_mut(index as usize % n) {
                f.push_back(index);
            }
        }
        st.free = free;
    }

    /// How many client addresses the pool has.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// How many are leased now.
    pub fn in_use(&self) -> u32 {
        self.size - self.lock().len() as u32
    }

    /// The configured IPv4 network.
    pub fn ipv4_net(&self) -> Ipv4Net {
        self.v4
    }

    /// The configured IPv6 network, if any.
    pub fn ipv6_net(&self) -> Option<Ipv6Net> {
        self.v6
    }

    /// Leases the address that has been free the longest (of the fullest stripe).
    pub fn allocate(self: &Arc<Self>) -> Result<Lease, PoolError> {
        self.allocate_on(usize::MAX)
    }

    /// Leases the address of stripe `stripe` that has been free the longest, or, when that stripe
    /// has none (or does not exist), of the fullest stripe.
    pub fn allocate_on(self: &Arc<Self>, stripe: usize) -> Result<Lease, PoolError> {
        let mut st = self.lock();
        let index = st.pop(stripe).ok_or(PoolError::Exhausted {
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
                st.push(index);
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
        assert_eq!(pool.lock().len(), 5);
    }

    #[test]
    fn stripes_hand_out_their_own_slots_then_borrow_from_the_fullest() {
        let pool = Pool::new("10.0.0.0/28".parse().unwrap(), None);
        assert_eq!(pool.size(), 13);
        pool.set_stripes(3);
        assert_eq!(pool.lock().free.len(), 3);
        // Stripe 1 holds slots 1, 4, 7, 10, oldest first.
        let own: Vec<_> = (0..4).map(|_| pool.allocate_on(1).unwrap()).collect();
        assert_eq!(
            own.iter().map(Lease::index).collect::<Vec<_>>(),
            [1, 4, 7, 10]
        );
        // Then stripe 0 (five slots left) lends before stripe 2 (four).
        let borrowed = pool.allocate_on(1).unwrap();
        assert_eq!(borrowed.index(), 0);
        // A released slot goes back to its own stripe, last.
        drop(own);
        let again: Vec<_> = (0..4)
            .map(|_| pool.allocate_on(1).unwrap().index())
            .collect();
        assert_eq!(again, [1, 4, 7, 10]);
        assert_eq!(pool.in_use(), 1);
        // Every slot stays usable: 12 more leases from any stripe, then the pool is exhausted.
        let rest: Vec<_> = (0..12).map(|_| pool.allocate_on(2).unwrap()).collect();
        assert_eq!(pool.in_use(), 13);
        assert!(pool.allocate_on(0).is_err());
        drop(rest);
        drop(borrowed);
        assert_eq!(pool.in_use(), 0);
        // Re-striping keeps every free slot.
        pool.set_stripes(2);
        let all: Vec<Lease> = (0..13).map(|_| pool.allocate().unwrap()).collect();
        let distinct: std::collections::BTreeSet<u32> = all.iter().map(Lease::index).collect();
        assert_eq!(distinct.len(), 13);
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
