//! Operational endpoints: health (deep), liveness, readiness, metrics, models.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::openapi::KeyedRouteErrors;
use super::state::AppState;
use super::wire::{ModelEntry, ModelList};
use crate::config::ProviderKind;
use crate::service::ProviderState;
use crate::store::writer::AuditStatus;

/// `GET /health`: the gateway and each dependency.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthReport {
    /// `ok`, `degraded` (no provider configured) or `draining`.
    status: &'static str,
    version: &'static str,
    uptime_seconds: u64,
    components: Components,
}

#[derive(Debug, Serialize, ToSchema)]
struct Components {
    server: ServerHealth,
    providers: ProvidersHealth,
    limits: LimitsHealth,
    conversations: ConversationsHealth,
    database: DatabaseHealth,
    auth: AuthHealth,
}

#[derive(Debug, Serialize, ToSchema)]
struct ServerHealth {
    /// `ready` or `not_ready`.
    status: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
struct ProvidersHealth {
    configured: usize,
    total: usize,
    /// By provider id.
    items: BTreeMap<String, ProviderBrief>,
}

#[derive(Debug, Serialize, ToSchema)]
struct ProviderBrief {
    /// `configured`, `unconfigured` or `disabled`.
    status: &'static str,
    kind: ProviderKind,
    default_model: String,
}

#[derive(Debug, Serialize, ToSchema)]
struct LimitsHealth {
    /// `memory` or `redis`.
    backend: &'static str,
    /// `ok`, or `degraded` while the shared store is unreachable.
    status: &'static str,
    /// With Redis and `on_failure: local_share`: each budget's share applied
    /// while Redis is unreachable is 1/`fallback_replicas`
    /// (`limits.redis.replicas`, or the replicas seen when more).
    #[serde(skip_serializing_if = "Option::is_none")]
    fallback_replicas: Option<u32>,
    /// With Redis, `local_share` and `limits.redis.discover_replicas`: the
    /// live replicas at this replica's last successful heartbeat.
    #[serde(skip_serializing_if = "Option::is_none")]
    replicas_seen: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
struct ConversationsHealth {
    /// `memory` or `redis`.
    backend: &'static str,
    /// With Redis: `up` or `down` (requests that continue a conversation
    /// then get 503; new ones are served, unremembered). Absent in memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    latency_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// `{"status": "disabled"}` when no database is configured; otherwise the
/// store's details as well.
#[derive(Debug, Serialize, ToSchema)]
pub struct DatabaseHealth {
    /// `up`, `down` or `disabled`.
    status: &'static str,
    #[serde(flatten)]
    store: Option<StoreHealth>,
}

/// Flattened into `DatabaseHealth` when a database is configured. Its fields
/// are not `required` in the schema because the disabled form has none of them.
#[derive(Debug, Serialize, ToSchema)]
struct StoreHealth {
    /// `sqlite` or `postgres`.
    #[schema(required = false)]
    dialect: &'static str,
    /// The URL without its password.
    #[schema(required = false)]
    url: String,
    #[schema(required = false)]
    migrated: bool,
    latency_ms: Option<f64>,
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    audit: Option<AuditStatus>,
}

#[derive(Debug, Serialize, ToSchema)]
struct AuthHealth {
    /// `required` or `disabled`.
    mode: &'static str,
    /// Whether the key store has been read; null when auth is disabled.
    keys_loaded: Option<bool>,
}

#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "Deep health report", body = HealthReport)))]
pub async fn health(State(state): State<AppState>) -> Json<HealthReport> {
    let entries: Vec<_> = state.gateway.registry().entries().cloned().collect();
    let items = entries
        .iter()
        .map(|p| {
            (p.id.clone(), ProviderBrief { status: p.status(), kind: p.kind, default_model: p.default_model.clone() })
        })
        .collect();
    let configured = entries.iter().filter(|p| matches!(p.state, ProviderState::Ready(_))).count();
    let status = if state.lifecycle.is_draining() {
        "draining"
    } else if configured == 0 {
        "degraded"
    } else {
        "ok"
    };
    let limits = state.gateway.limits();
    let share = limits.fallback_share();
    // At most 1 s each, side by side: two stores down cost 1 s, not 2.
    let (conversations, database) = tokio::join!(conversations(&state), database(&state));
    Json(HealthReport {
        status,
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: state.started.elapsed().as_secs(),
        components: Components {
            server: ServerHealth { status: if state.lifecycle.is_ready() { "ready" } else { "not_ready" } },
            providers: ProvidersHealth { configured, total: entries.len(), items },
            limits: LimitsHealth {
                backend: limits.backend(),
                status: if limits.degraded() { "degraded" } else { "ok" },
                fallback_replicas: share.map(|(n, _)| n),
                replicas_seen: share.and_then(|(_, seen)| seen),
            },
            conversations,
            database,
            auth: AuthHealth {
                mode: if state.keys.is_some() { "required" } else { "disabled" },
                keys_loaded: state.keys.as_ref().map(|k| k.is_loaded()),
            },
        },
    })
}

/// The database as `/health` and `/health/ready` show it. A database that is
/// down is reported, not fatal: chat goes on and audit records wait in the journal.
/// One round trip to the database, given 1 s at most: what `/health`,
/// `/health/ready` and `squad_database_up` report.
async fn ping(store: &crate::store::Store) -> Result<std::time::Duration, String> {
    within_a_second(store.ping()).await
}

/// A store's round trip, given 1 s at most; its error as text.
async fn within_a_second<E: std::fmt::Display>(
    round_trip: impl std::future::Future<Output = Result<std::time::Duration, E>>,
) -> Result<std::time::Duration, String> {
    match tokio::time::timeout(std::time::Duration::from_secs(1), round_trip).await {
        Ok(Ok(d)) => Ok(d),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 1s".to_owned()),
    }
}

async fn database(state: &AppState) -> DatabaseHealth {
    let Some(store) = &state.store else { return DatabaseHealth { status: "disabled", store: None } };
    let (status, latency_ms, error) = match ping(store).await {
        Ok(d) => ("up", Some(d.as_secs_f64() * 1000.0), None),
        Err(e) => ("down", None, Some(e)),
    };
    let store = StoreHealth {
        dialect: store.dialect(),
        url: store.shown_url().to_owned(),
        migrated: store.is_migrated(),
        latency_ms,
        error,
        audit: state.audit.as_ref().map(|a| a.status()),
    };
    DatabaseHealth { status, store: Some(store) }
}

/// The conversation store as `/health` shows it, given 1 s at most (its
/// client's own timeouts are 1 s as well).
async fn conversations(state: &AppState) -> ConversationsHealth {
    let store = state.gateway.conversations();
    let backend = store.backend();
    let (status, latency_ms, error) = match store.ping() {
        None => (None, None, None),
        Some(round_trip) => match within_a_second(round_trip).await {
            Ok(d) => (Some("up"), Some(d.as_secs_f64() * 1000.0), None),
            Err(e) => (Some("down"), None, Some(e)),
        },
    };
    ConversationsHealth { backend, status, latency_ms, error }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Liveness {
    /// Always `alive`.
    status: &'static str,
}

#[utoipa::path(get, path = "/health/live", tag = "operations",
    responses((status = 200, description = "The process is running", body = Liveness)))]
pub async fn live() -> Json<Liveness> {
    Json(Liveness { status: "alive" })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// Always `ready` (not ready is a 503 error body).
    status: &'static str,
    /// The database's status: `up`, `down` or `disabled`.
    database: &'static str,
}

#[utoipa::path(get, path = "/health/ready", tag = "operations", responses(
    (status = 200, description = "Accepting traffic", body = Readiness),
    (status = 503, description = "Starting or draining (`not_ready`)", body = ErrorBody),
))]
pub async fn ready(State(state): State<AppState>) -> Result<Json<Readiness>, ApiError> {
    if state.lifecycle.is_ready() {
        Ok(Json(Readiness { status: "ready", database: database(&state).await.status }))
    } else {
        Err(ApiError::NotReady)
    }
}

#[utoipa::path(get, path = "/metrics", tag = "operations", responses(
    (status = 200, description = "Prometheus text exposition format", body = String,
     content_type = "text/plain; version=0.0.4; charset=utf-8"),
))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    // The database as of this scrape.
    if let Some(store) = &state.store {
        crate::telemetry::metrics::database_up(ping(store).await.is_ok());
        crate::telemetry::metrics::database_pool(store.pool_stats());
    }
    let body = state.metrics.render();
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

/// Configured providers' advertised models as `provider/model`, then aliases.
#[utoipa::path(get, path = "/v1/models", tag = "gateway", security(("bearer" = []), ("api_key" = [])), responses(
    (status = 200, description = "Models and agents usable as `model`", body = ModelList),
    KeyedRouteErrors,
))]
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
