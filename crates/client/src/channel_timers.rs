//! The client's keepalive and dead-peer-detection clock for one channel (protocol doc §8.1), as
//! openconnect runs it: sans-IO, driven by the caller's `Instant`s.
//!
//! * **DPD.** When nothing has been received for `dpd`, send a DPD request; while the peer stays
//!   silent, repeat it every `dpd / 2`. At `2 × dpd` of silence the peer is dead. Any valid record
//!   received resets the clock.
//! * **Keepalive.** When nothing has been *sent* for `keepalive`, send a keepalive (no answer is
//!   expected).
//!
//! The tunnel runs one for its DTLS channel with the `X-DTLS-DPD` / `X-DTLS-Keepalive` values. A
//! duration of zero (or `None`) switches that timer off.

use std::time::{Duration, Instant};

/// Smallest gap between two DPD requests, so a tiny `dpd` can't make the caller spin.
const MIN_DPD_RETRY: Duration = Duration::from_millis(100);

/// What the channel must do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChannelEvent {
    /// Send a DPD request.
    SendDpd,
    /// Send a keepalive.
    SendKeepalive,
    /// Nothing received for `2 × dpd`: the channel is dead.
    Dead,
}

/// One channel's clock. See the module docs.
#[derive(Debug, Clone)]
pub(crate) struct ChannelTimers {
    dpd: Option<Duration>,
    keepalive: Option<Duration>,
    last_rx: Instant,
    last_tx: Instant,
    /// The last DPD request sent since the last receive, if any.
    last_dpd: Option<Instant>,
}

fn nonzero(d: Option<Duration>) -> Option<Duration> {
    d.filter(|d| !d.is_zero())
}

impl ChannelTimers {
    /// A clock for a channel that came up at `now` (counts as the last receive and send).
    pub(crate) fn new(dpd: Option<Duration>, keepalive: Option<Duration>, now: Instant) -> Self {
        Self {
            dpd: nonzero(dpd),
            keepalive: nonzero(keepalive),
            last_rx: now,
            last_tx: now,
            last_dpd: None,
        }
    }

    /// Changes the intervals (e.g. a harness override); the clock keeps its history.
    pub(crate) fn set(&mut self, dpd: Option<Duration>, keepalive: Option<Duration>) {
        self.dpd = nonzero(dpd);
        self.keepalive = nonzero(keepalive);
    }

    /// Call for every valid record received.
    pub(crate) fn on_receive(&mut self, now: Instant) {
        if now > self.last_rx {
            self.last_rx = now;
        }
        self.last_dpd = None;
    }

    /// Call for every record sent (data included: it makes a keepalive unnecessary).
    pub(crate) fn on_send(&mut self, now: Instant) {
        if now > self.last_tx {
            self.last_tx = now;
        }
    }

    fn dead_at(&self) -> Option<Instant> {
        self.dpd.and_then(|d| self.last_rx.checked_add(d * 2))
    }

    fn dpd_due(&self) -> Option<Instant> {
        let dpd = self.dpd?;
        match self.last_dpd {
            Some(at) => at.checked_add((dpd / 2).max(MIN_DPD_RETRY)),
            None => self.last_rx.checked_add(dpd),
        }
    }

    fn keepalive_due(&self) -> Option<Instant> {
        self.keepalive.and_then(|k| self.last_tx.checked_add(k))
    }

    /// When [`Self::handle_timeout`] must run next, or `None` with both timers off.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        [self.dead_at(), self.dpd_due(), self.keepalive_due()]
            .into_iter()
            .flatten()
            .min()
    }

    /// The most urgent due event at `now`, if any. Call it in a loop until `None`: a returned
    /// request or keepalive counts as sent, so the loop ends. After `Dead` the caller drops the
    /// channel.
    pub(crate) fn handle_timeout(&mut self, now: Instant) -> Option<ChannelEvent> {
        let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);
        if due(self.dead_at()) {
            return Some(ChannelEvent::Dead);
        }
        if due(self.dpd_due()) {
            self.last_dpd = Some(now);
            self.on_send(now);
            return Some(ChannelEvent::SendDpd);
        }
        if due(self.keepalive_due()) {
            self.last_tx = now;
            return Some(ChannelEvent::SendKeepalive);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// Runs the clock as the tunnel does (sleep to poll_timeout, handle) until `until`; returns
    /// (seconds, event) pairs, stopping at `Dead`.
    fn drive(t: &mut ChannelTimers, t0: Instant, until: Duration) -> Vec<(u64, ChannelEvent)> {
        let mut out = Vec::new();
        while let Some(at) = t.poll_timeout() {
            if at > t0 + until {
                break;
            }
            while let Some(ev) = t.handle_timeout(at) {
                out.push(((at - t0).as_secs(), ev));
                if ev == ChannelEvent::Dead {
                    return out;
                }
                assert!(out.len() < 100, "busy loop");
            }
        }
        out
    }

    #[test]
    fn silent_peer_gets_dpd_at_dpd_then_every_half_dpd_then_is_dead_at_twice_dpd() {
        let t0 = Instant::now();
        let mut t = ChannelTimers::new(Some(s(10)), None, t0);
        assert_eq!(
            drive(&mut t, t0, s(100)),
            vec![
                (10, ChannelEvent::SendDpd),
                (15, ChannelEvent::SendDpd),
                (20, ChannelEvent::Dead)
            ]
        );
    }

    #[test]
    fn anything_received_resets_dpd() {
        let t0 = Instant::now();
        let mut t = ChannelTimers::new(Some(s(10)), None, t0);
        assert_eq!(t.handle_timeout(t0 + s(10)), Some(ChannelEvent::SendDpd));
        t.on_receive(t0 + s(11));
        assert_eq!(t.poll_timeout(), Some(t0 + s(21)));
        assert_eq!(t.handle_timeout(t0 + s(20)), None);
    }

    #[test]
    fn keepalive_follows_the_last_send() {
        let t0 = Instant::now();
        let mut t = ChannelTimers::new(None, Some(s(5)), t0);
        assert_eq!(t.poll_timeout(), Some(t0 + s(5)));
        t.on_send(t0 + s(3));
        assert_eq!(t.handle_timeout(t0 + s(5)), None);
        assert_eq!(
            drive(&mut t, t0, s(14)),
            vec![
                (8, ChannelEvent::SendKeepalive),
                (13, ChannelEvent::SendKeepalive)
            ]
        );
    }

    #[test]
    fn zero_switches_timers_off() {
        let t0 = Instant::now();
        let mut t = ChannelTimers::new(Some(Duration::ZERO), Some(Duration::ZERO), t0);
        assert_eq!(t.poll_timeout(), None);
        assert_eq!(t.handle_timeout(t0 + s(1_000_000)), None);
        t.set(Some(s(1)), None);
        assert_eq!(t.poll_timeout(), Some(t0 + s(1)));
    }
}
