//! The workload: sessions × turns realistic traces produced to a topic before the runs that
//! read it, and what they look like (sizes, shape) for the report.
//!
//! A trace goes where the emitter would put it ([`Placing::ByKey`]: the producer's murmur2
//! partitioner, the partition the sessionizer expects), or, to measure the repartition hop,
//! into the next partition after that one ([`Placing::Elsewhere`]), so that every trace is
//! read in a partition other than its session's.

use crate::kafka::{producer, send};
use crate::setup::{PARTITIONS, TURN_SPACING_MS, now_ms};
use crate::traces::{self, Population};
use anyhow::{Context as _, Result, ensure};
use rdkafka::producer::Producer;
use serde::Serialize;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use trace_model::Encoding;
use trace_model::routing::{partition_for, route_key};

/// Which partition of a `PARTITIONS`-partition topic a preloaded trace is produced to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placing {
    /// The producer's partitioner on the trace's key (murmur2, as the emitter does).
    ByKey,
    /// `(partition_for(key, n) + 1) % n`: never the partition of the trace's session.
    Elsewhere,
}

impl Placing {
    /// The explicit partition of a trace keyed `key`; `None` leaves it to the partitioner.
    fn partition(self, key: Option<&str>, num_partitions: i32) -> Option<i32> {
        match (self, key) {
            (Placing::ByKey, _) | (Placing::Elsewhere, None) => None,
            (Placing::Elsewhere, Some(key)) => {
                Some((partition_for(key.as_bytes(), num_partitions) + 1) % num_partitions)
            }
        }
    }
}

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
    /// Topics loaded together with these traces (each holds all of them).
    pub(crate) preloaded_topics: usize,
    pub(crate) preload_seconds: f64,
    /// Traces per second, each produced to every preloaded topic.
    pub(crate) preload_traces_per_second: f64,
}

/// Produces sessions × turns traces, turn by turn across all sessions, each to every one of
/// `targets` (the same bytes, placed as each says), and waits for them all. A topic placed
/// [`Placing::Elsewhere`] must have [`PARTITIONS`] partitions.
pub(crate) fn preload(
    bootstrap: &str,
    targets: &[(&str, Placing)],
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
            for (topic, placing) in targets {
                send(
                    &producer,
                    topic,
                    event.partition_key().unwrap_or_default(),
                    placing.partition(route_key(&event), PARTITIONS),
                    &payload,
                );
            }
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
        preloaded_topics: targets.len(),
        preload_seconds: seconds,
        preload_traces_per_second: traces as f64 / seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elsewhere_is_never_the_sessions_partition() {
        for index in 0..1000 {
            let key = format!("session-{index}");
            let own = partition_for(key.as_bytes(), PARTITIONS);
            let placed = Placing::Elsewhere.partition(Some(&key), PARTITIONS);
            assert_eq!(placed, Some((own + 1) % PARTITIONS));
            assert_ne!(placed, Some(own));
        }
    }

    #[test]
    fn by_key_and_keyless_traces_are_left_to_the_partitioner() {
        assert_eq!(
            Placing::ByKey.partition(Some("session-1"), PARTITIONS),
            None
        );
        assert_eq!(Placing::Elsewhere.partition(None, PARTITIONS), None);
    }
}
