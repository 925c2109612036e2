//! Every metric Squad exports: names, labels and the helpers that record them.
//! Labels are bounded: route template, method, status, provider, outcome.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{LazyLock, OnceLock, RwLock};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const HTTP_REQUESTS: &str = "squad_http_requests_total";
pub const HTTP_DURATION: &str = "squad_http_request_duration_seconds";
pub const HTTP_IN_FLIGHT: &str = "squad_http_requests_in_flight";
pub const HTTP_STREAM_DURATION: &str = "squad_http_stream_duration_seconds";
pub const UPSTREAM_REQUESTS: &str = "squad_upstream_requests_total";
pub const UPSTREAM_DURATION: &str = "squad_upstream_request_duration_seconds";
pub const UPSTREAM_FIRST_CHUNK: &str = "squad_upstream_time_to_first_chunk_seconds";
pub const TOKENS: &str = "squad_tokens_total";
pub const BUILD_INFO: &str = "squad_build_info";
pub const FALLBACKS: &str = "squad_fallbacks_total";
pub const RETRIES: &str = "squad_retries_total";
pub const BREAKER_TRANSITIONS: &str = "squad_breaker_transitions_total";
pub const BREAKER_STATE: &str = "squad_breaker_state";
pub const AGENT_REQUESTS: &str = "squad_agent_requests_total";
pub const AGENT_DURATION: &str = "squad_agent_request_duration_seconds";
pub const ADMISSIONS: &str = "squad_admission_decisions_total";
pub const QUEUE_DEPTH: &str = "squad_concurrency_queue_depth";
pub const QUEUE_WAIT: &str = "squad_concurrency_queue_wait_seconds";
pub const EFFECTIVE_RPM: &str = "squad_provider_effective_rpm";
pub const LIMITS_REDIS_ERRORS: &str = "squad_limits_redis_errors_total";
pub const LIMITS_REPLICAS_SEEN: &str = "squad_limits_replicas_seen";
pub const DATABASE_UP: &str = "squad_database_up";
pub const DATABASE_CONNECTIONS: &str = "squad_database_connections";
pub const DATABASE_CONNECTIONS_MAX: &str = "squad_database_connections_max";
pub const AUDIT_RECORDS: &str = "squad_audit_records_total";
pub const AUDIT_FAILURES: &str = "squad_audit_failures_total";
pub const AUDIT_JOURNAL_BYTES: &str = "squad_audit_journal_bytes";
pub const AUTH_DECISIONS: &str = "squad_auth_decisions_total";
pub const PII_DETECTIONS: &str = "squad_pii_detections_total";

const LATENCY_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0];
/// A stream's whole length: up to `server.stream_timeout` (600 s by default).
const STREAM_BUCKETS: &[f64] = &[0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder once and returns the handle that renders
/// `/metrics`. (The recorder is global, so tests sharing a process share it.)
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            // A full name's buckets take precedence over a suffix's.
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(HTTP_STREAM_DURATION.into()), STREAM_BUCKETS))
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let handle = match builder.install_recorder() {
                Ok(handle) => handle,
                // Another recorder is installed (an embedding program's): render
                // from a private recorder so `/metrics` still answers.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            };
            gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            handle
        })
        .clone()
}

/// Handles of the metrics recorded on every request, by label set. The
/// registry lookup (label strings built, hashed and compared) happens once per
/// label set instead of once per request; the sets are bounded (route
/// templates, providers, fixed outcomes), so the cache is too.
struct Handles<K, V> {
    by_name: LazyLock<RwLock<HashMap<String, HashMap<K, V>>>>,
}

impl<K: Eq + Hash + Copy, V: Clone> Handles<K, V> {
    const fn new() -> Self {
        Self { by_name: LazyLock::new(Default::default) }
    }

    /// The handles for (`name`, `rest`), registered by `make` the first time.
    fn get(&self, name: &str, rest: K, make: impl FnOnce() -> V) -> V {
        if let Ok(map) = self.by_name.read()
            && let Some(v) = map.get(name).and_then(|m| m.get(&rest))
        {
            return v.clone();
        }
        let v = make();
        if let Ok(mut map) = self.by_name.write() {
            map.entry(name.to_owned()).or_default().entry(rest).or_insert_with(|| v.clone());
        }
        v
    }
}

fn in_flight() -> &'static Gauge {
    static HANDLE: OnceLock<Gauge> = OnceLock::new();
    HANDLE.get_or_init(|| gauge!(HTTP_IN_FLIGHT))
}

pub fn http_started() {
    in_flight().increment(1.0);
}

/// A response's head went out after `elapsed`: the request is counted, and
/// its time to the head recorded. It leaves the in-flight gauge now, or,
/// for a stream, when the stream ends (`http_stream_ended`).
pub fn http_finished(route: &str, method: &'static str, status: u16, elapsed: Duration, streaming: bool) {
    static HANDLES: Handles<(&'static str, &'static str), (Counter, Histogram)> = Handles::new();
    if !streaming {
        in_flight().decrement(1.0);
    }
    let status = status_label(status);
    let (requests, duration) = HANDLES.get(route, (method, status), || {
        let labels = [("route", route.to_owned()), ("method", method.to_owned()), ("status", status.to_owned())];
        (counter!(HTTP_REQUESTS, &labels), histogram!(HTTP_DURATION, &labels))
    });
    requests.increment(1);
    duration.record(elapsed.as_secs_f64());
}

