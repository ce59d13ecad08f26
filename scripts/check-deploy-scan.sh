#!/usr/bin/env bash
# Static security and schema scan of deploy/, offline, with pinned tools
# (scripts/requirements/deploy-scan.txt, installed once by scripts/python-venv.sh deploy-scan):
#   1. checkov, kubernetes framework, on the render of every overlay (not the base: it has no
#      namespace, which checkov reports as the default namespace);
#   2. checkov, dockerfile framework, on deploy/Dockerfile;
#   3. hadolint on deploy/Dockerfile (any finding fails, warnings included);
#   4. kubernetes-validate --strict (unknown fields fail) on every overlay render, which must
#      include the sessionizer's and the gateway's core objects (HPA included); the custom
#      resources (ScaledObject, TriggerAuthentication, ServiceMonitor, PrometheusRule) have no
#      bundled schema and are checked by check-deploy.sh's wiring checks and promtool instead.
# Pass means: no failed check, no parsing error, checks actually ran, and every exception is
# justified: checkov skips need a reason (`checkov.io/skipN: ID=reason` annotations on the
# resource, `# checkov:skip=ID: reason` in the Dockerfile), and every `# hadolint ignore=IDS`
# needs the comment block just above it to name each ID with its reason.
# Severity filtering is not used: it needs a vendor API key and silently runs no check offline.
# Usage: scripts/check-deploy-scan.sh  (called by scripts/check-deploy.sh; needs kubectl, python3)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

fail() { echo "check-deploy-scan: FAIL: $*" >&2; exit 1; }
step() { echo "== $*"; }

venv_bin="$(scripts/python-venv.sh deploy-scan)" || fail "cannot install scripts/requirements/deploy-scan.txt"
checkov="$venv_bin/checkov"
hadolint="$venv_bin/hadolint"
kubernetes_validate="$venv_bin/kubernetes-validate"
python="$venv_bin/python"
for tool in "$checkov" "$hadolint" "$kubernetes_validate"; do
  [[ -x "$tool" ]] || fail "$tool missing from the deploy-scan venv"
done
# Kubernetes version of the schemas: the kubectl client's minor version.
k8s_version=1.32

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

