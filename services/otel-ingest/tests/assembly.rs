//! Spans as the OTel SDKs and instrumentation libraries record them, through decode, grouping
//! and assembly.

use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::Event;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use otel_ingest::request::ExportTraceServiceRequest;
use otel_ingest::{AssemblyError, Encoding, assemble, decode, group_by_trace};
use prost::Message as _;
use serde_json::{Value, json};
use trace_model::{Limits, TraceEvent};

const TRACE: [u8; 16] = [0xab; 16];
const TRACE_HEX: &str = "abababababababababababababababab";
const T0: u64 = 1_780_000_000_000_000_000;

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

fn s(key: &str, value: &str) -> KeyValue {
    kv(key, any_value::Value::StringValue(value.to_owned()))
}

fn i(key: &str, value: i64) -> KeyValue {
    kv(key, any_value::Value::IntValue(value))
}

fn d(key: &str, value: f64) -> KeyValue {
    kv(key, any_value::Value::DoubleValue(value))
}

fn id(n: u8) -> Vec<u8> {
    vec![0, 0, 0, 0, 0, 0, 0, n]
}

/// A span of the trace: `n` its id, `parent` its parent's (0: root), times in ms from T0.
fn span(
    n: u8,
    parent: u8,
    name: &str,
    (start, end): (u64, u64),
    attributes: Vec<KeyValue>,
) -> Span {
    Span {
        trace_id: TRACE.to_vec(),
        span_id: id(n),
        parent_span_id: if parent == 0 { Vec::new() } else { id(parent) },
        name: name.to_owned(),
        start_time_unix_nano: T0 + start * 1_000_000,
        end_time_unix_nano: T0 + end * 1_000_000,
        attributes,
        ..Span::default()
    }
}

fn request(spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    s("service.name", "support-bot"),
                    s("deployment.environment", "prod"),
                ],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "opentelemetry.instrumentation.openai_v2".to_owned(),
                    ..InstrumentationScope::default()
                }),
                spans,
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    }
}

