//! Direct Avro binary writer for `TraceEvent`, the producer's hot path.
//!
//! apache-avro's serde writer looks every field up in the schema at run time and needs an
//! intermediate struct with owned strings and hash maps; on the request path's emitter thread
//! that cost more than the Kafka send itself. This writer emits the same bytes straight from
//! the record, field by field in schema order. The tests decode its output with apache-avro
//! against the checked-in schema, so the two cannot disagree unnoticed.

use crate::record::{JsonMap, Step, TraceEvent};
use serde_json::Value;

/// Zig-zag varint, as Avro writes `int` and `long`.
fn long(out: &mut Vec<u8>, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    while zigzag >= 0x80 {
        out.push((zigzag as u8) | 0x80);
        zigzag >>= 7;
    }
    out.push(zigzag as u8);
}

fn length(out: &mut Vec<u8>, len: usize) {
    // Lengths are bounded by memory; i64 cannot overflow on any real input.
    long(out, i64::try_from(len).unwrap_or(i64::MAX));
}

fn bytes(out: &mut Vec<u8>, value: &[u8]) {
    length(out, value.len());
    out.extend_from_slice(value);
}

fn string(out: &mut Vec<u8>, value: &str) {
    bytes(out, value.as_bytes());
}

fn double(out: &mut Vec<u8>, value: f64) {
    out.extend_from_slice(&value.to_le_bytes());
}

/// `["null", T]` unions: branch 0 is null, branch 1 the value.
fn optional<T>(out: &mut Vec<u8>, value: Option<T>, write: impl FnOnce(&mut Vec<u8>, T)) {
    match value {
        None => long(out, 0),
        Some(value) => {
            long(out, 1);
            write(out, value);
        }
    }
}

/// Whether serde_json writes `byte` escaped inside a string: control characters, `"` and `\`.
/// Everything else, non-ASCII UTF-8 included, it copies as is.
const fn needs_escape(byte: u8) -> bool {
    byte < 0x20 || byte == b'"' || byte == b'\\'
}

/// Whether `text` can be written between quotes as it is. Checks 16 bytes at a time without
/// an early exit inside a chunk, which the compiler turns into a few vector instructions;
/// serde_json looks each byte up in a table instead.
fn escape_free(text: &str) -> bool {
    let mut chunks = text.as_bytes().chunks_exact(16);
    for chunk in &mut chunks {
        if chunk
            .iter()
            .fold(false, |any, &byte| any | needs_escape(byte))
        {
            return false;
        }
    }
    !chunks.remainder().iter().copied().any(needs_escape)
}

/// A JSON string, as serde_json writes it: strings needing no escape (nearly all of them)
/// are copied whole, the others go through serde_json.
fn json_string(out: &mut Vec<u8>, text: &str) {
    if escape_free(text) {
        out.reserve(text.len() + 2);
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    } else {
        // Writing a string into a Vec cannot fail.
        let _infallible = serde_json::to_writer(&mut *out, text);
    }
}

/// Compact JSON of `value`, byte for byte what `serde_json::to_writer` writes (objects in the
/// map's own order, numbers by serde_json), with the string fast path of [`json_string`].
fn write_json(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        // Writing a number into a Vec cannot fail.
        Value::Number(number) => {
            let _infallible = serde_json::to_writer(&mut *out, number);
        }
        Value::String(text) => json_string(out, text),
        Value::Array(items) => write_json_array(out, items),
        Value::Object(map) => write_json_object(out, map),
    }
}

fn write_json_array(out: &mut Vec<u8>, items: &[Value]) {
    out.push(b'[');
    for (index, item) in items.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        write_json(out, item);
    }
    out.push(b']');
}

fn write_json_object(out: &mut Vec<u8>, map: &JsonMap) {
    out.push(b'{');
    for (index, (key, item)) in map.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        json_string(out, key);
        out.push(b':');
        write_json(out, item);
    }
    out.push(b'}');
}

