#!/usr/bin/env bash
# The go-live checklist's two load scenarios, with its thresholds, through a
# release build of Squad with auditing to SQLite, PII redaction, per-provider
# rate limits and the concurrency gate on (API keys off, logs at warn), in
# front of the simulated upstream answering after --latency (an LLM's
# response time):
#
#   load:  30 req/s for 5 minutes  -> success > 99%, 429s < 1%,  P95 < 2 s
#   spike: 60 req/s for 2 minutes  -> success > 95%, 429s < 10%, P99 < 5 s
#
# Each scenario is also sent straight to the upstream (--baseline seconds at
# the same rate), in the same run, so that the latency Squad adds can be told
# from the machine's. The providers' budgets are set to a paid plan's
# (--rpm per provider): the built-in ones are free tiers (15 to 60 requests a
# minute), which would refuse most of 30 req/s by design. Load goes to
# 127.0.0.1 only. Prints a table and PASS/FAIL per threshold; exits 1 if any
# threshold fails. Needs oha (`cargo install oha --locked`).
#
#   bench/load.sh [--load-duration 300] [--spike-duration 120] [--baseline 30]
#                 [--latency 300ms] [--rpm 6000]
# SQUAD_BIN=path runs that build instead of building this checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
LOAD_S=300 SPIKE_S=120 BASE_S=30 LATENCY=300ms RPM=6000
while [ $# -gt 0 ]; do
  case "$1" in
    --load-duration) LOAD_S=$2; shift 2 ;;
    --spike-duration) SPIKE_S=$2; shift 2 ;;
    --baseline) BASE_S=$2; shift 2 ;;
    --latency) LATENCY=$2; shift 2 ;;
    --rpm) RPM=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
command -v oha >/dev/null || { echo "oha not found: cargo install oha --locked" >&2; exit 1; }
if [ -n "${SQUAD_BIN:-}" ]; then
  BIN=$(realpath "$SQUAD_BIN")
else
  cargo build --release --quiet
  BIN=$PWD/target/release/squad
fi
OUT=$(mktemp -d); pids=()
# A failed run keeps its results and Squad's log (the path is printed).
KEEP=0
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true
  if [ "$KEEP" = 1 ]; then echo "results kept in $OUT" >&2; else rm -rf "$OUT"; fi
}
trap cleanup EXIT
wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

UP=18941 SQ=18942
"$BIN" mock-upstream --port $UP --latency "$LATENCY" 2>/dev/null & pids+=($!)
wait_port $UP
cat > "$OUT/squad.yaml" <<YAML
server: { bind: 127.0.0.1, port: $SQ }
auth: { mode: disabled }
log: { level: warn }
database: { url: "sqlite://$OUT/squad.db" }
audit: { journal_dir: "$OUT/journal" }
providers:
  groq: { base_url: "http://127.0.0.1:$UP/openai/v1", limits: { rpm: $RPM } }
  cerebras: { base_url: "http://127.0.0.1:$UP/v1", limits: { rpm: $RPM } }
  gemini: { base_url: "http://127.0.0.1:$UP/v1beta", limits: { rpm: $RPM } }
YAML
GROQ_API_KEY=k CEREBRAS_API_KEY=k GEMINI_API_KEY=k "$BIN" serve --config "$OUT/squad.yaml" >"$OUT/squad.log" 2>&1 &
pids+=($!)
wait_port $SQ

