//! Records with every field set, and wire bytes built by hand where the production encoder
//! cannot be used (recursion tens of thousands of levels deep, earlier schema versions).

use apache_avro::Schema;
use apache_avro::types::Value as AvroValue;
use apache_avro::writer::datum::GenericDatumWriter;
use serde_json::{Value, json};
use std::collections::HashMap;
use trace_model::codec::avro::SINGLE_OBJECT_MAGIC;
use trace_model::{JsonMap, SessionSummary, Step, TraceEvent, TraceKind};

/// A JSON value holding every JSON type: nested objects and arrays, integers at the i64 and
/// u64 edges, floats that need all 17 digits, unicode and escapes.
pub(crate) fn json_of_every_type() -> Value {
    json!({
        "text": "plain ascii",
        "unicode": "héllo wörld — 日本語 🚀 \u{1F600} ∑",
        "escapes": "quote \" backslash \\ newline \n tab \t nul \u{0} del \u{7f}",
        "int": 42,
        "zero": 0,
        "negative": -9_007_199_254_740_993_i64,
        "i64_min": i64::MIN,
        "u64_max": u64::MAX,
        "float": 3.25,
        "tenth": 0.1,
        "third": 1.0 / 3.0,
        "negative_float": -2.5e-10,
        "smallest_subnormal": 5e-324,
        "largest": f64::MAX,
        "integral_float": 7.0,
        "true": true,
        "false": false,
        "null": null,
        "array": [1, "two", 3.5, null, false, [], {}, [[1, 2], [3]]],
        "object": {"nested": {"deeper": {"list": [{"k": "v"}], "empty": {}}}},
        "": "empty key",
        "ключ 🔑": "unicode key",
    })
}

fn object(value: Value) -> JsonMap {
    match value {
        Value::Object(map) => map,
        other => panic!("fixture is not a JSON object: {other}"),
    }
}

/// A step with every field set (none of them to its default) and `children` nested under it.
pub(crate) fn full_step(id: &str, children: Vec<Step>) -> Step {
    Step {
        id: id.to_owned(),
        name: format!("step {id} ✓"),
        step_type: "retriever".to_owned(),
        inputs: object(json!({"query": format!("for {id}"), "all_types": json_of_every_type()})),
        output: json!(["chunk one", {"score": 0.875, "id": id}, 12, null]),
        start_time_ms: 1_700_000_000_100,
        end_time_ms: 1_700_000_000_350,
        latency_ms: 250.5,
        tokens: Some(120),
        prompt_tokens: Some(100),
        completion_tokens: Some(20),
        cost: Some(0.000_375),
        model: Some("gpt-4o-mini".to_owned()),
        metadata: object(json!({"retries": 0, "cache": {"hit": false}, "tags": ["a", "β"]})),
        steps: children,
        documents: Some(vec![
            json!("Paris is the capital of France."),
            json!({"id": id, "text": "chunk \"quoted\" ✓", "score": 0.875, "tags": ["β", null]}),
            json!(null),
        ]),
        provider: Some("OpenAI".to_owned()),
        model_parameters: Some(object(json!({
            "temperature": 0.2,
            "max_tokens": 256,
            "stop": ["\n\n"],
            "logit_bias": {"50256": -100},
            "stream": false,
        }))),
        raw_output: json!({
            "id": "chatcmpl-1",
            "choices": [{"message": {"role": "assistant", "content": "Paris"}}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 20},
            "all_types": json_of_every_type(),
        }),
    }
}

/// Steps three levels deep, two at the top, every field set.
pub(crate) fn full_steps() -> Vec<Step> {
    let leaf = full_step("step-1.1.1", Vec::new());
    let middle = full_step("step-1.1", vec![leaf]);
    let top = full_step("step-1", vec![middle, full_step("step-1.2", Vec::new())]);
    vec![top, full_step("step-2", Vec::new())]
}

