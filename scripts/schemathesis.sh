#!/usr/bin/env bash
# Fuzzes the API from its own OpenAPI document: starts `squad serve --demo`
# (auth off, providers on an in-process simulated upstream) on a free port of
# 127.0.0.1, runs schemathesis against /openapi.json, stops squad, and exits
# non-zero on any failure: a 5xx, a status code or content type the document
# does not list, or a response body that does not match its schema.
#
# Usage: ./scripts/schemathesis.sh [extra schemathesis args]
# Env:   MAX_EXAMPLES (default 40 per operation), MAX_TIME (seconds, default 240).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

version=4.32.5
venv=target/schemathesis-venv
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -qF "$version"; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "schemathesis==$version"
fi

cargo build --quiet --bin squad

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"
# squad's working directory: its SQLite file and audit journal go here.
run_dir=target/schemathesis-run
rm -rf "$run_dir"
mkdir -p "$run_dir"
(cd "$run_dir" && exec "$root/target/debug/squad" serve --demo --bind 127.0.0.1 --port "$port" >squad.log 2>&1) &
squad_pid=$!
stop_squad() {
    kill "$squad_pid" 2>/dev/null || true
    wait "$squad_pid" 2>/dev/null || true
}
trap stop_squad EXIT

for _ in $(seq 1 100); do
    if curl -fsS "$base/health/ready" >/dev/null 2>&1; then
        break
    fi
    if ! kill -0 "$squad_pid" 2>/dev/null; then
        echo "squad exited before it was ready; its log:" >&2
        cat "$run_dir/squad.log" >&2
        exit 1
    fi
    sleep 0.2
done
curl -fsS "$base/health/ready" >/dev/null

# From squad's directory, so schemathesis's own cache stays out of the tree.
cd "$run_dir"
"$root/$venv/bin/schemathesis" run "$base/openapi.json" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --max-examples "${MAX_EXAMPLES:-40}" \
    --max-time "${MAX_TIME:-240}" \
    --request-timeout 20 \
    --workers 2 \
    --generation-database none \
    --report junit --report-dir report \
    "$@"
