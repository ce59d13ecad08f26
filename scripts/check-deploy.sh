#!/usr/bin/env bash
# Checks everything under deploy/ with the real tools, offline:
#   1. promtool check rules (lint fatal) and promtool test rules on deploy/prometheus;
#   2. kubectl kustomize renders deploy/k8s/base and every overlay;
#   3. each render's PrometheusRule .spec equals deploy/prometheus/alerts.yml (and passes promtool);
#   4. each render's objects agree with what the binary really uses: probes /healthz and
#      /readyz on port 9464 (named metrics), the --config path served by the generated ConfigMap,
#      the API key file (openlayer.api_key_file) mounted read-only from Secret
#      sessionizer-openlayer key api-key, Service/ServiceMonitor/PDB/ScaledObject wiring,
#      terminationGracePeriodSeconds > drain timeout + 10 s; and the rendered ConfigMap TOML
#      plus the Deployment's literal env vars load through `sessionizer check-config`;
#   5. the Grafana dashboard and provisioning files, offline (scripts/check-monitoring.py static:
#      structure, ids, variables, every query through promtool check rules);
#   6. the security and schema scan: checkov, hadolint, kubernetes-validate --strict
#      (scripts/check-deploy-scan.sh; pinned tools in a venv under .cache/venv);
#   7. the live test: a real Prometheus scrapes `sessionizer demo`, and every dashboard query
#      and alert runs through its HTTP API (scripts/check-prometheus-live.sh).
# Run from anywhere: ./scripts/check-deploy.sh  (SESSIONIZER_BIN overrides the binary).
# Needs kubectl, yq, jq, curl, python3 >= 3.11 with venv, prometheus and promtool
# (Debian: apt-get install -y --no-install-recommends prometheus).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

fail() { echo "check-deploy: FAIL: $*" >&2; exit 1; }
step() { echo "== $*"; }

for tool in kubectl yq jq python3; do
  command -v "$tool" >/dev/null 2>&1 || fail "$tool not found on PATH"
done
for tool in promtool prometheus; do
  command -v "$tool" >/dev/null 2>&1 \
    || fail "$tool not found; install it with: DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus"
done

bin="${SESSIONIZER_BIN:-${CARGO_TARGET_DIR:-target}/debug/sessionizer}"
if [[ ! -x "$bin" ]]; then
  step "building sessionizer (cargo build --locked -p sessionizer)"
  cargo build -q --locked -p sessionizer || fail "cargo build --locked -p sessionizer failed"
  bin=target/debug/sessionizer
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

rules=deploy/prometheus/alerts.yml
step "promtool check rules $rules"
promtool check rules --lint-fatal "$rules" || fail "promtool check rules $rules"
step "promtool test rules deploy/prometheus/alerts_test.yml"
promtool test rules deploy/prometheus/alerts_test.yml || fail "promtool test rules"

step "sessionizer check-config deploy/k8s/base/sessionizer.toml"
# The key file lives in the pod's Secret volume; a dummy stands in for it here.
echo dummy-key >"$tmp/api-key"
env -i PATH="$PATH" SESSIONIZER__OPENLAYER__API_KEY_FILE="$tmp/api-key" "$bin" check-config --config deploy/k8s/base/sessionizer.toml \
  >"$tmp/base-effective.toml" || fail "check-config rejected deploy/k8s/base/sessionizer.toml"

yq -S -c . "$rules" >"$tmp/alerts.json" || fail "yq cannot read $rules"