/// A trace with every `Option` set and every field away from its default.
pub(crate) fn full_trace() -> TraceEvent {
    TraceEvent {
        schema_version: trace_model::record::TRACE_EVENT_SCHEMA_VERSION,
        inference_id: Some("inf-01J9Z3Q5 ✓".to_owned()),
        pipeline_id: Some("pipeline-7f3c".to_owned()),
        user_id: Some("user-ünïcode-42".to_owned()),
        session_id: Some("session-2024-06-01".to_owned()),
        kind: TraceKind::SessionEnd,
        timestamp_ms: 1_700_000_000_000,
        name: "answer_question 日本".to_owned(),
        inputs: object(json!({
            "question": "what is 🚀?",
            "history": [{"role": "user", "content": "hi"}],
            "all_types": json_of_every_type(),
        })),
        output: json!({"answer": "a rocket", "citations": [1, 2], "confidence": 0.9375}),
        latency_ms: Some(1234.567),
        tokens: Some(i64::MAX),
        prompt_tokens: Some(1_000),
        completion_tokens: Some(0),
        cost: Some(0.012_345_678_901_234_5),
        model: Some("claude-sonnet ∞".to_owned()),
        metadata: object(json!({"env": "prod", "version": 3, "flags": {"beta": true}})),
        steps: full_steps(),
        row: Some(object(json!({
            "inferenceId": "inf-01J9Z3Q5 ✓",
            "output": "a rocket",
            "all_types": json_of_every_type(),
        }))),
        row_config: Some(object(json!({
            "outputColumnName": "output",
            "inputVariableNames": ["question"],
        }))),
    }
}

/// A session summary with every field set.
pub(crate) fn full_session_summary() -> SessionSummary {
    SessionSummary {
        schema_version: trace_model::record::SESSION_SUMMARY_SCHEMA_VERSION,
        session_key: "pipeline-7f3c/session-2024-06-01".to_owned(),
        pipeline_id: "pipeline-7f3c".to_owned(),
        session_id: "session-2024-06-01".to_owned(),
        user_id: Some("user-ünïcode-42".to_owned()),
        segment: 3,
        started_at_ms: 1_700_000_000_000,
        ended_at_ms: 1_700_000_900_000,
        num_turns: 17,
        total_tokens: 48_213,
        total_cost: 1.234_567_890_123_4,
        total_latency_ms: 98_765.432_1,
        close_reason: "max_duration".to_owned(),
        first_inference_id: "inf-first".to_owned(),
        last_inference_id: "inf-last 🏁".to_owned(),
    }
}

/// A step with no optional field set, as [`avro_step_chain_datum`] writes it.
pub(crate) fn chain_step(children: Vec<Step>) -> Step {
    Step {
        id: "s".to_owned(),
        name: "n".to_owned(),
        step_type: "tool".to_owned(),
        inputs: JsonMap::new(),
        output: Value::Null,
        start_time_ms: 0,
        end_time_ms: 0,
        latency_ms: 0.0,
        tokens: None,
        prompt_tokens: None,
        completion_tokens: None,
        cost: None,
        model: None,
        metadata: JsonMap::new(),
        steps: children,
        documents: None,
        provider: None,
        model_parameters: None,
        raw_output: Value::Null,
    }
}

/// The trace [`avro_step_chain_datum`] and [`json_step_chain`] describe, for small depths.
pub(crate) fn step_chain_trace(depth: usize) -> TraceEvent {
    let mut steps = Vec::new();
    for _ in 0..depth {
        steps = vec![chain_step(steps)];
    }
    let mut event = TraceEvent::new("deep", 0);
    event.steps = steps;
    event
}

/// Which `TraceEvent` schema a hand-built datum follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SchemaVersion {
    /// `schemas/history/trace_event.v1.avsc`: no `pipeline_id`.
    V1,
    /// `schemas/history/trace_event.v2.avsc`: no `row`, `row_config`.
    V2,
    /// `schemas/history/trace_event.v3.avsc`: no step `documents`, `provider`,
    /// `model_parameters`, `raw_output`.
    V3,
    /// `schemas/trace_event.avsc`.
    Current,
}

