//! Assembled traces leave in event-time order across the partitions a replica assembles.
//!
//! A session's turns have different trace ids, so they are assembled in different partitions,
//! and the sessionizer numbers them in the order they reach the traces topic. Completion alone
//! (quiet after the root, by the wall clock) follows the order in which partitions are read:
//! after a restart each partition reads its backlog at its own pace, and a later turn read
//! early would be numbered before an earlier one still unread. So a completed trace waits
//! until every spans partition has been read and routed past its start time plus `slack` (the
//! router's markers say how far, in Kafka time), and no partition holds an open trace with a
//! root that started before it, or for `max_wait`; traces are released oldest first.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Waiting<T> {
    partition: i32,
    since: Instant,
    item: T,
}

/// Completed traces waiting for the other partitions; see the module docs.
#[derive(Debug)]
pub struct EventTimeOrder<T> {
    waiting: BTreeMap<(i64, u64), Waiting<T>>,
    next: u64,
    slack: Duration,
    max_wait: Duration,
}

/// How far a partition holds traces back.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Every span routed to it with a Kafka timestamp at or before this (Unix ms) was read;
    /// `None`: nothing known.
    pub read_through_ms: Option<i64>,
    /// The earliest start of its open traces that have their root.
    pub oldest_open_ms: Option<i64>,
}

impl Progress {
    /// How far every spans partition has been read and routed to a partition, by the markers it
    /// read: a spans partition not heard from yet holds everything back, one silent for `max_open`
    /// (its router is gone) nothing.
    pub fn read_through(
        sources: &HashMap<i32, (i64, Instant)>,
        num_spans: i32,
        now: Instant,
        max_open: Duration,
    ) -> Option<i64> {
        let mut through = None::<i64>;
        for partition in 0..num_spans {
            match sources.get(&partition) {
                None => return Some(i64::MIN),
                Some((_, heard)) if now.saturating_duration_since(*heard) >= max_open => {}
                Some((read_through, _)) => {
                    through =
                        Some(through.map_or(*read_through, |through| through.min(*read_through)));
                }
            }
        }
        through
    }
}

/// A trace let go, and whether it waited `max_wait` rather than for the other partitions.
#[derive(Debug, PartialEq, Eq)]
pub struct Released<T> {
    pub partition: i32,
    pub item: T,
    pub forced: bool,
}

impl<T> EventTimeOrder<T> {
    pub fn new(slack: Duration, max_wait: Duration) -> Self {
        EventTimeOrder {
            waiting: BTreeMap::new(),
            next: 0,
            slack,
            max_wait,
        }
    }

    /// A trace of `partition` that started at `timestamp_ms` is complete.
    pub fn push(&mut self, partition: i32, timestamp_ms: i64, now: Instant, item: T) {
        self.waiting.insert(
            (timestamp_ms, self.next),
            Waiting {
                partition,
                since: now,
                item,
            },
        );
        self.next += 1;
    }

