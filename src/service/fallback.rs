//! The fallback runner: a plain function walking a provider chain. For each
//! link it skips providers that are disabled, unconfigured, circuit-open or
//! parked by a Retry-After; calls the rest with retries (exponential backoff,
//! full jitter, Retry-After honoured up to a cap) under the request deadline;
//! moves on after auth failures without retrying; and stops at once on a
//! request error, which another provider would refuse too. Every call and skip
//! is recorded as an `Attempt`.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::registry::{ProviderState, Registry};
use crate::agents::ChainLink;
use crate::providers::{DynProvider, ErrorKind, ProviderError};
use crate::resilience::{Permit, ProviderHealth, RetryPolicy};
use crate::telemetry::metrics;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    UnknownProvider,
    Disabled,
    Unconfigured,
    CircuitOpen,
    Parked,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Ok,
    Failed { kind: ErrorKind, status: Option<u16> },
    Skipped(Skip),
}

impl Outcome {
    /// The label used in `provider_chain` and error bodies.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed { kind, .. } => kind.as_str(),
            Outcome::Skipped(Skip::UnknownProvider) => "unknown_provider",
            Outcome::Skipped(Skip::Disabled) => "disabled",
            Outcome::Skipped(Skip::Unconfigured) => "unconfigured",
            Outcome::Skipped(Skip::CircuitOpen) => "circuit_open",
            Outcome::Skipped(Skip::Parked) => "rate_limited",
        }
    }

    fn is_rate_limit(&self) -> bool {
        matches!(self, Outcome::Skipped(Skip::Parked) | Outcome::Failed { kind: ErrorKind::RateLimited, .. })
    }

    /// Skips that say nothing about availability (the provider is simply not set up).
    fn is_absent(&self) -> bool {
        matches!(self, Outcome::Skipped(Skip::UnknownProvider | Skip::Disabled | Skip::Unconfigured))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub provider: String,
    pub model: String,
    pub outcome: Outcome,
    pub latency: Duration,
}

/// One provider and model to call.
#[derive(Clone)]
pub struct Call {
    pub provider_id: String,
    pub provider: DynProvider,
    pub model: String,
}

#[derive(Debug)]
pub struct Success<T> {
    pub value: T,
    pub provider: String,
    pub model: String,
    pub attempts: Vec<Attempt>,
}

impl<T> Success<T> {
    /// Whether anything but the first link answered.
    pub fn fallback_used(&self, chain: &[ChainLink]) -> bool {
        chain.first().is_none_or(|first| first.provider != self.provider)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("provider {provider} rejected the request")]
    Rejected { provider: String, error: ProviderError, attempts: Vec<Attempt> },
    #[error("every provider is rate limited")]
    AllRateLimited { retry_after: Duration, attempts: Vec<Attempt> },
    #[error("every provider failed")]
    AllFailed { attempts: Vec<Attempt> },
    #[error("the request deadline passed")]
    Deadline { attempts: Vec<Attempt> },
}

impl Failure {
    pub fn attempts(&self) -> &[Attempt] {
        match self {
            Failure::Rejected { attempts, .. }
            | Failure::AllRateLimited { attempts, .. }
            | Failure::AllFailed { attempts }
            | Failure::Deadline { attempts } => attempts,
        }
    }
}

pub struct Runner<'a> {
    pub registry: &'a Registry,
    pub policy: RetryPolicy,
    pub deadline: Instant,
}

/// What the loop over one provider decided.
enum LinkEnd<T> {
    Done(T),
    Next,
    Stop(Failure),
}

