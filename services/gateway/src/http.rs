//! The HTTP surface: the Openlayer-compatible API and the operations endpoint.
//!
//! API (what Openlayer accepts, under `/v1`):
//! - `POST /v1/inference-pipelines/{id}/data-stream` with `{"config", "rows"}`: every row
//!   becomes a record on the traces topic; `200 {"success": true}` once Kafka acknowledged
//!   all of them (or once all are queued, with `http.answer_after = "queued"`);
//! - `PUT /v1/inference-pipelines/{id}/rows?inferenceId=..` with `{"row", "config"}`: one
//!   `row_update` record, shipped by the sessionizer after the rows before it;
//! - `POST /v1/traces`: OTLP/HTTP, what OpenTelemetry SDKs export (`crate::otlp`).
//!
//! Answers: 401 without a configured bearer key (checked before the body is read); 400 with
//! `{"success": false, "error", "row", "field"}` for a malformed request, nothing produced;
//! 413 for a body over `http.max_body_bytes` (or a row over the message limit); 503 with
//! `Retry-After` when Kafka is unreachable, slow, or too many rows are in flight, which the
//! SDK retries on its own, and, before the body is read, when taking it would hold more than
//! `http.max_body_bytes_in_flight` body bytes over all requests; 408 for a request not done
//! within its deadline (a minute beyond the produce timeout: a body trickling in). Errors never echo a key.
//!
//! Operations (own port): `/metrics`, `/healthz` (the process serves), `/readyz` (no shutdown
//! has begun). An unreachable broker does not make the gateway unready: clients would then
//! meet refused connections instead of 503 with `Retry-After`, which the SDK honours; the
//! outage shows in `gateway_broker_reachable` and its alert.

use crate::auth::ApiKeys;
use crate::config::AnswerAfter;
use crate::metrics::Metrics;
use crate::publish::{BrokerState, Publish, PublishError};
use crate::rows::{self, Outgoing, Refusal};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use prometheus::Registry;
use serde::Deserialize;
use serde_json::json;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Semaphore;
use trace_model::Limits;

/// Partition keys of recently produced rows by inference id, oldest evicted first.
#[derive(Debug, Default)]
pub struct KeyCache {
    capacity: usize,
    keys: HashMap<String, String>,
    order: VecDeque<String>,
}

impl KeyCache {
    pub fn new(capacity: usize) -> Self {
        KeyCache {
            capacity,
            ..KeyCache::default()
        }
    }

    pub fn insert(&mut self, inference_id: String, key: String) {
        if self.capacity == 0 {
            return;
        }
        if self.keys.insert(inference_id.clone(), key).is_none() {
            self.order.push_back(inference_id);
        }
        while self.order.len() > self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.keys.remove(&oldest);
            }
        }
    }

    pub fn get(&self, inference_id: &str) -> Option<String> {
        self.keys.get(inference_id).cloned()
    }
}

/// What the handlers share. Axum clones the state for every extractor and middleware of
/// every request: one reference count, not one per metric handle (cloning the fields was a
/// tenth of the gateway's CPU at one row per request).
#[derive(Clone, Debug)]
pub struct AppState(Arc<ApiShared>);

impl std::ops::Deref for AppState {
    type Target = ApiShared;

    fn deref(&self) -> &ApiShared {
        &self.0
    }
}

/// The fields of [`AppState`].
pub struct ApiShared {
    pub keys: Arc<ApiKeys>,
    pub publisher: Arc<dyn Publish>,
    /// Shared with the settle callbacks, which must not hold the state (it holds the
    /// publisher, whose producer holds them).
    pub metrics: Arc<Metrics>,
    pub broker: BrokerState,
    pub limits: Limits,
    pub max_body_bytes: usize,
    pub retry_after: Duration,
    pub max_rows_in_flight: usize,
    pub request_deadline: Duration,
    /// OTLP spans go to the spans topic as they come (`kafka.spans_topic` set).
    pub forward_spans: bool,
    pub answer_after: AnswerAfter,
    /// Longest wait for Kafka's reports on a request's records: the produce timeout and a
    /// margin.
    pub acknowledgement_deadline: Duration,
    rows_in_flight: Arc<AtomicUsize>,
    /// Permits for request body bytes (`http.max_body_bytes_in_flight`).
    body_bytes: Arc<Semaphore>,
    key_cache: Arc<Mutex<KeyCache>>,
    /// Set at SIGTERM: `/readyz` fails so the Service stops routing here.
    draining: Arc<AtomicBool>,
}

impl std::fmt::Debug for ApiShared {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ApiShared")
            .field("limits", &self.limits)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish_non_exhaustive()
    }
}

