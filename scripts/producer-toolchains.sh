#!/usr/bin/env bash
# Installs and builds what the example producers of tests/producers/ need (docs/producers.md),
# once, under .cache/producers/; tests/producers.rs and scripts/test.sh call it. Prints, on
# stdout only, the line `ok`; diagnostics go to stderr.
#   python   .cache/venv/producers via scripts/python-venv.sh (confluent-kafka, fastavro, jsonschema)
#   node     kafkajs from the example's package-lock.json into
#            .cache/node/producers-kafkajs/node_modules (scripts/node-modules.sh, which installs
#            Debian's nodejs and npm when missing)
#   go       Debian's golang-go and golang-github-shopify-sarama-dev, built in GOPATH mode (the
#            Go module proxy is not reachable from the build machines); the binary is
#            .cache/producers/bin/go-sarama
#   kcat     Debian's kcat, run against the librdkafka of the confluent-kafka wheel
#            (.cache/producers/lib/librdkafka.so.1): Debian's librdkafka 2.0.2 fails the test
#            broker's ApiVersions answer ("Read underflow")
# Java is not here: org.apache.kafka:kafka-clients cannot be resolved by Maven on the build
# machines and Debian has no package of it (docs/producers.md).
# Fast when everything is in place: each part keeps the sha256 of its inputs beside its output.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="$root/.cache/producers"
examples="$root/tests/producers"
mkdir -p "$cache"
exec 8>"$cache/.lock"
flock 8

have() { command -v "$1" >/dev/null 2>&1; }
fail() { echo "producer-toolchains: $*" >&2; exit 1; }
stamp_of() { cat "$@" | sha256sum | cut -d' ' -f1; }

# ---- Debian packages --------------------------------------------------------------------------
missing=()
have go || missing+=(golang-go)
[[ -d /usr/share/gocode/src/github.com/Shopify/sarama ]] || missing+=(golang-github-shopify-sarama-dev)
have kcat || missing+=(kcat)
# With the others in one apt run (scripts/node-modules.sh would install them on its own).
have node || missing+=(nodejs)
have npm || missing+=(npm)
if [[ ${#missing[@]} -gt 0 ]]; then
  if [[ "$(id -u)" -ne 0 ]]; then
    fail "missing packages: ${missing[*]}. Install them as root:
  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]}"
  fi
  apt_opts=(-o DPkg::Lock::Timeout=300)
  echo "producer-toolchains: installing ${missing[*]}" >&2
  apt-get "${apt_opts[@]}" update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" install -y -qq --no-install-recommends \
    "${missing[@]}" >&2
fi

# ---- Python -----------------------------------------------------------------------------------
python_bin="$("$root/scripts/python-venv.sh" producers)"

# ---- Node: kafkajs ----------------------------------------------------------------------------
"$root/scripts/node-modules.sh" "$examples/node-kafkajs" producers-kafkajs >/dev/null

# ---- Go: sarama -------------------------------------------------------------------------------
go_binary="$cache/bin/go-sarama"
want="$(go version | cat - "$examples/go-sarama/main.go" | sha256sum | cut -d' ' -f1)"
if [[ "$(cat "$go_binary.stamp" 2>/dev/null)" != "$want" || ! -x "$go_binary" ]]; then
  echo "producer-toolchains: go build tests/producers/go-sarama" >&2
  mkdir -p "$cache/bin"
  (cd "$examples/go-sarama" &&
    GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE="$cache/go-build" \
      go build -o "$go_binary" . 2> >(grep -v -e 'deprecated' -e 'cgo-gcc-prolog' -e 'zstd' -e '^ *[0-9]* |' -e '^ *|' >&2))
  echo "$want" >"$go_binary.stamp"
fi

# ---- kcat: a current librdkafka ---------------------------------------------------------------
wheel_librdkafka="$(find "$python_bin/.." -path '*confluent_kafka.libs/librdkafka*.so*' | head -n 1)"
[[ -n "$wheel_librdkafka" ]] || fail "the confluent-kafka wheel brings no librdkafka"
mkdir -p "$cache/lib"
ln -sfn "$wheel_librdkafka" "$cache/lib/librdkafka.so.1"
LD_LIBRARY_PATH="$cache/lib" kcat -V >/dev/null || fail "kcat does not run with $wheel_librdkafka"

echo ok
