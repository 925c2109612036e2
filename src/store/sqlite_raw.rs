//! The audit batch insert on SQLite through its C API, on a connection of
//! the audit writer's own ([`Writer`]): opened once, with its statements
//! prepared once. A prepared `INSERT` of 16 rows is stepped once per 16
//! records (a single-row one takes the rest), with every text bound where it
//! lies (`SQLITE_STATIC`, no copy).
//! sqlx's query builder copied each string into an `Arc<str>` and SQLite then
//! copied it again, which cost about as much as SQLite's own b-tree work. A
//! connection borrowed from the pool for each batch cost more again: the
//! pool hands its idle connections out in turn, and a connection that finds
//! the database changed by another one discards its page cache and rereads
//! the pages it needs; and the statements were parsed anew for each batch.
//!
//! A batch always ends its transaction (COMMIT, or ROLLBACK on any error)
//! before returning; after an error the caller drops the writer, which closes
//! the connection, and opens a new one for the next batch.

use std::ffi::{CStr, c_char, c_int};
use std::ptr::{NonNull, null_mut};
use std::sync::LazyLock;

use libsqlite3_sys as ffi;

use super::audit::{COLUMNS, RecordRef};

/// Rows per statement for full chunks of a batch: one statement carrying 16
/// rows costs SQLite less than 16 statements (each one's start and halt),
/// and 16 × 26 parameters stay far below SQLite's limit of 32,766.
const ROWS_PER_STATEMENT: usize = 16;

/// The insert for `rows` rows, parameters numbered in `COLUMNS` order.
/// `OR IGNORE` rather than `ON CONFLICT (id) DO NOTHING`: the same for this
/// table (its only constraints are the id's uniqueness and NOT NULL on
/// columns every record fills), and a statement that can no longer abort
/// half-way needs no statement journal, which copied every page a
/// statement touched (2.4k instructions a record).
fn insert_sql(rows: usize) -> String {
    let values: Vec<String> = (0..rows)
        .map(|row| {
            let params: Vec<String> = (1..=26).map(|i| format!("?{}", row * 26 + i)).collect();
            format!("({})", params.join(", "))
        })
        .collect();
    format!("INSERT OR IGNORE INTO audit_log ({COLUMNS}) VALUES {}", values.join(", "))
}

static INSERT_ONE: LazyLock<String> = LazyLock::new(|| insert_sql(1));
static INSERT_MANY: LazyLock<String> = LazyLock::new(|| insert_sql(ROWS_PER_STATEMENT));

/// A prepared statement, finalized when dropped.
struct Statement(NonNull<ffi::sqlite3_stmt>);

impl Drop for Statement {
    fn drop(&mut self) {
        // SAFETY: prepared by `sqlite3_prepare_v2` on a connection that
        // outlives this value, and finalized only here.
        unsafe { ffi::sqlite3_finalize(self.0.as_ptr()) };
    }
}

/// The connection's last error message.
fn message(db: NonNull<ffi::sqlite3>) -> String {
    // SAFETY: `db` is an open connection; sqlite3_errmsg always returns a
    // NUL-terminated string owned by it, copied before anything else runs.
    unsafe { CStr::from_ptr(ffi::sqlite3_errmsg(db.as_ptr())).to_string_lossy().into_owned() }
}

fn check(db: NonNull<ffi::sqlite3>, rc: c_int, what: &str) -> Result<(), String> {
    if rc == ffi::SQLITE_OK { Ok(()) } else { Err(format!("{what}: {} (code {rc})", message(db))) }
}

fn exec(db: NonNull<ffi::sqlite3>, sql: &CStr) -> Result<(), String> {
    // SAFETY: `db` is open and exclusively ours; `sql` is NUL-terminated.
    let rc = unsafe { ffi::sqlite3_exec(db.as_ptr(), sql.as_ptr(), None, null_mut(), null_mut()) };
    check(db, rc, sql.to_str().unwrap_or("statement"))
}

/// The audit writer's connection and its prepared statements. Used by one
/// thread at a time (`&mut self`); dropping it finalizes the statements and
/// closes the connection.
pub(super) struct Writer {
    db: NonNull<ffi::sqlite3>,
    /// Finalized before `db` closes (see `Drop`).
    statements: Option<Statements>,
}

struct Statements {
    begin: Statement,
    commit: Statement,
    many: Statement,
    one: Statement,
}

// SAFETY: the connection is opened in SQLite's multi-thread mode (NOMUTEX):
// usable from any thread, one thread at a time, which `&mut self` guarantees;
// the statements belong to it and move with it.
unsafe impl Send for Writer {}

