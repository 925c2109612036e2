//! Domain ⇄ Gemini conversions: system messages become `systemInstruction`,
//! `assistant` becomes `model`, consecutive same-role turns are merged (Gemini
//! rejects non-alternating turns), sampling goes into `generationConfig`.

use serde_json::{Map, Value};

use super::wire;
use crate::domain::{ChatChunk, ChatRequest, ChatResponse, Extra, FinishReason, Role, Usage, unix_now};

/// Request fields Gemini understands natively and that we pass through as-is.
const PASSTHROUGH: &[&str] = &["safetySettings", "tools", "toolConfig", "cachedContent", "labels"];

/// OpenAI-style extras with a `generationConfig` counterpart.
const GENERATION_ALIASES: &[(&str, &str)] = &[
    ("seed", "seed"),
    ("top_k", "topK"),
    ("presence_penalty", "presencePenalty"),
    ("frequency_penalty", "frequencyPenalty"),
];

pub fn to_wire(req: &ChatRequest) -> wire::Request {
    let mut system = Vec::new();
    let mut contents: Vec<wire::Content> = Vec::new();
    for m in &req.messages {
        let role = match m.role {
            Role::System => {
                system.push(wire::Part { text: m.content.clone() });
                continue;
            }
            Role::Assistant => "model",
            Role::User | Role::Tool => "user",
        };
        let part = wire::Part { text: m.content.clone() };
        match contents.last_mut() {
            Some(last) if last.role == role => last.parts.push(part),
            _ => contents.push(wire::Content { role, parts: vec![part] }),
        }
    }

    let mut generation = Map::new();
    let mut set = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            generation.insert(k.to_owned(), v);
        }
    };
    set("temperature", req.temperature.map(Value::from));
    set("topP", req.top_p.map(Value::from));
    set("maxOutputTokens", req.max_tokens.map(Value::from));
    set("stopSequences", (!req.stop.is_empty()).then(|| Value::from(req.stop.clone())));
    set("candidateCount", Some(Value::from(1)));

    let mut extra = Extra::new();
    for (key, value) in &req.extra {
        if let Some((_, gemini)) = GENERATION_ALIASES.iter().find(|(openai, _)| openai == key) {
            generation.insert((*gemini).to_owned(), value.clone());
        } else if key == "generationConfig" {
            if let Value::Object(map) = value {
                generation.extend(map.clone());
            }
        } else if PASSTHROUGH.contains(&key.as_str()) {
            extra.insert(key.clone(), value.clone());
        } else {
            // Gemini answers 400 to unknown fields, so OpenAI-only extras stop here.
            tracing::debug!(field = %key, "field not forwarded to gemini");
        }
    }

    wire::Request {
        contents,
        system_instruction: (!system.is_empty()).then_some(wire::SystemInstruction { parts: system }),
        generation_config: generation,
        extra,
    }
}

pub fn finish_reason(raw: &str) -> FinishReason {
    match raw {
        "STOP" => FinishReason::Stop,
        "MAX_TOKENS" => FinishReason::Length,
        "SAFETY"
        | "RECITATION"
        | "BLOCKLIST"
        | "PROHIBITED_CONTENT"
        | "SPII"
        | "LANGUAGE"
        | "IMAGE_SAFETY"
        | "IMAGE_PROHIBITED_CONTENT"
        | "IMAGE_RECITATION" => FinishReason::ContentFilter,
        "MALFORMED_FUNCTION_CALL" | "UNEXPECTED_TOOL_CALL" | "TOO_MANY_TOOL_CALLS" => FinishReason::Error,
        other => FinishReason::Other(other.to_owned()),
    }
}

fn usage(u: wire::UsageMetadata) -> (Usage, Extra) {
    let usage = Usage {
        prompt_tokens: u.prompt_token_count,
        completion_tokens: u.candidates_token_count + u.thoughts_token_count,
    };
    (usage, u.extra)
}

/// The first candidate, split into visible text, thought text, finish reason
/// and unmodelled candidate fields. A blocked prompt (no candidates,
/// `promptFeedback.blockReason`) reads as a content-filter finish.
pub struct Parsed {
    pub text: String,
    pub thoughts: String,
    /// Parts carrying more than text (`functionCall`, `inlineData`, …), kept whole.
    pub other_parts: Vec<Value>,
    pub finish: Option<FinishReason>,
    pub candidate_extra: Extra,
}

pub fn parse_candidate(r: &mut wire::Response) -> Parsed {
    let mut parsed = Parsed {
        text: String::new(),
        thoughts: String::new(),
        other_parts: Vec::new(),
        finish: None,
        candidate_extra: Extra::new(),
    };
    match r.candidates.drain(..).next() {
        Some(c) => {
            for part in c.content.map(|c| c.parts).unwrap_or_default() {
                // Fields beside the text (`thoughtSignature`, `functionCall`, …)
                // are kept whole; the text itself always counts.
                if !part.extra.is_empty() {
                    parsed.other_parts.push(Value::Object(part.extra));
                }
                let target = if part.thought == Some(true) { &mut parsed.thoughts } else { &mut parsed.text };
                target.push_str(part.text.as_deref().unwrap_or_default());
            }
            parsed.finish = c.finish_reason.as_deref().map(finish_reason);
            parsed.candidate_extra = c.extra;
        }
        None => {
            if r.prompt_feedback.as_ref().and_then(|f| f.get("blockReason")).is_some() {
                parsed.finish = Some(FinishReason::ContentFilter);
            }
        }
    }
    parsed
}

