//! One adapter for every OpenAI-compatible upstream (Groq, Cerebras, OpenRouter,
//! DeepSeek, and user-defined servers), parameterised by base URL and headers.

mod convert;
mod stream;
mod wire;

use reqwest::header::{AUTHORIZATION, HeaderMap};
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

use super::http::{self, BuildError, base_headers, event_stream};
use super::{CallContext, ChunkStream, Provider, ProviderError};
use crate::config::{MaxTokensField, ProviderConfig, Timeouts};
use crate::domain::{ChatRequest, ChatResponse};

pub struct OpenAiCompat {
    id: String,
    /// Parsed once: reqwest would otherwise re-parse (and IDNA-check) a string URL per call.
    endpoint: reqwest::Url,
    headers: HeaderMap,
    key: Option<SecretString>,
    client: reqwest::Client,
    timeouts: Timeouts,
    max_tokens_field: MaxTokensField,
    include_usage: bool,
}

impl OpenAiCompat {
    pub fn new(id: &str, cfg: &ProviderConfig, key: Option<&SecretString>) -> Result<Self, BuildError> {
        let bearer = key.map(|k| (&AUTHORIZATION, format!("Bearer {}", k.expose_secret())));
        Ok(Self {
            id: id.to_owned(),
            endpoint: reqwest::Url::parse(&format!("{}/chat/completions", cfg.base_url.trim_end_matches('/')))
                .map_err(|e| BuildError::Url(e.to_string()))?,
            headers: base_headers(cfg, bearer)?,
            key: key.cloned(),
            client: http::build_client(&cfg.timeouts)?,
            timeouts: cfg.timeouts,
            max_tokens_field: cfg.max_tokens_field,
            include_usage: cfg.stream_include_usage,
        })
    }

    fn request(&self, req: &ChatRequest, stream: bool) -> reqwest::RequestBuilder {
        let body = convert::to_wire(req, stream, self.max_tokens_field, self.include_usage);
        self.client.post(self.endpoint.clone()).headers(self.headers.clone()).json(&body)
    }
}

#[async_trait::async_trait]
impl Provider for OpenAiCompat {
    fn id(&self) -> &str {
        &self.id
    }

    async fn chat(&self, req: &ChatRequest, ctx: &CallContext) -> Result<ChatResponse, ProviderError> {
        let started = Instant::now();
        let response = http::send(&self.id, self.key.as_ref(), self.request(req, false), ctx, &self.timeouts).await?;
        let body: wire::Completion = http::json_body(response, ctx, &self.timeouts, started).await?;
        convert::from_wire(body)
    }

    async fn chat_stream(&self, req: &ChatRequest, ctx: &CallContext) -> Result<ChunkStream, ProviderError> {
        let response = http::send(&self.id, self.key.as_ref(), self.request(req, true), ctx, &self.timeouts).await?;
        let events = event_stream(response, self.timeouts.stream_idle, ctx.deadline);
        Ok(super::stream::drive(events, stream::OpenAiTranslator::default()))
    }
}
