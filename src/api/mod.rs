//! The only axum-facing code: routes, wire DTOs, extractors, `ApiError`, middleware.

pub mod agents;
pub mod audit;
pub mod auth;
pub mod chat;
pub mod error;
pub mod extract;
pub mod health;
pub mod middleware;
pub mod openapi;
pub mod providers;
pub mod security;
pub mod state;
pub mod usage;
pub mod wire;

use axum::Router;
use axum::handler::Handler;
use axum::routing::{MethodRouter, get, post};

pub use state::AppState;

/// Who may call a route, which decides the middleware it gets (see `router`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Calls providers: audit, then `authenticate`, then per-client admission.
    Provider,
    /// `authenticate`.
    Api,
    /// `authenticate`, then `admin_only`.
    Admin,
    /// No key needed.
    Open,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Get,
    Post,
}

impl Verb {
    /// As OpenAPI spells it (`get`, `post`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::Post => "post",
        }
    }
}

/// One row of the route table.
pub struct Route {
    pub access: Access,
    pub verb: Verb,
    pub path: &'static str,
    handler: MethodRouter<AppState>,
}

fn route<H, T>(access: Access, verb: Verb, path: &'static str, handler: H) -> Route
where
    H: Handler<T, AppState>,
    T: 'static,
{
    let handler = match verb {
        Verb::Get => get(handler),
        Verb::Post => post(handler),
    };
    Route { access, verb, path, handler }
}

/// The route table: the only place routes are declared. `router` builds the
/// app from it, and tests/openapi.rs checks that every row is documented in
/// `/openapi.json` (each handler carries its `#[utoipa::path]`).
pub fn routes() -> Vec<Route> {
    use Access::*;
    use Verb::*;
    vec![
        route(Provider, Post, "/v1/chat/completions", chat::chat_completions),
        route(Provider, Post, "/v1/agents/{agent}", agents::ask_agent),
        route(Provider, Post, "/v1/chat", agents::chat),
        route(Api, Get, "/v1/agents", agents::list),
        route(Api, Get, "/v1/agents/{agent}", agents::show),
        route(Api, Get, "/providers", providers::list),
        route(Api, Get, "/providers/{name}", providers::show),
        route(Api, Get, "/v1/models", health::models),
        route(Admin, Get, "/v1/usage", usage::usage),
        route(Open, Get, "/health", health::health),
        route(Open, Get, "/health/live", health::live),
        route(Open, Get, "/health/ready", health::ready),
        route(Open, Get, METRICS, health::metrics),
        route(Open, Get, "/openapi.json", openapi::openapi_json),
    ]
}

/// Builds the app from the route table. Middleware, outermost first:
/// 1. `request_context`: request id, span, metrics, access log, error bodies.
///    It wraps everything, including the 404/405 fallbacks, so every response
///    carries `x-request-id` and every error our JSON body.
/// 2. `security`: hardening headers on every response; CORS (preflights are
///    answered here, before auth).
/// 3. On the routes that call providers: `audit` (one record per request,
///    refusals included), then `authenticate`, then per-client admission.
/// 4. On the other API routes: `authenticate` (and `admin_only` for `/v1/usage`).
///    `/health*`, `/metrics` and `/openapi.json` are open.
///
/// Body limits are enforced by `ApiJson` (413 with our body), not a layer.
pub fn router(state: AppState) -> Router {
    build(state, |_| true)
}

/// The API port's routes when `server.ops_port` is set: every route but
/// `/metrics`, which only the operations port serves.
pub fn api_router(state: AppState) -> Router {
    build(state, |r| r.path != METRICS)
}

/// The operations port (`server.ops_port`): `/metrics` and the health
/// routes, open, with the same request context and headers.
pub fn ops_router(state: AppState) -> Router {
    let ops = routes()
        .into_iter()
        .filter(|r| r.access == Access::Open && (r.path == METRICS || r.path.starts_with("/health")))
        .fold(Router::new(), |router, r| router.route(r.path, r.handler));
    outer(ops, state)
}

const METRICS: &str = "/metrics";

fn build(state: AppState, keep: impl Fn(&Route) -> bool) -> Router {
    use axum::middleware::{from_fn, from_fn_with_state};
    let table: Vec<Route> = routes().into_iter().filter(|r| keep(r)).collect();
    let group = |access: Access| {
        table
            .iter()
            .filter(|r| r.access == access)
            .fold(Router::new(), |router, r| router.route(r.path, r.handler.clone()))
    };
    let authenticate = || from_fn_with_state(state.clone(), auth::authenticate);
    // Layers added later wrap the earlier ones: audit is outermost.
    let provider_routes = group(Access::Provider)
        .route_layer(from_fn_with_state(state.clone(), middleware::client_limits))
        .route_layer(authenticate())
        .route_layer(from_fn_with_state(state.clone(), audit::audit));
    let api_routes = group(Access::Api).route_layer(authenticate());
    let admin_routes = group(Access::Admin).route_layer(from_fn(auth::admin_only)).route_layer(authenticate());
    let app = Router::new().merge(provider_routes).merge(api_routes).merge(admin_routes).merge(group(Access::Open));
    outer(app, state)
}

/// What every port's routes get: our 404 and 405 bodies, the security
/// headers, and the request context outermost.
fn outer(app: Router<AppState>, state: AppState) -> Router {
    use axum::middleware::from_fn_with_state;
    app.fallback(not_found)
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
