//! Producing a request's records to the traces topic, and knowing whether the broker answers.
//!
//! [`Publish`] is the seam between HTTP and Kafka: the handlers hand it every record of one
//! request, which it queues at once, in order, with a [`Settle`] callback: called once, with
//! `Ok` when Kafka acknowledged them all (idempotent producer, `acks=all`), on the producer's
//! delivery thread. By default a request is answered 200 only then; with
//! `http.answer_after = "queued"` it is answered once queued, and the callback settles the
//! rows' accounting behind it, with no task per request. [`KafkaPublisher`] sets librdkafka's
//! `message.timeout.ms` to the produce timeout, so librdkafka itself reports a record it could
//! not deliver in time; the SDK then retries the whole request (a record that timed out in
//! flight may still have been written). A request some of whose records were acknowledged
//! before the failure is produced again in full on retry: at-least-once, with the rows'
//! inference ids unchanged. Tests use their own implementation to answer with `.oneshot`.
//!
//! A producer can get stuck: librdkafka's idempotent producer keeps retrying with a producer
//! id the cluster no longer knows (a cluster whose state was lost, as the in-memory test
//! broker loses it on restart), or hits a fatal error. Because the rows of a failed request
//! are retried by the SDK anyway, the publisher then replaces its producer: after a fatal
//! error, or after [`REBUILD_AFTER_FAILURES`] failed publishes in a row while the broker
//! answers metadata requests, at most once per produce timeout. The replaced producer is
//! flushed on a thread of its own, so its records are reported on, not purged.

use crate::config::KafkaSettings;
use crate::rows::{Destination, Outgoing};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, ClientContext};
use service_kit::kafka::TopicCommands;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

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

/// Called once with the outcome of a request's records: `Ok` when Kafka acknowledged every
/// one, else the first failure. It may run on a thread of the producer: it must not block.
pub type Settle = Box<dyn FnOnce(Result<(), PublishError>) + Send>;

/// Where the handlers put a request's records.
pub trait Publish: Send + Sync + 'static {
    /// Queues every record, in order; `settle` is called once all are reported on, on
    /// whatever thread reports last (possibly before `publish` returns). `Err` when one could
    /// not be queued: `settle` is then dropped uncalled (records queued before it may still
    /// be delivered: at least once).
    ///
    /// # Errors
    /// The reason a record could not be queued.
    fn publish(&self, records: Vec<Outgoing>, settle: Settle) -> Result<(), PublishError>;

    /// Whether the last request to settle failed, or could not be queued: requests that would
    /// be answered once queued wait for their acknowledgement instead until one succeeds, so
    /// that once Kafka's failures are reported they are 503s the SDK retries rather than rows
    /// lost behind 200s.
    fn failing(&self) -> bool;
}

/// A request's records not yet reported on, shared by their delivery reports.
struct Pending {
    remaining: AtomicUsize,
    failure: Mutex<Option<PublishError>>,
    /// Taken by the last report; dropped uncalled when queueing failed.
    settle: Mutex<Option<Settle>>,
}

impl Pending {
    fn new(records: usize, settle: Settle) -> Self {
        Pending {
            remaining: AtomicUsize::new(records),
            failure: Mutex::new(None),
            settle: Mutex::new(Some(settle)),
        }
    }

    /// Counts `records` reported on; the outcome of the request once the last one is.
    fn report(
        &self,
        records: usize,
        outcome: Result<(), PublishError>,
    ) -> Option<Result<(), PublishError>> {
        let mut failure = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(error) = outcome {
            failure.get_or_insert(error);
        }
        if self.remaining.fetch_sub(records, Ordering::AcqRel) != records {
            return None;
        }
        Some((*failure).map_or(Ok(()), Err))
    }

    /// Counts `records` reported on; once the last one is, records the request's outcome and
    /// settles it, unless queueing failed (that failure was counted then, and answered).
    fn deliver(&self, records: usize, outcome: Result<(), PublishError>, outcomes: &Outcomes) {
        if let Some(outcome) = self.report(records, outcome)
            && let Some(settle) = self.take_settle()
        {
            outcomes.record(outcome.is_ok());
            settle(outcome);
        }
    }

