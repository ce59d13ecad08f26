//! The IO loop around the pipeline [`core`](crate::core): owns the consumer, the producer,
//! the Openlayer client, the changelog restores, timers and the shutdown signal; hands the
//! core what happened and performs the effects it returns. Decisions live in the core.
//!
//! In its `select!`, acknowledgements and settlements come before new input (`biased`),
//! which keeps in-flight state bounded. The repartition topic comes before the traces topic
//! (markers and forwards let held traces go; read only once a backlog of traces ran dry,
//! every trace read meanwhile was held, `core::align`), but the traces topic gets a turn
//! after `REPARTITION_STREAK` repartition messages in a row (its traces let forwards go).
//! With repartitioning, traces read wait in a partition group to be handed to the core in
//! timestamp order across the owned partitions (`source::partition_group`).
//! Openlayer requests, dead letters and checkpoint writes run as owned tasks (`JoinSet`s)
//! whose outcome goes back to the core; nothing is fire-and-forget.
//!
//! Lifecycle: Consuming → Draining (stop fetching, flush batches, wait for acknowledgements
//! until the drain deadline) → Complete (store and commit offsets, flush producers).

mod drain;
mod forwarder;
mod perform;
mod settings;

pub use settings::PipelineSettings;

use crate::batch::{Batch, Origin};
use crate::core::{
    CheckpointId, Core, Effect, FinalTurnUpdate, ForwardedUpdate, Now, Received, Stream,
};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::sink::ShipReport;
use crate::sink::openlayer::OpenlayerSink;
use crate::source::changelog::ChangelogError;
use crate::source::handover::Handover;
use crate::source::kafka::{RebalanceEvent, Source, create_producer, create_source};
use crate::source::partition_group::{PartitionGroup, Patience};
use crate::source::read::{ReadMessage, Reader};
use crate::source::repartition::RepartitionSource;
use crate::source::restoring::{AttemptDone, RestoreOutcome, Restoring};
use crate::source::topics::{TopicError, prepare_topics};
use forwarder::{Forwarder, Outcome};
use rdkafka::producer::FutureProducer;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::task::{JoinError, JoinSet};
use trace_model::codec::registry::SchemaRegistry;
use trace_model::{DecodeError, Decoder};

/// How often batches are checked for linger and lag gauges refreshed.
const TICK: Duration = Duration::from_millis(50);

/// How long the partition group waits for a partition that may have earlier traces but
/// delivers none (fetched slowly; a paused one holds nothing back) before handing on the
/// others', once the consumer had nothing else to deliver (before that, its records may be
/// queued behind the others': `PARTITION_GROUP_MAX_WAIT` bounds that wait).
const PARTITION_GROUP_MAX_IDLE: Duration = Duration::from_millis(100);

/// How long a trace waits in the partition group at most (its partition's markers stand still
/// meanwhile), and at most a fifth of `kafka.repartition_max_wait_ms`, after which the
/// partitions owned elsewhere stop waiting for them.
const PARTITION_GROUP_MAX_WAIT: Duration = Duration::from_secs(1);

/// Traces the partition group hands on before the loop looks at acknowledgements again: one
/// message can let tens of thousands go.
const PARTITION_GROUP_CHUNK: usize = 256;

/// Polls of the traces consumer that may serve librdkafka's other events (each takes one off
/// its queue) before one tells whether it ran dry: a few, so that one check does not drain a
/// burst of them; the next `select!` that finds nothing ready asks again.
const DRY_CHECK_POLLS: usize = 4;

/// A waker that notes being woken: a consumer poll that served an event other than a message
/// wakes its task at once and is not a sign that the consumer ran dry.
#[derive(Debug, Default)]
struct Woken(AtomicBool);

