//! Admission control end to end: provider budgets against concurrency (the
//! fake upstream counts arrivals), token budgets, overflow to the next
//! provider, the concurrency gate, per-client limits and headers, and the
//! Redis backend (shared by replicas, and its failure policy).

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use squad::config::{Config, RateLimit};
use support::dialects::{Dialect, Gemini, OpenAi};
use support::{Fake, Reply, all_secrets, assert_error_body, config_with, gateway_with};

fn limited(fake: &Fake, rpm: u64, burst: u64) -> Config {
    let mut config = config_with(&[("groq", fake)]);
    config.limits.enabled = true;
    let groq = config.providers.get_mut("groq").unwrap();
    groq.limits.rpm = Some(rpm);
    groq.limits.burst = Some(burst);
    config
}

fn hello(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 50})
}

#[tokio::test]
async fn two_hundred_concurrent_requests_never_exceed_the_provider_budget() {
    let fake = Fake::start(Reply::After(
        Duration::from_millis(50),
        Box::new(Reply::json(200, OpenAi::completion("ok", 5, 5))),
    ))
    .await;
    let gw = gateway_with(limited(&fake, 30, 30), all_secrets()).await;
    let requests = (0..200).map(|_| gw.chat(hello("groq/openai/gpt-oss-120b")));
    let responses = futures::future::join_all(requests).await;
    let ok = responses.iter().filter(|r| r.status() == 200).count();
    assert_eq!(fake.hits(), 30, "at most the burst reaches the provider");
    assert_eq!(ok, 30);
    for resp in responses.into_iter().filter(|r| r.status() != 200) {
        assert_eq!(resp.status(), 429);
        let secs: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert_eq!(secs, 2, "30 rpm: the next slot is 2 s away");
        let err = assert_error_body(&resp.json().await.unwrap(), "providers");
        assert_eq!(err["attempts"][0]["outcome"], "rate_limited");
    }
}

