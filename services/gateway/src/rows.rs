//! Openlayer requests to trace records: a data-stream body becomes one `TraceEvent` per row,
//! a row update one `row_update` record; all checked before anything is produced.
//!
//! Column names come from the request's `config` as Openlayer reads them
//! (`outputColumnName`, `inferenceIdColumnName`, `timestampColumnName`, `userIdColumnName`,
//! `sessionIdColumnName`, `latencyColumnName`, `costColumnName`, `numOfTokenColumnName`,
//! `inputVariableNames`). The typed fields of the record are read from those columns; the
//! whole row, unknown columns included, travels as its text in the record's `row` (and the
//! config in `row_config`), so the sessionizer ships what the SDK sent. Only the columns the
//! record reads are parsed into values, in one pass over the row that also reads the steps'
//! names and amounts: parsing whole rows and writing them again was most of the gateway's
//! work per row.
//!
//! Token and cost totals: the official tracer's row `tokens`/`cost` come from the top-level
//! step only and read 0 when the tokens sit in nested completion steps. When the row's column
//! is absent or zero, the record's total is the sum over every step of the row's `steps`
//! tree, so session running totals are right; the row's own column is shipped unchanged.
//!
//! Any refusal names the row (its index in `rows`) and the column; one bad row refuses the
//! whole request, so a request is produced entirely or not at all.

use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use trace_model::codec::avro::{RawRow, encode_trace_with_raw_row};
use trace_model::validate::{Limits, validate_id, validate_trace};
use trace_model::{Encoding, JsonMap, TraceEvent, TraceKind, encode};

/// Trace name when the row has no root step name to borrow.
const DEFAULT_TRACE_NAME: &str = "openlayer_row";

/// A request the gateway refuses, with the row and field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// 400, or 413 when one row's record would exceed the message size limit.
    pub status: u16,
    /// Index of the row in `rows`, when one row is at fault.
    pub row: Option<usize>,
    /// The column or body field at fault (`config.outputColumnName`, `inferenceId`, ...).
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(row) = self.row {
            write!(formatter, "row {row}: ")?;
        }
        formatter.write_str(&self.message)
    }
}

fn bad_request(row: Option<usize>, field: impl Into<String>, message: String) -> Refusal {
    Refusal {
        status: 400,
        row,
        field: Some(field.into()),
        message,
    }
}

/// One record ready for Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub destination: Destination,
    /// Partition key: session id, else user id, else (updates) the row's inference id.
    pub key: Option<String>,
    pub payload: Vec<u8>,
    /// Remembered with `key` once produced, so a later row update finds the partition.
    pub inference_id: Option<String>,
}

/// The topic a record goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// `kafka.topic`: trace events, which the sessionizer sessionizes.
    Traces,
    /// `kafka.spans_topic`: OTLP spans, which the sessionizer assembles into traces first.
    Spans,
}

/// The column names a request's `config` declares.
#[derive(Debug, Clone, Default)]
struct Columns {
    output: String,
    inference_id: Option<String>,
    timestamp: Option<String>,
    user_id: Option<String>,
    session_id: Option<String>,
    latency: Option<String>,
    cost: Option<String>,
    tokens: Option<String>,
    inputs: Vec<String>,
}

fn optional_name(config: &JsonMap, key: &str) -> Result<Option<String>, Refusal> {
    match config.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(name)) => Ok(Some(name.clone())),
        Some(_) => Err(bad_request(
            None,
            format!("config.{key}"),
            format!("config.{key} must be a column name (a string)"),
        )),
    }
}

impl Columns {
    /// Whether the record reads column `name`.
    fn reads(&self, name: &str) -> bool {
        self.output == name
            || [
                &self.inference_id,
                &self.timestamp,
                &self.user_id,
                &self.session_id,
                &self.latency,
                &self.cost,
                &self.tokens,
            ]
            .into_iter()
            .flatten()
            .chain(&self.inputs)
            .any(|column| column == name)
    }

