//! Kafka emitter: each finished trace is encoded and handed to an idempotent rdkafka
//! producer whose own thread delivers it and reports back.
//!
//! `emit` never waits on the broker. librdkafka's buffer is the bounded queue
//! (`queue_capacity` traces): `send` returns at once, and when the buffer is full the trace is
//! dropped and counted (`trace_emit_events_dropped_total{reason="queue_full"}`). Handing the
//! record straight to librdkafka was measured to cost the request less than a queue to a
//! worker thread of our own: that design freed every trace on another thread and kept a third
//! thread busy on two cores. Avro traces are encoded into a buffer kept per thread (librdkafka
//! copies the payload on `send`), so a trace costs no payload allocation, growth or free.
//! Keys are the session id (user id without a session), so one
//! session stays in one partition, in order.

use crate::metrics::EmitterMetrics;
use crate::sink::TraceSink;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use thiserror::Error;
use trace_model::codec::avro::{self, EncodeError};
use trace_model::{Encoding, TraceEvent};

/// Traces buffered before the emitter drops new ones: several seconds of a busy service.
pub const DEFAULT_QUEUE_CAPACITY: usize = 100_000;

/// [`Emitter::flush`] asks again after 1 ms, then at doubling intervals up to 10 ms: soon
/// after a delivery, without waking librdkafka's threads a thousand times a second through a
/// long close.
const FIRST_FLUSH_CHECK: Duration = Duration::from_millis(1);
const LONGEST_FLUSH_CHECK: Duration = Duration::from_millis(10);

/// Payload buffer of the calling thread; a larger trace than usual grows it, and a buffer
/// grown past [`KEPT_PAYLOAD_BYTES`] is released after the send.
const INITIAL_PAYLOAD_BYTES: usize = 4 * 1024;
const KEPT_PAYLOAD_BYTES: usize = 64 * 1024;

thread_local! {
    static PAYLOAD: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(INITIAL_PAYLOAD_BYTES));
}

/// `event` as `encoding` into `out` (cleared first): the bytes of `trace_model::encode`.
fn encode_into(
    event: &TraceEvent,
    encoding: Encoding,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    out.clear();
    match encoding {
        Encoding::Avro => {
            out.extend_from_slice(&avro::SINGLE_OBJECT_MAGIC);
            out.extend_from_slice(&avro::trace_event_fingerprint().to_le_bytes());
            avro::encode_trace_datum(event, out)
        }
        other => {
            out.extend_from_slice(&trace_model::encode(event, other)?);
            Ok(())
        }
    }
}

/// Settings of an [`Emitter`].
#[derive(Debug, Clone)]
pub struct EmitterConfig {
    /// `host:port[,host:port]` of the Kafka cluster.
    pub bootstrap_servers: String,
    /// Topic the traces go to.
    pub topic: String,
    /// Wire encoding; Avro single-object needs no registry.
    pub encoding: Encoding,
    /// Traces buffered for delivery; beyond this new traces are dropped
    /// (librdkafka's `queue.buffering.max.messages`).
    pub queue_capacity: usize,
    /// librdkafka settings applied last (TLS, SASL, `linger.ms`, ...).
    pub client: BTreeMap<String, String>,
}

impl EmitterConfig {
    pub fn new(bootstrap_servers: impl Into<String>, topic: impl Into<String>) -> Self {
        EmitterConfig {
            bootstrap_servers: bootstrap_servers.into(),
            topic: topic.into(),
            encoding: Encoding::Avro,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            client: BTreeMap::new(),
        }
    }
}

