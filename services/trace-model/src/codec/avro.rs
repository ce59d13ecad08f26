//! Avro form of the records: schemas from `schemas/`, wire structs, single-object encoding.
//!
//! The `.avsc` files are the contract. The wire structs derive their own schema; a test
//! proves the derived and the file schema have the same canonical form, so the Rust types
//! cannot drift from the files. JSON-typed fields travel as JSON text.

use super::DecodeError;
use super::avro_read::{ReadError, WireHead, read_head, read_trace};
use super::avro_scan::{ScanError, ScanPlan};
use crate::record::{JsonMap, SessionSummary, Step, TraceEvent, TraceKind};
use crate::validate::Limits;
use apache_avro::reader::datum::{GenericDatumReader, SpecificDatumReader};
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::{AvroSchema, Schema};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::OnceLock;

/// The current `TraceEvent` schema, as checked into `schemas/`.
pub const TRACE_EVENT_AVSC: &str = include_str!("../../../../schemas/trace_event.avsc");
/// The current `SessionSummary` schema, as checked into `schemas/`.
pub const SESSION_SUMMARY_AVSC: &str = include_str!("../../../../schemas/session_summary.avsc");
/// Earlier `TraceEvent` schemas whose records must stay readable.
pub const TRACE_EVENT_HISTORY_AVSC: &[&str] = &[
    include_str!("../../../../schemas/history/trace_event.v1.avsc"),
    include_str!("../../../../schemas/history/trace_event.v2.avsc"),
    include_str!("../../../../schemas/history/trace_event.v3.avsc"),
];

/// First two bytes of Avro single-object encoding.
pub const SINGLE_OBJECT_MAGIC: [u8; 2] = [0xC3, 0x01];
/// Magic, then the 8-byte little-endian CRC-64-AVRO fingerprint of the writer schema.
pub const SINGLE_OBJECT_HEADER_LEN: usize = 10;

/// Parsed schemas, the summary's reader and the scan plans, built once.
struct Schemas {
    trace_event: Schema,
    trace_event_fingerprint: u64,
    session_summary: Schema,
    session_summary_fingerprint: u64,
    session_summary_reader: SpecificDatumReader<WireSessionSummary>,
    scan_plan: ScanPlan,
    /// Earlier writer schemas by fingerprint; decoded through schema resolution.
    history: HashMap<u64, (Schema, ScanPlan)>,
}

fn fingerprint(schema: &Schema) -> u64 {
    let bytes = schema.fingerprint::<apache_avro::rabin::Rabin>().bytes;
    let mut le = [0u8; 8];
    le.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(le)
}

/// # Panics
/// When a checked-in schema does not parse: a build defect that the unit tests catch first.
fn schemas() -> &'static Schemas {
    static SCHEMAS: OnceLock<Schemas> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        #[allow(clippy::expect_used)]
        let parse = |text: &str| Schema::parse_str(text).expect("checked-in schema parses");
        let trace_event = parse(TRACE_EVENT_AVSC);
        let session_summary = parse(SESSION_SUMMARY_AVSC);
        #[allow(clippy::expect_used)]
        let plan = |schema: &Schema| ScanPlan::try_new(schema).expect("checked-in schema resolves");
        let history = TRACE_EVENT_HISTORY_AVSC
            .iter()
            .map(|text| {
                let schema = parse(text);
                let scan_plan = plan(&schema);
                (fingerprint(&schema), (schema, scan_plan))
            })
            .collect();
        #[allow(clippy::expect_used)]
        Schemas {
            trace_event_fingerprint: fingerprint(&trace_event),
            session_summary_fingerprint: fingerprint(&session_summary),
            scan_plan: plan(&trace_event),
            trace_event,
            session_summary,
            session_summary_reader: SpecificDatumReader::builder()
                .build()
                .expect("derived schema resolves"),
            history,
        }
    })
}

/// The current `TraceEvent` schema.
pub fn trace_event_schema() -> &'static Schema {
    &schemas().trace_event
}

/// The current `SessionSummary` schema.
pub fn session_summary_schema() -> &'static Schema {
    &schemas().session_summary
}

/// Fingerprint (CRC-64-AVRO of the canonical form) of the current `TraceEvent` schema.
pub fn trace_event_fingerprint() -> u64 {
    schemas().trace_event_fingerprint
}

