#!/usr/bin/env bash
# PostgreSQL's own CPU per audit row, with the audit table as it was before
# migration 0004 (primary key on id, index on ts_ms) and as 0004 leaves it (one
# unique index on (ts_ms, id), ids compared bytewise), each also with ids
# under ICU's en-US collation where the server has it (a database whose
# default collation is a language's, as many production databases' is).
#
# Each round, for each variant in turn (the order reversed every other
# round): empty the table, checkpoint, then --batches statements of 256 rows (the writer's batch size until it became 1000)
# each, `INSERT … SELECT … ON CONFLICT DO NOTHING` as Squad's writer sends
# them (rows made by the server from generate_series, the same for every
# variant), in one session whose on-CPU time is read from the server's
# /proc/<pid>/schedstat before and after. synchronous_commit is off for the
# session so that the figure is CPU, not waiting for the disk. Prints each
# variant's median µs per row and every round's figure.
#
# Needs psql and a PostgreSQL server on this machine (its backend's /proc
# entry is read) at DATABASE_URL; works in a scratch database it drops.
# Usage: bench/pg_insert.sh [--rounds 5] [--batches 400]
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=5
BATCHES=400
while [[ $# -gt 0 ]]; do
  case $1 in
    --rounds) ROUNDS=$2; shift 2 ;;
    --batches) BATCHES=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
: "${DATABASE_URL:?DATABASE_URL must name a PostgreSQL server on this machine}"

DB="squad_pg_insert_$$"
BASE_URL="${DATABASE_URL%/*}"
URL="$BASE_URL/$DB"
WORK=$(mktemp -d)
cleanup() {
  psql -q "$DATABASE_URL" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
psql -q "$DATABASE_URL" -c "CREATE DATABASE $DB" >/dev/null

# One schema per variant, each made by the real migration files.
schema() { # name, last migration, collation for id and request_id (or "")
  {
    echo "CREATE SCHEMA $1; SET search_path TO $1;"
    for f in migrations/postgres/*.sql; do
      n=$(basename "$f" | cut -c1-4)
      [[ $((10#$n)) -le $2 ]] && cat "$f"
    done
    if [[ -n $3 ]]; then
      echo "ALTER TABLE audit_log ALTER COLUMN id TYPE TEXT COLLATE \"$3\", ALTER COLUMN request_id TYPE TEXT COLLATE \"$3\";"
      echo "REINDEX TABLE audit_log;"
    fi
  } | psql -q -v ON_ERROR_STOP=1 "$URL" >/dev/null
}
VARIANTS=(before_0004 after_0004)
schema before_0004 3 ""
schema after_0004 4 ""
if [[ -n $(psql -At "$URL" -c "SELECT 1 FROM pg_collation WHERE collname = 'en-US-x-icu'") ]]; then
  schema before_0004_en_us 3 en-US-x-icu
  schema after_0004_en_us 4 en-US-x-icu
  VARIANTS+=(before_0004_en_us after_0004_en_us)
fi
psql -q "$URL" -c "CREATE SEQUENCE public.batch_seq" >/dev/null

# The script of one round of one variant.
for v in "${VARIANTS[@]}"; do
  {
    echo "SET synchronous_commit = off; SET search_path TO $v;"
    echo "TRUNCATE audit_log; CHECKPOINT;"
    echo "SELECT pg_backend_pid() AS pid \\gset"
    echo "\\setenv PID :pid"
    echo "\\! cut -d' ' -f1 /proc/\$PID/schedstat > $WORK/start"
    for ((i = 0; i < BATCHES; i++)); do
      cat <<'SQL'
INSERT INTO audit_log SELECT r.id, r.id, r.ms, 'key_0123456789abcdef', '127.0.0.1', 'POST', '/v1/chat/completions',
  NULL, NULL, NULL, 200, NULL, '[{"provider":"groq","model":"openai/gpt-oss-20b","outcome":"ok","latency_ms":1.2}]',
  'groq', 'openai/gpt-oss-20b', 12, 34, 0.0001, 1.2, 1.0, 0.2, false, false,
  '[{"role":"user","content":"Say hello to the squad, please."}]', 'Hello from the simulated upstream.', NULL
FROM (SELECT 1780000000000 + nextval('public.batch_seq') AS ms) b, generate_series(1, 256) g,
  LATERAL (SELECT b.ms, lpad(to_hex(b.ms), 12, '0') || '-7abc-8def-' || lpad(to_hex(g), 12, '0') AS id) r
ON CONFLICT DO NOTHING;
SQL
    done
    echo "\\! cut -d' ' -f1 /proc/\$PID/schedstat > $WORK/end"
  } > "$WORK/$v.sql"
done

declare -A FIGURES
for ((r = 0; r < ROUNDS; r++)); do
  order=("${VARIANTS[@]}")
  if ((r % 2)); then
    for ((i = 0, j = ${#order[@]} - 1; i < j; i++, j--)); do t=${order[i]}; order[i]=${order[j]}; order[j]=$t; done
  fi
  for v in "${order[@]}"; do
    psql -q -v ON_ERROR_STOP=1 "$URL" -f "$WORK/$v.sql" >/dev/null
    rows=$(psql -At "$URL" -c "SELECT COUNT(*) FROM $v.audit_log")
    [[ $rows -eq $((BATCHES * 256)) ]] || { echo "$v: $rows rows, expected $((BATCHES * 256))" >&2; exit 1; }
    us=$(awk -v a="$(cat "$WORK/start")" -v b="$(cat "$WORK/end")" -v n="$rows" 'BEGIN { printf "%.2f", (b - a) / 1000 / n }')
    FIGURES[$v]="${FIGURES[$v]:-} $us"
  done
done

printf '%-20s %12s   %s\n' variant "median µs/row" "rounds"
for v in "${VARIANTS[@]}"; do
  median=$(tr ' ' '\n' <<<"${FIGURES[$v]}" | grep . | sort -n | awk '{a[NR] = $1} END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }')
  printf '%-20s %12s  %s\n' "$v" "$median" "${FIGURES[$v]}"
done
