//! The server's per-session clocks: dead-peer detection, idle timeout and session timeout
//! (protocol doc §6, §8.2), as a sans-IO state machine driven by the caller's `Instant`s.
//!
//! Behaviour, following ocserv:
//! * **DPD.** When nothing at all has been received for `2 × dpd`, ask the gateway to send a CSTP
//!   DPD request ([`TimerEvent::SendDpdRequest`]). While the peer stays silent the request is
//!   repeated every `dpd / 2` (so with `dpd` = 30 s: at 60 s and 75 s). At `3 × dpd` of silence the
//!   peer is dead ([`TimerEvent::PeerDead`]). Any valid received frame (DATA, DPD, keepalive, ...)
//!   resets this clock. A `dpd` of zero disables DPD.
//! * **Idle.** No DATA frame in either direction for `idle_timeout` → [`TimerEvent::IdleTimeout`].
//!   Keepalives and DPD don't count.
//! * **Session.** `session_timeout` after [`SessionTimers::new`] → [`TimerEvent::SessionTimeout`],
//!   whatever the traffic.
//!
//! `PeerDead`, `IdleTimeout` and `SessionTimeout` are final: after one of them the timers are
//! finished, [`SessionTimers::poll_timeout`] returns `None` and nothing more fires. The struct is a
//! handful of `Instant`s, never allocates, and every method is O(1), so one per session is cheap
//! even for tens of thousands of sessions.
//!
//! Driving it:
//! ```
//! # use std::time::{Duration, Instant};
//! # use tunnel_proto::timers::{SessionTimers, TimerConfig, TimerEvent};
//! let start = Instant::now();
//! let cfg = TimerConfig { dpd: Duration::from_secs(30), idle_timeout: None, session_timeout: None };
//! let mut t = SessionTimers::new(cfg, start);
//! // ... arm a timer for `t.poll_timeout()`; when it fires (or on any wake-up):
//! let now = start + Duration::from_secs(60);
//! while let Some(ev) = t.handle_timeout(now) {
//!     match ev {
//!         TimerEvent::SendDpdRequest => { /* queue a CSTP DPD-REQ frame */ }
//!         _ => { /* close the session */ }
//!     }
//! }
//! assert_eq!(t.poll_timeout(), Some(start + Duration::from_secs(75)));
//! ```

use std::time::{Duration, Instant};

/// Smallest gap between two DPD requests, so a tiny `dpd` can't make the caller spin.
const MIN_DPD_RETRY: Duration = Duration::from_millis(100);

/// Timer settings for one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerConfig {
    /// The DPD interval advertised in `X-CSTP-DPD`. Zero disables dead-peer detection.
    pub dpd: Duration,
    /// Disconnect after this long without DATA in either direction (`X-CSTP-Idle-Timeout`).
    pub idle_timeout: Option<Duration>,
    /// Disconnect this long after the session started (`X-CSTP-Session-Timeout`).
    pub session_timeout: Option<Duration>,
}

/// What the gateway must do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TimerEvent {
    /// The peer has been silent for `2 × dpd` (or another `dpd / 2` since the last request):
    /// send a CSTP DPD request frame.
    SendDpdRequest,
    /// Nothing received for `3 × dpd`: the peer is gone. Drop the connection but keep the session
    /// for a reconnect (it is not a logout). Final.
    PeerDead,
    /// No DATA either way for `idle_timeout`: end the session. Final.
    IdleTimeout,
    /// `session_timeout` reached: end the session and invalidate its cookie. Final.
    SessionTimeout,
}

/// The DPD / idle / session-timeout state of one session. See the module docs.
#[derive(Debug, Clone)]
pub struct SessionTimers {
    cfg: TimerConfig,
    /// Last time any valid frame was received.
    last_rx: Instant,
    /// Last time a DATA frame went either way.
    last_data: Instant,
    /// When to send the next DPD request (`None`: DPD disabled or out of `Instant` range).
    next_dpd: Option<Instant>,
    /// When the peer counts as dead.
    dead_at: Option<Instant>,
    /// When the idle timeout fires.
    idle_at: Option<Instant>,
    /// When the session timeout fires.
    session_at: Option<Instant>,
    /// A final event has been returned.
    finished: bool,
}

