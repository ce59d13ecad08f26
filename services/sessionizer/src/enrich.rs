//! The Openlayer row of a trace, with its session columns.
//!
//! Rows follow what Openlayer's official tracer sends (see `docs/ARCHITECTURE.md`):
//! `inferenceId`, `inferenceTimestamp` in float seconds, `output`, `latency` in ms, `tokens`,
//! `cost`, one top-level `user_call` step holding the nested steps, the trace's inputs and
//! metadata flattened to top-level columns, and `user_id` / `session_id` as strings. Unlike
//! the tracer, row `tokens` and `cost` are the sum over all steps. `latency`, `tokens` and
//! `cost` are numbers, 0 when the trace has none, as the SDK sends them (the batch `config`
//! names these columns). Nested steps carry the SDK's per-type fields where recorded:
//! `documents` (retriever), `provider`, `modelParameters`, `rawOutput` (chat completion).
//! Session columns are snake_case. The row is serialized straight from the trace (no
//! intermediate JSON tree).
//!
//! Traces ingested by the gateway carry the row an Openlayer SDK sent (`TraceEvent::row`):
//! that row is shipped with every key and value as sent, and the session columns are added
//! on top (a sent column named like a session column takes the session value). Columns the
//! batch `config` names (`inferenceId`, `inferenceTimestamp`, `output`, `latency`, `tokens`,
//! `cost`, `user_id`, `session_id`) are added from the trace only where the sent row lacks
//! them, so every row of a batch answers to the one config; a sent column is never rewritten,
//! not even a `null` the SDK sent.

use crate::sessionize::{Placement, Turn};
use crate::sink::RowJson;
use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use serde_json::Value;
use std::collections::BTreeSet;
use trace_model::{JsonMap, Step, TraceEvent};

/// Columns of the tracer's row shape; flattened inputs and metadata never overwrite them,
/// nor the session columns below.
const ROW_COLUMNS: &[&str] = &[
    "inferenceId",
    "inferenceTimestamp",
    "output",
    "latency",
    "tokens",
    "cost",
    "steps",
    "user_id",
    "session_id",
];

/// Set later by the final-turn row update.
pub const FINAL_TURN_COLUMN: &str = "session_final_turn";

fn is_reserved(column: &str) -> bool {
    ROW_COLUMNS.contains(&column)
        || SESSION_COLUMNS.contains(&column)
        || column == FINAL_TURN_COLUMN
}

/// The session columns added to every row of a session, for docs/ARCHITECTURE.md and tests.
pub const SESSION_COLUMNS: &[&str] = &[
    "session_turn",
    "session_started_at",
    "seconds_since_session_start",
    "seconds_since_previous_turn",
    "previous_inference_id",
    "session_tokens_so_far",
    "session_cost_so_far",
    "session_segment",
    "session_inferred",
    "session_late",
];

fn seconds(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

/// The row's `latency`, `tokens` and `cost` columns, which the batch `config` names: numbers,
/// 0 when the trace has none, as the official SDK sends them (never `null`).
struct UsageColumns {
    latency_ms: f64,
    tokens: i64,
    cost: f64,
}

impl UsageColumns {
    fn of(event: &TraceEvent) -> Self {
        UsageColumns {
            latency_ms: event.latency_ms.unwrap_or(0.0),
            tokens: event.tokens.unwrap_or(0),
            cost: event.cost.unwrap_or(0.0),
        }
    }
}

/// A trace and where it landed, serialized as one Openlayer row.
struct RowView<'a> {
    event: &'a TraceEvent,
    inference_id: &'a str,
    placement: &'a Placement,
}

struct StepsView<'a>(&'a [Step]);

impl Serialize for StepsView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(StepView))
    }
}

struct StepView<'a>(&'a Step);

