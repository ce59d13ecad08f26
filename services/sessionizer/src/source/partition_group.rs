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
//! - or has nothing left to fetch: its high watermark (from the consumer's statistics, so
//!   perhaps older, never higher) is not past what was read;
//! - or has kept the group waiting for `max_idle` without delivering anything (fetched slowly).
//!   That wait starts only once the consumer had nothing else to deliver: in a backlog a
//!   partition's records are often fetched already and queued behind the others' (librdkafka
//!   hands out a partition's record batches whole, thousands of records each), and letting
//!   the others go then only moved their wait into the aligner, where it costs more.
//!
//! A head that has waited `max_wait` goes anyway: while its traces wait here, its partition's
//! markers stand still and the partitions owned elsewhere wait for them. So does the smallest
//! head while the group holds `max_buffered` messages. Either way the order that is correct
//! per session is still the aligner's: this only spares it most of the holding.
//!
//! A partition the core paused (backpressure, a restore, flow control) hands nothing on and
//! holds nothing back until resumed: what it read ahead waits here, as it would in Kafka.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Buffered<M> {
    timestamp_ms: i64,
    since: Instant,
    message: M,
}

#[derive(Debug)]
struct Queue<M> {
    buffered: VecDeque<Buffered<M>>,
    /// Timestamp of the newest message read (pushed) from the partition.
    read_through_ms: Option<i64>,
    /// The offset after the newest message read.
    next_offset: Option<i64>,
    /// Paused by the core: nothing of it goes.
    paused: bool,
}

/// How long the group waits, at most.
#[derive(Debug, Clone, Copy)]
pub struct Patience {
    /// For a partition that may have an earlier message but delivers none, counted from when
    /// the consumer had nothing else to deliver (until then its records may be queued behind
    /// the others').
    pub max_idle: Duration,
    /// For any message.
    pub max_wait: Duration,
}

/// The owned partitions' queues; see the module docs.
#[derive(Debug)]
pub struct PartitionGroup<M> {
    queues: BTreeMap<i32, Queue<M>>,
    num_buffered: usize,
    max_buffered: usize,
    patience: Patience,
    /// Since when each empty partition that may have more to fetch has kept a head waiting
    /// while the consumer had nothing else to deliver.
    waiting_for: HashMap<i32, Instant>,
    /// The consumer had nothing to deliver when last asked, and delivered nothing since.
    consumer_dry: bool,
}

impl<M> PartitionGroup<M> {
    /// A group holding at most `max_buffered` messages.
    pub fn new(max_buffered: usize, patience: Patience) -> Self {
        PartitionGroup {
            queues: BTreeMap::new(),
            num_buffered: 0,
            max_buffered: max_buffered.max(1),
            patience,
            waiting_for: HashMap::new(),
            consumer_dry: false,
        }
    }

    /// These partitions are now owned: their messages are ordered with the others'.
    pub fn assigned(&mut self, partitions: &[i32]) {
        for partition in partitions {
            self.queues.entry(*partition).or_insert_with(|| Queue {
                buffered: VecDeque::new(),
                read_through_ms: None,
                next_offset: None,
                paused: false,
            });
        }
    }