/// Avro datum (no header) of a trace named `deep` whose steps form one chain `depth` long.
///
/// Written byte by byte from the schema, without recursion, so a test can build tens of
/// thousands of levels that no struct could be encoded (or even dropped) from.
pub(crate) fn avro_step_chain_datum(depth: usize, version: SchemaVersion) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(64 + depth * 28);
    match version {
        // schema_version int 1, inference_id null
        SchemaVersion::V1 => bytes.extend([0x02, 0x00]),
        // schema_version int 2, inference_id null, pipeline_id null
        SchemaVersion::V2 => bytes.extend([0x04, 0x00, 0x00]),
        // schema_version int 3, inference_id null, pipeline_id null
        SchemaVersion::V3 => bytes.extend([0x06, 0x00, 0x00]),
        // schema_version int 4, inference_id null, pipeline_id null
        SchemaVersion::Current => bytes.extend([0x08, 0x00, 0x00]),
    }
    bytes.extend([0x00, 0x00]); // user_id, session_id: null
    bytes.extend([0x0A, b't', b'r', b'a', b'c', b'e']); // kind "trace"
    bytes.push(0x00); // timestamp_ms 0
    bytes.extend([0x08, b'd', b'e', b'e', b'p']); // name "deep"
    bytes.push(0x00); // inputs: empty map
    bytes.push(0x00); // output: null
    bytes.extend([0x00; 6]); // latency_ms, tokens, prompt_tokens, completion_tokens, cost, model
    bytes.push(0x00); // metadata: empty map
    const STEP_FIELDS: [u8; 27] = [
        0x02, b's', // id "s"
        0x02, b'n', // name "n"
        0x08, b't', b'o', b'o', b'l', // step_type "tool"
        0x00, // inputs: empty map
        0x00, // output: null
        0x00, 0x00, // start_time_ms, end_time_ms
        0, 0, 0, 0, 0, 0, 0, 0,    // latency_ms 0.0
        0x00, // tokens, prompt_tokens, completion_tokens, cost, model: null
        0x00, 0x00, 0x00, 0x00, 0x00, // metadata: empty map
    ];
    for _ in 0..depth {
        bytes.push(0x02); // a block of one step
        bytes.extend(STEP_FIELDS);
    }
    bytes.push(0x00); // the innermost steps array is empty
    // Each step's fields after its steps array (documents, provider, model_parameters,
    // raw_output: null), then the end of the block holding it.
    let step_trailer: &[u8] = match version {
        SchemaVersion::Current => &[0x00, 0x00, 0x00, 0x00, 0x00],
        SchemaVersion::V1 | SchemaVersion::V2 | SchemaVersion::V3 => &[0x00],
    };
    for _ in 0..depth {
        bytes.extend(step_trailer);
    }
    if matches!(version, SchemaVersion::V3 | SchemaVersion::Current) {
        bytes.extend([0x00, 0x00]); // row, row_config: null
    }
    bytes
}

/// Bytes that close one level of [`avro_step_chain_datum`] (the 28 that open it aside).
pub(crate) fn avro_step_chain_closing_bytes(version: SchemaVersion) -> usize {
    match version {
        SchemaVersion::Current => 5,
        SchemaVersion::V1 | SchemaVersion::V2 | SchemaVersion::V3 => 1,
    }
}

/// `C3 01`, the little-endian fingerprint, then `datum`.
pub(crate) fn single_object(fingerprint: u64, datum: &[u8]) -> Vec<u8> {
    let mut bytes = SINGLE_OBJECT_MAGIC.to_vec();
    bytes.extend_from_slice(&fingerprint.to_le_bytes());
    bytes.extend_from_slice(datum);
    bytes
}

/// `00`, the big-endian schema id, then `datum`.
pub(crate) fn confluent(schema_id: u32, datum: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0x00];
    bytes.extend_from_slice(&schema_id.to_be_bytes());
    bytes.extend_from_slice(datum);
    bytes
}

