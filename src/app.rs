//! Composition root: config + secrets → providers → service → router. The only
//! module that names concrete adapters.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use secrecy::SecretString;

use crate::agents::{PromptSettings, Roster};
use crate::api::{self, AppState};
use crate::config::{AuthMode, Config, ProviderKind};
use crate::conversations::{Bounds, ConversationStore, MemoryStore, RedisStore};
use crate::limits::Limits;
use crate::providers::DynProvider;
use crate::providers::gemini::Gemini;
use crate::providers::http::BuildError;
use crate::providers::openai_compat::OpenAiCompat;
use crate::resilience::ProviderHealth;
use crate::service::{Gateway, GatewayParts, Lifecycle, ProviderEntry, ProviderState, Registry};
use crate::store::{AuditLog, KeyCache, Store};
use crate::telemetry;

/// Provider keys by provider id, read from the environment variables the config
/// names. Never logged, never serialised.
#[derive(Default, Clone)]
pub struct Secrets(BTreeMap<String, SecretString>);

impl Secrets {
    pub fn from_env(config: &Config, lookup: impl Fn(&str) -> Option<String>) -> Self {
        let keys = config
            .providers
            .iter()
            .filter_map(|(id, p)| {
                let value = lookup(p.api_key_env.as_deref()?)?;
                (!value.trim().is_empty()).then(|| (id.clone(), SecretString::from(value.trim().to_owned())))
            })
            .collect();
        Self(keys)
    }

