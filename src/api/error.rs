//! `ApiError`: the only error that becomes an HTTP response, in one exhaustive
//! match. The body is `{"error":{"type","message","code","request_id"}}` (plus
//! `param`, `attempts` or `valid_agents` where they apply); the request id is
//! filled in by the request-id middleware, which also rewrites any error
//! response not produced here (axum's own 404/405 and rejections).

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::middleware::ServedBy;
use crate::limits::Refusal;
use crate::service::registry::RouteError;
use crate::service::{Attempt, Failure, Outcome, ServiceError};

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    InvalidRequest { message: String, param: Option<String> },
    /// Validation failures on the Squad routes (`/v1/agents`, `/v1/chat`).
    #[error("{message}")]
    Unprocessable { message: String, param: Option<String> },
    #[error("request body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("request body larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("unsupported content type; send application/json")]
    UnsupportedMediaType,
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    #[error("{0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("the model {} does not exist", quoted(.0, 128))]
    UnknownModel(String),
    #[error("unknown agent {}; valid agents: {}", quoted(id, 64), valid.join(", "))]
    UnknownAgent { id: String, valid: Vec<String> },
    #[error("{0}")]
    ProviderUnavailable(String),
    #[error("conversation store unavailable")]
    StoreUnavailable,
    #[error("server is not ready")]
    NotReady,
    #[error("every provider is rate limited: {}", summary(attempts))]
    RateLimited { retry_after: Duration, attempts: Vec<Attempt> },
    #[error("the request deadline passed: {}", summary(attempts))]
    Timeout { attempts: Vec<Attempt> },
    #[error("provider {provider} rejected the request (status {status}{})", code.as_ref().map(|c| format!(", {c}")).unwrap_or_default())]
    UpstreamRejected { provider: String, status: u16, code: Option<String>, attempts: Vec<Attempt> },
    #[error("every provider failed: {}", summary(attempts))]
    AllFailed { attempts: Vec<Attempt> },
    #[error("too many requests from this client; retry in {}s", secs(retry_after))]
    ClientLimited { retry_after: Duration },
    #[error("the gateway is at its concurrency limit; retry in {}s", secs(retry_after))]
    ConcurrencyLimited { retry_after: Duration },
    /// No key, or one that is malformed, unknown, expired or revoked.
    #[error("{message}")]
    Unauthorized { code: &'static str, message: &'static str },
    /// A valid key used beyond its scope.
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
    #[error("the request contains personal data of these types, which this gateway does not forward: {}", kinds.join(", "))]
    PiiBlocked { kinds: Vec<&'static str> },
    #[error("API keys cannot be checked: the key store has not answered yet")]
    AuthUnavailable,
    #[error("the audit log cannot be written; requests are refused (audit.on_failure: reject)")]
    AuditUnavailable,
    #[error("the database is unavailable: {0}")]
    DatabaseUnavailable(String),
    #[error("internal error")]
    Internal,
}

/// Client input quoted back in an error message, but only when it is short,
/// printable ASCII without `/` sequences that climb (`..`): control
/// characters, path tricks and pasted text are never reflected.
pub fn quoted(input: &str, max_len: usize) -> String {
    let plain =
        (1..=max_len).contains(&input.len()) && input.bytes().all(|b| b.is_ascii_graphic()) && !input.contains("..");
    if plain { format!("`{input}`") } else { "(not shown: not a valid name)".to_owned() }
}

/// Whole seconds, rounded up; at least 1 so clients do not spin.
fn secs(d: &Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

/// `groq: upstream_5xx (status 503); gemini: unconfigured`
fn summary(attempts: &[Attempt]) -> String {
    let parts: Vec<String> = attempts
        .iter()
        .map(|a| match &a.outcome {
            Outcome::Failed { status: Some(s), .. } => format!("{}: {} (status {s})", a.provider, a.outcome.label()),
            _ => format!("{}: {}", a.provider, a.outcome.label()),
        })
        .collect();
    if parts.is_empty() { "no provider in the chain".into() } else { parts.join("; ") }
}

/// One attempt as clients see it in error bodies and `provider_chain`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AttemptView {
    pub provider: String,
    pub model: String,
    /// `ok`, `skipped_…`, or the error kind (`timeout`, `upstream_5xx`, …).
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub latency_ms: u64,
}

