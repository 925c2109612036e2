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

/// Parameters per row: the columns of `COLUMNS`.
const PARAMS: usize = 26;

/// The insert for `rows` rows, parameters numbered in `COLUMNS` order.
/// `OR IGNORE` rather than `ON CONFLICT DO NOTHING`: the same for this
/// table (its only constraints are the uniqueness of `(ts_ms, id)` and NOT NULL on
/// columns every record fills), and a statement that can no longer abort
/// half-way needs no statement journal, which copied every page a
/// statement touched (2.4k instructions a record).
fn insert_sql(rows: usize) -> String {
    let values: Vec<String> = (0..rows)
        .map(|row| {
            let params: Vec<String> = (1..=PARAMS).map(|i| format!("?{}", row * PARAMS + i)).collect();
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

/// What a parameter holds. Texts compare by content, reals by their bits.
#[derive(Clone, Copy, PartialEq)]
enum Bound<'r> {
    Null,
    Int(i64),
    Real(u64),
    Text(&'r str),
}

/// Both statements hold only NULLs when a batch starts (never bound yet, or
/// cleared by the last batch), which is where each one's `Bound`s start.
fn insert_rows<'r>(db: NonNull<ffi::sqlite3>, s: &Statements, rows: &[RecordRef<'r>]) -> Result<u64, String> {
    let full = rows.len() / ROWS_PER_STATEMENT * ROWS_PER_STATEMENT;
    let (many, rest) = rows.split_at(full);
    let mut inserted = 0;
    let mut bound = vec![Bound::Null; ROWS_PER_STATEMENT * PARAMS];
    for chunk in many.chunks(ROWS_PER_STATEMENT) {
        inserted += step(db, &s.many, &mut bound, chunk)?;
    }
    let bound = &mut bound[..PARAMS];
    bound.fill(Bound::Null);
    for row in rest {
        inserted += step(db, &s.one, bound, std::slice::from_ref(row))?;
    }
    Ok(inserted)
}

/// Binds `rows` (as many as the statement has rows of parameters) and steps
/// the statement once; returns how many rows were new. `bound` is what the
/// statement's parameters hold (from its last step in this batch): a
/// parameter that already holds its value is left alone. Most columns repeat
/// from row to row (NULLs, method, route, status, provider, model…), and a
/// bind cost SQLite over a hundred instructions, more than the comparison
/// (`Binder::row` says which columns are worth comparing). Measured with
/// callgrind: SQLite's bind functions went from about 3.1k to 1.4k
/// instructions a row, the binder's own work from 0.5k to 1.4k: 0.7k net.
fn step<'r>(
    db: NonNull<ffi::sqlite3>,
    statement: &Statement,
    bound: &mut [Bound<'r>],
    rows: &[RecordRef<'r>],
) -> Result<u64, String> {
    let mut binder = Binder { db, stmt: statement.0, index: 0, bound };
    for row in rows {
        binder.row(row)?;
    }
    // SAFETY: every parameter is bound, and every text bound refers to
    // `rows` or to rows bound earlier in the batch, all of which outlive the
    // step and the reset below (`Writer::insert` clears the bindings before
    // the batch can go).
    let rc = unsafe { ffi::sqlite3_step(statement.0.as_ptr()) };
    let outcome = if rc == ffi::SQLITE_DONE {
        // SAFETY: `db` is open.
        Ok(unsafe { ffi::sqlite3_changes(db.as_ptr()) } as u64)
    } else {
        Err(format!("insert: {} (code {rc})", message(db)))
    };
    // SAFETY: the statement is valid. Reset keeps the bindings, which still
    // point into the batch's rows: the next step rebinds each one or keeps
    // it (the same value, from a row that still lives), and
    // `Writer::insert` clears them before the batch can go.
    unsafe { ffi::sqlite3_reset(statement.0.as_ptr()) };
    outcome
}

/// Binds one record's columns, in `COLUMNS` order.
struct Binder<'b, 'r> {
    db: NonNull<ffi::sqlite3>,
    stmt: NonNull<ffi::sqlite3_stmt>,
    index: c_int,
    /// What each parameter of `stmt` holds.
    bound: &'b mut [Bound<'r>],
}

impl<'r> Binder<'_, 'r> {
    fn row(&mut self, r: &RecordRef<'r>) -> Result<(), String> {
        // Columns that differ from row to row are bound without comparing
        // (ids, times, prompt and response); the rest only when they change.
        const CHANGES: bool = false;
        const REPEATS: bool = true;
        let text = |t: Option<&'r str>| t.map_or(Bound::Null, Bound::Text);
        self.bind(Bound::Text(r.id), CHANGES)?;
        self.bind(Bound::Text(r.request_id), CHANGES)?;
        self.bind(Bound::Int(r.ts_ms), CHANGES)?;
        self.bind(text(r.key_id), REPEATS)?;
        self.bind(text(r.client_addr), REPEATS)?;
        self.bind(Bound::Text(r.method), REPEATS)?;
        self.bind(Bound::Text(r.route), REPEATS)?;
        self.bind(text(r.agent), REPEATS)?;
        self.bind(text(r.user_id), REPEATS)?;
        self.bind(text(r.conversation_id), REPEATS)?;
        self.bind(Bound::Int(r.status), REPEATS)?;
        self.bind(text(r.error_kind), REPEATS)?;
        self.bind(Bound::Text(r.attempts), REPEATS)?;
        self.bind(text(r.provider), REPEATS)?;
        self.bind(text(r.model), REPEATS)?;
        self.bind(Bound::Int(r.tokens_in), REPEATS)?;
        self.bind(Bound::Int(r.tokens_out), REPEATS)?;
        // NaN is stored as NULL, as SQLite stores it.
        self.bind(r.cost_usd.map_or(Bound::Null, |c| Bound::Real(c.to_bits())), REPEATS)?;
        for ms in [r.latency_ms, r.upstream_ms, r.overhead_ms] {
            // A NOT NULL column: SQLite would store NaN as NULL, which `OR
            // IGNORE` would turn into a silently skipped row. Refused here,
            // loudly, instead (no record Squad makes has one).
            if ms.is_nan() {
                return Err(format!("bind column {}: NaN in a NOT NULL column", self.index + 1));
            }
            self.bind(Bound::Real(ms.to_bits()), CHANGES)?;
        }
        // As sqlx stores a bool in SQLite: INTEGER 0 or 1.
        self.bind(Bound::Int(i64::from(r.streamed)), REPEATS)?;
        self.bind(Bound::Int(i64::from(r.cancelled)), REPEATS)?;
        self.bind(text(r.prompt), CHANGES)?;
        self.bind(text(r.response), CHANGES)?;
        self.bind(text(r.metadata), REPEATS)
    }

    /// Binds `value` to the next parameter, unless `repeats` and the
    /// parameter already holds it; `bound` follows what every parameter holds.
    fn bind(&mut self, value: Bound<'r>, repeats: bool) -> Result<(), String> {
        self.index += 1;
        let slot = self.index as usize - 1;
        if repeats && self.bound[slot] == value {
            return Ok(());
        }
        let (stmt, index) = (self.stmt.as_ptr(), self.index);
        // SAFETY: a valid statement and parameter index. SQLITE_STATIC:
        // SQLite reads a text's bytes in place until the parameter is bound
        // again or cleared, which happens while the batch's rows, `value`
        // among them, still live. (An empty text points at a static "", not
        // at a dangling pointer.)
        let rc = unsafe {
            match value {
                Bound::Null => ffi::sqlite3_bind_null(stmt, index),
                Bound::Int(v) => ffi::sqlite3_bind_int64(stmt, index, v),
                Bound::Real(bits) => ffi::sqlite3_bind_double(stmt, index, f64::from_bits(bits)),
                Bound::Text(s) => {
                    let bytes = if s.is_empty() { c"".as_ptr() } else { s.as_ptr().cast::<c_char>() };
                    let (len, utf8) = (s.len() as u64, ffi::SQLITE_UTF8 as u8);
                    ffi::sqlite3_bind_text64(stmt, index, bytes, len, ffi::SQLITE_STATIC(), utf8)
                }
            }
        };
        if rc != ffi::SQLITE_OK {
            return check(self.db, rc, &format!("bind column {index}"));
        }
        self.bound[slot] = value;
        Ok(())
    }
}
