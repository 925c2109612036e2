//! Our public OpenAI-compatible contract: request and response DTOs and their
//! conversion to and from domain types. Validation happens here, before any
//! upstream is involved.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::error::ApiError;
use crate::domain::{ChatChunk, ChatRequest, ChatResponse, Extra, Message, Role, Usage};

#[derive(Debug, Deserialize, ToSchema)]
pub struct ChatCompletionRequest {
    /// `provider/model`, a provider id, an alias or an agent id (see `GET /v1/models`).
    #[schema(min_length = 1, example = "groq")]
    pub model: String,
    #[schema(min_items = 1, max_items = 1024)]
    pub messages: Vec<InMessage>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    #[schema(minimum = 0, maximum = 2)]
    pub temperature: Option<f64>,
    #[serde(default)]
    #[schema(exclusive_minimum = 0, maximum = 1)]
    pub top_p: Option<f64>,
    #[serde(default)]
    #[schema(minimum = 1, maximum = 4294967295_u64)]
    pub max_tokens: Option<i64>,
    /// Takes precedence over `max_tokens`.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 4294967295_u64)]
    pub max_completion_tokens: Option<i64>,
    /// Only 1 is supported.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1)]
    pub n: Option<i64>,
    /// At most 4 sequences.
    #[serde(default)]
    pub stop: Option<Stop>,
    #[serde(default)]
    pub user: Option<String>,
    /// Vendor fields (`reasoning_effort`, `safetySettings`, …), forwarded.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct InMessage {
    #[schema(value_type = String, pattern = "^(system|developer|user|assistant|tool)$", example = "user")]
    pub role: String,
    /// Required except on an assistant turn that carries `tool_calls`.
    #[serde(default)]
    pub content: Option<Content>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ContentPart {
    /// Only `text` parts are supported.
    #[serde(rename = "type")]
    #[schema(pattern = "^text$")]
    pub kind: String,
    /// Required.
    #[serde(default)]
    pub text: Option<String>,
}

pub const MAX_MESSAGES: usize = 1024;

impl ChatCompletionRequest {
    pub fn wants_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    pub fn wants_usage_chunk(&self) -> bool {
        self.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false)
    }

    /// Validates and converts. The domain request's `model` is left empty:
    /// routing decides the provider's model id.
    pub fn into_domain(self) -> Result<ChatRequest, ApiError> {
        if self.model.trim().is_empty() {
            return Err(ApiError::invalid("`model` must not be empty", "model"));
        }
        if self.messages.is_empty() {
            return Err(ApiError::invalid("`messages` must contain at least one message", "messages"));
        }
        if self.messages.len() > MAX_MESSAGES {
            return Err(ApiError::invalid(format!("at most {MAX_MESSAGES} messages"), "messages"));
        }
        if let Some(t) = self.temperature
            && !(0.0..=2.0).contains(&t)
        {
            return Err(ApiError::invalid("`temperature` must be between 0 and 2", "temperature"));
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(ApiError::invalid("`top_p` must be greater than 0 and at most 1", "top_p"));
        }
        if let Some(n) = self.n
            && n != 1
        {
            return Err(ApiError::invalid("only `n: 1` is supported", "n"));
        }
        let max_tokens = match (self.max_completion_tokens, self.max_tokens) {
            (Some(v), _) => Some(("max_completion_tokens", v)),
            (None, Some(v)) => Some(("max_tokens", v)),
            (None, None) => None,
        };
        let max_tokens = match max_tokens {
            Some((field, v)) => match u32::try_from(v) {
                Ok(v) if v >= 1 => Some(v),
                _ => {
                    return Err(ApiError::invalid(format!("`{field}` must be at least 1"), field));
                }
            },
            None => None,
        };
        let stop = match self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s],
            Some(Stop::Many(v)) => v,
        };
        if stop.len() > 4 {
            return Err(ApiError::invalid("at most 4 stop sequences", "stop"));
        }
        let messages =
            self.messages.into_iter().enumerate().map(|(i, m)| m.into_domain(i)).collect::<Result<Vec<_>, _>>()?;
        Ok(ChatRequest {
            model: String::new(),
            messages,
            temperature: self.temperature,
            top_p: self.top_p,
            max_tokens,
            stop,
            user: self.user,
            extra: self.extra,
        })
    }
}

