#!/usr/bin/env bash
# The reliability suite at full size (up to ~20 minutes): the release sessionizer binary as
# child processes on the real broker, crashed, rebalanced, cut off from the broker and from
# Openlayer, fed poison and stopped under load. Prints a table and writes
# bench-results/reliability.json; exits 1 when a scenario fails.
# Arguments go to the suite: `scripts/reliability.sh quick`, `scripts/reliability.sh full crash_loop`.
set -euo pipefail
cd "$(dirname "$0")/.."

WITH_BROKER_NAME="reliability"
# shellcheck source=scripts/with-broker.sh
source scripts/with-broker.sh

cargo build --locked --release -p sessionizer
SESSIONIZER_BIN="${CARGO_TARGET_DIR:-target}/release/sessionizer"
export SESSIONIZER_BIN
cargo run --locked --release -q -p end-to-end --bin reliability -- "$@"
