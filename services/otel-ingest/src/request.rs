//! OTLP trace export requests, and their spans grouped by trace.

use crate::attributes::hex;
use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message as _;
use std::collections::BTreeMap;

pub use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};

/// How a request body is encoded (OTLP/HTTP's two content types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `application/x-protobuf`; also the Collector's Kafka exporter's `otlp_proto`.
    Protobuf,
    /// `application/json`: OTLP's JSON mapping (ids in hex, camelCase keys).
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("not an OTLP protobuf ExportTraceServiceRequest: {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error("not an OTLP JSON ExportTraceServiceRequest: {0}")]
    Json(#[from] serde_json::Error),
}

impl RequestError {
    /// A label for metrics and dead letters.
    pub fn reason(&self) -> &'static str {
        match self {
            RequestError::Protobuf(_) => "otlp_protobuf",
            RequestError::Json(_) => "otlp_json",
        }
    }
}

/// Decodes a whole request. Strings that are not UTF-8 fail the decode (protobuf requires
/// them to be).
pub fn decode(body: &[u8], encoding: Encoding) -> Result<ExportTraceServiceRequest, RequestError> {
    Ok(match encoding {
        Encoding::Protobuf => ExportTraceServiceRequest::decode(body)?,
        Encoding::Json => serde_json::from_slice(body)?,
    })
}

/// A span with what it inherits from its place in the request.
#[derive(Debug, Clone, Copy)]
pub struct SpanRef<'a> {
    pub span: &'a Span,
    /// Its resource's attributes (`service.name`, ...).
    pub resource: &'a [KeyValue],
    pub scope: Option<&'a InstrumentationScope>,
}

/// The spans of a request, by trace id (lowercase hex), and those that belong to no trace.
#[derive(Debug, Default)]
pub struct TraceSpans<'a> {
    pub traces: BTreeMap<String, Vec<SpanRef<'a>>>,
    /// Spans without a valid trace id (16 bytes, not all zero): they cannot be assembled.
    pub without_trace_id: usize,
}

/// Groups a request's spans by trace id, in the order they came.
pub fn group_by_trace(request: &ExportTraceServiceRequest) -> TraceSpans<'_> {
    let mut grouped = TraceSpans::default();
    for resource_spans in &request.resource_spans {
        let resource = resource_spans
            .resource
            .as_ref()
            .map_or(&[][..], |resource| &resource.attributes[..]);
        for scope_spans in &resource_spans.scope_spans {
            for span in &scope_spans.spans {
                if !valid_id(&span.trace_id, 16) {
                    grouped.without_trace_id += 1;
                    continue;
                }
                grouped
                    .traces
                    .entry(hex(&span.trace_id))
                    .or_default()
                    .push(SpanRef {
                        span,
                        resource,
                        scope: scope_spans.scope.as_ref(),
                    });
            }
        }
    }
    grouped
}

/// A request's spans as one request per trace id (lowercase hex), each span keeping its
/// resource and scope, in the order they came; spans without a valid trace id go in a request
/// of their own (empty when there are none). Moves the spans: nothing but resources and scopes
/// is copied.
pub fn split_by_trace(
    request: ExportTraceServiceRequest,
) -> (
    BTreeMap<String, ExportTraceServiceRequest>,
    ExportTraceServiceRequest,
) {
    let mut traces: BTreeMap<String, ExportTraceServiceRequest> = BTreeMap::new();
    let mut without_trace_id = ExportTraceServiceRequest::default();
    for resource_spans in request.resource_spans {
        let ResourceSpans {
            resource,
            scope_spans,
            schema_url,
        } = resource_spans;
        // Each request this resource's spans go to gets one ResourceSpans for it.
        let mut opened: BTreeMap<Option<String>, usize> = BTreeMap::new();
        for scope_spans in scope_spans {
            let ScopeSpans {
                scope,
                spans,
                schema_url: scope_schema_url,
            } = scope_spans;
            let mut scoped: BTreeMap<Option<String>, Vec<Span>> = BTreeMap::new();
            for span in spans {
                let trace_id = valid_id(&span.trace_id, 16).then(|| hex(&span.trace_id));
                scoped.entry(trace_id).or_default().push(span);
            }
            for (trace_id, spans) in scoped {
                let target = match &trace_id {
                    Some(trace_id) => traces.entry(trace_id.clone()).or_default(),
                    None => &mut without_trace_id,
                };
                let index = *opened.entry(trace_id).or_insert_with(|| {
                    target.resource_spans.push(ResourceSpans {
                        resource: resource.clone(),
                        scope_spans: Vec::new(),
                        schema_url: schema_url.clone(),
                    });
                    target.resource_spans.len() - 1
                });
                target.resource_spans[index].scope_spans.push(ScopeSpans {
                    scope: scope.clone(),
                    spans,
                    schema_url: scope_schema_url.clone(),
                });
            }
        }
    }
    (traces, without_trace_id)
}

/// An OTLP id: exactly `len` bytes, not all zero.
pub(crate) fn valid_id(id: &[u8], len: usize) -> bool {
    id.len() == len && id.iter().any(|byte| *byte != 0)
}
