//! The lowest fully acknowledged offset per partition.
//!
//! Invariant: the offset committed for a partition is the *next offset to read*, and every
//! message below it is settled: its row was acknowledged by Openlayer, or it was written to
//! the dead-letter topic, or it produced no row. Messages settle out of order (batches of
//! different pipelines, retries), so a message settled above an unsettled one does not move
//! the watermark. Kafka commits mean "resume here", hence watermark = lowest unsettled offset,
//! or one past the last consumed offset when everything is settled.

use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Default)]
struct PartitionOffsets {
    /// Unsettled offsets and how many parts each still waits for.
    pending: BTreeMap<i64, u32>,
    /// One past the highest offset consumed.
    next_offset: Option<i64>,
    /// Watermark last handed out by `take_advanced`.
    reported: Option<i64>,
}

impl PartitionOffsets {
    fn watermark(&self) -> Option<i64> {
        self.pending.keys().next().copied().or(self.next_offset)
    }
}

/// Tracks settlement of consumed messages for every owned partition.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<i32, PartitionOffsets>,
    num_pending: usize,
}

impl OffsetTracker {
    pub fn new() -> Self {
        OffsetTracker::default()
    }

    /// Starts tracking a newly assigned partition.
    pub fn assign(&mut self, partition: i32) {
        self.partitions.entry(partition).or_default();
    }

    /// Stops tracking a revoked partition; later settlements for it are ignored.
    pub fn revoke(&mut self, partition: i32) {
        if let Some(offsets) = self.partitions.remove(&partition) {
            self.num_pending -= offsets.pending.len();
        }
    }

    pub fn owns(&self, partition: i32) -> bool {
        self.partitions.contains_key(&partition)
    }

    /// Records a consumed message that settles after `parts` settlements (0: at once); parts
    /// tracked again for the same message add up (a session row its message also waits for).
    pub fn track(&mut self, partition: i32, offset: i64, parts: u32) {
        let Some(offsets) = self.partitions.get_mut(&partition) else {
            return;
        };
        offsets.next_offset = Some(
            offsets
                .next_offset
                .map_or(offset + 1, |next| next.max(offset + 1)),
        );
        if parts == 0 {
            return;
        }
        let pending = offsets.pending.entry(offset).or_insert(0);
        if *pending == 0 {
            self.num_pending += 1;
        }
        *pending += parts;
    }

    /// One part of `offset` settled.
    pub fn settle(&mut self, partition: i32, offset: i64) {
        let Some(offsets) = self.partitions.get_mut(&partition) else {
            return;
        };
        if let Some(parts) = offsets.pending.get_mut(&offset) {
            *parts -= 1;
            if *parts == 0 {
                offsets.pending.remove(&offset);
                self.num_pending -= 1;
            }
        }
    }

    /// Next offset to commit for `partition` (everything below it is settled).
    pub fn watermark(&self, partition: i32) -> Option<i64> {
        self.partitions.get(&partition)?.watermark()
    }

    /// Partitions whose watermark moved since the last call, with the new watermark.
    pub fn take_advanced(&mut self) -> Vec<(i32, i64)> {
        let mut advanced = Vec::new();
        for (partition, offsets) in &mut self.partitions {
            if let Some(watermark) = offsets.watermark()
                && offsets.reported != Some(watermark)
            {
                offsets.reported = Some(watermark);
                advanced.push((*partition, watermark));
            }
        }
        advanced.sort_unstable();
        advanced
    }

    /// Messages consumed and not yet settled, over all partitions.
    pub fn num_pending(&self) -> usize {
        self.num_pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_waits_for_the_lowest_unsettled_offset() {
        let mut tracker = OffsetTracker::new();
        tracker.assign(0);
        for offset in 10..15 {
            tracker.track(0, offset, 1);
        }
        tracker.settle(0, 11);
        tracker.settle(0, 12);
        assert_eq!(tracker.watermark(0), Some(10));
        tracker.settle(0, 10);
        assert_eq!(tracker.watermark(0), Some(13));
        tracker.settle(0, 13);
        tracker.settle(0, 14);
        assert_eq!(tracker.watermark(0), Some(15));
        assert_eq!(tracker.num_pending(), 0);
    }

    #[test]
    fn messages_without_rows_settle_at_once() {
        let mut tracker = OffsetTracker::new();
        tracker.assign(3);
        tracker.track(3, 7, 0);
        assert_eq!(tracker.watermark(3), Some(8));
        assert_eq!(tracker.take_advanced(), [(3, 8)]);
        assert_eq!(tracker.take_advanced(), []);
    }

    #[test]
    fn ignores_partitions_it_does_not_own() {
        let mut tracker = OffsetTracker::new();
        tracker.assign(1);
        tracker.track(1, 0, 1);
        tracker.revoke(1);
        tracker.settle(1, 0);
        tracker.track(1, 1, 1);
        assert_eq!(tracker.watermark(1), None);
        assert_eq!(tracker.num_pending(), 0);
        assert!(tracker.take_advanced().is_empty());
    }

    #[test]
    fn multi_part_messages_settle_on_the_last_part() {
        let mut tracker = OffsetTracker::new();
        tracker.assign(0);
        tracker.track(0, 0, 2);
        tracker.settle(0, 0);
        assert_eq!(tracker.watermark(0), Some(0));
        tracker.settle(0, 0);
        assert_eq!(tracker.watermark(0), Some(1));
    }
}
