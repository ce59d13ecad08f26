//! The Openlayer row of a closed session, for a sessions pipeline: one row per session, so
//! Openlayer's tests and alerts run on whole conversations (cost, turns, why they ended).
//!
//! While a session is open its [`SessionTotals`] grow with every trace (pure, journaled with
//! the session's state, so a restart resumes them exactly); when it closes,
//! [`session_row`] turns state and totals into the row. A configured aggregate that cannot be
//! computed (a value of the wrong type, an overflow) leaves its column out of that row, with
//! the reason, and the row still ships.

use crate::sessionize::ClosedSession;
use crate::sink::RowJson;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use trace_model::{Step, TraceEvent};

/// Models listed per session at most (the first ones seen).
const MAX_MODELS: usize = 16;
/// Largest value a `last` aggregate keeps (serialized JSON): the value is journaled with the
/// session's state on every change, and a changelog record Kafka refuses would freeze the
/// partition.
pub const MAX_LAST_VALUE_BYTES: usize = 1024;

/// Columns of every session row; configured aggregates may not take these names.
pub const SESSION_ROW_COLUMNS: &[&str] = &[
    "inferenceId",
    "output",
    "inferenceTimestamp",
    "latency",
    "tokens",
    "cost",
    "session_id",
    "user_id",
    "traces_pipeline_id",
    "first_inference_id",
    "last_inference_id",
    "turns",
    "started_at",
    "ended_at",
    "duration_seconds",
    "prompt_tokens",
    "completion_tokens",
    "models",
    "mean_turn_latency_ms",
    "max_turn_latency_ms",
    "close_reason",
    "segment",
    "late_traces",
    "inferred",
];

/// How an aggregate folds a metadata value of each trace into a session column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AggregateOp {
    /// Numbers added up (integers stay integers).
    Sum,
    /// Traces whose metadata has the key (not `null`).
    Count,
    /// The newest trace's value, of any type.
    Last,
    /// The largest number.
    Max,
}

/// One session column computed from trace metadata (`[[session.aggregates]]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Aggregate {
    pub column: String,
    /// Key of the trace's `metadata`.
    pub key: String,
    pub op: AggregateOp,
}

/// Where session rows go and what they add up (validated `openlayer.sessions_*` and
/// `session.aggregates`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionRowSettings {
    /// Sessions pipeline of traces pipelines not in `by_traces_pipeline`.
    pub pipeline_id: Option<String>,
    /// Sessions pipeline per traces pipeline.
    pub by_traces_pipeline: BTreeMap<String, String>,
    pub aggregates: Vec<Aggregate>,
}

impl SessionRowSettings {
    /// Whether `pipeline_id` receives session rows (a trace naming it would mix two kinds of
    /// rows in one pipeline).
    pub fn is_sessions_pipeline(&self, pipeline_id: &str) -> bool {
        self.pipeline_id.as_deref() == Some(pipeline_id)
            || self.by_traces_pipeline.values().any(|id| id == pipeline_id)
    }

    /// The sessions pipeline of a session of traces pipeline `traces_pipeline_id`, if any.
    pub fn pipeline_for(&self, traces_pipeline_id: &str) -> Option<&str> {
        self.by_traces_pipeline
            .get(traces_pipeline_id)
            .or(self.pipeline_id.as_ref())
            .map(String::as_str)
    }
}

/// A column's value so far; `Omitted` once it cannot be computed for this session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Accumulated {
    Int(i64),
    Float(f64),
    Value(Value),
    Omitted(OmitReason),
}

/// Why a column is left out of a session row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OmitReason {
    /// A value of the key was not a number (`sum`, `max`).
    WrongType,
    /// The sum left the range of its type.
    Overflow,
    /// A `last` value longer than [`MAX_LAST_VALUE_BYTES`] serialized.
    TooLarge,
}

impl OmitReason {
    pub fn as_str(self) -> &'static str {
        match self {
            OmitReason::WrongType => "wrong_type",
            OmitReason::Overflow => "overflow",
            OmitReason::TooLarge => "too_large",
        }
    }
}