/// A RAG turn with today's conventions: a handler span, a retrieval, a chat call that runs
/// a tool.
fn rag_turn() -> Vec<Span> {
    vec![
        span(
            1,
            0,
            "POST /chat",
            (0, 900),
            vec![s("user.id", "ana"), s("http.route", "/chat")],
        ),
        span(
            2,
            1,
            "retrieval docs",
            (10, 60),
            vec![
                s("gen_ai.operation.name", "retrieval"),
                s("gen_ai.data_source.id", "kb"),
            ],
        ),
        span(
            3,
            1,
            "chat gpt-4o",
            (100, 800),
            vec![
                s("gen_ai.operation.name", "chat"),
                s("gen_ai.provider.name", "openai"),
                s("gen_ai.request.model", "gpt-4o"),
                s("gen_ai.response.model", "gpt-4o-2024-08-06"),
                s("gen_ai.conversation.id", "conv-7"),
                i("gen_ai.usage.input_tokens", 120),
                i("gen_ai.usage.output_tokens", 30),
                d("gen_ai.request.temperature", 0.2),
                i("gen_ai.request.max_tokens", 256),
                d("gen_ai.usage.cost", 0.0021),
                s(
                    "gen_ai.system_instructions",
                    r#"[{"type": "text", "content": "Be brief."}]"#,
                ),
                s(
                    "gen_ai.input.messages",
                    r#"[{"role": "user", "parts": [{"type": "text", "content": "Where is my order?"}]}]"#,
                ),
                s(
                    "gen_ai.output.messages",
                    r#"[{"role": "assistant", "parts": [{"type": "text", "content": "It ships today."}], "finish_reason": "stop"}]"#,
                ),
                s("gen_ai.response.id", "chatcmpl-1"),
            ],
        ),
        span(
            4,
            3,
            "execute_tool lookup_order",
            (300, 350),
            vec![
                s("gen_ai.operation.name", "execute_tool"),
                s("gen_ai.tool.name", "lookup_order"),
                s("gen_ai.tool.call.arguments", r#"{"order": 42}"#),
                s("gen_ai.tool.call.result", r#"{"status": "packed"}"#),
            ],
        ),
    ]
}

fn assemble_one(request: &ExportTraceServiceRequest) -> Result<TraceEvent, AssemblyError> {
    let grouped = group_by_trace(request);
    assert_eq!(grouped.traces.len(), 1);
    let (trace_id, spans) = grouped.traces.iter().next().expect("one trace");
    assemble(trace_id, spans, &Limits::default())
}

#[test]
fn a_genai_trace_becomes_one_trace_with_nested_typed_steps() {
    let body = request(rag_turn()).encode_to_vec();
    let decoded = decode(&body, Encoding::Protobuf).expect("protobuf");
    let event = assemble_one(&decoded).expect("assembled");

    assert_eq!(event.inference_id.as_deref(), Some(TRACE_HEX));
    assert_eq!(event.name, "POST /chat");
    assert_eq!(
        event.session_id.as_deref(),
        Some("conv-7"),
        "from the chat span"
    );
    assert_eq!(event.user_id.as_deref(), Some("ana"));
    assert_eq!(event.timestamp_ms, (T0 / 1_000_000) as i64);
    assert_eq!(event.latency_ms, Some(900.0));
    assert_eq!(
        (
            event.tokens,
            event.prompt_tokens,
            event.completion_tokens,
            event.cost
        ),
        (Some(150), Some(120), Some(30), Some(0.0021)),
        "the trace's usage sums its steps'"
    );
    assert_eq!(
        event.output,
        json!("It ships today."),
        "the last model call's answer"
    );
    assert_eq!(event.metadata["service.name"], "support-bot");
    assert_eq!(event.metadata["http.route"], "/chat");
    assert_eq!(
        event.metadata["otel.scope.name"],
        "opentelemetry.instrumentation.openai_v2"
    );
    assert!(!event.metadata.contains_key("user.id"), "ids are columns");

    let types: Vec<&str> = event
        .steps
        .iter()
        .map(|step| step.step_type.as_str())
        .collect();
    assert_eq!(types, ["retriever", "chat_completion"], "in start order");
    let chat = &event.steps[1];
    assert_eq!(chat.id, "0000000000000003");
    assert_eq!(chat.model.as_deref(), Some("gpt-4o-2024-08-06"));
    assert_eq!(chat.provider.as_deref(), Some("openai"));
    assert_eq!(
        (chat.prompt_tokens, chat.completion_tokens, chat.tokens),
        (Some(120), Some(30), Some(150))
    );
    assert_eq!(chat.cost, Some(0.0021));
    assert_eq!(
        Value::Object(chat.model_parameters.clone().expect("parameters")),
        json!({"temperature": 0.2, "max_tokens": 256})
    );
    assert_eq!(
        chat.inputs["prompt"],
        json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Where is my order?"}
        ])
    );
    assert_eq!(chat.output, json!("It ships today."));
    assert_eq!(chat.raw_output[0]["finish_reason"], "stop");
    assert_eq!(chat.latency_ms, 700.0);
    assert_eq!(chat.metadata["gen_ai.response.id"], "chatcmpl-1");
    for mapped in [
        "gen_ai.input.messages",
        "gen_ai.usage.input_tokens",
        "gen_ai.request.temperature",
        "gen_ai.conversation.id",
        "gen_ai.operation.name",
    ] {
        assert!(!chat.metadata.contains_key(mapped), "{mapped} is a field");
    }
    let tool = &chat.steps[0];
    assert_eq!(tool.step_type, "tool");
    // It travels as any trace does: the sessionizer's decoder reads it back whole.
    let avro = trace_model::encode(&event, trace_model::Encoding::Avro).expect("Avro");
    let decoded = trace_model::Decoder::new(Limits::default())
        .decode(&avro)
        .expect("decoded");
    assert_eq!(decoded, event);
    assert_eq!(tool.inputs["tool"], "lookup_order");
    assert_eq!(tool.inputs["arguments"], json!({"order": 42}));
    assert_eq!(tool.output, json!({"status": "packed"}));
}

