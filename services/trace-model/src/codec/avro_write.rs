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

/// JSON text of `value`, length-prefixed. `scratch` is reused to avoid an allocation per value.
fn json_text(out: &mut Vec<u8>, value: &Value, scratch: &mut Vec<u8>) {
    scratch.clear();
    // Writing a Value into a Vec cannot fail.
    let _infallible = serde_json::to_writer(&mut *scratch, value);
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
}

/// Appends the Avro datum of `event` (current `TraceEvent` schema) to `out`.
pub(crate) fn write_trace_datum(event: &TraceEvent, out: &mut Vec<u8>) {
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
    optional_json_object(out, event.row.as_ref(), &mut scratch);
    optional_json_object(out, event.row_config.as_ref(), &mut scratch);
}

/// `["null", "string"]` holding the JSON text of an object.
fn optional_json_object(out: &mut Vec<u8>, map: Option<&JsonMap>, scratch: &mut Vec<u8>) {
    match map {
        None => long(out, 0),
        Some(map) => {
            long(out, 1);
            scratch.clear();
            // Writing a map into a Vec cannot fail.
            let _infallible = serde_json::to_writer(&mut *scratch, map);
            bytes(out, scratch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
