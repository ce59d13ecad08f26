"""A chat service on the openai client, instrumented by the official OpenTelemetry OpenAI
instrumentation (opentelemetry-instrumentation-openai-v2), as teams instrument without writing
spans themselves. The model is a local fake of the OpenAI API; each request is a span around
the client call, carrying the conversation's session.id and the user's user.id.

Spans go through the SDK's batch span processor and OTLP/HTTP exporter, configured by the
standard environment (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_HEADERS). The
instrumentation records message content on the spans (see main()).

Writes one JSON line per turn to --sent: session, turn, trace id (hex), tokens, answer.
"""

import argparse
import json
import os
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer


class FakeOpenAI(BaseHTTPRequestHandler):
    """Chat completions: "question N" is answered "answer N", with 10 N prompt and N
    completion tokens."""

    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers["content-length"])))
        question = request["messages"][-1]["content"]
        turn = int(re.search(r"\d+", question).group())
        body = json.dumps({
            "id": f"chatcmpl-{turn}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": f"answer {turn}"}}],
            "usage": {"prompt_tokens": 10 * turn, "completion_tokens": turn,
                      "total_tokens": 11 * turn},
        }).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--sessions", type=int, default=2)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--sent", required=True)
    args = parser.parse_args()

    # Message content on the spans, in the current GenAI conventions (gen_ai.input.messages).
    os.environ["OTEL_SEMCONV_STABILITY_OPT_IN"] = "gen_ai_latest_experimental"
    os.environ["OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"] = "SPAN_ONLY"
    from openai import OpenAI
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    model = HTTPServer(("127.0.0.1", 0), FakeOpenAI)
    threading.Thread(target=model.serve_forever, daemon=True).start()

    provider = TracerProvider(resource=Resource.create({"service.name": "genai-chat-openai"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    OpenAIInstrumentor().instrument(tracer_provider=provider)
    tracer = provider.get_tracer("genai-chat-openai")
    client = OpenAI(base_url=f"http://127.0.0.1:{model.server_port}/v1", api_key="not-a-key")

    sent = []
    for turn in range(1, args.turns + 1):
        for session in range(args.sessions):
            conversation = f"{args.prefix}-{session}"
            with tracer.start_as_current_span(
                "POST /chat",
                attributes={"session.id": conversation, "user.id": f"user-{session}"},
            ) as request:
                completion = client.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=[{"role": "user", "content": f"question {turn}"}],
                    temperature=0.2,
                )
                trace_id = format(request.get_span_context().trace_id, "032x")
            sent.append({"session": conversation, "turn": turn, "trace_id": trace_id,
                         "tokens": completion.usage.total_tokens,
                         "answer": completion.choices[0].message.content})
            time.sleep(0.005)
    provider.shutdown()
    model.shutdown()
    with open(args.sent, "w", encoding="utf-8") as out:
        for line in sent:
            out.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
