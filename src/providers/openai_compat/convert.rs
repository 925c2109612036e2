//! Domain ⇄ OpenAI wire conversions.

use serde_json::Value;

use super::wire;
use crate::config::MaxTokensField;
use crate::domain::{ChatChunk, ChatRequest, ChatResponse, Extra, FinishReason, Role, Usage, unix_now};

pub fn to_wire<'a>(
    req: &'a ChatRequest,
    stream: bool,
    field: MaxTokensField,
    include_usage: bool,
) -> wire::Request<'a> {
    let (max_tokens, max_completion_tokens) = match field {
        MaxTokensField::MaxTokens => (req.max_tokens, None),
        MaxTokensField::MaxCompletionTokens => (None, req.max_tokens),
    };
    wire::Request {
        model: &req.model,
        messages: req
            .messages
            .iter()
            .map(|m| wire::RequestMessage { role: m.role.as_str(), content: &m.content, extra: &m.extra })
            .collect(),
        temperature: req.temperature,
        top_p: req.top_p,
        max_tokens,
        max_completion_tokens,
        stop: &req.stop,
        stream,
        stream_options: (stream && include_usage).then_some(wire::StreamOptions { include_usage: true }),
        user: req.user.as_deref(),
        extra: &req.extra,
    }
}

fn usage(u: wire::WireUsage) -> (Usage, Extra) {
    (Usage { prompt_tokens: u.prompt_tokens, completion_tokens: u.completion_tokens }, u.extra)
}

/// A 200 body can still carry a failure: a top-level `error`, or (OpenRouter)
/// a choice with its own `error` / `finish_reason: "error"`. Those become
/// errors, so upstream error text never reaches a client as an answer.
pub fn from_wire(mut c: wire::Completion) -> Result<ChatResponse, crate::providers::ProviderError> {
    let choice_error = c.choices.first().is_some_and(|ch| {
        ch.extra.contains_key("error")
            || ch.finish_reason.as_deref().map(FinishReason::from_openai) == Some(FinishReason::Error)
    });
    if let Some(error) = c.extra.remove("error").filter(|e| !e.is_null()) {
        return Err(crate::providers::ProviderError::Interrupted(describe_stream_error(&error)));
    }
    if choice_error {
        return Err(crate::providers::ProviderError::Interrupted("upstream finished with an error".into()));
    }
    Ok(complete(c))
}

fn complete(c: wire::Completion) -> ChatResponse {
    let (content, message_extra, finish_reason, choice_extra) = match c.choices.into_iter().next() {
        Some(choice) => {
            let (content, message_extra) = match choice.message {
                Some(m) => (m.content.unwrap_or_default(), m.extra),
                None => (String::new(), Extra::new()),
            };
            (content, message_extra, choice.finish_reason.as_deref().map(FinishReason::from_openai), choice.extra)
        }
        None => (String::new(), Extra::new(), None, Extra::new()),
    };
    let (usage, usage_extra) = match c.usage.map(usage) {
        Some((u, e)) => (Some(u), e),
        None => (None, Extra::new()),
    };
    ChatResponse {
        id: c.id,
        created: c.created.unwrap_or_else(unix_now),
        model: c.model,
        content,
        finish_reason,
        usage,
        usage_extra,
        message_extra,
        choice_extra,
        extra: c.extra,
    }
}

/// One stream chunk. Usage comes from `usage`, or else Groq's `x_groq.usage`.
pub fn chunk_from_wire(c: wire::Chunk) -> ChatChunk {
    let groq_usage = c
        .extra
        .get("x_groq")
        .and_then(|x| x.get("usage"))
        .and_then(|u| serde_json::from_value::<wire::WireUsage>(u.clone()).ok());
    let (usage, usage_extra) = match c.usage.or(groq_usage).map(usage) {
        Some((u, e)) => (Some(u), e),
        None => (None, Extra::new()),
    };
    let mut chunk = ChatChunk {
        usage_extra,
        id: c.id,
        created: c.created.unwrap_or_else(unix_now),
        model: c.model,
        usage,
        extra: c.extra,
        ..ChatChunk::default()
    };
    if let Some(choice) = c.choices.into_iter().next() {
        chunk.finish_reason = choice.finish_reason.as_deref().map(FinishReason::from_openai);
        chunk.choice_extra = choice.extra;
        if let Some(delta) = choice.delta {
            chunk.role = delta.role.as_deref().and_then(Role::parse);
            chunk.content = delta.content;
            chunk.delta_extra = delta.extra;
        }
    }
    chunk
}

/// A short description of an in-stream error object, for logs and the error kind.
pub fn describe_stream_error(error: &Value) -> String {
    let code = error.get("code").map(|c| match c {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    });
    let kind = error.pointer("/metadata/error_type").and_then(Value::as_str);
    match (code, kind) {
        (Some(code), Some(kind)) => format!("upstream error event (code {code}, {kind})"),
        (Some(code), None) => format!("upstream error event (code {code})"),
        _ => "upstream error event".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Message;

    #[test]
    fn request_uses_the_configured_token_field_and_keeps_vendor_fields() {
        let mut req = ChatRequest { model: "m".into(), max_tokens: Some(50), ..ChatRequest::default() };
        req.messages.push(Message::new(Role::User, "hi"));
        req.extra.insert("reasoning_effort".into(), "low".into());
        let json = serde_json::to_value(to_wire(&req, true, MaxTokensField::MaxCompletionTokens, true)).unwrap();
        assert_eq!(json["max_completion_tokens"], 50);
        assert!(json.get("max_tokens").is_none());
        assert_eq!(json["reasoning_effort"], "low");
        assert_eq!(json["stream_options"]["include_usage"], true);
        assert_eq!(json["messages"][0]["role"], "user");
    }

    #[test]
    fn groq_usage_in_x_groq_is_used_when_top_level_usage_is_absent() {
        let raw = r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m",
            "choices":[{"index":0,"delta":{},"finish_reason":"stop"}],
            "x_groq":{"id":"req_1","usage":{"prompt_tokens":22,"completion_tokens":5,"total_tokens":27}}}"#;
        let chunk = chunk_from_wire(serde_json::from_str(raw).unwrap());
        assert_eq!(chunk.usage, Some(Usage { prompt_tokens: 22, completion_tokens: 5 }));
        assert_eq!(chunk.finish_reason, Some(FinishReason::Stop));
        assert!(chunk.extra.contains_key("x_groq"));
    }
}
