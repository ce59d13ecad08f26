//! Decode plus row serialization per trace, the sessionizer's work on every message, against
//! the path a user would write with the same crates, on the same records, in the same run.
//!
//! The records: the pipeline bench's shape, built through the producer helpers (a `chat`
//! trace with a `retrieve` step holding an `embed_query` step, and a `complete` chat step;
//! token usage, cost, two metadata entries), Avro single-object encoded as the helpers emit.
//!
//! - `naive_crate_path`, the baseline: what apache-avro's docs point users to for
//!   single-object records, `SpecificSingleObjectReader` into a struct deriving the schema
//!   (`AvroSchema`), the JSON-text fields parsed with serde_json, and the row written with
//!   serde_json from a struct of the row's fields;
//! - `project_path`: `trace_model::Decoder::decode` (checks included) and
//!   `enrich::openlayer_row` with a turn's session columns, as the pipeline does;
//! - `project_decode_only`: the decode alone.
//!
//! `scripts/bench_report.py` reports `project_path / naive_crate_path` (goal <= 1.0x).

use apache_avro::{AvroSchema, SpecificSingleObjectReader};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sessionizer::enrich::openlayer_row;
use sessionizer::sessionize::{Placement, SessionKey, Turn};
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use trace_emit::{
    CHAT_COMPLETION, CollectingSink, RETRIEVER, TraceSink, Usage, record_usage, trace,
    with_user_session_sync,
};
use trace_model::{Decoder, Encoding, Limits, TraceEvent, encode};

const QUESTIONS: [&str; 2] = [
    "Which neighbourhood in Lisbon is best for walking to restaurants in the evening?",
    "What changed between version 2 and version 3 of the billing API, and do I need to migrate \
     the webhooks I registered last year before the old endpoints are switched off in June?",
];
const ANSWER: &str = "Version 3 moves invoices to a cursor-based list and signs webhooks with a \
     new header. Existing webhooks keep working until June, but you should re-register them.";
const DOCUMENT: &str = "The v3 billing API replaces offset pagination with cursors and signs \
     webhook payloads with the Billing-Signature header. v2 endpoints are retired on June 30.";

fn record(question: &str) -> Vec<u8> {
    let collector = CollectingSink::new();
    let sink: Arc<dyn TraceSink> = collector.clone();
    with_user_session_sync(Some("user-000042"), Some("session-42"), || {
        trace("chat")
            .input("user_message", question)
            .metadata("app_version", "2.14.1")
            .metadata("region", "eu-west-1")
            .sink(sink)
            .run_sync(|| {
                trace("retrieve")
                    .step_type(RETRIEVER)
                    .input("query", question)
                    .run_sync(|| {
                        trace("embed_query")
                            .model("text-embedding-3-small")
                            .run_sync(|| {
                                let _in_trace = record_usage(Usage::tokens(60, 0).cost(4e-7));
                            });
                    });
                trace("complete")
                    .step_type(CHAT_COMPLETION)
                    .model("gpt-4o-mini")
                    .input("context", DOCUMENT)
                    .run_sync(|| {
                        let _in_trace = record_usage(Usage::tokens(120, 45).cost(0.000_119));
                        ANSWER
                    })
            });
    });
    let event: TraceEvent = collector.take().pop().expect("the helpers emitted a trace");
    encode(&event, Encoding::Avro).expect("encodes")
}

// ---- the naive path: structs mirroring the schema and the row, serde all the way ----

/// The schema's record as a user writes it for apache-avro: every field, in order.
#[derive(Deserialize, AvroSchema)]
#[serde(rename = "TraceEvent")]
#[avro(namespace = "llmtrace")]
#[allow(dead_code)]
struct NaiveTrace {
    schema_version: i32,
    inference_id: Option<String>,
    pipeline_id: Option<String>,
    user_id: Option<String>,
    session_id: Option<String>,
    kind: String,
    timestamp_ms: i64,
    name: String,
    inputs: HashMap<String, String>,
    output: Option<String>,
    latency_ms: Option<f64>,
    tokens: Option<i64>,
    prompt_tokens: Option<i64>,
    completion_tokens: Option<i64>,
    cost: Option<f64>,
    model: Option<String>,
    metadata: HashMap<String, String>,
    steps: Vec<NaiveStep>,
    row: Option<String>,
    row_config: Option<String>,
}

