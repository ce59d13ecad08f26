#!/usr/bin/env bash
# Runs the benchmarks and reports each figure as a ratio to a baseline measured in the same
# run on the same machine, so the numbers mean something on a noisy shared box.
#
# 1. The criterion benches: the producer helpers against the OpenTelemetry SDK (in-process
#    Kafka, no broker needed), the OpenTelemetry assembly against the native decode of the
#    same traces, decode plus row against the naive crate path, and the gateway's work on the
#    official SDK's data-stream body against parsing it into values.
# 2. `pipeline-bench`: the sessionizer end to end on the real broker (throughput against a
#    minimal consumer and a bare one, rows/s against the official Openlayer Python SDK on the
#    same traces, the ingest gateway's rows/s and request latency at half that rate and the
#    SDK through it, scaling
#    with partitions and batch size, lag at half the maximum rate, state memory per session). Uses KAFKA_BOOTSTRAP when set, else the running test broker, else
#    starts one with scripts/kafka-broker.sh and stops it again on exit.
# 3. scripts/bench_report.py: the report, one table, and bench-results/latest.json.
#
# Sizes: `--quick` (the default, about 5 minutes) or `--full` (under 30 minutes); also
# BENCH_SIZE=quick|full (`make bench BENCH_SIZE=full`). Other arguments go to pipeline-bench
# after the size's own (later ones win, e.g. `scripts/bench.sh --full --lag-secs 120`;
# `cargo run -p pipeline-bench -- --help` lists them).
set -euo pipefail
cd "$(dirname "$0")/.."

size=${BENCH_SIZE:-quick}
case "${1:-}" in
  --quick) size=quick; shift ;;
  --full) size=full; shift ;;
esac
case "$size" in
  quick) size_args=() ;;  # pipeline-bench's defaults are the quick size
  full)
    size_args=(--sessions 10000 --reps 9 --scaling-sessions 10000 --scaling-reps 5
      --sdk-traces 3000 --sdk-burst 2000 --gateway-traces 50000 --gateway-latency-secs 30
      --lag-secs 60 --lag-warmup-secs 10) ;;
  *) echo "bench: unknown size '$size' (quick or full)" >&2; exit 2 ;;
esac

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

# The official Openlayer SDK (pinned in scripts/requirements/openlayer-sdk.txt) for the
# comparison; without its venv that one figure is skipped, the rest still run.
if [ -z "${OPENLAYER_SDK_PYTHON:-}" ]; then
  if sdk_bin=$(scripts/python-venv.sh openlayer-sdk); then
    export OPENLAYER_SDK_PYTHON="$sdk_bin/python"
  else
    echo "bench: no venv for the official Openlayer SDK; its comparison is skipped" >&2
  fi
fi

echo "bench: size $size" >&2
cargo bench --locked -p trace-emit --bench emit_path
cargo bench --locked -p otel-ingest --bench assembly
cargo bench --locked -p sessionizer --bench decode_row
cargo bench --locked -p gateway --bench data_stream
cargo run --locked --release -p pipeline-bench -- "${size_args[@]}" "$@"
python3 scripts/bench_report.py target/criterion target/bench/pipeline.json \
  bench-results/latest.json "$size"
echo "bench: $size size finished in $(( $(date +%s) - started_at )) s" >&2
