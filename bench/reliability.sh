#!/usr/bin/env bash
# Reliability benchmark: steady load through Squad (release build) on an agent
# whose primary provider fails at random, against a fault-free run in the same
# script. Prints client success rate, the share of requests that needed a
# fallback, and p50/p95 latency for both runs. Load goes to 127.0.0.1 only.
#
#   bench/reliability.sh [--rate 30] [--duration 60] [--faults 500=0.2,429=0.1,stall=0.05]
#
# The agent is `sm` (Bob): groq → cerebras → gemini. groq points at the faulty
# upstream, cerebras and gemini at a healthy one. Needs oha.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=30 DURATION=60 FAULTS="500=0.2,429=0.1,stall=0.05" LATENCY=50ms
while [ $# -gt 0 ]; do
  case "$1" in
    --rate) RATE=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --faults) FAULTS=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
command -v oha >/dev/null || { echo "oha not found: cargo install oha --locked" >&2; exit 1; }
cargo build --release --quiet
BIN=target/release/squad
OUT=$(mktemp -d); pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$OUT"; }
trap cleanup EXIT
wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

FAULTY=18931 HEALTHY=18932 SQ_FAULTY=18933 SQ_CLEAN=18934
"$BIN" mock-upstream --port $FAULTY --latency $LATENCY --faults "$FAULTS" --retry-after 1 2>/dev/null & pids+=($!)
"$BIN" mock-upstream --port $HEALTHY --latency $LATENCY 2>/dev/null & pids+=($!)
wait_port $FAULTY; wait_port $HEALTHY

start_squad() { # port groq_upstream_port
  cat > "$OUT/squad-$1.yaml" <<YAML
auth: { mode: disabled }
audit: { enabled: false }
server: { bind: 127.0.0.1, port: $1, request_timeout: 20s }
log: { level: warn }
# This bench measures resilience, not admission control: the providers'
# default budgets (15-30 rpm) would refuse most of a 30 req/s load.
limits: { enabled: false }
providers:
  groq: { base_url: "http://127.0.0.1:$2/openai/v1", timeouts: { first_byte: 1s, total: 5s } }
  cerebras: { base_url: "http://127.0.0.1:$HEALTHY/v1" }
  gemini: { base_url: "http://127.0.0.1:$HEALTHY/v1beta" }
YAML
  GROQ_API_KEY=k CEREBRAS_API_KEY=k GEMINI_API_KEY=k "$BIN" serve --config "$OUT/squad-$1.yaml" >/dev/null 2>&1 &
  pids+=($!); wait_port "$1"
}
start_squad $SQ_FAULTY $FAULTY
start_squad $SQ_CLEAN $HEALTHY

BODY='{"prompt":"Plan the next sprint in three bullet points."}'
run() { # name port
  oha --no-tui --output-format json -m POST -T application/json -d "$BODY" \
      -n "$((RATE * DURATION))" -q "$RATE" -c 64 --latency-correction "http://127.0.0.1:$2/v1/agents/sm" > "$OUT/$1.json"
  curl -s "http://127.0.0.1:$2/metrics" > "$OUT/$1.metrics"
}
echo "fault-free run: $RATE req/s for ${DURATION}s…" >&2
run clean $SQ_CLEAN
echo "faulty primary ($FAULTS): $RATE req/s for ${DURATION}s…" >&2
run faulty $SQ_FAULTY

python3 - "$OUT" "$FAULTS" <<'PY'
import json, re, sys
out, faults = sys.argv[1], sys.argv[2]
def metric(text, name, **labels):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total
def load(name):
    d = json.load(open(f"{out}/{name}.json"))
    codes = d.get("statusCodeDistribution", {})
    total = sum(codes.values())
    ok = sum(v for k, v in codes.items() if k.startswith("2"))
    errors = sum(d.get("errorDistribution", {}).values())
    m = open(f"{out}/{name}.metrics").read()
    agent = metric(m, "squad_agent_requests_total", agent="sm")
    fellback = metric(m, "squad_fallbacks_total", **{"from": "groq"})
    p = d["latencyPercentiles"]
    return {"total": total + errors, "ok": ok, "codes": codes, "p50": p["p50"] * 1000, "p95": p["p95"] * 1000,
            "p99": p["p99"] * 1000, "fallback": fellback / agent * 100 if agent else 0.0}
c, f = load("clean"), load("faulty")
print(f"\nprimary faults: {faults}")
print(f"{'':24}{'fault-free':>14}{'faulty primary':>16}   target")
print(f"{'requests':24}{c['total']:14}{f['total']:16}")
print(f"{'success %':24}{c['ok']/max(c['total'],1)*100:14.2f}{f['ok']/max(f['total'],1)*100:16.2f}   >= 99.9%")
print(f"{'needed a fallback %':24}{c['fallback']:14.1f}{f['fallback']:16.1f}")
print(f"{'p50 ms':24}{c['p50']:14.1f}{f['p50']:16.1f}")
print(f"{'p95 ms':24}{c['p95']:14.1f}{f['p95']:16.1f}")
print(f"{'p99 ms':24}{c['p99']:14.1f}{f['p99']:16.1f}")
print(f"status codes (faulty run): {f['codes']}")
PY
