//! The fallback runner's rules, with scripted providers (no HTTP) and tokio's
//! paused clock: retries with backoff, Retry-After waits and parking, auth and
//! request errors, exhaustion, deadlines and circuit breakers.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use squad::agents::ChainLink;
use squad::config::ProviderKind;
use squad::domain::{ChatRequest, ChatResponse};
use squad::providers::{CallContext, ChunkStream, Provider, ProviderError};
use squad::resilience::{BreakerConfig, ProviderHealth, RetryPolicy};
use squad::service::fallback::{Failure, Outcome, Runner, Skip};
use squad::service::{ProviderEntry, ProviderState, Registry};
use tokio::time::Instant;

/// Answers from a script; `Ok` is an answer, and a step may first sleep.
struct Scripted {
    id: String,
    script: Mutex<VecDeque<(Duration, Result<(), ProviderError>)>>,
    calls: Mutex<Vec<Instant>>,
}

impl Scripted {
    fn new(id: &str, script: Vec<Result<(), ProviderError>>) -> Arc<Self> {
        Self::timed(id, script.into_iter().map(|r| (Duration::ZERO, r)).collect())
    }

    fn timed(id: &str, script: Vec<(Duration, Result<(), ProviderError>)>) -> Arc<Self> {
        Arc::new(Self { id: id.into(), script: Mutex::new(script.into()), calls: Mutex::default() })
    }

    fn calls(&self) -> usize {
        self.calls.lock().unwrap().len()
    }
}

#[async_trait::async_trait]
impl Provider for Scripted {
    fn id(&self) -> &str {
        &self.id
    }

    async fn chat(&self, req: &ChatRequest, _ctx: &CallContext) -> Result<ChatResponse, ProviderError> {
        self.calls.lock().unwrap().push(Instant::now());
        let (delay, step) = self.script.lock().unwrap().pop_front().unwrap_or((Duration::ZERO, Ok(())));
        tokio::time::sleep(delay).await;
        step.map(|()| ChatResponse {
            id: "r".into(),
            created: 0,
            model: req.model.clone(),
            content: format!("answer from {}", self.id),
            finish_reason: None,
            usage: None,
            usage_extra: Default::default(),
            message_extra: Default::default(),
            choice_extra: Default::default(),
            extra: Default::default(),
        })
    }

    async fn chat_stream(&self, _req: &ChatRequest, _ctx: &CallContext) -> Result<ChunkStream, ProviderError> {
        unreachable!("not used here")
    }
}

struct World {
    registry: Registry,
    providers: BTreeMap<String, Arc<Scripted>>,
}

fn breaker() -> BreakerConfig {
    BreakerConfig {
        consecutive_failures: 3,
        failure_rate: 1.0,
        window: Duration::from_secs(60),
        min_calls: 100,
        cooldown: Duration::from_secs(10),
    }
}

fn world(scripts: Vec<(&str, Vec<Result<(), ProviderError>>)>, extra: Vec<(&str, ProviderState)>) -> World {
    let mut entries = Vec::new();
    let mut providers = BTreeMap::new();
    for (id, script) in scripts {
        let p = Scripted::new(id, script);
        providers.insert(id.to_owned(), p.clone());
        entries.push(entry(id, ProviderState::Ready(p)));
    }
    for (id, state) in extra {
        entries.push(entry(id, state));
    }
    World { registry: Registry::new(entries, BTreeMap::new()), providers }
}

fn entry(id: &str, state: ProviderState) -> ProviderEntry {
    ProviderEntry {
        id: id.into(),
        kind: ProviderKind::OpenaiCompatible,
        default_model: "m".into(),
        models: vec![],
        state,
        health: Arc::new(ProviderHealth::new(breaker())),
    }
}

fn chain(ids: &[&str]) -> Vec<ChainLink> {
    ids.iter().map(|p| ChainLink { provider: (*p).into(), model: format!("{p}-model") }).collect()
}

fn policy() -> RetryPolicy {
    RetryPolicy {
        attempts_per_provider: 2,
        backoff_base: Duration::from_millis(100),
        backoff_max: Duration::from_secs(1),
        retry_after_max_wait: Duration::from_secs(1),
        park_max: Duration::from_secs(300),
        park_default: Duration::from_secs(5),
        attempt_timeout: Duration::from_secs(10),
    }
}

