//! The smoke test's checks, one function each: what a check asks the server,
//! and the outcome it reports. Bodies are read into the few fields each
//! check needs, so a field the server renamed fails the check instead of
//! reading as a default. Depends on `super::client` and `super::Outcome`.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode, header};
use serde::Deserialize;
use serde_json::json;

use super::client::{Answer, Smoke};
use super::{Outcome, Selection, Tally};

/// Prompts are short and answers capped: a smoke run of 13 agents (their
/// personas about 6,000 input tokens together) and 5 providers costs about
/// 10,000 tokens at most. The cap leaves room for a reasoning model's
/// thinking, which it counts too.
const PROMPT: &str = "Smoke test: reply with one word.";
const MAX_TOKENS: u32 = 256;
const SMOKE_USER: &str = "squad-smoke";

pub fn expect_ok(a: &Answer, what: &str) -> Outcome {
    if a.status == StatusCode::OK {
        Outcome::Pass(format!("{what} {}", a.took()))
    } else {
        Outcome::Fail(format!("{what} {}", a.why()))
    }
}

pub fn security_headers(a: &Answer, https: bool) -> Outcome {
    let wanted = [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CONTENT_SECURITY_POLICY, ""),
    ];
    let missing: Vec<String> = wanted
        .iter()
        .filter(|(name, value)| {
            let got = a.headers.get(name).and_then(|v| v.to_str().ok());
            got.is_none_or(|got| !value.is_empty() && !got.eq_ignore_ascii_case(value))
        })
        .map(|(name, value)| if value.is_empty() { name.to_string() } else { format!("{name}: {value}") })
        .collect();
    if !missing.is_empty() {
        return Outcome::Fail(format!("missing: {}", missing.join(", ")));
    }
    if https && !a.headers.contains_key(header::STRICT_TRANSPORT_SECURITY) {
        return Outcome::Warn("present, but no Strict-Transport-Security over https".into());
    }
    Outcome::Pass("nosniff, frame DENY, no-referrer, CSP".into())
}

#[derive(Deserialize)]
pub struct Health {
    status: String,
    version: String,
    components: Components,
}

#[derive(Deserialize)]
struct Components {
    limits: Store,
    conversations: Store,
    database: Database,
    auth: Auth,
}

/// The rate-limit and conversation stores.
#[derive(Deserialize)]
struct Store {
    backend: String,
    status: Option<String>,
    latency_ms: Option<f64>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct Database {
    status: String,
    dialect: Option<String>,
    migrated: Option<bool>,
    latency_ms: Option<f64>,
    error: Option<String>,
    audit: Option<AuditHealth>,
}

#[derive(Deserialize)]
struct AuditHealth {
    database_reachable: bool,
    journal_backlog_segments: u64,
}

#[derive(Deserialize)]
struct Auth {
    mode: String,
    keys_loaded: Option<bool>,
}

impl Health {
    /// Requests carry their key's id into the audit log.
    pub fn keyed(&self) -> bool {
        self.components.auth.mode == "required"
    }

