#!/usr/bin/env bash
# Audit-log overhead benchmark. Builds in release mode, starts the simulated
# upstream (zero latency) and three Squad instances in front of it — auditing
# off, auditing to SQLite, auditing to PostgreSQL (when DATABASE_URL names a
# server) — and sends each the same load in one run, alternating:
#   1. a fixed rate (default 1000 req/s, --rounds rounds of --duration s):
#      added p50 / p99 latency vs audit off;
#   2. saturation (--sat-rounds rounds of --sat-duration s): throughput vs
#      audit off. The variants' order is reversed every other round (off,
#      sqlite, postgres, then postgres, sqlite, off), so a drift in the
#      machine's speed during the run weighs on every variant alike; each
#      round's loss is against audit off in the same round, and the median
#      of those is reported beside the loss of the means: on a shared machine
#      single rounds spread by several percent either way.
#   3. paired (--paired-rounds rounds of --paired-duration s): each audited
#      variant loaded at the same time as auditing off (32 connections each),
#      so that a change in the machine's speed reaches both alike; what the
#      variant's Squad (and PostgreSQL) spent in CPU per request is compared
#      with auditing off's in the same round. The difference is far steadier
#      than throughput between rounds (about ±0.5 µs/req standard error over
#      12 rounds, against several percent for saturation), and it gives an
#      implied loss: the same share of Squad's CPU at saturation, as part of
#      the whole machine's CPU per request then (two cores, the load
#      generator and upstream included). Pairs, not all variants at once:
#      three at once put so many busy threads on two CPUs that PostgreSQL's
#      processes spent 3.5 times their CPU per request of the saturation
#      rounds. Even a pair reads high for PostgreSQL: its processes' CPU
#      includes work paced by time, not by requests (checkpoints, WAL writer,
#      autovacuum of the growing table), here shared by about half the
#      requests of a saturation round; its saturation figures are the ones
#      to compare. The implied loss counts only Squad's (and PostgreSQL's)
#      CPU: where auditing makes the rest of the machine work more per
#      request too, it reads low.
#   The saturation rounds also read the whole machine's busy CPU per request
#   (/proc/stat) and split it into Squad's, PostgreSQL's and the rest's (load
#   generator, upstream, kernel); the loss that busy time implies should
#   agree with the measured one.
# Targets (issue 5): <= 10% throughput loss and <= 0.1 ms added p50.
# Needs oha (`cargo install oha --locked`). Load goes to 127.0.0.1 only.
#
# Usage: bench/audit.sh [--rate 1000] [--duration 10] [--rounds 2] [--sat-duration 5] [--sat-rounds 8]
#                       [--paired-duration 6] [--paired-rounds 12] [--audit-options 'batch_size: 256']
# SQUAD_BIN=path runs that build instead of building this checkout.
# --audit-options: more `audit:` settings for the audited variants (YAML flow
# mapping entries), to measure a setting against auditing off.
set -euo pipefail
cd "$(dirname "$0")/.."

RATE=1000 DURATION=10 CONNS=50 SAT_CONNS=64 ROUNDS=2 SAT_DURATION=5 SAT_ROUNDS=8 PAIRED_DURATION=6 PAIRED_ROUNDS=12
AUDIT_ON="audit: { enabled: true }"
while [ $# -gt 0 ]; do
  case "$1" in
    --rate) RATE=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --sat-duration) SAT_DURATION=$2; shift 2 ;;
    --sat-rounds) SAT_ROUNDS=$2; shift 2 ;;
    --paired-duration) PAIRED_DURATION=$2; shift 2 ;;
    --paired-rounds) PAIRED_ROUNDS=$2; shift 2 ;;
    --audit-options) AUDIT_ON="audit: { enabled: true, $2 }"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
command -v oha >/dev/null || { echo "oha not found: cargo install oha --locked" >&2; exit 1; }

# SQUAD_BIN runs a build made elsewhere (to compare two builds on one
# machine) instead of building this checkout.
if [ -n "${SQUAD_BIN:-}" ]; then
  BIN=$(realpath "$SQUAD_BIN")
else
  cargo build --release --quiet
  BIN=$PWD/target/release/squad
fi
UP_PORT=${UP_PORT:-18911}
OUT=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$OUT"; }
trap cleanup EXIT
wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

start_squad() { # name port audit-yaml
  mkdir -p "$OUT/$1"
  cat > "$OUT/$1/squad.yaml" <<YAML
server: { bind: 127.0.0.1, port: $2 }
log: { level: warn }
auth: { mode: disabled }
limits: { enabled: false }
$3
providers:
  groq: { base_url: "http://127.0.0.1:$UP_PORT/openai/v1" }
YAML
  # DATABASE_URL would override the file's database: each variant names its own.
  (cd "$OUT/$1" && GROQ_API_KEY=bench-key exec env -u DATABASE_URL "$BIN" serve --config squad.yaml >/dev/null 2>&1) &
  pids+=($!)
  echo $! > "$OUT/$1/pid"
  wait_port "$2"
}

