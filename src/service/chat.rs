//! The chat use cases: resolve what the client asked for (a provider model, an
//! alias or an agent) into a provider chain, and run it through the fallback
//! runner, plain or streamed. Streams are started here and their first chunk
//! awaited inside the runner, so a provider that fails before producing
//! anything is simply the next link's turn, invisibly to the client.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::time::Instant;

use super::fallback::{Attempt, Failure, Runner, Success};
use super::masking;
use super::registry::{Registry, RouteError};
use crate::agents::{Agent, ChainLink, PromptSettings, Roster, system_prompt};
use crate::conversations::{ConversationStore, StoreError};
use crate::domain::{ChatChunk, ChatRequest, ChatResponse, Message, Role, Usage};
use crate::limits::{self, GatePass, Limits, Refusal, Reservation};
use crate::providers::{CallContext, ChunkStream, ProviderError};
use crate::resilience::{ProviderHealth, RetryPolicy};
use crate::security::PiiPolicy;
use crate::telemetry::metrics;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("unknown agent `{id}`")]
    UnknownAgent { id: String, valid: Vec<String> },
    #[error(transparent)]
    Failed(#[from] Failure),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("admission refused: {0:?}")]
    Limited(Refusal),
}

/// What a request runs against: a chain of provider links, and the agent
/// whose persona applies, if any.
#[derive(Debug, Clone)]
pub struct Target {
    pub chain: Vec<ChainLink>,
    pub agent: Option<Arc<Agent>>,
}

impl Target {
    pub fn agent_id(&self) -> Option<&str> {
        self.agent.as_deref().map(|a| a.id.as_str())
    }
}

pub struct Completed {
    pub provider: String,
    pub model: String,
    pub response: ChatResponse,
    pub attempts: Vec<Attempt>,
    pub fallback_used: bool,
    /// Time spent waiting out Retry-After headers.
    pub rate_limit_wait: Duration,
}

pub struct StartedStream {
    pub provider: String,
    pub model: String,
    /// The first chunk, already received; `None` if the upstream ended cleanly
    /// without sending one.
    pub first: Option<ChatChunk>,
    pub rest: ChunkStream,
    pub attempts: Vec<Attempt>,
    pub fallback_used: bool,
    /// Time spent queued for a slot or waiting out Retry-After headers.
    pub rate_limit_wait: Duration,
}

pub struct Gateway {
    registry: Registry,
    roster: Roster,
    prompt: PromptSettings,
    policy: RetryPolicy,
    request_timeout: Duration,
    stream_timeout: Duration,
    conversations: Arc<dyn ConversationStore>,
    limits: Arc<Limits>,
    pii: Arc<PiiPolicy>,
}

pub struct GatewayParts {
    pub registry: Registry,
    pub roster: Roster,
    pub prompt: PromptSettings,
    pub policy: RetryPolicy,
    pub request_timeout: Duration,
    pub stream_timeout: Duration,
    pub conversations: Arc<dyn ConversationStore>,
    pub limits: Arc<Limits>,
    /// Outbound masking (`pii.mask`) applies inside `chat` and `chat_stream`.
    pub pii: Arc<PiiPolicy>,
}

