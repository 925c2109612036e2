//! `squad smoke`: the go-live checklist's smoke tests, run against a deployed
//! Squad (staging, a green environment, production after a rollout or a
//! rollback): the health routes, each dependency `/health` reports, the
//! providers and agents listed, every agent and every configured provider
//! answering a short prompt, the security headers, `/metrics`, and the audit
//! log recording the smoke's own requests. One line per check; exit 0 when
//! none failed, 1 otherwise, 2 for a bad `--url`. Every request has a
//! timeout, so a dead address fails instead of hanging.
//!
//! Part of the binary, not the library: it talks to Squad over HTTP only, and
//! uses the library for shared names (metric, header, key id) alone.

mod checks;
mod client;

use std::process::ExitCode;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};

use client::{Smoke, base_url, shown};

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
    pub key: Option<SecretString>,
    pub agents: Selection,
    pub providers: Selection,
    /// Per request.
    pub timeout: Duration,
    /// How long the audit rows of the smoke's requests may take to show in `/v1/usage`.
    pub audit_wait: Duration,
}

/// Audit rows are timed by the clocks of the replicas that served them; the
/// count starts this long before the first answer's `Date`, for their skew.
const CLOCK_SKEW_SECS: u64 = 60;

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

pub async fn run(options: Options) -> ExitCode {
    let (base, ops) = match (base_url(&options.url), options.ops_url.as_deref().map(base_url).transpose()) {
        (Ok(b), Ok(o)) => (b, o),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let smoke = match Smoke::new(base, options.key.clone(), options.timeout) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    println!("squad smoke: {}", shown(&smoke.base));
    let mut tally = Tally::default();
    all(&smoke, &options, ops.as_deref(), &mut tally).await;
    println!(
        "smoke: {} passed, {} failed, {} warnings, {} skipped",
        tally.passed, tally.failed, tally.warned, tally.skipped
    );
    if tally.failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

async fn all(smoke: &Smoke, options: &Options, ops: Option<&str>, tally: &mut Tally) {
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
    tally.report("liveness", checks::expect_ok(&live, "GET /health/live"));
    let since = live.server_time().saturating_sub(CLOCK_SKEW_SECS);
    tally.report("security headers", checks::security_headers(&live, smoke.base.starts_with("https://")));
    match smoke.call(Method::GET, "/health/ready", None).await {
        Ok(a) => tally.report("readiness", checks::expect_ok(&a, "GET /health/ready")),
        Err(e) => tally.report("readiness", Outcome::Fail(e)),
    }
    let health = match smoke.call(Method::GET, "/health", None).await {
        Ok(a) if a.status == StatusCode::OK => a.json::<checks::Health>().map_err(|e| format!("GET /health {e}")),
        Ok(a) => Err(format!("GET /health {}", a.why())),
        Err(e) => Err(e),
    };
    match &health {
        Ok(h) => checks::dependencies(h, tally),
        Err(e) => tally.report("health", Outcome::Fail(e.clone())),
    }

    let providers = checks::providers(smoke, &options.providers, tally).await;
    let agents = checks::agents(smoke, tally).await;
    let sent = checks::ask_agents(smoke, &options.agents, &agents, tally).await
        + checks::ask_providers(smoke, &options.providers, &providers, tally).await;
    tally.report("metrics", checks::metrics(smoke, ops).await);

    let outcome = match &health {
        Ok(h) if !h.audited() => Outcome::Skip("the audit log is off".into()),
        Ok(h) if !h.keyed() => Outcome::Skip("keys are off: the smoke's records cannot be told from others".into()),
        _ => {
            let key_id = options.key.as_ref().and_then(|k| squad::store::keys::key_id(k.expose_secret()));
            checks::audit(smoke, key_id, options.audit_wait, since, sent).await
        }
    };
    tally.report("audit log", outcome);
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
}
