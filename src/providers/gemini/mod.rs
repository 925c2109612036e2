//! Native Gemini adapter: `generateContent` and `streamGenerateContent?alt=sse`,
//! key in the `x-goog-api-key` header (never in the URL, so it stays out of logs).

mod convert;
mod stream;
mod wire;

use ::http::header::{HeaderMap, HeaderName};
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

use super::http::{self, BuildError, Call, Transport, base_headers, event_stream};
use super::{CallContext, ChunkStream, Provider, ProviderError};
use crate::config::{ProviderConfig, Timeouts};
use crate::domain::{ChatRequest, ChatResponse};

static API_KEY_HEADER: HeaderName = HeaderName::from_static("x-goog-api-key");

pub struct Gemini {
    id: String,
    base: String,
    headers: HeaderMap,
    key: Option<SecretString>,
    transport: Transport,
    timeouts: Timeouts,
}

/// Gemini puts the model in the URL path; anything but a plain id is refused
/// before a request is built.
fn model_path(model: &str) -> Result<&str, ProviderError> {
    let model = model.strip_prefix("models/").unwrap_or(model);
    let ok = !model.is_empty()
        && model.len() <= 128
        && model.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if ok { Ok(model) } else { Err(ProviderError::Rejected { status: 400, code: Some("invalid_model".into()) }) }
}

impl Gemini {
    pub fn new(id: &str, cfg: &ProviderConfig, key: Option<&SecretString>) -> Result<Self, BuildError> {
        let header = key.map(|k| (&API_KEY_HEADER, k.expose_secret().to_owned()));
        Ok(Self {
            id: id.to_owned(),
            key: key.cloned(),
            base: cfg.base_url.trim_end_matches('/').to_owned(),
            headers: base_headers(cfg, header)?,
            transport: Transport::new(&cfg.base_url, &cfg.timeouts)?,
            timeouts: cfg.timeouts,
        })
    }

    async fn send(&self, req: &ChatRequest, ctx: &CallContext, stream: bool) -> Result<http::Response, ProviderError> {
        let model = model_path(&req.model)?;
        let url = if stream {
            format!("{}/models/{model}:streamGenerateContent?alt=sse", self.base)
        } else {
            format!("{}/models/{model}:generateContent", self.base)
        };
        // `model_path` admits only characters that are valid in a path.
        let uri = ::http::Uri::try_from(url)
            .map_err(|_| ProviderError::Rejected { status: 400, code: Some("invalid_model".into()) })?;
        let call = Call {
            provider: &self.id,
            key: self.key.as_ref(),
            transport: &self.transport,
            uri: &uri,
            headers: &self.headers,
            timeouts: &self.timeouts,
        };
        http::send(&call, &convert::to_wire(req), ctx).await
    }
}

#[async_trait::async_trait]
impl Provider for Gemini {
    fn id(&self) -> &str {
        &self.id
    }

    async fn chat(&self, req: &ChatRequest, ctx: &CallContext) -> Result<ChatResponse, ProviderError> {
        let started = Instant::now();
        let response = self.send(req, ctx, false).await?;
        let body: wire::Response = http::json_body(response, ctx, &self.timeouts, started).await?;
        Ok(convert::from_wire(body, &req.model))
    }

    async fn chat_stream(&self, req: &ChatRequest, ctx: &CallContext) -> Result<ChunkStream, ProviderError> {
        let response = self.send(req, ctx, true).await?;
        let events = event_stream(response, self.timeouts.stream_idle, ctx.deadline);
        let translator = stream::GeminiTranslator { model: req.model.clone(), finished: false, usage: None };
        Ok(super::stream::drive(events, translator))
    }
}
