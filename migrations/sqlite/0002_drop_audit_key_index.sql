-- No query reads audit rows by key: `/v1/usage?group_by=key` scans a time
-- range (audit_log_ts) and groups. The index only cost every audit insert a
-- third b-tree update.
DROP INDEX IF EXISTS audit_log_key;
