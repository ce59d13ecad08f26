#!/usr/bin/env bash
# Runs the whole test suite against a real Kafka-protocol broker.
# Uses KAFKA_BOOTSTRAP when it is set (an existing cluster), else a broker started by
# scripts/kafka-broker.sh; a broker started here is stopped again on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

WITH_BROKER_NAME="test"
# shellcheck source=scripts/with-broker.sh
source scripts/with-broker.sh

# The binary tests run the real sessionizer executable as a child process.
cargo build --locked -p sessionizer
cargo test --locked --workspace "$@"
# Benchmarks run once each in test mode, so a broken bench fails here, not in `make bench`.
cargo test --locked --workspace --benches "$@"
# Everything under deploy/ checked with the real tools (promtool, kubectl kustomize, check-config).
scripts/check-deploy.sh
