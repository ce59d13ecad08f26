"""A chat service instrumented with the OpenTelemetry Python SDK, as GenAI services are.

Each turn is a request span around a chat span carrying the GenAI semantic conventions
(operation, model, provider, token usage, conversation id, input and output messages). Spans go
through the SDK's batch span processor and OTLP/HTTP exporter, configured by the standard
environment (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_HEADERS).

Writes one JSON line per turn to --sent: session, turn, trace id (hex), tokens.
"""

import argparse
import json
import time

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--sessions", type=int, default=2)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--sent", required=True)
    args = parser.parse_args()

    provider = TracerProvider(resource=Resource.create({"service.name": "genai-chat"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    tracer = provider.get_tracer("genai-chat")

    sent = []
    for turn in range(1, args.turns + 1):
        for session in range(args.sessions):
            conversation = f"{args.prefix}-{session}"
            question = f"question {turn}"
            answer = f"answer {turn}"
            prompt_tokens, completion_tokens = 10 * turn, turn
            with tracer.start_as_current_span(
                "POST /chat", attributes={"user.id": f"user-{session}"}
            ) as request:
                with tracer.start_as_current_span(
                    "chat gpt-4o-mini",
                    attributes={
                        "gen_ai.operation.name": "chat",
                        "gen_ai.provider.name": "openai",
                        "gen_ai.request.model": "gpt-4o-mini",
                        "gen_ai.request.temperature": 0.2,
                        "gen_ai.conversation.id": conversation,
                        "gen_ai.usage.input_tokens": prompt_tokens,
                        "gen_ai.usage.output_tokens": completion_tokens,
                        "gen_ai.input.messages": json.dumps(
                            [{"role": "user", "parts": [{"type": "text", "content": question}]}]
                        ),
                        "gen_ai.output.messages": json.dumps(
                            [{"role": "assistant", "parts": [{"type": "text", "content": answer}],
                              "finish_reason": "stop"}]
                        ),
                    },
                ):
                    time.sleep(0.002)
                trace_id = format(request.get_span_context().trace_id, "032x")
            sent.append({"session": conversation, "turn": turn, "trace_id": trace_id,
                         "tokens": prompt_tokens + completion_tokens, "answer": answer})
            # Turns of a session a few milliseconds apart, as a user's would be seconds apart.
            time.sleep(0.005)
    # Exports what is left and waits for the gateway's answers.
    provider.shutdown()
    with open(args.sent, "w", encoding="utf-8") as out:
        for line in sent:
            out.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
