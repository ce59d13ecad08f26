//! The commit point of each spans partition, kept in the state topic (compacted,
//! co-partitioned with the spans topic): state of spans partition `q` is the newest record of
//! state partition `q`. The consumer group's offset alone cannot say which traces rooted after
//! it were shipped already; the record can (`assembler` module docs).

use super::assembler::{Position, Resume};
use crate::source::kafka::KafkaSettings;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// One partition's commit point as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitPoint {
    /// Where reading starts again (also committed to the group, after this record landed).
    pub offset: i64,
    /// Rooted traces before this position are shipped...
    pub resume_offset: i64,
    pub resume_index: u32,
    /// ...and those rooted at these (offset, index) positions.
    #[serde(default)]
    pub shipped: Vec<(i64, u32)>,
}

impl CommitPoint {
    pub fn new(offset: i64, resume: &Resume) -> Self {
        CommitPoint {
            offset,
            resume_offset: resume.before.offset,
            resume_index: resume.before.index,
            shipped: resume
                .shipped
                .iter()
                .map(|root| (root.offset, root.index))
                .collect(),
        }
    }

    pub fn resume(&self) -> Resume {
        let position = |(offset, index)| Position { offset, index };
        Resume {
            before: position((self.resume_offset, self.resume_index)),
            shipped: self.shipped.iter().copied().map(position).collect(),
        }
    }

    /// The record's key: the spans partition.
    pub fn key(partition: i32) -> String {
        partition.to_string()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("reading partition {partition} of the state topic `{topic}` failed")]
    Kafka {
        topic: String,
        partition: i32,
        #[source]
        source: KafkaError,
    },
    #[error(
        "partition {partition} of the state topic `{topic}` sent nothing for {waited:?} before its end"
    )]
    Stalled {
        topic: String,
        partition: i32,
        waited: Duration,
    },
}

/// Reads state `partitions` to their ends and returns the newest commit point of each spans
/// partition of the same number; `None` when there is none (never committed, or a record that
/// does not parse, which is logged: reading again from the group's offset ships some traces
/// twice, and loses none). Blocks the calling thread.
///
/// # Errors
/// A consumer error, or nothing received for `stall_timeout` before every partition's end.
pub fn read_commit_points(
    settings: &KafkaSettings,
    topic: &str,
    partitions: &[i32],
    stall_timeout: Duration,
) -> Result<HashMap<i32, Option<CommitPoint>>, StateError> {
    let failed = |partition, source| StateError::Kafka {
        topic: topic.to_owned(),
        partition,
        source,
    };
    let first = partitions.first().copied().unwrap_or_default();
    let mut points: HashMap<i32, Option<CommitPoint>> = partitions
        .iter()
        .map(|partition| (*partition, None))
        .collect();
    if partitions.is_empty() {
        return Ok(points);
    }
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.bootstrap_servers)
        .set("group.id", format!("{}-otel-restore", settings.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true");
    settings.client.apply_to(&mut config);
    let consumer: BaseConsumer = config.create().map_err(|error| failed(first, error))?;
    let mut assignment = TopicPartitionList::new();
    for partition in partitions {
        assignment
            .add_partition_offset(topic, *partition, Offset::Beginning)
            .map_err(|error| failed(*partition, error))?;
    }
    consumer
        .assign(&assignment)
        .map_err(|error| failed(first, error))?;
    let mut unfinished: HashSet<i32> = partitions.iter().copied().collect();
    let mut last_progress = Instant::now();
    while let Some(partition) = unfinished.iter().copied().min() {
        if last_progress.elapsed() >= stall_timeout {
            return Err(StateError::Stalled {
                topic: topic.to_owned(),
                partition,
                waited: stall_timeout,
            });
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                unfinished.remove(&partition);
                last_progress = Instant::now();
            }
            Some(Err(error)) => tracing::debug!(%error, topic, "state read"),
            Some(Ok(message)) => {
                last_progress = Instant::now();
                let partition = message.partition();
                if message.key() != Some(CommitPoint::key(partition).as_bytes()) {
                    continue;
                }
                let point = match message.payload().map(serde_json::from_slice::<CommitPoint>) {
                    Some(Ok(point)) => Some(point),
                    None => None,
                    Some(Err(error)) => {
                        tracing::warn!(
                            %error, topic, partition, offset = message.offset(),
                            "unreadable otel commit point: reading from the group's offset"
                        );
                        None
                    }
                };
                points.insert(partition, point);
            }
        }
    }
    drop(assignment);
    Ok(points)
}
