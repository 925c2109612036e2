//! The Squad contract: `POST /v1/agents/{agent}`, `POST /v1/chat`, and the
//! roster (`GET /v1/agents`, `GET /v1/agents/{agent}`). Malformed JSON is 400;
//! a body that parses but breaks a rule is 422 naming the field.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::audit::{Served, note_served};
use super::chat::PROVIDER_HEADER;
use super::error::{ApiError, AttemptView, ErrorBody};
use super::extract::{ApiJson, Caller};
use super::middleware::ServedBy;
use super::openapi::{KeyedRouteErrors, ProviderRouteErrors};
use super::security::refuse_blocked_pii;
use super::state::AppState;
use crate::agents::{Agent, ChainLink};
use crate::service::{Answer, Ask};

pub const MAX_PROMPT_CHARS: usize = 10_000;

/// Unknown fields are ignored (clients send extra context freely).
#[derive(Debug, Deserialize, ToSchema)]
pub struct AgentBody {
    /// Required (or `task`); at most 10 000 characters.
    #[serde(default)]
    #[schema(example = "Sketch a rate limiter", max_length = 10000)]
    pub prompt: Option<String>,
    /// Accepted alias of `prompt`.
    #[serde(default)]
    pub task: Option<String>,
    /// Continues a conversation; 1-128 characters of `A-Z a-z 0-9 - _ .`.
    #[serde(default)]
    #[schema(pattern = r"^[A-Za-z0-9._-]{1,128}$")]
    pub conversation_id: Option<String>,
    /// 1-128 characters of `A-Z a-z 0-9 - _ .`.
    #[serde(default)]
    #[schema(pattern = r"^[A-Za-z0-9._-]{1,128}$")]
    pub user_id: Option<String>,
    /// Kept in the audit record; must be an object.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100000)]
    pub max_tokens: Option<i64>,
    #[serde(default)]
    #[schema(minimum = 0, maximum = 2)]
    pub temperature: Option<f64>,
    /// Only on `POST /v1/chat`, where it is required.
    #[serde(default)]
    #[schema(example = "architect")]
    pub agent: Option<String>,
}

fn unprocessable(message: impl Into<String>, param: &str) -> ApiError {
    ApiError::Unprocessable { message: message.into(), param: Some(param.to_owned()) }
}

/// Type errors become 422 with the field's path (the JSON itself was fine).
/// Public (like `into_ask`) for the `request` fuzz target.
pub fn decode(value: Value) -> Result<AgentBody, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        unprocessable(format!("invalid field `{path}`: {}", e.inner()), &path)
    })
}

impl AgentBody {
    pub fn into_ask(self, agent: String) -> Result<Ask, ApiError> {
        let prompt = self.prompt.or(self.task).ok_or_else(|| unprocessable("`prompt` is required", "prompt"))?;
        let chars = prompt.chars().count();
        if chars == 0 || prompt.trim().is_empty() {
            return Err(unprocessable("`prompt` must not be empty", "prompt"));
        }
        if chars > MAX_PROMPT_CHARS {
            return Err(unprocessable(format!("`prompt` is limited to {MAX_PROMPT_CHARS} characters"), "prompt"));
        }
        if let Some(id) = &self.conversation_id
            && !crate::conversations::is_valid_id(id)
        {
            return Err(unprocessable(
                "`conversation_id` must be 1-128 characters of A-Z a-z 0-9 - _ .",
                "conversation_id",
            ));
        }
        if let Some(user) = &self.user_id
            && !crate::conversations::is_valid_id(user)
        {
            return Err(unprocessable("`user_id` must be 1-128 characters of A-Z a-z 0-9 - _ .", "user_id"));
        }
        if self.metadata.as_ref().is_some_and(|m| !m.is_object()) {
            return Err(unprocessable("`metadata` must be an object", "metadata"));
        }
        let max_tokens = match self.max_tokens {
            Some(n) if (1..=100_000).contains(&n) => Some(n as u32),
            Some(_) => return Err(unprocessable("`max_tokens` must be between 1 and 100000", "max_tokens")),
            None => None,
        };
        if let Some(t) = self.temperature
            && !(0.0..=2.0).contains(&t)
        {
            return Err(unprocessable("`temperature` must be between 0 and 2", "temperature"));
        }
        Ok(Ask {
            agent,
            prompt,
            conversation_id: self.conversation_id,
            user_id: self.user_id,
            owner: None,
            metadata: self.metadata,
            max_tokens,
            temperature: self.temperature,
        })
    }
}

#[derive(Serialize, ToSchema)]
struct AnswerMetadata {
    request_id: String,
    latency_ms: u64,
    tokens_input: u64,
    tokens_output: u64,
    provider_chain: Vec<AttemptView>,
    fallback_used: bool,
    turns: u64,
    rate_limit_wait_ms: u64,
}

/// An agent's answer.
#[derive(Serialize, ToSchema)]
pub struct AnswerBody {
    response: String,
    provider: String,
    model: String,
    agent: String,
    agent_name: String,
    conversation_id: String,
    metadata: AnswerMetadata,
}

fn answer_response(a: Answer, request_id: String) -> Response {
    let provider = a.provider.clone();
    let body = AnswerBody {
        response: a.response,
        provider: a.provider,
        model: a.model,
        agent: a.agent.id.clone(),
        agent_name: a.agent.name.clone(),
        conversation_id: a.conversation_id,
        metadata: AnswerMetadata {
            request_id,
            latency_ms: a.latency_ms,
            tokens_input: a.usage.prompt_tokens,
            tokens_output: a.usage.completion_tokens,
            provider_chain: a.attempts.iter().map(AttemptView::from).collect(),
            fallback_used: a.fallback_used,
            turns: a.turns,
            rate_limit_wait_ms: a.rate_limit_wait_ms,
        },
    };
    let mut response = Json(body).into_response();
    if let Ok(v) = HeaderValue::from_str(&provider) {
        response.headers_mut().insert(PROVIDER_HEADER.clone(), v);
    }
    response.extensions_mut().insert(ServedBy(provider));
    response
}