overlays=()
for overlay in deploy/k8s/overlays/*/; do overlays+=("${overlay%/}"); done
[[ ${#overlays[@]} -ge 1 ]] || fail "no overlays under deploy/k8s/overlays"
dockerfile=deploy/Dockerfile

# One directory for one checkov run (its start-up costs more than a scan): each overlay's
# render as scan/NAME/NAME.yaml, and the Dockerfile as scan/Dockerfile (checkov's dockerfile
# framework only picks up files named Dockerfile, Dockerfile.x or x.Dockerfile).
mkdir -p "$tmp/scan"
expected=(/Dockerfile)
for overlay in "${overlays[@]}"; do
  name="$(basename "$overlay")"
  mkdir -p "$tmp/scan/$name"
  kubectl kustomize "$overlay" >"$tmp/scan/$name/$name.yaml" || fail "kubectl kustomize $overlay"
  expected+=("/$name/$name.yaml")
done
cp "$dockerfile" "$tmp/scan/Dockerfile"

step "checkov (kubernetes: ${overlays[*]}; dockerfile: $dockerfile)"
# checkov exits 1 when a check fails and 2 when it crashes; the JSON report is judged either way.
status=0
(cd "$tmp/scan" && "$checkov" -d . --framework kubernetes dockerfile --skip-download -o json \
  >"$tmp/checkov.json" 2>"$tmp/checkov.err") || status=$?
if [[ $status -gt 1 ]]; then
  tail -n 20 "$tmp/checkov.err" >&2
  fail "checkov exited with $status"
fi
# No failures or parsing errors; checks passed on every expected file (else checkov did not
# scan it); every skip has a reason.
"$python" - "$tmp/checkov.json" "${expected[@]}" <<'PY' || fail "checkov"
import json, sys
path, expected = sys.argv[1], sys.argv[2:]
# Resources (kind.name) every Kubernetes render must have had checks run on: each service's
# Deployment and Service, and its Pod, which is what CKV2_K8S_6 (a NetworkPolicy selects the
# pod) reports on. checkov has no check for PDBs and HPAs; kubernetes-validate covers them.
expected_resources = [f"{kind}.{name}" for name in ("sessionizer", "gateway")
                      for kind in ("Deployment", "Service", "Pod")]
try:
    report = json.load(open(path))
except (OSError, json.JSONDecodeError) as error:
    sys.exit(f"no checkov JSON report ({error})")
reports = report if isinstance(report, list) else [report]
problems, passed_by_file = [], {}
for one in reports:
    summary = one.get("summary", {})
    if summary.get("parsing_errors", 0):
        problems.append(f"{one.get('check_type')}: {summary['parsing_errors']} parsing error(s)")
    results = one.get("results", {})
    for check in results.get("passed_checks", []):
        passed_by_file[check["file_path"]] = passed_by_file.get(check["file_path"], 0) + 1
        # checkov names Kubernetes resources Kind.namespace.name[.pod labels] (no dots in
        # namespaces and in our names).
        parts = check["resource"].split(".")
        key = (check["file_path"], f"{parts[0]}.{parts[2] if len(parts) > 2 else ''}")
        passed_by_file[key] = passed_by_file.get(key, 0) + 1
    for check in results.get("failed_checks", []):
        problems.append(f"FAILED {check['check_id']} {check['check_name']!r} on {check['resource']} "
                        f"({check['file_path']}:{check['file_line_range']})")
    for check in results.get("skipped_checks", []):
        reason = (check.get("check_result", {}).get("suppress_comment") or "").strip()
        if len(reason) < 10:
            problems.append(f"skip of {check['check_id']} on {check['resource']} has no reason: {reason!r}")
        else:
            print(f"  skipped {check['check_id']} on {check['resource']}: {reason}")
for file in expected:
    if not passed_by_file.get(file):
        problems.append(f"{file}: no check ran on it")
    elif file.endswith(".yaml"):
        for resource in expected_resources:
            if not passed_by_file.get((file, resource)):
                problems.append(f"{file}: no check ran on {resource}")
if problems:
    for problem in problems:
        print(f"  - {problem}", file=sys.stderr)
    sys.exit(f"checkov: {len(problems)} problem(s)")
print("checkov: " + ", ".join(f"{file} {passed_by_file[file]} passed" for file in expected)
      + f"; none failed; checks ran on {', '.join(expected_resources)} in every render")
PY
[[ $status -eq 0 ]] || fail "checkov exited with $status"

for overlay in "${overlays[@]}"; do
  name="$(basename "$overlay")"
  rendered="$tmp/scan/$name/$name.yaml"
  step "kubernetes-validate --strict -k $k8s_version $overlay"
  "$kubernetes_validate" --strict -k "$k8s_version" "$rendered" >"$tmp/kv.out" 2>&1 \
    || { cat "$tmp/kv.out" >&2; fail "kubernetes-validate rejects the render of $overlay"; }
  # Each service's core objects must really have been validated (a kind without schema only
  # warns). The ConfigMaps' names carry a content hash, hence the prefix match.
  for object in deployment/sessionizer service/sessionizer poddisruptionbudget/sessionizer \
    networkpolicy/sessionizer configmap/sessionizer-config- \
    deployment/gateway service/gateway poddisruptionbudget/gateway networkpolicy/gateway \
    horizontalpodautoscaler/gateway configmap/gateway-config-; do
    grep -q "passed for resource $object" "$tmp/kv.out" \
      || { cat "$tmp/kv.out" >&2; fail "kubernetes-validate did not validate $object of $overlay"; }
  done
  echo "kubernetes-validate: $(grep -c 'passed for resource' "$tmp/kv.out") objects pass; no bundled schema for: $(grep -o 'kind [A-Za-z]*' "$tmp/kv.out" | cut -d' ' -f2 | sort -u | tr '\n' ' ')"
done

step "hadolint $dockerfile"
"$hadolint" --no-color "$dockerfile" || fail "hadolint findings in $dockerfile"
# Every `# hadolint ignore=A,B` has, in the comment block just above it, each rule's id with a reason.
awk -v file="$dockerfile" '
  /^# hadolint ignore=/ {
    split(substr($0, index($0, "=") + 1), ids, ",")
    for (i in ids) {
      gsub(/[[:space:]]/, "", ids[i])
      if (index(block, ids[i] " ") == 0 && index(block, ids[i] ")") == 0 && index(block, ids[i] ":") == 0) {
        printf "%s:%d: hadolint ignore=%s: no reason naming %s in the comment block above\n", file, NR, ids[i], ids[i]
        bad = 1
      }
    }
  }
  /^#/ { block = block $0 "\n"; next }
  { block = "" }
  END { exit bad }
' "$dockerfile" || fail "unjustified hadolint ignore in $dockerfile"

echo "check-deploy-scan: OK (checkov on ${overlays[*]} and $dockerfile, hadolint, kubernetes-validate --strict)"
