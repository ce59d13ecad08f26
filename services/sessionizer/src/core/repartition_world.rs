//! The simulated world of the repartition path's harness tests (`core::repartition_props`),
//! in the manner of `core::tests`: 2–3 traces partitions and the repartition topic. Sessions
//! are "mixed": their turns are produced to random partitions of the traces topic, in
//! event-time order overall (each partition log is in event-time order, each session's turns
//! too). The forwards and markers the core emits go through one ordered producer queue and
//! become messages of the repartition topic's partition logs when the queue delivers them (a
//! forward to its partition, a marker to every other one), which the world delivers like
//! traces. The operations proptest picks: deliveries from both topics, producer deliveries,
//! Openlayer acknowledgements (and lost requests), dead letters, checkpoint outcomes (landing
//! in part), ticks below and beyond `align_max_wait`, lag statistics and crashes (the core and
//! everything in flight dropped; a prefix of the producer queue and of a checkpoint may have
//! landed; the restart reads both topics from their committed offsets and the changelog).
//! The world checks on every step that no stored offset of either stream passes a message not
//! settled (a row not acknowledged nor dead-lettered, a forward not in the repartition topic).

use super::tests::settings;
use super::*;
use crate::batch::Origin;
use crate::sessionize::store::ChangelogWrite;
use crate::sink::{Rejection, ShipReport};
use proptest::prelude::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use trace_model::routing::partition_for;
use trace_model::{Limits, TraceEvent};

pub(super) const SESSIONS: u8 = 4;
pub(super) const START_MS: i64 = 1_700_000_000_000;

/// One trace as generated: its session, the partition it is produced to (picked among the
/// partitions), and how long after the previous trace (of any session) it happens.
#[derive(Debug, Clone)]
pub(super) struct Spec {
    pub(super) session: u8,
    pub(super) partition: u8,
    pub(super) advance_ms: i64,
    /// An undecodable message instead, in that partition.
    pub(super) garbage: bool,
}

pub(super) fn spec() -> impl Strategy<Value = Spec> {
    (
        0..SESSIONS,
        any::<u8>(),
        prop_oneof![8 => 1..3_000i64, 1 => 3_000..20_000i64],
        prop::bool::weighted(0.05),
    )
        .prop_map(|(session, partition, advance_ms, garbage)| Spec {
            session,
            partition,
            advance_ms,
            garbage,
        })
}

/// What a message of the traces topic is.
#[derive(Debug, Clone)]
pub(super) enum Trace {
    /// Appended at `at_ms` (its Kafka timestamp).
    Garbage { at_ms: i64 },
    Row {
        id: String,
        session: String,
        /// The partition its session belongs in.
        home: i32,
        at_ms: i64,
    },
}

/// A message of the repartition topic.
#[derive(Debug, Clone)]
pub(super) enum Relayed {
    Forward(Forward),
    Marker(Marker),
}

impl Relayed {
    pub(super) fn is_forward(&self) -> bool {
        matches!(self, Relayed::Forward(_))
    }
}

pub(super) fn session_id(session: u8) -> String {
    format!("session-{session}")
}

/// The traces topic's logs: payloads and what each is.
pub(super) fn build_logs(num_partitions: i32, specs: &[Spec]) -> Vec<Vec<(Vec<u8>, Trace)>> {
    let mut logs = vec![Vec::new(); num_partitions as usize];
    let mut at_ms = START_MS;
    for (index, spec) in specs.iter().enumerate() {
        let partition = i32::from(spec.partition) % num_partitions;
        let log = &mut logs[partition as usize];
        if spec.garbage {
            // Half of it unreadable from the first byte, half an Avro record whose head reads
            // (it may wait in the alignment undecoded) and whose body is cut short.
            let payload = if index % 2 == 0 {
                b"\x07not a trace".to_vec()
            } else {
                let mut event = TraceEvent::new("cut", at_ms);
                event.session_id = Some(session_id(spec.session));
                let mut bytes = trace_model::encode(&event, trace_model::Encoding::Avro)
                    .expect("a trace encodes");
                bytes.truncate(bytes.len() - 3);
                bytes
            };
            log.push((payload, Trace::Garbage { at_ms }));
            continue;
        }
        at_ms += spec.advance_ms;
        let session = session_id(spec.session);
        let id = format!("i{index}");
        let mut event = TraceEvent::new("turn", at_ms);
        event.session_id = Some(session.clone());
        event.inference_id = Some(id.clone());
        event.tokens = Some(index as i64 + 1);
        event.cost = Some((index as f64 + 1.0) / 1000.0);
        let home = partition_for(session.as_bytes(), num_partitions);
        // Both ways in: Avro traces read in place wait in the alignment undecoded, JSON ones
        // decoded.
        let payload = if index % 2 == 0 {
            trace_model::encode(&event, trace_model::Encoding::Avro).expect("a trace encodes")
        } else {
            trace_model::codec::json::encode_trace(&event)
        };
        log.push((
            payload,
            Trace::Row {
                id,
                session,
                home,
                at_ms,
            },
        ));
    }
    logs
}

