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

use crate::batch::{Origin, Position as ReadAt};
use crate::metrics::Metrics;
use crate::source::dlq::{DeadLetter, send_dead_letter};
use crate::source::kafka::KafkaSettings;
use crate::source::kafka::idempotent_producer_config;
use assembler::AssemblySettings;
use rdkafka::error::KafkaError;
use rdkafka::message::ToBytes;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use topics::OtelTopicError;
use trace_model::Limits;

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

/// Pause before a dead letter Kafka did not take goes again.
const DEAD_LETTER_RETRY_PAUSE: Duration = Duration::from_secs(1);
/// Pause while a producer's queue is full.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(10);

/// Queues `record` now, in the order of the calls (what was queued before it reaches its
/// partition before it), waiting while the queue is full; the delivery is awaited apart.
///
/// # Errors
/// The producer refused the record for good (too large, or the producer failed).
async fn enqueue<K, P>(
    producer: &FutureProducer,
    mut record: FutureRecord<'_, K, P>,
) -> Result<DeliveryFuture, KafkaError>
where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    loop {
        match producer.send_result(record) {
            Ok(delivery) => return Ok(delivery),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                record = returned;
                tokio::time::sleep(QUEUE_FULL_PAUSE).await;
            }
            Err((error, _)) => return Err(error),
        }
    }
}

/// The producer of routed spans and of assembled traces: idempotent, murmur2 like every
/// producer of the project, retrying without a deadline (a record given up would come after
/// the ones queued behind it), and taking any record within `limits.max_message_bytes`.
fn ordered_producer(kafka: &KafkaSettings, limits: &Limits) -> Result<FutureProducer, KafkaError> {
    let max_bytes = limits
        .max_message_bytes
        .saturating_add(64 * 1024)
        .max(1_000_000);
    let mut config = idempotent_producer_config(kafka);
    config
        .set("partitioner", "murmur2_random")
        .set("message.timeout.ms", "0")
        .set("message.max.bytes", max_bytes.to_string())
        .set("linger.ms", "5");
    kafka.client.apply_to(&mut config);
    config.create()
}

/// A dead letter of the Collector path (stage `otel`) for the message at `offset` of
/// `partition`, counted; the caller sets its key and payload.
fn dead_letter(
    metrics: &Metrics,
    (partition, offset): (i32, i64),
    reason: &'static str,
    message: String,
) -> DeadLetter {
    metrics
        .dead_letters
        .with_label_values(&["otel", reason])
        .inc();
    DeadLetter {
        reason,
        stage: "otel",
        message,
        origin: Origin {
            partition,
            sequence: offset,
            read_at: ReadAt { partition, offset },
            kafka_timestamp_ms: None,
        },
        key: None,
        payload: Vec::new(),
        http_status: None,
        pipeline_id: None,
    }
}

/// Sends `letter` (read from `source_topic`) to `topic` until Kafka has it: the message it
/// stands for settles only then. A letter too large for Kafka goes without its payload (the
/// spans stay in the topic they were read from).
async fn deliver_dead_letter(
    producer: &FutureProducer,
    topic: &str,
    source_topic: &str,
    mut letter: DeadLetter,
) {
    loop {
        let error = match send_dead_letter(producer, topic, source_topic, &letter) {
            Ok(delivery) => match delivery.await {
                Ok(Ok(_)) => return,
                Ok(Err((error, _))) => Some(error),
                Err(_) => None,
            },
            Err(error) => Some(error),
        };
        let too_large = error
            .as_ref()
            .and_then(KafkaError::rdkafka_error_code)
            .is_some_and(|code| {
                matches!(
                    code,
                    RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::MessageBatchTooLarge
                )
            });
        if too_large && !letter.payload.is_empty() {
            letter.message = format!(
                "{} (its {} bytes are left out: more than Kafka takes)",
                letter.message,
                letter.payload.len()
            );
            letter.payload = Vec::new();
            continue;
        }
        tracing::warn!(topic, ?error, "producing a dead letter of spans; retrying");
        tokio::time::sleep(DEAD_LETTER_RETRY_PAUSE).await;
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
    #[error(
        "kafka refused a record for `{topic}` for good; check that the topic exists, that the \
         service may write to it and that its max.message.bytes allows \
         limits.max_message_bytes. The spans are read again from the last commit after a restart"
    )]
    Produce {
        topic: String,
        #[source]
        source: KafkaError,
    },
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
