-- Audit rows: one per API request that reached a handler. `id` is Squad's own
-- id for the record (replay is idempotent on it); `request_id` may come from
-- the client and is not unique.
CREATE TABLE audit_log (
    id                  TEXT PRIMARY KEY NOT NULL,
    request_id          TEXT NOT NULL,
    ts_ms               BIGINT NOT NULL,
    key_id              TEXT,
    client_addr         TEXT,
    method              TEXT NOT NULL,
    route               TEXT NOT NULL,
    agent               TEXT,
    user_id             TEXT,
    conversation_id     TEXT,
    status              BIGINT NOT NULL,
    error_kind          TEXT,
    attempts            TEXT NOT NULL,
    provider            TEXT,
    model               TEXT,
    tokens_in           BIGINT NOT NULL,
    tokens_out          BIGINT NOT NULL,
    cost_usd            DOUBLE PRECISION,
    latency_ms          DOUBLE PRECISION NOT NULL,
    upstream_ms         DOUBLE PRECISION NOT NULL,
    overhead_ms         DOUBLE PRECISION NOT NULL,
    streamed            BOOLEAN NOT NULL,
    cancelled           BOOLEAN NOT NULL,
    prompt              TEXT,
    response            TEXT,
    metadata            TEXT
);
CREATE INDEX audit_log_ts ON audit_log (ts_ms);
CREATE INDEX audit_log_request ON audit_log (request_id);
CREATE INDEX audit_log_key ON audit_log (key_id, ts_ms);

-- API keys: only the SHA-256 of the key is kept.
CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY NOT NULL,
    name        TEXT NOT NULL,
    hash        TEXT NOT NULL,
    agents      TEXT,
    rpm         BIGINT,
    tpm         BIGINT,
    admin       BOOLEAN NOT NULL,
    created_ms  BIGINT NOT NULL,
    expires_ms  BIGINT,
    revoked_ms  BIGINT
);
CREATE INDEX api_keys_name ON api_keys (name);