impl SessionTimers {
    /// Start the clocks for a session that begins at `now` (the tunnel is up, i.e. the CONNECT
    /// response was sent). `now` also counts as the last receive and the last DATA.
    #[must_use]
    pub fn new(cfg: TimerConfig, now: Instant) -> Self {
        let mut t = Self {
            cfg,
            last_rx: now,
            last_data: now,
            next_dpd: None,
            dead_at: None,
            idle_at: None,
            session_at: cfg.session_timeout.and_then(|d| now.checked_add(d)),
            finished: false,
        };
        t.rearm_dpd();
        t.rearm_idle();
        t
    }

    /// Call for every valid frame received from the client (any type). `is_data`: it was a DATA
    /// (or COMPRESSED) frame, which also counts as activity for the idle timeout.
    pub fn on_receive(&mut self, now: Instant, is_data: bool) {
        if now > self.last_rx {
            self.last_rx = now;
            self.rearm_dpd();
        }
        if is_data {
            self.on_data(now);
        }
    }

    /// Call for every DATA frame sent to the client (counts as activity for the idle timeout).
    pub fn on_send_data(&mut self, now: Instant) {
        self.on_data(now);
    }

    /// The next instant at which [`handle_timeout`](Self::handle_timeout) must be called, or
    /// `None` if nothing is pending (all timers disabled, or a final event was returned).
    /// Re-read it after every call to any other method.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.finished {
            return None;
        }
        [self.next_dpd, self.dead_at, self.idle_at, self.session_at]
            .into_iter()
            .flatten()
            .min()
    }

    /// Process the timers at `now`. Returns the most urgent due event, or `None` if nothing is due.
    /// Call it in a loop until it returns `None`: after an event the state has moved on, so the
    /// loop ends (at most one DPD request is due per call, and a final event ends everything).
    #[must_use]
    pub fn handle_timeout(&mut self, now: Instant) -> Option<TimerEvent> {
        if self.finished {
            return None;
        }
        let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);
        let event = if due(self.session_at) {
            TimerEvent::SessionTimeout
        } else if due(self.dead_at) {
            TimerEvent::PeerDead
        } else if due(self.idle_at) {
            TimerEvent::IdleTimeout
        } else if due(self.next_dpd) {
            self.next_dpd = now.checked_add(self.dpd_retry());
            return Some(TimerEvent::SendDpdRequest);
        } else {
            return None;
        };
        self.finished = true;
        Some(event)
    }

    /// True once a final event (`PeerDead`, `IdleTimeout`, `SessionTimeout`) has been returned.
    #[must_use]
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The settings these timers run with.
    #[must_use]
    pub fn config(&self) -> &TimerConfig {
        &self.cfg
    }

    fn on_data(&mut self, now: Instant) {
        if now > self.last_data {
            self.last_data = now;
            self.rearm_idle();
        }
    }

    fn dpd_retry(&self) -> Duration {
        (self.cfg.dpd / 2).max(MIN_DPD_RETRY)
    }

    fn rearm_dpd(&mut self) {
        let dpd = self.cfg.dpd;
        if dpd.is_zero() {
            return;
        }
        let at = |n: u32| dpd.checked_mul(n).and_then(|d| self.last_rx.checked_add(d));
        self.next_dpd = at(2);
        self.dead_at = at(3);
    }

    fn rearm_idle(&mut self) {
        self.idle_at = self
            .cfg
            .idle_timeout
            .and_then(|d| self.last_data.checked_add(d));
    }
}

/// The server's DTLS dead-peer probe (protocol doc §7.6, §8): when nothing valid has come over
/// the DTLS channel for `after`, send a DTLS DPD request, and repeat it every `after / 2` while the
/// channel stays silent. The client answers with a DPD response, which, like any valid record,
/// counts as proof that the UDP path works ([`DtlsDpd::on_receive`]).
///
/// `after` is the announced `X-DTLS-DPD`, but never more than half the silence after which the
/// gateway moves downstream traffic back to TLS (`switch_to_tcp_secs`): so a quiet but live client
/// is asked, and has answered, before its UDP path is given up (ocserv probes at `2 × dpd` and
/// gives the path up at `3 × dpd`; here the give-up point is `switch_to_tcp_secs`). Whether the
/// channel is up, and so whether probing makes sense at all, is the caller's business: it asks
/// [`DtlsDpd::poll_timeout`] only while the channel carries traffic and restarts the clock with
/// [`DtlsDpd::on_receive`] when the channel comes up.
#[derive(Debug, Clone)]
pub struct DtlsDpd {
    after: Duration,
    /// When the next request is due (`None`: disabled, or out of `Instant` range).
    next: Option<Instant>,
}

