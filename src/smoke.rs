//! `squad smoke`: the go-live checklist's smoke tests, run against a deployed
//! Squad (staging, a green environment, production after a rollout): the
//! health routes, each dependency `/health` reports, the providers and the
//! agents listed, every agent and every configured provider answering a
//! short prompt, the security headers, `/metrics`, and the audit log
//! recording the smoke's own requests. One line per check; exit 0 when none
//! failed, 1 otherwise. Every request has a timeout, so a dead address fails
//! instead of hanging.

use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::{Client, Method, StatusCode, header};
use serde_json::{Value, json};

/// Which agents or providers get a prompt.
#[derive(Debug, Clone, PartialEq)]
pub enum Selection {
    All,
    None,
    Only(Vec<String>),
}

impl Selection {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim() {
            "all" => Ok(Self::All),
            "none" => Ok(Self::None),
            list => {
                let ids: Vec<String> =
                    list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect();
                if ids.is_empty() {
                    Err("expected `all`, `none` or a comma-separated list".into())
                } else {
                    Ok(Self::Only(ids))
                }
            }
        }
    }

    /// The ids to prompt, given what the server lists; the ids asked for by
    /// name that it does not list come back second.
    fn pick(&self, listed: &[String]) -> (Vec<String>, Vec<String>) {
        match self {
            Self::All => (listed.to_vec(), Vec::new()),
            Self::None => (Vec::new(), Vec::new()),
            Self::Only(ids) => ids.iter().cloned().partition(|id| listed.contains(id)),
        }
    }
}

pub struct Options {
    /// The API's base URL, e.g. `https://squad.example.com`.
    pub url: String,
    /// The operations port's base URL, when `/metrics` is served there.
    pub ops_url: Option<String>,
    pub key: Option<String>,
    pub agents: Selection,
    pub providers: Selection,
    /// Per request.
    pub timeout: Duration,
    /// How long the audit rows of the smoke's requests may take to show in `/v1/usage`.
    pub audit_wait: Duration,
}

/// Prompts are short and answers capped: a smoke run of 13 agents and 5
/// providers costs at most a few thousand tokens. The cap leaves room for a
/// reasoning model's thinking, which it counts too.
const PROMPT: &str = "Smoke test: reply with one word.";
const MAX_TOKENS: u32 = 256;
const SMOKE_USER: &str = "squad-smoke";

enum Outcome {
    Pass(String),
    /// Worth a look, not a failed deployment (auth disabled, no HSTS behind https).
    Warn(String),
    Skip(String),
    Fail(String),
}

#[derive(Default)]
struct Tally {
    passed: usize,
    warned: usize,
    skipped: usize,
    failed: usize,
}

impl Tally {
    fn report(&mut self, name: &str, outcome: Outcome) {
        let (tag, detail) = match outcome {
            Outcome::Pass(d) => {
                self.passed += 1;
                ("PASS", d)
            }
            Outcome::Warn(d) => {
                self.warned += 1;
                ("WARN", d)
            }
            Outcome::Skip(d) => {
                self.skipped += 1;
                ("SKIP", d)
            }
            Outcome::Fail(d) => {
                self.failed += 1;
                ("FAIL", d)
            }
        };
        println!("  {tag}  {name:<28} {detail}");
    }
}

/// One answered request: status, headers, parsed JSON body (Null when the
/// body is not JSON) and the time it took.
struct Answer {
    status: StatusCode,
    headers: header::HeaderMap,
    body: Value,
    text: String,
    elapsed: Duration,
}

impl Answer {
    /// `200 (12 ms)`.
    fn took(&self) -> String {
        format!("{} ({} ms)", self.status.as_u16(), self.elapsed.as_millis())
    }

    /// Our error body's message, or the start of whatever came back.
    fn why(&self) -> String {
        match self.body["error"]["message"].as_str() {
            Some(m) => format!("{}: {m}", self.status.as_u16()),
            None => format!("{}: {}", self.status.as_u16(), self.text.chars().take(160).collect::<String>()),
        }
    }
}

struct Smoke {
    client: Client,
    base: String,
    key: Option<String>,
}

impl Smoke {
    async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Answer, String> {
        self.call_at(&self.base, method, path, body).await
    }

