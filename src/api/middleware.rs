//! The one request middleware: request id (accepted when well-formed, otherwise
//! generated), a tracing span carrying it, HTTP metrics, the access log line, and
//! the error-body finisher that gives every error response our JSON shape with
//! the request id.

use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use super::error::{ApiError, PendingError, render};
use crate::telemetry::metrics;

pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request id of the current request, for handlers. `generated`: Squad
/// made it (a UUIDv7, unique, of this Unix millisecond), because the client
/// sent none that was well formed; a client's own id may repeat.
#[derive(Debug, Clone)]
pub struct RequestId {
    pub id: String,
    pub generated: Option<i64>,
}

/// Who is asking, for per-client budgets: `key:<id>` for an API key (with its
/// own `tpm`, if it has one), else the client address.
#[derive(Debug, Clone)]
pub struct ClientKey(pub String, pub Option<u64>);

pub static RATE_LIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
pub static RATE_LIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
pub static RATE_LIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

fn rate_limit_headers(response: &mut Response, h: &crate::limits::ClientHeaders) {
    let reset = h.reset.as_secs() + u64::from(h.reset.subsec_nanos() > 0);
    let headers = response.headers_mut();
    headers.insert(RATE_LIMIT_LIMIT.clone(), HeaderValue::from(h.limit));
    headers.insert(RATE_LIMIT_REMAINING.clone(), HeaderValue::from(h.remaining));
    headers.insert(RATE_LIMIT_RESET.clone(), HeaderValue::from(reset));
}

/// `ip` as text, as its `Display` writes it. An IPv4 address is put
/// together from its four numbers with `itoa`, not through the formatter
/// machinery, as it is on every request.
pub fn ip_text(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut text = String::with_capacity(15);
            let mut digits = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text.push('.');
                }
                text.push_str(digits.format(octet));
            }
            text
        }
        std::net::IpAddr::V6(v6) => v6.to_string(),
    }
}

/// Per-client admission on the chat routes: the client's request budget and
/// concurrency, `X-RateLimit-*` headers on every answer, 429 (`code: client`)
/// beyond them. A streamed response keeps its concurrency slot until the
/// stream ends.
pub async fn client_limits(
    axum::extract::State(state): axum::extract::State<super::state::AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    use axum::response::IntoResponse;
    let key = req.extensions().get::<super::auth::Principal>().and_then(|p| p.0.clone());
    let client = match &key {
        Some(key) => format!("key:{}", key.id),
        None => req
            .extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| ip_text(c.0.ip()))
            .unwrap_or_else(|| "unknown".to_owned()),
    };
    let (rpm, tpm) = key.map(|k| (k.rpm, k.tpm)).unwrap_or_default();
    let (rpm, tpm) = (rpm.map(|r| r.max(0) as u64), tpm.map(|t| t.max(0) as u64));
    match state.gateway.limits().admit_client(&client, rpm).await {
        Ok((headers, slot)) => {
            req.extensions_mut().insert(ClientKey(client, tpm));
            let mut response = next.run(req).await;
            if let Some(h) = &headers {
                rate_limit_headers(&mut response, h);
            }
            if is_event_stream(&response) {
                let (parts, body) = response.into_parts();
                let stream = futures::StreamExt::map(body.into_data_stream(), move |chunk| {
                    let _held = &slot;
                    chunk
                });
                return Response::from_parts(parts, Body::from_stream(stream));
            }
            response
        }
        Err((
            crate::limits::Refusal::Client { retry_after } | crate::limits::Refusal::Concurrency { retry_after },
            headers,
        )) => {
            let mut response = ApiError::ClientLimited { retry_after }.into_response();
            if let Some(h) = &headers {
                rate_limit_headers(&mut response, h);
            }
            response
        }
    }
}

/// Which provider served the request, set by handlers for the access log.
#[derive(Debug, Clone)]
pub struct ServedBy(pub String);

