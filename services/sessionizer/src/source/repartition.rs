//! The consumer of the repartition topic, where traces read in another partition than their
//! session's are forwarded (Kafka Streams' repartition topics, for a key change).
//!
//! The topic is co-partitioned with the traces topic, and partition `p` of both must be read by
//! the same process: the one the group gave traces partition `p`. No assignor of librdkafka
//! guarantees that across two subscribed topics, so this consumer is assigned by hand,
//! following the group's assignment of the traces topic. It commits its offsets under its own
//! group id (`<group>.repartition`): a group with members refuses commits from a consumer
//! outside them.

use super::kafka::{
    FIRST_READ_OFFSET_HEADER, FIRST_READ_PARTITION_HEADER, KafkaSettings,
    idempotent_producer_config,
};
use crate::batch::Position;
use crate::core::Marker;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::FutureProducer;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// The repartition topic's consumer and its name.
pub struct RepartitionSource {
    pub consumer: StreamConsumer,
    pub topic: String,
}

impl std::fmt::Debug for RepartitionSource {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("RepartitionSource")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

/// Group id of the repartition consumer's offsets.
pub fn repartition_group_id(group_id: &str) -> String {
    format!("{group_id}.repartition")
}

impl RepartitionSource {
    /// Creates the consumer, assigned nothing yet.
    ///
    /// # Errors
    /// Invalid librdkafka settings.
    pub fn try_new(
        settings: &KafkaSettings,
        topic: &str,
    ) -> Result<Self, rdkafka::error::KafkaError> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &settings.bootstrap_servers)
            .set("group.id", repartition_group_id(&settings.group_id))
            // As the traces consumer: offsets stored only once settled, committed periodically.
            .set("enable.auto.offset.store", "false")
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("auto.offset.reset", "earliest")
            // Markers steer what the traces consumer's partitions may apply (`core::align`):
            // a quiet repartition partition answers fetches after 25 ms instead of 500 (with
            // 100, a marker's wait at this broker added about 17 ms to the lag).
            .set("fetch.wait.max.ms", "25");
        settings.client.apply_to(&mut config);
        Ok(RepartitionSource {
            consumer: config.create()?,
            topic: topic.to_owned(),
        })
    }

    fn list(&self, partitions: &[i32]) -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        for partition in partitions {
            // Invalid: start at the committed offset (else `auto.offset.reset`).
            let _ = list.add_partition_offset(&self.topic, *partition, Offset::Invalid);
        }
        list
    }

    /// Starts reading the partitions the group just gave this process.
    pub fn assign(&self, partitions: &[i32]) {
        if partitions.is_empty() {
            return;
        }
        if let Err(error) = self.consumer.incremental_assign(&self.list(partitions)) {
            tracing::error!(%error, ?partitions, "failed to assign repartition partitions");
        }
    }

    /// Stops reading partitions the group took away, after committing what is stored, so
    /// their next owner starts right after it.
    pub fn revoke(&self, partitions: &[i32]) {
        if partitions.is_empty() {
            return;
        }
        if let Err(error) = self.consumer.commit_consumer_state(CommitMode::Sync) {
            // NoOffset: nothing stored since the last commit.
            tracing::debug!(%error, "repartition commit on revoke");
        }
        if let Err(error) = self.consumer.incremental_unassign(&self.list(partitions)) {
            tracing::error!(%error, ?partitions, "failed to unassign repartition partitions");
        }
    }

    /// Pauses or resumes the partitions (with the traces topic's).
    pub fn set_fetching(&self, partitions: &[i32], fetching: bool) {
        let list = self.list(partitions);
        let result = if fetching {
            self.consumer.resume(&list)
        } else {
            self.consumer.pause(&list)
        };
        if let Err(error) = result {
            tracing::debug!(%error, fetching, "failed to pause or resume repartition partitions");
        }
    }

    /// Commits the stored offsets (shutdown).
    pub fn commit(&self) {
        if let Err(error) = self.consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(%error, "repartition commit");
        }
    }
}

