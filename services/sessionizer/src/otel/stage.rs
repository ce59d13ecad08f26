//! The assembly's IO loop: reads the spans routed by trace id (`router`) from the repartition
//! topic in its own consumer group (`<group_id>.otel-assembly`), feeds each partition's
//! [`Assembler`], produces the traces it completes to the traces topic keyed by session
//! (murmur2, as the helpers and the gateway do, so they land in their session's partition)
//! and dead-letters the spans it refuses.
//!
//! A message's offset is stored only once every trace holding its spans is acknowledged by
//! Kafka, and only after the partition's commit point (which rooted traces are shipped) is in
//! the state topic; on assignment that point is read back, so traces shipped before a
//! restart or a rebalance are not shipped again. Records are retried until Kafka has them:
//! the traces topic is where the rest of the service reads, and a trace given up here would be
//! lost.

use super::assembler::{Assembler, Output, Resume, Ticket};
use super::order::{EventTimeOrder, Progress};
use super::state::{CommitPoint, read_commit_points};
use super::{OtelError, OtelSettings, dead_letter, deliver_dead_letter, enqueue, ordered_producer};
use crate::metrics::Metrics;
use crate::source::dlq::DeadLetter;
use crate::source::kafka::{
    KafkaSettings, RebalanceEvent, Source, create_consumer, create_producer, store_next_offset,
};
use crate::source::repartition::forward_headers;
use otel_ingest::{Encoding, decode};
use prost::Message as _;
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use trace_model::TraceEvent;

/// How often open traces are checked for completion.
const TICK: Duration = Duration::from_millis(100);
/// Pause between attempts at a record Kafka did not take.
const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// A state read that receives nothing for this long is tried again.
const STATE_STALL: Duration = Duration::from_secs(20);

struct Partition {
    assembler: Assembler,
    /// Tells outcomes of an earlier ownership of the partition from this one's.
    generation: u64,
    /// The commit point last written to the state topic.
    written: Option<CommitPoint>,
    /// Records sent for it and not yet acknowledged.
    deliveries: usize,
    /// How far each spans partition was read and routed (Kafka time, Unix ms), from the
    /// router's markers read so far, and when that was read.
    sources: HashMap<i32, (i64, Instant)>,
}

enum Done {
    Output {
        partition: i32,
        generation: u64,
        ticket: Ticket,
    },
    Checkpoint {
        partition: i32,
        generation: u64,
        offset: Option<i64>,
    },
    /// Kafka refused a record for good.
    Failed { topic: String, source: KafkaError },
}

struct Stage {
    otel: OtelSettings,
    kafka: KafkaSettings,
    metrics: Metrics,
    source: Source,
    /// Traces to the traces topic.
    producer: FutureProducer,
    /// Dead letters and commit points.
    side: FutureProducer,
    partitions: HashMap<i32, Partition>,
    /// The spans topic's partition count: a marker from each is awaited.
    num_spans: i32,
    /// Completed traces, leaving in event-time order.
    order: EventTimeOrder<(u64, Output)>,
    next_generation: u64,
    tasks: JoinSet<Done>,
    /// Kafka refused a record for good: the stage stops with it.
    failure: Option<OtelError>,
    drain_timeout: Duration,
}

/// Assembles the routed spans until `stop` is cancelled; then waits up to `drain_timeout` for
/// what is in flight, writes the commit points and commits.
///
/// # Errors
/// A client cannot be created, or Kafka refused a record for good.
pub async fn run(
    num_spans: i32,
    otel: OtelSettings,
    kafka: KafkaSettings,
    metrics: Metrics,
    drain_timeout: Duration,
    stop: CancellationToken,
) -> Result<(), OtelError> {
    let source = create_consumer(&kafka, &otel.assembly_group_id, &otel.repartition_topic)?;
    let producer = ordered_producer(&kafka, &otel.assembly.limits)?;
    let side = create_producer(&kafka)?;
    tracing::info!(
        topic = otel.repartition_topic,
        group = otel.assembly_group_id,
        "assembling OpenTelemetry spans"
    );
    let order = EventTimeOrder::new(otel.assembly.quiet, otel.assembly.max_open);
    let mut stage = Stage {
        otel,
        kafka,
        metrics,
        source,
        producer,
        side,
        partitions: HashMap::new(),
        num_spans,
        order,
        next_generation: 0,
        tasks: JoinSet::new(),
        failure: None,
        drain_timeout,
    };
    stage.run(&stop).await;
    stage.drain(drain_timeout).await;
    stage.failure.map_or(Ok(()), Err)
}

