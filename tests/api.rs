//! The HTTP API's contract: bad input gets our error body with the right status
//! and never reaches the upstream (the fake counts hits); request ids; models;
//! health; metrics; and OpenAI SDK types parse what we send.

mod support;

use serde_json::{Value, json};
use support::dialects::{Dialect, OpenAi};
use support::{Fake, Reply, assert_error_body, config_for, gateway, sse_data};

/// (name, content type, body, expected status, expected code)
type RawCase = (&'static str, Option<&'static str>, Vec<u8>, u16, &'static str);

fn ok_message() -> Value {
    json!([{"role": "user", "content": "hi"}])
}

async fn send_raw(gw: &support::Gateway, content_type: Option<&str>, body: Vec<u8>) -> (u16, Value) {
    let mut req = gw.client.post(format!("{}/v1/chat/completions", gw.url)).body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    assert_eq!(resp.headers()["content-type"], "application/json");
    (status, resp.json().await.unwrap())
}

/// A client that sends a whole over-limit body before reading gets the 413:
/// Squad reads the rest of the body first. Closing with the body unread
/// would make the kernel reset the connection, and the reset discards the
/// 413 before the client reads it.
#[tokio::test]
async fn an_over_limit_chunked_body_sent_in_full_still_gets_its_413() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fake = Fake::start(Reply::json(200, OpenAi::completion("x", 1, 1))).await;
    let gw = gateway(config_for(&fake)).await;
    let addr = gw.url.trim_start_matches("http://").to_owned();
    let body = vec![b' '; 512 * 1024];
    for _ in 0..20 {
        let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        for chunk in body.chunks(8 * 1024) {
            tcp.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await.unwrap();
            tcp.write_all(chunk).await.expect("the whole body is accepted");
            tcp.write_all(b"\r\n").await.unwrap();
        }
        tcp.write_all(b"0\r\n\r\n").await.unwrap();
        let mut response = vec![0; 4096];
        let n = tcp.read(&mut response).await.expect("a response, not a reset");
        let text = String::from_utf8_lossy(&response[..n]);
        assert!(text.starts_with("HTTP/1.1 413"), "{text}");
        assert!(text.contains("payload_too_large"), "{text}");
    }
    assert_eq!(fake.hits(), 0);
}