#[test]
fn otlp_json_decodes_to_the_same_trace_as_protobuf() {
    let spans = rag_turn();
    let from_protobuf = assemble_one(&request(spans.clone())).expect("protobuf");
    // OTLP's JSON mapping as the JavaScript SDK sends it: hex ids, camelCase keys, 64-bit
    // integers as strings.
    let chat = &spans[2];
    let attributes: Vec<Value> = chat
        .attributes
        .iter()
        .map(|pair| {
            let value = match pair.value.as_ref().and_then(|value| value.value.as_ref()) {
                Some(any_value::Value::StringValue(text)) => json!({"stringValue": text}),
                Some(any_value::Value::IntValue(n)) => json!({"intValue": n.to_string()}),
                Some(any_value::Value::DoubleValue(x)) => json!({"doubleValue": x}),
                other => panic!("unexpected {other:?}"),
            };
            json!({"key": pair.key, "value": value})
        })
        .collect();
    let json_span = |span: &Span, attributes: Value| {
        json!({
            "traceId": TRACE_HEX,
            "spanId": otel_ingest::attributes::hex(&span.span_id),
            "parentSpanId": otel_ingest::attributes::hex(&span.parent_span_id),
            "name": span.name,
            "kind": 1,
            "startTimeUnixNano": span.start_time_unix_nano.to_string(),
            "endTimeUnixNano": span.end_time_unix_nano.to_string(),
            "attributes": attributes,
        })
    };
    let body = json!({"resourceSpans": [{
        "resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": "support-bot"}},
            {"key": "deployment.environment", "value": {"stringValue": "prod"}}
        ]},
        "scopeSpans": [{
            "scope": {"name": "opentelemetry.instrumentation.openai_v2"},
            "spans": [
                json_span(&spans[0], json!([
                    {"key": "user.id", "value": {"stringValue": "ana"}},
                    {"key": "http.route", "value": {"stringValue": "/chat"}}
                ])),
                json_span(&spans[1], json!([
                    {"key": "gen_ai.operation.name", "value": {"stringValue": "retrieval"}},
                    {"key": "gen_ai.data_source.id", "value": {"stringValue": "kb"}}
                ])),
                json_span(chat, Value::Array(attributes)),
                json_span(&spans[3], json!([
                    {"key": "gen_ai.operation.name", "value": {"stringValue": "execute_tool"}},
                    {"key": "gen_ai.tool.name", "value": {"stringValue": "lookup_order"}},
                    {"key": "gen_ai.tool.call.arguments", "value": {"stringValue": "{\"order\": 42}"}},
                    {"key": "gen_ai.tool.call.result", "value": {"stringValue": "{\"status\": \"packed\"}"}}
                ])),
            ]
        }]
    }]});
    let decoded = decode(body.to_string().as_bytes(), Encoding::Json).expect("OTLP JSON");
    let from_json = assemble_one(&decoded).expect("assembled");
    assert_eq!(from_json, from_protobuf);
}

