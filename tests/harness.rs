//! Shared pieces of the real-broker tests: where the broker is, unique topics, a plain
//! consumer that reads a topic back.
//!
//! The broker comes from `scripts/kafka-broker.sh up` (`make test` starts it and exports
//! `KAFKA_BOOTSTRAP`). Without it these tests fail with a message saying so: they are never
//! skipped silently.

pub mod openlayer_server;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::time::{Duration, Instant};

/// Bootstrap address of the test broker.
///
/// # Panics
/// When `KAFKA_BOOTSTRAP` is not set: run `make test`, or `make broker-up` and export it.
pub fn bootstrap() -> String {
    match std::env::var("KAFKA_BOOTSTRAP") {
        Ok(bootstrap) if !bootstrap.is_empty() => bootstrap,
        _ => panic!(
            "KAFKA_BOOTSTRAP is not set: these tests need the real broker. Run `make test`, \
             or `make broker-up` and export the KAFKA_BOOTSTRAP it prints"
        ),
    }
}

/// A name no other test run uses, so tests can run in parallel and be rerun.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// Creates `topic` with `partitions` partitions.
///
/// # Panics
/// When the broker refuses; a test cannot go on without its topic.
pub async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let results = admin
        .create_topics([&new_topic], &AdminOptions::new())
        .await
        .expect("create_topics request");
    for result in results {
        result.expect("topic created");
    }
}

/// One record as read back from the broker.
#[derive(Debug, Clone)]
pub struct ReadRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    /// Header names and values (values read as UTF-8, lossily).
    pub headers: Vec<(String, String)>,
}

/// Reads `topic` from the beginning of each of its `partitions` until `expected` records
/// arrived or `deadline` passed, with a plain consumer (no group coordination: assigned).
///
/// # Panics
/// On consumer errors.
pub fn read_topic(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    expected: usize,
    deadline: Duration,
) -> Vec<ReadRecord> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique_name("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .expect("partition offset");
    }
    consumer.assign(&assignment).expect("assign");
    let until = Instant::now() + deadline;
    let mut records = Vec::with_capacity(expected);
    while records.len() < expected && Instant::now() < until {
        let Some(result) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = result.expect("consume");
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|header| {
                        let value = header
                            .value
                            .map(String::from_utf8_lossy)
                            .unwrap_or_default();
                        (header.key.to_owned(), value.into_owned())
                    })
                    .collect()
            })
            .unwrap_or_default();
        records.push(ReadRecord {
            headers,
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        });
    }
    // Drop the assignment list before the consumer (dropping a consumer while one is
    // alive can hang; see rust-rdkafka's consumer drop notes).
    drop(assignment);
    records
}
