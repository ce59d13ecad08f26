//! The commit point of each spans partition, kept in the state topic (compacted,
//! co-partitioned with the spans topic): state of spans partition `q` is the newest record of
//! state partition `q`. The consumer group's offset alone cannot say which traces rooted after
//! it were shipped already; the record can (`assembler` module docs).

use super::assembler::Position;
use crate::source::kafka::KafkaSettings;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// One partition's commit point as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitPoint {
    /// Where reading starts again (also committed to the group, after this record landed).
    pub offset: i64,
    /// Rooted traces before this position are shipped.
    pub resume_offset: i64,
    pub resume_index: u32,
}

impl CommitPoint {
    pub fn new(offset: i64, resume: Position) -> Self {
        CommitPoint {
            offset,
            resume_offset: resume.offset,
            resume_index: resume.index,
        }
    }

    pub fn resume(&self) -> Position {
        Position {
            offset: self.resume_offset,
            index: self.resume_index,
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

/// Reads state partition `partition` to its end and returns the newest commit point of spans
/// partition `partition`; `None` when there is none (never committed, or a record that does
/// not parse, which is logged: reading again from the group's offset ships some traces
/// twice, and loses none). Blocks the calling thread.
///
/// # Errors
/// A consumer error, or nothing received for `stall_timeout` before the partition's end.
pub fn read_commit_point(
    settings: &KafkaSettings,
    topic: &str,
    partition: i32,
    stall_timeout: Duration,
) -> Result<Option<CommitPoint>, StateError> {
    let failed = |source| StateError::Kafka {
        topic: topic.to_owned(),
        partition,
        source,
    };
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.bootstrap_servers)
        .set("group.id", format!("{}-otel-restore", settings.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true");
    settings.client.apply_to(&mut config);
    let consumer: BaseConsumer = config.create().map_err(failed)?;
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, partition, Offset::Beginning)
        .map_err(failed)?;
    consumer.assign(&assignment).map_err(failed)?;
    let key = CommitPoint::key(partition);
    let mut newest = None;
    let mut last_progress = Instant::now();
    loop {
        if last_progress.elapsed() >= stall_timeout {
            return Err(StateError::Stalled {
                topic: topic.to_owned(),
                partition,
                waited: stall_timeout,
            });
        }
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(_))) => return Ok(newest),
            Some(Err(error)) => tracing::debug!(%error, topic, partition, "state read"),
            Some(Ok(message)) => {
                last_progress = Instant::now();
                if message.key() != Some(key.as_bytes()) {
                    continue;
                }
                newest = match message.payload().map(serde_json::from_slice::<CommitPoint>) {
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
            }
        }
    }
}