/// What happens next in the simulated world.
#[derive(Debug, Clone)]
pub(super) enum Op {
    DeliverTraces(u8),
    DeliverRepartition(u8),
    /// The producer queue delivers its oldest forward or marker.
    Produce,
    Ack {
        pick: u8,
        reject_one: bool,
    },
    LoseShip(u8),
    DeadLetterDone {
        pick: u8,
        delivered: bool,
    },
    CheckpointDone {
        pick: u8,
        delivered: bool,
    },
    RestoreDone(u8),
    Tick(u16),
    LagGauges,
    AutoCommit,
    Crash {
        landed: u8,
    },
}

/// `beyond_max_wait`: whether ticks may jump past `align_max_wait` (forcing alignment).
pub(super) fn op(beyond_max_wait: bool) -> impl Strategy<Value = Op> {
    let long = if beyond_max_wait { 1 } else { 20 };
    prop_oneof![
        10 => any::<u8>().prop_map(Op::DeliverTraces),
        10 => any::<u8>().prop_map(Op::DeliverRepartition),
        10 => Just(Op::Produce),
        8 => (any::<u8>(), prop::bool::weighted(0.1)).prop_map(|(pick, reject_one)| Op::Ack { pick, reject_one }),
        1 => any::<u8>().prop_map(Op::LoseShip),
        3 => (any::<u8>(), prop::bool::weighted(0.9)).prop_map(|(pick, delivered)| Op::DeadLetterDone { pick, delivered }),
        4 => (any::<u8>(), prop::bool::weighted(0.9)).prop_map(|(pick, delivered)| Op::CheckpointDone { pick, delivered }),
        3 => any::<u8>().prop_map(Op::RestoreDone),
        5 => (1..400u16).prop_map(Op::Tick),
        1 => (5_000..8_000u16).prop_map(move |ms| Op::Tick(ms / long)),
        4 => Just(Op::LagGauges),
        2 => Just(Op::AutoCommit),
        1 => any::<u8>().prop_map(|landed| Op::Crash { landed }),
    ]
}

pub(super) fn pick<T>(items: &mut Vec<T>, pick: u8) -> Option<T> {
    if items.is_empty() {
        return None;
    }
    Some(items.remove(usize::from(pick) % items.len()))
}

/// An acknowledged row: the life (process) it was acknowledged in, and the row.
pub(super) type Acked = (usize, Value);