    /// The core paused (or resumed) reading these partitions.
    pub fn set_paused(&mut self, partitions: &[i32], paused: bool) {
        for partition in partitions {
            if let Some(queue) = self.queues.get_mut(partition) {
                queue.paused = paused;
            }
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

    /// A message read at `offset` of `partition`, with this Kafka timestamp (`None`: first,
    /// whenever). Returns it when the partition is not in the group.
    pub fn push(
        &mut self,
        (partition, offset): (i32, i64),
        timestamp_ms: Option<i64>,
        message: M,
        now: Instant,
    ) -> Option<M> {
        self.consumer_dry = false;
        let Some(queue) = self.queues.get_mut(&partition) else {
            return Some(message);
        };
        let timestamp_ms = timestamp_ms.unwrap_or(i64::MIN);
        queue.read_through_ms = queue.read_through_ms.max(Some(timestamp_ms));
        queue.next_offset = Some(offset + 1);
        queue.buffered.push_back(Buffered {
            timestamp_ms,
            since: now,
            message,
        });
        self.num_buffered += 1;
        self.waiting_for.remove(&partition);
        None
    }

    /// The consumer had nothing to deliver: a partition that keeps a head waiting from now on
    /// is not just queued behind the others' records.
    pub fn consumer_ran_dry(&mut self) {
        self.consumer_dry = true;
    }

    /// Whether the consumer running dry may change something: messages wait, and it was not
    /// reported dry since the last one read.
    pub fn awaits_consumer_dry(&self) -> bool {
        !self.consumer_dry && self.num_buffered > 0
    }

    /// Messages waiting.
    pub fn num_buffered(&self) -> usize {
        self.num_buffered
    }

    /// The next message to hand on, if one may go (see the module docs). `high_watermark(p)`:
    /// partition `p`'s, if known.
    pub fn pop(&mut self, now: Instant, high_watermark: impl Fn(i32) -> Option<i64>) -> Option<M> {
        let (mut partition, timestamp_ms) = self.smallest_head(|_| true)?;
        if self.num_buffered < self.max_buffered && self.blocked(timestamp_ms, now, high_watermark)
        {
            let max_wait = self.patience.max_wait;
            (partition, _) =
                self.smallest_head(|head| now.saturating_duration_since(head.since) >= max_wait)?;
        }
        let buffered = self.queues.get_mut(&partition)?.buffered.pop_front()?;
        self.num_buffered -= 1;
        Some(buffered.message)
    }

    /// The partition whose head has the smallest timestamp, among heads that pass `filter`.
    fn smallest_head(&self, filter: impl Fn(&Buffered<M>) -> bool) -> Option<(i32, i64)> {
        self.queues
            .iter()
            .filter(|(_, queue)| !queue.paused)
            .filter_map(|(partition, queue)| {
                let head = queue.buffered.front().filter(|head| filter(head))?;
                Some((*partition, head.timestamp_ms))
            })
            .min_by_key(|(_, timestamp_ms)| *timestamp_ms)
    }

    /// Whether a partition may still deliver a message before `timestamp_ms`, and has not
    /// kept the group waiting for `max_idle` yet since the consumer ran dry.
    fn blocked(
        &mut self,
        timestamp_ms: i64,
        now: Instant,
        high_watermark: impl Fn(i32) -> Option<i64>,
    ) -> bool {
        let mut blocking = Vec::new();
        for (other, queue) in &self.queues {
            let may_have_more = match (high_watermark(*other), queue.next_offset) {
                (Some(high_watermark), Some(next)) => high_watermark > next,
                (Some(high_watermark), None) => high_watermark > 0,
                (None, _) => true,
            };
            if !queue.paused
                && queue.buffered.is_empty()
                && queue
                    .read_through_ms
                    .is_none_or(|through| through < timestamp_ms)
                && may_have_more
            {
                blocking.push(*other);
            }
        }
        // A partition that stopped blocking starts its wait afresh next time.
        self.waiting_for
            .retain(|partition, _| blocking.contains(partition));
        let mut blocked = false;
        for other in blocking {
            let since = match self.waiting_for.get(&other) {
                // A wait that started keeps counting when the consumer delivers again: the
                // partition was found silent with nothing else to read, so it is slow, not
                // queued behind (a backlog that resumes right then is the rare exception).
                Some(since) => *since,
                None if self.consumer_dry => *self.waiting_for.entry(other).or_insert(now),
                // Its records may be queued behind the ones being delivered.
                None => return true,
            };
            blocked |= now.saturating_duration_since(since) < self.patience.max_idle;
        }
        blocked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATIENCE: Patience = Patience {
        max_idle: Duration::from_millis(100),
        max_wait: Duration::from_millis(1_000),
    };
    const IDLE: Duration = PATIENCE.max_idle;

    type Group = PartitionGroup<(i32, i64)>;

    fn group(partitions: &[i32]) -> Group {
        let mut group = PartitionGroup::new(1_000, PATIENCE);
        group.assigned(partitions);
        group
    }

    /// Pushes the message of `timestamp` (its offset too) read at `now`.
    fn push_at(group: &mut Group, partition: i32, timestamp: i64, now: Instant) {
        let message = (partition, timestamp);
        let returned = group.push((partition, timestamp), Some(timestamp), message, now);
        assert_eq!(returned, None, "partition {partition} is in the group");
    }

    fn push(group: &mut Group, partition: i32, timestamp: i64) {
        push_at(group, partition, timestamp, Instant::now());
    }

    /// Every partition may have more (no statistics yet).
    fn unknown(_: i32) -> Option<i64> {
        None
    }

    /// No partition has anything left to fetch.
    fn fetched_all(_: i32) -> Option<i64> {
        Some(0)
    }

    fn drain(
        group: &mut Group,
        now: Instant,
        high_watermark: impl Fn(i32) -> Option<i64>,
    ) -> Vec<(i32, i64)> {
        std::iter::from_fn(|| group.pop(now, &high_watermark)).collect()
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
        assert_eq!(drain(&mut group, now, unknown), []);
        for timestamp in [15, 25] {
            push(&mut group, 1, timestamp);
        }
        assert_eq!(drain(&mut group, now, unknown), []);
        for timestamp in [5, 35] {
            push(&mut group, 2, timestamp);
        }
        // Each partition's head is there: the smallest goes, until one runs dry and may have
        // more (partition 1 after 25: 30 and 35 wait for it).
        assert_eq!(
            drain(&mut group, now, unknown),
            [(2, 5), (0, 10), (1, 15), (0, 20), (1, 25)]
        );
        assert_eq!(group.num_buffered(), 2);
        // Partition 1's high watermark is what was read: 30 goes, then 35 waits for partition
        // 0, whose high watermark is past what was read.
        let watermarks = |partition| Some(if partition == 1 { 26 } else { 100 });
        assert_eq!(drain(&mut group, now, watermarks), [(0, 30)]);
        assert_eq!(drain(&mut group, now, fetched_all), [(2, 35)]);
        assert_eq!(group.num_buffered(), 0);
    }

    #[test]
    fn a_partition_read_past_the_head_or_with_nothing_to_fetch_holds_nothing() {
        let mut group = group(&[0, 1]);
        let now = Instant::now();
        push(&mut group, 1, 50);
        assert_eq!(drain(&mut group, now, fetched_all), [(1, 50)]);
        // Partition 1 was read through 50: partition 0's 40 need not wait for it.
        push(&mut group, 0, 40);
        assert_eq!(drain(&mut group, now, unknown), [(0, 40)]);
        // 60 is past what partition 1 was read through, and it may have more.
        push(&mut group, 0, 60);
        assert_eq!(drain(&mut group, now, unknown), []);
        assert_eq!(drain(&mut group, now, |_| Some(51)), [(0, 60)]);
    }

    #[test]
    fn a_partition_that_does_not_deliver_holds_the_others_for_max_idle_at_most() {
        let mut group = group(&[0, 1]);
        let start = Instant::now();
        push_at(&mut group, 0, 10, start);
        group.consumer_ran_dry();
        assert_eq!(drain(&mut group, start, unknown), []);
        assert_eq!(drain(&mut group, start + IDLE / 2, unknown), []);
        assert_eq!(drain(&mut group, start + IDLE, unknown), [(0, 10)]);
        // Still silent: it holds nothing back until it delivers again, whatever the others
        // deliver meanwhile (its wait started when the consumer ran dry).
        push_at(&mut group, 0, 20, start + IDLE);
        assert_eq!(drain(&mut group, start + IDLE * 2, unknown), [(0, 20)]);
        push_at(&mut group, 1, 5, start + IDLE * 2);
        push_at(&mut group, 0, 30, start + IDLE * 2);
        let later = start + IDLE * 3;
        assert_eq!(drain(&mut group, later, unknown), [(1, 5)]);
        assert_eq!(drain(&mut group, later, unknown), []);
        // Once it stops blocking (nothing to fetch), a later wait starts afresh.
        assert_eq!(drain(&mut group, later, fetched_all), [(0, 30)]);
        let much_later = later + IDLE * 2;
        push_at(&mut group, 0, 40, much_later);
        group.consumer_ran_dry();
        assert_eq!(drain(&mut group, much_later, unknown), []);
        assert_eq!(drain(&mut group, much_later + IDLE, unknown), [(0, 40)]);
    }

    #[test]
    fn a_partition_queued_behind_the_others_is_not_idle_while_the_consumer_delivers() {
        let mut group = group(&[0, 1]);
        let start = Instant::now();
        // Partition 0's batch is being delivered; partition 1's records are queued behind it.
        let mut now = start;
        for timestamp in 1..=10 {
            push_at(&mut group, 0, timestamp * 10, now);
            assert_eq!(drain(&mut group, now, unknown), []);
            now += IDLE / 2;
        }
        // Five times max_idle later nothing went: the consumer never ran dry.
        assert_eq!(group.num_buffered(), 10);
        // Partition 1's first record comes: the heads go in timestamp order.
        push_at(&mut group, 1, 25, now);
        assert_eq!(drain(&mut group, now, unknown), [(0, 10), (0, 20), (1, 25)]);
        // The consumer runs dry while partition 1 may have more: its wait starts then.
        group.consumer_ran_dry();
        assert_eq!(drain(&mut group, now, unknown), []);
        assert_eq!(drain(&mut group, now + IDLE / 2, unknown), []);
        let rest: Vec<_> = (3..=10).map(|timestamp| (0, timestamp * 10)).collect();
        assert_eq!(drain(&mut group, now + IDLE, unknown), rest);
        assert_eq!(group.num_buffered(), 0);
    }

    #[test]
    fn while_the_consumer_never_runs_dry_a_head_waits_max_wait_at_most() {
        let mut group = group(&[0, 1]);
        let start = Instant::now();
        let mut now = start;
        push_at(&mut group, 0, 10, now);
        // Partition 0 keeps delivering, partition 1 nothing: only max_wait lets the head go.
        while now < start + PATIENCE.max_wait {
            assert!(group.awaits_consumer_dry());
            assert_eq!(drain(&mut group, now, unknown), []);
            now += IDLE / 2;
            push_at(&mut group, 0, 20, now);
        }
        assert_eq!(drain(&mut group, now, unknown), [(0, 10)]);
        // Reported dry, it is not asked again until a message is read.
        group.consumer_ran_dry();
        assert!(!group.awaits_consumer_dry());
        push_at(&mut group, 0, 30, now);
        assert!(group.awaits_consumer_dry());
    }

    #[test]
    fn a_message_goes_after_max_wait_even_while_a_partition_delivers_earlier_ones() {
        let mut group = group(&[0, 1]);
        let start = Instant::now();
        push_at(&mut group, 0, 100, start);
        let mut now = start;
        // Partition 1 keeps delivering older traces, one at a time, more often than max_idle.
        for timestamp in 1..=19 {
            now += PATIENCE.max_wait / 20;
            push_at(&mut group, 1, timestamp, now);
            assert_eq!(drain(&mut group, now, unknown), [(1, timestamp)]);
        }
        now += PATIENCE.max_wait / 20;
        assert_eq!(drain(&mut group, now, unknown), [(0, 100)]);
    }

    #[test]
    fn a_paused_partition_hands_nothing_on_and_holds_nothing_back_until_resumed() {
        let mut group = group(&[0, 1]);
        let now = Instant::now();
        push(&mut group, 0, 10);
        push(&mut group, 0, 20);
        push(&mut group, 1, 30);
        group.set_paused(&[0], true);
        assert_eq!(drain(&mut group, now, unknown), [(1, 30)]);
        // Empty and paused, partition 1 holds nothing back either.
        group.set_paused(&[0], false);
        group.set_paused(&[1], true);
        assert_eq!(drain(&mut group, now, unknown), [(0, 10), (0, 20)]);
        assert_eq!(group.num_buffered(), 0);
    }

    #[test]
    fn a_full_group_hands_on_its_smallest_head() {
        let mut group = PartitionGroup::new(2, PATIENCE);
        group.assigned(&[0, 1, 2]);
        let now = Instant::now();
        push(&mut group, 1, 20);
        assert_eq!(drain(&mut group, now, unknown), []);
        // Two held while partition 2 may have an earlier one: the smallest goes anyway.
        push(&mut group, 0, 10);
        assert_eq!(drain(&mut group, now, unknown), [(0, 10)]);
        assert_eq!(group.num_buffered(), 1);
    }

    #[test]
    fn messages_without_a_timestamp_go_first() {
        let mut group = group(&[0, 1]);
        let now = Instant::now();
        push(&mut group, 1, 10);
        assert_eq!(group.push((0, 0), None, (0, -1), now), None);
        assert_eq!(drain(&mut group, now, fetched_all), [(0, -1), (1, 10)]);
    }

    #[test]
    fn outside_partitions_pass_revoked_ones_are_dropped_and_start_afresh_when_assigned() {
        let mut group = group(&[0, 1]);
        let now = Instant::now();
        assert_eq!(group.push((7, 1), Some(1), (7, 1), now), Some((7, 1)));
        push(&mut group, 1, 10);
        push(&mut group, 1, 20);
        push(&mut group, 0, 30);
        assert_eq!(group.revoked(&[1]), 2);
        assert_eq!(group.num_buffered(), 1);
        assert_eq!(drain(&mut group, now, unknown), [(0, 30)]);
        assert_eq!(group.push((1, 40), Some(40), (1, 40), now), Some((1, 40)));
        // Assigned again: what it was read through before is forgotten, so it holds 50 back.
        group.assigned(&[1]);
        push(&mut group, 0, 50);
        assert_eq!(drain(&mut group, now, unknown), []);
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// A message of this partition, its timestamp this much after the partition's last.
        Read {
            partition: i32,
            step_ms: i64,
        },
        /// Time passes, then the group is drained with these partitions caught up.
        Pop {
            elapsed_ms: u64,
            caught_up: Vec<bool>,
        },
        Revoke(i32),
        Assign(i32),
        /// The consumer had nothing to deliver.
        RanDry,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            6 => (0..3i32, -5..20i64).prop_map(|(partition, step_ms)| Op::Read { partition, step_ms }),
            3 => (0..1_500u64, proptest::collection::vec(any::<bool>(), 3))
                .prop_map(|(elapsed_ms, caught_up)| Op::Pop { elapsed_ms, caught_up }),
            1 => (0..3i32).prop_map(Op::Revoke),
            1 => (0..3i32).prop_map(Op::Assign),
            1 => Just(Op::RanDry),
        ]
    }

    proptest::proptest! {
        /// Whatever the reads, waits and rebalances: every message read while its partition is
        /// in the group comes out once, in its partition's order, unless its partition was
        /// revoked first; the count of those waiting is exact; and once every partition is
        /// caught up, nothing stays.
        #[test]
        fn every_message_comes_out_once_in_its_partitions_order(
            ops in proptest::collection::vec(op(), 1..200)
        ) {
            let mut group = PartitionGroup::new(50, PATIENCE);
            group.assigned(&[0, 1, 2]);
            let mut now = Instant::now();
            let mut owned = [true; 3];
            let mut next_offset = [0i64; 3];
            let mut timestamp = [0i64; 3];
            // Per partition, the offsets waiting in the group, in read order.
            let mut waiting: [VecDeque<i64>; 3] = Default::default();
            let check_out = |out: Vec<(i32, i64)>, waiting: &mut [VecDeque<i64>; 3]| {
                for (partition, offset) in out {
                    let expected = waiting[partition as usize].pop_front();
                    proptest::prop_assert_eq!(expected, Some(offset), "partition {}", partition);
                }
                Ok(())
            };
            for op in ops {
                match op {
                    Op::Read { partition, step_ms } => {
                        let index = partition as usize;
                        let offset = next_offset[index];
                        next_offset[index] += 1;
                        timestamp[index] += step_ms;
                        let returned =
                            group.push((partition, offset), Some(timestamp[index]), (partition, offset), now);
                        if owned[index] {
                            proptest::prop_assert_eq!(returned, None);
                            waiting[index].push_back(offset);
                        } else {
                            proptest::prop_assert_eq!(returned, Some((partition, offset)));
                        }
                    }
                    Op::Pop { elapsed_ms, caught_up } => {
                        now += Duration::from_millis(elapsed_ms);
                        let offsets = next_offset;
                        let out = drain(&mut group, now, |partition| {
                            let index = partition as usize;
                            Some(offsets[index] + i64::from(!caught_up[index]))
                        });
                        check_out(out, &mut waiting)?;
                    }
                    Op::Revoke(partition) => {
                        let index = partition as usize;
                        let dropped = group.revoked(&[partition]);
                        proptest::prop_assert_eq!(dropped, waiting[index].len());
                        waiting[index].clear();
                        owned[index] = false;
                    }
                    Op::Assign(partition) => {
                        group.assigned(&[partition]);
                        owned[partition as usize] = true;
                    }
                    Op::RanDry => group.consumer_ran_dry(),
                }
                let total: usize = waiting.iter().map(VecDeque::len).sum();
                proptest::prop_assert_eq!(group.num_buffered(), total);
            }
            let out = drain(&mut group, now, fetched_all);
            check_out(out, &mut waiting)?;
            proptest::prop_assert_eq!(group.num_buffered(), 0);
        }
    }
}