impl Writer {
    /// Opens `filename` (the pool's file: it exists and is migrated) in WAL
    /// mode with `synchronous = NORMAL`, as the pool's connections are,
    /// waiting up to `busy` for another connection's write lock.
    pub(super) fn open(filename: &std::path::Path, busy: std::time::Duration) -> Result<Self, String> {
        let name = filename.to_str().ok_or("the SQLite file name is not UTF-8")?;
        let name = std::ffi::CString::new(name).map_err(|_| "the SQLite file name contains a NUL byte")?;
        // As sqlx opens it: URI names allowed, a cache of its own.
        let flags = ffi::SQLITE_OPEN_READWRITE
            | ffi::SQLITE_OPEN_URI
            | ffi::SQLITE_OPEN_NOMUTEX
            | ffi::SQLITE_OPEN_PRIVATECACHE;
        let mut raw = null_mut();
        // SAFETY: `name` is NUL-terminated; `raw` receives the connection,
        // which SQLite allocates even when opening fails.
        let rc = unsafe { ffi::sqlite3_open_v2(name.as_ptr(), &mut raw, flags, std::ptr::null()) };
        let db = NonNull::new(raw).ok_or("sqlite3_open_v2: out of memory")?;
        let writer = Self { db, statements: None };
        check(db, rc, "open")?;
        let busy_ms = c_int::try_from(busy.as_millis()).unwrap_or(c_int::MAX);
        // SAFETY: `db` is open and ours.
        check(db, unsafe { ffi::sqlite3_busy_timeout(db.as_ptr(), busy_ms) }, "busy_timeout")?;
        exec(db, c"PRAGMA journal_mode = WAL")?;
        exec(db, c"PRAGMA synchronous = NORMAL")?;
        Ok(writer)
    }

