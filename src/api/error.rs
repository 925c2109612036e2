//! `ApiError`: the only error that becomes an HTTP response, in one exhaustive
//! match. The body is `{"error":{"type","message","code","request_id"}}`; the
//! request id is filled in by the request-id middleware, which also rewrites
//! any error response not produced here (axum's own 404/405 and rejections).

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::providers::{ErrorKind, ProviderError};
use crate::service::ServiceError;
use crate::service::registry::RouteError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<String>,
    },
    #[error("request body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("request body larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("unsupported content type; send application/json")]
    UnsupportedMediaType,
    #[error("{0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("the model `{0}` does not exist")]
    UnknownModel(String),
    #[error("{0}")]
    ProviderUnavailable(String),
    #[error("server is not ready")]
    NotReady,
    #[error("provider {provider} is rate limited")]
    UpstreamRateLimited {
        provider: String,
        retry_after: Option<Duration>,
    },
    #[error("provider {provider} did not answer in time")]
    UpstreamTimeout { provider: String },
    #[error("provider {provider} rejected the request (status {status}{})", code.as_ref().map(|c| format!(", {c}")).unwrap_or_default())]
    UpstreamRejected {
        provider: String,
        status: u16,
        code: Option<String>,
    },
    #[error("provider {provider} failed: {}{}", kind.as_str(), status.map(|s| format!(" (status {s})")).unwrap_or_default())]
    UpstreamFailed {
        provider: String,
        kind: ErrorKind,
        status: Option<u16>,
    },
    #[error("internal error")]
    Internal,
}

/// The error object, serialised once the request id is known.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorObject {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub message: String,
    pub code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
    pub request_id: String,
}

#[derive(Serialize)]
pub struct ErrorBody<'a> {
    pub error: &'a ErrorObject,
}

/// Response extension carrying an error body still waiting for its request id.
#[derive(Debug, Clone)]
pub struct PendingError(pub ErrorObject);

impl ApiError {
    pub fn invalid(message: impl Into<String>, param: &str) -> Self {
        Self::InvalidRequest {
            message: message.into(),
            param: Some(param.to_owned()),
        }
    }

    /// Status, error type and machine code.
    pub fn parts(&self) -> (StatusCode, &'static str, String) {
        use StatusCode as S;
        let (status, kind, code) = match self {
            Self::InvalidRequest { .. } => {
                (S::BAD_REQUEST, "invalid_request_error", "invalid_request")
            }
            Self::MalformedJson(_) => (S::BAD_REQUEST, "invalid_request_error", "malformed_json"),
            Self::PayloadTooLarge { .. } => (
                S::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                "payload_too_large",
            ),
            Self::UnsupportedMediaType => (
                S::UNSUPPORTED_MEDIA_TYPE,
                "invalid_request_error",
                "unsupported_media_type",
            ),
            Self::NotFound(_) => (S::NOT_FOUND, "not_found_error", "not_found"),
            Self::MethodNotAllowed => (
                S::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                "method_not_allowed",
            ),
            Self::UnknownModel(_) => (S::NOT_FOUND, "not_found_error", "model_not_found"),
            Self::ProviderUnavailable(_) => (
                S::SERVICE_UNAVAILABLE,
                "unavailable_error",
                "provider_unavailable",
            ),
            Self::NotReady => (S::SERVICE_UNAVAILABLE, "unavailable_error", "not_ready"),
            Self::UpstreamRateLimited { .. } => {
                (S::TOO_MANY_REQUESTS, "rate_limit_error", "providers")
            }
            Self::UpstreamTimeout { .. } => {
                (S::GATEWAY_TIMEOUT, "upstream_error", "upstream_timeout")
            }
            Self::UpstreamRejected { status, .. } => {
                let status = StatusCode::from_u16(*status)
                    .ok()
                    .filter(|s| s.is_client_error())
                    .unwrap_or(S::BAD_REQUEST);
                (status, "invalid_request_error", "upstream_rejected")
            }
            Self::UpstreamFailed { .. } => (S::BAD_GATEWAY, "upstream_error", "upstream_failed"),
            Self::Internal => (S::INTERNAL_SERVER_ERROR, "internal_error", "internal"),
        };
        (status, kind, code.to_owned())
    }

    pub fn object(&self) -> ErrorObject {
        let (_, kind, code) = self.parts();
        let param = match self {
            Self::InvalidRequest { param, .. } => param.clone(),
            Self::UnknownModel(_) => Some("model".to_owned()),
            _ => None,
        };
        ErrorObject {
            kind,
            message: self.to_string(),
            code,
            param,
            request_id: String::new(),
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Route(RouteError::UnknownModel(m)) => Self::UnknownModel(m),
            ServiceError::Route(
                e @ (RouteError::Unconfigured { .. } | RouteError::Disabled(_)),
            ) => Self::ProviderUnavailable(e.to_string()),
            ServiceError::Provider { provider, error } => match error {
                ProviderError::RateLimited { retry_after, .. } => Self::UpstreamRateLimited {
                    provider,
                    retry_after,
                },
                ProviderError::Timeout { .. } => Self::UpstreamTimeout { provider },
                ProviderError::Rejected { status, code } => Self::UpstreamRejected {
                    provider,
                    status,
                    code,
                },
                other => Self::UpstreamFailed {
                    provider,
                    kind: other.kind(),
                    status: other.status(),
                },
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, _, _) = self.parts();
        let mut response = status.into_response();
        if let Self::UpstreamRateLimited { retry_after, .. } = &self {
            // Whole seconds, rounded up; at least 1 so clients do not spin.
            let secs = retry_after
                .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
                .unwrap_or(1)
                .max(1);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
            .extensions_mut()
            .insert(PendingError(self.object()));
        response
    }
}

/// Renders the final JSON body of an error response.
pub fn render(mut object: ErrorObject, request_id: &str) -> Vec<u8> {
    object.request_id = request_id.to_owned();
    serde_json::to_vec(&ErrorBody { error: &object }).unwrap_or_else(|_| b"{\"error\":{}}".to_vec())
}
