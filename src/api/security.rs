//! Response hardening and CORS, for every route (errors and 404s included).
//!
//! Security headers: `nosniff`, `X-Frame-Options: DENY`, `Referrer-Policy:
//! no-referrer`, a `Content-Security-Policy` that allows nothing (the API
//! serves no documents), and `Cache-Control: no-store` (responses carry
//! per-user data). CORS: only origins in `cors.allowed_origins` get CORS
//! headers; a preflight from one of them is answered here, before auth
//! (browsers send preflights without credentials), and a preflight from any
//! other origin gets 403 with no CORS headers.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::state::AppState;
use crate::config::CorsConfig;

/// 400 `pii_blocked` when `texts` carry a type listed in `pii.block`.
pub fn refuse_blocked_pii<'a>(
    state: &AppState,
    agent: Option<&str>,
    texts: impl IntoIterator<Item = &'a str>,
) -> Result<(), ApiError> {
    let blocked = state.pii.blocked(agent, texts);
    if blocked.is_empty() {
        Ok(())
    } else {
        Err(ApiError::PiiBlocked { kinds: blocked.iter().map(|k| k.as_str()).collect() })
    }
}

const CSP: &str = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";
const ALLOW_METHODS: &str = "GET, POST, OPTIONS";
const ALLOW_HEADERS: &str = "authorization, content-type, x-api-key, x-request-id";
const EXPOSE_HEADERS: &str =
    "x-request-id, x-squad-provider, retry-after, x-ratelimit-limit, x-ratelimit-remaining, x-ratelimit-reset";

/// The CORS policy, resolved once from config.
#[derive(Debug, Clone)]
pub struct Cors {
    any: bool,
    origins: Vec<HeaderValue>,
    credentials: bool,
    max_age: HeaderValue,
}

impl Cors {
    pub fn new(config: &CorsConfig) -> Self {
        Self {
            any: config.allowed_origins.iter().any(|o| o == "*"),
            origins: config.allowed_origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect(),
            credentials: config.allow_credentials,
            max_age: HeaderValue::from(config.max_age.as_secs()),
        }
    }

    /// The `Access-Control-Allow-Origin` value for this request's origin, if allowed.
    fn allow(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        if self.origins.iter().any(|o| o == origin) {
            Some(origin.clone())
        } else if self.any {
            Some(HeaderValue::from_static("*"))
        } else {
            None
        }
    }

    fn decorate(&self, headers: &mut HeaderMap, allowed: HeaderValue) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allowed);
        if self.credentials {
            headers.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
    }
}

fn harden(headers: &mut HeaderMap) {
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // The answer depends on the origin: caches must not mix them up.
    headers.append(header::VARY, HeaderValue::from_static("origin"));
}

pub async fn security(State(cors): State<Arc<Cors>>, req: Request, next: Next) -> Response {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let preflight =
        req.method() == Method::OPTIONS && req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let allowed = origin.as_ref().and_then(|o| cors.allow(o));
    let mut response = if preflight {
        match &allowed {
            Some(_) => {
                let mut r = StatusCode::NO_CONTENT.into_response();
                let h = r.headers_mut();
                h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static(ALLOW_METHODS));
                h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static(ALLOW_HEADERS));
                h.insert(header::ACCESS_CONTROL_MAX_AGE, cors.max_age.clone());
                r
            }
            None => ApiError::Forbidden {
                code: "cors_origin_not_allowed",
                message: "this origin is not allowed to call the API from a browser".into(),
            }
            .into_response(),
        }
    } else {
        next.run(req).await
    };
    let headers = response.headers_mut();
    harden(headers);
    if let Some(allowed) = allowed {
        cors.decorate(headers, allowed);
        if !preflight {
            headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(EXPOSE_HEADERS));
        }
    }
    response
}