    pub fn insert(&mut self, provider: &str, key: &str) {
        self.0.insert(provider.to_owned(), SecretString::from(key.to_owned()));
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{provider}: {source}")]
    Provider { provider: String, source: BuildError },
    /// Another part (`database`, `limits`, `pii`, …) that cannot be built.
    #[error("{part}: {message}")]
    Setup { part: &'static str, message: String },
}

/// Resolves every configured provider into a registry entry.
pub fn registry(config: &Config, secrets: &Secrets) -> Result<Registry, AppError> {
    let mut entries = Vec::new();
    for (id, p) in &config.providers {
        let key = secrets.0.get(id);
        let state = if !p.enabled {
            ProviderState::Disabled
        } else if let (Some(env), None) = (&p.api_key_env, key) {
            ProviderState::Unconfigured { key_env: env.clone() }
        } else {
            let built: Result<DynProvider, BuildError> = match p.kind {
                ProviderKind::OpenaiCompatible => OpenAiCompat::new(id, p, key).map(|a| Arc::new(a) as DynProvider),
                ProviderKind::Gemini => Gemini::new(id, p, key).map(|a| Arc::new(a) as DynProvider),
            };
            ProviderState::Ready(built.map_err(|source| AppError::Provider { provider: id.clone(), source })?)
        };
        entries.push(ProviderEntry {
            id: id.clone(),
            kind: p.kind,
            default_model: p.default_model.clone(),
            models: p.models.clone(),
            state,
            health: Arc::new(ProviderHealth::new(config.resilience.breaker)),
        });
        telemetry::metrics::breaker_initial(id);
    }
    Ok(Registry::new(entries, config.aliases.clone()))
}

/// The application state for `config`; the caller owns the lifecycle flags.
pub fn state(config: &Config, secrets: &Secrets) -> Result<AppState, AppError> {
    // First: the provider registry and the limits set gauges as they are
    // built (each breaker closed, each provider's rpm), and with no recorder
    // installed yet those values would go nowhere until they next changed.
    let metrics = telemetry::metrics::install();
    let registry = registry(config, secrets)?;
    let (roster, issues) = Roster::load(config.agents.dir.as_deref());
    for issue in &issues {
        tracing::error!(path = %issue.path, reason = %issue.reason, "agent file skipped");
    }
    for agent in roster.all() {
        for link in agent.chain.iter().filter(|l| registry.get(&l.provider).is_none()) {
            tracing::warn!(agent = %agent.id, provider = %link.provider, "agent chain names an unknown provider; it will be skipped");
        }
    }
    for id in config.pii.agents.keys().filter(|id| roster.get(id).is_none()) {
        tracing::warn!(agent = %id, "pii.agents names an unknown agent; its rules apply to nothing");
    }
    let pii = Arc::new(
        crate::security::PiiPolicy::new(&config.pii).map_err(|e| AppError::Setup { part: "pii", message: e })?,
    );
    let gateway = Gateway::new(GatewayParts {
        pii: pii.clone(),
        registry,
        roster,
        prompt: PromptSettings { language: config.agents.language.clone(), user_name: config.agents.user_name.clone() },
        policy: config.resilience.retry,
        request_timeout: config.server.request_timeout,
        stream_timeout: config.server.stream_timeout,
        conversations: conversation_store(config)?,
        limits: Arc::new(
            Limits::from_config(config).map_err(|e| AppError::Setup { part: "limits", message: e.to_string() })?,
        ),
    });
    let persistence = persistence(config, &pii.detector)?;
    Ok(AppState::new(crate::api::state::Parts {
        store: persistence.store,
        keys: persistence.keys,
        audit: persistence.audit,
        cors: Arc::new(crate::api::security::Cors::new(&config.cors)),
        pii,
        gateway: Arc::new(gateway),
        lifecycle: Arc::new(Lifecycle::default()),
        metrics,
        started: Instant::now(),
        started_unix: crate::domain::unix_now(),
        max_body_bytes: config.server.max_body_bytes,
        body_read_timeout: config.server.body_read_timeout,
        max_json_depth: config.server.max_json_depth,
    }))
}

struct Persistence {
    store: Option<Arc<Store>>,
    keys: Option<Arc<KeyCache>>,
    audit: Option<Arc<AuditLog>>,
}

/// The database is opened (lazily) when auditing or API keys need it.
fn persistence(config: &Config, detector: &Arc<crate::security::Detector>) -> Result<Persistence, AppError> {
    let auth = config.auth.mode == AuthMode::Required;
    if !config.audit.enabled && !auth {
        return Ok(Persistence { store: None, keys: None, audit: None });
    }
    let store = Arc::new(
        Store::open(&config.database).map_err(|e| AppError::Setup { part: "database", message: e.to_string() })?,
    );
    Ok(Persistence {
        keys: auth.then(|| Arc::new(KeyCache::new(store.clone()))),
        audit: config
            .audit
            .enabled
            .then(|| AuditLog::new(&config.audit, &config.pricing, store.clone(), detector.clone())),
        store: Some(store),
    })
}

/// Background work of a running gateway: migrations, the audit writer, key
/// reloads, audit retention and the rate-limit heartbeat. `shutdown` flushes the audit log.
pub struct Background {
    stop: tokio_util::sync::CancellationToken,
    audit: Option<Arc<AuditLog>>,
    store: Option<Arc<Store>>,
    /// This replica's registration in the rate-limit Redis: on shutdown it
    /// leaves the live replicas.
    heartbeats: Option<tokio::task::JoinHandle<()>>,
}

/// Starts the background work. Waits for the migrations first (for at most
/// the database connect timeout) so keys are loaded before traffic arrives; a
/// database that is down or slow does not stop start-up.
pub async fn start(state: &AppState, config: &Config) -> Background {
    let stop = tokio_util::sync::CancellationToken::new();
    if let Some(store) = &state.store {
        // The migration runs in its own task and is never cut off: cut off
        // between PostgreSQL's `pg_advisory_lock` and its unlock, it would
        // leave the lock with a pooled connection, and every later migration
        // (the audit writer's first) would wait until the pool reaps that
        // connection, 10 to 20 minutes later. Later callers wait for this one.
        let migration = tokio::spawn({
            let store = store.clone();
            async move { store.migrate().await }
        });
        match tokio::time::timeout(config.database.connect_timeout, migration).await {
            Ok(Ok(Ok(()))) => {
                tracing::info!(database = %store.shown_url(), dialect = store.dialect(), "database ready")
            }
            Ok(Ok(Err(e))) => {
                tracing::error!(database = %store.shown_url(), error = %e, "database unavailable at start-up; audit records wait in the journal")
            }
            Ok(Err(e)) => tracing::error!(error = %e, "the start-up migration task failed"),
            Err(_) => {
                tracing::error!(database = %store.shown_url(), "database did not answer at start-up; audit records wait in the journal while the migration goes on")
            }
        }
        if let Some(keys) = &state.keys {
            if let Err(e) = keys.refresh().await {
                tracing::error!(error = %e, "API keys not loaded; requests get 503 until the database answers");
            }
            tokio::spawn(reload_keys(keys.clone(), store.clone(), config.auth.refresh_interval, stop.clone()));
        }
        if config.audit.enabled && config.audit.retention_days > 0 {
            tokio::spawn(retention(store.clone(), config.audit.retention_days, stop.clone()));
        }
    }
    if let Some(audit) = &state.audit {
        audit.start().await;
    }
    let heartbeats = state.gateway.limits().membership().map(|(shared, every)| {
        let stop = stop.clone();
        tokio::spawn(async move { shared.heartbeats(every, stop).await })
    });
    Background { stop, audit: state.audit.clone(), store: state.store.clone(), heartbeats }
}

/// How long shutdown waits for the database pool to close.
const STORE_CLOSE: std::time::Duration = std::time::Duration::from_secs(1);
/// How long shutdown waits for the replica to leave the rate-limit Redis.
const REDIS_LEAVE: std::time::Duration = std::time::Duration::from_secs(1);

impl Background {
    pub async fn shutdown(self) {
        self.stop.cancel();
        // The replica leaves the rate-limit Redis while the audit log flushes.
        let leave = async {
            if let Some(mut heartbeats) = self.heartbeats {
                // A Redis that does not answer: the member expires by itself.
                if tokio::time::timeout(REDIS_LEAVE, &mut heartbeats).await.is_err() {
                    heartbeats.abort();
                }
            }
        };
        let flush = async {
            if let Some(audit) = &self.audit {
                audit.shutdown().await;
            }
        };
        tokio::join!(leave, flush);
        if let Some(store) = &self.store {
            // Closing waits for every connection to come back to the pool,
            // and one the audit writer gave up on at its deadline may wait
            // on a hung database: the process is ending, so not for long.
            if tokio::time::timeout(STORE_CLOSE, store.close()).await.is_err() {
                tracing::warn!(
                    "the database pool did not close within 1 s; its connections are dropped with the process"
                );
            }
        }
    }
}

async fn reload_keys(
    keys: Arc<KeyCache>,
    store: Arc<Store>,
    every: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        if store.migrate().await.is_ok()
            && let Err(e) = keys.refresh().await
        {
            tracing::warn!(error = %e, "API key reload failed; the last loaded keys stay in use");
        }
    }
}

/// Deletes audit rows older than the retention period, hourly.
async fn retention(store: Arc<Store>, days: u32, stop: tokio_util::sync::CancellationToken) {
    const HOUR: std::time::Duration = std::time::Duration::from_secs(3600);
    loop {
        if store.is_migrated() {
            match store.prune_audit(crate::store::retention_cutoff(days)).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(rows = n, days, "audit retention: old rows deleted"),
                Err(e) => tracing::warn!(error = %e, "audit retention failed; retried in an hour"),
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(if store.is_migrated() { HOUR } else { HOUR / 60 }) => {}
        }
    }
}

fn conversation_store(config: &Config) -> Result<Arc<dyn ConversationStore>, AppError> {
    let c = &config.conversations;
    let bounds = Bounds::from(c);
    Ok(match &c.redis_url {
        Some(url) => Arc::new(
            RedisStore::new(url, bounds, c.ttl)
                .map_err(|e| AppError::Setup { part: "conversations", message: e.to_string() })?,
        ),
        None => Arc::new(MemoryStore::new(bounds, c.ttl, c.max_memory_bytes)),
    })
}

/// The router for `state`.
pub fn router(state: AppState) -> axum::Router {
    api::router(state)
}

/// The API port's routes beside an operations port: all but `/metrics`.
pub fn api_router(state: AppState) -> axum::Router {
    api::api_router(state)
}

/// The operations port's routes: `/metrics` and the health routes.
pub fn ops_router(state: AppState) -> axum::Router {
    api::ops_router(state)
}

/// Points every provider at the simulated upstream on `mock` and gives each a
/// placeholder key, so `--demo` exercises the real adapters and wire formats.
/// API keys are off in the demo.
pub fn demo_overrides(config: &mut Config, secrets: &mut Secrets, mock: std::net::SocketAddr) {
    config.auth.mode = AuthMode::Disabled;
    for (id, p) in config.providers.iter_mut() {
        p.enabled = true;
        p.base_url = match p.kind {
            ProviderKind::Gemini => format!("http://{mock}/{id}/v1beta"),
            ProviderKind::OpenaiCompatible => format!("http://{mock}/{id}/v1"),
        };
        secrets.insert(id, "demo-key-not-secret");
    }
}