/// What a session row needs beyond the window's state, gathered per trace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionTotals {
    #[serde(default)]
    pub prompt_tokens: i64,
    #[serde(default)]
    pub completion_tokens: i64,
    #[serde(default)]
    pub max_latency_ms: f64,
    /// Distinct models of the traces and their steps, first seen first.
    #[serde(default)]
    pub models: Vec<String>,
    /// Turns older than their partition's event time, joined within grace (traces past grace
    /// are shipped with the late marker and join no session).
    #[serde(default)]
    pub late_traces: i64,
    /// Configured aggregates by column; a column absent here saw no value yet.
    #[serde(default)]
    pub aggregates: BTreeMap<String, Accumulated>,
}

impl SessionTotals {
    /// Adds one trace placed in the session.
    pub fn add(&mut self, event: &TraceEvent, late: bool, aggregates: &[Aggregate]) {
        self.prompt_tokens = self
            .prompt_tokens
            .saturating_add(event.prompt_tokens.unwrap_or(0));
        self.completion_tokens = self
            .completion_tokens
            .saturating_add(event.completion_tokens.unwrap_or(0));
        self.max_latency_ms = self.max_latency_ms.max(event.latency_ms.unwrap_or(0.0));
        if let Some(model) = &event.model {
            self.add_model(model);
        }
        self.add_step_models(&event.steps);
        if late {
            self.late_traces += 1;
        }
        for aggregate in aggregates {
            let Some(value) = event.metadata.get(&aggregate.key).filter(|v| !v.is_null()) else {
                continue;
            };
            let entry = self.aggregates.get(&aggregate.column);
            let next = fold(aggregate.op, entry, value);
            self.aggregates.insert(aggregate.column.clone(), next);
        }
    }

    fn add_step_models(&mut self, steps: &[Step]) {
        for step in steps {
            if let Some(model) = &step.model {
                self.add_model(model);
            }
            self.add_step_models(&step.steps);
        }
    }

    fn add_model(&mut self, model: &str) {
        if self.models.iter().any(|known| known == model) {
            return;
        }
        if self.models.len() < MAX_MODELS {
            self.models.push(model.to_owned());
        }
    }
}

fn fold(op: AggregateOp, so_far: Option<&Accumulated>, value: &Value) -> Accumulated {
    if let Some(Accumulated::Omitted(reason)) = so_far {
        return Accumulated::Omitted(*reason);
    }
    match op {
        AggregateOp::Last => {
            if value.to_string().len() > MAX_LAST_VALUE_BYTES {
                Accumulated::Omitted(OmitReason::TooLarge)
            } else {
                Accumulated::Value(value.clone())
            }
        }
        AggregateOp::Count => match so_far {
            Some(Accumulated::Int(count)) => Accumulated::Int(count.saturating_add(1)),
            _ => Accumulated::Int(1),
        },
        AggregateOp::Sum => match (so_far, value.as_i64(), value.as_f64()) {
            (_, _, None) => Accumulated::Omitted(OmitReason::WrongType),
            (None, Some(int), _) => Accumulated::Int(int),
            (Some(Accumulated::Int(sum)), Some(int), _) => sum
                .checked_add(int)
                .map_or(Accumulated::Omitted(OmitReason::Overflow), Accumulated::Int),
            (so_far, _, Some(float)) => {
                let sum = match so_far {
                    Some(Accumulated::Int(sum)) => *sum as f64 + float,
                    Some(Accumulated::Float(sum)) => sum + float,
                    _ => float,
                };
                if sum.is_finite() {
                    Accumulated::Float(sum)
                } else {
                    Accumulated::Omitted(OmitReason::Overflow)
                }
            }
        },
        AggregateOp::Max => match (so_far, value.as_f64()) {
            (_, None) => Accumulated::Omitted(OmitReason::WrongType),
            (Some(Accumulated::Value(max)), Some(float)) if max.as_f64() >= Some(float) => {
                Accumulated::Value(max.clone())
            }
            (_, Some(_)) => Accumulated::Value(value.clone()),
        },
    }
}

