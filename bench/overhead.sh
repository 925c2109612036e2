#!/usr/bin/env bash
# Gateway overhead benchmark. Builds in release mode, starts the simulated
# upstream (zero latency) and Squad in front of it, then sends the same load
# (a) straight to the upstream and (b) through Squad, in one run:
#   1. a fixed rate (default 1000 req/s) — added p50 / p99 latency;
#   2. saturation — throughput through Squad as a share of direct;
#   3. streaming time-to-first-token, direct vs through Squad;
#   4. Squad's idle RSS;
#   5. saturation throughput with admission control on (budgets set too high
#      to refuse anything, so only its cost shows) against off;
#   6. when nginx is installed, the same fixed-rate and saturation load through
#      nginx as a reference proxy: what a bare proxy hop costs on this machine.
# Needs oha (`cargo install oha --locked`) and curl. Load goes to 127.0.0.1 only.
#
# Usage: bench/overhead.sh [--rate 1000] [--duration 10] [--connections 50]
set -euo pipefail
cd "$(dirname "$0")/.."

RATE=1000 DURATION=10 CONNS=50 SAT_CONNS=64 TTFT_SAMPLES=200
while [ $# -gt 0 ]; do
  case "$1" in
    --rate) RATE=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --connections) CONNS=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
command -v oha >/dev/null || { echo "oha not found: cargo install oha --locked" >&2; exit 1; }

cargo build --release --quiet
BIN=target/release/squad
UP_PORT=${UP_PORT:-18901} SQ_PORT=${SQ_PORT:-18902} STREAM_UP_PORT=${STREAM_UP_PORT:-18903} SQ_STREAM_PORT=${SQ_STREAM_PORT:-18904}
SQ_LIMITED_PORT=${SQ_LIMITED_PORT:-18905}
OUT=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$OUT"; }
trap cleanup EXIT

wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

start_squad() { # port upstream_port limits(on|off)
  if [ "${3:-off}" = on ]; then
    LIMITS="limits: { enabled: true, clients: { rpm: 1000000000, tpm: 10000000000, concurrent: 100000 } }"
    GROQ_LIMITS="limits: { rpm: 1000000000, tpm: 10000000000 }"
  else
    LIMITS="limits: { enabled: false }"
    GROQ_LIMITS="limits: {}"
  fi
  cat > "$OUT/squad-$1.yaml" <<YAML
auth: { mode: disabled }
audit: { enabled: false }
server: { bind: 127.0.0.1, port: $1 }
log: { level: info }
$LIMITS
providers:
  groq: { base_url: "http://127.0.0.1:$2/openai/v1", $GROQ_LIMITS }
YAML
  GROQ_API_KEY=bench-key "$BIN" serve --config "$OUT/squad-$1.yaml" >/dev/null 2>&1 &
  pids+=($!); SQUAD_PID=$!
  wait_port "$1"
}

"$BIN" mock-upstream --port "$UP_PORT" 2>/dev/null & pids+=($!)
"$BIN" mock-upstream --port "$STREAM_UP_PORT" --tokens-per-second 50 2>/dev/null & pids+=($!)
wait_port "$UP_PORT"; wait_port "$STREAM_UP_PORT"
start_squad "$SQ_PORT" "$UP_PORT"; MAIN_PID=$SQUAD_PID
start_squad "$SQ_STREAM_PORT" "$STREAM_UP_PORT"
start_squad "$SQ_LIMITED_PORT" "$UP_PORT" on

# A reference proxy, when nginx is installed: the same upstream behind nginx
# (keep-alive upstream connections, no access log), to show what a proxy hop
# alone costs on this machine.
NGINX_PORT=${NGINX_PORT:-18906}
HAVE_NGINX=false
command -v nginx >/dev/null && HAVE_NGINX=true
if $HAVE_NGINX; then
  mkdir -p "$OUT/nginx"
  cat > "$OUT/nginx/nginx.conf" <<NGINX