impl DtlsDpd {
    /// A probe for a channel last heard from at `now`. `dpd` is the DTLS DPD interval (zero
    /// disables probing), `switch_after` the silence after which the channel is given up.
    #[must_use]
    pub fn new(dpd: Duration, switch_after: Duration, now: Instant) -> Self {
        let after = dpd.min(switch_after / 2);
        let mut d = Self { after, next: None };
        d.on_receive(now);
        d
    }

    /// The silence after which the first request goes out.
    #[must_use]
    pub fn interval(&self) -> Duration {
        self.after
    }

    /// A valid record arrived over DTLS (a DPD response, data, a keepalive, anything): the next
    /// request is due `after` from `now`.
    pub fn on_receive(&mut self, now: Instant) {
        self.next = if self.after.is_zero() {
            None
        } else {
            now.checked_add(self.after)
        };
    }

    /// When [`Self::handle_timeout`] must run next, if probing is enabled.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next
    }

    /// True when a DTLS DPD request must be sent now; the next one is then due `after / 2` later
    /// unless something arrives first.
    #[must_use]
    pub fn handle_timeout(&mut self, now: Instant) -> bool {
        match self.next {
            Some(t) if t <= now => {
                self.next = now.checked_add((self.after / 2).max(MIN_DPD_RETRY));
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn cfg(dpd: u64, idle: Option<u64>, session: Option<u64>) -> TimerConfig {
        TimerConfig {
            dpd: s(dpd),
            idle_timeout: idle.map(s),
            session_timeout: session.map(s),
        }
    }

    /// Runs the timers the way the gateway does: sleep until poll_timeout, handle, repeat.
    /// Returns (seconds since start, event) pairs until `until` or a final event.
    fn drive(t: &mut SessionTimers, t0: Instant, until: Duration) -> Vec<(u64, TimerEvent)> {
        let mut out = Vec::new();
        let mut last_poll = None;
        while let Some(at) = t.poll_timeout() {
            if at > t0 + until {
                break;
            }
            assert!(Some(at) > last_poll, "poll_timeout did not move forward");
            last_poll = Some(at);
            while let Some(ev) = t.handle_timeout(at) {
                out.push(((at - t0).as_secs(), ev));
                assert!(out.len() < 1000, "busy loop");
            }
        }
        out
    }

    #[test]
    fn silent_peer_gets_dpd_requests_then_is_dead() {
        let t0 = Instant::now();
        let mut t = SessionTimers::new(cfg(30, None, None), t0);
        assert_eq!(t.poll_timeout(), Some(t0 + s(60)));
        assert_eq!(t.handle_timeout(t0 + s(59)), None);
        assert_eq!(
            drive(&mut t, t0, s(1000)),
            vec![
                (60, TimerEvent::SendDpdRequest),
                (75, TimerEvent::SendDpdRequest),
                (90, TimerEvent::PeerDead),
            ]
        );
        assert!(t.is_finished());
        assert_eq!(t.poll_timeout(), None);
        assert_eq!(t.handle_timeout(t0 + s(5000)), None);
    }

    #[test]
    fn any_received_frame_resets_dpd() {
        let t0 = Instant::now();
        let mut t = SessionTimers::new(cfg(30, None, None), t0);
        assert_eq!(
            t.handle_timeout(t0 + s(60)),
            Some(TimerEvent::SendDpdRequest)
        );
        // The DPD response arrives.
        t.on_receive(t0 + s(61), false);
        assert_eq!(t.poll_timeout(), Some(t0 + s(121)));
        assert_eq!(t.handle_timeout(t0 + s(100)), None);
        // Keepalives every 20 s keep it alive indefinitely.
        for k in 1..50 {
            t.on_receive(t0 + s(61 + 20 * k), false);
            assert_eq!(t.handle_timeout(t0 + s(61 + 20 * k)), None);
        }
        assert!(!t.is_finished());
    }

    #[test]
    fn late_wake_up_reports_the_final_event_first() {
        let t0 = Instant::now();
        let mut t = SessionTimers::new(cfg(30, None, None), t0);
        // The gateway was descheduled past the dead-peer deadline: no DPD request, just dead.
        assert_eq!(t.handle_timeout(t0 + s(500)), Some(TimerEvent::PeerDead));
        assert_eq!(t.handle_timeout(t0 + s(500)), None);
    }

    #[test]
    fn idle_timeout_counts_only_data() {
        let t0 = Instant::now();
        let mut t = SessionTimers::new(cfg(30, Some(100), None), t0);
        // Control frames every 20 s keep DPD quiet but not idle.
        let mut events = Vec::new();
        for k in 1..=10u64 {
            let now = t0 + s(20 * k);
            t.on_receive(now, false);
            while let Some(ev) = t.handle_timeout(now) {
                events.push((20 * k, ev));
            }
        }
        assert_eq!(events, vec![(100, TimerEvent::IdleTimeout)]);
    }

    #[test]
    fn data_either_way_resets_idle() {
        let t0 = Instant::now();
        let mut t = SessionTimers::new(cfg(0, Some(100), None), t0);
        t.on_send_data(t0 + s(90));
        assert_eq!(t.poll_timeout(), Some(t0 + s(190)));
        t.on_receive(t0 + s(150), true);
        assert_eq!(t.poll_timeout(), Some(t0 + s(250)));
        assert_eq!(t.handle_timeout(t0 + s(249)), None);
        assert_eq!(t.handle_timeout(t0 + s(250)), Some(TimerEvent::IdleTimeout));
        assert_eq!(t.poll_timeout(), None);
    }

    #[test]
    fn session_timeout_fires_despite_traffic() {
        let t0 = Instant::now();
        let mut t = SessionTimers::new(cfg(30, Some(60), Some(300)), t0);
        let mut events = Vec::new();
        for k in 1..=40u64 {
            let now = t0 + s(10 * k);
            t.on_receive(now, true);
            t.on_send_data(now);
            while let Some(ev) = t.handle_timeout(now) {
                events.push((10 * k, ev));
            }
        }
        assert_eq!(events, vec![(300, TimerEvent::SessionTimeout)]);
    }

    #[test]
    fn dpd_zero_disables_dpd() {
        let t0 = Instant::now();
        let t = SessionTimers::new(cfg(0, None, None), t0);
        assert_eq!(t.poll_timeout(), None);
    }

    #[test]
    fn tiny_dpd_cannot_spin() {
        let t0 = Instant::now();
        let mut t = SessionTimers::new(
            TimerConfig {
                dpd: Duration::from_nanos(1),
                idle_timeout: None,
                session_timeout: None,
            },
            t0,
        );
        assert_eq!(t.handle_timeout(t0 + s(1)), Some(TimerEvent::PeerDead));
        assert_eq!(t.poll_timeout(), None);
    }

    #[test]
    fn huge_durations_do_not_overflow() {
        let t0 = Instant::now();
        let mut t = SessionTimers::new(
            TimerConfig {
                dpd: Duration::MAX,
                idle_timeout: Some(Duration::MAX),
                session_timeout: Some(Duration::MAX),
            },
            t0,
        );
        assert_eq!(t.poll_timeout(), None);
        t.on_receive(t0 + s(1), true);
        assert_eq!(t.handle_timeout(t0 + s(1_000_000)), None);
    }

    #[test]
    fn time_going_backwards_is_ignored() {
        let t0 = Instant::now() + s(1000);
        let mut t = SessionTimers::new(cfg(30, Some(100), None), t0);
        t.on_receive(t0 - s(500), true);
        t.on_send_data(t0 - s(500));
        assert_eq!(t.poll_timeout(), Some(t0 + s(60)));
    }

    #[test]
    fn poll_timeout_always_moves_forward_in_a_long_run() {
        let t0 = Instant::now();
        let mut t = SessionTimers::new(cfg(7, Some(1000), Some(5000)), t0);
        let mut now = t0;
        let mut dpd_requests = 0;
        let mut step = 0u64;
        // A peer that answers every other DPD request a bit late, with sporadic data.
        while let Some(at) = t.poll_timeout() {
            assert!(at >= now);
            now = at;
            while let Some(ev) = t.handle_timeout(now) {
                if ev == TimerEvent::SendDpdRequest {
                    dpd_requests += 1;
                    if dpd_requests % 2 == 0 {
                        t.on_receive(now + s(1), step % 5 == 0);
                    }
                } else {
                    // Data every fifth step keeps idle away; the session limit ends it.
                    assert_eq!(ev, TimerEvent::SessionTimeout);
                    assert_eq!(now, t0 + s(5000));
                }
            }
            step += 1;
            assert!(step < 100_000, "no progress");
        }
        assert!(t.is_finished());
        assert!(dpd_requests > 10);
    }

    #[test]
    fn timers_are_small_and_allocation_free() {
        // Only Copy fields: a handful of Instants and Durations.
        assert!(std::mem::size_of::<SessionTimers>() <= 192);
    }
}

#[cfg(test)]
mod dtls_dpd_tests {
    use super::*;

    const fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// Seconds (since `t0`) at which requests go out when nothing arrives, up to `until`.
    fn requests(d: &mut DtlsDpd, t0: Instant, until: u64) -> Vec<u64> {
        let mut out = Vec::new();
        while let Some(at) = d.poll_timeout().filter(|&at| at <= t0 + s(until)) {
            assert!(d.handle_timeout(at));
            assert!(!d.handle_timeout(at), "one request per expiry");
            out.push((at - t0).as_secs());
        }
        out
    }

    #[test]
    fn a_silent_channel_is_probed_after_dpd_then_every_half_dpd() {
        let t0 = Instant::now();
        let mut d = DtlsDpd::new(s(10), s(60), t0);
        assert_eq!(d.interval(), s(10));
        assert!(!d.handle_timeout(t0 + s(9)), "not before dpd");
        assert_eq!(requests(&mut d, t0, 30), vec![10, 15, 20, 25, 30]);
    }

    #[test]
    fn the_first_probe_comes_before_the_channel_is_given_up() {
        // ocserv's sample DPD (90 s) is longer than switch_to_tcp_secs (25 s): probe at 12.5 s
        // and 18.75 s, both before the 25 s give-up point.
        let t0 = Instant::now();
        let mut d = DtlsDpd::new(s(90), s(25), t0);
        assert_eq!(d.interval(), Duration::from_millis(12_500));
        let got: Vec<Duration> = std::iter::from_fn(|| {
            let at = d.poll_timeout()?;
            (at < t0 + s(25)).then(|| {
                assert!(d.handle_timeout(at));
                at - t0
            })
        })
        .collect();
        assert_eq!(
            got,
            vec![Duration::from_millis(12_500), Duration::from_millis(18_750)]
        );
    }

    #[test]
    fn any_received_record_such_as_the_answer_postpones_the_next_probe() {
        let t0 = Instant::now();
        let mut d = DtlsDpd::new(s(10), s(60), t0);
        assert!(d.handle_timeout(t0 + s(10)));
        // The DPD response arrives a moment later: the channel is alive, no repeat at 15 s.
        d.on_receive(t0 + s(11));
        assert!(!d.handle_timeout(t0 + s(15)));
        assert_eq!(d.poll_timeout(), Some(t0 + s(21)));
        // Steady traffic never triggers a probe.
        for i in 12..100 {
            d.on_receive(t0 + s(i));
            assert!(!d.handle_timeout(t0 + s(i)));
        }
    }

    #[test]
    fn zero_dpd_disables_probing() {
        let t0 = Instant::now();
        let mut d = DtlsDpd::new(Duration::ZERO, s(25), t0);
        assert_eq!(d.poll_timeout(), None);
        assert!(!d.handle_timeout(t0 + s(3600)));
        d.on_receive(t0 + s(1));
        assert_eq!(d.poll_timeout(), None);
    }

    #[test]
    fn a_tiny_dpd_never_makes_the_caller_spin() {
        let t0 = Instant::now();
        let mut d = DtlsDpd::new(Duration::from_millis(1), s(25), t0);
        let at = d.poll_timeout().unwrap();
        assert!(d.handle_timeout(at));
        assert!(d.poll_timeout().unwrap() >= at + MIN_DPD_RETRY);
    }
}