    async fn call_at(&self, base: &str, method: Method, path: &str, body: Option<&Value>) -> Result<Answer, String> {
        let mut req = self.client.request(method, format!("{base}{path}"));
        if let Some(key) = &self.key {
            req = req.bearer_auth(key);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let started = Instant::now();
        let resp = req.send().await.map_err(|e| describe(&e))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.map_err(|e| describe(&e))?;
        let elapsed = started.elapsed();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(Answer { status, headers, body, text, elapsed })
    }
}

/// A transport error with its causes (reqwest's own text is often just
/// "error sending request"); never the key, which is only ever in a header.
fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() { "timed out".to_owned() } else { e.to_string() };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn base_url(url: &str) -> Result<String, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("--url {url}: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("--url {url}: the scheme must be http or https"));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

pub async fn run(options: Options) -> ExitCode {
    let (base, ops) = match (base_url(&options.url), options.ops_url.as_deref().map(base_url).transpose()) {
        (Ok(b), Ok(o)) => (b, o),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let client = match Client::builder()
        .no_proxy()
        .timeout(options.timeout)
        .connect_timeout(options.timeout.min(Duration::from_secs(5)))
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot build an HTTP client: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("squad smoke: {base}");
    let smoke = Smoke { client, base: base.clone(), key: options.key.clone() };
    let mut tally = Tally::default();
    checks(&smoke, &options, ops.as_deref().unwrap_or(&base), &mut tally).await;
    println!(
        "smoke: {} passed, {} failed, {} warnings, {} skipped",
        tally.passed, tally.failed, tally.warned, tally.skipped
    );
    if tally.failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

async fn checks(smoke: &Smoke, options: &Options, metrics_base: &str, tally: &mut Tally) {
    // Liveness first: when the address does not answer at all, the other
    // checks would only repeat the same transport error.
    let live = match smoke.call(Method::GET, "/health/live", None).await {
        Ok(a) => a,
        Err(e) => {
            tally.report("liveness", Outcome::Fail(format!("GET /health/live: {e}")));
            println!("  (stopped: the address does not answer)");
            return;
        }
    };
    tally.report("liveness", expect_ok(&live, "GET /health/live"));
    // Rows written from now on are the smoke's or later: the server's clock, not ours.
    let since = server_time(&live).saturating_sub(1);
    tally.report("security headers", security_headers(&live, smoke.base.starts_with("https://")));

    match smoke.call(Method::GET, "/health/ready", None).await {
        Ok(a) => tally.report("readiness", expect_ok(&a, "GET /health/ready")),
        Err(e) => tally.report("readiness", Outcome::Fail(e)),
    }
    // Whether requests carry a key id into the audit log.
    let keyed = match smoke.call(Method::GET, "/health", None).await {
        Ok(a) if a.status == StatusCode::OK => {
            dependencies(&a.body, tally);
            a.body["components"]["auth"]["mode"] == "required"
        }
        Ok(a) => {
            tally.report("health", Outcome::Fail(format!("GET /health {}", a.why())));
            true
        }
        Err(e) => {
            tally.report("health", Outcome::Fail(e));
            true
        }
    };

    let providers = providers(smoke, options, tally).await;
    let agents = agents(smoke, tally).await;
    let mut answered = 0;
    answered += ask_agents(smoke, &options.agents, &agents, tally).await;
    answered += ask_providers(smoke, &options.providers, &providers, tally).await;

    match smoke.call_at(metrics_base, Method::GET, "/metrics", None).await {
        Ok(a) if a.status == StatusCode::OK && a.text.contains("squad_http_requests_total") => {
            tally.report("metrics", Outcome::Pass(format!("GET {metrics_base}/metrics {}", a.took())))
        }
        Ok(a) if a.status == StatusCode::OK => {
            tally.report("metrics", Outcome::Fail("GET /metrics 200 without squad_http_requests_total".into()))
        }
        Ok(a) if a.status == StatusCode::NOT_FOUND && options.ops_url.is_none() => tally.report(
            "metrics",
            Outcome::Fail("GET /metrics 404: with server.ops_port it is served there; pass --ops-url".into()),
        ),
        Ok(a) => tally.report("metrics", Outcome::Fail(format!("GET /metrics {}", a.why()))),
        Err(e) => tally.report("metrics", Outcome::Fail(e)),
    }

    let key_id = options.key.as_deref().filter(|_| keyed).and_then(squad::store::keys::key_id);
    tally.report("audit log", audit(smoke, key_id, options.audit_wait, since, answered).await);
}

fn expect_ok(a: &Answer, what: &str) -> Outcome {
    if a.status == StatusCode::OK {
        Outcome::Pass(format!("{what} {}", a.took()))
    } else {
        Outcome::Fail(format!("{what} {}", a.why()))
    }
}

/// Unix seconds from the answer's `Date` header; our own clock without one.
fn server_time(a: &Answer) -> u64 {
    let date =
        a.headers.get(header::DATE).and_then(|v| v.to_str().ok()).and_then(|s| httpdate::parse_http_date(s).ok());
    date.unwrap_or_else(SystemTime::now).duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn security_headers(a: &Answer, https: bool) -> Outcome {
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

/// The components of `/health`: a dependency that is down fails its line;
/// one not configured is skipped.
fn dependencies(h: &Value, tally: &mut Tally) {
    let version = h["version"].as_str().unwrap_or("?");
    tally.report(
        "health",
        match h["status"].as_str() {
            Some("ok") => Outcome::Pass(format!("ok, version {version}")),
            Some(other) => Outcome::Fail(format!("status {other}, version {version}")),
            None => Outcome::Fail("GET /health: no status in the body".into()),
        },
    );
    let c = &h["components"];
    let db = &c["database"];
    tally.report(
        "database",
        match db["status"].as_str() {
            Some("up") => {
                let backlog = db["audit"]["journal_backlog_segments"].as_u64().unwrap_or(0);
                let detail = format!(
                    "{} up ({:.1} ms), audit journal backlog {backlog} segment(s)",
                    db["dialect"].as_str().unwrap_or("?"),
                    db["latency_ms"].as_f64().unwrap_or(0.0)
                );
                if db["audit"]["database_reachable"] == Value::Bool(false) {
                    Outcome::Fail(format!("{detail}, but the audit writer cannot reach it"))
                } else {
                    Outcome::Pass(detail)
                }
            }
            Some("disabled") => Outcome::Skip("no database configured (no audit log, no keys)".into()),
            _ => Outcome::Fail(format!(
                "{} down: {}",
                db["dialect"].as_str().unwrap_or("database"),
                db["error"].as_str().unwrap_or("?")
            )),
        },
    );
    let limits = &c["limits"];
    tally.report(
        "rate-limit store",
        match (limits["backend"].as_str(), limits["status"].as_str()) {
            (Some("redis"), Some("ok")) => Outcome::Pass("redis".into()),
            (Some("redis"), status) => {
                Outcome::Fail(format!("redis {}: limits fall back to each replica's share", status.unwrap_or("?")))
            }
            (Some(backend), _) => Outcome::Skip(format!("{backend} (each replica keeps its own counts)")),
            (None, _) => Outcome::Fail("not in /health".into()),
        },
    );
    let conv = &c["conversations"];
    tally.report(
        "conversation store",
        match (conv["backend"].as_str(), conv["status"].as_str()) {
            (Some("redis"), Some("up")) => {
                Outcome::Pass(format!("redis up ({:.1} ms)", conv["latency_ms"].as_f64().unwrap_or(0.0)))
            }
            (Some("redis"), _) => Outcome::Fail(format!("redis down: {}", conv["error"].as_str().unwrap_or("?"))),
            (Some(backend), _) => Outcome::Skip(format!("{backend} (conversations are not shared by replicas)")),
            (None, _) => Outcome::Fail("not in /health".into()),
        },
    );
    tally.report(
        "auth",
        match c["auth"]["mode"].as_str() {
            Some("required") => match c["auth"]["keys_loaded"].as_bool() {
                Some(true) => Outcome::Pass("keys required, key store read".into()),
                _ => Outcome::Fail("keys required, but the key store has not been read".into()),
            },
            Some(mode) => Outcome::Warn(format!("{mode}: anyone who can reach the address can spend provider credits")),
            None => Outcome::Fail("not in /health".into()),
        },
    );
}

/// `GET /providers`: the configured ones (id, default model), or none on failure.
async fn providers(smoke: &Smoke, options: &Options, tally: &mut Tally) -> Vec<(String, String)> {
    let a = match smoke.call(Method::GET, "/providers", None).await {
        Ok(a) if a.status == StatusCode::OK => a,
        Ok(a) => {
            tally.report("providers", Outcome::Fail(format!("GET /providers {}", a.why())));
            return Vec::new();
        }
        Err(e) => {
            tally.report("providers", Outcome::Fail(e));
            return Vec::new();
        }
    };
    let all = a.body["providers"].as_array().cloned().unwrap_or_default();
    let configured: Vec<(String, String)> = all
        .iter()
        .filter(|p| p["configured"] == Value::Bool(true) && p["enabled"] == Value::Bool(true))
        .filter_map(|p| Some((p["name"].as_str()?.to_owned(), p["default_model"].as_str()?.to_owned())))
        .collect();
    let shown: Vec<String> = all
        .iter()
        .map(|p| format!("{} {}", p["name"].as_str().unwrap_or("?"), p["status"].as_str().unwrap_or("?")))
        .collect();
    let outcome = if configured.is_empty() {
        Outcome::Fail(format!("no provider is configured ({})", shown.join(", ")))
    } else {
        Outcome::Pass(format!("{} of {} configured: {}", configured.len(), all.len(), shown.join(", ")))
    };
    tally.report("providers", outcome);
    if let Selection::Only(ids) = &options.providers {
        let names: Vec<String> = configured.iter().map(|(id, _)| id.clone()).collect();
        for id in ids.iter().filter(|id| !names.contains(id)) {
            tally.report(&format!("provider {id}"), Outcome::Fail("not configured on this server".into()));
        }
    }
    configured
}

/// `GET /v1/agents`: the roster's ids, or none on failure.
async fn agents(smoke: &Smoke, tally: &mut Tally) -> Vec<String> {
    match smoke.call(Method::GET, "/v1/agents", None).await {
        Ok(a) if a.status == StatusCode::OK => {
            let ids: Vec<String> = a.body["agents"]
                .as_array()
                .map(|list| list.iter().filter_map(|x| x["id"].as_str().map(str::to_owned)).collect())
                .unwrap_or_default();
            tally.report(
                "agents",
                if ids.is_empty() {
                    Outcome::Fail("GET /v1/agents listed none".into())
                } else {
                    Outcome::Pass(format!("{} listed", ids.len()))
                },
            );
            ids
        }
        Ok(a) => {
            tally.report("agents", Outcome::Fail(format!("GET /v1/agents {}", a.why())));
            Vec::new()
        }
        Err(e) => {
            tally.report("agents", Outcome::Fail(e));
            Vec::new()
        }
    }
}

/// One prompt to each selected agent; returns how many answered.
async fn ask_agents(smoke: &Smoke, selection: &Selection, listed: &[String], tally: &mut Tally) -> usize {
    let (ids, unknown) = selection.pick(listed);
    for id in unknown {
        tally.report(&format!("agent {id}"), Outcome::Fail("not in GET /v1/agents".into()));
    }
    let mut answered = 0;
    for id in ids {
        let body = json!({"prompt": PROMPT, "max_tokens": MAX_TOKENS, "user_id": SMOKE_USER,
            "metadata": {"smoke": true}});
        let outcome = match smoke.call(Method::POST, &format!("/v1/agents/{id}"), Some(&body)).await {
            Ok(a) if a.status == StatusCode::OK && a.body["response"].is_string() => {
                answered += 1;
                let b = &a.body;
                let fallback =
                    if b["metadata"]["fallback_used"] == Value::Bool(true) { ", after a fallback" } else { "" };
                Outcome::Pass(format!(
                    "{} via {}/{}{fallback} {}",
                    b["agent_name"].as_str().unwrap_or("?"),
                    b["provider"].as_str().unwrap_or("?"),
                    b["model"].as_str().unwrap_or("?"),
                    a.took()
                ))
            }
            Ok(a) if a.status == StatusCode::OK => Outcome::Fail("200 without a `response`".into()),
            Ok(a) => Outcome::Fail(a.why()),
            Err(e) => Outcome::Fail(e),
        };
        tally.report(&format!("agent {id}"), outcome);
    }
    answered
}

/// One chat completion to each selected provider's default model; the answer
/// must come from that provider (`x-squad-provider`). Returns how many answered.
async fn ask_providers(
    smoke: &Smoke,
    selection: &Selection,
    configured: &[(String, String)],
    tally: &mut Tally,
) -> usize {
    let names: Vec<String> = configured.iter().map(|(id, _)| id.clone()).collect();
    let (ids, _) = selection.pick(&names); // unknown ones were reported with the provider list
    let mut answered = 0;
    for (id, model) in configured.iter().filter(|(id, _)| ids.contains(id)) {
        let body = json!({"model": format!("{id}/{model}"), "max_tokens": MAX_TOKENS, "user": SMOKE_USER,
            "messages": [{"role": "user", "content": PROMPT}]});
        let outcome = match smoke.call(Method::POST, "/v1/chat/completions", Some(&body)).await {
            Ok(a) if a.status == StatusCode::OK => {
                let by = a.headers.get("x-squad-provider").and_then(|v| v.to_str().ok()).unwrap_or("?").to_owned();
                if by != *id {
                    Outcome::Fail(format!("answered by {by}, not {id}"))
                } else if !a.body["choices"][0]["message"].is_object() {
                    Outcome::Fail("200 without `choices[0].message`".into())
                } else {
                    answered += 1;
                    Outcome::Pass(format!("{model} {}", a.took()))
                }
            }
            Ok(a) => Outcome::Fail(a.why()),
            Err(e) => Outcome::Fail(e),
        };
        tally.report(&format!("provider {id}"), outcome);
    }
    answered
}

/// The smoke's answered requests reach the audit log: `/v1/usage` (admin
/// route) counts at least that many since the smoke started, for its key
/// when requests carry one (`key_id`). Audit rows are written in batches,
/// off the request path, so this polls for up to `wait`.
async fn audit(smoke: &Smoke, key_id: Option<&str>, wait: Duration, since: u64, answered: usize) -> Outcome {
    if answered == 0 {
        return Outcome::Skip("no prompt was answered".into());
    }
    let path = format!("/v1/usage?since={since}&group_by=key");
    let deadline = Instant::now() + wait;
    loop {
        let a = match smoke.call(Method::GET, &path, None).await {
            Ok(a) => a,
            Err(e) => return Outcome::Fail(e),
        };
        match a.status {
            StatusCode::OK => {}
            StatusCode::FORBIDDEN => return Outcome::Skip("GET /v1/usage needs an admin key".into()),
            StatusCode::SERVICE_UNAVAILABLE => return Outcome::Skip(format!("GET /v1/usage {}", a.why())),
            _ => return Outcome::Fail(format!("GET /v1/usage {}", a.why())),
        }
        let counted = match key_id {
            Some(id) => a.body["data"]
                .as_array()
                .and_then(|rows| rows.iter().find(|r| r["group"].as_str() == Some(id)))
                .and_then(|r| r["requests"].as_i64())
                .unwrap_or(0),
            None => a.body["total"]["requests"].as_i64().unwrap_or(0),
        };
        let whose = if key_id.is_some() { "this key's" } else { "all" };
        if counted >= answered as i64 {
            return Outcome::Pass(format!(
                "{counted} of {whose} requests recorded since the smoke began ({answered} answered)"
            ));
        }
        if Instant::now() >= deadline {
            return Outcome::Fail(format!(
                "{counted} of {whose} requests recorded after {} s; the smoke had {answered} answered",
                wait.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selections_parse_and_pick() {
        assert_eq!(Selection::parse("all"), Ok(Selection::All));
        assert_eq!(Selection::parse("none"), Ok(Selection::None));
        assert_eq!(Selection::parse(" a, b ,"), Ok(Selection::Only(vec!["a".into(), "b".into()])));
        assert!(Selection::parse(" , ").is_err());
        let listed = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
        assert_eq!(Selection::All.pick(&listed), (listed.clone(), vec![]));
        assert_eq!(Selection::None.pick(&listed), (vec![], vec![]));
        assert_eq!(
            Selection::Only(vec!["c".into(), "x".into()]).pick(&listed),
            (vec!["c".to_owned()], vec!["x".to_owned()])
        );
    }

    #[test]
    fn base_urls_are_http_or_https_without_a_trailing_slash() {
        assert_eq!(base_url("https://squad.example.com/"), Ok("https://squad.example.com".to_owned()));
        assert_eq!(base_url("http://127.0.0.1:8080"), Ok("http://127.0.0.1:8080".to_owned()));
        assert!(base_url("ftp://x").is_err());
        assert!(base_url("squad:8080").is_err());
        assert!(base_url("not a url").is_err());
    }
}
