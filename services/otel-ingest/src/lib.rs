//! OpenTelemetry in: OTLP trace export requests from GenAI services become trace records.
//!
//! - [`request`]: an `ExportTraceServiceRequest` in protobuf or JSON, as the SDKs' OTLP/HTTP
//!   exporters send it and the Collector's Kafka exporter (`otlp_proto`) writes it; its spans
//!   grouped by trace id.
//! - [`genai`]: one span's GenAI semantic-convention attributes as step fields.
//! - [`assemble`]: the spans of one trace as one [`trace_model::TraceEvent`]: the root span
//!   is the trace, the others nest as steps under their parents.
//!
//! The mapping is documented as a table in `docs/opentelemetry.md`.

pub mod assemble;
pub mod attributes;
pub mod genai;
pub mod request;

pub use assemble::{AssemblyError, assemble};
pub use request::{
    Encoding, RequestError, SpanRef, TraceSpans, decode, group_by_trace, split_by_trace,
};