/// The simulated world around one core at a time.
pub(super) struct World {
    pub(super) changelog: bool,
    pub(super) num_partitions: i32,
    pub(super) traces: Vec<Vec<(Vec<u8>, Trace)>>,
    pub(super) relayed: Vec<Vec<Relayed>>,
    /// Forwards and markers emitted and not yet in the repartition topic, in order.
    pub(super) producer: VecDeque<Relayed>,
    pub(super) core: Core,
    pub(super) registry: prometheus::Registry,
    /// Alignments forced in earlier lives.
    pub(super) forced_before: f64,
    pub(super) life: usize,
    pub(super) base: Instant,
    pub(super) elapsed_ms: u64,
    /// Next offset the consumer fetches, per stream and partition.
    pub(super) positions: BTreeMap<(Stream, i32), i64>,
    /// Paused partitions of each topic: one flag each, as librdkafka keeps it (`Pause` and
    /// `Resume` are both topics', `PauseTraces` and `ResumeTraces` the traces topic's).
    pub(super) paused: BTreeSet<(Stream, i32)>,
    pub(super) stored: BTreeMap<(Stream, i32), i64>,
    pub(super) committed: BTreeMap<(Stream, i32), i64>,
    pub(super) changelog_records: Vec<(i32, String, Vec<u8>)>,
    pub(super) ships: Vec<Batch>,
    pub(super) dead_letters: Vec<Origin>,
    pub(super) checkpoints: Vec<(CheckpointId, Vec<ChangelogWrite>)>,
    pub(super) restores: Vec<i32>,
    pub(super) acknowledged: BTreeMap<String, Vec<Acked>>,
    /// Dead letters delivered, by the traces position the message was first read at.
    pub(super) dead_lettered: BTreeSet<(i32, i64)>,
    /// Dead letters raised for the message itself (not by Openlayer), by the traces position
    /// the message was first read at: garbage only.
    pub(super) undecodable: BTreeSet<(i32, i64)>,
    /// Forwards in the repartition topic, by the traces position they were first read at.
    pub(super) forwarded: BTreeSet<(i32, i64)>,
    /// Checkpoints that landed in part (some records, not all).
    pub(super) partial_landings: usize,
    /// After the first life settled: a pause the consumer kept that the core did not mean
    /// (a stuck pause would look idle, and the next life clears it).
    pub(super) stray_pause: Option<String>,
}

impl World {
    pub(super) fn new(changelog: bool, num_partitions: i32, specs: &[Spec]) -> Self {
        let base = Instant::now();
        let (core, registry) = new_core(changelog, num_partitions, base, 0);
        let mut world = World {
            changelog,
            num_partitions,
            traces: build_logs(num_partitions, specs),
            relayed: vec![Vec::new(); num_partitions as usize],
            producer: VecDeque::new(),
            core,
            registry,
            forced_before: 0.0,
            life: 0,
            base,
            elapsed_ms: 0,
            positions: BTreeMap::new(),
            paused: BTreeSet::new(),
            stored: BTreeMap::new(),
            committed: BTreeMap::new(),
            changelog_records: Vec::new(),
            ships: Vec::new(),
            dead_letters: Vec::new(),
            checkpoints: Vec::new(),
            restores: Vec::new(),
            acknowledged: BTreeMap::new(),
            dead_lettered: BTreeSet::new(),
            undecodable: BTreeSet::new(),
            forwarded: BTreeSet::new(),
            partial_landings: 0,
            stray_pause: None,
        };
        world.assign_all();
        world
    }

    pub(super) fn partitions(&self) -> Vec<i32> {
        (0..self.num_partitions).collect()
    }

    pub(super) fn now(&self) -> Now {
        Now {
            instant: self.base + Duration::from_millis(self.elapsed_ms),
            wall_ms: START_MS + self.elapsed_ms as i64,
        }
    }

    pub(super) fn forced(&self) -> f64 {
        self.forced_before + metric(&self.registry, "sessionizer_alignment_forced_total")
    }

    pub(super) fn assign_all(&mut self) {
        let partitions = self.partitions();
        for partition in &partitions {
            for stream in [Stream::Traces, Stream::Repartition] {
                let start = self
                    .committed
                    .get(&(stream, *partition))
                    .copied()
                    .unwrap_or(0);
                self.positions.insert((stream, *partition), start);
            }
        }
        self.stored.clear();
        self.paused.clear();
        let mut out = Vec::new();
        self.core.assigned(&partitions, &mut out);
        self.perform(out);
    }

    pub(super) fn log_len(&self, stream: Stream, partition: i32) -> usize {
        match stream {
            Stream::Traces => self.traces[partition as usize].len(),
            Stream::Repartition => self.relayed[partition as usize].len(),
        }
    }

