//! Typed configuration: built-in defaults → YAML file → environment, validated once.
//! Depends only on `domain` and the plain config types of `resilience`. Secrets never live here: a provider names
//! the environment variable that holds its key, and `app` reads it at start-up.

mod load;
mod validate;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use load::{ConfigSource, load};
pub use validate::ConfigIssue;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub server: ServerConfig,
    pub log: LogConfig,
    /// Keyed by provider id (`groq`, `gemini`, or a user-defined id such as `ollama`).
    pub providers: BTreeMap<String, ProviderConfig>,
    /// `alias → provider/model`, e.g. `fast: groq/openai/gpt-oss-20b`.
    pub aliases: BTreeMap<String, String>,
    pub agents: AgentsConfig,
    pub conversations: ConversationsConfig,
    pub resilience: ResilienceConfig,
    pub limits: LimitsConfig,
    pub database: DatabaseConfig,
    pub audit: AuditConfig,
    pub auth: AuthConfig,
    /// Prices in USD per million tokens by `provider/model` (or `provider/*`),
    /// for cost estimates in audit rows and `/v1/usage`.
    pub pricing: BTreeMap<String, Price>,
    pub cors: CorsConfig,
    pub pii: PiiConfig,
}

/// PII handling beyond logs and audit rows (which are always redacted).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PiiConfig {
    /// Requests whose messages carry any of these types are refused with 400
    /// naming the types (never the values): `EMAIL`, `PHONE`, `CPF`, `CNPJ`,
    /// `CARD`, `IBAN`, `IPV4`, `IPV6`, `SSN`, `SECRET`, or a pattern name.
    pub block: Vec<String>,
    /// Outbound masking: PII in prompts is replaced with numbered placeholders
    /// (`[EMAIL_1]`) before a request leaves for a provider, and the values
    /// are put back in the answer (streams included).
    pub mask: bool,
    /// The types masked; empty means every type (built-in and patterns).
    pub mask_types: Vec<String>,
    /// User-defined detectors: a name (`EMPLOYEE_ID`, the token `[EMPLOYEE_ID]`)
    /// and a regular expression (linear-time `regex` syntax).
    pub patterns: Vec<PiiPattern>,
    /// Per-agent overrides of `block`, `mask` and `mask_types`, by agent id.
    pub agents: BTreeMap<String, PiiAgentConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PiiPattern {
    pub name: String,
    pub regex: String,
}

/// An agent's PII rules; an unset field inherits the global one.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PiiAgentConfig {
    pub block: Option<Vec<String>>,
    pub mask: Option<bool>,
    pub mask_types: Option<Vec<String>>,
}

/// Cross-origin access for browsers. Only listed origins get CORS headers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct CorsConfig {
    /// Exact origins (`https://app.example.com`), or `*` for any origin
    /// (not allowed together with `allow_credentials`).
    pub allowed_origins: Vec<String>,
    /// Send `Access-Control-Allow-Credentials: true` (cookies, HTTP auth).
    pub allow_credentials: bool,
    /// How long browsers may cache a preflight answer.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
}

impl Default for CorsConfig {
    fn default() -> Self {
        Self { allowed_origins: Vec::new(), allow_credentials: false, max_age: Duration::from_secs(600) }
    }
}

/// The store for audit rows, API keys and usage.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct DatabaseConfig {
    /// `sqlite://squad.db` (a file, created if missing; WAL mode) or
    /// `postgres://user@host/db`. `DATABASE_URL` overrides it.
    pub url: String,
    /// Pool sizes; defaults: PostgreSQL 5 / 20, SQLite 1 / 4.
    pub pool_min: Option<u32>,
    pub pool_max: Option<u32>,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://squad.db".into(),
            pool_min: None,
            pool_max: None,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl DatabaseConfig {
    pub fn is_postgres(&self) -> bool {
        self.url.starts_with("postgres://") || self.url.starts_with("postgresql://")
    }
}

/// What an audit row keeps of the prompt and the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditContent {
    /// Passed through the PII redactor: `[EMAIL]`, `[CARD]`, … in place of the values.
    Redacted,
    /// SHA-256 of the text: proves what was sent without keeping it.
    Hash,
    /// Nothing.
    None,
}

