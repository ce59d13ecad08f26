//! OTLP/HTTP traces: `POST /v1/traces`, what the OpenTelemetry SDKs' exporters send with
//! `OTEL_EXPORTER_OTLP_ENDPOINT=http://<gateway>:<port>` (and the key in
//! `OTEL_EXPORTER_OTLP_HEADERS=Authorization=Bearer <key>`).
//!
//! The body is an `ExportTraceServiceRequest`, protobuf (`application/x-protobuf`) or JSON
//! (`application/json`), plain or gzip. Its spans are grouped by trace, then either
//! - forwarded (`kafka.spans_topic` set): one `otlp_proto` message per trace, keyed by trace
//!   id, to the spans topic the sessionizer assembles traces from, across requests; or
//! - assembled here into one record per trace (`otel_ingest`), keyed by session as every
//!   trace is. The spans of one trace must then come in one request: spans of a trace
//!   exported in several requests are each assembled on their own (a part without its root
//!   is refused).
//!
//! The answer, in the request's encoding, comes once Kafka acknowledged every record (or
//! once all are queued, with `http.answer_after = "queued"`): an
//! `ExportTraceServiceResponse`, whose `partial_success` counts the spans refused (no trace
//! id, beyond the limits, and when assembling here no single root or a cycle) with the first
//! reason.
//!
//! Errors: 415 for another content type, 400 for a body that does not decode (or does not
//! inflate), 413 for a body over `http.max_body_bytes` before or after inflating, 503 with
//! `Retry-After` when Kafka does not acknowledge while the request waits (OTLP exporters
//! retry it).

use crate::http::{ApiError, AppState, body_bytes, produce};
use crate::rows::{Destination, Outgoing, Refusal, encode_checked};
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use otel_ingest::request::{ExportTracePartialSuccess, ExportTraceServiceResponse};
use otel_ingest::{Encoding, assemble, decode, group_by_trace, split_by_trace};
use prost::Message as _;
use std::io::Read as _;
use trace_model::Limits;

pub(crate) async fn traces(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let encoding = encoding(&headers)?;
    let gzip = gzip(&headers)?;
    let body = body_bytes(&state, body)?;
    let (max_body_bytes, limits) = (state.max_body_bytes, state.limits);
    let forward = state.forward_spans;
    // Inflating, decoding and assembling cost CPU in proportion to the body: off the async
    // workers. The body and its decoded form are gone before the wait for Kafka.
    let (records, rejected) = tokio::task::spawn_blocking(move || {
        let body = if gzip {
            inflate(&body, max_body_bytes)?
        } else {
            body
        };
        if forward {
            spans_of(&body, encoding, &limits)
        } else {
            records_of(&body, encoding, &limits)
        }
    })
    .await
    .map_err(|_| ApiError::Unavailable {
        reason: "the request could not be processed",
        retry_after: state.retry_after,
    })??;
    for (reason, spans) in &rejected.by_reason {
        state
            .metrics
            .otlp_spans_rejected
            .with_label_values(&[reason])
            .inc_by(*spans as u64);
    }
    if !records.is_empty() {
        let kind = if forward { "otel_spans" } else { "otel_trace" };
        produce(&state, records, kind).await?;
    }
    let response = ExportTraceServiceResponse {
        partial_success: (rejected.spans > 0).then(|| ExportTracePartialSuccess {
            rejected_spans: i64::try_from(rejected.spans).unwrap_or(i64::MAX),
            error_message: rejected.first_message.unwrap_or_default(),
        }),
    };
    Ok(respond(encoding, &response))
}

/// The request's traces as records for the traces topic, in the order they started, and the
/// spans refused.
fn records_of(
    body: &[u8],
    encoding: Encoding,
    limits: &Limits,
) -> Result<(Vec<Outgoing>, Rejected), ApiError> {
    let request =
        decode(body, encoding).map_err(|error| refused(400, "body", error.to_string()))?;
    let grouped = group_by_trace(&request);
    let mut rejected = Rejected::default();
    rejected.add(grouped.without_trace_id, "otel_trace_id", || {
        "spans without a valid trace id".to_owned()
    });
    let mut events = Vec::with_capacity(grouped.traces.len());
    for (trace_id, spans) in &grouped.traces {
        match assemble(trace_id, spans, limits) {
            Ok(event) => events.push((event, spans.len())),
            Err(error) => rejected.add(spans.len(), error.reason(), || {
                format!("trace {trace_id}: {error}")
            }),
        }
    }
    // A session's turns are numbered in the order they reach its partition: produce the
    // request's traces in the order they started (the map above is by trace id).
    events.sort_by_key(|(event, _)| event.timestamp_ms);
    let mut records = Vec::with_capacity(events.len());
    for (event, num_spans) in events {
        let trace_id = event.inference_id.clone().unwrap_or_default();
        match encode_checked(&event, None, limits) {
            Ok(payload) => records.push(Outgoing {
                destination: Destination::Traces,
                key: event.partition_key().map(str::to_owned),
                payload,
                inference_id: event.inference_id,
            }),
            Err(refusal) => rejected.add(num_spans, "too_large", || {
                format!("trace {trace_id}: {refusal}")
            }),
        }
    }
    Ok((records, rejected))
}