impl Runner<'_> {
    pub async fn run<T, F, Fut>(&self, chain: &[ChainLink], call: F) -> Result<Success<T>, Failure>
    where
        F: Fn(Call) -> Fut,
        Fut: Future<Output = Result<T, ProviderError>>,
    {
        let mut attempts = Vec::new();
        let mut shortest_wait: Option<Duration> = None;
        for (position, link) in chain.iter().enumerate() {
            if position > 0 {
                metrics::fallback(&chain[position - 1].provider, &link.provider);
            }
            let Some((target, health)) = self.admit(link, &mut attempts, &mut shortest_wait) else { continue };
            match self.call_link(target, health, &call, &mut attempts, &mut shortest_wait).await {
                LinkEnd::Done(value) => {
                    return Ok(Success { value, provider: link.provider.clone(), model: link.model.clone(), attempts });
                }
                LinkEnd::Next => {}
                LinkEnd::Stop(failure) => return Err(failure),
            }
        }
        Err(conclude(attempts, shortest_wait))
    }

    /// Decides whether `link` may be called now; records a skip otherwise.
    fn admit(
        &self,
        link: &ChainLink,
        attempts: &mut Vec<Attempt>,
        shortest_wait: &mut Option<Duration>,
    ) -> Option<(Call, std::sync::Arc<ProviderHealth>)> {
        let mut skip = |reason: Skip| {
            attempts.push(Attempt {
                provider: link.provider.clone(),
                model: link.model.clone(),
                outcome: Outcome::Skipped(reason),
                latency: Duration::ZERO,
            });
            None
        };
        let Some(entry) = self.registry.get(&link.provider) else { return skip(Skip::UnknownProvider) };
        let provider = match &entry.state {
            ProviderState::Ready(p) => p.clone(),
            ProviderState::Disabled => return skip(Skip::Disabled),
            ProviderState::Unconfigured { .. } => return skip(Skip::Unconfigured),
        };
        if let Some(wait) = entry.health.parked_for() {
            *shortest_wait = Some(shortest_wait.map_or(wait, |w| w.min(wait)));
            return skip(Skip::Parked);
        }
        if entry.health.breaker.state() == crate::resilience::breaker::State::Open
            && entry.health.breaker.retry_in().is_some_and(|d| !d.is_zero())
        {
            return skip(Skip::CircuitOpen);
        }
        let call = Call { provider_id: entry.id.clone(), provider, model: link.model.clone() };
        Some((call, entry.health.clone()))
    }

    async fn call_link<T, F, Fut>(
        &self,
        target: Call,
        health: std::sync::Arc<ProviderHealth>,
        call: &F,
        attempts: &mut Vec<Attempt>,
        shortest_wait: &mut Option<Duration>,
    ) -> LinkEnd<T>
    where
        F: Fn(Call) -> Fut,
        Fut: Future<Output = Result<T, ProviderError>>,
    {
        let id = target.provider_id.clone();
        for attempt in 0..self.policy.attempts_per_provider.max(1) {
            if Instant::now() >= self.deadline {
                return LinkEnd::Stop(Failure::Deadline { attempts: std::mem::take(attempts) });
            }
            let (permit, transition) = health.breaker.acquire();
            metrics::breaker_transition(&id, transition);
            if permit == Permit::Rejected {
                attempts.push(skipped(&target, Skip::CircuitOpen));
                return LinkEnd::Next;
            }
            if attempt > 0 {
                metrics::retry(&id);
            }
            let started = Instant::now();
            let result = match tokio::time::timeout_at(self.deadline, call(target.clone())).await {
                Ok(r) => r,
                Err(_) => Err(ProviderError::Timeout { phase: "deadline" }),
            };
            let latency = started.elapsed();
            let error = match result {
                Ok(value) => {
                    health.record(latency, None);
                    metrics::breaker_transition(&id, health.breaker.record(true));
                    attempts.push(Attempt {
                        provider: id.clone(),
                        model: target.model.clone(),
                        outcome: Outcome::Ok,
                        latency,
                    });
                    return LinkEnd::Done(value);
                }
                Err(e) => e,
            };
            health.record(latency, Some(error.kind().as_str()));
            // Rate limits and request errors say nothing about the provider's health.
            if matches!(error, ProviderError::RateLimited { .. } | ProviderError::Rejected { .. }) {
                if permit == Permit::Probe {
                    health.breaker.release_probe();
                }
            } else {
                metrics::breaker_transition(&id, health.breaker.record(false));
            }
            attempts.push(Attempt {
                provider: id.clone(),
                model: target.model.clone(),
                outcome: Outcome::Failed { kind: error.kind(), status: error.status() },
                latency,
            });
            tracing::warn!(provider = %id, attempt = attempt + 1, kind = error.kind().as_str(), "upstream call failed");
            let last = attempt + 1 >= self.policy.attempts_per_provider;
            match error {
                ProviderError::Rejected { .. } => {
                    return LinkEnd::Stop(Failure::Rejected {
                        provider: id,
                        error,
                        attempts: std::mem::take(attempts),
                    });
                }
                ProviderError::Auth { .. } | ProviderError::Decode(_) => return LinkEnd::Next,
                ProviderError::RateLimited { retry_after, .. } => {
                    let wait = retry_after.unwrap_or(self.policy.park_default).min(self.policy.park_max);
                    health.park(wait);
                    *shortest_wait = Some(shortest_wait.map_or(wait, |w| w.min(wait)));
                    if last || wait > self.policy.retry_after_max_wait || !self.sleep_within_deadline(wait).await {
                        return LinkEnd::Next;
                    }
                }
                _ => {
                    let pause = self.policy.backoff(attempt, fastrand::f64());
                    if last || !self.sleep_within_deadline(pause).await {
                        return LinkEnd::Next;
                    }
                }
            }
        }
        LinkEnd::Next
    }

    /// Sleeps unless that would cross the deadline; says whether it slept.
    async fn sleep_within_deadline(&self, pause: Duration) -> bool {
        if Instant::now() + pause >= self.deadline {
            return false;
        }
        tokio::time::sleep(pause).await;
        true
    }
}

fn skipped(target: &Call, reason: Skip) -> Attempt {
    Attempt {
        provider: target.provider_id.clone(),
        model: target.model.clone(),
        outcome: Outcome::Skipped(reason),
        latency: Duration::ZERO,
    }
}

/// Every link is spent: 429 if all that exist were rate limited, else 502.
fn conclude(attempts: Vec<Attempt>, shortest_wait: Option<Duration>) -> Failure {
    let present: Vec<&Attempt> = attempts.iter().filter(|a| !a.outcome.is_absent()).collect();
    if !present.is_empty() && present.iter().all(|a| a.outcome.is_rate_limit()) {
        let retry_after = shortest_wait.unwrap_or(Duration::from_secs(1));
        return Failure::AllRateLimited { retry_after, attempts };
    }
    Failure::AllFailed { attempts }
}
