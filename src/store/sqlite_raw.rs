//! The audit batch insert on SQLite through its C API, on a connection sqlx
//! lends out (`lock_handle`). A prepared `INSERT` of 16 rows is stepped once
//! per 16 records (a single-row one takes the rest), with every text bound
//! where it lies (`SQLITE_STATIC`, no copy).
//! sqlx's query builder copied each string into an `Arc<str>` and SQLite then
//! copied it again, which cost about as much as SQLite's own b-tree work.
//!
//! Everything here runs while the caller holds the locked handle, so sqlx's
//! worker thread cannot touch the connection; a batch always ends its
//! transaction (COMMIT, or ROLLBACK on any error) before returning. The
//! private helpers take the handle on the same contract as `insert`: only
//! `insert` and `idle` are reachable from outside, and both are `unsafe`.

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
fn insert_sql(rows: usize) -> String {
    let values: Vec<String> = (0..rows)
        .map(|row| {
            let params: Vec<String> = (1..=26).map(|i| format!("?{}", row * 26 + i)).collect();
            format!("({})", params.join(", "))
        })
        .collect();
    format!("INSERT INTO audit_log ({COLUMNS}) VALUES {} ON CONFLICT (id) DO NOTHING", values.join(", "))
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

/// Inserts `rows` in one transaction, skipping ids already present; returns
/// how many were new.
///
/// # Safety
/// `db` must be an open connection that nothing else uses until this returns
/// (sqlx's `LockedSqliteHandle` held by the caller).
pub(super) unsafe fn insert(db: NonNull<ffi::sqlite3>, rows: &[RecordRef<'_>]) -> Result<u64, String> {
    // IMMEDIATE: take the write lock now (waiting out `busy_timeout`), not on
    // the first insert, where a reader's upgrade could deadlock.
    exec(db, c"BEGIN IMMEDIATE")?;
    let result = insert_rows(db, rows).and_then(|n| exec(db, c"COMMIT").map(|()| n));
    if result.is_err() {
        // Fails harmlessly when COMMIT already ended the transaction.
        let _ = exec(db, c"ROLLBACK");
    }
    result
}

/// Whether the connection is outside any transaction (as a pooled one must be).
///
/// # Safety
/// As for `insert`.
pub(super) unsafe fn idle(db: NonNull<ffi::sqlite3>) -> bool {
    // SAFETY: `db` is open and exclusively ours (the caller's contract).
    unsafe { ffi::sqlite3_get_autocommit(db.as_ptr()) != 0 }
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

fn insert_rows(db: NonNull<ffi::sqlite3>, rows: &[RecordRef<'_>]) -> Result<u64, String> {
    let full = rows.len() / ROWS_PER_STATEMENT * ROWS_PER_STATEMENT;
    let (many, rest) = rows.split_at(full);
    let mut inserted = 0;
    if !many.is_empty() {
        let statement = prepare(db, &INSERT_MANY)?;
        for chunk in many.chunks(ROWS_PER_STATEMENT) {
            inserted += step(db, &statement, chunk)?;
        }
    }
    if !rest.is_empty() {
        let statement = prepare(db, &INSERT_ONE)?;
        for row in rest {
            inserted += step(db, &statement, std::slice::from_ref(row))?;
        }
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
    // point into `rows`: every one is rebound before the next step, and the
    // statement is finalized before the batch can go.
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
        self.real(r.cost_usd)?;
        self.real(Some(r.latency_ms))?;
        self.real(Some(r.upstream_ms))?;
        self.real(Some(r.overhead_ms))?;
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

    fn real(&mut self, value: Option<f64>) -> Result<(), String> {
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
