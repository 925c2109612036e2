//! Every metric Squad exports: names, labels and the helpers that record them.
//! Labels are bounded: route template, method, status, provider, outcome.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const HTTP_REQUESTS: &str = "squad_http_requests_total";
pub const HTTP_DURATION: &str = "squad_http_request_duration_seconds";
pub const HTTP_IN_FLIGHT: &str = "squad_http_requests_in_flight";
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
pub const AUDIT_RECORDS: &str = "squad_audit_records_total";
pub const AUDIT_FAILURES: &str = "squad_audit_failures_total";
pub const AUDIT_JOURNAL_BYTES: &str = "squad_audit_journal_bytes";
pub const AUTH_DECISIONS: &str = "squad_auth_decisions_total";
pub const PII_DETECTIONS: &str = "squad_pii_detections_total";

const LATENCY_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder once and returns the handle that renders
/// `/metrics`. (The recorder is global, so tests sharing a process share it.)
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
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

pub fn http_started() {
    gauge!(HTTP_IN_FLIGHT).increment(1.0);
}

pub fn http_finished(route: &str, method: &str, status: u16, elapsed: Duration) {
    gauge!(HTTP_IN_FLIGHT).decrement(1.0);
    let status = status_label(status);
    let labels = [("route", route.to_owned()), ("method", method.to_owned()), ("status", status.to_owned())];
    counter!(HTTP_REQUESTS, &labels).increment(1);
    histogram!(HTTP_DURATION, &labels).record(elapsed.as_secs_f64());
}

/// `outcome` is `ok`, `cancelled`, or an `ErrorKind` label.
pub fn upstream_call(provider: &str, outcome: &'static str, elapsed: Duration) {
    let labels = [("provider", provider.to_owned()), ("outcome", outcome.to_owned())];
    counter!(UPSTREAM_REQUESTS, &labels).increment(1);
    histogram!(UPSTREAM_DURATION, &labels).record(elapsed.as_secs_f64());
}

pub fn upstream_first_chunk(provider: &str, elapsed: Duration) {
    histogram!(UPSTREAM_FIRST_CHUNK, "provider" => provider.to_owned()).record(elapsed.as_secs_f64());
}

pub fn tokens(provider: &str, prompt: u64, completion: u64) {
    counter!(TOKENS, "provider" => provider.to_owned(), "direction" => "input").increment(prompt);
    counter!(TOKENS, "provider" => provider.to_owned(), "direction" => "output").increment(completion);
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
    counter!(ADMISSIONS, "scope" => scope, "outcome" => outcome).increment(1);
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

/// Every provider's breaker starts closed; the gauge exists from start-up.
pub fn breaker_initial(provider: &str) {
    gauge!(BREAKER_STATE, "provider" => provider.to_owned()).set(0.0);
}

pub fn agent_request(agent: &str, outcome: &'static str, elapsed: Duration) {
    counter!(AGENT_REQUESTS, "agent" => agent.to_owned(), "outcome" => outcome).increment(1);
    histogram!(AGENT_DURATION, "agent" => agent.to_owned()).record(elapsed.as_secs_f64());
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

/// An audit record reached a stage: `journaled`, `queued`, `written`, `replayed`.
/// Once per request each: the counter is looked up once (after `install`,
/// which runs before any request is served).
pub fn audit_journaled() {
    static HANDLE: std::sync::OnceLock<metrics::Counter> = std::sync::OnceLock::new();
    HANDLE.get_or_init(|| counter!(AUDIT_RECORDS, "stage" => "journaled")).increment(1);
}

pub fn audit_queued() {
    static HANDLE: std::sync::OnceLock<metrics::Counter> = std::sync::OnceLock::new();
    HANDLE.get_or_init(|| counter!(AUDIT_RECORDS, "stage" => "queued")).increment(1);
}

pub fn audit_records(stage: &'static str, n: u64) {
    counter!(AUDIT_RECORDS, "stage" => stage).increment(n);
}

/// An audit failure: `journal`, `database`, `encode`, `journal_read`, `journal_corrupt`, `lost`.
pub fn audit_failure(stage: &'static str) {
    counter!(AUDIT_FAILURES, "stage" => stage).increment(1);
}

pub fn audit_journal_bytes(bytes: u64) {
    gauge!(AUDIT_JOURNAL_BYTES).set(bytes as f64);
}

/// An API-key decision: `ok`, `missing`, `invalid`, `expired`, `revoked`, `forbidden`, `unavailable`.
pub fn auth_decision(outcome: &'static str) {
    counter!(AUTH_DECISIONS, "outcome" => outcome).increment(1);
}

/// PII found, by type (never the value) and where (`audit`).
pub fn pii_detected(kind: &'static str, place: &'static str) {
    counter!(PII_DETECTIONS, "kind" => kind, "where" => place).increment(1);
}