fn writer_for(schema: &'static Schema) -> Result<GenericDatumWriter<'static>, apache_avro::Error> {
    // Values come from our own structs, so per-write validation only costs time.
    GenericDatumWriter::builder(schema).validate(false).build()
}

fn session_summary_writer() -> &'static GenericDatumWriter<'static> {
    static WRITER: OnceLock<GenericDatumWriter<'static>> = OnceLock::new();
    #[allow(clippy::expect_used)]
    WRITER.get_or_init(|| writer_for(session_summary_schema()).expect("checked-in schema resolves"))
}

/// Errors from encoding our own records: only a build defect can cause one.
#[derive(Debug, thiserror::Error)]
#[error("failed to encode {record} as avro")]
pub struct EncodeError {
    record: &'static str,
    #[source]
    source: apache_avro::Error,
}

fn single_object_header(fingerprint: u64, capacity: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(capacity);
    bytes.extend_from_slice(&SINGLE_OBJECT_MAGIC);
    bytes.extend_from_slice(&fingerprint.to_le_bytes());
    bytes
}

/// Avro datum of a trace, without any framing (Confluent framing prepends its own header).
///
/// # Errors
/// None today (the direct writer cannot fail); kept so callers handle a future codec's errors.
pub fn encode_trace_datum(event: &TraceEvent, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    super::avro_write::write_trace_datum(event, out);
    Ok(())
}

/// An Openlayer row and its config as JSON text, each an object, as a client sent them.
#[derive(Debug, Clone, Copy)]
pub struct RawRow<'a> {
    pub row: &'a str,
    pub config: &'a str,
}

/// Avro single-object encoding of a trace whose `row` and `row_config` are `raw`'s text,
/// written as it is (the gateway ships rows as sent, without parsing them into values and
/// writing them again). `event.row` and `event.row_config` are not written. Decoding gives
/// the event with `raw`'s objects in them.
pub fn encode_trace_with_raw_row(event: &TraceEvent, raw: RawRow<'_>) -> Vec<u8> {
    let mut bytes = single_object_header(
        trace_event_fingerprint(),
        1024 + raw.row.len() + raw.config.len(),
    );
    super::avro_write::write_trace_datum_with(event, Some(raw), &mut bytes);
    bytes
}

/// Avro single-object encoding of a trace: `C3 01`, fingerprint, datum.
///
/// # Errors
/// Only on a build defect (wire struct and schema out of step).
pub fn encode_trace(event: &TraceEvent) -> Result<Vec<u8>, EncodeError> {
    let mut bytes = single_object_header(trace_event_fingerprint(), 1024);
    encode_trace_datum(event, &mut bytes)?;
    Ok(bytes)
}

/// Avro single-object encoding of a session summary.
///
/// # Errors
/// Only on a build defect (wire struct and schema out of step).
pub fn encode_session_summary(summary: &SessionSummary) -> Result<Vec<u8>, EncodeError> {
    let mut bytes = single_object_header(schemas().session_summary_fingerprint, 256);
    session_summary_writer()
        .write_ser(&mut bytes, &WireSessionSummary::from(summary))
        .map_err(|source| EncodeError {
            record: "SessionSummary",
            source,
        })?;
    Ok(bytes)
}

/// Decodes a session summary written in single-object encoding by this build.
///
/// # Errors
/// Wrong header, truncated or malformed datum.
pub fn decode_session_summary(bytes: &[u8]) -> Result<SessionSummary, DecodeError> {
    let datum = strip_single_object_header(bytes)?;
    let fingerprint = read_fingerprint(bytes);
    if fingerprint != schemas().session_summary_fingerprint {
        return Err(DecodeError::UnknownFingerprint(fingerprint));
    }
    let mut reader = datum;
    let wire: WireSessionSummary = schemas()
        .session_summary_reader
        .read(&mut reader)
        .map_err(avro_error)?;
    if !reader.is_empty() {
        return Err(DecodeError::TrailingBytes(reader.len()));
    }
    Ok(wire.into())
}

fn strip_single_object_header(bytes: &[u8]) -> Result<&[u8], DecodeError> {
    if bytes.len() < SINGLE_OBJECT_HEADER_LEN {
        return Err(DecodeError::Truncated);
    }
    if bytes[..2] != SINGLE_OBJECT_MAGIC {
        return Err(DecodeError::UnknownFraming(bytes[0]));
    }
    Ok(&bytes[SINGLE_OBJECT_HEADER_LEN..])
}