#[test]
fn older_conventions_map_to_the_same_fields() {
    let mut chat = span(
        2,
        1,
        "openai.chat",
        (10, 500),
        vec![
            s("gen_ai.operation.name", "chat"),
            s("gen_ai.system", "openai"),
            s("gen_ai.request.model", "gpt-4o-mini"),
            i("gen_ai.usage.prompt_tokens", 9),
            i("gen_ai.usage.completion_tokens", 4),
            s("session.id", "s-1"),
            s("enduser.id", "bo"),
        ],
    );
    chat.events = vec![
        Event {
            name: "gen_ai.user.message".to_owned(),
            attributes: vec![s("content", "Hi")],
            ..Event::default()
        },
        Event {
            name: "gen_ai.choice".to_owned(),
            attributes: vec![s(
                "message",
                r#"{"role": "assistant", "content": "Hello!"}"#,
            )],
            ..Event::default()
        },
    ];
    // OpenLLMetry's indexed attributes.
    let completion = span(
        3,
        1,
        "openai.completion",
        (600, 700),
        vec![
            s("gen_ai.operation.name", "text_completion"),
            s("gen_ai.prompt.0.role", "user"),
            s("gen_ai.prompt.0.content", "Say bye"),
            s("gen_ai.completion.0.role", "assistant"),
            s("gen_ai.completion.0.content", "Bye"),
            i("llm.usage.total_tokens", 5),
        ],
    );
    let root = span(1, 0, "workflow", (0, 800), vec![]);
    let event = assemble_one(&request(vec![root, chat, completion])).expect("assembled");
    assert_eq!(event.session_id.as_deref(), Some("s-1"));
    assert_eq!(event.user_id.as_deref(), Some("bo"));
    let chat = &event.steps[0];
    assert_eq!(chat.provider.as_deref(), Some("openai"));
    assert_eq!(
        chat.inputs["prompt"],
        json!([{"role": "user", "content": "Hi"}])
    );
    assert_eq!(chat.output, json!("Hello!"));
    assert_eq!(chat.tokens, Some(13));
    let completion = &event.steps[1];
    assert_eq!(completion.step_type, "chat_completion");
    assert_eq!(
        completion.inputs["prompt"],
        json!([{"role": "user", "content": "Say bye"}])
    );
    assert_eq!(completion.output, json!("Bye"));
    assert_eq!(completion.tokens, Some(5));
    assert_eq!(event.output, json!("Bye"), "the last to end");
}

#[test]
fn a_lone_model_call_is_wrapped_as_the_traces_one_step() {
    let mut chat = span(
        1,
        0,
        "chat gpt-4o",
        (0, 300),
        vec![
            s("gen_ai.operation.name", "chat"),
            s("gen_ai.conversation.id", "c-1"),
            s(
                "gen_ai.input.messages",
                r#"[{"role": "user", "content": "2+2?"}]"#,
            ),
            s(
                "gen_ai.output.messages",
                r#"[{"role": "assistant", "content": "4"}]"#,
            ),
        ],
    );
    chat.status = Some(Status {
        code: StatusCode::Error as i32,
        message: "rate limited".to_owned(),
    });
    let event = assemble_one(&request(vec![chat])).expect("assembled");
    assert_eq!(event.steps.len(), 1);
    let step = &event.steps[0];
    assert_eq!(step.step_type, "chat_completion");
    assert_eq!(
        step.inputs["prompt"],
        json!([{"role": "user", "content": "2+2?"}])
    );
    assert_eq!(event.inputs, step.inputs);
    assert_eq!(event.output, json!("4"));
    assert_eq!(event.tokens, None, "no usage recorded");
    assert_eq!(step.metadata["otel.status_code"], "ERROR");
    assert_eq!(step.metadata["otel.status_message"], "rate limited");
}

#[test]
fn usage_counts_where_it_is_recorded_deepest() {
    // An agent span reporting its model calls' total, as agent frameworks do.
    let spans = vec![
        span(1, 0, "handle", (0, 100), vec![]),
        span(
            2,
            1,
            "invoke_agent planner",
            (1, 90),
            vec![
                s("gen_ai.operation.name", "invoke_agent"),
                i("gen_ai.usage.input_tokens", 30),
                i("gen_ai.usage.output_tokens", 6),
            ],
        ),
        span(
            3,
            2,
            "chat a",
            (2, 40),
            vec![
                s("gen_ai.operation.name", "chat"),
                i("gen_ai.usage.input_tokens", 10),
                i("gen_ai.usage.output_tokens", 2),
            ],
        ),
        span(
            4,
            2,
            "chat b",
            (41, 80),
            vec![
                s("gen_ai.operation.name", "chat"),
                i("gen_ai.usage.input_tokens", 20),
                i("gen_ai.usage.output_tokens", 4),
            ],
        ),
        span(
            5,
            1,
            "embeddings",
            (91, 95),
            vec![
                s("gen_ai.operation.name", "embeddings"),
                i("gen_ai.usage.input_tokens", 5),
            ],
        ),
    ];
    let event = assemble_one(&request(spans)).expect("assembled");
    assert_eq!(
        event.steps[0].tokens,
        Some(36),
        "the agent step keeps its own figure"
    );
    assert_eq!(
        (event.tokens, event.prompt_tokens, event.completion_tokens),
        (Some(41), Some(35), Some(6)),
        "the model calls once each, not the agent's total again"
    );
}

