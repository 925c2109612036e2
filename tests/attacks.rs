//! Hostile requests against a running `squad serve` (keys required, audit on,
//! debug logs). For each: the right status, our error body, the hardening
//! headers, nothing reaches the upstream, and no secret or PII sent with the
//! request shows up in the response, the logs or the audit rows. Then prompt
//! text that looks like our own placeholders, which must pass through
//! untouched, and slow clients, which must be disconnected.
//!
//! The status codes of the key cases are also covered, without the leak and
//! upstream checks, by `persistence.rs::api_keys_end_to_end`.

mod support;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use squad::config::DatabaseConfig;
use squad::store::keys::{self, KeySpec};
use squad::store::{Store, now_ms};
use support::dialects::{Dialect, OpenAi};
use support::process::{export, serve_in, stop, temp_dir};
use support::{Fake, Reply, assert_error_body, assert_hardened};

/// Sent inside the hostile requests; none may come back or be recorded.
const EMAIL: &str = "alice.attacker@example.com";
const CARD: &str = "4111 1111 1111 1111";
const SECRET: &str = "sk-proj-ATTACKsecret0123456789abcdef";
const ORIGIN: &str = "https://app.example.com";

fn hostile_prompt() -> String {
    format!("mail {EMAIL}, card {CARD}, key {SECRET}")
}

fn chat_body() -> String {
    json!({"model": OpenAi::MODEL, "messages": [{"role": "user", "content": hostile_prompt()}]}).to_string()
}

/// Keys written to the store before `squad serve` loads it.
struct Keys {
    full: String,
    dev_only: String,
    revoked: String,
    expired: String,
}

async fn make_keys(dir: &std::path::Path) -> Keys {
    let url = format!("sqlite://{}", dir.join("squad.db").display());
    let store = Store::open(&DatabaseConfig { url, ..DatabaseConfig::default() }).unwrap();
    store.migrate().await.unwrap();
    let make = async |name: &str, agents: Option<&str>, expires_ms: Option<i64>| {
        let spec = KeySpec {
            name: name.into(),
            agents: agents.map(|a| vec![a.to_owned()]),
            rpm: None,
            tpm: None,
            expires_ms,
            admin: false,
        };
        let generated = keys::generate(spec).unwrap();
        store.insert_key(&generated.key).await.unwrap();
        (generated.key.id.clone(), generated.secret)
    };
    let (_, full) = make("full", None, None).await;
    let (_, dev_only) = make("dev-only", Some("dev"), None).await;
    let (revoked_id, revoked) = make("revoked", None, None).await;
    let (_, expired) = make("expired", None, Some(now_ms() - 60_000)).await;
    store.revoke_key(&revoked_id).await.unwrap();
    store.close().await;
    Keys { full, dev_only, revoked, expired }
}

/// One hostile request and what it must get.
struct Case {
    name: &'static str,
    request: reqwest::RequestBuilder,
    status: u16,
    /// Our error code; `None` for a response with no error body.
    code: Option<&'static str>,
    /// False only where hyper refuses before any of our code runs (431).
    hardened: bool,
    /// On a provider route: exactly one audit row, with this status.
    audited: bool,
}

