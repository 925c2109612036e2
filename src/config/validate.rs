//! Semantic checks over a deserialised config. Collects every issue, never stops
//! at the first.

use std::fmt;
use std::net::IpAddr;

use super::Config;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Dotted path, e.g. `providers.groq.base_url`; empty for the file as a whole.
    pub path: String,
    pub message: String,
}

impl ConfigIssue {
    pub fn new(path: &str, message: String) -> Self {
        Self { path: path.to_owned(), message }
    }
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() { write!(f, "{}", self.message) } else { write!(f, "{}: {}", self.path, self.message) }
    }
}

/// Provider ids appear in model names (`groq/…`), metric labels and URLs.
pub fn is_valid_provider_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Upper bound for every duration: far beyond any sane setting, and far from
/// the overflow of `Instant + Duration`.
const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

pub fn validate(config: &Config) -> Vec<ConfigIssue> {
    let mut issues = Vec::new();
    let mut issue = |path: String, message: &str| issues.push(ConfigIssue { path, message: message.to_owned() });

    let server = &config.server;
    if server.bind.parse::<IpAddr>().is_err() {
        issue("server.bind".into(), "must be an IP address such as 0.0.0.0 or 127.0.0.1");
    }
    if server.ops_bind.as_ref().is_some_and(|b| b.parse::<IpAddr>().is_err()) {
        issue("server.ops_bind".into(), "must be an IP address such as 0.0.0.0 or 127.0.0.1");
    }
    if server.ops_port.is_some_and(|p| p != 0 && p == server.port) {
        issue("server.ops_port".into(), "must differ from server.port");
    }
    if server.max_body_bytes < 1024 {
        issue("server.max_body_bytes".into(), "must be at least 1024");
    }
    for (name, d) in [
        ("request_timeout", server.request_timeout),
        ("stream_timeout", server.stream_timeout),
        ("body_read_timeout", server.body_read_timeout),
        ("header_read_timeout", server.header_read_timeout),
    ] {
        if d.is_zero() || d > MAX_DURATION {
            issue(format!("server.{name}"), "must be greater than zero and at most 24h");
        }
    }
    // hyper's read buffer holds at most ~400 KiB; a head must fit in it.
    if !(1024..=256 * 1024).contains(&server.max_header_bytes) {
        issue("server.max_header_bytes".into(), "must be between 1024 and 262144");
    }
    if server.workers > 1024 {
        issue("server.workers".into(), "must be at most 1024 (0: one per CPU)");
    }
    // serde_json stops at 128 levels on its own; above that our limit would never apply.
    if !(1..=128).contains(&server.max_json_depth) {
        issue("server.max_json_depth".into(), "must be between 1 and 128");
    }
    if let Err(e) = crate::tls::server_config(&server.tls) {
        issue(format!("server.tls.{}", e.field), &e.message);
    }
    for (name, d) in [("drain_delay", server.drain_delay), ("shutdown_grace", server.shutdown_grace)] {
        if d > MAX_DURATION {
            issue(format!("server.{name}"), "must be at most 24h");
        }
    }
    if tracing_filter_is_invalid(&config.log.level) {
        issue("log.level".into(), "not a valid level or filter (try info, debug, or squad=debug,info)");
    }

    for (id, p) in &config.providers {
        let at = |field: &str| format!("providers.{id}.{field}");
        if !is_valid_provider_id(id) {
            issue(format!("providers.{id}"), "provider ids use lowercase letters, digits, - and _");
        }
        match p.base_url.parse::<http::Uri>() {
            Ok(uri) if uri.authority().is_some_and(|a| a.as_str().contains('@')) => issue(
                at("base_url"),
                "credentials in the URL are not sent; put them in `headers` (e.g. an Authorization header)",
            ),
            Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some() => {}
            _ => issue(at("base_url"), "required: an http:// or https:// URL"),
        }
        if p.default_model.trim().is_empty() {
            issue(at("default_model"), "required");
        }
        if let Some(env) = &p.api_key_env
            && !is_env_name(env)
        {
            issue(at("api_key_env"), "must be an environment variable name");
        }
        for (name, value) in &p.headers {
            if http::HeaderName::try_from(name.as_str()).is_err() {
                issue(at(&format!("headers.{name}")), "not a valid header name");
            } else if http::HeaderValue::try_from(value.as_str()).is_err() {
                issue(at(&format!("headers.{name}")), "not a valid header value");
            }
        }
        let t = &p.timeouts;
        for (name, d) in
            [("connect", t.connect), ("first_byte", t.first_byte), ("total", t.total), ("stream_idle", t.stream_idle)]
        {
            if d.is_zero() || d > MAX_DURATION {
                issue(at(&format!("timeouts.{name}")), "must be greater than zero and at most 24h");
            }
        }
        if t.first_byte > t.total {
            issue(at("timeouts.first_byte"), "must not exceed timeouts.total");
        }
    }

    let c = &config.conversations;
    if c.max_turns == 0 || c.max_tokens == 0 {
        issue("conversations".into(), "max_turns and max_tokens must be at least 1");
    }
    if c.ttl < std::time::Duration::from_secs(1) || c.ttl > MAX_DURATION {
        issue("conversations.ttl".into(), "must be between 1s and 24h");
    }
    if c.max_memory_bytes < 1024 * 1024 {
        issue("conversations.max_memory_bytes".into(), "must be at least 1 MiB");
    }
    if let Some(url) = &c.redis_url
        && !(url.starts_with("redis://") || url.starts_with("rediss://"))
    {
        issue("conversations.redis_url".into(), "must be a redis:// or rediss:// URL");
    }
    let r = &config.resilience.retry;
    if r.attempts_per_provider == 0 || r.attempts_per_provider > 10 {
        issue("resilience.retry.attempts_per_provider".into(), "must be between 1 and 10");
    }
    for (name, d) in [
        ("backoff_base", r.backoff_base),
        ("backoff_max", r.backoff_max),
        ("retry_after_max_wait", r.retry_after_max_wait),
        ("park_max", r.park_max),
        ("park_default", r.park_default),
        ("attempt_timeout", r.attempt_timeout),
    ] {
        if d > MAX_DURATION {
            issue(format!("resilience.retry.{name}"), "must be at most 24h");
        }
    }
    if r.attempt_timeout.is_zero() {
        issue("resilience.retry.attempt_timeout".into(), "must be greater than zero");
    }
    let b = &config.resilience.breaker;
    if b.consecutive_failures == 0 || b.min_calls == 0 {
        issue("resilience.breaker".into(), "consecutive_failures and min_calls must be at least 1");
    }
    if !(b.failure_rate > 0.0 && b.failure_rate <= 1.0) {
        issue("resilience.breaker.failure_rate".into(), "must be greater than 0 and at most 1");
    }
    for (name, d) in [("window", b.window), ("cooldown", b.cooldown)] {
        if d.is_zero() || d > MAX_DURATION {
            issue(format!("resilience.breaker.{name}"), "must be greater than zero and at most 24h");
        }
    }
    let l = &config.limits;
    if l.concurrency.max_wait > MAX_DURATION || l.throttle.cooldown > MAX_DURATION {
        issue("limits".into(), "durations must be at most 24h");
    }
    let t = &l.throttle;
    if !(t.decrease > 0.0 && t.decrease < 1.0) {
        issue("limits.throttle.decrease".into(), "must be between 0 and 1 (exclusive)");
    }
    let in_unit = |x: f64| x > 0.0 && x <= 1.0;
    if !in_unit(t.min_factor) || !in_unit(t.recover_step) {
        issue("limits.throttle".into(), "min_factor and recover_step must be greater than 0 and at most 1");
    }
    if l.redis.replicas == 0 {
        issue("limits.redis.replicas".into(), "must be at least 1");
    }
    if l.redis.heartbeat < std::time::Duration::from_millis(100)
        || l.redis.heartbeat > std::time::Duration::from_secs(3600)
    {
        issue("limits.redis.heartbeat".into(), "must be between 100ms and 1h");
    }
    if l.redis.prefix.is_empty() || l.redis.prefix.contains(char::is_whitespace) {
        issue("limits.redis.prefix".into(), "must be a non-empty word");
    }
    if let Some(url) = &l.redis.url
        && !(url.starts_with("redis://") || url.starts_with("rediss://"))
    {
        issue("limits.redis.url".into(), "must be a redis:// or rediss:// URL");
    }
    for (id, p) in &config.providers {
        let budgets = std::iter::once(("".to_owned(), p.limits.rate()))
            .chain(p.limits.models.iter().map(|(m, r)| (format!(".models.{m}"), *r)));
        for (at, r) in budgets {
            if r.burst == Some(0) {
                issue(format!("providers.{id}.limits{at}.burst"), "must be at least 1");
            }
        }
    }
    if config.agents.language.trim().is_empty() {
        issue("agents.language".into(), "must not be empty");
    }

    for (alias, target) in &config.aliases {
        let path = format!("aliases.{alias}");
        if alias.contains('/') || alias.is_empty() {
            issue(path.clone(), "an alias may not contain '/'");
        }
        if config.providers.contains_key(alias) {
            issue(path.clone(), "an alias may not shadow a provider id");
        }
        match target.split_once('/') {
            Some((provider, model)) if config.providers.contains_key(provider) && !model.is_empty() => {}
            _ => issue(path, "must be provider/model with a configured provider"),
        }
    }
    let db = &config.database;
    if !(db.is_postgres() || db.url.starts_with("sqlite:")) {
        issue("database.url".into(), "must be sqlite://PATH or postgres://user@host/db");
    } else if !db.is_postgres() {
        if sqlite_in_memory(&db.url) {
            issue(
                "database.url".into(),
                "an in-memory SQLite database loses the audit log when Squad stops: name a file (sqlite://PATH)",
            );
        } else if sqlite_unsupported_option(&db.url) {
            issue(
                "database.url".into(),
                "the audit log writes its SQLite file itself: `vfs`, `immutable` and `mode=ro` are not supported",
            );
        }
    }
    if db.pool_max == Some(0) || db.pool_min.zip(db.pool_max).is_some_and(|(min, max)| min > max) {
        issue("database.pool_max".into(), "must be at least 1 and at least pool_min");
    }
    if db.connect_timeout.is_zero() || db.connect_timeout > MAX_DURATION {
        issue("database.connect_timeout".into(), "must be greater than zero and at most 24h");
    }
    let a = &config.audit;
    if a.batch_size == 0 || a.batch_size > 10_000 {
        issue("audit.batch_size".into(), "must be between 1 and 10000");
    }
    if a.queue_capacity == 0 {
        issue("audit.queue_capacity".into(), "must be at least 1");
    }
    if a.segment_bytes < 4096 {
        issue("audit.segment_bytes".into(), "must be at least 4096");
    }
    for (name, d) in [("flush_interval", a.flush_interval), ("replay_interval", a.replay_interval)] {
        if d.is_zero() || d > MAX_DURATION {
            issue(format!("audit.{name}"), "must be greater than zero and at most 24h");
        }
    }
    if a.shutdown_timeout > MAX_DURATION {
        issue("audit.shutdown_timeout".into(), "must be at most 24h");
    }
    if a.journal_dir.as_os_str().is_empty() {
        issue("audit.journal_dir".into(), "must not be empty");
    }
    if config.auth.refresh_interval.is_zero() || config.auth.refresh_interval > MAX_DURATION {
        issue("auth.refresh_interval".into(), "must be greater than zero and at most 24h");
    }
    let cors = &config.cors;
    if cors.allow_credentials && cors.allowed_origins.iter().any(|o| o == "*") {
        issue("cors.allowed_origins".into(), "`*` cannot be combined with allow_credentials: list the origins");
    }
    for (i, origin) in cors.allowed_origins.iter().enumerate() {
        let valid = origin == "*"
            || origin.parse::<http::Uri>().is_ok_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https"))
                    && u.host().is_some()
                    && u.path() == "/"
                    && !origin.ends_with('/')
            });
        if !valid {
            issue(
                format!("cors.allowed_origins[{i}]"),
                "must be an origin like https://app.example.com (no path) or *",
            );
        }
    }
    validate_pii(&config.pii, &mut issue);
    for (model, price) in &config.pricing {
        if !model.contains('/') {
            issue(format!("pricing.{model}"), "keys are provider/model or provider/*");
        }
        if !(price.input.is_finite() && price.output.is_finite() && price.input >= 0.0 && price.output >= 0.0) {
            issue(format!("pricing.{model}"), "prices must be finite and not negative");
        }
    }
    issues
}

