//! The changelog topic of session state: created to match the traces topic partition for
//! partition, and read back when a partition is assigned (see `sessionize::store`).

use crate::sessionize::store::RestoredPartition;
use crate::source::kafka::KafkaSettings;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use thiserror::Error;

/// Why the changelog could not be prepared or read.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ChangelogError {
    #[error("kafka request failed")]
    Kafka(#[from] KafkaError),
    #[error(
        "topic {topic} does not exist yet; create it (the changelog copies its partition count)"
    )]
    MissingTopic { topic: String },
    #[error("changelog topic {changelog} has {found} partitions, the traces topic {expected}")]
    PartitionMismatch {
        changelog: String,
        found: usize,
        expected: usize,
    },
    #[error("reading changelog partition {partition} did not finish within {timeout:?}")]
    RestoreTimeout { partition: i32, timeout: Duration },
}

fn client_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &settings.bootstrap_servers);
    for (key, value) in &settings.client {
        config.set(key, value);
    }
    config
}

fn partition_count(
    consumer: &BaseConsumer,
    topic: &str,
    timeout: Duration,
) -> Result<Option<usize>, KafkaError> {
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    Ok(metadata
        .topics()
        .iter()
        .find(|candidate| candidate.name() == topic && candidate.error().is_none())
        .map(|found| found.partitions().len())
        .filter(|count| *count > 0))
}

/// Makes sure `changelog` exists with as many partitions as the traces topic, so that state
/// of traces partition `p` lives in changelog partition `p`.
///
/// # Errors
/// The traces topic is missing, the changelog has another partition count, or Kafka fails.
pub async fn ensure_changelog_topic(
    settings: &KafkaSettings,
    changelog: &str,
) -> Result<(), ChangelogError> {
    let timeout = Duration::from_secs(10);
    let probe: BaseConsumer = client_config(settings).create()?;
    let expected = partition_count(&probe, &settings.topic, timeout)?.ok_or_else(|| {
        ChangelogError::MissingTopic {
            topic: settings.topic.clone(),
        }
    })?;
    if let Some(found) = partition_count(&probe, changelog, timeout)? {
        if found != expected {
            return Err(ChangelogError::PartitionMismatch {
                changelog: changelog.to_owned(),
                found,
                expected,
            });
        }
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = client_config(settings).create()?;
    let num_partitions = i32::try_from(expected).unwrap_or(i32::MAX);
    // Compaction keeps the newest record per session; on brokers that never compact the
    // restore still works, it only reads more.
    let topic = NewTopic::new(changelog, num_partitions, TopicReplication::Fixed(-1))
        .set("cleanup.policy", "compact");
    let results = admin.create_topics([&topic], &AdminOptions::new()).await?;
    for result in results {
        match result {
            Ok(_) => tracing::info!(
                topic = changelog,
                num_partitions,
                "created the changelog topic"
            ),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(KafkaError::AdminOp(code).into()),
        }
    }
    Ok(())
}

/// Context of consumers that read a partition to its end: partition EOF is how they know they
/// are done, not an error worth a log line.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadToEndContext;

impl rdkafka::ClientContext for ReadToEndContext {
    fn error(&self, error: KafkaError, reason: &str) {
        let end_of_partition = matches!(error, KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF);
        if !end_of_partition {
            tracing::warn!(%error, reason, "changelog restore consumer error");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for ReadToEndContext {}

/// Reads changelog `partitions` from the start to their end (the high watermark of the fetch
/// responses, signalled by partition EOF). Blocks the calling thread.
///
/// # Errors
/// Kafka errors, or the end not reached within `timeout`.
pub fn read_partitions(
    settings: &KafkaSettings,
    changelog: &str,
    partitions: &[i32],
    timeout: Duration,
) -> Result<HashMap<i32, RestoredPartition>, ChangelogError> {
    let mut restored: HashMap<i32, RestoredPartition> = partitions
        .iter()
        .map(|partition| (*partition, RestoredPartition::default()))
        .collect();
    if partitions.is_empty() {
        return Ok(restored);
    }
    let consumer: BaseConsumer<ReadToEndContext> = client_config(settings)
        .set("group.id", format!("{}-restore", settings.group_id))
        .set("enable.auto.commit", "false")
        // EOF comes from the fetch high watermark, not from a ListOffsets request.
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "50")
        .create_with_context(ReadToEndContext)?;
    let mut assignment = TopicPartitionList::new();
    for partition in partitions {
        assignment.add_partition_offset(changelog, *partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    drop(assignment);
    let until = Instant::now() + timeout;
    let mut unfinished: HashSet<i32> = partitions.iter().copied().collect();
    let mut num_skipped = 0usize;
    while !unfinished.is_empty() {
        if Instant::now() >= until {
            let partition = unfinished.iter().copied().min().unwrap_or_default();
            return Err(ChangelogError::RestoreTimeout { partition, timeout });
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                unfinished.remove(&partition);
            }
            Some(Err(error)) => return Err(error.into()),
            Some(Ok(message)) => {
                let (Some(key), Some(value)) = (message.key(), message.payload()) else {
                    continue;
                };
                if let Some(partition_state) = restored.get_mut(&message.partition())
                    && partition_state.apply(key, value).is_err()
                {
                    num_skipped += 1;
                }
            }
        }
    }
    if num_skipped > 0 {
        tracing::warn!(num_skipped, "skipped undecodable changelog records");
    }
    Ok(restored)
}
