"""A chat service instrumented with the OpenTelemetry Python SDK, as GenAI services are.

Each turn is a request span around a chat span carrying the GenAI semantic conventions
(operation, model, provider, token usage, conversation id, input and output messages). Spans go
through the SDK's batch span processor and OTLP/HTTP exporter, configured by the standard
environment (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_HEADERS).

With --kafka, spans are written to a Kafka topic instead, as the OpenTelemetry Collector's
Kafka exporter writes them (`otlp_proto`): one ExportTraceServiceRequest per export, unkeyed,
or with --keyed one per trace keyed by its hex id (`partition_traces_by_id`). --batch-size 1
exports every span on its own, so a trace's spans come in several messages.

Writes one JSON line per turn to --sent: session, turn, trace id (hex), tokens.
"""

import argparse
import json
import os
import time

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult


class CollectorKafkaExporter(SpanExporter):
    """Writes spans to Kafka as the Collector's Kafka exporter does with `otlp_proto`."""

    def __init__(self, bootstrap, topic, keyed):
        from confluent_kafka import Producer

        self.producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
        self.topic = topic
        self.keyed = keyed

    def export(self, spans):
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

        if self.keyed:
            by_trace = {}
            for span in spans:
                by_trace.setdefault(format(span.context.trace_id, "032x"), []).append(span)
            for trace_id, trace_spans in by_trace.items():
                self.producer.produce(
                    self.topic, key=trace_id, value=encode_spans(trace_spans).SerializeToString()
                )
        else:
            self.producer.produce(self.topic, value=encode_spans(spans).SerializeToString())
        # The Collector's exporter is synchronous: an export returns once Kafka has it.
        if self.producer.flush(30) != 0:
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self):
        self.producer.flush(30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--sessions", type=int, default=2)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--first-turn", type=int, default=1, help="continue earlier conversations")
    parser.add_argument("--sent", required=True)
    parser.add_argument("--kafka", help="bootstrap servers: write spans to Kafka instead")
    parser.add_argument("--topic", default="otlp_spans")
    parser.add_argument("--keyed", action="store_true")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--hold-last-root",
                        help="a file: the last turn's request span ends once it exists")
    args = parser.parse_args()

    provider = TracerProvider(resource=Resource.create({"service.name": "genai-chat"}))
    if args.kafka:
        # Exported every 50 ms, as a Collector's batch processor flushes every 200 ms.
        processor = BatchSpanProcessor(
            CollectorKafkaExporter(args.kafka, args.topic, args.keyed),
            max_export_batch_size=args.batch_size, schedule_delay_millis=50,
        )
    else:
        processor = BatchSpanProcessor(OTLPSpanExporter(), max_export_batch_size=args.batch_size)
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("genai-chat")

    sent = []
    for turn in range(args.first_turn, args.first_turn + args.turns):
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
                last = turn == args.first_turn + args.turns - 1 and session == args.sessions - 1
                if last and args.hold_last_root:
                    # Its chat span is exported meanwhile; the root comes when told.
                    deadline = time.monotonic() + 300
                    while not os.path.exists(args.hold_last_root) and time.monotonic() < deadline:
                        time.sleep(0.05)
                    if os.path.exists(args.hold_last_root):
                        os.remove(args.hold_last_root)
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