fn read_fingerprint(bytes: &[u8]) -> u64 {
    let mut le = [0u8; 8];
    le.copy_from_slice(&bytes[2..SINGLE_OBJECT_HEADER_LEN]);
    u64::from_le_bytes(le)
}

fn avro_error(source: apache_avro::Error) -> DecodeError {
    DecodeError::Avro(source.to_string())
}

fn scan_error(error: ScanError, limits: &Limits) -> DecodeError {
    match error {
        ScanError::Truncated => DecodeError::Truncated,
        ScanError::TooDeep { .. } => DecodeError::NestingTooDeep {
            limit: limits.max_step_depth,
        },
        ScanError::Malformed(what) => DecodeError::Avro(what.to_owned()),
    }
}

/// Record nesting the scan allows: the trace itself, then `max_step_depth` levels of steps.
fn max_record_depth(limits: &Limits) -> usize {
    limits.max_step_depth.saturating_add(1)
}

/// Decodes a trace in single-object encoding, from the current or an earlier schema.
pub(crate) fn decode_single_object(
    bytes: &[u8],
    limits: &Limits,
) -> Result<TraceEvent, DecodeError> {
    let datum = strip_single_object_header(bytes)?;
    let fingerprint = read_fingerprint(bytes);
    let schemas = schemas();
    if fingerprint == schemas.trace_event_fingerprint {
        return decode_current_datum(datum, limits);
    }
    match schemas.history.get(&fingerprint) {
        Some((writer, plan)) => decode_resolving_datum(datum, writer, plan, limits),
        None => Err(DecodeError::UnknownFingerprint(fingerprint)),
    }
}

/// The leading fields of a single-object record of the current schema; `None` for any other
/// (an earlier schema's, or one too short to hold them).
pub(crate) fn peek_single_object(bytes: &[u8]) -> Option<WireHead<'_>> {
    let datum = strip_single_object_header(bytes).ok()?;
    if read_fingerprint(bytes) != schemas().trace_event_fingerprint {
        return None;
    }
    read_head(datum).ok()
}

/// Decodes a datum written with the current schema (the fast path).
pub(crate) fn decode_current_datum(
    datum: &[u8],
    limits: &Limits,
) -> Result<TraceEvent, DecodeError> {
    let schemas = schemas();
    let length = schemas
        .scan_plan
        .scan(datum, max_record_depth(limits))
        .map_err(|error| scan_error(error, limits))?;
    if length != datum.len() {
        return Err(DecodeError::TrailingBytes(datum.len() - length));
    }
    let wire = read_trace(datum).map_err(|error| match error {
        ReadError::Truncated => DecodeError::Truncated,
        ReadError::Malformed(what) => DecodeError::Avro(what.to_owned()),
    })?;
    wire.try_into()
}

/// Decodes a datum written with another schema by resolving it to the current one.
pub(crate) fn decode_resolving_datum(
    datum: &[u8],
    writer: &Schema,
    plan: &ScanPlan,
    limits: &Limits,
) -> Result<TraceEvent, DecodeError> {
    let length = plan
        .scan(datum, max_record_depth(limits))
        .map_err(|error| scan_error(error, limits))?;
    if length != datum.len() {
        return Err(DecodeError::TrailingBytes(datum.len() - length));
    }
    // read_deser cannot resolve schemas yet (it panics), so resolution goes through Value:
    // reading with the writer schema fails only on a malformed datum, resolving to ours only
    // when the writer schema cannot be read as a trace.
    let reader = GenericDatumReader::builder(writer)
        .build()
        .map_err(|error| DecodeError::IncompatibleSchema(error.to_string()))?;
    let written = reader.read_value(&mut &datum[..]).map_err(avro_error)?;
    let value = written
        .resolve(trace_event_schema())
        .map_err(|error| DecodeError::IncompatibleSchema(error.to_string()))?;
    let wire: WireTraceEvent = apache_avro::from_value(&value).map_err(avro_error)?;
    wire.try_into()
}

