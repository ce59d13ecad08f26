//! Traces read from the owned partitions of the traces topic, handed on in Kafka timestamp
//! order across them, as Kafka Streams' partition group does.
//!
//! librdkafka hands out each fetched record batch whole, one partition after another: in a
//! backlog, partition 0's 16,000 traces come before partition 1's first. The repartition stage
//! must hold every one of them until the other partitions have read as far (`core::align`),
//! decoded, which costs more than the work itself (malloc, page faults, cache misses). Here a
//! read message waits undecoded in its partition's queue instead, and the head with the
//! smallest timestamp goes first, once no other partition may still have an earlier one on
//! its way:
//!
//! - every other partition has a head too, or has been read past that timestamp;
//! - or has nothing left to fetch (the consumer's statistics say so);
//! - or has kept the group waiting for `max_idle` without delivering anything (paused, slow);
//! - or the group holds `max_buffered` messages.
//!
//! This is an optimization only: the order that is correct per session is still the aligner's.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Buffered<M> {
    timestamp_ms: i64,
    message: M,
}

#[derive(Debug)]
struct Queue<M> {
    buffered: VecDeque<Buffered<M>>,
    /// Timestamp of the newest message read (pushed) from the partition.
    read_through_ms: Option<i64>,
}

/// The owned partitions' queues; see the module docs.
#[derive(Debug)]
pub struct PartitionGroup<M> {
    queues: BTreeMap<i32, Queue<M>>,
    num_buffered: usize,
    max_buffered: usize,
    max_idle: Duration,
    /// Since when each empty partition that may have more to fetch has kept a head waiting.
    waiting_for: HashMap<i32, Instant>,
}

impl<M> PartitionGroup<M> {
    /// A group holding at most `max_buffered` messages, waiting at most `max_idle` for a
    /// partition that does not deliver.
    pub fn new(max_buffered: usize, max_idle: Duration) -> Self {
        PartitionGroup {
            queues: BTreeMap::new(),
            num_buffered: 0,
            max_buffered: max_buffered.max(1),
            max_idle,
            waiting_for: HashMap::new(),
        }
    }

    /// These partitions are now owned: their messages are ordered with the others'.
    pub fn assigned(&mut self, partitions: &[i32]) {
        for partition in partitions {
            self.queues.entry(*partition).or_insert_with(|| Queue {
                buffered: VecDeque::new(),
                read_through_ms: None,
            });
        }
    }

    /// These partitions are no longer owned: their buffered messages are dropped (never
    /// handed on, so never committed; their next owner reads them). Returns how many.
    pub fn revoked(&mut self, partitions: &[i32]) -> usize {
        let mut dropped = 0;
        for partition in partitions {
            if let Some(queue) = self.queues.remove(partition) {
                dropped += queue.buffered.len();
            }
            self.waiting_for.remove(partition);
        }
        self.num_buffered -= dropped;
        dropped
    }

    /// A message read from `partition` with this Kafka timestamp (`None`: first, whenever).
    /// Returns it when the partition is not in the group.
    pub fn push(&mut self, partition: i32, timestamp_ms: Option<i64>, message: M) -> Option<M> {
        let Some(queue) = self.queues.get_mut(&partition) else {
            return Some(message);
        };
        let timestamp_ms = timestamp_ms.unwrap_or(i64::MIN);
        queue.read_through_ms = queue.read_through_ms.max(Some(timestamp_ms));
        queue.buffered.push_back(Buffered {
            timestamp_ms,
            message,
        });
        self.num_buffered += 1;
        self.waiting_for.remove(&partition);
        None
    }

    /// Messages waiting.
    pub fn num_buffered(&self) -> usize {
        self.num_buffered
    }

