//! The audit row and its queries: batched idempotent inserts, retention,
//! export and usage aggregation.

use serde::{Deserialize, Serialize};

use super::{Store, StoreError, on_db};

/// One API request, as kept in `audit_log` and in the journal (one JSON line).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct AuditRecord {
    /// Squad's own id for the record (UUIDv7): inserts are idempotent on it
    /// (through the unique index on `(ts_ms, id)`, the same for a replayed
    /// record, which keeps its time).
    pub id: String,
    pub request_id: String,
    /// When the request arrived: the time of `id`, in Unix milliseconds.
    pub ts_ms: i64,
    pub key_id: Option<String>,
    pub client_addr: Option<String>,
    pub method: String,
    pub route: String,
    pub agent: Option<String>,
    pub user_id: Option<String>,
    pub conversation_id: Option<String>,
    pub status: i64,
    pub error_kind: Option<String>,
    /// JSON array: `[{provider, model, outcome, status?, latency_ms}]`.
    pub attempts: String,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub cost_usd: Option<f64>,
    pub latency_ms: f64,
    pub upstream_ms: f64,
    pub overhead_ms: f64,
    pub streamed: bool,
    pub cancelled: bool,
    pub prompt: Option<String>,
    pub response: Option<String>,
    /// JSON object from the request's `metadata`.
    pub metadata: Option<String>,
}

/// A record's fields, borrowed: what an insert binds. Made from an
/// `AuditRecord`, or straight from a journal frame (`journal::Frame::record`)
/// without copying its texts out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RecordRef<'a> {
    pub id: &'a str,
    pub request_id: &'a str,
    pub ts_ms: i64,
    pub key_id: Option<&'a str>,
    pub client_addr: Option<&'a str>,
    pub method: &'a str,
    pub route: &'a str,
    pub agent: Option<&'a str>,
    pub user_id: Option<&'a str>,
    pub conversation_id: Option<&'a str>,
    pub status: i64,
    pub error_kind: Option<&'a str>,
    pub attempts: &'a str,
    pub provider: Option<&'a str>,
    pub model: Option<&'a str>,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub cost_usd: Option<f64>,
    pub latency_ms: f64,
    pub upstream_ms: f64,
    pub overhead_ms: f64,
    pub streamed: bool,
    pub cancelled: bool,
    pub prompt: Option<&'a str>,
    pub response: Option<&'a str>,
    pub metadata: Option<&'a str>,
}

impl RecordRef<'_> {
    /// Bytes in the record's texts, all of them.
    pub fn text_len(&self) -> usize {
        let opt = |t: Option<&str>| t.map_or(0, str::len);
        self.id.len()
            + self.request_id.len()
            + self.method.len()
            + self.route.len()
            + self.attempts.len()
            + opt(self.key_id)
            + opt(self.client_addr)
            + opt(self.agent)
            + opt(self.user_id)
            + opt(self.conversation_id)
            + opt(self.error_kind)
            + opt(self.provider)
            + opt(self.model)
            + opt(self.prompt)
            + opt(self.response)
            + opt(self.metadata)
    }

    pub fn to_record(&self) -> AuditRecord {
        let own = |t: Option<&str>| t.map(str::to_owned);
        AuditRecord {
            id: self.id.to_owned(),
            request_id: self.request_id.to_owned(),
            ts_ms: self.ts_ms,
            key_id: own(self.key_id),
            client_addr: own(self.client_addr),
            method: self.method.to_owned(),
            route: self.route.to_owned(),
            agent: own(self.agent),
            user_id: own(self.user_id),
            conversation_id: own(self.conversation_id),
            status: self.status,
            error_kind: own(self.error_kind),
            attempts: self.attempts.to_owned(),
            provider: own(self.provider),
            model: own(self.model),
            tokens_in: self.tokens_in,
            tokens_out: self.tokens_out,
            cost_usd: self.cost_usd,
            latency_ms: self.latency_ms,
            upstream_ms: self.upstream_ms,
            overhead_ms: self.overhead_ms,
            streamed: self.streamed,
            cancelled: self.cancelled,
            prompt: own(self.prompt),
            response: own(self.response),
            metadata: own(self.metadata),
        }
    }
}

pub(super) const COLUMNS: &str = "id, request_id, ts_ms, key_id, client_addr, method, route, agent, user_id, conversation_id, \
     status, error_kind, attempts, provider, model, tokens_in, tokens_out, cost_usd, latency_ms, upstream_ms, \
     overhead_ms, streamed, cancelled, prompt, response, metadata";

impl AuditRecord {
    pub fn borrowed(&self) -> RecordRef<'_> {
        RecordRef {
            id: &self.id,
            request_id: &self.request_id,
            ts_ms: self.ts_ms,
            key_id: self.key_id.as_deref(),
            client_addr: self.client_addr.as_deref(),
            method: &self.method,
            route: &self.route,
            agent: self.agent.as_deref(),
            user_id: self.user_id.as_deref(),
            conversation_id: self.conversation_id.as_deref(),
            status: self.status,
            error_kind: self.error_kind.as_deref(),
            attempts: &self.attempts,
            provider: self.provider.as_deref(),
            model: self.model.as_deref(),
            tokens_in: self.tokens_in,
            tokens_out: self.tokens_out,
            cost_usd: self.cost_usd,
            latency_ms: self.latency_ms,
            upstream_ms: self.upstream_ms,
            overhead_ms: self.overhead_ms,
            streamed: self.streamed,
            cancelled: self.cancelled,
            prompt: self.prompt.as_deref(),
            response: self.response.as_deref(),
            metadata: self.metadata.as_deref(),
        }
    }

    /// The record as JSON with `attempts` and `metadata` as JSON values, for export.
    pub fn to_export(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v["time"] = super::format_time(self.ts_ms).into();
        v["attempts"] = serde_json::from_str(&self.attempts).unwrap_or_default();
        if let Some(m) = &self.metadata {
            v["metadata"] = serde_json::from_str(m).unwrap_or_default();
        }
        v
    }
}

