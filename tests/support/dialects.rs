//! Canned upstream bodies in each provider family's real wire format, shaped
//! after the samples in reference/providers.md (Groq with `x_groq`, Gemini with
//! CRLF framing, `usageMetadata` and `RetryInfo`).

use serde_json::{Value, json};

use super::{Received, Reply};

/// One provider family as the conformance suite sees it.
pub trait Dialect {
    /// The model string a client sends to reach this family through the gateway.
    const MODEL: &'static str;
    fn completion(text: &str, prompt: u64, completion: u64) -> String;
    /// Events for `pieces`, ending the way the protocol ends (with usage).
    fn stream(pieces: &[&str], prompt: u64, completion: u64) -> Vec<String>;
    fn error(status: u16, detail: &str) -> String;
    /// A 429 whose Retry-After is conveyed in the family's way.
    fn rate_limited(secs: u64) -> Vec<Reply>;
    /// A vendor field this family adds to responses, and where it must show up
    /// in our response (JSON pointer).
    fn vendor_response_field() -> &'static str;
    /// A vendor request field for this family and where the upstream must receive it.
    fn vendor_request_field() -> (&'static str, Value, &'static str);
    fn assert_authenticated(r: &Received, key: &str);
    fn malformed_event() -> String;
}

pub struct OpenAi;
pub struct Gemini;

impl Gemini {
    pub fn malformed_event_for_tests() -> String {
        <Gemini as Dialect>::malformed_event()
    }
}

impl Dialect for OpenAi {
    const MODEL: &'static str = "groq/openai/gpt-oss-20b";

    fn completion(text: &str, prompt: u64, completion: u64) -> String {
        json!({"id":"chatcmpl-9e8d7c6b","object":"chat.completion","created":1795000100,
               "model":"openai/gpt-oss-20b",
               "choices":[{"index":0,"message":{"role":"assistant","content":text},
                           "logprobs":null,"finish_reason":"stop"}],
               "usage":{"prompt_tokens":prompt,"completion_tokens":completion,"total_tokens":prompt+completion,
                        "queue_time":0.0113,"prompt_time":0.0021,"completion_time":0.0089,"total_time":0.011},
               "system_fingerprint":"fp_5e6f7a8b","service_tier":"on_demand",
               "x_groq":{"id":"req_01jzzzzzzzzzzzzzzzzzzzzzzz"}})
        .to_string()
    }

    fn stream(pieces: &[&str], prompt: u64, completion: u64) -> Vec<String> {
        let chunk = |delta: Value, finish: Value| {
            json!({"id":"chatcmpl-0c1d","object":"chat.completion.chunk","created":1795000000,"model":"openai/gpt-oss-20b",
                   "choices":[{"index":0,"delta":delta,"finish_reason":finish}]})
        };
        let mut events = vec![chunk(json!({"role":"assistant","content":""}), Value::Null)];
        events.extend(pieces.iter().map(|p| chunk(json!({"content":p}), Value::Null)));
        let mut last = chunk(json!({}), json!("stop"));
        last["x_groq"] = json!({"id":"req_01"});
        events.push(last);
        events.push(json!({"id":"chatcmpl-0c1d","object":"chat.completion.chunk","created":1795000000,
            "model":"openai/gpt-oss-20b","choices":[],
            "usage":{"prompt_tokens":prompt,"completion_tokens":completion,"total_tokens":prompt+completion}}));
        let mut out: Vec<String> = vec![": keep-alive\n\n".to_owned()];
        out.extend(events.into_iter().map(|e| format!("data: {e}\n\n")));
        out.push("data: [DONE]\n\n".to_owned());
        out
    }

    fn error(_status: u16, detail: &str) -> String {
        json!({"error":{"message":detail,"type":"invalid_request_error","param":null,"code":"context_length_exceeded"}})
            .to_string()
    }