impl Gateway {
    pub fn new(p: GatewayParts) -> Self {
        Self {
            registry: p.registry,
            roster: p.roster,
            prompt: p.prompt,
            policy: p.policy,
            request_timeout: p.request_timeout,
            stream_timeout: p.stream_timeout,
            conversations: p.conversations,
            limits: p.limits,
            pii: p.pii,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn roster(&self) -> &Roster {
        &self.roster
    }

    pub fn conversations(&self) -> &dyn ConversationStore {
        self.conversations.as_ref()
    }

    /// A context whose deadline is the request timeout (or, for streams, the
    /// stream timeout) from now.
    pub fn context(&self, request_id: &str, stream: bool) -> CallContext {
        CallContext::new(request_id, if stream { self.stream_timeout } else { self.request_timeout })
    }

    pub fn agent(&self, id: &str) -> Result<Arc<Agent>, ServiceError> {
        self.roster
            .get(id)
            .cloned()
            .ok_or_else(|| ServiceError::UnknownAgent { id: id.to_owned(), valid: self.roster.ids() })
    }

    /// `analyst` or `agent/analyst` → the agent; `provider/model`, a provider
    /// id or an alias → a one-link chain.
    pub fn resolve(&self, model: &str) -> Result<Target, ServiceError> {
        if let Some(id) = model.strip_prefix("agent/") {
            let agent = self.agent(id)?;
            return Ok(Target { chain: agent.chain.clone(), agent: Some(agent) });
        }
        if let Some(agent) = self.roster.get(model) {
            return Ok(Target { chain: agent.chain.clone(), agent: Some(agent.clone()) });
        }
        let route = self.registry.resolve(model)?;
        Ok(Target { chain: vec![ChainLink { provider: route.provider_id, model: route.model }], agent: None })
    }

    /// Puts the agent's persona first and fills sampling defaults the client left out.
    pub fn apply_persona(&self, agent: &Agent, req: &mut ChatRequest) {
        req.messages.insert(0, Message::new(Role::System, system_prompt(agent, &self.prompt)));
        req.temperature = req.temperature.or(Some(agent.temperature));
        req.max_tokens = req.max_tokens.or(Some(agent.max_tokens));
    }

    fn runner<'a>(&'a self, ctx: &'a CallContext, tokens: u64) -> Runner<'a> {
        Runner {
            registry: &self.registry,
            policy: self.policy,
            deadline: ctx.deadline,
            limits: Some(&self.limits),
            tokens,
            exhausted: Some(ctx),
        }
    }

    /// Admission before any provider is tried: a slot of the global concurrency
    /// gate (waiting in its bounded queue), then the client's token budget.
    async fn admit(&self, req: &ChatRequest, ctx: &CallContext) -> Result<Admitted, ServiceError> {
        let prompt_bytes = req.messages.iter().map(|m| m.content.len()).sum();
        let tokens = limits::estimate_tokens(prompt_bytes, req.max_tokens);
        // The slot first: a request cancelled while queued has charged nothing.
        let pass = self.limits.enter().await.map_err(ServiceError::Limited)?;
        let client_tokens = match &ctx.client {
            Some(client) => {
                self.limits.admit_client_tokens(client, tokens, ctx.client_tpm).await.map_err(ServiceError::Limited)?
            }
            None => None,
        };
        Ok(Admitted { waited: pass.waited, _pass: pass, tokens, reservations: client_tokens.into_iter().collect() })
    }

    pub async fn chat(
        &self,
        target: &Target,
        mut req: ChatRequest,
        ctx: &CallContext,
    ) -> Result<Completed, ServiceError> {
        let started = Instant::now();
        let mask = masking::mask_request(&self.pii, target.agent_id(), &mut req);
        let mut admitted = self.admit(&req, ctx).await?;
        let runner = self.runner(ctx, admitted.tokens);
        let outcome = runner
            .run(&target.chain, |call| {
                let mut req = req.clone();
                req.model = call.model.clone();
                async move { call.provider.chat(&req, ctx).await }
            })
            .await;
        self.record(target, &outcome, started);
        let mut done = outcome.inspect_err(|_| admitted.settle(Some(0)))?;
        admitted.reservations.extend(done.reservation.take());
        let used = done.value.usage.map(|u| u.total());
        admitted.settle(used);
        if let Some(u) = done.value.usage {
            metrics::tokens(&done.provider, u.prompt_tokens, u.completion_tokens);
        }
        if let Some(mask) = mask {
            done.value.content = mask.restore(&done.value.content).into_owned();
        }
        Ok(Completed {
            fallback_used: done.fallback_used(&target.chain),
            rate_limit_wait: done.rate_limit_wait + admitted.waited,
            provider: done.provider,
            model: done.model,
            response: done.value,
            attempts: done.attempts,
        })
    }

    pub async fn chat_stream(
        &self,
        target: &Target,
        mut req: ChatRequest,
        ctx: &CallContext,
    ) -> Result<StartedStream, ServiceError> {
        let started_at = Instant::now();
        let mask = masking::mask_request(&self.pii, target.agent_id(), &mut req);
        let mut admitted = self.admit(&req, ctx).await?;
        let runner = self.runner(ctx, admitted.tokens);
        let outcome = runner
            .run(&target.chain, |call| {
                let mut req = req.clone();
                req.model = call.model.clone();
                async move {
                    let started = Instant::now();
                    let mut stream = call.provider.chat_stream(&req, ctx).await?;
                    // The first chunk is part of the attempt: a failure before it
                    // reaches the client still falls back.
                    let first = match stream.next().await {
                        Some(Err(e)) => return Err(e),
                        Some(Ok(chunk)) => Some(chunk),
                        None => None,
                    };
                    metrics::upstream_first_chunk(&call.provider_id, started.elapsed());
                    Ok((first, stream, started))
                }
            })
            .await;
        // For streams the agent latency is the time to the first chunk.
        self.record(target, &outcome, started_at);
        let mut done = outcome.inspect_err(|_| admitted.settle(Some(0)))?;
        admitted.reservations.extend(done.reservation.take());
        let fallback_used = done.fallback_used(&target.chain);
        let rate_limit_wait = done.rate_limit_wait + admitted.waited;
        let (mut first, stream, started) = done.value;
        let health = self.registry.get(&done.provider).map(|e| e.health.clone());
        let mut recorder = Recorder {
            provider: done.provider.clone(),
            request_id: ctx.request_id.clone(),
            started,
            usage: first.as_ref().and_then(|c| c.usage),
            finished: false,
            health,
            admitted: Some(admitted),
        };
        if first.is_none() {
            recorder.finish(None);
        }
        let mut rest: ChunkStream = Box::pin(Recorded { inner: stream, recorder });
        if let Some(mask) = mask {
            rest = masking::unmask_stream(mask, &mut first, rest);
        }
        Ok(StartedStream {
            provider: done.provider,
            model: done.model,
            first,
            rest,
            attempts: done.attempts,
            fallback_used,
            rate_limit_wait,
        })
    }
}

/// What admission granted a request: a concurrency slot (held until the
/// upstream work ends) and token reservations to settle with real usage.
struct Admitted {
    /// Dropped with this struct: the concurrency slot is freed then.
    _pass: GatePass,
    waited: Duration,
    tokens: u64,
    reservations: Vec<Reservation>,
}

impl Admitted {
    /// Settles every reservation with `used` tokens (`None`: usage unknown,
    /// keep the estimate). Runs in the background: settlement must happen
    /// even when the client has gone.
    fn settle(&mut self, used: Option<u64>) {
        let reservations = std::mem::take(&mut self.reservations);
        let Some(used) = used else { return };
        if reservations.is_empty() {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                for r in reservations {
                    r.settle(used).await;
                }
            });
        }
    }
}

