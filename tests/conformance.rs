//! One conformance suite, run against both adapter families (OpenAI-compatible
//! and Gemini), each against a fake upstream speaking that family's real wire
//! format, over real HTTP through the whole gateway.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::dialects::{Dialect, Gemini, OpenAi};
use support::{Fake, Reply, assert_error_body, config_for, gateway, sse_data};

const SECRET_DETAIL: &str = "UPSTREAM-INTERNAL-DETAIL-42";

fn user(text: &str) -> Value {
    json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}])
}

async fn plain_completion<D: Dialect>() {
    let fake = Fake::start(Reply::json(200, D::completion("Low tide is at 06:42.", 41, 9))).await;
    let gw = gateway(config_for(&fake)).await;
    let (field, value, upstream_pointer) = D::vendor_request_field();
    let mut body =
        json!({"model": D::MODEL, "messages": user("When is low tide?"), "temperature": 0.3, "max_tokens": 50});
    body[field] = value.clone();
    let resp = gw.chat(body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-squad-provider"], D::MODEL.split('/').next().unwrap());
    let out: Value = resp.json().await.unwrap();
    assert_eq!(out["object"], "chat.completion");
    assert_eq!(out["choices"][0]["message"]["role"], "assistant");
    assert_eq!(out["choices"][0]["message"]["content"], "Low tide is at 06:42.");
    assert_eq!(out["choices"][0]["finish_reason"], "stop");
    assert_eq!(out["usage"]["prompt_tokens"], 41);
    assert_eq!(out["usage"]["completion_tokens"], 9);
    assert_eq!(out["usage"]["total_tokens"], 50);
    assert!(out.pointer(D::vendor_response_field()).is_some(), "vendor field lost: {out}");
    assert!(out["model"].as_str().unwrap().starts_with(D::MODEL.split('/').next().unwrap()));

    let received = fake.received();
    assert_eq!(received.len(), 1);
    D::assert_authenticated(
        &received[0],
        if D::MODEL.starts_with("groq") { support::GROQ_KEY } else { support::GEMINI_KEY },
    );
    assert_eq!(
        received[0].body.pointer(upstream_pointer),
        Some(&value),
        "vendor request field not forwarded: {}",
        received[0].body
    );
}

async fn streaming<D: Dialect>() {
    let pieces = ["Low", " tide", " is", " at 06:42."];
    let fake = Fake::start(Reply::sse(D::stream(&pieces, 41, 9))).await;
    let gw = gateway(config_for(&fake)).await;
    let resp = gw
        .chat(json!({"model": D::MODEL, "messages": user("tide?"), "stream": true, "stream_options": {"include_usage": true}}))
        .await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let data = sse_data(resp).await;
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    let ids: Vec<&Value> = chunks.iter().map(|c| &c["id"]).collect();
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "one id for the whole stream: {ids:?}");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0)?.get("delta")?.get("content")?.as_str().map(str::to_owned))
        .collect();
    assert_eq!(text, pieces.concat(), "chunk order");
    let finish_at = chunks.iter().position(|c| c["choices"][0]["finish_reason"] == "stop").expect("a finish chunk");
    let usage = chunks.last().unwrap();
    assert!(finish_at < chunks.len() - 1, "usage chunk comes after the finish chunk");
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["prompt_tokens"], 41);
    assert_eq!(usage["usage"]["completion_tokens"], 9);
    let received = fake.received();
    if D::MODEL.starts_with("groq") {
        assert_eq!(received[0].body["stream"], true);
        assert_eq!(received[0].body["stream_options"]["include_usage"], true, "usage always requested upstream");
    } else {
        assert!(received[0].path.ends_with(":streamGenerateContent"), "{}", received[0].path);
        assert_eq!(received[0].query, "alt=sse");
    }
}

