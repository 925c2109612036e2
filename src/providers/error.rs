//! The typed upstream failure and the one decision that hangs on it.

use std::time::Duration;

use thiserror::Error;

#[derive(Debug, Clone, Error, PartialEq)]
pub enum ProviderError {
    #[error("upstream timed out ({phase})")]
    Timeout { phase: &'static str },
    #[error("could not reach the upstream: {0}")]
    Connect(String),
    #[error("upstream rate limit (retry after {retry_after:?})")]
    RateLimited { status: u16, retry_after: Option<Duration> },
    #[error("upstream server error (status {status})")]
    Upstream { status: u16 },
    #[error("upstream rejected our credentials (status {status})")]
    Auth { status: u16 },
    /// A 4xx caused by the request itself. `code` is the upstream's short
    /// machine code when it looks like one (`context_length_exceeded`), never its
    /// free-text message.
    #[error("upstream rejected the request (status {status})")]
    Rejected { status: u16, code: Option<String> },
    /// 404: the model (or endpoint) does not exist at this provider, e.g. a
    /// retired model. Another provider in the chain has its own model.
    #[error("upstream has no such model or endpoint (status 404)")]
    NotFound { code: Option<String> },
    #[error("could not decode the upstream response: {0}")]
    Decode(String),
    /// The stream broke after it started: connection cut, error event, or EOF
    /// without a terminator.
    #[error("upstream stream interrupted: {0}")]
    Interrupted(String),
}

/// Bounded label values for metrics, logs and error bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Timeout,
    Connect,
    RateLimited,
    Upstream,
    Auth,
    Rejected,
    NotFound,
    Decode,
    Interrupted,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "timeout",
            ErrorKind::Connect => "connect",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Upstream => "upstream_5xx",
            ErrorKind::Auth => "auth",
            ErrorKind::Rejected => "rejected",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Decode => "decode",
            ErrorKind::Interrupted => "interrupted",
        }
    }
}

/// What a caller walking a provider chain should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Transient: retry this provider (with backoff), then move on.
    Retry,
    /// This provider cannot serve us now (bad key); try the next one, no retry.
    NextProvider,
    /// The request itself is at fault; another provider would refuse it too.
    ReturnToClient,
}

impl ProviderError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Timeout { .. } => ErrorKind::Timeout,
            Self::Connect(_) => ErrorKind::Connect,
            Self::RateLimited { .. } => ErrorKind::RateLimited,
            Self::Upstream { .. } => ErrorKind::Upstream,
            Self::Auth { .. } => ErrorKind::Auth,
            Self::Rejected { .. } => ErrorKind::Rejected,
            Self::NotFound { .. } => ErrorKind::NotFound,
            Self::Decode(_) => ErrorKind::Decode,
            Self::Interrupted(_) => ErrorKind::Interrupted,
        }
    }

    pub fn disposition(&self) -> Disposition {
        match self {
            Self::Timeout { .. } | Self::Connect(_) | Self::RateLimited { .. } | Self::Upstream { .. } => {
                Disposition::Retry
            }
            Self::Interrupted(_) => Disposition::Retry,
            Self::Auth { .. } | Self::NotFound { .. } | Self::Decode(_) => Disposition::NextProvider,
            Self::Rejected { .. } => Disposition::ReturnToClient,
        }
    }

    /// Whether this outcome says something about the provider's health (for
    /// its circuit breaker): rate limits, request errors and unknown models do not.
    pub fn counts_against_provider(&self) -> bool {
        !matches!(self, Self::RateLimited { .. } | Self::Rejected { .. } | Self::NotFound { .. })
    }

    /// The upstream HTTP status, when there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::RateLimited { status, .. }
            | Self::Upstream { status }
            | Self::Auth { status }
            | Self::Rejected { status, .. } => Some(*status),
            Self::NotFound { .. } => Some(404),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispositions_follow_the_fallback_rules() {
        assert_eq!(ProviderError::Timeout { phase: "first_byte" }.disposition(), Disposition::Retry);
        assert_eq!(ProviderError::Upstream { status: 503 }.disposition(), Disposition::Retry);
        assert_eq!(ProviderError::RateLimited { status: 429, retry_after: None }.disposition(), Disposition::Retry);
        assert_eq!(ProviderError::Auth { status: 401 }.disposition(), Disposition::NextProvider);
        assert_eq!(ProviderError::Rejected { status: 400, code: None }.disposition(), Disposition::ReturnToClient);
    }
}
