//! Cost of OpenTelemetry ingest per trace, against the native path on the same traces,
//! measured in the same run.
//!
//! The workload: an export request of 100 traces, each a GenAI turn of four spans (a request
//! span around a retrieval and a chat call, the chat call running a tool), with the attributes
//! instrumentation libraries record (messages as JSON text, token usage, model parameters).
//!
//! - `native_decode`: the baseline, `trace_model::Decoder::decode` of each trace's Avro record
//!   (the traces `assemble` produces), which is what the sessionizer pays per native trace;
//! - `otlp_decode_assemble`: decoding the request from protobuf, grouping its spans by trace
//!   and assembling every trace (the gateway's cost per trace before producing);
//! - `assemble_only`: grouping and assembling an already decoded request.
//!
//! Throughput is per trace (four spans each). `scripts/bench.sh` turns the medians into ratios.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use otel_ingest::{Encoding, assemble, decode, group_by_trace};
use prost::Message as _;
use std::hint::black_box;
use trace_model::{Decoder, Limits};

const TRACES: usize = 100;

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

fn text(key: &str, value: &str) -> KeyValue {
    kv(key, any_value::Value::StringValue(value.to_owned()))
}

fn turn(trace: usize) -> Vec<Span> {
    let trace_id = (trace as u128 + 1).to_be_bytes().to_vec();
    let start = 1_780_000_000_000_000_000 + trace as u64 * 1_000_000_000;
    let span = |n: u8, parent: Option<u8>, name: &str, attributes: Vec<KeyValue>| {
        let id = |n: u8| {
            let mut id = (trace as u64).to_be_bytes().to_vec();
            id[0] = n;
            id
        };
        Span {
            trace_id: trace_id.clone(),
            span_id: id(n),
            parent_span_id: parent.map_or(Vec::new(), id),
            name: name.to_owned(),
            start_time_unix_nano: start + u64::from(n) * 1_000_000,
            end_time_unix_nano: start + 800_000_000 - u64::from(n) * 1_000_000,
            attributes,
            ..Span::default()
        }
    };
    vec![
        span(
            1,
            None,
            "POST /chat",
            vec![text("user.id", "user-004711"), text("http.route", "/chat")],
        ),
        span(
            2,
            Some(1),
            "retrieval kb",
            vec![
                text("gen_ai.operation.name", "retrieval"),
                text("gen_ai.data_source.id", "travel-guides"),
            ],
        ),
        span(
            3,
            Some(1),
            "chat gpt-4o-mini",
            vec![
                text("gen_ai.operation.name", "chat"),
                text("gen_ai.provider.name", "openai"),
                text("gen_ai.request.model", "gpt-4o-mini"),
                text("gen_ai.response.model", "gpt-4o-mini-2024-07-18"),
                text("gen_ai.conversation.id", &format!("session-{}", trace % 10)),
                kv("gen_ai.usage.input_tokens", any_value::Value::IntValue(412)),
                kv("gen_ai.usage.output_tokens", any_value::Value::IntValue(58)),
                kv(
                    "gen_ai.request.temperature",
                    any_value::Value::DoubleValue(0.2),
                ),
                kv("gen_ai.request.max_tokens", any_value::Value::IntValue(256)),
                text(
                    "gen_ai.input.messages",
                    r#"[{"role": "system", "parts": [{"type": "text", "content": "You are a travel assistant."}]}, {"role": "user", "parts": [{"type": "text", "content": "Which neighbourhood in Lisbon is best for walking to restaurants in the evening?"}]}]"#,
                ),
                text(
                    "gen_ai.output.messages",
                    r#"[{"role": "assistant", "parts": [{"type": "text", "content": "Alfama is hard to beat for evening walks: most tascas and fado houses are a few minutes apart, though the streets are steep."}], "finish_reason": "stop"}]"#,
                ),
            ],
        ),
        span(
            4,
            Some(3),
            "execute_tool opening_hours",
            vec![
                text("gen_ai.operation.name", "execute_tool"),
                text("gen_ai.tool.name", "opening_hours"),
                text("gen_ai.tool.call.arguments", r#"{"district": "Alfama"}"#),
                text("gen_ai.tool.call.result", r#"{"open_until": "23:00"}"#),
            ],
        ),
    ]
}

fn request() -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![text("service.name", "travel-bot")],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: (0..TRACES).flat_map(turn).collect(),
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    }
}

fn assembly(criterion: &mut Criterion) {
    let limits = Limits::default();
    let request = request();
    let body = request.encode_to_vec();
    let assembled: Vec<Vec<u8>> = group_by_trace(&request)
        .traces
        .iter()
        .map(|(trace_id, spans)| {
            let event = assemble(trace_id, spans, &limits).expect("assembles");
            trace_model::encode(&event, trace_model::Encoding::Avro).expect("encodes")
        })
        .collect();
    assert_eq!(assembled.len(), TRACES);
    let decoder = Decoder::new(limits);

    let mut group = criterion.benchmark_group("otel_assembly");
    group.throughput(Throughput::Elements(TRACES as u64));
    group.bench_function("native_decode", |bench| {
        bench.iter(|| {
            for payload in &assembled {
                black_box(decoder.decode(black_box(payload)).expect("decodes"));
            }
        });
    });
    group.bench_function("otlp_decode_assemble", |bench| {
        bench.iter(|| {
            let request = decode(black_box(&body), Encoding::Protobuf).expect("decodes");
            for (trace_id, spans) in &group_by_trace(&request).traces {
                black_box(assemble(trace_id, spans, &limits).expect("assembles"));
            }
        });
    });
    group.bench_function("assemble_only", |bench| {
        bench.iter(|| {
            for (trace_id, spans) in &group_by_trace(black_box(&request)).traces {
                black_box(assemble(trace_id, spans, &limits).expect("assembles"));
            }
        });
    });
    group.finish();
}

criterion_group!(benches, assembly);
criterion_main!(benches);
