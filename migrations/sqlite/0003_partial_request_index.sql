-- A record takes the request id as its own id when Squad made the request id
-- (a UUIDv7: no other request has it), so such a row is found through the
-- primary key. Only rows whose two ids differ (the client chose the request
-- id, which it may reuse) need this index, which every audit insert paid for
-- (2,100 instructions a record on SQLite). By request id, then in export
-- order, so that a request id reused many times reads back page by page.
DROP INDEX IF EXISTS audit_log_request;
CREATE INDEX audit_log_request ON audit_log (request_id, ts_ms, id) WHERE request_id <> id;