    pub(super) fn perform(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Ship(batch) => self.ships.push(batch),
                Effect::DeadLetter(letter) => {
                    if letter.stage != "sink" {
                        let read_at = letter.origin.read_at;
                        self.undecodable.insert((read_at.partition, read_at.offset));
                    }
                    self.dead_letters.push(letter.origin);
                }
                Effect::StoreOffset {
                    stream,
                    partition,
                    offset,
                } => self.store(stream, partition, offset),
                Effect::Repartition(forward) => self.producer.push_back(Relayed::Forward(forward)),
                Effect::Marker(marker) => self.producer.push_back(Relayed::Marker(marker)),
                Effect::WriteCheckpoint { checkpoint, writes } => {
                    self.checkpoints.push((checkpoint, writes));
                }
                Effect::Pause(partitions) => {
                    for partition in partitions {
                        self.paused.insert((Stream::Traces, partition));
                        self.paused.insert((Stream::Repartition, partition));
                    }
                }
                Effect::PauseTraces(partitions) => {
                    self.paused
                        .extend(partitions.into_iter().map(|p| (Stream::Traces, p)));
                }
                Effect::ResumeTraces(partitions) => {
                    for partition in partitions {
                        self.paused.remove(&(Stream::Traces, partition));
                    }
                }
                Effect::Resume(partitions) => {
                    for partition in partitions {
                        self.paused.remove(&(Stream::Traces, partition));
                        self.paused.remove(&(Stream::Repartition, partition));
                    }
                }
                Effect::Restore(partitions) => self.restores.extend(partitions),
                Effect::AbandonRestore(partitions) => {
                    self.restores
                        .retain(|partition| !partitions.contains(partition));
                }
                Effect::ProduceSummary { summary, origin } => {
                    // Delivered at once: core::tests covers summaries in flight at a crash.
                    let mut more = Vec::new();
                    self.core.summary_produced(summary, origin, true, &mut more);
                    self.perform(more);
                }
                Effect::MarkFinalTurn(update) => {
                    // Accepted at once, as summaries are delivered.
                    let mut more = Vec::new();
                    self.core.final_turn_marked(update, true, &mut more);
                    self.perform(more);
                }
                Effect::ForwardUpdate(_) => {}
            }
        }
    }

    /// The invariant: everything below a stored offset is settled.
    pub(super) fn store(&mut self, stream: Stream, partition: i32, offset: i64) {
        assert!(
            offset as usize <= self.log_len(stream, partition),
            "offset {offset} of {stream:?} partition {partition} stored past the end of its log"
        );
        for below in 0..offset {
            assert!(
                self.is_settled(stream, partition, below),
                "offset {offset} of {stream:?} partition {partition} stored while {below} is not settled"
            );
        }
        // Not checked: that a stored offset never goes back. It does (found by this harness):
        // after a restore, a message of one stream redelivered from a committed offset below
        // the restored checkpoint's (skipped as already applied) is held open by `MergedLog`,
        // and when the other stream moves the watermark first, the next checkpoint stores
        // that lower offset. Harmless for what is checked here (nothing unsettled is passed;
        // it only re-reads skipped messages after a restart), but a regression all the same.
        self.stored.insert((stream, partition), offset);
    }

    pub(super) fn row_settled(&self, id: &str, read_at: (i32, i64)) -> bool {
        self.acknowledged.contains_key(id) || self.dead_lettered.contains(&read_at)
    }

    pub(super) fn is_settled(&self, stream: Stream, partition: i32, offset: i64) -> bool {
        match stream {
            Stream::Traces => match &self.traces[partition as usize][offset as usize].1 {
                Trace::Garbage { .. } => self.dead_lettered.contains(&(partition, offset)),
                Trace::Row { id, home, .. } if *home == partition => {
                    self.row_settled(id, (partition, offset))
                }
                Trace::Row { .. } => self.forwarded.contains(&(partition, offset)),
            },
            Stream::Repartition => match &self.relayed[partition as usize][offset as usize] {
                Relayed::Marker(_) => true,
                Relayed::Forward(forward) => {
                    let read_at = forward.origin.read_at;
                    let (_, trace) =
                        &self.traces[read_at.partition as usize][read_at.offset as usize];
                    let Trace::Row { id, .. } = trace else {
                        panic!("garbage forwarded: {forward:?}");
                    };
                    self.row_settled(id, (read_at.partition, read_at.offset))
                }
            },
        }
    }

    /// Whether a forward waits to be read. Markers alone do not keep the world busy: the
    /// heartbeat sends them forever.
    pub(super) fn unread_forwards(&self) -> bool {
        self.ready(Stream::Repartition)
            .into_iter()
            .any(|partition| {
                let from = self.positions[&(Stream::Repartition, partition)] as usize;
                self.relayed[partition as usize][from..]
                    .iter()
                    .any(Relayed::is_forward)
            })
    }

    /// Partitions of `stream` with something to fetch.
    pub(super) fn ready(&self, stream: Stream) -> Vec<i32> {
        self.partitions()
            .into_iter()
            .filter(|partition| {
                !self.paused.contains(&(stream, *partition))
                    && (self.positions[&(stream, *partition)] as usize)
                        < self.log_len(stream, *partition)
            })
            .collect()
    }

    pub(super) fn deliver(&mut self, stream: Stream, choice: u8) {
        let ready = self.ready(stream);
        let Some(partition) = ready.get(usize::from(choice) % ready.len().max(1)).copied() else {
            return;
        };
        let offset = self.positions[&(stream, partition)];
        self.positions.insert((stream, partition), offset + 1);
        let mut received = Received {
            stream,
            partition,
            offset,
            first_read: None,
            order_key_ms: None,
            marker: None,
            kafka_timestamp_ms: None,
            key: None,
            payload: &[],
            shared_payload: None,
        };
        let relayed;
        let mut out = Vec::new();
        match stream {
            Stream::Traces => {
                // Appended in the order of the traces' times, which are their timestamps.
                let (payload, trace) = &self.traces[partition as usize][offset as usize];
                received.payload = payload;
                received.kafka_timestamp_ms = Some(match trace {
                    Trace::Garbage { at_ms } | Trace::Row { at_ms, .. } => *at_ms,
                });
                self.core.message(received, None, self.now(), &mut out);
            }
            Stream::Repartition => {
                relayed = self.relayed[partition as usize][offset as usize].clone();
                match &relayed {
                    Relayed::Marker(marker) => received.marker = Some(*marker),
                    Relayed::Forward(forward) => {
                        received.first_read = Some(forward.origin.read_at);
                        received.kafka_timestamp_ms = forward.origin.kafka_timestamp_ms;
                        received.order_key_ms = Some(forward.order_key_ms);
                        received.key = Some(forward.key.as_bytes());
                        received.payload = &forward.payload;
                    }
                }
                self.core.message(received, None, self.now(), &mut out);
            }
        }
        self.perform(out);
    }

    /// The producer queue's oldest record reaches the repartition topic. `tell`: the core
    /// hears of it (not when the process dies right after).
    pub(super) fn produce(&mut self, tell: bool) {
        let Some(relayed) = self.producer.pop_front() else {
            return;
        };
        match &relayed {
            Relayed::Forward(forward) => {
                self.relayed[forward.to_partition as usize].push(relayed.clone());
                let read_at = forward.origin.read_at;
                self.forwarded.insert((read_at.partition, read_at.offset));
                if tell {
                    let mut out = Vec::new();
                    self.core.repartitioned(forward, true, &mut out);
                    self.perform(out);
                }
            }
            Relayed::Marker(marker) => {
                for partition in self.partitions() {
                    if partition != marker.from {
                        self.relayed[partition as usize].push(relayed.clone());
                    }
                }
            }
        }
    }

    pub(super) fn ack(&mut self, pick_index: u8, reject_one: bool) {
        let Some(batch) = pick(&mut self.ships, pick_index) else {
            return;
        };
        let mut report = ShipReport::default();
        if reject_one {
            report.rejected.push((
                0,
                Rejection {
                    status: Some(422),
                    body: "refused".to_owned(),
                },
            ));
        }
        for (index, row) in batch.rows.iter().enumerate() {
            if reject_one && index == 0 {
                continue;
            }
            let row: Value = serde_json::from_str(row.get()).expect("rows are JSON");
            let id = row["inferenceId"]
                .as_str()
                .expect("rows have ids")
                .to_owned();
            self.acknowledged
                .entry(id)
                .or_default()
                .push((self.life, row));
        }
        let mut out = Vec::new();
        self.core.shipped(batch, report, self.now(), &mut out);
        self.perform(out);
    }

    pub(super) fn step(&mut self, op: &Op) {
        let mut out = Vec::new();
        match *op {
            Op::DeliverTraces(choice) => self.deliver(Stream::Traces, choice),
            Op::DeliverRepartition(choice) => self.deliver(Stream::Repartition, choice),
            Op::Produce => self.produce(true),
            Op::Ack {
                pick: index,
                reject_one,
            } => self.ack(index, reject_one),
            Op::LoseShip(index) => {
                if pick(&mut self.ships, index).is_some() {
                    self.core.ship_lost(&mut out);
                }
            }
            Op::DeadLetterDone {
                pick: index,
                delivered,
            } => {
                if let Some(origin) = pick(&mut self.dead_letters, index) {
                    if delivered {
                        let read_at = origin.read_at;
                        self.dead_lettered
                            .insert((read_at.partition, read_at.offset));
                    }
                    self.core.dead_letter_delivered(origin, delivered, &mut out);
                }
            }
            Op::CheckpointDone {
                pick: index,
                delivered,
            } => {
                if let Some((checkpoint, writes)) = pick(&mut self.checkpoints, index) {
                    // An undelivered checkpoint may still have landed in part.
                    let landed = if delivered {
                        writes.len()
                    } else {
                        writes.len() / 2
                    };
                    self.land_part(checkpoint.partition, &writes, landed);
                    self.core
                        .checkpoint_written(checkpoint, delivered, &mut out);
                }
            }
            Op::RestoreDone(index) => {
                if let Some(partition) = pick(&mut self.restores, index) {
                    let restored = self.read_changelog(partition);
                    self.core.restored(partition, restored, &mut out);
                }
            }
            Op::Tick(ms) => {
                self.elapsed_ms += u64::from(ms);
                self.core.tick(self.now(), &mut out);
            }
            Op::LagGauges => {
                // The logs are complete from the start: a high watermark is never stale.
                let at_ms = self.now().wall_ms;
                let high_watermarks = self
                    .partitions()
                    .into_iter()
                    .map(|partition| {
                        let offset = self.traces[partition as usize].len() as i64;
                        (partition, HighWatermark { offset, at_ms })
                    })
                    .collect();
                self.core.update_lag_gauges(&high_watermarks, self.now());
            }
            Op::AutoCommit => self.committed.extend(self.stored.clone()),
            Op::Crash { landed } => self.crash(landed),
        }
        self.perform(out);
    }

    /// The first `landed` of a checkpoint's records reach the changelog.
    pub(super) fn land_part(&mut self, partition: i32, writes: &[ChangelogWrite], landed: usize) {
        if landed > 0 && landed < writes.len() {
            self.partial_landings += 1;
        }
        self.land(partition, &writes[..landed]);
    }

    pub(super) fn land(&mut self, partition: i32, writes: &[ChangelogWrite]) {
        for write in writes {
            self.changelog_records
                .push((partition, write.key(), write.value()));
        }
    }

    pub(super) fn read_changelog(&self, partition: i32) -> RestoredPartition {
        let mut restored = RestoredPartition::default();
        for (record_partition, key, value) in &self.changelog_records {
            if *record_partition == partition {
                restored
                    .apply(key.as_bytes(), value)
                    .expect("changelog records decode");
            }
        }
        restored
    }

    /// The process dies: in-flight work is lost, except that the first `landed` records of
    /// the producer queue may have reached the repartition topic, and the first records of a
    /// checkpoint being written the changelog.
    pub(super) fn crash(&mut self, landed: u8) {
        let produced = usize::from(landed) % (self.producer.len() + 1);
        for _ in 0..produced {
            self.produce(false);
        }
        self.producer.clear();
        if let Some((checkpoint, writes)) = self.checkpoints.first().cloned() {
            let landed = usize::from(landed) % (writes.len() + 1);
            self.land_part(checkpoint.partition, &writes, landed);
        }
        self.ships.clear();
        self.dead_letters.clear();
        self.checkpoints.clear();
        self.restores.clear();
        self.forced_before = self.forced();
        self.life += 1;
        let (core, registry) = new_core(self.changelog, self.num_partitions, self.base, self.life);
        self.core = core;
        self.registry = registry;
        self.assign_all();
    }

    pub(super) fn num_held(&self) -> usize {
        self.core
            .owned
            .values()
            .filter_map(|owned| owned.aligner.as_ref())
            .map(Aligner::num_held)
            .sum()
    }

    /// Lets everything finish: restores, deliveries of both topics, the producer queue,
    /// acknowledgements, checkpoints, and time beyond `align_max_wait`.
    /// The pauses the consumer holds against those the core means: both topics of every
    /// partition under backpressure or awaiting its state, and the traces topic of those
    /// throttled for alignment.
    pub(super) fn stray_pause(&self) -> Option<String> {
        let held: Vec<(Stream, i32)> = self.paused.iter().copied().collect();
        let mut meant = Vec::new();
        for partition in self.partitions() {
            let whole = self.core.paused || self.core.awaiting_state.contains(&partition);
            let throttled = self
                .core
                .owned
                .get(&partition)
                .is_some_and(|owned| owned.throttled);
            if whole || throttled {
                meant.push((Stream::Traces, partition));
            }
            if whole {
                meant.push((Stream::Repartition, partition));
            }
        }
        meant.sort();
        (held != meant).then(|| format!("paused {held:?}, meant {meant:?}"))
    }

    pub(super) fn quiesce(&mut self) {
        for _round in 0..10_000 {
            let busy = !self.restores.is_empty()
                || !self.ships.is_empty()
                || !self.dead_letters.is_empty()
                || self.producer.iter().any(Relayed::is_forward)
                || !self.ready(Stream::Traces).is_empty()
                || self.unread_forwards();
            // Messages of lost requests stay unsettled in this life: only a restart redoes them.
            if !busy
                && self.core.num_waiting_batches() == 0
                && self.core.batcher.num_rows() == 0
                && self.num_held() == 0
            {
                // Markers read move the stored offsets, so checkpoints keep coming: the last
                // ones land, and the world is quiet.
                while !self.checkpoints.is_empty() {
                    self.step(&Op::CheckpointDone {
                        pick: 0,
                        delivered: true,
                    });
                }
                return;
            }
            let mut ops = vec![Op::RestoreDone(0)];
            for partition in 0..self.num_partitions as u8 {
                ops.push(Op::DeliverTraces(partition));
                ops.push(Op::DeliverRepartition(partition));
            }
            ops.extend([
                Op::Produce,
                Op::Produce,
                Op::Produce,
                Op::Ack {
                    pick: 0,
                    reject_one: false,
                },
                Op::DeadLetterDone {
                    pick: 0,
                    delivered: true,
                },
                Op::CheckpointDone {
                    pick: 0,
                    delivered: true,
                },
                Op::LagGauges,
                Op::Tick(250),
            ]);
            for op in &ops {
                self.step(op);
            }
        }
        panic!(
            "the world did not settle: {} restores, {} requests, {} dead letters, {} checkpoints, {} produced in flight; positions {:?}, paused {:?}, {} unsettled, {} held",
            self.restores.len(),
            self.ships.len(),
            self.dead_letters.len(),
            self.checkpoints.len(),
            self.producer.len(),
            self.positions,
            self.paused,
            self.core.num_unsettled(),
            self.num_held(),
        );
    }
}

