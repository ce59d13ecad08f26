//! The pipeline core: all per-partition state (session windows, changelog journals, offsets,
//! open batches) as a state machine without IO, in the manner of quinn-proto.
//!
//! The IO loop ([`crate::pipeline`]) hands it inputs (a message consumed, a batch acknowledged,
//! a dead letter delivered, a checkpoint written, partitions assigned, restored or revoked, a
//! tick, shutdown) together with the time, and performs the [`Effect`]s each input pushes,
//! in order. The core never reads a clock, a socket or a channel, so the harness in
//! [`tests`] drives it through random interleavings and crashes without a broker.
//!
//! # Layout
//! - [`effect`]: effects out, message and time in
//! - [`offsets`]: the commit rule (track, settle, checkpoint, store)
//! - [`merge`]: a partition's two streams (traces, repartitioned traces) as one sequence
//! - [`align`]: a partition's inputs merged in event-time order
//! - `message.rs`: a consumed message through decode, sessionize, enrich and batch
//! - `inputs.rs`: where it goes then: applied now, forwarded, or held for alignment
//! - `settle.rs`: outcomes coming back (acks, dead letters, updates, checkpoints)

pub mod align;
pub mod effect;
mod inputs;
pub mod merge;
mod message;
pub mod offsets;
#[cfg(test)]
mod repartition_props;
#[cfg(test)]
mod repartition_tests;
#[cfg(test)]
mod repartition_world;
mod settle;
#[cfg(test)]
mod tests;

pub use effect::{
    CheckpointId, Effect, FinalTurnUpdate, Forward, ForwardedUpdate, HighWatermark, Marker, Now,
    Received,
};
pub use merge::{Stream, StreamOffsets};

use crate::batch::{Batch, BatchSettings, Batcher, Origin, Position};
use crate::metrics::Metrics;
use crate::session_row::SessionRowSettings;
use crate::sessionize::store::{PartitionJournal, RestoredPartition, StateAfter};
use crate::sessionize::{PartitionWindows, WindowSettings};
use align::Aligner;
use inputs::Pending;
use offsets::Offsets;
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};
use trace_model::Decoder;

/// What the core runs with.
#[derive(Debug, Clone)]
pub struct CoreSettings {
    /// The traces topic: names dead letters' source and ids derived from positions.
    pub topic: String,
    pub windows: WindowSettings,
    /// How often quiet partitions are checked for sessions to close.
    pub idle_check: Duration,
    /// Openlayer pipeline of traces that name none.
    pub default_pipeline_id: Option<String>,
    /// Batch limits, requests in flight and the backpressure threshold.
    pub batch: BatchSettings,
    /// Mark each closed session's last row with `session_final_turn: true` (row update).
    pub mark_final_turn: bool,
    /// How often session state is checkpointed to the changelog (and offsets stored).
    pub checkpoint_interval: Duration,
    /// Whether session state is kept in a changelog (restored on assignment).
    pub changelog: bool,
    /// Whether closed sessions produce summaries.
    pub summaries: bool,
    /// With repartitioning, the traces topic's partition count: a trace read elsewhere than
    /// its session's partition (`trace_model::routing`) is forwarded there. `None`: traces
    /// are sessionized where they are read.
    pub repartition_partitions: Option<i32>,
    /// With repartitioning, how long a trace waits at most for the partition's other inputs
    /// to catch up with it (`align`).
    pub align_max_wait: Duration,
    /// With repartitioning, how many of a partition's own traces wait at most for its other
    /// inputs before its reading pauses (resumed at half); see [`Core::throttle`].
    pub align_max_buffered: usize,
    /// Where closed sessions' rows go; `None`: no session rows.
    pub session_rows: Option<SessionRowSettings>,
    /// Tells this process's markers from other processes' (random per run): with the
    /// ownership's number (`Offsets::ownership`), it makes each ownership's marker epoch.
    pub instance: u64,
}

