//! The audit layer on the routes that call providers: every request that gets
//! this far leaves a record, successes, client errors, refusals (401, 403,
//! 429) and failures alike. Handlers fill in what they learn through the
//! `Draft` in the request's extensions; this layer adds the status and error
//! and submits the record before the response leaves. A streamed response
//! submits it when the stream ends (or is dropped: then `cancelled`).

use std::time::Instant;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, AttemptView, PendingError};
use super::middleware::{RequestId, ServedBy};
use super::state::AppState;
use crate::service::Attempt;
use crate::store::Draft;
use crate::store::writer::DraftStart;

pub async fn audit(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let Some(log) = state.audit.clone() else { return next.run(req).await };
    if log.refusing() {
        return ApiError::AuditUnavailable.into_response();
    }
    let request_id = req.extensions().get::<RequestId>();
    let start = DraftStart {
        request_id: request_id.map(|r| r.id.clone()).unwrap_or_default(),
        request_id_time: request_id.and_then(|r| r.generated),
        method: req.method().as_str().to_owned(),
        route: req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_default(),
        client_addr: req
            .extensions()
            .get::<ConnectInfo<std::net::SocketAddr>>()
            .map(|c| super::middleware::ip_text(c.0.ip())),
    };
    let draft = Draft::new(log, start, Instant::now());
    req.extensions_mut().insert(draft.clone());
    let response = next.run(req).await;
    let status = i64::from(response.status().as_u16());
    let error = match response.extensions().get::<PendingError>() {
        Some(e) => Some(e.0.clone()),
        // axum's own rejections get our body later, in `request_context`.
        None if response.status().is_client_error() || response.status().is_server_error() => {
            Some(super::middleware::fallback_error(response.status()).object())
        }
        None => None,
    };
    let served_by = response.extensions().get::<ServedBy>().map(|s| s.0.clone());
    let mut upstream_ms = 0;
    draft.update(|r| {
        r.status = status;
        if let Some(e) = error {
            r.error_kind = Some(e.code);
            upstream_ms = e.attempts.iter().flatten().map(|a| a.latency_ms).sum();
            if let Some(attempts) = e.attempts.filter(|a| !a.is_empty()) {
                r.attempts = serde_json::to_string(&attempts).unwrap_or_else(|_| "[]".into());
            }
        }
        if r.provider.is_none() {
            r.provider = served_by;
        }
    });
    draft.add_upstream(std::time::Duration::from_millis(upstream_ms));
    let streaming =
        response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if streaming {
        // The stream holds its own clone and submits the record when it ends.
        draft.update(|r| r.streamed = true);
        return response;
    }
    match draft.finish() {
        Ok(()) => response,
        Err(_) => ApiError::AuditUnavailable.into_response(),
    }
}

/// The attempts as an audit row keeps them (the same view clients see):
/// `[{"provider","model","outcome","status"?,"latency_ms"}]`, written
/// directly (serde's serializer cost a request over a thousand instructions
/// for one attempt).
pub fn attempts_json(attempts: &[Attempt]) -> String {
    fn text(out: &mut String, s: &str) {
        out.push('"');
        // Writing to a `String` cannot fail.
        let _ = crate::telemetry::json_escape(out, s);
        out.push('"');
    }
    let mut out = String::with_capacity(2 + attempts.len() * 96);
    let mut digits = itoa::Buffer::new();
    out.push('[');
    for (i, a) in attempts.iter().enumerate() {
        let (outcome, status, latency_ms) = AttemptView::borrowed(a);
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"provider\":");
        text(&mut out, &a.provider);
        out.push_str(",\"model\":");
        text(&mut out, &a.model);
        out.push_str(",\"outcome\":");
        text(&mut out, outcome);
        if let Some(status) = status {
            out.push_str(",\"status\":");
            out.push_str(digits.format(status));
        }
        out.push_str(",\"latency_ms\":");
        out.push_str(digits.format(latency_ms));
        out.push('}');
    }
    out.push(']');
    out
}

/// Provider time of a finished chain: every attempt's latency.
pub fn upstream_time(attempts: &[Attempt]) -> std::time::Duration {
    attempts.iter().map(|a| a.latency).sum()
}

/// The prompt as the audit log sees it: the client's messages, one per line.
pub fn prompt_text(messages: &[crate::domain::Message]) -> String {
    let len = messages.iter().map(|m| m.role.as_str().len() + m.content.len() + 3).sum();
    let mut text = String::with_capacity(len);
    for (i, m) in messages.iter().enumerate() {
        if i > 0 {
            text.push('\n');
        }
        text.push_str(m.role.as_str());
        text.push_str(": ");
        text.push_str(&m.content);
    }
    text
}

/// What a successful chain adds to the record.
pub struct Served<'a> {
    pub provider: &'a str,
    pub model: &'a str,
    pub attempts: &'a [Attempt],
    pub usage: Option<crate::domain::Usage>,
    pub text: Option<&'a str>,
}

pub fn note_served(draft: &Draft, s: Served<'_>) {
    draft.add_upstream(upstream_time(s.attempts));
    if let Some(text) = s.text {
        draft.response(text);
    }
    let attempts = attempts_json(s.attempts);
    draft.update(|r| {
        r.provider = Some(s.provider.to_owned());
        r.model = Some(s.model.to_owned());
        r.attempts = attempts;
    });
    if let Some(u) = s.usage {
        draft.usage(u);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::ErrorKind;
    use crate::service::fallback::Outcome;

    #[test]
    fn attempts_json_is_the_clients_view_of_each_attempt() {
        let attempt = |provider: &str, model: &str, outcome, ms| Attempt {
            provider: provider.into(),
            model: model.into(),
            outcome,
            latency: std::time::Duration::from_millis(ms),
        };
        let attempts = [
            attempt("groq", "llama", Outcome::Failed { kind: ErrorKind::RateLimited, status: Some(429) }, 12),
            attempt(
                "my\"proxy\\",
                "model\nwith\tcontrol\u{1}and ✓",
                Outcome::Failed { kind: ErrorKind::Timeout, status: None },
                30_000,
            ),
            attempt("openrouter", "meta/llama-4", Outcome::Ok, 0),
        ];
        for chain in [&attempts[..], &attempts[..1], &[]] {
            let written: serde_json::Value = serde_json::from_str(&attempts_json(chain)).unwrap();
            let views: Vec<AttemptView> = chain.iter().map(AttemptView::from).collect();
            assert_eq!(written, serde_json::to_value(&views).unwrap());
        }
        assert_eq!(
            attempts_json(&attempts[..1]),
            r#"[{"provider":"groq","model":"llama","outcome":"rate_limited","status":429,"latency_ms":12}]"#
        );
    }
}
