//! Test support: a scripted fake upstream on port 0 that counts its hits and
//! records what it received, and a gateway started on port 0 in-process.

#![allow(dead_code, reason = "each test binary uses a different part of the support module")]

pub mod dialects;
pub mod process;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::Value;
use squad::app::{self, Secrets};
use squad::config::{Config, Timeouts};
use squad::server::{self, Drain};

/// What the fake answers to every request.
#[derive(Clone, Debug)]
pub enum Reply {
    Json {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: String,
    },
    /// SSE events (already framed), `delay` apart; `cut` drops the connection
    /// after the events instead of ending cleanly.
    Sse {
        events: Vec<String>,
        delay: Duration,
        cut: bool,
    },
    /// Accept and never answer.
    Stall,
    /// `reply`, after a pause.
    After(Duration, Box<Reply>),
}

impl Reply {
    pub fn json(status: u16, body: impl Into<String>) -> Self {
        Reply::Json { status, headers: Vec::new(), body: body.into() }
    }

    pub fn sse(events: Vec<String>) -> Self {
        Reply::Sse { events, delay: Duration::ZERO, cut: false }
    }
}

#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub query: String,
    pub headers: HeaderMap,
    pub body: Value,
}

#[derive(Clone)]
struct FakeState {
    reply: Arc<Mutex<Reply>>,
    hits: Arc<AtomicUsize>,
    received: Arc<Mutex<Vec<Received>>>,
}

pub struct Fake {
    pub addr: SocketAddr,
    state: FakeState,
}