impl InMessage {
    fn into_domain(self, index: usize) -> Result<Message, ApiError> {
        let role = Role::parse(&self.role).ok_or_else(|| {
            ApiError::invalid(
                format!(
                    "messages[{index}].role `{}` is not one of system, developer, user, assistant, tool",
                    self.role
                ),
                &format!("messages[{index}].role"),
            )
        })?;
        let content = match self.content {
            Some(Content::Text(text)) => text,
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for part in parts {
                    match (part.kind.as_str(), part.text) {
                        ("text", Some(t)) => text.push_str(&t),
                        (kind, _) => {
                            return Err(ApiError::invalid(
                                format!("messages[{index}]: content part type `{kind}` is not supported (text only)"),
                                &format!("messages[{index}].content"),
                            ));
                        }
                    }
                }
                text
            }
            // Assistant turns that only call tools carry no content.
            None if role == Role::Assistant && self.extra.contains_key("tool_calls") => String::new(),
            None => {
                return Err(ApiError::invalid(
                    format!("messages[{index}].content is required"),
                    &format!("messages[{index}].content"),
                ));
            }
        };
        Ok(Message { role, content, extra: self.extra })
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChatCompletion<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: [Choice<'a>; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<OutUsage<'a>>,
    /// Vendor fields passed through unchanged.
    #[serde(flatten)]
    #[schema(value_type = Map<String, Value>)]
    pub extra: &'a Extra,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Choice<'a> {
    pub index: u32,
    pub message: OutMessage<'a>,
    pub finish_reason: Option<&'a str>,
    /// Vendor fields passed through unchanged.
    #[serde(flatten)]
    #[schema(value_type = Map<String, Value>)]
    pub extra: &'a Extra,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OutMessage<'a> {
    pub role: &'static str,
    pub content: &'a str,
    /// Vendor fields passed through unchanged.
    #[serde(flatten)]
    #[schema(value_type = Map<String, Value>)]
    pub extra: &'a Extra,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OutUsage<'a> {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// Vendor fields passed through unchanged.
    #[serde(flatten)]
    #[schema(value_type = Map<String, Value>)]
    pub extra: &'a Extra,
}

impl<'a> OutUsage<'a> {
    pub fn new(u: Usage, extra: &'a Extra) -> Self {
        Self { prompt_tokens: u.prompt_tokens, completion_tokens: u.completion_tokens, total_tokens: u.total(), extra }
    }
}

/// `model` is what clients see: `provider/upstream-model`.
pub fn completion<'a>(r: &'a ChatResponse, id: &'a str, model: &'a str) -> ChatCompletion<'a> {
    ChatCompletion {
        id,
        object: "chat.completion",
        created: r.created,
        model,
        choices: [Choice {
            index: 0,
            message: OutMessage { role: "assistant", content: &r.content, extra: &r.message_extra },
            finish_reason: r.finish_reason.as_ref().map(|f| f.as_openai()),
            extra: &r.choice_extra,
        }],
        usage: r.usage.map(|u| OutUsage::new(u, &r.usage_extra)),
        extra: &r.extra,
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CompletionChunk<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: Vec<ChunkChoice<'a>>,
    pub usage: Option<OutUsage<'a>>,
    /// Vendor fields passed through unchanged.
    #[serde(flatten)]
    #[schema(value_type = Map<String, Value>)]
    pub extra: &'a Extra,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChunkChoice<'a> {
    pub index: u32,
    pub delta: Delta<'a>,
    pub finish_reason: Option<&'a str>,
    /// Vendor fields passed through unchanged.
    #[serde(flatten)]
    #[schema(value_type = Map<String, Value>)]
    pub extra: &'a Extra,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<&'a str>,
    /// Vendor fields passed through unchanged.
    #[serde(flatten)]
    #[schema(value_type = Map<String, Value>)]
    pub extra: &'a Extra,
}

static EMPTY: std::sync::LazyLock<Extra> = std::sync::LazyLock::new(Extra::new);

/// A content chunk (one choice). `first` forces `role: assistant`, which some
/// upstreams (Gemini) never send but OpenAI clients expect on the first delta.
pub fn content_chunk<'a>(c: &'a ChatChunk, id: &'a str, model: &'a str, first: bool) -> CompletionChunk<'a> {
    let role = if first { Some("assistant") } else { c.role.map(Role::as_str) };
    CompletionChunk {
        id,
        object: "chat.completion.chunk",
        created: c.created,
        model,
        choices: vec![ChunkChoice {
            index: 0,
            delta: Delta { role, content: c.content.as_deref(), extra: &c.delta_extra },
            finish_reason: c.finish_reason.as_ref().map(|f| f.as_openai()),
            extra: &c.choice_extra,
        }],
        usage: None,
        extra: &c.extra,
    }
}

/// The usage chunk sent before `[DONE]` when the client asked for it.
pub fn usage_chunk<'a>(usage: Usage, id: &'a str, model: &'a str, created: u64) -> CompletionChunk<'a> {
    CompletionChunk {
        id,
        object: "chat.completion.chunk",
        created,
        model,
        choices: Vec::new(),
        usage: Some(OutUsage::new(usage, &EMPTY)),
        extra: &EMPTY,
    }
}

/// `/v1/models` entry.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelEntry {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelEntry>,
}