// ---- wire structs: field order and types mirror the .avsc files ----

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[serde(rename = "TraceEvent")]
#[avro(namespace = "llmtrace")]
pub(crate) struct WireTraceEvent {
    pub(super) schema_version: i32,
    pub(super) inference_id: Option<String>,
    pub(super) pipeline_id: Option<String>,
    pub(super) user_id: Option<String>,
    pub(super) session_id: Option<String>,
    pub(super) kind: String,
    pub(super) timestamp_ms: i64,
    pub(super) name: String,
    pub(super) inputs: HashMap<String, String>,
    pub(super) output: Option<String>,
    pub(super) latency_ms: Option<f64>,
    pub(super) tokens: Option<i64>,
    pub(super) prompt_tokens: Option<i64>,
    pub(super) completion_tokens: Option<i64>,
    pub(super) cost: Option<f64>,
    pub(super) model: Option<String>,
    pub(super) metadata: HashMap<String, String>,
    pub(super) steps: Vec<WireStep>,
    pub(super) row: Option<String>,
    pub(super) row_config: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[serde(rename = "Step")]
#[avro(namespace = "llmtrace")]
pub(crate) struct WireStep {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) step_type: String,
    pub(super) inputs: HashMap<String, String>,
    pub(super) output: Option<String>,
    pub(super) start_time_ms: i64,
    pub(super) end_time_ms: i64,
    pub(super) latency_ms: f64,
    pub(super) tokens: Option<i64>,
    pub(super) prompt_tokens: Option<i64>,
    pub(super) completion_tokens: Option<i64>,
    pub(super) cost: Option<f64>,
    pub(super) model: Option<String>,
    pub(super) metadata: HashMap<String, String>,
    pub(super) steps: Vec<WireStep>,
    pub(super) documents: Option<String>,
    pub(super) provider: Option<String>,
    pub(super) model_parameters: Option<String>,
    pub(super) raw_output: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[serde(rename = "SessionSummary")]
#[avro(namespace = "llmtrace")]
pub(crate) struct WireSessionSummary {
    schema_version: i32,
    session_key: String,
    pipeline_id: String,
    session_id: String,
    user_id: Option<String>,
    segment: i32,
    started_at_ms: i64,
    ended_at_ms: i64,
    num_turns: i64,
    total_tokens: i64,
    total_cost: f64,
    total_latency_ms: f64,
    close_reason: String,
    first_inference_id: String,
    last_inference_id: String,
}

fn parse_json_text(field: &'static str, text: &str) -> Result<Value, DecodeError> {
    serde_json::from_str(text).map_err(|_| DecodeError::InvalidJsonText { field })
}

fn parse_json_texts(
    field: &'static str,
    texts: HashMap<String, String>,
) -> Result<JsonMap, DecodeError> {
    texts
        .into_iter()
        .map(|(key, text)| Ok((key, parse_json_text(field, &text)?)))
        .collect()
}

/// JSON text that must hold an array (a step's documents).
fn parse_optional_json_array(
    field: &'static str,
    text: Option<String>,
) -> Result<Option<Vec<Value>>, DecodeError> {
    match text {
        None => Ok(None),
        Some(text) => match parse_json_text(field, &text)? {
            Value::Array(items) => Ok(Some(items)),
            _ => Err(DecodeError::InvalidJsonText { field }),
        },
    }
}

/// JSON text that must hold an object (a row, a config, model parameters).
fn parse_optional_json_object(
    field: &'static str,
    text: Option<String>,
) -> Result<Option<JsonMap>, DecodeError> {
    match text {
        None => Ok(None),
        Some(text) => match parse_json_text(field, &text)? {
            Value::Object(map) => Ok(Some(map)),
            _ => Err(DecodeError::InvalidJsonText { field }),
        },
    }
}

fn parse_optional_json_text(
    field: &'static str,
    text: Option<String>,
) -> Result<Value, DecodeError> {
    text.map_or(Ok(Value::Null), |text| parse_json_text(field, &text))
}

impl TryFrom<WireTraceEvent> for TraceEvent {
    type Error = DecodeError;

    fn try_from(wire: WireTraceEvent) -> Result<Self, DecodeError> {
        Ok(TraceEvent {
            schema_version: wire.schema_version,
            inference_id: wire.inference_id,
            pipeline_id: wire.pipeline_id,
            user_id: wire.user_id,
            session_id: wire.session_id,
            kind: TraceKind::parse(&wire.kind).ok_or(DecodeError::UnknownKind)?,
            timestamp_ms: wire.timestamp_ms,
            name: wire.name,
            inputs: parse_json_texts("inputs", wire.inputs)?,
            output: parse_optional_json_text("output", wire.output)?,
            latency_ms: wire.latency_ms,
            tokens: wire.tokens,
            prompt_tokens: wire.prompt_tokens,
            completion_tokens: wire.completion_tokens,
            cost: wire.cost,
            model: wire.model,
            metadata: parse_json_texts("metadata", wire.metadata)?,
            steps: wire
                .steps
                .into_iter()
                .map(Step::try_from)
                .collect::<Result<_, _>>()?,
            row: parse_optional_json_object("row", wire.row)?,
            row_config: parse_optional_json_object("row_config", wire.row_config)?,
        })
    }
}

impl TryFrom<WireStep> for Step {
    type Error = DecodeError;