/// How `/v1/usage` groups rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    Provider,
    Model,
    Agent,
    Key,
}

impl GroupBy {
    fn expr(self) -> &'static str {
        match self {
            Self::Provider => "COALESCE(provider, '')",
            Self::Model => "COALESCE(provider, '') || '/' || COALESCE(model, '')",
            Self::Agent => "COALESCE(agent, '')",
            Self::Key => "COALESCE(key_id, '')",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct UsageRow {
    pub group: String,
    pub requests: i64,
    pub tokens_input: i64,
    pub tokens_output: i64,
    pub cost_usd: f64,
}

impl Store {
    /// Inserts `rows` in one transaction; rows already present (same `id`,
    /// and on SQLite the same `ts_ms`, as a replayed record has) are skipped,
    /// so replaying a journal twice changes nothing. Returns the number of
    /// new rows.
    pub async fn insert_audit(&self, rows: &[AuditRecord]) -> Result<u64, StoreError> {
        // Records from the writer are scrubbed at submit; these (replay,
        // tools) may not be.
        let scrubbed: Vec<AuditRecord> = rows
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r.scrub_nul();
                r
            })
            .collect();
        self.insert_scrubbed(&scrubbed.iter().map(AuditRecord::borrowed).collect::<Vec<_>>()).await
    }

