//! `POST /v1/chat/completions`: OpenAI-compatible, plain or streamed (SSE).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};

use super::audit::{Served, note_served};
use super::error::ApiError;
use super::extract::{ApiJson, Caller};
use super::middleware::ServedBy;
use super::openapi::ProviderRouteErrors;
use super::security::refuse_blocked_pii;
use super::state::AppState;
use super::wire::{self, ChatCompletionRequest};
use crate::domain::{ChatChunk, Usage};
use crate::providers::{ChunkStream, ProviderError};
use crate::service::StartedStream;
use crate::store::Draft;

pub static PROVIDER_HEADER: header::HeaderName = header::HeaderName::from_static("x-squad-provider");

/// OpenAI-compatible chat completion. `model` is `provider/model`, a provider
/// id, an alias or an agent id (see `GET /v1/models`).
#[utoipa::path(post, path = "/v1/chat/completions", tag = "gateway", security(("bearer" = []), ("api_key" = [])),
    request_body = ChatCompletionRequest,
    responses(
        (status = 200, description = "With `stream: false` (default) a `ChatCompletion`. With `stream: true` \
            server-sent events: each `data:` line is a `CompletionChunk` (with `stream_options.include_usage`, \
            a last chunk with `usage` and no choices), then `data: [DONE]`. A failure after the stream started \
            is one `data:` line holding an `ErrorBody`, and no `[DONE]`.",
         content(
            (wire::ChatCompletion = "application/json"),
            (String = "text/event-stream"),
         ),
         headers(("x-squad-provider" = String, description = "The provider that answered"))),
        ProviderRouteErrors,
    ))]
pub async fn chat_completions(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let model = body.model.clone();
    let stream = body.wants_stream();
    let include_usage = body.wants_usage_chunk();
    let mut request = body.into_domain()?;
    let target = state.gateway.resolve(&model)?;
    let agent_id = target.agent.as_ref().map(|a| a.id.clone());
    if let Some(draft) = &caller.audit {
        draft.prompt(super::audit::prompt_text(&request.messages));
        // OpenAI's `user` (the end user) is the record's user id, as an
        // agent request's `user_id` is: `squad audit export/erase --user-id`.
        let user = request.user.clone();
        draft.update(|r| {
            r.agent = agent_id.clone();
            r.user_id = user;
        });
    }
    caller.authorize(agent_id.as_deref())?;
    refuse_blocked_pii(&state, agent_id.as_deref(), request.messages.iter().map(|m| m.content.as_str()))?;
    if let Some(agent) = &target.agent {
        state.gateway.apply_persona(agent, &mut request);
    }
    let ctx = caller.context(&state, stream);
    let Caller { request_id, audit, .. } = caller;
    tracing::debug!(messages = request.messages.len(), "chat request validated");

    if stream {
        let started = state.gateway.chat_stream(&target, request, &ctx).await?;
        if let Some(draft) = &audit {
            let attempts = &started.attempts;
            let (provider, model) = (&started.provider, &started.model);
            note_served(draft, Served { provider, model, attempts, usage: None, text: None });
        }
        return Ok(sse_response(started, &request_id, include_usage, audit));
    }
    let done = state.gateway.chat(&target, request, &ctx).await?;
    let r = &done.response;
    if let Some(draft) = &audit {
        let served = Served {
            provider: &done.provider,
            model: &done.model,
            attempts: &done.attempts,
            usage: r.usage,
            text: Some(&r.content),
        };
        note_served(draft, served);
    }
    let id = if r.id.is_empty() { format!("chatcmpl-{request_id}") } else { r.id.clone() };
    let public_model = format!("{}/{}", done.provider, r.model);
    let body = serde_json::to_vec(&wire::completion(r, &id, &public_model)).map_err(|_| ApiError::Internal)?;
    Ok(with_provider(
        ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response(),
        &done.provider,
    ))
}

fn with_provider(mut response: Response, provider: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(provider) {
        response.headers_mut().insert(PROVIDER_HEADER.clone(), v);
    }
    response.extensions_mut().insert(ServedBy(provider.to_owned()));
    response
}

fn sse_response(started: StartedStream, request_id: &str, include_usage: bool, audit: Option<Draft>) -> Response {
    let provider = started.provider.clone();
    let events = encode(started, request_id.to_owned(), include_usage, audit).map(Ok::<_, Infallible>);
    let sse = Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)));
    with_provider(sse.into_response(), &provider)
}

/// Per-stream facts fixed by the first chunk: one id and model for every event.
struct Encoder {
    id: String,
    model: String,
    created: u64,
    provider: String,
    request_id: String,
    include_usage: bool,
    sent_first: bool,
    usage: Option<Usage>,
    /// Submitted when the stream ends; dropped unsubmitted (→ cancelled) if
    /// the client goes away first.
    audit: Option<Draft>,
}

