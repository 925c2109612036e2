//! Where GCRA state lives. In process: one atomic per key, updated by
//! compare-and-swap (no lock on the hot path beyond a sharded map lookup).
//! Redis: the same arithmetic in a Lua script, atomic on the server, so any
//! number of replicas share one budget exactly; times come from Redis' clock.
//! `Shared` wraps Redis with the documented failure policy.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use redis::aio::ConnectionManager;
use tokio::sync::OnceCell;
use tokio::time::Instant;

use super::gcra::{self, Decision, Rate};
use crate::config::RedisFailurePolicy;
use crate::telemetry::metrics;

/// One decision as callers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub retry_after: Duration,
    /// Units left right after this decision (for `X-RateLimit-Remaining`).
    pub remaining: u64,
    /// Until the budget is whole again (for `X-RateLimit-Reset`).
    pub reset: Duration,
    /// Decided by the in-process fallback (Redis was down): settle it there too.
    pub local: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("rate-limit store unavailable: {0}")]
pub struct StoreDown(pub String);

#[async_trait::async_trait]
pub trait RateStore: Send + Sync {
    /// Takes `cost` units if they fit.
    async fn acquire(&self, key: &str, rate: Rate, cost: u64) -> Result<Verdict, StoreDown>;
    /// Moves the budget by `delta` units unconditionally: negative returns a
    /// reservation's unused part, positive charges usage beyond it. `local`
    /// says where the original charge was made (see `Verdict::local`).
    async fn adjust(&self, key: &str, rate: Rate, delta: i64, local: bool) -> Result<(), StoreDown>;

    /// One request and `cost` tokens together, or neither. This default takes
    /// them in turn and gives the request back if the tokens do not fit;
    /// Redis does both in one script.
    async fn acquire_both(&self, requests: (&str, Rate), tokens: (&str, Rate, u64)) -> Result<Verdict, StoreDown> {
        let v = self.acquire(requests.0, requests.1, 1).await?;
        if !v.allowed {
            return Ok(v);
        }
        let t = self.acquire(tokens.0, tokens.1, tokens.2).await?;
        if !t.allowed {
            let _ = self.adjust(requests.0, requests.1, -1, v.local).await;
        }
        Ok(t)
    }
}

/// In-process GCRA state.
pub struct LocalStore {
    base: Instant,
    cells: DashMap<String, Arc<AtomicU64>>,
}

impl Default for LocalStore {
    fn default() -> Self {
        Self { base: Instant::now(), cells: DashMap::new() }
    }
}

impl LocalStore {
    fn now(&self) -> u64 {
        // +1 s so that "now" is never 0 (a zero TAT means "never used").
        self.base.elapsed().as_nanos() as u64 + 1_000_000_000
    }

    fn cell(&self, key: &str) -> Arc<AtomicU64> {
        if let Some(c) = self.cells.get(key) {
            return c.clone();
        }
        self.cells.entry(key.to_owned()).or_default().clone()
    }

    pub fn acquire_now(&self, key: &str, rate: Rate, cost: u64) -> Verdict {
        let cell = self.cell(key);
        let now = self.now();
        let mut tat = cell.load(Ordering::Acquire);
        loop {
            match gcra::decide(rate, tat, now, cost) {
                Decision::Allow { tat: new } => {
                    match cell.compare_exchange_weak(tat, new, Ordering::AcqRel, Ordering::Acquire) {
                        Ok(_) => {
                            return Verdict {
                                allowed: true,
                                retry_after: Duration::ZERO,
                                remaining: gcra::remaining(rate, new, now),
                                reset: gcra::reset_after(new, now),
                                local: true,
                            };
                        }
                        Err(current) => tat = current,
                    }
                }
                Decision::Deny { retry_after_ns } => {
                    return Verdict {
                        allowed: false,
                        retry_after: Duration::from_nanos(retry_after_ns),
                        remaining: gcra::remaining(rate, tat, now),
                        reset: gcra::reset_after(tat, now),
                        local: true,
                    };
                }
            }
        }
    }

