//! Request bodies as the API parses them: `POST /v1/chat/completions`
//! (`extract::parse` into `ChatCompletionRequest`, then `into_domain`) and the
//! agent routes (`extract::parse` into a JSON value, then `agents::decode` and
//! `AgentBody::into_ask`). Checked: no panic, and every rejection is a 400 or a
//! 422 whose rendered body is our JSON error object.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use squad::api::agents::decode;
use squad::api::error::{ApiError, render};
use squad::api::extract::parse;
use squad::api::wire::ChatCompletionRequest;

/// `server.max_json_depth`'s default.
const MAX_DEPTH: usize = 64;

fn check_rejection(e: &ApiError) {
    let (status, _, _) = e.parts();
    assert!(status == 400 || status == 422, "bad input answered {status}: {e:?}");
    let body: Value = serde_json::from_slice(&render(e.object(), "req-fuzz")).expect("error body is JSON");
    let error = &body["error"];
    for field in ["type", "message", "code"] {
        assert!(error[field].is_string(), "error body lacks `{field}`: {body}");
    }
    assert_eq!(error["request_id"], "req-fuzz");
}

fuzz_target!(|data: &[u8]| {
    match parse::<ChatCompletionRequest>(data, MAX_DEPTH) {
        Ok(request) => {
            let _ = (request.wants_stream(), request.wants_usage_chunk());
            match request.into_domain() {
                Ok(domain) => {
                    assert!(!domain.messages.is_empty(), "a request without messages was accepted");
                    assert!(domain.stop.len() <= 4, "more than 4 stop sequences were accepted");
                    assert!(domain.max_tokens != Some(0), "max_tokens 0 was accepted");
                    if let Some(t) = domain.temperature {
                        assert!((0.0..=2.0).contains(&t), "temperature {t} was accepted");
                    }
                }
                Err(e) => check_rejection(&e),
            }
        }
        Err(e) => check_rejection(&e),
    }

    match parse::<Value>(data, MAX_DEPTH) {
        Ok(value) => match decode(value).and_then(|body| body.into_ask("fuzz-agent".to_owned())) {
            Ok(ask) => {
                assert!(!ask.prompt.trim().is_empty(), "an empty prompt was accepted");
                assert!(ask.prompt.chars().count() <= squad::api::agents::MAX_PROMPT_CHARS);
            }
            Err(e) => check_rejection(&e),
        },
        Err(e) => check_rejection(&e),
    }
});
