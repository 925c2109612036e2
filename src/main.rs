//! CLI: parse arguments, load config, set up telemetry, build the app, run the
//! server. Nothing else lives here.

#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use squad::app::{self, Secrets};
use squad::config::{self, Config, ConfigSource};
use squad::mock::{Fault, MockOptions};
use squad::server::{self, Drain};
use squad::telemetry;

mod admin;
mod smoke;

#[derive(Parser)]
#[command(name = "squad", version, about = "Squad: one OpenAI-compatible API in front of five LLM providers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// YAML config file (default: ./squad.yaml when present).
        #[arg(long, env = "SQUAD_CONFIG")]
        config: Option<PathBuf>,
        /// Listen port (overrides config and SQUAD_PORT).
        #[arg(long)]
        port: Option<u16>,
        /// Bind address (overrides config and SQUAD_BIND).
        #[arg(long)]
        bind: Option<String>,
        /// Start the simulated upstream in-process and point every provider at it.
        #[arg(long)]
        demo: bool,
    },
    /// Validate the configuration; print every problem with its path.
    CheckConfig {
        #[arg(long, env = "SQUAD_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Run the simulated upstream (OpenAI-compatible and Gemini wire formats).
    MockUpstream {
        #[arg(long, default_value_t = 9000)]
        port: u16,
        #[arg(long, default_value = "127.0.0.1")]
        bind: String,
        /// Delay before each response, e.g. `0ms`, `250ms`, `2s`.
        #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
        latency: Duration,
        /// Streaming pace in tokens per second (0: as fast as possible).
        #[arg(long, default_value_t = 0.0)]
        tokens_per_second: f64,
        /// Fault for every request: 503 (any 4xx/5xx), 429, stall, cut, malformed.
        #[arg(long, value_parser = parse_fault, conflicts_with = "faults")]
        fault: Option<Fault>,
        /// Random faults with their shares, e.g. `500=0.2,429=0.1,stall=0.05`.
        #[arg(long, value_parser = squad::mock::parse_mix)]
        faults: Option<squad::mock::FaultMix>,
        /// Retry-After seconds on simulated 429s.
        #[arg(long, default_value_t = 1)]
        retry_after: u64,
    },
    /// Apply the database migrations and exit.
    Migrate {
        #[arg(long, env = "SQUAD_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Manage API keys (stored as SHA-256 hashes; the key is shown once).
    Keys {
        #[arg(long, env = "SQUAD_CONFIG", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Audit log maintenance.
    Audit {
        #[arg(long, env = "SQUAD_CONFIG", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// A consistent online copy of a SQLite store (PostgreSQL: use pg_dump).
    Backup {
        #[arg(long, env = "SQUAD_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Check a running Squad's health route and exit 0 when it answers 200
    /// (1 otherwise): a container HEALTHCHECK without curl in the image.
    Probe {
        #[arg(long, env = "SQUAD_CONFIG")]
        config: Option<PathBuf>,
        /// Readiness (`/health/ready`: 503 while starting or draining)
        /// instead of liveness (`/health/live`).
        #[arg(long)]
        ready: bool,
        /// The URL to check, instead of the configured port on this host.
        #[arg(long)]
        url: Option<String>,
        /// Longest wait for the answer, e.g. `2s`.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Smoke-test a running Squad (the go-live checklist's): health and
    /// readiness, the database and Redis it reports, providers and agents
    /// listed, each agent and each configured provider answering a short
    /// prompt, security headers, /metrics, and the audit log recording the
    /// smoke's requests. Exit 0 when no check failed, 1 otherwise, 2 for a
    /// bad --url or --ops-url.
    Smoke {
        /// The API's base URL, e.g. `https://squad.example.com`.
        #[arg(long)]
        url: String,
        /// Base URL of the operations port, when /metrics is served there.
        #[arg(long)]
        ops_url: Option<String>,
        /// API key, sent to the API only (an admin key also checks the audit
        /// log through /v1/usage; give the smoke a key of its own).
        #[arg(long, env = "SQUAD_API_KEY", hide_env_values = true)]
        key: Option<String>,
        /// Agents to prompt: `all`, `none` or a comma-separated list of ids.
        #[arg(long, default_value = "all", value_parser = smoke::Selection::parse)]
        agents: smoke::Selection,
        /// Providers to prompt (their default model): `all` configured ones,
        /// `none`, or a list of ids, each of which must be configured.
        #[arg(long, default_value = "all", value_parser = smoke::Selection::parse)]
        providers: smoke::Selection,
        /// Longest wait for each request, e.g. `30s`.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// Longest wait for the smoke's requests to show in the audit log.
        #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
        audit_wait: Duration,
    },
    /// Print the version.
    Version,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key and print it (the only time it is shown).
    Create {
        #[arg(long)]
        name: String,
        /// Agents the key may use (comma-separated); default: every agent and provider model.
        #[arg(long, value_delimiter = ',')]
        agents: Option<Vec<String>>,
        /// Requests per minute for this key (replaces limits.clients.rpm).
        #[arg(long)]
        rpm: Option<u32>,
        /// Tokens per minute for this key (replaces limits.clients.tpm).
        #[arg(long)]
        tpm: Option<u32>,
        /// Expiry: YYYY-MM-DD or an RFC 3339 time.
        #[arg(long)]
        expires: Option<String>,
        /// May use admin routes (`/v1/usage`).
        #[arg(long)]
        admin: bool,
    },
    /// List keys (never the secret).
    List,
    /// Revoke a key by id, or every active key with this name.
    Revoke { id_or_name: String },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Delete rows older than `--before` (default: audit.retention_days ago).
    Prune {
        #[arg(long)]
        before: Option<String>,
    },
    /// Write rows with since <= time < until as JSON lines or CSV.
    Export {
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        /// Only the rows of this request (the `x-request-id` its response
        /// carried), whenever it ran.
        #[arg(long, conflicts_with_all = ["since", "until"])]
        request_id: Option<String>,
        /// Only the rows of this user (`user_id` in the request): a data
        /// subject's records, whenever they were made.
        #[arg(long, conflicts_with_all = ["since", "until", "request_id"])]
        user_id: Option<String>,
        #[command(flatten)]
        whose: Whose,
        #[arg(long, value_enum, default_value = "jsonl")]
        format: ExportFormat,
        /// Output file (default: stdout).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Erase one user's personal data from the audit log (prompt, response,
    /// metadata, client address, conversation id, user id); the rows stay for
    /// usage and cost. Without --yes, only says how many rows it would change.
    Erase {
        #[arg(long)]
        user_id: String,
        #[command(flatten)]
        whose: Whose,
        #[arg(long)]
        yes: bool,
    },
}

/// Whose user id `--user-id` is. With keys on (`auth.mode: required`) one of
/// the two is required: each key's clients choose their own user ids, so the
/// same id under two keys is two people.
#[derive(clap::Args)]
struct Whose {
    /// The API key (id, as `squad keys list` shows it) whose clients sent the user id.
    #[arg(long, requires = "user_id")]
    key_id: Option<String>,
    /// The user id under every key (and under none).
    #[arg(long, conflicts_with = "key_id", requires = "user_id")]
    any_key: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExportFormat {
    Jsonl,
    Csv,
}

/// glibc's allocator showed up at ~13% of CPU under load; mimalloc is faster
/// for the many small, short-lived allocations of request handling.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn parse_fault(s: &str) -> Result<Fault, String> {
    Fault::parse(s).ok_or_else(|| format!("unknown fault `{s}` (try 503, 429, stall, cut, malformed)"))
}

fn env_pairs() -> Vec<(String, String)> {
    std::env::vars().collect()
}

fn load_config(path: Option<&std::path::Path>) -> Result<(Config, ConfigSource), ExitCode> {
    config::load(path, &env_pairs()).map_err(|issues| {
        eprintln!("invalid configuration ({} problem{}):", issues.len(), if issues.len() == 1 { "" } else { "s" });
        for issue in &issues {
            eprintln!("  - {issue}");
        }
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("squad {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::CheckConfig { config } => check_config(config),
        Command::Migrate { config } => runtime().block_on(admin::migrate(config)),
        Command::Keys { config, command } => runtime().block_on(admin::keys(config, command)),
        Command::Audit { config, command } => runtime().block_on(admin::audit(config, command)),
        Command::Probe { config, ready, url, timeout } => runtime().block_on(probe(config, ready, url, timeout)),
        Command::Smoke { url, ops_url, key, agents, providers, timeout, audit_wait } => {
            let key = key.map(secrecy::SecretString::from);
            let options = smoke::Options { url, ops_url, key, agents, providers, timeout, audit_wait };
            runtime().block_on(smoke::run(options))
        }
        Command::Backup { config, out } => runtime().block_on(admin::backup(config, out)),
        Command::Serve { config, port, bind, demo } => runtime().block_on(serve(config, port, bind, demo)),
        Command::MockUpstream { port, bind, latency, tokens_per_second, fault, faults, retry_after } => {
            let faults = faults.map(|m| m.0).unwrap_or_else(|| fault.map(|f| vec![(f, 1.0)]).unwrap_or_default());
            let options = MockOptions { latency, tokens_per_second, faults, retry_after_secs: retry_after };
            runtime().block_on(mock_upstream(&bind, port, options))
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    #[expect(clippy::expect_used, reason = "start-up: without a runtime there is nothing to run")]
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime")
}

fn check_config(path: Option<PathBuf>) -> ExitCode {
    let (config, source) = match load_config(path.as_deref()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let secrets = Secrets::from_env(&config, |k| std::env::var(k).ok());
    println!("configuration is valid");
    match &source.file {
        Some(f) => println!("  file: {}", f.display()),
        None => println!("  file: none (built-in defaults)"),
    }
    if !source.env_overrides.is_empty() {
        println!("  environment overrides: {}", source.env_overrides.join(", "));
    }
    let (roster, agent_issues) = squad::agents::Roster::load(config.agents.dir.as_deref());
    println!("  agents: {} ({})", roster.len(), roster.ids().join(", "));
    for issue in &agent_issues {
        println!("  agent file skipped: {}: {}", issue.path, issue.reason);
    }
    match app::registry(&config, &secrets) {
        Ok(registry) => {
            for entry in registry.entries() {
                println!("  provider {:<12} {:<13} default model {}", entry.id, entry.status(), entry.default_model);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("  {e}");
            ExitCode::from(2)
        }
    }
}

async fn serve(path: Option<PathBuf>, port: Option<u16>, bind: Option<String>, demo: bool) -> ExitCode {
    let (mut config, source) = match load_config(path.as_deref()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Some(port) = port {
        config.server.port = port;
    }
    if let Some(bind) = bind {
        config.server.bind = bind;
    }
    telemetry::init_logging(&config.log);
    let mut secrets = Secrets::from_env(&config, |k| std::env::var(k).ok());
    if demo {
        match start_demo_upstream().await {
            Ok(addr) => app::demo_overrides(&mut config, &mut secrets, addr),
            Err(e) => {
                eprintln!("cannot start the simulated upstream: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let state = match app::state(&config, &secrets) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot build the gateway: {e}");
            return ExitCode::from(2);
        }
    };
    if config.auth.mode == squad::config::AuthMode::Disabled {
        tracing::warn!("auth.mode is disabled: anyone who can reach this port can use it and spend provider credits");
    }
    let http = match server::Http::from_config(&config.server) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("server.tls.{}: {e}", e.field);
            return ExitCode::from(2);
        }
    };
    // Before anything starts: a SIGTERM from here on drains and flushes.
    let shutdown = server::signal();
    let background = app::start(&state, &config).await;
    let addr = format!("{}:{}", config.server.bind, config.server.port);
    let listeners = async {
        let listener = listen(&addr, "server.port").await?;
        let ops = match config.server.ops_port {
            Some(port) => {
                let bind = config.server.ops_bind.as_deref().unwrap_or(&config.server.bind);
                Some(listen(&format!("{bind}:{port}"), "server.ops_port").await?)
            }
            None => None,
        };
        Ok::<_, ExitCode>((listener, ops))
    };
    let (listener, ops) = match listeners.await {
        Ok(l) => l,
        Err(code) => {
            // Started already: the audit writer and the Redis heartbeat stop as on SIGTERM.
            background.shutdown().await;
            return code;
        }
    };
    let local = listener.local_addr().ok();
    let shown_addr = local.map(|a| a.to_string()).unwrap_or_else(|| addr.clone());
    let configured: Vec<&str> =
        state.gateway.registry().entries().filter(|e| e.status() == "configured").map(|e| e.id.as_str()).collect();
    tracing::info!(
        address = %shown_addr,
        version = env!("CARGO_PKG_VERSION"),
        config_file = source.file.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
        providers = ?configured,
        demo,
        tls = http.tls.is_some(),
        ops_address = ops.as_ref().and_then(|l| l.local_addr().ok()).map(|a| a.to_string()),
        "squad listening"
    );
    if configured.is_empty() {
        tracing::warn!("no provider is configured: set GROQ_API_KEY, GEMINI_API_KEY, … or run with --demo");
    }
    if demo
        && http.tls.is_none()
        && let Some(local) = local
    {
        tokio::spawn(demo_banner(local));
    }
    let lifecycle = state.lifecycle.clone();
    let drain = Drain { delay: config.server.drain_delay, grace: config.server.shutdown_grace };
    // With an operations port, /metrics is served there only.
    let (app, ops) = match ops {
        Some(listener) => (app::api_router(state.clone()), Some(server::Ops { listener, app: app::ops_router(state) })),
        None => (app::router(state), None),
    };
    let result = server::run_with_ops(listener, app, ops, lifecycle, drain, http, shutdown).await;
    // Everything queued for the audit log is written (or journaled) before exit.
    background.shutdown().await;
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            ExitCode::FAILURE
        }
    }
}

/// Binds `addr`, or says which setting (`setting`) could not be served.
async fn listen(addr: &str, setting: &str) -> Result<tokio::net::TcpListener, ExitCode> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        eprintln!("cannot listen on {addr} ({setting}): {e}");
        ExitCode::FAILURE
    })
}

/// `squad probe`: one GET, no proxy. The URL made from the config is this
/// host's own server, whose certificate names the service rather than the
/// loopback address, so it is not verified there; a `--url` is verified as
/// any client would.
async fn probe(path: Option<PathBuf>, ready: bool, url: Option<String>, timeout: Duration) -> ExitCode {
    let (url, own) = match url {
        Some(url) => (url, false),
        None => {
            let (config, _) = match load_config(path.as_deref()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match server::probe_url(&config.server, ready) {
                Ok(url) => (url, true),
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            }
        }
    };
    let result = async {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .tls_danger_accept_invalid_certs(own)
            .build()?;
        client.get(&url).send().await
    };
    match result.await {
        Ok(resp) if resp.status() == reqwest::StatusCode::OK => {
            println!("{url}: 200");
            ExitCode::SUCCESS
        }
        Ok(resp) => {
            println!("{url}: {}", resp.status().as_u16());
            ExitCode::FAILURE
        }
        Err(e) => {
            println!("{url}: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn mock_upstream(bind: &str, port: u16, options: MockOptions) -> ExitCode {
    let listener = match tokio::net::TcpListener::bind((bind, port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on {bind}:{port}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    // Before the announcement: a SIGTERM right after it is handled.
    let shutdown = server::signal();
    eprintln!("simulated upstream on http://{addr}");
    eprintln!("  OpenAI-compatible: POST http://{addr}/v1/chat/completions");
    eprintln!(
        "  Gemini:            POST http://{addr}/v1beta/models/MODEL:generateContent (or :streamGenerateContent?alt=sse)"
    );
    match squad::mock::serve(listener, options, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("simulated upstream failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn start_demo_upstream() -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let options =
        MockOptions { latency: Duration::from_millis(20), tokens_per_second: 200.0, ..MockOptions::default() };
    tokio::spawn(squad::mock::serve(listener, options, std::future::pending()));
    Ok(addr)
}

/// Shows the demo's main job: a real round trip through the gateway, the real
/// adapters and the real wire formats to the simulated upstream.
async fn demo_banner(addr: SocketAddr) {
    let port = addr.port();
    let base = format!("http://127.0.0.1:{port}");
    let body = serde_json::json!({"model": "gemini/gemini-3.5-flash",
        "messages": [{"role": "user", "content": "Hello, Squad!"}]});
    let reply = async {
        let resp = reqwest::Client::new().post(format!("{base}/v1/chat/completions")).json(&body).send().await?;
        resp.json::<serde_json::Value>().await
    };
    let shown = match reply.await {
        Ok(v) => format!(
            "{} answered: {}",
            v["model"].as_str().unwrap_or("?"),
            v["choices"][0]["message"]["content"].as_str().unwrap_or("?")
        ),
        Err(e) => format!("demo round trip failed: {e}"),
    };
    eprintln!(
        "\n  Squad demo is running on {base} (simulated upstream; no provider keys needed)\n\n  \
         Round trip just now: {shown}\n\n  Try:\n    \
         curl -s {base}/v1/chat/completions -H 'content-type: application/json' \\\n      \
         -d '{{\"model\":\"groq/openai/gpt-oss-120b\",\"messages\":[{{\"role\":\"user\",\"content\":\"Hi\"}}]}}'\n    \
         curl -sN {base}/v1/chat/completions -H 'content-type: application/json' \\\n      \
         -d '{{\"model\":\"deepseek/deepseek-flash\",\"stream\":true,\"messages\":[{{\"role\":\"user\",\"content\":\"Hi\"}}]}}'\n    \
         curl -s {base}/v1/models\n    curl -s {base}/health\n    curl -s {base}/metrics\n\n  \
         Simulate failures with a model name: groq/fault-503, groq/fault-429, groq/fault-cut\n"
    );
}
