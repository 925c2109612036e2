//! Shared HTTP plumbing for adapters: the pooled client, deadlines per phase,
//! status classification into `ProviderError`, Retry-After parsing, bounded body
//! reads and the SSE event stream with a per-chunk idle timeout.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_platform_verifier::BuilderVerifierExt;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tokio::time::Instant;
use tokio_rustls::rustls;

use super::sse::{SseDecoder, SseEvent, SseLimits};
use super::{CallContext, ProviderError};
use crate::config::{ProviderConfig, Timeouts};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("invalid header {0}")]
    Header(String),
    #[error("invalid base URL: {0}")]
    Url(String),
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("cannot set up TLS: {0}")]
    Tls(String),
}

/// Request headers shared by every call: configured extras, then the key
/// (marked sensitive so it never shows in debug output).
pub fn base_headers(cfg: &ProviderConfig, key: Option<(&HeaderName, String)>) -> Result<HeaderMap, BuildError> {
    let mut headers = HeaderMap::new();
    for (name, value) in &cfg.headers {
        let name = HeaderName::try_from(name.as_str()).map_err(|_| BuildError::Header(name.clone()))?;
        let value = HeaderValue::try_from(value.as_str()).map_err(|_| BuildError::Header(name.to_string()))?;
        headers.insert(name, value);
    }
    if let Some((name, secret)) = key {
        let mut value = HeaderValue::try_from(secret).map_err(|_| BuildError::Header(name.to_string()))?;
        value.set_sensitive(true);
        headers.insert(name.clone(), value);
    }
    Ok(headers)
}

/// Non-streaming bodies above this are refused rather than buffered.
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
/// How much of an upstream error body we read (for logs and classification).
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;
const ERROR_BODY_TIMEOUT: Duration = Duration::from_secs(5);

/// Removes what must never reach a log from an upstream body: our own key (a
/// proxy may echo request headers) and anything shaped like a bearer token.
/// Full PII redaction of logged text is the security module's job.
fn scrub(body: &str, key: Option<&SecretString>) -> String {
    let mut out = body.to_owned();
    if let Some(key) = key.map(|k| k.expose_secret()).filter(|k| k.len() >= 8) {
        out = out.replace(key, "[REDACTED]");
    }
    let mut result = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(i) = rest.find("Bearer ") {
        result.push_str(&rest[..i + 7]);
        rest = &rest[i + 7..];
        let end = rest.find(|c: char| c.is_whitespace() || c == '"' || c == '\'').unwrap_or(rest.len());
        if end > 0 {
            result.push_str("[REDACTED]");
        }
        rest = &rest[end..];
    }
    result.push_str(rest);
    result
}

/// A serde error without the input it quotes (upstream content stays out of logs).
pub fn decode_error(context: &str, e: &serde_json::Error) -> ProviderError {
    let what = match e.classify() {
        serde_json::error::Category::Io => "i/o error",
        serde_json::error::Category::Syntax => "invalid JSON",
        serde_json::error::Category::Data => "unexpected JSON shape",
        serde_json::error::Category::Eof => "truncated JSON",
    };
    ProviderError::Decode(format!("{context}: {what} at line {} column {}", e.line(), e.column()))
}

/// A response as both transports deliver it.
pub type Response = http::Response<Body>;
pub type Body = UnsyncBoxBody<Bytes, BoxError>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Direct = hyper_util::client::legacy::Client<Bounded<HttpsConnector<HttpConnector>>, Full<Bytes>>;

/// A connector whose whole connect (DNS, TCP and the TLS handshake) must
/// finish within `limit`: hyper-util's own connect timeout covers only TCP
/// (and splits it across the resolved addresses), so an upstream that accepts
/// and then stalls the handshake would hold a call until the first-byte
/// timeout.
#[derive(Clone)]
pub struct Bounded<C> {
    inner: C,
    limit: Duration,
}

impl<C> tower::Service<http::Uri> for Bounded<C>
where
    C: tower::Service<http::Uri>,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let limit = self.limit;
        Box::pin(async move {
            match tokio::time::timeout(limit, connecting).await {
                Ok(result) => result.map_err(Into::into),
                Err(_) => Err(Box::new(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")).into()),
            }
        })
    }
}

