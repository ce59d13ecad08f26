//! The pipeline task: source → sessionize → enrich → batch → sink → commit, with explicit
//! shutdown.
//!
//! One task owns all per-partition state (session windows, offset tracker, open batches), so
//! no lock guards it. In its `select!`, acknowledgements and settlements come before new
//! input (`biased`), which keeps in-flight state bounded. Openlayer requests and dead-letter
//! deliveries run as owned tasks (`JoinSet`s) and report back; nothing is fire-and-forget.
//!
//! Lifecycle: Consuming → Draining (stop fetching, flush batches, wait for acknowledgements
//! until the drain deadline) → Complete (store and commit offsets, flush producers).

use crate::batch::{Batch, BatchSettings, Batcher, Origin, RowToBatch};
use crate::commit::OffsetTracker;
use crate::enrich::{openlayer_row, row_id_columns};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::sessionize::{ClosedSession, PartitionWindows, Placement, WindowSettings};
use crate::sink::openlayer::OpenlayerSink;
use crate::sink::{ShipReport, SinkSettings};
use crate::source::dlq::{DeadLetter, send_dead_letter};
use crate::source::kafka::{KafkaSettings, RebalanceEvent, Source, create_producer, create_source};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use thiserror::Error;
use tokio::task::JoinSet;
use trace_model::codec::avro::encode_session_summary;
use trace_model::{Decoder, Limits, SessionSummary, TraceEvent};

/// How often batches are checked for linger and lag gauges refreshed.
const TICK: Duration = Duration::from_millis(50);

/// Everything the pipeline runs with, from the validated configuration.
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    pub kafka: KafkaSettings,
    pub windows: WindowSettings,
    /// How often quiet partitions are checked for sessions to close.
    pub idle_check: Duration,
    /// Openlayer pipeline of traces that name none.
    pub default_pipeline_id: Option<String>,
    pub batch: BatchSettings,
    pub max_in_flight_requests: usize,
    /// Above this many unsettled messages the partitions pause.
    pub max_unacked_rows: usize,
    pub sink: SinkSettings,
    pub limits: Limits,
    /// Longest wait for acknowledgements at shutdown.
    pub drain_timeout: Duration,
}