/// What [`AppState::new`] takes beyond the shared handles.
#[derive(Debug, Clone, Copy)]
pub struct ApiSettings {
    pub limits: Limits,
    pub max_body_bytes: usize,
    pub max_body_bytes_in_flight: usize,
    /// Longest a request may run, holding its body bytes: far beyond an upload and the wait
    /// for Kafka, short enough that trickling clients cannot keep the room.
    pub request_deadline: Duration,
    pub retry_after: Duration,
    pub max_rows_in_flight: usize,
    pub update_key_cache_entries: usize,
    /// `kafka.spans_topic` is set: OTLP spans are forwarded there, not assembled here.
    pub forward_spans: bool,
    pub answer_after: AnswerAfter,
    /// `kafka.produce_timeout_ms`: librdkafka reports on every record within it.
    pub produce_timeout: Duration,
}

impl AppState {
    pub fn new(
        keys: ApiKeys,
        publisher: Arc<dyn Publish>,
        metrics: Metrics,
        broker: BrokerState,
        settings: ApiSettings,
    ) -> Self {
        AppState(Arc::new(ApiShared {
            keys: Arc::new(keys),
            publisher,
            metrics: Arc::new(metrics),
            broker,
            limits: settings.limits,
            max_body_bytes: settings.max_body_bytes,
            retry_after: settings.retry_after,
            max_rows_in_flight: settings.max_rows_in_flight,
            request_deadline: settings.request_deadline,
            forward_spans: settings.forward_spans,
            answer_after: settings.answer_after,
            acknowledgement_deadline: settings.produce_timeout + Duration::from_secs(5),
            rows_in_flight: Arc::default(),
            body_bytes: Arc::new(Semaphore::new(
                settings
                    .max_body_bytes_in_flight
                    .clamp(settings.max_body_bytes, Semaphore::MAX_PERMITS),
            )),
            key_cache: Arc::new(Mutex::new(KeyCache::new(settings.update_key_cache_entries))),
            draining: Arc::default(),
        }))
    }

    /// Marks the start of shutdown: `/readyz` fails from now on.
    pub fn begin_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    fn is_ready(&self) -> Result<(), &'static str> {
        if self.draining.load(Ordering::Relaxed) {
            return Err("shutting down");
        }
        Ok(())
    }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

/// Every failure a request can meet, answered in one place.
#[derive(Debug)]
pub(crate) enum ApiError {
    Unauthorized,
    Refused(Refusal),
    BodyTooLarge {
        limit: usize,
    },
    Unavailable {
        reason: &'static str,
        retry_after: Duration,
    },
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                Json(json!({"success": false, "error": "missing or invalid API key"})),
            )
                .into_response(),
            ApiError::Refused(refusal) => {
                let status = StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::BAD_REQUEST);
                let body = json!({
                    "success": false,
                    "error": refusal.to_string(),
                    "row": refusal.row,
                    "field": refusal.field,
                });
                (status, Json(body)).into_response()
            }
            ApiError::BodyTooLarge { limit } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                Json(json!({"success": false, "error": format!("the body is larger than {limit} bytes")})),
            )
                .into_response(),
            ApiError::Unavailable { reason, retry_after } => {
                let mut response = (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Json(json!({"success": false, "error": format!("{reason}; retry later")})),
                )
                    .into_response();
                let seconds = retry_after.as_secs().max(1).to_string();
                if let Ok(value) = HeaderValue::from_str(&seconds) {
                    response.headers_mut().insert(header::RETRY_AFTER, value);
                }
                response
            }
        }
    }
}

fn route_label(path: &str) -> &'static str {
    if path.starts_with("/v1/inference-pipelines/") && path.ends_with("/data-stream") {
        "data_stream"
    } else if path.starts_with("/v1/inference-pipelines/") && path.ends_with("/rows") {
        "row_update"
    } else if path == "/v1/traces" {
        "otlp_traces"
    } else {
        "other"
    }
}

/// An amount counted in flight (a gauge, and the admission counter when there is one), given
/// back when dropped: a request whose client goes away is dropped mid-await, and its count
/// must not stay behind.
struct InFlight {
    gauge: prometheus::IntGauge,
    admitted: Option<Arc<AtomicUsize>>,
    amount: usize,
}