async fn run(state: &AppState, caller: Caller, agent: String, body: AgentBody) -> Result<Response, ApiError> {
    state.gateway.agent(&agent)?;
    let draft = &caller.audit;
    if let Some(d) = draft {
        let metadata = body.metadata.as_ref().map(Value::to_string);
        let (user, conversation) = (body.user_id.clone(), body.conversation_id.clone());
        d.update(|r| {
            r.agent = Some(agent.clone());
            r.user_id = user;
            r.conversation_id = conversation;
            r.metadata = metadata;
        });
        if let Some(p) = body.prompt.as_ref().or(body.task.as_ref()) {
            d.prompt(p.clone());
        }
    }
    caller.authorize(Some(&agent))?;
    let mut ask = body.into_ask(agent)?;
    ask.owner = caller.principal.as_ref().and_then(|p| p.0.as_ref()).map(|key| key.id.clone());
    refuse_blocked_pii(state, Some(&ask.agent), [ask.prompt.as_str()])?;
    let ctx = caller.context(state, false);
    let request_id = caller.request_id;
    let answer = state.gateway.ask(ask, &ctx).await?;
    if let Some(d) = draft {
        let served = Served {
            provider: &answer.provider,
            model: &answer.model,
            attempts: &answer.attempts,
            usage: Some(answer.usage),
            text: Some(&answer.response),
        };
        note_served(d, served);
        let conversation = answer.conversation_id.clone();
        d.update(|r| r.conversation_id = Some(conversation));
    }
    Ok(answer_response(answer, request_id))
}

#[utoipa::path(post, path = "/v1/agents/{agent}", tag = "agents", security(("bearer" = []), ("api_key" = [])),
    params(("agent" = String, Path, description = "Agent id", example = "architect")),
    request_body = AgentBody,
    responses(
        (status = 200, description = "The agent's answer", body = AnswerBody,
         headers(("x-squad-provider" = String, description = "The provider that answered"))),
        ProviderRouteErrors,
    ))]
pub async fn ask_agent(
    State(state): State<AppState>,
    caller: Caller,
    Path(agent): Path<String>,
    ApiJson(value): ApiJson<Value>,
) -> Result<Response, ApiError> {
    // An unknown agent is a 404 even when the body is also wrong.
    state.gateway.agent(&agent)?;
    run(&state, caller, agent, decode(value)?).await
}

#[utoipa::path(post, path = "/v1/chat", tag = "agents", security(("bearer" = []), ("api_key" = [])),
    request_body(content = AgentBody, description = "`agent` is required here"),
    responses(
        (status = 200, description = "The agent's answer", body = AnswerBody,
         headers(("x-squad-provider" = String, description = "The provider that answered"))),
        ProviderRouteErrors,
    ))]
pub async fn chat(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(value): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let mut body = decode(value)?;
    let agent = body.agent.take().ok_or_else(|| unprocessable("`agent` is required", "agent"))?;
    run(&state, caller, agent, body).await
}

#[derive(Serialize, ToSchema)]
pub struct AgentSummary {
    id: String,
    name: String,
    title: String,
    icon: String,
    description: String,
    /// The fallback chain, first choice first.
    providers: Vec<ChainLink>,
}

#[derive(Serialize, ToSchema)]
pub struct AgentList {
    count: usize,
    agents: Vec<AgentSummary>,
}

/// One agent with its defaults.
#[derive(Serialize, ToSchema)]
pub struct AgentDetail {
    #[serde(flatten)]
    summary: AgentSummary,
    default_temperature: f64,
    default_max_tokens: u32,
}

impl From<&Agent> for AgentSummary {
    fn from(a: &Agent) -> Self {
        Self {
            id: a.id.clone(),
            name: a.name.clone(),
            title: a.title.clone(),
            icon: a.icon.clone(),
            description: a.description.clone(),
            providers: a.chain.clone(),
        }
    }
}

#[utoipa::path(get, path = "/v1/agents", tag = "agents", security(("bearer" = []), ("api_key" = [])), responses(
    (status = 200, description = "The roster", body = AgentList),
    KeyedRouteErrors,
))]
pub async fn list(State(state): State<AppState>) -> Json<AgentList> {
    let agents: Vec<AgentSummary> = state.gateway.roster().all().map(|a| AgentSummary::from(a.as_ref())).collect();
    Json(AgentList { count: agents.len(), agents })
}

#[utoipa::path(get, path = "/v1/agents/{agent}", tag = "agents", security(("bearer" = []), ("api_key" = [])),
    params(("agent" = String, Path, description = "Agent id", example = "architect")),
    responses(
        (status = 200, description = "The agent", body = AgentDetail),
        KeyedRouteErrors,
        (status = 404, description = "Unknown agent (`agent_not_found`, with `valid_agents`)", body = ErrorBody),
    ))]
pub async fn show(State(state): State<AppState>, Path(agent): Path<String>) -> Result<Json<AgentDetail>, ApiError> {
    let agent = state.gateway.agent(&agent)?;
    Ok(Json(AgentDetail {
        summary: AgentSummary::from(agent.as_ref()),
        default_temperature: agent.temperature,
        default_max_tokens: agent.max_tokens,
    }))
}