#[tokio::test]
async fn bad_input_is_refused_with_our_body_and_never_reaches_the_upstream() {
    let fake = Fake::start(Reply::json(200, OpenAi::completion("x", 1, 1))).await;
    let gw = gateway(config_for(&fake)).await;
    let m = OpenAi::MODEL;
    let json_cases: Vec<(&str, Value, u16, &str)> = vec![
        ("wrong type for messages", json!({"model": m, "messages": "hi"}), 400, "invalid_request"),
        (
            "wrong type for temperature",
            json!({"model": m, "messages": ok_message(), "temperature": "hot"}),
            400,
            "invalid_request",
        ),
        ("missing model", json!({"messages": ok_message()}), 400, "invalid_request"),
        ("empty model", json!({"model": "", "messages": ok_message()}), 400, "invalid_request"),
        ("empty messages", json!({"model": m, "messages": []}), 400, "invalid_request"),
        ("unknown role", json!({"model": m, "messages": [{"role": "wizard", "content": "x"}]}), 400, "invalid_request"),
        ("missing content", json!({"model": m, "messages": [{"role": "user"}]}), 400, "invalid_request"),
        (
            "image part",
            json!({"model": m, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
            400,
            "invalid_request",
        ),
        (
            "temperature above 2",
            json!({"model": m, "messages": ok_message(), "temperature": 2.5}),
            400,
            "invalid_request",
        ),
        (
            "temperature below 0",
            json!({"model": m, "messages": ok_message(), "temperature": -0.1}),
            400,
            "invalid_request",
        ),
        ("max_tokens 0", json!({"model": m, "messages": ok_message(), "max_tokens": 0}), 400, "invalid_request"),
        (
            "max_completion_tokens negative",
            json!({"model": m, "messages": ok_message(), "max_completion_tokens": -5}),
            400,
            "invalid_request",
        ),
        ("n = 2", json!({"model": m, "messages": ok_message(), "n": 2}), 400, "invalid_request"),
        (
            "five stop sequences",
            json!({"model": m, "messages": ok_message(), "stop": ["a","b","c","d","e"]}),
            400,
            "invalid_request",
        ),
        ("unknown provider", json!({"model": "nosuch/model", "messages": ok_message()}), 404, "model_not_found"),
        ("bare unknown model", json!({"model": "gpt-4o", "messages": ok_message()}), 404, "model_not_found"),
        ("provider with empty model", json!({"model": "groq/", "messages": ok_message()}), 404, "model_not_found"),
        (
            "disabled provider",
            json!({"model": "deepseek/deepseek-flash", "messages": ok_message()}),
            503,
            "provider_unavailable",
        ),
    ];
    for (name, body, status, code) in json_cases {
        let (got, body) = send_raw(&gw, Some("application/json"), serde_json::to_vec(&body).unwrap()).await;
        assert_eq!(got, status, "{name}: {body}");
        assert_error_body(&body, code);
    }

    let raw_cases: Vec<RawCase> = vec![
        ("malformed JSON", Some("application/json"), b"{\"model\": \"groq/x\", ".to_vec(), 400, "malformed_json"),
        (
            "trailing garbage",
            Some("application/json"),
            br#"{"model":"groq","messages":[{"role":"user","content":"hi"}]} {}"#.to_vec(),
            400,
            "malformed_json",
        ),
        ("empty body", Some("application/json"), Vec::new(), 400, "malformed_json"),
        ("invalid UTF-8", Some("application/json"), b"{\"model\": \"\xff\xfe\"}".to_vec(), 400, "malformed_json"),
        (
            "deeply nested",
            Some("application/json"),
            format!(r#"{{"model":"groq","messages":[],"vendor":{}{}}}"#, "[".repeat(5000), "]".repeat(5000))
                .into_bytes(),
            400,
            "malformed_json",
        ),
        (
            "form content type",
            Some("application/x-www-form-urlencoded"),
            b"a=b".to_vec(),
            415,
            "unsupported_media_type",
        ),
        ("body over the limit", Some("application/json"), vec![b' '; 65 * 1024], 413, "payload_too_large"),
    ];
    for (name, ct, body, status, code) in raw_cases {
        let (got, body) = send_raw(&gw, ct, body).await;
        assert_eq!(got, status, "{name}: {body}");
        assert_error_body(&body, code);
    }

    // A body over the limit without a Content-Length (chunked upload).
    let chunks = futures::stream::iter((0..80).map(|_| Ok::<_, std::io::Error>(vec![b' '; 1024])));
    let resp = gw
        .client
        .post(format!("{}/v1/chat/completions", gw.url))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert_error_body(&resp.json().await.unwrap(), "payload_too_large");

    assert_eq!(fake.hits(), 0, "no bad request may reach the upstream");
}

#[tokio::test]
async fn unknown_routes_and_methods_get_our_error_body() {
    let fake = Fake::start(Reply::json(200, "{}")).await;
    let gw = gateway(config_for(&fake)).await;
    let resp = gw.get("/v1/nothing-here").await;
    assert_eq!(resp.status(), 404);
    assert_error_body(&resp.json().await.unwrap(), "not_found");
    let resp = gw.get("/v1/chat/completions").await;
    assert_eq!(resp.status(), 405);
    assert_error_body(&resp.json().await.unwrap(), "method_not_allowed");
}

#[tokio::test]
async fn request_ids_are_echoed_when_well_formed_and_generated_otherwise() {
    let fake = Fake::start(Reply::json(200, OpenAi::completion("x", 1, 1))).await;
    let gw = gateway(config_for(&fake)).await;
    let url = format!("{}/v1/nothing", gw.url);
    let resp = gw.client.get(&url).header("x-request-id", "client-abc.123").send().await.unwrap();
    assert_eq!(resp.headers()["x-request-id"], "client-abc.123");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["request_id"], "client-abc.123");

    let resp = gw.client.get(&url).header("x-request-id", "bad id with spaces").send().await.unwrap();
    let generated = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_ne!(generated, "bad id with spaces");
    assert!(uuid::Uuid::parse_str(&generated).is_ok(), "{generated}");

    let a = gw.get("/health/live").await.headers()["x-request-id"].clone();
    let b = gw.get("/health/live").await.headers()["x-request-id"].clone();
    assert_ne!(a, b);
}

#[tokio::test]
async fn models_lists_configured_providers_and_aliases() {
    let fake = Fake::start(Reply::json(200, OpenAi::completion("x", 1, 1))).await;
    let mut config = config_for(&fake);
    config.aliases.insert("fast".into(), "groq/openai/gpt-oss-20b".into());
    let gw = gateway(config).await;
    let list: Value = gw.get("/v1/models").await.json().await.unwrap();
    assert_eq!(list["object"], "list");
    let ids: Vec<&str> = list["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert!(ids.contains(&"groq/openai/gpt-oss-120b"), "{ids:?}");
    assert!(ids.contains(&"gemini/gemini-3.5-flash"), "{ids:?}");
    assert!(ids.contains(&"fast"), "{ids:?}");
    assert!(!ids.iter().any(|id| id.starts_with("deepseek/")), "disabled providers are not listed: {ids:?}");

    // The alias routes to its target.
    let resp = gw.chat(json!({"model": "fast", "messages": ok_message()})).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(fake.received()[0].body["model"], "openai/gpt-oss-20b");
    // A bare provider id uses its default model.
    gw.chat(json!({"model": "groq", "messages": ok_message()})).await;
    assert_eq!(fake.received()[1].body["model"], "openai/gpt-oss-120b");
}

#[tokio::test]
async fn health_endpoints_report_state() {
    let fake = Fake::start(Reply::json(200, "{}")).await;
    let gw = gateway(config_for(&fake)).await;
    let health: Value = gw.get("/health").await.json().await.unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
    assert!(health["uptime_seconds"].is_u64());
    assert_eq!(health["components"]["providers"]["items"]["groq"]["status"], "configured");
    assert_eq!(health["components"]["providers"]["items"]["deepseek"]["status"], "disabled");
    assert!(!health.to_string().contains(support::GROQ_KEY), "no key in health");
    assert_eq!(gw.get("/health/live").await.status(), 200);
    assert_eq!(gw.get("/health/ready").await.status(), 200);
}

#[tokio::test]
async fn metrics_cover_requests_upstream_calls_and_build_info() {
    let fake = Fake::start(Reply::json(200, OpenAi::completion("x", 4, 2))).await;
    let gw = gateway(config_for(&fake)).await;
    assert_eq!(gw.chat(json!({"model": OpenAi::MODEL, "messages": ok_message()})).await.status(), 200);
    fake.set_reply(Reply::json(503, "{}"));
    assert_eq!(gw.chat(json!({"model": OpenAi::MODEL, "messages": ok_message()})).await.status(), 502);
    let text = gw.get("/metrics").await.text().await.unwrap();
    for needle in [
        "squad_http_requests_total{route=\"/v1/chat/completions\",method=\"POST\",status=\"200\"}",
        "squad_http_requests_total{route=\"/v1/chat/completions\",method=\"POST\",status=\"502\"}",
        "squad_http_request_duration_seconds_bucket{route=\"/v1/chat/completions\"",
        "squad_upstream_requests_total{provider=\"groq\",outcome=\"ok\"}",
        "squad_upstream_requests_total{provider=\"groq\",outcome=\"upstream_5xx\"}",
        "squad_upstream_request_duration_seconds_bucket{provider=\"groq\"",
        "squad_tokens_total{provider=\"groq\",direction=\"input\"}",
        "squad_http_requests_in_flight",
        "squad_build_info{version=",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
}

#[tokio::test]
async fn responses_parse_with_the_openai_sdk_types() {
    use async_openai::types::chat::{CreateChatCompletionResponse, CreateChatCompletionStreamResponse};
    // Groq's `service_tier: "on_demand"` passes through untouched, and
    // async-openai's closed enum rejects that value; the rest of the vendor
    // fields stay in the fixture.
    let mut upstream: Value = serde_json::from_str(&OpenAi::completion("Bring a jacket.", 22, 5)).unwrap();
    upstream.as_object_mut().unwrap().remove("service_tier");
    let fake = Fake::start(Reply::json(200, upstream.to_string())).await;
    let gw = gateway(config_for(&fake)).await;
    let body = gw.chat(json!({"model": OpenAi::MODEL, "messages": ok_message()})).await.text().await.unwrap();
    let parsed: CreateChatCompletionResponse = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(parsed.choices[0].message.content.as_deref(), Some("Bring a jacket."));
    assert_eq!(parsed.usage.unwrap().total_tokens, 27);

    for (dialect_events, model) in [
        (OpenAi::stream(&["a", "b"], 2, 2), OpenAi::MODEL),
        (support::dialects::Gemini::stream(&["a", "b"], 2, 2), support::dialects::Gemini::MODEL),
    ] {
        fake.set_reply(Reply::sse(dialect_events));
        let resp = gw
            .chat(json!({"model": model, "messages": ok_message(), "stream": true, "stream_options": {"include_usage": true}}))
            .await;
        let data = sse_data(resp).await;
        assert_eq!(data.last().unwrap(), "[DONE]");
        for d in &data[..data.len() - 1] {
            let _: CreateChatCompletionStreamResponse =
                serde_json::from_str(d).unwrap_or_else(|e| panic!("{model}: {e}: {d}"));
        }
    }
}

#[tokio::test]
async fn a_body_that_arrives_too_slowly_is_a_408() {
    let fake = Fake::start(Reply::json(200, OpenAi::completion("x", 1, 1))).await;
    let mut config = config_for(&fake);
    config.server.body_read_timeout = std::time::Duration::from_millis(300);
    let gw = gateway(config).await;
    let slow = futures::stream::unfold(0, |step| async move {
        match step {
            0 => Some((Ok::<_, std::io::Error>(b"{\"model\": ".to_vec()), 1)),
            1 => {
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                Some((Ok(b"\"groq\"}".to_vec()), 2))
            }
            _ => None,
        }
    });
    let started = std::time::Instant::now();
    let resp = gw
        .client
        .post(format!("{}/v1/chat/completions", gw.url))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(slow))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 408);
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "answered at the timeout, not after the body");
    assert_error_body(&resp.json().await.unwrap(), "body_timeout");
    assert_eq!(fake.hits(), 0);
}
