//! Hardening headers and CORS on every route family, errors included.

mod support;

use serde_json::json;
use support::dialects::{Dialect, OpenAi};
use support::{Fake, Reply, assert_hardened, config_for, gateway};

const ORIGIN: &str = "https://app.example.com";

#[tokio::test]
async fn every_route_family_is_hardened_and_cors_follows_the_allow_list() {
    let fake = Fake::start(Reply::json(200, OpenAi::completion("hi", 3, 1))).await;
    let mut config = config_for(&fake);
    config.cors.allowed_origins = vec![ORIGIN.into()];
    let gw = gateway(config).await;
    let c = &gw.client;
    let chat = json!({"model": OpenAi::MODEL, "messages": [{"role": "user", "content": "hi"}]});
    let requests = [
        ("chat 200", c.post(format!("{}/v1/chat/completions", gw.url)).json(&chat)),
        (
            "chat 400",
            c.post(format!("{}/v1/chat/completions", gw.url)).body("{nope").header("content-type", "application/json"),
        ),
        ("agent 404", c.post(format!("{}/v1/agents/nobody", gw.url)).json(&json!({"prompt": "x"}))),
        ("agents", c.get(format!("{}/v1/agents", gw.url))),
        ("models", c.get(format!("{}/v1/models", gw.url))),
        ("providers", c.get(format!("{}/providers", gw.url))),
        ("health", c.get(format!("{}/health", gw.url))),
        ("metrics", c.get(format!("{}/metrics", gw.url))),
        ("no route", c.get(format!("{}/nowhere", gw.url))),
        ("405", c.delete(format!("{}/v1/chat/completions", gw.url))),
    ];
    for (what, req) in requests {
        let listed = req.try_clone().unwrap().header("origin", ORIGIN).send().await.unwrap();
        assert_hardened(listed.headers(), what);
        let h = listed.headers();
        assert_eq!(h.get("access-control-allow-origin").unwrap(), ORIGIN, "{what}");
        assert!(h.get("access-control-allow-credentials").is_none(), "{what}");
        assert!(h.get("access-control-expose-headers").unwrap().to_str().unwrap().contains("x-request-id"));
        assert!(h.get_all("vary").iter().any(|v| v.to_str().unwrap().contains("origin")), "{what}");

        let unlisted = req.header("origin", "https://evil.example.net").send().await.unwrap();
        assert_hardened(unlisted.headers(), what);
        assert!(unlisted.headers().keys().all(|k| !k.as_str().starts_with("access-control-")), "{what}");
    }

    let preflight = |origin: &str| {
        c.request(reqwest::Method::OPTIONS, format!("{}/v1/chat/completions", gw.url))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization, content-type")
            .send()
    };
    let ok = preflight(ORIGIN).await.unwrap();
    assert_eq!(ok.status(), 204);
    assert_eq!(ok.headers()["access-control-allow-origin"], ORIGIN);
    assert!(ok.headers()["access-control-allow-methods"].to_str().unwrap().contains("POST"));
    assert!(ok.headers()["access-control-allow-headers"].to_str().unwrap().contains("authorization"));
    assert_eq!(ok.headers()["access-control-max-age"], "600");
    assert_hardened(ok.headers(), "preflight");
    let refused = preflight("https://evil.example.net").await.unwrap();
    assert_eq!(refused.status(), 403);
    assert!(refused.headers().keys().all(|k| !k.as_str().starts_with("access-control-")));
    let body: serde_json::Value = refused.json().await.unwrap();
    support::assert_error_body(&body, "cors_origin_not_allowed");
    assert_eq!(fake.hits(), 2, "only the valid chat (sent with each origin) reached the upstream");
}

#[test]
fn a_wildcard_origin_with_credentials_is_refused() {
    let mut config = squad::config::Config::default();
    config.cors.allowed_origins = vec!["*".into()];
    config.cors.allow_credentials = true;
    let issues = config.validate();
    assert!(issues.iter().any(|i| i.path == "cors.allowed_origins"), "{issues:?}");
    config.cors.allowed_origins = vec!["https://a.example.com/path".into()];
    config.cors.allow_credentials = false;
    assert!(config.validate().iter().any(|i| i.path == "cors.allowed_origins[0]"));
}