impl Fake {
    pub async fn start(reply: Reply) -> Fake {
        let state = FakeState { reply: Arc::new(Mutex::new(reply)), hits: Arc::default(), received: Arc::default() };
        let app = axum::Router::new().fallback(fake_handler).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Fake { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    pub fn set_reply(&self, reply: Reply) {
        *self.state.reply.lock().unwrap() = reply;
    }
}

async fn fake_handler(State(state): State<FakeState>, req: Request) -> Response {
    state.hits.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let headers = req.headers().clone();
    let bytes = axum::body::to_bytes(req.into_body(), usize::MAX).await.unwrap_or_default();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    state.received.lock().unwrap().push(Received { path, query, headers, body });
    let mut reply = state.reply.lock().unwrap().clone();
    while let Reply::After(pause, inner) = reply {
        tokio::time::sleep(pause).await;
        reply = *inner;
    }
    match reply {
        Reply::Json { status, headers, body } => {
            let mut resp = (StatusCode::from_u16(status).unwrap(), body).into_response();
            resp.headers_mut().insert("content-type", "application/json".parse().unwrap());
            for (k, v) in headers {
                resp.headers_mut().insert(k, v.parse().unwrap());
            }
            resp
        }
        Reply::Sse { events, delay, cut } => {
            let n = events.len();
            let stream = futures::stream::iter(events.into_iter().enumerate().map(Some).chain([None])).then(
                move |item| async move {
                    match item {
                        Some((i, ev)) => {
                            if i > 0 && !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            Ok(Bytes::from(ev))
                        }
                        None if cut => Err(std::io::Error::other("cut")),
                        None => Ok(Bytes::new()),
                    }
                },
            );
            let _ = n;
            Response::builder().header("content-type", "text/event-stream").body(Body::from_stream(stream)).unwrap()
        }
        Reply::Stall => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        Reply::After(..) => unreachable!("unwrapped above"),
    }
}

/// A config with `groq` (OpenAI-compatible) and `gemini` pointed at `fake`,
/// short timeouts, and the other providers disabled.
pub fn config_for(fake: &Fake) -> Config {
    let mut config = Config::default();
    for (id, p) in config.providers.iter_mut() {
        p.enabled = matches!(id.as_str(), "groq" | "gemini");
        p.timeouts = Timeouts {
            connect: Duration::from_secs(2),
            first_byte: Duration::from_millis(500),
            total: Duration::from_secs(5),
            stream_idle: Duration::from_millis(800),
        };
    }
    config.providers.get_mut("groq").unwrap().base_url = format!("{}/openai/v1", fake.url());
    config.providers.get_mut("gemini").unwrap().base_url = format!("{}/v1beta", fake.url());
    config.server.max_body_bytes = 64 * 1024;
    // Admission control has its own tests (tests/limits.rs); here it would only
    // make unrelated tests depend on how many requests they send.
    config.limits.enabled = false;
    without_persistence(&mut config);
    config
}

/// Keys and auditing have their own tests (tests/persistence.rs); elsewhere
/// they would only add a database to tests about something else.
pub fn without_persistence(config: &mut Config) {
    config.audit.enabled = false;
    config.auth.mode = squad::config::AuthMode::Disabled;
}

pub const GROQ_KEY: &str = "gsk_test_SECRET_groq_0123456789";
pub const GEMINI_KEY: &str = "AIza_test_SECRET_gemini_0123456789";

pub fn secrets() -> Secrets {
    let mut s = Secrets::default();
    s.insert("groq", GROQ_KEY);
    s.insert("gemini", GEMINI_KEY);
    s
}

/// Longest one request through `Gateway::client` may take, body included;
/// well past anything a test waits out on purpose (a few seconds at most), so
/// a hang fails here, naming the request's URL, instead of running on.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest `Gateway::shutdown` may take: the audit flush and the store close.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(60);

/// A gateway serving `config` on 127.0.0.1:0; stopped when dropped.
pub struct Gateway {
    pub url: String,
    pub client: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    background: Option<app::Background>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub async fn gateway(config: Config) -> Gateway {
    gateway_with(config, secrets()).await
}

impl Gateway {
    pub async fn chat(&self, body: Value) -> reqwest::Response {
        self.client.post(format!("{}/v1/chat/completions", self.url)).json(&body).send().await.unwrap()
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(format!("{}{path}", self.url)).send().await.unwrap()
    }
}

/// A parsed SSE response body: each `data:` payload, in order.
pub async fn sse_data(resp: reqwest::Response) -> Vec<String> {
    let text = resp.text().await.unwrap_or_default();
    text.split("\n\n")
        .filter_map(|ev| {
            let data: Vec<&str> =
                ev.lines().filter_map(|l| l.strip_prefix("data: ").or(l.strip_prefix("data:"))).collect();
            (!data.is_empty()).then(|| data.join("\n"))
        })
        .collect()
}

/// The text of a chat-completions stream: every `delta.content`, in order
/// (`data` without its final `[DONE]`; usage chunks have no choice and add nothing).
pub fn sse_text(data: &[String]) -> String {
    data.iter()
        .filter_map(|d| {
            let v: Value = serde_json::from_str(d).ok()?;
            v["choices"].get(0)?["delta"]["content"].as_str().map(str::to_owned)
        })
        .collect()
}

/// Asserts `body` is our error shape and returns the error object.
pub fn assert_error_body(body: &Value, code: &str) -> Value {
    let err = body.get("error").unwrap_or_else(|| panic!("no error object in {body}"));
    for field in ["type", "message", "code", "request_id"] {
        assert!(err.get(field).and_then(Value::as_str).is_some(), "missing {field} in {body}");
    }
    assert_eq!(err["code"], code, "{body}");
    assert!(!err["request_id"].as_str().unwrap().is_empty());
    err.clone()
}

/// A config where each listed provider points at its own fake (OpenAI-style
/// providers at `/v1`, Gemini at `/v1beta`) and every other provider is disabled.
pub fn config_with(fakes: &[(&str, &Fake)]) -> Config {
    let mut config = Config::default();
    for (id, p) in config.providers.iter_mut() {
        p.timeouts = Timeouts {
            connect: Duration::from_secs(2),
            first_byte: Duration::from_millis(800),
            total: Duration::from_secs(5),
            stream_idle: Duration::from_millis(800),
        };
        match fakes.iter().find(|(name, _)| name == id) {
            Some((_, fake)) => {
                p.enabled = true;
                p.base_url = match p.kind {
                    squad::config::ProviderKind::Gemini => format!("{}/v1beta", fake.url()),
                    squad::config::ProviderKind::OpenaiCompatible => format!("{}/v1", fake.url()),
                };
            }
            None => p.enabled = false,
        }
    }
    config.limits.enabled = false;
    without_persistence(&mut config);
    config
}

/// Secrets for every built-in provider.
pub fn all_secrets() -> Secrets {
    let mut s = Secrets::default();
    for id in ["groq", "cerebras", "gemini", "openrouter", "deepseek"] {
        s.insert(id, &format!("test-key-{id}-0123456789"));
    }
    s
}

pub async fn gateway_with(config: Config, secrets: Secrets) -> Gateway {
    let state = app::state(&config, &secrets).unwrap();
    let background = app::start(&state, &config).await;
    let lifecycle = state.lifecycle.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = server::Http::from_config(&config.server).unwrap();
    let url = format!("{}://{}", http.scheme(), listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let drain = Drain { delay: Duration::ZERO, grace: Duration::from_secs(1) };
    tokio::spawn(server::run(listener, app::router(state), lifecycle, drain, http, async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::builder().timeout(CLIENT_TIMEOUT).build().unwrap();
    Gateway { url, client, stop: Some(stop), background: Some(background) }
}

impl Gateway {
    /// Stops serving and flushes the audit log, as `squad serve` does on SIGTERM.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(background) = self.background.take() {
            tokio::time::timeout(SHUTDOWN_TIMEOUT, background.shutdown()).await.unwrap_or_else(|_| {
                panic!("the gateway's shutdown (audit flush, store close) took over {SHUTDOWN_TIMEOUT:?}")
            });
        }
    }

    pub async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.client.post(format!("{}{path}", self.url)).json(&body).send().await.unwrap()
    }
}

/// The hardening headers every plain-HTTP response carries, errors included.
pub fn assert_hardened(headers: &reqwest::header::HeaderMap, what: &str) {
    for (name, want) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
    ] {
        assert_eq!(headers.get(name).and_then(|v| v.to_str().ok()), Some(want), "{what}: {name}");
    }
    let csp = headers.get("content-security-policy").and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert!(csp.contains("default-src 'none'"), "{what}: CSP {csp:?}");
    assert!(!headers.contains_key("strict-transport-security"), "{what}: no HSTS without TLS");
}

/// A fresh PostgreSQL database on the server `DATABASE_URL` names, or `None`
/// (said loudly) when it is unset.
pub async fn pg_database(test: &str) -> Option<String> {
    let Ok(base) = std::env::var("DATABASE_URL") else {
        eprintln!("\n*** SKIPPED the PostgreSQL half of {test}: DATABASE_URL is not set ***\n");
        return None;
    };
    let admin = sqlx::PgPool::connect(&base).await.expect("DATABASE_URL is set but PostgreSQL does not answer");
    let name = format!("squad_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&admin).await.unwrap();
    admin.close().await;
    let (prefix, _) = base.rsplit_once('/').unwrap();
    Some(format!("{prefix}/{name}"))
}

/// Drops a database made by `pg_database` (sessions still open are ended).
pub async fn drop_pg(url: &str) {
    if !url.starts_with("postgres") {
        return;
    }
    let (_, name) = url.rsplit_once('/').unwrap();
    let base = std::env::var("DATABASE_URL").unwrap();
    let admin = sqlx::PgPool::connect(&base).await.unwrap();
    let _ =
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))).execute(&admin).await;
    admin.close().await;
}
