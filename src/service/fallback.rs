//! The fallback runner: a plain function walking a provider chain. For each
//! link it skips providers that are disabled, unconfigured, circuit-open or
//! parked by a Retry-After; calls the rest with retries (exponential backoff,
//! full jitter, Retry-After honoured up to a cap), each call bounded by the
//! attempt timeout and all of them by the request deadline; moves on after
//! auth failures and unknown models without retrying; and stops at once on a
//! request error, which another provider would refuse too (the decision is
//! `ProviderError::disposition`). Every call and skip is an `Attempt`.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::registry::{ProviderState, Registry};
use crate::agents::ChainLink;
use crate::limits::{Limits, Reservation};
use crate::providers::{Disposition, DynProvider, ErrorKind, ProviderError};
use crate::resilience::{Permit, ProviderHealth, RetryPolicy};
use crate::telemetry::metrics;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    UnknownProvider,
    Disabled,
    Unconfigured,
    CircuitOpen,
    Parked,
    /// Squad's own budget for the provider is spent (admission control).
    Limited,
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
            Outcome::Skipped(Skip::Parked | Skip::Limited) => "rate_limited",
        }
    }

    fn is_rate_limit(&self) -> bool {
        matches!(
            self,
            Outcome::Skipped(Skip::Parked | Skip::Limited) | Outcome::Failed { kind: ErrorKind::RateLimited, .. }
        )
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
    /// Time spent waiting out Retry-After headers.
    pub rate_limit_wait: Duration,
    /// The answering call's token reservation, to settle with real usage.
    pub reservation: Option<Reservation>,
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

/// What the walk has gathered so far.
#[derive(Default)]
struct Log {
    attempts: Vec<Attempt>,
    shortest_wait: Option<Duration>,
    rate_limit_wait: Duration,
}

pub struct Runner<'a> {
    pub registry: &'a Registry,
    pub policy: RetryPolicy,
    pub deadline: Instant,
    /// Admission control; `None` runs without limits.
    pub limits: Option<&'a Limits>,
    /// Token estimate reserved against provider budgets per call.
    pub tokens: u64,
    /// The call context, read after each success for a spent provider budget.
    pub exhausted: Option<&'a crate::providers::CallContext>,
}

/// What the loop over one provider decided.
enum LinkEnd<T> {
    Done(T, Option<Reservation>),
    Next,
    Stop(Failure),
}