# The agent route (Bob: groq -> cerebras -> gemini), and the same model asked
# of the upstream directly.
AGENT_BODY='{"prompt":"Plan the next sprint in three bullet points."}'
DIRECT_BODY='{"model":"openai/gpt-oss-20b","messages":[{"role":"user","content":"Plan the next sprint in three bullet points."}]}'
run() { # name rate seconds url body
  oha --no-tui --output-format json -m POST -T application/json -H "authorization: Bearer k" -d "$5" \
      -n "$(($2 * $3))" -q "$2" -c 256 --latency-correction "$4" > "$OUT/$1.json"
}
echo "load: 30 req/s for ${LOAD_S}s through Squad..." >&2
run load 30 "$LOAD_S" "http://127.0.0.1:$SQ/v1/agents/sm" "$AGENT_BODY"
echo "load baseline: 30 req/s for ${BASE_S}s straight to the upstream..." >&2
run load-base 30 "$BASE_S" "http://127.0.0.1:$UP/openai/v1/chat/completions" "$DIRECT_BODY"
echo "spike: 60 req/s for ${SPIKE_S}s through Squad..." >&2
run spike 60 "$SPIKE_S" "http://127.0.0.1:$SQ/v1/agents/sm" "$AGENT_BODY"
echo "spike baseline: 60 req/s for ${BASE_S}s straight to the upstream..." >&2
run spike-base 60 "$BASE_S" "http://127.0.0.1:$UP/openai/v1/chat/completions" "$DIRECT_BODY"
# The audit writer flushes within 200 ms of the last request.
sleep 1
curl -s "http://127.0.0.1:$SQ/metrics" > "$OUT/metrics.txt"

python3 - "$OUT" <<'PY' || { KEEP=1; exit 1; }
import json, sys
out = sys.argv[1]
def load(name):
    d = json.load(open(f"{out}/{name}.json"))
    codes = {int(k): v for k, v in d.get("statusCodeDistribution", {}).items()}
    errors = sum(d.get("errorDistribution", {}).values())
    total = sum(codes.values()) + errors
    # No successful request: no latencies (counted as failing the bounds).
    p = {k: (v if v is not None else float("inf")) for k, v in d["latencyPercentiles"].items()}
    return {
        "total": total,
        "ok": sum(v for k, v in codes.items() if 200 <= k < 300) / max(total, 1) * 100,
        "429": codes.get(429, 0) / max(total, 1) * 100,
        "rps": d["summary"].get("requestsPerSec", 0.0),
        "p50": p["p50"] * 1000, "p95": p["p95"] * 1000, "p99": p["p99"] * 1000,
        "codes": codes, "errors": d.get("errorDistribution", {}),
    }
failed = 0
for name, rate, limits in [
    ("load", 30, {"ok": (">", 99.0), "429": ("<", 1.0), "p95": ("<", 2000.0)}),
    ("spike", 60, {"ok": (">", 95.0), "429": ("<", 10.0), "p99": ("<", 5000.0)}),
]:
    s, b = load(name), load(name + "-base")
    print(f"\n{name}: {rate} req/s, {s['total']} requests through Squad ({s['rps']:.1f} req/s achieved)")
    print(f"{'':14}{'Squad':>10}{'upstream direct':>18}")
    for key, unit in [("ok", "%"), ("429", "%"), ("p50", "ms"), ("p95", "ms"), ("p99", "ms")]:
        print(f"{key + ' ' + unit:14}{s[key]:10.2f}{b[key]:18.2f}")
    print(f"status codes: {s['codes']}; transport errors: {s['errors'] or 'none'}")
    for key, (op, bound) in limits.items():
        ok = s[key] > bound if op == ">" else s[key] < bound
        failed += not ok
        print(f"  {'PASS' if ok else 'FAIL'}  {key} {s[key]:.2f} {op} {bound:g}")
def stage(name):
    for line in open(f"{out}/metrics.txt"):
        if line.startswith("squad_audit_records_total{") and f'stage="{name}"' in line:
            return int(float(line.rsplit(" ", 1)[1]))
    return 0
served = load("load")["total"] + load("spike")["total"]
journaled, written, replayed = stage("journaled"), stage("written"), stage("replayed")
print(f"\naudit: {served} requests through Squad, {journaled} records journaled, "
      f"{written} written through the queue, {replayed} replayed")
for what, ok in [("a record for every request", journaled == served),
                 ("every record in the database", written + replayed == journaled)]:
    failed += not ok
    print(f"  {'PASS' if ok else 'FAIL'}  {what}")
sys.exit(1 if failed else 0)
PY