    /// As `insert_audit`, for records already scrubbed (`scrub_nul`), as the
    /// audit writer's are (it reads them from their journal frames): no copies.
    pub async fn insert_scrubbed(&self, rows: &[RecordRef<'_>]) -> Result<u64, StoreError> {
        match &self.db {
            super::Db::Sqlite(_) => {
                if rows.is_empty() {
                    return Ok(0);
                }
                // The batch blocks its thread for as long as SQLite works on
                // it: on a multi-threaded runtime the worker's other tasks
                // move to another thread meanwhile.
                let run = || self.insert_sqlite(rows);
                match tokio::runtime::Handle::current().runtime_flavor() {
                    tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(run),
                    _ => run(),
                }
            }
            super::Db::Postgres(pool) => insert_postgres(pool, rows).await,
        }
    }

    /// As `insert_scrubbed`, for records believed not to be in the database
    /// yet: the audit writer's, each of which reaches its queue once (and a
    /// replay of the journal frames that missed the queue). On PostgreSQL
    /// they go in by `COPY … FROM STDIN (FORMAT binary)`, which costs the
    /// server well under half of what `INSERT … ON CONFLICT DO NOTHING` does
    /// (3.43 against 8.37 µs of its CPU a row in 1000-row batches,
    /// `bench/pg_copy.py`). `COPY` cannot skip a row that is there already: when the
    /// server refuses the batch (one of its rows was written before; or,
    /// say, a column type a newer migration changed), the batch goes again
    /// by `insert_scrubbed`, which skips such rows. A connection failure is
    /// returned as it is, not retried.
    pub async fn insert_fresh(&self, rows: &[RecordRef<'_>]) -> Result<u64, StoreError> {
        let super::Db::Postgres(pool) = &self.db else { return self.insert_scrubbed(rows).await };
        if rows.is_empty() {
            return Ok(0);
        }
        match copy_postgres(pool, rows).await {
            Ok(n) => Ok(n),
            Err(sqlx::Error::Database(e)) => {
                static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
                if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::warn!(error = %e, "an audit batch could not be copied; inserting it instead (logged once)");
                } else {
                    tracing::debug!(error = %e, "an audit batch could not be copied; inserting it instead");
                }
                insert_postgres(pool, rows).await
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes rows older than `before_ms`; returns how many.
    pub async fn prune_audit(&self, before_ms: i64) -> Result<u64, StoreError> {
        on_db!(self, pool, DB => Ok(sqlx::query("DELETE FROM audit_log WHERE ts_ms < $1")
            .bind(before_ms)
            .execute(pool)
            .await?
            .rows_affected()))
    }

    /// Rows with `since <= ts_ms < until`, oldest first, at most `limit`
    /// after the row `after` (`(ts_ms, id)` of the last row of the previous page).
    pub async fn audit_page(
        &self,
        since: i64,
        until: i64,
        after: Option<(i64, String)>,
        limit: i64,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let Cursor { from, to, after_ts, after_id } = Cursor::new((since, until), after);
        on_db!(self, pool, DB => Ok(sqlx::query_as::<DB, AuditRecord>(sqlx::AssertSqlSafe(PAGE.as_str()))
            .bind(from)
            .bind(to)
            .bind(after_ts)
            .bind(after_id.as_str())
            .bind(limit)
            .fetch_all(pool)
            .await?))
    }

    /// Records with this request id (clients may reuse ids), oldest first,
    /// at most `limit` after the row `after` (as `audit_page` pages). Two
    /// lookups, each through an index. A row whose request id Squad made
    /// has it as its id too: a UUIDv7, whose time is the row's `ts_ms`, so
    /// it is sought at that time (SQLite's only unique index is on
    /// `(ts_ms, id)`), give or take `ID_TIME_SLACK_MS` for rows written
    /// before the time was taken from the id. A request id that is no
    /// UUIDv7 was the client's, and only the second lookup can find it: the
    /// partial index `audit_log_request`, in page order (its condition is
    /// repeated word for word, so that SQLite sees the query may use it).
    pub async fn audit_by_request_page(
        &self,
        request_id: &str,
        after: Option<(i64, String)>,
        limit: i64,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        // An empty range when the id has no time: no such row.
        let times = super::uuid7_ms(request_id).map_or((0, -1), |ms| (ms - ID_TIME_SLACK_MS, ms + ID_TIME_SLACK_MS));
        let Cursor { from, to, after_ts, after_id } = Cursor::new(times, after);
        on_db!(self, pool, DB => Ok(sqlx::query_as::<DB, AuditRecord>(sqlx::AssertSqlSafe(BY_REQUEST.as_str()))
            .bind(from)
            .bind(to)
            .bind(request_id)
            .bind(request_id)
            .bind(after_ts)
            .bind(after_id.as_str())
            .bind(request_id)
            .bind(after_ts)
            .bind(after_ts)
            .bind(after_id.as_str())
            .bind(limit)
            .fetch_all(pool)
            .await?))
    }

    /// Every record with this request id, oldest first.
    pub async fn audit_by_request(&self, request_id: &str) -> Result<Vec<AuditRecord>, StoreError> {
        let mut rows = Vec::new();
        loop {
            let after = rows.last().map(|r: &AuditRecord| (r.ts_ms, r.id.clone()));
            let page = self.audit_by_request_page(request_id, after, 1000).await?;
            let done = page.len() < 1000;
            rows.extend(page);
            if done {
                return Ok(rows);
            }
        }
    }

    /// The rows of one data subject, oldest first, at most `limit` after the
    /// row `after` (`squad audit export --user-id`). No index serves it; the
    /// table is scanned, as befits a rare request.
    pub async fn audit_by_user_page(
        &self,
        subject: &Subject<'_>,
        after: Option<(i64, String)>,
        limit: i64,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let Cursor { from, after_ts, after_id, .. } = Cursor::new((i64::MIN, i64::MAX), after);
        on_db!(self, pool, DB => Ok(sqlx::query_as::<DB, AuditRecord>(sqlx::AssertSqlSafe(BY_USER.as_str()))
            .bind(subject.user_id)
            .bind(subject.key_id)
            .bind(from)
            .bind(after_ts)
            .bind(after_id.as_str())
            .bind(limit)
            .fetch_all(pool)
            .await?))
    }

    /// How many rows a data subject has.
    pub async fn audit_user_count(&self, subject: &Subject<'_>) -> Result<i64, StoreError> {
        on_db!(self, pool, DB => {
            let (n,): (i64,) =
                sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM audit_log WHERE {SUBJECT}")))
                    .bind(subject.user_id)
                    .bind(subject.key_id)
                    .fetch_one(pool)
                    .await?;
            Ok(n)
        })
    }

    /// Erases a data subject's personal data from their rows (`squad audit
    /// erase`): the prompt, the response, the metadata, the client address,
    /// the conversation id and the user id itself become NULL. What the row
    /// accounts for stays: time, key, route, agent, providers tried, model,
    /// status, tokens, cost and latencies, so usage and cost reports do not
    /// change. The row is kept, not deleted, so a replay of its record from a
    /// journal is still skipped as a duplicate. Returns the rows changed.
    pub async fn erase_user(&self, subject: &Subject<'_>) -> Result<u64, StoreError> {
        on_db!(self, pool, DB => Ok(sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE audit_log SET prompt = NULL, response = NULL, metadata = NULL, client_addr = NULL, \
             conversation_id = NULL, user_id = NULL WHERE {SUBJECT}"
        )))
        .bind(subject.user_id)
        .bind(subject.key_id)
        .execute(pool)
        .await?
        .rows_affected()))
    }

    pub async fn audit_count(&self) -> Result<i64, StoreError> {
        on_db!(self, pool, DB => {
            let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM audit_log").fetch_one(pool).await?;
            Ok(n)
        })
    }

    /// Requests, tokens and cost with `since <= ts_ms < until`, grouped.
    pub async fn usage(&self, since: i64, until: i64, group_by: GroupBy) -> Result<Vec<UsageRow>, StoreError> {
        let real = if self.dialect() == "postgres" { "DOUBLE PRECISION" } else { "REAL" };
        let sql = format!(
            "SELECT {g} AS \"group\", COUNT(*) AS requests, \
             CAST(COALESCE(SUM(tokens_in), 0) AS BIGINT) AS tokens_input, \
             CAST(COALESCE(SUM(tokens_out), 0) AS BIGINT) AS tokens_output, \
             CAST(COALESCE(SUM(cost_usd), 0) AS {real}) AS cost_usd \
             FROM audit_log WHERE ts_ms >= $1 AND ts_ms < $2 GROUP BY {g} ORDER BY cost_usd DESC, requests DESC",
            g = group_by.expr()
        );
        on_db!(self, pool, DB => Ok(sqlx::query_as::<DB, UsageRow>(sqlx::AssertSqlSafe(sql.as_str())).bind(since).bind(until).fetch_all(pool).await?))
    }
}

impl AuditRecord {
    fn texts_mut(&mut self) -> impl Iterator<Item = &mut String> {
        [&mut self.id, &mut self.request_id, &mut self.method, &mut self.route, &mut self.attempts].into_iter().chain(
            [
                &mut self.key_id,
                &mut self.client_addr,
                &mut self.agent,
                &mut self.user_id,
                &mut self.conversation_id,
                &mut self.error_kind,
                &mut self.provider,
                &mut self.model,
                &mut self.prompt,
                &mut self.response,
                &mut self.metadata,
            ]
            .into_iter()
            .flatten(),
        )
    }