/// A streamed response ended (or its client went away) `elapsed` after the
/// request arrived.
pub fn http_stream_ended(route: &str, elapsed: Duration) {
    static HANDLES: Handles<(), Histogram> = Handles::new();
    in_flight().decrement(1.0);
    HANDLES
        .get(route, (), || histogram!(HTTP_STREAM_DURATION, "route" => route.to_owned()))
        .record(elapsed.as_secs_f64());
}

/// `outcome` is `ok`, `cancelled`, or an `ErrorKind` label.
pub fn upstream_call(provider: &str, outcome: &'static str, elapsed: Duration) {
    static HANDLES: Handles<&'static str, (Counter, Histogram)> = Handles::new();
    let (calls, duration) = HANDLES.get(provider, outcome, || {
        let labels = [("provider", provider.to_owned()), ("outcome", outcome.to_owned())];
        (counter!(UPSTREAM_REQUESTS, &labels), histogram!(UPSTREAM_DURATION, &labels))
    });
    calls.increment(1);
    duration.record(elapsed.as_secs_f64());
}

pub fn upstream_first_chunk(provider: &str, elapsed: Duration) {
    static HANDLES: Handles<(), Histogram> = Handles::new();
    let first = HANDLES.get(provider, (), || histogram!(UPSTREAM_FIRST_CHUNK, "provider" => provider.to_owned()));
    first.record(elapsed.as_secs_f64());
}

pub fn tokens(provider: &str, prompt: u64, completion: u64) {
    static HANDLES: Handles<(), (Counter, Counter)> = Handles::new();
    let (input, output) = HANDLES.get(provider, (), || {
        (
            counter!(TOKENS, "provider" => provider.to_owned(), "direction" => "input"),
            counter!(TOKENS, "provider" => provider.to_owned(), "direction" => "output"),
        )
    });
    input.increment(prompt);
    output.increment(completion);
}

/// The chain moved from one provider to the next.
pub fn fallback(from: &str, to: &str) {
    counter!(FALLBACKS, "from" => from.to_owned(), "to" => to.to_owned()).increment(1);
}

pub fn retry(provider: &str) {
    counter!(RETRIES, "provider" => provider.to_owned()).increment(1);
}

/// Counts a breaker state change and sets the state gauge (0 closed, 1 half-open, 2 open).
pub fn breaker_transition(provider: &str, transition: crate::resilience::breaker::Transition) {
    use crate::resilience::breaker::State;
    let Some((from, to)) = transition else { return };
    counter!(BREAKER_TRANSITIONS, "provider" => provider.to_owned(), "from" => from.as_str(), "to" => to.as_str())
        .increment(1);
    let value = match to {
        State::Closed => 0.0,
        State::HalfOpen => 1.0,
        State::Open => 2.0,
    };
    gauge!(BREAKER_STATE, "provider" => provider.to_owned()).set(value);
    tracing::warn!(provider, from = from.as_str(), to = to.as_str(), "circuit breaker changed state");
}

/// `scope`: provider, client, concurrency; `outcome`: allowed, limited, queued, queue_full, timed_out.
pub fn admission(scope: &'static str, outcome: &'static str) {
    static HANDLES: Handles<&'static str, Counter> = Handles::new();
    HANDLES.get(scope, outcome, || counter!(ADMISSIONS, "scope" => scope, "outcome" => outcome)).increment(1);
}

pub fn queue_depth(depth: usize) {
    gauge!(QUEUE_DEPTH).set(depth as f64);
}

pub fn queue_wait(waited: Duration) {
    histogram!(QUEUE_WAIT).record(waited.as_secs_f64());
}

pub fn effective_rpm(provider: &str, rpm: f64) {
    gauge!(EFFECTIVE_RPM, "provider" => provider.to_owned()).set(rpm);
}

pub fn limits_redis_error() {
    counter!(LIMITS_REDIS_ERRORS).increment(1);
}

/// Whether the database answered a ping when `/metrics` was scraped.
pub fn database_up(up: bool) {
    gauge!(DATABASE_UP).set(if up { 1.0 } else { 0.0 });
}

/// The database pool as of the scrape: connections in use and idle, and the
/// most it may open. All in use for long means requests wait for one.
pub fn database_pool(stats: crate::store::PoolStats) {
    gauge!(DATABASE_CONNECTIONS, "state" => "in_use").set(f64::from(stats.open.saturating_sub(stats.idle)));
    gauge!(DATABASE_CONNECTIONS, "state" => "idle").set(f64::from(stats.idle));
    gauge!(DATABASE_CONNECTIONS_MAX).set(f64::from(stats.max));
}

/// Replicas registered in Redis at this replica's last heartbeat (0 until
/// its first one succeeds).
pub fn limits_replicas_seen(n: u32) {
    gauge!(LIMITS_REPLICAS_SEEN).set(f64::from(n));
}