    fn try_from(wire: WireStep) -> Result<Self, DecodeError> {
        Ok(Step {
            id: wire.id,
            name: wire.name,
            step_type: wire.step_type,
            inputs: parse_json_texts("step.inputs", wire.inputs)?,
            output: parse_optional_json_text("step.output", wire.output)?,
            start_time_ms: wire.start_time_ms,
            end_time_ms: wire.end_time_ms,
            latency_ms: wire.latency_ms,
            tokens: wire.tokens,
            prompt_tokens: wire.prompt_tokens,
            completion_tokens: wire.completion_tokens,
            cost: wire.cost,
            model: wire.model,
            metadata: parse_json_texts("step.metadata", wire.metadata)?,
            steps: wire
                .steps
                .into_iter()
                .map(Step::try_from)
                .collect::<Result<_, _>>()?,
            documents: parse_optional_json_array("step.documents", wire.documents)?,
            provider: wire.provider,
            model_parameters: parse_optional_json_object(
                "step.model_parameters",
                wire.model_parameters,
            )?,
            raw_output: parse_optional_json_text("step.raw_output", wire.raw_output)?,
        })
    }
}

impl From<&SessionSummary> for WireSessionSummary {
    fn from(summary: &SessionSummary) -> Self {
        WireSessionSummary {
            schema_version: summary.schema_version,
            session_key: summary.session_key.clone(),
            pipeline_id: summary.pipeline_id.clone(),
            session_id: summary.session_id.clone(),
            user_id: summary.user_id.clone(),
            segment: summary.segment,
            started_at_ms: summary.started_at_ms,
            ended_at_ms: summary.ended_at_ms,
            num_turns: summary.num_turns,
            total_tokens: summary.total_tokens,
            total_cost: summary.total_cost,
            total_latency_ms: summary.total_latency_ms,
            close_reason: summary.close_reason.clone(),
            first_inference_id: summary.first_inference_id.clone(),
            last_inference_id: summary.last_inference_id.clone(),
        }
    }
}

impl From<WireSessionSummary> for SessionSummary {
    fn from(wire: WireSessionSummary) -> Self {
        SessionSummary {
            schema_version: wire.schema_version,
            session_key: wire.session_key,
            pipeline_id: wire.pipeline_id,
            session_id: wire.session_id,
            user_id: wire.user_id,
            segment: wire.segment,
            started_at_ms: wire.started_at_ms,
            ended_at_ms: wire.ended_at_ms,
            num_turns: wire.num_turns,
            total_tokens: wire.total_tokens,
            total_cost: wire.total_cost,
            total_latency_ms: wire.total_latency_ms,
            close_reason: wire.close_reason,
            first_inference_id: wire.first_inference_id,
            last_inference_id: wire.last_inference_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_schemas_match_the_checked_in_files() {
        assert_eq!(
            WireTraceEvent::get_schema().canonical_form(),
            trace_event_schema().canonical_form()
        );
        assert_eq!(
            WireSessionSummary::get_schema().canonical_form(),
            session_summary_schema().canonical_form()
        );
    }

    #[test]
    fn history_holds_earlier_schemas_only() {
        let schemas = schemas();
        assert!(!schemas.history.is_empty());
        assert!(
            !schemas
                .history
                .contains_key(&schemas.trace_event_fingerprint)
        );
    }

    #[test]
    fn schema_version_default_matches_the_build() {
        let text: Value = serde_json::from_str(TRACE_EVENT_AVSC).expect("json");
        assert_eq!(
            text["fields"][0]["default"],
            crate::record::TRACE_EVENT_SCHEMA_VERSION
        );
        let text: Value = serde_json::from_str(SESSION_SUMMARY_AVSC).expect("json");
        assert_eq!(
            text["fields"][0]["default"],
            crate::record::SESSION_SUMMARY_SCHEMA_VERSION
        );
    }
}
