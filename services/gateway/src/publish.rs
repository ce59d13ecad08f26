//! Producing a request's records to the traces topic, and knowing whether the broker answers.
//!
//! [`Publish`] is the seam between HTTP and Kafka: the handlers hand it every record of one
//! request, which it queues at once, in order, and get back their [`Acknowledgement`]: it
//! resolves `Ok` when Kafka acknowledged them all (idempotent producer, `acks=all`). By
//! default a request is answered 200 only then; with `http.answer_after = "queued"` it is
//! answered once queued, and the acknowledgement is awaited behind it. [`KafkaPublisher`] sets librdkafka's
//! `message.timeout.ms` to the produce timeout, so librdkafka itself reports a record it could
//! not deliver in time and no record is delivered after its request was answered 503; the SDK
//! then retries the whole request. A request some of whose records were acknowledged before
//! the failure is produced again in full on retry: at-least-once, with the rows' inference
//! ids unchanged. Tests use their own implementation to answer with `.oneshot`.
//!
//! A producer can get stuck: librdkafka's idempotent producer keeps retrying with a producer
//! id the cluster no longer knows (a cluster whose state was lost, as the in-memory test
//! broker loses it on restart), or hits a fatal error. Because the rows of a failed request
//! are retried by the SDK anyway, the publisher then replaces its producer: after a fatal
//! error, or after [`REBUILD_AFTER_FAILURES`] failed publishes in a row while the broker
//! answers metadata requests.

use crate::config::KafkaSettings;
use crate::rows::{Destination, Outgoing};
use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use service_kit::kafka::TopicCommands;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

/// Why records could not be produced (the request is answered 503).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The broker did not acknowledge in time (down, or slow).
    #[error("kafka did not acknowledge in time")]
    Timeout,
    /// The producer's buffer is full.
    #[error("the producer queue is full")]
    QueueFull,
    /// The broker refused or the connection failed.
    #[error("kafka refused the records")]
    Kafka,
    /// Known unreachable: answered before trying.
    #[error("kafka is unreachable")]
    Unreachable,
}

impl PublishError {
    /// Every reason, for creating metric series at zero.
    pub const REASONS: &'static [&'static str] = &["timeout", "queue_full", "kafka", "unreachable"];

    pub fn reason(self) -> &'static str {
        match self {
            PublishError::Timeout => "timeout",
            PublishError::QueueFull => "queue_full",
            PublishError::Kafka => "kafka",
            PublishError::Unreachable => "unreachable",
        }
    }
}

/// Resolves when every record of a request is acknowledged, or with the first failure. It
/// owns what it needs, so it can be awaited after the request was answered.
pub type Acknowledgement = Pin<Box<dyn Future<Output = Result<(), PublishError>> + Send>>;

/// Where the handlers put a request's records.
pub trait Publish: Send + Sync + 'static {
    /// Queues every record, in order, and returns their acknowledgement; `Err` when one could
    /// not be queued (records queued before it may still be delivered: at least once).
    ///
    /// # Errors
    /// The reason a record could not be queued.
    fn publish(self: Arc<Self>, records: Vec<Outgoing>) -> Result<Acknowledgement, PublishError>;
}

/// Whether the broker answers: set by the readiness check and by deliveries.
#[derive(Debug, Clone, Default)]
pub struct BrokerState {
    reachable: Arc<AtomicBool>,
}

impl BrokerState {
    pub fn is_reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    pub fn set_reachable(&self, reachable: bool) {
        self.reachable.store(reachable, Ordering::Relaxed);
    }
}

/// Failed publishes in a row, while the broker answers, after which the producer is replaced.
pub const REBUILD_AFTER_FAILURES: u32 = 3;

/// The idempotent producer on the traces topic.
pub struct KafkaPublisher {
    /// Replaced when stuck (see the module doc); requests in flight keep the old one.
    producer: RwLock<Arc<FutureProducer>>,
    /// How to build another producer.
    client: ClientConfig,
    consecutive_failures: AtomicU32,
    topic: String,
    spans_topic: Option<String>,
    produce_timeout: Duration,
    broker: BrokerState,
    /// The command that creates the topic, logged once when the broker does not know it.
    create_topic_command: String,
    topic_absent_logged: AtomicBool,
    /// `kafka.spans_topic` and the command that creates it, when set.
    spans_topic_check: Option<(String, String)>,
    spans_topic_absent_logged: AtomicBool,
}