    fn from_config(config: &JsonMap) -> Result<Self, Refusal> {
        let output = optional_name(config, "outputColumnName")?.ok_or_else(|| {
            bad_request(
                None,
                "config.outputColumnName",
                "config.outputColumnName is required, e.g. \"output\"".to_owned(),
            )
        })?;
        let inputs = match config.get("inputVariableNames") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(names)) => names
                .iter()
                .map(|name| name.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    bad_request(
                        None,
                        "config.inputVariableNames",
                        "config.inputVariableNames must be a list of column names".to_owned(),
                    )
                })?,
            Some(_) => {
                return Err(bad_request(
                    None,
                    "config.inputVariableNames",
                    "config.inputVariableNames must be a list of column names".to_owned(),
                ));
            }
        };
        Ok(Columns {
            output,
            inference_id: optional_name(config, "inferenceIdColumnName")?,
            timestamp: optional_name(config, "timestampColumnName")?,
            user_id: optional_name(config, "userIdColumnName")?,
            session_id: optional_name(config, "sessionIdColumnName")?,
            latency: optional_name(config, "latencyColumnName")?,
            cost: optional_name(config, "costColumnName")?,
            tokens: optional_name(config, "numOfTokenColumnName")?,
            inputs,
        })
    }
}

/// Reads the row's id column: a string (or an integer, as the SDK allows for user ids),
/// checked against the id limits. `record_field` names the record field for the limits.
fn id_column(
    row: &JsonMap,
    index: usize,
    column: Option<&str>,
    record_field: &'static str,
    limits: &Limits,
) -> Result<Option<String>, Refusal> {
    let Some(column) = column else {
        return Ok(None);
    };
    let id = match row.get(column) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(text)) => text.clone(),
        Some(Value::Number(number)) if number.is_i64() || number.is_u64() => number.to_string(),
        Some(_) => {
            return Err(bad_request(
                Some(index),
                column,
                format!("column `{column}` must be a string id"),
            ));
        }
    };
    validate_id(record_field, &id, limits)
        .map_err(|error| bad_request(Some(index), column, format!("column `{column}`: {error}")))?;
    Ok(Some(id))
}

/// Reads a non-negative number column; absent or null is `None`.
fn amount_column(
    row: &JsonMap,
    index: usize,
    column: Option<&str>,
) -> Result<Option<f64>, Refusal> {
    let Some(column) = column else {
        return Ok(None);
    };
    match row.get(column) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(number)) => match number.as_f64() {
            Some(value) if value.is_finite() && value >= 0.0 => Ok(Some(value)),
            _ => Err(bad_request(
                Some(index),
                column,
                format!("column `{column}` must be a number >= 0"),
            )),
        },
        Some(_) => Err(bad_request(
            Some(index),
            column,
            format!("column `{column}` must be a number >= 0"),
        )),
    }
}

/// Sum of one amount over every step of a `steps` tree (any depth), in the order of a stack
/// of the steps, last first; `None` when no step has one.
fn sum_over_steps(steps: &[StepAmounts], amount: fn(&StepAmounts) -> Option<f64>) -> Option<f64> {
    let mut stack: Vec<&StepAmounts> = steps.iter().collect();
    let mut total = None;
    while let Some(step) = stack.pop() {
        if let Some(value) = amount(step)
            && value.is_finite()
            && value >= 0.0
        {
            total = Some(total.unwrap_or(0.0) + value);
        }
        stack.extend(step.steps.iter());
    }
    total
}

/// The row's column when present and positive, else the steps' sum (see the module doc).
fn total(
    column: Option<f64>,
    steps: &[StepAmounts],
    amount: fn(&StepAmounts) -> Option<f64>,
) -> Option<f64> {
    match column {
        Some(value) if value > 0.0 => Some(value),
        _ => sum_over_steps(steps, amount)
            .filter(|sum| *sum > 0.0)
            .or(column),
    }
}

/// What a record reads of a row, in one pass over the row's text: the columns the config
/// names, parsed, and what its `steps` hold for the trace's name and totals. The rest of the
/// row (most of it: the steps' texts) is never parsed into values; it travels as sent. Of a
/// repeated member, the last counts (as in a parsed map).
#[derive(Debug, Default)]
struct RowFields {
    read: JsonMap,
    steps: StepList,
}

/// A `steps` value as the record needs it: the first step's `name` when the first item is an
/// object (the trace's name), and the amounts of every item that is an object, for totals
/// when the row's own column reads 0 (the official tracer's rows do when usage is nested).
/// A value that is no list names and holds nothing.
#[derive(Debug, Default)]
struct StepList {
    first_name: Option<String>,
    steps: Vec<StepAmounts>,
}

/// A step's `tokens` and `cost` (any number, checked when summed) and its own steps.
#[derive(Debug, Default)]
struct StepAmounts {
    tokens: Option<f64>,
    cost: Option<f64>,
    steps: Vec<StepAmounts>,
}