    pub fn adjust_now(&self, key: &str, rate: Rate, delta: i64) {
        let cell = self.cell(key);
        let now = self.now();
        let _ = cell.fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
            let moved = rate.interval_ns.saturating_mul(delta.unsigned_abs());
            Some(if delta >= 0 {
                tat.max(now).saturating_add(moved)
            } else {
                gcra::refund(rate, tat, now, delta.unsigned_abs())
            })
        });
    }
}

#[async_trait::async_trait]
impl RateStore for LocalStore {
    async fn acquire(&self, key: &str, rate: Rate, cost: u64) -> Result<Verdict, StoreDown> {
        Ok(self.acquire_now(key, rate, cost))
    }

    async fn adjust(&self, key: &str, rate: Rate, delta: i64, _local: bool) -> Result<(), StoreDown> {
        self.adjust_now(key, rate, delta);
        Ok(())
    }
}

/// GCRA in microseconds (Lua numbers are doubles: nanoseconds since the epoch
/// would lose precision). Returns {allowed, retry_after_us, remaining, reset_us}.
const ACQUIRE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + interval * cost
local allow_at = new_tat - tolerance
if allow_at <= now then
  redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
  return {1, 0, math.floor((tolerance - (new_tat - now)) / interval), math.floor(new_tat - now)}
end
return {0, math.floor(allow_at - now), math.floor((tolerance - (tat - now)) / interval), math.floor(tat - now)}
";

/// Request and token budgets in one atomic step: both charged, or neither.
/// Keys share a hash tag (`{p:groq}`), so both land in one slot should the
/// store ever speak to a Redis Cluster (the client here is not a cluster client).
const ACQUIRE_BOTH: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ri, rtol = tonumber(ARGV[1]), tonumber(ARGV[2])
local ti, ttol, cost = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local rtat = tonumber(redis.call('GET', KEYS[1]) or '0')
if rtat < now then rtat = now end
local r_new = rtat + ri
if r_new - rtol > now then
  return {0, math.floor(r_new - rtol - now), 0, math.floor(rtat - now)}
end
local ttat = tonumber(redis.call('GET', KEYS[2]) or '0')
if ttat < now then ttat = now end
local t_new = ttat + ti * cost
if t_new - ttol > now then
  return {0, math.floor(t_new - ttol - now), math.floor((ttol - (ttat - now)) / ti), math.floor(ttat - now)}
end
redis.call('SET', KEYS[1], string.format('%.3f', r_new), 'PX', math.ceil((r_new - now) / 1000) + 1000)
redis.call('SET', KEYS[2], string.format('%.3f', t_new), 'PX', math.ceil((t_new - now) / 1000) + 1000)
return {1, 0, math.floor((ttol - (t_new - now)) / ti), math.floor(t_new - now)}
";

