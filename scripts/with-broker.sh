# shellcheck shell=bash
# Sourced by scripts that need a Kafka-protocol broker (test.sh, bench.sh).
# Uses KAFKA_BOOTSTRAP when it is set (an existing cluster), else the running test broker,
# else starts one with scripts/kafka-broker.sh and stops it again when the caller exits.
# Expects the caller's working directory to be the repository root and WITH_BROKER_NAME to
# name the caller in messages.

started_broker=0
stop_broker() {
  if [ "$started_broker" = 1 ]; then
    scripts/kafka-broker.sh down >&2 || true
  fi
}
trap stop_broker EXIT

if [ -z "${KAFKA_BOOTSTRAP:-}" ]; then
  if line=$(scripts/kafka-broker.sh env 2>/dev/null); then
    echo "${WITH_BROKER_NAME:-broker}: using the running test broker (${line#KAFKA_BOOTSTRAP=})" >&2
  else
    line=$(scripts/kafka-broker.sh up | tail -n 1)
    started_broker=1
  fi
  export "${line?}"
fi
echo "${WITH_BROKER_NAME:-broker}: KAFKA_BOOTSTRAP=$KAFKA_BOOTSTRAP" >&2
