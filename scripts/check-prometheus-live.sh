#!/usr/bin/env bash
# Live test of the dashboard and the alert rules against a real Prometheus scraping a real
# sessionizer:
#   - `sessionizer demo` (in-process Kafka, chat traffic, the real pipeline, a local
#     Openlayer-compatible endpoint) runs with --keep-serving-secs, so /metrics stays up after
#     the traffic;
#   - a throwaway Prometheus (Debian package `prometheus`) scrapes it every second, with
#     relabeling that gives the target the `namespace` and `pod` labels a Kubernetes scrape
#     has, and loads deploy/prometheus/alerts.yml as its rule file;
#   - scripts/check-monitoring.py live then polls (every 2 s, at most 90 s) until:
#       * every sessionizer metric the dashboard and the alerts name is in the service's
#         /metrics output;
#       * every target expression of every dashboard panel, with $namespace/$pod replaced by
#         the relabeled values and $__rate_interval by 2m ($__range by 5m: windows that
#         cover the whole demo), parses and returns
#         at least one finite sample, and every {{label}} of its legend is on every series;
#       * the dashboard's label_values() variable queries return the relabeled values;
#       * every alert expression parses (through the query API). Alert expressions are
#         comparisons that are empty while the service is healthy, as it is under the demo, so
#         what must return data is their MEASURED SIDE: the expression without its top-level
#         threshold comparison (`A > 60` -> A; `A > 0 and B > 1000` -> A and B). Its series
#         must carry every $labels.X the alert's annotations use. A subquery's resolution is
#         shortened to the scrape interval (`[10m:1m]` -> `[10m:1s]`) for the measured side
#         only: a run of under a minute has no two points at a 1m resolution;
#       * Prometheus reports every loaded rule as healthy (evaluated without error).
#     A parse error fails at once; missing data fails when the cap is reached.
#   - `promtool check metrics` lints the service's exposition.
# No timing is asserted: the waits are polls with generous caps.
# Ports are free loopback ports; both processes are stopped by PID and the temporary
# directory removed on exit.
# Run from anywhere: scripts/check-prometheus-live.sh  (SESSIONIZER_BIN overrides the binary,
# CHECK_LIVE_TIMEOUT_SECS the 90 s polling cap).
# Needs prometheus and promtool (Debian: apt-get install -y --no-install-recommends prometheus),
# python3, curl and yq.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

fail() { echo "check-prometheus-live: FAIL: $*" >&2; exit 1; }
step() { echo "== $*"; }

for tool in prometheus promtool python3 curl yq; do
  command -v "$tool" >/dev/null 2>&1 || fail "$tool not found on PATH"
done
bin="${SESSIONIZER_BIN:-${CARGO_TARGET_DIR:-target}/debug/sessionizer}"
[[ -x "$bin" ]] || fail "no sessionizer binary at $bin (cargo build --locked -p sessionizer)"

namespace=sessionizer-live
pod=sessionizer-live-0

tmp="$(mktemp -d)"
prometheus_pid=""
demo_pid=""
cleanup() {
  local status=$?
  for pid in "$demo_pid" "$prometheus_pid"; do
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    fi
  done
  if [[ $status -ne 0 ]]; then
    for log in prometheus.log demo.log; do
      [[ -s "$tmp/$log" ]] && { echo "--- last lines of $log" >&2; tail -n 20 "$tmp/$log" >&2; }
    done
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
prometheus_port="$(free_port)"
metrics_port="$(free_port)"
[[ "$prometheus_port" != "$metrics_port" ]] || metrics_port="$(free_port)"
prometheus_url="http://127.0.0.1:$prometheus_port"
metrics_url="http://127.0.0.1:$metrics_port/metrics"

cp deploy/prometheus/alerts.yml "$tmp/alerts.yml"
yq . deploy/prometheus/alerts.yml >"$tmp/alerts.json"
cat >"$tmp/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files: [alerts.yml]
scrape_configs:
  - job_name: sessionizer
    static_configs:
      - targets: ['127.0.0.1:$metrics_port']
    relabel_configs:
      # What a Kubernetes scrape (ServiceMonitor) puts on the target.
      - target_label: namespace
        replacement: $namespace
      - target_label: pod
        replacement: $pod
EOF
promtool check config "$tmp/prometheus.yml" >/dev/null || fail "promtool check config rejects the test config"

step "prometheus on $prometheus_url scraping $metrics_url"
prometheus --config.file="$tmp/prometheus.yml" --storage.tsdb.path="$tmp/tsdb" \
  --web.listen-address="127.0.0.1:$prometheus_port" --log.level=warn >"$tmp/prometheus.log" 2>&1 &
prometheus_pid=$!

# Ready within a second or so; the first scrape comes ~6 s after start (target discovery is
# throttled to 5 s). Start the demo only once the scrape loop runs, so its counters are seen
# from their start.
wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local cap=$1 what=$2
  shift 2
  local deadline=$((SECONDS + cap))
  until "$@"; do
    ((SECONDS < deadline)) || fail "$what: not within ${cap} s"
    kill -0 "$prometheus_pid" 2>/dev/null || fail "prometheus exited"
    sleep 0.5
  done
}
prometheus_ready() { curl -sf "$prometheus_url/-/ready" >/dev/null; }
target_scraped() {
  curl -sf --data-urlencode 'query=up{job="sessionizer"}' "$prometheus_url/api/v1/query" \
    | grep -q '"result":\[{'
}
wait_for 20 "prometheus ready" prometheus_ready
wait_for 30 "first scrape of the sessionizer target" target_scraped

step "sessionizer demo --keep-serving-secs 180"
"$bin" demo --metrics-listen "127.0.0.1:$metrics_port" --output-dir "$tmp/demo" \
  --keep-serving-secs 180 >"$tmp/demo.log" 2>&1 &
demo_pid=$!
demo_serving() {
  kill -0 "$demo_pid" 2>/dev/null || fail "the demo exited early"
  grep -qs "metrics at " "$tmp/demo.log"
}
wait_for 30 "demo start" demo_serving
# The demo falls back to another port when the one given is taken: then nothing is scraped.
grep -qF "metrics at $metrics_url" "$tmp/demo.log" \
  || fail "the demo does not serve $metrics_url: $(grep 'metrics at ' "$tmp/demo.log")"

step "dashboard and alert expressions through the query API"
python3 scripts/check-monitoring.py live --prometheus "$prometheus_url" --metrics-url "$metrics_url" \
  --alerts "$tmp/alerts.json" --namespace "$namespace" --pod "$pod" \
  --rate-interval 2m --range 5m --scrape-interval 1s --timeout "${CHECK_LIVE_TIMEOUT_SECS:-90}" \
  deploy/grafana/*.json || fail "live dashboard/alert check"

# After the traffic, so that the series created on first use are in the exposition too.
step "promtool check metrics $metrics_url"
curl -sf "$metrics_url" >"$tmp/metrics.txt" || fail "cannot read $metrics_url"
promtool check metrics <"$tmp/metrics.txt" || fail "promtool check metrics finds problems in the exposition"

kill -0 "$demo_pid" 2>/dev/null || fail "the demo exited before the checks finished"
echo "check-prometheus-live: OK"
