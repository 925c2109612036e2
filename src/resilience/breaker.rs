//! A per-provider circuit breaker: closed → open (on consecutive failures, or
//! an error rate over a rolling window) → half-open after a cooldown, where one
//! probe decides between closed and open again. Time comes from tokio's clock,
//! so tests drive it with `tokio::time::pause` / `advance`.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(default)]
pub struct BreakerConfig {
    /// Open after this many failures in a row.
    pub consecutive_failures: u32,
    /// Or when the failure rate over `window` reaches `failure_rate`
    /// (with at least `min_calls` calls in the window).
    pub failure_rate: f64,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    pub min_calls: u32,
    /// How long an open breaker refuses calls before letting one probe through.
    #[serde(with = "humantime_serde")]
    pub cooldown: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_rate: 0.5,
            window: Duration::from_secs(30),
            min_calls: 10,
            cooldown: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

/// What the breaker says about one prospective call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    Allowed,
    /// The single half-open probe; its outcome decides the state.
    Probe,
    Rejected,
}

#[derive(Debug)]
struct Inner {
    state: State,
    opened_at: Instant,
    probe_in_flight: bool,
    consecutive: u32,
    /// (when, failed) for calls inside the rolling window.
    recent: VecDeque<(Instant, bool)>,
}

#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    inner: Mutex<Inner>,
}

/// A state change, for metrics and logs.
pub type Transition = Option<(State, State)>;

impl Breaker {
    pub fn new(config: BreakerConfig) -> Self {
        let inner = Inner {
            state: State::Closed,
            opened_at: Instant::now(),
            probe_in_flight: false,
            consecutive: 0,
            recent: VecDeque::new(),
        };
        Self { config, inner: Mutex::new(inner) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn state(&self) -> State {
        self.lock().state
    }

    /// Asks to make a call. An open breaker whose cooldown has passed turns
    /// half-open and hands out exactly one probe.
    pub fn acquire(&self) -> (Permit, Transition) {
        let mut g = self.lock();
        match g.state {
            State::Closed => (Permit::Allowed, None),
            State::Open if g.opened_at.elapsed() >= self.config.cooldown => {
                g.state = State::HalfOpen;
                g.probe_in_flight = true;
                (Permit::Probe, Some((State::Open, State::HalfOpen)))
            }
            State::Open => (Permit::Rejected, None),
            State::HalfOpen if !g.probe_in_flight => {
                g.probe_in_flight = true;
                (Permit::Probe, None)
            }
            State::HalfOpen => (Permit::Rejected, None),
        }
    }

    /// Time left before an open breaker lets a probe through.
    pub fn retry_in(&self) -> Option<Duration> {
        let g = self.lock();
        (g.state == State::Open).then(|| self.config.cooldown.saturating_sub(g.opened_at.elapsed()))
    }

    /// Records a call's outcome. `permit` is what `acquire` gave that call: in
    /// half-open, only the probe's outcome decides; a slow call admitted
    /// earlier only joins the statistics.
    pub fn record(&self, permit: Permit, success: bool) -> Transition {
        let mut g = self.lock();
        let now = Instant::now();
        g.recent.push_back((now, !success));
        while g.recent.front().is_some_and(|(t, _)| now.duration_since(*t) > self.config.window) {
            g.recent.pop_front();
        }
        g.consecutive = if success { 0 } else { g.consecutive + 1 };
        let from = g.state;
        if g.state == State::HalfOpen && permit != Permit::Probe {
            return None;
        }
        match (g.state, success) {
            (State::HalfOpen, true) => {
                g.state = State::Closed;
                g.probe_in_flight = false;
                g.recent.clear();
            }
            (State::HalfOpen, false) => self.open(&mut g, now),
            (State::Closed, false) if self.should_open(&g) => self.open(&mut g, now),
            _ => {}
        }
        (from != g.state).then_some((from, g.state))
    }

    /// A probe that ended without a verdict (cancelled, or failed for a reason
    /// that says nothing about the provider) frees the slot for another probe.
    pub fn release_probe(&self) {
        self.lock().probe_in_flight = false;
    }

    /// Holds a permit until its outcome is recorded; dropped unrecorded (the
    /// request was cancelled mid-call), a probe frees its slot, so a cancelled
    /// probe cannot leave the breaker half-open for good.
    pub fn guard(&self, permit: Permit) -> PermitGuard<'_> {
        PermitGuard { breaker: self, permit, settled: false }
    }

    fn should_open(&self, g: &Inner) -> bool {
        if g.consecutive >= self.config.consecutive_failures {
            return true;
        }
        let calls = g.recent.len() as u32;
        let failures = g.recent.iter().filter(|(_, failed)| *failed).count() as f64;
        calls >= self.config.min_calls && failures / f64::from(calls) >= self.config.failure_rate
    }

    fn open(&self, g: &mut Inner, now: Instant) {
        g.state = State::Open;
        g.opened_at = now;
        g.probe_in_flight = false;
    }
}

pub struct PermitGuard<'a> {
    breaker: &'a Breaker,
    permit: Permit,
    settled: bool,
}

