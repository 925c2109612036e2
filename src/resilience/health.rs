//! Per-provider health: the breaker, parking after a Retry-After, and a rolling
//! window of recent calls from which `/providers` derives status, failure rate
//! and latency percentiles (recent behaviour, not since start).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::breaker::{Breaker, BreakerConfig, State};

/// Calls kept for statistics (and for no longer than `WINDOW`).
const MAX_SAMPLES: usize = 512;
const WINDOW: Duration = Duration::from_secs(300);
/// A provider whose recent p95 latency is above this is reported degraded.
const SLOW_P95_MS: f64 = 10_000.0;

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    latency: Duration,
    failed: bool,
}

#[derive(Debug, Default)]
struct Stats {
    samples: VecDeque<Sample>,
    total_requests: u64,
    total_failures: u64,
    last_error: Option<(&'static str, SystemTime)>,
    last_rate_limited: Option<SystemTime>,
    parked_until: Option<Instant>,
}

#[derive(Debug)]
pub struct ProviderHealth {
    pub breaker: Breaker,
    stats: Mutex<Stats>,
}

/// A snapshot for `/providers`.
#[derive(Debug, Clone)]
pub struct StatusReport {
    /// healthy / degraded / unavailable
    pub status: &'static str,
    pub breaker: &'static str,
    /// Failed calls in the recent window.
    pub failures: u64,
    pub window_requests: usize,
    pub window_failure_rate: f64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub last_error: Option<(&'static str, SystemTime)>,
    pub last_rate_limited: Option<SystemTime>,
    pub parked_for: Option<Duration>,
    pub total_requests: u64,
    pub total_failures: u64,
}

impl ProviderHealth {
    pub fn new(breaker: BreakerConfig) -> Self {
        Self { breaker: Breaker::new(breaker), stats: Mutex::new(Stats::default()) }
    }

    fn stats(&self) -> std::sync::MutexGuard<'_, Stats> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Time left on a Retry-After parking, if any.
    pub fn parked_for(&self) -> Option<Duration> {
        let until = self.stats().parked_until?;
        let now = Instant::now();
        (until > now).then(|| until - now)
    }

    pub fn park(&self, duration: Duration) {
        let until = Instant::now() + duration;
        let mut s = self.stats();
        s.parked_until = Some(s.parked_until.map_or(until, |u| u.max(until)));
        s.last_rate_limited = Some(SystemTime::now());
    }

    /// Records one finished call: `error` is the error kind label on failure.
    pub fn record(&self, latency: Duration, error: Option<&'static str>) {
        let now = Instant::now();
        let mut s = self.stats();
        s.samples.push_back(Sample { at: now, latency, failed: error.is_some() });
        while s.samples.len() > MAX_SAMPLES || s.samples.front().is_some_and(|x| now.duration_since(x.at) > WINDOW) {
            s.samples.pop_front();
        }
        s.total_requests += 1;
        if let Some(kind) = error {
            s.total_failures += 1;
            s.last_error = Some((kind, SystemTime::now()));
        }
    }

    pub fn report(&self) -> StatusReport {
        let now = Instant::now();
        let parked_for = self.parked_for();
        let s = self.stats();
        let recent: Vec<&Sample> = s.samples.iter().filter(|x| now.duration_since(x.at) <= WINDOW).collect();
        let failures = recent.iter().filter(|x| x.failed).count();
        let rate = if recent.is_empty() { 0.0 } else { failures as f64 / recent.len() as f64 };
        let mut latencies: Vec<Duration> = recent.iter().filter(|x| !x.failed).map(|x| x.latency).collect();
        latencies.sort_unstable();
        let pct = |p: f64| {
            (!latencies.is_empty()).then(|| {
                let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
                latencies[i].as_secs_f64() * 1000.0
            })
        };
        let breaker = self.breaker.state();
        let status = match breaker {
            State::Open => "unavailable",
            State::HalfOpen => "degraded",
            State::Closed if parked_for.is_some() || rate >= 0.1 || pct(0.95).is_some_and(|p| p > SLOW_P95_MS) => {
                "degraded"
            }
            State::Closed => "healthy",
        };
        StatusReport {
            status,
            breaker: breaker.as_str(),
            failures: failures as u64,
            window_requests: recent.len(),
            window_failure_rate: rate,
            p50_ms: pct(0.5),
            p95_ms: pct(0.95),
            last_error: s.last_error,
            last_rate_limited: s.last_rate_limited,
            parked_for,
            total_requests: s.total_requests,
            total_failures: s.total_failures,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn parking_expires_and_stats_cover_a_recent_window() {
        let h = ProviderHealth::new(BreakerConfig::default());
        h.park(Duration::from_secs(3));
        assert_eq!(h.parked_for(), Some(Duration::from_secs(3)));
        assert_eq!(h.report().status, "degraded");
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(h.parked_for(), None);

        for ms in 1..=100 {
            h.record(Duration::from_millis(ms), None);
        }
        let r = h.report();
        assert_eq!(r.status, "healthy");
        assert_eq!(r.p50_ms, Some(50.0));
        assert_eq!(r.p95_ms, Some(95.0));
        h.record(Duration::from_millis(5), Some("timeout"));
        assert_eq!(h.report().last_error.map(|e| e.0), Some("timeout"));

        tokio::time::advance(WINDOW + Duration::from_secs(1)).await;
        let r = h.report();
        assert_eq!(r.window_requests, 0, "old calls leave the window");
        assert_eq!(r.total_requests, 101);
    }
}
