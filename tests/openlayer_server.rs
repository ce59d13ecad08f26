//! An Openlayer-compatible HTTP server for tests: checks requests the way the real API would,
//! records them, and misbehaves on demand.
//!
//! It serves, under `http://127.0.0.1:PORT/v1` ([`OpenlayerServer::base_url`]):
//! - `POST /v1/inference-pipelines/{id}/data-stream` with `Authorization: Bearer <key>`,
//!   `Content-Type: application/json` and `{"config": {"outputColumnName": "..", ..},
//!   "rows": [{..}, ..]}`; answers `200 {"success": true}`, 401 for a wrong or missing key,
//!   415 for another content type, 400 with `{"error": ..}` for any other shape;
//! - `PUT /v1/inference-pipelines/{id}/rows?inferenceId=..` with `{"row": {..}, "config":
//!   {..} | null}`, recorded as a [`RowUpdate`].
//!
//! Faults, checked in this order on each data-stream request with the right key:
//! 1. the scripted queue ([`OpenlayerServer::push_fault`]): one fault per request, in order;
//! 2. the added latency ([`OpenlayerServer::set_latency`]), then the usual checks;
//! 3. the body size limit ([`OpenlayerServer::set_max_body_bytes`]): 413 above it;
//! 4. a responder closure given the parsed request ([`OpenlayerServer::set_responder`]);
//! 5. a row predicate ([`OpenlayerServer::reject_rows_where`]): 400 for the whole request
//!    when any row matches, as a strict server would.
//!
//! Every request is recorded with what was answered and when it arrived (a `std` instant,
//! unaffected by `tokio::time::pause`). [`OpenlayerServer::rows`] holds the rows of accepted
//! requests only: what Openlayer would have stored.

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

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

/// A data-stream request as the responder closure sees it, after the checks passed.
#[derive(Debug)]
pub struct IncomingRequest<'a> {
    pub pipeline_id: &'a str,
    pub headers: &'a HeaderMap,
    pub body_len: usize,
    pub config: &'a Value,
    pub rows: &'a [Value],
    /// How many data-stream requests came before this one.
    pub index: usize,
}

/// One data-stream request, as received and answered.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// Percent-decoded from the path.
    pub pipeline_id: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// `config` of the body, when the body was JSON with one.
    pub config: Option<Value>,
    /// `rows` of the body, when the body was JSON with an array of them.
    pub rows: Vec<Value>,
    /// What the server answered.
    pub status: u16,
    pub arrived: Instant,
}

