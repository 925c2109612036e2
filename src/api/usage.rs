//! `GET /v1/usage?since=&until=&group_by=provider|model|agent|key` (admin):
//! requests, tokens and estimated cost from the audit store.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Query, State};
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ErrorBody};
use super::state::AppState;
use crate::store::{DAY_MS, GroupBy, UsageRow, format_time, now_ms, parse_time};

/// The query parameters; any other parameter is a 400. Read by hand from a
/// map (not serde's `Query`) so an unknown parameter or a bad `group_by` gets
/// a message naming it.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// Start (inclusive): `YYYY-MM-DD`, an RFC 3339 time or Unix seconds. Default: 30 days before `until`.
    since: Option<String>,
    /// End (exclusive), same forms. Default: now.
    until: Option<String>,
    /// Default `provider`.
    #[param(value_type = Option<GroupBy>, inline)]
    group_by: Option<String>,
}

impl UsageQuery {
    fn from_map(mut q: HashMap<String, String>) -> Result<Self, ApiError> {
        let parsed = Self { since: q.remove("since"), until: q.remove("until"), group_by: q.remove("group_by") };
        match q.into_keys().next() {
            Some(key) => Err(ApiError::invalid(format!("unknown parameter `{key}`"), &key)),
            None => Ok(parsed),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageReport {
    /// Always `usage`.
    object: &'static str,
    since: String,
    until: String,
    group_by: GroupBy,
    data: Vec<UsageRow>,
    total: UsageTotal,
}

#[derive(Debug, Serialize, ToSchema)]
struct UsageTotal {
    requests: i64,
    tokens_input: i64,
    tokens_output: i64,
    cost_usd: f64,
}

#[utoipa::path(get, path = "/v1/usage", tag = "admin", security(("bearer" = []), ("api_key" = [])),
    params(UsageQuery),
    responses(
        (status = 200, description = "Requests, tokens and estimated cost per group", body = UsageReport),
        (status = 400, description = "Unknown parameter, bad time or `group_by`, or `since` not before `until`", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 403, description = "Not an admin key (`admin_required`)", body = ErrorBody),
        (status = 503, description = "No database, or the query failed", body = ErrorBody),
    ))]
pub async fn usage(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<UsageReport>, ApiError> {
    let q = UsageQuery::from_map(q)?;
    let time = |value: &Option<String>, name: &str| {
        value.as_deref().map(|v| parse_time(v).map_err(|e| ApiError::invalid(e, name))).transpose()
    };
    let until = time(&q.until, "until")?.unwrap_or_else(|| now_ms() + 1);
    let since = time(&q.since, "since")?.unwrap_or(until.saturating_sub(30 * DAY_MS));
    if since >= until {
        return Err(ApiError::invalid("`since` must be before `until`", "since"));
    }
    let group_by = match q.group_by.as_deref().unwrap_or("provider") {
        "provider" => GroupBy::Provider,
        "model" => GroupBy::Model,
        "agent" => GroupBy::Agent,
        "key" => GroupBy::Key,
        other => {
            return Err(ApiError::invalid(
                format!("`group_by` must be provider, model, agent or key, not `{other}`"),
                "group_by",
            ));
        }
    };
    let Some(store) = &state.store else {
        return Err(ApiError::DatabaseUnavailable("no database is configured".into()));
    };
    let rows = store.usage(since, until, group_by).await.map_err(|e| {
        tracing::warn!(error = %e, "usage query failed");
        ApiError::DatabaseUnavailable("the usage query failed".into())
    })?;
    let total = UsageTotal {
        requests: rows.iter().map(|r| r.requests).sum(),
        tokens_input: rows.iter().map(|r| r.tokens_input).sum(),
        tokens_output: rows.iter().map(|r| r.tokens_output).sum(),
        cost_usd: rows.iter().map(|r| r.cost_usd).sum(),
    };
    Ok(Json(UsageReport {
        object: "usage",
        since: format_time(since),
        until: format_time(until),
        group_by,
        data: rows,
        total,
    }))
}
