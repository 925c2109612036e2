//! Persistence: audit rows, API keys and usage, in SQLite (default, one file in
//! WAL mode) or PostgreSQL. Migrations are embedded per dialect. The pool
//! connects lazily, so a database that is down at start-up does not stop
//! Squad from serving: the audit journal holds records until it returns.
//!
//! Queries are written once with `$n` placeholders (both dialects accept
//! them) and run on either pool through `on_db!`.

pub mod audit;
pub mod journal;
pub mod keys;
mod sqlite_raw;
pub mod writer;

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use crate::config::DatabaseConfig;

pub use audit::{AuditRecord, GroupBy, Subject, UsageRow};
pub use keys::{ApiKey, KeyCache, KeyCheck, NewKey};
pub use writer::{AuditLog, Draft};

/// The page size of a new SQLite file.
const SQLITE_PAGE_SIZE: u32 = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    Invalid(String),
}

enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// `Store::pool_stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    pub open: u32,
    pub idle: u32,
    pub max: u32,
}

/// Runs `$body` with `$pool` bound to whichever pool this store has, and
/// `$db` naming its sqlx database type.
macro_rules! on_db {
    ($store:expr, $pool:ident, $db:ident => $body:expr) => {
        match &$store.db {
            $crate::store::Db::Sqlite($pool) => {
                #[allow(dead_code)]
                type $db = sqlx::Sqlite;
                $body
            }
            $crate::store::Db::Postgres($pool) => {
                #[allow(dead_code)]
                type $db = sqlx::Postgres;
                $body
            }
        }
    };
}
pub(crate) use on_db;

pub struct Store {
    db: Db,
    migrated: AtomicBool,
    /// One migration at a time (the writer, the key loader and start-up may all try).
    migrating: tokio::sync::Mutex<()>,
    /// The URL with any password replaced, for logs and `/health`.
    shown_url: String,
    /// SQLite: the database file and how long a write waits for another
    /// connection's lock, for the audit writer's own connection.
    sqlite_file: Option<(std::path::PathBuf, Duration)>,
    /// SQLite: the audit writer's connection (`sqlite_raw`), opened for the
    /// first batch and dropped after a failed one.
    audit_sqlite: std::sync::Mutex<Option<sqlite_raw::Writer>>,
}

/// `postgres://user:secret@host/db?password=x` → `postgres://user:***@host/db?password=***`.
pub fn hide_password(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let base = match base.split_once("://").and_then(|(scheme, rest)| Some((scheme, rest.rsplit_once('@')?))) {
        Some((scheme, (userinfo, host))) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => base.to_owned(),
        },
        None => base.to_owned(),
    };
    let Some(query) = query else { return base };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{base}?{}", query.join("&"))
}

impl Store {
    /// A store for `config`; connects on first use.
    pub fn open(config: &DatabaseConfig) -> Result<Self, StoreError> {
        let mut sqlite_file = None;
        let db = if config.is_postgres() {
            let options = PgConnectOptions::from_str(&config.url)?;
            Db::Postgres(
                PgPoolOptions::new()
                    .min_connections(config.pool_min.unwrap_or(5))
                    .max_connections(config.pool_max.unwrap_or(20))
                    .acquire_timeout(config.connect_timeout)
                    .connect_lazy_with(options),
            )
        } else {
            let options = SqliteConnectOptions::from_str(&config.url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // With WAL, NORMAL survives a process crash (not a power cut);
                // the audit journal covers the window either way.
                .synchronous(SqliteSynchronous::Normal)
                // For a new file (an existing one keeps its own): SQLite
                // writes each page to the WAL, and again at checkpoint, in
                // system calls of its own, and 16 KiB pages took a tenth off
                // the audit writer's CPU per record at saturation (4 KiB: 3.1
                // µs, 16 KiB: 2.8 µs; 64 KiB saved no more, and a commit
                // rewrites the last, partly filled page of each b-tree whole).
                .page_size(SQLITE_PAGE_SIZE)
                .busy_timeout(config.connect_timeout);
            sqlite_file = Some((options.get_filename().to_owned(), config.connect_timeout));
            Db::Sqlite(
                SqlitePoolOptions::new()
                    .min_connections(config.pool_min.unwrap_or(1))
                    .max_connections(config.pool_max.unwrap_or(4))
                    .acquire_timeout(config.connect_timeout)
                    .connect_lazy_with(options),
            )
        };
        Ok(Self {
            db,
            migrated: AtomicBool::new(false),
            migrating: tokio::sync::Mutex::new(()),
            shown_url: hide_password(&config.url),
            sqlite_file,
            audit_sqlite: std::sync::Mutex::new(None),
        })
    }

    pub fn dialect(&self) -> &'static str {
        match self.db {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    pub fn shown_url(&self) -> &str {
        &self.shown_url
    }

    /// Applies the embedded migrations (idempotent; free once done).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        if self.is_migrated() {
            return Ok(());
        }
        let _one = self.migrating.lock().await;
        if self.is_migrated() {
            return Ok(());
        }
        // Migrations a newer Squad applied are not this build's to refuse: a
        // rollback runs on the database as the newer build left it. A
        // migration keeps what the build before it reads and writes (it adds
        // tables, columns with defaults, indexes); 0004, which replaced the
        // primary key, predates the rule, and builds before it cannot write
        // after it.
        let newest = match &self.db {
            Db::Sqlite(pool) => {
                let mut migrator = sqlx::migrate!("./migrations/sqlite");
                migrator.set_ignore_missing(true).run(pool).await?;
                newest_version(&migrator)
            }
            Db::Postgres(pool) => {
                // In a task of its own, so a caller that stops waiting (a
                // timeout) never cuts it off between PostgreSQL's
                // `pg_advisory_lock` and the unlock: the lock would stay with
                // a pooled connection and stall every later migration until
                // the pool reaps that connection, minutes later.
                let pool = pool.clone();
                tokio::spawn(async move {
                    let mut migrator = sqlx::migrate!("./migrations/postgres");
                    migrator.set_ignore_missing(true).run(&pool).await.map(|()| newest_version(&migrator))
                })
                .await
                .map_err(|e| StoreError::Invalid(format!("the migration task failed: {e}")))??
            }
        };
        let applied: Option<i64> = on_db!(self, pool, DB => sqlx::query_scalar(
            "SELECT MAX(version) FROM _sqlx_migrations WHERE success"
        )
        .fetch_one(pool)
        .await?);
        if let Some(applied) = applied.filter(|&v| v > newest) {
            tracing::warn!(
                database = applied,
                build = newest,
                "the database was migrated by a newer Squad; this build runs on it as it is (migrations only add)"
            );
        }
        self.migrated.store(true, Ordering::Release);
        Ok(())
    }

