//! The commit rule: when the offset of a consumed message may be stored for commit.
//!
//! 1. A message is *tracked* when consumed, with the number of parts it waits for: its row,
//!    its dead letter, or its forwarded update (0 when it produces nothing, e.g. a session end
//!    or a replayed message already in the restored state), plus the effects of the session
//!    closes it caused (session row, summary, final-turn update). Closes by idleness happen
//!    between messages and get a sequence of their own (a *tick*) that waits the same way.
//! 2. A part *settles* when Openlayer acknowledged the row or update, or Kafka acknowledged
//!    the dead letter. [`OffsetTracker`] keeps the watermark: the lowest unsettled offset, or
//!    one past the last consumed when all are settled.
//! 3. The watermark is *stored* (librdkafka commits stored offsets):
//!    - without a changelog, as soon as it advances;
//!    - with one, only after a checkpoint of the partition's session state as of that
//!      watermark is acknowledged by Kafka, so a restart restores exactly the state the
//!      committed offset expects. One checkpoint per partition is in flight at a time; one
//!      that is not delivered stops the partition's checkpoints and stores until restart
//!      (writing a newer checkpoint over a partial one would not be exact).
//! 4. Ownerships never interleave checkpoints. Eager rebalances revoke a partition and assign
//!    it back to the same process all the time; a checkpoint of the earlier ownership still in
//!    flight then holds back the new ownership's restore (its records must be in the
//!    changelog the restore reads) and its checkpoints, and its outcome stores nothing.
//!
//! 5. A partition reads two streams (the traces topic and the repartition topic): rules 1–4
//!    apply to the partition's sequences ([`super::merge`]), and a stored sequence watermark
//!    becomes one offset per stream.
//!
//! Nothing else stores offsets: this file is where at-least-once delivery is decided.

use super::effect::{CheckpointId, Effect};
use super::merge::{MergedLog, Stream, StreamOffsets};
use crate::commit::OffsetTracker;
use crate::sessionize::store::{PartitionJournal, Watermarks};
use std::collections::{HashMap, HashSet};

/// Settlement and durability of consumed offsets for every owned partition.
#[derive(Debug)]
pub struct Offsets {
    tracker: OffsetTracker,
    /// Whether stores wait for changelog checkpoints.
    changelog: bool,
    /// The ownership whose checkpoint of a partition is in flight (at most one per partition,
    /// whichever ownership wrote it).
    checkpoint_in_flight: HashMap<i32, u64>,
    /// Partitions whose last checkpoint was not delivered: frozen until restart.
    frozen: HashSet<i32>,
    /// The current ownership of each owned partition.
    ownerships: HashMap<i32, u64>,
    /// Each owned partition's sequences and the stream offsets behind them.
    logs: HashMap<i32, MergedLog>,
    /// Per partition, the first sequence its next ownership starts at.
    next_sequences: HashMap<i32, i64>,
    num_ownerships: u64,
}

impl Offsets {
    pub fn new(changelog: bool) -> Self {
        Offsets {
            tracker: OffsetTracker::new(),
            changelog,
            checkpoint_in_flight: HashMap::new(),
            frozen: HashSet::new(),
            ownerships: HashMap::new(),
            logs: HashMap::new(),
            next_sequences: HashMap::new(),
            num_ownerships: 0,
        }
    }

    pub fn assign(&mut self, partition: i32) {
        self.tracker.assign(partition);
        let first = self.next_sequences.get(&partition).copied().unwrap_or(0);
        self.logs.insert(partition, MergedLog::starting_at(first));
        self.num_ownerships += 1;
        self.ownerships.insert(partition, self.num_ownerships);
    }

    /// The current ownership of an owned partition: numbered from 1 in this process.
    pub fn ownership(&self, partition: i32) -> Option<u64> {
        self.ownerships.get(&partition).copied()
    }

    /// Forgets a partition; later settlements and checkpoint outcomes for it are ignored (a
    /// checkpoint in flight stays known until its outcome, see rule 4).
    pub fn revoke(&mut self, partition: i32) {
        self.tracker.revoke(partition);
        self.frozen.remove(&partition);
        self.ownerships.remove(&partition);
        if let Some(log) = self.logs.remove(&partition) {
            self.next_sequences.insert(partition, log.next_sequence());
        }
    }

    /// The partition's streams continue after a restored checkpoint's offsets.
    pub fn restored(&mut self, partition: i32, offsets: StreamOffsets) {
        if let Some(log) = self.logs.get_mut(&partition) {
            log.continue_after(offsets);
        }
    }

    /// The sequence of a message just read from `stream` of an owned partition; `None` when
    /// the partition is not owned.
    pub fn read(&mut self, partition: i32, stream: Stream, offset: i64) -> Option<i64> {
        Some(self.logs.get_mut(&partition)?.push(stream, offset))
    }

    /// A message read from `stream` of an owned partition and held back before it is applied
    /// (`core::align`): its offset is not stored until then.
    pub fn hold(&mut self, partition: i32, stream: Stream, offset: i64) {
        if let Some(log) = self.logs.get_mut(&partition) {
            log.hold(stream, offset);
        }
    }

