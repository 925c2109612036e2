//! Resilience building blocks: circuit breakers, the retry/backoff policy and
//! per-provider health tracking (parking after a Retry-After, a rolling window
//! of recent calls for status and latency). No HTTP, no provider types beyond
//! the error kind.

pub mod breaker;
pub mod health;
pub mod retry;

pub use breaker::{Breaker, BreakerConfig, Permit};
pub use health::{ProviderHealth, StatusReport};
pub use retry::RetryPolicy;
