//! Shared state handed to every handler.

use std::sync::Arc;
use std::time::Instant;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::service::{Gateway, Lifecycle};
use crate::store::{AuditLog, KeyCache, Store};

/// Cloned by every middleware layer of every request: one `Arc`, so a clone
/// is one atomic increment rather than one per field.
#[derive(Clone)]
pub struct AppState(Arc<Parts>);

impl AppState {
    pub fn new(parts: Parts) -> Self {
        Self(Arc::new(parts))
    }
}

impl std::ops::Deref for AppState {
    type Target = Parts;

    fn deref(&self) -> &Parts {
        &self.0
    }
}

pub struct Parts {
    pub gateway: Arc<Gateway>,
    pub lifecycle: Arc<Lifecycle>,
    pub metrics: PrometheusHandle,
    pub started: Instant,
    /// Start time as Unix seconds, for `created` on `/v1/models`.
    pub started_unix: u64,
    pub max_body_bytes: usize,
    pub body_read_timeout: std::time::Duration,
    /// Deepest JSON nesting accepted in a request body.
    pub max_json_depth: usize,
    /// The database, when one is configured (audit, keys, usage).
    pub store: Option<Arc<Store>>,
    /// API keys; `None` when `auth.mode` is `disabled`.
    pub keys: Option<Arc<KeyCache>>,
    /// The audit log; `None` when `audit.enabled` is false.
    pub audit: Option<Arc<AuditLog>>,
    pub cors: Arc<super::security::Cors>,
    pub pii: Arc<crate::security::PiiPolicy>,
}