    /// Inserts `rows` in one transaction, skipping ids already present;
    /// returns how many were new. After an error the transaction is rolled
    /// back, and the writer should be dropped.
    pub(super) fn insert(&mut self, rows: &[RecordRef<'_>]) -> Result<u64, String> {
        let db = self.db;
        if self.statements.is_none() {
            self.statements = Some(Statements {
                // IMMEDIATE: take the write lock now (waiting out the busy
                // timeout), not on the first insert, where a reader's upgrade
                // could deadlock.
                begin: prepare(db, "BEGIN IMMEDIATE")?,
                commit: prepare(db, "COMMIT")?,
                many: prepare(db, &INSERT_MANY)?,
                one: prepare(db, &INSERT_ONE)?,
            });
        }
        let Some(s) = &self.statements else { unreachable!("prepared just above") };
        run(db, &s.begin, "BEGIN")?;
        let result = insert_rows(db, s, rows).and_then(|n| run(db, &s.commit, "COMMIT").map(|()| n));
        // No binding may outlive `rows`.
        for statement in [&s.many, &s.one] {
            // SAFETY: a valid statement, reset after its last step.
            unsafe { ffi::sqlite3_clear_bindings(statement.0.as_ptr()) };
        }
        if result.is_err() {
            // Fails harmlessly when COMMIT already ended the transaction.
            let _ = exec(db, c"ROLLBACK");
        }
        result
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.statements = None;
        // SAFETY: every statement of this connection is finalized (just
        // above) and nothing else of it is open, so the close succeeds.
        let rc = unsafe { ffi::sqlite3_close(self.db.as_ptr()) };
        if rc != ffi::SQLITE_OK {
            tracing::warn!(code = rc, "the audit writer's SQLite connection did not close");
        }
    }
}

/// Steps a statement that returns no rows, once.
fn run(db: NonNull<ffi::sqlite3>, statement: &Statement, what: &str) -> Result<(), String> {
    // SAFETY: a valid statement with nothing to bind.
    let rc = unsafe { ffi::sqlite3_step(statement.0.as_ptr()) };
    let outcome = if rc == ffi::SQLITE_DONE { Ok(()) } else { Err(format!("{what}: {} (code {rc})", message(db))) };
    // SAFETY: the statement is valid.
    unsafe { ffi::sqlite3_reset(statement.0.as_ptr()) };
    outcome
}

fn prepare(db: NonNull<ffi::sqlite3>, sql: &str) -> Result<Statement, String> {
    let mut raw = null_mut();
    // SAFETY: `db` is open; SQLite reads `sql.len()` bytes of the statement;
    // `raw` receives the statement.
    let rc = unsafe {
        ffi::sqlite3_prepare_v2(db.as_ptr(), sql.as_ptr().cast::<c_char>(), sql.len() as c_int, &mut raw, null_mut())
    };
    check(db, rc, "prepare")?;
    Ok(Statement(NonNull::new(raw).ok_or("prepare returned no statement")?))
}

fn insert_rows(db: NonNull<ffi::sqlite3>, s: &Statements, rows: &[RecordRef<'_>]) -> Result<u64, String> {
    let full = rows.len() / ROWS_PER_STATEMENT * ROWS_PER_STATEMENT;
    let (many, rest) = rows.split_at(full);
    let mut inserted = 0;
    for chunk in many.chunks(ROWS_PER_STATEMENT) {
        inserted += step(db, &s.many, chunk)?;
    }
    for row in rest {
        inserted += step(db, &s.one, std::slice::from_ref(row))?;
    }
    Ok(inserted)
}

/// Binds `rows` (as many as the statement has rows of parameters) and steps
/// the statement once; returns how many rows were new.
fn step(db: NonNull<ffi::sqlite3>, statement: &Statement, rows: &[RecordRef<'_>]) -> Result<u64, String> {
    let mut binder = Binder { db, stmt: statement.0, index: 0 };
    for row in rows {
        binder.row(row)?;
    }
    // SAFETY: every parameter is bound, and every text bound refers to
    // `rows`, which outlive the step and the reset below.
    let rc = unsafe { ffi::sqlite3_step(statement.0.as_ptr()) };
    let outcome = if rc == ffi::SQLITE_DONE {
        // SAFETY: `db` is open.
        Ok(unsafe { ffi::sqlite3_changes(db.as_ptr()) } as u64)
    } else {
        Err(format!("insert: {} (code {rc})", message(db)))
    };
    // SAFETY: the statement is valid. Reset keeps the bindings, which still
    // point into `rows`: every one is rebound before the next step, and
    // `Writer::insert` clears them before the batch can go.
    unsafe { ffi::sqlite3_reset(statement.0.as_ptr()) };
    outcome
}

/// Binds one record's columns, in `COLUMNS` order.
struct Binder {
    db: NonNull<ffi::sqlite3>,
    stmt: NonNull<ffi::sqlite3_stmt>,
    index: c_int,
}

impl Binder {
    fn row(&mut self, r: &RecordRef<'_>) -> Result<(), String> {
        self.text(Some(r.id))?;
        self.text(Some(r.request_id))?;
        self.int(r.ts_ms)?;
        self.text(r.key_id)?;
        self.text(r.client_addr)?;
        self.text(Some(r.method))?;
        self.text(Some(r.route))?;
        self.text(r.agent)?;
        self.text(r.user_id)?;
        self.text(r.conversation_id)?;
        self.int(r.status)?;
        self.text(r.error_kind)?;
        self.text(Some(r.attempts))?;
        self.text(r.provider)?;
        self.text(r.model)?;
        self.int(r.tokens_in)?;
        self.int(r.tokens_out)?;
        self.real_or_null(r.cost_usd)?;
        self.real(r.latency_ms)?;
        self.real(r.upstream_ms)?;
        self.real(r.overhead_ms)?;
        // As sqlx stores a bool in SQLite: INTEGER 0 or 1.
        self.int(i64::from(r.streamed))?;
        self.int(i64::from(r.cancelled))?;
        self.text(r.prompt)?;
        self.text(r.response)?;
        self.text(r.metadata)
    }

    fn next(&mut self, rc: c_int) -> Result<(), String> {
        if rc == ffi::SQLITE_OK { Ok(()) } else { check(self.db, rc, &format!("bind column {}", self.index)) }
    }

    fn text(&mut self, value: Option<&str>) -> Result<(), String> {
        self.index += 1;
        let stmt = self.stmt.as_ptr();
        let rc = match value {
            // SAFETY: SQLITE_STATIC: SQLite reads the bytes in place until
            // the statement is reset, which happens while `value` still lives.
            // (An empty text points at a static "", not at a dangling pointer.)
            Some(s) => unsafe {
                let bytes = if s.is_empty() { c"".as_ptr() } else { s.as_ptr().cast::<c_char>() };
                ffi::sqlite3_bind_text64(
                    stmt,
                    self.index,
                    bytes,
                    s.len() as u64,
                    ffi::SQLITE_STATIC(),
                    ffi::SQLITE_UTF8 as u8,
                )
            },
            // SAFETY: a valid statement and parameter index.
            None => unsafe { ffi::sqlite3_bind_null(stmt, self.index) },
        };
        self.next(rc)
    }

    fn int(&mut self, value: i64) -> Result<(), String> {
        self.index += 1;
        // SAFETY: a valid statement and parameter index.
        let rc = unsafe { ffi::sqlite3_bind_int64(self.stmt.as_ptr(), self.index, value) };
        self.next(rc)
    }

    /// A NOT NULL column. SQLite stores NaN as NULL, which `OR IGNORE`
    /// would turn into a silently skipped row: refused here, loudly, instead
    /// (no record Squad makes has one).
    fn real(&mut self, value: f64) -> Result<(), String> {
        if value.is_nan() {
            self.index += 1;
            return Err(format!("bind column {}: NaN in a NOT NULL column", self.index));
        }
        self.real_or_null(Some(value))
    }

    /// A nullable column (NaN is stored as NULL, as SQLite stores it).
    fn real_or_null(&mut self, value: Option<f64>) -> Result<(), String> {
        self.index += 1;
        let stmt = self.stmt.as_ptr();
        // SAFETY: a valid statement and parameter index.
        let rc = match value {
            Some(v) => unsafe { ffi::sqlite3_bind_double(stmt, self.index, v) },
            None => unsafe { ffi::sqlite3_bind_null(stmt, self.index) },
        };
        self.next(rc)
    }
}
