//! JSON form of a trace: the record serialized with the same field names as the Avro schema,
//! for producers that cannot link Avro.

use super::DecodeError;
use crate::record::TraceEvent;
use crate::validate::Limits;

/// JSON bytes of a trace.
pub fn encode_trace(event: &TraceEvent) -> Vec<u8> {
    // Only maps with non-string keys or failing `Serialize` impls make serde_json fail;
    // the record has neither.
    #[allow(clippy::expect_used)]
    serde_json::to_vec(event).expect("trace records always serialize")
}

/// Parses one JSON object into a trace (validation is the caller's).
pub(crate) fn decode_trace(bytes: &[u8], limits: &Limits) -> Result<TraceEvent, DecodeError> {
    let text = std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8)?;
    serde_json::from_str(text).map_err(|error| {
        // serde_json stops at 128 nested containers (a step is two: object and array).
        if error.to_string().starts_with("recursion limit exceeded") {
            DecodeError::NestingTooDeep {
                limit: limits.max_step_depth,
            }
        } else {
            DecodeError::Json(error)
        }
    })
}