async fn run(w: &World, links: &[ChainLink]) -> Result<squad::service::fallback::Success<ChatResponse>, Failure> {
    let runner = Runner {
        registry: &w.registry,
        policy: policy(),
        deadline: Instant::now() + Duration::from_secs(30),
        limits: None,
        tokens: 0,
        exhausted: None,
    };
    let ctx = CallContext::new("t", Duration::from_secs(30));
    runner
        .run(links, |call| {
            let ctx = ctx.clone();
            async move {
                let req = ChatRequest { model: call.model.clone(), ..ChatRequest::default() };
                call.provider.chat(&req, &ctx).await
            }
        })
        .await
}

fn labels(attempts: &[squad::service::Attempt]) -> Vec<String> {
    attempts.iter().map(|a| format!("{}:{}", a.provider, a.outcome.label())).collect()
}

const E503: ProviderError = ProviderError::Upstream { status: 503 };

#[tokio::test(start_paused = true)]
async fn a_5xx_is_retried_with_backoff_then_the_next_provider_answers() {
    let w = world(vec![("a", vec![Err(E503), Err(E503)]), ("b", vec![Ok(())])], vec![]);
    let links = chain(&["a", "b"]);
    let started = Instant::now();
    let done = run(&w, &links).await.unwrap();
    assert_eq!(done.provider, "b");
    assert_eq!(done.model, "b-model");
    assert!(done.fallback_used(&links));
    assert_eq!(labels(&done.attempts), ["a:upstream_5xx", "a:upstream_5xx", "b:ok"]);
    assert_eq!(w.providers["a"].calls(), 2, "bounded attempts per provider");
    // Full jitter: the pause before the retry is in [0, base].
    assert!(started.elapsed() <= Duration::from_millis(100), "{:?}", started.elapsed());
}

