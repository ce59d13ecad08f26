//! The Kafka consumer of the traces topic and the producers of side outputs (dead letters,
//! session summaries) and of changelog checkpoints.
//!
//! Rebalance protocol: rdkafka calls the context's rebalance hooks synchronously from inside
//! the consumer's poll, which runs on the pipeline task itself. The hooks therefore never wait
//! for the pipeline (that would deadlock); they do the synchronous part at once and leave a
//! [`RebalanceEvent`] for the pipeline, which applies them before handling a message, a tick
//! or the drain. On revoke that part is: wait, at most [`HANDOVER_TIMEOUT`], for the revoked
//! partitions' changelog checkpoints (queued on blocking threads and delivered by librdkafka's,
//! neither of which needs the pipeline; `source::handover`), then commit the offsets already
//! stored, i.e. acknowledged. Rows still in flight for a revoked partition are not committed;
//! its new owner redoes them (at-least-once).

use crate::core::{HighWatermark, Now};
use crate::source::handover::{HANDOVER_TIMEOUT, Handover};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::producer::FutureProducer;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, ClientContext};
use service_kit::client_properties::ClientProperties;
use std::collections::HashMap;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Validated `[kafka]`: the cluster, the group and the topics, for the consumer of the traces
/// topic, the producer of side outputs, the changelog restore and the topic checks.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// Comma-separated, whitespace removed.
    pub bootstrap_servers: String,
    pub group_id: String,
    pub topic: String,
    pub dead_letter_topic: String,
    /// `None` turns session summaries off.
    pub sessions_topic: Option<String>,
    /// Session state changelog; `None` keeps state in memory only (restarts and rebalances
    /// then restart turn numbering of open sessions).
    pub changelog_topic: Option<String>,
    /// Where traces read in another partition than their session's are forwarded (co-partitioned
    /// with `topic`); `None` sessionizes traces where they are read.
    pub repartition_topic: Option<String>,
    /// Resolves Confluent schema ids: the registry's URL and credentials; `None`:
    /// Confluent-framed traces are dead-lettered.
    pub schema_registry_url: Option<crate::config::SchemaRegistrySettings>,
    /// How often session state is checkpointed and acknowledged offsets stored.
    pub checkpoint_interval: Duration,
    /// With repartitioning, the longest a trace waits for the other partitions' forwards.
    pub repartition_max_wait: Duration,
    /// With repartitioning, how many of a partition's own traces wait at most before its
    /// reading pauses.
    pub repartition_max_buffered: usize,
    /// Group session timeout (`session.timeout.ms`); validation bounds it to an hour.
    pub session_timeout: Duration,
    /// librdkafka settings applied last (TLS, SASL, ...) with [`ClientProperties::apply_to`].
    pub client: ClientProperties,
}

/// Header of a forwarded trace and of a dead letter: the traces topic partition it was first
/// read from.
pub const FIRST_READ_PARTITION_HEADER: &str = "source.partition";
/// Header of a forwarded trace and of a dead letter: the traces topic offset it was first
/// read at.
pub const FIRST_READ_OFFSET_HEADER: &str = "source.offset";

/// A change of ownership, for the pipeline to apply to its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebalanceEvent {
    Assigned(Vec<i32>),
    Revoked(Vec<i32>),
}

/// High watermarks per partition, from the fetch responses librdkafka reports in its
/// statistics (not from ListOffsets requests, which cost a round trip and which some brokers
/// answer wrongly).
pub type HighWatermarks = Arc<Mutex<HashMap<i32, HighWatermark>>>;

/// Per partition, the records between its high watermark and what the application read (what
/// was fetched, before the first message), and when the statistics said so (Unix ms).
pub type FetchLags = Arc<Mutex<HashMap<i32, (i64, i64)>>>;

/// Consumer context: turns rebalances into events and statistics into high watermarks.
pub struct SourceContext {
    topic: String,
    events: Mutex<Sender<RebalanceEvent>>,
    high_watermarks: HighWatermarks,
    fetch_lags: FetchLags,
    /// With a changelog: what a revoke waits for (`source::handover`).
    handover: Option<Handover>,
}

impl std::fmt::Debug for SourceContext {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SourceContext")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl ClientContext for SourceContext {
    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        let at_ms = Now::system().wall_ms;
        let mut high_watermarks = self
            .high_watermarks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut fetch_lags = self
            .fetch_lags
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for partition in topic.partitions.values() {
            // -1 is librdkafka's "not fetched yet"; the internal partition is -1 too.
            if partition.partition >= 0 && partition.hi_offset >= 0 {
                let watermark = HighWatermark {
                    offset: partition.hi_offset,
                    at_ms,
                };
                high_watermarks.insert(partition.partition, watermark);
            }
            // Against what the application read; before its first message, what was fetched
            // (negative until the partition's first fetch).
            let position = if partition.app_offset >= 0 {
                partition.app_offset
            } else {
                partition.next_offset
            };
            if partition.partition >= 0 && partition.hi_offset >= 0 && position >= 0 {
                let lag = partition.hi_offset - position;
                fetch_lags.insert(partition.partition, (lag, at_ms));
            }
        }
    }
}

fn partitions_of(list: &rdkafka::TopicPartitionList, topic: &str) -> Vec<i32> {
    let mut partitions: Vec<i32> = list
        .elements()
        .iter()
        .filter(|element| element.topic() == topic)
        .map(|element| element.partition())
        .collect();
    partitions.sort_unstable();
    partitions
}