/// How a provider's requests leave. `Direct` is hyper-util's pooled client on
/// our own connections: no redirect or retry layers, no URL re-parsed per
/// request (reqwest's cost about 20k instructions a call, an eighth of a
/// proxied request). `Proxied` is reqwest, used only when the environment
/// (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, less `NO_PROXY`) sends this
/// provider's base URL through a proxy, because it speaks CONNECT and
/// proxy authentication.
///
/// Both use `TCP_NODELAY` (SSE chunks are small and latency-sensitive), TCP
/// keepalive, the connect timeout (DNS, TCP and TLS together), rustls with
/// the platform's certificate verifier (so `SSL_CERT_FILE` works), HTTP/2
/// when ALPN offers it, and no total timeout (streams must not have one). Neither follows redirects: that would carry
/// `x-goog-api-key` and configured headers to the new host and turn the POST
/// into a GET. Neither retries: the fallback runner does, and counts and
/// audits each attempt (hyper-util only resends a request that a pooled
/// connection closed before any of it was written).
#[derive(Clone)]
#[allow(clippy::large_enum_variant, reason = "one per provider, built once; boxing would add a hop per call")]
pub enum Transport {
    /// One client per CPU, indexed by serving core (`crate::runtime`): a
    /// core's requests go out on connections that core drives. With more
    /// `server.workers` than CPUs, cores share clients (index modulo count).
    Direct(Box<[Direct]>),
    Proxied(reqwest::Client),
}

const USER_AGENT: &str = concat!("squad/", env!("CARGO_PKG_VERSION"));
const POOL_IDLE: Duration = Duration::from_secs(90);
const POOL_MAX_IDLE_PER_HOST: usize = 512;

impl Transport {
    pub fn new(base_url: &str, timeouts: &Timeouts) -> Result<Self, BuildError> {
        let uri = http::Uri::try_from(base_url).map_err(|e| BuildError::Url(e.to_string()))?;
        if hyper_util::client::proxy::matcher::Matcher::from_env().intercept(&uri).is_some() {
            let client = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .retry(reqwest::retry::never().max_retries_per_request(0))
                .tcp_nodelay(true)
                .connect_timeout(timeouts.connect)
                .pool_idle_timeout(POOL_IDLE)
                .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
                .user_agent(USER_AGENT)
                .build()?;
            return Ok(Self::Proxied(client));
        }
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false);
        // As reqwest sets them: a pooled connection that a NAT or a dead
        // peer dropped silently is found out by the kernel, not by a timeout.
        http.set_keepalive(Some(Duration::from_secs(15)));
        http.set_keepalive_interval(Some(Duration::from_secs(15)));
        http.set_keepalive_retries(Some(3));
        http.set_tcp_user_timeout(Some(Duration::from_secs(30)));
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_platform_verifier())
            .map_err(|e| BuildError::Tls(e.to_string()))?
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let connector = Bounded { inner: connector, limit: timeouts.connect };
        let clients = (0..crate::runtime::default_cores())
            .map(|_| {
                hyper_util::client::legacy::Client::builder(TokioExecutor::new())
                    .pool_timer(TokioTimer::new())
                    .timer(TokioTimer::new())
                    .pool_idle_timeout(POOL_IDLE)
                    .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
                    .build(connector.clone())
            })
            .collect();
        Ok(Self::Direct(clients))
    }

    /// Sends a POST with a JSON body; `headers` are the provider's own.
    async fn post(&self, uri: &http::Uri, headers: &HeaderMap, body: Bytes) -> Result<Response, ProviderError> {
        match self {
            Self::Direct(clients) => {
                let client = &clients[crate::runtime::core_index() % clients.len()];
                let mut request = http::Request::new(Full::new(body));
                *request.method_mut() = http::Method::POST;
                *request.uri_mut() = uri.clone();
                let mut all = headers.clone();
                // Defaults only: a provider's configured headers win.
                for (name, value) in [
                    (http::header::CONTENT_TYPE, "application/json"),
                    (http::header::USER_AGENT, USER_AGENT),
                    (http::header::ACCEPT, "*/*"),
                ] {
                    all.entry(name).or_insert(HeaderValue::from_static(value));
                }
                *request.headers_mut() = all;
                let response = client.request(request).await.map_err(|e| direct_error(&e))?;
                Ok(response.map(|b| b.map_err(BoxError::from).boxed_unsync()))
            }
            Self::Proxied(client) => {
                let mut all = headers.clone();
                all.entry(http::header::CONTENT_TYPE).or_insert(HeaderValue::from_static("application/json"));
                let response = client
                    .post(uri.to_string())
                    .headers(all)
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| transport_error(&e))?;
                Ok(http::Response::from(response).map(|b| b.map_err(BoxError::from).boxed_unsync()))
            }
        }
    }
}

