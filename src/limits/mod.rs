//! Admission control: per-provider request and token budgets (with per-model
//! overrides and auto-throttling), a global concurrency gate with a bounded
//! queue, and per-client budgets. State lives in process (atomics) or in Redis
//! (atomic scripts) so replicas share one budget. Token budgets reserve an
//! estimate at admission and are settled with the real usage afterwards, so
//! concurrent requests cannot overshoot.

pub mod gcra;
pub mod store;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::{ConcurrencyConfig, Config, RateLimit, ThrottleConfig};
use crate::telemetry::metrics;
use gcra::Rate;
use store::{LocalStore, RateStore, RedisStore, Shared, Verdict};

/// Completion tokens assumed when a request sets no `max_tokens`.
pub const DEFAULT_COMPLETION_ESTIMATE: u64 = 1024;

/// Rough token count of a prompt: four bytes a token.
pub fn estimate_tokens(prompt_bytes: usize, max_tokens: Option<u32>) -> u64 {
    (prompt_bytes as u64).div_ceil(4) + max_tokens.map_or(DEFAULT_COMPLETION_ESTIMATE, u64::from)
}

#[derive(Debug, Clone)]
struct Budget {
    requests: Option<Rate>,
    tokens: Option<Rate>,
    /// Store keys, built once (no formatting on the hot path).
    requests_key: String,
    tokens_key: Arc<str>,
}

impl Budget {
    fn from(limit: &RateLimit, key: &str) -> Self {
        let rpm = limit.rpm.filter(|r| *r > 0);
        Self {
            requests: rpm.and_then(|r| Rate::per_minute(r, limit.burst.unwrap_or(r))),
            tokens: limit.tpm.filter(|t| *t > 0).and_then(|t| Rate::per_minute(t, t)),
            // `{…}` is a Redis hash tag: both keys land in one slot, so one
            // script may touch both (Redis Cluster included).
            requests_key: format!("{{{key}}}:r"),
            tokens_key: Arc::from(format!("{{{key}}}:t")),
        }
    }

    fn is_unlimited(&self) -> bool {
        self.requests.is_none() && self.tokens.is_none()
    }
}

/// A provider's budgets and its auto-throttle factor.
struct ProviderBudget {
    default: Budget,
    models: HashMap<String, Budget>,
    /// f64 bits; 1.0 = the configured rate.
    factor: AtomicU64,
    /// Nanoseconds (of `Limits::base`) of the last cut, so a burst of 429s is one cut.
    last_cut: AtomicU64,
}

/// Tokens reserved for one call, to be settled with the real usage.
pub struct Reservation {
    store: Arc<dyn RateStore>,
    key: Arc<str>,
    rate: Rate,
    reserved: u64,
    /// Charged by the in-process fallback rather than Redis.
    local: bool,
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation").field("key", &self.key).field("reserved", &self.reserved).finish()
    }
}

impl Reservation {
    /// Returns the unused part of the reservation (or charges the excess).
    pub async fn settle(self, used: u64) {
        let delta = used as i64 - self.reserved as i64;
        if delta != 0 {
            let _ = self.store.adjust(&self.key, self.rate, delta, self.local).await;
        }
    }
}

/// Held while a request has upstream work in flight.
pub struct GatePass {
    _permit: Option<OwnedSemaphorePermit>,
    pub waited: Duration,
}

/// Why admission said no, and when to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Concurrency { retry_after: Duration },
    Client { retry_after: Duration },
}

/// A client's rpm decision, for the `X-RateLimit-*` headers.
#[derive(Debug, Clone, Copy)]
pub struct ClientHeaders {
    pub limit: u64,
    pub remaining: u64,
    pub reset: Duration,
}

pub struct Limits {
    enabled: bool,
    store: Arc<dyn RateStore>,
    backend: &'static str,
    shared: Option<Arc<Shared>>,
    /// How often this replica registers in Redis (`discover_replicas`).
    heartbeat: Option<Duration>,
    providers: HashMap<String, ProviderBudget>,
    throttle: ThrottleConfig,
    gate: Option<Gate>,
    client: Budget,
    client_concurrent: Option<u64>,
    in_flight_by_client: InFlight,
    base: Instant,
}

