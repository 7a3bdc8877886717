//! Receive coalescing for the data-plane threads, as a NIC's adaptive interrupt moderation does it.
//!
//! A single bulk flow reaches the gateway one packet at a time: openconnect writes every packet as
//! its own TLS record (or DTLS datagram), about every 10 µs at 1 Gbit/s. A data-plane thread that
//! goes back to `epoll_wait` as soon as it has handled what arrived is woken for each one, and
//! pays per packet what it could pay per batch: the wake-up and scheduling, the `epoll_wait`, a
//! `recv`, a TUN write with nothing to coalesce (GRO needs several segments of a flow at once),
//! the receiving host's TCP stack run inside that write, an ACK sent back from the read.
//!
//! So a thread naps before it parks when two things say the wake-ups cost more than the work:
//! its last idle gaps were short (a streak of wake-ups each within `server.rx_coalesce_usecs` of
//! the thread parking: traffic arrives continuously) and its last pass was short too (less than
//! the nap: it handled only a little). It then sleeps `server.rx_coalesce_usecs` and handles what
//! arrived meanwhile in one pass. Measured here (docs/benchmarks.md): an openconnect upload at
//! 1.1-1.4 Gbit/s needed half the CPU per Gbit/s, and went faster, since the client shares the
//! cores.
//!
//! What does not nap: a thread that waited long for its last wake-up (interactive traffic, pings:
//! a request and its reply are one or two short gaps, never a streak); a thread whose passes are long
//! (many sessions at once: its batches are already large, and a nap would only add latency to a
//! closed loop); a thread that never runs out of work (it never parks). What a nap costs: under
//! sustained light-work traffic, a packet waits up to the nap (plus the kernel's timer slack)
//! before the thread looks at it.
//!
//! [`Moderation`] is the decision, on explicit instants (unit-tested); [`hooks`] wires it into a
//! current-thread Tokio runtime's park and unpark callbacks.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use prometheus::IntCounter;

/// How many short idle gaps in a row make a thread nap before parking: three. A ping wakes the
/// thread twice (its request, then its reply from the TUN: one short gap). A session whose DTLS
/// goes through the shared listening socket (no own socket) is woken a third time when the
/// reply's datagram leaves (the kernel reports a UDP socket writable again after each send, and
/// tokio registers that socket for it): two short gaps. Neither may nap. (Own sockets are
/// registered for reading only, [`crate::udp_own`].)
const STREAK: u32 = 3;

/// The decision of one thread: nap before parking, or not.
#[derive(Debug, Clone)]
pub struct Moderation {
    /// How long to nap; also the longest idle gap (parked to woken) and pass (woken to parking)
    /// that count as short.
    nap: Duration,
    parked_at: Option<Instant>,
    woke_at: Option<Instant>,
    streak: u32,
}

impl Moderation {
    /// A thread that naps for `nap` under sustained traffic; `Duration::ZERO` never naps.
    #[must_use]
    pub fn new(nap: Duration) -> Self {
        Self {
            nap,
            parked_at: None,
            woke_at: None,
            streak: 0,
        }
    }

    /// The thread woke at `now` (from parking).
    pub fn woke(&mut self, now: Instant) {
        self.woke_at = Some(now);
        if let Some(parked) = self.parked_at.take() {
            if now.saturating_duration_since(parked) < self.nap {
                self.streak = self.streak.saturating_add(1);
            } else {
                self.streak = 0;
            }
        }
    }

    /// The thread ran out of work at `now` and is about to park: how long it should sleep first
    /// (`None`: park at once). Call [`Moderation::parked`] when it parks.
    #[must_use]
    pub fn nap_before_parking(&self, now: Instant) -> Option<Duration> {
        let light_pass = self
            .woke_at
            .is_some_and(|w| now.saturating_duration_since(w) < self.nap);
        (!self.nap.is_zero() && self.streak >= STREAK && light_pass).then_some(self.nap)
    }

    /// The thread parks at `now` (after its nap, if any).
    pub fn parked(&mut self, now: Instant) {
        self.parked_at = Some(now);
    }
}

thread_local! {
    static THREAD: RefCell<Moderation> = RefCell::new(Moderation::new(Duration::ZERO));
}

