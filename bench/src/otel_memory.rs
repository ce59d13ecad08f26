//! Memory per open OpenTelemetry trace in the Collector path's assembler, measured like the
//! session state ([`crate::memory`]): RSS growth in a fresh child process.
//!
//! The probe holds `n` traces open in one partition's `Assembler`: each is a GenAI turn whose
//! three inner spans (a retrieval, a chat call with its messages as JSON text and its usage,
//! a tool call) came in a message of their own while the root has not come yet, which is how
//! spans wait in a Collector's batch. The figure is per open trace, against the protobuf size
//! of its spans on the wire.

use crate::measure::rss_bytes;
use anyhow::{Context as _, Result, ensure};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message as _;
use serde::{Deserialize, Serialize};
use sessionizer::otel::assembler::{Assembler, AssemblySettings, Resume};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// What the probe process reports (one JSON line on stdout).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct OtelProbe {
    pub(crate) traces: usize,
    pub(crate) held_spans: usize,
    /// RSS growth per open trace.
    pub(crate) bytes_per_open_trace: f64,
    /// The same spans as protobuf, per trace: what the Collector wrote.
    pub(crate) protobuf_bytes_per_trace: f64,
}

fn text(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..KeyValue::default()
    }
}

fn int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..KeyValue::default()
    }
}

/// The inner spans of turn `trace`, its root (span 1) still open.
fn inner_spans(trace: u64) -> ExportTraceServiceRequest {
    let trace_id = u128::from(trace + 1).to_be_bytes().to_vec();
    let id = |n: u64| (trace << 8 | n).to_be_bytes().to_vec();
    let start = 1_780_000_000_000_000_000 + trace * 1_000_000_000;
    let span = |n: u64, parent: u64, name: &str, attributes: Vec<KeyValue>| Span {
        trace_id: trace_id.clone(),
        span_id: id(n),
        parent_span_id: id(parent),
        name: name.to_owned(),
        start_time_unix_nano: start + n * 1_000_000,
        end_time_unix_nano: start + 700_000_000 - n * 1_000_000,
        attributes,
        ..Span::default()
    };
    let session = format!("conversation-{:08}", trace / 4);
    let spans = vec![
        span(
            2,
            1,
            "retrieve docs",
            vec![
                text("gen_ai.operation.name", "retrieval"),
                text("gen_ai.conversation.id", &session),
            ],
        ),
        span(
            3,
            1,
            "chat gpt-4o-mini",
            vec![
                text("gen_ai.operation.name", "chat"),
                text("gen_ai.provider.name", "openai"),
                text("gen_ai.request.model", "gpt-4o-mini"),
                text("gen_ai.conversation.id", &session),
                int("gen_ai.usage.input_tokens", 412),
                int("gen_ai.usage.output_tokens", 96),
                text(
                    "gen_ai.input.messages",
                    r#"[{"role":"system","parts":[{"type":"text","content":"You answer questions about the product's billing."}]},{"role":"user","parts":[{"type":"text","content":"How do I change the card my invoices are charged to?"}]}]"#,
                ),
                text(
                    "gen_ai.output.messages",
                    r#"[{"role":"assistant","parts":[{"type":"text","content":"Open Settings, then Billing, and choose Update payment method."}],"finish_reason":"stop"}]"#,
                ),
            ],
        ),
        span(
            4,
            3,
            "execute_tool lookup_invoice",
            vec![
                text("gen_ai.operation.name", "execute_tool"),
                text("gen_ai.tool.name", "lookup_invoice"),
            ],
        ),
    ];
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![text("service.name", "support-bot")],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    }
}

/// Runs in the probe process.
pub(crate) fn probe(traces: usize) -> Result<OtelProbe> {
    ensure!(traces > 0, "at least one trace");
    let settings = AssemblySettings {
        quiet: Duration::from_secs(2),
        max_open: Duration::from_secs(60),
        limits: trace_model::Limits::default(),
    };
    let mut assembler = Assembler::new(settings, Resume::start());
    let now = Instant::now();
    let protobuf_bytes: usize = (0..100).map(|trace| inner_spans(trace).encoded_len()).sum();
    let rss_before = rss_bytes()?;
    for trace in 0..traces {
        let offset = i64::try_from(trace).context("an offset")?;
        let request = inner_spans(u64::try_from(trace).context("a trace")?);
        let outputs = assembler.message(offset, request, now);
        ensure!(outputs.is_empty(), "nothing completes without its root");
    }
    let rss_after = rss_bytes()?;
    ensure!(assembler.open_traces() == traces, "every trace held open");
    let held_spans = assembler.held_spans();
    black_box(&assembler);
    Ok(OtelProbe {
        traces,
        held_spans,
        bytes_per_open_trace: rss_after.saturating_sub(rss_before) as f64 / traces as f64,
        protobuf_bytes_per_trace: protobuf_bytes as f64 / 100.0,
    })
}

/// Runs the probe in a child process of this same binary and reads its report.
pub(crate) fn probe_in_child(traces: usize) -> Result<OtelProbe> {
    let exe = std::env::current_exe().context("locating this binary")?;
    let output = std::process::Command::new(exe)
        .arg("otel-memory-probe")
        .arg("--traces")
        .arg(traces.to_string())
        .output()
        .context("running the otel memory probe")?;
    ensure!(
        output.status.success(),
        "otel memory probe failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).context("reading the otel memory probe's report")
}