const ADJUST: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local delta = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
tat = tat + interval * delta
if tat < now then tat = now end
redis.call('SET', KEYS[1], string.format('%.3f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
return 1
";

/// A replica's heartbeat: registers `ARGV[1]` in the sorted set of live
/// replicas at Redis' time, drops members silent for `ARGV[2]` ms, and
/// counts the rest. The set expires with its last member.
const HEARTBEAT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
redis.call('PEXPIRE', KEYS[1], ttl)
return redis.call('ZCARD', KEYS[1])
";

pub struct RedisStore {
    prefix: String,
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
    acquire: redis::Script,
    acquire_both: redis::Script,
    adjust: redis::Script,
    heartbeat: redis::Script,
}

impl RedisStore {
    pub fn new(url: &str, prefix: &str) -> Result<Self, StoreDown> {
        let client = redis::Client::open(url).map_err(|e| StoreDown(e.to_string()))?;
        Ok(Self {
            prefix: prefix.to_owned(),
            client,
            conn: OnceCell::new(),
            acquire: redis::Script::new(ACQUIRE),
            acquire_both: redis::Script::new(ACQUIRE_BOTH),
            adjust: redis::Script::new(ADJUST),
            heartbeat: redis::Script::new(HEARTBEAT),
        })
    }

    fn replicas_key(&self) -> String {
        format!("{}:replicas", self.prefix)
    }

    /// Registers `instance` as live for `ttl` and returns how many replicas
    /// are registered (this one included).
    async fn heartbeat(&self, instance: &str, ttl: Duration) -> Result<u32, StoreDown> {
        let mut conn = self.conn().await?;
        let n: i64 = self
            .heartbeat
            .key(self.replicas_key())
            .arg(instance)
            .arg(ttl.as_millis().max(1) as u64)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| StoreDown(e.to_string()))?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX).max(1))
    }

    /// Removes `instance` from the live replicas.
    async fn leave(&self, instance: &str) -> Result<(), StoreDown> {
        let mut conn = self.conn().await?;
        let _: i64 = redis::cmd("ZREM")
            .arg(self.replicas_key())
            .arg(instance)
            .query_async(&mut conn)
            .await
            .map_err(|e| StoreDown(e.to_string()))?;
        Ok(())
    }

    async fn conn(&self) -> Result<ConnectionManager, StoreDown> {
        // Fail fast: while Redis is away the fallback policy applies, and the
        // manager's own reconnection must not hold requests.
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(300)))
            .set_response_timeout(Some(Duration::from_millis(300)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(100));
        self.conn
            .get_or_try_init(|| async { ConnectionManager::new_with_config(self.client.clone(), config).await })
            .await
            .cloned()
            .map_err(|e| StoreDown(e.to_string()))
    }
}

fn verdict(allowed: i64, retry_us: i64, remaining: i64, reset_us: i64) -> Verdict {
    Verdict {
        allowed: allowed == 1,
        retry_after: Duration::from_micros(retry_us.max(0) as u64),
        remaining: remaining.max(0) as u64,
        reset: Duration::from_micros(reset_us.max(0) as u64),
        local: false,
    }
}

/// Nanoseconds as fractional microseconds: truncating to whole µs would make
/// fast rates (tens of thousands of tokens a minute and up) faster than set.
fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

#[async_trait::async_trait]
impl RateStore for RedisStore {
    async fn acquire(&self, key: &str, rate: Rate, cost: u64) -> Result<Verdict, StoreDown> {
        let mut conn = self.conn().await?;
        let (allowed, retry_us, remaining, reset_us): (i64, i64, i64, i64) = self
            .acquire
            .key(format!("{}:rl:{key}", self.prefix))
            .arg(us(rate.interval_ns))
            .arg(us(rate.tolerance_ns))
            .arg(cost)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| StoreDown(e.to_string()))?;
        Ok(verdict(allowed, retry_us, remaining, reset_us))
    }

    async fn acquire_both(&self, requests: (&str, Rate), tokens: (&str, Rate, u64)) -> Result<Verdict, StoreDown> {
        let mut conn = self.conn().await?;
        let (allowed, retry_us, remaining, reset_us): (i64, i64, i64, i64) = self
            .acquire_both
            .key(format!("{}:rl:{}", self.prefix, requests.0))
            .key(format!("{}:rl:{}", self.prefix, tokens.0))
            .arg(us(requests.1.interval_ns))
            .arg(us(requests.1.tolerance_ns))
            .arg(us(tokens.1.interval_ns))
            .arg(us(tokens.1.tolerance_ns))
            .arg(tokens.2)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| StoreDown(e.to_string()))?;
        Ok(verdict(allowed, retry_us, remaining, reset_us))
    }

    async fn adjust(&self, key: &str, rate: Rate, delta: i64, _local: bool) -> Result<(), StoreDown> {
        let mut conn = self.conn().await?;
        let _: i64 = self
            .adjust
            .key(format!("{}:rl:{key}", self.prefix))
            .arg(us(rate.interval_ns))
            .arg(delta)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| StoreDown(e.to_string()))?;
        Ok(())
    }
}