impl std::task::Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Why the pipeline stopped with an error.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RunError {
    #[error("failed to create the kafka consumer")]
    Consumer(#[source] rdkafka::error::KafkaError),
    #[error("failed to create the consumer or producer of the repartition topic")]
    RepartitionClient(#[source] rdkafka::error::KafkaError),
    /// A forward that cannot be sent even through a new producer (the forwarder recovers from
    /// a producer stopped by a failure): a forward lost between two delivered ones could
    /// later be taken for a duplicate, so stopping lets the restart forward everything from
    /// the last commit again, in order.
    #[error(
        "a trace could not be forwarded to repartition topic `{topic}` (kafka.repartition_topic): \
         check that the topic exists and that the service may write to it; the restart forwards \
         it again"
    )]
    Forward { topic: String },
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

/// Repartition messages read in a row before the traces topic gets a turn. In a backlog of
/// forwards, taking turns one by one cost a quarter of the throughput with every trace
/// forwarded (the forwards waited longer, so more were held).
const REPARTITION_STREAK: u32 = 16;

/// `sessionizer_partition_group_buffered_traces` from the group.
fn set_buffered_gauge(metrics: &Metrics, group: &PartitionGroup<ReadMessage>) {
    metrics
        .partition_group_buffered
        .set(i64::try_from(group.num_buffered()).unwrap_or(i64::MAX));
}

/// The next message of the repartition topic (never, without one: the `select!` guard keeps
/// this from being polled then).
async fn recv_repartitioned(
    repartition: Option<&RepartitionSource>,
) -> Result<rdkafka::message::BorrowedMessage<'_>, rdkafka::error::KafkaError> {
    match repartition {
        Some(repartition) => repartition.consumer.recv().await,
        None => std::future::pending().await,
    }
}

/// The next finished changelog read (`None` without a changelog; the `select!` guard keeps
/// this from being polled when no read runs).
async fn join_restore(restoring: &mut Option<Restoring>) -> Option<Result<AttemptDone, JoinError>> {
    match restoring {
        Some(restoring) => restoring.join_next().await,
        None => None,
    }
}