/// The request's spans as one `otlp_proto` message per trace for the spans topic, keyed by
/// trace id, and the spans refused. Whether a trace has one root and no cycle is the
/// assembler's to find: its other spans may come in later requests.
fn spans_of(
    body: &[u8],
    encoding: Encoding,
    limits: &Limits,
) -> Result<(Vec<Outgoing>, Rejected), ApiError> {
    let request =
        decode(body, encoding).map_err(|error| refused(400, "body", error.to_string()))?;
    let (traces, without_trace_id) = split_by_trace(request);
    let mut rejected = Rejected::default();
    rejected.add(count_spans(&without_trace_id), "otel_trace_id", || {
        "spans without a valid trace id".to_owned()
    });
    let mut records = Vec::with_capacity(traces.len());
    for (trace_id, spans) in traces {
        let num_spans = count_spans(&spans);
        // The root and `limits.max_steps` steps: more in one request can never assemble.
        if num_spans > limits.max_steps.saturating_add(1) {
            rejected.add(num_spans, "too_many_steps", || {
                format!(
                    "trace {trace_id}: {num_spans} spans, more than the root and {} steps",
                    limits.max_steps
                )
            });
            continue;
        }
        let payload = spans.encode_to_vec();
        if payload.len() > limits.max_message_bytes {
            rejected.add(num_spans, "too_large", || {
                format!(
                    "trace {trace_id}: its spans take {} bytes, more than the limit of {}",
                    payload.len(),
                    limits.max_message_bytes
                )
            });
            continue;
        }
        records.push(Outgoing {
            destination: Destination::Spans,
            key: Some(trace_id),
            payload,
            inference_id: None,
        });
    }
    Ok((records, rejected))
}

fn count_spans(request: &otel_ingest::request::ExportTraceServiceRequest) -> usize {
    request
        .resource_spans
        .iter()
        .flat_map(|resource| &resource.scope_spans)
        .map(|scope| scope.spans.len())
        .sum()
}

/// Spans refused so far, by reason, and the first message (OTLP reports one).
#[derive(Debug, Default)]
struct Rejected {
    spans: usize,
    by_reason: Vec<(&'static str, usize)>,
    first_message: Option<String>,
}

impl Rejected {
    fn add(&mut self, spans: usize, reason: &'static str, message: impl FnOnce() -> String) {
        if spans == 0 {
            return;
        }
        self.spans += spans;
        match self
            .by_reason
            .iter_mut()
            .find(|(known, _)| *known == reason)
        {
            Some((_, count)) => *count += spans,
            None => self.by_reason.push((reason, spans)),
        }
        self.first_message.get_or_insert_with(message);
    }
}

fn refused(status: u16, field: &str, message: String) -> ApiError {
    ApiError::Refused(Refusal {
        status,
        row: None,
        field: Some(field.to_owned()),
        message,
    })
}

fn encoding(headers: &HeaderMap) -> Result<Encoding, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let media_type = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match media_type.as_str() {
        "application/x-protobuf" => Ok(Encoding::Protobuf),
        "application/json" => Ok(Encoding::Json),
        _ => Err(refused(
            415,
            "content-type",
            format!(
                "content type {content_type:?}: OTLP/HTTP takes application/x-protobuf or \
                 application/json"
            ),
        )),
    }
}

/// Whether the body is gzip (`Content-Encoding`); another coding is refused with 415.
fn gzip(headers: &HeaderMap) -> Result<bool, ApiError> {
    let content_encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|value| value.to_str().ok())
        .map(|value| value.trim().to_ascii_lowercase());
    match content_encoding.as_deref() {
        None | Some("" | "identity") => Ok(false),
        Some("gzip") => Ok(true),
        Some(other) => Err(refused(
            415,
            "content-encoding",
            format!("content encoding {other:?}: gzip or none"),
        )),
    }
}

/// The gzip body inflated (every member, as gzip allows several): the size limit holds for
/// the inflated bytes too, checked while inflating (a small bomb stops at the limit).
fn inflate(body: &[u8], max_bytes: usize) -> Result<Bytes, ApiError> {
    let mut inflated = Vec::new();
    let limit = u64::try_from(max_bytes)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    flate2::read::MultiGzDecoder::new(body)
        .take(limit)
        .read_to_end(&mut inflated)
        .map_err(|error| {
            refused(
                400,
                "body",
                format!("the gzip body does not inflate: {error}"),
            )
        })?;
    if inflated.len() > max_bytes {
        return Err(ApiError::BodyTooLarge { limit: max_bytes });
    }
    Ok(Bytes::from(inflated))
}

fn respond(encoding: Encoding, response: &ExportTraceServiceResponse) -> Response {
    let (content_type, body) = match encoding {
        Encoding::Protobuf => ("application/x-protobuf", response.encode_to_vec()),
        Encoding::Json => (
            "application/json",
            serde_json::to_vec(response).unwrap_or_else(|_| b"{}".to_vec()),
        ),
    };
    let mut answer = (StatusCode::OK, body).into_response();
    answer
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    answer
}