impl InFlight {
    /// Owned, so that a request's rows are given back where Kafka reports on them (the settle
    /// callback), whether or not the request is still there.
    fn new(
        gauge: &prometheus::IntGauge,
        admitted: Option<&Arc<AtomicUsize>>,
        amount: usize,
    ) -> Self {
        gauge.add(i64::try_from(amount).unwrap_or(i64::MAX));
        InFlight {
            gauge: gauge.clone(),
            admitted: admitted.cloned(),
            amount,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gauge
            .sub(i64::try_from(self.amount).unwrap_or(i64::MAX));
        if let Some(admitted) = &self.admitted {
            admitted.fetch_sub(self.amount, Ordering::SeqCst);
        }
    }
}

/// Counts and times every API request by route and status.
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = route_label(request.uri().path());
    let started = Instant::now();
    let in_flight = InFlight::new(&state.metrics.requests_in_flight, None, 1);
    let response = next.run(request).await;
    drop(in_flight);
    state
        .metrics
        .requests
        .with_label_values(&[route, response.status().as_str()])
        .inc();
    state
        .metrics
        .request_duration
        .with_label_values(&[route])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// Refuses requests without a configured key before their body is read.
async fn require_key(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if state.keys.allows(request.headers()) {
        next.run(request).await
    } else {
        ApiError::Unauthorized.into_response()
    }
}

/// Holds the bytes a request's body will take (its length; `http.max_body_bytes` when unknown
/// or compressed) until it is answered; when they are not free, 503 at once, before the body
/// is read.
async fn bound_body_bytes(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let compressed = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| {
            !value.trim().is_empty() && !value.trim().eq_ignore_ascii_case("identity")
        });
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<usize>().ok());
    let bytes = match length {
        // Refused by the body limit without being read.
        Some(length) if length > state.max_body_bytes => {
            return ApiError::BodyTooLarge {
                limit: state.max_body_bytes,
            }
            .into_response();
        }
        Some(length) if !compressed => length,
        _ => state.max_body_bytes,
    };
    let permits = u32::try_from(bytes).unwrap_or(u32::MAX);
    let Ok(held) = state.body_bytes.clone().try_acquire_many_owned(permits) else {
        state.metrics.requests_shed.inc();
        return ApiError::Unavailable {
            reason: "too many request bytes in flight",
            retry_after: state.retry_after,
        }
        .into_response();
    };
    let in_flight = InFlight::new(
        &state.metrics.body_bytes_in_flight,
        None,
        usize::try_from(permits).unwrap_or(usize::MAX),
    );
    // A client that trickles its body would hold the bytes for as long as it likes.
    let response = match tokio::time::timeout(state.request_deadline, next.run(request)).await {
        Ok(response) => response,
        Err(_) => (
            StatusCode::REQUEST_TIMEOUT,
            Json(json!({"success": false, "error": "the request took too long to arrive"})),
        )
            .into_response(),
    };
    drop((in_flight, held));
    response
}

/// The Openlayer-compatible API.
pub fn api_app(state: AppState) -> Router {
    Router::new()
        .route(
            "/v1/inference-pipelines/{pipeline_id}/data-stream",
            post(data_stream),
        )
        .route(
            "/v1/inference-pipelines/{pipeline_id}/rows",
            put(update_row),
        )
        .route("/v1/traces", post(crate::otlp::traces))
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            bound_body_bytes,
        ))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"success": false, "error": "no such endpoint"})),
    )
        .into_response()
}

pub(crate) fn body_bytes(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::BodyTooLarge {
                limit: state.max_body_bytes,
            }
        } else {
            ApiError::Refused(Refusal {
                status: 400,
                row: None,
                field: Some("body".to_owned()),
                message: "the body could not be read".to_owned(),
            })
        }
    })
}