/// Reads `row_text` for the record (see [`RowFields`]); an error when it is no JSON object.
fn read_row(row_text: &str, columns: &Columns) -> Result<RowFields, serde_json::Error> {
    let mut row = serde_json::Deserializer::from_str(row_text);
    let fields = serde::de::DeserializeSeed::deserialize(RowSeed(columns), &mut row)?;
    row.end()?;
    Ok(fields)
}

/// A member name, borrowed from the text unless it holds escapes: serde's `Cow<str>` always
/// allocates, and a row and its steps have dozens of members.
struct Key<'de>(std::borrow::Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(key: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> serde::de::Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a member name")
            }

            fn visit_borrowed_str<E>(self, key: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Borrowed(key)))
            }

            fn visit_str<E>(self, key: &str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(key.to_owned())))
            }
        }
        key.deserialize_str(KeyVisitor)
    }
}

/// Reads a row for the columns it is given (see [`RowFields`]).
struct RowSeed<'c>(&'c Columns);

impl<'de> serde::de::DeserializeSeed<'de> for RowSeed<'_> {
    type Value = RowFields;

    fn deserialize<D: serde::Deserializer<'de>>(self, row: D) -> Result<RowFields, D::Error> {
        row.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for RowSeed<'_> {
    type Value = RowFields;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a row object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut members: A,
    ) -> Result<RowFields, A::Error> {
        let mut fields = RowFields::default();
        while let Some(Key(name)) = members.next_key()? {
            let read = self.0.reads(&name);
            if name == "steps" {
                fields.steps = if read {
                    // A column the config names `steps`: parsed, and its steps read from that.
                    let steps: Value = members.next_value()?;
                    let list = serde::de::DeserializeSeed::deserialize(StepListSeed::TOP, &steps)
                        .map_err(serde::de::Error::custom)?;
                    fields.read.insert(name.into_owned(), steps);
                    list
                } else {
                    members.next_value_seed(StepListSeed::TOP)?
                };
            } else if read {
                fields.read.insert(name.into_owned(), members.next_value()?);
            } else {
                members.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(fields)
    }
}

/// Takes any scalar as the visitor's default value: for the steps' visitors, a scalar where a
/// list or a step was looked for names and holds nothing, as when the steps were parsed into
/// values and then looked up; for [`Checked`], a scalar is checked once the parser read it.
macro_rules! scalars_read_as_default {
    () => {
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok(Self::Value::default())
        }

        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok(Self::Value::default())
        }

        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok(Self::Value::default())
        }

        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok(Self::Value::default())
        }

        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok(Self::Value::default())
        }

        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(Self::Value::default())
        }
    };
}

/// A `steps` value; `named`: the first step's name is read (the row's steps, not a step's).
#[derive(Clone, Copy)]
struct StepListSeed {
    named: bool,
}

impl StepListSeed {
    /// A row's `steps`.
    const TOP: StepListSeed = StepListSeed { named: true };
    /// A step's own `steps`.
    const NESTED: StepListSeed = StepListSeed { named: false };
}

impl<'de> serde::de::DeserializeSeed<'de> for StepListSeed {
    type Value = StepList;

    fn deserialize<D: serde::Deserializer<'de>>(self, steps: D) -> Result<StepList, D::Error> {
        steps.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for StepListSeed {
    type Value = StepList;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a list of steps")
    }

    scalars_read_as_default!();

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut items: A) -> Result<StepList, A::Error> {
        let mut list = StepList::default();
        let mut named = self.named;
        while let Some(step) = items.next_element_seed(StepSeed { named })? {
            if let Some((name, amounts)) = step {
                if named {
                    list.first_name = name;
                }
                list.steps.push(amounts);
            }
            named = false;
        }
        Ok(list)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, members: A) -> Result<StepList, A::Error> {
        serde::de::Visitor::visit_map(serde::de::IgnoredAny, members)?;
        Ok(StepList::default())
    }
}

/// One item of a steps list: `None` when it is no object; its name read when `named`.
struct StepSeed {
    named: bool,
}

impl<'de> serde::de::DeserializeSeed<'de> for StepSeed {
    type Value = Option<(Option<String>, StepAmounts)>;