fn tracing_filter_is_invalid(level: &str) -> bool {
    tracing_subscriber::EnvFilter::try_new(level).is_err()
}

fn validate_pii(pii: &crate::config::PiiConfig, issue: &mut impl FnMut(String, &str)) {
    use crate::security::pii::{PiiKind, compile_pattern, valid_pattern_name};
    let mut names = Vec::new();
    for (i, p) in pii.patterns.iter().enumerate() {
        if !valid_pattern_name(&p.name) {
            issue(
                format!("pii.patterns[{i}].name"),
                "must be A-Z, 0-9 and _, start with a letter, be at most 32 characters and not a built-in type",
            );
        } else if names.contains(&p.name.as_str()) {
            issue(format!("pii.patterns[{i}].name"), "duplicate pattern name");
        }
        names.push(p.name.as_str());
        if let Err(e) = compile_pattern(&p.regex) {
            issue(format!("pii.patterns[{i}].regex"), &e);
        }
    }
    let mut check = |path: &str, kinds: &[String]| {
        for (i, kind) in kinds.iter().enumerate() {
            if PiiKind::parse(kind).is_none() && !names.contains(&kind.as_str()) {
                issue(
                    format!("{path}[{i}]"),
                    "unknown type (EMAIL, PHONE, CPF, CNPJ, CARD, IBAN, IPV4, IPV6, SSN, SECRET or a pattern name)",
                );
            }
        }
    };
    check("pii.block", &pii.block);
    check("pii.mask_types", &pii.mask_types);
    for (id, a) in &pii.agents {
        if let Some(b) = &a.block {
            check(&format!("pii.agents.{id}.block"), b);
        }
        if let Some(t) = &a.mask_types {
            check(&format!("pii.agents.{id}.mask_types"), t);
        }
    }
    for id in pii.agents.keys() {
        if !crate::agents::is_valid_id(id) {
            issue(format!("pii.agents.{id}"), "not a valid agent id (a-z, 0-9, -)");
        }
    }
}

