-- One unique index, on (ts_ms, id), instead of two: the primary key's index
-- on id and the index on ts_ms, as SQLite's migration 0004 did. Every time
-- query (export, usage, retention) reads it in the order it wants, and
-- replay stays idempotent: a replayed record has the same time and id as the
-- row it repeats (`ON CONFLICT (ts_ms, id) DO NOTHING`). A row is still found
-- by id alone: Squad's ids are UUIDv7s whose time is the record's `ts_ms`,
-- so a lookup by id seeks that millisecond. Each audit insert saves a b-tree
-- update.
-- Ids (and request ids, which are compared with them) compare bytewise
-- (`COLLATE "C"`), as SQLite compares them: the export
-- order is the same in both dialects, and a database whose default collation
-- is a language's (en_US.UTF-8, say) does not pay a locale-aware comparison
-- at each step of every insert's index descent. Only the indexes are
-- rebuilt; the table is not rewritten.
ALTER TABLE audit_log DROP CONSTRAINT audit_log_pkey;
DROP INDEX IF EXISTS audit_log_ts;
DROP INDEX IF EXISTS audit_log_request;
ALTER TABLE audit_log ALTER COLUMN id TYPE TEXT COLLATE "C",
    ALTER COLUMN request_id TYPE TEXT COLLATE "C";
CREATE UNIQUE INDEX audit_log_time ON audit_log (ts_ms, id);
CREATE INDEX audit_log_request ON audit_log (request_id, ts_ms, id) WHERE request_id <> id;
