#!/usr/bin/env bash
# Checks everything under deploy/ with the real tools, offline:
#   1. promtool check rules (lint fatal) and promtool test rules on deploy/prometheus;
#   2. kubectl kustomize renders deploy/k8s/base, every overlay, and the prod overlay with
#      components/opentelemetry;
#   3. each render's PrometheusRule .spec equals deploy/prometheus/alerts.yml (and passes promtool)
#      up to the runbook links' base URL; every runbook_url, in both, is absolute, on one base
#      (the render's: the PrometheusRule's runbook-base-url annotation, set in the base
#      kustomization.yaml) and ends in `#<alert>`, a section of docs/operations.md;
#   4. each render's objects agree with what the binaries really use:
#      sessionizer: probes /healthz and /readyz on port 9464 (named metrics), the --config path
#      served by the generated ConfigMap, the API key file (openlayer.api_key_file) mounted
#      read-only from Secret sessionizer-openlayer key api-key, Service/ServiceMonitor/PDB/
#      ScaledObject wiring (a lag trigger for the traces topic and, unless repartitioning is
#      off, one for the repartition topic; with otel.spans_topic, one for the spans topic and
#      one for the Collector path's repartition topic), terminationGracePeriodSeconds > drain
#      timeout + 10 s;
#      gateway: ports http 8080 (http.listen) and metrics 9465 (ops.listen), probes /healthz and
#      /readyz on metrics, the --config path served by its ConfigMap, the client key file
#      (auth.api_keys_file) mounted read-only from Secret gateway-api-keys key keys, Service
#      80 -> http and 9465 -> metrics, ServiceMonitor/PDB/HPA wiring (no Deployment replicas
#      under the HPA), grace period > unready delay + drain timeout + 5 s, librdkafka's queue
#      cap below half the memory limit, the NetworkPolicy's ports;
#      each rendered ConfigMap plus the Deployment's env (literal values, ConfigMap keys, dummy
#      values for Secret keys) must load through the binary's `check-config`; each
#      ServiceMonitor selects exactly its own Service; every ServiceMonitor and PrometheusRule
#      carries the same `release` label; every Deployment a ScaledObject or an HPA targets sets
#      no spec.replicas; every PDB has unhealthyPodEvictionPolicy AlwaysAllow;
#      the Kafka connection (generated ConfigMap kafka-connection, set once per overlay): both
#      Deployments read bootstrap servers, security protocol (and SASL mechanism) from it and
#      their effective config equals it; SASL user/password come from a Secret, a CA file from
#      a read-only Secret volume; each ScaledObject trigger's bootstrapServers/sasl/tls match it
#      (the KEDA words agree with librdkafka's) and its TriggerAuthentication reads the sessionizer's
#      Secret keys; both NetworkPolicies allow egress to its brokers' namespace and port (and
#      DNS; the sessionizer's also openlayer.base_url's port);
#      deploy/Dockerfile has a stage per service that builds, copies and runs that binary as
#      the pods' user and exposes their ports;
#   5. the Grafana dashboard and provisioning files, offline (scripts/check-monitoring.py static:
#      structure, ids, variables, every query through promtool check rules);
#   6. the security and schema scan: checkov, hadolint, kubernetes-validate --strict
#      (scripts/check-deploy-scan.sh; pinned tools in a venv under .cache/venv);
#   7. the live test: a real Prometheus scrapes `sessionizer-demo` and a `gateway run` with
#      traffic, and every dashboard query and alert runs through its HTTP API
#      (scripts/check-prometheus-live.sh).
# Run from anywhere: ./scripts/check-deploy.sh  (SESSIONIZER_BIN, DEMO_BIN and GATEWAY_BIN
# override the binaries).
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

# The binaries whose configuration the manifests must satisfy. Unless given, built here (a
# no-op of about a second when they are up to date), so a stale binary is never checked.
if [[ -z "${SESSIONIZER_BIN:-}" || -z "${DEMO_BIN:-}" || -z "${GATEWAY_BIN:-}" ]]; then
  step "cargo build --locked -p sessionizer -p sessionizer-demo -p gateway"
  cargo build -q --locked -p sessionizer -p sessionizer-demo -p gateway \
    || fail "cargo build --locked -p sessionizer -p sessionizer-demo -p gateway failed"