/// JSON text of `value`, length-prefixed. A string needing no escape is written straight to
/// `out` (its length is known); anything else goes through `scratch`, reused to avoid an
/// allocation per value.
fn json_text(out: &mut Vec<u8>, value: &Value, scratch: &mut Vec<u8>) {
    if let Value::String(text) = value
        && escape_free(text)
    {
        length(out, text.len() + 2);
        out.reserve(text.len() + 2);
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
        return;
    }
    scratch.clear();
    write_json(scratch, value);
    bytes(out, scratch);
}

/// `{"type": "map", "values": "string"}` holding JSON text.
fn json_map(out: &mut Vec<u8>, map: &JsonMap, scratch: &mut Vec<u8>) {
    if !map.is_empty() {
        length(out, map.len());
        for (key, value) in map {
            string(out, key);
            json_text(out, value, scratch);
        }
    }
    long(out, 0);
}

fn optional_json(out: &mut Vec<u8>, value: &Value, scratch: &mut Vec<u8>) {
    if value.is_null() {
        long(out, 0);
    } else {
        long(out, 1);
        json_text(out, value, scratch);
    }
}

fn steps(out: &mut Vec<u8>, steps: &[Step], scratch: &mut Vec<u8>) {
    if !steps.is_empty() {
        length(out, steps.len());
        for step in steps {
            write_step(out, step, scratch);
        }
    }
    long(out, 0);
}

fn write_step(out: &mut Vec<u8>, step: &Step, scratch: &mut Vec<u8>) {
    string(out, &step.id);
    string(out, &step.name);
    string(out, &step.step_type);
    json_map(out, &step.inputs, scratch);
    optional_json(out, &step.output, scratch);
    long(out, step.start_time_ms);
    long(out, step.end_time_ms);
    double(out, step.latency_ms);
    optional(out, step.tokens, long);
    optional(out, step.prompt_tokens, long);
    optional(out, step.completion_tokens, long);
    optional(out, step.cost, double);
    optional(out, step.model.as_deref(), string);
    json_map(out, &step.metadata, scratch);
    self::steps(out, &step.steps, scratch);
    optional_json_array(out, step.documents.as_deref(), scratch);
    optional(out, step.provider.as_deref(), string);
    optional_json_object(out, step.model_parameters.as_ref(), scratch);
    optional_json(out, &step.raw_output, scratch);
}

/// Appends the Avro datum of `event` (current `TraceEvent` schema) to `out`.
pub(crate) fn write_trace_datum(event: &TraceEvent, out: &mut Vec<u8>) {
    write_trace_datum_with(event, None, out);
}

/// As [`write_trace_datum`], the `row` and `row_config` fields written from JSON text as
/// given (`raw`) instead of `event.row` and `event.row_config`.
pub(crate) fn write_trace_datum_with(
    event: &TraceEvent,
    raw: Option<super::avro::RawRow<'_>>,
    out: &mut Vec<u8>,
) {
    let mut scratch = Vec::with_capacity(256);
    long(out, i64::from(event.schema_version));
    optional(out, event.inference_id.as_deref(), string);
    optional(out, event.pipeline_id.as_deref(), string);
    optional(out, event.user_id.as_deref(), string);
    optional(out, event.session_id.as_deref(), string);
    string(out, event.kind.as_str());
    long(out, event.timestamp_ms);
    string(out, &event.name);
    json_map(out, &event.inputs, &mut scratch);
    optional_json(out, &event.output, &mut scratch);
    optional(out, event.latency_ms, double);
    optional(out, event.tokens, long);
    optional(out, event.prompt_tokens, long);
    optional(out, event.completion_tokens, long);
    optional(out, event.cost, double);
    optional(out, event.model.as_deref(), string);
    json_map(out, &event.metadata, &mut scratch);
    steps(out, &event.steps, &mut scratch);
    match raw {
        None => {
            optional_json_object(out, event.row.as_ref(), &mut scratch);
            optional_json_object(out, event.row_config.as_ref(), &mut scratch);
        }
        Some(raw) => {
            for text in [raw.row, raw.config] {
                long(out, 1);
                string(out, text);
            }
        }
    }
}

/// `["null", "string"]` holding the JSON text of an array.
fn optional_json_array(out: &mut Vec<u8>, items: Option<&[Value]>, scratch: &mut Vec<u8>) {
    match items {
        None => long(out, 0),
        Some(items) => {
            long(out, 1);
            scratch.clear();
            write_json_array(scratch, items);
            bytes(out, scratch);
        }
    }
}

