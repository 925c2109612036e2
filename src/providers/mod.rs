//! Provider adapters behind one small, object-safe trait. `ProviderError` is the
//! only thing the fallback logic needs to know about an upstream failure.
//! Layout: `openai_compat/` and `gemini/` each as {mod, wire, convert, stream};
//! `sse` and `http` are shared plumbing. Adapters never import each other.

pub mod error;
pub mod gemini;
pub mod http;
pub mod openai_compat;
pub mod sse;
pub mod stream;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio::time::Instant;

use crate::domain::{ChatChunk, ChatRequest, ChatResponse};
pub use error::{Disposition, ErrorKind, ProviderError};

/// A stream of chunks. The first `Err` ends it; nothing follows an error.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<ChatChunk, ProviderError>> + Send>>;

/// Per-call facts the adapter must honour.
#[derive(Debug, Clone)]
pub struct CallContext {
    pub request_id: String,
    /// The overall request deadline; an adapter never waits past it.
    pub deadline: Instant,
    /// Who is asking (API key id or client address), for per-client budgets.
    pub client: Option<String>,
    /// That client's own token budget (an API key's `tpm`).
    pub client_tpm: Option<u64>,
    /// Set by an adapter when a successful response says the provider's own
    /// budget is spent (`x-ratelimit-remaining-*: 0`): how long until it resets.
    pub exhausted: Arc<std::sync::Mutex<Option<Duration>>>,
}

impl CallContext {
    pub fn new(request_id: impl Into<String>, budget: Duration) -> Self {
        Self {
            request_id: request_id.into(),
            deadline: Instant::now() + budget,
            client: None,
            client_tpm: None,
            exhausted: Arc::default(),
        }
    }

    /// Takes what the last call reported about the provider's budget.
    pub fn take_exhausted(&self) -> Option<Duration> {
        self.exhausted.lock().map(|mut g| g.take()).unwrap_or(None)
    }

    pub fn with_client(mut self, client: Option<(String, Option<u64>)>) -> Self {
        let (client, tpm) = client.unzip();
        self.client = client;
        self.client_tpm = tpm.flatten();
        self
    }
}

#[async_trait::async_trait]
pub trait Provider: Send + Sync {
    /// Stable id (`groq`, `gemini`, a user-defined id).
    fn id(&self) -> &str;

    async fn chat(&self, req: &ChatRequest, ctx: &CallContext) -> Result<ChatResponse, ProviderError>;

    /// Resolves once response headers arrived with a success status, so errors
    /// before the first chunk come back here, where fallback is still possible.
    async fn chat_stream(&self, req: &ChatRequest, ctx: &CallContext) -> Result<ChunkStream, ProviderError>;
}

pub type DynProvider = Arc<dyn Provider>;
