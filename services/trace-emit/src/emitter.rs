//! Kafka emitter: finished traces go to a bounded queue; one background thread encodes them
//! and hands them to an idempotent rdkafka producer.
//!
//! The request path only pushes onto the queue: it never waits on the broker, on encoding or
//! on a full librdkafka buffer. When the queue is full the trace is dropped and counted
//! (`trace_emit_events_dropped_total{reason="queue_full"}`). Keys are the session id (user id
//! without a session), so one session stays in one partition, in order.

use crate::metrics::EmitterMetrics;
use crate::sink::TraceSink;
use rdkafka::ClientConfig;
use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use thiserror::Error;
use trace_model::{Encoding, TraceEvent};

/// Traces queued before the emitter drops new ones: a few seconds of a busy service.
pub const DEFAULT_QUEUE_CAPACITY: usize = 10_000;

/// Settings of an [`Emitter`].
#[derive(Debug, Clone)]
pub struct EmitterConfig {
    /// `host:port[,host:port]` of the Kafka cluster.
    pub bootstrap_servers: String,
    /// Topic the traces go to.
    pub topic: String,
    /// Wire encoding; Avro single-object needs no registry.
    pub encoding: Encoding,
    /// Traces waiting for the background thread; beyond this they are dropped.
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
    #[error("failed to start the emitter thread")]
    Spawn(#[source] std::io::Error),
    #[error("flush did not finish within {0:?}")]
    FlushTimeout(Duration),
    #[error("emitter is closed")]
    Closed,
}

enum Command {
    Emit(Box<TraceEvent>),
    /// Deliver everything queued before this command, then answer.
    Flush {
        deadline: Instant,
        done: SyncSender<Result<(), KafkaError>>,
    },
    /// Flush, answer, and stop the worker.
    Stop {
        deadline: Instant,
        done: SyncSender<Result<(), KafkaError>>,
    },
}

/// Counts deliveries as librdkafka reports them.
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
    commands: SyncSender<Command>,
    metrics: EmitterMetrics,
    worker: Mutex<Option<JoinHandle<()>>>,
    /// Set by `close` and drop: the worker stops waiting for room in a full librdkafka
    /// buffer (an unreachable cluster) and drops what does not fit, so shutdown ends.
    closing: Arc<AtomicBool>,
}

impl std::fmt::Debug for Emitter {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Emitter").finish_non_exhaustive()
    }
}

impl Emitter {
    /// Creates the producer and its background thread; metrics go to `registry`.
    ///
    /// # Errors
    /// Invalid librdkafka settings, metrics already registered, or no thread.
    pub fn try_new(
        config: EmitterConfig,
        registry: &prometheus::Registry,
    ) -> Result<Arc<Self>, EmitterError> {
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
            .set("linger.ms", "20");
        for (key, value) in &config.client {
            client.set(key, value);
        }
        let producer: BaseProducer<DeliveryCounter> = client
            .create_with_context(DeliveryCounter {
                metrics: metrics.clone(),
            })
            .map_err(EmitterError::CreateProducer)?;
        let (commands, queue) = mpsc::sync_channel(config.queue_capacity.max(1));
        let closing = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            producer,
            topic: config.topic,
            encoding: config.encoding,
            metrics: metrics.clone(),
            closing: closing.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("trace-emit".into())
            .spawn(move || worker.run(queue))
            .map_err(EmitterError::Spawn)?;
        Ok(Arc::new(Emitter {
            commands,
            metrics,
            worker: Mutex::new(Some(handle)),
            closing,
        }))
    }

    /// Queues a trace; never blocks. Returns `false` when it was dropped (queue full or closed).
    pub fn emit(&self, event: TraceEvent) -> bool {
        if self.closing.load(Ordering::Relaxed) {
            self.metrics.dropped_closed.inc();
            return false;
        }
        match self.commands.try_send(Command::Emit(Box::new(event))) {
            Ok(()) => {
                self.metrics.queued.inc();
                self.metrics.queue_depth.inc();
                true
            }
            Err(TrySendError::Full(_)) => {
                let dropped = self.metrics.dropped_queue_full.get();
                self.metrics.dropped_queue_full.inc();
                // Log the first drop and then one in a thousand, not one line per trace.
                if dropped.is_multiple_of(1000) {
                    tracing::warn!(dropped = dropped + 1, "trace queue full, dropping traces");
                }
                false
            }
            Err(TrySendError::Disconnected(_)) => {
                self.metrics.dropped_closed.inc();
                false
            }
        }
    }

