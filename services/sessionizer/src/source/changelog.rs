//! The changelog topic of session state, read back when a partition is assigned (see
//! `sessionize::store`; `source::topics` creates the topic).

use crate::sessionize::store::RestoredPartition;
use crate::source::kafka::KafkaSettings;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use thiserror::Error;

/// Why the changelog could not be read.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ChangelogError {
    #[error("kafka request failed")]
    Kafka(#[from] KafkaError),
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