/// Accept a client's id only if it is short and plain (it ends up in logs).
fn well_formed(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// Bounded label for the HTTP method (hyper accepts any token).
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Records metrics and the access line when dropped, so a request whose
/// client went away before the response still leaves the in-flight gauge and
/// shows up (status 499, as nginx logs it). A streamed response carries it in
/// its body (`Tracked`): it is dropped when the stream ends, or when the
/// client goes away first.
struct Finish {
    id: String,
    route: String,
    method: &'static str,
    started: Instant,
    status: Option<u16>,
    provider: String,
    /// A stream: when its head went out, and whether its end was reached.
    stream: Option<(std::time::Duration, bool)>,
}

impl Drop for Finish {
    fn drop(&mut self) {
        let status = self.status.unwrap_or(499);
        let elapsed = self.started.elapsed();
        // A stream's line: its time to the head, to the end, and whether its
        // client left before the end.
        let (latency, stream_ms, client_closed) = match self.stream {
            None => {
                metrics::http_finished(&self.route, self.method, status, elapsed, false);
                (elapsed, None, self.status.is_none())
            }
            Some((head, ended)) => {
                metrics::http_stream_ended(&self.route, elapsed);
                (head, Some(elapsed.as_secs_f64() * 1000.0), !ended)
            }
        };
        // `&str` fields, not `%`: they are copied into the line as they are,
        // without a pass through the formatting machinery.
        tracing::info!(
            request_id = self.id.as_str(),
            route = self.route.as_str(),
            method = self.method,
            status,
            latency_ms = latency.as_secs_f64() * 1000.0,
            stream_ms,
            provider = self.provider.as_str(),
            client_closed,
            "request"
        );
    }
}

/// A streamed body that carries its request's `Finish` to the stream's end.
struct Tracked {
    body: axum::body::BodyDataStream,
    finish: Finish,
}

impl futures::Stream for Tracked {
    type Item = Result<axum::body::Bytes, axum::Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let item = std::task::ready!(std::pin::Pin::new(&mut self.body).poll_next(cx));
        if item.is_none()
            && let Some((_, ended)) = &mut self.finish.stream
        {
            *ended = true;
        }
        std::task::Poll::Ready(item)
    }
}

pub async fn request_context(mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let client_id = req.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()).filter(|v| well_formed(v));
    let (id, generated) = match client_id {
        Some(id) => (id.to_owned(), None),
        None => {
            let id = uuid::Uuid::now_v7();
            (id.to_string(), Some(crate::store::uuid7_time(&id)))
        }
    };
    let route =
        req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "unmatched".to_owned());
    let method = method_label(req.method());
    req.extensions_mut().insert(RequestId { id: id.clone(), generated });

    metrics::http_started();
    let span = tracing::info_span!("request", request_id = id.as_str(), route = route.as_str(), method);
    let mut finish = Finish { id, route, method, started, status: None, provider: String::new(), stream: None };
    let mut response = next.run(req).instrument(span).await;
    finish_error_body(&mut response, &finish.id);
    if let Ok(value) = HeaderValue::from_str(&finish.id) {
        response.headers_mut().insert(REQUEST_ID.clone(), value);
    }
    let status = response.status().as_u16();
    finish.status = Some(status);
    if let Some(ServedBy(p)) = response.extensions().get::<ServedBy>() {
        finish.provider = p.clone();
    }
    if is_event_stream(&response) {
        // Counted, and its time to the head recorded, now; in flight, and
        // its access line, until the stream ends.
        let head = started.elapsed();
        metrics::http_finished(&finish.route, finish.method, status, head, true);
        finish.stream = Some((head, false));
        let (parts, body) = response.into_parts();
        return Response::from_parts(parts, Body::from_stream(Tracked { body: body.into_data_stream(), finish }));
    }
    response
}

fn is_event_stream(response: &Response) -> bool {
    response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
}

/// Gives every error response our JSON body: `ApiError`s carry their body in a
/// `PendingError` extension; any other error (axum's 404/405, a rejection we
/// did not intercept) is translated by status.
fn finish_error_body(response: &mut Response, request_id: &str) {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return;
    }
    let object = match response.extensions_mut().remove::<PendingError>() {
        Some(PendingError(object)) => object,
        None if is_json(response) => return,
        None => fallback_error(status).object(),
    };
    *response.body_mut() = Body::from(render(object, request_id));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response.headers_mut().remove(header::CONTENT_LENGTH);
}

fn is_json(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// The error an error status without our body is given (axum's own 404/405
/// and extractor rejections).
pub fn fallback_error(status: StatusCode) -> ApiError {
    match status {
        StatusCode::NOT_FOUND => ApiError::NotFound("no such route".into()),
        StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType,
        StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::InvalidRequest { message: "request body too large".into(), param: None }
        }
        s if s.is_client_error() => ApiError::InvalidRequest { message: "bad request".into(), param: None },
        _ => ApiError::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_text_is_what_display_writes() {
        for ip in ["127.0.0.1", "0.0.0.0", "255.255.255.255", "10.20.3.4", "::1", "::ffff:192.0.2.1", "2001:db8::7"] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip), ip.to_string());
        }
    }
}
