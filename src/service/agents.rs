//! The agent conversation use case behind `POST /v1/agents/{agent}` and
//! `POST /v1/chat`: persona + history + prompt through the agent's chain; the
//! turn is stored only when the call succeeded.

use std::sync::Arc;

use serde_json::Value;
use tokio::time::Instant;

use super::chat::{Gateway, ServiceError, Target};
use super::fallback::Attempt;
use crate::agents::Agent;
use crate::conversations::ConvKey;
use crate::domain::{ChatRequest, Message, Role, Usage};
use crate::providers::CallContext;

#[derive(Debug, Clone)]
pub struct Ask {
    pub agent: String,
    pub prompt: String,
    pub conversation_id: Option<String>,
    pub user_id: Option<String>,
    /// The API key's id when keys are on: conversations are kept per key, so
    /// two keys never share one, whatever user and conversation ids their
    /// clients choose.
    pub owner: Option<String>,
    pub metadata: Option<Value>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f64>,
}

pub struct Answer {
    pub response: String,
    pub provider: String,
    pub model: String,
    pub agent: Arc<Agent>,
    pub conversation_id: String,
    pub attempts: Vec<Attempt>,
    pub fallback_used: bool,
    pub turns: u64,
    pub usage: Usage,
    pub latency_ms: u64,
    pub rate_limit_wait_ms: u64,
}

impl Gateway {
    pub async fn ask(&self, ask: Ask, ctx: &CallContext) -> Result<Answer, ServiceError> {
        let started = Instant::now();
        let agent = self.agent(&ask.agent)?;
        let who = ask.user_id.as_deref().unwrap_or("anon");
        let key = ConvKey {
            // Key ids and user ids have no `:`: `key:user` never equals another scope.
            scope: match &ask.owner {
                Some(owner) => format!("{owner}:{who}"),
                None => who.to_owned(),
            },
            id: ask.conversation_id.clone().unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
        };
        let history = match &ask.conversation_id {
            Some(_) => self.conversations().load(&key).await?,
            None => Default::default(),
        };
        let user = Message::new(Role::User, ask.prompt.clone());
        let mut messages = history.messages;
        messages.push(user.clone());
        let mut req = ChatRequest {
            messages,
            temperature: ask.temperature,
            max_tokens: ask.max_tokens,
            user: ask.user_id.clone(),
            ..ChatRequest::default()
        };
        self.apply_persona(&agent, &mut req);
        let target = Target { chain: agent.chain.clone(), agent: Some(agent.clone()) };
        let done = self.chat(&target, req, ctx).await?;
        let elapsed = started.elapsed();

        let reply = Message::new(Role::Assistant, done.response.content.clone());
        let turns = match self.conversations().append(&key, &user, &reply).await {
            Ok(turns) => turns,
            Err(e) => {
                // The answer exists; losing its memory is logged, not fatal.
                tracing::error!(error = %e, conversation = %key.id, "conversation turn not stored");
                history.turns + 1
            }
        };
        Ok(Answer {
            response: done.response.content,
            provider: done.provider,
            model: done.model,
            agent,
            conversation_id: key.id,
            attempts: done.attempts,
            fallback_used: done.fallback_used,
            turns,
            usage: done.response.usage.unwrap_or_default(),
            rate_limit_wait_ms: done.rate_limit_wait.as_millis() as u64,
            latency_ms: elapsed.as_millis() as u64,
        })
    }
}