    fn deserialize<D: serde::Deserializer<'de>>(self, step: D) -> Result<Self::Value, D::Error> {
        step.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for StepSeed {
    type Value = Option<(Option<String>, StepAmounts)>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a step object")
    }

    scalars_read_as_default!();

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, items: A) -> Result<Self::Value, A::Error> {
        serde::de::Visitor::visit_seq(serde::de::IgnoredAny, items)?;
        Ok(None)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut members: A,
    ) -> Result<Self::Value, A::Error> {
        let mut name = None;
        let mut amounts = StepAmounts::default();
        while let Some(Key(key)) = members.next_key()? {
            match key.as_ref() {
                "name" if self.named => {
                    name = match members.next_value()? {
                        Value::String(text) => Some(text),
                        _ => None,
                    };
                }
                "tokens" => amounts.tokens = members.next_value::<Value>()?.as_f64(),
                "cost" => amounts.cost = members.next_value::<Value>()?.as_f64(),
                "steps" => {
                    amounts.steps = members.next_value_seed(StepListSeed::NESTED)?.steps;
                }
                _ => {
                    members.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(Some((name, amounts)))
    }
}

/// Any JSON value, parsed as fully as into a `Value` (numbers, escapes, nesting depth) but
/// kept nowhere: what the gateway ships as text must parse at the sessionizer, and
/// skipping over text (as `RawValue` does) checks less.
#[derive(Default)]
struct Checked;

impl<'de> serde::Deserialize<'de> for Checked {
    fn deserialize<D: serde::Deserializer<'de>>(value: D) -> Result<Checked, D::Error> {
        value.deserialize_any(Checked)
    }
}

impl<'de> serde::de::Visitor<'de> for Checked {
    type Value = Checked;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    scalars_read_as_default!();

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut items: A) -> Result<Checked, A::Error> {
        while items.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut members: A) -> Result<Checked, A::Error> {
        while members.next_entry::<Checked, Checked>()?.is_some() {}
        Ok(Checked)
    }
}

pub(crate) fn encode_checked(
    event: &TraceEvent,
    index: Option<usize>,
    limits: &Limits,
) -> Result<Vec<u8>, Refusal> {
    let payload = encode(event, Encoding::Avro).map_err(|error| Refusal {
        status: 400,
        row: index,
        field: None,
        message: format!("cannot be encoded: {error}"),
    })?;
    checked_size(payload, index, limits)
}

/// `payload`, or 413 when it is over the message size limit.
fn checked_size(
    payload: Vec<u8>,
    index: Option<usize>,
    limits: &Limits,
) -> Result<Vec<u8>, Refusal> {
    if payload.len() > limits.max_message_bytes {
        return Err(Refusal {
            status: 413,
            row: index,
            field: None,
            message: format!(
                "the row's record has {} bytes, more than the limit of {}",
                payload.len(),
                limits.max_message_bytes
            ),
        });
    }
    Ok(payload)
}

/// The pipeline id of the path, checked like any id.
///
/// # Errors
/// 400 naming `inferencePipelineId` when it breaks the id limits.
pub fn check_pipeline_id(pipeline_id: &str, limits: &Limits) -> Result<(), Refusal> {
    validate_id("pipeline_id", pipeline_id, limits).map_err(|error| {
        bad_request(
            None,
            "inferencePipelineId",
            format!("inferencePipelineId: {error}"),
        )
    })
}

fn parse_object(body: &[u8]) -> Result<JsonMap, Refusal> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(not_an_object()),
        Err(error) => Err(not_json(&error)),
    }
}

fn not_an_object() -> Refusal {
    bad_request(None, "body", "the body must be a JSON object".to_owned())
}

fn not_json(error: &dyn fmt::Display) -> Refusal {
    bad_request(None, "body", format!("the body is not valid JSON: {error}"))
}

/// An object's members as sent (last of a repeated name wins, as when parsed into a map).
type RawObject<'a> = BTreeMap<String, &'a RawValue>;

/// The body's top-level members, their values kept as text.
fn parse_raw_object(text: &str) -> Result<RawObject<'_>, Refusal> {
    serde_json::from_str(text).map_err(|error| match error.classify() {
        // Valid JSON of another shape.
        serde_json::error::Category::Data => not_an_object(),
        _ => not_json(&error),
    })
}