/// Redis with a fallback: while Redis is unreachable, either in-process limits
/// at a 1/N share of each budget (so N replicas together stay within it) or
/// refusal, per `on_failure`. Recovers by itself when Redis answers again.
///
/// N is the configured `replicas`, or the live replicas this one last saw
/// registered in Redis (`heartbeat`) when that is more. Not the count seen
/// alone: a replica started while Redis is down sees none, and goes by
/// `replicas`; were the others to go by a smaller count seen before the
/// outage, the fleet together would spend more than the budget.
pub struct Shared {
    redis: RedisStore,
    local: LocalStore,
    policy: RedisFailurePolicy,
    replicas: u32,
    /// Live replicas at the last successful heartbeat; 0 before one.
    seen: AtomicU32,
    /// This replica's name among the live ones: the host's name (the pod's,
    /// in Kubernetes) and a random id, unique even where hosts share a name.
    instance: String,
    down: AtomicBool,
    /// While down, Redis is probed at most this often; other calls go straight
    /// to the fallback instead of each waiting on a dead connection.
    last_probe_ms: AtomicU64,
    base: Instant,
}

const PROBE_INTERVAL_MS: u64 = 500;

/// The host's name: `HOSTNAME` (set in containers, to the pod's name in
/// Kubernetes), else the kernel's, else `squad`.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "squad".into())
}

impl Shared {
    pub fn new(redis: RedisStore, policy: RedisFailurePolicy, replicas: u32) -> Self {
        Self {
            redis,
            local: LocalStore::default(),
            policy,
            replicas: replicas.max(1),
            seen: AtomicU32::new(0),
            instance: format!("{}/{}", host_name(), uuid::Uuid::new_v4().simple()),
            down: AtomicBool::new(false),
            last_probe_ms: AtomicU64::new(0),
            base: Instant::now(),
        }
    }

