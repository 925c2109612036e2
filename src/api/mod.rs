//! The only axum-facing code: routes, wire DTOs, extractors, `ApiError`, middleware.

pub mod agents;
pub mod audit;
pub mod auth;
pub mod chat;
pub mod error;
pub mod extract;
pub mod health;
pub mod middleware;
pub mod providers;
pub mod security;
pub mod state;
pub mod usage;
pub mod wire;

use axum::Router;
use axum::routing::{get, post};

pub use state::AppState;

/// The route table. Middleware, outermost first:
/// 1. `request_context`: request id, span, metrics, access log, error bodies.
///    It wraps everything, including the 404/405 fallbacks, so every response
///    carries `x-request-id` and every error our JSON body.
/// 2. `security`: hardening headers on every response; CORS (preflights are
///    answered here, before auth).
/// 3. On the routes that call providers: `audit` (one record per request,
///    refusals included), then `authenticate`, then per-client admission.
/// 4. On the other API routes: `authenticate` (and `admin_only` for `/v1/usage`).
///    `/health*` and `/metrics` are open.
///
/// Body limits are enforced by `ApiJson` (413 with our body), not a layer.
pub fn router(state: AppState) -> Router {
    use axum::middleware::{from_fn, from_fn_with_state};
    let authenticate = || from_fn_with_state(state.clone(), auth::authenticate);
    // Layers added later wrap the earlier ones: audit is outermost.
    let provider_routes = Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/agents/{agent}", post(agents::ask_agent))
        .route("/v1/chat", post(agents::chat))
        .route_layer(from_fn_with_state(state.clone(), middleware::client_limits))
        .route_layer(authenticate())
        .route_layer(from_fn_with_state(state.clone(), audit::audit));
    let api_routes = Router::new()
        .route("/v1/agents", get(agents::list))
        .route("/v1/agents/{agent}", get(agents::show))
        .route("/providers", get(providers::list))
        .route("/providers/{name}", get(providers::show))
        .route("/v1/models", get(health::models))
        .route_layer(authenticate());
    let admin_routes = Router::new()
        .route("/v1/usage", get(usage::usage))
        .route_layer(from_fn(auth::admin_only))
        .route_layer(authenticate());
    Router::new()
        .merge(provider_routes)
        .merge(api_routes)
        .merge(admin_routes)
        .route("/health", get(health::health))
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/metrics", get(health::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(from_fn_with_state(state.cors.clone(), security::security))
        .layer(axum::middleware::from_fn(middleware::request_context))
        .with_state(state)
}

async fn not_found() -> error::ApiError {
    error::ApiError::NotFound("no such route".into())
}

async fn method_not_allowed() -> error::ApiError {
    error::ApiError::MethodNotAllowed
}