fn cases(url: &str, keys: &Keys) -> Vec<Case> {
    // A fresh connection per case: after an early refusal (413 before the body
    // was read) the server closes the connection, and a pooled client could
    // pick it up again before it notices.
    let c = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let chat = || c.post(format!("{url}/v1/chat/completions")).header("content-type", "application/json");
    let agent = |id: &str| {
        c.post(format!("{url}/v1/agents/{id}"))
            .bearer_auth(&keys.full)
            .json(&json!({"prompt": hostile_prompt(), "user_id": "u1"}))
    };
    let full = |r: reqwest::RequestBuilder| r.bearer_auth(&keys.full);
    let body = chat_body();
    let case = |name, request, status, code: &'static str, audited| Case {
        name,
        request,
        status,
        code: Some(code),
        hardened: true,
        audited,
    };
    let deep = format!(
        r#"{{"model":"{}","messages":[{{"role":"user","content":"{EMAIL}"}}],"x":{}{}}}"#,
        OpenAi::MODEL,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let mut invalid_utf8 =
        format!(r#"{{"model":"{}","messages":[{{"role":"user","content":"{EMAIL} "#, OpenAi::MODEL).into_bytes();
    invalid_utf8.extend_from_slice(b"\xff\xfe\"}]}");
    let huge = format!(
        r#"{{"model":"{}","messages":[{{"role":"user","content":"{EMAIL} {}"}}]}}"#,
        OpenAi::MODEL,
        "x".repeat(1 << 20)
    );
    vec![
        case(
            "malformed JSON",
            full(chat()).body(body.replacen("\"model\":", "\"model\"", 1)),
            400,
            "malformed_json",
            true,
        ),
        case("truncated JSON", full(chat()).body(body[..body.len() - 8].to_owned()), 400, "malformed_json", true),
        case("huge body", full(chat()).body(huge), 413, "payload_too_large", true),
        case("100 000 levels of nesting", full(chat()).body(deep), 400, "malformed_json", true),
        case("invalid UTF-8", full(chat()).body(invalid_utf8), 400, "malformed_json", true),
        case(
            "control characters in the model",
            full(chat()).body(
                json!({"model": "groq\r\nX-Injected: yes", "messages": [{"role": "user", "content": EMAIL}]})
                    .to_string(),
            ),
            404,
            "model_not_found",
            true,
        ),
        Case {
            name: "oversized headers",
            request: full(chat()).header("x-filler", "a".repeat(20_000)).header("x-note", SECRET).body(body.clone()),
            status: 431,
            code: None,
            hardened: false,
            audited: false,
        },
        case("traversal ../", agent("..%2F..%2Fetc%2Fpasswd"), 404, "agent_not_found", true),
        case("traversal %2e%2e%2f", agent("%2e%2e%2fsquad.db"), 404, "agent_not_found", true),
        case("NUL in agent id", agent("dev%00"), 404, "agent_not_found", true),
        case("newline in agent id", agent("dev%0d%0aX-Injected:%20yes"), 404, "agent_not_found", true),
        case("invalid UTF-8 in agent id", agent("dev%ff%fe"), 400, "invalid_request", true),
        case(
            "newline in a provider name",
            full(c.get(format!("{url}/providers/groq%0d%0aX-Injected:%20yes"))),
            404,
            "not_found",
            false,
        ),
        case(
            "traversal on the roster",
            full(c.get(format!("{url}/v1/agents/..%2F..%2Fetc%2Fpasswd"))),
            404,
            "agent_not_found",
            false,
        ),
        case(
            "preflight from an unlisted origin",
            c.request(reqwest::Method::OPTIONS, format!("{url}/v1/chat/completions"))
                .header("origin", "https://evil.example.net")
                .header("access-control-request-method", "POST"),
            403,
            "cors_origin_not_allowed",
            false,
        ),
        case("no key", chat().body(body.clone()), 401, "missing_api_key", true),
        case(
            "made-up key",
            chat().bearer_auth(format!("sqd_{}", "0".repeat(80))).body(body.clone()),
            401,
            "invalid_api_key",
            true,
        ),
        case("provider key as API key", chat().bearer_auth(SECRET).body(body.clone()), 401, "invalid_api_key", true),
        case("revoked key", chat().bearer_auth(&keys.revoked).body(body.clone()), 401, "revoked_api_key", true),
        case("expired key", chat().bearer_auth(&keys.expired).body(body.clone()), 401, "expired_api_key", true),
        case(
            "key scoped to dev, used on pm",
            c.post(format!("{url}/v1/agents/pm"))
                .bearer_auth(&keys.dev_only)
                .json(&json!({"prompt": hostile_prompt()})),
            403,
            "agent_not_allowed",
            true,
        ),
        case("non-admin key on /v1/usage", full(c.get(format!("{url}/v1/usage"))), 403, "admin_required", false),
    ]
}

/// The secret part of a key (after `sqd_<id>_`), which must never be shown.
fn key_secrets(keys: &Keys) -> Vec<String> {
    [&keys.full, &keys.dev_only, &keys.revoked, &keys.expired].iter().map(|k| k[17..].to_owned()).collect()
}

/// Hostile parts of URLs and fields that must not be reflected back.
const NEVER_ECHOED: [&str; 5] = ["etc/passwd", "../", "\\u0000", "\\r\\n", "X-Injected"];

fn assert_no_leak(text: &str, keys: &Keys, what: &str) {
    for needle in [EMAIL, CARD, SECRET].into_iter().map(str::to_owned).chain(key_secrets(keys)) {
        assert!(!text.contains(&needle), "{what} holds `{needle}`: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_are_refused_cleanly_and_leave_no_trace() {
    let fake = Fake::start(Reply::json(200, OpenAi::completion("fine", 5, 2))).await;
    let dir = temp_dir();
    let keys = make_keys(&dir).await;
    let (mut child, url, logs) = serve_in(
        &dir,
        &fake.url(),
        &format!("auth: {{ mode: required }}\nlog: {{ level: debug }}\ncors: {{ allowed_origins: [\"{ORIGIN}\"] }}"),
        &[("SQUAD__SERVER__MAX_BODY_BYTES", "262144")],
    );

    let mut audited = Vec::new();
    for (i, case) in cases(&url, &keys).into_iter().enumerate() {
        let request_id = format!("attack-{i}");
        let resp = case.request.header("x-request-id", &request_id).send().await;
        let resp = resp.unwrap_or_else(|e| panic!("{}: no response: {e}", case.name));
        assert_eq!(resp.status().as_u16(), case.status, "{}", case.name);
        let headers = resp.headers().clone();
        if case.hardened {
            assert_hardened(&headers, case.name);
        }
        assert!(
            headers.keys().all(|k| !k.as_str().starts_with("access-control-")),
            "{}: CORS headers without a listed origin",
            case.name
        );
        let text = resp.text().await.unwrap();
        if let Some(code) = case.code {
            assert_eq!(headers["content-type"], "application/json", "{}", case.name);
            let body: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{}: {text}", case.name));
            let err = assert_error_body(&body, code);
            assert_eq!(err["request_id"], request_id.as_str(), "{}", case.name);
            if case.name.contains("nesting") {
                assert!(err["message"].as_str().unwrap().contains("deeper than 64 levels"), "{err}");
            }
        }
        assert_no_leak(&text, &keys, case.name);
        for echo in NEVER_ECHOED {
            assert!(!text.contains(echo), "{}: reflected `{echo}`: {text}", case.name);
        }
        assert_eq!(fake.hits(), 0, "{} reached the upstream", case.name);
        if case.audited {
            audited.push((request_id, case.status));
        }
    }

    // An unlisted origin on an ordinary request: served, without CORS headers.
    let resp = reqwest::Client::new()
        .get(format!("{url}/v1/agents"))
        .bearer_auth(&keys.full)
        .header("origin", "https://evil.example.net")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_hardened(resp.headers(), "unlisted origin");
    assert!(resp.headers().keys().all(|k| !k.as_str().starts_with("access-control-")));

    // Our own placeholder syntax in a prompt is just text: forwarded verbatim
    // (masking is off by default) and answered.
    let placeholders = "Dear [EMAIL_1], your card [CARD] and [EMAIL] and [EMAIL_99999999999999999999] [SECRET_";
    let resp = reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(&keys.full)
        .json(&json!({"model": OpenAi::MODEL, "messages": [{"role": "user", "content": placeholders}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "fine");
    assert_eq!(fake.hits(), 1);
    let sent = &fake.received()[0].body;
    assert_eq!(sent["messages"][0]["content"], placeholders, "the upstream got the text unchanged");

    stop(&mut child);
    let lines: Vec<String> = logs.iter().collect(); // ends at EOF: the process has exited
    assert!(lines.iter().any(|l| l.contains("\"status\":401")), "the access log ran at debug level");
    for line in &lines {
        assert_no_leak(line, &keys, "a log line");
    }
    let rows = export(&dir);
    assert_no_leak(&serde_json::to_string(&rows).unwrap(), &keys, "the audit rows");
    for (request_id, status) in audited {
        let mine: Vec<&Value> = rows.iter().filter(|r| r["request_id"] == request_id.as_str()).collect();
        assert_eq!(mine.len(), 1, "one audit row for {request_id}");
        assert_eq!(mine[0]["status"], status, "{request_id}");
        assert!(
            mine[0]["error_kind"].as_str().is_some_and(|k| !k.is_empty()),
            "error kind of {request_id}: {}",
            mine[0]
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Reads until the server closes the connection; the bytes it sent.
fn read_to_close(stream: &mut std::net::TcpStream, within: Duration) -> Vec<u8> {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut got = Vec::new();
    match stream.read_to_end(&mut got) {
        Ok(_) => got,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => got,
        Err(e) => panic!("the server did not close the connection within {within:?}: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_disconnected() {
    let fake = Fake::start(Reply::json(200, OpenAi::completion("fine", 5, 2))).await;
    let mut config = support::config_for(&fake);
    config.server.header_read_timeout = Duration::from_millis(400);
    let gw = support::gateway(config).await;
    let addr = gw.url.trim_start_matches("http://").to_owned();

    let outcome = tokio::task::spawn_blocking(move || {
        // Connects and says nothing.
        let mut silent = std::net::TcpStream::connect(&addr).unwrap();
        let started = Instant::now();
        assert!(read_to_close(&mut silent, Duration::from_secs(3)).is_empty());
        let silent_for = started.elapsed();

        // Slowloris: a byte of header every 100 ms, never finishing the head.
        let mut slow = std::net::TcpStream::connect(&addr).unwrap();
        slow.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-slow: ").unwrap();
        let started = Instant::now();
        let mut closed = false;
        while started.elapsed() < Duration::from_secs(3) {
            std::thread::sleep(Duration::from_millis(100));
            if slow.write_all(b"a").is_err() {
                closed = true;
                break;
            }
            let mut probe = [0u8; 64];
            slow.set_nonblocking(true).unwrap();
            let read = slow.read(&mut probe);
            slow.set_nonblocking(false).unwrap();
            if matches!(read, Ok(0)) || matches!(&read, Err(e) if e.kind() != std::io::ErrorKind::WouldBlock) {
                closed = true;
                break;
            }
        }
        (silent_for, closed, started.elapsed())
    })
    .await
    .unwrap();
    let (silent_for, closed, slow_for) = outcome;
    assert!(silent_for >= Duration::from_millis(350) && silent_for < Duration::from_secs(2), "{silent_for:?}");
    assert!(closed, "the slowloris connection was still open after {slow_for:?}");
    assert!(slow_for < Duration::from_secs(2), "{slow_for:?}");
    assert_eq!(fake.hits(), 0);

    // A prompt client on a fresh connection is unaffected.
    let resp = gw.chat(json!({"model": OpenAi::MODEL, "messages": [{"role": "user", "content": "hi"}]})).await;
    assert_eq!(resp.status(), 200);
}

/// Conversations are kept per API key: a second key that sends the same user
/// id and conversation id as the first starts an empty conversation, and the
/// first key's history never reaches the upstream in the second key's
/// request; the first key's conversation goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_cannot_read_another_keys_conversation() {
    const MARKER: &str = "the blue heron nests at dawn";
    let fake = Fake::start(Reply::json(200, OpenAi::completion("noted", 5, 2))).await;
    let dir = temp_dir();
    let keys = make_keys(&dir).await;
    let (mut child, url, _logs) = serve_in(&dir, &fake.url(), "auth: { mode: required }", &[]);
    let client = reqwest::Client::new();
    let ask = async |key: &str, prompt: &str| -> Value {
        let resp = client
            .post(format!("{url}/v1/agents/dev"))
            .bearer_auth(key)
            .json(&json!({"prompt": prompt, "user_id": "alice", "conversation_id": "support-1"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    };
    let sent = || fake.received().last().unwrap().body.to_string();

    assert_eq!(ask(&keys.full, MARKER).await["metadata"]["turns"], 1);
    let other = ask(&keys.dev_only, "what did I tell you before?").await;
    assert_eq!(other["metadata"]["turns"], 1, "{other}");
    assert!(!sent().contains(MARKER), "another key's history went upstream: {}", sent());
    assert_eq!(ask(&keys.full, "and again").await["metadata"]["turns"], 2);
    assert!(sent().contains(MARKER), "the key's own history is kept: {}", sent());
    stop(&mut child);
}