/// What happens when an audit record cannot even reach the local journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditFailurePolicy {
    /// Serve the request; log an error and count it.
    Allow,
    /// Answer 503: no request is served without its record.
    Reject,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AuditConfig {
    pub enabled: bool,
    pub content: AuditContent,
    /// The append-only journal every record reaches before its response completes.
    pub journal_dir: std::path::PathBuf,
    pub on_failure: AuditFailurePolicy,
    /// Rows older than this are deleted by a background job (0: keep forever).
    pub retention_days: u32,
    /// Most rows per database write (`bench/audit_batch.sh` measures it).
    pub batch_size: usize,
    /// Longest a record waits in memory before its batch is written.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Records held in memory for the writer; beyond it they wait in the journal.
    pub queue_capacity: usize,
    /// A journal segment is closed at this size.
    pub segment_bytes: u64,
    /// How often journaled records are retried while the database is away.
    #[serde(with = "humantime_serde")]
    pub replay_interval: Duration,
    /// How long the writer may go on writing and replaying after the server
    /// has stopped; what is not in the database by then stays in the journal
    /// for the next start (0: all of it).
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            content: AuditContent::Redacted,
            journal_dir: "squad-journal".into(),
            on_failure: AuditFailurePolicy::Allow,
            retention_days: 30,
            batch_size: 1000,
            flush_interval: Duration::from_millis(200),
            queue_capacity: 10_000,
            segment_bytes: 16 * 1024 * 1024,
            replay_interval: Duration::from_secs(2),
            shutdown_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Every API route needs a key (`/health*` and `/metrics` stay open).
    Required,
    /// No keys: anyone who can reach the port can use it.
    Disabled,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// How often the in-memory key cache is reloaded (revocations by another
    /// process or replica take effect within this).
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self { mode: AuthMode::Required, refresh_interval: Duration::from_secs(5) }
    }
}

/// USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Price {
    pub input: f64,
    pub output: f64,
}

impl Price {
    pub fn cost(&self, tokens_in: u64, tokens_out: u64) -> f64 {
        (tokens_in as f64 * self.input + tokens_out as f64 * self.output) / 1_000_000.0
    }
}

/// List prices of the built-in models (USD per million tokens, input / output)
/// as published in late 2026; estimates: set your contracted prices in `pricing`.
fn builtin_prices() -> BTreeMap<String, Price> {
    [
        ("groq/openai/gpt-oss-120b", 0.15, 0.60),
        ("groq/openai/gpt-oss-20b", 0.075, 0.30),
        ("groq/qwen/qwen3.6-27b", 0.29, 0.59),
        ("cerebras/gpt-oss-120b", 0.35, 0.75),
        ("cerebras/zai-glm-4.7", 2.25, 2.75),
        ("gemini/gemini-3.5-flash", 0.30, 2.50),
        ("gemini/gemini-3.5-flash-lite", 0.10, 0.40),
        ("gemini/gemini-3.1-pro-preview", 2.00, 12.00),
        ("openrouter/openai/gpt-5.2", 1.25, 10.00),
        ("openrouter/anthropic/claude-sonnet-4.5", 3.00, 15.00),
        ("deepseek/deepseek-flash", 0.28, 0.42),
        ("deepseek/deepseek-v4-pro", 0.55, 2.19),
    ]
    .into_iter()
    .map(|(m, input, output)| (m.to_owned(), Price { input, output }))
    .collect()
}

/// `pricing` arranged by provider, then model, so that a price is looked up
/// for every audited request without building a `provider/model` key. Hashed
/// with foldhash, not SipHash: up to three lookups a request (provider,
/// model, `*`) cost 640 instructions with SipHash, 190 with foldhash. The
/// table is built from the config and lookups never insert, so there is no
/// hash flooding to resist.
#[derive(Debug, Clone, Default)]
pub struct PriceTable(FastMap<FastMap<Price>>);

type FastMap<V> = std::collections::HashMap<String, V, foldhash::fast::RandomState>;

impl PriceTable {
    pub fn new(pricing: &BTreeMap<String, Price>) -> Self {
        let mut table = Self::default();
        for (key, price) in pricing {
            // Provider ids have no '/'; model names may (OpenRouter's).
            if let Some((provider, model)) = key.split_once('/') {
                table.0.entry(provider.to_owned()).or_default().insert(model.to_owned(), *price);
            }
        }
        table
    }

    /// The price for `provider/model`: exact, then `provider/*`.
    pub fn get(&self, provider: &str, model: &str) -> Option<&Price> {
        let models = self.0.get(provider)?;
        models.get(model).or_else(|| models.get("*"))
    }
}

/// A request and token budget: `rpm` requests a minute (`burst` at once) and
/// `tpm` tokens a minute. `None` (or 0) means no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RateLimit {
    pub rpm: Option<u64>,
    /// Requests allowed at once; defaults to `rpm` (a minute's worth).
    pub burst: Option<u64>,
    pub tpm: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ProviderLimits {
    pub rpm: Option<u64>,
    /// Requests allowed at once; defaults to `rpm` (a minute's worth).
    pub burst: Option<u64>,
    pub tpm: Option<u64>,
    /// Per-model budgets that replace the provider's for that model.
    pub models: BTreeMap<String, RateLimit>,
}

