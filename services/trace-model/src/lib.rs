//! Trace records, their Avro and JSON codecs, and the limits every trace must respect.
//!
//! # Layout
//! - [`record`]: `TraceEvent`, `Step`, `SessionSummary` as the code sees them
//! - [`codec`]: encodings on the wire and the decoder that detects them
//!   - [`codec::avro`]: schemas from `schemas/`, single-object encoding
//!   - [`codec::json`]: the same record as JSON
//!   - [`codec::registry`]: Schema Registry client for Confluent framing
//! - [`validate`]: id, number and step limits with bounded reason codes
//! - [`routing`]: the partition a trace belongs in (its session's murmur2 partition)
//! - [`secret`]: a string (an API key) that never prints

pub mod codec;
pub mod record;
pub mod routing;
pub mod secret;
pub mod validate;

pub use codec::{DecodeError, Decoder, Encoding, encode};
pub use record::{JsonMap, SessionSummary, Step, TraceEvent, TraceKind};
pub use validate::{Limits, ValidationError};