/// Why an emitter could not start or flush.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum EmitterError {
    #[error("failed to create the kafka producer")]
    CreateProducer(#[source] KafkaError),
    #[error("failed to register emitter metrics")]
    Metrics(#[source] prometheus::Error),
    #[error("traces were still undelivered after {0:?}")]
    FlushTimeout(Duration),
    #[error("the producer could not flush")]
    Flush(#[source] KafkaError),
}

/// Counts deliveries as librdkafka reports them (on the producer's thread).
struct DeliveryCounter {
    metrics: EmitterMetrics,
}

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _opaque: ()) {
        match result {
            Ok(_) => self.metrics.delivered.inc(),
            Err((error, _message)) => {
                self.metrics.delivery_errors.inc();
                tracing::warn!(%error, "trace delivery failed");
            }
        }
    }
}

/// Emits traces to Kafka without blocking the caller.
pub struct Emitter {
    producer: ThreadedProducer<DeliveryCounter>,
    topic: String,
    encoding: Encoding,
    metrics: EmitterMetrics,
    /// Set by `close`: later traces are dropped and counted instead of buffered.
    closed: AtomicBool,
}

impl std::fmt::Debug for Emitter {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Emitter")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl Emitter {
    /// Creates the producer; metrics go to `registry`.
    ///
    /// # Errors
    /// Invalid librdkafka settings, or the metrics already registered.
    pub fn try_new(
        config: EmitterConfig,
        registry: &prometheus::Registry,
    ) -> Result<std::sync::Arc<Self>, EmitterError> {
        let metrics = EmitterMetrics::register(registry).map_err(EmitterError::Metrics)?;
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &config.bootstrap_servers)
            // Retries never duplicate or reorder a session's traces.
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // lz4: cheap on the CPU, readable by every broker and client.
            .set("compression.type", "lz4")
            // Batch for a few milliseconds; traces are not latency critical.
            .set("linger.ms", "20")
            // Java's partitioner (trace_model::routing): a session's traces land in the
            // partition the sessionizer keeps it in, and need no repartitioning hop.
            .set("partitioner", "murmur2_random")
            // The bounded queue: beyond it `send` fails at once with QueueFull.
            .set(
                "queue.buffering.max.messages",
                config.queue_capacity.max(1).to_string(),
            );
        for (key, value) in &config.client {
            client.set(key, value);
        }
        let producer = client
            .create_with_context(DeliveryCounter {
                metrics: metrics.clone(),
            })
            .map_err(EmitterError::CreateProducer)?;
        Ok(std::sync::Arc::new(Emitter {
            producer,
            topic: config.topic,
            encoding: config.encoding,
            metrics,
            closed: AtomicBool::new(false),
        }))
    }

    /// Encodes and buffers a trace; never waits. Returns `false` when it was dropped (buffer
    /// full, emitter closed, or refused by the producer), which is counted and logged.
    pub fn emit(&self, event: TraceEvent) -> bool {
        if self.closed.load(Ordering::Relaxed) {
            self.metrics.dropped_closed.inc();
            return false;
        }
        PAYLOAD.with(|buffer| {
            // A sink that emits from inside `emit` (none does) gets a buffer of its own.
            match buffer.try_borrow_mut() {
                Ok(mut payload) => {
                    let queued = self.encode_and_send(&event, &mut payload);
                    if payload.capacity() > KEPT_PAYLOAD_BYTES {
                        *payload = Vec::with_capacity(INITIAL_PAYLOAD_BYTES);
                    }
                    queued
                }
                Err(_) => self.encode_and_send(&event, &mut Vec::new()),
            }
        })
    }

    fn encode_and_send(&self, event: &TraceEvent, payload: &mut Vec<u8>) -> bool {
        if let Err(error) = encode_into(event, self.encoding, payload) {
            self.metrics.dropped_encode.inc();
            tracing::error!(%error, "failed to encode trace");
            return false;
        }
        let mut record = BaseRecord::to(&self.topic).payload(payload.as_slice());
        if let Some(key) = event.partition_key() {
            record = record.key(key);
        }
        match self.producer.send(record) {
            Ok(()) => {
                self.metrics.queued.inc();
                true
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                let dropped = self.metrics.dropped_queue_full.get();
                self.metrics.dropped_queue_full.inc();
                // The first drop and then one in a thousand: not a log line per trace.
                if dropped.is_multiple_of(1000) {
                    tracing::warn!(dropped = dropped + 1, "trace buffer full, dropping traces");
                }
                false
            }
            Err((error, _)) => {
                self.metrics.dropped_refused.inc();
                tracing::warn!(%error, "producer refused a trace");
                false
            }
        }
    }

    /// Waits until every trace buffered so far was delivered or failed, up to `timeout`.
    /// Blocks the calling thread: from async code call it in `spawn_blocking`.
    ///
    /// rdkafka's own `flush` asks librdkafka, then polls the queue of reports, which the
    /// producer's thread serves, for up to 100 ms before it asks again: it returned up to
    /// 100 ms after the last delivery. This asks without waiting: at once, then after 1 ms
    /// and at intervals doubling up to 10 ms. Each ask also tells librdkafka to send what
    /// lingers, best effort (only a broker thread that wakes during the ask sends at once).
    ///
    /// # Errors
    /// `FlushTimeout` when traces are still undelivered after `timeout`; `Flush` when
    /// librdkafka refuses to flush (not a producer: not expected).
    pub fn flush(&self, timeout: Duration) -> Result<(), EmitterError> {
        wait_flushed(
            timeout,
            || self.producer.flush(Duration::ZERO),
            std::thread::sleep,
        )
    }

    /// Stops accepting traces, then flushes; later traces are dropped and counted.
    ///
    /// # Errors
    /// As [`Emitter::flush`].
    pub fn close(&self, timeout: Duration) -> Result<(), EmitterError> {
        self.closed.store(true, Ordering::Relaxed);
        self.flush(timeout)
    }

    /// Traces buffered and not yet acknowledged by Kafka.
    pub fn in_flight(&self) -> i32 {
        self.producer.in_flight_count()
    }
}

