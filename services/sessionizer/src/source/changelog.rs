//! The changelog topic of session state, read back when a partition is assigned (see
//! `sessionize::store`; `source::topics` creates the topic).

use crate::sessionize::store::RestoredPartition;
use crate::source::kafka::KafkaSettings;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use thiserror::Error;

/// Why the changelog could not be read. [`ChangelogError::kind`] tells a restart-curable
/// failure from one that needs an operator (`source::restore` decides what to do).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ChangelogError {
    #[error("kafka request failed")]
    Kafka(#[from] KafkaError),
    #[error(
        "reading changelog partition {partition} made no progress for {stalled_for:?} at \
         offset {position}"
    )]
    Stalled {
        partition: i32,
        position: i64,
        stalled_for: Duration,
    },
    #[error("reading changelog partition {partition} failed")]
    Fetch {
        partition: i32,
        #[source]
        source: KafkaError,
    },
    #[error(
        "changelog partition {partition} holds an unreadable record at offset {offset} (key \
         `{key}`) and no later record of that key: its session's state cannot be restored \
         exactly; produce a tombstone for that key to the changelog (the session then \
         restarts its turn numbering) or a valid record"
    )]
    Corrupt {
        partition: i32,
        offset: i64,
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("changelog topic `{topic}` partition {partition} does not exist")]
    MissingPartition { topic: String, partition: i32 },
    #[error("the restore was cancelled (shutdown)")]
    Cancelled,
    #[error("the restore task panicked: {0}")]
    Panicked(String),
}

/// What kind of failure a restore attempt met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The brokers are unreachable, slow or still loading: the same read later may succeed.
    Transient,
    /// The changelog topic or partition is unknown: transient right after a broker restart,
    /// a deleted topic when it persists.
    Missing,
    /// Waiting cannot fix it (no permission, a corrupt record).
    Permanent,
    Cancelled,
}

impl ChangelogError {
    pub fn kind(&self) -> FailureKind {
        let code = match self {
            ChangelogError::Kafka(error) | ChangelogError::Fetch { source: error, .. } => {
                error.rdkafka_error_code()
            }
            ChangelogError::Stalled { .. } => return FailureKind::Transient,
            ChangelogError::MissingPartition { .. } => return FailureKind::Missing,
            ChangelogError::Corrupt { .. } | ChangelogError::Panicked(_) => {
                return FailureKind::Permanent;
            }
            ChangelogError::Cancelled => return FailureKind::Cancelled,
        };
        match code {
            Some(
                RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::GroupAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::SaslAuthenticationFailed
                | RDKafkaErrorCode::InvalidConfig,
            ) => FailureKind::Permanent,
            Some(
                RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::UnknownPartition,
            ) => FailureKind::Missing,
            _ => FailureKind::Transient,
        }
    }

    /// The broker could not be reached or did not answer (for readiness).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ChangelogError::Stalled { .. })
            || matches!(
                self,
                ChangelogError::Kafka(error) | ChangelogError::Fetch { source: error, .. }
                    if matches!(
                        error.rdkafka_error_code(),
                        Some(
                            RDKafkaErrorCode::AllBrokersDown
                                | RDKafkaErrorCode::BrokerTransportFailure
                                | RDKafkaErrorCode::OperationTimedOut
                                | RDKafkaErrorCode::RequestTimedOut
                        )
                    )
            )
    }
}

/// Whether `topic` has `partition`, as the metadata says.
///
/// # Errors
/// [`ChangelogError::MissingPartition`] when it has not; the topic's own error (e.g. not
/// authorized) when the broker refuses to describe it; the request's error.
fn check_partition_exists<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> Result<(), ChangelogError> {
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let described = metadata
        .topics()
        .iter()
        .find(|described| described.name() == topic);
    let missing = ChangelogError::MissingPartition {
        topic: topic.to_owned(),
        partition,
    };
    let Some(described) = described else {
        return Err(missing);
    };
    match described.error().map(RDKafkaErrorCode::from) {
        None => {}
        Some(
            RDKafkaErrorCode::UnknownTopicOrPartition
            | RDKafkaErrorCode::UnknownTopic
            | RDKafkaErrorCode::UnknownPartition,
        ) => return Err(missing),
        Some(code) => {
            return Err(ChangelogError::Fetch {
                partition,
                source: KafkaError::MetadataFetch(code),
            });
        }
    }
    if described
        .partitions()
        .iter()
        .any(|found| found.id() == partition)
    {
        Ok(())
    } else {
        Err(missing)
    }
}

