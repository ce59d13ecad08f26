//! The baseline of the gateway's latency, answering once acknowledged: a bare producer with
//! the gateway's own librdkafka settings (`gateway::publish::producer_config`) producing one
//! record at a time at the latency run's rate, open loop, each latency from the scheduled
//! send to Kafka's acknowledgement. It is what such an answer cannot avoid: the broker's
//! produce round trip at that load, on the same machine. The payloads are the run's request
//! bodies (about the size of the gateway's records), written to the gateway's topic, which
//! nothing in the bench reads.

use crate::lag::Quantiles;
use anyhow::{Result, ensure};
use axum::body::Bytes;
use gateway::config::KafkaSettings;
use rdkafka::ClientContext;
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Records produced and flushed before the clock starts (connection, producer id).
const WARMUP_RECORDS: usize = 100;

/// Acknowledgement latencies, from each record's scheduled send.
#[derive(Default)]
struct Latencies {
    acknowledged: Mutex<Vec<f64>>,
    failed: AtomicU64,
}

impl ClientContext for Latencies {}

impl ProducerContext for Latencies {
    type DeliveryOpaque = Box<Instant>;

    fn delivery(&self, result: &DeliveryResult<'_>, scheduled: Box<Instant>) {
        if result.is_ok() {
            let latency = scheduled.elapsed().as_secs_f64();
            self.acknowledged
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(latency);
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Produces `payloads` in turn to `settings.topic` at `rate` per second for `seconds`.
pub(crate) fn measure(
    settings: &KafkaSettings,
    payloads: &[Bytes],
    rate: f64,
    seconds: u64,
) -> Result<Quantiles> {
    let producer: ThreadedProducer<Latencies> =
        gateway::publish::producer_config(settings).create_with_context(Latencies::default())?;
    let send = |index: usize, scheduled: Instant| -> Result<()> {
        let key = index.to_string();
        let record = BaseRecord::with_opaque_to(&settings.topic, Box::new(scheduled))
            .key(&key)
            .payload(&payloads[index % payloads.len()][..]);
        producer.send(record).map_err(|(error, _)| error)?;
        Ok(())
    };
    for index in 0..WARMUP_RECORDS {
        send(index, Instant::now())?;
    }
    producer.flush(Duration::from_secs(30))?;
    let context = producer.context();
    ensure!(
        context.failed.load(Ordering::Relaxed) == 0,
        "the bare producer's warm-up records were not all acknowledged"
    );
    context
        .acknowledged
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clear();
    let total = (rate * seconds as f64).round().max(1.0) as usize;
    let origin = Instant::now();
    for index in 0..total {
        let scheduled = origin + Duration::from_secs_f64(index as f64 / rate);
        if let Some(wait) = scheduled.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        send(index, scheduled)?;
    }
    producer.flush(Duration::from_secs(60))?;
    let failed = context.failed.load(Ordering::Relaxed);
    ensure!(
        failed == 0,
        "{failed} records of the bare producer were not acknowledged"
    );
    let mut latencies = std::mem::take(
        &mut *context
            .acknowledged
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
    );
    ensure!(
        !latencies.is_empty(),
        "no record of the bare producer was acknowledged"
    );
    Ok(Quantiles::of_samples(&mut latencies))
}
