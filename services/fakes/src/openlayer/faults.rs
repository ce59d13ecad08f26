//! Scripted misbehaviour of the Openlayer-compatible server: what a fault is, and the
//! response it turns into.

use axum::Json;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::time::Duration;

use super::handlers::error_response;

/// A scripted misbehaviour for one data-stream request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// 429 with `Retry-After: <seconds>`.
    RateLimitedSecs(u64),
    /// 429 with `retry-after-ms: <milliseconds>`.
    RateLimitedMs(u64),
    /// This status with a JSON error body, e.g. 500, 503, 401.
    Status(u16),
    /// Exactly this response.
    Response {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Wait this long, then handle the request normally.
    Delay(Duration),
}

/// `Some(response)` when the fault answers the request; `Delay` waits and lets it go on.
pub(super) async fn apply_fault(fault: Option<Fault>) -> Option<Response> {
    match fault? {
        Fault::Delay(delay) => {
            tokio::time::sleep(delay).await;
            None
        }
        Fault::RateLimitedSecs(seconds) => Some(
            (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, seconds.to_string())],
                Json(json!({"error": "rate limited"})),
            )
                .into_response(),
        ),
        Fault::RateLimitedMs(millis) => Some(
            (
                StatusCode::TOO_MANY_REQUESTS,
                [(
                    HeaderName::from_static("retry-after-ms"),
                    millis.to_string(),
                )],
                Json(json!({"error": "rate limited"})),
            )
                .into_response(),
        ),
        Fault::Status(status) => {
            let status = StatusCode::from_u16(status).expect("a valid scripted status");
            Some(error_response(
                status,
                status.canonical_reason().unwrap_or("scripted failure"),
            ))
        }
        Fault::Response {
            status,
            headers,
            body,
        } => {
            let mut response = (
                StatusCode::from_u16(status).expect("a valid scripted status"),
                body,
            )
                .into_response();
            for (name, value) in headers {
                response.headers_mut().insert(
                    HeaderName::try_from(name).expect("a valid scripted header name"),
                    HeaderValue::try_from(value).expect("a valid scripted header value"),
                );
            }
            Some(response)
        }
    }
}