impl ProviderLimits {
    pub fn rate(&self) -> RateLimit {
        RateLimit { rpm: self.rpm, burst: self.burst, tpm: self.tpm }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct LimitsConfig {
    pub enabled: bool,
    pub concurrency: ConcurrencyConfig,
    /// Per client (API key, or client address without auth).
    pub clients: ClientLimits,
    pub throttle: ThrottleConfig,
    pub redis: LimitsRedisConfig,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            concurrency: ConcurrencyConfig::default(),
            clients: ClientLimits::default(),
            throttle: ThrottleConfig::default(),
            redis: LimitsRedisConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(default)]
pub struct ConcurrencyConfig {
    /// Requests with an upstream call in flight at once (0: unlimited).
    pub max_in_flight: usize,
    /// Requests allowed to wait for a slot; beyond it: 429 at once.
    pub max_queue: usize,
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
}

impl Default for ConcurrencyConfig {
    fn default() -> Self {
        Self { max_in_flight: 512, max_queue: 1024, max_wait: Duration::from_secs(5) }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ClientLimits {
    pub rpm: Option<u64>,
    pub burst: Option<u64>,
    pub tpm: Option<u64>,
    /// Concurrent requests per client (0 or absent: unlimited).
    pub concurrent: Option<u64>,
}

impl ClientLimits {
    pub fn rate(&self) -> RateLimit {
        RateLimit { rpm: self.rpm, burst: self.burst, tpm: self.tpm }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(default)]
pub struct ThrottleConfig {
    /// Lower a provider's effective rate when it answers 429 anyway.
    pub enabled: bool,
    /// Factor applied on a 429 burst (at most once per `cooldown`).
    pub decrease: f64,
    /// Added back to the factor per successful call.
    pub recover_step: f64,
    pub min_factor: f64,
    #[serde(with = "humantime_serde")]
    pub cooldown: Duration,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self { enabled: true, decrease: 0.5, recover_step: 0.02, min_factor: 0.1, cooldown: Duration::from_secs(2) }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RedisFailurePolicy {
    /// Fall back to in-process limits at a 1/`replicas` share (and warn).
    #[default]
    LocalShare,
    /// Refuse requests (429) while Redis is unreachable.
    FailClosed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct LimitsRedisConfig {
    /// `redis://…` to share budgets between replicas; also `REDIS_URL`.
    pub url: Option<String>,
    pub on_failure: RedisFailurePolicy,
    /// Replicas sharing the budget: the local share while Redis is down is
    /// 1/replicas, or 1/(the live replicas last seen in Redis) when more.
    pub replicas: u32,
    /// Each replica registers in Redis every `heartbeat` and counts the
    /// replicas registered on the same prefix, so a fleet larger than
    /// `replicas` still stays within the budgets while Redis is down.
    pub discover_replicas: bool,
    /// How often a replica registers; one silent for three heartbeats is
    /// no longer counted.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// Key prefix, so several deployments can share one Redis.
    pub prefix: String,
}

impl Default for LimitsRedisConfig {
    fn default() -> Self {
        Self {
            url: None,
            on_failure: RedisFailurePolicy::LocalShare,
            replicas: 3,
            discover_replicas: true,
            heartbeat: Duration::from_secs(5),
            prefix: "squad".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentsConfig {
    /// Directory of extra agent files (`*.md`); a file with a built-in id overrides it.
    pub dir: Option<std::path::PathBuf>,
    /// Language agents reply in.
    pub language: String,
    /// How agents address the user; none by default.
    pub user_name: Option<String>,
}

impl Default for AgentsConfig {
    fn default() -> Self {
        Self { dir: None, language: "English".into(), user_name: None }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ConversationsConfig {
    /// User turns kept per conversation (oldest dropped first).
    pub max_turns: usize,
    /// Approximate token budget of the kept history (4 bytes ≈ 1 token).
    pub max_tokens: usize,
    /// A conversation untouched for this long is forgotten.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// In-memory backend: bound on the bytes of all histories together.
    pub max_memory_bytes: usize,
    /// `redis://…` to share conversations between replicas; also `REDIS_URL`.
    pub redis_url: Option<String>,
}

impl Default for ConversationsConfig {
    fn default() -> Self {
        Self {
            max_turns: 20,
            max_tokens: 8000,
            ttl: Duration::from_secs(3600),
            max_memory_bytes: 64 * 1024 * 1024,
            redis_url: None,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ResilienceConfig {
    pub retry: crate::resilience::RetryPolicy,
    pub breaker: crate::resilience::BreakerConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerConfig {
    pub bind: String,
    pub port: u16,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// Overall deadline for one API request, upstream calls included.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Longest a streamed response may run in total (streams also have a
    /// per-chunk idle timeout per provider).
    #[serde(with = "humantime_serde")]
    pub stream_timeout: Duration,
    /// Longest a client may take to send its request body (slow clients get 408).
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Largest accepted request head (request line and headers), in bytes;
    /// beyond it the request is refused with 431.
    pub max_header_bytes: usize,
    /// Longest a client may take to send its request head, counted from the
    /// moment the connection is ready for a request (idle keep-alive
    /// connections included) and covering the TLS handshake; slower clients
    /// are disconnected.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Deepest nesting of arrays and objects accepted in a JSON body.
    pub max_json_depth: usize,
    /// TLS termination; absent: plain HTTP.
    pub tls: TlsConfig,
    /// After SIGTERM: how long readiness reports 503 while still serving, so a
    /// load balancer can stop routing here before the listener closes.
    #[serde(with = "humantime_serde")]
    pub drain_delay: Duration,
    /// After the listener closes: how long in-flight requests and streams may run.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Serving threads, each running its share of the connections start to
    /// finish (`crate::runtime`); 0: one per CPU this process may use.
    pub workers: usize,
    /// A second, plain-HTTP port for `/metrics` and the health routes, for
    /// scrapers and probes inside the network: with it, `/metrics` leaves
    /// the API port (the health routes stay on both). None: all on `port`.
    pub ops_port: Option<u16>,
    /// The operations port's address; default: `bind`.
    pub ops_bind: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: "0.0.0.0".into(),
            port: 8000,
            max_body_bytes: 8 * 1024 * 1024,
            request_timeout: Duration::from_secs(120),
            stream_timeout: Duration::from_secs(600),
            body_read_timeout: Duration::from_secs(30),
            max_header_bytes: 16 * 1024,
            header_read_timeout: Duration::from_secs(10),
            max_json_depth: 64,
            tls: TlsConfig::default(),
            drain_delay: Duration::ZERO,
            shutdown_grace: Duration::from_secs(30),
            workers: 0,
            ops_port: None,
            ops_bind: None,
        }
    }
}

/// HTTPS on the server's port: both files, or neither for plain HTTP.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert_file: Option<std::path::PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) for the leaf certificate.
    pub key_file: Option<std::path::PathBuf>,
}

impl TlsConfig {
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some() || self.key_file.is_some()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct LogConfig {
    /// A tracing filter: `info`, `debug`, or `squad=debug,info`.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { level: "info".into(), format: LogFormat::Json }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    #[default]
    OpenaiCompatible,
    Gemini,
}

/// Which request field carries the output-token cap for an OpenAI-compatible upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MaxTokensField {
    #[default]
    MaxTokens,
    MaxCompletionTokens,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ProviderConfig {
    pub kind: ProviderKind,
    pub enabled: bool,
    pub base_url: String,
    /// Name of the environment variable holding the key. `None`: the upstream
    /// needs no key (a local Ollama, say).
    pub api_key_env: Option<String>,
    pub default_model: String,
    /// Models advertised on `/v1/models`. Other model ids are still forwarded:
    /// provider catalogues change faster than config files.
    pub models: Vec<String>,
    /// Extra request headers (OpenRouter attribution, a proxy's routing header).
    pub headers: BTreeMap<String, String>,
    pub timeouts: Timeouts,
    pub max_tokens_field: MaxTokensField,
    /// Ask OpenAI-compatible upstreams for a usage chunk at the end of streams.
    pub stream_include_usage: bool,
    /// What Squad lets through to this provider (see `limits`).
    pub limits: ProviderLimits,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        Self {
            kind: ProviderKind::OpenaiCompatible,
            enabled: true,
            base_url: String::new(),
            api_key_env: None,
            default_model: String::new(),
            models: Vec::new(),
            headers: BTreeMap::new(),
            timeouts: Timeouts::default(),
            max_tokens_field: MaxTokensField::MaxTokens,
            stream_include_usage: true,
            limits: ProviderLimits::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(default)]
pub struct Timeouts {
    /// TCP (and TLS) connection establishment.
    #[serde(with = "humantime_serde")]
    pub connect: Duration,
    /// From sending the request to receiving response headers.
    #[serde(with = "humantime_serde")]
    pub first_byte: Duration,
    /// Whole non-streaming call, body included.
    #[serde(with = "humantime_serde")]
    pub total: Duration,
    /// Longest silence between two stream chunks (streams have no total timeout
    /// of their own; the request deadline still applies).
    #[serde(with = "humantime_serde")]
    pub stream_idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            first_byte: Duration::from_secs(30),
            total: Duration::from_secs(90),
            stream_idle: Duration::from_secs(30),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::default(),
            log: LogConfig::default(),
            providers: builtin_providers(),
            aliases: BTreeMap::new(),
            agents: AgentsConfig::default(),
            conversations: ConversationsConfig::default(),
            resilience: ResilienceConfig::default(),
            limits: LimitsConfig::default(),
            database: DatabaseConfig::default(),
            audit: AuditConfig::default(),
            auth: AuthConfig::default(),
            pricing: builtin_prices(),
            cors: CorsConfig::default(),
            pii: PiiConfig::default(),
        }
    }
}

fn builtin(
    kind: ProviderKind,
    base_url: &str,
    key_env: &str,
    models: &[&str],
    max_tokens_field: MaxTokensField,
    rpm: u64,
) -> ProviderConfig {
    ProviderConfig {
        limits: ProviderLimits { rpm: Some(rpm), ..ProviderLimits::default() },
        kind,
        base_url: base_url.into(),
        api_key_env: Some(key_env.into()),
        default_model: models[0].into(),
        models: models.iter().map(|m| (*m).to_owned()).collect(),
        max_tokens_field,
        ..ProviderConfig::default()
    }
}

/// The five hosted providers. Model ids as of late 2026 (see the README).
fn builtin_providers() -> BTreeMap<String, ProviderConfig> {
    use MaxTokensField::{MaxCompletionTokens, MaxTokens};
    use ProviderKind::{Gemini, OpenaiCompatible};
    let mut openrouter = builtin(
        OpenaiCompatible,
        "https://openrouter.ai/api/v1",
        "OPENROUTER_API_KEY",
        &["openrouter/auto", "openai/gpt-5.2", "anthropic/claude-sonnet-4.5"],
        MaxTokens,
        20,
    );
    openrouter.headers.insert("HTTP-Referer".into(), "https://github.com/squad-gateway/squad".into());
    openrouter.headers.insert("X-OpenRouter-Title".into(), "Squad".into());
    BTreeMap::from([
        (
            "groq".to_owned(),
            builtin(
                OpenaiCompatible,
                "https://api.groq.com/openai/v1",
                "GROQ_API_KEY",
                &["openai/gpt-oss-120b", "openai/gpt-oss-20b", "qwen/qwen3.6-27b"],
                MaxCompletionTokens,
                30,
            ),
        ),
        (
            "cerebras".to_owned(),
            builtin(
                OpenaiCompatible,
                "https://api.cerebras.ai/v1",
                "CEREBRAS_API_KEY",
                &["gpt-oss-120b", "zai-glm-4.7"],
                MaxCompletionTokens,
                30,
            ),
        ),
        (
            "gemini".to_owned(),
            builtin(
                Gemini,
                "https://generativelanguage.googleapis.com/v1beta",
                "GEMINI_API_KEY",
                &["gemini-3.5-flash", "gemini-3.5-flash-lite", "gemini-3.1-pro-preview"],
                MaxTokens,
                15,
            ),
        ),
        ("openrouter".to_owned(), openrouter),
        (
            "deepseek".to_owned(),
            builtin(
                OpenaiCompatible,
                "https://api.deepseek.com",
                "DEEPSEEK_API_KEY",
                &["deepseek-flash", "deepseek-v4-pro"],
                MaxTokens,
                60,
            ),
        ),
    ])
}

impl Config {
    /// Every problem in the config, each with its dotted path. Empty means valid.
    pub fn validate(&self) -> Vec<ConfigIssue> {
        validate::validate(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_are_found_exactly_then_by_the_providers_wildcard() {
        let price = |input| Price { input, output: 0.0 };
        let pricing: BTreeMap<String, Price> = [
            ("groq/llama".to_owned(), price(1.0)),
            ("groq/*".to_owned(), price(2.0)),
            ("openrouter/meta/llama-4".to_owned(), price(3.0)),
        ]
        .into();
        let table = PriceTable::new(&pricing);
        assert_eq!(table.get("groq", "llama"), Some(&price(1.0)));
        assert_eq!(table.get("groq", "other"), Some(&price(2.0)));
        assert_eq!(table.get("openrouter", "meta/llama-4"), Some(&price(3.0)), "a model name with a slash");
        assert_eq!(table.get("openrouter", "meta"), None);
        assert_eq!(table.get("cerebras", "llama"), None);
    }
}