#[derive(Deserialize, AvroSchema)]
#[serde(rename = "Step")]
#[avro(namespace = "llmtrace")]
#[allow(dead_code)]
struct NaiveStep {
    id: String,
    name: String,
    step_type: String,
    inputs: HashMap<String, String>,
    output: Option<String>,
    start_time_ms: i64,
    end_time_ms: i64,
    latency_ms: f64,
    tokens: Option<i64>,
    prompt_tokens: Option<i64>,
    completion_tokens: Option<i64>,
    cost: Option<f64>,
    model: Option<String>,
    metadata: HashMap<String, String>,
    steps: Vec<NaiveStep>,
    documents: Option<String>,
    provider: Option<String>,
    model_parameters: Option<String>,
    raw_output: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NaiveRow {
    inference_id: String,
    inference_timestamp: i64,
    output: Value,
    latency: f64,
    tokens: i64,
    cost: f64,
    #[serde(rename = "user_id")]
    user_id: Option<String>,
    #[serde(rename = "session_id")]
    session_id: Option<String>,
    #[serde(flatten)]
    inputs: HashMap<String, Value>,
    #[serde(flatten)]
    metadata: HashMap<String, Value>,
    steps: Vec<NaiveRowStep>,
    #[serde(rename = "session_turn")]
    session_turn: i64,
    #[serde(rename = "session_started_at")]
    session_started_at: f64,
    #[serde(rename = "seconds_since_session_start")]
    seconds_since_session_start: f64,
    #[serde(rename = "seconds_since_previous_turn")]
    seconds_since_previous_turn: Option<f64>,
    #[serde(rename = "session_segment")]
    session_segment: i32,
    #[serde(rename = "session_inferred")]
    session_inferred: bool,
    #[serde(rename = "session_late")]
    session_late: bool,
    #[serde(rename = "previous_inference_id")]
    previous_inference_id: Option<String>,
    #[serde(rename = "session_tokens_so_far")]
    session_tokens_so_far: i64,
    #[serde(rename = "session_cost_so_far")]
    session_cost_so_far: f64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct NaiveRowStep {
    id: String,
    name: String,
    #[serde(rename = "type")]
    step_type: String,
    inputs: HashMap<String, Value>,
    output: Value,
    ground_truth: Value,
    start_time: f64,
    end_time: f64,
    latency: f64,
    tokens: Option<i64>,
    prompt_tokens: Option<i64>,
    completion_tokens: Option<i64>,
    cost: Option<f64>,
    model: Option<String>,
    metadata: HashMap<String, Value>,
    steps: Vec<NaiveRowStep>,
}

fn parse_texts(texts: HashMap<String, String>) -> HashMap<String, Value> {
    texts
        .into_iter()
        .map(|(key, text)| (key, serde_json::from_str(&text).unwrap_or(Value::Null)))
        .collect()
}

fn parse_text(text: Option<String>) -> Value {
    text.and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or(Value::Null)
}

fn naive_step(step: NaiveStep) -> NaiveRowStep {
    NaiveRowStep {
        id: step.id,
        name: step.name,
        step_type: step.step_type,
        inputs: parse_texts(step.inputs),
        output: parse_text(step.output),
        ground_truth: Value::Null,
        start_time: step.start_time_ms as f64 / 1000.0,
        end_time: step.end_time_ms as f64 / 1000.0,
        latency: step.latency_ms,
        tokens: step.tokens,
        prompt_tokens: step.prompt_tokens,
        completion_tokens: step.completion_tokens,
        cost: step.cost,
        model: step.model,
        metadata: parse_texts(step.metadata),
        steps: step.steps.into_iter().map(naive_step).collect(),
    }
}

fn naive_path(reader: &SpecificSingleObjectReader<NaiveTrace>, bytes: &[u8]) -> Vec<u8> {
    let trace = reader.read(&mut &bytes[..]).expect("decodes");
    // The official tracer's shape: the trace's inputs, output and metadata both as columns
    // and on the root `user_call` step that holds the steps.
    let inputs = parse_texts(trace.inputs);
    let metadata = parse_texts(trace.metadata);
    let output = parse_text(trace.output);
    let latency = trace.latency_ms.unwrap_or(0.0);
    let inference_id = trace.inference_id.unwrap_or_default();
    let row = NaiveRow {
        inference_id: inference_id.clone(),
        inference_timestamp: trace.timestamp_ms / 1000,
        output: output.clone(),
        latency,
        tokens: trace.tokens.unwrap_or(0),
        cost: trace.cost.unwrap_or(0.0),
        user_id: trace.user_id,
        session_id: trace.session_id,
        steps: vec![NaiveRowStep {
            id: inference_id,
            name: trace.name,
            step_type: "user_call".to_owned(),
            inputs: inputs.clone(),
            output,
            ground_truth: Value::Null,
            start_time: trace.timestamp_ms as f64 / 1000.0,
            end_time: (trace.timestamp_ms as f64 + latency) / 1000.0,
            latency,
            tokens: None,
            prompt_tokens: None,
            completion_tokens: None,
            cost: None,
            model: trace.model,
            metadata: metadata.clone(),
            steps: trace.steps.into_iter().map(naive_step).collect(),
        }],
        inputs,
        metadata,
        session_turn: 3,
        session_started_at: 1_780_000_000.0,
        seconds_since_session_start: 60.0,
        seconds_since_previous_turn: Some(30.0),
        session_segment: 0,
        session_inferred: false,
        session_late: false,
        previous_inference_id: Some("previous".to_owned()),
        session_tokens_so_far: 500,
        session_cost_so_far: 0.001,
    };
    serde_json::to_vec(&row).expect("serializes")
}

fn placement() -> Placement {
    Placement::Turn(Turn {
        key: SessionKey {
            pipeline_id: "pipeline".into(),
            session_id: "session-42".to_owned(),
        },
        user_id: Some("user-000042".to_owned()),
        segment: 0,
        inferred: false,
        turn: 3,
        started_at_ms: 1_780_000_000_000,
        since_start_ms: 60_000,
        since_previous_ms: Some(30_000),
        previous_inference_id: Some("previous".to_owned()),
        tokens_so_far: 500,
        cost_so_far: 0.001,
        late_within_grace: false,
    })
}

fn decode_row(c: &mut Criterion) {
    let records: Vec<Vec<u8>> = QUESTIONS.iter().map(|question| record(question)).collect();
    // Checks each record's fingerprint against the struct's schema.
    let reader = SpecificSingleObjectReader::<NaiveTrace>::new().expect("a reader");
    let decoder = Decoder::new(Limits::default());
    let placement = placement();
    // Both paths read the same records and write rows of the same columns.
    for bytes in &records {
        let naive: Value = serde_json::from_slice(&naive_path(&reader, bytes)).expect("JSON");
        let event = decoder.decode(bytes).expect("decodes");
        let id = event.inference_id.as_deref().unwrap_or_default();
        let ours: Value =
            serde_json::from_str(openlayer_row(&event, id, &placement).get()).expect("JSON");
        let columns = |row: &Value| -> Vec<String> {
            let mut names: Vec<String> = row.as_object().expect("a row").keys().cloned().collect();
            names.sort();
            names
        };
        assert_eq!(columns(&naive), columns(&ours));
        for column in [
            "inferenceId",
            "tokens",
            "output",
            "session_turn",
            "user_message",
        ] {
            assert_eq!(naive[column], ours[column], "{column}");
        }
        let step_names = |row: &Value| row["steps"][0]["steps"].to_string().len();
        assert!(step_names(&naive) > 0 && step_names(&ours) > 0);
    }

    let mut group = c.benchmark_group("decode_row");
    group.throughput(Throughput::Elements(records.len() as u64));
    group.bench_function("naive_crate_path", |b| {
        b.iter(|| {
            for bytes in &records {
                black_box(naive_path(&reader, black_box(bytes)));
            }
        });
    });
    group.bench_function("project_path", |b| {
        b.iter(|| {
            for bytes in &records {
                let event = decoder.decode(black_box(bytes)).expect("decodes");
                let id = event.inference_id.as_deref().unwrap_or_default();
                black_box(openlayer_row(&event, id, &placement));
            }
        });
    });
    group.bench_function("project_decode_only", |b| {
        b.iter(|| {
            for bytes in &records {
                black_box(decoder.decode(black_box(bytes)).expect("decodes"));
            }
        });
    });
    group.finish();
}

criterion_group!(benches, decode_row);
criterion_main!(benches);