impl Limits {
    pub fn from_config(config: &Config) -> Result<Self, store::StoreDown> {
        let l = &config.limits;
        let (store, backend, shared) = match &l.redis.url {
            Some(url) => {
                let redis = RedisStore::new(url, &l.redis.prefix)?;
                let shared = Arc::new(Shared::new(redis, l.redis.on_failure, l.redis.replicas));
                (shared.clone() as Arc<dyn RateStore>, "redis", Some(shared))
            }
            None => (Arc::new(LocalStore::default()) as Arc<dyn RateStore>, "memory", None),
        };
        // The count only sets the local share: `fail_closed` has none.
        let heartbeat = (shared.is_some()
            && l.redis.discover_replicas
            && l.redis.on_failure == crate::config::RedisFailurePolicy::LocalShare)
            .then_some(l.redis.heartbeat);
        if heartbeat.is_some() {
            metrics::limits_replicas_seen(0);
        }
        let providers: HashMap<String, ProviderBudget> = config
            .providers
            .iter()
            .map(|(id, p)| {
                let budget = ProviderBudget {
                    default: Budget::from(&p.limits.rate(), &format!("p:{id}")),
                    models: p
                        .limits
                        .models
                        .iter()
                        .map(|(m, r)| (m.clone(), Budget::from(r, &format!("p:{id}:{m}"))))
                        .collect(),
                    factor: AtomicU64::new(1.0f64.to_bits()),
                    last_cut: AtomicU64::new(0),
                };
                (id.clone(), budget)
            })
            .collect();
        for (id, p) in &providers {
            if let Some(rate) = p.default.requests {
                metrics::effective_rpm(id, 60e9 / rate.interval_ns as f64);
            }
        }
        Ok(Self {
            enabled: l.enabled,
            store,
            backend,
            shared,
            heartbeat,
            providers,
            throttle: l.throttle,
            gate: (l.concurrency.max_in_flight > 0).then(|| Gate::new(l.concurrency)),
            client: Budget::from(&l.clients.rate(), "c"),
            client_concurrent: l.clients.concurrent.filter(|c| *c > 0),
            in_flight_by_client: Arc::new(DashMap::new()),
            base: Instant::now(),
        })
    }

    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// Whether the shared (Redis) store is unreachable and the fallback applies.
    pub fn degraded(&self) -> bool {
        self.shared.as_ref().is_some_and(|s| s.is_down())
    }

    /// The shared store and how often to heartbeat into it, when this
    /// replica counts the live replicas (`limits.redis.discover_replicas`,
    /// under `on_failure: local_share`).
    pub fn membership(&self) -> Option<(Arc<Shared>, Duration)> {
        Some((self.shared.clone()?, self.heartbeat?))
    }

    /// With Redis and `on_failure: local_share`: N of the 1/N share of each
    /// budget applied while Redis is down, and the live replicas at the last
    /// successful heartbeat (if discovery is on and one succeeded).
    pub fn fallback_share(&self) -> Option<(u32, Option<u32>)> {
        self.shared.as_ref().filter(|s| s.shares_locally()).map(|s| (s.fallback_replicas(), s.replicas_seen()))
    }

    fn budget(&self, provider: &str, model: &str) -> Option<(&ProviderBudget, &Budget)> {
        let p = self.providers.get(provider)?;
        Some((p, p.models.get(model).unwrap_or(&p.default)))
    }

    fn factor(p: &ProviderBudget) -> f64 {
        f64::from_bits(p.factor.load(Ordering::Relaxed))
    }

    /// Admits one call to `provider`/`model` reserving `tokens`, or says how
    /// long until it would fit.
    pub async fn admit_provider(
        &self,
        provider: &str,
        model: &str,
        tokens: u64,
    ) -> Result<Option<Reservation>, Duration> {
        if !self.enabled {
            return Ok(None);
        }
        let Some((p, budget)) = self.budget(provider, model) else { return Ok(None) };
        if budget.is_unlimited() {
            return Ok(None);
        }
        let requests = budget.requests.map(|r| r.scaled(Self::factor(p)));
        let cost = budget.tokens.map(|r| tokens.min(r.burst())).unwrap_or(0);
        let v = match (requests, budget.tokens) {
            (Some(r), Some(t)) => {
                let both = self.store.acquire_both((&budget.requests_key, r), (&budget.tokens_key, t, cost)).await;
                both.unwrap_or_else(|_| refused())
            }
            (Some(r), None) => self.decide(&budget.requests_key, r, 1).await,
            (None, Some(t)) => self.decide(&budget.tokens_key, t, cost).await,
            (None, None) => return Ok(None),
        };
        if !v.allowed {
            metrics::admission("provider", "limited");
            return Err(v.retry_after);
        }
        metrics::admission("provider", "allowed");
        let Some(rate) = budget.tokens else { return Ok(None) };
        Ok(Some(Reservation {
            store: self.store.clone(),
            key: budget.tokens_key.clone(),
            rate,
            reserved: cost,
            local: v.local,
        }))
    }

