#!/usr/bin/env bash
# What `audit.batch_size` costs, per store. For each round, each batch size
# (the order reversed every other round) and each store (SQLite; PostgreSQL
# too when DATABASE_URL names a server on this machine), starts a fresh Squad
# auditing with that batch size, warms it up, then sends a fixed rate for
# --duration seconds and reads, per request:
#   - bytes Squad passed to write calls (/proc/<pid>/io wchar), less what the
#     same load costs with auditing off: the audit log's own writes (SQLite's
#     WAL, then the checkpoint's copy into the database file);
#   - CPU of Squad's threads other than the serving ones (the audit writer's
#     above all), and of all of Squad;
#   - for PostgreSQL, CPU of every PostgreSQL server process (the writer's
#     backend, and time-paced work such as checkpoints and autovacuum);
#   - the share of records that missed the in-memory queue (it was full: the
#     writer fell behind) and were replayed from the journal instead.
# The counters are read once every record of the run is in the database
# (/health shows no journal backlog; at most 60 s after the load), so that
# work the writer put off is counted too.
# Prints the median over the rounds. CPU is in clock ticks (10 ms): at
# 15,000 req/s for 8 s, one tick is 0.08 µs a request.
# A batch is written when it is full or `audit.flush_interval` (200 ms) after
# it started, so at --rate R no batch holds more than about R / 5 rows.
# Load goes to 127.0.0.1 only. Needs oha (`cargo install oha --locked`).
#
# Usage: bench/audit_batch.sh [--sizes "256 1000"] [--rounds 3] [--rate 15000] [--duration 8]
set -euo pipefail
cd "$(dirname "$0")/.."

SIZES="256 1000" ROUNDS=3 RATE=15000 DURATION=8
while [ $# -gt 0 ]; do
  case "$1" in
    --sizes) SIZES=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
command -v oha >/dev/null || { echo "oha not found: cargo install oha --locked" >&2; exit 1; }

cargo build --release --quiet
BIN=$PWD/target/release/squad
UP_PORT=${UP_PORT:-18971} SQ_PORT=${SQ_PORT:-18972}
OUT=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$OUT"; }
trap cleanup EXIT
wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

PG_URL=${DATABASE_URL:-}
unset DATABASE_URL
STORES=(sqlite)
if [ -n "$PG_URL" ] && command -v psql >/dev/null; then
  STORES+=(postgres)
  PG_DB="squad_batch_$$"
  # The database name replaced, the query (sslmode=disable, host=/run/…) kept.
  PG_BASE=${PG_URL%%\?*}
  PG_BENCH_URL="${PG_BASE%/*}/$PG_DB${PG_URL#"$PG_BASE"}"
else
  echo "DATABASE_URL not set (or no psql): PostgreSQL skipped" >&2
fi

