//! How upstream calls leave the process, tested on a real `squad serve` (the
//! environment is per process): HTTPS upstreams verified against the
//! platform's roots (`SSL_CERT_FILE` included), and `HTTP_PROXY` / `NO_PROXY`
//! from the environment.

mod support;

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use support::dialects::{Dialect, OpenAi};
use support::process::{serve_yaml, stop, temp_dir};
use support::{Fake, Reply, assert_error_body, config_for, gateway};

/// A self-signed certificate for 127.0.0.1: (cert file, key file).
fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let (cert, key) = (dir.join("upstream.crt"), dir.join("upstream.key"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

/// Starts `squad serve` off the runtime's threads (it blocks until listening).
async fn serve(dir: &Path, yaml: String, env: Vec<(&'static str, String)>) -> (std::process::Child, String) {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (child, url, logs) = serve_yaml(&dir, &yaml, &env);
        std::thread::spawn(move || while logs.recv().is_ok() {});
        (child, url)
    })
    .await
    .unwrap()
}

async fn shut(mut child: std::process::Child) {
    tokio::task::spawn_blocking(move || stop(&mut child)).await.unwrap();
}

async fn chat(url: &str, model: &str) -> (u16, Value) {
    let body = json!({"model": model, "messages": [{"role": "user", "content": "hello"}]});
    let resp = reqwest::Client::new().post(format!("{url}/v1/chat/completions")).json(&body).send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

fn config(providers: &str) -> String {
    format!(
        "auth: {{ mode: disabled }}\naudit: {{ enabled: false }}\nlimits: {{ enabled: false }}\n\
         server: {{ bind: 127.0.0.1, port: 0, shutdown_grace: 5s }}\nproviders:\n{providers}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_is_verified_against_the_platform_roots() {
    // The upstream is an in-process Squad serving HTTPS with a self-signed
    // certificate, in front of a fake: the Squad under test calls it as `groq`.
    let fake = Fake::start(Reply::json(200, OpenAi::completion("over tls", 3, 2))).await;
    let dir = temp_dir();
    let (cert, key) = self_signed(&dir);
    let mut front = config_for(&fake);
    front.server.tls.cert_file = Some(cert.clone());
    front.server.tls.key_file = Some(key);
    let front = gateway(front).await;
    assert!(front.url.starts_with("https://"), "{}", front.url);
    let yaml = config(&format!("  groq: {{ base_url: \"{}/v1\" }}\n", front.url));
    let model = format!("groq/{}", OpenAi::MODEL);

    // Trusted through SSL_CERT_FILE: the call goes through.
    let (child, url) = serve(&dir, yaml.clone(), vec![("SSL_CERT_FILE", cert.display().to_string())]).await;
    let (status, body) = chat(&url, &model).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "over tls");
    assert_eq!(fake.hits(), 1);
    shut(child).await;

    // Not trusted: the handshake fails, nothing reaches the fake, and the
    // client gets our error body.
    let (child, url) = serve(&dir, yaml, Vec::new()).await;
    let (status, body) = chat(&url, &model).await;
    assert_eq!(status, 502, "{body}");
    assert_error_body(&body, "upstream_failed");
    assert_eq!(fake.hits(), 1, "an unverified upstream was sent the request");
    shut(child).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environment_proxy_carries_upstream_calls_and_no_proxy_bypasses_it() {
    let proxy = Fake::start(Reply::json(200, OpenAi::completion("via proxy", 3, 2))).await;
    let direct = Fake::start(Reply::json(200, OpenAi::completion("direct", 3, 2))).await;
    let dir = temp_dir();
    // `upstream.test` never resolves: only a proxy can reach it.
    let yaml = config(&format!(
        "  groq: {{ base_url: \"http://upstream.test/openai/v1\" }}\n  cerebras: {{ base_url: \"{}/v1\" }}\n",
        direct.url()
    ));
    let env = vec![
        ("HTTP_PROXY", proxy.url()),
        ("NO_PROXY", "127.0.0.1".to_owned()),
        ("CEREBRAS_API_KEY", "csk-transport-test-0123456789".to_owned()),
    ];
    let (child, url) = serve(&dir, yaml, env).await;

    let (status, body) = chat(&url, OpenAi::MODEL).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "via proxy");
    let seen = proxy.received();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers["host"], "upstream.test");
    assert_eq!(seen[0].path, "/openai/v1/chat/completions");
    assert_eq!(seen[0].body["model"], OpenAi::MODEL.strip_prefix("groq/").unwrap());

    // NO_PROXY covers 127.0.0.1: cerebras is called directly.
    let (status, body) = chat(&url, "cerebras/llama3.1-8b").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "direct");
    assert_eq!((proxy.hits(), direct.hits()), (1, 1));
    shut(child).await;
    let _ = std::fs::remove_dir_all(dir);
}
