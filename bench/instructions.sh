#!/usr/bin/env bash
# CPU cost per request in instructions, counted by callgrind: unlike
# throughput, the count does not move with the load on a shared machine, so it
# compares two builds (or audit variants) exactly. Starts the simulated
# upstream and Squad under callgrind (instrumentation off), warms up with 500
# requests, then counts 2,000 through /v1/chat/completions, for auditing off,
# to SQLite, and to PostgreSQL when DATABASE_URL is set. Load goes to
# 127.0.0.1 only. Needs valgrind and oha (`cargo install oha --locked`).
#
# Usage: bench/instructions.sh [--requests 2000]
# CALLGRIND_OPTS adds options to callgrind's (say `--cache-sim=yes`, for
# cache misses per function beside the instructions).
# The annotated profiles stay in the printed directory (callgrind_annotate).
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS=2000
while [ $# -gt 0 ]; do
  case "$1" in
    --requests) REQUESTS=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
command -v oha >/dev/null || { echo "oha not found: cargo install oha --locked" >&2; exit 1; }
command -v valgrind >/dev/null || { echo "valgrind not found" >&2; exit 1; }
# DATABASE_URL would override the file's database: each variant names its own.
PG_URL=${DATABASE_URL:-}
unset DATABASE_URL

# Line tables only, so the profiles name source lines; same code as release.
export CARGO_PROFILE_RELEASE_DEBUG=line-tables-only
CARGO_TARGET_DIR=target/instructions cargo build --release --quiet
BIN=$PWD/target/instructions/release/squad
OUT=$(mktemp -d)
UP_PORT=${UP_PORT:-18941} SQ_PORT=${SQ_PORT:-18942}
BODY='{"model":"groq/bench-model","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Say hello to the benchmark."}],"max_tokens":64}'
URL="http://127.0.0.1:$SQ_PORT/v1/chat/completions"

"$BIN" mock-upstream --port "$UP_PORT" >/dev/null 2>&1 & UP=$!
trap 'kill $UP 2>/dev/null || true' EXIT

wait_port() { for _ in $(seq 1 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.2; done; echo "port $1 never opened" >&2; exit 1; }

count() { # name, audit/database YAML
  local dir=$OUT/$1
  mkdir -p "$dir"
  cat > "$dir/squad.yaml" <<YAML
auth: { mode: disabled }
$2
server: { bind: 127.0.0.1, port: $SQ_PORT }
log: { level: info }
limits: { enabled: false }
providers:
  groq: { base_url: "http://127.0.0.1:$UP_PORT/openai/v1" }
YAML
  # `exec`: $! must be valgrind itself, for callgrind_control and the SIGINT.
  (cd "$dir" && GROQ_API_KEY=bench-key exec valgrind --tool=callgrind ${CALLGRIND_OPTS:-} --instr-atstart=no \
    --callgrind-out-file="$dir/callgrind.out" "$BIN" serve --config "$dir/squad.yaml" >/dev/null 2>"$dir/valgrind.log") &
  local vg=$!
  wait_port "$SQ_PORT"
  oha --no-tui -n 500 -c 8 -m POST -T application/json -d "$BODY" "$URL" >/dev/null
  callgrind_control -i on "$vg" >/dev/null 2>&1
  oha --no-tui -n "$REQUESTS" -c 8 -m POST -T application/json -d "$BODY" "$URL" >/dev/null
  # Past `audit.flush_interval` (200 ms): the last audit batch is written, and counted.
  sleep 1
  callgrind_control -i off "$vg" >/dev/null 2>&1
  kill -INT "$vg"; wait "$vg" || true
  local total
  total=$(callgrind_annotate "$dir/callgrind.out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1}')
  printf '%-10s %12d instructions/request\n' "$1" $((total / REQUESTS))
  if [ "$1" = sqlite ] && [ ! -s "$dir/squad.db" ]; then echo "the sqlite variant wrote no squad.db" >&2; exit 1; fi
}

echo "profiles in $OUT"
count off "audit: { enabled: false }"
count sqlite "audit: { enabled: true }
database: { url: \"sqlite://squad.db\" }"
if [ -n "$PG_URL" ]; then
  count postgres "audit: { enabled: true }
database: { url: \"$PG_URL\" }"
fi
