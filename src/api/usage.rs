//! `GET /v1/usage?since=&until=&group_by=provider|model|agent|key` (admin):
//! requests, tokens and estimated cost from the audit store.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::state::AppState;
use crate::store::{DAY_MS, GroupBy, format_time, now_ms, parse_time};

pub async fn usage(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    for key in q.keys() {
        if !matches!(key.as_str(), "since" | "until" | "group_by") {
            return Err(ApiError::invalid(format!("unknown parameter `{key}`"), key));
        }
    }
    let time = |name: &str| q.get(name).map(|v| parse_time(v).map_err(|e| ApiError::invalid(e, name))).transpose();
    let until = time("until")?.unwrap_or_else(|| now_ms() + 1);
    let since = time("since")?.unwrap_or(until.saturating_sub(30 * DAY_MS));
    if since >= until {
        return Err(ApiError::invalid("`since` must be before `until`", "since"));
    }
    let group_by = match q.get("group_by").map(String::as_str).unwrap_or("provider") {
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
    let total = serde_json::json!({
        "requests": rows.iter().map(|r| r.requests).sum::<i64>(),
        "tokens_input": rows.iter().map(|r| r.tokens_input).sum::<i64>(),
        "tokens_output": rows.iter().map(|r| r.tokens_output).sum::<i64>(),
        "cost_usd": rows.iter().map(|r| r.cost_usd).sum::<f64>(),
    });
    Ok(Json(serde_json::json!({
        "object": "usage",
        "since": format_time(since),
        "until": format_time(until),
        "group_by": group_by,
        "data": rows,
        "total": total,
    }))
    .into_response())
}
