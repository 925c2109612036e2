//! `GET /providers` and `GET /providers/{name}`: status from the breaker and a
//! rolling window of recent calls. Never a key.

use std::time::UNIX_EPOCH;

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ErrorBody};
use super::openapi::KeyedRouteErrors;
use super::state::AppState;
use crate::service::{ProviderEntry, ProviderState};

#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderStatus {
    name: String,
    kind: crate::config::ProviderKind,
    enabled: bool,
    configured: bool,
    default_model: String,
    models: Vec<String>,
    /// healthy / degraded / unavailable
    status: &'static str,
    breaker: &'static str,
    /// Calls in the recent window (5 minutes, at most 512 calls).
    requests: u64,
    failures: u64,
    failure_rate: f64,
    latency_p50_ms: Option<f64>,
    latency_p95_ms: Option<f64>,
    last_error: Option<&'static str>,
    /// Unix seconds.
    last_error_at: Option<u64>,
    last_rate_limited_at: Option<u64>,
    parked_for_ms: Option<u64>,
    total_requests: u64,
    total_failures: u64,
    /// Squad's own budget for this provider (admission control).
    limits: LimitsView,
}

#[derive(Debug, Serialize, ToSchema)]
struct LimitsView {
    rpm: Option<u64>,
    burst: Option<u64>,
    tpm: Option<u64>,
    /// The request rate after auto-throttling (lower after upstream 429s).
    effective_rpm: Option<f64>,
}

fn unix(t: std::time::SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn status_of(entry: &ProviderEntry, limits: &crate::limits::Limits) -> ProviderStatus {
    let (rpm, burst, tpm) = limits.configured(&entry.id).unwrap_or_default();
    let effective_rpm = limits.effective_rpm(&entry.id).map(|r| (r * 10.0).round() / 10.0);
    let r = entry.health.report();
    let configured = matches!(entry.state, ProviderState::Ready(_));
    ProviderStatus {
        name: entry.id.clone(),
        kind: entry.kind,
        enabled: !matches!(entry.state, ProviderState::Disabled),
        configured: !matches!(entry.state, ProviderState::Unconfigured { .. }),
        default_model: entry.default_model.clone(),
        models: entry.models.clone(),
        status: if configured { r.status } else { "unavailable" },
        breaker: r.breaker,
        requests: r.window_requests as u64,
        failures: r.failures,
        failure_rate: (r.window_failure_rate * 1000.0).round() / 1000.0,
        latency_p50_ms: r.p50_ms,
        latency_p95_ms: r.p95_ms,
        last_error: r.last_error.map(|e| e.0),
        last_error_at: r.last_error.map(|e| unix(e.1)),
        last_rate_limited_at: r.last_rate_limited.map(unix),
        parked_for_ms: r.parked_for.map(|d| d.as_millis() as u64),
        total_requests: r.total_requests,
        total_failures: r.total_failures,
        limits: LimitsView { rpm, burst, tpm, effective_rpm },
    }
}

/// Strings rather than enums so a bad value gets a message naming the choices.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only providers in this state.
    #[param(schema_with = status_filter)]
    status: Option<String>,
    /// `name` (default), `status`, `failure_rate` or `latency` (slowest p95 first).
    #[param(schema_with = sort_order)]
    sort: Option<String>,
}

fn string_enum(values: &[&str]) -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(values.iter().copied()))
        .build()
}

fn status_filter() -> utoipa::openapi::Object {
    string_enum(&["healthy", "degraded", "unavailable"])
}

fn sort_order() -> utoipa::openapi::Object {
    string_enum(&["name", "status", "failure_rate", "latency"])
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderList {
    count: usize,
    providers: Vec<ProviderStatus>,
}

fn rank(status: &str) -> u8 {
    match status {
        "healthy" => 0,
        "degraded" => 1,
        _ => 2,
    }
}

#[utoipa::path(get, path = "/providers", tag = "gateway", security(("bearer" = []), ("api_key" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "Every provider with its recent health", body = ProviderList),
        (status = 400, description = "Bad `status` or `sort`", body = ErrorBody),
        KeyedRouteErrors,
    ))]
pub async fn list(State(state): State<AppState>, Query(q): Query<ListQuery>) -> Result<Json<ProviderList>, ApiError> {
    let limits = state.gateway.limits();
    let mut items: Vec<ProviderStatus> = state.gateway.registry().entries().map(|e| status_of(e, limits)).collect();
    if let Some(wanted) = &q.status {
        if !["healthy", "degraded", "unavailable"].contains(&wanted.as_str()) {
            return Err(ApiError::invalid("`status` must be healthy, degraded or unavailable", "status"));
        }
        items.retain(|p| p.status == wanted);
    }
    match q.sort.as_deref() {
        None | Some("name") => {}
        Some("status") => items.sort_by_key(|p| rank(p.status)),
        Some("failure_rate") => items.sort_by(|a, b| b.failure_rate.total_cmp(&a.failure_rate)),
        Some("latency") => {
            items.sort_by(|a, b| b.latency_p95_ms.unwrap_or(-1.0).total_cmp(&a.latency_p95_ms.unwrap_or(-1.0)))
        }
        Some(_) => return Err(ApiError::invalid("`sort` must be name, status, failure_rate or latency", "sort")),
    }
    Ok(Json(ProviderList { count: items.len(), providers: items }))
}

#[utoipa::path(get, path = "/providers/{name}", tag = "gateway", security(("bearer" = []), ("api_key" = [])),
    params(("name" = String, Path, description = "Provider id, e.g. `groq`")),
    responses(
        (status = 200, description = "One provider", body = ProviderStatus),
        KeyedRouteErrors,
        (status = 404, description = "Unknown provider", body = ErrorBody),
    ))]
pub async fn show(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<ProviderStatus>, ApiError> {
    let entry = state
        .gateway
        .registry()
        .get(&name)
        .ok_or_else(|| ApiError::NotFound(format!("unknown provider {}", super::error::quoted(&name, 64))))?;
    Ok(Json(status_of(entry, state.gateway.limits())))
}
