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
use crate::sessionize::store::{PartitionJournal, RestoredPartition, StateAfter};
use crate::sessionize::{ClosedSession, PartitionWindows, Placement, WindowSettings};
use crate::sink::openlayer::OpenlayerSink;
use crate::sink::{ShipReport, SinkSettings};
use crate::source::changelog::ChangelogError;
use crate::source::dlq::{DeadLetter, send_dead_letter};
use crate::source::kafka::{KafkaSettings, RebalanceEvent, Source, create_producer, create_source};
use crate::source::restoring::{AttemptDone, RestoreOutcome, Restoring};
use crate::source::topics::{TopicError, prepare_topics};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use thiserror::Error;
use tokio::task::{JoinError, JoinSet};
use trace_model::codec::avro::encode_session_summary;
use trace_model::codec::registry::SchemaRegistry;
use trace_model::{DecodeError, Decoder, Limits, SessionSummary, TraceEvent, TraceKind};

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
    /// Mark each closed session's last row with `session_final_turn: true` (row update).
    pub mark_final_turn: bool,
    /// How often session state is checkpointed to the changelog (and offsets stored).
    pub checkpoint_interval: Duration,
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
    #[error("failed to create the schema registry client")]
    SchemaRegistry(#[source] trace_model::codec::registry::RegistryError),
    #[error("the topics are not ready")]
    Topics(#[source] TopicError),
    /// Processing a partition without its session state would renumber its sessions' turns;
    /// stopping lets the restart (Kubernetes restarts the pod) try again.
    #[error("failed to restore session state from the changelog")]
    Restore(#[source] ChangelogError),
}

/// The next finished changelog read (`None` without a changelog; the `select!` guard keeps
/// this from being polled when no read runs).
async fn join_restore(restoring: &mut Option<Restoring>) -> Option<Result<AttemptDone, JoinError>> {
    match restoring {
        Some(restoring) => restoring.join_next().await,
        None => None,
    }
}

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

/// A closed session's last row, to be marked as its final turn.
struct FinalTurn {
    partition: i32,
    close_offset: i64,
    pipeline_id: String,
    inference_id: String,
}

/// A row update read from the traces topic (the gateway's `PUT .../rows`). It is sent once
/// every message below it is settled, so it reaches Openlayer after the rows produced before
/// it (the gateway keys an update like its row, so they share a partition), and it settles its
/// own message when Openlayer accepted it or its dead letter is written.
struct ForwardedUpdate {
    origin: Origin,
    pipeline_id: String,
    event: TraceEvent,
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
    /// Final-turn row updates in flight (best-effort, like summaries).
    row_updates: JoinSet<bool>,
    /// Final-turn updates waiting for their session's rows to be acknowledged.
    final_turns: Vec<FinalTurn>,
    /// Row updates from the traces topic waiting for the messages below them to settle.
    forwarded_updates: Vec<ForwardedUpdate>,
    /// Row updates sent, with whether Openlayer accepted them.
    forwarded_in_flight: JoinSet<(ForwardedUpdate, bool)>,
    /// Next offset to process per owned partition, for consumer lag.
    positions: HashMap<i32, i64>,
    /// Kafka timestamp of the newest processed record per owned partition, for the
    /// partition lag gauge (set on the tick, not per message).
    newest_timestamps: HashMap<i32, i64>,
    paused: bool,
    paused_since: Option<Instant>,
    last_idle_check: Instant,
    /// Per-partition journal of state changes since the last checkpoint.
    journals: HashMap<i32, PartitionJournal>,
    /// What each partition's changelog held at assignment, for skipping replayed messages.
    restored: HashMap<i32, RestoredPartition>,
    /// Partitions whose state is being read back (`None`: no changelog, state starts empty).
    restoring: Option<Restoring>,
    /// Checkpoint writes awaiting Kafka: (partition, watermark, all delivered).
    checkpoints: JoinSet<(i32, i64, bool)>,
    checkpoint_in_flight: HashSet<i32>,
    last_checkpoint: Instant,
    /// Set when the run must end with an error (after the drain): a partition whose state
    /// could not be restored.
    fatal: Option<RunError>,
}

/// Runs the sessionizer until `shutdown` resolves, then drains and commits.
///
/// # Errors
/// When a client cannot be created, or a partition's session state cannot be restored;
/// per-message problems never end the run.
pub async fn run(
    settings: PipelineSettings,
    metrics: Metrics,
    health: Health,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    prepare_topics(&settings.kafka)
        .await
        .map_err(RunError::Topics)?;
    let source = create_source(&settings.kafka).map_err(RunError::Consumer)?;
    let producer = create_producer(&settings.kafka).map_err(RunError::Producer)?;
    let sink =
        OpenlayerSink::try_new(settings.sink.clone(), metrics.clone()).map_err(RunError::Sink)?;
    let mut decoder = Decoder::new(settings.limits);
    if let Some(url) = &settings.kafka.schema_registry_url {
        let registry = SchemaRegistry::try_new(url.clone(), Duration::from_secs(10))
            .map_err(RunError::SchemaRegistry)?;
        decoder = decoder.with_registry(registry);
    }
    let restoring = settings
        .kafka
        .changelog_topic
        .clone()
        .map(|changelog| Restoring::new(settings.kafka.clone(), changelog, metrics.clone()));
    let mut pipeline = Pipeline {
        decoder,
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
        row_updates: JoinSet::new(),
        final_turns: Vec::new(),
        forwarded_updates: Vec::new(),
        forwarded_in_flight: JoinSet::new(),
        positions: HashMap::new(),
        newest_timestamps: HashMap::new(),
        paused: false,
        paused_since: None,
        last_idle_check: Instant::now(),
        journals: HashMap::new(),
        restored: HashMap::new(),
        restoring,
        checkpoints: JoinSet::new(),
        checkpoint_in_flight: HashSet::new(),
        last_checkpoint: Instant::now(),
        fatal: None,
    };
    pipeline.consume(shutdown).await;
    pipeline.drain().await;
    match pipeline.fatal.take() {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

impl Pipeline {
    async fn consume(&mut self, shutdown: impl Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.apply_rebalances();
            if self.fatal.is_some() {
                tracing::error!("stopping: a partition cannot be processed correctly");
                return;
            }
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
                Some(_updated) = self.row_updates.join_next(), if !self.row_updates.is_empty() => {}
                Some(forwarded) = self.forwarded_in_flight.join_next(), if !self.forwarded_in_flight.is_empty() => {
                    self.on_forwarded_update(forwarded);
                }
                Some(written) = self.checkpoints.join_next(), if !self.checkpoints.is_empty() => {
                    self.on_checkpoint_written(written);
                }
                Some(read) = join_restore(&mut self.restoring), if self.restoring.as_ref().is_some_and(Restoring::has_running) => {
                    self.apply_rebalances();
                    self.on_restore_finished(read);
                }
                _ = tick.tick() => self.on_tick(),
                received = self.source.consumer.recv() => {
                    match received {
                        Ok(message) => {
                            let message = message.detach();
                            let schema_error =
                                prefetch_schema(&self.decoder, &self.metrics, &message).await;
                            self.apply_rebalances();
                            self.on_message(&message, schema_error);
                        }
                        Err(error) => {
                            self.metrics.errors.with_label_values(&["kafka", "receiving"]).inc();
                            if matches!(
                                error.rdkafka_error_code(),
                                Some(
                                    rdkafka::types::RDKafkaErrorCode::AllBrokersDown
                                        | rdkafka::types::RDKafkaErrorCode::BrokerTransportFailure
                                )
                            ) {
                                self.health.set_broker_reachable(false);
                            }
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
                    // An assignment came from the group coordinator: the broker answers.
                    self.health.set_broker_reachable(true);
                    self.health.set_joined();
                    for partition in &partitions {
                        self.tracker.assign(*partition);
                    }
                    self.restore_partitions(&partitions);
                    if self.paused || self.restoring.is_some() {
                        // Backpressure holds for partitions gained while paused, too; and a
                        // partition waits for its session state before anything is fetched.
                        let mut gained = TopicPartitionList::new();
                        for partition in &partitions {
                            gained.add_partition(&self.settings.kafka.topic, *partition);
                        }
                        if let Err(error) = self.source.consumer.pause(&gained) {
                            tracing::warn!(%error, "failed to pause newly assigned partitions");
                        }
                    }
                }
                RebalanceEvent::Revoked(partitions) => {
                    self.metrics.rebalances.with_label_values(&["revoke"]).inc();
                    if let Some(restoring) = self.restoring.as_mut() {
                        restoring.forget(&partitions);
                        self.health.set_restore_retrying(restoring.is_retrying());
                    }
                    for partition in &partitions {
                        self.tracker.revoke(*partition);
                        self.positions.remove(partition);
                        self.newest_timestamps.remove(partition);
                        self.journals.remove(partition);
                        self.restored.remove(partition);
                        self.checkpoint_in_flight.remove(partition);
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
        }
    }

    fn on_message(&mut self, message: &OwnedMessage, schema_error: Option<DecodeError>) {
        self.health.record_progress();
        self.health.set_broker_reachable(true);
        self.metrics.events_consumed.inc();
        let partition = message.partition();
        let offset = message.offset();
        if !self.tracker.owns(partition) {
            // A message fetched before the revoke was applied: its new owner handles it.
            return;
        }
        if let Some(restoring) = self.restoring.as_mut()
            && restoring.is_restoring(partition)
        {
            // Fetched before the partition's pause took effect: processed once its state is
            // back, in order.
            restoring.hold(message.clone(), schema_error);
            return;
        }
        self.positions.insert(partition, offset + 1);
        if self
            .restored
            .get(&partition)
            .is_some_and(|restored| restored.already_applied(None, offset))
        {
            // Applied and acknowledged before the last checkpoint: replaying it would count
            // it twice.
            self.tracker.track(partition, offset, 0);
            return;
        }
        let kafka_timestamp_ms = message.timestamp().to_millis();
        let origin = Origin {
            partition,
            offset,
            kafka_timestamp_ms,
        };
        let payload = message.payload().unwrap_or_default();
        let decoded = match schema_error {
            Some(error) => Err(error),
            None => self.decoder.decode(payload),
        };
        let event = match decoded {
            Ok(event) => event,
            Err(error) => {
                tracing::debug!(%error, partition, offset, "undecodable trace, dead-lettering");
                self.reject_message(origin, message, error.reason(), error.to_string());
                return;
            }
        };
        let Some(pipeline_id) = event
            .pipeline_id
            .clone()
            .or_else(|| self.settings.default_pipeline_id.clone())
        else {
            self.reject_message(
                origin,
                message,
                "no_pipeline_id",
                "trace names no pipeline_id and no default is configured".to_owned(),
            );
            return;
        };
        if event.kind == TraceKind::RowUpdate {
            self.tracker.track(partition, offset, 1);
            self.forwarded_updates.push(ForwardedUpdate {
                origin,
                pipeline_id,
                event,
            });
            return;
        }
        self.place(&event, &pipeline_id, origin);
    }

    /// Sends the row updates whose messages below are all settled; forgets those of
    /// partitions this instance no longer owns (their new owner sends them).
    fn send_forwarded_updates(&mut self) {
        if self.forwarded_updates.is_empty() {
            return;
        }
        let (ready, waiting): (Vec<ForwardedUpdate>, Vec<ForwardedUpdate>) =
            std::mem::take(&mut self.forwarded_updates)
                .into_iter()
                .filter(|update| self.tracker.owns(update.origin.partition))
                .partition(|update| {
                    self.tracker
                        .watermark(update.origin.partition)
                        .is_some_and(|watermark| watermark >= update.origin.offset)
                });
        self.forwarded_updates = waiting;
        for update in ready {
            let sink = self.sink.clone();
            self.forwarded_in_flight.spawn(async move {
                let columns =
                    serde_json::Value::Object(update.event.row.clone().unwrap_or_default());
                let config = update
                    .event
                    .row_config
                    .clone()
                    .map(serde_json::Value::Object);
                let inference_id = update.event.inference_id.as_deref().unwrap_or_default();
                let accepted = sink
                    .update_row_with_config(
                        &update.pipeline_id,
                        inference_id,
                        &columns,
                        config.as_ref(),
                    )
                    .await;
                (update, accepted)
            });
        }
    }

    /// Settles an accepted row update; dead-letters one Openlayer did not accept.
    fn on_forwarded_update(
        &mut self,
        forwarded: Result<(ForwardedUpdate, bool), tokio::task::JoinError>,
    ) {
        let Ok((update, accepted)) = forwarded else {
            // Only a panic in the sink gets here; the message stays unsettled (redelivered).
            self.metrics
                .errors
                .with_label_values(&["panic", "sending"])
                .inc();
            return;
        };
        let origin = update.origin;
        if !self.tracker.owns(origin.partition) {
            return;
        }
        if accepted {
            self.tracker.settle(origin.partition, origin.offset);
            self.store_advanced_offsets();
            return;
        }
        let payload = trace_model::codec::json::encode_trace(&update.event);
        let source_topic = self.settings.kafka.topic.clone();
        self.dead_letter(
            origin,
            DeadLetter {
                reason: "openlayer_row_update_failed",
                stage: "sink",
                message: "openlayer did not accept the row update".to_owned(),
                source_topic: &source_topic,
                partition: origin.partition,
                offset: origin.offset,
                key: update.event.partition_key().map(str::as_bytes),
                payload: &payload,
                http_status: None,
                pipeline_id: Some(&update.pipeline_id),
            },
        );
    }

    /// Dead-letters a message that cannot become a row (decode or validation failure, no
    /// pipeline); it settles once the dead letter is acknowledged.
    fn reject_message(
        &mut self,
        origin: Origin,
        message: &OwnedMessage,
        reason: &'static str,
        description: String,
    ) {
        self.metrics
            .events_invalid
            .with_label_values(&[reason])
            .inc();
        self.tracker.track(origin.partition, origin.offset, 1);
        let source_topic = self.settings.kafka.topic.clone();
        self.dead_letter(
            origin,
            DeadLetter {
                reason,
                stage: "decode",
                message: description,
                source_topic: &source_topic,
                partition: origin.partition,
                offset: origin.offset,
                key: message.key(),
                payload: message.payload().unwrap_or_default(),
                http_status: None,
                pipeline_id: None,
            },
        );
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
        let key = windows.peek_key(event, pipeline_id);
        if self
            .restored
            .get(&partition)
            .is_some_and(|restored| restored.already_applied(key.as_ref(), offset))
        {
            self.tracker.track(partition, offset, 0);
            return;
        }
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
        if let Some(journal) = self.journals.get_mut(&partition) {
            let mut touched: Vec<&crate::sessionize::SessionKey> =
                closed.iter().map(|session| &session.key).collect();
            if let Placement::Turn(turn) = &placement {
                touched.push(&turn.key);
            }
            for key in touched {
                journal.record_state(
                    offset,
                    key,
                    StateAfter {
                        state: windows.session(key).cloned(),
                        next_segment: windows.next_segment_of(key),
                    },
                );
            }
            journal.record_event_time(offset, windows.event_time_ms());
        }
        for session in closed {
            self.on_session_closed(partition, session, offset);
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
            self.newest_timestamps.insert(partition, kafka_timestamp_ms);
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

    /// `close_offset`: the message that closed it, or the last one consumed (idle closes); the
    /// session's rows all sit at or below it.
    fn on_session_closed(&mut self, partition: i32, session: ClosedSession, close_offset: i64) {
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
        if self.settings.mark_final_turn && !state.last_inference_id.is_empty() {
            // Sent once the final row itself is acknowledged: updating a row Openlayer has not
            // stored yet would be lost.
            self.final_turns.push(FinalTurn {
                partition,
                close_offset,
                pipeline_id: session.key.pipeline_id.clone(),
                inference_id: state.last_inference_id.clone(),
            });
        }
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
        let source_topic = self.settings.kafka.topic.clone();
        for (origin, index, rejection) in letters {
            if !self.tracker.owns(origin.partition) {
                continue;
            }
            self.dead_letter(
                origin,
                DeadLetter {
                    reason: "openlayer_rejected",
                    stage: "sink",
                    message: rejection.body.clone(),
                    source_topic: &source_topic,
                    partition: origin.partition,
                    offset: origin.offset,
                    key: None,
                    payload: batch.rows[index].get().as_bytes(),
                    http_status: rejection.status,
                    pipeline_id: Some(&batch.pipeline_id),
                },
            );
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

    /// Makes settled offsets durable. Without a changelog they are stored at once; with one,
    /// a checkpoint of session state as of the watermark goes first (on the tick), and the
    /// offset is stored when Kafka acknowledged it. librdkafka commits stored offsets.
    fn store_advanced_offsets(&mut self) {
        if self.settings.kafka.changelog_topic.is_some() {
            return;
        }
        for (partition, watermark) in self.tracker.take_advanced() {
            self.store_offset(partition, watermark);
        }
    }

    fn store_offset(&mut self, partition: i32, watermark: i64) {
        let mut offsets = TopicPartitionList::new();
        if let Err(error) = offsets.add_partition_offset(
            &self.settings.kafka.topic,
            partition,
            Offset::Offset(watermark),
        ) {
            tracing::warn!(%error, partition, "failed to list an offset to store");
            return;
        }
        match self.source.consumer.store_offsets(&offsets) {
            Ok(()) => self.metrics.commits.with_label_values(&["stored"]).inc(),
            Err(error) => {
                // The partition was revoked meanwhile: its new owner carries on.
                self.metrics
                    .commits
                    .with_label_values(&["store_failed"])
                    .inc();
                tracing::debug!(%error, partition, "failed to store an offset");
            }
        }
    }

    /// Writes a checkpoint for every partition whose watermark moved past its last one.
    fn checkpoint(&mut self) {
        let Some(changelog) = self.settings.kafka.changelog_topic.clone() else {
            return;
        };
        self.last_checkpoint = Instant::now();
        let partitions: Vec<i32> = self.journals.keys().copied().collect();
        for partition in partitions {
            if self.checkpoint_in_flight.contains(&partition) {
                continue;
            }
            let Some(watermark) = self.tracker.watermark(partition) else {
                continue;
            };
            let Some(journal) = self.journals.get_mut(&partition) else {
                continue;
            };
            let writes = journal.checkpoint(watermark);
            if writes.is_empty() {
                continue;
            }
            let mut deliveries = Vec::with_capacity(writes.len());
            let mut queued_all = true;
            for write in &writes {
                let record = FutureRecord::to(&changelog)
                    .partition(partition)
                    .key(write.key.as_str())
                    .payload(write.value.as_slice());
                match self.producer.send_result(record) {
                    Ok(delivery) => deliveries.push(delivery),
                    Err((error, _)) => {
                        tracing::error!(%error, partition, "failed to queue a changelog record");
                        queued_all = false;
                        break;
                    }
                }
            }
            self.checkpoint_in_flight.insert(partition);
            self.checkpoints.spawn(async move {
                let mut delivered = queued_all;
                for delivery in deliveries {
                    delivered &= matches!(delivery.await, Ok(Ok(_)));
                }
                (partition, watermark, delivered)
            });
        }
    }

    fn on_checkpoint_written(&mut self, written: Result<(i32, i64, bool), tokio::task::JoinError>) {
        let Ok((partition, watermark, delivered)) = written else {
            return;
        };
        if !self.tracker.owns(partition) {
            return;
        }
        if !delivered {
            // Leaving the partition's checkpoint in flight stops further checkpoints and
            // offset stores for it: a restart replays from the last durable checkpoint,
            // which is slower but exact. Writing a newer checkpoint over a partial one is not.
            self.metrics
                .errors
                .with_label_values(&["changelog", "sending"])
                .inc();
            tracing::error!(
                partition,
                "changelog checkpoint not delivered; offsets of this partition stay where they are until restart"
            );
            return;
        }
        self.checkpoint_in_flight.remove(&partition);
        if let Some(journal) = self.journals.get_mut(&partition) {
            journal.checkpoint_written(watermark);
        }
        self.store_offset(partition, watermark);
    }

    /// Newly assigned partitions: their session state is read back from the changelog in the
    /// background (they stay paused meanwhile), or starts empty without a changelog.
    fn restore_partitions(&mut self, partitions: &[i32]) {
        match self.restoring.as_mut() {
            Some(restoring) => restoring.begin(partitions),
            None => {
                for partition in partitions {
                    self.windows
                        .insert(*partition, PartitionWindows::new(self.settings.windows));
                }
            }
        }
    }

    /// A changelog read finished: install the state and go on with the partitions, wait for
    /// the retry, or end the run when the state cannot be had.
    fn on_restore_finished(&mut self, joined: Result<AttemptDone, JoinError>) {
        let Some(restoring) = self.restoring.as_mut() else {
            return;
        };
        let outcome = restoring.finish(joined);
        let retrying = restoring.is_retrying();
        self.health.set_restore_retrying(retrying);
        match outcome {
            RestoreOutcome::Restored(partitions) => {
                let mut resumed = TopicPartitionList::new();
                for (partition, state, held) in partitions {
                    if !self.tracker.owns(partition) {
                        continue;
                    }
                    self.install_partition(partition, state);
                    for (message, schema_error) in held {
                        self.on_message(&message, schema_error);
                    }
                    resumed.add_partition(&self.settings.kafka.topic, partition);
                }
                self.metrics
                    .partitions_assigned
                    .set(self.windows.len() as i64);
                // Under backpressure they stay paused and resume with the others.
                if !self.paused
                    && resumed.count() > 0
                    && let Err(error) = self.source.consumer.resume(&resumed)
                {
                    tracing::warn!(%error, "failed to resume restored partitions");
                }
            }
            RestoreOutcome::Retrying { unreachable } => {
                self.metrics
                    .errors
                    .with_label_values(&["changelog", "receiving"])
                    .inc();
                if unreachable {
                    self.health.set_broker_reachable(false);
                }
            }
            RestoreOutcome::Failed { partitions, error } => {
                self.metrics
                    .errors
                    .with_label_values(&["changelog", "receiving"])
                    .inc();
                tracing::error!(%error, ?partitions, "cannot restore session state");
                // Not owned, not processed: a restart replays them from the last checkpoint.
                for partition in &partitions {
                    self.tracker.revoke(*partition);
                }
                self.fatal.get_or_insert(RunError::Restore(error));
            }
            RestoreOutcome::Nothing => {}
        }
    }

    fn install_partition(&mut self, partition: i32, mut restored: RestoredPartition) {
        let mut windows = PartitionWindows::new(self.settings.windows);
        let event_time = restored
            .checkpoint
            .and_then(|checkpoint| checkpoint.event_time_ms);
        windows.restore_event_time(event_time);
        let mut num_open = 0;
        for (key, record) in &restored.sessions {
            match &record.state {
                Some(state) => {
                    windows.restore(key.clone(), state.clone(), event_time);
                    num_open += 1;
                }
                None if record.next_segment > 0 => windows.restore_next_segment(
                    key.clone(),
                    record.next_segment,
                    event_time.unwrap_or(0),
                ),
                None => {}
            }
        }
        let checkpoint_w = restored.checkpoint_w();
        tracing::info!(partition, num_open, ?checkpoint_w, "session state restored");
        self.metrics.sessions_open.add(num_open);
        self.journals
            .insert(partition, PartitionJournal::new(checkpoint_w, event_time));
        // Only records ahead of the checkpoint matter for skipping replays.
        restored
            .sessions
            .retain(|_, record| checkpoint_w.is_none_or(|w| record.w > w));
        self.restored.insert(partition, restored);
        self.windows.insert(partition, windows);
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

    /// Sends final-turn updates whose session rows are all settled; forgets those of
    /// partitions this instance no longer owns.
    fn send_final_turn_updates(&mut self) {
        if self.final_turns.is_empty() {
            return;
        }
        let (ready, waiting): (Vec<FinalTurn>, Vec<FinalTurn>) =
            std::mem::take(&mut self.final_turns)
                .into_iter()
                .filter(|final_turn| self.tracker.owns(final_turn.partition))
                .partition(|final_turn| {
                    self.tracker
                        .watermark(final_turn.partition)
                        .is_some_and(|watermark| watermark > final_turn.close_offset)
                });
        self.final_turns = waiting;
        for final_turn in ready {
            let sink = self.sink.clone();
            self.row_updates.spawn(async move {
                let columns = serde_json::json!({ crate::enrich::FINAL_TURN_COLUMN: true });
                sink.update_row(&final_turn.pipeline_id, &final_turn.inference_id, &columns)
                    .await
            });
        }
    }

    fn on_tick(&mut self) {
        self.health.record_progress();
        if let Some(restoring) = self.restoring.as_mut() {
            restoring.start_due(std::time::Instant::now());
        }
        self.send_final_turn_updates();
        self.send_forwarded_updates();
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
        if self.last_checkpoint.elapsed() >= self.settings.checkpoint_interval {
            self.checkpoint();
        }
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
            // Idle closes happen between messages: record them after the last one consumed.
            let last_offset = self.positions.get(&partition).map(|next| next - 1);
            if let (Some(journal), Some(last_offset)) =
                (self.journals.get_mut(&partition), last_offset)
            {
                for session in &closed {
                    journal.record_state(
                        last_offset,
                        &session.key,
                        StateAfter {
                            state: None,
                            next_segment: 0,
                        },
                    );
                }
            }
            for session in closed {
                self.on_session_closed(partition, session, last_offset.unwrap_or(-1));
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
        let now_ms = wall_ms();
        let owned: Vec<i32> = self.windows.keys().copied().collect();
        for partition in owned {
            let label = partition.to_string();
            let behind_records = high_watermarks.get(&partition).map(|high| {
                let next = self.positions.get(&partition).copied().unwrap_or(0);
                (high - next).max(0)
            });
            if let Some(behind_records) = behind_records {
                self.metrics
                    .consumer_lag
                    .with_label_values(&[&label])
                    .set(behind_records);
            }
            // Behind real time only while records wait: a caught-up quiet partition is not
            // lagging, however old its newest record is.
            let lag_seconds = match (behind_records, self.newest_timestamps.get(&partition)) {
                (Some(0), _) | (_, None) => 0.0,
                (_, Some(newest_ms)) => (now_ms - newest_ms).max(0) as f64 / 1000.0,
            };
            self.metrics
                .partition_lag
                .with_label_values(&[&label])
                .set(lag_seconds);
        }
    }

    async fn drain(&mut self) {
        if let Some(restoring) = self.restoring.as_mut() {
            restoring.cancel();
        }
        let deadline = tokio::time::Instant::now() + self.settings.drain_timeout;
        let mut ready = Vec::new();
        self.batcher.flush_all(&mut ready);
        self.dispatch(ready);
        let drained = tokio::time::timeout_at(deadline, async {
            loop {
                self.send_forwarded_updates();
                if self.shipping.is_empty()
                    && self.dead_letters.is_empty()
                    && self.waiting.is_empty()
                    && self.forwarded_in_flight.is_empty()
                {
                    break;
                }
                tokio::select! {
                    biased;
                    Some(shipped) = self.shipping.join_next_with_id(), if !self.shipping.is_empty() => self.on_shipped(shipped),
                    Some(delivered) = self.dead_letters.join_next(), if !self.dead_letters.is_empty() => self.on_dead_letter(delivered),
                    Some(forwarded) = self.forwarded_in_flight.join_next(), if !self.forwarded_in_flight.is_empty() => self.on_forwarded_update(forwarded),
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
            self.forwarded_in_flight.abort_all();
        }
        self.store_advanced_offsets();
        // A checkpoint already in flight would make `checkpoint` skip its partition: let it
        // land first, then write the final one for everything acknowledged since.
        let checkpointed = tokio::time::timeout_at(deadline, async {
            while let Some(written) = self.checkpoints.join_next().await {
                self.on_checkpoint_written(written);
            }
            self.checkpoint();
            while let Some(written) = self.checkpoints.join_next().await {
                self.on_checkpoint_written(written);
            }
        })
        .await;
        if checkpointed.is_err() {
            tracing::warn!("drain deadline passed before the last checkpoint was written");
        }
        self.send_final_turn_updates();
        let updated = tokio::time::timeout_at(deadline, async {
            while self.row_updates.join_next().await.is_some() {}
        })
        .await;
        if updated.is_err() {
            tracing::warn!("drain deadline passed before every final-turn update was sent");
        }
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

/// Fetches a Confluent writer schema the message needs, waiting out registry outages (a
/// transient failure must not dead-letter good traces). Returns a permanent failure, which
/// dead-letters the message.
async fn prefetch_schema(
    decoder: &Decoder,
    metrics: &Metrics,
    message: &OwnedMessage,
) -> Option<DecodeError> {
    let payload = message.payload().unwrap_or_default();
    let mut wait = Duration::from_millis(500);
    loop {
        match decoder.prefetch_schema(payload).await {
            Ok(()) => return None,
            Err(error) if error.is_transient() => {
                metrics
                    .errors
                    .with_label_values(&["schema_registry", "receiving"])
                    .inc();
                tracing::warn!(error = %error_chain(&error), "schema registry unavailable, retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(30));
            }
            Err(error) => return Some(error),
        }
    }
}

/// An error and its sources on one line, for logs.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