struct Pipeline {
    settings: PipelineSettings,
    core: Core,
    /// Effects the core returned, performed in order by [`Pipeline::perform`].
    effects: Vec<Effect>,
    metrics: Metrics,
    health: Health,
    source: Source,
    /// The repartition topic's consumer, following `source`'s assignment, and the producer of
    /// forwards to it.
    repartition: Option<RepartitionSource>,
    /// With repartitioning, traces read wait here to be handed on in timestamp order across
    /// the owned partitions, so that the alignment holds few of them.
    group: Option<PartitionGroup<ReadMessage>>,
    /// Copies what is read out of librdkafka's buffers.
    reader: Reader,
    /// The group stopped handing on at a chunk's end, not because nothing may go.
    group_ready: bool,
    /// Woken by the traces consumer during `check_traces_dry`'s poll; kept, not made per
    /// check (an allocation each time the consumer runs dry).
    traces_woken: Arc<Woken>,
    forwarder: Option<Forwarder>,
    producer: FutureProducer,
    /// With a changelog: the producer of checkpoints, and those being queued, which a revoke
    /// waits for.
    handover: Option<Handover>,
    sink: Arc<OpenlayerSink>,
    shipping: JoinSet<(Batch, ShipReport)>,
    /// When each Openlayer request task started, for the sink health check.
    shipping_started: HashMap<tokio::task::Id, Instant>,
    /// Dead-letter deliveries, with whether Kafka has them.
    dead_letters: JoinSet<(Origin, bool)>,
    /// Session summaries in flight, with the close they settle.
    summaries: JoinSet<(trace_model::SessionSummary, Origin, bool)>,
    /// Final-turn row updates in flight, and whether Openlayer accepted them.
    row_updates: JoinSet<(FinalTurnUpdate, bool)>,
    /// Row updates sent, with whether Openlayer accepted them.
    forwarded_in_flight: JoinSet<(ForwardedUpdate, bool)>,
    /// Checkpoint writes awaiting Kafka, with whether all their records were delivered.
    checkpoints: JoinSet<(CheckpointId, bool)>,
    /// Partitions whose state is being read back (`None`: no changelog, state starts empty).
    restoring: Option<Restoring>,
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
    let mut settings = settings;
    let num_partitions = prepare_topics(&settings.kafka)
        .await
        .map_err(RunError::Topics)?;
    let group = settings.kafka.repartition_topic.as_ref().map(|_| {
        let patience = Patience {
            max_idle: PARTITION_GROUP_MAX_IDLE,
            max_wait: PARTITION_GROUP_MAX_WAIT.min(settings.core.align_max_wait / 5),
        };
        PartitionGroup::new(settings.core.align_max_buffered, patience)
    });
    let (repartition, forwarder) = match &settings.kafka.repartition_topic {
        Some(topic) => {
            settings.core.repartition_partitions = Some(num_partitions);
            settings.core.instance = fastrand::u64(..);
            let consumer = RepartitionSource::try_new(&settings.kafka, topic)
                .map_err(RunError::RepartitionClient)?;
            let forwarder = Forwarder::try_new(&settings.kafka, topic, num_partitions)
                .map_err(RunError::RepartitionClient)?;
            (Some(consumer), Some(forwarder))
        }
        None => (None, None),
    };
    let producer = create_producer(&settings.kafka).map_err(RunError::Producer)?;
    // Checkpoints get a producer of their own: a revoke flushes it, and only it.
    let handover = match &settings.kafka.changelog_topic {
        Some(changelog) => Some(Handover::new(
            create_producer(&settings.kafka).map_err(RunError::Producer)?,
            changelog.clone(),
            metrics.handovers_undelivered.clone(),
        )),
        None => None,
    };
    let source = create_source(&settings.kafka, handover.clone()).map_err(RunError::Consumer)?;
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
        core: Core::new(
            settings.core.clone(),
            decoder,
            metrics.clone(),
            Now::system(),
        ),
        effects: Vec::new(),
        settings,
        metrics,
        health,
        source,
        repartition,
        group,
        reader: Reader::default(),
        group_ready: false,
        traces_woken: Arc::default(),
        forwarder,
        producer,
        handover,
        sink: Arc::new(sink),
        shipping: JoinSet::new(),
        shipping_started: HashMap::new(),
        dead_letters: JoinSet::new(),
        summaries: JoinSet::new(),
        row_updates: JoinSet::new(),
        forwarded_in_flight: JoinSet::new(),
        checkpoints: JoinSet::new(),
        restoring,
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
        // Messages read from the repartition topic in a row (it is read first, up to a limit).
        let mut repartition_streak = 0;
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
                Some(outcome) = next_forward(self.forwarder.as_mut()), if self.forwarder.as_ref().is_some_and(Forwarder::has_in_flight) => {
                    self.on_forward_outcome(outcome);
                }
                Some(produced) = self.summaries.join_next(), if !self.summaries.is_empty() => {
                    self.on_summary(produced);
                }
                Some(updated) = self.row_updates.join_next(), if !self.row_updates.is_empty() => {
                    self.on_final_turn_marked(updated);
                }
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
                _ = tick.tick() => {
                    self.on_tick();
                    self.hand_on_in_order(Instant::now()).await;
                }
                () = std::future::ready(()), if self.group_ready => {
                    self.hand_on_in_order(Instant::now()).await;
                }
                received = self.source.consumer.recv(), if repartition_streak >= REPARTITION_STREAK => {
                    repartition_streak = 0;
                    let received = received.map(|message| self.reader.read(&message, Stream::Traces));
                    self.on_traces_received(received).await;
                }
                received = recv_repartitioned(self.repartition.as_ref()), if self.repartition.is_some() => {
                    repartition_streak += 1;
                    let received = received.map(|message| self.reader.read(&message, Stream::Repartition));
                    self.on_received(received).await;
                }
                received = self.source.consumer.recv() => {
                    repartition_streak = 0;
                    let received = received.map(|message| self.reader.read(&message, Stream::Traces));
                    self.on_traces_received(received).await;
                }
                // Last: reached only when everything above, the traces consumer included, had
                // nothing ready. Once it reported the consumer dry, not reached again until a
                // message is read.
                () = std::future::ready(()), if self.group.as_ref().is_some_and(PartitionGroup::awaits_consumer_dry) => {
                    if self.check_traces_dry().await {
                        repartition_streak = 0;
                    }
                }
            }
        }
    }

    /// A message (or error) from the traces topic: with a partition group, it waits there to be
    /// handed on in order.
    async fn on_traces_received(
        &mut self,
        received: Result<ReadMessage, rdkafka::error::KafkaError>,
    ) {
        // The group must know the message's ownership: a message read after its partition was
        // revoked and assigned again would otherwise join, and be dropped with, the earlier
        // ownership's queue (a trace lost: the ones after it would still be committed).
        self.apply_rebalances();
        // One clock read for the message and the chunk it lets go (reading it per message
        // showed in profiles).
        let now = Instant::now();
        let received = match (received, self.group.as_mut()) {
            (Ok(message), Some(group)) => group
                .push(
                    (message.partition, message.offset),
                    message.timestamp_ms,
                    message,
                    now,
                )
                .map(Ok),
            (received, _) => Some(received),
        };
        if let Some(received) = received {
            self.on_received(received).await;
        }
        self.hand_on_in_order(now).await;
    }

    /// The traces consumer had nothing ready when the `select!` last polled it: tells the
    /// partition group it ran dry (a partition delivering nothing from now on is idle, not
    /// queued behind the others' records), unless that poll only served one of librdkafka's
    /// other events (statistics, a commit, a rebalance), which wakes the task at once: then
    /// the consumer is polled again, and a message it has is read as the `select!` would.
    /// Returns whether it read one.
    async fn check_traces_dry(&mut self) -> bool {
        for _ in 0..DRY_CHECK_POLLS {
            self.traces_woken.0.store(false, Ordering::Relaxed);
            let ready = {
                let waker = std::task::Waker::from(self.traces_woken.clone());
                let mut context = std::task::Context::from_waker(&waker);
                match std::pin::pin!(self.source.consumer.recv()).poll(&mut context) {
                    Poll::Ready(received) => {
                        Some(received.map(|message| self.reader.read(&message, Stream::Traces)))
                    }
                    Poll::Pending => None,
                }
            };
            if let Some(received) = ready {
                self.on_traces_received(received).await;
                return true;
            }
            if !self.traces_woken.0.load(Ordering::Relaxed) {
                if let Some(group) = self.group.as_mut() {
                    group.consumer_ran_dry();
                }
                self.hand_on_in_order(Instant::now()).await;
                return false;
            }
        }
        false
    }

    /// Hands on the traces the partition group lets go by `now`, a chunk at a time.
    async fn hand_on_in_order(&mut self, now: Instant) {
        // A rebalance the consumer reported while the tick won the `select!`: a message of a
        // partition revoked and assigned again must not reach the new ownership. None is
        // reported while the chunk is handed on (only polling the consumer reports them).
        self.apply_rebalances();
        let chunk = self.next_in_order(now);
        self.group_ready = chunk.len() == PARTITION_GROUP_CHUNK;
        for message in chunk {
            self.on_received(Ok(message)).await;
        }
    }

    /// Up to a chunk of the traces the partition group lets go by `now`.
    fn next_in_order(&mut self, now: Instant) -> Vec<ReadMessage> {
        let Some(group) = self.group.as_mut() else {
            return Vec::new();
        };
        let high_watermarks = self
            .source
            .high_watermarks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let high_watermark = |partition: i32| {
            high_watermarks
                .get(&partition)
                .map(|high_watermark| high_watermark.offset)
        };
        let chunk: Vec<ReadMessage> = std::iter::from_fn(|| group.pop(now, high_watermark))
            .take(PARTITION_GROUP_CHUNK)
            .collect();
        set_buffered_gauge(&self.metrics, group);
        chunk
    }

    /// A message (or error) from either consumer: its Confluent schema is fetched first,
    /// rebalances that happened meanwhile are applied, then the core gets it.
    async fn on_received(&mut self, received: Result<ReadMessage, rdkafka::error::KafkaError>) {
        match received {
            Ok(message) => {
                let schema_error =
                    prefetch_schema(self.core.decoder(), &self.metrics, message.payload()).await;
                self.apply_rebalances();
                self.on_message(message, schema_error);
            }
            Err(error) => self.on_consumer_error(&error),
        }
    }

    fn on_consumer_error(&mut self, error: &rdkafka::error::KafkaError) {
        self.metrics
            .errors
            .with_label_values(&["kafka", "receiving"])
            .inc();
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

    /// Applies ownership changes before anything else touches partition state.
    fn apply_rebalances(&mut self) {
        while let Ok(event) = self.source.rebalances.try_recv() {
            match event {
                RebalanceEvent::Assigned(partitions) => {
                    // An assignment came from the group coordinator: the broker answers.
                    self.health.set_broker_reachable(true);
                    self.health.set_joined();
                    // Before the core's effects, which pause both topics' partitions.
                    if let Some(repartition) = &self.repartition {
                        repartition.assign(&partitions);
                    }
                    if let Some(group) = self.group.as_mut() {
                        group.assigned(&partitions);
                    }
                    self.core.assigned(&partitions, &mut self.effects);
                }
                RebalanceEvent::Revoked(partitions) => {
                    if let Some(repartition) = &self.repartition {
                        repartition.revoke(&partitions);
                    }
                    if let Some(group) = self.group.as_mut() {
                        let dropped = group.revoked(&partitions);
                        tracing::debug!(
                            dropped,
                            "traces read ahead of revoked partitions dropped (their next owner reads them)"
                        );
                        set_buffered_gauge(&self.metrics, group);
                    }
                    self.reader.forget(&partitions);
                    self.core.revoked(&partitions, &mut self.effects);
                }
            }
            self.perform();
        }
    }

    fn on_message(&mut self, message: ReadMessage, schema_error: Option<DecodeError>) {
        self.health.record_progress();
        self.health.set_broker_reachable(true);
        if self.core.is_awaiting_state(message.partition)
            && let Some(restoring) = self.restoring.as_mut()
        {
            // Fetched before the partition's pause took effect: processed once its state is
            // back, in order.
            restoring.hold(message, schema_error);
            return;
        }
        let received = Received {
            stream: message.stream,
            partition: message.partition,
            offset: message.offset,
            first_read: message.headers.first_read,
            order_key_ms: message.headers.order_key_ms,
            marker: message.headers.marker,
            kafka_timestamp_ms: message.timestamp_ms,
            key: message.key(),
            payload: message.payload(),
            shared_payload: Some(message.shared_payload()),
        };
        self.core
            .message(received, schema_error, Now::system(), &mut self.effects);
        self.perform();
    }

    fn on_tick(&mut self) {
        // A revoke the consumer reported while the `select!` was last polled: the tick must
        // not checkpoint the partition after the revoke hook waited for its checkpoints.
        self.apply_rebalances();
        self.health.record_progress();
        if let Some(restoring) = self.restoring.as_mut() {
            restoring.start_due(Instant::now());
        }
        // Failing: a request has been retrying for longer than two request timeouts.
        let patience = self.settings.sink.request_timeout * 2;
        let sink_failing = self
            .shipping_started
            .values()
            .any(|started| started.elapsed() > patience);
        self.health.set_sink_failing(sink_failing);
        let now = Now::system();
        if self.core.tick(now, &mut self.effects) {
            let high_watermarks = self
                .source
                .high_watermarks
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone();
            self.core.update_lag_gauges(&high_watermarks, now);
        }
        self.perform();
    }

    fn on_shipped(&mut self, shipped: Result<(tokio::task::Id, (Batch, ShipReport)), JoinError>) {
        match shipped {
            Ok((task, (batch, report))) => {
                self.shipping_started.remove(&task);
                self.core
                    .shipped(batch, report, Now::system(), &mut self.effects);
            }
            Err(error) => {
                self.shipping_started.remove(&error.id());
                tracing::error!(%error, "openlayer request task failed");
                self.core.ship_lost(&mut self.effects);
            }
        }
        self.perform();
    }

    fn on_dead_letter(&mut self, delivered: Result<(Origin, bool), JoinError>) {
        match delivered {
            Ok((origin, delivered)) => {
                self.core
                    .dead_letter_delivered(origin, delivered, &mut self.effects);
                self.perform();
            }
            Err(error) => tracing::error!(%error, "dead-letter task failed"),
        }
    }

    fn on_forward_outcome(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Delivered(forward) => {
                self.core.repartitioned(&forward, true, &mut self.effects);
                self.perform();
            }
            Outcome::Failed(error) => {
                self.metrics
                    .errors
                    .with_label_values(&["kafka", "sending"])
                    .inc();
                tracing::error!(error = %service_kit::fatal::cause_chain(&error), "a forward cannot be sent");
                self.forward_failed();
            }
        }
    }

    /// Ends the run: see [`RunError::Forward`].
    fn forward_failed(&mut self) {
        let topic = self
            .settings
            .kafka
            .repartition_topic
            .clone()
            .unwrap_or_default();
        self.fatal.get_or_insert(RunError::Forward { topic });
    }

    /// A side task's result; `None` after a panic in it (counted), which leaves its message
    /// unsettled until a restart redelivers it.
    fn joined<T>(&self, result: Result<T, JoinError>) -> Option<T> {
        if result.is_err() {
            self.metrics
                .errors
                .with_label_values(&["panic", "sending"])
                .inc();
        }
        result.ok()
    }

    fn on_forwarded_update(&mut self, forwarded: Result<(ForwardedUpdate, bool), JoinError>) {
        let Some((update, accepted)) = self.joined(forwarded) else {
            return;
        };
        self.core
            .update_forwarded(update, accepted, &mut self.effects);
        self.perform();
    }

    fn on_checkpoint_written(&mut self, written: Result<(CheckpointId, bool), JoinError>) {
        let Ok((checkpoint, delivered)) = written else {
            return;
        };
        self.core
            .checkpoint_written(checkpoint, delivered, &mut self.effects);
        self.perform();
    }

    fn on_summary(
        &mut self,
        produced: Result<(trace_model::SessionSummary, Origin, bool), JoinError>,
    ) {
        let Some((summary, origin, delivered)) = self.joined(produced) else {
            return;
        };
        self.core
            .summary_produced(summary, origin, delivered, &mut self.effects);
        self.perform();
    }

    fn on_final_turn_marked(&mut self, updated: Result<(FinalTurnUpdate, bool), JoinError>) {
        let Some((update, accepted)) = self.joined(updated) else {
            return;
        };
        self.core
            .final_turn_marked(update, accepted, &mut self.effects);
        self.perform();
    }

    /// A changelog read finished: install the state and go on with the partitions, wait for
    /// the retry, or end the run when the state cannot be had.
    fn on_restore_finished(&mut self, joined: Result<AttemptDone, JoinError>) {
        let Some(restoring) = self.restoring.as_mut() else {
            return;
        };
        let outcome = restoring.finish(joined);
        self.health.set_restore_retrying(restoring.is_retrying());
        match outcome {
            RestoreOutcome::Restored(partitions) => {
                for (partition, state, held) in partitions {
                    self.core.restored(partition, state, &mut self.effects);
                    for (message, schema_error) in held {
                        self.on_message(message, schema_error);
                    }
                }
                self.perform();
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
                // Not processed: a restart replays them from the last checkpoint.
                self.core.restore_failed(&partitions);
                self.fatal.get_or_insert(RunError::Restore(error));
            }
            RestoreOutcome::Nothing => {}
        }
    }
}

/// Fetches a Confluent writer schema the message needs, waiting out registry outages (a
/// transient failure must not dead-letter good traces). Returns a permanent failure, which
/// dead-letters the message.
async fn prefetch_schema(
    decoder: &Decoder,
    metrics: &Metrics,
    payload: &[u8],
) -> Option<DecodeError> {
    let mut wait = Duration::from_millis(500);
    loop {
        match decoder.prefetch_schema(payload).await {
            Ok(()) => return None,
            Err(error) if error.is_transient() => {
                metrics
                    .errors
                    .with_label_values(&["schema_registry", "receiving"])
                    .inc();
                tracing::warn!(error = %service_kit::fatal::cause_chain(&error), "schema registry unavailable, retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(30));
            }
            Err(error) => return Some(error),
        }
    }
}

/// The next outcome of the forwarder's forwards in flight.
async fn next_forward(forwarder: Option<&mut Forwarder>) -> Option<Outcome> {
    forwarder?.next().await
}