impl Stage {
    async fn run(&mut self, stop: &CancellationToken) {
        let mut tick = tokio::time::interval(TICK);
        let mut checkpoint = tokio::time::interval(self.kafka.checkpoint_interval);
        while self.failure.is_none() {
            self.apply_rebalances(stop).await;
            let reading = self.held_spans() < self.otel.max_held_spans;
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                Some(joined) = self.tasks.join_next() => {
                    if let Ok(done) = joined {
                        self.done(done);
                    }
                }
                _ = tick.tick() => self.tick().await,
                _ = checkpoint.tick() => self.write_commit_points(),
                received = self.source.consumer.recv(), if reading => match received {
                    Ok(message) => {
                        let message = message.detach();
                        // A rebalance inside `recv` may have assigned its partition.
                        self.apply_rebalances(stop).await;
                        self.message(&message).await;
                    }
                    Err(error) => tracing::warn!(%error, "reading the routed spans"),
                },
            }
        }
    }

    fn held_spans(&self) -> usize {
        self.partitions
            .values()
            .map(|partition| partition.assembler.held_spans())
            .sum()
    }

    async fn apply_rebalances(&mut self, stop: &CancellationToken) {
        while let Ok(event) = self.source.rebalances.try_recv() {
            match event {
                RebalanceEvent::Assigned(partitions) => {
                    let Some(mut resumes) =
                        read_resumes(&self.kafka, &self.otel.state_topic, &partitions, stop).await
                    else {
                        // Stopping: the partitions are read by the next owner.
                        return;
                    };
                    for partition in partitions {
                        let resume = resumes.remove(&partition).unwrap_or_else(Resume::start);
                        let generation = self.next_generation;
                        self.next_generation += 1;
                        self.partitions.insert(
                            partition,
                            Partition {
                                assembler: Assembler::new(self.otel.assembly.clone(), resume),
                                generation,
                                written: None,
                                deliveries: 0,
                                sources: HashMap::new(),
                            },
                        );
                    }
                }
                RebalanceEvent::Revoked(partitions) => {
                    self.hand_over(&partitions).await;
                    for partition in partitions {
                        self.partitions.remove(&partition);
                    }
                }
            }
        }
        self.update_gauges();
    }

    async fn message(&mut self, message: &rdkafka::message::OwnedMessage) {
        let partition = message.partition();
        let offset = message.offset();
        let Some(state) = self.partitions.get_mut(&partition) else {
            tracing::warn!(partition, offset, "spans of a partition not owned; skipped");
            return;
        };
        let now = Instant::now();
        if let Some(marker) = forward_headers(message).marker {
            if let Some(read_through) = marker.read_through_ms {
                state.sources.insert(marker.from, (read_through, now));
            }
            state.assembler.skip(offset);
            return;
        }
        let payload = message.payload().unwrap_or_default();
        let generation = state.generation;
        // The router writes protobuf.
        match decode(payload, Encoding::Protobuf) {
            Ok(request) => {
                let outputs = state.assembler.message(offset, request, now);
                self.perform(partition, generation, outputs).await;
            }
            Err(error) => {
                let ticket = state.assembler.undecodable(offset);
                let letter = self.dead_letter(partition, offset, error.reason(), error.to_string());
                self.send_dead_letter(
                    partition,
                    generation,
                    ticket,
                    DeadLetter {
                        key: message.key().map(<[u8]>::to_vec),
                        payload: payload.to_vec(),
                        ..letter
                    },
                );
            }
        }
        self.update_gauges();
    }

    /// Ships what completed, in event-time order over the partitions (`order`).
    async fn tick(&mut self) {
        let now = Instant::now();
        let mut ship = Vec::new();
        for (partition, state) in &mut self.partitions {
            for output in state.assembler.tick(now) {
                match &output {
                    Output::Trace { event, .. } => {
                        let timestamp_ms = event.timestamp_ms;
                        self.order
                            .push(*partition, timestamp_ms, now, (state.generation, output));
                    }
                    Output::Refused { .. } => ship.push((*partition, state.generation, output)),
                }
            }
            let skipped = state.assembler.take_skipped();
            self.metrics
                .otel_spans_skipped
                .with_label_values(&["duplicate"])
                .inc_by(skipped.duplicate_spans as u64);
            self.metrics
                .otel_spans_skipped
                .with_label_values(&["shipped_before"])
                .inc_by(skipped.shipped_before as u64);
        }
        let max_open = self.otel.assembly.max_open;
        let num_spans = self.num_spans;
        let progress: Vec<Progress> = self
            .partitions
            .values()
            .map(|state| Progress {
                read_through_ms: Progress::read_through(&state.sources, num_spans, now, max_open),
                oldest_open_ms: state.assembler.oldest_open_ms(),
            })
            .collect();
        for released in self.order.release(progress, now) {
            let (generation, output) = released.item;
            ship.push((released.partition, generation, output));
        }
        for (partition, generation, output) in ship {
            self.perform(partition, generation, vec![output]).await;
        }
        self.update_gauges();
    }

    async fn perform(&mut self, partition: i32, generation: u64, outputs: Vec<Output>) {
        for output in outputs {
            match output {
                Output::Trace {
                    ticket,
                    read_at,
                    event,
                    forced,
                } => {
                    let completion = if forced { "forced" } else { "quiet" };
                    self.metrics
                        .otel_traces_assembled
                        .with_label_values(&[completion])
                        .inc();
                    self.produce(partition, generation, (ticket, read_at), &event)
                        .await;
                }
                Output::Refused {
                    ticket,
                    read_at,
                    reason,
                    message,
                    spans,
                } => {
                    let letter = DeadLetter {
                        payload: spans.encode_to_vec(),
                        ..self.dead_letter(partition, read_at, reason, message)
                    };
                    self.send_dead_letter(partition, generation, ticket, letter);
                }
            }
        }
    }

    async fn produce(
        &mut self,
        partition: i32,
        generation: u64,
        (ticket, read_at): (Ticket, i64),
        event: &TraceEvent,
    ) {
        let payload = match trace_model::codec::encode(event, trace_model::codec::Encoding::Avro) {
            Ok(payload) if payload.len() <= self.otel.assembly.limits.max_message_bytes => payload,
            Ok(payload) => {
                let message = format!(
                    "the assembled trace's record has {} bytes, more than limits.max_message_bytes ({})",
                    payload.len(),
                    self.otel.assembly.limits.max_message_bytes
                );
                let letter = DeadLetter {
                    payload,
                    ..self.dead_letter(partition, read_at, "too_large", message)
                };
                return self.send_dead_letter(partition, generation, ticket, letter);
            }
            Err(error) => {
                let letter = self.dead_letter(partition, read_at, "encode", error.to_string());
                return self.send_dead_letter(partition, generation, ticket, letter);
            }
        };
        let mut record = FutureRecord::to(&self.kafka.topic).payload(&payload);
        if let Some(key) = event.partition_key() {
            record = record.key(key);
        }
        // Queued now, in release order: a session's turns reach the traces topic in order.
        let delivery = match enqueue(&self.producer, record).await {
            Ok(delivery) => delivery,
            Err(source) => {
                return self.fail(self.kafka.topic.clone(), source);
            }
        };
        let topic = self.kafka.topic.clone();
        if let Some(state) = self.partitions.get_mut(&partition) {
            state.deliveries += 1;
        }
        self.tasks.spawn(async move {
            // The producer retries without a deadline: an error is for good.
            match delivery.await {
                Ok(Err((source, _))) => Done::Failed { topic, source },
                _ => Done::Output {
                    partition,
                    generation,
                    ticket,
                },
            }
        });
    }

    fn fail(&mut self, topic: String, source: KafkaError) {
        tracing::error!(%source, topic, "kafka refused an assembled trace for good; stopping");
        self.failure
            .get_or_insert(OtelError::Produce { topic, source });
    }

    fn dead_letter(
        &self,
        partition: i32,
        offset: i64,
        reason: &'static str,
        message: String,
    ) -> DeadLetter {
        dead_letter(&self.metrics, (partition, offset), reason, message)
    }

    fn send_dead_letter(
        &mut self,
        partition: i32,
        generation: u64,
        ticket: Ticket,
        mut letter: DeadLetter,
    ) {
        let max_bytes = self.otel.assembly.limits.max_message_bytes;
        if letter.payload.len() > max_bytes {
            // Kafka would refuse it; the spans stay in the spans topic.
            letter.message = format!(
                "{} (its {} bytes of spans are left out: more than limits.max_message_bytes)",
                letter.message,
                letter.payload.len()
            );
            letter.payload = Vec::new();
        }
        let producer = self.side.clone();
        let topic = self.kafka.dead_letter_topic.clone();
        let source_topic = self.otel.repartition_topic.clone();
        if let Some(state) = self.partitions.get_mut(&partition) {
            state.deliveries += 1;
        }
        self.tasks.spawn(async move {
            deliver_dead_letter(&producer, &topic, &source_topic, letter).await;
            Done::Output {
                partition,
                generation,
                ticket,
            }
        });
    }

    fn done(&mut self, done: Done) {
        match done {
            Done::Failed { topic, source } => self.fail(topic, source),
            Done::Output {
                partition,
                generation,
                ticket,
            } => {
                if let Some(state) = self.partitions.get_mut(&partition)
                    && state.generation == generation
                {
                    state.deliveries -= 1;
                    state.assembler.settled(ticket);
                }
            }
            Done::Checkpoint {
                partition,
                generation,
                offset,
            } => {
                let Some(state) = self.partitions.get_mut(&partition) else {
                    return;
                };
                if state.generation != generation {
                    return;
                }
                state.deliveries -= 1;
                match offset {
                    // The commit point is durable: its offset may be committed.
                    Some(offset) => {
                        let stored = store_next_offset(
                            &self.source.consumer,
                            &self.otel.repartition_topic,
                            partition,
                            offset,
                        );
                        if let Err(error) = stored {
                            tracing::debug!(%error, partition, "storing a spans offset");
                        }
                    }
                    // Not written: write it again at the next interval.
                    None => state.written = None,
                }
            }
        }
        self.update_gauges();
    }

    /// Writes each partition's commit point that moved since it was last written.
    fn write_commit_points(&mut self) {
        let partitions: Vec<i32> = self.partitions.keys().copied().collect();
        for partition in partitions {
            self.write_commit_point(partition);
        }
    }

    /// Writes `partition`'s commit point if it moved; its offset is stored once Kafka has it.
    fn write_commit_point(&mut self, partition: i32) {
        let Some(state) = self.partitions.get_mut(&partition) else {
            return;
        };
        let Some((offset, resume)) = state.assembler.commit_point() else {
            return;
        };
        let point = CommitPoint::new(offset, &resume);
        if state.written.as_ref() == Some(&point) {
            return;
        }
        state.written = Some(point.clone());
        state.deliveries += 1;
        let payload = serde_json::to_vec(&point).expect("a commit point serializes");
        let producer = self.side.clone();
        let topic = self.otel.state_topic.clone();
        let generation = state.generation;
        self.tasks.spawn(async move {
            let key = CommitPoint::key(partition);
            let record = FutureRecord::to(&topic)
                .partition(partition)
                .key(&key)
                .payload(&payload);
            let offset = match producer.send(record, Timeout::Never).await {
                Ok(_) => Some(offset),
                Err((error, _)) => {
                    tracing::warn!(%error, topic, partition, "writing an otel commit point");
                    None
                }
            };
            Done::Checkpoint {
                partition,
                generation,
                offset,
            }
        });
    }

    /// Before revoked `partitions` go: what was sent for them lands (up to the drain
    /// timeout) and their commit points are written, so their next owner ships none of it
    /// again. Traces still waiting for their turn to ship are left to that owner.
    async fn hand_over(&mut self, partitions: &[i32]) {
        let deadline = tokio::time::Instant::now() + self.drain_timeout;
        for partition in partitions {
            self.order.forget(*partition);
        }
        let mut wrote = false;
        loop {
            let sending = partitions.iter().any(|partition| {
                self.partitions
                    .get(partition)
                    .is_some_and(|state| state.deliveries > 0)
            });
            if !sending {
                if wrote {
                    return;
                }
                for partition in partitions {
                    self.write_commit_point(*partition);
                }
                wrote = true;
                continue;
            }
            match tokio::time::timeout_at(deadline, self.tasks.join_next()).await {
                Ok(Some(Ok(done))) => self.done(done),
                Ok(Some(Err(_))) => {}
                Ok(None) | Err(_) => {
                    tracing::warn!(
                        ?partitions,
                        "revoked before their records were all acknowledged"
                    );
                    return;
                }
            }
        }
    }

    /// After the stop: what is in flight lands (until `timeout`), the commit points are
    /// written and the offsets committed. Open traces are read again at the next start.
    async fn drain(&mut self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut wrote = false;
        loop {
            if self.tasks.is_empty() {
                if wrote {
                    break;
                }
                self.write_commit_points();
                wrote = true;
                continue;
            }
            match tokio::time::timeout_at(deadline, self.tasks.join_next()).await {
                Ok(Some(Ok(done))) => self.done(done),
                Ok(Some(Err(_))) => {}
                Ok(None) => {}
                Err(_) => {
                    tracing::warn!("the otel stage's records were not all acknowledged in time");
                    break;
                }
            }
        }
        self.tasks.abort_all();
        if let Err(error) = self.source.consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(%error, "otel commit at stop");
        }
    }

    fn update_gauges(&self) {
        let (open, held) = self
            .partitions
            .values()
            .fold((0, 0), |(open, held), partition| {
                (
                    open + partition.assembler.open_traces(),
                    held + partition.assembler.held_spans(),
                )
            });
        self.metrics
            .otel_open_traces
            .set(i64::try_from(open).unwrap_or(i64::MAX));
        self.metrics
            .otel_held_spans
            .set(i64::try_from(held).unwrap_or(i64::MAX));
    }
}