fi
bin="${SESSIONIZER_BIN:-${CARGO_TARGET_DIR:-target}/debug/sessionizer}"
gateway_bin="${GATEWAY_BIN:-${CARGO_TARGET_DIR:-target}/debug/gateway}"
[[ -x "$bin" ]] || fail "no sessionizer binary at $bin"
demo_bin="${DEMO_BIN:-${CARGO_TARGET_DIR:-target}/debug/sessionizer-demo}"
[[ -x "$demo_bin" ]] || fail "no demo binary at $demo_bin"
[[ -x "$gateway_bin" ]] || fail "no gateway binary at $gateway_bin"


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
# Runbook links: absolute (Alertmanager has no base to resolve a relative one), all on one base
# URL, each ending in its alert's section of docs/operations.md. The PrometheusRule may use
# another base (deploy/k8s/base/kustomization.yaml sets it), so the spec is compared with the
# part before `#` cut off.
runbook_anchors='(.groups[].rules[] | select(.annotations.runbook_url != null) | .annotations.runbook_url) |= sub("^[^#]*"; "")'
check_runbooks() { # FILE.json BASE WHAT
  python3 - "$1" "$2" "$3" docs/operations.md <<'PY'
import json, re, sys
path, base, what, docs = sys.argv[1:5]
spec = json.load(open(path))
anchors = {re.sub(r"[^a-z0-9 -]", "", line[4:].strip().lower()).replace(" ", "-")
           for line in open(docs) if line.startswith("### ")}
errors = []
if not re.fullmatch(r"https?://[^\s#]+", base):
    errors.append(f"runbook base URL {base!r} is not an absolute http(s) URL without a fragment")
for group in spec["groups"]:
    for rule in group["rules"]:
        if "alert" not in rule:
            continue
        url = rule.get("annotations", {}).get("runbook_url", "")
        expected = f"{base}#{rule['alert'].lower()}"
        if url != expected:
            errors.append(f"{rule['alert']}: runbook_url {url!r} is not {expected!r}")
        if rule["alert"].lower() not in anchors:
            errors.append(f"{rule['alert']}: no section `### {rule['alert']}` in {docs}")
for error in errors:
    print(f"  - {what}: {error}", file=sys.stderr)
sys.exit(1 if errors else 0)
PY
}
alerts_base="$(jq -r '[.groups[].rules[].annotations.runbook_url // empty] | first | split("#")[0]' "$tmp/alerts.json")"
check_runbooks "$tmp/alerts.json" "$alerts_base" "$rules" || fail "$rules: runbook links"
echo "$rules: every runbook_url is $alerts_base#<alert>"
jq -S -c "$runbook_anchors" "$tmp/alerts.json" >"$tmp/alerts.anchors.json"

