//! `--demo` wiring: the simulated upstream behind all five providers, through
//! the real adapters; and its faults, selected by model name, reach clients as
//! the right statuses and events.

mod support;

use serde_json::{Value, json};
use squad::app::{self, Secrets};
use squad::config::Config;
use squad::mock::{self, MockOptions};
use squad::server::{self, Drain};
use support::{assert_error_body, sse_data};

async fn demo_gateway() -> (String, std::sync::Arc<mock::MockStats>) {
    let (mock_app, stats) = mock::router(MockOptions { retry_after_secs: 7, ..MockOptions::default() });
    let mock_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mock_addr = mock_listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(mock_listener, mock_app).await });

    let mut config = Config::default();
    let mut secrets = Secrets::default();
    app::demo_overrides(&mut config, &mut secrets, mock_addr);
    config.audit.enabled = false;
    let state = app::state(&config, &secrets).unwrap();
    let lifecycle = state.lifecycle.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let drain = Drain { delay: std::time::Duration::ZERO, grace: std::time::Duration::from_secs(1) };
    let http = server::Http::from_config(&config.server).unwrap();
    tokio::spawn(server::run(listener, app::router(state), lifecycle, drain, http, std::future::pending()));
    (url, stats)
}

async fn chat(url: &str, body: Value) -> reqwest::Response {
    reqwest::Client::new().post(format!("{url}/v1/chat/completions")).json(&body).send().await.unwrap()
}

#[tokio::test]
async fn every_provider_answers_plain_and_streamed_through_the_simulated_upstream() {
    let (url, stats) = demo_gateway().await;
    for provider in ["groq", "cerebras", "gemini", "openrouter", "deepseek"] {
        let msg = json!([{"role": "user", "content": format!("ping {provider}")}]);
        let resp = chat(&url, json!({"model": provider, "messages": msg})).await;
        assert_eq!(resp.status(), 200, "{provider}");
        let body: Value = resp.json().await.unwrap();
        let text = body["choices"][0]["message"]["content"].as_str().unwrap();
        assert!(text.ends_with(&format!("You said: ping {provider}")), "{provider}: {text}");
        assert!(body["usage"]["total_tokens"].as_u64().unwrap() > 0);

        let resp = chat(
            &url,
            json!({"model": provider, "messages": msg, "stream": true,
                                     "stream_options": {"include_usage": true}}),
        )
        .await;
        let data = sse_data(resp).await;
        assert_eq!(data.last().unwrap(), "[DONE]", "{provider}");
        let text = support::sse_text(&data[..data.len() - 1]);
        assert!(text.ends_with(&format!("You said: ping {provider}")), "{provider}: {text}");
        let usage: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
        assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() > 0, "{provider}: {usage}");
    }
    assert_eq!(stats.requests.load(std::sync::atomic::Ordering::Relaxed), 10);
}

/// Each case gets a fresh gateway: a fault parks the provider (429) or counts
/// against its circuit breaker, which would colour the next case.
#[tokio::test]
async fn faults_chosen_by_model_name_reach_the_client_correctly() {
    let msg = json!([{"role": "user", "content": "hello there friend"}]);
    for provider in ["groq", "gemini"] {
        let (url, _) = demo_gateway().await;
        let resp = chat(&url, json!({"model": format!("{provider}/fault-503"), "messages": msg})).await;
        assert_eq!(resp.status(), 502, "{provider}");
        assert_error_body(&resp.json().await.unwrap(), "upstream_failed");

        let (url, _) = demo_gateway().await;
        let resp = chat(&url, json!({"model": format!("{provider}/fault-429"), "messages": msg})).await;
        assert_eq!(resp.status(), 429, "{provider}");
        assert_eq!(resp.headers()["retry-after"], "7", "{provider}: the mock's Retry-After reaches the client");

        let (url, _) = demo_gateway().await;
        let resp = chat(&url, json!({"model": format!("{provider}/fault-malformed"), "messages": msg})).await;
        assert_eq!(resp.status(), 502, "{provider}");

        let (url, _) = demo_gateway().await;
        let resp = chat(&url, json!({"model": format!("{provider}/fault-cut"), "messages": msg, "stream": true})).await;
        assert_eq!(resp.status(), 200, "{provider}");
        let data = sse_data(resp).await;
        assert!(!data.contains(&"[DONE]".to_owned()), "{provider}: {data:?}");
        assert_error_body(&serde_json::from_str(data.last().unwrap()).unwrap(), "stream_interrupted");

        let (url, _) = demo_gateway().await;
        let resp = chat(&url, json!({"model": format!("{provider}/fault-cut"), "messages": msg})).await;
        assert_eq!(resp.status(), 502, "{provider}");
    }
}