fn top_level_extra(r: &mut wire::Response) -> Extra {
    let mut extra = std::mem::take(&mut r.extra);
    if let Some(feedback) = r.prompt_feedback.take() {
        extra.insert("promptFeedback".into(), feedback);
    }
    extra
}

/// Thoughts as `reasoning` (as Groq and Cerebras name it) and non-text parts as
/// `gemini_parts`, on the message or the stream delta.
fn side_fields(parsed: &mut Parsed) -> Extra {
    let mut extra = Extra::new();
    if !parsed.thoughts.is_empty() {
        extra.insert("reasoning".into(), Value::String(std::mem::take(&mut parsed.thoughts)));
    }
    if !parsed.other_parts.is_empty() {
        extra.insert("gemini_parts".into(), Value::Array(std::mem::take(&mut parsed.other_parts)));
    }
    extra
}

pub fn from_wire(mut r: wire::Response, requested_model: &str) -> ChatResponse {
    let mut parsed = parse_candidate(&mut r);
    let message_extra = side_fields(&mut parsed);
    let (usage, usage_extra) = match r.usage_metadata.take().map(usage) {
        Some((u, e)) => (Some(u), e),
        None => (None, Extra::new()),
    };
    ChatResponse {
        id: r.response_id.take().unwrap_or_default(),
        created: unix_now(),
        model: r.model_version.take().unwrap_or_else(|| requested_model.to_owned()),
        content: parsed.text,
        finish_reason: parsed.finish,
        usage,
        usage_extra,
        message_extra,
        choice_extra: parsed.candidate_extra,
        extra: top_level_extra(&mut r),
    }
}

/// One stream event. Usage is the running total Gemini repeats on many
/// chunks; the stream translator keeps the last one for the finishing chunk.
pub fn chunk_from_wire(mut r: wire::Response, requested_model: &str) -> ChatChunk {
    let mut parsed = parse_candidate(&mut r);
    let usage = r.usage_metadata.take().map(|u| usage(u).0);
    let delta_extra = side_fields(&mut parsed);
    ChatChunk {
        id: r.response_id.take().unwrap_or_default(),
        created: unix_now(),
        model: r.model_version.take().unwrap_or_else(|| requested_model.to_owned()),
        role: None,
        content: (!parsed.text.is_empty()).then_some(parsed.text),
        finish_reason: parsed.finish,
        usage,
        usage_extra: Extra::new(),
        delta_extra,
        choice_extra: parsed.candidate_extra,
        extra: top_level_extra(&mut r),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Message;

    #[test]
    fn system_goes_to_instruction_roles_map_and_same_roles_merge() {
        let req = ChatRequest {
            model: "gemini-3.5-flash".into(),
            messages: vec![
                Message::new(Role::System, "Be brief."),
                Message::new(Role::User, "a"),
                Message::new(Role::User, "b"),
                Message::new(Role::Assistant, "c"),
                Message::new(Role::System, "Also polite."),
                Message::new(Role::User, "d"),
            ],
            temperature: Some(0.3),
            max_tokens: Some(20),
            stop: vec!["END".into()],
            ..ChatRequest::default()
        };
        let json = serde_json::to_value(to_wire(&req)).unwrap();
        assert_eq!(
            json["systemInstruction"]["parts"],
            serde_json::json!([{"text":"Be brief."},{"text":"Also polite."}])
        );
        assert_eq!(json["contents"][0], serde_json::json!({"role":"user","parts":[{"text":"a"},{"text":"b"}]}));
        assert_eq!(json["contents"][1]["role"], "model");
        assert_eq!(json["contents"].as_array().unwrap().len(), 3);
        assert_eq!(json["generationConfig"]["maxOutputTokens"], 20);
        assert_eq!(json["generationConfig"]["stopSequences"], serde_json::json!(["END"]));
        assert_eq!(json["generationConfig"]["temperature"], 0.3);
    }

    #[test]
    fn finish_reasons_normalise() {
        assert_eq!(finish_reason("STOP"), FinishReason::Stop);
        assert_eq!(finish_reason("MAX_TOKENS"), FinishReason::Length);
        assert_eq!(finish_reason("SAFETY"), FinishReason::ContentFilter);
        assert_eq!(finish_reason("MALFORMED_FUNCTION_CALL"), FinishReason::Error);
        assert_eq!(finish_reason("NEW_THING"), FinishReason::Other("NEW_THING".into()));
    }

    #[test]
    fn text_parts_with_signatures_keep_their_text() {
        let raw = r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Visible.","thoughtSignature":"c2ln"}]},
            "finishReason":"STOP"}]}"#;
        let resp = from_wire(serde_json::from_str(raw).unwrap(), "m");
        assert_eq!(resp.content, "Visible.");
        assert_eq!(resp.message_extra["gemini_parts"][0]["thoughtSignature"], "c2ln");
    }

    #[test]
    fn thoughts_are_kept_apart_and_output_tokens_include_them() {
        let raw = r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"hmm","thought":true},{"text":"Hi."}]},
            "finishReason":"STOP","index":0,"safetyRatings":[]}],
            "usageMetadata":{"promptTokenCount":14,"candidatesTokenCount":9,"thoughtsTokenCount":31,"totalTokenCount":54},
            "modelVersion":"gemini-3.5-flash","responseId":"r1"}"#;
        let resp = from_wire(serde_json::from_str(raw).unwrap(), "x");
        assert_eq!(resp.content, "Hi.");
        assert_eq!(resp.message_extra["reasoning"], "hmm");
        assert_eq!(resp.usage, Some(Usage { prompt_tokens: 14, completion_tokens: 40 }));
        assert!(resp.choice_extra.contains_key("safetyRatings"));
        assert_eq!(resp.model, "gemini-3.5-flash");
    }
}