    /// Replaces U+0000 with U+FFFD: PostgreSQL refuses it in text, and one
    /// refused row would fail its whole batch, again at every replay. Done to
    /// every record before it is journaled (`journal::encode` does it when
    /// it meets a NUL), so both dialects keep the same text.
    pub fn scrub_nul(&mut self) {
        for t in self.texts_mut() {
            if has_nul(t.as_bytes()) {
                *t = t.replace('\0', "\u{fffd}");
            }
        }
    }
}

/// Whether `bytes` holds a zero byte: eight bytes at a time, with no branch
/// per chunk (a NUL is rare, so the whole text is read anyway). Against
/// `contains(&0)`, which went byte by byte through the unaligned ends of each
/// of a record's dozen short texts, the check cost a record about 130
/// instructions less (callgrind). Journal encoding runs it on each text it
/// copies; `scrub_nul` on records that did not come through encoding.
pub(super) fn has_nul(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // Nonzero exactly when some byte of `w` is zero.
    let zero_byte = |w: u64| w.wrapping_sub(ONES) & !w & HIGHS;
    let (chunks, tail) = bytes.as_chunks::<8>();
    let found = chunks.iter().fold(0, |acc, &c| acc | zero_byte(u64::from_le_bytes(c)));
    found != 0 || tail.contains(&0)
}

/// How far a row's `ts_ms` may be from its id's time and still be found by
/// id. Squad takes a record's time from its id since migration 0004; before,
/// it read the clock again a few microseconds after making the id.
const ID_TIME_SLACK_MS: i64 = 1_000;

/// Where a page starts: the time range asked for, cut to begin at the
/// millisecond of `after`, the last row of the page before (see `PAGE`).
struct Cursor {
    from: i64,
    to: i64,
    after_ts: i64,
    after_id: String,
}

impl Cursor {
    fn new((from, to): (i64, i64), after: Option<(i64, String)>) -> Self {
        let (after_ts, after_id) = after.unwrap_or((i64::MIN, String::new()));
        Self { from: from.max(after_ts), to, after_ts, after_id }
    }
}

/// `Store::audit_page`'s query. A page starts at its cursor's millisecond
/// (`$1` is the later of `since` and the cursor's time), a bound the index
/// seeks to; only rows of that one millisecond are read and skipped. With
/// the cursor as `ts_ms > t OR (ts_ms = t AND id > i)` alone, each page read
/// the index from `since` up to its cursor: an export of n rows read about
/// n²/2000 index entries (four million rows had not finished in ten minutes).
static PAGE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT {COLUMNS} FROM audit_log WHERE ts_ms >= $1 AND ts_ms < $2 AND (ts_ms > $3 OR id > $4) \
         ORDER BY ts_ms, id LIMIT $5"
    )
});

/// `Store::audit_by_request_page`'s query; each half starts at the cursor's
/// millisecond, as `PAGE` does.
static BY_REQUEST: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT {COLUMNS} FROM audit_log WHERE ts_ms >= $1 AND ts_ms <= $2 AND id = $3 AND request_id = $4 \
         AND (ts_ms > $5 OR id > $6) \
         UNION ALL SELECT {COLUMNS} FROM audit_log WHERE request_id = $7 AND request_id <> id \
         AND ts_ms >= $8 AND (ts_ms > $9 OR id > $10) \
         ORDER BY ts_ms, id LIMIT $11"
    )
});

/// A data subject: a user id as one API key's clients use it, or as every
/// key's (`key_id: None`). User ids are chosen by each key's clients, so with
/// keys on the same user id under two keys is two people.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub user_id: &'a str,
    pub key_id: Option<&'a str>,
}

/// A subject's rows: `$1` the user id, `$2` the key id or NULL for any key.
const SUBJECT: &str = "user_id = $1 AND ($2 IS NULL OR key_id = $2)";

/// `Store::audit_by_user_page`'s query.
static BY_USER: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT {COLUMNS} FROM audit_log WHERE {SUBJECT} AND ts_ms >= $3 AND (ts_ms > $4 OR id > $5) \
         ORDER BY ts_ms, id LIMIT $6"
    )
});