/// The partitions' commit points from the state topic, read again until they are read (their
/// messages wait meanwhile); `None` when the stage stops first.
async fn read_resumes(
    kafka: &KafkaSettings,
    state_topic: &str,
    partitions: &[i32],
    stop: &CancellationToken,
) -> Option<HashMap<i32, Resume>> {
    loop {
        let kafka = kafka.clone();
        let topic = state_topic.to_owned();
        let owned = partitions.to_vec();
        let read = tokio::task::spawn_blocking(move || {
            read_commit_points(&kafka, &topic, &owned, STATE_STALL)
        });
        let read = tokio::select! {
            read = read => read,
            () = stop.cancelled() => return None,
        };
        match read {
            Ok(Ok(points)) => {
                tracing::info!(?points, "otel commit points read");
                return Some(
                    points
                        .into_iter()
                        .map(|(partition, point)| {
                            (
                                partition,
                                point.map_or_else(Resume::start, |point| point.resume()),
                            )
                        })
                        .collect(),
                );
            }
            Ok(Err(error)) => tracing::warn!(
                error = %service_kit::fatal::cause_chain(&error),
                "reading the otel commit points; retrying"
            ),
            Err(error) => tracing::warn!(%error, "reading the otel commit points; retrying"),
        }
        tokio::select! {
            () = tokio::time::sleep(RETRY_PAUSE) => {}
            () = stop.cancelled() => return None,
        }
    }
}