impl Gateway {
    /// Upstream call metrics for every attempt that reached a provider, and
    /// the agent's request metric.
    fn record<T>(&self, target: &Target, outcome: &Result<Success<T>, Failure>, started: Instant) {
        use super::fallback::Outcome;
        let attempts = outcome.as_ref().map(|s| &s.attempts[..]).unwrap_or_else(|f| f.attempts());
        for a in attempts {
            let label = match &a.outcome {
                Outcome::Ok => "ok",
                Outcome::Failed { kind, .. } => kind.as_str(),
                Outcome::Skipped(_) => continue,
            };
            if self.registry.get(&a.provider).is_some() {
                metrics::upstream_call(&a.provider, label, a.latency);
            }
        }
        if let Some(agent) = &target.agent {
            metrics::agent_request(&agent.id, if outcome.is_ok() { "ok" } else { "error" }, started.elapsed());
        }
    }
}

/// Records the end of a stream exactly once: clean end, error, or
/// `cancelled` when the client went away first. A failure after the first
/// chunk also counts against the provider's health.
struct Recorder {
    provider: String,
    request_id: String,
    started: Instant,
    usage: Option<Usage>,
    finished: bool,
    health: Option<Arc<ProviderHealth>>,
    /// Released (slot) and settled (tokens) when the stream ends.
    admitted: Option<Admitted>,
}

impl Recorder {
    fn finish(&mut self, error: Option<&ProviderError>) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        if let Some(mut admitted) = self.admitted.take() {
            admitted.settle(self.usage.map(|u| u.total()));
        }
        let outcome = error.map(|e| e.kind().as_str()).unwrap_or("ok");
        let elapsed = self.started.elapsed();
        if let (Some(health), Some(e)) = (&self.health, error) {
            health.record(elapsed, Some(e.kind().as_str()));
            metrics::breaker_transition(
                &self.provider,
                health.breaker.record(crate::resilience::Permit::Allowed, false),
            );
        }
        let (input, output) = self.usage.map(|u| (u.prompt_tokens, u.completion_tokens)).unwrap_or_default();
        if self.usage.is_some() {
            metrics::tokens(&self.provider, input, output);
        }
        tracing::info!(
            request_id = %self.request_id,
            provider = %self.provider,
            outcome,
            tokens_input = input,
            tokens_output = output,
            duration_ms = elapsed.as_millis() as u64,
            "stream finished"
        );
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if !self.finished {
            self.finished = true;
            if let Some(mut admitted) = self.admitted.take() {
                admitted.settle(self.usage.map(|u| u.total()));
            }
            tracing::info!(request_id = %self.request_id, provider = %self.provider, outcome = "cancelled", "stream finished");
        }
    }
}

struct Recorded {
    inner: ChunkStream,
    recorder: Recorder,
}

impl Stream for Recorded {
    type Item = Result<ChatChunk, ProviderError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.recorder.finished {
            return Poll::Ready(None);
        }
        let item = std::task::ready!(this.inner.poll_next_unpin(cx));
        match &item {
            Some(Ok(chunk)) => {
                if let Some(u) = chunk.usage {
                    this.recorder.usage = Some(u);
                }
            }
            Some(Err(e)) => this.recorder.finish(Some(e)),
            None => this.recorder.finish(None),
        }
        Poll::Ready(item)
    }
}