    /// The next message to hand on, if one may go (see the module docs). `may_have_more(p)`:
    /// whether partition `p` may have messages not read yet.
    pub fn pop(&mut self, now: Instant, may_have_more: impl Fn(i32) -> bool) -> Option<M> {
        let (partition, timestamp_ms) = self
            .queues
            .iter()
            .filter_map(|(partition, queue)| {
                Some((*partition, queue.buffered.front()?.timestamp_ms))
            })
            .min_by_key(|(_, timestamp_ms)| *timestamp_ms)?;
        if self.num_buffered < self.max_buffered {
            let mut blocked_by = Vec::new();
            for (other, queue) in &self.queues {
                let waits = queue.buffered.is_empty()
                    && queue
                        .read_through_ms
                        .is_none_or(|through| through < timestamp_ms)
                    && may_have_more(*other);
                if waits {
                    blocked_by.push(*other);
                }
            }
            let mut blocked = false;
            for other in blocked_by {
                let since = *self.waiting_for.entry(other).or_insert(now);
                blocked |= now.saturating_duration_since(since) < self.max_idle;
            }
            if blocked {
                return None;
            }
        }
        let queue = self.queues.get_mut(&partition)?;
        let buffered = queue.buffered.pop_front()?;
        self.num_buffered -= 1;
        Some(buffered.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_millis(100);

    fn group(partitions: &[i32]) -> PartitionGroup<(i32, i64)> {
        let mut group = PartitionGroup::new(1_000, IDLE);
        group.assigned(partitions);
        group
    }

    fn push(group: &mut PartitionGroup<(i32, i64)>, partition: i32, timestamp_ms: i64) {
        assert!(
            group
                .push(partition, Some(timestamp_ms), (partition, timestamp_ms))
                .is_none()
        );
    }

    fn drain(
        group: &mut PartitionGroup<(i32, i64)>,
        now: Instant,
        may_have_more: impl Fn(i32) -> bool,
    ) -> Vec<(i32, i64)> {
        std::iter::from_fn(|| group.pop(now, &may_have_more)).collect()
    }

    #[test]
    fn backlogs_read_one_partition_after_another_come_out_in_timestamp_order() {
        let mut group = group(&[0, 1, 2]);
        let now = Instant::now();
        // librdkafka hands out partition 0's batch first: nothing may go while 1 and 2 have
        // more to fetch and nothing read.
        for timestamp in [10, 20, 30] {
            push(&mut group, 0, timestamp);
        }
        assert_eq!(drain(&mut group, now, |_| true), []);
        for timestamp in [15, 25] {
            push(&mut group, 1, timestamp);
        }
        assert_eq!(drain(&mut group, now, |_| true), []);
        for timestamp in [5, 35] {
            push(&mut group, 2, timestamp);
        }
        // Each partition's head is there: the smallest goes, until one runs dry and may have
        // more (partition 1 after 25: 30 and 35 wait for it).
        assert_eq!(
            drain(&mut group, now, |_| true),
            [(2, 5), (0, 10), (1, 15), (0, 20), (1, 25)]
        );
        assert_eq!(group.num_buffered(), 2);
        // Partition 1 has nothing more to fetch: 30 goes, then 35 waits for partition 0.
        assert_eq!(
            drain(&mut group, now, |partition| partition != 1),
            [(0, 30)]
        );
        assert_eq!(drain(&mut group, now, |_| false), [(2, 35)]);
        assert_eq!(group.num_buffered(), 0);
    }

    #[test]
    fn a_partition_read_past_the_head_or_with_nothing_to_fetch_holds_nothing() {
        let mut group = group(&[0, 1]);
        let now = Instant::now();
        push(&mut group, 1, 50);
        assert_eq!(drain(&mut group, now, |_| false), [(1, 50)]);
        // Partition 1 was read through 50: partition 0's 40 need not wait for it.
        push(&mut group, 0, 40);
        assert_eq!(drain(&mut group, now, |_| true), [(0, 40)]);
        // 60 is past what partition 1 was read through, and it may have more.
        push(&mut group, 0, 60);
        assert_eq!(drain(&mut group, now, |_| true), []);
        assert_eq!(drain(&mut group, now, |_| false), [(0, 60)]);
    }

    #[test]
    fn a_partition_that_does_not_deliver_holds_the_others_for_max_idle_at_most() {
        let mut group = group(&[0, 1]);
        let start = Instant::now();
        push(&mut group, 0, 10);
        assert_eq!(drain(&mut group, start, |_| true), []);
        assert_eq!(drain(&mut group, start + IDLE / 2, |_| true), []);
        assert_eq!(drain(&mut group, start + IDLE, |_| true), [(0, 10)]);
        // Still silent: it holds nothing back until it delivers again.
        push(&mut group, 0, 20);
        assert_eq!(drain(&mut group, start + IDLE * 2, |_| true), [(0, 20)]);
        push(&mut group, 1, 5);
        push(&mut group, 0, 30);
        let later = start + IDLE * 3;
        assert_eq!(drain(&mut group, later, |_| true), [(1, 5)]);
        assert_eq!(drain(&mut group, later, |_| true), []);
    }

    #[test]
    fn a_full_group_hands_on_its_smallest_head() {
        let mut group = PartitionGroup::new(2, IDLE);
        group.assigned(&[0, 1, 2]);
        let now = Instant::now();
        push(&mut group, 1, 20);
        assert_eq!(drain(&mut group, now, |_| true), []);
        // Two held while partition 2 may have an earlier one: the smallest goes anyway.
        push(&mut group, 0, 10);
        assert_eq!(drain(&mut group, now, |_| true), [(0, 10)]);
        assert_eq!(group.num_buffered(), 1);
    }

    #[test]
    fn messages_of_partitions_outside_the_group_pass_and_revoked_ones_are_dropped() {
        let mut group = group(&[0, 1]);
        let now = Instant::now();
        assert_eq!(group.push(7, Some(1), (7, 1)), Some((7, 1)));
        push(&mut group, 1, 10);
        push(&mut group, 1, 20);
        push(&mut group, 0, 30);
        assert_eq!(group.revoked(&[1]), 2);
        assert_eq!(group.num_buffered(), 1);
        assert_eq!(drain(&mut group, now, |_| true), [(0, 30)]);
        assert_eq!(group.push(1, Some(40), (1, 40)), Some((1, 40)));
    }
}
