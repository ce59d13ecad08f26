//! An Openlayer-compatible HTTP server for the tests, the demo and the bench: checks requests
//! the way the real API would, records them, and misbehaves on demand.
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
//! requests only: what Openlayer would have stored. With [`Options::journal`] accepted
//! requests are also appended to a file as JSON lines (the demo's record). With
//! [`Options::fast_ack`] data-stream requests are only counted and answered at once (the
//! bench).

mod fast_ack;
mod faults;
mod handlers;
mod records;

pub use faults::Fault;
pub use records::{IncomingRequest, RecordedRequest, RowUpdate};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::{get, post, put};
use fast_ack::AckCounters;
use handlers::{data_stream, error_response, retrieve_pipeline, update_row};
use records::Journal;
use serde_json::Value;
use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How a server starts: [`OpenlayerServer::start`] takes the defaults, the demo and the bench
/// set more.
#[derive(Debug, Clone)]
pub struct Options {
    /// Requests must carry `Authorization: Bearer <expected_key>`.
    pub expected_key: String,
    /// Loopback port 0 (a free port) unless set, e.g. to the address of a stopped server.
    pub address: SocketAddr,
    /// Also append every accepted request to this file as a JSON line (the demo's record).
    pub journal: Option<PathBuf>,
    /// Answer every data-stream request `200` at once, whatever its key or shape, and only
    /// count it ([`OpenlayerServer::num_acked_rows`]): no JSON parsed, nothing kept. The
    /// bench's mode, where the server's CPU must stay a small, fixed share.
    pub fast_ack: bool,
}

impl Options {
    pub fn new(expected_key: &str) -> Options {
        Options {
            expected_key: expected_key.to_owned(),
            address: SocketAddr::from(([127, 0, 0, 1], 0)),
            journal: None,
            fast_ack: false,
        }
    }
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
    journal: Option<Journal>,
    acks: AckCounters,
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

    /// Appends `line()` to the journal, when there is one and the request was accepted.
    fn journal_if_accepted(&self, accepted: bool, line: impl FnOnce() -> Value) {
        if let Some(journal) = self.journal.as_ref().filter(|_| accepted) {
            journal.record(&line());
        }
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
        let options = Options {
            address,
            ..Options::new(expected_key)
        };
        Self::try_start(options)
            .await
            .expect("bind the openlayer test server")
    }

    /// Starts a server as `options` say, on the current runtime.
    ///
    /// # Errors
    /// When the address cannot be bound or the journal cannot be created.
    pub async fn try_start(options: Options) -> std::io::Result<OpenlayerServer> {
        let listener = TcpListener::bind(options.address).await?;
        let address = listener.local_addr()?;
        let journal = options
            .journal
            .as_deref()
            .map(Journal::create)
            .transpose()?;
        let shared = Arc::new(Shared {
            expected_authorization: format!("Bearer {}", options.expected_key),
            behaviour: Mutex::new(Behaviour::default()),
            records: Mutex::new(Records::default()),
            journal,
            acks: AckCounters::default(),
        });
        let data_stream_route = if options.fast_ack {
            post(fast_ack::data_stream)
        } else {
            post(data_stream)
        };
        let app = Router::new()
            .route(
                "/v1/inference-pipelines/{pipeline_id}/data-stream",
                data_stream_route,
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
        Ok(OpenlayerServer {
            address,
            shared,
            shutdown: Some(shutdown),
            serving: Some(serving),
        })
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

    /// Rows acknowledged in fast-ack mode since the last [`OpenlayerServer::reset_acks`].
    pub fn num_acked_rows(&self) -> u64 {
        self.shared.acks.rows()
    }

    /// Requests acknowledged in fast-ack mode since the last reset.
    pub fn num_acked_requests(&self) -> u64 {
        self.shared.acks.requests()
    }

    /// Body bytes acknowledged in fast-ack mode since the last reset.
    pub fn acked_body_bytes(&self) -> u64 {
        self.shared.acks.body_bytes()
    }

    /// Zeroes the fast-ack counters and turns recording arrival lags on or off.
    pub fn reset_acks(&self, measure_arrival_lags: bool) {
        self.shared.acks.reset(measure_arrival_lags);
    }

    /// How long after its `inferenceTimestamp` each row arrived (seconds), recorded in
    /// fast-ack mode while on, leaving none.
    pub fn take_arrival_lags(&self) -> Vec<f64> {
        self.shared.acks.take_arrival_lags()
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
