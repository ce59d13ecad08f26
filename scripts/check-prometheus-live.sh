#!/usr/bin/env bash
# Live test of the dashboards and the alert rules against a real Prometheus scraping a real
# sessionizer and a real gateway:
#   - `sessionizer-demo` (in-process Kafka, chat traffic, the real service, a local
#     Openlayer-compatible endpoint) runs with --keep-serving-secs, so /metrics stays up after
#     the traffic;
#   - `gateway run` runs with deploy/k8s/base/gateway.toml (the deployed configuration,
#     librdkafka settings included) against the demo's in-process Kafka and its traces topic,
#     with listen addresses, bootstrap servers and a key file overridden by GATEWAY__*
#     variables; once /readyz answers 200 (the broker is reachable) and Prometheus scraped it,
#     two waves of requests go to its API, each with valid data-stream requests and a row
#     update (200), a request without a key (401) and a malformed body (400); every status is
#     asserted. The second wave starts once Prometheus scraped the first, so every counter
#     series, including those created by the first request of their status, increases
#     between two scrapes;
#   - a throwaway Prometheus (Debian package `prometheus`) scrapes both every second (jobs
#     `sessionizer` and `gateway`), with relabeling that gives each target the `namespace`
#     and `pod` labels a Kubernetes scrape has, and loads deploy/prometheus/alerts.yml as its
#     rule file;
#   - scripts/check-monitoring.py live then runs once per service: the sessionizer dashboard
#     with the `sessionizer` alert group, then the gateway dashboard with the `gateway` group.
#     Each polls (every 2 s, at most 90 s) until:
#       * every service metric the dashboard and the alerts name (sessionizer_*, gateway_*,
#         and the process collector's process_*) is in that service's /metrics output;
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
#   - `promtool check metrics` lints both services' expositions.
# No timing is asserted: the waits are polls with generous caps.
# Ports are free loopback ports; both processes are stopped by PID and the temporary
# directory removed on exit.
# Run from anywhere: scripts/check-prometheus-live.sh  (DEMO_BIN and GATEWAY_BIN
# override the binaries, CHECK_LIVE_TIMEOUT_SECS the 90 s polling cap).
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
demo_bin="${DEMO_BIN:-${CARGO_TARGET_DIR:-target}/debug/sessionizer-demo}"
[[ -x "$demo_bin" ]] || fail "no demo binary at $demo_bin (cargo build --locked -p sessionizer-demo)"
gateway_bin="${GATEWAY_BIN:-${CARGO_TARGET_DIR:-target}/debug/gateway}"
[[ -x "$gateway_bin" ]] || fail "no gateway binary at $gateway_bin (cargo build --locked -p gateway)"

namespace=sessionizer-live
pod=sessionizer-live-0
gateway_pod=gateway-live-0