/// Maps one row to its record, but for the row and its config, which travel as sent:
/// `fields` holds what the record reads of the row (see [`RowFields`]).
fn trace_of_row(
    pipeline_id: &str,
    columns: &Columns,
    index: usize,
    fields: RowFields,
    limits: &Limits,
    now_ms: i64,
) -> Result<TraceEvent, Refusal> {
    let RowFields { read: row, steps } = fields;
    if !row.contains_key(&columns.output) {
        return Err(bad_request(
            Some(index),
            columns.output.clone(),
            format!("the output column `{}` is missing", columns.output),
        ));
    }
    let timestamp_ms = match columns.timestamp.as_deref() {
        None => now_ms,
        Some(column) => match row.get(column) {
            None | Some(Value::Null) => now_ms,
            Some(Value::Number(number)) => match number.as_f64() {
                // Openlayer timestamps are Unix seconds; the record keeps milliseconds.
                Some(seconds) if seconds.is_finite() => (seconds * 1000.0).round() as i64,
                _ => now_ms,
            },
            Some(_) => {
                return Err(bad_request(
                    Some(index),
                    column,
                    format!("column `{column}` must be a Unix timestamp in seconds"),
                ));
            }
        },
    };
    let tokens_column = amount_column(&row, index, columns.tokens.as_deref())?;
    let cost_column = amount_column(&row, index, columns.cost.as_deref())?;
    let mut event = TraceEvent::new(
        steps
            .first_name
            .unwrap_or_else(|| DEFAULT_TRACE_NAME.to_owned()),
        timestamp_ms,
    );
    event.pipeline_id = Some(pipeline_id.to_owned());
    event.inference_id = id_column(
        &row,
        index,
        columns.inference_id.as_deref(),
        "inference_id",
        limits,
    )?;
    event.user_id = id_column(&row, index, columns.user_id.as_deref(), "user_id", limits)?;
    event.session_id = id_column(
        &row,
        index,
        columns.session_id.as_deref(),
        "session_id",
        limits,
    )?;
    event.latency_ms = amount_column(&row, index, columns.latency.as_deref())?;
    event.tokens =
        total(tokens_column, &steps.steps, |step| step.tokens).map(|tokens| tokens.round() as i64);
    event.cost = total(cost_column, &steps.steps, |step| step.cost);
    // Cloned, not moved: a column may be both the output and an input.
    event.output = row.get(&columns.output).cloned().unwrap_or(Value::Null);
    for name in &columns.inputs {
        if let Some(value) = row.get(name) {
            event.inputs.insert(name.clone(), value.clone());
        }
    }
    validate_trace(&event, limits).map_err(|error| Refusal {
        status: 400,
        row: Some(index),
        field: None,
        message: error.to_string(),
    })?;
    Ok(event)
}

/// Maps a data-stream body (`{"config": {..}, "rows": [..]}`) to one record per row.
///
/// # Errors
/// The first problem found, naming the row and column; nothing is returned for the others.
pub fn stream_records(
    pipeline_id: &str,
    body: &[u8],
    limits: &Limits,
    now_ms: i64,
) -> Result<Vec<Outgoing>, Refusal> {
    check_pipeline_id(pipeline_id, limits)?;
    let (config, rows) = body_members(body)?;
    let (config_text, config) = match config.map(|raw| (raw, serde_json::from_str(raw.get()))) {
        Some((raw, Ok(Value::Object(config)))) => (raw.get(), config),
        _ => {
            return Err(bad_request(
                None,
                "config",
                "config must be an object naming at least outputColumnName".to_owned(),
            ));
        }
    };
    let rows: Vec<&RawValue> = match rows {
        Some(Ok(rows)) if !Vec::is_empty(&rows) => rows,
        _ => {
            return Err(bad_request(
                None,
                "rows",
                "rows must be a non-empty list of objects".to_owned(),
            ));
        }
    };
    let columns = Columns::from_config(&config)?;
    rows.into_iter()
        .enumerate()
        .map(|(index, row_text)| {
            let fields = read_row(row_text.get(), &columns).map_err(|_| {
                bad_request(
                    Some(index),
                    "rows",
                    "a row must be a JSON object".to_owned(),
                )
            })?;
            let event = trace_of_row(pipeline_id, &columns, index, fields, limits, now_ms)?;
            let raw = RawRow {
                row: row_text.get(),
                config: config_text,
            };
            Ok(Outgoing {
                destination: Destination::Traces,
                key: event.partition_key().map(str::to_owned),
                payload: checked_size(encode_trace_with_raw_row(&event, raw), Some(index), limits)?,
                inference_id: event.inference_id,
            })
        })
        .collect()
}