#[test]
fn a_span_with_a_great_many_indexed_messages_is_read_in_one_pass() {
    let mut attributes = vec![s("gen_ai.operation.name", "chat")];
    for index in 0..50_000 {
        attributes.push(s(&format!("gen_ai.prompt.{index}.content"), "hi"));
    }
    let spans = vec![
        span(1, 0, "root", (0, 10), vec![]),
        span(2, 1, "chat", (1, 9), attributes),
    ];
    let event = assemble_one(&request(spans)).expect("assembled");
    let prompt = event.steps[0].inputs["prompt"].as_array().expect("prompt");
    assert_eq!(prompt.len(), 1024, "capped");
}

#[test]
fn a_span_whose_parent_is_missing_hangs_under_the_root_and_is_counted() {
    let spans = vec![
        span(1, 0, "root", (0, 100), vec![]),
        span(2, 9, "lost parent", (10, 20), vec![]),
    ];
    let event = assemble_one(&request(spans)).expect("assembled");
    assert_eq!(event.steps[0].name, "lost parent");
    assert_eq!(event.metadata["otel.orphan_spans"], 1);
}

#[test]
fn malformed_traces_are_refused_with_a_reason() {
    let cases: Vec<(Vec<Span>, &str)> = vec![
        (
            vec![
                span(1, 2, "a", (0, 1), vec![]),
                span(2, 1, "b", (0, 1), vec![]),
            ],
            "otel_no_root",
        ),
        (
            vec![
                span(1, 0, "a", (0, 1), vec![]),
                span(2, 0, "b", (0, 1), vec![]),
            ],
            "otel_several_roots",
        ),
        (
            vec![
                span(1, 0, "root", (0, 1), vec![]),
                span(2, 3, "b", (0, 1), vec![]),
                span(3, 2, "c", (0, 1), vec![]),
            ],
            "otel_cycle",
        ),
        (
            vec![
                span(1, 0, "a", (0, 1), vec![]),
                span(1, 0, "again", (0, 1), vec![]),
            ],
            "otel_duplicate_span",
        ),
        (vec![span(0, 0, "no id", (0, 1), vec![])], "otel_span_id"),
    ];
    for (spans, reason) in cases {
        let error = assemble_one(&request(spans)).expect_err(reason);
        assert_eq!(error.reason(), reason, "{error}");
    }
}

#[test]
fn traces_beyond_the_step_limits_are_refused() {
    let limits = Limits {
        max_steps: 3,
        max_step_depth: 2,
        ..Limits::default()
    };
    let wide: Vec<Span> = std::iter::once(span(1, 0, "root", (0, 1), vec![]))
        .chain((2..=5).map(|n| span(n, 1, "child", (0, 1), vec![])))
        .collect();
    let deep: Vec<Span> = (1..=4)
        .map(|n| span(n, n - 1, "level", (0, 1), vec![]))
        .collect();
    // A root that is a model call is a step itself: one span fewer, one level less.
    let chat = || vec![s("gen_ai.operation.name", "chat")];
    let wide_chat: Vec<Span> = std::iter::once(span(1, 0, "chat", (0, 1), chat()))
        .chain((2..=4).map(|n| span(n, 1, "child", (0, 1), vec![])))
        .collect();
    let deep_chat: Vec<Span> = (1..=3)
        .map(|n| {
            span(
                n,
                n - 1,
                "level",
                (0, 1),
                if n == 1 { chat() } else { vec![] },
            )
        })
        .collect();
    for (spans, reason) in [
        (wide, "too_many_steps"),
        (deep, "too_deep"),
        (wide_chat, "too_many_steps"),
        (deep_chat, "too_deep"),
    ] {
        let request = request(spans);
        let grouped = group_by_trace(&request);
        let (trace_id, spans) = grouped.traces.iter().next().expect("trace");
        let error = assemble(trace_id, spans, &limits).expect_err(reason);
        assert_eq!(error.reason(), reason, "{error}");
    }
}