impl AttemptView {
    /// The outcome, status and latency of `a`, as a view shows them.
    pub fn borrowed(a: &Attempt) -> (&'static str, Option<u16>, u64) {
        let status = match &a.outcome {
            Outcome::Failed { status, .. } => *status,
            _ => None,
        };
        (a.outcome.label(), status, a.latency.as_millis() as u64)
    }
}

impl From<&Attempt> for AttemptView {
    fn from(a: &Attempt) -> Self {
        let (outcome, status, latency_ms) = Self::borrowed(a);
        Self { provider: a.provider.clone(), model: a.model.clone(), outcome, status, latency_ms }
    }
}

/// The error object, serialised once the request id is known.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ErrorObject {
    /// `invalid_request_error`, `authentication_error`, `permission_error`,
    /// `not_found_error`, `rate_limit_error`, `upstream_error`,
    /// `unavailable_error` or `internal_error`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub message: String,
    /// Machine-readable reason (`malformed_json`, `agent_not_found`, …).
    pub code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<Vec<AttemptView>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid_agents: Option<Vec<String>>,
    pub request_id: String,
}

/// Every error response: `{"error": {...}}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody<'a> {
    pub error: &'a ErrorObject,
}

/// Response extension carrying an error body still waiting for its request id.
#[derive(Debug, Clone)]
pub struct PendingError(pub ErrorObject);

impl ApiError {
    pub fn invalid(message: impl Into<String>, param: &str) -> Self {
        Self::InvalidRequest { message: message.into(), param: Some(param.to_owned()) }
    }

