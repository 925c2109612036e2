//! The chat use case: resolve the model, call the provider within the request
//! deadline, record upstream metrics. Streams are started here and their first
//! chunk is awaited before the caller commits to a response, so an upstream that
//! fails before producing anything still yields a proper error status.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::time::Instant;

use super::registry::{Registry, RouteError};
use crate::domain::{ChatChunk, ChatRequest, ChatResponse, Usage};
use crate::providers::{CallContext, ChunkStream, ProviderError};
use crate::telemetry::metrics;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("provider {provider}: {error}")]
    Provider {
        provider: String,
        error: ProviderError,
    },
}

pub struct Completed {
    pub provider: String,
    pub response: ChatResponse,
    pub upstream_latency: Duration,
}

pub struct StartedStream {
    pub provider: String,
    /// The first chunk, already received; `None` if the upstream ended cleanly
    /// without sending one.
    pub first: Option<ChatChunk>,
    pub rest: ChunkStream,
}

pub struct Gateway {
    registry: Registry,
    request_timeout: Duration,
}

impl Gateway {
    pub fn new(registry: Registry, request_timeout: Duration) -> Self {
        Self {
            registry,
            request_timeout,
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// A call context whose deadline is the configured request timeout from now.
    pub fn context(&self, request_id: &str) -> CallContext {
        CallContext::new(request_id, self.request_timeout)
    }

    pub async fn chat(
        &self,
        model: &str,
        mut req: ChatRequest,
        ctx: &CallContext,
    ) -> Result<Completed, ServiceError> {
        let route = self.registry.resolve(model)?;
        req.model = route.model;
        let started = Instant::now();
        let result = route.provider.chat(&req, ctx).await;
        let elapsed = started.elapsed();
        match result {
            Ok(response) => {
                metrics::upstream_call(&route.provider_id, "ok", elapsed);
                if let Some(u) = response.usage {
                    metrics::tokens(&route.provider_id, u.prompt_tokens, u.completion_tokens);
                }
                Ok(Completed {
                    provider: route.provider_id,
                    response,
                    upstream_latency: elapsed,
                })
            }
            Err(error) => {
                metrics::upstream_call(&route.provider_id, error.kind().as_str(), elapsed);
                Err(ServiceError::Provider {
                    provider: route.provider_id,
                    error,
                })
            }
        }
    }

    pub async fn chat_stream(
        &self,
        model: &str,
        mut req: ChatRequest,
        ctx: &CallContext,
    ) -> Result<StartedStream, ServiceError> {
        let route = self.registry.resolve(model)?;
        req.model = route.model;
        let started = Instant::now();
        let fail = |error: ProviderError, provider: String| {
            metrics::upstream_call(&provider, error.kind().as_str(), started.elapsed());
            ServiceError::Provider { provider, error }
        };
        let mut stream = match route.provider.chat_stream(&req, ctx).await {
            Ok(s) => s,
            Err(e) => return Err(fail(e, route.provider_id)),
        };
        let first = match stream.next().await {
            Some(Err(e)) => return Err(fail(e, route.provider_id)),
            Some(Ok(chunk)) => Some(chunk),
            None => None,
        };
        metrics::upstream_first_chunk(&route.provider_id, started.elapsed());
        let mut recorder = Recorder {
            provider: route.provider_id.clone(),
            request_id: ctx.request_id.clone(),
            started,
            usage: None,
            finished: false,
        };
        if let Some(u) = first.as_ref().and_then(|c| c.usage) {
            recorder.usage = Some(u);
        }
        if first.is_none() {
            recorder.finish("ok");
        }
        let rest: ChunkStream = Box::pin(Recorded {
            inner: stream,
            recorder,
        });
        Ok(StartedStream {
            provider: route.provider_id,
            first,
            rest,
        })
    }
}

/// Records the upstream outcome of a stream exactly once: at its end, at its
/// first error, or as `cancelled` when the client goes away first.
struct Recorder {
    provider: String,
    request_id: String,
    started: Instant,
    usage: Option<Usage>,
    finished: bool,
}

impl Recorder {
    fn finish(&mut self, outcome: &'static str) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let elapsed = self.started.elapsed();
        metrics::upstream_call(&self.provider, outcome, elapsed);
        let (input, output) = self
            .usage
            .map(|u| (u.prompt_tokens, u.completion_tokens))
            .unwrap_or_default();
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
        self.finish("cancelled");
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
            Some(Err(e)) => this.recorder.finish(e.kind().as_str()),
            None => this.recorder.finish("ok"),
        }
        Poll::Ready(item)
    }
}