impl Serialize for StepView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let step = self.0;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("name", &step.name)?;
        map.serialize_entry("id", &step.id)?;
        map.serialize_entry("type", &step.step_type)?;
        map.serialize_entry("inputs", &step.inputs)?;
        map.serialize_entry("output", &step.output)?;
        map.serialize_entry("groundTruth", &Value::Null)?;
        map.serialize_entry("metadata", &step.metadata)?;
        map.serialize_entry("steps", &StepsView(&step.steps))?;
        map.serialize_entry("latency", &step.latency_ms)?;
        map.serialize_entry("startTime", &seconds(step.start_time_ms))?;
        map.serialize_entry("endTime", &seconds(step.end_time_ms))?;
        if let Some(prompt_tokens) = step.prompt_tokens {
            map.serialize_entry("promptTokens", &prompt_tokens)?;
        }
        if let Some(completion_tokens) = step.completion_tokens {
            map.serialize_entry("completionTokens", &completion_tokens)?;
        }
        if let Some(tokens) = step.tokens {
            map.serialize_entry("tokens", &tokens)?;
        }
        if let Some(cost) = step.cost {
            map.serialize_entry("cost", &cost)?;
        }
        if let Some(model) = &step.model {
            map.serialize_entry("model", model)?;
        }
        if let Some(provider) = &step.provider {
            map.serialize_entry("provider", provider)?;
        }
        if let Some(model_parameters) = &step.model_parameters {
            map.serialize_entry("modelParameters", model_parameters)?;
        }
        if !step.raw_output.is_null() {
            map.serialize_entry("rawOutput", &step.raw_output)?;
        }
        if let Some(documents) = &step.documents {
            map.serialize_entry("documents", documents)?;
        }
        map.end()
    }
}

/// The top-level `user_call` step: the traced function itself.
struct RootStepView<'a> {
    event: &'a TraceEvent,
    inference_id: &'a str,
}

impl Serialize for RootStepView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let event = self.event;
        let latency_ms = event.latency_ms.unwrap_or(0.0);
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("name", &event.name)?;
        map.serialize_entry("id", self.inference_id)?;
        map.serialize_entry("type", "user_call")?;
        map.serialize_entry("inputs", &event.inputs)?;
        map.serialize_entry("output", &event.output)?;
        map.serialize_entry("groundTruth", &Value::Null)?;
        map.serialize_entry("metadata", &event.metadata)?;
        map.serialize_entry("steps", &StepsView(&event.steps))?;
        map.serialize_entry("latency", &latency_ms)?;
        map.serialize_entry("startTime", &seconds(event.timestamp_ms))?;
        map.serialize_entry(
            "endTime",
            &((event.timestamp_ms as f64 + latency_ms) / 1000.0),
        )?;
        if let Some(model) = &event.model {
            map.serialize_entry("model", model)?;
        }
        map.end()
    }
}

fn serialize_turn<M: SerializeMap>(map: &mut M, turn: &Turn) -> Result<(), M::Error> {
    map.serialize_entry("session_turn", &turn.turn)?;
    map.serialize_entry("session_started_at", &seconds(turn.started_at_ms))?;
    map.serialize_entry("seconds_since_session_start", &seconds(turn.since_start_ms))?;
    map.serialize_entry(
        "seconds_since_previous_turn",
        &turn.since_previous_ms.map(seconds),
    )?;
    map.serialize_entry("previous_inference_id", &turn.previous_inference_id)?;
    map.serialize_entry("session_tokens_so_far", &turn.tokens_so_far)?;
    map.serialize_entry("session_cost_so_far", &turn.cost_so_far)?;
    map.serialize_entry("session_segment", &turn.segment)?;
    map.serialize_entry("session_inferred", &turn.inferred)?;
    map.serialize_entry("session_late", &false)
}

fn serialize_flattened<M: SerializeMap>(
    map: &mut M,
    columns: &JsonMap,
    taken: impl Fn(&str) -> bool,
) -> Result<(), M::Error> {
    for (name, value) in columns {
        if !is_reserved(name) && !taken(name) {
            map.serialize_entry(name, value)?;
        }
    }
    Ok(())
}

