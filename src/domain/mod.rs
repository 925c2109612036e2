//! Domain types: what the service reasons about. Plain data and invariants; this
//! module depends on nothing else in the crate.

use serde_json::{Map, Value};

/// Fields we do not model, carried through untouched (vendor extensions).
pub type Extra = Map<String, Value>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }

    /// Parses the roles the OpenAI API accepts; `developer` is OpenAI's newer name
    /// for a system message.
    pub fn parse(raw: &str) -> Option<Role> {
        match raw {
            "system" | "developer" => Some(Role::System),
            "user" => Some(Role::User),
            "assistant" => Some(Role::Assistant),
            "tool" => Some(Role::Tool),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: Role,
    pub content: String,
    /// e.g. `name`, `tool_calls`, `tool_call_id`, `reasoning_content`.
    pub extra: Extra,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self { role, content: content.into(), extra: Extra::new() }
    }
}

/// A chat request addressed to one provider and model (routing has already happened).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Message>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub max_tokens: Option<u32>,
    pub stop: Vec<String>,
    pub user: Option<String>,
    /// Top-level request fields we do not model; forwarded to the upstream.
    pub extra: Extra,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }
}

/// Normalised finish reason; the raw provider value is kept in `Other`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
    ContentFilter,
    ToolCalls,
    Error,
    Other(String),
}

impl FinishReason {
    /// Maps an OpenAI-style `finish_reason` string.
    pub fn from_openai(raw: &str) -> Self {
        match raw {
            "stop" => Self::Stop,
            "length" => Self::Length,
            "content_filter" => Self::ContentFilter,
            "tool_calls" | "function_call" => Self::ToolCalls,
            "error" | "insufficient_system_resource" => Self::Error,
            other => Self::Other(other.to_owned()),
        }
    }

    /// The value clients see in our OpenAI-shaped responses.
    pub fn as_openai(&self) -> &str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::ContentFilter => "content_filter",
            Self::ToolCalls => "tool_calls",
            Self::Error => "error",
            Self::Other(raw) => raw,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChatResponse {
    pub id: String,
    pub created: u64,
    /// The model the upstream reports having used.
    pub model: String,
    pub content: String,
    pub finish_reason: Option<FinishReason>,
    pub usage: Option<Usage>,
    /// Unmodelled fields of `usage` (`cost`, `prompt_tokens_details`, timings, …).
    pub usage_extra: Extra,
    /// Unmodelled fields of the assistant message (`reasoning`, `tool_calls`, …).
    pub message_extra: Extra,
    /// Unmodelled fields of the choice (`logprobs`, `native_finish_reason`, …).
    pub choice_extra: Extra,
    /// Unmodelled top-level fields (`system_fingerprint`, `x_groq`, …).
    pub extra: Extra,
}

/// One streamed increment. A chunk may carry text, a finish reason, usage, or all three.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChatChunk {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub role: Option<Role>,
    pub content: Option<String>,
    pub finish_reason: Option<FinishReason>,
    pub usage: Option<Usage>,
    pub usage_extra: Extra,
    pub delta_extra: Extra,
    pub choice_extra: Extra,
    pub extra: Extra,
}

/// Seconds since the Unix epoch, for `created` fields.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