/// The core of life `life`: another process, so its marker epochs are its own.
pub(super) fn new_core(
    changelog: bool,
    num_partitions: i32,
    base: Instant,
    life: usize,
) -> (Core, prometheus::Registry) {
    let registry = prometheus::Registry::new();
    let metrics = Metrics::register(&registry).expect("fresh registry");
    let now = Now {
        instant: base,
        wall_ms: START_MS,
    };
    let mut settings = settings(changelog);
    settings.repartition_partitions = Some(num_partitions);
    settings.align_max_wait = Duration::from_secs(5);
    // Small, so that a partition read ahead pauses and resumes in many runs.
    settings.align_max_buffered = 2;
    settings.instance = (life as u64) << 32;
    let core = Core::new(
        settings,
        trace_model::Decoder::new(Limits::default()),
        metrics,
        now,
    );
    (core, registry)
}

pub(super) fn metric(registry: &prometheus::Registry, name: &str) -> f64 {
    crate::metrics::sample_sum(registry, name, None)
}

pub(super) fn run_world(changelog: bool, num_partitions: i32, specs: &[Spec], ops: &[Op]) -> World {
    let mut world = World::new(changelog, num_partitions, specs);
    for op in ops {
        world.step(op);
    }
    world.quiesce();
    world.stray_pause = world.stray_pause();
    // Whatever stayed unsettled in that life (lost requests) is redone by the next one.
    world.step(&Op::AutoCommit);
    world.crash(0);
    world.quiesce();
    world
}
