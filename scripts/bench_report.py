#!/usr/bin/env python3
"""Turns criterion's medians into the ratios `make bench` reports.

Each figure is divided by a baseline measured in the same run; absolute times are shown
for context only. Exit status is 0 even when a goal is missed: the report says so.
"""
import json
import sys
from pathlib import Path


def median_ns(root: Path, group: str, bench: str) -> float:
    estimates = root / group / bench / "new" / "estimates.json"
    with estimates.open() as handle:
        return json.load(handle)["median"]["point_estimate"]


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "target/criterion")
    baseline = median_ns(root, "emit_path", "bare_send")
    rows = [
        ("request path (context, 3-step trace, enqueue)", "request_path", 1.5),
        ("full cost (plus Avro encode and hand-off, throughput)", "full_cost", None),
    ]
    print()
    print("Producer helper cost per trace, against a bare rdkafka send of the same bytes")
    print(f"  baseline bare_send: median {baseline / 1000:.2f} µs per trace")
    for label, bench, goal in rows:
        value = median_ns(root, "emit_path", bench)
        ratio = value / baseline
        verdict = ""
        if goal is not None:
            verdict = "  goal <= {:.1f}x: {}".format(goal, "met" if ratio <= goal else "NOT met")
        print(f"  {label}: median {value / 1000:.2f} µs = {ratio:.2f}x baseline{verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
