#!/usr/bin/env python3
"""The official Openlayer Python tracer on the bench's traces: the SDK baseline of `make bench`.

pipeline-bench writes the traces it generated (trace-model JSON, one per line) and runs this
script with the venv of scripts/requirements/openlayer-sdk.txt (openlayer==0.36.0), pointing
OPENLAYER_BASE_URL at its local Openlayer-compatible ack server. Each trace is replayed as an
instrumented service would record it: the request's user and session set with
`set_user_session_context`, a `@trace()`-decorated `chat(user_message)` function, and inside it
the trace's nested steps (retriever with a nested embedding call, chat completion with model,
tokens and cost) as nested `tracer.create_step` scopes with the same names, inputs, outputs
and metadata, so the rows carry the same content as the sessionizer's.

Modes (`--mode`):
- `sync`: `init(background_publish_enabled=False)`: every trace is published on the calling
  thread before `chat` returns, so none is dropped. Rows per second over the replay loop.
- `background`: the SDK default (a 4-thread executor behind a queue of 100 traces). The
  traces are replayed as fast as they come (a burst); traces that find the queue full are
  dropped by the SDK, which logs a warning per trace: those warnings are counted here. The
  ack server counts what was delivered.

The first `--warmup` traces are replayed (and delivered) before the clock starts: the SDK builds
its HTTP client on the first publish. Prints one JSON object on stdout: mode, warmup_traces,
traces (timed), seconds (replay loop; background: until the executor has drained), dropped
(warnings counted), failed (publish errors logged).
"""
import argparse
import json
import logging
import sys
import time


class Counter(logging.Handler):
    """Counts the SDK's own log records about traces it did not deliver."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.dropped = 0
        self.failed = 0

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "dropping trace" in message:
            self.dropped += 1
        elif "Could not stream data" in message:
            self.failed += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--traces", required=True, help="trace-model JSON lines")
    parser.add_argument("--mode", choices=["sync", "background"], required=True)
    parser.add_argument("--limit", type=int, default=None, help="replay only the first N lines")
    parser.add_argument(
        "--warmup", type=int, default=1, help="traces replayed first, outside the figure (delivered too)"
    )
    args = parser.parse_args()

    with open(args.traces, encoding="utf-8") as handle:
        events = [json.loads(line) for line in handle if line.strip()]
    if args.limit is not None:
        events = events[: args.limit]

    # Imported after reading the traces: the SDK's import time is not part of the figure.
    from openlayer.lib import clear_user_session_context, init, set_user_session_context, trace
    from openlayer.lib.tracing import enums, tracer

    counter = Counter()
    logging.getLogger("openlayer").addHandler(counter)
    # The base URL, key and pipeline id come from OPENLAYER_* in the environment.
    init(background_publish_enabled=(args.mode == "background"), auto_instrument=False)

    step_types = {step_type.value: step_type for step_type in enums.StepType}

    def replay(step: dict) -> None:
        step_type = step_types.get(step.get("step_type"), enums.StepType.USER_CALL)
        with tracer.create_step(
            name=step["name"],
            step_type=step_type,
            inputs=step.get("inputs") or None,
            metadata=step.get("metadata") or None,
        ) as recorded:
            for child in step.get("steps", []):
                replay(child)
            fields = {"output": step.get("output")}
            if step_type == enums.StepType.CHAT_COMPLETION:
                fields.update(
                    model=step.get("model"),
                    prompt_tokens=step.get("prompt_tokens"),
                    completion_tokens=step.get("completion_tokens"),
                    tokens=step.get("tokens"),
                    cost=step.get("cost"),
                )
            elif step.get("model") is not None:
                fields["metadata"] = {"model": step["model"], "tokens": step.get("tokens")}
            recorded.log(**fields)

    current: dict = {}

    @trace()
    def chat(user_message: str):
        event = current["event"]
        tracer.update_current_trace(inferenceId=event["inference_id"], **(event.get("metadata") or {}))
        for step in event.get("steps", []):
            replay(step)
        return event.get("output")

    def request(event: dict) -> None:
        current["event"] = event
        # What a service's middleware does per request (the seed API).
        set_user_session_context(user_id=event.get("user_id"), session_id=event.get("session_id"))
        try:
            chat((event.get("inputs") or {}).get("user_message", ""))
        finally:
            clear_user_session_context()

    def drain() -> None:
        if args.mode == "background":
            # What the SDK does at exit: wait for the executor's queue to drain.
            tracer._shutdown_background_executor()  # pylint: disable=protected-access

    # Warm-up, outside the figure: the SDK builds its HTTP client on the first publish.
    for event in events[: args.warmup]:
        request(event)
    drain()
    counter.dropped = counter.failed = 0

    started = time.perf_counter()
    for event in events[args.warmup :]:
        request(event)
    drain()
    seconds = time.perf_counter() - started

    json.dump(
        {
            "mode": args.mode,
            "warmup_traces": min(args.warmup, len(events)),
            "traces": max(len(events) - args.warmup, 0),
            "seconds": seconds,
            "dropped": counter.dropped,
            "failed": counter.failed,
            "sdk_version": __import__("openlayer").__version__,
        },
        sys.stdout,
    )
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
