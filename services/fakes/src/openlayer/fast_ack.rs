//! The fast-ack mode of the Openlayer-compatible server (the bench's): every data-stream
//! request is answered `{"success": true}` at once and only counted.
//!
//! Per request it counts rows with one substring scan (every row has one `"inferenceId":`
//! key, the sessionizer's first and the official SDK's second; inside JSON strings the quotes
//! would be escaped); it parses no JSON. While arrival lags are measured (the bench's lag
//! run) it also reads each row's `inferenceTimestamp` to record how long after its event
//! time the row arrived.

use super::Shared;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use memchr::memmem;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

const ROW_START: &[u8] = b"\"inferenceId\":";
const TIMESTAMP_FIELD: &[u8] = b"\"inferenceTimestamp\":";

/// What fast-ack mode counted since the last reset.
#[derive(Debug, Default)]
pub(super) struct AckCounters {
    rows: AtomicU64,
    requests: AtomicU64,
    body_bytes: AtomicU64,
    measure_arrival_lags: AtomicBool,
    /// Arrival minus event time of each row, in seconds (while measured only).
    arrival_lags: Mutex<Vec<f64>>,
}

impl AckCounters {
    pub(super) fn rows(&self) -> u64 {
        self.rows.load(Ordering::Relaxed)
    }

    pub(super) fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub(super) fn body_bytes(&self) -> u64 {
        self.body_bytes.load(Ordering::Relaxed)
    }

    pub(super) fn reset(&self, measure_arrival_lags: bool) {
        self.rows.store(0, Ordering::Relaxed);
        self.requests.store(0, Ordering::Relaxed);
        self.body_bytes.store(0, Ordering::Relaxed);
        self.measure_arrival_lags
            .store(measure_arrival_lags, Ordering::Relaxed);
        self.take_arrival_lags();
    }

    pub(super) fn take_arrival_lags(&self) -> Vec<f64> {
        std::mem::take(&mut *self.lags())
    }

    fn lags(&self) -> MutexGuard<'_, Vec<f64>> {
        self.arrival_lags
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn now_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |elapsed| elapsed.as_secs_f64())
}

/// Arrival lag of every row of `body` that carries a numeric `inferenceTimestamp`.
fn arrival_lags(body: &[u8], now: f64) -> Vec<f64> {
    let mut lags = Vec::new();
    for start in memmem::find_iter(body, TIMESTAMP_FIELD) {
        let value = &body[start + TIMESTAMP_FIELD.len()..];
        let end = value
            .iter()
            .position(|byte| *byte == b',' || *byte == b'}')
            .unwrap_or(value.len());
        if let Some(timestamp) = std::str::from_utf8(&value[..end])
            .ok()
            .and_then(|text| text.parse::<f64>().ok())
        {
            lags.push(now - timestamp);
        }
    }
    lags
}

pub(super) async fn data_stream(
    State(shared): State<Arc<Shared>>,
    body: Bytes,
) -> impl IntoResponse {
    let acks = &shared.acks;
    let rows = memmem::find_iter(&body, ROW_START).count() as u64;
    if acks.measure_arrival_lags.load(Ordering::Relaxed) {
        let lags = arrival_lags(&body, now_seconds());
        acks.lags().extend(lags);
    }
    acks.requests.fetch_add(1, Ordering::Relaxed);
    acks.body_bytes
        .fetch_add(body.len() as u64, Ordering::Relaxed);
    acks.rows.fetch_add(rows, Ordering::Relaxed);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"success": true}"#,
    )
}
