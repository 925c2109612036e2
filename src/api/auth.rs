//! API-key authentication. Clients send `Authorization: Bearer <key>` or
//! `x-api-key: <key>`. 401 for a missing, malformed, unknown, expired or
//! revoked key; 403 for a valid key used beyond its scope (an agent it may not
//! use, or a non-admin key on an admin route). `/health*` and `/metrics` are
//! not behind this layer.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::state::AppState;
use crate::store::{ApiKey, Draft, KeyCheck};
use crate::telemetry::metrics;

pub static X_API_KEY: header::HeaderName = header::HeaderName::from_static("x-api-key");

/// Who is calling: the key, or `None` when `auth.mode` is `disabled`.
#[derive(Debug, Clone)]
pub struct Principal(pub Option<Arc<ApiKey>>);

impl Principal {
    /// 403 unless this caller may use `agent` (`None`: a provider model).
    pub fn authorize(&self, agent: Option<&str>) -> Result<(), ApiError> {
        match &self.0 {
            Some(key) if !key.allows(agent) => {
                metrics::auth_decision("forbidden");
                Err(ApiError::Forbidden {
                    code: "agent_not_allowed",
                    message: match agent {
                        Some(a) => format!("this API key may not use the agent `{a}`"),
                        None => "this API key may only use its agents, not provider models directly".into(),
                    },
                })
            }
            _ => Ok(()),
        }
    }
}

/// The presented key, if any; an empty or non-ASCII header counts as present
/// but malformed.
fn presented(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let v = v.to_str().unwrap_or("");
        let token = v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")).unwrap_or("");
        return Some(token.trim());
    }
    headers.get(&X_API_KEY).map(|v| v.to_str().unwrap_or("").trim())
}

fn unauthorized(code: &'static str, message: &'static str) -> Response {
    ApiError::Unauthorized { code, message }.into_response()
}

/// Checks the key; on success the request carries a `Principal`.
pub async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let Some(keys) = &state.keys else {
        req.extensions_mut().insert(Principal(None));
        return next.run(req).await;
    };
    let Some(presented) = presented(req.headers()) else {
        metrics::auth_decision("missing");
        return unauthorized("missing_api_key", "an API key is required: send `Authorization: Bearer <key>`");
    };
    let key = match keys.check(presented).await {
        KeyCheck::Valid(key) => key,
        KeyCheck::Invalid => {
            metrics::auth_decision("invalid");
            return unauthorized("invalid_api_key", "the API key is not valid");
        }
        KeyCheck::Expired => {
            metrics::auth_decision("expired");
            return unauthorized("expired_api_key", "the API key has expired");
        }
        KeyCheck::Revoked => {
            metrics::auth_decision("revoked");
            return unauthorized("revoked_api_key", "the API key has been revoked");
        }
        KeyCheck::Unavailable => {
            metrics::auth_decision("unavailable");
            return ApiError::AuthUnavailable.into_response();
        }
    };
    metrics::auth_decision("ok");
    if let Some(draft) = req.extensions().get::<Draft>() {
        draft.update(|r| r.key_id = Some(key.id.clone()));
    }
    req.extensions_mut().insert(Principal(Some(key)));
    next.run(req).await
}

/// Inside `authenticate`: admin keys only.
pub async fn admin_only(req: Request, next: Next) -> Response {
    match req.extensions().get::<Principal>() {
        Some(Principal(Some(key))) if !key.admin => {
            metrics::auth_decision("forbidden");
            ApiError::Forbidden { code: "admin_required", message: "this route needs an admin API key".into() }
                .into_response()
        }
        _ => next.run(req).await,
    }
}