    pub fn is_migrated(&self) -> bool {
        self.migrated.load(Ordering::Acquire)
    }

    /// The connection pool now: connections open, of them idle, and the
    /// most it may open (`database.pool_max`).
    pub fn pool_stats(&self) -> PoolStats {
        on_db!(self, pool, DB => PoolStats {
            open: pool.size(),
            idle: u32::try_from(pool.num_idle()).unwrap_or(u32::MAX),
            max: pool.options().get_max_connections(),
        })
    }

    /// A round trip to the database.
    pub async fn ping(&self) -> Result<Duration, StoreError> {
        let started = Instant::now();
        on_db!(self, pool, DB => sqlx::query("SELECT 1").execute(pool).await.map(|_| ())?);
        Ok(started.elapsed())
    }

    /// A consistent online copy of a SQLite store (`VACUUM INTO`). PostgreSQL
    /// is backed up with `pg_dump`.
    pub async fn backup(&self, out: &std::path::Path) -> Result<(), StoreError> {
        let Db::Sqlite(pool) = &self.db else {
            return Err(StoreError::Invalid("backup copies SQLite stores; for PostgreSQL use pg_dump".into()));
        };
        if out.exists() {
            return Err(StoreError::Invalid(format!("{} already exists", out.display())));
        }
        let path = out.to_str().ok_or_else(|| StoreError::Invalid("the output path is not UTF-8".into()))?;
        sqlx::query("VACUUM INTO $1").bind(path).execute(pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        drop(self.audit_sqlite.lock().unwrap_or_else(|p| p.into_inner()).take());
        on_db!(self, pool, DB => pool.close().await);
    }
}

/// The version of the newest migration `migrator` holds.
fn newest_version(migrator: &sqlx::migrate::Migrator) -> i64 {
    migrator.iter().map(|m| m.version).max().unwrap_or(0)
}

pub const DAY_MS: i64 = 24 * 3600 * 1000;

/// The retention cut-off: rows older than `days` before now.
pub fn retention_cutoff(days: u32) -> i64 {
    now_ms() - i64::from(days) * DAY_MS
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// The time of a UUIDv7 in its canonical text form (what Squad makes for
/// request and record ids): Unix milliseconds. `None` for any other text.
/// A record's `ts_ms` is its id's time, so a row is found by id alone
/// through the `(ts_ms, id)` index.
pub fn uuid7_ms(id: &str) -> Option<i64> {
    let b = id.as_bytes();
    if b.len() != 36 || b[14] != b'7' || !matches!(b[19], b'8' | b'9' | b'a' | b'b' | b'A' | b'B') {
        return None;
    }
    let mut ms = 0_i64;
    for (i, &c) in b.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if c != b'-' {
                return None;
            }
            continue;
        }
        let digit = (c as char).to_digit(16)?;
        // The first twelve digits (before the second hyphen) are the time.
        if i < 13 {
            ms = ms << 4 | i64::from(digit);
        }
    }
    Some(ms)
}