#[test]
fn spans_of_several_traces_are_grouped_and_those_without_a_trace_id_counted() {
    let mut other = span(1, 0, "other trace", (0, 1), vec![]);
    other.trace_id = vec![0x01; 16];
    let mut no_trace = span(5, 0, "no trace id", (0, 1), vec![]);
    no_trace.trace_id = vec![0; 16];
    let request = request(vec![span(1, 0, "root", (0, 1), vec![]), other, no_trace]);
    let grouped = group_by_trace(&request);
    assert_eq!(grouped.traces.len(), 2);
    assert_eq!(grouped.without_trace_id, 1);
}

#[test]
fn undecodable_bodies_are_errors_not_panics() {
    assert_eq!(
        decode(b"\x0a\xff\xff\xff", Encoding::Protobuf)
            .expect_err("truncated")
            .reason(),
        "otlp_protobuf"
    );
    assert_eq!(
        decode(b"{\"resourceSpans\": 5}", Encoding::Json)
            .expect_err("shape")
            .reason(),
        "otlp_json"
    );
    // A span name that is not UTF-8 (protobuf strings must be).
    let mut body = request(vec![span(1, 0, "ok", (0, 1), vec![])]).encode_to_vec();
    let at = body
        .windows(2)
        .position(|pair| pair == b"ok")
        .expect("name bytes");
    body[at] = 0xff;
    assert!(decode(&body, Encoding::Protobuf).is_err());
}

#[test]
fn split_by_trace_keeps_each_traces_spans_with_their_resource_and_scope_in_order() {
    let other_trace = |mut span: Span| {
        span.trace_id = vec![9; 16];
        span
    };
    let mut spans = rag_turn();
    let mut without_trace_id = spans[0].clone();
    without_trace_id.trace_id = vec![0; 16];
    spans.insert(1, other_trace(spans[1].clone()));
    spans.push(without_trace_id);
    let mut whole = request(spans);
    // A second resource holding a span of the first trace.
    let mut second = request(vec![rag_turn()[2].clone()]);
    second.resource_spans[0].resource = Some(Resource {
        attributes: vec![s("service.name", "tools")],
        ..Resource::default()
    });
    whole.resource_spans.extend(second.resource_spans.clone());

    let (traces, rest) = otel_ingest::split_by_trace(whole.clone());
    assert_eq!(traces.len(), 2);
    let names = |request: &ExportTraceServiceRequest| -> Vec<(String, String)> {
        request
            .resource_spans
            .iter()
            .flat_map(|resource| {
                let service = resource
                    .resource
                    .as_ref()
                    .map_or(String::new(), |resource| {
                        format!("{:?}", resource.attributes[0].value)
                    });
                resource.scope_spans.iter().flat_map(move |scope| {
                    let service = service.clone();
                    scope
                        .spans
                        .iter()
                        .map(move |span| (service.clone(), span.name.clone()))
                })
            })
            .collect()
    };
    let first = &traces[TRACE_HEX];
    let expected: Vec<(String, String)> = names(&request(rag_turn()))
        .into_iter()
        .chain(names(&second))
        .collect();
    assert_eq!(names(first), expected);
    assert_eq!(
        first.resource_spans.len(),
        2,
        "one ResourceSpans per resource"
    );
    assert_eq!(
        first.resource_spans[0].scope_spans[0].scope,
        whole.resource_spans[0].scope_spans[0].scope
    );
    assert_eq!(names(&traces[&"09".repeat(16)]).len(), 1);
    assert_eq!(names(&rest).len(), 1, "the span without a trace id, apart");
    // Nothing lost or made up: as many spans out as in.
    let count = |request: &ExportTraceServiceRequest| names(request).len();
    assert_eq!(
        traces.values().map(count).sum::<usize>() + count(&rest),
        count(&whole)
    );
}