/// `["null", "string"]` holding the JSON text of an object.
fn optional_json_object(out: &mut Vec<u8>, map: Option<&JsonMap>, scratch: &mut Vec<u8>) {
    match map {
        None => long(out, 0),
        Some(map) => {
            long(out, 1);
            scratch.clear();
            write_json_object(scratch, map);
            bytes(out, scratch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Strings weighted towards what needs escaping: quotes, backslashes, control
    /// characters, DEL, non-ASCII and astral characters, at every position of a 16-byte chunk.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[a-z \"\\\\\u{0}-\u{1f}\u{7f}é€😀]{0,40}",
            "[a-z]{0,40}",
        ]
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            text().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::vec((text(), inner), 0..8)
                    .prop_map(|entries| Value::Object(entries.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn json_writer_matches_serde_json_byte_for_byte(value in json_value()) {
            let expected = serde_json::to_vec(&value).expect("serializes");
            let mut written = Vec::new();
            write_json(&mut written, &value);
            prop_assert_eq!(&written, &expected);
            // Length-prefixed as the Avro string holding it.
            let mut framed = Vec::new();
            json_text(&mut framed, &value, &mut Vec::new());
            let mut prefix = Vec::new();
            length(&mut prefix, expected.len());
            prop_assert_eq!(&framed[..prefix.len()], &prefix[..]);
            prop_assert_eq!(&framed[prefix.len()..], &expected[..]);
        }

        #[test]
        fn escape_free_agrees_with_serde_json(text in text()) {
            let escaped = serde_json::to_string(&text).expect("serializes");
            let copied = format!("\"{text}\"");
            prop_assert_eq!(escape_free(&text), escaped == copied);
        }
    }

    #[test]
    fn escapes_every_byte_serde_json_escapes_at_every_chunk_position() {
        for byte in 0u8..0x80 {
            for position in 0..40 {
                let mut text = "a".repeat(40);
                text.replace_range(position..=position, &char::from(byte).to_string());
                let mut written = Vec::new();
                json_string(&mut written, &text);
                let expected = serde_json::to_vec(&text).expect("serializes");
                assert_eq!(written, expected, "byte {byte:#04x} at {position}");
            }
        }
    }

    #[test]
    fn a_raw_row_decodes_as_the_row_and_config_it_holds() {
        let row_text = r#"{ "output": "Hi \u00e9", "steps": [{"name": "chat", "tokens": 1.5}],
            "user_id": 42, "dup": 1, "dup": 2 }"#;
        let config_text = r#"{"outputColumnName":"output"}"#;
        let mut event = TraceEvent::new("chat", 1_700_000_000_000);
        event.session_id = Some("s-1".to_owned());
        let raw = super::super::avro::RawRow {
            row: row_text,
            config: config_text,
        };
        let bytes = super::super::avro::encode_trace_with_raw_row(&event, raw);
        let decoded = crate::Decoder::new(crate::Limits::default())
            .decode(&bytes)
            .expect("decodes");
        event.row = serde_json::from_str(row_text).expect("an object");
        event.row_config = serde_json::from_str(config_text).expect("an object");
        assert_eq!(decoded, event);
        // Shipped as sent: the text itself, spacing and duplicate keys included.
        assert!(
            bytes
                .windows(row_text.len())
                .any(|window| window == row_text.as_bytes())
        );
    }

    #[test]
    fn writes_zig_zag_varints_as_the_avro_spec_shows() {
        // Examples from the Avro specification's table of int/long encodings.
        for (value, expected) in [
            (0_i64, vec![0x00]),
            (-1, vec![0x01]),
            (1, vec![0x02]),
            (-2, vec![0x03]),
            (2, vec![0x04]),
            (-64, vec![0x7f]),
            (64, vec![0x80, 0x01]),
        ] {
            let mut out = Vec::new();
            long(&mut out, value);
            assert_eq!(out, expected, "value {value}");
        }
        let mut out = Vec::new();
        long(&mut out, i64::MIN);
        assert_eq!(out.len(), 10);
    }
}
