//! The `squad` binary as an operator runs it: config checking, graceful
//! shutdown on SIGTERM with a stream in flight, and what the logs contain.

mod support;

use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::dialects::{Dialect, OpenAi};
use support::{Fake, Reply, sse_data};

const KEY: &str = "gsk_process_test_SECRET_value_987";
const PROMPT: &str = "my private question about tides";

/// `squad` in a fresh working directory (its SQLite file and audit journal
/// land there), with auth off: keys have their own tests.
fn squad() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_squad"));
    let dir = std::env::temp_dir().join(format!("squad-proc-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SQUAD__AUTH__MODE", "disabled")
        .current_dir(dir);
    cmd
}

fn temp_config(text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("squad-test-{}.yaml", uuid::Uuid::new_v4()));
    std::fs::write(&path, text).unwrap();
    path
}

/// Spawns `squad serve` and waits for its "listening" log line.
fn spawn_serve(config: &std::path::Path) -> (Child, String, mpsc::Receiver<String>) {
    spawn_serve_with(config, &[])
}

fn sigterm(child: &Child) {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("squad did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn check_config_reports_every_problem_with_its_path() {
    let path = temp_config(
        "server:\n  port: 8000\n  colour: blue\nproviders:\n  groq:\n    base_url: nope\n  mine:\n    kind: openai_compatible\n",
    );
    let out = squad().args(["check-config", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for path in ["server.colour", "providers.groq.base_url", "providers.mine.base_url", "providers.mine.default_model"]
    {
        assert!(err.contains(path), "{path} missing from:\n{err}");
    }

    let good = temp_config("providers:\n  groq:\n    enabled: true\n");
    let out = squad().args(["check-config", "--config"]).arg(&good).env("GROQ_API_KEY", KEY).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("groq") && text.contains("configured"), "{text}");
    assert!(text.contains("gemini") && text.contains("unconfigured"), "{text}");
    assert!(!text.contains(KEY));
}

#[test]
fn serve_refuses_invalid_config_before_binding() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let path = temp_config(&format!("server:\n  bind: 127.0.0.1\n  port: {port}\n  request_timeout: 0s\n"));
    let out = squad().args(["serve", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.request_timeout"));
    // Nothing was listening, so the port is still free.
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("port left free");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_readiness_refuses_new_work_and_finishes_the_stream() {
    let events = OpenAi::stream(&["one", " two", " three", " four", " five", " six", " seven", " eight"], 5, 8);
    let fake = Fake::start(Reply::Sse { events, delay: Duration::from_millis(300), cut: false }).await;
    let config = temp_config(&format!(
        "server:\n  bind: 127.0.0.1\n  port: 0\n  drain_delay: 1s\n  shutdown_grace: 20s\n\
         providers:\n  groq:\n    base_url: {}/openai/v1\n",
        fake.url()
    ));
    let (mut child, url, logs) = spawn_serve(&config);
    let client = reqwest::Client::new();

    let stream_resp = client
        .post(format!("{url}/v1/chat/completions"))
        .header("x-request-id", "slow-stream-1")
        .json(&json!({"model": OpenAi::MODEL, "stream": true, "messages": [{"role": "user", "content": PROMPT}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(stream_resp.status(), 200);
    let stream_task = tokio::spawn(sse_data(stream_resp));
    tokio::time::sleep(Duration::from_millis(200)).await;

    sigterm(&child);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ready = client.get(format!("{url}/health/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "readiness must fail while draining");
    let health: Value = client.get(format!("{url}/health")).send().await.unwrap().json().await.unwrap();
    assert_eq!(health["status"], "draining");

    tokio::time::sleep(Duration::from_millis(1200)).await;
    let fresh = reqwest::Client::new();
    let refused = fresh
        .post(format!("{url}/v1/chat/completions"))
        .json(&json!({"model": OpenAi::MODEL, "messages": [{"role": "user", "content": "late"}]}))
        .send()
        .await;
    assert!(refused.is_err(), "a new request after the drain delay must be refused: {refused:?}");

    let data = stream_task.await.unwrap();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "the in-flight stream completes: {data:?}");
    let status = tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(15))).await.unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert_eq!(fake.hits(), 1, "the late request never reached the upstream");

    let lines: Vec<String> = logs.try_iter().collect();
    let all = lines.join("\n");
    assert!(!all.contains(KEY), "the provider key must never be logged");
    assert!(!all.contains(PROMPT), "message content is not logged at info level");
    let mine: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v.to_string().contains("slow-stream-1"))
        .collect();
    assert!(mine.iter().any(|v| v["message"] == "stream finished" && v["outcome"] == "ok"), "{all}");
    let access = mine.iter().find(|v| v["message"] == "request").expect("access log line");
    assert_eq!(access["status"], 200);
    assert_eq!(access["provider"], "groq");
    assert_eq!(access["route"], "/v1/chat/completions");
    assert!(access["latency_ms"].is_number());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_log_line_of_a_request_carries_its_id_and_upstream_bodies_stay_out_of_responses() {
    // The upstream (a misbehaving proxy, say) echoes our key and a bearer token.
    let echo = format!("UPSTREAM-DETAIL-xyz key={KEY} Authorization: Bearer {KEY}");
    let fake = Fake::start(Reply::json(400, OpenAi::error(400, &echo))).await;
    let config = temp_config(&format!(
        "log:\n  level: debug\nserver:\n  bind: 127.0.0.1\n  port: 0\nproviders:\n  groq:\n    base_url: {}/openai/v1\n",
        fake.url()
    ));
    let (mut child, url, logs) = spawn_serve(&config);
    let resp = reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .header("x-request-id", "req-upstream-400")
        .json(&json!({"model": OpenAi::MODEL, "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(!resp.text().await.unwrap().contains("UPSTREAM-DETAIL-xyz"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    sigterm(&child);
    let status = tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(15))).await.unwrap();
    assert!(status.success());

    let lines: Vec<Value> = logs.try_iter().map(|l| serde_json::from_str(&l).unwrap()).collect();
    let upstream_line = lines
        .iter()
        .find(|v| v["message"] == "upstream returned an error status")
        .expect("the upstream error body is logged");
    assert!(upstream_line.to_string().contains("UPSTREAM-DETAIL-xyz"));
    assert!(upstream_line.to_string().contains("[REDACTED]"), "{upstream_line}");
    // Lines emitted while handling the request carry its id through the span.
    for v in lines.iter().filter(|v| v["span"].is_object()) {
        assert_eq!(v["span"]["request_id"], "req-upstream-400", "{v}");
    }
    assert!(lines.iter().filter(|v| v["span"]["request_id"] == "req-upstream-400").count() >= 2);
    assert!(!lines.iter().any(|v| v.to_string().contains(KEY)));
}

#[test]
fn the_example_config_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/squad.example.yaml");
    let out = squad().args(["check-config", "--config", example]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// What an alert or a dashboard needs from a fresh start, before any
/// request: the gauges set while the app is built (every breaker closed,
/// each provider's request rate), and the audit and API-key counters at 0 (a
/// series that first appears at 1 has no earlier sample for `increase()` to
/// rise from, so an alert on the first audit failure would miss it). A fresh
/// process: a test process shares one recorder across its tests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_series_are_on_metrics_before_any_request() {
    let config = temp_config("server:\n  bind: 127.0.0.1\n  port: 0\n");
    let (mut child, url, _logs) = spawn_serve_with(&config, &[("SQUAD__AUTH__MODE", "required")]);
    let metrics = reqwest::get(format!("{url}/metrics")).await.unwrap().text().await.unwrap();
    // Stopped before asserting, so that a failure leaves no process behind.
    sigterm(&child);
    assert!(wait_exit(&mut child, Duration::from_secs(30)).success());
    let mut wanted: Vec<String> = ["groq", "cerebras", "gemini", "openrouter", "deepseek"]
        .iter()
        .map(|provider| format!("squad_breaker_state{{provider=\"{provider}\"}} 0"))
        .collect();
    // The defaults give groq 30 requests a minute.
    wanted.push("squad_provider_effective_rpm{provider=\"groq\"} 30".to_owned());
    for stage in squad::telemetry::metrics::AUDIT_RECORD_STAGES {
        wanted.push(format!("squad_audit_records_total{{stage=\"{stage}\"}} 0"));
    }
    for stage in squad::telemetry::metrics::AUDIT_FAILURE_STAGES {
        wanted.push(format!("squad_audit_failures_total{{stage=\"{stage}\"}} 0"));
    }
    for outcome in squad::telemetry::metrics::AUTH_OUTCOMES {
        wanted.push(format!("squad_auth_decisions_total{{outcome=\"{outcome}\"}} 0"));
    }
    let missing: Vec<&String> = wanted.iter().filter(|w| !metrics.lines().any(|l| l == w.as_str())).collect();
    assert!(missing.is_empty(), "missing before any request: {missing:#?}\n{metrics}");
}

/// `squad probe` (a container HEALTHCHECK; the image has no curl): exit 0
/// while the configured server answers 200, 1 when readiness is 503 (the
/// drain after SIGTERM) or nothing answers, 2 when the config gives it no port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_exits_0_while_squad_answers_and_1_when_it_does_not() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = temp_config(&format!("server:\n  bind: 127.0.0.1\n  port: {port}\n  drain_delay: 3s\n"));
    let (mut child, _url, _logs) = spawn_serve(&config);
    let probe = |args: &[&str]| {
        let out = squad().arg("probe").arg("--config").arg(&config).args(args).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let live = probe(&[]);
    let ready = probe(&["--ready"]);
    sigterm(&child);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let draining_ready = probe(&["--ready"]);
    let draining_live = probe(&[]);
    assert!(wait_exit(&mut child, Duration::from_secs(30)).success());
    let stopped = probe(&[]);

    assert_eq!(live, (Some(0), format!("http://127.0.0.1:{port}/health/live: 200\n")));
    assert_eq!(ready, (Some(0), format!("http://127.0.0.1:{port}/health/ready: 200\n")));
    assert_eq!(draining_ready, (Some(1), format!("http://127.0.0.1:{port}/health/ready: 503\n")));
    assert_eq!(draining_live.0, Some(0), "{draining_live:?}");
    assert_eq!(stopped.0, Some(1), "{stopped:?}");
    assert!(stopped.1.starts_with(&format!("http://127.0.0.1:{port}/health/live: ")), "{stopped:?}");

    let unknown_port = temp_config("server:\n  port: 0\n");
    let out = squad().arg("probe").arg("--config").arg(&unknown_port).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--url"), "{out:?}");
}

/// `server.ops_port`: `/metrics` and the health routes on a second port for
/// scrapers and probes; `/metrics` leaves the API port, the health routes
/// stay on both, the API stays off the operations port; readiness turns 503
/// on both through the drain, and the operations port closes with the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operations_port_serves_metrics_and_health_and_the_api_port_no_metrics() {
    let ops_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config =
        temp_config(&format!("server:\n  bind: 127.0.0.1\n  port: 0\n  ops_port: {ops_port}\n  drain_delay: 3s\n"));
    let (mut child, url, _logs) = spawn_serve(&config);
    let ops = format!("http://127.0.0.1:{ops_port}");
    let client = reqwest::Client::new();
    let get = |u: String| {
        let client = client.clone();
        async move {
            let r = client.get(u).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let chat = json!({"model": OpenAi::MODEL, "messages": [{"role": "user", "content": "hi"}]});
    let ops_metrics = get(format!("{ops}/metrics")).await;
    let api_metrics = get(format!("{url}/metrics")).await;
    let ready = (get(format!("{ops}/health/ready")).await.0, get(format!("{url}/health/ready")).await.0);
    let live = (get(format!("{ops}/health/live")).await.0, get(format!("{url}/health/live")).await.0);
    let ops_models = get(format!("{ops}/v1/models")).await;
    let ops_chat = client.post(format!("{ops}/v1/chat/completions")).json(&chat).send().await.unwrap().status();
    sigterm(&child);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let draining = (get(format!("{ops}/health/ready")).await.0, get(format!("{url}/health/ready")).await.0);
    let status = wait_exit(&mut child, Duration::from_secs(30));
    let after = reqwest::Client::new().get(format!("{ops}/health/live")).send().await;

    assert_eq!(ops_metrics.0, 200);
    assert!(ops_metrics.1.lines().any(|l| l.starts_with("squad_build_info{")), "{}", ops_metrics.1);
    assert_eq!(api_metrics.0, 404, "{api_metrics:?}");
    let body: Value = serde_json::from_str(&api_metrics.1).unwrap();
    assert_eq!(body["error"]["code"], "not_found", "{body}");
    assert_eq!(ready, (200, 200));
    assert_eq!(live, (200, 200));
    assert_eq!(ops_models.0, 404, "{ops_models:?}");
    assert_eq!(ops_chat, 404);
    assert_eq!(draining, (503, 503));
    assert!(status.success());
    assert!(after.is_err(), "the operations port must close with the process: {after:?}");
}

#[tokio::test]
async fn a_replica_registers_in_the_rate_limit_redis_and_leaves_it_on_shutdown() {
    let Ok(redis_url) = std::env::var("REDIS_URL") else {
        eprintln!("\n*** SKIPPED: REDIS_URL is not set ***\n");
        return;
    };
    let prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
    let config = temp_config(&format!(
        "server:\n  bind: 127.0.0.1\n  port: 0\nlimits:\n  redis:\n    url: {redis_url}\n    prefix: {prefix}\n    heartbeat: 2s\n"
    ));
    let redis = redis::Client::open(redis_url.as_str()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let key = format!("{prefix}:replicas");
    let (mut child, url, _logs) = spawn_serve(&config);
    // Another replica of the same deployment, registered just now (so
    // counted for three heartbeats, 6 s, however slow the start was).
    let now_ms: i64 = {
        let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
        secs * 1000 + micros / 1000
    };
    let _: i64 = redis::cmd("ZADD").arg(&key).arg(now_ms).arg("other-replica").query_async(&mut conn).await.unwrap();
    let client = reqwest::Client::new();
    let mut health = Value::Null;
    // Squad's next heartbeat (within 2 s) counts it.
    for _ in 0..250 {
        health = client.get(format!("{url}/health")).send().await.unwrap().json().await.unwrap();
        if health["components"]["limits"]["replicas_seen"] == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let members: Vec<String> = redis::cmd("ZRANGE").arg(&key).arg(0).arg(-1).query_async(&mut conn).await.unwrap();
    let metrics = client.get(format!("{url}/metrics")).send().await.unwrap().text().await.unwrap();
    sigterm(&child);
    let status = wait_exit(&mut child, Duration::from_secs(30));
    let after: Vec<String> = redis::cmd("ZRANGE").arg(&key).arg(0).arg(-1).query_async(&mut conn).await.unwrap();
    let _: i64 = redis::cmd("DEL").arg(&key).query_async(&mut conn).await.unwrap();

    let limits = &health["components"]["limits"];
    assert_eq!(limits["backend"], "redis", "{health}");
    assert_eq!(limits["replicas_seen"], 2, "{health}");
    assert_eq!(limits["fallback_replicas"], 3, "the configured 3 (default) is more than the 2 seen: {health}");
    assert_eq!(members.len(), 2, "{members:?}");
    assert!(members.contains(&"other-replica".to_owned()), "{members:?}");
    assert!(metrics.lines().any(|l| l == "squad_limits_replicas_seen 2"), "{metrics}");
    assert!(status.success());
    assert_eq!(after, vec!["other-replica".to_owned()], "the stopped replica left; the other stays");
}

/// A stream is in flight until it ends, and its access line is written
/// then: time to the head (`latency_ms`), to the end (`stream_ms`), and
/// whether the client went away first. `squad_http_stream_duration_seconds`
/// has its whole length; `squad_http_request_duration_seconds` its head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_in_flight_until_it_ends_and_logged_with_its_length() {
    let events = OpenAi::stream(&["one", " two", " three", " four", " five"], 5, 5);
    let fake = Fake::start(Reply::Sse { events, delay: Duration::from_millis(400), cut: false }).await;
    let config = temp_config(&format!(
        "server:\n  bind: 127.0.0.1\n  port: 0\nproviders:\n  groq:\n    base_url: {}/openai/v1\n",
        fake.url()
    ));
    let (mut child, url, logs) = spawn_serve(&config);
    let client = reqwest::Client::new();
    let metrics = || async { client.get(format!("{url}/metrics")).send().await.unwrap().text().await.unwrap() };
    let in_flight = |text: &str| -> f64 {
        let line = text.lines().find(|l| l.starts_with("squad_http_requests_in_flight ")).unwrap_or_default();
        line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(-1.0)
    };
    let chat = |id: &'static str| {
        client
            .post(format!("{url}/v1/chat/completions"))
            .header("x-request-id", id)
            .json(&json!({"model": OpenAi::MODEL, "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
    };
    let whole = chat("whole-stream").await.unwrap();
    assert_eq!(whole.status(), 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The stream, and this `/metrics` request itself.
    let during = in_flight(&metrics().await);
    let data = sse_data(whole).await;
    let left = chat("left-stream").await.unwrap();
    let mut chunks = left.bytes_stream();
    let first = futures::StreamExt::next(&mut chunks).await;
    drop(chunks);
    // Squad finds the client gone at its next write, 400 ms later at most.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let text = metrics().await;
    let after = in_flight(&text);
    sigterm(&child);
    let status = wait_exit(&mut child, Duration::from_secs(30));
    let lines: Vec<Value> = logs.try_iter().filter_map(|l| serde_json::from_str(&l).ok()).collect();
    let access = |id: &str| {
        lines
            .iter()
            .find(|v| v["message"] == "request" && v["request_id"] == id)
            .unwrap_or_else(|| panic!("no access line for {id}: {lines:#?}"))
            .clone()
    };
    let (whole, left) = (access("whole-stream"), access("left-stream"));

    assert!(status.success());
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    assert!(first.is_some_and(|c| c.is_ok()), "the second stream sent a chunk before the client left");
    assert_eq!(during, after + 1.0, "an open stream is in flight: {during} during, {after} after");
    assert_eq!(whole["status"], 200);
    assert_eq!(whole["client_closed"], false, "{whole}");
    let (head_ms, stream_ms) = (whole["latency_ms"].as_f64().unwrap(), whole["stream_ms"].as_f64().unwrap());
    assert!(stream_ms >= 1600.0, "five chunks 400 ms apart: {whole}");
    assert!(head_ms < stream_ms - 500.0, "the head went out before the stream ended: {whole}");
    assert_eq!(left["status"], 200);
    assert_eq!(left["client_closed"], true, "the client left mid-stream: {left}");
    let route = "route=\"/v1/chat/completions\"";
    let count = |name: &str| {
        text.lines()
            .filter(|l| l.starts_with(name) && l.contains(route))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    assert_eq!(count("squad_http_stream_duration_seconds_count"), 2.0, "{text}");
    assert!(count("squad_http_stream_duration_seconds_sum") >= 1.6, "{text}");
    // Buckets up to the stream timeout (600 s), not the request buckets' 120 s.
    assert!(
        text.lines().any(|l| l.starts_with("squad_http_stream_duration_seconds_bucket{") && l.contains("le=\"600\"")),
        "{text}"
    );
    assert!(
        !text.lines().any(|l| l.starts_with("squad_http_request_duration_seconds_bucket{") && l.contains("le=\"600\"")),
        "{text}"
    );
    assert_eq!(count("squad_http_request_duration_seconds_count"), 2.0, "{text}");
}

/// A Redis that speaks only TLS (`rediss://`), as managed services often
/// do: the shared rate limits and the conversations reach it, its
/// certificate checked against the trust store (here `SSL_CERT_FILE`, naming
/// the test's own certificate). Without that trust, the certificate is
/// refused and the limits fall back, degraded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_conversations_reach_a_tls_only_redis_whose_certificate_is_trusted() {
    if Command::new("redis-server").arg("--version").output().is_err() {
        eprintln!("\n*** SKIPPED: redis-server is not installed ***\n");
        return;
    }
    let dir = std::env::temp_dir().join(format!("squad-redis-tls-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.join("redis.pem"), dir.join("redis.key"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let redis = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--tls-auth-clients", "no", "--tls-cert-file"])
        .arg(&cert)
        .arg("--tls-key-file")
        .arg(&key)
        .arg("--tls-ca-cert-file")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut redis = Reaped(redis);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if redis.0.try_wait().unwrap().is_some() {
            eprintln!("\n*** SKIPPED: this redis-server cannot serve TLS ***\n");
            return;
        }
        assert!(Instant::now() < deadline, "redis-server (TLS) did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let redis_url = format!("rediss://localhost:{port}");
    let fake = Fake::start(Reply::json(200, OpenAi::completion("ok", 1, 1))).await;
    let client = reqwest::Client::new();
    let mut outcomes = Vec::new();
    for trusted in [true, false] {
        // The conversations store is built at start-up, so only the trusted
        // run names it (an untrusted one would not start).
        let conversations = if trusted { format!("conversations:\n  redis_url: {redis_url}\n") } else { String::new() };
        let config = temp_config(&format!(
            "server:\n  bind: 127.0.0.1\n  port: 0\n{conversations}limits:\n  redis:\n    url: {redis_url}\n    heartbeat: 2s\n\
             providers:\n  groq:\n    base_url: {}/openai/v1\n",
            fake.url()
        ));
        let cert_file = cert.to_str().unwrap();
        let env: &[(&str, &str)] = if trusted { &[("SSL_CERT_FILE", cert_file)] } else { &[] };
        let (mut child, url, _logs) = spawn_serve_with(&config, env);
        let chat = client
            .post(format!("{url}/v1/chat/completions"))
            .json(&json!({"model": OpenAi::MODEL, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap()
            .status();
        // The first TLS connection and the start-up heartbeat may take a
        // while on a busy machine: until `/health` settles, for 10 s at most.
        let settled = |h: &Value| {
            let limits = &h["components"]["limits"];
            if trusted {
                limits["status"] == "ok" && limits["replicas_seen"] == 1
            } else {
                limits["status"] == "degraded"
            }
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let health = loop {
            let h: Value = client.get(format!("{url}/health")).send().await.unwrap().json().await.unwrap();
            if settled(&h) || Instant::now() > deadline {
                break h;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        sigterm(&child);
        let status = wait_exit(&mut child, Duration::from_secs(30));
        outcomes.push((trusted, chat, health, status));
    }
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);

    for (trusted, chat, health, status) in outcomes {
        let limits = &health["components"]["limits"];
        assert_eq!(chat, 200, "served either way (the fallback admits it): trusted {trusted}");
        assert!(status.success());
        assert_eq!(limits["backend"], "redis", "{health}");
        if trusted {
            assert_eq!(limits["status"], "ok", "decided in Redis over TLS: {health}");
            assert_eq!(limits["replicas_seen"], 1, "the start-up heartbeat went through: {health}");
            assert_eq!(health["components"]["conversations"]["backend"], "redis", "{health}");
        } else {
            assert_eq!(limits["status"], "degraded", "an untrusted certificate is refused: {health}");
            assert!(limits.get("replicas_seen").is_none(), "{health}");
        }
    }
}

/// `squad_database_up` is the database as of the scrape: 1 for a store that
/// answers, 0 for one that does not (PostgreSQL on a closed port), absent
/// without a database. Fresh processes: the gauge is process-wide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_say_whether_the_database_answers() {
    let dir = std::env::temp_dir().join(format!("squad-db-up-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut seen = Vec::new();
    let mut pools = Vec::new();
    let journal = format!("audit: {{ journal_dir: \"{}/journal\" }}\n", dir.display());
    for store in [
        format!("database: {{ url: \"sqlite://{}/squad.db\" }}\n{journal}", dir.display()),
        format!("database: {{ url: \"postgres://postgres@127.0.0.1:1/none\", connect_timeout: 300ms }}\n{journal}"),
        // Neither auditing nor keys: no database at all.
        "audit: { enabled: false }\nauth: { mode: disabled }\n".to_owned(),
    ] {
        let config = temp_config(&format!("server:\n  bind: 127.0.0.1\n  port: 0\n{store}"));
        let (mut child, url, _logs) = spawn_serve(&config);
        let text = reqwest::get(format!("{url}/metrics")).await.unwrap().text().await.unwrap();
        sigterm(&child);
        assert!(wait_exit(&mut child, Duration::from_secs(30)).success());
        seen.push(text.lines().find(|l| l.starts_with("squad_database_up")).map(str::to_owned));
        let value = |prefix: &str| {
            text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        };
        pools.push([
            value("squad_database_connections{state=\"in_use\"}"),
            value("squad_database_connections{state=\"idle\"}"),
            value("squad_database_connections_max"),
        ]);
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        seen,
        [Some("squad_database_up 1".to_owned()), Some("squad_database_up 0".to_owned()), None],
        "SQLite, PostgreSQL that does not answer, no database"
    );
    // The pool as of the scrape: SQLite's (at most 4 by default) holds the
    // connection the ping used; PostgreSQL's (20) has none open; no database, no series.
    let [in_use, idle, max] = pools[0];
    assert_eq!(max, Some(4.0), "{pools:?}");
    assert!(in_use.unwrap() + idle.unwrap() >= 1.0, "{pools:?}");
    // (A connection attempt under way may count as open: only idle is exact.)
    assert!(pools[1][0].is_some(), "{pools:?}");
    assert_eq!(pools[1][1..], [Some(0.0), Some(20.0)], "{pools:?}");
    assert_eq!(pools[2], [None, None, None], "{pools:?}");
}

fn spawn_serve_with(config: &std::path::Path, env: &[(&str, &str)]) -> (Child, String, mpsc::Receiver<String>) {
    let mut cmd = squad();
    cmd.args(["serve", "--config"]).arg(config).env("GROQ_API_KEY", KEY).env("GEMINI_API_KEY", KEY);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
    // Drained even when nobody listens: a closed pipe would make squad's log
    // writes fail.
    let rx = support::process::lines(child.stdout.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
            if v["message"] == "squad listening" {
                let addr = v["address"].as_str().unwrap().to_owned();
                return (child, format!("http://{addr}"), rx);
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("squad serve did not start");
}

/// What a newcomer sees first (`serve --demo`, the README's first command):
/// a round trip that went through the gateway to the simulated upstream, and
/// commands to try, one to a line so that each can be pasted as it is, whose
/// plain GETs answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_banner_shows_a_round_trip_and_one_runnable_command_a_line() {
    let config = temp_config("server:\n  bind: 127.0.0.1\n  port: 0\n");
    let mut cmd = squad();
    cmd.args(["serve", "--demo", "--config"]).arg(&config);
    // The banner goes to stderr, the JSON log to stdout.
    let child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    // Killed however the test ends, so that a failed assertion leaves no server behind.
    let mut child = Reaped(child);
    let rx = support::process::lines(child.0.stderr.take().unwrap());
    let mut banner = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && !banner.iter().any(|l: &String| l.contains("Simulate failures")) {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            banner.push(line);
        }
    }
    let text = banner.join("\n");
    assert!(text.contains("Simulate failures"), "no banner within 20 s:\n{text}");
    assert!(
        text.contains("Round trip just now: ") && text.contains(" answered: Hello from Squad's simulated upstream"),
        "{text}"
    );

    let commands: Vec<&str> = banner.iter().map(|l| l.trim()).filter(|l| l.starts_with("curl ")).collect();
    assert!(commands.len() >= 5, "{text}");
    let mut fetched = 0;
    for command in commands {
        assert_eq!(command.matches("curl ").count(), 1, "one command a line: {command}");
        let words: Vec<&str> = command.split_whitespace().collect();
        if let ["curl", "-s", url] = words[..] {
            let resp = reqwest::get(url).await.unwrap();
            assert_eq!(resp.status(), 200, "{url}");
            fetched += 1;
        }
    }
    assert_eq!(fetched, 3, "/v1/models, /health and /metrics:\n{text}");
    sigterm(&child.0);
    assert!(wait_exit(&mut child.0, Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_sharing_redis_see_the_same_conversation() {
    let Ok(redis_url) = std::env::var("REDIS_URL") else {
        eprintln!("\n*** SKIPPED two_replicas_sharing_redis_see_the_same_conversation: REDIS_URL is not set ***\n");
        return;
    };
    let fake = Fake::start(Reply::json(200, support::dialects::Gemini::completion("noted", 1, 1))).await;
    let config = temp_config(&format!(
        "server:\n  bind: 127.0.0.1\n  port: 0\nproviders:\n  gemini:\n    base_url: {}/v1beta\n",
        fake.url()
    ));
    let prefix = format!("test-{}", uuid::Uuid::new_v4());
    let env = [("REDIS_URL", redis_url.as_str()), ("SQUAD__LIMITS__REDIS__PREFIX", prefix.as_str())];
    let (mut one, url_one, _) = spawn_serve_with(&config, &env);
    let (mut two, url_two, _) = spawn_serve_with(&config, &env);
    let client = reqwest::Client::new();
    let conversation = format!("redis-test-{}", uuid::Uuid::new_v4());
    let ask = |url: &str, prompt: &str| {
        client
            .post(format!("{url}/v1/agents/analyst"))
            .json(&json!({"prompt": prompt, "conversation_id": conversation}))
            .send()
    };
    let first: Value = ask(&url_one, "remember the tide").await.unwrap().json().await.unwrap();
    assert_eq!(first["metadata"]["turns"], 1, "{first}");
    let second: Value = ask(&url_two, "what did I say?").await.unwrap().json().await.unwrap();
    assert_eq!(second["metadata"]["turns"], 2, "replica two continues replica one's conversation: {second}");
    let sent = fake.received().last().unwrap().body.clone();
    assert_eq!(sent["contents"][0]["parts"][0]["text"], "remember the tide");
    assert_eq!(sent["contents"][1]["parts"][0]["text"], "noted");
    for child in [&mut one, &mut two] {
        sigterm(child);
    }
    for child in [&mut one, &mut two] {
        let status = tokio::task::block_in_place(|| wait_exit(child, Duration::from_secs(15)));
        assert!(status.success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_sharing_redis_share_one_provider_budget() {
    let Ok(redis_url) = std::env::var("REDIS_URL") else {
        eprintln!("\n*** SKIPPED three_replicas_sharing_redis_share_one_provider_budget: REDIS_URL is not set ***\n");
        return;
    };
    let fake = Fake::start(Reply::json(200, OpenAi::completion("ok", 1, 1))).await;
    let config = temp_config(&format!(
        "server:\n  bind: 127.0.0.1\n  port: 0\nproviders:\n  groq:\n    base_url: {}/openai/v1\n    limits: {{ rpm: 60, burst: 10 }}\n",
        fake.url()
    ));
    let prefix = format!("test-{}", uuid::Uuid::new_v4());
    let env = [("REDIS_URL", redis_url.as_str()), ("SQUAD__LIMITS__REDIS__PREFIX", prefix.as_str())];
    let mut replicas: Vec<(Child, String)> = (0..3)
        .map(|_| {
            let (child, url, _) = spawn_serve_with(&config, &env);
            (child, url)
        })
        .collect();
    let client = reqwest::Client::new();
    let started = Instant::now();
    let requests = replicas.iter().flat_map(|(_, url)| {
        let client = client.clone();
        (0..40).map(move |_| {
            client
                .post(format!("{url}/v1/chat/completions"))
                .json(&json!({"model": "groq/m", "messages": [{"role": "user", "content": "x"}]}))
                .send()
        })
    });
    let responses = futures::future::join_all(requests).await;
    let elapsed = started.elapsed().as_secs_f64();
    let ok = responses.iter().filter(|r| r.as_ref().is_ok_and(|r| r.status() == 200)).count();
    let limited = responses.iter().filter(|r| r.as_ref().is_ok_and(|r| r.status() == 429)).count();
    // 10 at once, then one a second: what the budget allows in `elapsed`.
    let allowed = 10 + elapsed.ceil() as usize;
    assert!(fake.hits() <= allowed, "{} arrivals > {allowed} allowed in {elapsed:.2}s", fake.hits());
    assert!(fake.hits() >= 10, "the burst is usable");
    assert_eq!(ok + limited, 120, "every request answered 200 or 429");
    for (child, _) in replicas.iter_mut() {
        sigterm(child);
    }
    for (child, _) in replicas.iter_mut() {
        let status = tokio::task::block_in_place(|| wait_exit(child, Duration::from_secs(15)));
        assert!(status.success());
    }
}

/// A child process killed when the test ends, however it ends.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `squad mock-upstream` on a free port: the process and its base URL. Its
/// stderr is read to the end (a closed pipe would fail its later writes).
fn spawn_mock_upstream() -> (Child, String) {
    let mut child =
        squad().args(["mock-upstream", "--port", "0"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let lines = support::process::lines(child.stderr.take().unwrap());
    let first = lines.recv_timeout(Duration::from_secs(20)).unwrap();
    let url = first.trim().strip_prefix("simulated upstream on ").unwrap_or_else(|| panic!("banner: {first}"));
    (child, url.to_owned())
}

/// Runs `squad smoke` with `args`; exit code and stdout (stderr goes along).
fn smoke(args: &[&str]) -> (Option<i32>, String) {
    let out = squad().arg("smoke").args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    // The test's own output does not show keys either.
    let shown: Vec<&str> =
        args.iter().enumerate().map(|(i, a)| if i > 0 && args[i - 1] == "--key" { "<key>" } else { a }).collect();
    eprintln!(
        "squad smoke {shown:?} exited {:?}:\n{stdout}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), stdout)
}

/// The line of check `name`, with its tag: `PASS`, `FAIL`, `WARN` or `SKIP`.
fn smoke_line<'a>(out: &'a str, name: &str) -> (&'a str, &'a str) {
    out.lines()
        .map(str::trim_start)
        .find_map(|l| {
            let (tag, rest) = l.split_once("  ")?;
            let rest = rest.strip_prefix(name)?;
            rest.starts_with(' ').then_some((tag, rest.trim()))
        })
        .unwrap_or_else(|| panic!("no `{name}` line in:\n{out}"))
}

/// `squad smoke` against a healthy deployment (every provider behind the
/// simulated upstream, keys required, SQLite, Redis when REDIS_URL is set):
/// every check passes, all 13 agents and 5 providers answer, and the audit
/// log counts the smoke's own requests; then each kind of breakage is named
/// and exits 1: a bad key, an unknown provider, a database and a
/// conversation Redis that do not answer, /metrics on an operations port
/// not given, an address nobody listens on. The key never shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_passes_against_a_healthy_deployment_and_names_each_breakage() {
    let (upstream, mock) = spawn_mock_upstream();
    let _upstream = Reaped(upstream);
    let providers: String = ["groq", "cerebras", "openrouter", "deepseek"]
        .iter()
        .map(|id| format!("  {id}:\n    enabled: true\n    base_url: {mock}/{id}/v1\n"))
        .chain([format!("  gemini:\n    enabled: true\n    base_url: {mock}/gemini/v1beta\n")])
        .collect();
    let dir = std::env::temp_dir().join(format!("squad-smoke-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = temp_config(&format!(
        "server:\n  bind: 127.0.0.1\n  port: 0\n  drain_delay: 0s\n\
         auth:\n  mode: required\n\
         database:\n  url: sqlite://{}/squad.db\n\
         audit:\n  enabled: true\n  journal_dir: {}/journal\n  flush_interval: 100ms\n\
         providers:\n{providers}",
        dir.display(),
        dir.display()
    ));
    let create = |admin: bool| {
        let mut cmd = squad();
        cmd.args(["keys", "create", "--name", "smoke", "--config"]).arg(&config);
        if admin {
            cmd.arg("--admin");
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let (admin, plain) = (create(true), create(false));
    let redis = std::env::var("REDIS_URL").ok();
    if redis.is_none() {
        eprintln!("\n*** SKIPPED the Redis checks of the smoke test: REDIS_URL is not set ***\n");
    }
    let prefix = format!("squad-smoke-{}", uuid::Uuid::new_v4());
    let mut env = vec![
        ("CEREBRAS_API_KEY", KEY),
        ("OPENROUTER_API_KEY", KEY),
        ("DEEPSEEK_API_KEY", KEY),
        ("SQUAD__AUTH__MODE", "required"),
    ];
    if let Some(redis) = &redis {
        env.extend([("REDIS_URL", redis.as_str()), ("SQUAD__LIMITS__REDIS__PREFIX", prefix.as_str())]);
    }
    let (child, url, _logs) = spawn_serve_with(&config, &env);
    let mut child = Reaped(child);

    let (code, out) = tokio::task::spawn_blocking({
        let (url, admin) = (url.clone(), admin.clone());
        move || smoke(&["--url", &url, "--key", &admin])
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{out}");
    for check in ["liveness", "readiness", "health", "database", "auth", "providers", "agents", "metrics"] {
        assert_eq!(smoke_line(&out, check).0, "PASS", "{check}:\n{out}");
    }
    assert_eq!(smoke_line(&out, "security headers"), ("PASS", "nosniff, frame DENY, no-referrer, CSP"));
    assert!(smoke_line(&out, "database").1.starts_with("sqlite up"), "{out}");
    assert!(smoke_line(&out, "providers").1.starts_with("5 of 5 configured"), "{out}");
    assert_eq!(smoke_line(&out, "agents").1, "13 listed");
    let agent_lines = out.lines().filter(|l| l.trim_start().starts_with("PASS  agent ")).count();
    assert_eq!(agent_lines, 13, "{out}");
    for id in ["groq", "cerebras", "gemini", "openrouter", "deepseek"] {
        assert_eq!(smoke_line(&out, &format!("provider {id}")).0, "PASS", "{out}");
    }
    let audit = smoke_line(&out, "audit log");
    assert_eq!(audit.0, "PASS", "{out}");
    assert!(audit.1.starts_with("18 of this key's requests recorded"), "{out}");
    let stores = if redis.is_some() { "PASS" } else { "SKIP" };
    assert_eq!(smoke_line(&out, "rate-limit store").0, stores, "{out}");
    assert_eq!(smoke_line(&out, "conversation store").0, stores, "{out}");
    assert!(out.ends_with("0 failed, 0 warnings, 0 skipped\n") || redis.is_none(), "{out}");

    // A key that may not read /v1/usage: the audit check is skipped, not failed.
    let (code, out) = tokio::task::spawn_blocking({
        let (url, plain) = (url.clone(), plain.clone());
        move || smoke(&["--url", &url, "--key", &plain, "--agents", "analyst", "--providers", "none"])
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(smoke_line(&out, "agent analyst").0, "PASS");
    assert!(!out.contains("provider groq"), "{out}");
    assert_eq!(smoke_line(&out, "audit log"), ("SKIP", "GET /v1/usage needs an admin key"));

    // An unknown agent and a provider not configured fail by name.
    let (code, out) = tokio::task::spawn_blocking({
        let (url, plain) = (url.clone(), plain.clone());
        move || smoke(&["--url", &url, "--key", &plain, "--agents", "nobody", "--providers", "groq,nosuch"])
    })
    .await
    .unwrap();
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(smoke_line(&out, "agent nobody"), ("FAIL", "not in GET /v1/agents"));
    assert_eq!(smoke_line(&out, "provider nosuch"), ("FAIL", "not configured on this server"));
    assert_eq!(smoke_line(&out, "provider groq").0, "PASS", "{out}");

    // A wrong key: the keyed routes fail with the server's reason; no key shows.
    let last = if admin.ends_with('0') { "1" } else { "0" };
    let wrong = format!("{}{last}", &admin[..admin.len() - 1]);
    let (code, out) = tokio::task::spawn_blocking({
        let (url, wrong) = (url.clone(), wrong.clone());
        move || smoke(&["--url", &url, "--key", &wrong])
    })
    .await
    .unwrap();
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(smoke_line(&out, "liveness").0, "PASS");
    for check in ["providers", "agents"] {
        let (tag, detail) = smoke_line(&out, check);
        assert_eq!(tag, "FAIL", "{out}");
        assert!(
            detail.starts_with(&format!("GET /{} 401: ", if check == "agents" { "v1/agents" } else { check })),
            "{out}"
        );
    }
    assert_eq!(smoke_line(&out, "audit log"), ("SKIP", "no prompt was answered"));
    assert!(!out.contains(&wrong) && !out.contains(&admin) && !out.contains(&plain), "a key leaked:\n{out}");

    sigterm(&child.0);
    assert!(wait_exit(&mut child.0, Duration::from_secs(30)).success());

    // Broken dependencies: a PostgreSQL and a conversation Redis on a port
    // nobody listens on, auth off, /metrics on an operations port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let ops_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let broken = temp_config(&format!(
        "server:\n  bind: 127.0.0.1\n  port: 0\n  ops_port: {ops_port}\n  drain_delay: 0s\n\
         auth:\n  mode: disabled\n\
         database:\n  url: postgres://postgres@127.0.0.1:{closed}/test\n  connect_timeout: 1s\n\
         audit:\n  enabled: true\n  journal_dir: {}/journal2\n\
         conversations:\n  redis_url: redis://127.0.0.1:{closed}\n\
         providers:\n{providers}",
        dir.display()
    ));
    let (child, url, _logs) = spawn_serve_with(&broken, &env[..3]);
    let mut child = Reaped(child);
    let (code, out) = tokio::task::spawn_blocking({
        let url = url.clone();
        move || smoke(&["--url", &url, "--agents", "none", "--providers", "deepseek", "--audit-wait", "1s"])
    })
    .await
    .unwrap();
    assert_eq!(code, Some(1), "{out}");
    let database = smoke_line(&out, "database");
    assert_eq!(database.0, "FAIL", "{out}");
    assert!(database.1.starts_with("postgres down: "), "{out}");
    let conversations = smoke_line(&out, "conversation store");
    assert_eq!(conversations.0, "FAIL", "{out}");
    assert!(conversations.1.starts_with("redis down: "), "{out}");
    assert_eq!(smoke_line(&out, "auth").0, "WARN");
    assert_eq!(smoke_line(&out, "provider deepseek").0, "PASS", "chat goes on without them:\n{out}");
    let metrics = smoke_line(&out, "metrics");
    assert_eq!(metrics, ("FAIL", "GET /metrics 404: with server.ops_port it is served there; pass --ops-url"));
    // The audit rows cannot be counted without the database.
    assert_eq!(smoke_line(&out, "audit log").0, "SKIP", "{out}");
    let ops = format!("http://127.0.0.1:{ops_port}");
    let (_, out) = tokio::task::spawn_blocking({
        let url = url.clone();
        move || smoke(&["--url", &url, "--ops-url", &ops, "--agents", "none", "--providers", "none"])
    })
    .await
    .unwrap();
    assert_eq!(smoke_line(&out, "metrics").0, "PASS", "{out}");
    sigterm(&child.0);
    assert!(wait_exit(&mut child.0, Duration::from_secs(30)).success());

    // Nobody listening: one failure, then a stop, within the connect timeout.
    let started = Instant::now();
    let (code, out) = tokio::task::spawn_blocking(move || {
        smoke(&["--url", &format!("http://127.0.0.1:{closed}"), "--timeout", "3s"])
    })
    .await
    .unwrap();
    assert_eq!(code, Some(1), "{out}");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    assert_eq!(smoke_line(&out, "liveness").0, "FAIL");
    assert!(out.contains("(stopped: the address does not answer)"), "{out}");
    assert!(out.ends_with("smoke: 0 passed, 1 failed, 0 warnings, 0 skipped\n"), "{out}");

    let (code, _) = smoke(&["--url", "ftp://127.0.0.1"]);
    assert_eq!(code, Some(2));
}

/// The checks fail when the server gets them wrong: a fake Squad (not the
/// real one, which gets them right) without security headers, whose
/// provider answer comes from another provider, and whose audit log never
/// counts the smoke's requests; a /health body whose field was renamed
/// fails the health line rather than reading as a default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_checks_fail_when_the_server_gets_them_wrong() {
    use axum::routing::{get, post};
    let health = |renamed: bool| {
        let auth = if renamed { json!({"mod": "required"}) } else { json!({"mode": "required", "keys_loaded": true}) };
        json!({"status": "ok", "version": "9.9.9", "components": {
            "limits": {"backend": "memory", "status": "ok"},
            "conversations": {"backend": "memory"},
            "database": {"status": "up", "dialect": "sqlite", "migrated": true, "latency_ms": 0.1,
                         "audit": {"database_reachable": true, "journal_backlog_segments": 0}},
            "auth": auth}})
    };
    let fake = |renamed: bool| {
        let health = health(renamed);
        axum::Router::new()
            .route("/health/live", get(|| async { axum::Json(json!({"status": "alive"})) }))
            .route("/health/ready", get(|| async { axum::Json(json!({"status": "ready"})) }))
            .route("/health", get(move || async move { axum::Json(health) }))
            .route(
                "/providers",
                get(|| async {
                    axum::Json(json!({"count": 1, "providers": [{"name": "groq", "enabled": true, "configured": true,
                        "default_model": "m", "status": "healthy"}]}))
                }),
            )
            .route("/v1/agents", get(|| async { axum::Json(json!({"count": 1, "agents": [{"id": "a"}]})) }))
            .route(
                "/v1/agents/a",
                post(|| async {
                    axum::Json(json!({"response": "ok", "provider": "groq", "model": "m", "agent_name": "A",
                        "metadata": {"fallback_used": false}}))
                }),
            )
            .route(
                "/v1/chat/completions",
                post(|| async {
                    (
                        [("x-squad-provider", "cerebras")],
                        axum::Json(json!({"choices": [{"message": {"content": "ok"}}]})),
                    )
                }),
            )
            .route("/metrics", get(|| async { "squad_http_requests_total{route=\"/\"} 1\n" }))
            .route("/v1/usage", get(|| async { axum::Json(json!({"data": [], "total": {"requests": 0}})) }))
    };
    let serve = async |app: axum::Router| {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    };
    let key = "sqd_0123456789ab_00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    let url = serve(fake(false)).await;
    let (code, out) =
        tokio::task::spawn_blocking(move || smoke(&["--url", &url, "--key", key, "--audit-wait", "1s"])).await.unwrap();
    assert_eq!(code, Some(1), "{out}");
    let headers = smoke_line(&out, "security headers");
    assert_eq!(headers.0, "FAIL");
    assert!(headers.1.starts_with("missing: x-content-type-options: nosniff"), "{out}");
    assert_eq!(smoke_line(&out, "provider groq"), ("FAIL", "answered by cerebras, not groq"));
    assert_eq!(smoke_line(&out, "agent a").0, "PASS", "{out}");
    assert_eq!(
        smoke_line(&out, "audit log"),
        ("FAIL", "0 of this key's requests recorded after 1 s; 2 prompts were answered")
    );
    assert!(out.ends_with("smoke: 9 passed, 3 failed, 0 warnings, 2 skipped\n"), "{out}");

    let url = serve(fake(true)).await;
    let (code, out) =
        tokio::task::spawn_blocking(move || smoke(&["--url", &url, "--agents", "none", "--providers", "none"]))
            .await
            .unwrap();
    assert_eq!(code, Some(1), "{out}");
    let health = smoke_line(&out, "health");
    assert_eq!(health.0, "FAIL");
    assert!(health.1.starts_with("GET /health 200 with an unexpected body: "), "{out}");
}
