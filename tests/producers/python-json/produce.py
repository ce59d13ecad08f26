#!/usr/bin/env python3
"""Example producer of traces for the sessionizer: JSON encoding with confluent-kafka.

See docs/producers.md. Needs `pip install confluent-kafka jsonschema` (the versions in
scripts/requirements/producers.txt).

    BOOTSTRAP_SERVERS=127.0.0.1:9092 TRACES_TOPIC=traces SESSION_PREFIX=py-json ./produce.py

Produces sessions PREFIX-1..PREFIX-3 with 2, 3 and 4 turns; turn t of session s has inference
id s-turn-t. Each trace is checked against schemas/trace_event.schema.json before it is sent
(set TRACE_SCHEMA to the schema's path when the file is elsewhere).
"""
import json
import os
import pathlib
import time

from confluent_kafka import Producer
from jsonschema import Draft202012Validator

SCHEMA = pathlib.Path(
    os.environ.get(
        "TRACE_SCHEMA",
        pathlib.Path(__file__).resolve().parents[3] / "schemas" / "trace_event.schema.json",
    )
)


def trace(session_id: str, user_id: str, turn: int, at_ms: int) -> dict:
    """One chat turn. inputs, output and metadata are plain JSON values in this encoding."""
    return {
        "inference_id": f"{session_id}-turn-{turn}",
        "session_id": session_id,
        "user_id": user_id,
        "timestamp_ms": at_ms,
        "name": "chat",
        "inputs": {"user_message": f"question {turn}"},
        "output": f"answer {turn}",
        "latency_ms": 120.0,
        "tokens": 10 + turn,
        "model": "gpt-4o-mini",
        "metadata": {"example": "python-json"},
    }


def main() -> None:
    validator = Draft202012Validator(json.loads(SCHEMA.read_text()))
    producer = Producer(
        {
            "bootstrap.servers": os.environ.get("BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
            # Java's default partitioner: the partition the sessionizer sessionizes a key in.
            "partitioner": "murmur2_random",
            "enable.idempotence": True,
        }
    )
    topic = os.environ.get("TRACES_TOPIC", "traces")
    prefix = os.environ.get("SESSION_PREFIX", "py-json")
    failures = []

    def delivered(error, _message):
        if error is not None:
            failures.append(error)

    start = int(time.time() * 1000)
    sent = 0
    for session in range(1, 4):
        session_id = f"{prefix}-{session}"
        for turn in range(1, session + 2):
            event = trace(session_id, f"user-{session}", turn, start + turn * 1000)
            validator.validate(event)
            # Key: the session id, else the user id (a session stays in one partition, in order).
            producer.produce(
                topic,
                key=session_id,
                value=json.dumps(event).encode(),
                on_delivery=delivered,
            )
            sent += 1
    remaining = producer.flush(30)
    if remaining or failures:
        raise SystemExit(f"{remaining} traces undelivered, errors: {failures}")
    print(f"produced {sent} traces")


if __name__ == "__main__":
    main()
