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

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0,
];

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
    let labels = [
        ("route", route.to_owned()),
        ("method", method.to_owned()),
        ("status", status.to_owned()),
    ];
    counter!(HTTP_REQUESTS, &labels).increment(1);
    histogram!(HTTP_DURATION, &labels).record(elapsed.as_secs_f64());
}

/// `outcome` is `ok`, `cancelled`, or an `ErrorKind` label.
pub fn upstream_call(provider: &str, outcome: &'static str, elapsed: Duration) {
    let labels = [
        ("provider", provider.to_owned()),
        ("outcome", outcome.to_owned()),
    ];
    counter!(UPSTREAM_REQUESTS, &labels).increment(1);
    histogram!(UPSTREAM_DURATION, &labels).record(elapsed.as_secs_f64());
}

pub fn upstream_first_chunk(provider: &str, elapsed: Duration) {
    histogram!(UPSTREAM_FIRST_CHUNK, "provider" => provider.to_owned())
        .record(elapsed.as_secs_f64());
}

pub fn tokens(provider: &str, prompt: u64, completion: u64) {
    counter!(TOKENS, "provider" => provider.to_owned(), "direction" => "input").increment(prompt);
    counter!(TOKENS, "provider" => provider.to_owned(), "direction" => "output")
        .increment(completion);
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