/// The id of a session's row: stable, so a row shipped again after a crash is the same row,
/// and unique, as a session id may come back after a gap (a new session, segment 0 again).
pub fn session_inference_id(session: &ClosedSession) -> String {
    format!(
        "{}/{}@{}",
        session.key.pipeline_id, session.key.session_id, session.state.started_at_ms
    )
}

/// A closed session's row, and the aggregate columns left out of it.
pub fn session_row(session: &ClosedSession, reason: &str) -> (RowJson, Vec<OmitReason>) {
    let state = &session.state;
    let totals = state.totals.as_deref().cloned().unwrap_or_default();
    let seconds = |ms: i64| ms as f64 / 1000.0;
    let duration_ms = (state.last_event_ms - state.started_at_ms).max(0);
    let mut row = Map::new();
    row.insert("inferenceId".into(), session_inference_id(session).into());
    // The API requires an output column: a one-line account of the session (not its close
    // reason, which a replay may tell differently).
    row.insert(
        "output".into(),
        format!("{} turn(s) over {} s", state.turns, duration_ms / 1000).into(),
    );
    row.insert(
        "inferenceTimestamp".into(),
        seconds(state.last_event_ms).into(),
    );
    row.insert("latency".into(), (duration_ms as f64).into());
    row.insert("tokens".into(), state.tokens.into());
    row.insert("cost".into(), state.cost.into());
    row.insert("session_id".into(), session.key.session_id.clone().into());
    // As in trace rows: the column and its config role only when there is a user.
    if let Some(user_id) = &state.user_id {
        row.insert("user_id".into(), user_id.clone().into());
    }
    row.insert(
        "traces_pipeline_id".into(),
        Value::from(&*session.key.pipeline_id),
    );
    row.insert(
        "first_inference_id".into(),
        state.first_inference_id.clone().into(),
    );
    row.insert(
        "last_inference_id".into(),
        state.last_inference_id.clone().into(),
    );
    row.insert("turns".into(), state.turns.into());
    row.insert("started_at".into(), seconds(state.started_at_ms).into());
    row.insert("ended_at".into(), seconds(state.last_event_ms).into());
    row.insert("duration_seconds".into(), seconds(duration_ms).into());
    row.insert("prompt_tokens".into(), totals.prompt_tokens.into());
    row.insert("completion_tokens".into(), totals.completion_tokens.into());
    row.insert("models".into(), totals.models.into());
    let mean_latency = if state.turns > 0 {
        state.latency_ms / state.turns as f64
    } else {
        0.0
    };
    row.insert("mean_turn_latency_ms".into(), mean_latency.into());
    row.insert("max_turn_latency_ms".into(), totals.max_latency_ms.into());
    row.insert("close_reason".into(), reason.into());
    row.insert("segment".into(), state.segment.into());
    row.insert("late_traces".into(), totals.late_traces.into());
    row.insert("inferred".into(), state.inferred.into());
    let mut omitted = Vec::new();
    for (column, accumulated) in totals.aggregates {
        let value = match accumulated {
            Accumulated::Int(int) => Value::from(int),
            Accumulated::Float(float) => Value::from(float),
            Accumulated::Value(value) => value,
            Accumulated::Omitted(reason) => {
                omitted.push(reason);
                continue;
            }
        };
        row.insert(column, value);
    }
    let row = RowJson::try_from_serialize(&row).expect("a JSON map serializes");
    (row, omitted)
}

/// The data-stream `config` of session rows: the columns Openlayer reads by role; the user
/// column only when a row of the batch has a user.
pub fn session_config(has_user: bool) -> Value {
    let mut config = serde_json::json!({
        "outputColumnName": "output",
        "inferenceIdColumnName": "inferenceId",
        "timestampColumnName": "inferenceTimestamp",
        "latencyColumnName": "latency",
        "costColumnName": "cost",
        "numOfTokenColumnName": "tokens",
        "sessionIdColumnName": "session_id",
        "inputVariableNames": [],
    });
    if has_user {
        config["userIdColumnName"] = Value::from("user_id");
    }
    config
}

#[cfg(test)]
#[path = "session_row_tests.rs"]
mod tests;