/// The ids and session columns of a placement, skipping id columns in `present`.
fn serialize_placement<M: SerializeMap>(
    map: &mut M,
    event: &TraceEvent,
    placement: &Placement,
    present: impl Fn(&str) -> bool,
) -> Result<(), M::Error> {
    let (user_id, session_id) = match placement {
        Placement::Turn(turn) => (
            turn.user_id.as_deref().or(event.user_id.as_deref()),
            Some(turn.key.session_id.as_str()),
        ),
        Placement::Late {
            session_id,
            user_id,
        } => (user_id.as_deref(), session_id.as_deref()),
        Placement::Passthrough | Placement::End { .. } | Placement::Duplicate => {
            (event.user_id.as_deref(), None)
        }
    };
    if let Some(user_id) = user_id
        && !present("user_id")
    {
        map.serialize_entry("user_id", user_id)?;
    }
    if let Some(session_id) = session_id
        && !present("session_id")
    {
        map.serialize_entry("session_id", session_id)?;
    }
    match placement {
        Placement::Turn(turn) => serialize_turn(map, turn),
        Placement::Late { .. } => map.serialize_entry("session_late", &true),
        Placement::Passthrough | Placement::End { .. } | Placement::Duplicate => Ok(()),
    }
}

/// A row as an Openlayer SDK sent it (gateway ingest), with the session columns on top.
fn serialize_sent_row<M: SerializeMap>(
    map: &mut M,
    sent: &JsonMap,
    view: &RowView<'_>,
) -> Result<(), M::Error> {
    let event = view.event;
    let session_columns = placement_columns(view.placement);
    for (name, value) in sent {
        if !session_columns.contains(&name.as_str()) {
            map.serialize_entry(name, value)?;
        }
    }
    let absent = |column: &str| !sent.contains_key(column);
    let usage = UsageColumns::of(event);
    if absent("inferenceId") {
        map.serialize_entry("inferenceId", view.inference_id)?;
    }
    if absent("inferenceTimestamp") {
        map.serialize_entry("inferenceTimestamp", &seconds(event.timestamp_ms))?;
    }
    if absent("output") {
        map.serialize_entry("output", &event.output)?;
    }
    if absent("latency") {
        map.serialize_entry("latency", &usage.latency_ms)?;
    }
    if absent("tokens") {
        map.serialize_entry("tokens", &usage.tokens)?;
    }
    if absent("cost") {
        map.serialize_entry("cost", &usage.cost)?;
    }
    serialize_placement(map, event, view.placement, |column| {
        sent.contains_key(column)
    })
}

/// The session columns a placement writes (a sent row's columns of these names give way).
fn placement_columns(placement: &Placement) -> &'static [&'static str] {
    match placement {
        Placement::Turn(_) => SESSION_COLUMNS,
        Placement::Late { .. } => &["session_late"],
        Placement::Passthrough | Placement::End { .. } | Placement::Duplicate => &[],
    }
}

impl Serialize for RowView<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let event = self.event;
        let mut map = serializer.serialize_map(None)?;
        if let Some(sent) = &event.row {
            serialize_sent_row(&mut map, sent, self)?;
            return map.end();
        }
        let usage = UsageColumns::of(event);
        map.serialize_entry("inferenceId", self.inference_id)?;
        map.serialize_entry("inferenceTimestamp", &seconds(event.timestamp_ms))?;
        map.serialize_entry("output", &event.output)?;
        map.serialize_entry("latency", &usage.latency_ms)?;
        map.serialize_entry("tokens", &usage.tokens)?;
        map.serialize_entry("cost", &usage.cost)?;
        map.serialize_entry(
            "steps",
            &[RootStepView {
                event,
                inference_id: self.inference_id,
            }],
        )?;
        serialize_placement(&mut map, event, self.placement, |_| false)?;
        serialize_flattened(&mut map, &event.inputs, |_| false)?;
        serialize_flattened(&mut map, &event.metadata, |name| {
            event.inputs.contains_key(name)
        })?;
        map.end()
    }
}

