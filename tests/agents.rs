//! Agents end to end over real HTTP: fallback along an agent's chain against
//! fake upstreams, parking, breakers, streaming fallback, validation, the
//! roster, conversations, and all 13 agents answering through both APIs.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::dialects::{Dialect, Gemini, OpenAi};
use support::{Fake, Reply, all_secrets, assert_error_body, config_with, gateway_with, sse_data};

/// `analyst` (Mary) tries gemini, then groq, then deepseek.
async fn analyst_world(gemini: Reply, groq: Reply) -> (Fake, Fake, support::Gateway) {
    let a = Fake::start(gemini).await;
    let b = Fake::start(groq).await;
    let gw = gateway_with(config_with(&[("gemini", &a), ("groq", &b)]), all_secrets()).await;
    (a, b, gw)
}

fn chain(body: &Value) -> Vec<String> {
    body["metadata"]["provider_chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| format!("{}:{}", a["provider"].as_str().unwrap(), a["outcome"].as_str().unwrap()))
        .collect()
}

#[tokio::test]
async fn primary_500_falls_back_to_the_secondary() {
    let (a, b, gw) = analyst_world(
        Reply::json(500, Gemini::error(500, "boom")),
        Reply::json(200, OpenAi::completion("From groq.", 7, 3)),
    )
    .await;
    let resp = gw.post("/v1/agents/analyst", json!({"prompt": "Size the market for tide clocks."})).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-squad-provider"], "groq");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["response"], "From groq.");
    assert_eq!(body["provider"], "groq");
    assert_eq!(body["model"], "openai/gpt-oss-120b");
    assert_eq!(body["agent"], "analyst");
    assert_eq!(body["agent_name"], "Mary");
    assert_eq!(body["metadata"]["fallback_used"], true);
    assert_eq!(chain(&body), ["gemini:upstream_5xx", "gemini:upstream_5xx", "groq:ok", "deepseek:disabled"][..3]);
    assert_eq!(body["metadata"]["provider_chain"][0]["status"], 500);
    assert_eq!(body["metadata"]["tokens_input"], 7);
    assert_eq!(body["metadata"]["tokens_output"], 3);
    assert_eq!(body["metadata"]["turns"], 1);
    assert!(body["metadata"]["request_id"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(body["conversation_id"].as_str().is_some_and(|s| !s.is_empty()));
    assert_eq!(a.hits(), 2, "a 5xx is retried once on the same provider");
    // The persona went upstream as the system message.
    let sent = &b.received()[0].body;
    assert_eq!(sent["messages"][0]["role"], "system");
    assert!(sent["messages"][0]["content"].as_str().unwrap().contains("You are Mary"));
    assert_eq!(sent["messages"][1]["content"], "Size the market for tide clocks.");
    assert_eq!(sent["temperature"], 0.5, "the agent's default temperature");
}

#[tokio::test]
async fn rate_limited_primary_is_parked_and_skipped_until_its_retry_after() {
    let (a, b, gw) =
        analyst_world(Gemini::rate_limited(30).remove(0), Reply::json(200, OpenAi::completion("ok", 1, 1))).await;
    let body: Value = gw.post("/v1/agents/analyst", json!({"prompt": "one"})).await.json().await.unwrap();
    assert_eq!(chain(&body), ["gemini:rate_limited", "groq:ok"]);
    assert_eq!(a.hits(), 1);
    let body: Value = gw.post("/v1/agents/analyst", json!({"prompt": "two"})).await.json().await.unwrap();
    assert_eq!(chain(&body), ["gemini:rate_limited", "groq:ok"]);
    assert_eq!(body["metadata"]["provider_chain"][0]["latency_ms"], 0);
    assert_eq!(a.hits(), 1, "a parked provider is not called");
    assert_eq!(b.hits(), 2);
    let status: Value = gw.get("/providers/gemini").await.json().await.unwrap();
    assert_eq!(status["status"], "degraded");
    assert!(status["parked_for_ms"].as_u64().unwrap() > 20_000);
    assert!(status["last_rate_limited_at"].is_u64());
}

#[tokio::test]
async fn auth_failure_moves_on_without_retry_and_request_errors_do_not_fall_back() {
    let (a, _b, gw) = analyst_world(
        Reply::json(401, Gemini::error(401, "bad key")),
        Reply::json(200, OpenAi::completion("ok", 1, 1)),
    )
    .await;
    let body: Value = gw.post("/v1/agents/analyst", json!({"prompt": "x"})).await.json().await.unwrap();
    assert_eq!(chain(&body), ["gemini:auth", "groq:ok"]);
    assert_eq!(a.hits(), 1);

    let (a, b, gw) = analyst_world(
        Reply::json(400, Gemini::error(400, "too long")),
        Reply::json(200, OpenAi::completion("ok", 1, 1)),
    )
    .await;
    let resp = gw.post("/v1/agents/analyst", json!({"prompt": "x"})).await;
    assert_eq!(resp.status(), 400);
    assert_error_body(&resp.json().await.unwrap(), "upstream_rejected");
    assert_eq!((a.hits(), b.hits()), (1, 0), "no fallback after a request error");
}

#[tokio::test]
async fn when_all_fail_the_502_lists_every_attempt() {
    let (_a, _b, gw) =
        analyst_world(Reply::json(503, Gemini::error(503, "x")), Reply::json(502, OpenAi::error(502, "y"))).await;
    let resp = gw.post("/v1/agents/analyst", json!({"prompt": "x"})).await;
    assert_eq!(resp.status(), 502);
    let err = assert_error_body(&resp.json().await.unwrap(), "upstream_failed");
    let attempts: Vec<String> = err["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| format!("{}:{}:{}", a["provider"].as_str().unwrap(), a["outcome"].as_str().unwrap(), a["status"]))
        .collect();
    assert_eq!(
        attempts,
        [
            "gemini:upstream_5xx:503",
            "gemini:upstream_5xx:503",
            "groq:upstream_5xx:502",
            "groq:upstream_5xx:502",
            "deepseek:disabled:null"
        ]
    );
}

#[tokio::test]
async fn the_breaker_opens_after_failures_and_closes_after_a_good_probe() {
    let a = Fake::start(Reply::json(500, Gemini::error(500, "x"))).await;
    let b = Fake::start(Reply::json(200, OpenAi::completion("ok", 1, 1))).await;
    let mut config = config_with(&[("gemini", &a), ("groq", &b)]);
    config.resilience.breaker.consecutive_failures = 2;
    config.resilience.breaker.cooldown = Duration::from_millis(400);
    let gw = gateway_with(config, all_secrets()).await;

    gw.post("/v1/agents/analyst", json!({"prompt": "x"})).await;
    assert_eq!(a.hits(), 2);
    let body: Value = gw.post("/v1/agents/analyst", json!({"prompt": "x"})).await.json().await.unwrap();
    assert_eq!(chain(&body), ["gemini:circuit_open", "groq:ok"]);
    assert_eq!(a.hits(), 2, "no call while open");
    let status: Value = gw.get("/providers/gemini").await.json().await.unwrap();
    assert_eq!((status["status"].as_str(), status["breaker"].as_str()), (Some("unavailable"), Some("open")));

    a.set_reply(Reply::json(200, Gemini::completion("back", 1, 1)));
    tokio::time::sleep(Duration::from_millis(450)).await;
    let body: Value = gw.post("/v1/agents/analyst", json!({"prompt": "x"})).await.json().await.unwrap();
    assert_eq!(body["provider"], "gemini", "the probe went through and succeeded");
    let status: Value = gw.get("/providers/gemini").await.json().await.unwrap();
    assert_eq!(status["breaker"], "closed");
    assert_eq!(status["configured"], true);
    assert!(status["failure_rate"].as_f64().unwrap() > 0.0);
    assert!(status["latency_p95_ms"].is_number());
    assert_eq!(status["last_error"], "upstream_5xx");
    assert!(!status.to_string().contains("test-key"), "never a key");
    assert_eq!(status["limits"]["rpm"], 15, "gemini's default budget");
    assert_eq!(status["limits"]["effective_rpm"], 15.0);

    let all: Value = gw.get("/providers?sort=failure_rate").await.json().await.unwrap();
    assert_eq!(all["count"], 5);
    assert_eq!(all["providers"][0]["name"], "gemini", "highest failure rate first");
    let down: Value = gw.get("/providers?status=unavailable").await.json().await.unwrap();
    let names: Vec<&str> = down["providers"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["cerebras", "deepseek", "openrouter"], "disabled providers are unavailable");
    assert_eq!(gw.get("/providers?sort=colour").await.status(), 400);
    assert_eq!(gw.get("/providers/nosuch").await.status(), 404);
    let metrics = gw.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("squad_breaker_transitions_total{provider=\"gemini\",from=\"closed\",to=\"open\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("squad_fallbacks_total{from=\"gemini\",to=\"groq\"}"));
    assert!(metrics.contains("squad_retries_total{provider=\"gemini\"}"));
    assert!(metrics.contains("squad_agent_requests_total{agent=\"analyst\",outcome=\"ok\"}"));
}

#[tokio::test]
async fn streaming_fallback_before_the_first_chunk_is_invisible() {
    let (_a, _b, gw) =
        analyst_world(Reply::json(503, Gemini::error(503, "x")), Reply::sse(OpenAi::stream(&["Fell", " back"], 2, 2)))
            .await;
    let resp = gw
        .post(
            "/v1/chat/completions",
            json!({"model": "analyst", "stream": true,
        "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-squad-provider"], "groq");
    let data = sse_data(resp).await;
    assert_eq!(data.last().unwrap(), "[DONE]");
    assert_eq!(support::sse_text(&data[..data.len() - 1]), "Fell back");

    // The primary opens its stream (200) and fails before any chunk: still invisible.
    let (a, _b, gw) = analyst_world(
        Reply::sse(vec![Gemini::malformed_event_for_tests()]),
        Reply::sse(OpenAi::stream(&["Second", " try"], 2, 2)),
    )
    .await;
    let resp = gw
        .post(
            "/v1/chat/completions",
            json!({"model": "analyst", "stream": true,
        "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(resp.headers()["x-squad-provider"], "groq");
    let data = sse_data(resp).await;
    assert_eq!(data.last().unwrap(), "[DONE]");
    assert!(data.iter().any(|d| d.contains("Second")), "{data:?}");
    assert_eq!(a.hits(), 1, "a decode failure moves on without retry");

    // A failure after the first chunk cannot fall back: an error event, no [DONE].
    let mut events = Gemini::stream(&["part", " more", " end"], 1, 1);
    events.truncate(2);
    let (_a, b, gw) = analyst_world(
        Reply::Sse { events, delay: Duration::from_millis(5), cut: true },
        Reply::sse(OpenAi::stream(&["x"], 1, 1)),
    )
    .await;
    let data = sse_data(
        gw.post(
            "/v1/chat/completions",
            json!({"model": "agent/analyst", "stream": true,
        "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await,
    )
    .await;
    assert!(!data.contains(&"[DONE]".to_owned()));
    assert_error_body(&serde_json::from_str(data.last().unwrap()).unwrap(), "stream_interrupted");
    assert_eq!(b.hits(), 0, "no fallback once content reached the client");
}

#[tokio::test]
async fn agent_requests_are_validated_with_422_naming_the_field() {
    let (a, b, gw) = analyst_world(
        Reply::json(200, Gemini::completion("ok", 1, 1)),
        Reply::json(200, OpenAi::completion("ok", 1, 1)),
    )
    .await;
    let cases = vec![
        (json!({}), "prompt"),
        (json!({"prompt": ""}), "prompt"),
        (json!({"prompt": "x".repeat(10_001)}), "prompt"),
        (json!({"prompt": 42}), "prompt"),
        (json!({"prompt": "x", "max_tokens": 0}), "max_tokens"),
        (json!({"prompt": "x", "max_tokens": 100_001}), "max_tokens"),
        (json!({"prompt": "x", "temperature": 3}), "temperature"),
        (json!({"prompt": "x", "temperature": "warm"}), "temperature"),
        (json!({"prompt": "x", "metadata": [1, 2]}), "metadata"),
        (json!({"prompt": "x", "conversation_id": "../../etc"}), "conversation_id"),
    ];
    for (body, field) in cases {
        let resp = gw.post("/v1/agents/analyst", body.clone()).await;
        assert_eq!(resp.status(), 422, "{body}");
        let err = assert_error_body(&resp.json().await.unwrap(), "validation_error");
        assert_eq!(err["param"], field, "{body}");
    }
    let resp = gw
        .client
        .post(format!("{}/v1/agents/analyst", gw.url))
        .header("content-type", "application/json")
        .body("{\"prompt\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_error_body(&resp.json().await.unwrap(), "malformed_json");
    let resp = gw.post("/v1/chat", json!({"prompt": "x"})).await;
    assert_eq!(resp.status(), 422);
    assert_eq!(assert_error_body(&resp.json().await.unwrap(), "validation_error")["param"], "agent");
    // Unknown agent and a bad body: the agent decides (404).
    let resp = gw.post("/v1/agents/nobody", json!({"prompt": 42})).await;
    assert_eq!(resp.status(), 404);

    for bad in ["nobody", "..%2F..%2Fetc", "analyst%00", "ANALYST"] {
        let resp =
            gw.client.post(format!("{}/v1/agents/{bad}", gw.url)).json(&json!({"prompt": "x"})).send().await.unwrap();
        assert_eq!(resp.status(), 404, "{bad}");
        let err = assert_error_body(&resp.json().await.unwrap(), "agent_not_found");
        assert_eq!(err["valid_agents"].as_array().unwrap().len(), 13);
        assert!(err["message"].as_str().unwrap().contains("analyst, architect"));
    }
    assert_eq!(a.hits() + b.hits(), 0, "nothing invalid reached an upstream");

    // `task` is an alias of `prompt`; unknown fields are ignored.
    let resp = gw.post("/v1/chat", json!({"agent": "analyst", "task": "go", "colour": "blue"})).await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn the_roster_lists_thirteen_agents_sorted() {
    let a = Fake::start(Reply::json(200, "{}")).await;
    let gw = gateway_with(config_with(&[("groq", &a)]), all_secrets()).await;
    let list: Value = gw.get("/v1/agents").await.json().await.unwrap();
    assert_eq!(list["count"], 13);
    let ids: Vec<&str> = list["agents"].as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);
    let one: Value = gw.get("/v1/agents/storyteller").await.json().await.unwrap();
    assert_eq!(one["name"], "Sophia");
    assert_eq!(one["default_max_tokens"], 3072);
    assert!(one["providers"].as_array().unwrap().len() >= 3);
    let models: Value = gw.get("/v1/models").await.json().await.unwrap();
    assert!(models["data"].as_array().unwrap().iter().any(|m| m["id"] == "tea" && m["owned_by"] == "squad"));
}

#[tokio::test]
async fn conversations_accumulate_are_trimmed_and_survive_concurrency() {
    let a = Fake::start(Reply::json(200, Gemini::completion("noted", 1, 1))).await;
    let mut config = config_with(&[("gemini", &a)]);
    config.conversations.max_turns = 3;
    let gw = gateway_with(config, all_secrets()).await;

    let first: Value = gw.post("/v1/agents/analyst", json!({"prompt": "turn 1"})).await.json().await.unwrap();
    let id = first["conversation_id"].as_str().unwrap().to_owned();
    for n in 2..=5 {
        let body: Value = gw
            .post("/v1/agents/analyst", json!({"prompt": format!("turn {n}"), "conversation_id": id}))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(body["metadata"]["turns"], n);
        assert_eq!(body["conversation_id"], id.as_str());
    }
    // The fifth request carried the 3 most recent earlier turns (max_turns = 3).
    let sent = a.received().last().unwrap().body.clone();
    let texts: Vec<String> = sent["contents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["parts"][0]["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(texts, ["turn 2", "noted", "turn 3", "noted", "turn 4", "noted", "turn 5"]);
    assert!(
        sent["systemInstruction"]["parts"][0]["text"].as_str().unwrap().contains("Mary"),
        "the system prompt is never trimmed"
    );

    // Another caller's conversation with the same id is separate.
    let other: Value = gw
        .post("/v1/agents/analyst", json!({"prompt": "hello", "conversation_id": id, "user_id": "someone-else"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(other["metadata"]["turns"], 1);

    // Concurrent turns on one conversation: none lost, none interleaved.
    let mut config = config_with(&[("gemini", &a)]);
    config.conversations.max_turns = 50;
    let gw = gateway_with(config, all_secrets()).await;
    let shared = "shared-conversation-1";
    let requests =
        (0..10).map(|i| gw.post("/v1/agents/analyst", json!({"prompt": format!("c{i}"), "conversation_id": shared})));
    for resp in futures::future::join_all(requests).await {
        assert_eq!(resp.status(), 200);
    }
    let body: Value =
        gw.post("/v1/agents/analyst", json!({"prompt": "last", "conversation_id": shared})).await.json().await.unwrap();
    assert_eq!(body["metadata"]["turns"], 11);
    let sent = a.received().last().unwrap().body.clone();
    let roles: Vec<&str> = sent["contents"].as_array().unwrap().iter().map(|c| c["role"].as_str().unwrap()).collect();
    assert_eq!(roles.len(), 21, "ten whole turns, then the new prompt");
    assert!(roles.chunks(2).all(|pair| pair[0] == "user" && pair.get(1).is_none_or(|r| *r == "model")), "{roles:?}");
}

#[tokio::test]
async fn all_thirteen_agents_answer_through_both_apis() {
    let (mock_app, _) = squad::mock::router(squad::mock::MockOptions::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, mock_app).await });
    let mut config = squad::config::Config::default();
    let mut secrets = squad::app::Secrets::default();
    squad::app::demo_overrides(&mut config, &mut secrets, addr);
    config.audit.enabled = false;
    let gw = gateway_with(config, secrets).await;

    let list: Value = gw.get("/v1/agents").await.json().await.unwrap();
    for agent in list["agents"].as_array().unwrap() {
        let id = agent["id"].as_str().unwrap();
        let body: Value =
            gw.post(&format!("/v1/agents/{id}"), json!({"prompt": format!("hello {id}")})).await.json().await.unwrap();
        assert!(body["response"].as_str().unwrap().ends_with(&format!("hello {id}")), "{id}: {body}");
        assert_eq!(body["provider"], agent["providers"][0]["provider"], "{id}: the primary answers");
        assert_eq!(body["agent_name"], agent["name"]);

        let resp = gw
            .post(
                "/v1/chat/completions",
                json!({"model": id, "messages": [{"role": "user", "content": format!("hi {id}")}]}),
            )
            .await;
        assert_eq!(resp.status(), 200, "{id}");
        let body: Value = resp.json().await.unwrap();
        assert!(body["choices"][0]["message"]["content"].as_str().unwrap().ends_with(&format!("hi {id}")), "{id}");

        let resp = gw
            .post(
                "/v1/chat/completions",
                json!({"model": id, "stream": true, "messages": [{"role": "user", "content": format!("yo {id}")}]}),
            )
            .await;
        let data = sse_data(resp).await;
        assert_eq!(data.last().unwrap(), "[DONE]", "{id}");
        let text = support::sse_text(&data[..data.len() - 1]);
        assert!(text.ends_with(&format!("yo {id}")), "{id}: {text}");
    }
}