/// What a data-stream body's `rows` holds: its rows' texts, or an error when it is no list.
type RawRows<'a> = Result<Vec<&'a RawValue>, serde_json::Error>;

/// A data-stream body's `config` and `rows`, as text, once the whole body is checked to be
/// JSON a parser takes (numbers in range, valid escapes, nesting within serde_json's limit):
/// one more pass over it when it has the expected shape, member by member to tell what is
/// wrong when it has not.
fn body_members(body: &[u8]) -> Result<(Option<&RawValue>, Option<RawRows<'_>>), Refusal> {
    #[derive(serde::Deserialize)]
    struct StreamBody<'a> {
        #[serde(borrow)]
        config: Option<&'a RawValue>,
        #[serde(borrow)]
        rows: Option<Vec<&'a RawValue>>,
    }
    let text = std::str::from_utf8(body).map_err(|error| not_json(&error))?;
    // The whole body as a parser into values would check it: what is refused stays refused.
    serde_json::from_str::<Checked>(text).map_err(|error| not_json(&error))?;
    // A derived struct would also take its members from a list.
    if text.trim_start().starts_with('{')
        && let Ok(body) = serde_json::from_str::<StreamBody<'_>>(text)
    {
        return Ok((body.config, body.rows.map(Ok)));
    }
    let body = parse_raw_object(text)?;
    Ok((
        body.get("config").copied(),
        body.get("rows").map(|raw| serde_json::from_str(raw.get())),
    ))
}

/// Maps a row update (`PUT .../rows?inferenceId=`, body `{"row": {..}, "config": {..} | null}`)
/// to a `row_update` record. `known_key` is the partition key remembered for the row, used
/// when the update itself carries no session or user id.
///
/// # Errors
/// 400 naming `inferenceId`, `row` or `config`.
pub fn update_record(
    pipeline_id: &str,
    inference_id: Option<&str>,
    body: &[u8],
    limits: &Limits,
    now_ms: i64,
    known_key: impl FnOnce(&str) -> Option<String>,
) -> Result<Outgoing, Refusal> {
    check_pipeline_id(pipeline_id, limits)?;
    let inference_id = inference_id.ok_or_else(|| {
        bad_request(
            None,
            "inferenceId",
            "the query parameter inferenceId is required".to_owned(),
        )
    })?;
    validate_id("inference_id", inference_id, limits)
        .map_err(|error| bad_request(None, "inferenceId", format!("inferenceId: {error}")))?;
    let mut body = parse_object(body)?;
    let Some(Value::Object(row)) = body.remove("row") else {
        return Err(bad_request(
            None,
            "row",
            "row must be an object of the columns to set".to_owned(),
        ));
    };
    let config = match body.remove("config") {
        None | Some(Value::Null) => None,
        Some(Value::Object(config)) => Some(config),
        Some(_) => {
            return Err(bad_request(
                None,
                "config",
                "config must be an object or null".to_owned(),
            ));
        }
    };
    let empty = Map::new();
    let named = |key: &str, default: &str| {
        config
            .as_ref()
            .unwrap_or(&empty)
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or(default)
            .to_owned()
    };
    let mut event = TraceEvent::new("row_update", now_ms);
    event.kind = TraceKind::RowUpdate;
    event.pipeline_id = Some(pipeline_id.to_owned());
    event.inference_id = Some(inference_id.to_owned());
    let user_column = named("userIdColumnName", "user_id");
    let session_column = named("sessionIdColumnName", "session_id");
    event.user_id =
        id_column(&row, 0, Some(&user_column), "user_id", limits).map_err(|refusal| Refusal {
            row: None,
            ..refusal
        })?;
    event.session_id =
        id_column(&row, 0, Some(&session_column), "session_id", limits).map_err(|refusal| {
            Refusal {
                row: None,
                ..refusal
            }
        })?;
    event.row = Some(row);
    event.row_config = config;
    let key = event
        .partition_key()
        .map(str::to_owned)
        .or_else(|| known_key(inference_id))
        .unwrap_or_else(|| inference_id.to_owned());
    Ok(Outgoing {
        destination: Destination::Traces,
        key: Some(key),
        payload: encode_checked(&event, None, limits)?,
        inference_id: None,
    })
}

#[cfg(test)]
#[path = "rows_tests.rs"]
mod tests;