    async fn decide(&self, key: &str, rate: Rate, cost: u64) -> Verdict {
        self.store.acquire(key, rate, cost).await.unwrap_or_else(|_| refused())
    }

    /// Auto-throttle: a 429 from the provider cuts its effective request rate
    /// (once per cooldown, so a burst counts once); successes restore it.
    pub fn on_upstream(&self, provider: &str, rate_limited: bool) {
        if !self.enabled || !self.throttle.enabled {
            return;
        }
        let Some(p) = self.providers.get(provider) else { return };
        if p.default.requests.is_none() {
            return;
        }
        let now = self.base.elapsed().as_nanos() as u64 + 1;
        let t = &self.throttle;
        if rate_limited {
            // One cut per cooldown: only the caller that claims the window cuts.
            let last = p.last_cut.load(Ordering::Acquire);
            if last != 0 && now.saturating_sub(last) < t.cooldown.as_nanos() as u64 {
                return;
            }
            if p.last_cut.compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire).is_err() {
                return;
            }
        } else if Self::factor(p) >= 1.0 {
            return;
        }
        let update = |bits: u64| {
            let f = f64::from_bits(bits);
            let next = if rate_limited { (f * t.decrease).max(t.min_factor) } else { (f + t.recover_step).min(1.0) };
            Some(next.to_bits())
        };
        let next = match p.factor.fetch_update(Ordering::AcqRel, Ordering::Acquire, update) {
            Ok(previous) | Err(previous) => update(previous).map(f64::from_bits).unwrap_or(1.0),
        };
        if let Some(rpm) = self.effective_rpm(provider) {
            metrics::effective_rpm(provider, rpm);
        }
        if rate_limited {
            tracing::warn!(provider, factor = next, "provider answered 429; lowering its effective rate");
        }
    }

    /// The provider's request rate after auto-throttling, per minute.
    pub fn effective_rpm(&self, provider: &str) -> Option<f64> {
        let p = self.providers.get(provider)?;
        let rate = p.default.requests?;
        Some(60e9 / rate.interval_ns as f64 * Self::factor(p))
    }

    /// Configured `(rpm, burst, tpm)` of a provider, for `/providers`.
    pub fn configured(&self, provider: &str) -> Option<(Option<u64>, Option<u64>, Option<u64>)> {
        let p = self.providers.get(provider)?;
        let per_min = |r: Rate| (60e9 / r.interval_ns as f64).round() as u64;
        Some((p.default.requests.map(per_min), p.default.requests.map(|r| r.burst()), p.default.tokens.map(per_min)))
    }

    /// Waits for a concurrency slot (bounded queue, bounded wait).
    pub async fn enter(&self) -> Result<GatePass, Refusal> {
        match (&self.gate, self.enabled) {
            (Some(gate), true) => gate.enter().await,
            _ => Ok(GatePass { _permit: None, waited: Duration::ZERO }),
        }
    }

    /// A client's request budget and concurrency; `Err` is a refusal. `rpm`
    /// is the client's own budget (an API key's), replacing `limits.clients.rpm`.
    pub async fn admit_client(
        &self,
        client: &str,
        rpm: Option<u64>,
    ) -> Result<(Option<ClientHeaders>, ClientSlot), (Refusal, Option<ClientHeaders>)> {
        if !self.enabled {
            return Ok((None, ClientSlot(None)));
        }
        let mut headers = None;
        let mut requests_local = false;
        let requests = rpm.filter(|r| *r > 0).and_then(|r| Rate::per_minute(r, r)).or(self.client.requests);
        if let Some(rate) = requests {
            let v = self.decide(&format!("c:{client}:r"), rate, 1).await;
            let h = ClientHeaders { limit: rate.burst(), remaining: v.remaining, reset: v.reset };
            if !v.allowed {
                metrics::admission("client", "limited");
                return Err((Refusal::Client { retry_after: v.retry_after }, Some(h)));
            }
            headers = Some(h);
            requests_local = v.local;
        }
        let slot = match self.client_concurrent {
            Some(max) => {
                let counter = self.in_flight_by_client.entry(client.to_owned()).or_default().clone();
                let slot = ClientSlot(Some((counter.clone(), self.in_flight_by_client.clone(), client.to_owned())));
                if counter.fetch_add(1, Ordering::AcqRel) >= max {
                    drop(slot);
                    // The request slot taken above is not used: give it back.
                    if let Some(rate) = requests {
                        let _ = self.store.adjust(&format!("c:{client}:r"), rate, -1, requests_local).await;
                    }
                    metrics::admission("client", "limited");
                    return Err((Refusal::Client { retry_after: Duration::from_secs(1) }, headers));
                }
                slot
            }
            None => ClientSlot(None),
        };
        metrics::admission("client", "allowed");
        Ok((headers, slot))
    }

    /// Reserves a client's token estimate (its own `tpm` when it has one,
    /// otherwise `limits.clients.tpm`).
    pub async fn admit_client_tokens(
        &self,
        client: &str,
        tokens: u64,
        tpm: Option<u64>,
    ) -> Result<Option<Reservation>, Refusal> {
        let own = tpm.filter(|t| *t > 0).and_then(|t| Rate::per_minute(t, t));
        let Some(rate) = own.or(self.client.tokens).filter(|_| self.enabled) else { return Ok(None) };
        let key: Arc<str> = Arc::from(format!("c:{client}:t"));
        let cost = tokens.min(rate.burst());
        let v = self.decide(&key, rate, cost).await;
        if !v.allowed {
            metrics::admission("client", "limited");
            return Err(Refusal::Client { retry_after: v.retry_after });
        }
        Ok(Some(Reservation { store: self.store.clone(), key, rate, reserved: cost, local: v.local }))
    }
}