impl PermitGuard<'_> {
    pub fn permit(&self) -> Permit {
        self.permit
    }

    /// Records the outcome (`None`: no verdict on the provider's health).
    pub fn settle(mut self, success: Option<bool>) -> Transition {
        self.settled = true;
        match success {
            Some(ok) => self.breaker.record(self.permit, ok),
            None => {
                if self.permit == Permit::Probe {
                    self.breaker.release_probe();
                }
                None
            }
        }
    }
}

impl Drop for PermitGuard<'_> {
    fn drop(&mut self) {
        if !self.settled && self.permit == Permit::Probe {
            self.breaker.release_probe();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig {
            consecutive_failures: 3,
            failure_rate: 0.5,
            window: Duration::from_secs(10),
            min_calls: 6,
            cooldown: Duration::from_secs(5),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn opens_on_consecutive_failures_then_probes_after_cooldown() {
        let b = breaker();
        assert_eq!(b.record(Permit::Allowed, false), None);
        assert_eq!(b.record(Permit::Allowed, false), None);
        assert_eq!(b.record(Permit::Allowed, false), Some((State::Closed, State::Open)));
        assert_eq!(b.acquire().0, Permit::Rejected);
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(b.acquire().0, Permit::Rejected);
        assert_eq!(b.retry_in(), Some(Duration::from_secs(1)));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(b.acquire(), (Permit::Probe, Some((State::Open, State::HalfOpen))));
        assert_eq!(b.acquire().0, Permit::Rejected, "only one probe at a time");
        assert_eq!(b.record(Permit::Allowed, true), None, "a call admitted before does not decide");
        assert_eq!(b.record(Permit::Probe, true), Some((State::HalfOpen, State::Closed)));
        assert_eq!(b.acquire().0, Permit::Allowed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_for_a_full_cooldown() {
        let b = breaker();
        for _ in 0..3 {
            b.record(Permit::Allowed, false);
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(b.acquire().0, Permit::Probe);
        assert_eq!(b.record(Permit::Probe, false), Some((State::HalfOpen, State::Open)));
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(b.acquire().0, Permit::Rejected);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(b.acquire().0, Permit::Probe);
    }

    #[tokio::test(start_paused = true)]
    async fn opens_on_error_rate_without_a_failure_streak() {
        let b = breaker();
        // Alternating outcomes never make three failures in a row.
        for i in 0..5 {
            assert_eq!(b.record(Permit::Allowed, i % 2 == 1), None, "call {i}");
        }
        assert_eq!(
            b.record(Permit::Allowed, true),
            None,
            "3 of 6 failed: 50%, but the sixth call succeeded and the rate is checked on failure"
        );
        assert_eq!(b.record(Permit::Allowed, false), Some((State::Closed, State::Open)), "4 of 7 failed");
    }

    #[tokio::test(start_paused = true)]
    async fn old_failures_leave_the_window() {
        let b = breaker();
        for _ in 0..2 {
            b.record(Permit::Allowed, false);
            b.record(Permit::Allowed, true);
        }
        tokio::time::advance(Duration::from_secs(11)).await;
        for _ in 0..4 {
            b.record(Permit::Allowed, true);
        }
        assert_eq!(b.record(Permit::Allowed, false), None, "1 failure in 5 recent calls");
        assert_eq!(b.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_probe_guard_frees_the_slot() {
        let b = breaker();
        for _ in 0..3 {
            b.record(Permit::Allowed, false);
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        let guard = b.guard(b.acquire().0);
        assert_eq!(guard.permit(), Permit::Probe);
        assert_eq!(b.acquire().0, Permit::Rejected);
        drop(guard);
        assert_eq!(b.acquire().0, Permit::Probe, "the cancelled probe's slot is free again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_released_probe_lets_another_through() {
        let b = breaker();
        for _ in 0..3 {
            b.record(Permit::Allowed, false);
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(b.acquire().0, Permit::Probe);
        b.release_probe();
        assert_eq!(b.acquire().0, Permit::Probe);
    }
}
