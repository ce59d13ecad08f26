//! The commit rule: when the offset of a consumed message may be stored for commit.
//!
//! 1. A message is *tracked* when consumed, with the number of parts it waits for: its row,
//!    its dead letter, or its forwarded update (0 when it produces nothing, e.g. a session end
//!    or a replayed message already in the restored state).
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
//! Nothing else stores offsets: this file is where at-least-once delivery is decided.

use super::effect::{CheckpointId, Effect};
use crate::commit::OffsetTracker;
use crate::sessionize::store::PartitionJournal;
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
            num_ownerships: 0,
        }
    }

    pub fn assign(&mut self, partition: i32) {
        self.tracker.assign(partition);
        self.num_ownerships += 1;
        self.ownerships.insert(partition, self.num_ownerships);
    }

    /// Forgets a partition; later settlements and checkpoint outcomes for it are ignored (a
    /// checkpoint in flight stays known until its outcome, see rule 4).
    pub fn revoke(&mut self, partition: i32) {
        self.tracker.revoke(partition);
        self.frozen.remove(&partition);
        self.ownerships.remove(&partition);
    }

    pub fn owns(&self, partition: i32) -> bool {
        self.tracker.owns(partition)
    }

    /// A consumed message that settles after `parts` settlements (0: at once).
    pub fn track(&mut self, partition: i32, offset: i64, parts: u32) {
        self.tracker.track(partition, offset, parts);
    }

    /// One part of the message at `offset` settled.
    pub fn settle(&mut self, partition: i32, offset: i64) {
        self.tracker.settle(partition, offset);
    }

    /// Next offset to commit for `partition`: everything below it is settled.
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
        for (partition, offset) in self.tracker.take_advanced() {
            out.push(Effect::StoreOffset { partition, offset });
        }
    }

    /// With a changelog: a checkpoint for every partition whose watermark moved past its last
    /// one and that has none in flight.
    pub fn checkpoint<'a>(
        &mut self,
        journals: impl Iterator<Item = (i32, &'a mut PartitionJournal)>,
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
            let writes = journal.checkpoint(watermark);
            if writes.is_empty() {
                continue;
            }
            let Some(ownership) = self.ownerships.get(&partition).copied() else {
                continue;
            };
            self.checkpoint_in_flight.insert(partition, ownership);
            out.push(Effect::WriteCheckpoint {
                checkpoint: CheckpointId {
                    partition,
                    ownership,
                    watermark,
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
        out.push(Effect::StoreOffset {
            partition,
            offset: watermark,
        });
        CheckpointOutcome::Stored
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
