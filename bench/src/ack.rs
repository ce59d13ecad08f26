//! A local Openlayer-compatible data-stream endpoint that acknowledges every request at once.
//!
//! It runs on its own thread with a single-threaded runtime, so its CPU time can be read
//! from that one thread (`/proc/self/task/TID/schedstat`) and told apart from the
//! sessionizer's. Per request it counts rows with one substring scan (every row has one
//! `"inferenceId":` key, the sessionizer's first and the official SDK's second; inside JSON
//! strings the quotes would be escaped) and answers `{"success": true}`; it parses no JSON.
//! In delay mode (the lag run only) it also reads each row's `inferenceTimestamp` to record
//! how long after its event time the row arrived.

use crate::measure::current_tid;
use anyhow::{Context as _, Result};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use memchr::memmem;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

const ROW_START: &[u8] = b"\"inferenceId\":";
const TIMESTAMP_FIELD: &[u8] = b"\"inferenceTimestamp\":";

#[derive(Debug, Default)]
struct Counters {
    rows: AtomicU64,
    requests: AtomicU64,
    body_bytes: AtomicU64,
    measure_delays: AtomicBool,
    /// Arrival minus event time of each row, in seconds (delay mode only).
    delays: Mutex<Vec<f64>>,
}

/// The running server: its address, its thread and what it counted.
#[derive(Debug)]
pub(crate) struct AckServer {
    address: SocketAddr,
    tid: u32,
    counters: Arc<Counters>,
}

fn now_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |elapsed| elapsed.as_secs_f64())
}

async fn data_stream(State(counters): State<Arc<Counters>>, body: Bytes) -> impl IntoResponse {
    let rows = memmem::find_iter(&body, ROW_START).count() as u64;
    if counters.measure_delays.load(Ordering::Relaxed) {
        let now = now_seconds();
        let mut delays = Vec::with_capacity(rows as usize);
        for start in memmem::find_iter(&body, TIMESTAMP_FIELD) {
            let value = &body[start + TIMESTAMP_FIELD.len()..];
            let end = value
                .iter()
                .position(|byte| *byte == b',' || *byte == b'}')
                .unwrap_or(value.len());
            if let Some(timestamp) = std::str::from_utf8(&value[..end])
                .ok()
                .and_then(|text| text.parse::<f64>().ok())
            {
                delays.push(now - timestamp);
            }
        }
        counters
            .delays
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .extend(delays);
    }
    counters.requests.fetch_add(1, Ordering::Relaxed);
    counters
        .body_bytes
        .fetch_add(body.len() as u64, Ordering::Relaxed);
    counters.rows.fetch_add(rows, Ordering::Relaxed);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"success": true}"#,
    )
}

impl AckServer {
    /// Binds 127.0.0.1:0 and serves on a new thread until the process exits.
    pub(crate) fn start() -> Result<Self> {
        let counters = Arc::new(Counters::default());
        let app = Router::new()
            .route(
                "/v1/inference-pipelines/{pipeline}/data-stream",
                post(data_stream),
            )
            // Batches are up to 4 MiB by default; axum's own limit is 2 MiB.
            .layer(DefaultBodyLimit::max(64 * 1024 * 1024))
            .with_state(counters.clone());
        let (ready, started) = std::sync::mpsc::channel::<Result<(SocketAddr, u32)>>();
        std::thread::Builder::new()
            .name("ack-server".into())
            .spawn(move || {
                let served = (|| -> Result<()> {
                    let tid = current_tid()?;
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    runtime.block_on(async {
                        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                        let _ = ready.send(Ok((listener.local_addr()?, tid)));
                        axum::serve(listener, app).await?;
                        Ok(())
                    })
                })();
                if let Err(error) = served {
                    let _ = ready.send(Err(error));
                }
            })
            .context("spawning the ack server thread")?;
        let (address, tid) = started.recv().context("ack server thread ended")??;
        Ok(AckServer {
            address,
            tid,
            counters,
        })
    }

    /// What the sessionizer's `openlayer.base_url` is set to.
    pub(crate) fn base_url(&self) -> String {
        format!("http://{}/v1", self.address)
    }

    pub(crate) fn tid(&self) -> u32 {
        self.tid
    }

    pub(crate) fn rows(&self) -> u64 {
        self.counters.rows.load(Ordering::Relaxed)
    }

    pub(crate) fn requests(&self) -> u64 {
        self.counters.requests.load(Ordering::Relaxed)
    }

    pub(crate) fn body_bytes(&self) -> u64 {
        self.counters.body_bytes.load(Ordering::Relaxed)
    }

    /// Zeroes the counters and turns delay recording on or off.
    pub(crate) fn reset(&self, measure_delays: bool) {
        self.counters.rows.store(0, Ordering::Relaxed);
        self.counters.requests.store(0, Ordering::Relaxed);
        self.counters.body_bytes.store(0, Ordering::Relaxed);
        self.counters
            .measure_delays
            .store(measure_delays, Ordering::Relaxed);
        self.take_delays();
    }

    /// The delays recorded so far (seconds), leaving none.
    pub(crate) fn take_delays(&self) -> Vec<f64> {
        std::mem::take(
            &mut *self
                .counters
                .delays
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }
}
