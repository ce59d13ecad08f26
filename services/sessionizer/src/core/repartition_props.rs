//! Harness tests of the repartition path, in the manner of `core::tests`: a simulated world
//! with 2–3 traces partitions and the repartition topic. Sessions are "mixed": their turns
//! are produced to random partitions of the traces topic, in event-time order overall (each
//! partition log is in event-time order, each session's turns too). The forwards and markers
//! the core emits go through one ordered producer queue and become messages of the
//! repartition topic's partition logs when the queue delivers them (a forward to its
//! partition, a marker to every other one), which the world delivers like traces. Proptest
//! picks the order of deliveries from both topics, producer deliveries, Openlayer
//! acknowledgements (and lost requests), dead letters, checkpoint outcomes (landing in
//! part), ticks below and beyond `align_max_wait`, lag statistics and crashes (the core and
//! everything in flight dropped; a prefix of the producer queue and of a checkpoint may have
//! landed; the restart reads both topics from their committed offsets and the changelog).
//!
//! Checked on every run:
//! - no stored offset of either stream passes a message not settled (a row not acknowledged
//!   nor dead-lettered, a forward not in the repartition topic);
//! - nothing is lost: in the end every trace has an acknowledged row or a dead letter;
//! - with a changelog, when no alignment was forced: every acknowledged copy of a row (first
//!   delivery or replay) has the same session columns (turn, running totals, previous id);
//! - without a crash and with no alignment forced: each session's turns are numbered in
//!   event-time order.

use super::tests::settings;
use super::*;
use crate::batch::Origin;
use crate::enrich::SESSION_COLUMNS;
use crate::sessionize::store::ChangelogWrite;
use crate::sink::{Rejection, ShipReport};
use proptest::prelude::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use trace_model::routing::partition_for;
use trace_model::{Limits, TraceEvent};

const SESSIONS: u8 = 4;
const START_MS: i64 = 1_700_000_000_000;

/// One trace as generated: its session, the partition it is produced to (picked among the
/// partitions), and how long after the previous trace (of any session) it happens.
#[derive(Debug, Clone)]
struct Spec {
    session: u8,
    partition: u8,
    advance_ms: i64,
    /// An undecodable message instead, in that partition.
    garbage: bool,
}