    /// Waits until every trace queued so far was delivered or failed, up to `timeout`.
    /// Blocks the calling thread: from async code call it in `spawn_blocking`.
    ///
    /// # Errors
    /// `FlushTimeout` when `timeout` passes first, `Closed` after [`Emitter::close`].
    pub fn flush(&self, timeout: Duration) -> Result<(), EmitterError> {
        let deadline = Instant::now() + timeout;
        let (done, answer) = mpsc::sync_channel(1);
        // Blocking send: the worker drains the queue continuously, so this waits at most for
        // the queue ahead of us, which the deadline below bounds anyway.
        self.commands
            .send(Command::Flush { deadline, done })
            .map_err(|_| EmitterError::Closed)?;
        match answer.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) | Err(RecvTimeoutError::Timeout) => Err(EmitterError::FlushTimeout(timeout)),
            Err(RecvTimeoutError::Disconnected) => Err(EmitterError::Closed),
        }
    }

    /// Flushes, then stops the background thread; later traces are dropped and counted.
    ///
    /// # Errors
    /// As [`Emitter::flush`].
    pub fn close(&self, timeout: Duration) -> Result<(), EmitterError> {
        self.closing.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + timeout;
        let (done, answer) = mpsc::sync_channel(1);
        let sent = self.commands.send(Command::Stop { deadline, done });
        let result = match sent {
            Err(_) => Err(EmitterError::Closed),
            Ok(()) => match answer.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) | Err(RecvTimeoutError::Timeout) => {
                    Err(EmitterError::FlushTimeout(timeout))
                }
                Err(RecvTimeoutError::Disconnected) => Err(EmitterError::Closed),
            },
        };
        let handle = self
            .worker
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(handle) = handle
            && result.is_ok()
            && handle.join().is_err()
        {
            tracing::error!("emitter thread panicked");
        }
        result
    }

    /// How many traces are queued and not yet handed to librdkafka.
    pub fn queued(&self) -> i64 {
        self.metrics.queue_depth.get()
    }
}

impl Drop for Emitter {
    fn drop(&mut self) {
        // The worker drains what is queued once the sender is gone; never let it wait on a
        // full buffer forever.
        self.closing.store(true, Ordering::Relaxed);
    }
}

impl TraceSink for Emitter {
    fn emit(&self, event: TraceEvent) {
        Emitter::emit(self, event);
    }
}

struct Worker {
    producer: BaseProducer<DeliveryCounter>,
    topic: String,
    encoding: Encoding,
    metrics: EmitterMetrics,
    closing: Arc<AtomicBool>,
}

/// How long the worker waits for a command before serving librdkafka's callbacks anyway.
const IDLE_POLL: Duration = Duration::from_millis(100);

impl Worker {
    fn run(self, queue: Receiver<Command>) {
        loop {
            match queue.recv_timeout(IDLE_POLL) {
                Ok(Command::Emit(event)) => {
                    self.metrics.queue_depth.dec();
                    self.send(&event);
                }
                Ok(Command::Flush { deadline, done }) => {
                    let timeout = deadline.saturating_duration_since(Instant::now());
                    // The requester may have given up already; nothing to tell then.
                    let _requester_gone = done.send(self.producer.flush(timeout));
                }
                Ok(Command::Stop { deadline, done }) => {
                    let timeout = deadline.saturating_duration_since(Instant::now());
                    let _requester_gone = done.send(self.producer.flush(timeout));
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            // Serve delivery reports (they drive the metrics and free buffer space).
            self.producer.poll(Duration::ZERO);
        }
        // Every sender is gone: deliver what librdkafka still holds before exiting.
        if let Err(error) = self.producer.flush(Duration::from_secs(5)) {
            tracing::warn!(%error, "traces still undelivered when the emitter stopped");
        }
    }

    fn send(&self, event: &TraceEvent) {
        let payload = match trace_model::encode(event, self.encoding) {
            Ok(payload) => payload,
            Err(error) => {
                self.metrics.dropped_encode.inc();
                tracing::error!(%error, "failed to encode trace");
                return;
            }
        };
        let mut record = BaseRecord::to(&self.topic).payload(&payload);
        if let Some(key) = event.partition_key() {
            record = record.key(key);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    if self.closing.load(Ordering::Relaxed) {
                        self.metrics.dropped_closed.inc();
                        return;
                    }
                    // librdkafka's buffer is full: wait here, off the request path, for
                    // deliveries to free space. New traces pile up in our bounded queue.
                    record = returned;
                    self.producer.poll(Duration::from_millis(10));
                }
                Err((error, _)) => {
                    self.metrics.delivery_errors.inc();
                    tracing::warn!(%error, "failed to enqueue trace in the producer");
                    return;
                }
            }
        }
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
    fn emit_never_waits_on_an_unreachable_cluster_and_counts_drops() {
        let registry = prometheus::Registry::new();
        // Nothing listens on port 1; librdkafka may buffer only 10 messages.
        let mut config = EmitterConfig::new("127.0.0.1:1", "traces");
        config.queue_capacity = 100;
        config
            .client
            .insert("queue.buffering.max.messages".into(), "10".into());
        let emitter = Emitter::try_new(config, &registry).expect("emitter");
        let total = 5_000;
        let accepted = (0..total)
            .filter(|turn| emitter.emit(TraceEvent::new(format!("t{turn}"), 0)))
            .count();
        // The queue (100), librdkafka's buffer (10) and the one the worker holds fill up;
        // the rest is dropped at once instead of blocking the caller.
        assert!(accepted <= 100 + 10 + 2, "accepted {accepted}");
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
    }
}
