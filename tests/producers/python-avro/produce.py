#!/usr/bin/env python3
"""Example producer of traces for the sessionizer: Avro single-object encoding with fastavro.

See docs/producers.md. Needs `pip install confluent-kafka fastavro` (the versions in
scripts/requirements/producers.txt).

    BOOTSTRAP_SERVERS=127.0.0.1:9092 TRACES_TOPIC=traces SESSION_PREFIX=py-avro ./produce.py

Produces sessions PREFIX-1..PREFIX-3 with 2, 3 and 4 turns; turn t of session s has inference
id s-turn-t. The writer schema is schemas/trace_event.avsc (TRACE_AVSC overrides the path).
"""
import io
import json
import os
import pathlib
import time

import fastavro
from confluent_kafka import Producer

AVSC = pathlib.Path(
    os.environ.get(
        "TRACE_AVSC",
        pathlib.Path(__file__).resolve().parents[3] / "schemas" / "trace_event.avsc",
    )
)


def single_object_header(schema) -> bytes:
    """`C3 01`, then the schema's 8-byte CRC-64-AVRO fingerprint, little-endian.

    fastavro's fingerprint is the hex of those 8 bytes, already in wire order:
    bytes.fromhex() is the whole conversion. Reading the hex as an integer and packing it
    again (struct.pack("<Q", int(hex, 16))) reverses the bytes, and every trace is then
    dead-lettered as unknown_fingerprint.
    """
    canonical = fastavro.schema.to_parsing_canonical_form(schema)
    fingerprint = fastavro.schema.fingerprint(canonical, "CRC-64-AVRO")
    return b"\xc3\x01" + bytes.fromhex(fingerprint)


def trace(session_id: str, user_id: str, turn: int, at_ms: int) -> dict:
    """One chat turn. JSON-typed fields (inputs and metadata values, output) are JSON text.

    Fields left out (schema_version, kind, steps, ...) take the schema's defaults.
    """
    return {
        "inference_id": f"{session_id}-turn-{turn}",
        "session_id": session_id,
        "user_id": user_id,
        "timestamp_ms": at_ms,
        "name": "chat",
        "inputs": {"user_message": json.dumps(f"question {turn}")},
        "output": json.dumps(f"answer {turn}"),
        "latency_ms": 120.0,
        "tokens": 10 + turn,
        "model": "gpt-4o-mini",
        "metadata": {"example": json.dumps("python-avro")},
    }


def main() -> None:
    avsc = json.loads(AVSC.read_text())
    schema = fastavro.parse_schema(avsc)
    header = single_object_header(schema)
    producer = Producer(
        {
            "bootstrap.servers": os.environ.get("BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
            # Java's default partitioner: the partition the sessionizer sessionizes a key in.
            "partitioner": "murmur2_random",
            "enable.idempotence": True,
        }
    )
    topic = os.environ.get("TRACES_TOPIC", "traces")
    prefix = os.environ.get("SESSION_PREFIX", "py-avro")
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
            datum = io.BytesIO()
            fastavro.schemaless_writer(datum, schema, event)
            producer.produce(
                topic, key=session_id, value=header + datum.getvalue(), on_delivery=delivered
            )
            sent += 1
    remaining = producer.flush(30)
    if remaining or failures:
        raise SystemExit(f"{remaining} traces undelivered, errors: {failures}")
    print(f"produced {sent} traces")


if __name__ == "__main__":
    main()