/// `sqlite::memory:`, `sqlite://` (no file) or `?mode=memory`.
fn sqlite_in_memory(url: &str) -> bool {
    let rest = url.trim_start_matches("sqlite:").trim_start_matches("//");
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    path.is_empty() || path == ":memory:" || query.split('&').any(|pair| pair == "mode=memory")
}

/// URL options under which the audit writer's own connection (opened on the
/// file by name) would not see the file as the pool does.
fn sqlite_unsupported_option(url: &str) -> bool {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    query.split('&').any(|pair| pair.starts_with("vfs=") || pair.starts_with("immutable=") || pair == "mode=ro")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_options_the_audit_writer_cannot_honour_are_refused() {
        for url in ["sqlite://a.db?vfs=unix-none", "sqlite://a.db?immutable=true", "sqlite://a.db?mode=ro"] {
            let mut config = Config::default();
            config.database.url = url.into();
            assert!(config.validate().iter().any(|i| i.to_string().contains("not supported")), "{url}");
        }
    }

    #[test]
    fn the_operations_port_differs_from_the_api_port_and_binds_an_ip() {
        let issues = |port: Option<u16>, bind: Option<&str>| {
            let mut config = Config::default();
            config.server.ops_port = port;
            config.server.ops_bind = bind.map(str::to_owned);
            config.validate().into_iter().map(|i| i.path).collect::<Vec<_>>()
        };
        assert!(issues(Some(9090), Some("127.0.0.1")).is_empty());
        assert!(issues(None, None).is_empty());
        assert_eq!(issues(Some(8000), None), ["server.ops_port"]);
        assert_eq!(issues(Some(9090), Some("localhost")), ["server.ops_bind"]);
    }

    #[test]
    fn the_rate_limit_heartbeat_is_between_100ms_and_1h() {
        for (ms, ok) in [(100, true), (5_000, true), (3_600_000, true), (99, false), (3_600_001, false)] {
            let mut config = Config::default();
            config.limits.redis.heartbeat = std::time::Duration::from_millis(ms);
            let paths: Vec<_> = config.validate().into_iter().map(|i| i.path).collect();
            let expected: &[&str] = if ok { &[] } else { &["limits.redis.heartbeat"] };
            assert_eq!(paths, expected, "{ms} ms");
        }
    }

    #[test]
    fn the_audit_shutdown_timeout_is_at_most_24h() {
        for (secs, ok) in [(0, true), (5, true), (24 * 3600, true), (24 * 3600 + 1, false)] {
            let mut config = Config::default();
            config.audit.shutdown_timeout = std::time::Duration::from_secs(secs);
            let paths: Vec<_> = config.validate().into_iter().map(|i| i.path).collect();
            let expected: &[&str] = if ok { &[] } else { &["audit.shutdown_timeout"] };
            assert_eq!(paths, expected, "{secs} s");
        }
    }

    #[test]
    fn the_audit_batch_size_is_between_1_and_10000() {
        for (size, ok) in [(1, true), (1000, true), (10_000, true), (0, false), (10_001, false)] {
            let mut config = Config::default();
            config.audit.batch_size = size;
            let refused = config.validate().iter().any(|i| i.to_string().contains("audit.batch_size"));
            assert_eq!(refused, !ok, "{size}");
        }
    }

    #[test]
    fn an_in_memory_sqlite_audit_database_is_refused() {
        for url in ["sqlite::memory:", "sqlite://:memory:", "sqlite://", "sqlite://audit.db?mode=memory"] {
            let mut config = Config::default();
            config.database.url = url.into();
            let issues = config.validate();
            assert!(issues.iter().any(|i| i.to_string().contains("in-memory")), "{url}: {issues:?}");
        }
        for url in ["sqlite://squad.db", "sqlite:///var/lib/squad/audit.db?mode=rwc"] {
            let mut config = Config::default();
            config.database.url = url.into();
            assert!(config.validate().iter().all(|i| !i.to_string().contains("database.url")), "{url}");
        }
    }
}