/// Every provider's breaker starts closed; the gauge exists from start-up.
pub fn breaker_initial(provider: &str) {
    gauge!(BREAKER_STATE, "provider" => provider.to_owned()).set(0.0);
}

pub fn agent_request(agent: &str, outcome: &'static str, elapsed: Duration) {
    static HANDLES: Handles<&'static str, (Counter, Histogram)> = Handles::new();
    let (requests, duration) = HANDLES.get(agent, outcome, || {
        (
            counter!(AGENT_REQUESTS, "agent" => agent.to_owned(), "outcome" => outcome),
            histogram!(AGENT_DURATION, "agent" => agent.to_owned()),
        )
    });
    requests.increment(1);
    duration.record(elapsed.as_secs_f64());
}

fn status_label(status: u16) -> &'static str {
    // Exact codes for the ones operators alert on, classes for the rest.
    match status {
        200 => "200",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        413 => "413",
        429 => "429",
        499 => "499",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        s if s < 300 => "2xx",
        s if s < 400 => "3xx",
        s if s < 500 => "4xx",
        _ => "5xx",
    }
}

/// `n` audit records reached a stage (one of `AUDIT_RECORD_STAGES`).
/// Called by the audit writer, once per batch.
pub fn audit_records(stage: &'static str, n: u64) {
    debug_assert!(AUDIT_RECORD_STAGES.contains(&stage), "{stage} is not in AUDIT_RECORD_STAGES");
    counter!(AUDIT_RECORDS, "stage" => stage).increment(n);
}

/// An audit failure, by stage (one of `AUDIT_FAILURE_STAGES`).
pub fn audit_failure(stage: &'static str) {
    debug_assert!(AUDIT_FAILURE_STAGES.contains(&stage), "{stage} is not in AUDIT_FAILURE_STAGES");
    counter!(AUDIT_FAILURES, "stage" => stage).increment(1);
}

/// Every `stage` of `squad_audit_records_total`.
pub const AUDIT_RECORD_STAGES: [&str; 4] = ["queued", "journaled", "written", "replayed"];
/// Every `stage` of `squad_audit_failures_total`.
pub const AUDIT_FAILURE_STAGES: [&str; 6] =
    ["journal", "database", "encode", "journal_read", "journal_corrupt", "lost"];
/// Every `outcome` of `squad_auth_decisions_total`.
pub const AUTH_OUTCOMES: [&str; 7] = ["ok", "missing", "invalid", "expired", "revoked", "forbidden", "unavailable"];

/// The audit counters' series, at 0, from start-up. A series that first
/// appears at 1 has no earlier sample for `rate()` or `increase()` to rise
/// from, so an alert on audit failures would miss the first one.
pub fn audit_initial() {
    for stage in AUDIT_RECORD_STAGES {
        counter!(AUDIT_RECORDS, "stage" => stage).increment(0);
    }
    for stage in AUDIT_FAILURE_STAGES {
        counter!(AUDIT_FAILURES, "stage" => stage).increment(0);
    }
}

/// The API-key decisions' series, at 0, from start-up (see `audit_initial`).
pub fn auth_initial() {
    for outcome in AUTH_OUTCOMES {
        counter!(AUTH_DECISIONS, "outcome" => outcome).increment(0);
    }
}

pub fn audit_journal_bytes(bytes: u64) {
    gauge!(AUDIT_JOURNAL_BYTES).set(bytes as f64);
}

/// An API-key decision (one of `AUTH_OUTCOMES`).
pub fn auth_decision(outcome: &'static str) {
    debug_assert!(AUTH_OUTCOMES.contains(&outcome), "{outcome} is not in AUTH_OUTCOMES");
    counter!(AUTH_DECISIONS, "outcome" => outcome).increment(1);
}

/// PII found, by type (never the value) and where (`audit`).
pub fn pii_detected(kind: &'static str, place: &'static str) {
    counter!(PII_DETECTIONS, "kind" => kind, "where" => place).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_handles_count_into_the_series_of_their_labels() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let render = recorder.handle();
        let handles: Handles<&'static str, Counter> = Handles::new();
        let mut registered = 0;
        metrics::with_local_recorder(&recorder, || {
            for (provider, outcome) in [("groq", "ok"), ("groq", "ok"), ("groq", "timeout"), ("gemini", "ok")] {
                let make = || {
                    registered += 1;
                    counter!(UPSTREAM_REQUESTS, "provider" => provider, "outcome" => outcome)
                };
                handles.get(provider, outcome, make).increment(1);
            }
        });
        assert_eq!(registered, 3, "one registry lookup per label set");
        let text = render.render();
        for series in [
            r#"squad_upstream_requests_total{provider="groq",outcome="ok"} 2"#,
            r#"squad_upstream_requests_total{provider="groq",outcome="timeout"} 1"#,
            r#"squad_upstream_requests_total{provider="gemini",outcome="ok"} 1"#,
        ] {
            assert!(text.contains(series), "{series} missing from:\n{text}");
        }
    }
}
