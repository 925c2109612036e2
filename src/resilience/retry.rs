//! Retry policy: bounded attempts per provider, exponential backoff with full
//! jitter, and how long we are willing to wait for a Retry-After.

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(default)]
pub struct RetryPolicy {
    /// Attempts on one provider before moving to the next (1 = no retry).
    pub attempts_per_provider: u32,
    #[serde(with = "humantime_serde")]
    pub backoff_base: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// A Retry-After up to this long is waited out on the same provider;
    /// longer ones park the provider and the chain moves on.
    #[serde(with = "humantime_serde")]
    pub retry_after_max_wait: Duration,
    /// Longest a provider stays parked after a 429, whatever it asked for.
    #[serde(with = "humantime_serde")]
    pub park_max: Duration,
    /// Parking when a 429 carries no Retry-After.
    #[serde(with = "humantime_serde")]
    pub park_default: Duration,
    /// Longest one call may take (the provider's own timeouts apply too), so
    /// one stalling provider cannot spend the whole request deadline.
    #[serde(with = "humantime_serde")]
    pub attempt_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts_per_provider: 2,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            retry_after_max_wait: Duration::from_secs(1),
            park_max: Duration::from_secs(300),
            park_default: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(45),
        }
    }
}

impl RetryPolicy {
    /// Full jitter: uniform in [0, min(max, base · 2^retry)]. `retry` counts from 0.
    pub fn backoff(&self, retry: u32, unit: f64) -> Duration {
        let cap = self.backoff_base.saturating_mul(1u32 << retry.min(16)).min(self.backoff_max);
        cap.mul_f64(unit.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_up_to_the_cap_with_full_jitter() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff(0, 1.0), Duration::from_millis(100));
        assert_eq!(p.backoff(1, 1.0), Duration::from_millis(200));
        assert_eq!(p.backoff(3, 1.0), Duration::from_millis(800));
        assert_eq!(p.backoff(10, 1.0), Duration::from_secs(2));
        assert_eq!(p.backoff(40, 1.0), Duration::from_secs(2));
        assert_eq!(p.backoff(3, 0.0), Duration::ZERO);
        assert_eq!(p.backoff(3, 0.5), Duration::from_millis(400));
    }
}
