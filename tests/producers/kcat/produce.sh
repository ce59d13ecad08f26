#!/usr/bin/env bash
# Example producer of traces for the sessionizer with kcat: JSON lines, keyed by session id.
# See docs/producers.md. Needs kcat (Debian package `kcat`).
#
#   BOOTSTRAP_SERVERS=127.0.0.1:9092 TRACES_TOPIC=traces SESSION_PREFIX=kcat ./produce.sh
#
# Produces sessions PREFIX-1..PREFIX-3 with 2, 3 and 4 turns; turn t of session s has inference
# id s-turn-t. Each input line is `key<TAB>json`; the JSON must be one line.
set -euo pipefail
bootstrap="${BOOTSTRAP_SERVERS:-127.0.0.1:9092}"
topic="${TRACES_TOPIC:-traces}"
prefix="${SESSION_PREFIX:-kcat}"
start_ms="$(date +%s%3N)"

traces() {
  local session turn session_id
  for session in 1 2 3; do
    session_id="$prefix-$session"
    for ((turn = 1; turn <= session + 1; turn++)); do
      # inputs, output and metadata are plain JSON values in this encoding.
      printf '%s\t{"inference_id":"%s-turn-%d","session_id":"%s","user_id":"user-%d","timestamp_ms":%d,"name":"chat","inputs":{"user_message":"question %d"},"output":"answer %d","latency_ms":120.0,"tokens":%d,"model":"gpt-4o-mini","metadata":{"example":"kcat"}}\n' \
        "$session_id" "$session_id" "$turn" "$session_id" "$session" "$((start_ms + turn * 1000))" \
        "$turn" "$turn" "$((10 + turn))"
    done
  done
}

# -K: key delimiter. partitioner=murmur2_random: Java's default partitioner, the partition the
# sessionizer sessionizes a key in (librdkafka's own default is consistent_random, CRC32).
# acks=all and idempotence keep a session's turns in order across retries.
traces | kcat -P -b "$bootstrap" -t "$topic" -K $'\t' \
  -X partitioner=murmur2_random -X enable.idempotence=true -X acks=all
echo "produced $(traces | wc -l) traces"
