#!/usr/bin/env bash
# Compares two builds of Squad under the same load at the same time: each
# round starts both oha runs at once (32 connections each, against the same
# simulated upstream), so a change in the machine's speed reaches both alike,
# and prints each build's CPU time per request (from /proc, all of its
# threads) and throughput, then the mean difference B - A with its standard
# error. Which build's load starts first alternates. Auditing is on, to
# SQLite, as Squad ships (`--audit off` turns it off). Load goes to 127.0.0.1
# only. Needs oha (`cargo install oha --locked`).
#
# Usage: bench/builds.sh A_BINARY B_BINARY [--rounds 8] [--duration 8] [--audit sqlite|off]
# e.g. build the other variant into its own target directory first:
#   CARGO_TARGET_DIR=target/other CARGO_PROFILE_RELEASE_LTO=thin cargo build --release
#   bench/builds.sh target/release/squad target/other/release/squad
set -euo pipefail

[[ $# -ge 2 ]] || { grep -m1 '^# Usage:' "$0" >&2; exit 2; }
A=$(realpath "$1") B=$(realpath "$2")
shift 2
ROUNDS=8 DURATION=8 AUDIT=sqlite
while [[ $# -gt 0 ]]; do
  case $1 in
    --rounds) ROUNDS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --audit) AUDIT=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
command -v oha >/dev/null || { echo "oha not found: cargo install oha --locked" >&2; exit 1; }

OUT=$(mktemp -d)
UP_PORT=${UP_PORT:-18951}
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$OUT"; }
trap cleanup EXIT
wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

"$A" mock-upstream --port "$UP_PORT" >/dev/null 2>&1 & pids+=($!)
wait_port "$UP_PORT"
declare -A PORT=([A]=18952 [B]=18953)
for v in A B; do
  mkdir -p "$OUT/$v"
  if [[ $AUDIT == off ]]; then audit="audit: { enabled: false }"; else audit="audit: { enabled: true }"; fi
  cat > "$OUT/$v/squad.yaml" <<YAML
server: { bind: 127.0.0.1, port: ${PORT[$v]} }
log: { level: warn }
auth: { mode: disabled }
limits: { enabled: false }
$audit
database: { url: "sqlite://squad.db" }
providers:
  groq: { base_url: "http://127.0.0.1:$UP_PORT/openai/v1" }
YAML
  bin=$A; [[ $v == B ]] && bin=$B
  (cd "$OUT/$v" && GROQ_API_KEY=bench-key exec env -u DATABASE_URL "$bin" serve --config squad.yaml >/dev/null 2>&1) &
  pids+=($!)
  echo $! > "$OUT/$v/pid"
  wait_port "${PORT[$v]}"
done

BODY='{"model":"groq/bench-model","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Say hello to the benchmark."}],"max_tokens":64}'
ticks() { awk '{print $14 + $15}' "/proc/$(cat "$OUT/$1/pid")/stat"; }
load() { # output port seconds
  oha --no-tui --output-format json -m POST -T application/json -d "$BODY" -z "$3s" -c 32 \
      "http://127.0.0.1:$2/v1/chat/completions" > "$1"
}
echo "warming up…" >&2
load "$OUT/warm-A.json" "${PORT[A]}" 2 & w1=$!
load "$OUT/warm-B.json" "${PORT[B]}" 2 & w2=$!
wait $w1 $w2
: > "$OUT/rounds"
for r in $(seq 1 "$ROUNDS"); do
  # Every other round the other build's load starts first.
  if ((r % 2)); then first=A second=B; else first=B second=A; fi
  declare -A t0
  for v in A B; do t0[$v]=$(ticks $v); done
  load "$OUT/$first-$r.json" "${PORT[$first]}" "$DURATION" & l1=$!
  load "$OUT/$second-$r.json" "${PORT[$second]}" "$DURATION" & l2=$!
  wait $l1 $l2
  line=""
  for v in A B; do
    line="$line $(( $(ticks $v) - ${t0[$v]} )) $OUT/$v-$r.json"
  done
  echo "$line" >> "$OUT/rounds"
  echo "round $r done" >&2
done

python3 - "$OUT/rounds" "$(getconf CLK_TCK)" "$A" "$B" <<'PY'
import json, statistics, sys
rounds, hz, a_bin, b_bin = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
rows = []
for line in open(rounds):
    f = line.split()
    per = []
    for ticks, path in ((int(f[0]), f[1]), (int(f[2]), f[3])):
        d = json.load(open(path))
        n = sum(d["statusCodeDistribution"].values())
        ok = d["statusCodeDistribution"].get("200", 0)
        per.append((ticks / hz * 1e6 / n, n / d["summary"]["total"], ok / n))
    rows.append(per)
print(f"A = {a_bin}\nB = {b_bin}")
print(f"{'round':>5} {'A µs/req':>9} {'A req/s':>8} {'B µs/req':>9} {'B req/s':>8} {'B - A':>7}")
for i, (a, b) in enumerate(rows, 1):
    print(f"{i:>5} {a[0]:9.2f} {a[1]:8.0f} {b[0]:9.2f} {b[1]:8.0f} {b[0] - a[0]:+7.2f}")
diffs = [b[0] - a[0] for a, b in rows]
mean_a = statistics.mean(a[0] for a, _ in rows)
se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")
print(f"B - A: {statistics.mean(diffs):+.2f} ± {se:.2f} µs/req (standard error, {len(diffs)} rounds), "
      f"{100 * statistics.mean(diffs) / mean_a:+.1f}% of A's {mean_a:.2f}")
bad = [r for r in rows if min(r[0][2], r[1][2]) < 0.999]
if bad:
    print(f"warning: {len(bad)} round(s) had under 99.9% 200s")
PY