impl Encoder {
    fn chunk_event(&mut self, chunk: &ChatChunk) -> Option<Event> {
        if let Some(u) = chunk.usage {
            self.usage = Some(u);
        }
        if let (Some(draft), Some(text)) = (&self.audit, &chunk.content) {
            draft.response(text);
        }
        let has_choice = chunk.content.is_some()
            || chunk.role.is_some()
            || chunk.finish_reason.is_some()
            || !chunk.delta_extra.is_empty();
        if !has_choice {
            return None;
        }
        let first = !std::mem::replace(&mut self.sent_first, true);
        json_event(&wire::content_chunk(chunk, &self.id, &self.model, first))
    }

    /// Submits the audit record; `false` if it could not be kept and the
    /// policy is `reject` (the stream then ends in an error, not `[DONE]`).
    fn finish_audit(&mut self, error: Option<&str>) -> bool {
        let Some(draft) = self.audit.take() else { return true };
        if let Some(u) = self.usage {
            draft.usage(u);
        }
        if let Some(e) = error {
            draft.update(|r| r.error_kind = Some(e.to_owned()));
        }
        draft.finish().is_ok()
    }

    fn closing_events(&mut self) -> Vec<Event> {
        if !self.finish_audit(None) {
            let body = serde_json::json!({"error": {
                "type": "unavailable_error",
                "message": "the audit log cannot be written",
                "code": "audit_unavailable",
                "request_id": self.request_id,
            }});
            return vec![Event::default().data(body.to_string())];
        }
        let usage = self.usage.filter(|_| self.include_usage);
        let usage = usage.and_then(|u| json_event(&wire::usage_chunk(u, &self.id, &self.model, self.created)));
        usage.into_iter().chain([Event::default().data("[DONE]")]).collect()
    }

    fn error_event(&mut self, error: &ProviderError) -> Event {
        self.finish_audit(Some("stream_interrupted"));
        let (provider, request_id) = (&self.provider, &self.request_id);
        tracing::warn!(%request_id, %provider, kind = error.kind().as_str(), %error, "stream failed after it started");
        let body = serde_json::json!({"error": {
            "type": "upstream_error",
            "message": format!("provider {provider} failed mid-stream: {}", error.kind().as_str()),
            "code": "stream_interrupted",
            "request_id": request_id,
        }});
        Event::default().data(body.to_string())
    }
}

fn json_event<T: serde::Serialize>(value: &T) -> Option<Event> {
    serde_json::to_string(value).ok().map(|s| Event::default().data(s))
}

/// Upstream chunks → OpenAI SSE events: content chunks, the usage chunk when
/// asked for, then `[DONE]`. A failure after the stream started becomes an
/// error event and the stream ends *without* `[DONE]`, so no client mistakes a
/// truncated answer for a complete one. Nothing is spawned: dropping the
/// response (the client went away) drops the upstream stream with it.
fn encode(
    started: StartedStream,
    request_id: String,
    include_usage: bool,
    audit: Option<Draft>,
) -> impl Stream<Item = Event> + Send {
    let StartedStream { provider, first, rest, .. } = started;
    let (id, model, created) = match &first {
        Some(c) if !c.id.is_empty() => (c.id.clone(), format!("{provider}/{}", c.model), c.created),
        Some(c) => (format!("chatcmpl-{request_id}"), format!("{provider}/{}", c.model), c.created),
        None => (format!("chatcmpl-{request_id}"), provider.clone(), crate::domain::unix_now()),
    };
    let enc =
        Encoder { id, model, created, provider, request_id, include_usage, sent_first: false, usage: None, audit };
    let head: ChunkStream = Box::pin(futures::stream::iter(first.map(Ok)));
    let upstream = head.chain(rest);
    futures::stream::unfold((enc, upstream, false), |(mut enc, mut upstream, over)| async move {
        if over {
            return None;
        }
        loop {
            let waited = std::time::Instant::now();
            let next = upstream.next().await;
            if let Some(draft) = &enc.audit {
                draft.add_upstream(waited.elapsed());
            }
            let events = match next {
                Some(Ok(chunk)) => match enc.chunk_event(&chunk) {
                    Some(ev) => return Some((vec![ev], (enc, upstream, false))),
                    None => continue,
                },
                Some(Err(error)) => vec![enc.error_event(&error)],
                None => enc.closing_events(),
            };
            return Some((events, (enc, upstream, true)));
        }
    })
    .flat_map(futures::stream::iter)
}