/// Fail closed (the policy chose it): refuse for a second.
fn refused() -> Verdict {
    Verdict {
        allowed: false,
        retry_after: Duration::from_secs(1),
        remaining: 0,
        reset: Duration::from_secs(1),
        local: true,
    }
}

/// Counts a client's in-flight request until dropped.
/// Idle clients' counters kept for reuse before they are removed.
const IDLE_CLIENTS_KEPT: usize = 4096;

/// In-flight request counts by client.
type InFlight = Arc<DashMap<String, Arc<AtomicU64>>>;

pub struct ClientSlot(Option<(Arc<AtomicU64>, InFlight, String)>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        if let Some((count, map, client)) = &self.0
            && count.fetch_sub(1, Ordering::AcqRel) == 1
            && map.len() > IDLE_CLIENTS_KEPT
        {
            // Idle clients leave the map once it is large, so rotating
            // addresses cannot grow it without bound.
            map.remove_if(client, |_, c| c.load(Ordering::Acquire) == 0);
        }
    }
}

struct QueueSeat<'a>(&'a AtomicUsize);

impl Drop for QueueSeat<'_> {
    fn drop(&mut self) {
        let depth = self.0.fetch_sub(1, Ordering::AcqRel).saturating_sub(1);
        metrics::queue_depth(depth);
    }
}

/// The global concurrency gate: a semaphore with a bounded, time-limited queue.
struct Gate {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    config: ConcurrencyConfig,
}

impl Gate {
    fn new(config: ConcurrencyConfig) -> Self {
        Self { slots: Arc::new(Semaphore::new(config.max_in_flight)), waiting: AtomicUsize::new(0), config }
    }