/// How often at most a partition tells the others how far it has come: every
/// `MARKER_INTERVAL_MIN` (the pipeline's tick, which sends them) while an instance's markers
/// stay within `MARKER_RECORDS_PER_SECOND` (a marker is one record per repartition
/// partition), spaced out up to `MARKER_INTERVAL_MAX` as its partitions multiply; the tick
/// rounds an interval up to a multiple of 50 ms. A marker's delay is a trace's wait in the
/// alignment: markers every 50 ms instead of 100 took about 20 ms off the lag of 3 partitions.
const MARKER_INTERVAL_MIN: Duration = Duration::from_millis(50);
const MARKER_INTERVAL_MAX: Duration = Duration::from_millis(100);
const MARKER_RECORDS_PER_SECOND: f64 = 4_000.0;

/// The marker interval of an instance owning `owned` partitions of a repartition topic of
/// `partitions` partitions.
fn marker_interval(owned: usize, partitions: i32) -> Duration {
    let records = owned as f64 * f64::from(partitions.max(1));
    Duration::from_secs_f64(records / MARKER_RECORDS_PER_SECOND)
        .clamp(MARKER_INTERVAL_MIN, MARKER_INTERVAL_MAX)
}
/// How often a partition says where it stands even when nothing changed.
const MARKER_HEARTBEAT: Duration = Duration::from_secs(1);
/// How often at most a partition's progress releases what other partitions owned here hold
/// (`Core::release_others`); every tick does too.
const CROSS_RELEASE_INTERVAL: Duration = Duration::from_millis(1);
/// A partition found caught up has read every record appended up to its last fetch, which
/// the statistics report this much later at most (fetches return every 500 ms when idle).
const CAUGHT_UP_MARGIN_MS: i64 = 1_000;
/// After its fetching (re)starts, a partition's reported high watermark may still be one
/// fetched before; it is trusted once fetching has gone on this long (three idle fetches).
const FETCH_SETTLE_MS: i64 = 1_500;

/// The state of a partition whose session state is installed.
#[derive(Debug)]
struct Owned {
    windows: PartitionWindows,
    /// State changes since the last checkpoint (with a changelog).
    journal: Option<PartitionJournal>,
    /// What the changelog held at assignment, for skipping replayed messages.
    restored: Option<RestoredPartition>,
    /// Next offset of the traces topic to process, for consumer lag.
    position: Option<i64>,
    /// Kafka timestamp of the newest processed record, for the partition lag gauge.
    newest_timestamp_ms: Option<i64>,
    /// Per traces partition, the highest offset first read there whose forward arrived
    /// here: a forward at or below it is a duplicate (sent again after its sender crashed).
    /// Local following (`Core::follow_local`) compares it with a sibling's `forwards_sent`.
    forwarded: HashMap<i32, i64>,
    /// With repartitioning: the partition's inputs, merged in event-time order.
    aligner: Option<Aligner<Pending>>,
    /// Every record of the partition with a Kafka timestamp at or before this was read: the
    /// newest timestamp read (records are appended in time order), or, once the partition is
    /// found caught up, the time of that finding.
    read_through_ms: Option<i64>,
    /// Records of the traces topic not read yet, as of the last statistics.
    behind_records: Option<i64>,
    /// Since when (wall clock) the partition has been fetched without a pause, as first seen
    /// by the lag gauges; `None`: paused, or not seen yet.
    fetching_since_ms: Option<i64>,
    /// The last marker sent: its bound, its read-through time, and when.
    last_marker: Option<(Option<i64>, Option<i64>, Instant)>,
    /// Whether its reading of the traces topic is paused because enough of its traces wait
    /// for the other partitions ([`Core::throttle`]).
    throttled: bool,
    /// This ownership's marker epoch (`Marker::epoch`).
    epoch: u64,
    /// Per partition, the highest offset (of this partition) of a trace this ownership
    /// forwarded there.
    forwards_sent: HashMap<i32, i64>,
}

impl Owned {
    fn new(windows: PartitionWindows, aligner: Option<Aligner<Pending>>, epoch: u64) -> Self {
        Owned {
            windows,
            journal: None,
            restored: None,
            position: None,
            newest_timestamp_ms: None,
            forwarded: HashMap::new(),
            aligner,
            read_through_ms: None,
            fetching_since_ms: None,
            behind_records: None,
            last_marker: None,
            throttled: false,
            epoch,
            forwards_sent: HashMap::new(),
        }
    }