"$BIN" mock-upstream --port "$UP_PORT" 2>/dev/null & pids+=($!)
wait_port "$UP_PORT"
VARIANTS=(off sqlite)
start_squad off 18912 "audit: { enabled: false }"
start_squad sqlite 18913 "$AUDIT_ON
database: { url: \"sqlite://squad.db\" }"
PG_DB=""
if [ -n "${DATABASE_URL:-}" ] && command -v psql >/dev/null; then
  PG_DB="squad_bench_$$"
  psql "$DATABASE_URL" -qc "CREATE DATABASE $PG_DB" >/dev/null
  # The database name replaced, the query (sslmode=disable, host=/run/…) kept.
  PG_BASE=${DATABASE_URL%%\?*}
  PG_URL="${PG_BASE%/*}/$PG_DB${DATABASE_URL#"$PG_BASE"}"
  start_squad postgres 18914 "$AUDIT_ON
database: { url: \"$PG_URL\" }"
  VARIANTS+=(postgres)
else
  echo "DATABASE_URL not set (or no psql): PostgreSQL variant skipped" >&2
fi
port_of() { case $1 in off) echo 18912 ;; sqlite) echo 18913 ;; postgres) echo 18914 ;; esac; }

BODY='{"model":"groq/bench-model","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Say hello to the benchmark."}],"max_tokens":64}'
load() { # name port extra-args...
  local name=$1 port=$2; shift 2
  oha --no-tui --output-format json -m POST -T application/json -d "$BODY" "$@" \
      "http://127.0.0.1:$port/v1/chat/completions" > "$OUT/$name.json"
}
# CPU time (clock ticks) of a variant's Squad, of its serving threads
# (squad-core-N) alone, for postgres of every PostgreSQL server process too,
# and of the whole machine (every CPU's busy time, /proc/stat: load
# generator, upstream and kernel included): "squad serving db machine". The
# rest of Squad's time is its background threads': the audit writer's above all.
cpu_ticks() {
  local pid squad serving db=0
  pid=$(cat "$OUT/$1/pid")
  squad=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  serving=$(for t in /proc/"$pid"/task/*; do
    case $(cat "$t/comm" 2>/dev/null) in squad-core-*) awk '{print $14 + $15}' "$t/stat" 2>/dev/null ;; esac
  done | awk '{s += $1} END {print s + 0}')
  if [ "$1" = postgres ]; then
    db=$(for p in $(pgrep -x postgres 2>/dev/null); do awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null; done | awk '{s += $1} END {print s + 0}')
  fi
  machine=$(awk '$1 == "cpu" {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat)
  echo "$squad $serving $db $machine"
}
echo "warming up…" >&2
for v in "${VARIANTS[@]}"; do load "warm-$v" "$(port_of "$v")" -z 2s -c 16; done
for round in $(seq 1 "$ROUNDS"); do
  for v in "${VARIANTS[@]}"; do
    echo "round $round: $v at $RATE req/s…" >&2
    load "rate-$v-$round" "$(port_of "$v")" -z "${DURATION}s" -c "$CONNS" -q "$RATE" --latency-correction
  done
done
for round in $(seq 1 "$SAT_ROUNDS"); do
  order=("${VARIANTS[@]}")
  if [ $((round % 2)) -eq 0 ]; then
    order=(); for ((i = ${#VARIANTS[@]} - 1; i >= 0; i--)); do order+=("${VARIANTS[$i]}"); done
  fi
  for v in "${order[@]}"; do
    echo "saturation round $round: $v…" >&2
    before=$(cpu_ticks "$v")
    load "sat-$v-$round" "$(port_of "$v")" -z "${SAT_DURATION}s" -c "$SAT_CONNS"
    echo "$before $(cpu_ticks "$v")" > "$OUT/sat-$v-$round.cpu"
  done
done
for round in $(seq 1 "$PAIRED_ROUNDS"); do
  for v in "${VARIANTS[@]:1}"; do
    echo "paired round $round: off and $v at once…" >&2
    sleep 1  # the last round's audit batches written
    for w in off "$v"; do cpu_ticks "$w" > "$OUT/pair-$v-$w-$round.before"; done
    # Started in turn first, so that neither always gets its load first.
    order=(off "$v"); [ $((round % 2)) -eq 0 ] && order=("$v" off)
    loads=()
    for w in "${order[@]}"; do
      load "pair-$v-$w-$round" "$(port_of "$w")" -z "${PAIRED_DURATION}s" -c 32 & loads+=($!)
    done
    wait "${loads[@]}"
    for w in off "$v"; do echo "$(cat "$OUT/pair-$v-$w-$round.before") $(cpu_ticks "$w")" > "$OUT/pair-$v-$w-$round.cpu"; done
  done
done
sleep 2  # let the writers drain before counting rows
(cd "$OUT/sqlite" && env -u DATABASE_URL "$BIN" audit export --config squad.yaml 2>/dev/null | wc -l) > "$OUT/sqlite-rows" || true
# How records reached the database: through the queue, or replayed from the
# journal because the queue was full (the writer fell behind).
for v in "${VARIANTS[@]:1}"; do
  curl -s "http://127.0.0.1:$(port_of "$v")/metrics" | awk '/^squad_audit_records_total/' > "$OUT/$v-audit-counts" || true
done

AUDIT_ON=$AUDIT_ON python3 - "$OUT" "$RATE" "$ROUNDS" "$SAT_ROUNDS" "$PAIRED_ROUNDS" "${VARIANTS[@]}" <<'PY'
import json, os, random, statistics, sys
out, rate, rounds, sat_rounds, paired_rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
variants = sys.argv[6:]
def load(name):
    d = json.load(open(f"{out}/{name}.json"))
    s, p = d["summary"], d["latencyPercentiles"]
    codes = d.get("statusCodeDistribution", {})
    ok = sum(v for k, v in codes.items() if k.startswith("2")); total = sum(codes.values()) or 1
    r = {"rps": s["requestsPerSec"], "p50": p["p50"] * 1000, "p99": p["p99"] * 1000, "ok": ok / total * 100, "n": total}
    try:
        b_squad, b_serving, b_db, b_machine, a_squad, a_serving, a_db, a_machine = map(
            float, open(f"{out}/{name}.cpu").read().split())
        tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
        r["cpu"] = (a_squad - b_squad) * tick_us / total
        r["serving"] = (a_serving - b_serving) * tick_us / total
        r["dbcpu"] = (a_db - b_db) * tick_us / total
        r["machine"] = (a_machine - b_machine) * tick_us / total
    except OSError:
        pass
    return r
def avg(prefix, v, key, n):
    return sum(load(f"{prefix}-{v}-{r}")[key] for r in range(1, n + 1)) / n
def median_ci(xs, resamples=4000):
    # 95% interval of the median by bootstrap (resampling the rounds), seeded
    # so that the same rounds always print the same interval.
    rng = random.Random(5)
    meds = sorted(statistics.median(rng.choices(xs, k=len(xs))) for _ in range(resamples))
    return meds[int(0.025 * resamples)], meds[int(0.975 * resamples) - 1]
def losses(v):
    return [100 * (1 - load(f"sat-{v}-{r}")["rps"] / load(f"sat-off-{r}")["rps"]) for r in range(1, sat_rounds + 1)]
print(f"\n== Audit overhead ({os.environ['AUDIT_ON']}; {rate} req/s fixed rate: mean of {rounds} rounds; saturation: {sat_rounds} alternating rounds)")
print(f"{'variant':<10} {'p50 ms':>8} {'p99 ms':>8} {'ok %':>7} {'added p50':>10} {'sat req/s':>10} {'loss':>7} {'median':>7} {'95% CI':>13} {'min..max':>14} {'squad µs/req':>13} {'serving':>8} {'other':>6} {'db µs/req':>10}")
base_p50, base_rps = avg("rate", "off", "p50", rounds), avg("sat", "off", "rps", sat_rounds)
for v in variants:
    p50, p99, ok = avg("rate", v, "p50", rounds), avg("rate", v, "p99", rounds), avg("rate", v, "ok", rounds)
    rps, cpu, db = avg("sat", v, "rps", sat_rounds), avg("sat", v, "cpu", sat_rounds), avg("sat", v, "dbcpu", sat_rounds)
    serving = avg("sat", v, "serving", sat_rounds)
    l = losses(v)
    print(f"{v:<10} {p50:>8.3f} {p99:>8.3f} {ok:>7.2f} {p50 - base_p50:>+10.3f} {rps:>10.0f} {100 * (1 - rps / base_rps):>6.1f}% "
          f"{statistics.median(l):>6.1f}% {'%.1f..%.1f' % median_ci(l):>13} {min(l):>6.1f}..{max(l):<6.1f} {cpu:>13.1f} {serving:>8.1f} {cpu - serving:>6.1f} {db:>10.1f}")
print("saturation per round (req/s, Squad µs/req):")
for v in variants:
    runs = [load(f"sat-{v}-{r}") for r in range(1, sat_rounds + 1)]
    print(f"  {v:<10} " + "  ".join(f"{x['rps']:.0f} ({x['cpu']:.1f})" for x in runs))
# Where the machine's time went at saturation: every CPU's busy time per
# request (/proc/stat), split into Squad's, PostgreSQL's and the rest (load
# generator, upstream, kernel threads). Throughput at saturation is about the
# CPUs' time over the busy time a request costs, so the loss this implies
# should agree with the measured one; Squad's CPU alone understates it when
# auditing also makes the rest of the machine work more.
print(f"\nmachine at saturation (busy CPU µs per request, mean of the rounds)")
print(f"{'variant':<10} {'machine':>8} {'squad':>7} {'db':>7} {'rest':>7} {'added':>7} {'of it squad':>12} {'of it db':>9} {'of it rest':>11} {'loss it implies':>16}")
base = {k: avg("sat", "off", k, sat_rounds) for k in ("machine", "cpu", "dbcpu")}
for v in variants:
    m = {k: avg("sat", v, k, sat_rounds) for k in ("machine", "cpu", "dbcpu")}
    rest, base_rest = m["machine"] - m["cpu"] - m["dbcpu"], base["machine"] - base["cpu"] - base["dbcpu"]
    print(f"{v:<10} {m['machine']:>8.1f} {m['cpu']:>7.1f} {m['dbcpu']:>7.1f} {rest:>7.1f} {m['machine'] - base['machine']:>+7.1f} "
          f"{m['cpu'] - base['cpu']:>+12.1f} {m['dbcpu'] - base['dbcpu']:>+9.1f} {rest - base_rest:>+11.1f} "
          f"{100 * (1 - base['machine'] / m['machine']):>15.1f}%")
if paired_rounds == 1:
    print("\n(paired phase: one round gives no standard error; use --paired-rounds 2 or more)")
if paired_rounds > 1:
    # Squad's CPU per request, plus PostgreSQL's processes' for postgres.
    spent = lambda x: x["cpu"] + x["dbcpu"]
    se = lambda xs: statistics.stdev(xs) / len(xs) ** 0.5
    ncpu = os.cpu_count() or 1
    off_squad = avg("sat", "off", "cpu", sat_rounds)
    machine = ncpu * 1e6 / base_rps  # the whole machine's CPU µs per request at saturation, auditing off
    print(f"\n== Paired ({paired_rounds} rounds of each variant loaded at once with auditing off; CPU per request against off's in the same round)")
    print(f"{'variant':<10} {'req/s':>7} {'µs/req':>7} {'added µs/req':>14} {'of it db':>9} {'added share':>13} {'implied loss':>13}")
    for v in variants[1:]:
        runs = [(load(f"pair-{v}-off-{r}"), load(f"pair-{v}-{v}-{r}")) for r in range(1, paired_rounds + 1)]
        rps = statistics.mean(b["rps"] for _, b in runs)
        added = [spent(b) - spent(a) for a, b in runs]
        share = [100 * (spent(b) / spent(a) - 1) for a, b in runs]
        # The same share of Squad's CPU at saturation (auditing off), as part
        # of what a request cost the whole machine then.
        extra = statistics.mean(share) / 100 * off_squad
        implied = 100 * extra / (machine + extra)
        db = statistics.mean(b["dbcpu"] for _, b in runs)
        print(f"{v:<10} {rps:>7.0f} {statistics.mean(spent(b) for _, b in runs):>7.1f} "
              f"{statistics.mean(added):>+8.2f} ±{se(added):<4.2f} {db:>9.2f} {statistics.mean(share):>+7.1f}% ±{se(share):<3.1f} {implied:>12.1f}%")
    print(f"added: mean ± standard error over the rounds (of it db: PostgreSQL's processes); implied loss: the added share of Squad's {off_squad:.1f} µs/req")
    print(f"at saturation, against the machine's {machine:.1f} µs/req then ({ncpu} CPUs at {base_rps:.0f} req/s, auditing off)")
try:
    print(f"\nrows in the SQLite audit log after the run: {open(f'{out}/sqlite-rows').read().strip()}")
except OSError:
    pass
for v in variants[1:]:
    try:
        counts = {l.split('"')[1]: float(l.split()[-1]) for l in open(f"{out}/{v}-audit-counts") if '"' in l}
    except OSError:
        continue
    j = counts.get("journaled", 0)
    print(f"{v}: {j:.0f} records journaled, {counts.get('written', 0):.0f} written through the queue, "
          f"{counts.get('replayed', 0):.0f} replayed from the journal ({100 * counts.get('replayed', 0) / max(j, 1):.1f}%)")
print("loss: of the mean req/s; median, min..max: of each round's loss against audit off in that round;")
print("95% CI: of that median, by bootstrap over the rounds (more rounds, a narrower interval)")
print("squad µs/req: Squad's CPU time per request at saturation: serving threads, other threads (the audit")
print("writer's above all); db µs/req: every PostgreSQL server process's, the bench database's and the rest")
print("targets: added p50 <= 0.1 ms, throughput loss <= 10%")
PY
if [ -n "$PG_DB" ]; then
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=()
  psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS $PG_DB" >/dev/null || true
fi