impl SourceContext {
    fn send(&self, event: RebalanceEvent) {
        let sender = self
            .events
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // The pipeline owns the receiver for the consumer's whole life.
        let _pipeline_gone = sender.send(event);
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let partitions = partitions_of(list, &self.topic);
            // The next owner reads the changelog once this returns. Partitions lost (this
            // member was evicted) may have been read already; delivering at once still
            // narrows the window in which this member's last checkpoint lands after theirs.
            if let Some(handover) = &self.handover
                && let Err(error) = handover.wait(&partitions, HANDOVER_TIMEOUT)
            {
                tracing::warn!(
                    ?partitions,
                    error = %service_kit::fatal::cause_chain(&error),
                    "revoking partitions whose last changelog checkpoint is not delivered: \
                     if it lands after their next owner's checkpoints, a later restore of \
                     these partitions reads older session state"
                );
            }
            // Offsets stored so far are acknowledged ones: commit them while we still own
            // the partitions, so the next owner starts exactly after them.
            if let Err(error) = consumer.commit_consumer_state(CommitMode::Sync) {
                // NoOffset: nothing stored since the last commit.
                tracing::debug!(%error, "commit on revoke");
            }
            tracing::info!(?partitions, "partitions revoked");
            self.send(RebalanceEvent::Revoked(partitions));
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let partitions = partitions_of(list, &self.topic);
                tracing::info!(?partitions, "partitions assigned");
                self.send(RebalanceEvent::Assigned(partitions));
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(error) => tracing::warn!(%error, "rebalance failed"),
        }
    }
}

/// The traces consumer, its rebalance events and the high watermarks it observed.
pub struct Source {
    pub consumer: StreamConsumer<SourceContext>,
    pub rebalances: Receiver<RebalanceEvent>,
    pub high_watermarks: HighWatermarks,
    pub fetch_lags: FetchLags,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Source").finish_non_exhaustive()
    }
}

/// Creates the consumer of the traces topic and subscribes it; with `handover`, a revoke
/// waits for the changelog checkpoints of its partitions.
///
/// # Errors
/// Invalid librdkafka settings or a failed subscription.
pub fn create_source(
    settings: &KafkaSettings,
    handover: Option<Handover>,
) -> Result<Source, rdkafka::error::KafkaError> {
    subscribe(settings, &settings.group_id, &settings.topic, handover)
}

/// Creates a consumer like the traces topic's, for `topic` in group `group_id` (the Collector
/// path's spans topic).
///
/// # Errors
/// Invalid librdkafka settings or a failed subscription.
pub fn create_consumer(
    settings: &KafkaSettings,
    group_id: &str,
    topic: &str,
) -> Result<Source, rdkafka::error::KafkaError> {
    subscribe(settings, group_id, topic, None)
}

fn subscribe(
    settings: &KafkaSettings,
    group_id: &str,
    topic: &str,
    handover: Option<Handover>,
) -> Result<Source, rdkafka::error::KafkaError> {
    let (sender, rebalances) = channel();
    let high_watermarks = HighWatermarks::default();
    let fetch_lags = FetchLags::default();
    let context = SourceContext {
        topic: topic.to_owned(),
        events: Mutex::new(sender),
        high_watermarks: high_watermarks.clone(),
        fetch_lags: fetch_lags.clone(),
        handover,
    };
    let session_timeout_ms = settings.session_timeout.as_millis();
    let heartbeat_ms = (session_timeout_ms / 3).max(100);
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.bootstrap_servers)
        .set("group.id", group_id)
        // Offsets are stored only once every row at and below them is acknowledged
        // (commit.rs); librdkafka then commits the stored offsets periodically.
        .set("enable.auto.offset.store", "false")
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        // A new group reads the topic from the start: no trace is skipped.
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", session_timeout_ms.to_string())
        .set("heartbeat.interval.ms", heartbeat_ms.to_string())
        // Statistics carry the fetch high watermark for the consumer-lag metric and for when
        // a quiet partition is caught up (core::align, which waits for it).
        .set("statistics.interval.ms", "1000")
        // Classic protocol: KIP-848 groups are not available on every broker.
        .set("group.protocol", "classic")
        // Incremental rebalances: a member joining or leaving moves only the partitions that
        // change owner; the others keep their state and in-flight rows.
        .set("partition.assignment.strategy", "cooperative-sticky");
    settings.client.apply_to(&mut config);
    let consumer: StreamConsumer<SourceContext> = config.create_with_context(context)?;
    consumer.subscribe(&[topic])?;
    Ok(Source {
        consumer,
        rebalances,
        high_watermarks,
        fetch_lags,
    })
}

/// Creates a producer of side outputs (dead letters, session summaries) or of changelog
/// checkpoints: the pipeline makes one of each.
///
/// # Errors
/// Invalid librdkafka settings.
pub fn create_producer(
    settings: &KafkaSettings,
) -> Result<FutureProducer, rdkafka::error::KafkaError> {
    let mut config = idempotent_producer_config(settings);
    config.set("linger.ms", "20");
    // librdkafka ignores (with a warning) consumer-only settings on a producer.
    settings.client.apply_to(&mut config);
    config.create()
}

/// What every producer of the service sets: a record it writes settles a message only once
/// Kafka has it, so no duplicates and no loss (`kafka.client` is applied after the caller's
/// own settings).
pub fn idempotent_producer_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.bootstrap_servers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4");
    config
}

/// Stores `offset`, the next offset to read, of `partition` of `topic` on `consumer`, for its
/// next commit (`rd_kafka_offset_store` would store one more).
///
/// # Errors
/// The partition is not assigned (any more).
pub fn store_next_offset<C: ConsumerContext>(
    consumer: &StreamConsumer<C>,
    topic: &str,
    partition: i32,
    offset: i64,
) -> rdkafka::error::KafkaResult<()> {
    let mut offsets = rdkafka::TopicPartitionList::new();
    offsets.add_partition_offset(topic, partition, rdkafka::Offset::Offset(offset))?;
    consumer.store_offsets(&offsets)
}