worker_processes $(nproc);
daemon off;
pid $OUT/nginx/nginx.pid;
error_log $OUT/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $OUT/nginx/body;
  proxy_temp_path $OUT/nginx/proxy;
  upstream up { server 127.0.0.1:$UP_PORT; keepalive 128; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
NGINX
  nginx -p "$OUT/nginx" -c "$OUT/nginx/nginx.conf" 2>/dev/null & pids+=($!)
  wait_port "$NGINX_PORT"
fi

sleep 1
IDLE_RSS_KB=$(awk '/VmRSS/ {print $2}' "/proc/$MAIN_PID/status")

BODY='{"model":"groq/bench-model","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Say hello to the benchmark."}],"max_tokens":64}'
DIRECT_URL="http://127.0.0.1:$UP_PORT/openai/v1/chat/completions"
SQUAD_URL="http://127.0.0.1:$SQ_PORT/v1/chat/completions"
DIRECT_BODY=${BODY/groq\/bench-model/bench-model}

load() { # name url body extra-args...
  local name=$1 url=$2 body=$3; shift 3
  oha --no-tui --output-format json -m POST -T application/json -H "authorization: Bearer bench-key" \
      -d "$body" "$@" "$url" > "$OUT/$name.json"
}

echo "warming up…" >&2
load warm-direct "$DIRECT_URL" "$DIRECT_BODY" -z 2s -c 16
load warm-squad "$SQUAD_URL" "$BODY" -z 2s -c 16

echo "fixed rate: $RATE req/s for ${DURATION}s, direct then through Squad…" >&2
load rate-direct "$DIRECT_URL" "$DIRECT_BODY" -z "${DURATION}s" -c "$CONNS" -q "$RATE" --latency-correction
load rate-squad "$SQUAD_URL" "$BODY" -z "${DURATION}s" -c "$CONNS" -q "$RATE" --latency-correction
NGINX_URL="http://127.0.0.1:$NGINX_PORT/openai/v1/chat/completions"
if $HAVE_NGINX; then
  load warm-nginx "$NGINX_URL" "$DIRECT_BODY" -z 2s -c 16
  load rate-nginx "$NGINX_URL" "$DIRECT_BODY" -z "${DURATION}s" -c "$CONNS" -q "$RATE" --latency-correction
fi
echo "saturation: $SAT_CONNS connections for ${DURATION}s, direct then through Squad…" >&2
load sat-direct "$DIRECT_URL" "$DIRECT_BODY" -z "${DURATION}s" -c "$SAT_CONNS"
load sat-squad "$SQUAD_URL" "$BODY" -z "${DURATION}s" -c "$SAT_CONNS"
if $HAVE_NGINX; then
  load sat-nginx "$NGINX_URL" "$DIRECT_BODY" -z "${DURATION}s" -c "$SAT_CONNS"
fi
echo "saturation with admission control on and off, alternating…" >&2
load sat-limited "http://127.0.0.1:$SQ_LIMITED_PORT/v1/chat/completions" "$BODY" -z "${DURATION}s" -c "$SAT_CONNS"
load sat-squad2 "$SQUAD_URL" "$BODY" -z "${DURATION}s" -c "$SAT_CONNS"
load sat-limited2 "http://127.0.0.1:$SQ_LIMITED_PORT/v1/chat/completions" "$BODY" -z "${DURATION}s" -c "$SAT_CONNS"
load sat-squad3 "$SQUAD_URL" "$BODY" -z "${DURATION}s" -c "$SAT_CONNS"
LOADED_RSS_KB=$(awk '/VmRSS/ {print $2}' "/proc/$MAIN_PID/status")

echo "streaming time to first token: $TTFT_SAMPLES requests each…" >&2
SBODY='{"model":"groq/bench-model","stream":true,"messages":[{"role":"user","content":"Stream a short answer please."}]}'
ttft() { # url body
  for _ in $(seq 1 "$TTFT_SAMPLES"); do
    curl -s -o /dev/null -w '%{time_starttransfer}\n' -H 'content-type: application/json' \
      -H 'authorization: Bearer bench-key' -d "$2" "$1"
  done > "$OUT/ttft-$3.txt"
}
ttft "http://127.0.0.1:$STREAM_UP_PORT/openai/v1/chat/completions" "${SBODY/groq\/bench-model/bench-model}" direct
ttft "http://127.0.0.1:$SQ_STREAM_PORT/v1/chat/completions" "$SBODY" squad

python3 - "$OUT" "$RATE" "$IDLE_RSS_KB" "$LOADED_RSS_KB" <<'PY'
import json, statistics, sys
out, rate, idle_kb, loaded_kb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def load(name):
    d = json.load(open(f"{out}/{name}.json"))
    s, p = d["summary"], d["latencyPercentiles"]
    codes = d.get("statusCodeDistribution", {})
    ok = sum(v for k, v in codes.items() if k.startswith("2"))
    total = sum(codes.values()) or 1
    return {"rps": s["requestsPerSec"], "p50": p["p50"] * 1000, "p99": p["p99"] * 1000, "ok": ok / total * 100}
def ttft(name):
    xs = sorted(float(x) * 1000 for x in open(f"{out}/ttft-{name}.txt") if x.strip())
    return statistics.median(xs), xs[int(len(xs) * 0.99) - 1]
rd, rs, sd, ss = load("rate-direct"), load("rate-squad"), load("sat-direct"), load("sat-squad")
print(f"\n{'':26}{'direct':>12}{'via squad':>12}{'added':>12}   target")
print(f"{'rate ' + str(rate) + ' req/s  p50 ms':26}{rd['p50']:12.3f}{rs['p50']:12.3f}{rs['p50']-rd['p50']:12.3f}   added <= 0.2 ms")
print(f"{'rate ' + str(rate) + ' req/s  p99 ms':26}{rd['p99']:12.3f}{rs['p99']:12.3f}{rs['p99']-rd['p99']:12.3f}   added <= 1 ms")
print(f"{'rate achieved req/s':26}{rd['rps']:12.0f}{rs['rps']:12.0f}")
print(f"{'rate success %':26}{rd['ok']:12.2f}{rs['ok']:12.2f}")
print(f"{'saturation req/s':26}{sd['rps']:12.0f}{ss['rps']:12.0f}{ss['rps']/sd['rps']*100:11.1f}%   >= 25% of direct")
print(f"{'saturation p50 / p99 ms':26}{sd['p50']:6.2f}/{sd['p99']:<5.2f}{ss['p50']:6.2f}/{ss['p99']:<5.2f}")
import os
if os.path.exists(f"{out}/rate-nginx.json"):
    rn, sn = load("rate-nginx"), load("sat-nginx")
    print(f"{'reference: nginx proxy':26}{'':12}{'via nginx':>12}{'added':>12}")
    print(f"{'rate ' + str(rate) + ' req/s  p50 ms':26}{rd['p50']:12.3f}{rn['p50']:12.3f}{rn['p50']-rd['p50']:12.3f}")
    print(f"{'rate ' + str(rate) + ' req/s  p99 ms':26}{rd['p99']:12.3f}{rn['p99']:12.3f}{rn['p99']-rd['p99']:12.3f}")
    print(f"{'saturation req/s':26}{sd['rps']:12.0f}{sn['rps']:12.0f}{sn['rps']/sd['rps']*100:11.1f}%")
d50, d99 = ttft("direct"); s50, s99 = ttft("squad")
print(f"{'stream TTFT p50 ms':26}{d50:12.3f}{s50:12.3f}{s50-d50:12.3f}   added <= 1 ms")
print(f"{'stream TTFT p99 ms':26}{d99:12.3f}{s99:12.3f}{s99-d99:12.3f}")
print(f"{'squad RSS idle / loaded MB':26}{idle_kb/1024:12.1f}{loaded_kb/1024:12.1f}{'':12}   idle <= 30 MB")
# Alternating runs (off, on, off, on, off) so drift on a shared machine cancels out.
offs = [ss['rps'], load('sat-squad2')['rps'], load('sat-squad3')['rps']]
ons = [load('sat-limited'), load('sat-limited2')]
off = sum(offs) / len(offs)
on = sum(o['rps'] for o in ons) / len(ons)
print(f"{'limits off / on req/s':26}{off:12.0f}{on:12.0f}{(off-on)/off*100:11.1f}%   loss <= 5% (negative: on was faster)")
runs_off = " ".join("%.0f" % x for x in offs)
runs_on = " ".join("%.0f" % o["rps"] for o in ons)
print(f"{'  runs off / on':26}{runs_off} / {runs_on}")
print(f"{'limits on success %':26}{'':12}{min(o['ok'] for o in ons):12.2f}")
PY
