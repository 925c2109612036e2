//! GCRA (the generic cell rate algorithm) as pure arithmetic on nanosecond
//! timestamps, shared by the in-process limiter (atomics) and mirrored by the
//! Redis script. State is one number per key: the theoretical arrival time
//! (TAT). A request of cost `n` is allowed when `max(tat, now) + n·T - now`
//! stays within the tolerance `τ = burst·T`; it then moves the TAT forward by
//! `n·T`. This admits `burst` at once, then one per `T`, with no windows and
//! no check-then-act race (the whole decision is one compare-and-swap).

use std::time::Duration;

/// A rate: `per_period` units every `period`, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Nanoseconds per unit (`T`).
    pub interval_ns: u64,
    /// Nanoseconds of credit (`τ`): `burst · T`.
    pub tolerance_ns: u64,
}

impl Rate {
    /// `per_minute` units a minute, `burst` at once (at least 1).
    /// `None` for 0, and for rates above one unit a nanosecond (no limit in practice).
    pub fn per_minute(per_minute: u64, burst: u64) -> Option<Rate> {
        if per_minute == 0 || per_minute > 60_000_000_000 {
            return None;
        }
        let interval_ns = 60_000_000_000 / per_minute;
        Some(Rate { interval_ns, tolerance_ns: interval_ns.saturating_mul(burst.max(1)) })
    }

    /// A `factor` share of the rate (0 < factor ≤ 1), burst included: the
    /// interval grows and the tolerance stays, so both shrink by `factor`.
    /// Used for auto-throttling and for a replica's share while Redis is down.
    pub fn scaled(self, factor: f64) -> Rate {
        let f = factor.clamp(0.01, 1.0);
        let interval_ns = (self.interval_ns as f64 / f) as u64;
        Rate { interval_ns, tolerance_ns: self.tolerance_ns.max(interval_ns) }
    }

    pub fn burst(&self) -> u64 {
        self.tolerance_ns / self.interval_ns.max(1)
    }
}

/// The outcome of one decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Allowed; the new TAT to store.
    Allow { tat: u64 },
    /// Refused; wait this long before `cost` units fit.
    Deny { retry_after_ns: u64 },
}

/// Decides a request of `cost` units at `now` against the stored `tat`.
pub fn decide(rate: Rate, tat: u64, now: u64, cost: u64) -> Decision {
    let increment = rate.interval_ns.saturating_mul(cost);
    let new_tat = tat.max(now).saturating_add(increment);
    let allow_at = new_tat.saturating_sub(rate.tolerance_ns);
    if allow_at <= now { Decision::Allow { tat: new_tat } } else { Decision::Deny { retry_after_ns: allow_at - now } }
}

/// Returns `units` of credit (a reservation larger than what was used).
pub fn refund(rate: Rate, tat: u64, now: u64, units: u64) -> u64 {
    tat.saturating_sub(rate.interval_ns.saturating_mul(units)).max(now.min(tat))
}

/// Units still available at `now`, for `X-RateLimit-Remaining`.
pub fn remaining(rate: Rate, tat: u64, now: u64) -> u64 {
    let used = tat.saturating_sub(now);
    rate.tolerance_ns.saturating_sub(used) / rate.interval_ns.max(1)
}

/// When the bucket is full again (all `burst` available), from `now`.
pub fn reset_after(tat: u64, now: u64) -> Duration {
    Duration::from_nanos(tat.saturating_sub(now))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn run(rate: Rate, times: &[u64]) -> Vec<bool> {
        let mut tat = 0;
        times
            .iter()
            .map(|&now| match decide(rate, tat, now, 1) {
                Decision::Allow { tat: t } => {
                    tat = t;
                    true
                }
                Decision::Deny { .. } => false,
            })
            .collect()
    }

    #[test]
    fn a_burst_then_one_per_interval() {
        let rate = Rate::per_minute(30, 30).unwrap(); // one every 2 s, 30 at once
        let at_once = run(rate, &[10 * S; 40]);
        assert_eq!(at_once.iter().filter(|a| **a).count(), 30);
        let mut tat = 0;
        for _ in 0..30 {
            if let Decision::Allow { tat: t } = decide(rate, tat, 10 * S, 1) {
                tat = t;
            }
        }
        match decide(rate, tat, 10 * S, 1) {
            Decision::Deny { retry_after_ns } => {
                assert_eq!(retry_after_ns, 2 * S, "the next slot is one interval away")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(decide(rate, tat, 12 * S, 1), Decision::Allow { .. }));
        assert_eq!(remaining(rate, tat, 10 * S), 0);
        assert_eq!(remaining(rate, tat, 70 * S), 30);
    }

    #[test]
    fn weighted_costs_reserve_and_refund_tokens() {
        let rate = Rate::per_minute(6000, 6000).unwrap(); // tokens: 100/s, 6000 at once
        let Decision::Allow { tat } = decide(rate, 0, 0, 5000) else { panic!() };
        assert!(matches!(decide(rate, tat, 0, 1500), Decision::Deny { .. }), "5000 + 1500 > 6000");
        // The call used only 1000 of its 5000: 4000 come back.
        let tat = refund(rate, tat, 0, 4000);
        assert!(matches!(decide(rate, tat, 0, 1500), Decision::Allow { .. }));
        assert_eq!(remaining(rate, tat, 0), 5000);
    }

    #[test]
    fn scaling_slows_the_rate_and_shrinks_the_burst() {
        let rate = Rate::per_minute(60, 10).unwrap().scaled(0.5);
        assert_eq!(rate.interval_ns, 2 * S);
        assert_eq!(rate.burst(), 5);
        assert_eq!(Rate::per_minute(60, 1).unwrap().scaled(0.1).burst(), 1, "never below one");
    }

    #[test]
    fn overlong_idle_does_not_bank_more_than_the_burst() {
        let rate = Rate::per_minute(60, 5).unwrap();
        let allowed = run(rate, &[1_000 * S; 10]);
        assert_eq!(allowed.iter().filter(|a| **a).count(), 5);
    }
}
