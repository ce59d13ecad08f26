#!/usr/bin/env bash
# Runs the benchmarks and reports each figure as a ratio to a baseline measured in the same
# run on the same machine, so the numbers mean something on a noisy shared box.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo bench --locked -p trace-emit --bench emit_path
python3 scripts/bench_report.py target/criterion