    /// Raises the read-through time (`Owned::read_through_ms`).
    fn read_through(&mut self, read_through_ms: Option<i64>, now: Now) {
        self.read_through_ms = self.read_through_ms.max(read_through_ms);
        if let Some(aligner) = self.aligner.as_mut() {
            aligner.read_in_place_through(self.read_through_ms, now.instant);
        }
    }

    /// The marker to send now, if one is due: when the partition's bound or read-through time
    /// moved, at most every `interval`, and every `MARKER_HEARTBEAT` anyway.
    fn marker_due(&mut self, partition: i32, interval: Duration, now: Now) -> Option<Marker> {
        let bound = self.aligner.as_ref()?.in_place_bound();
        let read_through_ms = self.read_through_ms;
        let due = match self.last_marker {
            None => true,
            Some((last_bound, last_read_through, at)) => {
                let changed = last_bound != bound || last_read_through != read_through_ms;
                let since = now.instant.saturating_duration_since(at);
                (changed && since >= interval) || since >= MARKER_HEARTBEAT
            }
        };
        if !due {
            return None;
        }
        self.last_marker = Some((bound, read_through_ms, now.instant));
        Some(Marker {
            from: partition,
            bound_ms: bound,
            read_through_ms,
            epoch: Some(self.epoch),
        })
    }
}

/// The pipeline's state and decisions; see the module docs.
#[derive(Debug)]
pub struct Core {
    settings: CoreSettings,
    metrics: Metrics,
    decoder: Decoder,
    owned: HashMap<i32, Owned>,
    /// Assigned partitions whose state is being read back from the changelog.
    awaiting_state: HashSet<i32>,
    /// Assigned partitions whose read waits for an earlier ownership's checkpoint to land
    /// (a subset of `awaiting_state`).
    restore_held: HashSet<i32>,
    offsets: Offsets,
    batcher: Batcher,
    /// Batches ready but waiting for a free request slot.
    waiting: VecDeque<Batch>,
    num_shipping: usize,
    /// Final-turn updates waiting for their session's rows to be acknowledged.
    final_turns: Vec<FinalTurnUpdate>,
    /// Row updates from the traces topic waiting for the messages below them to settle.
    forwarded_updates: Vec<ForwardedUpdate>,
    /// Session summaries Kafka did not take, to send again (`retry_summaries`).
    unsent_summaries: Vec<(trace_model::SessionSummary, Origin)>,
    last_summary_retry: Instant,
    paused: bool,
    paused_since: Option<Instant>,
    /// When partitions last released what another one's progress let go (`release_others`).
    last_cross_release: Instant,
    last_idle_check: Instant,
    last_checkpoint: Instant,
}

impl Core {
    pub fn new(settings: CoreSettings, decoder: Decoder, metrics: Metrics, now: Now) -> Self {
        Core {
            offsets: Offsets::new(settings.changelog),
            batcher: Batcher::new(settings.batch),
            settings,
            metrics,
            decoder,
            owned: HashMap::new(),
            awaiting_state: HashSet::new(),
            restore_held: HashSet::new(),
            waiting: VecDeque::new(),
            num_shipping: 0,
            final_turns: Vec::new(),
            forwarded_updates: Vec::new(),
            unsent_summaries: Vec::new(),
            last_summary_retry: now.instant,
            paused: false,
            paused_since: None,
            last_cross_release: now.instant,
            last_idle_check: now.instant,
            last_checkpoint: now.instant,
        }
    }

    /// The decoder, for fetching Confluent writer schemas before a message comes in.
    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// Whether `partition` is assigned but its state is not installed yet: the IO loop holds
    /// its messages (fetched before the pause took effect) until [`Core::restored`].
    pub fn is_awaiting_state(&self, partition: i32) -> bool {
        self.awaiting_state.contains(&partition)
    }

    /// Messages consumed and not settled.
    pub fn num_unsettled(&self) -> usize {
        self.offsets.num_pending()
    }

    /// Batches made but not handed out yet (no free request slot).
    pub fn num_waiting_batches(&self) -> usize {
        self.waiting.len()
    }