/// Asks `ask` (a flush that does not wait) until it succeeds or `timeout` has passed, pausing
/// with `pause` between asks as [`Emitter::flush`] says.
fn wait_flushed(
    timeout: Duration,
    mut ask: impl FnMut() -> rdkafka::error::KafkaResult<()>,
    mut pause: impl FnMut(Duration),
) -> Result<(), EmitterError> {
    // None: a timeout past what `Instant` holds, which is no deadline.
    let deadline = Instant::now().checked_add(timeout);
    let mut next = FIRST_FLUSH_CHECK;
    loop {
        match ask() {
            Ok(()) => return Ok(()),
            Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut)) => {}
            Err(error) => return Err(EmitterError::Flush(error)),
        }
        let left = deadline.map_or(next, |deadline| {
            deadline.saturating_duration_since(Instant::now())
        });
        if left.is_zero() {
            return Err(EmitterError::FlushTimeout(timeout));
        }
        pause(left.min(next));
        next = (next * 2).min(LONGEST_FLUSH_CHECK);
    }
}

impl TraceSink for Emitter {
    fn emit(&self, event: TraceEvent) {
        Emitter::emit(self, event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter(registry: &prometheus::Registry, name: &str, label: Option<&str>) -> f64 {
        registry
            .gather()
            .iter()
            .filter(|family| family.name() == name)
            .flat_map(|family| family.get_metric().iter())
            .filter(|metric| {
                label
                    .is_none_or(|label| metric.get_label().iter().any(|pair| pair.value() == label))
            })
            .map(|metric| metric.get_counter().get_value())
            .sum()
    }

    #[test]
    fn encodes_the_bytes_of_trace_model_encode_into_a_reused_buffer() {
        let mut event = TraceEvent::new("chat", 1_700_000_000_000);
        event.session_id = Some("session \"quoted\"".to_owned());
        event
            .inputs
            .insert("question".to_owned(), serde_json::json!("line\nbreak é"));
        let mut buffer = vec![0xFF; 3];
        for encoding in [
            Encoding::Avro,
            Encoding::Json,
            Encoding::Confluent { schema_id: 7 },
        ] {
            encode_into(&event, encoding, &mut buffer).expect("encodes");
            assert_eq!(
                buffer,
                trace_model::encode(&event, encoding).expect("encodes"),
                "{encoding:?}"
            );
        }
    }

    #[test]
    fn flush_asks_until_nothing_is_undelivered_pausing_longer_each_time() {
        let timed_out = || Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut));
        let ms = Duration::from_millis;
        for timeout in [Duration::from_secs(30), Duration::MAX] {
            let mut asks = 0;
            let mut pauses = Vec::new();
            let flushed = wait_flushed(
                timeout,
                || {
                    asks += 1;
                    if asks <= 6 { timed_out() } else { Ok(()) }
                },
                |pause| pauses.push(pause),
            );
            assert!(flushed.is_ok(), "{flushed:?}");
            assert_eq!(asks, 7);
            assert_eq!(pauses, [ms(1), ms(2), ms(4), ms(8), ms(10), ms(10)]);
        }
        // No time to wait: one ask, no pause.
        let mut asks = 0;
        let flushed = wait_flushed(
            Duration::ZERO,
            || {
                asks += 1;
                timed_out()
            },
            |_| panic!("no pause without time"),
        );
        assert!(matches!(flushed, Err(EmitterError::FlushTimeout(_))));
        assert_eq!(asks, 1);
        // Another error is no reason to wait.
        let flushed = wait_flushed(
            Duration::from_secs(30),
            || Err(KafkaError::Flush(RDKafkaErrorCode::InvalidArgument)),
            |_| panic!("no pause after an error"),
        );
        assert!(matches!(flushed, Err(EmitterError::Flush(_))));
    }

