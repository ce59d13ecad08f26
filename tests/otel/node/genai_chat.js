// A chat service instrumented with the OpenTelemetry JavaScript SDK, as GenAI services are.
//
// Each turn is a request span around a chat span carrying the GenAI semantic conventions.
// Spans go through the SDK's batch span processor and its OTLP/HTTP exporter, which sends
// OTLP JSON; the standard environment configures it (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
// OTEL_EXPORTER_OTLP_HEADERS).
//
// Usage: node genai_chat.js --prefix P --sessions N --turns T --sent FILE
// Writes one JSON line per turn to FILE: session, turn, trace id (hex), tokens, answer.

const fs = require("node:fs");
const { context, diag, DiagConsoleLogger, DiagLogLevel, trace } = require("@opentelemetry/api");
const { BatchSpanProcessor, TracerProvider } = require("@opentelemetry/sdk-trace");
const { resourceFromAttributes } = require("@opentelemetry/resources");
const { OTLPTraceExporter } = require("@opentelemetry/exporter-trace-otlp-http");

function arg(name, fallback) {
  const at = process.argv.indexOf(`--${name}`);
  if (at < 0) {
    if (fallback === undefined) throw new Error(`--${name} is required`);
    return fallback;
  }
  return process.argv[at + 1];
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function main() {
  // Export failures are reported on stderr (the test reads it), as an operator would see them.
  diag.setLogger(new DiagConsoleLogger(), DiagLogLevel.WARN);
  const prefix = arg("prefix");
  const sessions = Number(arg("sessions", "2"));
  const turns = Number(arg("turns", "3"));
  const sentPath = arg("sent");

  const provider = new TracerProvider({
    resource: resourceFromAttributes({ "service.name": "genai-chat-node" }),
    spanProcessors: [new BatchSpanProcessor({ exporter: new OTLPTraceExporter() })],
  });
  const tracer = provider.getTracer("genai-chat-node");

  const sent = [];
  for (let turn = 1; turn <= turns; turn++) {
    for (let session = 0; session < sessions; session++) {
      const conversation = `${prefix}-${session}`;
      const question = `question ${turn}`;
      const answer = `answer ${turn}`;
      const promptTokens = 10 * turn;
      const completionTokens = turn;
      const request = tracer.startSpan("POST /chat", {
        attributes: { "user.id": `user-${session}` },
      });
      const chat = tracer.startSpan(
        "chat gpt-4o-mini",
        {
          attributes: {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "gpt-4o-mini",
            "gen_ai.conversation.id": conversation,
            "gen_ai.usage.input_tokens": promptTokens,
            "gen_ai.usage.output_tokens": completionTokens,
            "gen_ai.input.messages": JSON.stringify([
              { role: "user", parts: [{ type: "text", content: question }] },
            ]),
            "gen_ai.output.messages": JSON.stringify([
              { role: "assistant", parts: [{ type: "text", content: answer }], finish_reason: "stop" },
            ]),
          },
        },
        trace.setSpan(context.active(), request),
      );
      await sleep(2);
      chat.end();
      request.end();
      sent.push({
        session: conversation,
        turn,
        trace_id: request.spanContext().traceId,
        tokens: promptTokens + completionTokens,
        answer,
      });
      await sleep(5);
    }
  }
  // Exports what is left and waits for the gateway's answers.
  await provider.shutdown();
  fs.writeFileSync(sentPath, sent.map((line) => JSON.stringify(line)).join("\n") + "\n");
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