targets=(deploy/k8s/base)
for overlay in deploy/k8s/overlays/*/; do targets+=("${overlay%/}"); done
[[ ${#targets[@]} -ge 3 ]] || fail "expected overlays under deploy/k8s/overlays"

for target in "${targets[@]}"; do
  name="$(basename "$target")"
  rendered="$tmp/$name.yaml"
  step "kubectl kustomize $target"
  kubectl kustomize "$target" >"$rendered" || fail "kubectl kustomize $target"

  # PrometheusRule: same rules as the plain file, and valid for promtool on its own.
  yq -c 'select(.kind == "PrometheusRule") | .spec' "$rendered" >"$tmp/$name-rule.json"
  [[ "$(wc -l <"$tmp/$name-rule.json")" -eq 1 ]] || fail "$target: expected exactly one PrometheusRule"
  yq -y 'select(.kind == "PrometheusRule") | .spec' "$rendered" >"$tmp/$name-rules.yml"
  promtool check rules --lint-fatal "$tmp/$name-rules.yml" >/dev/null \
    || fail "$target: PrometheusRule .spec fails promtool check rules"
  jq -S -c . "$tmp/$name-rule.json" >"$tmp/$name-rule.sorted.json"
  cmp -s "$tmp/$name-rule.sorted.json" "$tmp/alerts.json" \
    || fail "$target: PrometheusRule .spec differs from $rules (regenerate deploy/k8s/base/prometheusrule.yaml, see its header)"
  echo "PrometheusRule .spec == $rules"

  # Objects as JSON lines for the python checks.
  yq -c . "$rendered" >"$tmp/$name.jsonl"
  python3 - "$target" "$tmp/$name.jsonl" "$bin" "$tmp" <<'PY' || fail "$target: manifest checks"
import json, os, subprocess, sys, tomllib

target, jsonl, binary, tmp = sys.argv[1:5]
objs = [json.loads(line) for line in open(jsonl) if line.strip() and line.strip() != "null"]
errors = []

def check(cond, msg):
    if not cond:
        errors.append(msg)

def one(kind):
    found = [o for o in objs if o.get("kind") == kind]
    check(len(found) == 1, f"expected exactly one {kind}, found {len(found)}")
    return found[0] if found else {}

dep, svc, pdb = one("Deployment"), one("Service"), one("PodDisruptionBudget")
sm, so, cm = one("ServiceMonitor"), one("ScaledObject"), one("ConfigMap")
pod = dep["spec"]["template"]["spec"]
pod_labels = dep["spec"]["template"]["metadata"]["labels"]
containers = [c for c in pod["containers"] if c["name"] == "sessionizer"]
check(len(containers) == 1, "no container named sessionizer")
c = containers[0]

# Ports and probes: what services/sessionizer/src/http.rs serves on http.listen.
ports = {p.get("name"): p for p in c.get("ports", [])}
check(ports.get("metrics", {}).get("containerPort") == 9464, "container port metrics must be 9464")
for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
    get = c.get(probe, {}).get("httpGet", {})
    check(get.get("path") == path, f"{probe} path must be {path}, is {get.get('path')}")
    check(get.get("port") in ("metrics", 9464), f"{probe} port must be metrics/9464, is {get.get('port')}")

# Command line: main.rs `sessionizer run --config FILE`.
args = c.get("args", [])
check(args[:1] == ["run"] and "--config" in args, f"args must be run --config FILE, are {args}")
config_path = args[args.index("--config") + 1] if "--config" in args else ""

# The --config file comes from the generated ConfigMap.
mount = next((m for m in c.get("volumeMounts", []) if config_path.startswith(m["mountPath"].rstrip("/") + "/")), None)
check(mount is not None, f"no volumeMount serves {config_path}")
toml_text = None
if mount:
    vol = next((v for v in pod.get("volumes", []) if v["name"] == mount["name"]), {})
    ref = vol.get("configMap", {})
    check(ref.get("name") == cm.get("metadata", {}).get("name"), f"config volume references {ref.get('name')}, not the rendered ConfigMap")
    rel = config_path[len(mount["mountPath"].rstrip("/")) + 1:]
    key = next((i["key"] for i in ref.get("items", []) if i["path"] == rel), rel)
    toml_text = cm.get("data", {}).get(key)
    check(toml_text is not None, f"ConfigMap has no key {key} for {config_path}")

# Secret: the API key is a file from Secret sessionizer-openlayer, key api-key, mounted read-only
# where openlayer.api_key_file points; never an environment variable.
env = c.get("env", [])
check(not any(e["name"] in ("OPENLAYER_API_KEY", "SESSIONIZER__OPENLAYER__API_KEY") for e in env),
      "the API key must come from the mounted Secret file, not an environment variable")
key_file = None
secret_volumes = [v for v in pod.get("volumes", []) if v.get("secret", {}).get("secretName") == "sessionizer-openlayer"]
check(len(secret_volumes) == 1, "expected one volume from Secret sessionizer-openlayer")
if secret_volumes:
    volume = secret_volumes[0]
    item = next((i for i in volume["secret"].get("items", []) if i.get("key") == "api-key"), None)
    secret_mount = next((m for m in c.get("volumeMounts", []) if m["name"] == volume["name"]), None)
    check(item is not None, "the Secret volume must project key api-key")
    check(secret_mount is not None and secret_mount.get("readOnly") is True, "the Secret volume must be mounted read-only")
    if item and secret_mount:
        key_file = secret_mount["mountPath"].rstrip("/") + "/" + item["path"]
literal_env = {e["name"]: e["value"] for e in env if "value" in e}
configured_key_file = literal_env.get("SESSIONIZER__OPENLAYER__API_KEY_FILE")
if configured_key_file is None and toml_text is not None:
    configured_key_file = tomllib.loads(toml_text).get("openlayer", {}).get("api_key_file")
check(key_file is not None and configured_key_file == key_file,
      f"openlayer.api_key_file is {configured_key_file}, not the mounted Secret file {key_file}")

# Security context.
sc, psc = c.get("securityContext", {}), pod.get("securityContext", {})
check(sc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem must be true")
check(sc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation must be false")
check((sc.get("runAsNonRoot") or psc.get("runAsNonRoot")) is True, "runAsNonRoot must be true")
check(sc.get("capabilities", {}).get("drop") == ["ALL"], "capabilities.drop must be [ALL]")
check((sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type") == "RuntimeDefault", "seccomp must be RuntimeDefault")
res = c.get("resources", {})
check(res.get("requests", {}).get("cpu") and res.get("requests", {}).get("memory") and res.get("limits", {}).get("memory"),
      "resources need cpu/memory requests and a memory limit")

# Effective configuration: ConfigMap TOML + the Deployment's literal env, through check-config.
effective = {}
if toml_text is not None:
    path = os.path.join(tmp, os.path.basename(target) + "-sessionizer.toml")
    with open(path, "w") as f:
        f.write(toml_text)
    run_env = {"PATH": os.environ["PATH"], **literal_env}
    # The key file exists only in the pod; a dummy file stands in for it (its path was checked above).
    dummy_key_file = os.path.join(tmp, "api-key")
    run_env["SESSIONIZER__OPENLAYER__API_KEY_FILE"] = dummy_key_file
    proc = subprocess.run([binary, "check-config", "--config", path], env=run_env, capture_output=True, text=True)
    if proc.returncode != 0:
        errors.append(f"check-config rejected the rendered config + env:\n{proc.stdout}{proc.stderr}")
    else:
        effective = tomllib.loads(proc.stdout)
        literal = sorted(e["name"] for e in env if "value" in e)
        print(f"check-config accepts the rendered ConfigMap + env {literal}")
if effective:
    listen = effective["http"]["listen"]
    check(listen.rsplit(":", 1)[-1] == "9464", f"http.listen {listen} is not on the container port 9464")
    drain = effective["shutdown"]["drain_timeout_secs"]
    grace = pod.get("terminationGracePeriodSeconds", 30)
    check(grace >= drain + 10, f"terminationGracePeriodSeconds {grace} must be >= drain_timeout_secs {drain} + 10")
    check(effective["openlayer"].get("api_key_file") == dummy_key_file and "api_key" not in effective["openlayer"],
          "check-config did not take the API key from openlayer.api_key_file")
    trig = next((t for t in so.get("spec", {}).get("triggers", []) if t.get("type") == "kafka"), {}).get("metadata", {})
    check(trig.get("topic") == effective["kafka"]["topic"], f"ScaledObject topic {trig.get('topic')} != kafka.topic")
    check(trig.get("consumerGroup") == effective["kafka"]["group_id"], f"ScaledObject consumerGroup != kafka.group_id")
    check(trig.get("bootstrapServers") == effective["kafka"]["bootstrap_servers"],
          f"ScaledObject bootstrapServers {trig.get('bootstrapServers')} != kafka.bootstrap_servers {effective['kafka']['bootstrap_servers']}")

# Service, ServiceMonitor, PDB, ScaledObject wiring.
def selects(sel):
    return bool(sel) and all(pod_labels.get(k) == v for k, v in sel.items())
check(selects(dep["spec"]["selector"].get("matchLabels")), "Deployment selector does not match its pod labels")
check(selects(svc.get("spec", {}).get("selector")), "Service selector does not match the pods")
sport = next((p for p in svc.get("spec", {}).get("ports", []) if p.get("name") == "metrics"), {})
check(sport.get("port") == 9464 and sport.get("targetPort") in ("metrics", 9464), "Service port metrics must be 9464 -> metrics")
check(selects(pdb.get("spec", {}).get("selector", {}).get("matchLabels")), "PDB selector.matchLabels missing or not matching the pods")
check(all(svc["metadata"].get("labels", {}).get(k) == v for k, v in sm.get("spec", {}).get("selector", {}).get("matchLabels", {"": None}).items()),
      "ServiceMonitor selector does not match the Service")
check([e.get("port") for e in sm.get("spec", {}).get("endpoints", [])] == ["metrics"], "ServiceMonitor must scrape port metrics")
check(all(e.get("path", "/metrics") == "/metrics" for e in sm.get("spec", {}).get("endpoints", [])), "ServiceMonitor path must be /metrics")
tgt = so.get("spec", {}).get("scaleTargetRef", {})
check(tgt.get("name") == dep["metadata"]["name"], "ScaledObject scaleTargetRef is not the Deployment")
mx, mn = so.get("spec", {}).get("maxReplicaCount"), so.get("spec", {}).get("minReplicaCount", 0)
check(isinstance(mx, int) and mn >= 1 and mx >= mn, f"ScaledObject min/max replicas {mn}/{mx} invalid")

if errors:
    for e in errors:
        print(f"  - {e}", file=sys.stderr)
    sys.exit(1)
print(f"{target}: Deployment, Service, PDB, ServiceMonitor, ScaledObject, ConfigMap OK")
PY
done

step "Grafana dashboard and provisioning (offline)"
provisioning=()
for file in deploy/grafana/provisioning/*.yaml; do
  yq . "$file" >"$tmp/$(basename "$file").json" || fail "yq cannot read $file"
  provisioning+=(--provisioning "$tmp/$(basename "$file").json")
done
python3 scripts/check-monitoring.py static --promtool promtool --workdir "$tmp" "${provisioning[@]}" \
  deploy/grafana/*.json || fail "dashboard static check"

step "security and schema scan (scripts/check-deploy-scan.sh)"
scripts/check-deploy-scan.sh || fail "deploy scan"

step "live Prometheus test (scripts/check-prometheus-live.sh)"
SESSIONIZER_BIN="$bin" scripts/check-prometheus-live.sh || fail "live Prometheus test"

echo "check-deploy: OK (${#targets[@]} renders: ${targets[*]}; dashboard; scan; live Prometheus)"