/// The earlier of `now + limit` and the request deadline, and which one it was.
fn phase_deadline(ctx: &CallContext, limit: Duration, phase: &'static str) -> (Instant, &'static str) {
    let own = Instant::now() + limit;
    if own < ctx.deadline { (own, phase) } else { (ctx.deadline, "deadline") }
}

/// Everything one upstream call needs besides the body.
pub struct Call<'a> {
    pub provider: &'a str,
    pub key: Option<&'a SecretString>,
    pub transport: &'a Transport,
    pub uri: &'a http::Uri,
    pub headers: &'a HeaderMap,
    pub timeouts: &'a Timeouts,
}

/// Sends `body` as JSON and waits for response headers within the first-byte
/// timeout, then turns any non-success status into a classified error.
pub async fn send(call: &Call<'_>, body: &impl serde::Serialize, ctx: &CallContext) -> Result<Response, ProviderError> {
    let body = serde_json::to_vec(body).map_err(|e| ProviderError::Decode(format!("request body: {e}")))?;
    let (until, phase) = phase_deadline(ctx, call.timeouts.first_byte, "first_byte");
    let response =
        match tokio::time::timeout_at(until, call.transport.post(call.uri, call.headers, Bytes::from(body))).await {
            Err(_) => return Err(ProviderError::Timeout { phase }),
            Ok(result) => result?,
        };
    if response.status().is_success() {
        if let Some(wait) = exhausted_for(response.headers())
            && let Ok(mut slot) = ctx.exhausted.lock()
        {
            *slot = Some(wait);
        }
        return Ok(response);
    }
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    // A fresh, short budget: the error may have arrived just before the
    // first-byte deadline, and its body (RetryInfo, API_KEY_INVALID) matters.
    let body_until = (Instant::now() + ERROR_BODY_TIMEOUT).min(ctx.deadline);
    let body = read_capped(response, MAX_ERROR_BODY_BYTES, body_until).await.unwrap_or_default();
    let body = String::from_utf8_lossy(&body);
    let shown = scrub(truncate(&body, 2048), call.key);
    tracing::warn!(provider = call.provider, status, upstream_body = %shown, "upstream returned an error status");
    Err(classify(status, &headers, &body))
}

/// A failure of hyper-util's client before response headers: connecting
/// (refused, DNS, TLS, the connect timeout) or the exchange itself.
fn direct_error(e: &hyper_util::client::legacy::Error) -> ProviderError {
    let cause = root_cause(e);
    if !e.is_connect() {
        return ProviderError::Interrupted(cause);
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut) {
            return ProviderError::Timeout { phase: "connect" };
        }
        source = err.source();
    }
    ProviderError::Connect(cause)
}

