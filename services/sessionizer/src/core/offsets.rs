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
//!
//! Nothing else stores offsets: this file is where at-least-once delivery is decided.

use super::effect::Effect;
use crate::commit::OffsetTracker;
use crate::sessionize::store::PartitionJournal;
use std::collections::HashSet;

/// Settlement and durability of consumed offsets for every owned partition.
#[derive(Debug)]
pub struct Offsets {
    tracker: OffsetTracker,
    /// Whether stores wait for changelog checkpoints.
    changelog: bool,
    checkpoint_in_flight: HashSet<i32>,
    /// Partitions whose last checkpoint was not delivered: frozen until restart.
    frozen: HashSet<i32>,
}

impl Offsets {
    pub fn new(changelog: bool) -> Self {
        Offsets {
            tracker: OffsetTracker::new(),
            changelog,
            checkpoint_in_flight: HashSet::new(),
            frozen: HashSet::new(),
        }
    }

    pub fn assign(&mut self, partition: i32) {
        self.tracker.assign(partition);
    }

    /// Forgets a partition; later settlements and checkpoint outcomes for it are ignored.
    pub fn revoke(&mut self, partition: i32) {
        self.tracker.revoke(partition);
        self.checkpoint_in_flight.remove(&partition);
        self.frozen.remove(&partition);
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

    pub fn has_checkpoint_in_flight(&self) -> bool {
        !self.checkpoint_in_flight.is_empty()
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
            if self.checkpoint_in_flight.contains(&partition) || self.frozen.contains(&partition) {
                continue;
            }
            let Some(watermark) = self.tracker.watermark(partition) else {
                continue;
            };
            let writes = journal.checkpoint(watermark);
            if writes.is_empty() {
                continue;
            }
            self.checkpoint_in_flight.insert(partition);
            out.push(Effect::WriteCheckpoint {
                partition,
                watermark,
                writes,
            });
        }
    }

    /// A checkpoint's outcome: once delivered, its watermark is stored. Returns false when
    /// it was not delivered (the partition is frozen).
    pub fn checkpoint_written(
        &mut self,
        partition: i32,
        watermark: i64,
        delivered: bool,
        journal: Option<&mut PartitionJournal>,
        out: &mut Vec<Effect>,
    ) -> bool {
        if !self.tracker.owns(partition) {
            return true;
        }
        self.checkpoint_in_flight.remove(&partition);
        if !delivered {
            self.frozen.insert(partition);
            return false;
        }
        if let Some(journal) = journal {
            journal.checkpoint_written(watermark);
        }
        out.push(Effect::StoreOffset {
            partition,
            offset: watermark,
        });
        true
    }
}
