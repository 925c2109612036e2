//! Shared state handed to every handler.

use std::sync::Arc;
use std::time::Instant;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::service::{Gateway, Lifecycle};
use crate::store::{AuditLog, KeyCache, Store};

#[derive(Clone)]
pub struct AppState {
    pub gateway: Arc<Gateway>,
    pub lifecycle: Arc<Lifecycle>,
    pub metrics: PrometheusHandle,
    pub started: Instant,
    /// Start time as Unix seconds, for `created` on `/v1/models`.
    pub started_unix: u64,
    pub max_body_bytes: usize,
    pub body_read_timeout: std::time::Duration,
    /// The database, when one is configured (audit, keys, usage).
    pub store: Option<Arc<Store>>,
    /// API keys; `None` when `auth.mode` is `disabled`.
    pub keys: Option<Arc<KeyCache>>,
    /// The audit log; `None` when `audit.enabled` is false.
    pub audit: Option<Arc<AuditLog>>,
    pub cors: Arc<super::security::Cors>,
    pub pii: Arc<crate::security::PiiPolicy>,
}