    /// Partitions gained: with a changelog their state is read back first (they stay paused
    /// meanwhile); without one they start empty.
    pub fn assigned(&mut self, partitions: &[i32], out: &mut Vec<Effect>) {
        self.metrics.rebalances.with_label_values(&["assign"]).inc();
        for partition in partitions {
            self.offsets.assign(*partition);
        }
        if self.settings.changelog {
            self.awaiting_state.extend(partitions.iter().copied());
            out.push(Effect::Pause(partitions.to_vec()));
            let (held, ready): (Vec<i32>, Vec<i32>) = partitions
                .iter()
                .partition(|partition| self.offsets.has_earlier_checkpoint_in_flight(**partition));
            self.restore_held.extend(held);
            if !ready.is_empty() {
                out.push(Effect::Restore(ready));
            }
        } else {
            for partition in partitions {
                let windows = PartitionWindows::new(self.settings.windows);
                let owned = Owned::new(
                    windows,
                    self.aligner_for(*partition),
                    self.epoch(*partition),
                );
                self.owned.insert(*partition, owned);
            }
            if self.paused {
                // Backpressure holds for partitions gained while paused, too.
                out.push(Effect::Pause(partitions.to_vec()));
            }
        }
        self.update_partitions_gauge();
    }

    /// Partitions lost: their state, open batches and waiting rows are dropped (the new
    /// owner redoes them from the last commit).
    pub fn revoked(&mut self, partitions: &[i32], out: &mut Vec<Effect>) {
        self.metrics.rebalances.with_label_values(&["revoke"]).inc();
        // Held restores too: the IO loop may hold messages for them.
        let abandoned: Vec<i32> = partitions
            .iter()
            .copied()
            .filter(|partition| self.awaiting_state.remove(partition))
            .collect();
        for partition in &abandoned {
            self.restore_held.remove(partition);
        }
        if !abandoned.is_empty() {
            out.push(Effect::AbandonRestore(abandoned));
        }
        let mut unthrottled = Vec::new();
        for partition in partitions {
            self.offsets.revoke(*partition);
            if let Some(mut owned) = self.owned.remove(partition) {
                let num_dropped = owned.windows.close_all().len();
                self.metrics.sessions_open.sub(num_dropped as i64);
                if owned.throttled {
                    unthrottled.push(*partition);
                }
            }
            let label = partition.to_string();
            // The gauge may not have this partition yet; nothing to remove then.
            let _absent = self.metrics.consumer_lag.remove_label_values(&[&label]);
            let _absent = self.metrics.partition_lag.remove_label_values(&[&label]);
            let _absent = self
                .metrics
                .checkpoint_timestamp
                .remove_label_values(&[&label]);
        }
        // librdkafka keeps a partition's pause across assignments, and a partition assigned
        // again without a changelog is not resumed.
        if self.paused {
            out.push(Effect::Resume(partitions.to_vec()));
        } else if !unthrottled.is_empty() {
            out.push(Effect::ResumeTraces(unthrottled));
        }
        self.update_throttled_gauge();
        self.batcher.forget_partitions(partitions);
        // Their new owner sends them again; kept, they would go out after a quick re-assign
        // for rows the revoke dropped.
        self.final_turns
            .retain(|update| !partitions.contains(&update.origin.partition));
        self.forwarded_updates
            .retain(|update| !partitions.contains(&update.origin.partition));
        self.unsent_summaries
            .retain(|(_, origin)| !partitions.contains(&origin.partition));
        self.waiting.retain_mut(|batch| {
            retain_owned_rows(batch, partitions);
            !batch.rows.is_empty()
        });
        self.update_partitions_gauge();
    }

    /// A partition's state is back from the changelog: install it. The IO loop then hands
    /// in the messages it held for the partition, and performs the `Resume`.
    pub fn restored(&mut self, partition: i32, restored: RestoredPartition, out: &mut Vec<Effect>) {
        if !self.awaiting_state.remove(&partition) {
            return;
        }
        self.install(partition, restored);
        self.update_partitions_gauge();
        // Under backpressure it stays paused and resumes with the others.
        if !self.paused {
            out.push(Effect::Resume(vec![partition]));
        }
    }

    /// The state of these partitions cannot be had: they are not processed (the run ends,
    /// and a restart replays them from the last checkpoint).
    pub fn restore_failed(&mut self, partitions: &[i32]) {
        for partition in partitions {
            self.awaiting_state.remove(partition);
            self.restore_held.remove(partition);
            self.offsets.revoke(*partition);
        }
    }

