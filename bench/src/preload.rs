//! The workload: sessions × turns realistic traces produced to a topic before the runs that
//! read it, and what they look like (sizes, shape) for the report.

use crate::kafka::{producer, send};
use crate::setup::{PARTITIONS, TURN_SPACING_MS, now_ms};
use crate::traces::{self, Population};
use anyhow::{Context as _, Result, ensure};
use rdkafka::producer::Producer;
use serde::Serialize;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use trace_model::Encoding;

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Workload {
    pub(crate) traces: u64,
    pub(crate) sessions: usize,
    pub(crate) users: usize,
    pub(crate) turns_per_session: usize,
    pub(crate) partitions: i32,
    pub(crate) avro_bytes_mean: f64,
    pub(crate) avro_bytes_min: usize,
    pub(crate) avro_bytes_max: usize,
    pub(crate) steps_per_trace: usize,
    pub(crate) step_nesting_depth: usize,
    pub(crate) preload_seconds: f64,
    pub(crate) preload_traces_per_second: f64,
}

/// Produces sessions × turns traces, turn by turn across all sessions, and waits for them all.
pub(crate) fn preload(
    bootstrap: &str,
    topic: &str,
    population: &Population,
    turns: usize,
) -> Result<Workload> {
    let producer = producer(bootstrap)?;
    let sessions = population.num_sessions();
    let started = Instant::now();
    let base = now_ms() - turns as i64 * TURN_SPACING_MS - 60_000;
    let (mut total_bytes, mut min_bytes, mut max_bytes) = (0usize, usize::MAX, 0usize);
    let mut shape = (0, 0);
    for turn in 0..turns {
        for session in 0..sessions {
            let timestamp = base + turn as i64 * TURN_SPACING_MS + session as i64 % 1000;
            let event = population.trace(session, turn, timestamp);
            let payload = trace_model::encode(&event, Encoding::Avro)?;
            total_bytes += payload.len();
            min_bytes = min_bytes.min(payload.len());
            max_bytes = max_bytes.max(payload.len());
            if turn == 0 && session == 0 {
                shape = traces::shape(&event);
            }
            send(
                &producer,
                topic,
                event.partition_key().unwrap_or_default(),
                &payload,
            );
        }
    }
    producer
        .flush(Duration::from_secs(120))
        .context("preload not delivered")?;
    let failed = producer.context().failed.load(Ordering::Relaxed);
    ensure!(failed == 0, "{failed} preload traces not delivered");
    let seconds = started.elapsed().as_secs_f64();
    let traces = (sessions * turns) as u64;
    Ok(Workload {
        traces,
        sessions,
        users: population.num_users(),
        turns_per_session: turns,
        partitions: PARTITIONS,
        avro_bytes_mean: total_bytes as f64 / traces as f64,
        avro_bytes_min: min_bytes,
        avro_bytes_max: max_bytes,
        steps_per_trace: shape.0,
        step_nesting_depth: shape.1,
        preload_seconds: seconds,
        preload_traces_per_second: traces as f64 / seconds,
    })
}