#[tokio::test]
async fn token_budgets_hold_under_concurrency_and_settle_to_real_usage() {
    let fake = Fake::start(Reply::After(
        Duration::from_millis(100),
        Box::new(Reply::json(200, OpenAi::completion("ok", 5, 5))),
    ))
    .await;
    let mut config = limited(&fake, 1000, 1000);
    config.providers.get_mut("groq").unwrap().limits.tpm = Some(10_000);
    let gw = gateway_with(config, all_secrets()).await;
    let big = json!({"model": "groq/m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 3000});
    let responses = futures::future::join_all((0..20).map(|_| gw.chat(big.clone()))).await;
    assert_eq!(responses.iter().filter(|r| r.status() == 200).count(), 3, "3 × 3001 ≤ 10 000 < 4 × 3001");
    assert_eq!(fake.hits(), 3);
    // Each call really used 10 tokens: the rest of the reservations came back.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let responses = futures::future::join_all((0..3).map(|_| gw.chat(big.clone()))).await;
    assert!(responses.iter().all(|r| r.status() == 200), "settled reservations free the budget");
}

#[tokio::test]
async fn a_limited_primary_overflows_to_the_next_provider() {
    let a = Fake::start(Reply::json(200, Gemini::completion("from gemini", 1, 1))).await;
    let b = Fake::start(Reply::json(200, OpenAi::completion("from groq", 1, 1))).await;
    let mut config = config_with(&[("gemini", &a), ("groq", &b)]);
    config.limits.enabled = true;
    let gemini = config.providers.get_mut("gemini").unwrap();
    gemini.limits.rpm = Some(15);
    gemini.limits.burst = Some(5);
    let gw = gateway_with(config, all_secrets()).await;
    let mut providers = Vec::new();
    for i in 0..20 {
        let resp = gw.post("/v1/agents/analyst", json!({"prompt": format!("q{i}")})).await;
        assert_eq!(resp.status(), 200, "no 429 while groq has capacity");
        let body: Value = resp.json().await.unwrap();
        if body["provider"] == "groq" {
            assert_eq!(body["metadata"]["provider_chain"][0]["outcome"], "rate_limited");
            assert_eq!(body["metadata"]["fallback_used"], true);
        }
        providers.push(body["provider"].as_str().unwrap().to_owned());
    }
    assert_eq!(providers.iter().filter(|p| *p == "gemini").count(), 5);
    assert_eq!(a.hits(), 5);
    assert_eq!(b.hits(), 15);
}

#[tokio::test]
async fn the_concurrency_gate_queues_then_refuses() {
    let fake = Fake::start(Reply::After(
        Duration::from_millis(400),
        Box::new(Reply::json(200, OpenAi::completion("ok", 1, 1))),
    ))
    .await;
    let mut config = limited(&fake, 10_000, 10_000);
    config.limits.concurrency.max_in_flight = 2;
    config.limits.concurrency.max_queue = 1;
    config.limits.concurrency.max_wait = Duration::from_secs(2);
    let gw = gateway_with(config, all_secrets()).await;
    let responses = futures::future::join_all((0..4).map(|_| gw.chat(hello("groq/m")))).await;
    let statuses: Vec<u16> = responses.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 3, "{statuses:?}: two in flight, one queued");
    let refused = responses.into_iter().find(|r| r.status() == 429).unwrap();
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_error_body(&refused.json().await.unwrap(), "concurrency");
    let metrics = gw.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("squad_admission_decisions_total{scope=\"concurrency\",outcome=\"queued\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("squad_admission_decisions_total{scope=\"concurrency\",outcome=\"queue_full\"} 1"));
}

#[tokio::test]
async fn client_limits_send_headers_refuse_at_the_limit_and_keep_clients_apart() {
    let fake = Fake::start(Reply::json(200, OpenAi::completion("ok", 1, 1))).await;
    let mut config = limited(&fake, 10_000, 10_000);
    config.limits.clients = squad::config::ClientLimits { rpm: Some(60), burst: Some(3), tpm: None, concurrent: None };
    let gw = gateway_with(config, all_secrets()).await;
    for expected in [2, 1, 0] {
        let resp = gw.chat(hello("groq/m")).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-ratelimit-limit"], "3");
        assert_eq!(resp.headers()["x-ratelimit-remaining"], expected.to_string().as_str());
        assert!(resp.headers()["x-ratelimit-reset"].to_str().unwrap().parse::<u64>().unwrap() <= 3);
    }
    let resp = gw.chat(hello("groq/m")).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_eq!(resp.headers()["x-ratelimit-remaining"], "0");
    assert_error_body(&resp.json().await.unwrap(), "client");
    assert_eq!(fake.hits(), 3, "the refused request never reached the provider");

    // Another client (another source address) has its own bucket.
    let other =
        reqwest::Client::builder().local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap()).build().unwrap();
    let resp = other.post(format!("{}/v1/chat/completions", gw.url)).json(&hello("groq/m")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-ratelimit-remaining"], "2");
}

fn redis_url() -> Option<String> {
    // Tests that need the shared Redis (not a private one) read REDIS_URL.
    let url = std::env::var("REDIS_URL").ok();
    if url.is_none() {
        eprintln!("\n*** SKIPPED: REDIS_URL is not set ***\n");
    }
    url
}

/// A private redis-server on a free port, for tests that stop and restart it.
struct PrivateRedis {
    port: u16,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    /// A server on a free port; `None`, said loudly, where `redis-server`
    /// is not installed.
    fn on_a_free_port() -> Option<Self> {
        if std::process::Command::new("redis-server").arg("--version").output().is_err() {
            eprintln!("\n*** SKIPPED: redis-server is not installed ***\n");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        Some(Self::start(port).expect("redis-server could not be started"))
    }

    fn start(port: u16) -> Option<Self> {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .ok()?;
        for _ in 0..50 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(Self { port, child: Some(child) });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test]
async fn redis_failure_falls_back_to_a_local_share_and_recovers() {
    let Some(mut redis) = PrivateRedis::on_a_free_port() else { return };
    let port = redis.port;
    let mut config = Config::default();
    config.limits.redis.url = Some(format!("redis://127.0.0.1:{port}"));
    config.limits.redis.replicas = 2;
    let groq = config.providers.get_mut("groq").unwrap();
    groq.limits.rpm = Some(60);
    groq.limits.burst = Some(10);
    let limits = squad::limits::Limits::from_config(&config).unwrap();
    let mut allowed = 0;
    for _ in 0..15 {
        allowed += usize::from(limits.admit_provider("groq", "m", 1).await.is_ok());
    }
    assert_eq!(allowed, 10, "shared budget through Redis");
    assert!(!limits.degraded());

    redis.stop();
    let mut allowed = 0;
    for _ in 0..15 {
        allowed += usize::from(limits.admit_provider("groq", "m", 1).await.is_ok());
    }
    assert!(limits.degraded(), "the failure is noticed");
    assert_eq!(allowed, 5, "a 1/2 share of the burst while Redis is down");

    let _redis = PrivateRedis::start(port).expect("restart redis");
    // Past the probe interval (500 ms), the next call tries Redis again.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut allowed = 0;
    for _ in 0..15 {
        allowed += usize::from(limits.admit_provider("groq", "m", 1).await.is_ok());
    }
    assert!(!limits.degraded(), "shared limiting resumed on its own");
    assert_eq!(allowed, 10, "the restarted Redis is empty: a fresh shared burst");
}

#[tokio::test]
async fn replicas_count_each_other_through_redis_and_the_fallback_share_follows() {
    let Some(mut redis) = PrivateRedis::on_a_free_port() else { return };
    let port = redis.port;
    let mut config = Config::default();
    config.limits.redis.url = Some(format!("redis://127.0.0.1:{port}"));
    // Configured for one replica: only discovery can make the share smaller.
    config.limits.redis.replicas = 1;
    // Long enough that a slow machine's scheduling does not move a
    // heartbeat across the three-heartbeat expiry (checked 1 s either side).
    let every = Duration::from_secs(1);
    config.limits.redis.heartbeat = every;
    let groq = config.providers.get_mut("groq").unwrap();
    groq.limits.rpm = Some(60);
    groq.limits.burst = Some(10);
    // Three replicas of one deployment, in one process.
    let replica = || squad::limits::Limits::from_config(&config).unwrap();
    let (a, b, c) = (replica(), replica(), replica());
    let member = |l: &squad::limits::Limits| l.membership().expect("discovery is on by default").0;
    assert_eq!(a.fallback_share(), Some((1, None)), "nothing seen yet: the configured count");

    assert_eq!(member(&a).heartbeat(every).await.unwrap(), 1);
    assert_eq!(member(&b).heartbeat(every).await.unwrap(), 2);
    assert_eq!(member(&c).heartbeat(every).await.unwrap(), 3);
    assert_eq!(member(&a).heartbeat(every).await.unwrap(), 3, "a heartbeat again does not count twice");
    assert_eq!(a.fallback_share(), Some((3, Some(3))));

    // One leaves on shutdown: the others count it out at once.
    member(&c).leave().await;
    assert_eq!(member(&a).heartbeat(every).await.unwrap(), 2);
    // One goes silent (killed): counted out three heartbeats after its last.
    tokio::time::sleep(every * 2).await;
    assert_eq!(member(&a).heartbeat(every).await.unwrap(), 2, "b is within its three heartbeats");
    tokio::time::sleep(every * 2).await;
    assert_eq!(member(&a).heartbeat(every).await.unwrap(), 1, "b was silent for more than three heartbeats");
    assert_eq!(member(&b).heartbeat(every).await.unwrap(), 2, "b is back");
    assert_eq!(a.fallback_share(), Some((1, Some(1))), "a's count is its last heartbeat's");
    assert_eq!(member(&a).heartbeat(every).await.unwrap(), 2);

    redis.stop();
    assert!(member(&a).heartbeat(every).await.is_err());
    assert_eq!(a.fallback_share(), Some((2, Some(2))), "a failed heartbeat keeps the last count");
    let mut allowed = 0;
    for _ in 0..15 {
        allowed += usize::from(a.admit_provider("groq", "m", 1).await.is_ok());
    }
    assert!(a.degraded());
    assert_eq!(allowed, 5, "a 1/2 share of the burst (two replicas seen), not the configured 1/1");

    // Off: the configured count, whatever Redis holds.
    config.limits.redis.discover_replicas = false;
    assert!(squad::limits::Limits::from_config(&config).unwrap().membership().is_none());
    // Nor under `fail_closed`, which has no share to set.
    config.limits.redis.discover_replicas = true;
    config.limits.redis.on_failure = squad::config::RedisFailurePolicy::FailClosed;
    let closed = squad::limits::Limits::from_config(&config).unwrap();
    assert!(closed.membership().is_none());
    assert_eq!(closed.fallback_share(), None);
}

#[tokio::test]
async fn fail_closed_refuses_while_redis_is_down() {
    let mut config = Config::default();
    config.limits.redis.url = Some("redis://127.0.0.1:1".into());
    config.limits.redis.on_failure = squad::config::RedisFailurePolicy::FailClosed;
    let groq = config.providers.get_mut("groq").unwrap();
    groq.limits.models.insert("m".into(), RateLimit { rpm: Some(600), burst: Some(10), tpm: None });
    let limits = squad::limits::Limits::from_config(&config).unwrap();
    assert!(limits.admit_provider("groq", "m", 1).await.is_err());
    assert!(limits.degraded());
}

#[tokio::test]
async fn a_provider_reporting_its_budget_spent_is_parked_until_its_reset() {
    let spent = Reply::Json {
        status: 200,
        headers: vec![
            ("x-ratelimit-remaining-requests", "0".into()),
            ("x-ratelimit-reset-requests", "2m59.56s".into()),
            ("x-ratelimit-remaining-tokens", "7900".into()),
            ("x-ratelimit-reset-tokens", "7.66s".into()),
        ],
        body: OpenAi::completion("last one", 1, 1),
    };
    let a = Fake::start(spent).await;
    let b = Fake::start(Reply::json(200, OpenAi::completion("from cerebras", 1, 1))).await;
    // `sm` tries groq, then cerebras.
    let gw = gateway_with(config_with(&[("groq", &a), ("cerebras", &b)]), all_secrets()).await;
    let first: Value = gw.post("/v1/agents/sm", json!({"prompt": "one"})).await.json().await.unwrap();
    assert_eq!(first["provider"], "groq");
    let second: Value = gw.post("/v1/agents/sm", json!({"prompt": "two"})).await.json().await.unwrap();
    assert_eq!(second["provider"], "cerebras");
    assert_eq!(second["metadata"]["provider_chain"][0]["outcome"], "rate_limited");
    assert_eq!(a.hits(), 1, "groq is not called again before its reset");
    let status: Value = gw.get("/providers/groq").await.json().await.unwrap();
    assert!(status["parked_for_ms"].as_u64().unwrap() > 170_000, "{status}");
}

#[tokio::test]
async fn upstream_429s_lower_the_effective_rate() {
    let a = Fake::start(Reply::Json {
        status: 429,
        headers: vec![("retry-after", "1".into())],
        body: OpenAi::error(429, "slow down"),
    })
    .await;
    let mut config = limited(&a, 60, 60);
    config.resilience.retry.attempts_per_provider = 1;
    let gw = gateway_with(config, all_secrets()).await;
    let before: Value = gw.get("/providers/groq").await.json().await.unwrap();
    assert_eq!(before["limits"]["effective_rpm"], 60.0);
    assert_eq!(gw.chat(hello("groq/m")).await.status(), 429);
    let after: Value = gw.get("/providers/groq").await.json().await.unwrap();
    assert_eq!(after["limits"]["effective_rpm"], 30.0, "halved by the 429");
    // (The gauge `squad_provider_effective_rpm` is process-global; other
    // gateways in this test binary set it too, so it is not asserted here.)
}

#[tokio::test]
async fn token_reservations_settle_through_redis() {
    let Some(url) = redis_url() else { return };
    let mut config = Config::default();
    config.limits.redis.url = Some(url);
    config.limits.redis.prefix = format!("test-{}", uuid::Uuid::new_v4());
    let groq = config.providers.get_mut("groq").unwrap();
    groq.limits.rpm = Some(1000);
    groq.limits.tpm = Some(10_000);
    let limits = squad::limits::Limits::from_config(&config).unwrap();
    let first = limits.admit_provider("groq", "m", 6000).await.unwrap().unwrap();
    assert!(limits.admit_provider("groq", "m", 6000).await.is_err(), "6000 + 6000 > 10 000, shared in Redis");
    first.settle(500).await;
    assert!(limits.admit_provider("groq", "m", 6000).await.is_ok(), "the unused 5500 came back through Redis");
    assert!(!limits.degraded());
}
