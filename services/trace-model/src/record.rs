//! The records that travel on the traces and sessions topics, as the rest of the code sees them.
//!
//! JSON-typed fields (`inputs`, `output`, `metadata`, `row`, `row_config`, and a step's
//! `documents`, `model_parameters`, `raw_output`) are `serde_json` values here; the Avro
//! wire form in [`crate::codec::avro`] carries them as JSON text. The JSON wire form is this
//! type serialized directly, so both encodings use the same field names.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Version written by this build; `schemas/trace_event.avsc` carries the same number.
pub const TRACE_EVENT_SCHEMA_VERSION: i32 = 4;
/// Version written by this build; `schemas/session_summary.avsc` carries the same number.
pub const SESSION_SUMMARY_SCHEMA_VERSION: i32 = 1;

/// JSON object with sorted keys: the form inputs and metadata take in every record.
pub type JsonMap = Map<String, Value>;

/// One traced request; becomes one Openlayer row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceEvent {
    #[serde(default = "default_trace_event_version")]
    pub schema_version: i32,
    /// Absent ids are derived by the sessionizer from the Kafka position, so that a
    /// redelivered trace keeps its id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(default)]
    pub kind: TraceKind,
    /// Event time: when the trace started, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    pub name: String,
    #[serde(default)]
    pub inputs: JsonMap,
    #[serde(default)]
    pub output: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_tokens: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default)]
    pub metadata: JsonMap,
    #[serde(default)]
    pub steps: Vec<Step>,
    /// The Openlayer row exactly as an Openlayer SDK sent it (traces ingested by the gateway):
    /// the sessionizer ships these columns unchanged and adds its session columns. For a
    /// [`TraceKind::RowUpdate`], the columns to set. `None` for traces of the Rust helpers,
    /// whose row is built from the fields above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row: Option<JsonMap>,
    /// The Openlayer `config` the row came with (gateway ingest); forwarded with row updates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row_config: Option<JsonMap>,
}

/// What a record on the traces topic means to the sessionizer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TraceKind {
    /// A traced request: one row.
    #[default]
    Trace,
    /// Marks the end of its session: closes the window, produces no row.
    SessionEnd,
    /// Sets the columns in `row` on the already streamed row `inference_id` (Openlayer's
    /// `PUT .../rows?inferenceId=`); joins no session.
    RowUpdate,
}

impl TraceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TraceKind::Trace => "trace",
            TraceKind::SessionEnd => "session_end",
            TraceKind::RowUpdate => "row_update",
        }
    }

    /// `None` for a name this build does not know.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "trace" => Some(TraceKind::Trace),
            "session_end" => Some(TraceKind::SessionEnd),
            "row_update" => Some(TraceKind::RowUpdate),
            _ => None,
        }
    }
}

/// A nested step of a trace: retrieval, chat completion, tool call, ...
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub id: String,
    pub name: String,
    /// `user_call`, `chat_completion`, `retriever`, `tool`, `agent`, ... (Openlayer's step types).
    #[serde(default = "default_step_type")]
    pub step_type: String,
    #[serde(default)]
    pub inputs: JsonMap,
    #[serde(default)]
    pub output: Value,
    pub start_time_ms: i64,
    pub end_time_ms: i64,
    pub latency_ms: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_tokens: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default)]
    pub metadata: JsonMap,
    #[serde(default)]
    pub steps: Vec<Step>,
    /// Documents a retriever step found, in the order it ranked them (Openlayer's
    /// `documents`). `None` when not recorded. Added in schema version 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub documents: Option<Vec<Value>>,
    /// Who served the model of a chat completion step, e.g. `OpenAI` (Openlayer's `provider`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Parameters the model was called with, e.g. `{"temperature": 0.2, "max_tokens": 256}`
    /// (Openlayer's `modelParameters`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_parameters: Option<JsonMap>,
    /// The provider's response as it came, any JSON (Openlayer's `rawOutput`); `Null` when
    /// not recorded, as with `output`.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub raw_output: Value,
}

/// One closed session (or session segment), as produced to the sessions topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionSummary {
    #[serde(default = "default_session_summary_version")]
    pub schema_version: i32,
    pub session_key: String,
    pub pipeline_id: String,
    pub session_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// 0 for the first segment; incremented each time `max_duration` splits the session.
    #[serde(default)]
    pub segment: i32,
    pub started_at_ms: i64,
    pub ended_at_ms: i64,
    pub num_turns: i64,
    pub total_tokens: i64,
    pub total_cost: f64,
    pub total_latency_ms: f64,
    /// `gap`, `max_duration` or `end_event`.
    pub close_reason: String,
    pub first_inference_id: String,
    pub last_inference_id: String,
}

fn default_trace_event_version() -> i32 {
    TRACE_EVENT_SCHEMA_VERSION
}

fn default_session_summary_version() -> i32 {
    SESSION_SUMMARY_SCHEMA_VERSION
}

fn default_step_type() -> String {
    "user_call".to_owned()
}

impl TraceEvent {
    /// A trace with the given name and event time and nothing else set.
    pub fn new(name: impl Into<String>, timestamp_ms: i64) -> Self {
        TraceEvent {
            schema_version: TRACE_EVENT_SCHEMA_VERSION,
            inference_id: None,
            pipeline_id: None,
            user_id: None,
            session_id: None,
            kind: TraceKind::Trace,
            timestamp_ms,
            name: name.into(),
            inputs: JsonMap::new(),
            output: Value::Null,
            latency_ms: None,
            tokens: None,
            prompt_tokens: None,
            completion_tokens: None,
            cost: None,
            model: None,
            metadata: JsonMap::new(),
            steps: Vec::new(),
            row: None,
            row_config: None,
        }
    }

    /// The Kafka key that keeps a session in one partition, in order: the session id, or
    /// the user id for traces without a session. `None` lets the producer spread the rest.
    pub fn partition_key(&self) -> Option<&str> {
        self.session_id.as_deref().or(self.user_id.as_deref())
    }

    /// Depth-first walk over every nested step.
    pub fn all_steps(&self) -> impl Iterator<Item = &Step> {
        let mut stack: Vec<&Step> = self.steps.iter().rev().collect();
        std::iter::from_fn(move || {
            let step = stack.pop()?;
            stack.extend(step.steps.iter().rev());
            Some(step)
        })
    }
}