fn transport_error(e: &reqwest::Error) -> ProviderError {
    if e.is_timeout() {
        ProviderError::Timeout { phase: "connect" }
    } else if e.is_connect() {
        ProviderError::Connect(root_cause(e))
    } else {
        ProviderError::Interrupted(root_cause(e))
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Maps an upstream error status (and body) to our error type.
pub fn classify(status: u16, headers: &HeaderMap, body: &str) -> ProviderError {
    let json: Option<Value> = serde_json::from_str(body.trim_start()).ok();
    match status {
        429 => ProviderError::RateLimited {
            status,
            retry_after: retry_after(headers, SystemTime::now()).or_else(|| json.as_ref().and_then(gemini_retry_delay)),
        },
        401 | 403 => ProviderError::Auth { status },
        // Payment required: the account, not the request, is the problem.
        402 => ProviderError::Auth { status },
        // Gemini reports a bad key as 400 INVALID_ARGUMENT with reason API_KEY_INVALID.
        400 if body.contains("API_KEY_INVALID") => ProviderError::Auth { status },
        408 => ProviderError::Timeout { phase: "upstream" },
        // Groq's flex tier at capacity.
        498 => ProviderError::Upstream { status },
        404 => ProviderError::NotFound { code: json.as_ref().and_then(error_code) },
        // We never follow redirects (see `build_client`): a misconfigured base URL.
        300..=399 => ProviderError::Upstream { status },
        s if s >= 500 => ProviderError::Upstream { status },
        _ => ProviderError::Rejected { status, code: json.as_ref().and_then(error_code) },
    }
}

/// The upstream's short machine code, only when it looks like an identifier.
fn error_code(json: &Value) -> Option<String> {
    let err = json.get("error")?;
    let candidates = [err.get("code"), err.get("status"), err.get("type"), err.pointer("/metadata/error_type")];
    candidates.into_iter().flatten().filter_map(Value::as_str).find(|s| is_identifier(s)).map(str::to_owned)
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

/// When a provider's own rate-limit headers say a budget is spent
/// (`x-ratelimit-remaining-requests: 0`, Cerebras' `…-tokens-minute: 0`), the
/// time until its matching `x-ratelimit-reset-*` (Go durations such as
/// `2m59.56s`, or fractional seconds). The longest such wait wins.
pub fn exhausted_for(headers: &HeaderMap) -> Option<Duration> {
    headers
        .iter()
        .filter_map(|(name, value)| {
            let name = name.as_str();
            let suffix = name.strip_prefix("x-ratelimit-remaining")?;
            if value.to_str().ok()?.trim().parse::<f64>().ok()? > 0.0 {
                return None;
            }
            let reset = headers.get(format!("x-ratelimit-reset{suffix}"))?.to_str().ok()?;
            parse_reset(reset.trim())
        })
        .max()
}

/// `7.66s`, `2m59.56s`, `1h2m`, `350ms`, or plain (fractional) seconds.
fn parse_reset(raw: &str) -> Option<Duration> {
    if let Ok(secs) = raw.parse::<f64>() {
        return positive_secs(secs);
    }
    let mut total = 0.0;
    let mut rest = raw;
    while !rest.is_empty() {
        let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let number: f64 = rest[..end].parse().ok()?;
        rest = &rest[end..];
        let (unit, len) = if rest.starts_with("ms") {
            (0.001, 2)
        } else if rest.starts_with('h') {
            (3600.0, 1)
        } else if rest.starts_with('m') {
            (60.0, 1)
        } else if rest.starts_with('s') {
            (1.0, 1)
        } else {
            return None;
        };
        total += number * unit;
        rest = &rest[len..];
    }
    positive_secs(total)
}

/// `retry-after-ms`, then `retry-after` as (fractional) seconds, then as an HTTP-date.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(d) =
        header("retry-after-ms").and_then(|v| v.parse::<f64>().ok()).and_then(|ms| positive_secs(ms / 1000.0))
    {
        return Some(d);
    }
    let raw = header("retry-after")?;
    if let Ok(secs) = raw.parse::<f64>() {
        return positive_secs(secs);
    }
    let when = httpdate::parse_http_date(raw).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

fn positive_secs(secs: f64) -> Option<Duration> {
    (0.0..1.0e9).contains(&secs).then(|| Duration::from_secs_f64(secs))
}

/// Gemini puts the delay in the body: `details[{"@type": "…RetryInfo", "retryDelay": "13.5s"}]`.
pub fn gemini_retry_delay(json: &Value) -> Option<Duration> {
    json.pointer("/error/details")?
        .as_array()?
        .iter()
        .filter(|d| d.get("@type").and_then(Value::as_str).is_some_and(|t| t.ends_with("google.rpc.RetryInfo")))
        .find_map(|d| d.get("retryDelay")?.as_str()?.strip_suffix('s')?.parse::<f64>().ok())
        .and_then(positive_secs)
}

/// Reads a whole body, refusing more than `cap` bytes and stopping at `until`.
async fn read_capped(response: Response, cap: usize, until: Instant) -> Result<Vec<u8>, ProviderError> {
    let mut body = Vec::new();
    let mut stream = data_stream(response);
    loop {
        match tokio::time::timeout_at(until, stream.next()).await {
            Err(_) => return Err(ProviderError::Timeout { phase: "total" }),
            Ok(None) => return Ok(body),
            Ok(Some(Err(e))) => return Err(ProviderError::Interrupted(root_cause(&*e))),
            Ok(Some(Ok(bytes))) => {
                if body.len() + bytes.len() > cap {
                    return Err(ProviderError::Decode(format!("response body larger than {cap} bytes")));
                }
                body.extend_from_slice(&bytes);
            }
        }
    }
}

/// Reads and parses a JSON body within the total timeout. Leading whitespace is
/// skipped: DeepSeek sends blank lines before the body while it queues.
pub async fn json_body<T: serde::de::DeserializeOwned>(
    response: Response,
    ctx: &CallContext,
    timeouts: &Timeouts,
    started: Instant,
) -> Result<T, ProviderError> {
    let own = started + timeouts.total;
    let until = own.min(ctx.deadline);
    let body = read_capped(response, MAX_BODY_BYTES, until).await?;
    let start = body.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(body.len());
    serde_json::from_slice(&body[start..]).map_err(|e| decode_error("response body", &e))
}

/// The response body as SSE events. Each chunk must arrive within `idle` (and
/// before the request deadline); a transport error or oversized line ends the
/// stream with an error.
pub fn event_stream(
    response: Response,
    idle: Duration,
    deadline: Instant,
) -> impl Stream<Item = Result<SseEvent, ProviderError>> + Send {
    struct State<S> {
        bytes: S,
        decoder: SseDecoder,
        ready: std::collections::VecDeque<SseEvent>,
        done: bool,
        failure: Option<ProviderError>,
    }
    let state = State {
        bytes: data_stream(response),
        decoder: SseDecoder::new(SseLimits::default()),
        ready: Default::default(),
        done: false,
        failure: None,
    };
    futures::stream::unfold(state, move |mut st| async move {
        loop {
            if let Some(ev) = st.ready.pop_front() {
                return Some((Ok(ev), st));
            }
            if let Some(e) = st.failure.take() {
                return Some((Err(e), st));
            }
            if st.done {
                return None;
            }
            let (until, phase) = {
                let own = Instant::now() + idle;
                if own < deadline { (own, "stream_idle") } else { (deadline, "deadline") }
            };
            let mut out = Vec::new();
            let step: Result<(), ProviderError> = match tokio::time::timeout_at(until, st.bytes.next()).await {
                Err(_) => Err(ProviderError::Timeout { phase }),
                Ok(Some(Ok(bytes))) => feed(&mut st.decoder, &bytes, &mut out),
                Ok(Some(Err(e))) => Err(ProviderError::Interrupted(root_cause(&*e))),
                Ok(None) => {
                    st.done = true;
                    st.decoder.finish(&mut out).map_err(|e| ProviderError::Decode(e.to_string()))
                }
            };
            st.ready.extend(out);
            if let Err(e) = step {
                // Events decoded before the error are still delivered, then the error.
                st.done = true;
                st.failure = Some(e);
            }
            if st.ready.is_empty()
                && let Some(e) = st.failure.take()
            {
                return Some((Err(e), st));
            }
        }
    })
}

/// The body's data frames (trailers are dropped).
fn data_stream(response: Response) -> impl Stream<Item = Result<Bytes, BoxError>> + Send + Unpin {
    http_body_util::BodyDataStream::new(response.into_body())
}

fn feed(decoder: &mut SseDecoder, bytes: &Bytes, out: &mut Vec<SseEvent>) -> Result<(), ProviderError> {
    decoder.feed(bytes, out).map_err(|e| ProviderError::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn scrub_removes_the_key_and_bearer_tokens() {
        let key = SecretString::from("sk-live-0123456789");
        let body = r#"{"error":"bad key sk-live-0123456789","echo":"Authorization: Bearer abc.def-ghi"}"#;
        let out = scrub(body, Some(&key));
        assert!(!out.contains("sk-live-0123456789") && !out.contains("abc.def-ghi"), "{out}");
        assert!(out.contains("Bearer [REDACTED]"), "{out}");
    }

    #[test]
    fn spent_provider_budgets_are_read_from_groq_and_cerebras_headers() {
        let groq = headers(&[
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", "2m59.56s"),
            ("x-ratelimit-remaining-tokens", "7900"),
            ("x-ratelimit-reset-tokens", "7.66s"),
        ]);
        assert_eq!(exhausted_for(&groq), Some(Duration::from_millis(179_560)));
        let cerebras =
            headers(&[("x-ratelimit-remaining-tokens-minute", "0"), ("x-ratelimit-reset-tokens-minute", "11.38")]);
        assert_eq!(exhausted_for(&cerebras), Some(Duration::from_millis(11_380)));
        let fine = headers(&[("x-ratelimit-remaining-requests", "14"), ("x-ratelimit-reset-requests", "1s")]);
        assert_eq!(exhausted_for(&fine), None);
        assert_eq!(parse_reset("350ms"), Some(Duration::from_millis(350)));
        assert_eq!(parse_reset("1h2m"), Some(Duration::from_secs(3720)));
        assert_eq!(parse_reset("soon"), None);
    }

    #[test]
    fn an_invalid_retry_after_ms_falls_back_to_retry_after() {
        let h = headers(&[("retry-after-ms", "-5"), ("retry-after", "3")]);
        assert_eq!(retry_after(&h, SystemTime::now()), Some(Duration::from_secs(3)));
    }

    #[test]
    fn retry_after_in_all_three_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        assert_eq!(retry_after(&headers(&[("retry-after", "7")]), now), Some(Duration::from_secs(7)));
        assert_eq!(retry_after(&headers(&[("retry-after", "2.5")]), now), Some(Duration::from_millis(2500)));
        assert_eq!(retry_after(&headers(&[("retry-after-ms", "1500")]), now), Some(Duration::from_millis(1500)));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(retry_after(&headers(&[("retry-after", &date)]), now), Some(Duration::from_secs(30)));
        assert_eq!(retry_after(&headers(&[("retry-after", "soon")]), now), None);
        assert_eq!(retry_after(&headers(&[("retry-after", "-3")]), now), None);
    }

    #[test]
    fn gemini_retry_info_is_found_whatever_the_order_of_details() {
        let body = r#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","message":"Quota exceeded.",
            "details":[{"@type":"type.googleapis.com/google.rpc.Help","links":[]},
                       {"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"13.4s"}]}}"#;
        match classify(429, &HeaderMap::new(), body) {
            ProviderError::RateLimited { retry_after, .. } => {
                assert_eq!(retry_after, Some(Duration::from_millis(13_400)))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn statuses_map_to_kinds_and_free_text_never_becomes_the_code() {
        let h = HeaderMap::new();
        assert_eq!(classify(401, &h, ""), ProviderError::Auth { status: 401 });
        assert_eq!(classify(503, &h, ""), ProviderError::Upstream { status: 503 });
        let gemini_bad_key =
            r#"{"error":{"code":400,"status":"INVALID_ARGUMENT","details":[{"reason":"API_KEY_INVALID"}]}}"#;
        assert_eq!(classify(400, &h, gemini_bad_key), ProviderError::Auth { status: 400 });
        let openai =
            r#"{"error":{"message":"too long","type":"invalid_request_error","code":"context_length_exceeded"}}"#;
        assert_eq!(
            classify(400, &h, openai),
            ProviderError::Rejected { status: 400, code: Some("context_length_exceeded".into()) }
        );
        let prose = r#"{"error":{"message":"x","code":"this is not a code"}}"#;
        assert_eq!(classify(422, &h, prose), ProviderError::Rejected { status: 422, code: None });
    }
}