#[tokio::test(start_paused = true)]
async fn a_transient_failure_recovers_on_the_same_provider() {
    let w =
        world(vec![("a", vec![Err(ProviderError::Timeout { phase: "first_byte" }), Ok(())]), ("b", vec![])], vec![]);
    let links = chain(&["a", "b"]);
    let done = run(&w, &links).await.unwrap();
    assert_eq!(done.provider, "a");
    assert!(!done.fallback_used(&links));
    assert_eq!(w.providers["b"].calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_long_retry_after_parks_the_provider_and_moves_on() {
    let limited = ProviderError::RateLimited { status: 429, retry_after: Some(Duration::from_secs(30)) };
    let w = world(vec![("a", vec![Err(limited)]), ("b", vec![Ok(()), Ok(())])], vec![]);
    let links = chain(&["a", "b"]);
    let done = run(&w, &links).await.unwrap();
    assert_eq!(labels(&done.attempts), ["a:rate_limited", "b:ok"]);
    assert_eq!(w.providers["a"].calls(), 1, "a 30 s Retry-After is not waited out");

    // While parked, `a` is skipped without a call.
    let done = run(&w, &links).await.unwrap();
    assert_eq!(done.attempts[0].outcome, Outcome::Skipped(Skip::Parked));
    assert_eq!(w.providers["a"].calls(), 1);

    // After the Retry-After, `a` is called again.
    tokio::time::advance(Duration::from_secs(31)).await;
    let done = run(&w, &links).await.unwrap();
    assert_eq!(done.provider, "a");
    assert_eq!(w.providers["a"].calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_short_retry_after_is_waited_out_on_the_same_provider() {
    let limited = ProviderError::RateLimited { status: 429, retry_after: Some(Duration::from_millis(400)) };
    let w = world(vec![("a", vec![Err(limited), Ok(())]), ("b", vec![])], vec![]);
    let started = Instant::now();
    let done = run(&w, &chain(&["a", "b"])).await.unwrap();
    assert_eq!(done.provider, "a");
    let calls = w.providers["a"].calls.lock().unwrap().clone();
    assert!(calls[1] - calls[0] >= Duration::from_millis(400), "the retry honours Retry-After");
    assert!(started.elapsed() < Duration::from_millis(500));
}

#[tokio::test(start_paused = true)]
async fn auth_errors_move_on_without_retry() {
    let w = world(vec![("a", vec![Err(ProviderError::Auth { status: 401 })]), ("b", vec![Ok(())])], vec![]);
    let done = run(&w, &chain(&["a", "b"])).await.unwrap();
    assert_eq!(w.providers["a"].calls(), 1);
    assert_eq!(labels(&done.attempts), ["a:auth", "b:ok"]);
}

#[tokio::test(start_paused = true)]
async fn request_errors_return_without_fallback() {
    let rejected = ProviderError::Rejected { status: 400, code: Some("context_length_exceeded".into()) };
    let w = world(vec![("a", vec![Err(rejected)]), ("b", vec![Ok(())])], vec![]);
    match run(&w, &chain(&["a", "b"])).await {
        Err(Failure::Rejected { provider, attempts, .. }) => {
            assert_eq!(provider, "a");
            assert_eq!(attempts.len(), 1);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(w.providers["b"].calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn when_everything_fails_every_attempt_is_listed() {
    let w = world(
        vec![("a", vec![Err(E503), Err(E503)]), ("b", vec![Err(ProviderError::Auth { status: 403 })])],
        vec![("c", ProviderState::Disabled), ("d", ProviderState::Unconfigured { key_env: "D_KEY".into() })],
    );
    match run(&w, &chain(&["a", "c", "b", "d", "nosuch"])).await {
        Err(Failure::AllFailed { attempts }) => assert_eq!(
            labels(&attempts),
            ["a:upstream_5xx", "a:upstream_5xx", "c:disabled", "b:auth", "d:unconfigured", "nosuch:unknown_provider"]
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn when_every_provider_is_rate_limited_the_shortest_wait_is_reported() {
    let limited = |s| ProviderError::RateLimited { status: 429, retry_after: Some(Duration::from_secs(s)) };
    let w =
        world(vec![("a", vec![Err(limited(20))]), ("b", vec![Err(limited(8))])], vec![("c", ProviderState::Disabled)]);
    match run(&w, &chain(&["a", "b", "c"])).await {
        Err(Failure::AllRateLimited { retry_after, .. }) => assert_eq!(retry_after, Duration::from_secs(8)),
        other => panic!("{other:?}"),
    }
    // Both now parked: still a 429, with the time left on the shorter parking.
    tokio::time::advance(Duration::from_secs(3)).await;
    match run(&w, &chain(&["a", "b"])).await {
        Err(Failure::AllRateLimited { retry_after, attempts }) => {
            assert_eq!(retry_after, Duration::from_secs(5));
            assert_eq!(labels(&attempts), ["a:rate_limited", "b:rate_limited"]);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn the_request_deadline_bounds_every_attempt() {
    let slow = Scripted::timed("a", vec![(Duration::from_secs(60), Ok(()))]);
    let registry = Registry::new(vec![entry("a", ProviderState::Ready(slow.clone()))], BTreeMap::new());
    let runner = Runner {
        registry: &registry,
        policy: policy(),
        deadline: Instant::now() + Duration::from_secs(2),
        limits: None,
        tokens: 0,
        exhausted: None,
    };
    let ctx = CallContext::new("t", Duration::from_secs(2));
    let started = Instant::now();
    let result = runner
        .run(&chain(&["a"]), |call| {
            let ctx = ctx.clone();
            async move { call.provider.chat(&ChatRequest::default(), &ctx).await }
        })
        .await;
    assert!(started.elapsed() <= Duration::from_secs(2) + Duration::from_millis(5), "{:?}", started.elapsed());
    let attempts = match result {
        Err(Failure::Deadline { attempts }) => attempts,
        other => panic!("{other:?}"),
    };
    assert_eq!(attempts[0].outcome.label(), "timeout");
}

#[tokio::test(start_paused = true)]
async fn the_breaker_opens_after_consecutive_failures_and_closes_after_a_good_probe() {
    // Three failures (threshold 3) over two requests open `a`'s breaker.
    let w = world(vec![("a", vec![Err(E503), Err(E503), Err(E503), Ok(())]), ("b", vec![Ok(()); 4])], vec![]);
    let links = chain(&["a", "b"]);
    run(&w, &links).await.unwrap();
    let done = run(&w, &links).await.unwrap();
    assert_eq!(
        labels(&done.attempts),
        ["a:upstream_5xx", "a:circuit_open", "b:ok"],
        "the breaker opened on the third failure and stopped the retry"
    );
    assert_eq!(w.registry.get("a").unwrap().health.breaker.state().as_str(), "open");

    let done = run(&w, &links).await.unwrap();
    assert_eq!(labels(&done.attempts), ["a:circuit_open", "b:ok"]);
    assert_eq!(w.providers["a"].calls(), 3, "an open breaker sends nothing");

    tokio::time::advance(Duration::from_secs(10)).await;
    let done = run(&w, &links).await.unwrap();
    assert_eq!(done.provider, "a", "the probe after the cooldown succeeds");
    assert_eq!(w.registry.get("a").unwrap().health.breaker.state().as_str(), "closed");
}

#[tokio::test(start_paused = true)]
async fn a_stalling_provider_gets_one_attempt_timeout_per_try_and_the_next_one_answers() {
    let stall = Scripted::timed("a", vec![(Duration::from_secs(600), Ok(())), (Duration::from_secs(600), Ok(()))]);
    let healthy = Scripted::new("b", vec![Ok(())]);
    let registry = Registry::new(
        vec![entry("a", ProviderState::Ready(stall.clone())), entry("b", ProviderState::Ready(healthy))],
        BTreeMap::new(),
    );
    let runner = Runner {
        registry: &registry,
        policy: policy(),
        deadline: Instant::now() + Duration::from_secs(120),
        limits: None,
        tokens: 0,
        exhausted: None,
    };
    let ctx = CallContext::new("t", Duration::from_secs(120));
    let started = Instant::now();
    let done = runner
        .run(&chain(&["a", "b"]), |call| {
            let ctx = ctx.clone();
            async move { call.provider.chat(&ChatRequest::default(), &ctx).await }
        })
        .await
        .unwrap();
    assert_eq!(done.provider, "b");
    assert_eq!(labels(&done.attempts), ["a:timeout", "a:timeout", "b:ok"]);
    assert!(started.elapsed() < Duration::from_secs(22), "two 10 s attempts, not the 120 s deadline");
}

#[tokio::test(start_paused = true)]
async fn rate_limits_and_unknown_models_do_not_open_the_breaker() {
    let limited = || ProviderError::RateLimited { status: 429, retry_after: Some(Duration::from_secs(2)) };
    let w = world(
        vec![
            ("a", (0..6).map(|_| Err(limited())).collect()),
            ("b", vec![Ok(()); 12]),
            ("c", (0..6).map(|_| Err(ProviderError::NotFound { code: None })).collect()),
        ],
        vec![],
    );
    for _ in 0..6 {
        tokio::time::advance(Duration::from_secs(3)).await;
        let done = run(&w, &chain(&["a", "b"])).await.unwrap();
        assert_eq!(done.provider, "b");
        let done = run(&w, &chain(&["c", "b"])).await.unwrap();
        assert_eq!(labels(&done.attempts), ["c:not_found", "b:ok"], "a 404 moves on without retry");
    }
    for id in ["a", "c"] {
        assert_eq!(w.registry.get(id).unwrap().health.breaker.state().as_str(), "closed", "{id}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_probe_does_not_leave_the_breaker_stuck() {
    let slow = Scripted::timed(
        "a",
        vec![
            (Duration::ZERO, Err(E503)),
            (Duration::ZERO, Err(E503)),
            (Duration::ZERO, Err(E503)),
            (Duration::from_secs(60), Ok(())),
            (Duration::ZERO, Ok(())),
        ],
    );
    let registry = Registry::new(vec![entry("a", ProviderState::Ready(slow.clone()))], BTreeMap::new());
    let go = || async {
        let runner = Runner {
            registry: &registry,
            policy: policy(),
            deadline: Instant::now() + Duration::from_secs(90),
            limits: None,
            tokens: 0,
            exhausted: None,
        };
        let ctx = CallContext::new("t", Duration::from_secs(90));
        runner
            .run(&chain(&["a"]), |call| {
                let ctx = ctx.clone();
                async move { call.provider.chat(&ChatRequest::default(), &ctx).await }
            })
            .await
    };
    let _ = go().await;
    let _ = go().await;
    assert_eq!(registry.get("a").unwrap().health.breaker.state().as_str(), "open");
    tokio::time::advance(Duration::from_secs(10)).await;
    // The probe stalls and the client gives up: the request future is dropped.
    assert!(tokio::time::timeout(Duration::from_secs(1), go()).await.is_err());
    let done = go().await.unwrap();
    assert_eq!(done.provider, "a", "a new probe was allowed and succeeded");
    assert_eq!(registry.get("a").unwrap().health.breaker.state().as_str(), "closed");
}

#[tokio::test(start_paused = true)]
async fn time_waiting_out_retry_after_is_reported() {
    let limited = ProviderError::RateLimited { status: 429, retry_after: Some(Duration::from_millis(700)) };
    let w = world(vec![("a", vec![Err(limited), Ok(())])], vec![]);
    let done = run(&w, &chain(&["a"])).await.unwrap();
    assert_eq!(done.rate_limit_wait, Duration::from_millis(700));
}