    fn install(&mut self, partition: i32, mut restored: RestoredPartition) {
        let mut windows = PartitionWindows::new(self.settings.windows);
        let event_time = restored
            .checkpoint
            .as_ref()
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
        let checkpoint = restored.checkpoint.clone();
        tracing::info!(partition, num_open, ?checkpoint, "session state restored");
        self.metrics.sessions_open.add(num_open);
        // Only records ahead of the checkpoint matter for skipping replays.
        restored.sessions.retain(|_, record| {
            checkpoint
                .as_ref()
                .is_none_or(|checkpoint| record.is_ahead_of(checkpoint))
        });
        self.offsets.restored(
            partition,
            StreamOffsets {
                traces: checkpoint.as_ref().map(|checkpoint| checkpoint.w),
                // Read (and stored) only with repartitioning on.
                repartition: self
                    .settings
                    .repartition_partitions
                    .and(checkpoint.as_ref().map(|checkpoint| checkpoint.rw)),
            },
        );
        let mut owned = Owned::new(windows, self.aligner_for(partition), self.epoch(partition));
        owned.journal = Some(PartitionJournal::new(checkpoint.as_ref()));
        if let Some(checkpoint) = &checkpoint {
            owned.forwarded.extend(&checkpoint.forwarded);
        }
        owned.restored = Some(restored);
        self.owned.insert(partition, owned);
    }

    /// The marker epoch of the partition's current ownership: unique in this process, and
    /// across processes as far as their random `instance` differs.
    fn epoch(&self, partition: i32) -> u64 {
        let ownership = self.offsets.ownership(partition).unwrap_or_default();
        self.settings.instance.wrapping_add(ownership)
    }

    /// The aligner of an owned partition, when it has other partitions' forwards to merge.
    fn aligner_for(&self, partition: i32) -> Option<Aligner<Pending>> {
        let num_partitions = self.settings.repartition_partitions.filter(|n| *n > 1)?;
        Some(Aligner::new(
            partition,
            num_partitions,
            self.settings.align_max_wait,
            self.settings.batch.max_unacked_rows,
        ))
    }

    fn update_partitions_gauge(&self) {
        self.metrics
            .partitions_assigned
            .set(self.owned.len() as i64);
    }

    /// Time passes: sends what became ready, flushes lingering batches, checkpoints and
    /// closes idle sessions when due. Returns whether the idle check ran (the IO loop
    /// refreshes the lag gauges at the same pace).
    pub fn tick(&mut self, now: Now, out: &mut Vec<Effect>) -> bool {
        self.align(now, out);
        self.send_final_turn_updates(out);
        self.send_forwarded_updates(out);
        self.retry_summaries(now, out);
        // Parts settled by Kafka (summaries, dead letters, forwards) and row updates do not
        // re-check it where they settle.
        self.apply_backpressure(now, out);
        self.metrics
            .rows_in_flight
            .set(self.offsets.num_pending() as i64);
        let mut ready = Vec::new();
        self.batcher.flush_due(now.instant, &mut ready);
        self.dispatch(ready, out);
        if now.instant.saturating_duration_since(self.last_checkpoint)
            >= self.settings.checkpoint_interval
        {
            self.checkpoint(now, out);
        }
        if now.instant.saturating_duration_since(self.last_idle_check) < self.settings.idle_check {
            return false;
        }
        self.last_idle_check = now.instant;
        self.close_idle_sessions(now, out);
        true
    }

    /// Sends the markers due and applies what waited long enough.
    fn align(&mut self, now: Now, out: &mut Vec<Effect>) {
        let mut num_held = 0;
        let interval = marker_interval(
            self.owned.len(),
            self.settings.repartition_partitions.unwrap_or(1),
        );
        for partition in self.owned_partitions() {
            if let Some(marker) = self
                .owned
                .get_mut(&partition)
                .and_then(|owned| owned.marker_due(partition, interval, now))
            {
                out.push(Effect::Marker(marker));
            }
            self.release(partition, now, out);
            num_held += self
                .owned
                .get(&partition)
                .and_then(|owned| owned.aligner.as_ref())
                .map_or(0, Aligner::num_held);
        }
        self.metrics.alignment_held.set(num_held as i64);
    }