    /// Requests leave audit records (a database with the audit log on).
    pub fn audited(&self) -> bool {
        self.components.database.audit.is_some()
    }
}

/// The gateway's status, then each component of `/health`: a dependency
/// that is down fails its line, one not configured is skipped.
pub fn dependencies(h: &Health, tally: &mut Tally) {
    let version = &h.version;
    tally.report(
        "health",
        if h.status == "ok" {
            Outcome::Pass(format!("ok, version {version}"))
        } else {
            Outcome::Fail(format!("status {}, version {version}", h.status))
        },
    );
    let c = &h.components;
    tally.report("database", database(&c.database));
    let limits = &c.limits;
    tally.report(
        "rate-limit store",
        match (limits.backend.as_str(), limits.status.as_deref()) {
            ("redis", Some("ok")) => Outcome::Pass("redis".into()),
            ("redis", status) => {
                Outcome::Fail(format!("redis {}: limits fall back to each replica's share", status.unwrap_or("?")))
            }
            (backend, _) => Outcome::Skip(format!("{backend} (each replica keeps its own counts)")),
        },
    );
    let conv = &c.conversations;
    tally.report(
        "conversation store",
        match (conv.backend.as_str(), conv.status.as_deref()) {
            ("redis", Some("up")) => Outcome::Pass(format!("redis up ({:.1} ms)", conv.latency_ms.unwrap_or(0.0))),
            ("redis", _) => Outcome::Fail(format!("redis down: {}", conv.error.as_deref().unwrap_or("?"))),
            (backend, _) => Outcome::Skip(format!("{backend} (conversations are not shared by replicas)")),
        },
    );
    tally.report(
        "auth",
        match (c.auth.mode.as_str(), c.auth.keys_loaded) {
            ("required", Some(true)) => Outcome::Pass("keys required, key store read".into()),
            ("required", _) => Outcome::Fail("keys required, but the key store has not been read".into()),
            (mode, _) => Outcome::Warn(format!("{mode}: anyone who can reach the address can spend provider credits")),
        },
    );
}

fn database(db: &Database) -> Outcome {
    let dialect = db.dialect.as_deref().unwrap_or("database");
    match db.status.as_str() {
        "disabled" => Outcome::Skip("no database configured (no audit log, no keys)".into()),
        "up" if db.migrated == Some(false) => Outcome::Fail(format!("{dialect} up, but not migrated")),
        "up" => {
            let detail = format!("{dialect} up ({:.1} ms)", db.latency_ms.unwrap_or(0.0));
            match &db.audit {
                Some(a) if !a.database_reachable => {
                    Outcome::Fail(format!("{detail}, but the audit writer cannot reach it"))
                }
                Some(a) => {
                    Outcome::Pass(format!("{detail}, audit journal backlog {} segment(s)", a.journal_backlog_segments))
                }
                None => Outcome::Pass(format!("{detail}, audit log off")),
            }
        }
        _ => Outcome::Fail(format!("{dialect} down: {}", db.error.as_deref().unwrap_or("?"))),
    }
}

#[derive(Deserialize)]
struct ProviderList {
    providers: Vec<Provider>,
}

#[derive(Deserialize)]
struct Provider {
    name: String,
    enabled: bool,
    configured: bool,
    default_model: String,
    status: String,
}

/// `GET /providers`: the configured ones (id, default model), or none on failure.
pub async fn providers(smoke: &Smoke, selection: &Selection, tally: &mut Tally) -> Vec<(String, String)> {
    let list = match smoke.call(Method::GET, "/providers", None).await {
        Ok(a) if a.status == StatusCode::OK => a.json::<ProviderList>().map_err(|e| format!("GET /providers {e}")),
        Ok(a) => Err(format!("GET /providers {}", a.why())),
        Err(e) => Err(e),
    };
    let all = match list {
        Ok(l) => l.providers,
        Err(e) => {
            tally.report("providers", Outcome::Fail(e));
            return Vec::new();
        }
    };
    let configured: Vec<(String, String)> =
        all.iter().filter(|p| p.configured && p.enabled).map(|p| (p.name.clone(), p.default_model.clone())).collect();
    let shown: Vec<String> = all.iter().map(|p| format!("{} {}", p.name, p.status)).collect();
    tally.report(
        "providers",
        if configured.is_empty() {
            Outcome::Fail(format!("no provider is configured ({})", shown.join(", ")))
        } else {
            Outcome::Pass(format!("{} of {} configured: {}", configured.len(), all.len(), shown.join(", ")))
        },
    );
    if let Selection::Only(ids) = selection {
        for id in ids.iter().filter(|id| !configured.iter().any(|(name, _)| name == *id)) {
            tally.report(&format!("provider {id}"), Outcome::Fail("not configured on this server".into()));
        }
    }
    configured
}

#[derive(Deserialize)]
struct AgentList {
    agents: Vec<AgentId>,
}

#[derive(Deserialize)]
struct AgentId {
    id: String,
}

/// `GET /v1/agents`: the roster's ids, or none on failure.
pub async fn agents(smoke: &Smoke, tally: &mut Tally) -> Vec<String> {
    let list = match smoke.call(Method::GET, "/v1/agents", None).await {
        Ok(a) if a.status == StatusCode::OK => a.json::<AgentList>().map_err(|e| format!("GET /v1/agents {e}")),
        Ok(a) => Err(format!("GET /v1/agents {}", a.why())),
        Err(e) => Err(e),
    };
    match list {
        Ok(l) if l.agents.is_empty() => {
            tally.report("agents", Outcome::Fail("GET /v1/agents listed none".into()));
            Vec::new()
        }
        Ok(l) => {
            tally.report("agents", Outcome::Pass(format!("{} listed", l.agents.len())));
            l.agents.into_iter().map(|a| a.id).collect()
        }
        Err(e) => {
            tally.report("agents", Outcome::Fail(e));
            Vec::new()
        }
    }
}

#[derive(Deserialize)]
struct AgentAnswer {
    #[expect(dead_code, reason = "read only to require the field")]
    response: String,
    provider: String,
    model: String,
    agent_name: String,
    metadata: AgentAnswerMetadata,
}

#[derive(Deserialize)]
struct AgentAnswerMetadata {
    fallback_used: bool,
}

/// One prompt to each selected agent; returns how many prompts got an HTTP
/// answer (each of which left an audit record, whatever its status).
pub async fn ask_agents(smoke: &Smoke, selection: &Selection, listed: &[String], tally: &mut Tally) -> usize {
    let (ids, unknown) = selection.pick(listed);
    for id in unknown {
        tally.report(&format!("agent {id}"), Outcome::Fail("not in GET /v1/agents".into()));
    }
    let mut sent = 0;
    for id in ids {
        let body = json!({"prompt": PROMPT, "max_tokens": MAX_TOKENS, "user_id": SMOKE_USER,
            "metadata": {"smoke": true}});
        let outcome = match smoke.call(Method::POST, &format!("/v1/agents/{id}"), Some(&body)).await {
            Ok(a) => {
                sent += 1;
                match a.status {
                    StatusCode::OK => match a.json::<AgentAnswer>() {
                        Ok(b) => {
                            let fallback = if b.metadata.fallback_used { ", after a fallback" } else { "" };
                            let took = a.took();
                            Outcome::Pass(format!("{} via {}/{}{fallback} {took}", b.agent_name, b.provider, b.model))
                        }
                        Err(e) => Outcome::Fail(e),
                    },
                    _ => Outcome::Fail(a.why()),
                }
            }
            Err(e) => Outcome::Fail(e),
        };
        tally.report(&format!("agent {id}"), outcome);
    }
    sent
}

#[derive(Deserialize)]
struct Completion {
    choices: Vec<Choice>,
}

#[derive(Deserialize)]
struct Choice {
    #[expect(dead_code, reason = "read only to require the field")]
    message: serde_json::Value,
}

/// One chat completion to each selected provider's default model; the answer
/// must come from that provider (`x-squad-provider`), not a fallback.
/// Returns how many prompts got an HTTP answer.
pub async fn ask_providers(
    smoke: &Smoke,
    selection: &Selection,
    configured: &[(String, String)],
    tally: &mut Tally,
) -> usize {
    let names: Vec<String> = configured.iter().map(|(id, _)| id.clone()).collect();
    let (ids, _) = selection.pick(&names); // unknown ones were reported with the provider list
    let mut sent = 0;
    for (id, model) in configured.iter().filter(|(id, _)| ids.contains(id)) {
        let body = json!({"model": format!("{id}/{model}"), "max_tokens": MAX_TOKENS, "user": SMOKE_USER,
            "messages": [{"role": "user", "content": PROMPT}]});
        let outcome = match smoke.call(Method::POST, "/v1/chat/completions", Some(&body)).await {
            Ok(a) => {
                sent += 1;
                let by = a.headers.get(&squad::api::chat::PROVIDER_HEADER).and_then(|v| v.to_str().ok());
                match (a.status, a.json::<Completion>()) {
                    (StatusCode::OK, _) if by != Some(id.as_str()) => {
                        Outcome::Fail(format!("answered by {}, not {id}", by.unwrap_or("?")))
                    }
                    (StatusCode::OK, Ok(c)) if !c.choices.is_empty() => Outcome::Pass(format!("{model} {}", a.took())),
                    (StatusCode::OK, Ok(_)) => Outcome::Fail("200 without choices".into()),
                    (StatusCode::OK, Err(e)) => Outcome::Fail(e),
                    _ => Outcome::Fail(a.why()),
                }
            }
            Err(e) => Outcome::Fail(e),
        };
        tally.report(&format!("provider {id}"), outcome);
    }
    sent
}

pub async fn metrics(smoke: &Smoke, ops: Option<&str>) -> Outcome {
    let series = squad::telemetry::metrics::HTTP_REQUESTS;
    let answer = match ops {
        Some(ops) => smoke.get_unkeyed(&format!("{ops}/metrics")).await,
        None => smoke.call(Method::GET, "/metrics", None).await,
    };
    match answer {
        Ok(a) if a.status == StatusCode::OK && a.text.contains(series) => {
            Outcome::Pass(format!("GET /metrics {}{}", a.took(), if ops.is_some() { " (operations port)" } else { "" }))
        }
        Ok(a) if a.status == StatusCode::OK => Outcome::Fail(format!("GET /metrics 200 without {series}")),
        Ok(a) if a.status == StatusCode::NOT_FOUND && ops.is_none() => {
            Outcome::Fail("GET /metrics 404: with server.ops_port it is served there; pass --ops-url".into())
        }
        Ok(a) => Outcome::Fail(format!("GET /metrics {}", a.why())),
        Err(e) => Outcome::Fail(e),
    }
}

#[derive(Deserialize)]
struct Usage {
    data: Vec<UsageRow>,
}

#[derive(Deserialize)]
struct UsageRow {
    group: String,
    requests: i64,
}

/// The smoke's prompts reached the audit log: `/v1/usage` (admin route)
/// counts at least as many requests for the smoke's key (`key_id`) since the
/// smoke began as prompts got an answer. Records are written in batches, off
/// the request path, so this polls for up to `wait`. Other traffic on the
/// same key would count too: the key should be the smoke's own.
pub async fn audit(smoke: &Smoke, key_id: Option<&str>, wait: Duration, since: u64, sent: usize) -> Outcome {
    let Some(key_id) = key_id else {
        return Outcome::Skip("no key: the smoke's records cannot be told from other traffic".into());
    };
    if sent == 0 {
        return Outcome::Skip("no prompt was answered".into());
    }
    let path = format!("/v1/usage?since={since}&group_by=key");
    let deadline = Instant::now() + wait;
    loop {
        let a = match smoke.call(Method::GET, &path, None).await {
            Ok(a) => a,
            Err(e) => return Outcome::Fail(e),
        };
        let usage = match a.status {
            StatusCode::OK => match a.json::<Usage>() {
                Ok(u) => u,
                Err(e) => return Outcome::Fail(format!("GET /v1/usage {e}")),
            },
            StatusCode::FORBIDDEN => return Outcome::Skip("GET /v1/usage needs an admin key".into()),
            StatusCode::SERVICE_UNAVAILABLE => return Outcome::Skip(format!("GET /v1/usage {}", a.why())),
            _ => return Outcome::Fail(format!("GET /v1/usage {}", a.why())),
        };
        let counted = usage.data.iter().find(|r| r.group == key_id).map_or(0, |r| r.requests);
        if counted >= sent as i64 {
            return Outcome::Pass(format!("{counted} of this key's requests recorded ({sent} prompts answered)"));
        }
        if Instant::now() >= deadline {
            return Outcome::Fail(format!(
                "{counted} of this key's requests recorded after {} s; {sent} prompts were answered",
                wait.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