impl RecordedRequest {
    pub fn accepted(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// One `PUT .../rows?inferenceId=..` request.
#[derive(Debug, Clone)]
pub struct RowUpdate {
    pub pipeline_id: String,
    /// `None` when the query lacked it (answered 400).
    pub inference_id: Option<String>,
    pub row: Option<Value>,
    pub config: Option<Value>,
    pub status: u16,
    pub arrived: Instant,
}

type Responder = Arc<dyn Fn(&IncomingRequest<'_>) -> Option<Fault> + Send + Sync>;
type RowPredicate = Arc<dyn Fn(&Value) -> bool + Send + Sync>;

#[derive(Default)]
struct Behaviour {
    faults: VecDeque<Fault>,
    latency: Duration,
    max_body_bytes: Option<usize>,
    responder: Option<Responder>,
    reject_row: Option<RowPredicate>,
    /// Pipelines `GET /inference-pipelines/{id}` finds; `None`: every id exists.
    known_pipelines: Option<Vec<String>>,
}

#[derive(Default)]
struct Records {
    requests: Vec<RecordedRequest>,
    updates: Vec<RowUpdate>,
    /// Pipeline ids read with `GET /inference-pipelines/{id}`, with the status answered.
    retrieved: Vec<(String, u16)>,
}

struct Shared {
    expected_authorization: String,
    behaviour: Mutex<Behaviour>,
    records: Mutex<Records>,
}

impl Shared {
    fn behaviour(&self) -> MutexGuard<'_, Behaviour> {
        // A test that panicked while holding the lock already failed; keep serving.
        self.behaviour
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn records(&self) -> MutexGuard<'_, Records> {
        self.records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        headers
            .get(header::AUTHORIZATION)
            .is_some_and(|value| value.as_bytes() == self.expected_authorization.as_bytes())
    }
}

/// A running server; stops when dropped (or with [`OpenlayerServer::stop`]).
pub struct OpenlayerServer {
    address: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    serving: Option<JoinHandle<()>>,
}

impl fmt::Debug for OpenlayerServer {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("OpenlayerServer")
            .field("address", &self.address)
            .field("num_requests", &self.shared.records().requests.len())
            .finish_non_exhaustive()
    }
}

impl OpenlayerServer {
    /// Starts a server on a free loopback port that accepts `expected_key` only.
    ///
    /// # Panics
    /// When no loopback port can be bound.
    pub async fn start(expected_key: &str) -> OpenlayerServer {
        Self::start_on(expected_key, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts a server on `address`, e.g. the address of a stopped one, to test reconnects.
    ///
    /// # Panics
    /// When `address` cannot be bound.
    pub async fn start_on(expected_key: &str, address: SocketAddr) -> OpenlayerServer {
        let listener = TcpListener::bind(address)
            .await
            .expect("bind the openlayer test server");
        let address = listener.local_addr().expect("bound address");
        let shared = Arc::new(Shared {
            expected_authorization: format!("Bearer {expected_key}"),
            behaviour: Mutex::new(Behaviour::default()),
            records: Mutex::new(Records::default()),
        });
        let app = Router::new()
            .route(
                "/v1/inference-pipelines/{pipeline_id}/data-stream",
                post(data_stream),
            )
            .route(
                "/v1/inference-pipelines/{pipeline_id}/rows",
                put(update_row),
            )
            .route(
                "/v1/inference-pipelines/{pipeline_id}",
                get(retrieve_pipeline),
            )
            .fallback(|| async { error_response(StatusCode::NOT_FOUND, "no such endpoint") })
            // The size limit is ours to script (set_max_body_bytes), not axum's 2 MB default.
            .layer(DefaultBodyLimit::disable())
            .with_state(Arc::clone(&shared));
        let (shutdown, shutdown_signal) = oneshot::channel::<()>();
        let serving = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = shutdown_signal.await;
                })
                .await;
            if let Err(error) = served {
                eprintln!("openlayer test server failed: {error}");
            }
        });
        OpenlayerServer {
            address,
            shared,
            shutdown: Some(shutdown),
            serving: Some(serving),
        }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `http://127.0.0.1:PORT/v1`, what `OPENLAYER_BASE_URL` should be.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.address)
    }

    /// Stops accepting connections, closes idle ones and waits (up to 5 s) for requests in
    /// flight; afterwards connecting to the address is refused.
    pub async fn stop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(serving) = self.serving.take() {
            let abort = serving.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), serving)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }

    /// Answers the next data-stream request with `fault` (after those already queued).
    pub fn push_fault(&self, fault: Fault) {
        self.shared.behaviour().faults.push_back(fault);
    }

    /// Queues `count` copies of `fault`.
    pub fn push_faults(&self, fault: Fault, count: usize) {
        let mut behaviour = self.shared.behaviour();
        behaviour.faults.extend(std::iter::repeat_n(fault, count));
    }

    /// Faults queued and not yet used.
    pub fn num_pending_faults(&self) -> usize {
        self.shared.behaviour().faults.len()
    }

    /// Delays every data-stream answer by `latency`.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.behaviour().latency = latency;
    }

    /// Answers 413 to bodies over `limit` bytes; `None` accepts any size.
    pub fn set_max_body_bytes(&self, limit: Option<usize>) {
        self.shared.behaviour().max_body_bytes = limit;
    }

    /// Decides per request (after the checks passed): `Some(fault)` answers with it, `None`
    /// goes on normally. Replaces any previous responder.
    pub fn set_responder(
        &self,
        responder: impl Fn(&IncomingRequest<'_>) -> Option<Fault> + Send + Sync + 'static,
    ) {
        self.shared.behaviour().responder = Some(Arc::new(responder));
    }

    /// Refuses with 400 every request that carries a row matching `predicate`.
    pub fn reject_rows_where(&self, predicate: impl Fn(&Value) -> bool + Send + Sync + 'static) {
        self.shared.behaviour().reject_row = Some(Arc::new(predicate));
    }

    /// Refuses with 400 every request carrying a row whose `inferenceId` is `inference_id`.
    pub fn reject_inference_id(&self, inference_id: &str) {
        let inference_id = inference_id.to_owned();
        self.reject_rows_where(move |row| row["inferenceId"] == inference_id.as_str());
    }

    /// Only these pipelines exist for `GET /inference-pipelines/{id}` (others are 404).
    pub fn set_known_pipelines(&self, pipeline_ids: &[&str]) {
        self.shared.behaviour().known_pipelines =
            Some(pipeline_ids.iter().map(|id| (*id).to_owned()).collect());
    }

    /// Pipelines read so far (`GET /inference-pipelines/{id}`), with the status answered.
    pub fn retrieved_pipelines(&self) -> Vec<(String, u16)> {
        self.shared.records().retrieved.clone()
    }

    /// Every data-stream request so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.records().requests.clone()
    }

    /// Rows of accepted requests, in the order they were accepted.
    pub fn rows(&self) -> Vec<Value> {
        self.accepted_rows(|_| true)
    }

    /// How many rows were accepted so far (duplicates included), without copying them.
    pub fn num_rows(&self) -> usize {
        self.shared
            .records()
            .requests
            .iter()
            .filter(|request| request.accepted())
            .map(|request| request.rows.len())
            .sum()
    }

    /// Rows of accepted requests for `pipeline_id`.
    pub fn rows_for(&self, pipeline_id: &str) -> Vec<Value> {
        self.accepted_rows(|request| request.pipeline_id == pipeline_id)
    }

    /// Every row update so far, in arrival order.
    pub fn row_updates(&self) -> Vec<RowUpdate> {
        self.shared.records().updates.clone()
    }

    /// Waits until at least `count` rows were accepted or `timeout` passed; returns the rows.
    pub async fn wait_for_rows(&self, count: usize, timeout: Duration) -> Vec<Value> {
        let until = Instant::now() + timeout;
        loop {
            let rows = self.rows();
            if rows.len() >= count || Instant::now() >= until {
                return rows;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn accepted_rows(&self, keep: impl Fn(&RecordedRequest) -> bool) -> Vec<Value> {
        self.shared
            .records()
            .requests
            .iter()
            .filter(|request| request.accepted() && keep(request))
            .flat_map(|request| request.rows.iter().cloned())
            .collect()
    }
}

impl Drop for OpenlayerServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

async fn data_stream(
    State(shared): State<Arc<Shared>>,
    Path(pipeline_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let arrived = Instant::now();
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let config = parsed
        .as_ref()
        .and_then(|parsed| parsed.get("config"))
        .cloned();
    let rows = parsed
        .as_ref()
        .and_then(|parsed| parsed.get("rows"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let response =
        answer_data_stream(&shared, &pipeline_id, &headers, &body, parsed.as_ref()).await;
    shared.records().requests.push(RecordedRequest {
        pipeline_id,
        headers,
        body,
        config,
        rows,
        status: response.status().as_u16(),
        arrived,
    });
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

/// `Some(response)` when the fault answers the request; `Delay` waits and lets it go on.
async fn apply_fault(fault: Option<Fault>) -> Option<Response> {
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
async fn retrieve_pipeline(
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

async fn update_row(
    State(shared): State<Arc<Shared>>,
    Path(pipeline_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let arrived = Instant::now();
    let inference_id = query.get("inferenceId").cloned();
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let row = parsed
        .as_ref()
        .and_then(|parsed| parsed.get("row"))
        .cloned();
    let config = parsed
        .as_ref()
        .and_then(|parsed| parsed.get("config"))
        .cloned();
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
    shared.records().updates.push(RowUpdate {
        pipeline_id,
        inference_id,
        row,
        config,
        status: response.status().as_u16(),
        arrived,
    });
    response
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

fn error_response(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}