/// The rows in `COPY`'s binary format: a header, then each row as its field
/// count and each field as its length (−1 for NULL) and its bytes (a text
/// as its UTF-8, big-endian integers and floats, a byte for a boolean), in
/// `COLUMNS` order; then −1. The types are the table's (`BIGINT`, `DOUBLE
/// PRECISION`, `BOOLEAN`, `TEXT`): `COPY` does no conversion.
fn copy_binary(rows: &[RecordRef<'_>]) -> Vec<u8> {
    struct Out(Vec<u8>);
    impl Out {
        /// A field: its length and bytes, or −1 for NULL. Frames hold at
        /// most 4 GiB in all, and the body limit far less: a field fits an
        /// i32 length.
        fn field(&mut self, bytes: Option<&[u8]>) {
            match bytes {
                Some(b) => {
                    self.0.extend_from_slice(&(b.len() as i32).to_be_bytes());
                    self.0.extend_from_slice(b);
                }
                None => self.0.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        fn text(&mut self, t: Option<&str>) {
            self.field(t.map(str::as_bytes));
        }
        fn int(&mut self, v: i64) {
            self.field(Some(&v.to_be_bytes()));
        }
        fn real(&mut self, v: Option<f64>) {
            self.field(v.map(f64::to_be_bytes).as_ref().map(|b| &b[..]));
        }
        fn flag(&mut self, v: bool) {
            self.field(Some(&[u8::from(v)]));
        }
    }
    let texts: usize = rows.iter().map(RecordRef::text_len).sum();
    // 26 lengths, 8 numbers, 2 flags and the field count a row.
    let mut out = Out(Vec::with_capacity(19 + 2 + texts + rows.len() * (2 + 26 * 4 + 8 * 8 + 2)));
    out.0.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    out.0.extend_from_slice(&0i32.to_be_bytes()); // flags: no OIDs
    out.0.extend_from_slice(&0i32.to_be_bytes()); // no header extension
    for r in rows {
        out.0.extend_from_slice(&26i16.to_be_bytes());
        out.text(Some(r.id));
        out.text(Some(r.request_id));
        out.int(r.ts_ms);
        out.text(r.key_id);
        out.text(r.client_addr);
        out.text(Some(r.method));
        out.text(Some(r.route));
        out.text(r.agent);
        out.text(r.user_id);
        out.text(r.conversation_id);
        out.int(r.status);
        out.text(r.error_kind);
        out.text(Some(r.attempts));
        out.text(r.provider);
        out.text(r.model);
        out.int(r.tokens_in);
        out.int(r.tokens_out);
        out.real(r.cost_usd);
        out.real(Some(r.latency_ms));
        out.real(Some(r.upstream_ms));
        out.real(Some(r.overhead_ms));
        out.flag(r.streamed);
        out.flag(r.cancelled);
        out.text(r.prompt);
        out.text(r.response);
        out.text(r.metadata);
    }
    out.0.extend_from_slice(&(-1i16).to_be_bytes());
    out.0
}

/// `rows` in one `COPY` (one transaction: all or none).
async fn copy_postgres(pool: &sqlx::PgPool, rows: &[RecordRef<'_>]) -> Result<u64, sqlx::Error> {
    use sqlx::postgres::PgPoolCopyExt;
    static COPY: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| format!("COPY audit_log ({COLUMNS}) FROM STDIN (FORMAT binary)"));
    let data = copy_binary(rows);
    let mut copy = pool.copy_in_raw(COPY.as_str()).await?;
    copy.send(data.as_slice()).await?;
    copy.finish().await
}

/// One statement whatever the batch size: each column goes as one array
/// parameter and `unnest` turns the arrays back into rows (26 parameters a
/// row cost more than the insert itself). `ON CONFLICT` names no index: the
/// table's one unique index is on `(ts_ms, id)` since migration 0004, and
/// on `id` before it, and the same statement skips a replayed row in both
/// (so a Squad started before its migration has run still writes).
async fn insert_postgres(pool: &sqlx::PgPool, rows: &[RecordRef<'_>]) -> Result<u64, StoreError> {
    fn column<'r, T>(rows: &[RecordRef<'r>], f: impl Fn(&RecordRef<'r>) -> T) -> Vec<T> {
        rows.iter().map(f).collect()
    }
    static INSERT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "INSERT INTO audit_log ({COLUMNS}) SELECT * FROM unnest(\
             $1::text[], $2::text[], $3::int8[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], \
             $9::text[], $10::text[], $11::int8[], $12::text[], $13::text[], $14::text[], $15::text[], $16::int8[], \
             $17::int8[], $18::float8[], $19::float8[], $20::float8[], $21::float8[], $22::bool[], $23::bool[], \
             $24::text[], $25::text[], $26::text[]) ON CONFLICT DO NOTHING"
        )
    });
    let done = sqlx::query(sqlx::AssertSqlSafe(INSERT.as_str()))
        .bind(column(rows, |r| r.id))
        .bind(column(rows, |r| r.request_id))
        .bind(column(rows, |r| r.ts_ms))
        .bind(column(rows, |r| r.key_id))
        .bind(column(rows, |r| r.client_addr))
        .bind(column(rows, |r| r.method))
        .bind(column(rows, |r| r.route))
        .bind(column(rows, |r| r.agent))
        .bind(column(rows, |r| r.user_id))
        .bind(column(rows, |r| r.conversation_id))
        .bind(column(rows, |r| r.status))
        .bind(column(rows, |r| r.error_kind))
        .bind(column(rows, |r| r.attempts))
        .bind(column(rows, |r| r.provider))
        .bind(column(rows, |r| r.model))
        .bind(column(rows, |r| r.tokens_in))
        .bind(column(rows, |r| r.tokens_out))
        .bind(column(rows, |r| r.cost_usd))
        .bind(column(rows, |r| r.latency_ms))
        .bind(column(rows, |r| r.upstream_ms))
        .bind(column(rows, |r| r.overhead_ms))
        .bind(column(rows, |r| r.streamed))
        .bind(column(rows, |r| r.cancelled))
        .bind(column(rows, |r| r.prompt))
        .bind(column(rows, |r| r.response))
        .bind(column(rows, |r| r.metadata))
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}