/// Creates the producer of forwards. The partition a forward lands in recognises a forward
/// sent again after a crash by its first-read offset being at or below the highest applied,
/// which holds only if the forwards of one sender reach a partition in order and without
/// gaps: one request in flight (retries cannot reorder, even on a broker that lost the
/// idempotent producer's sequence state in a restart), never timing out, and a failure that
/// could leave a gap stops the producer (librdkafka's gapless guarantee); the pipeline's
/// forwarder then sends the undelivered forwards again, in order, through a new one.
///
/// # Errors
/// Invalid librdkafka settings.
pub fn create_forward_producer(
    settings: &KafkaSettings,
) -> Result<FutureProducer, rdkafka::error::KafkaError> {
    let mut config = idempotent_producer_config(settings);
    config
        .set("enable.gapless.guarantee", "true")
        .set("max.in.flight.requests.per.connection", "1")
        // 0: never; a broker outage stalls forwards (backpressure pauses reading) instead of
        // dropping one between two delivered ones.
        .set("message.timeout.ms", "0")
        .set("linger.ms", "5");
    settings.client.apply_to(&mut config);
    config.create()
}

/// Header of a forwarded trace: its order key (`core::align`).
pub const ORDER_KEY_HEADER: &str = "order.key";
/// Header of a marker (a record with no payload): the partition whose progress it announces.
pub const MARKER_FROM_HEADER: &str = "marker.from";
/// Header of a marker: no later forward of that partition has a smaller order key (absent:
/// nothing read yet).
pub const MARKER_BOUND_HEADER: &str = "marker.bound";
/// Header of a marker: every record of that partition with a Kafka timestamp at or before it
/// was read and forwarded (absent: nothing known yet).
pub const MARKER_READ_THROUGH_HEADER: &str = "marker.read_through";
/// Header of a marker: the sender's ownership of the partition (`Marker::epoch`).
pub const MARKER_EPOCH_HEADER: &str = "marker.epoch";

/// What the headers of a record of the repartition topic say.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ForwardHeaders {
    /// Where a forwarded trace was first read.
    pub first_read: Option<Position>,
    pub order_key_ms: Option<i64>,
    /// Set when the record is a marker rather than a forward.
    pub marker: Option<Marker>,
}

/// Reads the headers of a record of the repartition topic.
pub fn forward_headers(message: &impl Message) -> ForwardHeaders {
    let Some(headers) = message.headers() else {
        return ForwardHeaders::default();
    };
    let mut partition = None;
    let mut offset = None;
    let mut order_key_ms = None;
    let mut marker_from = None;
    let mut marker_bound = None;
    let mut marker_read_through = None;
    let mut marker_epoch = None;
    for header in headers.iter() {
        let value = header
            .value
            .and_then(|value| std::str::from_utf8(value).ok());
        match header.key {
            FIRST_READ_PARTITION_HEADER => partition = value.and_then(|value| value.parse().ok()),
            FIRST_READ_OFFSET_HEADER => offset = value.and_then(|value| value.parse().ok()),
            ORDER_KEY_HEADER => order_key_ms = value.and_then(|value| value.parse().ok()),
            MARKER_FROM_HEADER => marker_from = value.and_then(|value| value.parse().ok()),
            MARKER_BOUND_HEADER => marker_bound = value.and_then(|value| value.parse().ok()),
            MARKER_READ_THROUGH_HEADER => {
                marker_read_through = value.and_then(|value| value.parse().ok());
            }
            MARKER_EPOCH_HEADER => marker_epoch = value.and_then(|value| value.parse().ok()),
            _ => {}
        }
    }
    ForwardHeaders {
        first_read: partition
            .zip(offset)
            .map(|(partition, offset)| Position { partition, offset }),
        order_key_ms,
        marker: marker_from.map(|from| Marker {
            from,
            bound_ms: marker_bound,
            read_through_ms: marker_read_through,
            epoch: marker_epoch,
        }),
    }
}