    /// Shutdown begins: every open batch goes out.
    pub fn flush_all(&mut self, out: &mut Vec<Effect>) {
        let mut ready = Vec::new();
        self.batcher.flush_all(&mut ready);
        self.dispatch(ready, out);
    }

    /// Writes a checkpoint for every partition whose watermark moved past its last one.
    pub fn checkpoint(&mut self, now: Now, out: &mut Vec<Effect>) {
        self.last_checkpoint = now.instant;
        let journals = self
            .owned
            .iter_mut()
            .filter_map(|(partition, owned)| Some((*partition, owned.journal.as_mut()?)));
        self.offsets.checkpoint(journals, now.wall_ms, out);
    }

    /// Closes sessions whose gap passed by the wall clock on quiet partitions.
    fn close_idle_sessions(&mut self, now: Now, out: &mut Vec<Effect>) {
        if self.paused {
            // Not quiet: its traces wait in Kafka (the quiet clock restarts on resume).
            return;
        }
        let mut closed_by_partition = Vec::new();
        for (partition, owned) in &mut self.owned {
            if owned.throttled {
                // Not quiet either: its traces wait in Kafka.
                continue;
            }
            let mut closed = Vec::new();
            owned.windows.resumed(now.wall_ms);
            owned.windows.expire(now.wall_ms, &mut closed);
            if closed.is_empty() {
                continue;
            }
            // Idle closes happen between messages: they get a sequence of their own, which
            // their effects (session rows) hold back until acknowledged.
            let close_sequence = self.offsets.tick(*partition);
            if let (Some(journal), Some(close_sequence)) = (owned.journal.as_mut(), close_sequence)
            {
                for session in &closed {
                    journal.record_state(
                        close_sequence,
                        &session.key,
                        StateAfter {
                            state: None,
                            next_segment: 0,
                        },
                    );
                }
            }
            closed_by_partition.push((*partition, closed, close_sequence.unwrap_or(-1)));
        }
        for (partition, closed, close_sequence) in closed_by_partition {
            self.metrics.sessions_open.sub(closed.len() as i64);
            let closed_by = Origin {
                partition,
                sequence: close_sequence,
                read_at: Position {
                    partition,
                    offset: -1,
                },
                kafka_timestamp_ms: None,
            };
            for session in closed {
                self.on_session_closed(session, closed_by, now, out);
            }
        }
    }

    /// Consumer lag per owned partition (high watermark minus next offset to process), and
    /// how far behind real time its newest processed record is while records wait.
    /// A partition found caught up has read everything appended before the statistics said
    /// so, less `CAUGHT_UP_MARGIN_MS`: its read-through time moves on with the clock while it
    /// is quiet.
    pub fn update_lag_gauges(&mut self, high_watermarks: &HashMap<i32, HighWatermark>, now: Now) {
        for (partition, owned) in &mut self.owned {
            if self.paused || owned.throttled {
                owned.fetching_since_ms = None;
            } else {
                owned.fetching_since_ms.get_or_insert(now.wall_ms);
            }
            let label = partition.to_string();
            // Before its first record, a partition reads from its restored checkpoint.
            let position = owned.position.or_else(|| {
                let restored = owned.restored.as_ref()?;
                restored.checkpoint.as_ref().map(|checkpoint| checkpoint.w)
            });
            let high = high_watermarks.get(partition);
            let behind_records = high.map(|high| (high.offset - position.unwrap_or(0)).max(0));
            owned.behind_records = behind_records;
            if let (Some(0), Some(high), Some(since)) =
                (behind_records, high, owned.fetching_since_ms)
                && high.at_ms - FETCH_SETTLE_MS >= since
            {
                owned.read_through(Some(high.at_ms - CAUGHT_UP_MARGIN_MS), now);
            }
            if let Some(behind_records) = behind_records {
                self.metrics
                    .consumer_lag
                    .with_label_values(&[&label])
                    .set(behind_records);
            }
            // A caught-up quiet partition is not lagging, however old its newest record is.
            let lag_seconds = match (behind_records, owned.newest_timestamp_ms) {
                (Some(0), _) | (_, None) => 0.0,
                (_, Some(newest_ms)) => (now.wall_ms - newest_ms).max(0) as f64 / 1000.0,
            };
            self.metrics
                .partition_lag
                .with_label_values(&[&label])
                .set(lag_seconds);
        }
    }