/// JSON of the same trace as [`avro_step_chain_datum`], built as text without recursion.
pub(crate) fn json_step_chain(depth: usize) -> String {
    const OPEN_STEP: &str = r#"{"id":"s","name":"n","step_type":"tool","start_time_ms":0,"end_time_ms":0,"latency_ms":0.0,"steps":["#;
    let mut text = String::with_capacity(64 + depth * (OPEN_STEP.len() + 2));
    text.push_str(r#"{"name":"deep","timestamp_ms":0,"steps":["#);
    for _ in 0..depth {
        text.push_str(OPEN_STEP);
    }
    for _ in 0..depth {
        text.push_str("]}");
    }
    text.push_str("]}");
    text
}

/// The schema fingerprint a single-object message carries (bytes 2..10, little-endian).
pub(crate) fn header_fingerprint(message: &[u8]) -> u64 {
    let bytes: [u8; 8] = message
        .get(2..10)
        .and_then(|slice| slice.try_into().ok())
        .expect("message has a single-object header");
    u64::from_le_bytes(bytes)
}

// ---- the previous schema version, written by hand ----

/// `schemas/history/trace_event.v1.avsc`: the schema before `pipeline_id` was added.
pub(crate) const V1_AVSC: &str = include_str!("../../../../schemas/history/trace_event.v1.avsc");

pub(crate) fn v1_schema() -> Schema {
    Schema::parse_str(V1_AVSC).expect("v1 schema parses")
}

/// The v1 fingerprint as apache-avro computes it (the contract test checks it against the spec).
pub(crate) fn v1_fingerprint() -> u64 {
    let bytes = v1_schema().fingerprint::<apache_avro::rabin::Rabin>().bytes;
    u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"))
}

fn optional_string(value: Option<&str>) -> AvroValue {
    match value {
        Some(text) => AvroValue::Union(1, Box::new(AvroValue::String(text.to_owned()))),
        None => AvroValue::Union(0, Box::new(AvroValue::Null)),
    }
}

fn optional_long(value: Option<i64>) -> AvroValue {
    match value {
        Some(number) => AvroValue::Union(1, Box::new(AvroValue::Long(number))),
        None => AvroValue::Union(0, Box::new(AvroValue::Null)),
    }
}

fn optional_double(value: Option<f64>) -> AvroValue {
    match value {
        Some(number) => AvroValue::Union(1, Box::new(AvroValue::Double(number))),
        None => AvroValue::Union(0, Box::new(AvroValue::Null)),
    }
}

fn json_text_map(map: &trace_model::JsonMap) -> AvroValue {
    AvroValue::Map(
        map.iter()
            .map(|(key, value)| (key.clone(), AvroValue::String(value.to_string())))
            .collect::<HashMap<_, _>>(),
    )
}

fn json_text(value: &Value) -> AvroValue {
    if value.is_null() {
        optional_string(None)
    } else {
        optional_string(Some(&value.to_string()))
    }
}

/// A v1 `Step` record built field by field in the v1 schema's order.
fn v1_step(step: &Step) -> AvroValue {
    AvroValue::Record(vec![
        ("id".into(), AvroValue::String(step.id.clone())),
        ("name".into(), AvroValue::String(step.name.clone())),
        (
            "step_type".into(),
            AvroValue::String(step.step_type.clone()),
        ),
        ("inputs".into(), json_text_map(&step.inputs)),
        ("output".into(), json_text(&step.output)),
        ("start_time_ms".into(), AvroValue::Long(step.start_time_ms)),
        ("end_time_ms".into(), AvroValue::Long(step.end_time_ms)),
        ("latency_ms".into(), AvroValue::Double(step.latency_ms)),
        ("tokens".into(), optional_long(step.tokens)),
        ("prompt_tokens".into(), optional_long(step.prompt_tokens)),
        (
            "completion_tokens".into(),
            optional_long(step.completion_tokens),
        ),
        ("cost".into(), optional_double(step.cost)),
        ("model".into(), optional_string(step.model.as_deref())),
        ("metadata".into(), json_text_map(&step.metadata)),
        (
            "steps".into(),
            AvroValue::Array(step.steps.iter().map(v1_step).collect()),
        ),
    ])
}

/// A v1 `TraceEvent` record (no `pipeline_id`) built field by field in the v1 schema's order.
fn v1_trace(event: &TraceEvent) -> AvroValue {
    AvroValue::Record(vec![
        (
            "schema_version".into(),
            AvroValue::Int(event.schema_version),
        ),
        (
            "inference_id".into(),
            optional_string(event.inference_id.as_deref()),
        ),
        ("user_id".into(), optional_string(event.user_id.as_deref())),
        (
            "session_id".into(),
            optional_string(event.session_id.as_deref()),
        ),
        (
            "kind".into(),
            AvroValue::String(event.kind.as_str().to_owned()),
        ),
        ("timestamp_ms".into(), AvroValue::Long(event.timestamp_ms)),
        ("name".into(), AvroValue::String(event.name.clone())),
        ("inputs".into(), json_text_map(&event.inputs)),
        ("output".into(), json_text(&event.output)),
        ("latency_ms".into(), optional_double(event.latency_ms)),
        ("tokens".into(), optional_long(event.tokens)),
        ("prompt_tokens".into(), optional_long(event.prompt_tokens)),
        (
            "completion_tokens".into(),
            optional_long(event.completion_tokens),
        ),
        ("cost".into(), optional_double(event.cost)),
        ("model".into(), optional_string(event.model.as_deref())),
        ("metadata".into(), json_text_map(&event.metadata)),
        (
            "steps".into(),
            AvroValue::Array(event.steps.iter().map(v1_step).collect()),
        ),
    ])
}

/// The full trace as a v1 producer would have sent it: no pipeline id, version 1.
pub(crate) fn v1_full_trace() -> TraceEvent {
    TraceEvent {
        schema_version: 1,
        pipeline_id: None,
        row: None,
        row_config: None,
        ..v3_full_trace()
    }
}

/// The full trace as a v2 producer would have sent it: no row columns, version 2.
pub(crate) fn v2_full_trace() -> TraceEvent {
    TraceEvent {
        schema_version: 2,
        row: None,
        row_config: None,
        ..v3_full_trace()
    }
}

/// `step` and its nested steps without the fields schema version 4 added.
fn without_v4_step_fields(step: Step) -> Step {
    Step {
        documents: None,
        provider: None,
        model_parameters: None,
        raw_output: Value::Null,
        steps: step.steps.into_iter().map(without_v4_step_fields).collect(),
        ..step
    }
}

/// The full trace as a v3 producer would have sent it: steps without documents, provider,
/// model parameters and raw output, version 3.
pub(crate) fn v3_full_trace() -> TraceEvent {
    let trace = full_trace();
    TraceEvent {
        schema_version: 3,
        steps: trace
            .steps
            .into_iter()
            .map(without_v4_step_fields)
            .collect(),
        ..trace
    }
}

/// `schemas/history/trace_event.v2.avsc`: the schema before `row` and `row_config`.
pub(crate) const V2_AVSC: &str = include_str!("../../../../schemas/history/trace_event.v2.avsc");

pub(crate) fn v2_schema() -> Schema {
    Schema::parse_str(V2_AVSC).expect("v2 schema parses")
}

/// The v2 fingerprint as apache-avro computes it.
pub(crate) fn v2_fingerprint() -> u64 {
    let bytes = v2_schema().fingerprint::<apache_avro::rabin::Rabin>().bytes;
    u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"))
}

/// A v2 datum (no header): the v1 record with `pipeline_id` in third place, written with the
/// v2 schema by apache-avro's generic writer.
pub(crate) fn v2_datum(event: &TraceEvent) -> Vec<u8> {
    let AvroValue::Record(mut fields) = v1_trace(event) else {
        unreachable!("v1_trace builds a record");
    };
    fields.insert(
        2,
        (
            "pipeline_id".into(),
            optional_string(event.pipeline_id.as_deref()),
        ),
    );
    let schema = v2_schema();
    let writer = GenericDatumWriter::builder(&schema)
        .build()
        .expect("v2 writer");
    let mut datum = Vec::new();
    writer
        .write_value_ref(&mut datum, &AvroValue::Record(fields))
        .expect("value matches the v2 schema");
    datum
}

/// `schemas/history/trace_event.v3.avsc`: the schema before the step fields of version 4.
pub(crate) const V3_AVSC: &str = include_str!("../../../../schemas/history/trace_event.v3.avsc");

pub(crate) fn v3_schema() -> Schema {
    Schema::parse_str(V3_AVSC).expect("v3 schema parses")
}

/// The v3 fingerprint as apache-avro computes it.
pub(crate) fn v3_fingerprint() -> u64 {
    let bytes = v3_schema().fingerprint::<apache_avro::rabin::Rabin>().bytes;
    u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"))
}

fn optional_json_object(map: Option<&JsonMap>) -> AvroValue {
    optional_string(
        map.map(|map| Value::Object(map.clone()).to_string())
            .as_deref(),
    )
}

/// A v3 datum (no header): the v2 record with `row` and `row_config` appended, written with
/// the v3 schema by apache-avro's generic writer (v3 steps are v1 steps).
pub(crate) fn v3_datum(event: &TraceEvent) -> Vec<u8> {
    let AvroValue::Record(mut fields) = v1_trace(event) else {
        unreachable!("v1_trace builds a record");
    };
    fields.insert(
        2,
        (
            "pipeline_id".into(),
            optional_string(event.pipeline_id.as_deref()),
        ),
    );
    fields.push(("row".into(), optional_json_object(event.row.as_ref())));
    fields.push((
        "row_config".into(),
        optional_json_object(event.row_config.as_ref()),
    ));
    let schema = v3_schema();
    let writer = GenericDatumWriter::builder(&schema)
        .build()
        .expect("v3 writer");
    let mut datum = Vec::new();
    writer
        .write_value_ref(&mut datum, &AvroValue::Record(fields))
        .expect("value matches the v3 schema");
    datum
}

/// A v1 datum (no header) written with the v1 schema by apache-avro's generic writer.
pub(crate) fn v1_datum(event: &TraceEvent) -> Vec<u8> {
    let schema = v1_schema();
    let writer = GenericDatumWriter::builder(&schema)
        .build()
        .expect("v1 writer");
    let mut datum = Vec::new();
    writer
        .write_value_ref(&mut datum, &v1_trace(event))
        .expect("value matches the v1 schema");
    datum
}