/// Hands the records to Kafka, within the in-flight bound; `Ok` once all are acknowledged,
/// or once all are queued with `http.answer_after = "queued"`.
pub(crate) async fn produce(
    state: &AppState,
    records: Vec<Outgoing>,
    kind: &'static str,
) -> Result<(), ApiError> {
    let num_rows = records.len();
    let unavailable = |reason: &'static str| ApiError::Unavailable {
        reason,
        retry_after: state.retry_after,
    };
    if !state.broker.is_reachable() {
        state
            .metrics
            .produce_errors
            .with_label_values(&[PublishError::Unreachable.reason()])
            .inc();
        return Err(unavailable("kafka is unreachable"));
    }
    let before = state.rows_in_flight.fetch_add(num_rows, Ordering::SeqCst);
    if before + num_rows > state.max_rows_in_flight && before > 0 {
        state.rows_in_flight.fetch_sub(num_rows, Ordering::SeqCst);
        state
            .metrics
            .produce_errors
            .with_label_values(&[PublishError::QueueFull.reason()])
            .inc();
        return Err(unavailable("too many rows in flight"));
    }
    let in_flight = InFlight::new(
        &state.metrics.rows_in_flight,
        Some(&state.rows_in_flight),
        num_rows,
    );
    let started = Instant::now();
    // Answered once queued, unless Kafka's last answer was a failure: then this request
    // waits for its own, and a failure is a 503 the SDK retries rather than a loss.
    let wait = state.answer_after == AnswerAfter::Acknowledged || state.publisher.failing();
    let (acknowledged, acknowledgement) = wait.then(tokio::sync::oneshot::channel).unzip();
    // Settled where Kafka reports, on the producer's delivery thread: the rows count against
    // the in-flight bound until then, even when the client went away; no task per request.
    let metrics = Arc::clone(&state.metrics);
    let settle = Box::new(move |outcome| {
        drop(in_flight);
        settled(&metrics, kind, num_rows, started, outcome, wait);
        if let Some(acknowledged) = acknowledged {
            let _answering = acknowledged.send(outcome);
        }
    });
    if let Err(error) = state.publisher.publish(records, settle) {
        settled(&state.metrics, kind, num_rows, started, Err(error), true);
        return Err(unavailable("kafka did not take the rows"));
    }
    let Some(acknowledgement) = acknowledgement else {
        return Ok(());
    };
    // librdkafka reports every record within the produce timeout; the margin only guards
    // against a report that never comes.
    let Ok(reported) = tokio::time::timeout(state.acknowledgement_deadline, acknowledgement).await
    else {
        // Counted when (if ever) the report comes.
        tracing::warn!(
            num_rows,
            "no report from kafka within the produce timeout, answering 503"
        );
        return Err(unavailable("kafka did not acknowledge the rows"));
    };
    reported
        .unwrap_or(Err(PublishError::Kafka))
        .map_err(|_| unavailable("kafka did not acknowledge the rows"))
}

/// Counts what became of a request's rows; `answering` when the request waits for it (else it
/// was answered 200 already).
fn settled(
    metrics: &Metrics,
    kind: &'static str,
    num_rows: usize,
    started: Instant,
    outcome: Result<(), PublishError>,
    answering: bool,
) {
    match outcome {
        Ok(()) => {
            metrics
                .produce_duration
                .observe(started.elapsed().as_secs_f64());
            metrics
                .rows_produced
                .with_label_values(&[kind])
                .inc_by(num_rows as u64);
        }
        Err(error) => {
            metrics
                .produce_errors
                .with_label_values(&[error.reason()])
                .inc();
            if answering {
                tracing::warn!(%error, num_rows, "records not produced, answering 503");
            } else {
                metrics.rows_lost.inc_by(num_rows as u64);
                tracing::error!(
                    %error,
                    num_rows,
                    "records answered 200 (http.answer_after = queued) were not acknowledged \
                     by kafka: lost"
                );
            }
        }
    }
}

fn success() -> Response {
    (StatusCode::OK, Json(json!({"success": true}))).into_response()
}

async fn data_stream(
    State(state): State<AppState>,
    Path(pipeline_id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(&state, body)?;
    let records =
        rows::stream_records(&pipeline_id, &body, &state.limits, now_ms()).map_err(|refusal| {
            tracing::debug!(error = %refusal, "data-stream request refused");
            ApiError::Refused(refusal)
        })?;
    let remembered: Vec<(String, String)> = records
        .iter()
        .filter_map(|record| Some((record.inference_id.clone()?, record.key.clone()?)))
        .collect();
    produce(&state, records, "trace").await?;
    let mut cache = state
        .key_cache
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    for (inference_id, key) in remembered {
        cache.insert(inference_id, key);
    }
    drop(cache);
    Ok(success())
}

#[derive(Debug, Deserialize)]
struct UpdateQuery {
    #[serde(rename = "inferenceId")]
    inference_id: Option<String>,
}

async fn update_row(
    State(state): State<AppState>,
    Path(pipeline_id): Path<String>,
    Query(query): Query<UpdateQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(&state, body)?;
    let record = rows::update_record(
        &pipeline_id,
        query.inference_id.as_deref(),
        &body,
        &state.limits,
        now_ms(),
        |inference_id| {
            state
                .key_cache
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(inference_id)
        },
    )
    .map_err(ApiError::Refused)?;
    produce(&state, vec![record], "row_update").await?;
    Ok(success())
}

/// What the operations endpoint reads.
#[derive(Clone)]
pub struct OpsState {
    pub registry: Registry,
    pub app: AppState,
}

impl std::fmt::Debug for OpsState {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("OpsState").finish_non_exhaustive()
    }
}

/// `/metrics`, `/healthz`, `/readyz`.
pub fn ops_app(state: OpsState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(state): State<OpsState>) -> Response {
    state
        .app
        .metrics
        .broker_reachable
        .set(i64::from(state.app.broker.is_reachable()));
    service_kit::metrics_endpoint::response(&state.registry)
}

async fn readyz(State(state): State<OpsState>) -> Response {
    match state.app.is_ready() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response(),
    }
}
