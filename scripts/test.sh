#!/usr/bin/env bash
# Runs the whole test suite against a real Kafka-protocol broker.
# Uses KAFKA_BOOTSTRAP when it is set (an existing cluster), else a broker started by
# scripts/kafka-broker.sh; a broker started here is stopped again on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

started_broker=0
stop_broker() {
  if [ "$started_broker" = 1 ]; then
    scripts/kafka-broker.sh down >&2 || true
  fi
}
trap stop_broker EXIT

if [ -z "${KAFKA_BOOTSTRAP:-}" ]; then
  if line=$(scripts/kafka-broker.sh env 2>/dev/null); then
    echo "test: using the running test broker (${line#KAFKA_BOOTSTRAP=})" >&2
  else
    line=$(scripts/kafka-broker.sh up | tail -n 1)
    started_broker=1
  fi
  export "${line?}"
fi
echo "test: KAFKA_BOOTSTRAP=$KAFKA_BOOTSTRAP" >&2

# The binary tests run the real sessionizer executable as a child process.
cargo build --locked -p sessionizer
cargo test --locked --workspace "$@"
# Benchmarks run once each in test mode, so a broken bench fails here, not in `make bench`.
cargo test --locked --workspace --benches "$@"
