//! The simulated upstream: speaks the OpenAI-compatible and Gemini wire formats,
//! plain and streamed, with configurable latency, pacing and faults. It backs
//! `squad mock-upstream` and `squad serve --demo`, and is a load target for the
//! overhead benchmark.
//!
//! Faults are chosen per request by the `x-mock-fault` header or by a model name
//! containing `fault-<spec>` (so they work through Squad), or at random for a
//! share of all requests (`--faults 500=0.2,429=0.1,stall=0.05`). Specs: `500`..`599`, `4xx`, `429` (with Retry-After),
//! `stall` (never answer), `cut` (drop the connection mid-body), `malformed`.

mod faults;
mod formats;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::Value;

pub use faults::{Fault, FaultMix, parse_mix};
use formats::{Dialect, Reply};

#[derive(Debug, Clone)]
pub struct MockOptions {
    /// Delay before the response starts.
    pub latency: Duration,
    /// Streaming pace; 0 sends every token at once.
    pub tokens_per_second: f64,
    /// Faults drawn at random per request: each applies to its share of
    /// requests (`[(503, 0.2), (429, 0.1)]`: 20% 503s, 10% 429s, 70% fine).
    pub faults: Vec<(Fault, f64)>,
    /// Seconds advertised in Retry-After on 429s.
    pub retry_after_secs: u64,
}

impl Default for MockOptions {
    fn default() -> Self {
        Self { latency: Duration::ZERO, tokens_per_second: 0.0, faults: Vec::new(), retry_after_secs: 1 }
    }
}

#[derive(Debug, Default)]
pub struct MockStats {
    pub requests: AtomicU64,
}

struct Mock {
    options: MockOptions,
    stats: Arc<MockStats>,
}

/// The simulated upstream as a router, plus its request counter.
pub fn router(options: MockOptions) -> (Router, Arc<MockStats>) {
    let stats = Arc::new(MockStats::default());
    let mock = Arc::new(Mock { options, stats: stats.clone() });
    (Router::new().fallback(handle).with_state(mock), stats)
}

/// Runs the mock on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    options: MockOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (app, _) = router(options);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

async fn handle(State(mock): State<Arc<Mock>>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    if req.method() == axum::http::Method::GET {
        return match path.as_str() {
            "/mock/stats" => axum::Json(serde_json::json!({
                "requests": mock.stats.requests.load(Ordering::Relaxed)
            }))
            .into_response(),
            _ => StatusCode::NOT_FOUND.into_response(),
        };
    }
    let Some((dialect, model_in_path, url_stream)) = Dialect::from_path(&path, &query) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    mock.stats.requests.fetch_add(1, Ordering::Relaxed);
    let headers = req.headers().clone();
    let body = match axum::body::to_bytes(req.into_body(), 16 * 1024 * 1024).await {
        Ok(b) => b,
        Err(_) => return StatusCode::PAYLOAD_TOO_LARGE.into_response(),
    };
    let Ok(json) = serde_json::from_slice::<Value>(&body) else {
        return dialect.error(400, "request body is not valid JSON", mock.options.retry_after_secs);
    };
    if !has_credentials(&headers) {
        return dialect.error(401, "missing API key", mock.options.retry_after_secs);
    }
    let reply = Reply::from_request(dialect, &json, model_in_path, url_stream);
    let fault = pick_fault(&mock, &headers, &reply.model);

    let latency = header_ms(&headers, "x-mock-latency-ms").unwrap_or(mock.options.latency);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some(fault) = &fault
        && let Some(resp) = fault.before_body(dialect, mock.options.retry_after_secs).await
    {
        return resp;
    }
    let malformed = fault == Some(Fault::Malformed);
    let cut = fault == Some(Fault::Cut);
    if reply.stream {
        stream_response(reply, mock.options.tokens_per_second, malformed, cut)
    } else {
        let mut bytes = if malformed { b"{\"id\": \"broken\", \"choices\": [".to_vec() } else { reply.full_body() };
        if cut {
            bytes.truncate(bytes.len() / 2);
            let parts: Vec<Result<Bytes, std::io::Error>> =
                vec![Ok(Bytes::from(bytes)), Err(std::io::Error::other("connection cut by mock fault"))];
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                Body::from_stream(futures::stream::iter(parts)),
            )
                .into_response();
        }
        (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], bytes).into_response()
    }
}

fn has_credentials(headers: &HeaderMap) -> bool {
    headers.get(header::AUTHORIZATION).is_some() || headers.get("x-goog-api-key").is_some()
}

fn header_ms(headers: &HeaderMap, name: &str) -> Option<Duration> {
    headers.get(name)?.to_str().ok()?.parse::<u64>().ok().map(Duration::from_millis)
}

fn pick_fault(mock: &Mock, headers: &HeaderMap, model: &str) -> Option<Fault> {
    if let Some(f) = headers.get("x-mock-fault").and_then(|v| v.to_str().ok()).and_then(Fault::parse) {
        return Some(f);
    }
    if let Some(spec) = model.split("fault-").nth(1)
        && let Some(f) = Fault::parse(spec)
    {
        return Some(f);
    }
    let mut draw = fastrand::f64();
    for (fault, share) in &mock.options.faults {
        if draw < *share {
            return Some(fault.clone());
        }
        draw -= share;
    }
    None
}

fn stream_response(reply: Reply, tokens_per_second: f64, malformed: bool, cut: bool) -> Response {
    let events = reply.stream_events();
    let total = events.len();
    // A cut stream is paced a little even when pacing is off, so the events
    // before the cut are on the wire before the connection drops.
    let pace = if tokens_per_second > 0.0 {
        1.0 / tokens_per_second
    } else if cut {
        0.002
    } else {
        0.0
    };
    let pause = (pace > 0.0).then(|| Duration::from_secs_f64(pace));
    let body = futures::stream::iter(events.into_iter().enumerate()).then(move |(i, ev)| async move {
        if let Some(p) = pause
            && i > 0
        {
            tokio::time::sleep(p).await;
        }
        if cut && i == total / 2 {
            return Err(std::io::Error::other("connection cut by mock fault"));
        }
        if malformed && i == 1 {
            return Ok(Bytes::from_static(b"data: {\"choices\": [{\"delta\": \n\n"));
        }
        Ok(Bytes::from(ev))
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")],
        Body::from_stream(body),
    )
        .into_response()
}
