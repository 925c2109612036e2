//! The store commands of the CLI: `migrate`, `keys`, `audit`, `backup`.
//! (Part of the binary, not the library: argument types live in main.rs.)

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use squad::store::keys::{self, KeySpec};
use squad::store::{Store, Subject, format_time, now_ms, parse_time, retention_cutoff};

use super::{AuditCommand, ExportFormat, KeysCommand, Whose, load_config};

/// Loads the config and opens and migrates its store.
async fn open(path: Option<PathBuf>) -> Result<(squad::config::Config, Store), ExitCode> {
    let (config, _) = load_config(path.as_deref())?;
    let store = Store::open(&config.database).map_err(|e| fail(&format!("cannot open the database: {e}")))?;
    store.migrate().await.map_err(|e| fail(&format!("{} ({}): {e}", store.shown_url(), store.dialect())))?;
    Ok((config, store))
}

fn fail(message: &str) -> ExitCode {
    eprintln!("{message}");
    ExitCode::FAILURE
}

pub async fn migrate(path: Option<PathBuf>) -> ExitCode {
    match open(path).await {
        Ok((_, store)) => {
            println!("migrations applied to {} ({})", store.shown_url(), store.dialect());
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

pub async fn keys(path: Option<PathBuf>, command: KeysCommand) -> ExitCode {
    let (config, store) = match open(path).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    let result = match command {
        KeysCommand::Create { name, agents, rpm, tpm, expires, admin } => {
            create_key(&config, &store, name, agents, rpm, tpm, expires, admin).await
        }
        KeysCommand::List => list_keys(&store).await,
        KeysCommand::Revoke { id_or_name } => match store.revoke_key(&id_or_name).await {
            Ok(0) => Err(format!("no active key with id or name `{id_or_name}`")),
            Ok(n) => {
                println!(
                    "revoked {n} key{} (takes effect within auth.refresh_interval)",
                    if n == 1 { "" } else { "s" }
                );
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        },
    };
    result.map(|()| ExitCode::SUCCESS).unwrap_or_else(|e| fail(&e))
}

#[allow(clippy::too_many_arguments)]
async fn create_key(
    config: &squad::config::Config,
    store: &Store,
    name: String,
    agents: Option<Vec<String>>,
    rpm: Option<u32>,
    tpm: Option<u32>,
    expires: Option<String>,
    admin: bool,
) -> Result<(), String> {
    if name.trim().is_empty() || name.len() > 128 {
        return Err("--name must be 1-128 characters".into());
    }
    let (roster, _) = squad::agents::Roster::load(config.agents.dir.as_deref());
    if let Some(unknown) = agents.iter().flatten().find(|a| roster.get(a).is_none()) {
        return Err(format!("unknown agent `{unknown}`; valid agents: {}", roster.ids().join(", ")));
    }
    let expires_ms = expires.as_deref().map(parse_time).transpose()?;
    if expires_ms.is_some_and(|e| e <= now_ms()) {
        return Err("--expires is in the past".into());
    }
    let spec = KeySpec { name, agents, rpm: rpm.map(i64::from), tpm: tpm.map(i64::from), expires_ms, admin };
    let new = keys::generate(spec).map_err(|e| e.to_string())?;
    store.insert_key(&new.key).await.map_err(|e| e.to_string())?;
    println!("{}", new.secret);
    eprintln!("created key {} ({}): store it now, it is not shown again", new.key.id, new.key.name);
    Ok(())
}

async fn list_keys(store: &Store) -> Result<(), String> {
    let keys = store.list_keys().await.map_err(|e| e.to_string())?;
    let now = now_ms();
    println!(
        "{:<14} {:<24} {:<8} {:<6} {:<24} {:<10} {:<10} EXPIRES",
        "ID", "NAME", "STATE", "ADMIN", "AGENTS", "RPM", "TPM"
    );
    for k in keys {
        let agents = k.agents.as_ref().map(|a| a.join(",")).unwrap_or_else(|| "*".into());
        let opt = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
        let expires = k.expires_ms.map(format_time).unwrap_or_else(|| "never".into());
        println!(
            "{:<14} {:<24} {:<8} {:<6} {:<24} {:<10} {:<10} {}",
            k.id,
            k.name,
            k.state(now),
            k.admin,
            agents,
            opt(k.rpm),
            opt(k.tpm),
            expires
        );
    }
    Ok(())
}

pub async fn audit(path: Option<PathBuf>, command: AuditCommand) -> ExitCode {
    let (config, store) = match open(path).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    let result = match command {
        AuditCommand::Prune { before } => prune(&store, before, config.audit.retention_days).await,
        AuditCommand::Export { since, until, request_id, user_id, whose, format, out } => {
            let rows = match (request_id, user_id) {
                (Some(id), _) => Ok(Rows::Request(id)),
                (_, Some(user)) => key_of(&config, whose).map(|key| Rows::User(user, key)),
                (None, None) => between(since.as_deref(), until.as_deref()),
            };
            async { export(&store, rows?, format, out).await }.await
        }
        AuditCommand::Erase { user_id, whose, yes } => match key_of(&config, whose) {
            Ok(key) => erase(&store, Subject { user_id: &user_id, key_id: key.as_deref() }, yes).await,
            Err(e) => Err(e),
        },
    };
    result.map(|()| ExitCode::SUCCESS).unwrap_or_else(|e| fail(&e))
}

async fn prune(store: &Store, before: Option<String>, retention_days: u32) -> Result<(), String> {
    let cutoff = match before {
        Some(b) => parse_time(&b)?,
        None if retention_days == 0 => return Err("audit.retention_days is 0 (keep forever); pass --before".into()),
        None => retention_cutoff(retention_days),
    };
    let n = store.prune_audit(cutoff).await.map_err(|e| e.to_string())?;
    println!("deleted {n} audit rows older than {}", format_time(cutoff));
    Ok(())
}

/// The key a `--user-id` belongs to: `--key-id`, or any key with
/// `--any-key`; with keys on, one of the two must be given.
fn key_of(config: &squad::config::Config, whose: Whose) -> Result<Option<String>, String> {
    match whose {
        Whose { key_id: Some(key), .. } => Ok(Some(key)),
        Whose { any_key: true, .. } => Ok(None),
        _ if config.auth.mode == squad::config::AuthMode::Required => {
            Err("with keys on, a user id belongs to the key whose clients sent it: pass --key-id (squad keys list) \
             or --any-key"
                .into())
        }
        _ => Ok(None),
    }
}

/// `squad audit erase`: a data subject's right to erasure. Records still in a
/// replica's journal (written while the database was down) reach the
/// database later with their content: the README says to run it again once
/// every journal is drained.
async fn erase(store: &Store, subject: Subject<'_>, yes: bool) -> Result<(), String> {
    if subject.user_id.is_empty() {
        return Err("--user-id must not be empty".into());
    }
    let whose = match subject.key_id {
        Some(key) => format!("user id {} of key {key}", subject.user_id),
        None => format!("user id {}", subject.user_id),
    };
    if !yes {
        let n = store.audit_user_count(&subject).await.map_err(|e| e.to_string())?;
        println!("{n} audit rows carry {whose}; nothing changed (pass --yes to erase their personal data)");
        return Ok(());
    }
    let n = store.erase_user(&subject).await.map_err(|e| e.to_string())?;
    println!("erased the personal data of {n} audit rows of {whose}");
    Ok(())
}

const CSV_COLUMNS: &[&str] = &[
    "id",
    "request_id",
    "time",
    "key_id",
    "client_addr",
    "method",
    "route",
    "agent",
    "user_id",
    "conversation_id",
    "status",
    "error_kind",
    "attempts",
    "provider",
    "model",
    "tokens_in",
    "tokens_out",
    "cost_usd",
    "latency_ms",
    "upstream_ms",
    "overhead_ms",
    "streamed",
    "cancelled",
    "prompt",
    "response",
    "metadata",
];

fn csv_field(v: &serde_json::Value) -> String {
    let s = match v {
        serde_json::Value::Null => return String::new(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s }
}

/// Which rows `squad audit export` writes.
enum Rows {
    /// `since <= ts_ms < until`.
    Between(i64, i64),
    /// Those of one request id.
    Request(String),
    /// Those of one user id (of one key, or of any).
    User(String, Option<String>),
}

/// `--since` and `--until`, each open when absent.
fn between(since: Option<&str>, until: Option<&str>) -> Result<Rows, String> {
    Ok(Rows::Between(
        since.map(parse_time).transpose()?.unwrap_or(0),
        until.map(parse_time).transpose()?.unwrap_or(i64::MAX),
    ))
}

async fn export(store: &Store, rows: Rows, format: ExportFormat, out: Option<PathBuf>) -> Result<(), String> {
    let mut sink: Box<dyn Write> = match &out {
        Some(p) => {
            Box::new(std::io::BufWriter::new(std::fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()))?))
        }
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let io = |e: std::io::Error| e.to_string();
    if let ExportFormat::Csv = format {
        writeln!(sink, "{}", CSV_COLUMNS.join(",")).map_err(io)?;
    }
    let mut after = None;
    let mut total = 0usize;
    loop {
        let page = match &rows {
            Rows::Request(id) => store.audit_by_request_page(id, after.clone(), 1000).await,
            Rows::User(user, key) => {
                let subject = Subject { user_id: user, key_id: key.as_deref() };
                store.audit_by_user_page(&subject, after.clone(), 1000).await
            }
            Rows::Between(since, until) => store.audit_page(*since, *until, after.clone(), 1000).await,
        }
        .map_err(|e| e.to_string())?;
        let Some(last) = page.last() else { break };
        after = Some((last.ts_ms, last.id.clone()));
        for record in &page {
            let v = record.to_export();
            match format {
                ExportFormat::Jsonl => writeln!(sink, "{v}").map_err(io)?,
                ExportFormat::Csv => {
                    let row: Vec<String> = CSV_COLUMNS.iter().map(|c| csv_field(&v[*c])).collect();
                    writeln!(sink, "{}", row.join(",")).map_err(io)?;
                }
            }
        }
        total += page.len();
    }
    sink.flush().map_err(io)?;
    eprintln!("exported {total} audit rows");
    Ok(())
}

pub async fn backup(path: Option<PathBuf>, out: PathBuf) -> ExitCode {
    let (_, store) = match open(path).await {
        Ok(x) => x,
        Err(code) => return code,
    };
    match store.backup(&out).await {
        Ok(()) => {
            println!("backup written to {}", out.display());
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e.to_string()),
    }
}