    pub fn owns(&self, partition: i32) -> bool {
        self.tracker.owns(partition)
    }

    /// A sequence for what happens between messages (`MergedLog::push_tick`); `None` when the
    /// partition is not owned.
    pub fn tick(&mut self, partition: i32) -> Option<i64> {
        let sequence = self.logs.get_mut(&partition)?.push_tick();
        self.tracker.track(partition, sequence, 0);
        Some(sequence)
    }

    /// A message read (its sequence) that settles after `parts` settlements (0: at once).
    pub fn track(&mut self, partition: i32, sequence: i64, parts: u32) {
        self.tracker.track(partition, sequence, parts);
    }

    /// One part of the message at `sequence` settled.
    pub fn settle(&mut self, partition: i32, sequence: i64) {
        self.tracker.settle(partition, sequence);
    }

    /// Next sequence to commit for `partition`: everything below it is settled.
    pub fn watermark(&self, partition: i32) -> Option<i64> {
        self.tracker.watermark(partition)
    }

    /// Messages consumed and not settled, over all partitions.
    pub fn num_pending(&self) -> usize {
        self.tracker.num_pending()
    }

    /// Whether a checkpoint of an earlier ownership of `partition` is still in flight: the
    /// partition's state must not be read back before its outcome.
    pub fn has_earlier_checkpoint_in_flight(&self, partition: i32) -> bool {
        self.checkpoint_in_flight
            .get(&partition)
            .is_some_and(|ownership| self.ownerships.get(&partition) != Some(ownership))
    }

    /// Without a changelog: stores every watermark that advanced.
    pub fn store_advanced(&mut self, out: &mut Vec<Effect>) {
        if self.changelog {
            return;
        }
        for (partition, sequence) in self.tracker.take_advanced() {
            if let Some(log) = self.logs.get_mut(&partition) {
                store(partition, log.offsets_at(sequence), out);
            }
        }
    }

    /// With a changelog: a checkpoint for every partition whose watermark moved past its last
    /// one and that has none in flight.
    pub fn checkpoint<'a>(
        &mut self,
        journals: impl Iterator<Item = (i32, &'a mut PartitionJournal)>,
        cut_ms: i64,
        out: &mut Vec<Effect>,
    ) {
        if !self.changelog {
            return;
        }
        for (partition, journal) in journals {
            if self.checkpoint_in_flight.contains_key(&partition)
                || self.frozen.contains(&partition)
            {
                continue;
            }
            let Some(watermark) = self.tracker.watermark(partition) else {
                continue;
            };
            let (Some(ownership), Some(log)) = (
                self.ownerships.get(&partition).copied(),
                self.logs.get_mut(&partition),
            ) else {
                continue;
            };
            let offsets = log.offsets_at(watermark);
            let at = Watermarks {
                traces: offsets.traces.unwrap_or(0),
                repartition: offsets.repartition.unwrap_or(0),
            };
            let writes = journal.checkpoint(watermark, at);
            if writes.is_empty() {
                continue;
            }
            self.checkpoint_in_flight.insert(partition, ownership);
            out.push(Effect::WriteCheckpoint {
                checkpoint: CheckpointId {
                    partition,
                    ownership,
                    watermark,
                    offsets,
                    cut_ms,
                },
                writes,
            });
        }
    }

    /// A checkpoint's outcome: once delivered, its watermark is stored.
    pub fn checkpoint_written(
        &mut self,
        checkpoint: CheckpointId,
        delivered: bool,
        journal: Option<&mut PartitionJournal>,
        out: &mut Vec<Effect>,
    ) -> CheckpointOutcome {
        let CheckpointId {
            partition,
            ownership,
            watermark,
            offsets,
            ..
        } = checkpoint;
        if self.checkpoint_in_flight.get(&partition) == Some(&ownership) {
            self.checkpoint_in_flight.remove(&partition);
        }
        if self.ownerships.get(&partition) != Some(&ownership) {
            return CheckpointOutcome::OfEarlierOwnership;
        }
        if !delivered {
            self.frozen.insert(partition);
            return CheckpointOutcome::Frozen;
        }
        if let Some(journal) = journal {
            journal.checkpoint_written(watermark);
        }
        store(partition, offsets, out);
        CheckpointOutcome::Stored
    }
}

/// Stores the offset of each stream read so far.
fn store(partition: i32, offsets: StreamOffsets, out: &mut Vec<Effect>) {
    let streams = [
        (Stream::Traces, offsets.traces),
        (Stream::Repartition, offsets.repartition),
    ];
    for (stream, offset) in streams {
        if let Some(offset) = offset {
            out.push(Effect::StoreOffset {
                stream,
                partition,
                offset,
            });
        }
    }
}

/// What a checkpoint's outcome did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointOutcome {
    /// Its watermark is stored.
    Stored,
    /// Not delivered: the partition's offsets stay where they are until restart.
    Frozen,
    /// Written by an ownership since revoked: nothing stored.
    OfEarlierOwnership,
}