/// Why the pipeline stopped with an error.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RunError {
    #[error("failed to create the kafka consumer")]
    Consumer(#[source] rdkafka::error::KafkaError),
    #[error("failed to create the kafka producer")]
    Producer(#[source] rdkafka::error::KafkaError),
    #[error("failed to create the openlayer client")]
    Sink(#[source] crate::sink::openlayer::SinkError),
}

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

/// A finished dead-letter delivery: settles its message when Kafka has it.
struct DeadLetterDelivered {
    origin: Origin,
    delivered: bool,
}

struct Pipeline {
    settings: PipelineSettings,
    metrics: Metrics,
    health: Health,
    source: Source,
    producer: FutureProducer,
    sink: Arc<OpenlayerSink>,
    decoder: Decoder,
    windows: HashMap<i32, PartitionWindows>,
    tracker: OffsetTracker,
    batcher: Batcher,
    /// Batches ready but waiting for a free request slot.
    waiting: VecDeque<Batch>,
    shipping: JoinSet<(Batch, ShipReport)>,
    /// When each Openlayer request task started, for the sink health check.
    shipping_started: HashMap<tokio::task::Id, Instant>,
    dead_letters: JoinSet<DeadLetterDelivered>,
    summaries: JoinSet<bool>,
    /// Next offset to process per owned partition, for consumer lag.
    positions: HashMap<i32, i64>,
    paused: bool,
    paused_since: Option<Instant>,
    last_idle_check: Instant,
}

/// Runs the sessionizer until `shutdown` resolves, then drains and commits.
///
/// # Errors
/// When a client cannot be created; per-message problems never end the run.
pub async fn run(
    settings: PipelineSettings,
    metrics: Metrics,
    health: Health,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let source = create_source(&settings.kafka).map_err(RunError::Consumer)?;
    let producer = create_producer(&settings.kafka).map_err(RunError::Producer)?;
    let sink =
        OpenlayerSink::try_new(settings.sink.clone(), metrics.clone()).map_err(RunError::Sink)?;
    let mut pipeline = Pipeline {
        decoder: Decoder::new(settings.limits),
        batcher: Batcher::new(settings.batch),
        settings,
        metrics,
        health,
        source,
        producer,
        sink: Arc::new(sink),
        windows: HashMap::new(),
        tracker: OffsetTracker::new(),
        waiting: VecDeque::new(),
        shipping: JoinSet::new(),
        shipping_started: HashMap::new(),
        dead_letters: JoinSet::new(),
        summaries: JoinSet::new(),
        positions: HashMap::new(),
        paused: false,
        paused_since: None,
        last_idle_check: Instant::now(),
    };
    pipeline.consume(shutdown).await;
    pipeline.drain().await;
    Ok(())
}

impl Pipeline {
    async fn consume(&mut self, shutdown: impl Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.apply_rebalances();
            tokio::select! {
                biased;
                () = &mut shutdown => {
                    tracing::info!("shutdown requested, draining");
                    return;
                }
                Some(shipped) = self.shipping.join_next_with_id(), if !self.shipping.is_empty() => {
                    self.on_shipped(shipped);
                }
                Some(delivered) = self.dead_letters.join_next(), if !self.dead_letters.is_empty() => {
                    self.on_dead_letter(delivered);
                }
                Some(produced) = self.summaries.join_next(), if !self.summaries.is_empty() => {
                    self.on_summary(produced);
                }
                _ = tick.tick() => self.on_tick(),
                received = self.source.consumer.recv() => {
                    match received {
                        Ok(message) => {
                            let message = message.detach();
                            self.apply_rebalances();
                            self.on_message(&message);
                        }
                        Err(error) => {
                            self.metrics.errors.with_label_values(&["kafka", "receiving"]).inc();
                            tracing::warn!(%error, "kafka consumer error");
                        }
                    }
                }
            }
        }
    }

    /// Applies ownership changes before anything else touches partition state.
    fn apply_rebalances(&mut self) {
        while let Ok(event) = self.source.rebalances.try_recv() {
            match event {
                RebalanceEvent::Assigned(partitions) => {
                    self.metrics.rebalances.with_label_values(&["assign"]).inc();
                    for partition in partitions {
                        self.tracker.assign(partition);
                        self.windows
                            .entry(partition)
                            .or_insert_with(|| PartitionWindows::new(self.settings.windows));
                    }
                }
                RebalanceEvent::Revoked(partitions) => {
                    self.metrics.rebalances.with_label_values(&["revoke"]).inc();
                    for partition in &partitions {
                        self.tracker.revoke(*partition);
                        self.positions.remove(partition);
                        if let Some(mut windows) = self.windows.remove(partition) {
                            let num_dropped = windows.close_all().len();
                            self.metrics.sessions_open.sub(num_dropped as i64);
                        }
                        let label = partition.to_string();
                        // The gauge may not have this partition yet; nothing to remove then.
                        let _absent = self.metrics.consumer_lag.remove_label_values(&[&label]);
                        let _absent = self.metrics.partition_lag.remove_label_values(&[&label]);
                    }
                    self.batcher.forget_partitions(&partitions);
                    self.waiting.retain_mut(|batch| {
                        retain_owned_rows(batch, &partitions);
                        !batch.rows.is_empty()
                    });
                }
            }
            self.metrics
                .partitions_assigned
                .set(self.windows.len() as i64);
            self.health.set_assigned(!self.windows.is_empty());
        }
    }

    fn on_message(&mut self, message: &OwnedMessage) {
        self.health.record_progress();
        self.health.set_broker_reachable(true);
        self.metrics.events_consumed.inc();
        let partition = message.partition();
        let offset = message.offset();
        if !self.tracker.owns(partition) {
            // A message fetched before the revoke was applied: its new owner handles it.
            return;
        }
        self.positions.insert(partition, offset + 1);
        let kafka_timestamp_ms = message.timestamp().to_millis();
        let origin = Origin {
            partition,
            offset,
            kafka_timestamp_ms,
        };
        let payload = message.payload().unwrap_or_default();
        let source_topic = self.settings.kafka.topic.clone();
        let event = match self.decoder.decode(payload) {
            Ok(event) => event,
            Err(error) => {
                self.metrics
                    .events_invalid
                    .with_label_values(&[error.reason()])
                    .inc();
                tracing::debug!(%error, partition, offset, "undecodable trace, dead-lettering");
                self.tracker.track(partition, offset, 1);
                self.dead_letter(
                    origin,
                    DeadLetter {
                        reason: error.reason(),
                        stage: "decode",
                        message: error.to_string(),
                        source_topic: &source_topic,
                        partition,
                        offset,
                        key: message.key(),
                        payload,
                        http_status: None,
                        pipeline_id: None,
                    },
                );
                return;
            }
        };
        let Some(pipeline_id) = event
            .pipeline_id
            .clone()
            .or_else(|| self.settings.default_pipeline_id.clone())
        else {
            self.metrics
                .events_invalid
                .with_label_values(&["no_pipeline_id"])
                .inc();
            self.tracker.track(partition, offset, 1);
            self.dead_letter(
                origin,
                DeadLetter {
                    reason: "no_pipeline_id",
                    stage: "decode",
                    message: "trace names no pipeline_id and no default is configured".to_owned(),
                    source_topic: &source_topic,
                    partition,
                    offset,
                    key: message.key(),
                    payload,
                    http_status: None,
                    pipeline_id: None,
                },
            );
            return;
        };
        self.place(&event, &pipeline_id, origin);
    }

    fn place(&mut self, event: &TraceEvent, pipeline_id: &str, origin: Origin) {
        let Origin {
            partition, offset, ..
        } = origin;
        // The producer's id, else one derived from the Kafka position: stable across
        // redeliveries, so a retried row is recognisably the same row.
        let inference_id = event
            .inference_id
            .clone()
            .unwrap_or_else(|| format!("{}-{partition}-{offset}", self.settings.kafka.topic));
        let mut closed = Vec::new();
        let Some(windows) = self.windows.get_mut(&partition) else {
            return;
        };
        let num_open_before = windows.num_open();
        let placement = windows.add(event, pipeline_id, wall_ms(), &mut closed);
        let num_open_after = windows.num_open();
        self.metrics
            .sessions_open
            .add(num_open_after as i64 - num_open_before as i64);
        if let Placement::Turn(turn) = &placement
            && turn.turn == 1
        {
            self.metrics.sessions_opened.inc();
        }
        if let Placement::End {
            closed: Some(ended),
        } = &placement
        {
            closed.push(ended.clone());
        }
        for session in closed {
            self.on_session_closed(partition, session);
        }
        match &placement {
            Placement::End { .. } => {
                self.tracker.track(partition, offset, 0);
                self.store_advanced_offsets();
                return;
            }
            Placement::Late { .. } => {
                self.metrics
                    .late_events
                    .with_label_values(&["marked"])
                    .inc();
            }
            Placement::Turn(turn) if turn.late_within_grace => {
                self.metrics
                    .late_events
                    .with_label_values(&["joined"])
                    .inc();
            }
            Placement::Passthrough => self.metrics.passthrough_events.inc(),
            Placement::Turn(_) => {}
        }
        if let Some(kafka_timestamp_ms) = origin.kafka_timestamp_ms {
            let lag_seconds = (wall_ms() - kafka_timestamp_ms).max(0) as f64 / 1000.0;
            self.metrics.sessionization_lag.observe(lag_seconds);
            self.metrics
                .partition_lag
                .with_label_values(&[&partition.to_string()])
                .set(lag_seconds);
        }
        let row = openlayer_row(event, &inference_id, &placement);
        let (has_user, has_session) = row_id_columns(event, &placement);
        self.tracker.track(partition, offset, 1);
        let mut ready = Vec::new();
        self.batcher.add(
            RowToBatch {
                pipeline_id,
                row,
                origin,
                input_names: event.inputs.keys(),
                has_user,
                has_session,
            },
            Instant::now(),
            &mut ready,
        );
        self.dispatch(ready);
        self.apply_backpressure();
    }

    fn on_session_closed(&mut self, partition: i32, session: ClosedSession) {
        let reason = session.reason.as_str();
        self.metrics
            .sessions_closed
            .with_label_values(&[reason])
            .inc();
        let state = &session.state;
        let duration_seconds = (state.last_event_ms - state.started_at_ms).max(0) as f64 / 1000.0;
        self.metrics.session_duration.observe(duration_seconds);
        self.metrics.session_turns.observe(state.turns as f64);
        tracing::debug!(partition, reason, turns = state.turns, "session closed");
        let Some(topic) = self.settings.kafka.sessions_topic.clone() else {
            return;
        };
        let summary = SessionSummary {
            schema_version: trace_model::record::SESSION_SUMMARY_SCHEMA_VERSION,
            session_key: session.key.joined(),
            pipeline_id: session.key.pipeline_id.clone(),
            session_id: session.key.session_id.clone(),
            user_id: state.user_id.clone(),
            segment: state.segment,
            started_at_ms: state.started_at_ms,
            ended_at_ms: state.last_event_ms,
            num_turns: state.turns,
            total_tokens: state.tokens,
            total_cost: state.cost,
            total_latency_ms: state.latency_ms,
            close_reason: reason.to_owned(),
            first_inference_id: state.first_inference_id.clone(),
            last_inference_id: state.last_inference_id.clone(),
        };
        let payload = match encode_session_summary(&summary) {
            Ok(payload) => payload,
            Err(error) => {
                self.metrics
                    .errors
                    .with_label_values(&["encode", "processing"])
                    .inc();
                tracing::error!(%error, "failed to encode a session summary");
                return;
            }
        };
        let record = FutureRecord::to(&topic)
            .key(summary.session_key.as_str())
            .payload(&payload);
        match self.producer.send_result(record) {
            Ok(delivery) => {
                self.summaries
                    .spawn(async move { matches!(delivery.await, Ok(Ok(_))) });
            }
            Err((error, _)) => {
                self.metrics
                    .errors
                    .with_label_values(&["kafka", "sending"])
                    .inc();
                tracing::warn!(%error, "failed to queue a session summary");
            }
        }
    }

    fn dead_letter(&mut self, origin: Origin, letter: DeadLetter<'_>) {
        self.metrics
            .dead_letters
            .with_label_values(&[letter.stage, letter.reason])
            .inc();
        match send_dead_letter(
            &self.producer,
            &self.settings.kafka.dead_letter_topic,
            &letter,
        ) {
            Ok(delivery) => {
                self.dead_letters.spawn(async move {
                    let delivered = matches!(delivery.await, Ok(Ok(_)));
                    DeadLetterDelivered { origin, delivered }
                });
            }
            Err(error) => {
                // Left unsettled: its offset is never committed, so a restart redelivers it.
                self.metrics
                    .errors
                    .with_label_values(&["kafka", "sending"])
                    .inc();
                tracing::error!(%error, "failed to queue a dead letter; the message stays uncommitted");
            }
        }
    }

    fn dispatch(&mut self, ready: Vec<Batch>) {
        self.waiting.extend(ready);
        while self.shipping.len() < self.settings.max_in_flight_requests {
            let Some(batch) = self.waiting.pop_front() else {
                break;
            };
            let sink = self.sink.clone();
            let task = self.shipping.spawn(async move {
                let report = sink
                    .ship(&batch.pipeline_id, &batch.config, &batch.rows)
                    .await;
                (batch, report)
            });
            self.shipping_started.insert(task.id(), Instant::now());
        }
    }

    fn on_shipped(
        &mut self,
        shipped: Result<(tokio::task::Id, (Batch, ShipReport)), tokio::task::JoinError>,
    ) {
        let (batch, report) = match shipped {
            Ok((task, shipped)) => {
                self.shipping_started.remove(&task);
                shipped
            }
            Err(error) => {
                self.shipping_started.remove(&error.id());
                // Only a panic in the sink gets here; its rows stay unsettled (redelivered).
                self.metrics
                    .errors
                    .with_label_values(&["panic", "sending"])
                    .inc();
                tracing::error!(%error, "openlayer request task failed");
                return;
            }
        };
        let rejected: HashMap<usize, &crate::sink::Rejection> = report
            .rejected
            .iter()
            .map(|(index, rejection)| (*index, rejection))
            .collect();
        let now_ms = wall_ms();
        let mut letters = Vec::new();
        for (index, origin) in batch.origins.iter().enumerate() {
            if let Some(rejection) = rejected.get(&index) {
                letters.push((*origin, index, (*rejection).clone()));
                continue;
            }
            self.metrics.rows_shipped.inc();
            if let Some(kafka_timestamp_ms) = origin.kafka_timestamp_ms {
                self.metrics
                    .end_to_end_delay
                    .observe((now_ms - kafka_timestamp_ms).max(0) as f64 / 1000.0);
            }
            self.tracker.settle(origin.partition, origin.offset);
        }
        for (origin, index, rejection) in letters {
            if !self.tracker.owns(origin.partition) {
                continue;
            }
            let payload = batch.rows[index].get().as_bytes();
            let letter = DeadLetter {
                reason: "openlayer_rejected",
                stage: "sink",
                message: rejection.body.clone(),
                source_topic: &self.settings.kafka.topic,
                partition: origin.partition,
                offset: origin.offset,
                key: None,
                payload,
                http_status: rejection.status,
                pipeline_id: Some(&batch.pipeline_id),
            };
            let topic = self.settings.kafka.dead_letter_topic.clone();
            self.metrics
                .dead_letters
                .with_label_values(&["sink", "openlayer_rejected"])
                .inc();
            match send_dead_letter(&self.producer, &topic, &letter) {
                Ok(delivery) => {
                    self.dead_letters.spawn(async move {
                        let delivered = matches!(delivery.await, Ok(Ok(_)));
                        DeadLetterDelivered { origin, delivered }
                    });
                }
                Err(error) => {
                    self.metrics
                        .errors
                        .with_label_values(&["kafka", "sending"])
                        .inc();
                    tracing::error!(%error, "failed to queue a dead letter; the row stays uncommitted");
                }
            }
        }
        self.store_advanced_offsets();
        self.dispatch(Vec::new());
        self.apply_backpressure();
    }

    fn on_dead_letter(&mut self, delivered: Result<DeadLetterDelivered, tokio::task::JoinError>) {
        match delivered {
            Ok(DeadLetterDelivered {
                origin,
                delivered: true,
            }) => {
                self.tracker.settle(origin.partition, origin.offset);
                self.store_advanced_offsets();
            }
            Ok(DeadLetterDelivered { origin, .. }) => {
                self.metrics
                    .errors
                    .with_label_values(&["kafka", "sending"])
                    .inc();
                tracing::error!(
                    partition = origin.partition,
                    offset = origin.offset,
                    "dead letter not delivered; the message stays uncommitted"
                );
            }
            Err(error) => tracing::error!(%error, "dead-letter task failed"),
        }
    }

    fn on_summary(&mut self, produced: Result<bool, tokio::task::JoinError>) {
        match produced {
            Ok(true) => self.metrics.summaries_produced.inc(),
            Ok(false) | Err(_) => {
                self.metrics
                    .errors
                    .with_label_values(&["kafka", "sending"])
                    .inc();
                tracing::warn!("session summary not delivered");
            }
        }
    }

    /// Stores the offsets whose watermark advanced; librdkafka commits them periodically.
    fn store_advanced_offsets(&mut self) {
        let advanced = self.tracker.take_advanced();
        if advanced.is_empty() {
            return;
        }
        let mut offsets = TopicPartitionList::new();
        for (partition, watermark) in &advanced {
            if let Err(error) = offsets.add_partition_offset(
                &self.settings.kafka.topic,
                *partition,
                Offset::Offset(*watermark),
            ) {
                tracing::warn!(%error, partition, "failed to list an offset to store");
            }
        }
        match self.source.consumer.store_offsets(&offsets) {
            Ok(()) => self.metrics.commits.with_label_values(&["stored"]).inc(),
            Err(error) => {
                self.metrics
                    .commits
                    .with_label_values(&["store_failed"])
                    .inc();
                tracing::debug!(%error, "failed to store offsets");
            }
        }
    }

    fn owned_partitions(&self) -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        for partition in self.windows.keys() {
            list.add_partition(&self.settings.kafka.topic, *partition);
        }
        list
    }

    /// Pauses fetching while too many messages are unsettled (Openlayer slow or down), and
    /// resumes at half the limit, so memory stays bounded.
    fn apply_backpressure(&mut self) {
        let unsettled = self.tracker.num_pending();
        let limit = self.settings.max_unacked_rows;
        if !self.paused && unsettled >= limit {
            let partitions = self.owned_partitions();
            if let Err(error) = self.source.consumer.pause(&partitions) {
                tracing::warn!(%error, "failed to pause partitions");
                return;
            }
            tracing::info!(unsettled, "pausing partitions until openlayer catches up");
            self.paused = true;
            self.paused_since = Some(Instant::now());
            self.metrics
                .partitions_paused
                .set(partitions.count() as i64);
        } else if self.paused && unsettled <= limit / 2 {
            let partitions = self.owned_partitions();
            if let Err(error) = self.source.consumer.resume(&partitions) {
                tracing::warn!(%error, "failed to resume partitions");
                return;
            }
            tracing::info!(unsettled, "resuming partitions");
            self.paused = false;
            if let Some(since) = self.paused_since.take() {
                self.metrics
                    .backpressure_seconds
                    .inc_by(since.elapsed().as_secs_f64());
            }
            self.metrics.partitions_paused.set(0);
        }
    }

    fn on_tick(&mut self) {
        self.health.record_progress();
        self.metrics
            .rows_in_flight
            .set(self.tracker.num_pending() as i64);
        // Failing: a request has been retrying for longer than two request timeouts.
        let patience = self.settings.sink.request_timeout * 2;
        let sink_failing = self
            .shipping_started
            .values()
            .any(|started| started.elapsed() > patience);
        self.health.set_sink_failing(sink_failing);
        let mut ready = Vec::new();
        self.batcher.flush_due(Instant::now(), &mut ready);
        self.dispatch(ready);
        if self.last_idle_check.elapsed() >= self.settings.idle_check {
            self.last_idle_check = Instant::now();
            self.close_idle_sessions();
            self.update_lag_gauges();
        }
    }

    fn close_idle_sessions(&mut self) {
        let now_ms = wall_ms();
        let mut closed_by_partition = Vec::new();
        for (partition, windows) in &mut self.windows {
            let mut closed = Vec::new();
            windows.expire(now_ms, &mut closed);
            if !closed.is_empty() {
                closed_by_partition.push((*partition, closed));
            }
        }
        for (partition, closed) in closed_by_partition {
            self.metrics.sessions_open.sub(closed.len() as i64);
            for session in closed {
                self.on_session_closed(partition, session);
            }
        }
    }

    /// Consumer lag per owned partition: fetch high watermark minus next offset to process.
    fn update_lag_gauges(&mut self) {
        let high_watermarks = self
            .source
            .high_watermarks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let owned: HashSet<i32> = self.windows.keys().copied().collect();
        for partition in owned {
            let Some(high) = high_watermarks.get(&partition) else {
                continue;
            };
            let next = self.positions.get(&partition).copied().unwrap_or(0);
            self.metrics
                .consumer_lag
                .with_label_values(&[&partition.to_string()])
                .set((high - next).max(0));
        }
    }

    async fn drain(&mut self) {
        let deadline = tokio::time::Instant::now() + self.settings.drain_timeout;
        let mut ready = Vec::new();
        self.batcher.flush_all(&mut ready);
        self.dispatch(ready);
        let drained = tokio::time::timeout_at(deadline, async {
            while !self.shipping.is_empty() || !self.dead_letters.is_empty() || !self.waiting.is_empty() {
                tokio::select! {
                    biased;
                    Some(shipped) = self.shipping.join_next_with_id(), if !self.shipping.is_empty() => self.on_shipped(shipped),
                    Some(delivered) = self.dead_letters.join_next(), if !self.dead_letters.is_empty() => self.on_dead_letter(delivered),
                    else => break,
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                unsettled = self.tracker.num_pending(),
                "drain deadline passed; unacknowledged rows will be redelivered after restart"
            );
            self.shipping.abort_all();
            self.dead_letters.abort_all();
        }
        self.store_advanced_offsets();
        match self.source.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => self.metrics.commits.with_label_values(&["committed"]).inc(),
            Err(error) => {
                self.metrics
                    .commits
                    .with_label_values(&["commit_failed"])
                    .inc();
                tracing::debug!(%error, "final commit");
            }
        }
        while let Some(produced) = self.summaries.try_join_next() {
            self.on_summary(produced);
        }
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        if let Err(error) = self.producer.flush(remaining.max(Duration::from_secs(1))) {
            tracing::warn!(%error, "side outputs left undelivered at shutdown");
        }
        tracing::info!("pipeline stopped");
    }
}

/// Removes rows of revoked partitions from a batch that has not been sent yet.
fn retain_owned_rows(batch: &mut Batch, revoked: &[i32]) {
    let mut index = 0;
    while index < batch.origins.len() {
        if revoked.contains(&batch.origins[index].partition) {
            batch.origins.remove(index);
            batch.rows.remove(index);
        } else {
            index += 1;
        }
    }
}