/// The park and unpark callbacks of a data-plane runtime napping for `nap` (see the module doc),
/// counting its naps in `naps`.
pub fn hooks(
    nap: Duration,
    naps: IntCounter,
) -> (
    impl Fn() + Send + Sync + 'static,
    impl Fn() + Send + Sync + 'static,
) {
    let before_park = move || {
        THREAD.with_borrow_mut(|m| {
            if m.nap != nap {
                *m = Moderation::new(nap);
            }
            if let Some(d) = m.nap_before_parking(Instant::now()) {
                naps.inc();
                std::thread::sleep(d);
            }
            m.parked(Instant::now());
        });
    };
    let after_unpark = || THREAD.with_borrow_mut(|m| m.woke(Instant::now()));
    (before_park, after_unpark)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAP: Duration = Duration::from_micros(100);

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    /// One pass of a thread: woken `gap` after it last parked, busy for `busy`, then parked
    /// (after its nap, if it took one). Returns the nap taken and the time the thread parked.
    fn pass(
        m: &mut Moderation,
        at: Instant,
        gap: Duration,
        busy: Duration,
    ) -> (Option<Duration>, Instant) {
        let woke = at + gap;
        m.woke(woke);
        let done = woke + busy;
        let nap = m.nap_before_parking(done);
        let parked = done + nap.unwrap_or_default();
        m.parked(parked);
        (nap, parked)
    }

    #[test]
    fn naps_only_after_a_streak_of_short_gaps_and_light_passes() {
        let t0 = Instant::now();
        let mut m = Moderation::new(NAP);
        assert_eq!(
            m.nap_before_parking(t0),
            None,
            "a fresh thread parks at once"
        );
        m.parked(t0);
        // Pings 10 ms apart: each request after a long wait, its reply 25 µs after that, and (over
        // DTLS) a wake-up when the reply's datagram has left. Two short gaps at most: no nap.
        let mut t = t0;
        for _ in 0..3 {
            let (nap, p) = pass(&mut m, t, us(10_000), us(10));
            assert_eq!(nap, None, "a request");
            let (nap, p) = pass(&mut m, p, us(25), us(10));
            assert_eq!(nap, None, "its reply");
            let (nap, p) = pass(&mut m, p, us(5), us(2));
            assert_eq!(nap, None, "the reply's datagram sent");
            t = p;
        }
        // A bulk flow starts after a long wait: a packet 10 µs after each park, 5 µs of work. The
        // third short gap in a row naps, and naps go on while the gaps and passes stay short.
        let (_, mut t) = pass(&mut m, t, us(10_000), us(5));
        for i in 0..2 {
            let (nap, p) = pass(&mut m, t, us(10), us(5));
            assert_eq!(nap, None, "{} short gap(s) so far", i + 1);
            t = p;
        }
        for i in 0..5 {
            let (nap, p) = pass(&mut m, t, us(10), us(5));
            assert_eq!(nap, Some(NAP), "pass {i} of the flow");
            t = p;
        }
        // Many sessions at once: the passes take longer than the nap, so no nap.
        let (nap, p) = pass(&mut m, t, us(10), us(400));
        assert_eq!(nap, None, "a long pass");
        // The flow stops: the first long gap ends the naps.
        let (nap, _) = pass(&mut m, p, us(150), us(5));
        assert_eq!(nap, None, "a long gap");
    }

    #[test]
    fn a_zero_nap_never_naps() {
        let t0 = Instant::now();
        let mut m = Moderation::new(Duration::ZERO);
        m.parked(t0);
        let mut t = t0;
        for _ in 0..10 {
            let (nap, p) = pass(&mut m, t, us(1), us(1));
            assert_eq!(nap, None);
            t = p;
        }
    }

    #[test]
    fn the_hooks_nap_on_a_real_thread() {
        // A long nap, so that a test thread preempted for a few milliseconds on a busy machine
        // still counts its gaps and passes as short.
        let nap = Duration::from_millis(50);
        let naps = IntCounter::new("naps", "naps").unwrap();
        let (before_park, after_unpark) = hooks(nap, naps.clone());
        // Parked and woken at once, three times: a streak. The fourth park naps for real.
        for _ in 0..3 {
            before_park();
            after_unpark();
        }
        let start = Instant::now();
        before_park();
        assert!(start.elapsed() >= nap);
        assert_eq!(naps.get(), 1);
        // A long idle gap: the next park is immediate.
        std::thread::sleep(nap * 2);
        after_unpark();
        before_park();
        assert_eq!(naps.get(), 1);
    }
}