async fn streaming_without_usage_option_has_no_usage_chunk<D: Dialect>() {
    let fake = Fake::start(Reply::sse(D::stream(&["a", "b"], 3, 2))).await;
    let gw = gateway(config_for(&fake)).await;
    let data = sse_data(gw.chat(json!({"model": D::MODEL, "messages": user("x"), "stream": true})).await).await;
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    for d in &data[..data.len() - 1] {
        let v: Value = serde_json::from_str(d).unwrap();
        assert_eq!(v["choices"].as_array().map(Vec::len), Some(1), "{d}");
    }
}

async fn client_error_is_returned_without_the_upstream_text<D: Dialect>() {
    let fake = Fake::start(Reply::json(400, D::error(400, SECRET_DETAIL))).await;
    let gw = gateway(config_for(&fake)).await;
    let resp = gw.chat(json!({"model": D::MODEL, "messages": user("x")})).await;
    assert_eq!(resp.status(), 400);
    let text = resp.text().await.unwrap();
    assert!(!text.contains(SECRET_DETAIL), "upstream body leaked: {text}");
    assert_error_body(&serde_json::from_str(&text).unwrap(), "upstream_rejected");
}

async fn auth_failure_is_a_bad_gateway<D: Dialect>() {
    let fake = Fake::start(Reply::json(401, D::error(401, SECRET_DETAIL))).await;
    let gw = gateway(config_for(&fake)).await;
    let resp = gw.chat(json!({"model": D::MODEL, "messages": user("x")})).await;
    assert_eq!(resp.status(), 502);
    let body: Value = resp.json().await.unwrap();
    let err = assert_error_body(&body, "upstream_failed");
    assert!(err["message"].as_str().unwrap().contains("auth"), "{err}");
    assert!(!body.to_string().contains(SECRET_DETAIL));
}

async fn rate_limit_carries_retry_after<D: Dialect>() {
    for reply in D::rate_limited(7) {
        let fake = Fake::start(reply.clone()).await;
        let gw = gateway(config_for(&fake)).await;
        let resp = gw.chat(json!({"model": D::MODEL, "messages": user("x")})).await;
        assert_eq!(resp.status(), 429, "{reply:?}");
        let secs: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        // An HTTP-date has one-second resolution, so it may read as 6 or 7.
        assert!((6..=7).contains(&secs), "retry-after {secs} for {reply:?}");
        assert_error_body(&resp.json().await.unwrap(), "providers");
    }
}

async fn server_error_is_a_bad_gateway<D: Dialect>() {
    let fake = Fake::start(Reply::json(503, D::error(503, SECRET_DETAIL))).await;
    let gw = gateway(config_for(&fake)).await;
    for stream in [false, true] {
        let resp = gw.chat(json!({"model": D::MODEL, "messages": user("x"), "stream": stream})).await;
        assert_eq!(resp.status(), 502, "stream={stream}");
        let err = assert_error_body(&resp.json().await.unwrap(), "upstream_failed");
        assert!(err["message"].as_str().unwrap().contains("503"));
    }
}

/// A provider timing out is a failed provider (502 listing the timeouts); 504
/// is kept for the request deadline itself.
async fn timeout_is_a_failed_provider_and_the_deadline_a_gateway_timeout<D: Dialect>() {
    let fake = Fake::start(Reply::Stall).await;
    let gw = gateway(config_for(&fake)).await;
    for stream in [false, true] {
        let started = Instant::now();
        let resp = gw.chat(json!({"model": D::MODEL, "messages": user("x"), "stream": stream})).await;
        assert_eq!(resp.status(), 502, "stream={stream}");
        assert!(started.elapsed() < Duration::from_secs(3), "first-byte timeout is 500 ms, tried twice");
        let err = assert_error_body(&resp.json().await.unwrap(), "upstream_failed");
        assert_eq!(err["attempts"][0]["outcome"], "timeout");
        assert_eq!(err["attempts"].as_array().unwrap().len(), 2, "retried once");
    }
    let mut config = config_for(&fake);
    config.server.request_timeout = Duration::from_millis(300);
    let gw = gateway(config).await;
    let resp = gw.chat(json!({"model": D::MODEL, "messages": user("x")})).await;
    assert_eq!(resp.status(), 504);
    assert_error_body(&resp.json().await.unwrap(), "deadline_exceeded");
}