    /// Whether to try Redis now: always when up; when down, one caller per
    /// probe interval.
    fn try_redis(&self) -> bool {
        if !self.down.load(Ordering::Acquire) {
            return true;
        }
        let now = self.base.elapsed().as_millis() as u64 + PROBE_INTERVAL_MS;
        let last = self.last_probe_ms.load(Ordering::Acquire);
        now.saturating_sub(last) >= PROBE_INTERVAL_MS
            && self.last_probe_ms.compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    fn fallback(&self, key: &str, rate: Rate, cost: u64, e: StoreDown) -> Result<Verdict, StoreDown> {
        match self.policy {
            RedisFailurePolicy::LocalShare => {
                // A cost larger than the share's burst could never fit: cap it.
                let share = self.local_rate(rate);
                Ok(self.local.acquire_now(key, share, cost.min(share.burst().max(1))))
            }
            RedisFailurePolicy::FailClosed => Err(e),
        }
    }

    fn local_rate(&self, rate: Rate) -> Rate {
        rate.scaled(1.0 / f64::from(self.fallback_replicas()))
    }

    /// Whether the fallback is a local share (`on_failure: local_share`).
    pub fn shares_locally(&self) -> bool {
        self.policy == RedisFailurePolicy::LocalShare
    }

    /// N of the 1/N share the fallback applies (see `Shared`).
    pub fn fallback_replicas(&self) -> u32 {
        self.replicas.max(self.seen.load(Ordering::Relaxed))
    }

    /// Live replicas at the last successful heartbeat, if there was one.
    pub fn replicas_seen(&self) -> Option<u32> {
        Some(self.seen.load(Ordering::Relaxed)).filter(|&n| n > 0)
    }

    /// Registers this replica as live for three `every`s and notes how many
    /// are. A failure leaves the last count as it was: while Redis is down,
    /// the fleet it last saw is the best guess.
    pub async fn heartbeat(&self, every: Duration) -> Result<u32, StoreDown> {
        let n = self.redis.heartbeat(&self.instance, every * 3).await?;
        let before = self.seen.swap(n, Ordering::Relaxed);
        metrics::limits_replicas_seen(n);
        if n > self.replicas && before != n {
            tracing::warn!(
                seen = n,
                configured = self.replicas,
                "more replicas share the rate-limit Redis than limits.redis.replicas; the share while Redis is down follows the count seen"
            );
        }
        Ok(n)
    }

    /// Heartbeats every `every` until `stop`, then leaves the live replicas
    /// (at once, so the others count one fewer at their next heartbeat).
    pub async fn heartbeats(&self, every: Duration, stop: tokio_util::sync::CancellationToken) {
        loop {
            if let Err(e) = self.heartbeat(every).await {
                tracing::debug!(error = %e, "rate-limit Redis heartbeat failed");
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(every) => {}
            }
        }
        self.leave().await;
    }

    /// Removes this replica from the live ones (best effort: otherwise it
    /// drops out three heartbeats after its last).
    pub async fn leave(&self) {
        if let Err(e) = self.redis.leave(&self.instance).await {
            tracing::debug!(error = %e, "could not leave the rate-limit Redis' live replicas");
        }
    }

    fn note_down(&self, e: &StoreDown) {
        metrics::limits_redis_error();
        if !self.down.swap(true, Ordering::AcqRel) {
            tracing::warn!(error = %e, policy = ?self.policy, "rate-limit Redis unreachable; applying the fallback policy");
        }
    }

    fn note_up(&self) {
        if self.down.swap(false, Ordering::AcqRel) {
            tracing::info!("rate-limit Redis reachable again; shared limits resumed");
        }
    }

    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }
}

#[async_trait::async_trait]
impl RateStore for Shared {
    async fn acquire(&self, key: &str, rate: Rate, cost: u64) -> Result<Verdict, StoreDown> {
        if !self.try_redis() {
            return self.fallback(key, rate, cost, StoreDown("redis down".into()));
        }
        match self.redis.acquire(key, rate, cost).await {
            Ok(v) => {
                self.note_up();
                Ok(v)
            }
            Err(e) => {
                self.note_down(&e);
                self.fallback(key, rate, cost, e)
            }
        }
    }

    async fn acquire_both(&self, requests: (&str, Rate), tokens: (&str, Rate, u64)) -> Result<Verdict, StoreDown> {
        if self.try_redis() {
            match self.redis.acquire_both(requests, tokens).await {
                Ok(v) => {
                    self.note_up();
                    return Ok(v);
                }
                Err(e) => self.note_down(&e),
            }
        }
        // Redis is away: the same two budgets, in process, at this replica's share.
        let v = self.fallback(requests.0, requests.1, 1, StoreDown("redis down".into()))?;
        if !v.allowed {
            return Ok(v);
        }
        let t = self.fallback(tokens.0, tokens.1, tokens.2, StoreDown("redis down".into()))?;
        if !t.allowed {
            self.local.adjust_now(requests.0, self.local_rate(requests.1), -1);
        }
        Ok(t)
    }

    async fn adjust(&self, key: &str, rate: Rate, delta: i64, local: bool) -> Result<(), StoreDown> {
        // Settle where the charge was made: a local charge never touches Redis
        // (the other replicas never saw it), and a Redis charge that cannot be
        // settled while Redis is down is left as it was (conservative).
        if local {
            self.local.adjust_now(key, self.local_rate(rate), delta);
            return Ok(());
        }
        match self.redis.adjust(key, rate, delta, false).await {
            Ok(()) => Ok(()),
            Err(e) => {
                self.note_down(&e);
                Err(e)
            }
        }
    }
}