/// What a finished read brought back.
#[derive(Debug, Default)]
pub struct RestoreRead {
    pub partitions: HashMap<i32, RestoredPartition>,
    /// Records read per partition.
    pub num_records: HashMap<i32, u64>,
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
/// responses, signalled by partition EOF), with a fresh consumer. Blocks the calling thread.
///
/// There is no overall deadline: a read that keeps receiving records may take as long as it
/// needs. It fails when no record and no end arrived for `stall_timeout` (a broker that is
/// down, restarting or not serving the partition), or on an error that waiting cannot fix.
/// Transient consumer errors (a broker connection lost and re-established) are not failures
/// by themselves: librdkafka reconnects, and the stall bound decides. `cancel` ends the read
/// within a poll interval.
///
/// # Errors
/// See [`ChangelogError`]; [`ChangelogError::kind`] classifies them.
pub fn read_partitions(
    settings: &KafkaSettings,
    changelog: &str,
    partitions: &[i32],
    stall_timeout: Duration,
    cancel: &AtomicBool,
) -> Result<RestoreRead, ChangelogError> {
    let mut read = RestoreRead {
        partitions: partitions
            .iter()
            .map(|partition| (*partition, RestoredPartition::default()))
            .collect(),
        num_records: partitions.iter().map(|partition| (*partition, 0)).collect(),
    };
    if partitions.is_empty() {
        return Ok(read);
    }
    let consumer: BaseConsumer<ReadToEndContext> = client_config(settings)
        .set("group.id", format!("{}-restore", settings.group_id))
        .set("enable.auto.commit", "false")
        // EOF comes from the fetch high watermark, not from a ListOffsets request.
        .set("enable.partition.eof", "true")
        // librdkafka's default fetch.wait.max.ms (500) is kept on purpose: a broker whose
        // storage is slower than a short wait answers each fetch empty, and a restore with a
        // 50 ms wait never advanced on such a broker after its restart.
        .create_with_context(ReadToEndContext)?;
    let mut assignment = TopicPartitionList::new();
    for partition in partitions {
        assignment.add_partition_offset(changelog, *partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    drop(assignment);
    let mut unfinished: HashSet<i32> = partitions.iter().copied().collect();
    let mut positions: HashMap<i32, i64> = HashMap::new();
    // Unreadable records, forgiven when a later record or tombstone of the same key
    // supersedes them (which is how an operator repairs one).
    let mut unreadable: BTreeMap<(i32, Vec<u8>), (i64, serde_json::Error)> = BTreeMap::new();
    let mut last_progress = Instant::now();
    while !unfinished.is_empty() {
        if cancel.load(Ordering::Relaxed) {
            return Err(ChangelogError::Cancelled);
        }
        if last_progress.elapsed() >= stall_timeout {
            let partition = unfinished.iter().copied().min().unwrap_or_default();
            // A consumer of an unknown topic or partition just waits: ask the metadata.
            check_partition_exists(&consumer, changelog, partition, stall_timeout)?;
            return Err(ChangelogError::Stalled {
                partition,
                position: positions.get(&partition).copied().unwrap_or(0),
                stalled_for: stall_timeout,
            });
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                unfinished.remove(&partition);
                last_progress = Instant::now();
            }
            Some(Err(error)) => {
                let failure = ChangelogError::Fetch {
                    partition: unfinished.iter().copied().min().unwrap_or_default(),
                    source: error,
                };
                if failure.kind() != FailureKind::Transient {
                    return Err(failure);
                }
                tracing::debug!(error = %failure, "changelog read: transient consumer error");
            }
            Some(Ok(message)) => {
                last_progress = Instant::now();
                let partition = message.partition();
                positions.insert(partition, message.offset() + 1);
                *read.num_records.entry(partition).or_default() += 1;
                let Some(key) = message.key() else {
                    continue;
                };
                let Some(value) = message.payload() else {
                    unreadable.remove(&(partition, key.to_vec()));
                    continue;
                };
                let Some(partition_state) = read.partitions.get_mut(&partition) else {
                    continue;
                };
                match partition_state.apply(key, value) {
                    Ok(()) => {
                        unreadable.remove(&(partition, key.to_vec()));
                    }
                    Err(error) => {
                        unreadable.insert((partition, key.to_vec()), (message.offset(), error));
                    }
                }
            }
        }
    }
    if let Some(((partition, key), (offset, source))) = unreadable.into_iter().next() {
        return Err(ChangelogError::Corrupt {
            partition,
            offset,
            key: String::from_utf8_lossy(&key).into_owned(),
            source,
        });
    }
    Ok(read)
}
