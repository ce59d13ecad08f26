//! Spans routed by trace id: the Collector's Kafka exporter writes a batch of spans per
//! message, unkeyed unless `partition_traces_by_id` is set, so one trace's spans may sit in
//! several partitions. Every message of the spans topic is split by trace id and each trace's
//! spans are produced to the repartition topic keyed by trace id (murmur2), where one
//! partition's assembler sees all of them, as Kafka Streams repartitions before a `groupByKey`.
//!
//! Stateless and at least once: a message's offset is stored once Kafka has all its parts. A
//! crash in between routes some spans twice; the assembler drops a span it already holds and
//! dead-letters one whose trace it completed (`otel_span_after_completion`), so a trace is never
//! counted twice.
//!
//! Markers carry each spans partition's progress to every repartition partition, as the
//! traces' repartitioning does (`core::align`): a marker from partition `q` says that every
//! message of `q` with a Kafka timestamp at or before its read-through time was read and its
//! spans routed before the marker (they share one idempotent producer, which keeps order, and
//! retries without a deadline). The assembly ships traces in event-time order from it
//! (`order`). A partition fetched to its end (the consumer's statistics say no record is
//! left), with nothing read for a quiet wait while reading is not paused, has read through
//! the present, less that wait.

use super::{OtelError, OtelSettings, dead_letter, deliver_dead_letter, enqueue, ordered_producer};
use crate::commit::OffsetTracker;
use crate::metrics::Metrics;
use crate::source::dlq::DeadLetter;
use crate::source::kafka::{
    KafkaSettings, RebalanceEvent, Source, create_consumer, create_producer, store_next_offset,
};
use crate::source::repartition::{MARKER_FROM_HEADER, MARKER_READ_THROUGH_HEADER};
use otel_ingest::{Encoding, decode, split_by_trace};
use prost::Message as _;
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Messages routed and not yet acknowledged at most; reading waits beyond.
const MAX_PENDING: usize = 10_000;
/// How often markers go out when a partition's progress moved...
const MARKER_INTERVAL: Duration = Duration::from_millis(200);
/// ...and at least this often, so that a partition read to its end keeps announcing it.
const MARKER_HEARTBEAT: Duration = Duration::from_secs(1);

/// One owned spans partition's progress.
#[derive(Debug)]
struct Progress {
    generation: u64,
    /// The newest Kafka timestamp read.
    read_through_ms: Option<i64>,
    /// When a message was last read (or the partition assigned).
    last_read: Instant,
    announced_ms: Option<i64>,
    announced_at: Option<Instant>,
}

/// A part of a message Kafka acknowledged, for the ownership it was read in.
struct Routed {
    partition: i32,
    offset: i64,
    generation: u64,
}

struct Router {
    otel: OtelSettings,
    kafka: KafkaSettings,
    metrics: Metrics,
    source: Source,
    producer: FutureProducer,
    dead_letters: FutureProducer,
    offsets: OffsetTracker,
    partitions: HashMap<i32, Progress>,
    num_repartition: i32,
    /// When reading last waited for acknowledgements (`MAX_PENDING`).
    paused_at: Option<Instant>,
    next_generation: u64,
    /// Each part of a message routed, or the record Kafka refused for good.
    tasks: JoinSet<Result<Routed, (String, KafkaError)>>,
    failure: Option<OtelError>,
}

/// Routes the spans topic until `stop` is cancelled; then waits up to `drain_timeout` for what
/// is in flight and commits.
///
/// # Errors
/// A client cannot be created, or Kafka refused a record for good.
pub async fn run(
    num_repartition: i32,
    otel: OtelSettings,
    kafka: KafkaSettings,
    metrics: Metrics,
    drain_timeout: Duration,
    stop: CancellationToken,
) -> Result<(), OtelError> {
    let source = create_consumer(&kafka, &otel.group_id, &otel.spans_topic)?;
    let producer = ordered_producer(&kafka, &otel.assembly.limits)?;
    let dead_letters = create_producer(&kafka)?;
    let mut router = Router {
        otel,
        kafka,
        metrics,
        source,
        producer,
        dead_letters,
        offsets: OffsetTracker::new(),
        partitions: HashMap::new(),
        num_repartition,
        paused_at: None,
        next_generation: 0,
        tasks: JoinSet::new(),
        failure: None,
    };
    router.run(&stop).await;
    router.drain(drain_timeout).await;
    router.failure.map_or(Ok(()), Err)
}

