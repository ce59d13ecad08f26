//! The Collector path: OpenTelemetry spans read from the topic the Collector's Kafka exporter
//! writes (`otel.spans_topic`), routed by trace id through the repartition topic (`router`),
//! assembled into traces (`assembler`, `stage`) and produced to the traces topic keyed by
//! session, where they take the normal way.

pub mod assembler;
#[cfg(test)]
mod assembler_tests;
pub mod order;
pub mod router;
pub mod stage;
pub mod state;
pub mod topics;

use crate::metrics::Metrics;
use crate::source::kafka::KafkaSettings;
use assembler::AssemblySettings;
use rdkafka::error::KafkaError;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use topics::OtelTopicError;

/// Validated `[otel]`.
#[derive(Debug, Clone)]
pub struct OtelSettings {
    /// `<kafka.group_id>.otel`: the spans topic's consumer group (the router's).
    pub group_id: String,
    /// `<kafka.group_id>.otel-assembly`: the repartition topic's consumer group.
    pub assembly_group_id: String,
    pub spans_topic: String,
    /// Spans by trace id, co-partitioned with `state_topic`.
    pub repartition_topic: String,
    pub state_topic: String,
    pub assembly: AssemblySettings,
    pub max_held_spans: usize,
}

/// Pause while a producer's queue is full.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(10);
/// Pause before queueing again a record a producer refused otherwise.
const REFUSED_PAUSE: Duration = Duration::from_secs(1);

/// Queues `record` now, in the order of the calls (what was queued before it reaches its
/// partition before it), waiting while the queue is full; the delivery is awaited apart.
async fn enqueue<K, P>(
    producer: &rdkafka::producer::FutureProducer,
    mut record: rdkafka::producer::FutureRecord<'_, K, P>,
) -> rdkafka::producer::DeliveryFuture
where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    loop {
        match producer.send_result(record) {
            Ok(delivery) => return delivery,
            Err((error, returned)) => {
                record = returned;
                let full = matches!(
                    error,
                    KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull)
                );
                if !full {
                    tracing::warn!(%error, "a producer refused a record; queueing it again");
                }
                tokio::time::sleep(if full {
                    QUEUE_FULL_PAUSE
                } else {
                    REFUSED_PAUSE
                })
                .await;
            }
        }
    }
}

/// Why the Collector path stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OtelError {
    #[error(transparent)]
    Topics(#[from] OtelTopicError),
    #[error("creating a consumer or producer of the Collector path failed")]
    Kafka(#[from] KafkaError),
}

/// Runs the Collector path until `stop` is cancelled: the topics made ready, then the router
/// and the assembly side by side, each draining for up to `drain_timeout` at the end.
///
/// # Errors
/// The topics are not usable, or a client cannot be created.
pub async fn run(
    otel: OtelSettings,
    kafka: KafkaSettings,
    metrics: Metrics,
    drain_timeout: Duration,
    stop: CancellationToken,
) -> Result<(), OtelError> {
    let counts = tokio::select! {
        prepared = topics::prepare(&kafka, &otel) => prepared?,
        () = stop.cancelled() => return Ok(()),
    };
    tokio::try_join!(
        router::run(
            counts.repartition,
            otel.clone(),
            kafka.clone(),
            metrics.clone(),
            drain_timeout,
            stop.clone(),
        ),
        stage::run(
            counts.spans,
            otel,
            kafka,
            metrics,
            drain_timeout,
            stop.clone()
        ),
    )?;
    Ok(())
}