/// The time of a UUIDv7 Squad has just made (as `uuid7_ms` reads it from
/// its text): its first 48 bits, Unix milliseconds.
pub fn uuid7_time(id: &uuid::Uuid) -> i64 {
    let b = id.as_bytes();
    i64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]])
}

/// `2026-11-29`, `2026-11-29T10:00:00Z` or a Unix time in seconds → Unix milliseconds.
pub fn parse_time(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<i64>() {
        return Ok(secs.saturating_mul(1000));
    }
    let full = if s.len() == 10 { format!("{s}T00:00:00Z") } else { s.to_owned() };
    humantime::parse_rfc3339_weak(&full)
        .map_err(|_| format!("`{s}` is not a date (YYYY-MM-DD), an RFC 3339 time or Unix seconds"))?
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .map_err(|_| format!("`{s}` is before 1970"))
}

/// Unix milliseconds → RFC 3339 (UTC, milliseconds).
pub fn format_time(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(hide_password("postgres://squad:hunter2@db:5432/squad"), "postgres://squad:***@db:5432/squad");
        assert_eq!(hide_password("postgres://postgres@127.0.0.1/test"), "postgres://postgres@127.0.0.1/test");
        assert_eq!(hide_password("sqlite://squad.db"), "sqlite://squad.db");
        assert_eq!(
            hide_password("postgres://db/squad?user=u&password=hunter2&sslmode=require"),
            "postgres://db/squad?user=u&password=***&sslmode=require"
        );
    }

    #[test]
    fn times_parse_in_three_forms() {
        assert_eq!(parse_time("1970-01-02").unwrap(), 86_400_000);
        assert_eq!(parse_time("1970-01-01T00:00:01Z").unwrap(), 1000);
        assert_eq!(parse_time("5").unwrap(), 5000);
        assert!(parse_time("yesterday").is_err());
        assert_eq!(format_time(1000), "1970-01-01T00:00:01.000Z");
    }

    proptest::proptest! {
        /// The time the uuid crate put in, for any millisecond a UUIDv7 can
        /// hold, whatever its random bits, in either case.
        #[test]
        fn a_uuid7_gives_back_its_time(ms in 0..(1_u64 << 48), rand in proptest::prelude::any::<[u8; 10]>()) {
            let id = uuid::Builder::from_unix_timestamp_millis(ms, &rand).into_uuid();
            let text = id.hyphenated().to_string();
            proptest::prop_assert_eq!(uuid7_ms(&text), Some(ms as i64));
            proptest::prop_assert_eq!(uuid7_ms(&text.to_uppercase()), Some(ms as i64));
            proptest::prop_assert_eq!(uuid7_time(&id), ms as i64);
        }

        /// A UUIDv7's text with one character changed has a time exactly
        /// when the uuid crate still reads it as a UUIDv7 of the RFC's variant.
        #[test]
        fn a_changed_character_is_judged_as_the_uuid_crate_judges_it(
            ms in 0..(1_u64 << 48),
            rand in proptest::prelude::any::<[u8; 10]>(),
            at in 0..36_usize,
            to in proptest::sample::select(b"0123456789abcdefABCDEFgz-{ ".to_vec()),
        ) {
            let mut text = uuid::Builder::from_unix_timestamp_millis(ms, &rand).into_uuid().to_string().into_bytes();
            text[at] = to;
            let text = String::from_utf8(text).unwrap();
            let v7 = uuid::Uuid::try_parse(&text)
                .is_ok_and(|u| u.get_version_num() == 7 && u.get_variant() == uuid::Variant::RFC4122);
            proptest::prop_assert_eq!(uuid7_ms(&text).is_some(), v7, "{}", text);
            if v7 {
                let parsed = uuid::Uuid::try_parse(&text).unwrap();
                let (secs, nanos) = parsed.get_timestamp().unwrap().to_unix();
                proptest::prop_assert_eq!(uuid7_ms(&text), Some((secs * 1000 + u64::from(nanos) / 1_000_000) as i64));
            }
        }
    }

    #[test]
    fn only_a_canonical_uuid7_has_a_time() {
        let v7 = uuid::Uuid::now_v7();
        let ms = uuid7_ms(&v7.to_string()).unwrap();
        assert!((now_ms() - ms).abs() < 5_000, "{ms}");
        assert_eq!(uuid7_ms(&uuid::Uuid::new_v4().to_string()), None, "a v4");
        assert_eq!(uuid7_ms(&v7.simple().to_string()), None, "no hyphens");
        assert_eq!(uuid7_ms(&v7.braced().to_string()), None, "braced");
        assert_eq!(uuid7_ms("req-1"), None);
        // Version 7, but an other variant (the 19th character).
        let mut text = v7.to_string().into_bytes();
        text[19] = b'c';
        assert_eq!(uuid7_ms(std::str::from_utf8(&text).unwrap()), None);
        // A non-hex digit in the time.
        text[19] = b'8';
        text[0] = b'g';
        assert_eq!(uuid7_ms(std::str::from_utf8(&text).unwrap()), None);
    }
}
