#!/usr/bin/env python3
"""A chat service instrumented with Openlayer's official Python SDK, for the gateway tests.

Run with the venv of scripts/requirements/openlayer-sdk.txt (openlayer==0.36.0). The SDK reads
OPENLAYER_BASE_URL (pointed at the gateway), OPENLAYER_API_KEY and
OPENLAYER_INFERENCE_PIPELINE_ID from the environment, as any instrumented service does.

Each request does what a service's middleware and handler do: `set_user_session_context`
with the request's user and session, a `@trace()`-decorated `chat(user_message)` with nested
steps (a retriever step holding an embedding step, then a chat completion with model, tokens
and cost), and `clear_user_session_context` in `finally`. Every `--override-every`-th request
moves its trace to another session with `update_trace_user_session` inside the trace.
Publishing is synchronous (`background_publish_enabled=False`): `chat` returns only once the
SDK's request (with its own retries, `--max-retries`) is answered.

With `--updates`, the last turn of every session then gets a row update
(`client.inference_pipelines.rows.update`) setting `groundTruth` and `thumbs_up`.

Every row and update the SDK hands to its HTTP client is appended to `--sent` (JSON lines:
`{"rows": [...]}` or `{"update": {...}}`), so the test compares what arrives at Openlayer
with what the SDK sent. Prints one JSON object: traces, updates, failed (publish errors the
SDK logged). Exit status 1 when any publish failed.
"""
import argparse
import json
import logging
import sys


class FailureCounter(logging.Handler):
    """Counts the SDK's log records about traces it could not deliver."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.failed = 0

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "Could not stream data" in message or "dropping trace" in message:
            self.failed += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--prefix", required=True, help="prefix of session and user ids")
    parser.add_argument("--sessions", type=int, required=True)
    parser.add_argument("--turns", type=int, required=True)
    parser.add_argument("--override-every", type=int, default=0, help="0: never")
    parser.add_argument("--updates", action="store_true")
    parser.add_argument("--max-retries", type=int, default=2, help="the SDK client's retries")
    parser.add_argument("--sent", required=True, help="JSON lines of what the SDK sent")
    args = parser.parse_args()

    from openlayer.lib import (
        clear_user_session_context,
        init,
        set_user_session_context,
        trace,
        update_trace_user_session,
    )
    from openlayer.lib.tracing import enums, tracer

    counter = FailureCounter()
    logging.getLogger("openlayer").addHandler(counter)
    init(background_publish_enabled=False, max_retries=args.max_retries, auto_instrument=False)

    sent = open(args.sent, "a", encoding="utf-8")
    client = tracer._get_client()  # pylint: disable=protected-access
    stream = client.inference_pipelines.data.stream

    def recording_stream(*call_args, **kwargs):
        # The rows exactly as handed to the HTTP client; recorded once per publish, not per retry.
        sent.write(json.dumps({"rows": kwargs["rows"]}) + "\n")
        sent.flush()
        return stream(*call_args, **kwargs)

    client.inference_pipelines.data.stream = recording_stream

    @trace()
    def chat(user_message: str, turn: int, override: bool) -> str:
        if override:
            update_trace_user_session(session_id=f"{args.prefix}-override")
        with tracer.create_step(
            name="retrieve", step_type=enums.StepType.RETRIEVER, inputs={"query": user_message}
        ) as retrieve:
            with tracer.create_step(
                name="embed", step_type=enums.StepType.USER_CALL, inputs={"text": user_message}
            ) as embed:
                embed.log(output=[0.25, -1.5, 3], metadata={"dimensions": 3})
            retrieve.log(output=["doc one", {"id": 7, "score": 0.875}], metadata={"k": 2})
        with tracer.create_step(
            name="complete", step_type=enums.StepType.CHAT_COMPLETION, inputs={"prompt": user_message}
        ) as complete:
            complete.log(
                output=f"answer {turn}",
                model="gpt-4o-mini",
                prompt_tokens=10 + turn,
                completion_tokens=5,
                tokens=15 + turn,
                cost=0.001 * (turn + 1),
            )
        tracer.update_current_trace(turn_number=turn, tags=["sdk", "gateway"], flagged=turn % 2 == 0)
        return f"answer {turn}"

    num_traces = 0
    request_index = 0
    last_ids = {}
    for turn in range(1, args.turns + 1):
        for session in range(args.sessions):
            request_index += 1
            override = args.override_every > 0 and request_index % args.override_every == 0
            set_user_session_context(
                user_id=f"{args.prefix}-user-{session % 3}",
                session_id=f"{args.prefix}-session-{session}",
            )
            try:
                chat(f"question {turn} of session {session}", turn, override)
                num_traces += 1
            finally:
                clear_user_session_context()
    sent.flush()

    num_updates = 0
    if args.updates:
        pipeline_id = tracer.resolve_pipeline_id()
        # The last row the SDK streamed for every session.
        with open(args.sent, encoding="utf-8") as handle:
            for line in handle:
                record = json.loads(line)
                for row in record.get("rows", []):
                    last_ids[row.get("session_id")] = row["inferenceId"]
        for session_id, inference_id in sorted(last_ids.items(), key=lambda item: str(item[0])):
            row = {"groundTruth": f"ground truth of {session_id}", "thumbs_up": True}
            config = {"groundTruthColumnName": "groundTruth"}
            client.inference_pipelines.rows.update(
                pipeline_id, inference_id=inference_id, row=row, config=config
            )
            sent.write(
                json.dumps({"update": {"inferenceId": inference_id, "row": row, "config": config}}) + "\n"
            )
            num_updates += 1
    sent.close()

    json.dump({"traces": num_traces, "updates": num_updates, "failed": counter.failed}, sys.stdout)
    print()
    return 1 if counter.failed else 0


if __name__ == "__main__":
    sys.exit(main())