/// The stream ends with an explicit error event and never with `[DONE]`.
fn assert_ends_in_error(data: &[String]) {
    assert!(!data.iter().any(|d| d == "[DONE]"), "a broken stream must not end cleanly: {data:?}");
    let last: Value = serde_json::from_str(data.last().expect("some events")).unwrap();
    assert_error_body(&last, "stream_interrupted");
}

async fn stream_cut_midway_ends_with_an_error_event<D: Dialect>() {
    // Even after content, a transport cut is an error, not a clean end.
    let mut events = D::stream(&["one", " two", " three"], 3, 3);
    events.retain(|e| !e.contains("[DONE]"));
    events.truncate(events.len() - 1);
    let fake = Fake::start(Reply::Sse { events, delay: Duration::from_millis(5), cut: true }).await;
    let gw = gateway(config_for(&fake)).await;
    let resp = gw.chat(json!({"model": D::MODEL, "messages": user("x"), "stream": true})).await;
    assert_eq!(resp.status(), 200);
    assert_ends_in_error(&sse_data(resp).await);
}

async fn stream_ending_without_terminator_is_an_error<D: Dialect>() {
    let mut events = D::stream(&["one", " two", " three"], 3, 3);
    events.retain(|e| !e.contains("STOP") && !e.contains("\"stop\"") && !e.contains("[DONE]"));
    let fake = Fake::start(Reply::sse(events)).await;
    let gw = gateway(config_for(&fake)).await;
    assert_ends_in_error(
        &sse_data(gw.chat(json!({"model": D::MODEL, "messages": user("x"), "stream": true})).await).await,
    );
}

async fn malformed_chunk<D: Dialect>() {
    // Mid-stream: an error event.
    let mut events = D::stream(&["one", " two"], 3, 2);
    events.insert(events.len() - 1, D::malformed_event());
    let fake = Fake::start(Reply::sse(events)).await;
    let gw = gateway(config_for(&fake)).await;
    assert_ends_in_error(
        &sse_data(gw.chat(json!({"model": D::MODEL, "messages": user("x"), "stream": true})).await).await,
    );

    // Before anything was sent: still time for a proper status.
    fake.set_reply(Reply::sse(vec![D::malformed_event()]));
    let resp = gw.chat(json!({"model": D::MODEL, "messages": user("x"), "stream": true})).await;
    assert_eq!(resp.status(), 502);
    let err = assert_error_body(&resp.json().await.unwrap(), "upstream_failed");
    assert!(err["message"].as_str().unwrap().contains("decode"), "{err}");

    // Non-streaming: a body that is not JSON.
    fake.set_reply(Reply::json(200, "{\"candidates\": [ {\"id\": "));
    let resp = gw.chat(json!({"model": D::MODEL, "messages": user("x")})).await;
    assert_eq!(resp.status(), 502);
}

async fn oversized_sse_line_is_refused<D: Dialect>() {
    let mut events = D::stream(&["one"], 1, 1);
    let huge = format!("data: {{\"pad\":\"{}\"}}\n\n", "x".repeat(2 * 1024 * 1024));
    events.insert(1, huge);
    let fake = Fake::start(Reply::sse(events)).await;
    let gw = gateway(config_for(&fake)).await;
    let resp = gw.chat(json!({"model": D::MODEL, "messages": user("x"), "stream": true})).await;
    // The line breaks the limit either before or after the first chunk went out.
    if resp.status() == 200 {
        assert_ends_in_error(&sse_data(resp).await);
    } else {
        assert_eq!(resp.status(), 502);
        let err = assert_error_body(&resp.json().await.unwrap(), "upstream_failed");
        assert!(err["message"].as_str().unwrap().contains("decode"), "{err}");
    }
}

