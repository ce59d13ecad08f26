//! The Openlayer-compatible server's endpoints, checking requests the way the real API does:
//! data stream, row update, and pipeline retrieval.

use super::Shared;
use super::faults::apply_fault;
use super::records::{IncomingRequest, RecordedRequest, RowUpdate};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

pub(super) async fn data_stream(
    State(shared): State<Arc<Shared>>,
    Path(pipeline_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let arrived = Instant::now();
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let config = body_field(parsed.as_ref(), "config");
    let rows = body_field(parsed.as_ref(), "rows")
        .and_then(|rows| rows.as_array().cloned())
        .unwrap_or_default();
    let response =
        answer_data_stream(&shared, &pipeline_id, &headers, &body, parsed.as_ref()).await;
    let recorded = RecordedRequest {
        pipeline_id,
        headers,
        body,
        config,
        rows,
        status: response.status().as_u16(),
        arrived,
    };
    shared.journal_if_accepted(recorded.accepted(), || {
        json!({
            "request": "data-stream",
            "pipeline_id": recorded.pipeline_id,
            "config": recorded.config,
            "rows": recorded.rows,
        })
    });
    shared.records().requests.push(recorded);
    response
}

async fn answer_data_stream(
    shared: &Shared,
    pipeline_id: &str,
    headers: &HeaderMap,
    body: &Bytes,
    parsed: Option<&Value>,
) -> Response {
    if !shared.authorized(headers) {
        return error_response(StatusCode::UNAUTHORIZED, "invalid or missing api key");
    }
    let (fault, latency, max_body_bytes, responder, reject_row) = {
        let mut behaviour = shared.behaviour();
        (
            behaviour.faults.pop_front(),
            behaviour.latency,
            behaviour.max_body_bytes,
            behaviour.responder.clone(),
            behaviour.reject_row.clone(),
        )
    };
    if let Some(response) = apply_fault(fault).await {
        return response;
    }
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some(limit) = max_body_bytes
        && body.len() > limit
    {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            Json(json!({"error": "request body too large", "limit": limit, "size": body.len()})),
        )
            .into_response();
    }
    if !is_json(headers) {
        return error_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content type must be application/json",
        );
    }
    let Some(parsed) = parsed else {
        return error_response(StatusCode::BAD_REQUEST, "body is not valid json");
    };
    let (config, rows) = match check_data_stream_body(parsed) {
        Ok(checked) => checked,
        Err(message) => return error_response(StatusCode::BAD_REQUEST, message),
    };
    if let Some(responder) = responder {
        let index = shared.records().requests.len();
        let incoming = IncomingRequest {
            pipeline_id,
            headers,
            body_len: body.len(),
            config,
            rows,
            index,
        };
        if let Some(response) = apply_fault(responder(&incoming)).await {
            return response;
        }
    }
    if let Some(reject_row) = reject_row {
        let refused: Vec<Value> = rows
            .iter()
            .enumerate()
            .filter(|(_, row)| reject_row(row))
            .map(|(index, row)| json!({"index": index, "inferenceId": row.get("inferenceId")}))
            .collect();
        if !refused.is_empty() {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": "invalid rows", "rows": refused})),
            )
                .into_response();
        }
    }
    Json(json!({"success": true})).into_response()
}

/// The checks the real API makes on a data-stream body: a `config` object naming the output
/// column, and a non-empty array of row objects.
fn check_data_stream_body(parsed: &Value) -> Result<(&Value, &[Value]), &'static str> {
    let config = parsed
        .get("config")
        .filter(|config| config.is_object())
        .ok_or("`config` must be an object")?;
    if !config.get("outputColumnName").is_some_and(Value::is_string) {
        return Err("`config.outputColumnName` must be a string");
    }
    let rows = parsed
        .get("rows")
        .and_then(Value::as_array)
        .ok_or("`rows` must be an array")?;
    if rows.is_empty() {
        return Err("`rows` must not be empty");
    }
    if !rows.iter().all(Value::is_object) {
        return Err("every row must be an object");
    }
    Ok((config, rows))
}

/// `GET /inference-pipelines/{id}` (the SDK's `inference_pipelines.retrieve`): 401 for a
/// wrong key, 404 for an unknown pipeline, else the pipeline.
pub(super) async fn retrieve_pipeline(
    State(shared): State<Arc<Shared>>,
    Path(pipeline_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let known = shared
        .behaviour()
        .known_pipelines
        .as_ref()
        .is_none_or(|known| known.contains(&pipeline_id));
    let response = if !shared.authorized(&headers) {
        error_response(StatusCode::UNAUTHORIZED, "invalid or missing api key")
    } else if !known {
        error_response(StatusCode::NOT_FOUND, "inference pipeline not found")
    } else {
        Json(json!({"id": pipeline_id, "name": "test pipeline"})).into_response()
    };
    shared
        .records()
        .retrieved
        .push((pipeline_id, response.status().as_u16()));
    response
}

pub(super) async fn update_row(
    State(shared): State<Arc<Shared>>,
    Path(pipeline_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let arrived = Instant::now();
    let inference_id = query.get("inferenceId").cloned();
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let row = body_field(parsed.as_ref(), "row");
    let config = body_field(parsed.as_ref(), "config");
    let response = if !shared.authorized(&headers) {
        error_response(StatusCode::UNAUTHORIZED, "invalid or missing api key")
    } else if !is_json(&headers) {
        error_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content type must be application/json",
        )
    } else if inference_id.as_deref().is_none_or(str::is_empty) {
        error_response(
            StatusCode::BAD_REQUEST,
            "query parameter `inferenceId` is required",
        )
    } else if !row.as_ref().is_some_and(Value::is_object) {
        error_response(StatusCode::BAD_REQUEST, "`row` must be an object")
    } else if !config
        .as_ref()
        .is_none_or(|config| config.is_object() || config.is_null())
    {
        error_response(
            StatusCode::BAD_REQUEST,
            "`config` must be an object or null",
        )
    } else {
        Json(json!({"success": true})).into_response()
    };
    let update = RowUpdate {
        pipeline_id,
        inference_id,
        row,
        config,
        status: response.status().as_u16(),
        arrived,
    };
    shared.journal_if_accepted(response.status().is_success(), || {
        json!({
            "request": "row-update",
            "pipeline_id": update.pipeline_id,
            "inference_id": update.inference_id,
            "row": update.row,
        })
    });
    shared.records().updates.push(update);
    response
}

/// `key` of a JSON body, when the body was JSON with one.
fn body_field(parsed: Option<&Value>, key: &str) -> Option<Value> {
    parsed.and_then(|parsed| parsed.get(key)).cloned()
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| {
            value.split(';').next().is_some_and(|media_type| {
                media_type.trim().eq_ignore_ascii_case("application/json")
            })
        })
}

pub(super) fn error_response(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}
