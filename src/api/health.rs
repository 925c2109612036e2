//! Operational endpoints: health (deep), liveness, readiness, metrics, models.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::error::ApiError;
use super::state::AppState;
use super::wire::{ModelEntry, ModelList};
use crate::service::ProviderState;

pub async fn health(State(state): State<AppState>) -> Response {
    let entries: Vec<_> = state.gateway.registry().entries().cloned().collect();
    let providers: Map<String, Value> = entries
        .iter()
        .map(|p| (p.id.clone(), json!({"status": p.status(), "kind": p.kind, "default_model": p.default_model})))
        .collect();
    let configured = entries.iter().filter(|p| matches!(p.state, ProviderState::Ready(_))).count();
    let status = if state.lifecycle.is_draining() {
        "draining"
    } else if configured == 0 {
        "degraded"
    } else {
        "ok"
    };
    let body = json!({
        "status": status,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.started.elapsed().as_secs(),
        "components": {
            "server": {"status": if state.lifecycle.is_ready() { "ready" } else { "not_ready" }},
            "providers": {"configured": configured, "total": entries.len(), "items": providers},
            "limits": {
                "backend": state.gateway.limits().backend(),
                "status": if state.gateway.limits().degraded() { "degraded" } else { "ok" },
            },
            "conversations": {"backend": state.gateway.conversations().backend()},
            "database": database(&state).await,
            "auth": {"mode": if state.keys.is_some() { "required" } else { "disabled" },
                     "keys_loaded": state.keys.as_ref().map(|k| k.is_loaded())},
        },
    });
    Json(body).into_response()
}

/// The database as `/health` and `/health/ready` show it. A database that is
/// down is reported, not fatal: chat goes on and audit records wait in the journal.
async fn database(state: &AppState) -> Value {
    let Some(store) = &state.store else { return json!({"status": "disabled"}) };
    let ping = tokio::time::timeout(std::time::Duration::from_secs(1), store.ping()).await;
    let (status, latency, error) = match ping {
        Ok(Ok(d)) => ("up", Some(d.as_secs_f64() * 1000.0), None),
        Ok(Err(e)) => ("down", None, Some(e.to_string())),
        Err(_) => ("down", None, Some("no answer within 1s".to_owned())),
    };
    let mut v = json!({
        "status": status,
        "dialect": store.dialect(),
        "url": store.shown_url(),
        "migrated": store.is_migrated(),
        "latency_ms": latency,
        "error": error,
    });
    if let Some(audit) = &state.audit {
        v["audit"] = serde_json::to_value(audit.status()).unwrap_or_default();
    }
    v
}

pub async fn live() -> Response {
    Json(json!({"status": "alive"})).into_response()
}

pub async fn ready(State(state): State<AppState>) -> Result<Response, ApiError> {
    if state.lifecycle.is_ready() {
        Ok(Json(json!({"status": "ready", "database": database(&state).await["status"]})).into_response())
    } else {
        Err(ApiError::NotReady)
    }
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    let body = state.metrics.render();
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

/// Configured providers' advertised models as `provider/model`, then aliases.
pub async fn models(State(state): State<AppState>) -> Json<ModelList> {
    let registry = state.gateway.registry();
    let created = state.started_unix;
    let mut data = Vec::new();
    for entry in registry.entries().filter(|p| matches!(p.state, ProviderState::Ready(_))) {
        for model in &entry.models {
            data.push(ModelEntry {
                id: format!("{}/{model}", entry.id),
                object: "model",
                created,
                owned_by: entry.id.clone(),
            });
        }
    }
    for agent in state.gateway.roster().all() {
        data.push(ModelEntry { id: agent.id.clone(), object: "model", created, owned_by: "squad".into() });
    }
    for (alias, target) in registry.aliases() {
        let owner = target.split_once('/').map(|(p, _)| p).unwrap_or_default();
        if data.iter().any(|m| m.owned_by == owner) {
            data.push(ModelEntry { id: alias.clone(), object: "model", created, owned_by: owner.to_owned() });
        }
    }
    Json(ModelList { object: "list", data })
}