    /// The callback, unless queueing failed and took it away.
    fn take_settle(&self) -> Option<Settle> {
        self.settle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

/// What delivery reports update, shared by every producer the publisher builds.
#[derive(Debug, Default)]
struct Outcomes {
    /// Requests failed in a row, in Kafka or while queueing; reset when the producer is
    /// replaced.
    consecutive_failures: AtomicU32,
    /// The last request failed ([`Publish::failing`]); only a success clears it.
    last_failed: AtomicBool,
    broker: BrokerState,
}

impl Outcomes {
    fn record(&self, succeeded: bool) {
        self.last_failed.store(!succeeded, Ordering::Relaxed);
        if succeeded {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            // Only the metadata check marks the broker unreachable: a stuck producer times
            // out while the broker answers, and must be told apart from a broker that is down.
            self.broker.set_reachable(true);
        } else {
            self.consecutive_failures.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The producer's context: settles requests from librdkafka's delivery reports, on the
/// producer's polling thread.
struct Deliveries {
    outcomes: Arc<Outcomes>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Arc<Pending>;

    fn delivery(&self, delivery: &DeliveryResult<'_>, pending: Arc<Pending>) {
        let outcome = match delivery {
            Ok(_) => Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut), _)) => {
                Err(PublishError::Timeout)
            }
            Err(_) => Err(PublishError::Kafka),
        };
        pending.deliver(1, outcome, &self.outcomes);
    }
}

type TracesProducer = ThreadedProducer<Deliveries>;

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
    /// Replaced when stuck (see the module doc): the old one is flushed on a thread of its
    /// own, so that the records still in it are reported on, not purged.
    producer: RwLock<Arc<TracesProducer>>,
    /// Threads flushing replaced producers; shutdown waits for them too.
    retiring: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// How to build another producer.
    client: ClientConfig,
    /// When the producer was last replaced: at most once per produce timeout, as requests
    /// still failing on the old one count against the new one.
    replaced_at: Mutex<Option<Instant>>,
    outcomes: Arc<Outcomes>,
    topic: String,
    spans_topic: Option<String>,
    produce_timeout: Duration,
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

/// The producer's librdkafka settings, the `kafka.client` passthrough applied last. Public
/// for the bench, whose bare producer baseline produces with the same.
pub fn producer_config(settings: &KafkaSettings) -> ClientConfig {
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
    client
}

impl KafkaPublisher {
    /// # Errors
    /// When librdkafka refuses a setting (a passthrough property, most likely).
    pub fn try_new(settings: &KafkaSettings, broker: BrokerState) -> Result<Self, KafkaError> {
        let client = producer_config(settings);
        let commands = TopicCommands {
            bootstrap_servers: &settings.bootstrap_servers,
            secured: TopicCommands::is_secured(&settings.client.0),
        };
        let outcomes = Arc::new(Outcomes {
            broker,
            ..Outcomes::default()
        });
        Ok(KafkaPublisher {
            producer: RwLock::new(Arc::new(create_producer(&client, &outcomes)?)),
            client,
            replaced_at: Mutex::new(None),
            retiring: Mutex::new(Vec::new()),
            outcomes,
            topic: settings.topic.clone(),
            spans_topic: settings.spans_topic.clone(),
            produce_timeout: settings.produce_timeout,
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
        self.outcomes.broker.set_reachable(reachable);
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

    /// Waits for records still queued, in this producer and in those replaced, at most
    /// `timeout` (shutdown).
    ///
    /// # Errors
    /// When records are still unacknowledged after it.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        let deadline = Instant::now() + timeout;
        let flushed = self.producer().flush(timeout);
        let retiring =
            std::mem::take(&mut *self.retiring.lock().unwrap_or_else(PoisonError::into_inner));
        for thread in retiring {
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if thread.is_finished() {
                let _joined = thread.join();
            }
        }
        flushed
    }

    /// Flushes a replaced producer on a thread of its own (its records are reported on,
    /// failed or not, within the produce timeout), then drops it there: dropping it where
    /// it was replaced would purge its records and block a request's thread.
    fn retire(&self, old: Arc<TracesProducer>) {
        let timeout = self.produce_timeout + Duration::from_secs(5);
        let spawned = std::thread::Builder::new()
            .name("gateway-retire".to_owned())
            .spawn(move || {
                let _flushed = old.flush(timeout);
            });
        match spawned {
            Ok(thread) => {
                let mut retiring = self.retiring.lock().unwrap_or_else(PoisonError::into_inner);
                retiring.retain(|thread| !thread.is_finished());
                retiring.push(thread);
            }
            Err(error) => tracing::error!(%error, "no thread to flush the replaced producer"),
        }
    }

    fn producer(&self) -> Arc<TracesProducer> {
        Arc::clone(&self.producer.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The producer to queue with: a new one when the current one looks stuck (a fatal
    /// error, or [`REBUILD_AFTER_FAILURES`] failed requests in a row while the broker
    /// answers). Decided here rather than in a delivery report, which runs on the thread
    /// that dropping the old producer would have to join.
    fn healthy_producer(&self) -> Arc<TracesProducer> {
        let producer = self.producer();
        let failures = self.outcomes.consecutive_failures.load(Ordering::Relaxed);
        if failures == 0 {
            return producer;
        }
        let fatal = producer.client().fatal_error();
        let stuck = failures >= REBUILD_AFTER_FAILURES && self.outcomes.broker.is_reachable();
        if fatal.is_none() && !stuck {
            return producer;
        }
        let mut current = self
            .producer
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let mut replaced_at = self
            .replaced_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let recently = replaced_at.is_some_and(|at| at.elapsed() < self.produce_timeout);
        if !Arc::ptr_eq(&current, &producer) || recently {
            // Another request replaced it meanwhile, or the new one still gets the failures
            // of requests queued on the old one.
            return Arc::clone(&current);
        }
        match create_producer(&self.client, &self.outcomes) {
            Ok(fresh) => {
                tracing::warn!(
                    failures,
                    fatal = ?fatal.map(|(code, _)| code),
                    "kafka producer stuck; replaced with a new one"
                );
                let old = std::mem::replace(&mut *current, Arc::new(fresh));
                self.retire(old);
                *replaced_at = Some(Instant::now());
                self.outcomes
                    .consecutive_failures
                    .store(0, Ordering::Relaxed);
                Arc::clone(&current)
            }
            Err(error) => {
                tracing::error!(%error, "failed to replace the kafka producer");
                producer
            }
        }
    }
}

fn create_producer(
    client: &ClientConfig,
    outcomes: &Arc<Outcomes>,
) -> Result<TracesProducer, KafkaError> {
    client.create_with_context(Deliveries {
        outcomes: Arc::clone(outcomes),
    })
}

impl Publish for KafkaPublisher {
    fn failing(&self) -> bool {
        self.outcomes.last_failed.load(Ordering::Relaxed)
    }

    fn publish(&self, records: Vec<Outgoing>, settle: Settle) -> Result<(), PublishError> {
        // The OTLP handler sends spans only when the topic is set; checked before anything
        // is produced.
        if self.spans_topic.is_none()
            && records
                .iter()
                .any(|record| record.destination == Destination::Spans)
        {
            return Err(PublishError::Kafka);
        }
        let producer = self.healthy_producer();
        let pending = Arc::new(Pending::new(records.len(), settle));
        for (queued, record) in records.iter().enumerate() {
            let topic = match (record.destination, &self.spans_topic) {
                (Destination::Spans, Some(spans_topic)) => spans_topic,
                _ => &self.topic,
            };
            let mut base =
                BaseRecord::with_opaque_to(topic, Arc::clone(&pending)).payload(&record.payload);
            if let Some(key) = &record.key {
                base = base.key(key);
            }
            if let Err((error, _)) = producer.send(base) {
                // The request is answered 503: nothing may settle it, whatever becomes of
                // the records queued before this one.
                drop(pending.take_settle());
                let _settled = pending.report(records.len() - queued, Err(PublishError::Kafka));
                self.outcomes.record(false);
                return Err(match error {
                    KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => {
                        PublishError::QueueFull
                    }
                    _ => PublishError::Kafka,
                });
            }
        }
        if records.is_empty()
            && let Some(settle) = pending.take_settle()
        {
            settle(Ok(()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Outcomes a settle was called with.
    type Settled = Arc<Mutex<Vec<Result<(), PublishError>>>>;

    /// A `Pending` of `records` whose settle pushes its outcome to the returned list.
    fn recording(records: usize) -> (Pending, Settled) {
        let settled = Arc::new(Mutex::new(Vec::new()));
        let into = Arc::clone(&settled);
        let settle: Settle = Box::new(move |outcome| into.lock().expect("lock").push(outcome));
        (Pending::new(records, settle), settled)
    }

    fn settings(client: &[(&str, &str)]) -> KafkaSettings {
        let mut properties = crate::config::ClientProperties::default();
        for (key, value) in client {
            properties.insert(*key, *value);
        }
        KafkaSettings {
            bootstrap_servers: "127.0.0.1:9".to_owned(),
            topic: "traces".to_owned(),
            spans_topic: None,
            produce_timeout: Duration::from_secs(5),
            linger: Duration::ZERO,
            client: properties,
        }
    }

    #[test]
    fn the_passthrough_overrides_the_gateways_own_settings() {
        let linger = |client: &[(&str, &str)]| {
            producer_config(&settings(client))
                .get("linger.ms")
                .map(str::to_owned)
        };
        assert_eq!(linger(&[]).as_deref(), Some("0"));
        assert_eq!(linger(&[("linger.ms", "2")]).as_deref(), Some("2"));
    }

    #[test]
    fn settles_once_when_the_last_record_is_reported_with_the_first_failure() {
        let outcomes = Outcomes::default();
        let (pending, settled) = recording(3);
        pending.deliver(1, Ok(()), &outcomes);
        pending.deliver(1, Err(PublishError::Timeout), &outcomes);
        assert!(settled.lock().expect("lock").is_empty());
        pending.deliver(1, Err(PublishError::Kafka), &outcomes);
        assert_eq!(*settled.lock().expect("lock"), [Err(PublishError::Timeout)]);
        assert!(outcomes.last_failed.load(Ordering::Relaxed));
        assert_eq!(outcomes.consecutive_failures.load(Ordering::Relaxed), 1);

        let (pending, settled) = recording(2);
        pending.deliver(1, Ok(()), &outcomes);
        pending.deliver(1, Ok(()), &outcomes);
        assert_eq!(*settled.lock().expect("lock"), [Ok(())]);
        assert!(!outcomes.last_failed.load(Ordering::Relaxed));
        assert_eq!(outcomes.consecutive_failures.load(Ordering::Relaxed), 0);
    }

    /// What `publish` does when record 3 of 5 cannot be queued, the first already reported:
    /// the request is answered 503 and must never settle, nor count twice, whatever the
    /// second queued record's report says.
    #[test]
    fn a_request_that_failed_to_queue_never_settles() {
        let outcomes = Outcomes::default();
        let (pending, settled) = recording(5);
        pending.deliver(1, Ok(()), &outcomes);
        drop(pending.take_settle());
        assert!(
            pending
                .report(5 - 2, Err(PublishError::QueueFull))
                .is_none()
        );
        assert_eq!(
            pending.report(1, Ok(())),
            Some(Err(PublishError::QueueFull))
        );
        assert!(settled.lock().expect("lock").is_empty());
        assert_eq!(outcomes.consecutive_failures.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn reports_from_many_threads_settle_exactly_once() {
        const THREADS: usize = 8;
        const EACH: usize = 1_000;
        let outcomes = Arc::new(Outcomes::default());
        let (pending, settled) = recording(THREADS * EACH);
        let pending = Arc::new(pending);
        let threads: Vec<_> = (0..THREADS)
            .map(|_| {
                let (pending, outcomes) = (Arc::clone(&pending), Arc::clone(&outcomes));
                std::thread::spawn(move || {
                    for _ in 0..EACH {
                        pending.deliver(1, Ok(()), &outcomes);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("reporter");
        }
        assert_eq!(*settled.lock().expect("lock"), [Ok(())]);
    }
}