fn spec() -> impl Strategy<Value = Spec> {
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
enum Trace {
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
enum Relayed {
    Forward(Forward),
    Marker(Marker),
}

impl Relayed {
    fn is_forward(&self) -> bool {
        matches!(self, Relayed::Forward(_))
    }
}

fn session_id(session: u8) -> String {
    format!("session-{session}")
}

/// The traces topic's logs: payloads and what each is.
fn build_logs(num_partitions: i32, specs: &[Spec]) -> Vec<Vec<(Vec<u8>, Trace)>> {
    let mut logs = vec![Vec::new(); num_partitions as usize];
    let mut at_ms = START_MS;
    for (index, spec) in specs.iter().enumerate() {
        let partition = i32::from(spec.partition) % num_partitions;
        let log = &mut logs[partition as usize];
        if spec.garbage {
            log.push((b"\x07not a trace".to_vec(), Trace::Garbage { at_ms }));
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
        let payload = trace_model::codec::json::encode_trace(&event);
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
enum Op {
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
fn op(beyond_max_wait: bool) -> impl Strategy<Value = Op> {
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

fn pick<T>(items: &mut Vec<T>, pick: u8) -> Option<T> {
    if items.is_empty() {
        return None;
    }
    Some(items.remove(usize::from(pick) % items.len()))
}

/// An acknowledged row: the life (process) it was acknowledged in, and the row.
type Acked = (usize, Value);

/// The simulated world around one core at a time.
struct World {
    changelog: bool,
    num_partitions: i32,
    traces: Vec<Vec<(Vec<u8>, Trace)>>,
    relayed: Vec<Vec<Relayed>>,
    /// Forwards and markers emitted and not yet in the repartition topic, in order.
    producer: VecDeque<Relayed>,
    core: Core,
    registry: prometheus::Registry,
    /// Alignments forced in earlier lives.
    forced_before: f64,
    life: usize,
    base: Instant,
    elapsed_ms: u64,
    /// Next offset the consumer fetches, per stream and partition.
    positions: BTreeMap<(Stream, i32), i64>,
    /// Paused partitions of each topic: one flag each, as librdkafka keeps it (`Pause` and
    /// `Resume` are both topics', `PauseTraces` and `ResumeTraces` the traces topic's).
    paused: BTreeSet<(Stream, i32)>,
    stored: BTreeMap<(Stream, i32), i64>,
    committed: BTreeMap<(Stream, i32), i64>,
    changelog_records: Vec<(i32, String, Vec<u8>)>,
    ships: Vec<Batch>,
    dead_letters: Vec<Origin>,
    checkpoints: Vec<(CheckpointId, Vec<ChangelogWrite>)>,
    restores: Vec<i32>,
    acknowledged: BTreeMap<String, Vec<Acked>>,
    /// Dead letters delivered, by the traces position the message was first read at.
    dead_lettered: BTreeSet<(i32, i64)>,
    /// Forwards in the repartition topic, by the traces position they were first read at.
    forwarded: BTreeSet<(i32, i64)>,
    /// Checkpoints that landed in part (some records, not all).
    partial_landings: usize,
    /// After the first life settled: a pause the consumer kept that the core did not mean
    /// (a stuck pause would look idle, and the next life clears it).
    stray_pause: Option<String>,
}

impl World {
    fn new(changelog: bool, num_partitions: i32, specs: &[Spec]) -> Self {
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
            forwarded: BTreeSet::new(),
            partial_landings: 0,
            stray_pause: None,
        };
        world.assign_all();
        world
    }

    fn partitions(&self) -> Vec<i32> {
        (0..self.num_partitions).collect()
    }

    fn now(&self) -> Now {
        Now {
            instant: self.base + Duration::from_millis(self.elapsed_ms),
            wall_ms: START_MS + self.elapsed_ms as i64,
        }
    }

    fn forced(&self) -> f64 {
        self.forced_before + metric(&self.registry, "sessionizer_alignment_forced_total")
    }

    fn assign_all(&mut self) {
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

    fn log_len(&self, stream: Stream, partition: i32) -> usize {
        match stream {
            Stream::Traces => self.traces[partition as usize].len(),
            Stream::Repartition => self.relayed[partition as usize].len(),
        }
    }

    fn perform(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Ship(batch) => self.ships.push(batch),
                Effect::DeadLetter(letter) => self.dead_letters.push(letter.origin),
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
    fn store(&mut self, stream: Stream, partition: i32, offset: i64) {
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

    fn row_settled(&self, id: &str, read_at: (i32, i64)) -> bool {
        self.acknowledged.contains_key(id) || self.dead_lettered.contains(&read_at)
    }

    fn is_settled(&self, stream: Stream, partition: i32, offset: i64) -> bool {
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
    fn unread_forwards(&self) -> bool {
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
    fn ready(&self, stream: Stream) -> Vec<i32> {
        self.partitions()
            .into_iter()
            .filter(|partition| {
                !self.paused.contains(&(stream, *partition))
                    && (self.positions[&(stream, *partition)] as usize)
                        < self.log_len(stream, *partition)
            })
            .collect()
    }

    fn deliver(&mut self, stream: Stream, choice: u8) {
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
    fn produce(&mut self, tell: bool) {
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

    fn ack(&mut self, pick_index: u8, reject_one: bool) {
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

    fn step(&mut self, op: &Op) {
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
    fn land_part(&mut self, partition: i32, writes: &[ChangelogWrite], landed: usize) {
        if landed > 0 && landed < writes.len() {
            self.partial_landings += 1;
        }
        self.land(partition, &writes[..landed]);
    }

    fn land(&mut self, partition: i32, writes: &[ChangelogWrite]) {
        for write in writes {
            self.changelog_records
                .push((partition, write.key.clone(), write.value.clone()));
        }
    }

    fn read_changelog(&self, partition: i32) -> RestoredPartition {
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
    fn crash(&mut self, landed: u8) {
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

    fn num_held(&self) -> usize {
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
    fn stray_pause(&self) -> Option<String> {
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

    fn quiesce(&mut self) {
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
fn new_core(
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

fn metric(registry: &prometheus::Registry, name: &str) -> f64 {
    crate::metrics::sample_sum(registry, name, None)
}

fn run_world(changelog: bool, num_partitions: i32, specs: &[Spec], ops: &[Op]) -> World {
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

/// Every trace has its row or its dead letter; every traces message is settled.
fn check_no_loss(world: &World) -> Result<(), TestCaseError> {
    for partition in world.partitions() {
        for (offset, (_, trace)) in world.traces[partition as usize].iter().enumerate() {
            let position = (partition, offset as i64);
            let done = match trace {
                Trace::Garbage { .. } => world.dead_lettered.contains(&position),
                Trace::Row { id, .. } => {
                    world.acknowledged.contains_key(id) || world.dead_lettered.contains(&position)
                }
            };
            prop_assert!(done, "trace {:?} at {:?} was lost", trace, position);
        }
    }
    Ok(())
}

fn session_columns(row: &Value) -> Vec<(&'static str, Value)> {
    SESSION_COLUMNS
        .iter()
        .map(|column| (*column, row.get(*column).cloned().unwrap_or(Value::Null)))
        .collect()
}

/// Every acknowledged copy of a row has the same session columns.
fn check_replays_identical(world: &World) -> Result<(), TestCaseError> {
    for (id, copies) in &world.acknowledged {
        let first = session_columns(&copies[0].1);
        for (life, row) in &copies[1..] {
            prop_assert_eq!(
                &session_columns(row),
                &first,
                "row {} acknowledged again in life {} differs",
                id,
                life
            );
        }
    }
    Ok(())
}

/// The rows of each session (id and start) acknowledged in the first life are numbered in
/// event-time order.
fn check_turns_in_event_time_order(world: &World) -> Result<(), TestCaseError> {
    let mut by_id = BTreeMap::new();
    for log in &world.traces {
        for (_, trace) in log {
            if let Trace::Row {
                id, session, at_ms, ..
            } = trace
            {
                by_id.insert(id.clone(), (session.clone(), *at_ms));
            }
        }
    }
    // By session id and start: (event time, turn, inference id).
    type Turns = Vec<(i64, i64, String)>;
    let mut sessions: BTreeMap<(String, String), Turns> = BTreeMap::new();
    for (id, copies) in &world.acknowledged {
        let Some((_, row)) = copies.iter().find(|(life, _)| *life == 0) else {
            continue;
        };
        if row.get("close_reason").is_some() {
            // A session row (core::tests checks them).
            continue;
        }
        let (session, at_ms) = &by_id[id];
        let turn = row["session_turn"].as_i64();
        prop_assert!(turn.is_some(), "row {} has no turn: {}", id, row);
        // A gap longer than the session gap starts a new session of the same id.
        let started = row["session_started_at"].to_string();
        sessions
            .entry((session.clone(), started))
            .or_default()
            .push((*at_ms, turn.unwrap_or(0), id.clone()));
    }
    for (session, mut rows) in sessions {
        rows.sort();
        for pair in rows.windows(2) {
            prop_assert!(
                pair[0].1 < pair[1].1,
                "session {:?}: turns out of event-time order: {:?}",
                session,
                rows
            );
        }
    }
    Ok(())
}

fn check(
    changelog: bool,
    num_partitions: i32,
    specs: &[Spec],
    ops: &[Op],
) -> Result<(), TestCaseError> {
    let world = run_world(changelog, num_partitions, specs, ops);
    prop_assert!(world.stray_pause.is_none(), "{:?}", world.stray_pause);
    check_no_loss(&world)?;
    let unforced = world.forced() == 0.0;
    // Only without forced alignment: a forced release depends on when things arrived, which
    // a replay after a crash does not repeat (minimal case: two turns of one session in two
    // partitions, the first forced out after 5 s and numbered 1; after the crash the replay
    // applies the forward first and numbers it 2). Checkpoints that landed in part are
    // included: session records name the forwards their state holds (`rf`); before they did,
    // this harness found a forward applied twice after such a restore (its seed is kept).
    if changelog && unforced {
        check_replays_identical(&world)?;
    }
    let crashed = ops.iter().any(|op| matches!(op, Op::Crash { .. }));
    if unforced && !crashed {
        check_turns_in_event_time_order(&world)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn mixed_sessions_with_a_changelog_lose_nothing_and_replay_exactly(
        num_partitions in 2..=3i32,
        specs in prop::collection::vec(spec(), 0..28),
        ops in prop::collection::vec(op(true), 0..160),
    ) {
        check(true, num_partitions, &specs, &ops)?;
    }

    /// More runs where properties 3 and 4 apply: no tick jumps past `align_max_wait`.
    #[test]
    fn mixed_sessions_with_a_changelog_and_no_long_pause_replay_exactly(
        num_partitions in 2..=3i32,
        specs in prop::collection::vec(spec(), 0..28),
        ops in prop::collection::vec(op(false), 0..160),
    ) {
        check(true, num_partitions, &specs, &ops)?;
    }

    #[test]
    fn mixed_sessions_without_a_changelog_lose_nothing(
        num_partitions in 2..=3i32,
        specs in prop::collection::vec(spec(), 0..28),
        ops in prop::collection::vec(op(true), 0..160),
    ) {
        check(false, num_partitions, &specs, &ops)?;
    }
}

/// Found by the harness above: after a restore, a forward redelivered from a committed offset
/// below the restored checkpoint (skipped as already applied) is read after traces of the
/// new life; while those are unsettled, `MergedLog::offsets_at` reports the replay's offset as
/// the smallest open one of the repartition stream, below the restored checkpoint's, and the
/// next checkpoint stores it: the stored offset goes back. Nothing unsettled is passed (the
/// messages between are all applied and checkpointed), so the properties above hold.
#[test]
fn a_replay_below_the_restored_checkpoint_does_not_move_the_stored_offset_back() {
    let session = (0..SESSIONS)
        .find(|session| partition_for(session_id(*session).as_bytes(), 2) == 0)
        .expect("a session of partition 0");
    let trace = |partition| Spec {
        session,
        partition,
        advance_ms: 1_000,
        garbage: false,
    };
    // A read in partition 1 and forwarded; B1 and B2 read in place, after a restart.
    let mut world = World::new(true, 2, &[trace(1), trace(0), trace(0)]);
    let ack = Op::Ack {
        pick: 0,
        reject_one: false,
    };
    let all_checkpoints_done = |world: &mut World| {
        while !world.checkpoints.is_empty() {
            world.step(&Op::CheckpointDone {
                pick: 0,
                delivered: true,
            });
        }
    };
    world.step(&Op::RestoreDone(0));
    world.step(&Op::RestoreDone(0));
    world.step(&Op::DeliverTraces(1));
    world.step(&Op::Produce);
    world.step(&Op::DeliverRepartition(0));
    world.step(&Op::Tick(6_000));
    world.step(&Op::Tick(200));
    world.step(&ack);
    all_checkpoints_done(&mut world);
    world.step(&Op::Tick(300));
    all_checkpoints_done(&mut world);
    assert_eq!(world.stored.get(&(Stream::Repartition, 0)), Some(&1));
    // Nothing committed: the forward is read again after the restart.
    world.crash(0);
    world.step(&Op::RestoreDone(0));
    world.step(&Op::RestoreDone(0));
    world.step(&Op::DeliverTraces(0));
    world.step(&Op::Tick(6_000));
    world.step(&Op::Tick(200));
    world.step(&Op::DeliverTraces(0));
    world.step(&Op::Tick(6_000));
    world.step(&Op::DeliverRepartition(0));
    all_checkpoints_done(&mut world);
    world.step(&ack);
    world.step(&Op::Tick(300));
    all_checkpoints_done(&mut world);
    let stored = world.stored.get(&(Stream::Repartition, 0)).copied();
    assert!(
        stored.is_none_or(|stored| stored >= 1),
        "the stored repartition offset went back below the restored checkpoint's: {stored:?}"
    );
}
