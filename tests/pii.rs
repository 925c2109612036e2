//! PII block mode over HTTP: a request carrying a blocked type is refused
//! with 400 naming the types, never the values, and never reaches a provider.

mod support;

use serde_json::{Value, json};
use support::dialects::{Dialect, OpenAi};
use support::{Fake, Reply, assert_error_body, config_for, gateway};

#[tokio::test]
async fn blocked_types_are_refused_before_any_provider_sees_them() {
    let fake = Fake::start(Reply::json(200, OpenAi::completion("ok", 3, 1))).await;
    let mut config = config_for(&fake);
    config.pii.block = vec!["CARD".into(), "cpf".into()];
    let gw = gateway(config).await;
    let card = "4111 1111 1111 1111";
    let cpf = "529.982.247-25";
    let text = format!("charge {card} for customer {cpf}, mail ana@example.com");
    let resp = gw.chat(json!({"model": OpenAi::MODEL, "messages": [{"role": "user", "content": text}]})).await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    let err = assert_error_body(&body, "pii_blocked");
    let message = err["message"].as_str().unwrap();
    assert!(message.contains("CARD") && message.contains("CPF") && !message.contains("EMAIL"), "{message}");
    let raw = body.to_string();
    assert!(!raw.contains("4111") && !raw.contains("529.982"), "no value in the answer: {raw}");

    let resp = gw.post("/v1/agents/dev", json!({"prompt": format!("store {cpf}")})).await;
    assert_eq!(resp.status(), 400);
    assert_error_body(&resp.json().await.unwrap(), "pii_blocked");
    assert_eq!(fake.hits(), 0, "nothing reached the upstream");

    // Types not blocked pass (an e-mail here), and so does clean text.
    let resp = gw
        .chat(json!({"model": OpenAi::MODEL, "messages": [{"role": "user", "content": "mail ana@example.com"}]}))
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(fake.hits(), 1);
}

#[test]
fn unknown_types_are_a_config_error() {
    let mut config = squad::config::Config::default();
    config.pii.block = vec!["CARD".into(), "SHOE_SIZE".into()];
    let issues = config.validate();
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert_eq!(issues[0].path, "pii.block[1]");
}