targets=(deploy/k8s/base)
for overlay in deploy/k8s/overlays/*/; do targets+=("${overlay%/}"); done
[[ ${#targets[@]} -ge 3 ]] || fail "expected overlays under deploy/k8s/overlays"
# The prod overlay with components/opentelemetry listed first, as its header says to: SASL/TLS
# and the connection must reach the component's lag triggers too.
prod_otel="$tmp/prod-otel"
cp -r deploy/k8s/overlays/prod "$prod_otel"
k8s_rel="$(python3 -c 'import os, sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' "$root/deploy/k8s" "$prod_otel")"
sed -i -e "s#^  - ../../components/kafka-connection\$#  - $k8s_rel/components/opentelemetry\n  - $k8s_rel/components/kafka-connection#" \
  -e "s#^  - ../../components/#  - $k8s_rel/components/#" -e "s#^  - ../../base\$#  - $k8s_rel/base#" \
  "$prod_otel/kustomization.yaml"
grep -q "components/opentelemetry" "$prod_otel/kustomization.yaml" || fail "could not add components/opentelemetry to a copy of the prod overlay"
targets+=("$prod_otel")

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
  jq -S -c "$runbook_anchors" "$tmp/$name-rule.json" >"$tmp/$name-rule.sorted.json"
  cmp -s "$tmp/$name-rule.sorted.json" "$tmp/alerts.anchors.json" \
    || fail "$target: PrometheusRule .spec differs from $rules (regenerate deploy/k8s/base/prometheusrule.yaml, see its header)"
  # The runbook base configured once (deploy/k8s/base/kustomization.yaml) reached every link.
  rule_base="$(yq -r 'select(.kind == "PrometheusRule") | .metadata.annotations["runbook-base-url"] // ""' "$rendered")"
  [[ -n "$rule_base" ]] || fail "$target: PrometheusRule has no runbook-base-url annotation"
  check_runbooks "$tmp/$name-rule.json" "$rule_base" "$target PrometheusRule" || fail "$target: runbook links"
  echo "PrometheusRule .spec == $rules, runbook links on $rule_base"

  # Objects as JSON lines for the python checks.
  yq -c . "$rendered" >"$tmp/$name.jsonl"
  python3 - "$target" "$tmp/$name.jsonl" "$bin" "$tmp" "$gateway_bin" deploy/Dockerfile <<'PY' || fail "$target: manifest checks"
import json, os, re, subprocess, sys, tomllib, urllib.parse

target, jsonl, binary, tmp, gateway_binary, dockerfile = sys.argv[1:7]
objs = [json.loads(line) for line in open(jsonl) if line.strip() and line.strip() != "null"]
errors = []

def check(cond, msg):
    if not cond:
        errors.append(msg)

def one(kind, name):
    found = [o for o in objs if o.get("kind") == kind and o["metadata"]["name"] == name]
    check(len(found) == 1, f"expected exactly one {kind} {name}, found {len(found)}")
    return found[0] if found else {}

def configmap(name):
    found = [o for o in objs if o.get("kind") == "ConfigMap" and o["metadata"]["name"] == name]
    check(len(found) == 1, f"no rendered ConfigMap {name}")
    return found[0] if found else {}

# The Kafka connection: one generated ConfigMap (kafka-connection-HASH).
kafka_cms = [o for o in objs if o.get("kind") == "ConfigMap" and o["metadata"]["name"].startswith("kafka-connection-")]
check(len(kafka_cms) == 1, f"expected one generated ConfigMap kafka-connection, found {len(kafka_cms)}")
kafka_cm_name = kafka_cms[0]["metadata"]["name"] if kafka_cms else None
conn = kafka_cms[0].get("data", {}) if kafka_cms else {}

def resolve_env(who, env):
    """The container's environment as the kubelet builds it: literal values, ConfigMap keys
    from the render, and a dummy value per Secret key (Secrets are created out of band).
    Returns (values, sources); a source is ("value", None, None), ("configMap", NAME, KEY) or
    ("secret", NAME, KEY)."""
    values, sources = {}, {}
    for entry in env:
        name, ref = entry["name"], entry.get("valueFrom", {})
        if "value" in entry:
            values[name], sources[name] = entry["value"], ("value", None, None)
        elif "configMapKeyRef" in ref:
            cm_ref = ref["configMapKeyRef"]
            data = next((o.get("data", {}) for o in objs if o.get("kind") == "ConfigMap" and o["metadata"]["name"] == cm_ref.get("name")), None)
            check(data is not None, f"{who}: env {name} reads ConfigMap {cm_ref.get('name')}, which is not in the render")
            if data is not None and cm_ref.get("key") in data:
                values[name] = data[cm_ref["key"]]
            else:
                check(cm_ref.get("optional") is True, f"{who}: env {name} reads key {cm_ref.get('key')} missing from ConfigMap {cm_ref.get('name')}")
            sources[name] = ("configMap", cm_ref.get("name"), cm_ref.get("key"))
        elif "secretKeyRef" in ref:
            secret_ref = ref["secretKeyRef"]
            values[name] = f"dummy-{secret_ref.get('key')}"
            sources[name] = ("secret", secret_ref.get("name"), secret_ref.get("key"))
        else:
            check(False, f"{who}: env {name} has a source this check does not know")
    return values, sources

def secret_file(who, pod_spec, container, path):
    """(Secret name, key) of the file at `path`, mounted read-only from a Secret volume, or None."""
    for mount in container.get("volumeMounts", []):
        prefix = mount["mountPath"].rstrip("/") + "/"
        if not path.startswith(prefix):
            continue
        volume = next((v for v in pod_spec.get("volumes", []) if v["name"] == mount["name"]), {})
        secret = volume.get("secret", {})
        item = next((i for i in secret.get("items", []) if i.get("path") == path[len(prefix):]), None)
        check(mount.get("readOnly") is True, f"{who}: {path} must be mounted read-only")
        if secret.get("secretName") and item:
            return (secret["secretName"], item["key"])
    check(False, f"{who}: {path} is not a file mounted from a Secret volume item")
    return None

dep, svc, pdb = one("Deployment", "sessionizer"), one("Service", "sessionizer"), one("PodDisruptionBudget", "sessionizer")
sm, so = one("ServiceMonitor", "sessionizer"), one("ScaledObject", "sessionizer")
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
    check(ref.get("name", "").startswith("sessionizer-config-"), f"config volume references {ref.get('name')}, not the generated sessionizer-config")
    cm = configmap(ref.get("name"))
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
literal_env, env_sources = resolve_env("sessionizer", env)
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

# Effective configuration: ConfigMap TOML + the Deployment's env (literal values, ConfigMap
# keys, dummies for Secret keys), through check-config.
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
        print(f"check-config accepts the rendered ConfigMap + env {sorted(literal_env)}")
if effective:
    listen = effective["http"]["listen"]
    check(listen.rsplit(":", 1)[-1] == "9464", f"http.listen {listen} is not on the container port 9464")
    drain = effective["shutdown"]["drain_timeout_secs"]
    grace = pod.get("terminationGracePeriodSeconds", 30)
    check(grace >= drain + 10, f"terminationGracePeriodSeconds {grace} must be >= drain_timeout_secs {drain} + 10")
    check(effective["openlayer"].get("api_key_file") == dummy_key_file and "api_key" not in effective["openlayer"],
          "check-config did not take the API key from openlayer.api_key_file")
    # One lag trigger per topic the group consumes: the traces topic, and the repartition
    # topic (read under `<group_id>.repartition`) unless repartitioning is off.
    kafka_cfg = effective["kafka"]
    wanted = {(kafka_cfg["topic"], kafka_cfg["group_id"])}
    if kafka_cfg.get("repartition_topic"):
        wanted.add((kafka_cfg["repartition_topic"], kafka_cfg["group_id"] + ".repartition"))
    # The Collector path's two groups: the spans topic's router and the assembly.
    otel_cfg = effective.get("otel", {})
    if otel_cfg.get("spans_topic"):
        wanted.add((otel_cfg["spans_topic"], kafka_cfg["group_id"] + ".otel"))
        wanted.add((otel_cfg["repartition_topic"], kafka_cfg["group_id"] + ".otel-assembly"))
    triggers = [t.get("metadata", {}) for t in so.get("spec", {}).get("triggers", []) if t.get("type") == "kafka"]
    found = {(t.get("topic"), t.get("consumerGroup")) for t in triggers}
    check(found == wanted, f"ScaledObject kafka triggers (topic, consumerGroup) {sorted(found)} != {sorted(wanted)} "
          f"(kafka.topic/group_id, kafka.repartition_topic/<group_id>.repartition unless it is empty, and with "
          f"otel.spans_topic set otel.spans_topic/<group_id>.otel and otel.repartition_topic/<group_id>.otel-assembly)")
    for trig in triggers:
        check(trig.get("bootstrapServers") == kafka_cfg["bootstrap_servers"],
              f"ScaledObject bootstrapServers {trig.get('bootstrapServers')} != kafka.bootstrap_servers {kafka_cfg['bootstrap_servers']}")

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


# ---- Gateway (services/gateway: config.rs, http.rs, main.rs) -------------------------------
def port_number(text):
    return int(text.rsplit(":", 1)[-1])

def mebibytes(quantity):
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi)", str(quantity))
    return int(match.group(1)) * units[match.group(2)] if match else None

gdep, gsvc, gpdb = one("Deployment", "gateway"), one("Service", "gateway"), one("PodDisruptionBudget", "gateway")
gsm, ghpa, gnp = one("ServiceMonitor", "gateway"), one("HorizontalPodAutoscaler", "gateway"), one("NetworkPolicy", "gateway")
gpod = gdep.get("spec", {}).get("template", {}).get("spec", {})
gpod_labels = gdep.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {})
gcontainers = [c for c in gpod.get("containers", []) if c["name"] == "gateway"]
check(len(gcontainers) == 1, "gateway: no container named gateway")
g = gcontainers[0] if gcontainers else {}

# Ports and probes: http.rs serves the API on http.listen and /healthz, /readyz, /metrics on ops.listen.
gports = {p.get("name"): p.get("containerPort") for p in g.get("ports", [])}
check(gports == {"http": 8080, "metrics": 9465}, f"gateway: container ports must be http 8080 and metrics 9465, are {gports}")
for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
    get = g.get(probe, {}).get("httpGet", {})
    check(get.get("path") == path, f"gateway: {probe} path must be {path}, is {get.get('path')}")
    check(get.get("port") in ("metrics", 9465), f"gateway: {probe} port must be metrics/9465, is {get.get('port')}")

# Command line: main.rs `gateway run --config FILE`, and the file from the generated ConfigMap.
gargs = g.get("args", [])
check(gargs[:1] == ["run"] and "--config" in gargs, f"gateway: args must be run --config FILE, are {gargs}")
gconfig_path = gargs[gargs.index("--config") + 1] if "--config" in gargs else ""
gmount = next((m for m in g.get("volumeMounts", []) if gconfig_path.startswith(m["mountPath"].rstrip("/") + "/")), None)
check(gmount is not None, f"gateway: no volumeMount serves {gconfig_path}")
gtoml = None
if gmount:
    ref = next((v for v in gpod.get("volumes", []) if v["name"] == gmount["name"]), {}).get("configMap", {})
    check(ref.get("name", "").startswith("gateway-config-"), f"gateway: config volume references {ref.get('name')}, not the generated gateway-config")
    rel = gconfig_path[len(gmount["mountPath"].rstrip("/")) + 1:]
    key = next((i["key"] for i in ref.get("items", []) if i["path"] == rel), rel)
    gtoml = configmap(ref.get("name")).get("data", {}).get(key)
    check(gtoml is not None, f"gateway: ConfigMap {ref.get('name')} has no key {key} for {gconfig_path}")

# Secret: the client keys are a file from Secret gateway-api-keys, key keys, mounted read-only
# where auth.api_keys_file points; never an environment variable.
genv = g.get("env", [])
check(not any(e["name"] == "GATEWAY__AUTH__API_KEYS" for e in genv), "gateway: client keys must come from the mounted Secret file, not GATEWAY__AUTH__API_KEYS")
gkey_file = None
gsecret_volumes = [v for v in gpod.get("volumes", []) if v.get("secret", {}).get("secretName") == "gateway-api-keys"]
check(len(gsecret_volumes) == 1, "gateway: expected one volume from Secret gateway-api-keys")
if gsecret_volumes:
    volume = gsecret_volumes[0]
    item = next((i for i in volume["secret"].get("items", []) if i.get("key") == "keys"), None)
    secret_mount = next((m for m in g.get("volumeMounts", []) if m["name"] == volume["name"]), None)
    check(item is not None, "gateway: the Secret volume must project key keys")
    check(secret_mount is not None and secret_mount.get("readOnly") is True, "gateway: the Secret volume must be mounted read-only")
    if item and secret_mount:
        gkey_file = secret_mount["mountPath"].rstrip("/") + "/" + item["path"]
gliteral_env, genv_sources = resolve_env("gateway", genv)
gconfigured_key_file = gliteral_env.get("GATEWAY__AUTH__API_KEYS_FILE")
if gconfigured_key_file is None and gtoml is not None:
    gconfigured_key_file = tomllib.loads(gtoml).get("auth", {}).get("api_keys_file")
check(gkey_file is not None and gconfigured_key_file == gkey_file,
      f"gateway: auth.api_keys_file is {gconfigured_key_file}, not the mounted Secret file {gkey_file}")

# Security context: the same as the sessionizer's.
gsc, gpsc = g.get("securityContext", {}), gpod.get("securityContext", {})
check(gsc == sc and gpsc == psc, "gateway: container and pod securityContext must equal the sessionizer's")
check(gpod.get("automountServiceAccountToken") is False, "gateway: automountServiceAccountToken must be false")
gres = g.get("resources", {})
check(gres.get("requests", {}).get("cpu") and gres.get("requests", {}).get("memory") and gres.get("limits", {}).get("memory"),
      "gateway: resources need cpu/memory requests (the HPA scales on CPU utilization) and a memory limit")

# Effective configuration: ConfigMap TOML + the Deployment's env (as for the sessionizer), through
# `gateway check-config`.
geffective = {}
if gtoml is not None:
    path = os.path.join(tmp, os.path.basename(target) + "-gateway.toml")
    with open(path, "w") as f:
        f.write(gtoml)
    # The key file exists only in the pod; a dummy file stands in for it (its path was checked above).
    dummy_keys = os.path.join(tmp, "gateway-keys")
    with open(dummy_keys, "w") as f:
        f.write("dummy-client-key\n")
    run_env = {"PATH": os.environ["PATH"], **gliteral_env, "GATEWAY__AUTH__API_KEYS_FILE": dummy_keys}
    proc = subprocess.run([gateway_binary, "check-config", "--config", path], env=run_env, capture_output=True, text=True)
    if proc.returncode != 0:
        errors.append(f"gateway check-config rejected the rendered config + env:\n{proc.stdout}{proc.stderr}")
    else:
        geffective = json.loads(proc.stdout)
        print(f"gateway check-config accepts the rendered ConfigMap + env {sorted(n for n in gliteral_env)}")
if geffective:
    check(port_number(geffective["http"]["listen"]) == gports.get("http"),
          f"gateway: http.listen {geffective['http']['listen']} is not on the container port http {gports.get('http')}")
    check(port_number(geffective["ops"]["listen"]) == gports.get("metrics"),
          f"gateway: ops.listen {geffective['ops']['listen']} is not on the container port metrics {gports.get('metrics')}")
    check(geffective["auth"].get("api_keys_file") == dummy_keys and not geffective["auth"].get("api_keys"),
          "gateway: the client keys must come from auth.api_keys_file only")
    # Forwarded OTLP spans must reach the topic the sessionizer assembles from.
    if effective and geffective["kafka"].get("spans_topic"):
        check(geffective["kafka"]["spans_topic"] == effective.get("otel", {}).get("spans_topic"),
              f"gateway: kafka.spans_topic {geffective['kafka']['spans_topic']!r} is not the sessionizer's "
              f"otel.spans_topic {effective.get('otel', {}).get('spans_topic')!r}")
    unready, drain = geffective["shutdown"]["unready_delay_secs"], geffective["shutdown"]["drain_timeout_secs"]
    grace = gpod.get("terminationGracePeriodSeconds", 30)
    check(grace >= unready + drain + 5,
          f"gateway: terminationGracePeriodSeconds {grace} must be >= unready_delay_secs {unready} + drain_timeout_secs {drain} + 5")
    # librdkafka's queue (default 1 GiB) must fit in the memory limit.
    queue_kbytes = geffective["kafka"]["client"].get("queue.buffering.max.kbytes")
    limit_mib = mebibytes(gres.get("limits", {}).get("memory"))
    check(queue_kbytes is not None and limit_mib is not None and int(queue_kbytes) / 1024 < limit_mib / 2,
          f"gateway: kafka.client queue.buffering.max.kbytes ({queue_kbytes}) must be set and below half the memory limit ({limit_mib} MiB)")

# Service, ServiceMonitor, PDB, HPA, NetworkPolicy wiring.
def gselects(sel):
    return bool(sel) and all(gpod_labels.get(k) == v for k, v in sel.items())
check(gselects(gdep.get("spec", {}).get("selector", {}).get("matchLabels")), "gateway: Deployment selector does not match its pod labels")
check(not gselects(dep["spec"]["selector"].get("matchLabels")) and not selects(gdep.get("spec", {}).get("selector", {}).get("matchLabels")),
      "gateway and sessionizer Deployments select each other's pods")
check(gselects(gsvc.get("spec", {}).get("selector")), "gateway: Service selector does not match the pods")
sports = {p.get("name"): (p.get("port"), p.get("targetPort")) for p in gsvc.get("spec", {}).get("ports", [])}
check(sports.get("http") == (80, "http"), f"gateway: Service port http must be 80 -> http, is {sports.get('http')}")
check(sports.get("metrics") == (9465, "metrics"), f"gateway: Service port metrics must be 9465 -> metrics, is {sports.get('metrics')}")
check(gselects(gpdb.get("spec", {}).get("selector", {}).get("matchLabels")), "gateway: PDB selector.matchLabels missing or not matching the pods")
services = [o for o in objs if o.get("kind") == "Service"]
for monitor, service in ((sm, svc), (gsm, gsvc)):
    sel = monitor.get("spec", {}).get("selector", {}).get("matchLabels", {})
    chosen = [o["metadata"]["name"] for o in services if sel and all(o["metadata"].get("labels", {}).get(k) == v for k, v in sel.items())]
    check(chosen == [service.get("metadata", {}).get("name")],
          f"ServiceMonitor {monitor.get('metadata', {}).get('name')} selects Services {chosen}, not exactly {service.get('metadata', {}).get('name')}")
check([e.get("port") for e in gsm.get("spec", {}).get("endpoints", [])] == ["metrics"], "gateway: ServiceMonitor must scrape port metrics only")
check(all(e.get("path", "/metrics") == "/metrics" for e in gsm.get("spec", {}).get("endpoints", [])), "gateway: ServiceMonitor path must be /metrics")
hspec = ghpa.get("spec", {})
check(hspec.get("scaleTargetRef", {}).get("kind") == "Deployment" and hspec.get("scaleTargetRef", {}).get("name") == "gateway",
      "gateway: HPA scaleTargetRef is not Deployment gateway")
hmin, hmax = hspec.get("minReplicas", 1), hspec.get("maxReplicas")
check(isinstance(hmax, int) and 1 <= hmin <= hmax, f"gateway: HPA min/max replicas {hmin}/{hmax} invalid")
check(any(m.get("resource", {}).get("name") == "cpu" for m in hspec.get("metrics", [])), "gateway: HPA must scale on cpu")
min_available = gpdb.get("spec", {}).get("minAvailable")
check(min_available is None or (isinstance(min_available, int) and min_available < hmin),
      f"gateway: PDB minAvailable {min_available} blocks every eviction at the HPA's {hmin} replica(s)")
check(gselects(gnp.get("spec", {}).get("podSelector", {}).get("matchLabels")), "gateway: NetworkPolicy podSelector does not match the pods")
check(sorted(gnp.get("spec", {}).get("policyTypes", [])) == ["Egress", "Ingress"], "gateway: NetworkPolicy must restrict Ingress and Egress")
ingress_ports = sorted(str(p.get("port")) for rule in gnp.get("spec", {}).get("ingress", []) for p in rule.get("ports", []))
check(ingress_ports == ["http", "metrics"], f"gateway: NetworkPolicy ingress must open ports http and metrics only, opens {ingress_ports}")
snp = one("NetworkPolicy", "sessionizer")
check(selects(snp.get("spec", {}).get("podSelector", {}).get("matchLabels")), "sessionizer: NetworkPolicy podSelector does not match the pods")

# ---- Replica counts: KEDA or the HPA owns them --------------------------------------------
# A Deployment that sets spec.replicas is scaled back to that number by every `kubectl apply`,
# fighting the autoscaler; every Deployment a ScaledObject or an HPA targets must leave it out.
scaled = [(o["kind"], o["metadata"]["name"], o.get("spec", {}).get("scaleTargetRef", {}))
          for o in objs if o.get("kind") in ("ScaledObject", "HorizontalPodAutoscaler")]
check({ref.get("name") for _, _, ref in scaled} >= {"sessionizer", "gateway"}, "both Deployments must be autoscaled")
for kind, name, ref in scaled:
    if ref.get("kind", "Deployment") != "Deployment":
        continue
    for deployment in [o for o in objs if o.get("kind") == "Deployment" and o["metadata"]["name"] == ref.get("name")]:
        check("replicas" not in deployment.get("spec", {}),
              f"Deployment {ref.get('name')} sets spec.replicas {deployment['spec'].get('replicas')}, but {kind} {name} owns the count")

# ---- PodDisruptionBudgets ------------------------------------------------------------------
for budget in [o for o in objs if o.get("kind") == "PodDisruptionBudget"]:
    check(budget.get("spec", {}).get("unhealthyPodEvictionPolicy") == "AlwaysAllow",
          f"PDB {budget['metadata']['name']}: unhealthyPodEvictionPolicy must be AlwaysAllow (unready pods must not block drains)")

# ---- Monitoring objects: the same selector labels on each (base kustomization.yaml `labels`) -
monitoring = [o for o in objs if o.get("kind") in ("ServiceMonitor", "PrometheusRule")]
release_values = {o["metadata"].get("labels", {}).get("release") for o in monitoring}
check(len(monitoring) == 3 and len(release_values) == 1 and None not in release_values,
      f"every ServiceMonitor and PrometheusRule must carry the same `release` label (kube-prometheus-stack's selector), have {release_values}")

# ---- Kafka connection: ConfigMap kafka-connection reaches both Deployments, the ScaledObject
# (with its TriggerAuthentication) and both NetworkPolicies ---------------------------------
KEDA_SASL = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512",
             "OAUTHBEARER": "oauthbearer", "GSSAPI": "gssapi"}
for key in ("bootstrap-servers", "security-protocol", "keda-sasl", "keda-tls", "brokers-namespace", "brokers-port"):
    check(conn.get(key), f"ConfigMap kafka-connection: key {key} missing or empty")
protocol = conn.get("security-protocol", "")
check(protocol in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
      f"kafka-connection security-protocol {protocol!r} is not PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
sasl_on, tls_on = protocol.startswith("SASL_"), protocol in ("SSL", "SASL_SSL")
mechanism = conn.get("sasl-mechanism")
check(sasl_on == bool(mechanism), f"kafka-connection sasl-mechanism must be set exactly when security-protocol is SASL_* (is {mechanism!r} with {protocol})")
check(not sasl_on or mechanism in KEDA_SASL, f"kafka-connection sasl-mechanism {mechanism!r} is not one of {sorted(KEDA_SASL)}")
check(conn.get("keda-sasl") == (KEDA_SASL.get(mechanism) if sasl_on else "none"),
      f"kafka-connection keda-sasl {conn.get('keda-sasl')!r} does not say {protocol}/{mechanism} in KEDA's words ({KEDA_SASL.get(mechanism) if sasl_on else 'none'})")
check(conn.get("keda-tls") == ("enable" if tls_on else "disable"),
      f"kafka-connection keda-tls {conn.get('keda-tls')!r} must be {'enable' if tls_on else 'disable'} with {protocol}")

def broker_egress(who, policy, servers):
    """The NetworkPolicy lets the pods reach the brokers: the ConfigMap's namespace and port, and
    those of every host.NAMESPACE.svc[.cluster.local]:PORT bootstrap server; and DNS."""
    egress = policy.get("spec", {}).get("egress", [])
    check("Egress" in policy.get("spec", {}).get("policyTypes", []), f"{who}: NetworkPolicy must restrict Egress")
    def allows(namespace, port):
        return any(
            any(peer.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name") == namespace
                and "podSelector" not in peer for peer in rule.get("to", []))
            and any(str(p.get("port")) == str(port) for p in rule.get("ports", []))
            for rule in egress)
    check(allows(conn.get("brokers-namespace"), conn.get("brokers-port")),
          f"{who}: NetworkPolicy egress does not allow kafka-connection's brokers-namespace {conn.get('brokers-namespace')} port {conn.get('brokers-port')}")
    for server in servers.split(","):
        host, _, port = server.strip().rpartition(":")
        labels = host.split(".")
        namespace = labels[1] if len(labels) >= 3 and labels[2] == "svc" else None
        check(namespace is not None, f"{who}: bootstrap server {server} is not host.NAMESPACE.svc:PORT; check its egress rule by hand")
        check(namespace == conn.get("brokers-namespace") and port == conn.get("brokers-port"),
              f"{who}: bootstrap server {server} is not in kafka-connection's brokers-namespace/brokers-port {conn.get('brokers-namespace')}/{conn.get('brokers-port')}")
        check(allows(namespace, port), f"{who}: NetworkPolicy egress does not allow namespace {namespace} port {port} ({server})")
    check(any(any(str(p.get("port")) == "53" and p.get("protocol") == "UDP" for p in rule.get("ports", [])) for rule in egress),
          f"{who}: NetworkPolicy egress must allow DNS (UDP 53)")
    return allows

credentials = {}
for who, prefix, eff, sources, pod_spec, container, policy in (
        ("sessionizer", "SESSIONIZER", effective, env_sources, pod, c, snp),
        ("gateway", "GATEWAY", geffective, genv_sources, gpod, g, gnp)):
    wanted = {f"{prefix}__KAFKA__BOOTSTRAP_SERVERS": "bootstrap-servers",
              f"{prefix}__KAFKA__CLIENT__SECURITY__PROTOCOL": "security-protocol"}
    if sasl_on:
        wanted[f"{prefix}__KAFKA__CLIENT__SASL__MECHANISM"] = "sasl-mechanism"
    for variable, key in wanted.items():
        check(sources.get(variable) == ("configMap", kafka_cm_name, key),
              f"{who}: env {variable} must read key {key} of ConfigMap kafka-connection, reads {sources.get(variable)}")
    if not eff:
        continue
    kafka = eff["kafka"]
    client = kafka.get("client", {})
    check(kafka.get("bootstrap_servers") == conn.get("bootstrap-servers"),
          f"{who}: effective kafka.bootstrap_servers {kafka.get('bootstrap_servers')} != kafka-connection's {conn.get('bootstrap-servers')}")
    check(client.get("security.protocol") == protocol,
          f"{who}: effective kafka.client security.protocol {client.get('security.protocol')} != kafka-connection's {protocol}")
    if sasl_on:
        check(client.get("sasl.mechanism") == mechanism, f"{who}: effective kafka.client sasl.mechanism {client.get('sasl.mechanism')} != {mechanism}")
        pair = tuple(sources.get(f"{prefix}__KAFKA__CLIENT__SASL__{part}") for part in ("USERNAME", "PASSWORD"))
        check(all(source and source[0] == "secret" for source in pair) and "sasl.password" in client,
              f"{who}: SASL needs {prefix}__KAFKA__CLIENT__SASL__USERNAME and __PASSWORD from a Secret (secretKeyRef), have {pair}")
        credentials[who] = {"username": pair[0][1:] if pair[0] else None, "password": pair[1][1:] if pair[1] else None}
    else:
        check(not any(key.startswith("sasl.") for key in client), f"{who}: sasl.* client properties set with {protocol}")
        credentials[who] = {}
    ca_location = client.get("ssl.ca.location")
    if ca_location:
        check(tls_on, f"{who}: ssl.ca.location is set but security-protocol {protocol} uses no TLS")
        credentials[who]["ca"] = secret_file(who, pod_spec, container, ca_location)
    allows = broker_egress(who, policy, kafka.get("bootstrap_servers", ""))
    if who == "sessionizer":
        # Openlayer over HTTPS, wherever it is.
        base_url = eff["openlayer"]["base_url"]
        port = urllib.parse.urlsplit(base_url).port or (443 if base_url.startswith("https:") else 80)
        check(any(not rule.get("to") and any(str(p.get("port")) == str(port) for p in rule.get("ports", []))
                  for rule in policy.get("spec", {}).get("egress", [])),
              f"sessionizer: NetworkPolicy egress does not allow port {port} of openlayer.base_url {base_url}")

# The ScaledObject's triggers: the same brokers and security, and the sessionizer's credentials.
wanted_params = {name: ref for name, ref in credentials.get("sessionizer", {}).items() if ref}
for trigger in (t for t in so.get("spec", {}).get("triggers", []) if t.get("type") == "kafka"):
    meta = trigger.get("metadata", {})
    label = f"ScaledObject trigger {trigger.get('name', meta.get('topic'))}"
    check(meta.get("bootstrapServers") == conn.get("bootstrap-servers"),
          f"{label}: bootstrapServers {meta.get('bootstrapServers')} != kafka-connection's {conn.get('bootstrap-servers')} "
          f"(does the overlay list components/kafka-connection?)")
    check(meta.get("sasl") == conn.get("keda-sasl") and meta.get("tls") == conn.get("keda-tls"),
          f"{label}: sasl/tls {meta.get('sasl')}/{meta.get('tls')} != kafka-connection's {conn.get('keda-sasl')}/{conn.get('keda-tls')}")
    if wanted_params:
        auth = trigger.get("authenticationRef", {})
        check(auth.get("kind", "TriggerAuthentication") == "TriggerAuthentication" and auth.get("name"),
              f"{label} needs an authenticationRef to a TriggerAuthentication (components/kafka-sasl-tls)")
        trigger_auth = one("TriggerAuthentication", auth.get("name")) if auth.get("name") else {}
        params = {r.get("parameter"): (r.get("name"), r.get("key")) for r in trigger_auth.get("spec", {}).get("secretTargetRef", [])}
        for name, ref in wanted_params.items():
            check(params.get(name) == ref, f"TriggerAuthentication {auth.get('name')}: parameter {name} is {params.get(name)}, the sessionizer uses Secret/key {ref}")
print(f"Kafka connection {conn.get('bootstrap-servers')} ({protocol}{'/' + mechanism if mechanism else ''}) reaches both "
      f"Deployments, the ScaledObject{' and its TriggerAuthentication' if wanted_params else ''} and both NetworkPolicies")

# deploy/Dockerfile: a stage per service that builds, copies and runs its binary as the pods'
# user and exposes the Deployment's ports.
stages, current = {}, None
for line in open(dockerfile).read().replace("\\\n", " ").splitlines():
    words = line.split()
    if not words or words[0].startswith("#"):
        continue
    if words[0].upper() == "FROM":
        current = words[3] if len(words) >= 4 and words[2].upper() == "AS" else words[1]
        stages[current] = []
    elif current:
        stages[current].append((words[0].upper(), " ".join(words[1:])))
build_commands = " ".join(arg for name in stages for instr, arg in stages[name] if instr == "RUN")
for service, deployment, pod_spec, container in (("sessionizer", dep, pod, c), ("gateway", gdep, gpod, g)):
    stage = dict(stages.get(service, []))
    check(service in stages, f"Dockerfile: no stage `AS {service}`")
    if service not in stages:
        continue
    binary_path = f"/usr/local/bin/{service}"
    check(f"-p {service} --bin {service}" in build_commands and f"/out/{service}" in build_commands,
          f"Dockerfile: the build does not build and install the {service} binary")
    check(f"--from=build /out/{service} {binary_path}" in stage.get("COPY", ""), f"Dockerfile: stage {service} does not copy {binary_path}")
    check(stage.get("ENTRYPOINT") == f'["{binary_path}"]', f"Dockerfile: stage {service} ENTRYPOINT is not {binary_path}")
    check(stage.get("CMD") == '["run"]' and (container.get("args") or [""])[0] == "run", f"Dockerfile/Deployment: {service} must run `run`")
    user = f"{pod_spec.get('securityContext', {}).get('runAsUser')}:{pod_spec.get('securityContext', {}).get('runAsGroup')}"
    check(stage.get("USER") == user, f"Dockerfile: stage {service} USER {stage.get('USER')} is not the pod's {user}")
    exposed = sorted(int(p) for p in stage.get("EXPOSE", "").split())
    check(exposed == sorted(p["containerPort"] for p in container.get("ports", [])),
          f"Dockerfile: stage {service} EXPOSE {exposed} differs from the Deployment's container ports")
    image = container.get("image", "")
    check(image.split("@")[0].split(":")[0].rsplit("/", 1)[-1] == service, f"{service}: container image {image} is not the {service} image")

if errors:
    for e in errors:
        print(f"  - {e}", file=sys.stderr)
    sys.exit(1)
print(f"{target}: sessionizer (Deployment, Service, PDB, ServiceMonitor, ScaledObject, NetworkPolicy, ConfigMap) and "
      f"gateway (Deployment, Service, PDB, HPA, ServiceMonitor, NetworkPolicy, ConfigMap) OK; Dockerfile stages OK")
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
DEMO_BIN="$demo_bin" GATEWAY_BIN="$gateway_bin" scripts/check-prometheus-live.sh || fail "live Prometheus test"

echo "check-deploy: OK (${#targets[@]} renders: ${targets[*]}; dashboard; scan; live Prometheus)"
