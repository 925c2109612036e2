//! Reply bodies in each dialect's real wire format (see reference/providers.md).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    OpenAi,
    Gemini,
    /// `streamGenerateContent` without `alt=sse`: one JSON array.
    GeminiArray,
}

impl Dialect {
    /// The dialect, for Gemini the model named in the path, and whether the URL
    /// asks for a stream (Gemini's choice; OpenAI's is in the body).
    pub fn from_path<'a>(path: &'a str, query: &str) -> Option<(Dialect, Option<&'a str>, bool)> {
        if path.ends_with("/chat/completions") {
            return Some((Dialect::OpenAi, None, false));
        }
        let (_, tail) = path.rsplit_once("/models/")?;
        let (model, method) = tail.split_once(':')?;
        let sse = query.split('&').any(|kv| kv == "alt=sse");
        match method {
            "generateContent" => Some((Dialect::Gemini, Some(model), false)),
            "streamGenerateContent" if sse => Some((Dialect::Gemini, Some(model), true)),
            "streamGenerateContent" => Some((Dialect::GeminiArray, Some(model), true)),
            _ => None,
        }
    }

    pub fn error(self, status: u16, message: &str, retry_after_secs: u64) -> Response {
        let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = match self {
            Dialect::OpenAi => json!({"error": {
                "message": message, "type": if status == 429 { "tokens" } else { "server_error" },
                "param": null, "code": if status == 429 { "rate_limit_exceeded" } else { "simulated" }}}),
            Dialect::Gemini | Dialect::GeminiArray => {
                let canonical = match status {
                    400 => "INVALID_ARGUMENT",
                    403 => "PERMISSION_DENIED",
                    404 => "NOT_FOUND",
                    429 => "RESOURCE_EXHAUSTED",
                    503 => "UNAVAILABLE",
                    504 => "DEADLINE_EXCEEDED",
                    _ => "INTERNAL",
                };
                let mut err = json!({"code": status, "message": message, "status": canonical});
                if status == 429 {
                    err["details"] = json!([{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                             "retryDelay": format!("{retry_after_secs}s")}]);
                }
                json!({"error": err})
            }
        };
        let mut resp = (code, axum::Json(body)).into_response();
        // Gemini has no Retry-After header; the OpenAI-style providers send one on 429.
        if status == 429 && self == Dialect::OpenAi {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        resp
    }
}

pub struct Reply {
    pub dialect: Dialect,
    pub model: String,
    pub stream: bool,
    pub words: Vec<String>,
    pub prompt_tokens: u64,
}

/// Rough token estimate: four bytes a token.
fn estimate_tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4)
}

impl Reply {
    pub fn from_request(dialect: Dialect, req: &Value, model_in_path: Option<&str>, url_stream: bool) -> Reply {
        let (model, stream, texts): (String, bool, Vec<String>) = match dialect {
            Dialect::OpenAi => {
                let texts = req["messages"]
                    .as_array()
                    .map(|ms| ms.iter().filter_map(|m| m["content"].as_str().map(str::to_owned)).collect())
                    .unwrap_or_default();
                (req["model"].as_str().unwrap_or("mock").to_owned(), req["stream"] == true, texts)
            }
            Dialect::Gemini | Dialect::GeminiArray => {
                let texts = req["contents"]
                    .as_array()
                    .map(|cs| {
                        cs.iter()
                            .flat_map(|c| c["parts"].as_array().cloned().unwrap_or_default())
                            .filter_map(|p| p["text"].as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                (model_in_path.unwrap_or("gemini-mock").to_owned(), url_stream, texts)
            }
        };
        let last: String = texts.last().map(|t| t.chars().take(200).collect()).unwrap_or_default();
        let text = format!("Hello from Squad's simulated upstream. You said: {last}");
        let words = text.split_inclusive(' ').map(str::to_owned).collect();
        let prompt_tokens = texts.iter().map(|t| estimate_tokens(t)).sum::<u64>().max(1);
        Reply { dialect, model, stream, words, prompt_tokens }
    }

    fn completion_tokens(&self) -> u64 {
        self.words.len() as u64
    }

    fn text(&self) -> String {
        self.words.concat()
    }

    fn gemini_usage(&self, output: u64) -> Value {
        json!({"promptTokenCount": self.prompt_tokens, "candidatesTokenCount": output,
               "totalTokenCount": self.prompt_tokens + output})
    }

    pub fn full_body(&self) -> Vec<u8> {
        let (p, c) = (self.prompt_tokens, self.completion_tokens());
        let body = match self.dialect {
            Dialect::OpenAi => json!({
                "id": "chatcmpl-mock", "object": "chat.completion", "created": crate::domain::unix_now(),
                "model": self.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": self.text()},
                             "logprobs": null, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c},
                "system_fingerprint": "fp_mock"}),
            Dialect::Gemini | Dialect::GeminiArray => json!({
                "candidates": [{"content": {"role": "model", "parts": [{"text": self.text()}]},
                                "finishReason": "STOP", "index": 0}],
                "usageMetadata": self.gemini_usage(c),
                "modelVersion": self.model, "responseId": "mock-response"}),
        };
        body.to_string().into_bytes()
    }

    /// Complete SSE events (`data: …\n\n`; CRLF for Gemini, as Google sends).
    pub fn stream_events(&self) -> Vec<String> {
        match self.dialect {
            Dialect::OpenAi => self.openai_events(),
            Dialect::Gemini => self.gemini_events("\r\n"),
            Dialect::GeminiArray => {
                vec![format!("[{}]", String::from_utf8_lossy(&self.full_body()))]
            }
        }
    }

    fn openai_events(&self) -> Vec<String> {
        let created = crate::domain::unix_now();
        let chunk = |delta: Value, finish: Value| {
            json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": created,
                   "model": self.model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        };
        let mut out = vec![chunk(json!({"role": "assistant", "content": ""}), Value::Null)];
        out.extend(self.words.iter().map(|w| chunk(json!({"content": w}), Value::Null)));
        out.push(chunk(json!({}), json!("stop")));
        let (p, c) = (self.prompt_tokens, self.completion_tokens());
        out.push(json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": created,
                        "model": self.model, "choices": [],
                        "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}}));
        let mut events: Vec<String> = out.into_iter().map(|v| format!("data: {v}\n\n")).collect();
        events.push("data: [DONE]\n\n".to_owned());
        events
    }

    fn gemini_events(&self, eol: &str) -> Vec<String> {
        let last = self.words.len().saturating_sub(1);
        self.words
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let mut candidate = json!({"content": {"role": "model", "parts": [{"text": w}]}, "index": 0});
                if i == last {
                    candidate["finishReason"] = json!("STOP");
                }
                let v = json!({"candidates": [candidate], "usageMetadata": self.gemini_usage(i as u64 + 1),
                               "modelVersion": self.model, "responseId": "mock-response"});
                format!("data: {v}{eol}{eol}")
            })
            .collect()
    }
}