    /// Owned partitions with installed state, in no particular order.
    fn owned_partitions(&self) -> Vec<i32> {
        self.owned.keys().copied().collect()
    }

    /// Pauses fetching while too many messages are unsettled (Openlayer slow or down), and
    /// resumes at half the limit, so memory stays bounded.
    fn apply_backpressure(&mut self, now: Now, out: &mut Vec<Effect>) {
        let Now {
            instant: now,
            wall_ms,
        } = now;
        let unsettled = self.offsets.num_pending();
        let limit = self.settings.batch.max_unacked_rows;
        if !self.paused && unsettled >= limit {
            let partitions = self.owned_partitions();
            tracing::info!(unsettled, "pausing partitions until openlayer catches up");
            self.paused = true;
            self.paused_since = Some(now);
            for owned in self.owned.values_mut() {
                owned.fetching_since_ms = None;
            }
            self.metrics.partitions_paused.set(partitions.len() as i64);
            out.push(Effect::Pause(partitions));
        } else if self.paused && unsettled <= limit / 2 {
            tracing::info!(unsettled, "resuming partitions");
            self.paused = false;
            if let Some(since) = self.paused_since.take() {
                self.metrics
                    .backpressure_seconds
                    .inc_by(now.saturating_duration_since(since).as_secs_f64());
            }
            self.metrics.partitions_paused.set(0);
            for owned in self.owned.values_mut() {
                owned.windows.restart_quiet_clock(wall_ms);
            }
            out.push(Effect::Resume(self.owned_partitions()));
            let throttled: Vec<i32> = self
                .owned
                .iter()
                .filter(|(_, owned)| owned.throttled)
                .map(|(partition, _)| *partition)
                .collect();
            if !throttled.is_empty() {
                out.push(Effect::PauseTraces(throttled));
            }
        }
    }

    /// Flow control of the alignment, as Kafka Streams pauses a partition whose buffer is
    /// full: once `align_max_buffered` (at most `batch.max_unacked_rows`) of a partition's
    /// own traces wait for the other partitions (a partition far ahead of one that lags),
    /// its reading of the traces topic pauses until half of them went, while the others
    /// catch up. Its forwards and markers keep coming. Without it, the partition read ahead
    /// would hold its backlog in memory, and force it out of order at
    /// `batch.max_unacked_rows`. Forwards waiting in its other inputs are not limited here
    /// (their senders may be owned elsewhere): `batch.max_unacked_rows` bounds them.
    ///
    /// The partition whose oldest waiting trace was appended first has it released once the
    /// others' progress is known (each has read past it, or holds traces of its own and so
    /// holds nothing back); only traces with equal order keys can wait on each other, and
    /// `align_max_wait` bounds that.
    fn throttle(&mut self, partition: i32, now: Now, out: &mut Vec<Effect>) {
        let limit = self
            .settings
            .align_max_buffered
            .min(self.settings.batch.max_unacked_rows)
            .max(1);
        let paused = self.paused;
        let Some(owned) = self.owned.get_mut(&partition) else {
            return;
        };
        let held = owned.aligner.as_ref().map_or(0, Aligner::num_held_in_place);
        if !owned.throttled && held >= limit {
            owned.throttled = true;
            owned.fetching_since_ms = None;
            self.metrics.alignment_throttled.inc();
            if !paused {
                out.push(Effect::PauseTraces(vec![partition]));
            }
        } else if owned.throttled && held <= limit / 2 {
            owned.throttled = false;
            owned.windows.restart_quiet_clock(now.wall_ms);
            if !paused {
                out.push(Effect::ResumeTraces(vec![partition]));
            }
        } else {
            return;
        }
        self.update_throttled_gauge();
    }

    fn update_throttled_gauge(&self) {
        let throttled = self.owned.values().filter(|owned| owned.throttled).count();
        self.metrics.partitions_throttled.set(throttled as i64);
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