    fn rate_limited(secs: u64) -> Vec<Reply> {
        let body = json!({"error":{"message":"Rate limit reached for model `openai/gpt-oss-20b` on tokens per minute (TPM). Please try again in 2.6s.",
                                   "type":"tokens","code":"rate_limit_exceeded"}})
        .to_string();
        let date = httpdate::fmt_http_date(std::time::SystemTime::now() + std::time::Duration::from_secs(secs));
        vec![
            Reply::Json { status: 429, headers: vec![("retry-after", secs.to_string())], body: body.clone() },
            Reply::Json { status: 429, headers: vec![("retry-after", date)], body: body.clone() },
            Reply::Json { status: 429, headers: vec![("retry-after-ms", (secs * 1000).to_string())], body },
        ]
    }

    fn vendor_response_field() -> &'static str {
        "/x_groq/id"
    }

    fn vendor_request_field() -> (&'static str, Value, &'static str) {
        ("reasoning_effort", json!("low"), "/reasoning_effort")
    }

    fn assert_authenticated(r: &Received, key: &str) {
        assert_eq!(r.headers["authorization"], format!("Bearer {key}"));
        assert!(r.path.ends_with("/openai/v1/chat/completions"), "{}", r.path);
    }

    fn malformed_event() -> String {
        "data: {\"id\":\"x\",\"choices\":[{\"delta\":\n\n".to_owned()
    }
}

impl Dialect for Gemini {
    const MODEL: &'static str = "gemini/gemini-3.5-flash";

    fn completion(text: &str, prompt: u64, completion: u64) -> String {
        json!({"candidates":[{"content":{"role":"model","parts":[{"text":text}]},"finishReason":"STOP","index":0,
                              "safetyRatings":[{"category":"HARM_CATEGORY_HARASSMENT","probability":"NEGLIGIBLE"}]}],
               "usageMetadata":{"promptTokenCount":prompt,"candidatesTokenCount":completion,"totalTokenCount":prompt+completion,
                                "promptTokensDetails":[{"modality":"TEXT","tokenCount":prompt}]},
               "modelVersion":"gemini-3.5-flash","responseId":"mW3hZ0rKAbCdEfGh"})
        .to_string()
    }

    fn stream(pieces: &[&str], prompt: u64, completion: u64) -> Vec<String> {
        let last = pieces.len() - 1;
        pieces
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut c = json!({"content":{"role":"model","parts":[{"text":p}]},"index":0});
                let usage = if i == last {
                    c["finishReason"] = json!("STOP");
                    json!({"promptTokenCount":prompt,"candidatesTokenCount":completion,"totalTokenCount":prompt+completion})
                } else {
                    json!({"promptTokenCount":prompt,"totalTokenCount":prompt})
                };
                let v = json!({"candidates":[c],"usageMetadata":usage,"modelVersion":"gemini-3.5-flash","responseId":"mW3hZ0rK"});
                format!("data: {v}\r\n\r\n")
            })
            .collect()
    }

    fn error(status: u16, detail: &str) -> String {
        let canonical = match status {
            400 => "INVALID_ARGUMENT",
            401 | 403 => "PERMISSION_DENIED",
            _ => "INTERNAL",
        };
        json!({"error":{"code":status,"message":detail,"status":canonical}}).to_string()
    }

    fn rate_limited(secs: u64) -> Vec<Reply> {
        let body = json!({"error":{"code":429,"status":"RESOURCE_EXHAUSTED","message":"Quota exceeded for this project.",
            "details":[
              {"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaId":"GenerateContentInputTokensPerModelPerMinute"}]},
              {"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":format!("{secs}s")}]}})
        .to_string();
        vec![Reply::json(429, body)]
    }

    fn vendor_response_field() -> &'static str {
        "/choices/0/safetyRatings"
    }

    fn vendor_request_field() -> (&'static str, Value, &'static str) {
        let settings = json!([{"category":"HARM_CATEGORY_HARASSMENT","threshold":"BLOCK_ONLY_HIGH"}]);
        ("safetySettings", settings, "/safetySettings")
    }

    fn assert_authenticated(r: &Received, key: &str) {
        assert_eq!(r.headers["x-goog-api-key"], key);
        assert!(r.headers.get("authorization").is_none());
        assert!(!r.query.contains("key="), "key must not travel in the URL");
        assert!(r.path.starts_with("/v1beta/models/gemini-3.5-flash:"), "{}", r.path);
    }

    fn malformed_event() -> String {
        "data: {\"candidates\":[{\"content\":\r\n\r\n".to_owned()
    }
}