    async fn enter(&self) -> Result<GatePass, Refusal> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            metrics::admission("concurrency", "allowed");
            return Ok(GatePass { _permit: Some(permit), waited: Duration::ZERO });
        }
        let refused = Refusal::Concurrency { retry_after: Duration::from_secs(1) };
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.config.max_queue {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            metrics::admission("concurrency", "queue_full");
            return Err(refused);
        }
        // Leaves the queue however the wait ends, a cancelled request included.
        let _in_queue = QueueSeat(&self.waiting);
        metrics::queue_depth(self.waiting.load(Ordering::Relaxed));
        let started = Instant::now();
        let result = tokio::time::timeout(self.config.max_wait, self.slots.clone().acquire_owned()).await;
        let waited = started.elapsed();
        metrics::queue_wait(waited);
        match result {
            Ok(Ok(permit)) => {
                metrics::admission("concurrency", "queued");
                Ok(GatePass { _permit: Some(permit), waited })
            }
            _ => {
                metrics::admission("concurrency", "timed_out");
                Err(refused)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rpm: u64, burst: u64, tpm: Option<u64>) -> Limits {
        let mut config = Config::default();
        let groq = config.providers.get_mut("groq").unwrap();
        groq.limits.rpm = Some(rpm);
        groq.limits.burst = Some(burst);
        groq.limits.tpm = tpm;
        groq.limits.models.insert("big".into(), RateLimit { rpm: Some(1), burst: Some(1), tpm: None });
        Limits::from_config(&config).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn requests_pass_up_to_the_burst_then_at_the_rate() {
        let l = limits(30, 3, None);
        for _ in 0..3 {
            assert!(l.admit_provider("groq", "m", 10).await.is_ok());
        }
        let wait = l.admit_provider("groq", "m", 10).await.err().unwrap();
        assert_eq!(wait, Duration::from_secs(2), "30 rpm: one every 2 s");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(l.admit_provider("groq", "m", 10).await.is_ok());
        // A per-model override has its own budget.
        assert!(l.admit_provider("groq", "big", 10).await.is_ok());
        assert!(l.admit_provider("groq", "big", 10).await.is_err());
        // Unknown providers are unlimited.
        assert!(l.admit_provider("ollama", "x", 10).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn token_reservations_bound_concurrent_use_and_settle_to_real_usage() {
        let l = limits(1000, 1000, Some(10_000));
        let a = l.admit_provider("groq", "m", 6000).await.unwrap().unwrap();
        assert!(l.admit_provider("groq", "m", 6000).await.is_err(), "6000 + 6000 > 10 000");
        a.settle(1000).await;
        let b = l.admit_provider("groq", "m", 6000).await;
        assert!(b.is_ok(), "the unused 5000 came back");
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_cuts_the_effective_rate_once_per_burst_and_successes_restore_it() {
        let l = limits(60, 60, None);
        assert_eq!(l.effective_rpm("groq"), Some(60.0));
        l.on_upstream("groq", true);
        l.on_upstream("groq", true);
        assert_eq!(l.effective_rpm("groq"), Some(30.0), "one cut for a burst");
        tokio::time::advance(Duration::from_secs(3)).await;
        l.on_upstream("groq", true);
        assert_eq!(l.effective_rpm("groq"), Some(15.0));
        for _ in 0..100 {
            l.on_upstream("groq", false);
        }
        assert_eq!(l.effective_rpm("groq"), Some(60.0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_cancelled_in_the_queue_leaves_it() {
        let mut config = Config::default();
        config.limits.concurrency =
            ConcurrencyConfig { max_in_flight: 1, max_queue: 1, max_wait: Duration::from_secs(60) };
        let l = Arc::new(Limits::from_config(&config).unwrap());
        let _held = l.enter().await.unwrap();
        for _ in 0..3 {
            let queued = tokio::spawn({
                let l = l.clone();
                async move { l.enter().await.is_ok() }
            });
            tokio::task::yield_now().await;
            queued.abort();
            let _ = queued.await;
        }
        // The seat is free again: a new request can queue (and times out here).
        let waiter = tokio::spawn({
            let l = l.clone();
            async move { l.enter().await.err() }
        });
        tokio::task::yield_now().await;
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(matches!(waiter.await.unwrap(), Some(Refusal::Concurrency { .. })));
        let metrics_unaffected = l.gate.as_ref().unwrap().waiting.load(Ordering::Acquire);
        assert_eq!(metrics_unaffected, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_gate_queues_within_bounds() {
        let mut config = Config::default();
        config.limits.concurrency =
            ConcurrencyConfig { max_in_flight: 1, max_queue: 1, max_wait: Duration::from_secs(2) };
        let l = Arc::new(Limits::from_config(&config).unwrap());
        let first = l.enter().await.unwrap();
        let waiter = tokio::spawn({
            let l = l.clone();
            async move { l.enter().await.map(|p| p.waited) }
        });
        tokio::task::yield_now().await;
        assert!(matches!(l.enter().await, Err(Refusal::Concurrency { .. })), "queue full");
        tokio::time::advance(Duration::from_millis(500)).await;
        drop(first);
        let waited = waiter.await.unwrap().unwrap();
        assert_eq!(waited, Duration::from_millis(500));
        let _held = l.enter().await.unwrap();
        let late = tokio::spawn({
            let l = l.clone();
            async move { l.enter().await.is_err() }
        });
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(late.await.unwrap(), "waited too long");
    }
}
