-- One unique index, on (ts_ms, id), instead of two: the primary key's index
-- on id and the index on ts_ms. Every time query (export, usage, retention)
-- reads it in the order it wants, and replay stays idempotent: a replayed
-- record has the same time and id as the row it repeats (`INSERT OR IGNORE`).
-- A row is still found by id alone: Squad's ids are UUIDv7s whose time is
-- the record's `ts_ms`, so a lookup by id seeks that millisecond. Each audit
-- insert saves a b-tree update (SQLite's work a record went from 10.2k to
-- 8.2k instructions, WAL writes included).
-- SQLite cannot drop a primary key, so the table is rebuilt: every audit row
-- is copied once, at the first start after the upgrade.
CREATE TABLE audit_log_new (
    id                  TEXT NOT NULL,
    request_id          TEXT NOT NULL,
    ts_ms               INTEGER NOT NULL,
    key_id              TEXT,
    client_addr         TEXT,
    method              TEXT NOT NULL,
    route               TEXT NOT NULL,
    agent               TEXT,
    user_id             TEXT,
    conversation_id     TEXT,
    status              INTEGER NOT NULL,
    error_kind          TEXT,
    attempts            TEXT NOT NULL,
    provider            TEXT,
    model               TEXT,
    tokens_in           INTEGER NOT NULL,
    tokens_out          INTEGER NOT NULL,
    cost_usd            REAL,
    latency_ms          REAL NOT NULL,
    upstream_ms         REAL NOT NULL,
    overhead_ms         REAL NOT NULL,
    streamed            INTEGER NOT NULL,
    cancelled           INTEGER NOT NULL,
    prompt              TEXT,
    response            TEXT,
    metadata            TEXT
);
INSERT INTO audit_log_new SELECT * FROM audit_log ORDER BY ts_ms, id;
DROP TABLE audit_log;
ALTER TABLE audit_log_new RENAME TO audit_log;
CREATE UNIQUE INDEX audit_log_time ON audit_log (ts_ms, id);
CREATE INDEX audit_log_request ON audit_log (request_id, ts_ms, id) WHERE request_id <> id;
