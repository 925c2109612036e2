//! One adapter for every OpenAI-compatible upstream (Groq, Cerebras, OpenRouter,
//! DeepSeek, and user-defined servers), parameterised by base URL and headers.

mod convert;
mod stream;
mod wire;

use ::http::header::{AUTHORIZATION, HeaderMap};
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

use super::http::{self, BuildError, Call, Transport, base_headers, event_stream};
use super::{CallContext, ChunkStream, Provider, ProviderError};
use crate::config::{MaxTokensField, ProviderConfig, Timeouts};
use crate::domain::{ChatRequest, ChatResponse};

pub struct OpenAiCompat {
    id: String,
    /// Parsed once, not per call.
    endpoint: ::http::Uri,
    headers: HeaderMap,
    key: Option<SecretString>,
    transport: Transport,
    timeouts: Timeouts,
    max_tokens_field: MaxTokensField,
    include_usage: bool,
}

impl OpenAiCompat {
    pub fn new(id: &str, cfg: &ProviderConfig, key: Option<&SecretString>) -> Result<Self, BuildError> {
        let bearer = key.map(|k| (&AUTHORIZATION, format!("Bearer {}", k.expose_secret())));
        Ok(Self {
            id: id.to_owned(),
            endpoint: ::http::Uri::try_from(format!("{}/chat/completions", cfg.base_url.trim_end_matches('/')))
                .map_err(|e| BuildError::Url(e.to_string()))?,
            headers: base_headers(cfg, bearer)?,
            key: key.cloned(),
            transport: Transport::new(&cfg.base_url, &cfg.timeouts)?,
            timeouts: cfg.timeouts,
            max_tokens_field: cfg.max_tokens_field,
            include_usage: cfg.stream_include_usage,
        })
    }

    fn call(&self) -> Call<'_> {
        Call {
            provider: &self.id,
            key: self.key.as_ref(),
            transport: &self.transport,
            uri: &self.endpoint,
            headers: &self.headers,
            timeouts: &self.timeouts,
        }
    }

    async fn send(&self, req: &ChatRequest, ctx: &CallContext, stream: bool) -> Result<http::Response, ProviderError> {
        let body = convert::to_wire(req, stream, self.max_tokens_field, self.include_usage);
        http::send(&self.call(), &body, ctx).await
    }
}

#[async_trait::async_trait]
impl Provider for OpenAiCompat {
    fn id(&self) -> &str {
        &self.id
    }

    async fn chat(&self, req: &ChatRequest, ctx: &CallContext) -> Result<ChatResponse, ProviderError> {
        let started = Instant::now();
        let response = self.send(req, ctx, false).await?;
        let body: wire::Completion = http::json_body(response, ctx, &self.timeouts, started).await?;
        convert::from_wire(body)
    }

    async fn chat_stream(&self, req: &ChatRequest, ctx: &CallContext) -> Result<ChunkStream, ProviderError> {
        let response = self.send(req, ctx, true).await?;
        let events = event_stream(response, self.timeouts.stream_idle, ctx.deadline);
        Ok(super::stream::drive(events, stream::OpenAiTranslator::default()))
    }
}