impl Runner<'_> {
    pub async fn run<T, F, Fut>(&self, chain: &[ChainLink], call: F) -> Result<Success<T>, Failure>
    where
        F: Fn(Call) -> Fut,
        Fut: Future<Output = Result<T, ProviderError>>,
    {
        let mut log = Log::default();
        for (position, link) in chain.iter().enumerate() {
            if position > 0 {
                metrics::fallback(&chain[position - 1].provider, &link.provider);
            }
            let Some((target, health)) = self.admit(link, &mut log) else { continue };
            match self.call_link(target, health, &call, &mut log).await {
                LinkEnd::Done(value, reservation) => {
                    return Ok(Success {
                        value,
                        provider: link.provider.clone(),
                        model: link.model.clone(),
                        attempts: log.attempts,
                        rate_limit_wait: log.rate_limit_wait,
                        reservation,
                    });
                }
                LinkEnd::Next => {}
                LinkEnd::Stop(failure) => return Err(failure),
            }
        }
        Err(conclude(log.attempts, log.shortest_wait))
    }

    /// Decides whether `link` may be called now; records a skip otherwise.
    fn admit(&self, link: &ChainLink, log: &mut Log) -> Option<(Call, std::sync::Arc<ProviderHealth>)> {
        let mut skip = |reason: Skip| {
            log.attempts.push(Attempt {
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
            log.shortest_wait = Some(log.shortest_wait.map_or(wait, |w| w.min(wait)));
            return skip(Skip::Parked);
        }
        if entry.health.breaker.retry_in().is_some_and(|d| !d.is_zero()) {
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
        log: &mut Log,
    ) -> LinkEnd<T>
    where
        F: Fn(Call) -> Fut,
        Fut: Future<Output = Result<T, ProviderError>>,
    {
        let id = target.provider_id.clone();
        let attempts_allowed = self.policy.attempts_per_provider.max(1);
        for attempt in 0..attempts_allowed {
            if Instant::now() >= self.deadline {
                return LinkEnd::Stop(Failure::Deadline { attempts: std::mem::take(&mut log.attempts) });
            }
            let (permit, transition) = health.breaker.acquire();
            metrics::breaker_transition(&id, transition);
            if permit == Permit::Rejected {
                log.attempts.push(skipped(&target, Skip::CircuitOpen));
                return LinkEnd::Next;
            }
            let guard = health.breaker.guard(permit);
            let reservation = match self.limits {
                Some(limits) => match limits.admit_provider(&id, &target.model, self.tokens).await {
                    Ok(r) => r,
                    Err(wait) => {
                        guard.settle(None);
                        log.shortest_wait = Some(log.shortest_wait.map_or(wait, |w| w.min(wait)));
                        log.attempts.push(skipped(&target, Skip::Limited));
                        return LinkEnd::Next;
                    }
                },
                None => None,
            };
            if attempt > 0 {
                metrics::retry(&id);
            }
            // A spent-budget signal belongs to the call that reports it.
            if let Some(ctx) = self.exhausted {
                ctx.take_exhausted();
            }
            let started = Instant::now();
            let until = (started + self.policy.attempt_timeout).min(self.deadline);
            let result = match tokio::time::timeout_at(until, call(target.clone())).await {
                Ok(r) => r,
                Err(_) => {
                    Err(ProviderError::Timeout { phase: if until < self.deadline { "attempt" } else { "deadline" } })
                }
            };
            let latency = started.elapsed();
            let error = match result {
                Ok(value) => {
                    // The provider said its own budget is spent: park it until
                    // its reset rather than learn it from a 429.
                    if let Some(wait) = self.exhausted.and_then(|ctx| ctx.take_exhausted()) {
                        health.park(wait.min(self.policy.park_max));
                    }
                    health.record(latency, None);
                    metrics::breaker_transition(&id, guard.settle(Some(true)));
                    log.attempts.push(attempt_of(&target, Outcome::Ok, latency));
                    if let Some(limits) = self.limits {
                        limits.on_upstream(&id, false);
                    }
                    return LinkEnd::Done(value, reservation);
                }
                Err(e) => e,
            };
            // Tokens come back only when the provider clearly did not process
            // the call; after a timeout or a 5xx it may have (and billed it).
            let unprocessed = matches!(
                error,
                ProviderError::Connect(_)
                    | ProviderError::RateLimited { .. }
                    | ProviderError::Rejected { .. }
                    | ProviderError::NotFound { .. }
                    | ProviderError::Auth { .. }
            );
            if let Some(r) = reservation.filter(|_| unprocessed) {
                r.settle(0).await;
            }
            if let Some(limits) = self.limits {
                limits.on_upstream(&id, matches!(error, ProviderError::RateLimited { .. }));
            }
            let out_of_time = Instant::now() >= self.deadline;
            health.record(latency, Some(error.kind().as_str()));
            // Our own deadline running out says nothing about the provider.
            let verdict = (error.counts_against_provider() && !out_of_time).then_some(false);
            metrics::breaker_transition(&id, guard.settle(verdict));
            log.attempts.push(attempt_of(
                &target,
                Outcome::Failed { kind: error.kind(), status: error.status() },
                latency,
            ));
            tracing::warn!(provider = %id, attempt = attempt + 1, kind = error.kind().as_str(), "upstream call failed");
            if out_of_time {
                return LinkEnd::Stop(Failure::Deadline { attempts: std::mem::take(&mut log.attempts) });
            }
            let last = attempt + 1 >= attempts_allowed;
            match error.disposition() {
                Disposition::ReturnToClient => {
                    return LinkEnd::Stop(Failure::Rejected {
                        provider: id,
                        error,
                        attempts: std::mem::take(&mut log.attempts),
                    });
                }
                Disposition::NextProvider => return LinkEnd::Next,
                Disposition::Retry => {}
            }
            let pause = match &error {
                ProviderError::RateLimited { retry_after, .. } => {
                    let wait = retry_after.unwrap_or(self.policy.park_default).min(self.policy.park_max);
                    health.park(wait);
                    log.shortest_wait = Some(log.shortest_wait.map_or(wait, |w| w.min(wait)));
                    if wait > self.policy.retry_after_max_wait {
                        return LinkEnd::Next;
                    }
                    log.rate_limit_wait += wait;
                    wait
                }
                _ => self.policy.backoff(attempt, fastrand::f64()),
            };
            if last || !self.sleep_within_deadline(pause).await {
                return LinkEnd::Next;
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

fn attempt_of(target: &Call, outcome: Outcome, latency: Duration) -> Attempt {
    Attempt { provider: target.provider_id.clone(), model: target.model.clone(), outcome, latency }
}

fn skipped(target: &Call, reason: Skip) -> Attempt {
    attempt_of(target, Outcome::Skipped(reason), Duration::ZERO)
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
