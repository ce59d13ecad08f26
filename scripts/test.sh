#!/usr/bin/env bash
# Runs the whole test suite against a real Kafka-protocol broker.
# Uses KAFKA_BOOTSTRAP when it is set (an existing cluster), else a broker started by
# scripts/kafka-broker.sh; a broker started here is stopped again on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

# System tools (promtool, prometheus, jq, yq, ...) installed when missing; every crate
# fetched up front, since the image context check builds offline.
scripts/ensure-tools.sh
scripts/producer-toolchains.sh >/dev/null  # what tests/producers/ need (docs/producers.md), cached
cargo fetch --locked

WITH_BROKER_NAME="test"
# shellcheck source=scripts/with-broker.sh
source scripts/with-broker.sh
# On failure, last (where a CI log's tail shows it): the step's exit code and the free disk
# space, since a full disk fails the build or link with a cargo error far up the log.
on_exit() {
  local status=$?
  stop_broker
  if [ "$status" != 0 ]; then
    echo "test: failed with exit code $status; free space for the build: $(df -h "${CARGO_TARGET_DIR:-target}" 2>/dev/null | awk 'NR == 2 {print $4 " of " $2}')" >&2
  fi
}
trap on_exit EXIT

# The binary tests run the real sessionizer executable as a child process.
cargo build --locked -p sessionizer
cargo test --locked --workspace "$@"
# Benchmarks run once each in test mode, so a broken bench fails here, not in `make bench`.
cargo test --locked --workspace --benches "$@"
# The pipeline bench at a smoke size, so it cannot rot (its figures mean nothing at this size),
# with the official SDK's venv (the SDK tests made it) so its parts run too.
sdk_bin=$(scripts/python-venv.sh openlayer-sdk)
OPENLAYER_SDK_PYTHON="$sdk_bin/python" \
  cargo run --locked -q -p pipeline-bench -- --sessions 20 --turns 3 --reps 1 --lag-secs 2 \
  --lag-warmup-secs 0 --memory-sessions 1000 --journal-sessions 1000 --otel-traces 1000 --scaling-sessions 20 \
  --scaling-reps 1 --partition-counts 1,2 --batch-rows 100,1000 --sdk-traces 5 --sdk-burst 5 \
  --gateway-traces 50 --gateway-batch-rows 10 --gateway-clients 4 --gateway-latency-secs 1 \
  --sdk-gateway-traces 5 --sdk-gateway-reps 1 --out target/bench/smoke.json
# Everything under deploy/ checked with the real tools (promtool, kubectl kustomize, check-config).
scripts/check-deploy.sh
# deploy/Dockerfile's COPY lines give the image build every file the binaries need.
scripts/check-image-context.sh