impl Store {
    /// The audit batch through SQLite's C API, on the audit writer's own
    /// connection (see `sqlite_raw`).
    fn insert_sqlite(&self, rows: &[RecordRef<'_>]) -> Result<u64, StoreError> {
        let Some((file, busy)) = &self.sqlite_file else {
            return Err(StoreError::Invalid("not a SQLite store".into()));
        };
        let mut conn = self.audit_sqlite.lock().unwrap_or_else(|p| p.into_inner());
        let writer = match &mut *conn {
            Some(writer) => writer,
            None => conn.insert(
                super::sqlite_raw::Writer::open(file, *busy).map_err(|e| StoreError::Db(sqlx::Error::Protocol(e)))?,
            ),
        };
        let result = writer.insert(rows);
        if result.is_err() {
            // A new connection for the next batch, whatever went wrong with this one.
            *conn = None;
        }
        result.map_err(|e| StoreError::Db(sqlx::Error::Protocol(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new directory for a test's SQLite files.
    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("squad-{name}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    proptest::proptest! {
        #[test]
        fn the_nul_search_agrees_with_a_plain_one(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80)) {
            proptest::prop_assert_eq!(has_nul(&bytes), bytes.contains(&0));
        }

        #[test]
        fn a_nul_is_found_wherever_it_is(len in 1..80_usize, at in 0..80_usize, fill in 1..=255_u8) {
            let mut bytes = vec![fill; len];
            bytes[at % len] = 0;
            proptest::prop_assert!(has_nul(&bytes));
            bytes[at % len] = fill;
            proptest::prop_assert!(!has_nul(&bytes));
        }
    }

    /// The SQLite writer binds a parameter only when its value changed since
    /// the same slot's last step in the batch. Records whose fields come
    /// from small pools (so that values repeat, turn NULL, turn empty and
    /// come back from row to row), inserted in batches of every shape (full
    /// 16-row statements, single rows, both), read back exactly as written.
    #[test]
    fn sqlite_rows_read_back_as_written_whatever_repeats_between_them() {
        use proptest::prelude::*;
        let dir = temp_dir("binds");
        let url = format!("sqlite://{}", dir.join("binds.db").display());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _entered = rt.enter();
        let store = Store::open(&crate::config::DatabaseConfig { url, ..Default::default() }).unwrap();
        rt.block_on(store.migrate()).unwrap();
        let text = || prop_oneof![Just(None), Just(Some(String::new())), "[ab]{1,2}".prop_map(Some)];
        let int = || prop_oneof![Just(0_i64), Just(200), Just(-5), Just(i64::MAX)];
        let real = || prop_oneof![Just(0.0_f64), Just(1.5), Just(-2.25), Just(1e300)];
        let record = (
            (text(), text(), text(), text(), text(), text(), text(), text()),
            (int(), int(), int(), proptest::option::of(real()), real(), real(), real()),
            (any::<bool>(), any::<bool>(), "[ab]{1,2}", "[ab]{1,2}", "[ab]{1,2}", text(), text()),
        )
            .prop_map(
                |((key_id, client_addr, agent, user_id, conversation_id, error_kind, provider, model), ints, more)| {
                    let (status, tokens_in, tokens_out, cost_usd, latency_ms, upstream_ms, overhead_ms) = ints;
                    let (streamed, cancelled, method, route, attempts, prompt, response) = more;
                    AuditRecord {
                        key_id,
                        client_addr,
                        method,
                        route,
                        agent,
                        user_id,
                        conversation_id,
                        status,
                        error_kind,
                        attempts,
                        provider,
                        model,
                        tokens_in,
                        tokens_out,
                        cost_usd,
                        latency_ms,
                        upstream_ms,
                        overhead_ms,
                        streamed,
                        cancelled,
                        prompt,
                        response,
                        metadata: None,
                        ..AuditRecord::default()
                    }
                },
            );
        // Rows, and where the batches split them.
        let case = (proptest::collection::vec(record, 1..70), proptest::collection::vec(0..70_usize, 0..3));
        let cases = std::cell::Cell::new(0_i64);
        proptest!(ProptestConfig::with_cases(48), |((mut rows, cuts) in case)| {
            // Each case in a time range of its own.
            let base = cases.get() * 1_000_000;
            cases.set(cases.get() + 1);
            for (i, r) in rows.iter_mut().enumerate() {
                r.id = format!("{base}-{i:03}");
                r.request_id = r.id.clone();
                r.ts_ms = base + i as i64;
                r.metadata = r.prompt.clone();
            }
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % rows.len()).collect();
            cuts.sort_unstable();
            let mut start = 0;
            for end in cuts.into_iter().chain([rows.len()]) {
                let inserted = rt.block_on(store.insert_audit(&rows[start..end])).unwrap();
                prop_assert_eq!(inserted, (end - start) as u64);
                start = end;
            }
            let read = rt.block_on(store.audit_page(base, base + 1_000_000, None, 1000)).unwrap();
            prop_assert_eq!(read, rows);
        });
        rt.block_on(store.close());
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A new SQLite file gets 16 KiB pages; a file made with another page
    /// size keeps it, and the audit writer's own connection works on either.
    #[tokio::test]
    async fn new_sqlite_files_get_16k_pages_and_old_ones_keep_theirs() {
        let dir = temp_dir("pages");
        let old = dir.join("old.db");
        {
            use sqlx::ConnectOptions;
            let options = sqlx::sqlite::SqliteConnectOptions::new().filename(&old).create_if_missing(true);
            let mut conn = options.page_size(4096).connect().await.unwrap();
            sqlx::query("CREATE TABLE t (x)").execute(&mut conn).await.unwrap();
        }
        for (file, pages) in [(dir.join("new.db"), 16 * 1024), (old, 4096)] {
            let url = format!("sqlite://{}", file.display());
            let store = Store::open(&crate::config::DatabaseConfig { url, ..Default::default() }).unwrap();
            store.migrate().await.unwrap();
            let super::super::Db::Sqlite(pool) = &store.db else { unreachable!("a sqlite URL") };
            let size: i64 = sqlx::query_scalar("PRAGMA page_size").fetch_one(pool).await.unwrap();
            assert_eq!(size, pages, "{}", file.display());
            let rows: Vec<AuditRecord> =
                (0..40).map(|i| crate::store::writer::tests::record(&format!("{i:02}"))).collect();
            assert_eq!(store.insert_audit(&rows).await.unwrap(), 40);
            assert_eq!(store.audit_page(i64::MIN, i64::MAX, None, 100).await.unwrap().len(), 40);
            store.close().await;
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Both halves of the lookup by request id go through an index on
    /// SQLite: the time-and-id index (a range of times, then the id within
    /// it), and the partial request-id index (which SQLite uses only when the
    /// query repeats its condition).
    #[tokio::test]
    async fn sqlite_finds_a_request_through_two_indexes_without_a_scan() {
        let dir = temp_dir("plan");
        let url = format!("sqlite://{}", dir.join("plan.db").display());
        let store = Store::open(&crate::config::DatabaseConfig { url, ..Default::default() }).unwrap();
        store.migrate().await.unwrap();
        let super::super::Db::Sqlite(pool) = &store.db else { unreachable!("a sqlite URL") };
        let plan: Vec<(i64, i64, i64, String)> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {}", *BY_REQUEST)))
                .bind(0_i64)
                .bind(2000_i64)
                .bind("r")
                .bind("r")
                .bind(0_i64)
                .bind("")
                .bind("r")
                .bind(0_i64)
                .bind(0_i64)
                .bind("")
                .bind(1000_i64)
                .fetch_all(pool)
                .await
                .unwrap();
        let steps: Vec<&str> = plan.iter().map(|p| p.3.as_str()).collect();
        assert!(steps.iter().any(|s| s.contains("USING INDEX audit_log_time (ts_ms>? AND ts_ms<?)")), "{steps:?}");
        assert!(
            steps.iter().any(|s| s.contains("USING INDEX audit_log_request (request_id=? AND ts_ms>?)")),
            "{steps:?}"
        );
        assert!(!steps.iter().any(|s| s.contains("TEMP B-TREE")), "rows come in page order, unsorted: {steps:?}");
        assert!(!steps.iter().any(|s| s.starts_with("SCAN audit_log")), "no full scan: {steps:?}");
        store.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    /// SQLite's work for one page (its virtual machine's steps), and the
    /// rows it returned; `params` are bound to `$1`, `$2`, … in order.
    fn page_steps(file: &std::path::Path, sql: &str, params: &[Result<i64, String>]) -> (usize, i32) {
        use libsqlite3_sys as ffi;
        let name = std::ffi::CString::new(file.to_str().unwrap()).unwrap();
        let (mut db, mut stmt) = (std::ptr::null_mut(), std::ptr::null_mut());
        // SAFETY: plain use of SQLite's C API on a connection and a statement
        // of this function's own, finalized and closed before it returns;
        // texts are copied (SQLITE_TRANSIENT).
        unsafe {
            assert_eq!(ffi::sqlite3_open_v2(name.as_ptr(), &mut db, ffi::SQLITE_OPEN_READONLY, std::ptr::null()), 0);
            let rc =
                ffi::sqlite3_prepare_v2(db, sql.as_ptr().cast(), sql.len() as i32, &mut stmt, std::ptr::null_mut());
            assert_eq!(rc, 0);
            for (i, p) in params.iter().enumerate() {
                let rc = match p {
                    Ok(v) => ffi::sqlite3_bind_int64(stmt, i as i32 + 1, *v),
                    Err(t) => ffi::sqlite3_bind_text(
                        stmt,
                        i as i32 + 1,
                        t.as_ptr().cast(),
                        t.len() as i32,
                        ffi::SQLITE_TRANSIENT(),
                    ),
                };
                assert_eq!(rc, 0);
            }
            let mut rows = 0;
            while ffi::sqlite3_step(stmt) == ffi::SQLITE_ROW {
                rows += 1;
            }
            let steps = ffi::sqlite3_stmt_status(stmt, ffi::SQLITE_STMTSTATUS_VM_STEP, 0);
            ffi::sqlite3_finalize(stmt);
            ffi::sqlite3_close(db);
            (rows, steps)
        }
    }

    /// A page of an export, or of a request id's rows, costs the same near
    /// the end of a large log as near its start: the query seeks to the
    /// page's cursor instead of reading every row before it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_page_costs_the_same_wherever_it_starts() {
        let dir = temp_dir("seek");
        let file = dir.join("seek.db");
        let url = format!("sqlite://{}", file.display());
        let store = Store::open(&crate::config::DatabaseConfig { url, ..Default::default() }).unwrap();
        store.migrate().await.unwrap();
        let rows: Vec<AuditRecord> = (0..20_000)
            .map(|i| {
                let mut r = crate::store::writer::tests::record(&format!("{i:05}"));
                r.request_id = "reused".into();
                r.ts_ms = 1_000_000 + i / 4;
                r
            })
            .collect();
        for chunk in rows.chunks(1000) {
            store.insert_audit(chunk).await.unwrap();
        }
        store.close().await;
        // The parameters the store binds, in order.
        fn export(r: &AuditRecord) -> Vec<Result<i64, String>> {
            let c = Cursor::new((0, i64::MAX), Some((r.ts_ms, r.id.clone())));
            vec![Ok(c.from), Ok(c.to), Ok(c.after_ts), Err(c.after_id), Ok(100)]
        }
        fn by_request(r: &AuditRecord) -> Vec<Result<i64, String>> {
            // A client's request id: the first half's range is empty.
            let c = Cursor::new((0, -1), Some((r.ts_ms, r.id.clone())));
            let id = || Err(r.request_id.clone());
            vec![Ok(c.from), Ok(c.to), id(), id(), Ok(c.after_ts), Err(c.after_id.clone())]
                .into_iter()
                .chain([id(), Ok(c.after_ts), Ok(c.after_ts), Err(c.after_id), Ok(100)])
                .collect()
        }
        type Params = fn(&AuditRecord) -> Vec<Result<i64, String>>;
        let cases: [(&str, &str, Params); 2] = [("export", &PAGE, export), ("by request", &BY_REQUEST, by_request)];
        for (what, sql, params) in cases {
            let (early_rows, early) = page_steps(&file, sql, &params(&rows[1_001]));
            let (late_rows, late) = page_steps(&file, sql, &params(&rows[19_001]));
            assert_eq!((early_rows, late_rows), (100, 100), "{what}");
            assert!(late < early * 2, "{what}: {early} steps for a page near the start, {late} near the end");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    /// The binary `COPY` itself, not its fallback (which would hide a
    /// malformed buffer behind an INSERT): every field, NULLs included,
    /// reads back as written; a row already stored makes the server refuse
    /// the whole batch (what `insert_fresh` falls back on).
    #[tokio::test]
    async fn postgres_takes_the_copy_buffer_as_it_is() {
        let Ok(base) = std::env::var("DATABASE_URL") else {
            eprintln!("\n*** SKIPPED postgres_takes_the_copy_buffer_as_it_is: DATABASE_URL is not set ***\n");
            return;
        };
        let admin = sqlx::PgPool::connect(&base).await.expect("DATABASE_URL is set but PostgreSQL does not answer");
        let name = format!("squad_copy_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&admin).await.unwrap();
        let url = format!("{}/{name}", base.rsplit_once('/').unwrap().0);
        let store = Store::open(&crate::config::DatabaseConfig { url, ..Default::default() }).unwrap();
        store.migrate().await.unwrap();
        let super::super::Db::Postgres(pool) = &store.db else { panic!("a PostgreSQL store") };
        let full = AuditRecord {
            key_id: Some("k".into()),
            client_addr: Some("::1".into()),
            agent: Some("dev".into()),
            user_id: Some("u".into()),
            conversation_id: Some("c".into()),
            status: 502,
            error_kind: Some("upstream_error".into()),
            provider: Some("groq".into()),
            model: Some("m".into()),
            tokens_in: i64::MAX,
            tokens_out: -1,
            cost_usd: Some(1.5e-5),
            latency_ms: 12.75,
            upstream_ms: 12.5,
            overhead_ms: 0.25,
            streamed: true,
            cancelled: true,
            prompt: Some("user: é 😀\n".into()),
            response: Some(String::new()),
            metadata: Some(r#"{"a":1}"#.into()),
            ..crate::store::writer::tests::record("full")
        };
        let bare = crate::store::writer::tests::record("bare");
        let rows = [full.borrowed(), bare.borrowed()];
        assert_eq!(copy_postgres(pool, &rows).await.unwrap(), 2);
        assert_eq!(store.audit_by_request("req-full").await.unwrap(), vec![full.clone()]);
        assert_eq!(store.audit_by_request("req-bare").await.unwrap(), vec![bare.clone()]);
        let again = copy_postgres(pool, &rows[1..]).await;
        assert!(matches!(again, Err(sqlx::Error::Database(_))), "a stored row: {again:?}");
        assert_eq!(store.audit_count().await.unwrap(), 2, "the refused batch left nothing");
        store.close().await;
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
            .execute(&admin)
            .await;
    }
}