impl std::fmt::Debug for KafkaPublisher {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("KafkaPublisher")
            .field("topic", &self.topic)
            .field("produce_timeout", &self.produce_timeout)
            .finish_non_exhaustive()
    }
}

impl KafkaPublisher {
    /// # Errors
    /// When librdkafka refuses a setting (a passthrough property, most likely).
    pub fn try_new(settings: &KafkaSettings, broker: BrokerState) -> Result<Self, KafkaError> {
        let timeout_ms = settings.produce_timeout.as_millis().to_string();
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &settings.bootstrap_servers)
            // Exactly-once per partition and no reordering on retries; implies acks=all.
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // librdkafka gives up on (and reports) a record after this long, so a record is
            // never delivered after its request was answered 503.
            .set("message.timeout.ms", &timeout_ms)
            // The producer helpers' codec: cheap, and the sessionizer reads it.
            .set("compression.type", "lz4")
            // 0 when requests wait for their acknowledgement: a linger would add to each one.
            // Records of concurrent requests still share batches, those queued while earlier
            // ones are in flight. See `KafkaSettings::linger`.
            .set("linger.ms", settings.linger.as_millis().to_string())
            // Java's partitioner (trace_model::routing): a session's rows land in the
            // partition the sessionizer keeps it in, and need no repartitioning hop.
            .set("partitioner", "murmur2_random");
        for (key, value) in &settings.client.0 {
            client.set(key, value);
        }
        let commands = TopicCommands {
            bootstrap_servers: &settings.bootstrap_servers,
            secured: TopicCommands::is_secured(&settings.client.0),
        };
        Ok(KafkaPublisher {
            producer: RwLock::new(Arc::new(client.create()?)),
            client,
            consecutive_failures: AtomicU32::new(0),
            topic: settings.topic.clone(),
            spans_topic: settings.spans_topic.clone(),
            produce_timeout: settings.produce_timeout,
            broker,
            create_topic_command: commands.create_topic(&settings.topic, None, &[]),
            topic_absent_logged: AtomicBool::new(false),
            spans_topic_check: settings
                .spans_topic
                .as_ref()
                .map(|topic| (topic.clone(), commands.create_topic(topic, None, &[]))),
            spans_topic_absent_logged: AtomicBool::new(false),
        })
    }

    /// Asks the broker for the topic's metadata (blocking; run it off the async threads).
    /// An answer is enough: a topic the broker does not know yet (a fresh cluster that
    /// creates topics on first produce) must not keep the gateway from producing.
    /// A missing topic is logged once, with the command that creates it.
    pub fn check_broker(&self, timeout: Duration) -> bool {
        let reachable = self.check_topic(
            &self.topic,
            &self.create_topic_command,
            &self.topic_absent_logged,
            timeout,
        );
        self.broker.set_reachable(reachable);
        if reachable && let Some((topic, command)) = &self.spans_topic_check {
            self.check_topic(topic, command, &self.spans_topic_absent_logged, timeout);
        }
        reachable
    }

    /// Whether the broker answered for `topic`; logs once (until it appears) that it is
    /// missing, with `command`, the command that creates it.
    fn check_topic(
        &self,
        topic: &str,
        command: &str,
        absent_logged: &AtomicBool,
        timeout: Duration,
    ) -> bool {
        let metadata = self
            .producer()
            .client()
            .fetch_metadata(Some(topic), timeout);
        let Ok(metadata) = metadata else {
            return false;
        };
        let absent = metadata
            .topics()
            .iter()
            .find(|known| known.name() == topic)
            .is_none_or(|known| known.error().is_some() || known.partitions().is_empty());
        if !absent {
            absent_logged.store(false, Ordering::Relaxed);
        } else if !absent_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                topic,
                command,
                "a topic the gateway produces to does not exist: requests that need it fail \
                 with 503 unless the brokers create topics on first produce; create it with \
                 the command"
            );
        }
        true
    }

    /// Waits for records still queued, at most `timeout` (shutdown).
    ///
    /// # Errors
    /// When records are still unacknowledged after it.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer().flush(timeout)
    }

    fn producer(&self) -> Arc<FutureProducer> {
        Arc::clone(&self.producer.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Counts a publish outcome; replaces the producer when it looks stuck.
    fn record_outcome(&self, producer: &FutureProducer, succeeded: bool) {
        if succeeded {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            return;
        }
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let fatal = producer.client().fatal_error();
        let stuck = failures >= REBUILD_AFTER_FAILURES && self.broker.is_reachable();
        if fatal.is_none() && !stuck {
            return;
        }
        match self.client.create::<FutureProducer>() {
            Ok(fresh) => {
                tracing::warn!(
                    failures,
                    fatal = ?fatal.map(|(code, _)| code),
                    "kafka producer stuck; replaced with a new one"
                );
                *self
                    .producer
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = Arc::new(fresh);
                self.consecutive_failures.store(0, Ordering::Relaxed);
            }
            Err(error) => tracing::error!(%error, "failed to replace the kafka producer"),
        }
    }
}

impl Publish for KafkaPublisher {
    fn publish(self: Arc<Self>, records: Vec<Outgoing>) -> Result<Acknowledgement, PublishError> {
        let producer = self.producer();
        let deliveries = match self.queue(&producer, &records) {
            Ok(deliveries) => deliveries,
            Err(error) => {
                self.record_outcome(&producer, false);
                return Err(error);
            }
        };
        Ok(Box::pin(async move {
            let outcome = self.acknowledged(deliveries).await;
            self.record_outcome(&producer, outcome.is_ok());
            outcome
        }))
    }
}

impl KafkaPublisher {
    /// Hands `records` to `producer`, in order.
    fn queue(
        &self,
        producer: &FutureProducer,
        records: &[Outgoing],
    ) -> Result<Vec<DeliveryFuture>, PublishError> {
        // The OTLP handler sends spans only when the topic is set; checked before anything
        // is produced.
        if self.spans_topic.is_none()
            && records
                .iter()
                .any(|record| record.destination == Destination::Spans)
        {
            return Err(PublishError::Kafka);
        }
        let mut deliveries = Vec::with_capacity(records.len());
        for record in records {
            let topic = match (record.destination, &self.spans_topic) {
                (Destination::Spans, Some(spans_topic)) => spans_topic,
                _ => &self.topic,
            };
            let mut future_record = FutureRecord::to(topic).payload(&record.payload);
            if let Some(key) = &record.key {
                future_record = future_record.key(key);
            }
            match producer.send_result(future_record) {
                Ok(delivery) => deliveries.push(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    return Err(PublishError::QueueFull);
                }
                Err(_) => return Err(PublishError::Kafka),
            }
        }
        Ok(deliveries)
    }

    /// Waits for every delivery report.
    async fn acknowledged(&self, deliveries: Vec<DeliveryFuture>) -> Result<(), PublishError> {
        // librdkafka reports every record within message.timeout.ms; the margin only
        // guards against a report that never comes.
        let all_acknowledged =
            tokio::time::timeout(self.produce_timeout + Duration::from_secs(5), async {
                let mut outcome = Ok(());
                for delivery in deliveries {
                    match delivery.await {
                        Ok(Ok(_)) => {}
                        Ok(Err((
                            KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut),
                            _,
                        ))) => {
                            outcome = outcome.and(Err(PublishError::Timeout));
                        }
                        Ok(Err(_)) | Err(_) => outcome = outcome.and(Err(PublishError::Kafka)),
                    }
                }
                outcome
            })
            .await
            .unwrap_or(Err(PublishError::Timeout));
        // Only the metadata check marks the broker unreachable: a stuck producer times out
        // while the broker answers, and must be told apart from a broker that is down.
        if all_acknowledged.is_ok() {
            self.broker.set_reachable(true);
        }
        all_acknowledged
    }
}