    /// `partition` was revoked: its traces are assembled again by its next owner.
    pub fn forget(&mut self, partition: i32) {
        self.waiting
            .retain(|_, waiting| waiting.partition != partition);
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Lets go, oldest first, what every partition has read past, given each owned
    /// partition's progress.
    pub fn release(
        &mut self,
        progress: impl IntoIterator<Item = Progress>,
        now: Instant,
    ) -> Vec<Released<T>> {
        let min = |a: Option<i64>, b: Option<i64>| a.into_iter().chain(b).min();
        let (read_through, oldest_open) =
            progress
                .into_iter()
                .fold((None, None), |(read_through, oldest_open), progress| {
                    (
                        min(read_through, progress.read_through_ms),
                        min(oldest_open, progress.oldest_open_ms),
                    )
                });
        let slack = i64::try_from(self.slack.as_millis()).unwrap_or(i64::MAX);
        let mut released = Vec::new();
        while let Some(entry) = self.waiting.first_entry() {
            let (timestamp_ms, _) = *entry.key();
            let read = read_through
                .is_none_or(|through| timestamp_ms.saturating_add(slack) <= through)
                && oldest_open.is_none_or(|oldest| timestamp_ms < oldest);
            let forced = !read && now.saturating_duration_since(entry.get().since) >= self.max_wait;
            if !read && !forced {
                break;
            }
            let waiting = entry.remove();
            released.push(Released {
                partition: waiting.partition,
                item: waiting.item,
                forced,
            });
        }
        released
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLACK: Duration = Duration::from_millis(500);
    const MAX_WAIT: Duration = Duration::from_secs(60);

    fn items(released: Vec<Released<&'static str>>) -> Vec<&'static str> {
        released.into_iter().map(|released| released.item).collect()
    }

    fn reading(through: i64) -> Progress {
        Progress {
            read_through_ms: Some(through),
            oldest_open_ms: None,
        }
    }

    const IDLE: Progress = Progress {
        read_through_ms: None,
        oldest_open_ms: None,
    };

    #[test]
    fn a_later_turn_read_first_waits_for_the_partition_still_reading_its_backlog() {
        let now = Instant::now();
        let mut order = EventTimeOrder::new(SLACK, MAX_WAIT);
        // Partition 0 read its backlog through 10 s; partition 1 only through 1 s.
        order.push(0, 5_000, now, "turn 2");
        assert!(
            order
                .release([reading(10_000), reading(1_000)], now)
                .is_empty()
        );
        order.push(1, 2_000, now, "turn 1");
        assert!(
            order
                .release([reading(10_000), reading(2_400)], now)
                .is_empty()
        );
        assert_eq!(
            items(order.release([reading(10_000), reading(6_000)], now)),
            ["turn 1", "turn 2"]
        );
    }

    #[test]
    fn idle_partitions_hold_nothing_back_and_nothing_waits_forever() {
        let now = Instant::now();
        let mut order = EventTimeOrder::new(SLACK, MAX_WAIT);
        order.push(0, 5_000, now, "a");
        assert_eq!(items(order.release([IDLE, IDLE], now)), ["a"]);
        order.push(0, 5_000, now, "b");
        assert!(
            order
                .release([reading(1_000)], now + MAX_WAIT / 2)
                .is_empty()
        );
        let released = order.release([reading(1_000)], now + MAX_WAIT);
        assert_eq!(
            released,
            [Released {
                partition: 0,
                item: "b",
                forced: true
            }]
        );
    }

    #[test]
    fn an_idle_partitions_open_trace_holds_back_the_traces_that_started_after_it() {
        let now = Instant::now();
        let mut order = EventTimeOrder::new(SLACK, MAX_WAIT);
        order.push(0, 2_000, now, "turn 2");
        let turn_1_open = Progress {
            read_through_ms: None,
            oldest_open_ms: Some(1_000),
        };
        assert!(order.release([IDLE, turn_1_open], now).is_empty());
        order.push(1, 1_000, now, "turn 1");
        assert_eq!(
            items(order.release([IDLE, IDLE], now)),
            ["turn 1", "turn 2"]
        );
    }

    #[test]
    fn every_spans_partition_must_be_heard_from_and_a_silent_one_stops_counting() {
        let now = Instant::now();
        let mut sources = HashMap::new();
        sources.insert(0, (5_000, now));
        assert_eq!(
            Progress::read_through(&sources, 2, now, MAX_WAIT),
            Some(i64::MIN),
            "partition 1 not heard from"
        );
        sources.insert(1, (3_000, now));
        assert_eq!(
            Progress::read_through(&sources, 2, now, MAX_WAIT),
            Some(3_000)
        );
        assert_eq!(
            Progress::read_through(&sources, 2, now + MAX_WAIT, MAX_WAIT),
            None,
            "both silent for the wait"
        );
    }

    #[test]
    fn a_revoked_partitions_traces_are_dropped() {
        let now = Instant::now();
        let mut order = EventTimeOrder::new(SLACK, MAX_WAIT);
        order.push(0, 1_000, now, "kept");
        order.push(1, 2_000, now, "revoked");
        order.forget(1);
        assert_eq!(items(order.release([IDLE], now)), ["kept"]);
        assert!(order.is_empty());
    }
}
