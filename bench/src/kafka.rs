//! The bench's Kafka clients: topic admin, the producer that loads traces (counting failed
//! deliveries) and the bare consumer the baselines read with.

use crate::setup::{SESSION_TIMEOUT_MS, unique};
use anyhow::Result;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Creates `(name, partitions)` topics with one replica (the test broker has one).
pub(crate) async fn create_topics(bootstrap: &str, topics: &[(&str, i32)]) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
        .collect();
    for result in admin
        .create_topics(&new_topics, &AdminOptions::new())
        .await?
    {
        result.map_err(|(topic, code)| anyhow::anyhow!("creating {topic}: {code}"))?;
    }
    Ok(())
}

/// Deletes `topics`; a topic that cannot be deleted is reported, not an error.
pub(crate) async fn delete_topics(bootstrap: &str, topics: &[String]) -> Result<()> {
    if topics.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    for result in admin.delete_topics(&names, &AdminOptions::new()).await? {
        if let Err((topic, code)) = result {
            eprintln!("bench: could not delete topic {topic}: {code}");
        }
    }
    Ok(())
}

/// Counts failed deliveries: the preload must be complete.
#[derive(Debug, Default)]
pub(crate) struct DeliveryCounter {
    pub(crate) failed: AtomicU64,
}

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _opaque: ()) {
        if result.is_err() {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The emitter's producer settings (trace-emit `Emitter`), with room for a bulk load.
pub(crate) fn producer(bootstrap: &str) -> Result<ThreadedProducer<DeliveryCounter>> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        // The emitter's partitioner: Kafka's Java murmur2 on the key, the function the
        // sessionizer checks every trace against (`trace_model::routing`), so keyed traces land
        // in their session's partition and none is forwarded through the repartition topic.
        .set("partitioner", "murmur2_random")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .create_with_context(DeliveryCounter::default())?)
}

/// Hands one record to the producer, waiting while its queue is full. `partition`: where it
/// goes, else the partitioner's choice for `key`.
pub(crate) fn send(
    producer: &ThreadedProducer<DeliveryCounter>,
    topic: &str,
    key: &str,
    partition: Option<i32>,
    payload: &[u8],
) {
    let mut record = BaseRecord::to(topic).key(key).payload(payload);
    if let Some(partition) = partition {
        record = record.partition(partition);
    }
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((_, unsent)) => {
                // Queue full: let librdkafka's thread deliver some, then retry.
                record = unsent;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

/// What the baselines share with the sessionizer's consumer: a fresh group reading from the
/// beginning, classic protocol, short session timeout for a quick join.
pub(crate) fn baseline_consumer(bootstrap: &str, topic: &str) -> Result<BaseConsumer> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("bench-baseline"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", SESSION_TIMEOUT_MS.to_string())
        .set(
            "heartbeat.interval.ms",
            (SESSION_TIMEOUT_MS / 3).to_string(),
        )
        .set("group.protocol", "classic")
        .create()?;
    consumer.subscribe(&[topic])?;
    Ok(consumer)
}
