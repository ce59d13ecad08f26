//! Validation of the session rows options: `openlayer.sessions_pipeline_id`,
//! `openlayer.sessions_pipelines` and `session.aggregates`.

use super::super::model::OpenlayerConfig;
use crate::session_row::{Aggregate, SESSION_ROW_COLUMNS, SessionRowSettings};
use service_kit::problems::Problems;
use std::collections::{BTreeMap, HashSet};
use trace_model::Limits;

pub(super) fn validate_session_rows(
    openlayer: &OpenlayerConfig,
    aggregates: Vec<Aggregate>,
    (limits, changelog): (&Limits, bool),
    problems: &mut Problems,
    warnings: &mut Vec<String>,
) -> Option<SessionRowSettings> {
    let printable = |id: &str| {
        !id.is_empty()
            && id.trim() == id
            && id.chars().count() <= limits.max_id_chars
            && !id.chars().any(char::is_control)
    };
    let is_traces_pipeline = |id: &String| {
        openlayer.default_pipeline_id.as_ref() == Some(id)
            || openlayer.sessions_pipelines.contains_key(id)
    };
    let id_problem = format!(
        "must be printable, without surrounding spaces, and at most {} characters \
         (limits.max_id_chars), e.g. the id of an inference pipeline created for sessions in the \
         Openlayer app",
        limits.max_id_chars
    );
    let pipeline_id = openlayer
        .sessions_pipeline_id
        .clone()
        .filter(|id| !id.trim().is_empty());
    if let Some(id) = &pipeline_id {
        if !printable(id) {
            problems.push("openlayer.sessions_pipeline_id", id_problem.clone());
        } else if is_traces_pipeline(id) {
            problems.push(
                "openlayer.sessions_pipeline_id",
                "is a traces pipeline (openlayer.default_pipeline_id or a key of \
                 openlayer.sessions_pipelines): session rows and trace rows have different \
                 columns, so they need a pipeline each",
            );
        }
    }
    let mut by_traces_pipeline = BTreeMap::new();
    for (traces, sessions) in &openlayer.sessions_pipelines {
        let key = format!("openlayer.sessions_pipelines.{traces}");
        if !printable(traces) || !printable(sessions) {
            problems.push(key, id_problem.clone());
        } else if is_traces_pipeline(sessions) {
            problems.push(
                key,
                format!(
                    "`{sessions}` is a traces pipeline: session rows need a pipeline of their \
                     own"
                ),
            );
        } else {
            by_traces_pipeline.insert(traces.clone(), sessions.clone());
        }
    }
    let mut columns = HashSet::new();
    for (index, aggregate) in aggregates.iter().enumerate() {
        let key = |field: &str| format!("session.aggregates[{index}].{field}");
        let column = aggregate.column.as_str();
        if column.trim().is_empty() || column.chars().any(char::is_control) {
            problems.push(
                key("column"),
                "must be a printable column name, e.g. `tool_calls`",
            );
        } else if SESSION_ROW_COLUMNS.contains(&column) {
            problems.push(
                key("column"),
                format!("`{column}` is a column every session row has; choose another name"),
            );
        } else if !columns.insert(column) {
            problems.push(
                key("column"),
                format!("`{column}` is computed by an earlier aggregate already"),
            );
        }
        if aggregate.key.trim().is_empty() {
            problems.push(
                key("key"),
                "must name a key of the traces' metadata, e.g. `tool_calls`",
            );
        }
    }
    if pipeline_id.is_none() && by_traces_pipeline.is_empty() {
        if !aggregates.is_empty() {
            problems.push(
                "session.aggregates",
                "compute session row columns, but no sessions pipeline is set: set \
                 openlayer.sessions_pipeline_id (SESSIONIZER__OPENLAYER__SESSIONS_PIPELINE_ID)",
            );
        }
        return None;
    }
    if !changelog {
        warnings.push(
            "session rows are on without kafka.changelog_topic: sessions open at a crash start \
             again from nothing, and their closes in flight are not sent again"
                .to_owned(),
        );
    }
    Some(SessionRowSettings {
        pipeline_id,
        by_traces_pipeline,
        aggregates,
    })
}