/// The Openlayer row of `event` placed by the session window.
///
/// # Panics
/// Never in practice: serializing the record cannot fail (string keys only).
pub fn openlayer_row(event: &TraceEvent, inference_id: &str, placement: &Placement) -> RowJson {
    let view = RowView {
        event,
        inference_id,
        placement,
    };
    #[allow(clippy::expect_used)]
    RowJson::try_from_serialize(&view).expect("rows always serialize")
}

/// Whether the row carries `user_id` / `session_id` columns (the config names them only then).
pub fn row_id_columns(event: &TraceEvent, placement: &Placement) -> (bool, bool) {
    match placement {
        Placement::Turn(turn) => (turn.user_id.is_some() || event.user_id.is_some(), true),
        Placement::Late {
            session_id,
            user_id,
        } => (user_id.is_some(), session_id.is_some()),
        Placement::Passthrough | Placement::End { .. } | Placement::Duplicate => {
            (event.user_id.is_some(), false)
        }
    }
}

/// The `config` of a data-stream request for rows with these input columns and id columns.
pub fn openlayer_config(
    input_names: &BTreeSet<String>,
    has_user: bool,
    has_session: bool,
) -> Value {
    let mut config = serde_json::json!({
        "outputColumnName": "output",
        "inputVariableNames": input_names,
        "latencyColumnName": "latency",
        "costColumnName": "cost",
        "timestampColumnName": "inferenceTimestamp",
        "inferenceIdColumnName": "inferenceId",
        "numOfTokenColumnName": "tokens",
    });
    if has_user {
        config["userIdColumnName"] = Value::from("user_id");
    }
    if has_session {
        config["sessionIdColumnName"] = Value::from("session_id");
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessionize::SessionKey;
    use serde_json::json;

    fn event() -> TraceEvent {
        let mut event = TraceEvent::new("chat", 1_700_000_000_250);
        event.inference_id = Some("inf-2".into());
        event.user_id = Some("ana".into());
        event.session_id = Some("trip".into());
        event
            .inputs
            .insert("user_message".into(), json!("Best time for Lisbon?"));
        event.inputs.insert("inferenceId".into(), json!("collides"));
        event.metadata.insert("region".into(), json!("eu"));
        event
            .metadata
            .insert("user_message".into(), json!("collides with input"));
        event.output = json!("Spring.");
        event.latency_ms = Some(1500.0);
        event.tokens = Some(49);
        event.cost = Some(0.002);
        let retrieve = Step {
            id: "step-0".into(),
            name: "retrieve".into(),
            step_type: "retriever".into(),
            inputs: object(json!({"query": "Lisbon"})),
            output: json!(["Lisbon in spring"]),
            start_time_ms: 1_700_000_000_260,
            end_time_ms: 1_700_000_000_290,
            latency_ms: 30.0,
            tokens: None,
            prompt_tokens: None,
            completion_tokens: None,
            cost: None,
            model: None,
            metadata: JsonMap::new(),
            steps: Vec::new(),
            documents: Some(vec![json!("Lisbon in spring"), json!({"id": "kb-2"})]),
            provider: None,
            model_parameters: None,
            raw_output: Value::Null,
        };
        let complete = Step {
            id: "step-1".into(),
            name: "complete".into(),
            step_type: "chat_completion".into(),
            inputs: object(json!({"prompt": [{"role": "user", "content": "Best time?"}]})),
            output: json!("Spring."),
            start_time_ms: 1_700_000_000_300,
            end_time_ms: 1_700_000_001_700,
            latency_ms: 1400.0,
            tokens: Some(49),
            prompt_tokens: Some(42),
            completion_tokens: Some(7),
            cost: Some(0.002),
            model: Some("gpt-4o-mini".into()),
            metadata: JsonMap::new(),
            steps: Vec::new(),
            documents: None,
            provider: Some("OpenAI".into()),
            model_parameters: Some(object(json!({"temperature": 0.2, "max_tokens": 256}))),
            raw_output: json!({"id": "chatcmpl-1", "choices": []}),
        };
        event.steps = vec![retrieve, complete];
        event
    }

    fn object(value: Value) -> JsonMap {
        value.as_object().cloned().expect("a JSON object")
    }

    fn second_turn() -> Placement {
        Placement::Turn(Turn {
            key: SessionKey {
                pipeline_id: "pipe".into(),
                session_id: "trip".into(),
            },
            user_id: Some("ana".into()),
            segment: 0,
            inferred: false,
            turn: 2,
            started_at_ms: 1_700_000_000_000 - 60_000,
            since_start_ms: 60_250,
            since_previous_ms: Some(30_000),
            previous_inference_id: Some("inf-1".into()),
            tokens_so_far: 90,
            cost_so_far: 0.004,
            late_within_grace: false,
        })
    }

    fn row(placement: &Placement) -> Value {
        let event = event();
        serde_json::from_str(openlayer_row(&event, "inf-2", placement).get()).expect("json")
    }

    #[test]
    fn maps_a_turn_to_the_tracer_row_shape_with_session_columns() {
        let row = row(&second_turn());
        assert_eq!(row["inferenceId"], "inf-2");
        assert_eq!(row["inferenceTimestamp"], 1_700_000_000.25);
        assert_eq!(row["output"], "Spring.");
        assert_eq!(row["latency"], 1500.0);
        assert_eq!(row["tokens"], 49);
        assert_eq!(row["user_id"], "ana");
        assert_eq!(row["session_id"], "trip");
        assert_eq!(row["user_message"], "Best time for Lisbon?");
        assert_eq!(row["region"], "eu");
        assert_eq!(row["session_turn"], 2);
        assert_eq!(row["seconds_since_previous_turn"], 30.0);
        assert_eq!(row["previous_inference_id"], "inf-1");
        assert_eq!(row["session_tokens_so_far"], 90);
        assert_eq!(row["session_late"], false);
        for column in SESSION_COLUMNS {
            assert!(row.get(*column).is_some(), "turn rows carry {column}");
        }
        let root = &row["steps"][0];
        assert_eq!(root["type"], "user_call");
        assert_eq!(root["endTime"], 1_700_000_001.75);
        let completion = &root["steps"][1];
        assert_eq!(completion["type"], "chat_completion");
        assert_eq!(completion["promptTokens"], 42);
        assert_eq!(completion["model"], "gpt-4o-mini");
    }

    #[test]
    fn steps_carry_the_sdk_fields_of_their_type_only_where_recorded() {
        let row = row(&second_turn());
        let retriever = &row["steps"][0]["steps"][0];
        let completion = &row["steps"][0]["steps"][1];
        assert_eq!(retriever["type"], "retriever");
        assert_eq!(
            retriever["documents"],
            json!(["Lisbon in spring", {"id": "kb-2"}])
        );
        assert_eq!(completion["provider"], "OpenAI");
        assert_eq!(
            completion["modelParameters"],
            json!({"temperature": 0.2, "max_tokens": 256})
        );
        assert_eq!(
            completion["rawOutput"],
            json!({"id": "chatcmpl-1", "choices": []})
        );
        assert_eq!(
            completion["inputs"]["prompt"],
            json!([{"role": "user", "content": "Best time?"}])
        );
        for absent in ["provider", "modelParameters", "rawOutput", "model"] {
            assert!(retriever.get(absent).is_none(), "retriever has {absent}");
        }
        assert!(completion.get("documents").is_none());
        // The root step is built from the trace, which has none of these fields.
        for absent in ["provider", "modelParameters", "rawOutput", "documents"] {
            assert!(row["steps"][0].get(absent).is_none(), "root has {absent}");
        }
    }

    #[test]
    fn rows_of_traces_without_usage_carry_zero_latency_tokens_and_cost() {
        let mut event = event();
        (event.latency_ms, event.tokens, event.cost) = (None, None, None);
        let built: Value =
            serde_json::from_str(openlayer_row(&event, "inf-2", &second_turn()).get())
                .expect("json");
        event.row = Some(object(json!({"answer": "Spring."})));
        let sent: Value =
            serde_json::from_str(openlayer_row(&event, "inf-2", &Placement::Passthrough).get())
                .expect("json");
        for row in [&built, &sent] {
            assert_eq!(row["latency"], json!(0.0), "{row}");
            assert_eq!(row["tokens"], json!(0), "{row}");
            assert_eq!(row["cost"], json!(0.0), "{row}");
        }
        assert_eq!(built["steps"][0]["latency"], json!(0.0));
    }

    /// Top-level keys of a JSON object in order, duplicates kept.
    struct TopLevelKeys(Vec<String>);

    impl<'de> serde::Deserialize<'de> for TopLevelKeys {
        fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct Visitor;
            impl<'de> serde::de::Visitor<'de> for Visitor {
                type Value = TopLevelKeys;
                fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    formatter.write_str("an object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<TopLevelKeys, A::Error> {
                    let mut keys = Vec::new();
                    while let Some(key) = map.next_key::<String>()? {
                        map.next_value::<serde::de::IgnoredAny>()?;
                        keys.push(key);
                    }
                    Ok(TopLevelKeys(keys))
                }
            }
            deserializer.deserialize_map(Visitor)
        }
    }

    #[test]
    fn flattened_columns_never_overwrite_row_columns() {
        let text = openlayer_row(&event(), "inf-2", &second_turn())
            .get()
            .to_owned();
        let TopLevelKeys(keys) = serde_json::from_str(&text).expect("object");
        let unique: BTreeSet<&String> = keys.iter().collect();
        assert_eq!(unique.len(), keys.len(), "duplicate columns in {keys:?}");
        assert_eq!(row(&second_turn())["user_message"], "Best time for Lisbon?");
        assert_eq!(row(&second_turn())["inferenceId"], "inf-2");
    }

    #[test]
    fn late_and_passthrough_rows_carry_no_turn_columns() {
        let late = row(&Placement::Late {
            session_id: Some("trip".into()),
            user_id: Some("ana".into()),
        });
        assert_eq!(late["session_late"], true);
        assert!(late.get("session_turn").is_none());
        let plain = row(&Placement::Passthrough);
        assert!(plain.get("session_id").is_none());
        assert!(plain.get("session_late").is_none());
        assert_eq!(plain["user_id"], "ana");
    }

    /// A row as the official tracer sends it, with columns of every JSON type.
    fn sent_row() -> JsonMap {
        json!({
            "inferenceId": "sdk-1",
            "inferenceTimestamp": 1_700_000_000.5,
            "output": {"text": "Spring.", "scores": [0.5, 1, null]},
            "latency": 1500.25,
            "tokens": 0,
            "cost": 0,
            "user_message": "Best time for Lisbon?",
            "steps": [{"name": "chat", "type": "user_call", "steps": []}],
            "user_id": "ana",
            "session_id": "trip",
            "flag": true,
            "nothing": null,
            "session_turn": "sent by the client",
        })
        .as_object()
        .cloned()
        .expect("object")
    }

    #[test]
    fn sent_rows_keep_every_column_as_sent_and_gain_session_columns() {
        let mut event = event();
        event.row = Some(sent_row());
        let text = openlayer_row(&event, "sdk-1", &second_turn())
            .get()
            .to_owned();
        let TopLevelKeys(keys) = serde_json::from_str(&text).expect("object");
        let unique: BTreeSet<&String> = keys.iter().collect();
        assert_eq!(unique.len(), keys.len(), "duplicate columns in {keys:?}");
        let row: Value = serde_json::from_str(&text).expect("json");
        for (name, value) in sent_row() {
            if name != "session_turn" {
                assert_eq!(row[&name], value, "column {name} as sent");
            }
        }
        // The session column wins over a sent column of the same name.
        assert_eq!(row["session_turn"], 2);
        for column in SESSION_COLUMNS {
            assert!(row.get(*column).is_some(), "turn rows carry {column}");
        }
        // Nothing of the trace's own shape leaks in: no flattened metadata.
        assert!(row.get("region").is_none());
        assert_eq!(
            row.as_object().expect("object").len(),
            sent_row().len() + SESSION_COLUMNS.len() - 1
        );
    }

    #[test]
    fn sent_rows_gain_the_config_columns_they_lack() {
        let mut event = event();
        event.row = Some(
            json!({"answer": "Spring.", "extra": [1, 2]})
                .as_object()
                .cloned()
                .expect("object"),
        );
        let row: Value = serde_json::from_str(
            openlayer_row(&event, "derived-id", &Placement::Passthrough).get(),
        )
        .expect("json");
        assert_eq!(row["answer"], "Spring.");
        assert_eq!(row["extra"], json!([1, 2]));
        assert_eq!(row["inferenceId"], "derived-id");
        assert_eq!(row["inferenceTimestamp"], 1_700_000_000.25);
        assert_eq!(row["output"], "Spring.");
        assert_eq!(row["latency"], 1500.0);
        assert_eq!(row["tokens"], 49);
        assert_eq!(row["cost"], 0.002);
        assert_eq!(row["user_id"], "ana");
        assert!(row.get("session_id").is_none());
    }

    /// Each top-level column's JSON text, as written.
    fn column_texts(text: &str) -> std::collections::BTreeMap<String, String> {
        let columns: std::collections::BTreeMap<String, Box<serde_json::value::RawValue>> =
            serde_json::from_str(text).expect("a JSON object");
        columns
            .into_iter()
            .map(|(name, value)| (name, value.get().to_owned()))
            .collect()
    }

    #[test]
    fn sent_rows_keep_every_column_byte_for_byte_and_gain_only_the_session_columns() {
        // An SDK row in the compact, key-sorted form the gateway stores: nulls in the columns
        // the config names (the helpers' rows carry 0 there; a sent row keeps what it sent),
        // numbers at the edges, escapes, and the step fields of the SDK's step types.
        let sent_text = concat!(
            r#"{"big":18446744073709551615,"cost":null,"inferenceId":"sdk-7","#,
            r#""inferenceTimestamp":1700000000.123456,"latency":null,"#,
            r#""nested":{"a":{},"b":[1,2.5,null,true,-0.0]},"output":"Paris \"quoted\" é 🚀\n","#,
            r#""session_id":"trip","steps":[{"name":"answer","steps":[{"documents":["doc"],"#,
            r#""inputs":{"prompt":[{"content":"Capital?","role":"user"}]},"#,
            r#""modelParameters":{"temperature":0.2},"provider":"OpenAI","#,
            r#""rawOutput":{"choices":[]},"type":"chat_completion"}],"type":"user_call"}],"#,
            r#""tenth":0.1,"tiny":5e-324,"tokens":null,"user_id":"ana","user_message":"Capital?"}"#,
        );
        let mut event = event();
        event.row = Some(serde_json::from_str(sent_text).expect("an object"));
        // The way the sessionizer gets it: encoded by the gateway, decoded from Kafka.
        let bytes = trace_model::encode(&event, trace_model::Encoding::Avro).expect("encodes");
        let decoded = trace_model::Decoder::default()
            .decode(&bytes)
            .expect("decodes");
        assert_eq!(decoded.row, event.row);

        let shipped = column_texts(openlayer_row(&decoded, "sdk-7", &second_turn()).get());
        let sent = column_texts(sent_text);
        for (name, text) in &sent {
            assert_eq!(shipped.get(name), Some(text), "column {name}");
        }
        let added: BTreeSet<&str> = shipped
            .keys()
            .filter(|name| !sent.contains_key(*name))
            .map(String::as_str)
            .collect();
        assert_eq!(added, SESSION_COLUMNS.iter().copied().collect());
    }

    #[test]
    fn config_names_id_columns_only_when_rows_carry_them() {
        let inputs = BTreeSet::from(["user_message".to_owned()]);
        let config = openlayer_config(&inputs, true, true);
        assert_eq!(config["userIdColumnName"], "user_id");
        assert_eq!(config["sessionIdColumnName"], "session_id");
        assert_eq!(config["inputVariableNames"], json!(["user_message"]));
        let config = openlayer_config(&inputs, false, false);
        assert!(config.get("userIdColumnName").is_none());
        assert!(config.get("sessionIdColumnName").is_none());
    }
}
