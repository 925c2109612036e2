//! PII block mode over HTTP: a request carrying a blocked type is refused
//! with 400 naming the types, never the values, and never reaches a provider.

mod support;

use serde_json::{Value, json};
use support::dialects::{Dialect, OpenAi};
use support::{Fake, Reply, assert_error_body, config_for, gateway, sse_data, sse_text};

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

const EMAIL: &str = "ana.souza@example.com";
const CARD: &str = "4111 1111 1111 1111";

fn masked_prompt() -> String {
    format!("write to {EMAIL} about card {CARD}; and again {EMAIL}")
}

fn masking_config(fake: &Fake) -> squad::config::Config {
    let mut config = config_for(fake);
    config.pii.mask = true;
    config
}

/// The provider sees placeholders, never the values; the client sees the
/// values again in the answer, which echoes the placeholders.
async fn masking_round_trip<D: Dialect>() {
    let answer = "Sent to [EMAIL_1] about [CARD_1].";
    let fake = Fake::start(Reply::json(200, D::completion(answer, 9, 7))).await;
    let gw = gateway(masking_config(&fake)).await;
    let resp = gw.chat(json!({"model": D::MODEL, "messages": [{"role": "user", "content": masked_prompt()}]})).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], format!("Sent to {EMAIL} about {CARD}."));
    let sent = fake.received()[0].body.to_string();
    assert!(!sent.contains(EMAIL) && !sent.contains("4111"), "the provider saw a value: {sent}");
    assert!(sent.contains("write to [EMAIL_1] about card [CARD_1]; and again [EMAIL_1]"), "{sent}");

    // Streamed, with each placeholder split across chunks.
    let pieces = ["Sent to [EM", "AIL_1", "] about [", "CARD_1]", ".", " Bye [EMAIL_"];
    fake.set_reply(Reply::sse(D::stream(&pieces, 9, 7)));
    let resp = gw
        .chat(json!({"model": D::MODEL, "stream": true, "messages": [{"role": "user", "content": masked_prompt()}]}))
        .await;
    assert_eq!(resp.status(), 200);
    let data = sse_data(resp).await;
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(sse_text(&data), format!("Sent to {EMAIL} about {CARD}. Bye [EMAIL_"));
    let sent = fake.received()[1].body.to_string();
    assert!(!sent.contains(EMAIL) && !sent.contains("4111"), "the provider saw a value: {sent}");
}

#[tokio::test]
async fn masking_round_trip_openai_compatible() {
    masking_round_trip::<OpenAi>().await;
}

#[tokio::test]
async fn masking_round_trip_gemini() {
    masking_round_trip::<support::dialects::Gemini>().await;
}

/// A client's own placeholder-shaped text is neither numbered over nor
/// turned into a value: `[EMAIL_1]` typed by the client stays itself.
#[tokio::test]
async fn placeholders_typed_by_the_client_are_left_alone() {
    let fake = Fake::start(Reply::json(200, OpenAi::completion("[EMAIL_1] and [EMAIL_2] and [EMAIL]", 3, 1))).await;
    let gw = gateway(masking_config(&fake)).await;
    let prompt = format!("I literally typed [EMAIL_1] and [EMAIL]; my address is {EMAIL}");
    let resp = gw.chat(json!({"model": OpenAi::MODEL, "messages": [{"role": "user", "content": prompt}]})).await;
    assert_eq!(resp.status(), 200);
    let sent = fake.received()[0].body.to_string();
    assert!(sent.contains("typed [EMAIL_1] and [EMAIL]; my address is [EMAIL_2]"), "{sent}");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], format!("[EMAIL_1] and {EMAIL} and [EMAIL]"));
}

/// Per-agent rules override the global ones; user-defined patterns are
/// masked, blocked and named like built-in types.
#[tokio::test]
async fn per_agent_rules_and_user_patterns() {
    let fake = Fake::start(Reply::json(200, OpenAi::completion("noted [EMPLOYEE_ID_1]", 3, 1))).await;
    let mut config = config_for(&fake);
    config.pii.patterns =
        vec![squad::config::PiiPattern { name: "EMPLOYEE_ID".into(), regex: r"\bEMP-[0-9]{6}\b".into() }];
    config.pii.agents.insert(
        "dev".into(),
        squad::config::PiiAgentConfig { mask: Some(true), mask_types: Some(vec!["EMPLOYEE_ID".into()]), block: None },
    );
    config.pii.agents.insert(
        "analyst".into(),
        squad::config::PiiAgentConfig { block: Some(vec!["EMPLOYEE_ID".into()]), ..Default::default() },
    );
    let gw = gateway(config).await;
    let prompt = format!("employee EMP-123456 mails {EMAIL}");

    // No rule for plain models: sent as is.
    let resp = gw.chat(json!({"model": OpenAi::MODEL, "messages": [{"role": "user", "content": prompt}]})).await;
    assert_eq!(resp.status(), 200);
    assert!(fake.received()[0].body.to_string().contains("EMP-123456"));

    // dev masks only the pattern; the e-mail is not in its mask_types.
    let resp = gw.post("/v1/agents/dev", json!({"prompt": prompt})).await;
    assert_eq!(resp.status(), 200);
    let sent = fake.received().last().unwrap().body.to_string();
    assert!(!sent.contains("EMP-123456") && sent.contains("[EMPLOYEE_ID_1]") && sent.contains(EMAIL), "{sent}");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["response"], "noted EMP-123456", "{body}");

    // analyst blocks the pattern.
    let hits = fake.hits();
    let resp = gw.post("/v1/agents/analyst", json!({"prompt": prompt})).await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    let err = assert_error_body(&body, "pii_blocked");
    assert!(err["message"].as_str().unwrap().contains("EMPLOYEE_ID"), "{err}");
    assert!(!body.to_string().contains("EMP-123456"));
    assert_eq!(fake.hits(), hits, "a blocked request reaches no provider");
}

#[test]
fn bad_patterns_and_agent_rules_are_config_errors() {
    let mut config = squad::config::Config::default();
    config.pii.patterns = vec![
        squad::config::PiiPattern { name: "EMAIL".into(), regex: "x+".into() },
        squad::config::PiiPattern { name: "TICKET".into(), regex: "(unclosed".into() },
        squad::config::PiiPattern { name: "ANY".into(), regex: "a*".into() },
    ];
    config.pii.mask_types = vec!["TICKET".into(), "SHOE".into()];
    config.pii.agents.insert("Bad Id".into(), Default::default());
    let mut paths: Vec<String> = config.validate().into_iter().map(|i| i.path).collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "pii.agents.Bad Id",
            "pii.mask_types[1]",
            "pii.patterns[0].name",
            "pii.patterns[1].regex",
            "pii.patterns[2].regex"
        ]
    );
}