async fn stream_stalling_after_the_first_chunk_hits_the_idle_timeout<D: Dialect>() {
    let mut events = D::stream(&["one", " two", " three"], 3, 3);
    events.retain(|e| !e.starts_with(':'));
    // config_for sets stream_idle to 800 ms; the upstream pauses 3 s between events.
    let fake = Fake::start(Reply::Sse { events, delay: Duration::from_secs(3), cut: false }).await;
    let gw = gateway(config_for(&fake)).await;
    let started = Instant::now();
    let resp = gw.chat(json!({"model": D::MODEL, "messages": user("x"), "stream": true})).await;
    // OpenAI-style streams open with a role chunk, Gemini's with text: either way
    // the first chunk arrives, then the stall.
    assert_eq!(resp.status(), 200);
    assert_ends_in_error(&sse_data(resp).await);
    assert!(started.elapsed() < Duration::from_secs(3), "idle timeout, not the upstream, ended it");
}

async fn slow_body_hits_the_total_timeout<D: Dialect>() {
    let fake = Fake::start(Reply::Sse {
        events: vec!["{\"candidates\": [".to_owned(), "]}".to_owned()],
        delay: Duration::from_secs(10),
        cut: false,
    })
    .await;
    let mut config = config_for(&fake);
    for p in config.providers.values_mut() {
        p.timeouts.total = Duration::from_secs(1);
    }
    let gw = gateway(config).await;
    let started = Instant::now();
    let resp = gw.chat(json!({"model": D::MODEL, "messages": user("x")})).await;
    assert_eq!(resp.status(), 502);
    let err = assert_error_body(&resp.json().await.unwrap(), "upstream_failed");
    assert_eq!(err["attempts"][0]["outcome"], "timeout");
    assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
}

macro_rules! conformance {
    ($module:ident, $dialect:ty) => {
        mod $module {
            use super::*;

            #[tokio::test]
            async fn plain_completion() {
                super::plain_completion::<$dialect>().await;
            }
            #[tokio::test]
            async fn streaming() {
                super::streaming::<$dialect>().await;
            }
            #[tokio::test]
            async fn streaming_without_usage_option_has_no_usage_chunk() {
                super::streaming_without_usage_option_has_no_usage_chunk::<$dialect>().await;
            }
            #[tokio::test]
            async fn client_error_is_returned_without_the_upstream_text() {
                super::client_error_is_returned_without_the_upstream_text::<$dialect>().await;
            }
            #[tokio::test]
            async fn auth_failure_is_a_bad_gateway() {
                super::auth_failure_is_a_bad_gateway::<$dialect>().await;
            }
            #[tokio::test]
            async fn rate_limit_carries_retry_after() {
                super::rate_limit_carries_retry_after::<$dialect>().await;
            }
            #[tokio::test]
            async fn server_error_is_a_bad_gateway() {
                super::server_error_is_a_bad_gateway::<$dialect>().await;
            }
            #[tokio::test]
            async fn timeout_is_a_failed_provider_and_the_deadline_a_gateway_timeout() {
                super::timeout_is_a_failed_provider_and_the_deadline_a_gateway_timeout::<$dialect>().await;
            }
            #[tokio::test]
            async fn stream_cut_midway_ends_with_an_error_event() {
                super::stream_cut_midway_ends_with_an_error_event::<$dialect>().await;
            }
            #[tokio::test]
            async fn stream_ending_without_terminator_is_an_error() {
                super::stream_ending_without_terminator_is_an_error::<$dialect>().await;
            }
            #[tokio::test]
            async fn malformed_chunk() {
                super::malformed_chunk::<$dialect>().await;
            }
            #[tokio::test]
            async fn stream_stalling_after_the_first_chunk_hits_the_idle_timeout() {
                super::stream_stalling_after_the_first_chunk_hits_the_idle_timeout::<$dialect>().await;
            }
            #[tokio::test]
            async fn slow_body_hits_the_total_timeout() {
                super::slow_body_hits_the_total_timeout::<$dialect>().await;
            }
            #[tokio::test]
            async fn oversized_sse_line_is_refused() {
                super::oversized_sse_line_is_refused::<$dialect>().await;
            }
        }
    };
}

conformance!(openai_compatible, OpenAi);
conformance!(gemini, Gemini);
