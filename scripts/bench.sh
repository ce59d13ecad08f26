#!/usr/bin/env bash
# Runs the benchmarks and reports each figure as a ratio to a baseline measured in the same
# run on the same machine, so the numbers mean something on a noisy shared box.
#
# 1. The producer helper's criterion bench (in-process Kafka, no broker needed).
# 2. `pipeline-bench`: the sessionizer end to end on the real broker (throughput against a
#    minimal consumer and a bare one, lag at half the maximum rate, state memory per session).
#    Uses KAFKA_BOOTSTRAP when set, else the running test broker, else starts one with
#    scripts/kafka-broker.sh and stops it again on exit. Arguments go to pipeline-bench
#    (e.g. `scripts/bench.sh --sessions 2000 --reps 5`; `--help` lists them).
set -euo pipefail
cd "$(dirname "$0")/.."

started_at=$(date +%s)
WITH_BROKER_NAME="bench"
# shellcheck source=scripts/with-broker.sh
source scripts/with-broker.sh

# The broker's pid lets pipeline-bench report its CPU apart from everything else on the box.
state_dir=${KAFKA_BROKER_CACHE:-.cache/kafka-broker}/state
if [ -z "${KAFKA_BROKER_PID:-}" ] && [ -r "$state_dir/pid" ] && [ -r "$state_dir/port" ] \
    && [ "${KAFKA_BOOTSTRAP##*:}" = "$(cat "$state_dir/port")" ]; then
  KAFKA_BROKER_PID=$(cat "$state_dir/pid")
  export KAFKA_BROKER_PID
fi

cargo bench --locked -p trace-emit --bench emit_path
cargo run --locked --release -p pipeline-bench -- "$@"
python3 scripts/bench_report.py target/criterion target/bench/pipeline.json
echo "bench: finished in $(( $(date +%s) - started_at )) s" >&2