impl Router {
    async fn run(&mut self, stop: &CancellationToken) {
        let mut markers = tokio::time::interval(MARKER_INTERVAL);
        while self.failure.is_none() {
            self.apply_rebalances();
            let reading = self.offsets.num_pending() < MAX_PENDING;
            if !reading {
                self.paused_at = Some(Instant::now());
            }
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                Some(joined) = self.tasks.join_next() => match joined {
                    Ok(Ok(routed)) => self.routed(&routed),
                    Ok(Err((topic, source))) => self.fail(topic, source),
                    Err(_) => {}
                },
                _ = markers.tick() => self.send_markers().await,
                received = self.source.consumer.recv(), if reading => match received {
                    Ok(message) => {
                        let message = message.detach();
                        self.apply_rebalances();
                        self.route(&message).await;
                    }
                    Err(error) => tracing::warn!(%error, "reading the spans topic"),
                },
            }
        }
    }

    fn apply_rebalances(&mut self) {
        while let Ok(event) = self.source.rebalances.try_recv() {
            match event {
                RebalanceEvent::Assigned(partitions) => {
                    for partition in partitions {
                        self.offsets.assign(partition);
                        self.partitions.insert(
                            partition,
                            Progress {
                                generation: self.next_generation,
                                read_through_ms: None,
                                last_read: Instant::now(),
                                announced_ms: None,
                                announced_at: None,
                            },
                        );
                        self.next_generation += 1;
                    }
                }
                RebalanceEvent::Revoked(partitions) => {
                    for partition in partitions {
                        self.offsets.revoke(partition);
                        self.partitions.remove(&partition);
                    }
                }
            }
        }
    }

    async fn route(&mut self, message: &OwnedMessage) {
        self.metrics.otel_messages_consumed.inc();
        let (partition, offset) = (message.partition(), message.offset());
        let Some(progress) = self.partitions.get_mut(&partition) else {
            return;
        };
        progress.last_read = Instant::now();
        if let Some(timestamp) = message.timestamp().to_millis() {
            progress.read_through_ms = progress.read_through_ms.max(Some(timestamp));
        }
        let generation = progress.generation;
        let payload = message.payload().unwrap_or_default();
        // The Collector's exporter writes `otlp_proto` by default, `otlp_json` if asked.
        let encoding = if payload.first() == Some(&b'{') {
            Encoding::Json
        } else {
            Encoding::Protobuf
        };
        let routed = Routed {
            partition,
            offset,
            generation,
        };
        match decode(payload, encoding) {
            Ok(request) => {
                let (traces, without_trace_id) = split_by_trace(request);
                let parts = traces.len() + usize::from(!without_trace_id.resource_spans.is_empty());
                self.offsets
                    .track(partition, offset, u32::try_from(parts).unwrap_or(u32::MAX));
                for (trace_id, spans) in traces {
                    self.forward(trace_id, spans.encode_to_vec(), &routed).await;
                }
                if !without_trace_id.resource_spans.is_empty() {
                    let letter = DeadLetter {
                        payload: without_trace_id.encode_to_vec(),
                        ..self.dead_letter(
                            &routed,
                            "otel_trace_id",
                            "spans without a valid trace id (16 bytes, not all zero)".to_owned(),
                        )
                    };
                    self.send_dead_letter(letter, &routed);
                }
            }
            Err(error) => {
                self.offsets.track(partition, offset, 1);
                let letter = DeadLetter {
                    key: message.key().map(<[u8]>::to_vec),
                    payload: payload.to_vec(),
                    ..self.dead_letter(&routed, error.reason(), error.to_string())
                };
                self.send_dead_letter(letter, &routed);
            }
        }
        self.store_advanced();
    }

    /// Queues the spans of one trace at once (markers queued later come after them), then
    /// waits for Kafka in a task of its own.
    async fn forward(&mut self, trace_id: String, payload: Vec<u8>, routed: &Routed) {
        let record = FutureRecord::to(&self.otel.repartition_topic)
            .key(&trace_id)
            .payload(&payload);
        let delivery = match enqueue(&self.producer, record).await {
            Ok(delivery) => delivery,
            Err(source) => return self.fail(self.otel.repartition_topic.clone(), source),
        };
        let routed = Routed { ..*routed };
        let topic = self.otel.repartition_topic.clone();
        self.tasks.spawn(async move {
            // The producer retries without a deadline: an error is for good.
            match delivery.await {
                Ok(Err((source, _))) => Err((topic, source)),
                _ => Ok(routed),
            }
        });
    }

    fn fail(&mut self, topic: String, source: KafkaError) {
        tracing::error!(%source, topic, "kafka refused routed spans for good; stopping");
        self.failure
            .get_or_insert(OtelError::Produce { topic, source });
    }

    /// Announces each owned partition's progress to every repartition partition, when it
    /// moved (at most every [`MARKER_INTERVAL`]) and every [`MARKER_HEARTBEAT`] anyway.
    async fn send_markers(&mut self) {
        let now = Instant::now();
        let quiet = self.otel.assembly.quiet;
        let quiet_ms = i64::try_from(quiet.as_millis()).unwrap_or(i64::MAX);
        let wall_ms = crate::core::Now::system().wall_ms;
        // Paused within a quiet wait: what the consumer fetched meanwhile is unread.
        let paused = self
            .paused_at
            .is_some_and(|at| now.saturating_duration_since(at) < quiet);
        let lags = self
            .source
            .fetch_lags
            .lock()
            .map(|lags| lags.clone())
            .unwrap_or_default();
        let mut due = Vec::new();
        for (partition, progress) in &mut self.partitions {
            // Everything fetched, as of statistics newer than the last read, and nothing read
            // since for a quiet wait.
            let caught_up = !paused
                && now.saturating_duration_since(progress.last_read) >= quiet
                && lags
                    .get(partition)
                    .is_some_and(|(lag, at_ms)| *lag == 0 && *at_ms >= wall_ms - quiet_ms);
            let read_through = if caught_up {
                Some(
                    wall_ms
                        .saturating_sub(quiet_ms)
                        .max(progress.read_through_ms.unwrap_or(0)),
                )
            } else {
                progress.read_through_ms
            };
            let Some(read_through) = read_through else {
                continue;
            };
            let heartbeat = progress
                .announced_at
                .is_none_or(|at| now.saturating_duration_since(at) >= MARKER_HEARTBEAT);
            if progress.announced_ms != Some(read_through) || heartbeat {
                progress.announced_ms = Some(read_through);
                progress.announced_at = Some(now);
                due.push((*partition, read_through));
            }
        }
        for (from, read_through) in due {
            let from = from.to_string();
            let read_through = read_through.to_string();
            for partition in 0..self.num_repartition {
                let headers = OwnedHeaders::new_with_capacity(2)
                    .insert(Header {
                        key: MARKER_FROM_HEADER,
                        value: Some(from.as_str()),
                    })
                    .insert(Header {
                        key: MARKER_READ_THROUGH_HEADER,
                        value: Some(read_through.as_str()),
                    });
                let record = FutureRecord::<(), ()>::to(&self.otel.repartition_topic)
                    .partition(partition)
                    .headers(headers);
                // Its delivery is not awaited: a marker only lets traces go sooner.
                if let Err(error) = enqueue(&self.producer, record).await {
                    tracing::debug!(%error, partition, "queueing an otel marker");
                }
            }
        }
    }

    fn dead_letter(&self, routed: &Routed, reason: &'static str, message: String) -> DeadLetter {
        dead_letter(
            &self.metrics,
            (routed.partition, routed.offset),
            reason,
            message,
        )
    }

    fn send_dead_letter(&mut self, letter: DeadLetter, routed: &Routed) {
        let producer = self.dead_letters.clone();
        let topic = self.kafka.dead_letter_topic.clone();
        let source_topic = self.otel.spans_topic.clone();
        let routed = Routed { ..*routed };
        self.tasks.spawn(async move {
            deliver_dead_letter(&producer, &topic, &source_topic, letter).await;
            Ok(routed)
        });
    }

    fn routed(&mut self, routed: &Routed) {
        let owned = self.partitions.get(&routed.partition);
        if owned.is_some_and(|progress| progress.generation == routed.generation) {
            self.offsets.settle(routed.partition, routed.offset);
            self.store_advanced();
        }
    }

    fn store_advanced(&mut self) {
        for (partition, offset) in self.offsets.take_advanced() {
            let stored = store_next_offset(
                &self.source.consumer,
                &self.otel.spans_topic,
                partition,
                offset,
            );
            if let Err(error) = stored {
                tracing::debug!(%error, partition, "storing a spans offset");
            }
        }
    }

    async fn drain(&mut self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.tasks.is_empty() {
            match tokio::time::timeout_at(deadline, self.tasks.join_next()).await {
                Ok(Some(Ok(Ok(routed)))) => self.routed(&routed),
                Ok(_) => {}
                Err(_) => {
                    tracing::warn!("spans routed were not all acknowledged in time");
                    break;
                }
            }
        }
        self.tasks.abort_all();
        if let Err(error) = self.source.consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(%error, "otel router commit at stop");
        }
    }
}