"$BIN" mock-upstream --port "$UP_PORT" >/dev/null 2>&1 & pids+=($!)
wait_port "$UP_PORT"
BODY='{"model":"groq/bench-model","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Say hello to the benchmark."}],"max_tokens":64}'
load() { # output-file seconds [extra oha args]
  local file=$1 secs=$2; shift 2
  oha --no-tui --output-format json -m POST -T application/json -d "$BODY" -z "${secs}s" -c 32 "$@" \
      "http://127.0.0.1:$SQ_PORT/v1/chat/completions" > "$file"
}
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Ticks of every thread but the serving ones (squad-core-N).
background_ticks() {
  for t in /proc/"$1"/task/*; do
    case $(cat "$t/comm" 2>/dev/null) in squad-core-*) ;; *) awk '{print $14 + $15}' "$t/stat" 2>/dev/null ;; esac
  done | awk '{s += $1} END {print s + 0}'
}
pg_ticks() {
  for p in $(pgrep -x postgres 2>/dev/null); do awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null; done | awk '{s += $1} END {print s + 0}'
}
wchar() { awk '/^wchar/ {print $2}' "/proc/$1/io"; }
# journaled written replayed, from /metrics.
audit_counts() {
  curl -s "http://127.0.0.1:$SQ_PORT/metrics" | awk '
    /^squad_audit_records_total\{stage="journaled"\}/ {j = $2}
    /^squad_audit_records_total\{stage="written"\}/ {w = $2}
    /^squad_audit_records_total\{stage="replayed"\}/ {r = $2}
    END {printf "%d %d %d\n", j, w, r}'
}
# Waits (at most 60 s) until every record is in the database: /health counts
# no journal segment holding records not known to be there.
drained() {
  for _ in $(seq 1 120); do
    curl -s "http://127.0.0.1:$SQ_PORT/health" | grep -q '"journal_backlog_segments":0[,}]' && return 0
    sleep 0.5
  done
  echo "the audit writer did not catch up within 60 s" >&2
}

measure() { # name store batch-size|off
  local dir=$OUT/$1 audit db
  mkdir -p "$dir"
  if [ "$3" = off ]; then audit="audit: { enabled: false }"; else audit="audit: { enabled: true, batch_size: $3 }"; fi
  db="sqlite://squad.db"
  if [ "$2" = postgres ]; then
    psql "$PG_URL" -qc "DROP DATABASE IF EXISTS $PG_DB" -qc "CREATE DATABASE $PG_DB" >/dev/null 2>&1
    db=$PG_BENCH_URL
  fi
  cat > "$dir/squad.yaml" <<YAML
server: { bind: 127.0.0.1, port: $SQ_PORT }
log: { level: warn }
auth: { mode: disabled }
limits: { enabled: false }
$audit
database: { url: "$db" }
providers:
  groq: { base_url: "http://127.0.0.1:$UP_PORT/openai/v1" }
YAML
  (cd "$dir" && GROQ_API_KEY=bench-key exec "$BIN" serve --config squad.yaml >/dev/null 2>&1) &
  local pid=$!
  wait_port "$SQ_PORT"
  load "$dir/warm.json" 3
  sleep 1
  [ "$3" = off ] || drained
  local w0 b0 s0 p0 a0
  w0=$(wchar $pid) b0=$(background_ticks $pid) s0=$(ticks $pid) p0=$(pg_ticks) a0=$(audit_counts)
  load "$dir/load.json" "$DURATION" -q "$RATE"
  sleep 1  # the last batch written
  [ "$3" = off ] || drained
  echo "$w0 $b0 $s0 $p0 $(wchar $pid) $(background_ticks $pid) $(ticks $pid) $(pg_ticks) $a0 $(audit_counts)" > "$dir/counters"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo "$2 $3 $dir" >> "$OUT/runs"
}

: > "$OUT/runs"
read -r -a sizes <<< "$SIZES"
for round in $(seq 1 "$ROUNDS"); do
  order=(off "${sizes[@]}")
  if [ $((round % 2)) -eq 0 ]; then
    order=(); for ((i = ${#sizes[@]} - 1; i >= 0; i--)); do order+=("${sizes[$i]}"); done; order+=(off)
  fi
  for store in "${STORES[@]}"; do
    for size in "${order[@]}"; do
      # Auditing off is the same whatever the store: measured once a round.
      if [ "$size" = off ] && [ "$store" != sqlite ]; then continue; fi
      echo "round $round: $store, batch $size…" >&2
      measure "r$round-$store-$size" "$store" "$size"
    done
  done
done
if [ -n "${PG_DB:-}" ]; then psql "$PG_URL" -qc "DROP DATABASE IF EXISTS $PG_DB" >/dev/null 2>&1 || true; fi

python3 - "$OUT/runs" "$(getconf CLK_TCK)" "$RATE" <<'PY'
import json, statistics, sys
runs, hz, rate = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rows = {}
for line in open(runs):
    store, size, d = line.split()
    w0, b0, s0, p0, w1, b1, s1, p1, j0, _, r0, j1, _, r1 = map(int, open(f"{d}/counters").read().split())
    o = json.load(open(f"{d}/load.json"))
    n = sum(o["statusCodeDistribution"].values())
    ok = o["statusCodeDistribution"].get("200", 0) / n
    tick = 1e6 / hz / n
    rows.setdefault((store, size), []).append(
        {"w": (w1 - w0) / n, "bg": (b1 - b0) * tick, "all": (s1 - s0) * tick, "pg": (p1 - p0) * tick, "ok": ok, "n": n,
         "replayed": 100 * (r1 - r0) / max(j1 - j0, 1)})
med = lambda xs: statistics.median(xs)
off_w = med([r["w"] for r in rows[("sqlite", "off")]])
print(f"\n== audit.batch_size at {rate} req/s (median of {len(rows[('sqlite', 'off')])} rounds)")
print(f"{'store':<9} {'batch':>6} {'req':>7} {'audit bytes/req':>16} {'background µs/req':>18} {'squad µs/req':>13} {'postgres µs/req':>16} {'replayed':>9}")
for (store, size), rs in rows.items():
    if size == "off":
        continue
    pg = f"{med([r['pg'] for r in rs]):16.2f}" if store == "postgres" else f"{'':>16}"
    print(f"{store:<9} {size:>6} {med([r['n'] for r in rs]):>7.0f} {med([r['w'] for r in rs]) - off_w:>16.0f} "
          f"{med([r['bg'] for r in rs]):>18.2f} {med([r['all'] for r in rs]):>13.2f} {pg} {med([r['replayed'] for r in rs]):>8.1f}%")
print("replayed: records that missed the full in-memory queue and were replayed from the journal")
print(f"auditing off: {off_w:.0f} bytes/req written (sockets), subtracted above; "
      f"Squad {med([r['all'] for r in rows[('sqlite', 'off')]]):.2f} µs/req")
bad = [k for k, rs in rows.items() if min(r["ok"] for r in rs) < 0.999]
if bad:
    print(f"warning: under 99.9% 200s in {bad}")
PY