    #[test]
    fn flush_returns_once_every_trace_is_delivered() {
        let cluster =
            rdkafka::mocking::MockCluster::<rdkafka::producer::DefaultProducerContext>::new(1)
                .expect("mock cluster");
        cluster.create_topic("traces", 3, 1).expect("topic");
        let registry = prometheus::Registry::new();
        let config = EmitterConfig::new(cluster.bootstrap_servers(), "traces");
        let emitter = Emitter::try_new(config, &registry).expect("emitter");
        for turn in 0..50 {
            let mut event = TraceEvent::new(format!("t{turn}"), 0);
            event.session_id = Some(format!("session-{}", turn % 7));
            assert!(emitter.emit(event));
        }
        emitter.flush(Duration::from_secs(30)).expect("delivered");
        assert_eq!(
            counter(&registry, "trace_emit_events_delivered_total", None),
            50.0
        );
    }

    #[test]
    fn emit_never_waits_on_an_unreachable_cluster_and_counts_drops() {
        let registry = prometheus::Registry::new();
        // Nothing listens on port 1, so nothing is ever delivered and the buffer fills.
        let mut config = EmitterConfig::new("127.0.0.1:1", "traces");
        config.queue_capacity = 100;
        let emitter = Emitter::try_new(config, &registry).expect("emitter");
        let total = 5_000;
        let accepted = (0..total)
            .filter(|turn| emitter.emit(TraceEvent::new(format!("t{turn}"), 0)))
            .count();
        assert_eq!(accepted, 100, "the buffer holds queue_capacity traces");
        let dropped = counter(
            &registry,
            "trace_emit_events_dropped_total",
            Some("queue_full"),
        );
        assert_eq!(dropped as usize, total - accepted);
        assert!(matches!(
            emitter.close(Duration::from_millis(200)),
            Err(EmitterError::FlushTimeout(_))
        ));
        assert!(!emitter.emit(TraceEvent::new("after close", 0)));
        assert_eq!(
            counter(&registry, "trace_emit_events_dropped_total", Some("closed")),
            1.0
        );
    }
}