    /// Status, error type and machine code.
    pub fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        use StatusCode as S;
        match self {
            Self::InvalidRequest { .. } => (S::BAD_REQUEST, "invalid_request_error", "invalid_request"),
            Self::Unprocessable { .. } => (S::UNPROCESSABLE_ENTITY, "invalid_request_error", "validation_error"),
            Self::MalformedJson(_) => (S::BAD_REQUEST, "invalid_request_error", "malformed_json"),
            Self::PayloadTooLarge { .. } => (S::PAYLOAD_TOO_LARGE, "invalid_request_error", "payload_too_large"),
            Self::UnsupportedMediaType => {
                (S::UNSUPPORTED_MEDIA_TYPE, "invalid_request_error", "unsupported_media_type")
            }
            Self::BodyTimeout => (S::REQUEST_TIMEOUT, "invalid_request_error", "body_timeout"),
            Self::NotFound(_) => (S::NOT_FOUND, "not_found_error", "not_found"),
            Self::MethodNotAllowed => (S::METHOD_NOT_ALLOWED, "invalid_request_error", "method_not_allowed"),
            Self::UnknownModel(_) => (S::NOT_FOUND, "not_found_error", "model_not_found"),
            Self::UnknownAgent { .. } => (S::NOT_FOUND, "not_found_error", "agent_not_found"),
            Self::ProviderUnavailable(_) => (S::SERVICE_UNAVAILABLE, "unavailable_error", "provider_unavailable"),
            Self::StoreUnavailable => (S::SERVICE_UNAVAILABLE, "unavailable_error", "conversation_store_unavailable"),
            Self::NotReady => (S::SERVICE_UNAVAILABLE, "unavailable_error", "not_ready"),
            Self::RateLimited { .. } => (S::TOO_MANY_REQUESTS, "rate_limit_error", "providers"),
            Self::Timeout { .. } => (S::GATEWAY_TIMEOUT, "upstream_error", "deadline_exceeded"),
            Self::UpstreamRejected { status, .. } => {
                let status =
                    StatusCode::from_u16(*status).ok().filter(|s| s.is_client_error()).unwrap_or(S::BAD_REQUEST);
                (status, "invalid_request_error", "upstream_rejected")
            }
            Self::AllFailed { .. } => (S::BAD_GATEWAY, "upstream_error", "upstream_failed"),
            Self::ClientLimited { .. } => (S::TOO_MANY_REQUESTS, "rate_limit_error", "client"),
            Self::ConcurrencyLimited { .. } => (S::TOO_MANY_REQUESTS, "rate_limit_error", "concurrency"),
            Self::Unauthorized { code, .. } => (S::UNAUTHORIZED, "authentication_error", code),
            Self::Forbidden { code, .. } => (S::FORBIDDEN, "permission_error", code),
            Self::PiiBlocked { .. } => (S::BAD_REQUEST, "invalid_request_error", "pii_blocked"),
            Self::AuthUnavailable => (S::SERVICE_UNAVAILABLE, "unavailable_error", "auth_unavailable"),
            Self::AuditUnavailable => (S::SERVICE_UNAVAILABLE, "unavailable_error", "audit_unavailable"),
            Self::DatabaseUnavailable(_) => (S::SERVICE_UNAVAILABLE, "unavailable_error", "database_unavailable"),
            Self::Internal => (S::INTERNAL_SERVER_ERROR, "internal_error", "internal"),
        }
    }

    fn attempts(&self) -> Option<&[Attempt]> {
        match self {
            Self::RateLimited { attempts, .. }
            | Self::Timeout { attempts }
            | Self::UpstreamRejected { attempts, .. }
            | Self::AllFailed { attempts } => Some(attempts),
            _ => None,
        }
    }

    /// The last provider actually called, for the access log.
    pub fn provider(&self) -> Option<&str> {
        let attempts = self.attempts()?;
        attempts.iter().rev().find(|a| !matches!(a.outcome, Outcome::Skipped(_))).map(|a| a.provider.as_str())
    }

    pub fn object(&self) -> ErrorObject {
        let (_, kind, code) = self.parts();
        let param = match self {
            Self::InvalidRequest { param, .. } | Self::Unprocessable { param, .. } => param.clone(),
            Self::UnknownModel(_) => Some("model".to_owned()),
            _ => None,
        };
        let valid_agents = match self {
            Self::UnknownAgent { valid, .. } => Some(valid.clone()),
            _ => None,
        };
        ErrorObject {
            kind,
            message: self.to_string(),
            code: code.to_owned(),
            param,
            attempts: self.attempts().map(|a| a.iter().map(AttemptView::from).collect()),
            valid_agents,
            request_id: String::new(),
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Route(RouteError::UnknownModel(m)) => Self::UnknownModel(m),
            ServiceError::Route(e @ (RouteError::Unconfigured { .. } | RouteError::Disabled(_))) => {
                Self::ProviderUnavailable(e.to_string())
            }
            ServiceError::UnknownAgent { id, valid } => Self::UnknownAgent { id, valid },
            ServiceError::Store(_) => Self::StoreUnavailable,
            ServiceError::Limited(Refusal::Client { retry_after }) => Self::ClientLimited { retry_after },
            ServiceError::Limited(Refusal::Concurrency { retry_after }) => Self::ConcurrencyLimited { retry_after },
            ServiceError::Failed(failure) => match failure {
                Failure::Rejected { provider, error, attempts } => {
                    let status = error.status().unwrap_or(400);
                    let code = match error {
                        crate::providers::ProviderError::Rejected { code, .. } => code,
                        _ => None,
                    };
                    Self::UpstreamRejected { provider, status, code, attempts }
                }
                Failure::AllRateLimited { retry_after, attempts } => Self::RateLimited { retry_after, attempts },
                Failure::Deadline { attempts } => Self::Timeout { attempts },
                // Every provider failed (timeouts included): 502 with the list.
                // 504 is kept for the request deadline itself.
                Failure::AllFailed { attempts } => Self::AllFailed { attempts },
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, _, _) = self.parts();
        let mut response = status.into_response();
        if let Self::RateLimited { retry_after, .. }
        | Self::ClientLimited { retry_after }
        | Self::ConcurrencyLimited { retry_after } = &self
        {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs(retry_after)));
        }
        if let Self::Unauthorized { .. } = &self {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(provider) = self.provider() {
            response.extensions_mut().insert(ServedBy(provider.to_owned()));
        }
        response.extensions_mut().insert(PendingError(self.object()));
        response
    }
}

/// Renders the final JSON body of an error response.
pub fn render(mut object: ErrorObject, request_id: &str) -> Vec<u8> {
    object.request_id = request_id.to_owned();
    serde_json::to_vec(&ErrorBody { error: &object }).unwrap_or_else(|_| b"{\"error\":{}}".to_vec())
}