tmp="$(mktemp -d)"
prometheus_pid=""
demo_pid=""
gateway_pid=""
cleanup() {
  local status=$?
  for pid in "$gateway_pid" "$demo_pid" "$prometheus_pid"; do
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    fi
  done
  if [[ $status -ne 0 ]]; then
    for log in prometheus.log demo.log gateway.log; do
      [[ -s "$tmp/$log" ]] && { echo "--- last lines of $log" >&2; tail -n 20 "$tmp/$log" >&2; }
    done
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# Four distinct free ports: Prometheus, the demo's metrics, the gateway's API and ops ports.
ports=()
while ((${#ports[@]} < 4)); do
  port="$(free_port)"
  [[ " ${ports[*]} " == *" $port "* ]] || ports+=("$port")
done
prometheus_port=${ports[0]} metrics_port=${ports[1]} gateway_api_port=${ports[2]} gateway_ops_port=${ports[3]}
prometheus_url="http://127.0.0.1:$prometheus_port"
metrics_url="http://127.0.0.1:$metrics_port/metrics"
gateway_api_url="http://127.0.0.1:$gateway_api_port"
gateway_ops_url="http://127.0.0.1:$gateway_ops_port"

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
  - job_name: gateway
    static_configs:
      - targets: ['127.0.0.1:$gateway_ops_port']
    relabel_configs:
      - target_label: namespace
        replacement: $namespace
      - target_label: pod
        replacement: $gateway_pod
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

step "sessionizer-demo --keep-serving-secs 180"
"$demo_bin" --metrics-listen "127.0.0.1:$metrics_port" --output-dir "$tmp/demo" \
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
bootstrap="$(sed -n 's/.*in-process Kafka at \([^,]*\), metrics at .*/\1/p' "$tmp/demo.log" | head -n 1)"
[[ -n "$bootstrap" ]] || fail "the demo did not print its in-process Kafka address"

step "gateway run --config deploy/k8s/base/gateway.toml (kafka $bootstrap)"
api_key=live-client-key
printf '%s\n' "$api_key" >"$tmp/gateway-keys"
# The deployed configuration; only what differs on this machine is overridden. Short
# shutdown delays: the script stops it at the end.
env GATEWAY__HTTP__LISTEN="127.0.0.1:$gateway_api_port" GATEWAY__OPS__LISTEN="127.0.0.1:$gateway_ops_port" \
  GATEWAY__KAFKA__BOOTSTRAP_SERVERS="$bootstrap" GATEWAY__AUTH__API_KEYS_FILE="$tmp/gateway-keys" \
  GATEWAY__SHUTDOWN__UNREADY_DELAY_SECS=0 GATEWAY__SHUTDOWN__DRAIN_TIMEOUT_SECS=2 \
  "$gateway_bin" run --config deploy/k8s/base/gateway.toml >"$tmp/gateway.log" 2>&1 &
gateway_pid=$!
gateway_ready() {
  kill -0 "$gateway_pid" 2>/dev/null || fail "the gateway exited early"
  curl -sf "$gateway_ops_url/readyz" >/dev/null
}
gateway_scraped() {
  curl -sf --data-urlencode 'query=gateway_broker_reachable{job="gateway"} == 1' "$prometheus_url/api/v1/query" \
    | grep -q '"result":\[{'
}
wait_for 30 "gateway /readyz (broker reachable)" gateway_ready
wait_for 30 "a scrape of the ready gateway" gateway_scraped

# request EXPECTED_STATUS METHOD PATH KEY BODY: one API request, its status asserted.
request() {
  local expected=$1 method=$2 path=$3 key=$4 body=$5 status
  local args=(-s -o "$tmp/answer.json" -w '%{http_code}' -X "$method" -H 'Content-Type: application/json' --data-binary "$body")
  [[ -z "$key" ]] || args+=(-H "Authorization: Bearer $key")
  status="$(curl "${args[@]}" "$gateway_api_url$path")" || fail "$method $path: no answer"
  [[ "$status" == "$expected" ]] || fail "$method $path: status $status, expected $expected: $(cat "$tmp/answer.json")"
}
pipeline=/v1/inference-pipelines/live-pipeline
config='"config": {"outputColumnName": "output", "inferenceIdColumnName": "inferenceId", "sessionIdColumnName": "session_id"}'
traffic() { # traffic WAVE
  local wave=$1 turn
  for turn in 1 2 3; do
    request 200 POST "$pipeline/data-stream" "$api_key" \
      "{$config, \"rows\": [{\"output\": \"answer $turn\", \"inferenceId\": \"live-$wave-$turn\", \"session_id\": \"live-session-$wave\"}]}"
  done
  request 200 PUT "$pipeline/rows?inferenceId=live-$wave-1" "$api_key" \
    "{\"row\": {\"user_feedback\": \"good\"}, $config}"
  request 401 POST "$pipeline/data-stream" "" "{$config, \"rows\": [{\"output\": \"o\", \"inferenceId\": \"live-$wave-x\"}]}"
  request 400 POST "$pipeline/data-stream" "$api_key" '{"config": {'
}
step "gateway traffic: 2 waves of 3 data-stream requests and a row update (200), one without key (401), one malformed (400)"
traffic 1
# Wave 2 only after Prometheus scraped wave 1 (the 401 series exists from wave 1 on), so every
# series increases between two scrapes.
first_wave_scraped() {
  curl -sf --data-urlencode 'query=gateway_requests_total{job="gateway",status="401"}' "$prometheus_url/api/v1/query" \
    | grep -q '"result":\[{'
}
wait_for 15 "a scrape of the gateway after the first wave" first_wave_scraped
traffic 2

step "sessionizer dashboard and alerts through the query API"
python3 scripts/check-monitoring.py live --prometheus "$prometheus_url" --metrics-url "$metrics_url" \
  --alerts "$tmp/alerts.json" --alert-group sessionizer --namespace "$namespace" --pod "$pod" \
  --rate-interval 2m --range 5m --scrape-interval 1s --timeout "${CHECK_LIVE_TIMEOUT_SECS:-90}" \
  deploy/grafana/sessionizer.json || fail "live dashboard/alert check (sessionizer)"

step "gateway dashboard and alerts through the query API"
python3 scripts/check-monitoring.py live --prometheus "$prometheus_url" --metrics-url "$gateway_ops_url/metrics" \
  --alerts "$tmp/alerts.json" --alert-group gateway --namespace "$namespace" --pod "$gateway_pod" \
  --rate-interval 2m --range 5m --scrape-interval 1s --timeout "${CHECK_LIVE_TIMEOUT_SECS:-90}" \
  deploy/grafana/gateway.json || fail "live dashboard/alert check (gateway)"

# Every dashboard and every alert group must have been covered by one of the runs above.
for dashboard in deploy/grafana/*.json; do
  case "$dashboard" in
    deploy/grafana/sessionizer.json | deploy/grafana/gateway.json) ;;
    *) fail "$dashboard is not covered by the live test: add a run for it" ;;
  esac
done
groups="$(yq -r '.groups[].name' deploy/prometheus/alerts.yml | sort | tr '\n' ' ')"
[[ "$groups" == "gateway sessionizer " ]] || fail "alert groups are '$groups': add a live run for each new group"

# After the traffic, so that the series created on first use are in the exposition too.
for url in "$metrics_url" "$gateway_ops_url/metrics"; do
  step "promtool check metrics $url"
  curl -sf "$url" >"$tmp/metrics.txt" || fail "cannot read $url"
  promtool check metrics <"$tmp/metrics.txt" || fail "promtool check metrics finds problems in the exposition of $url"
done

kill -0 "$demo_pid" 2>/dev/null || fail "the demo exited before the checks finished"
kill -0 "$gateway_pid" 2>/dev/null || fail "the gateway exited before the checks finished"
echo "check-prometheus-live: OK"
