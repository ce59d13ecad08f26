//! Event-time alignment of one partition's inputs: its own traces (read in place) and the
//! traces forwarded to it from each other partition.
//!
//! Each input arrives in its own order, but the inputs race each other: after a restart or an
//! outage every partition reads a backlog at its own pace, so a session's later turn read in
//! place could be placed before an earlier turn still on its way from another partition. The
//! aligner is a k-way merge with watermarks, as a stream processor merges its inputs:
//!
//! - every item has an *order key*: the running maximum of the event times of the partition
//!   it was first read in, up to it, so keys never decrease along an input;
//! - every input has a *bound*: no later item on it has a smaller key (the last key seen, or
//!   what the sending partition's owner announced in a marker);
//! - the item with the smallest key among the inputs' heads is released once every input
//!   with nothing held has a bound at or past it, or is *live*: its sender is caught up, so
//!   what it sends later is newer than anything held.
//!
//! Nothing waits forever: an item held for `max_wait` is released anyway, and an input whose
//! bound has not moved for that long (its sender died, or is stuck) holds nothing back; both
//! count as forced.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// One input of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Input {
    /// Traces read in the partition itself.
    InPlace,
    /// Traces forwarded from the partition of this number.
    From(i32),
}

#[derive(Debug)]
struct Held<T> {
    key: i64,
    since: Instant,
    item: T,
}

#[derive(Debug)]
struct Lane<T> {
    held: VecDeque<Held<T>>,
    /// No later item of this input has a smaller key; `None`: nothing known yet.
    bound: Option<i64>,
    /// The sender is caught up: this input holds nothing back while it is empty.
    live: bool,
    /// When its bound last moved (or its liveness changed); `None`: never, count from the
    /// aligner's start.
    heard_at: Option<Instant>,
}

impl<T> Lane<T> {
    fn new() -> Self {
        Lane {
            held: VecDeque::new(),
            bound: None,
            live: false,
            heard_at: None,
        }
    }

    /// Whether this input keeps an item of key `key` waiting: only when it holds nothing,
    /// is not live and may still send something before `key`.
    fn holds_back(&self, key: i64, started: Instant, now: Instant, max_wait: Duration) -> Hold {
        if !self.held.is_empty() || self.live || self.bound.is_some_and(|bound| bound >= key) {
            Hold::No
        } else if now.saturating_duration_since(self.heard_at.unwrap_or(started)) < max_wait {
            Hold::Yes
        } else {
            Hold::GaveUp
        }
    }
}

/// Whether an input holds an item back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Hold {
    No,
    /// It would, but has been silent for `max_wait`.
    GaveUp,
    Yes,
}

/// What [`Aligner::release`] let go.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Released {
    /// Items released because they had waited `max_wait`, or too many were held.
    pub forced: usize,
}

/// The inputs of one partition, merged in order key; see the module docs.
#[derive(Debug)]
pub struct Aligner<T> {
    lanes: BTreeMap<Input, Lane<T>>,
    max_wait: Duration,
    max_held: usize,
    num_held: usize,
    /// When the aligner was first used: inputs never heard of are silent since then.
    started: Option<Instant>,
}

impl<T> Aligner<T> {
    /// The inputs of partition `own` of a topic of `num_partitions` partitions. Items wait at
    /// most `max_wait`, and at most `max_held` wait at once.
    pub fn new(own: i32, num_partitions: i32, max_wait: Duration, max_held: usize) -> Self {
        let mut lanes = BTreeMap::new();
        lanes.insert(Input::InPlace, Lane::new());
        for partition in (0..num_partitions).filter(|partition| *partition != own) {
            lanes.insert(Input::From(partition), Lane::new());
        }
        Aligner {
            lanes,
            max_wait,
            max_held: max_held.max(1),
            num_held: 0,
            started: None,
        }
    }

    fn lane(&mut self, input: Input, now: Instant) -> &mut Lane<T> {
        self.started.get_or_insert(now);
        // A partition added to the topic since start sends too.
        self.lanes.entry(input).or_insert_with(Lane::new)
    }

    /// An item arrives on `input` with order key `key`; it waits for [`Aligner::release`].
    /// Returns the key it is ordered by (never below an earlier item's of the same input).
    pub fn push(&mut self, input: Input, key: i64, item: T, now: Instant) -> i64 {
        let lane = self.lane(input, now);
        let key = lane.bound.map_or(key, |bound| bound.max(key));
        lane.bound = Some(key);
        lane.heard_at = Some(now);
        lane.held.push_back(Held {
            key,
            since: now,
            item,
        });
        self.num_held += 1;
        key
    }

    /// The sender of `from` announced that nothing it sends later has a key below `bound`,
    /// and whether it is caught up.
    pub fn marker(&mut self, from: i32, bound: Option<i64>, live: bool, now: Instant) {
        let lane = self.lane(Input::From(from), now);
        if bound > lane.bound || live != lane.live {
            lane.heard_at = Some(now);
        }
        lane.bound = lane.bound.max(bound);
        lane.live = live;
    }

    /// Whether the partition's own input is caught up.
    pub fn set_in_place_live(&mut self, live: bool, now: Instant) {
        self.lane(Input::InPlace, now).live = live;
    }

    /// The bound of the partition's own input: what its owner announces to the others.
    pub fn in_place_bound(&self) -> Option<i64> {
        self.lanes.get(&Input::InPlace).and_then(|lane| lane.bound)
    }

    /// Raises the bound of the partition's own input without an item (a message that is
    /// not placed here still moves the partition's event time on).
    pub fn advance_in_place(&mut self, key: i64, now: Instant) -> i64 {
        let lane = self.lane(Input::InPlace, now);
        let key = lane.bound.map_or(key, |bound| bound.max(key));
        lane.bound = Some(key);
        lane.heard_at = Some(now);
        key
    }

    pub fn num_held(&self) -> usize {
        self.num_held
    }

    /// Releases, in order, every item that may go now, into `out`.
    pub fn release(&mut self, now: Instant, out: &mut Vec<T>) -> Released {
        self.release_while(now, false, out)
    }

    /// Every item held, in order, whatever the other inputs (the run ends).
    pub fn drain(&mut self, now: Instant, out: &mut Vec<T>) {
        self.release_while(now, true, out);
    }

    /// The smallest head among the inputs: (key, input, held since).
    fn next_head(&self) -> Option<(i64, Input, Instant)> {
        self.lanes
            .iter()
            .filter_map(|(input, lane)| {
                let head = lane.held.front()?;
                Some((head.key, *input, head.since))
            })
            .min()
    }

    fn release_while(&mut self, now: Instant, all: bool, out: &mut Vec<T>) -> Released {
        let started = *self.started.get_or_insert(now);
        let mut released = Released::default();
        while let Some((key, input, since)) = self.next_head() {
            let hold = self
                .lanes
                .iter()
                .filter(|(other, _)| **other != input)
                .map(|(_, lane)| lane.holds_back(key, started, now, self.max_wait))
                .max()
                .unwrap_or(Hold::No);
            let forced = all
                || self.num_held > self.max_held
                || now.saturating_duration_since(since) >= self.max_wait
                || hold == Hold::GaveUp;
            if hold == Hold::Yes && !forced {
                break;
            }
            let forced = forced && hold != Hold::No;
            let Some(held) = self
                .lanes
                .get_mut(&input)
                .and_then(|lane| lane.held.pop_front())
            else {
                break;
            };
            self.num_held -= 1;
            if forced {
                released.forced += 1;
            }
            out.push(held.item);
        }
        released
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(5);

    fn released(aligner: &mut Aligner<&'static str>, now: Instant) -> Vec<&'static str> {
        let mut out = Vec::new();
        aligner.release(now, &mut out);
        out
    }

    #[test]
    fn a_trace_waits_for_the_inputs_that_may_still_send_an_earlier_one() {
        let now = Instant::now();
        let mut aligner = Aligner::new(0, 3, WAIT, 100);
        aligner.push(Input::InPlace, 20, "in place at 20", now);
        assert!(released(&mut aligner, now).is_empty());
        aligner.push(Input::From(1), 10, "from 1 at 10", now);
        aligner.marker(2, Some(15), false, now);
        // Partition 2 may still send something between 15 and 20.
        assert_eq!(released(&mut aligner, now), ["from 1 at 10"]);
        aligner.marker(2, Some(25), false, now);
        // Partition 1 may too: its last forward was at 10.
        assert!(released(&mut aligner, now).is_empty());
        aligner.marker(1, Some(20), false, now);
        assert_eq!(released(&mut aligner, now), ["in place at 20"]);
        assert_eq!(aligner.num_held(), 0);
    }

    #[test]
    fn inputs_merge_in_key_order() {
        let now = Instant::now();
        let mut aligner = Aligner::new(0, 2, WAIT, 100);
        aligner.push(Input::InPlace, 1, "a1", now);
        aligner.push(Input::InPlace, 3, "a3", now);
        aligner.push(Input::InPlace, 6, "a6", now);
        aligner.push(Input::From(1), 2, "b2", now);
        aligner.push(Input::From(1), 4, "b4", now);
        // b's last key bounds what it sends later: a6 waits.
        assert_eq!(released(&mut aligner, now), ["a1", "b2", "a3", "b4"]);
        aligner.marker(1, Some(7), false, now);
        assert_eq!(released(&mut aligner, now), ["a6"]);
    }

    #[test]
    fn keys_never_go_back_along_an_input() {
        let now = Instant::now();
        let mut aligner = Aligner::new(0, 1, WAIT, 100);
        assert_eq!(aligner.push(Input::InPlace, 10, "late clock", now), 10);
        assert_eq!(aligner.push(Input::InPlace, 5, "earlier", now), 10);
        assert_eq!(aligner.in_place_bound(), Some(10));
        assert_eq!(aligner.advance_in_place(7, now), 10);
    }

    #[test]
    fn a_live_input_holds_nothing_back_and_a_silent_one_only_for_the_wait() {
        let now = Instant::now();
        let mut aligner = Aligner::new(0, 3, WAIT, 100);
        aligner.marker(1, None, true, now);
        let later = now + Duration::from_secs(1);
        aligner.push(Input::InPlace, 20, "in place", later);
        assert!(released(&mut aligner, later).is_empty(), "2 is unknown");
        // 2 said nothing for the whole wait: its owner may be gone.
        let mut out = Vec::new();
        assert_eq!(
            aligner.release(now + WAIT, &mut out),
            Released { forced: 1 }
        );
        assert_eq!(out, ["in place"]);
    }

    #[test]
    fn a_stuck_input_holds_back_only_for_the_wait() {
        let now = Instant::now();
        let mut aligner = Aligner::new(0, 2, WAIT, 100);
        aligner.marker(1, Some(5), false, now);
        let later = now + Duration::from_secs(1);
        aligner.push(Input::InPlace, 10, "in place", later);
        // The same bound again says nothing new: 1 is stuck at 5 since `now`.
        aligner.marker(1, Some(5), false, later);
        assert!(released(&mut aligner, later).is_empty());
        let mut out = Vec::new();
        assert_eq!(
            aligner.release(now + WAIT, &mut out),
            Released { forced: 1 }
        );
        assert_eq!(out, ["in place"]);
    }

    #[test]
    fn nothing_waits_longer_than_the_wait_or_beyond_the_limit() {
        let now = Instant::now();
        let mut aligner = Aligner::new(0, 2, WAIT, 2);
        aligner.marker(1, Some(0), false, now);
        aligner.push(Input::InPlace, 10, "first", now);
        let later = now + Duration::from_secs(1);
        // Partition 1 moves on, but not past 10.
        aligner.marker(1, Some(1), false, later);
        assert!(released(&mut aligner, later).is_empty());
        let mut out = Vec::new();
        let at_wait = now + WAIT;
        aligner.marker(1, Some(2), false, at_wait);
        assert_eq!(aligner.release(at_wait, &mut out), Released { forced: 1 });
        assert_eq!(out, ["first"]);
        for item in ["a", "b", "c"] {
            aligner.push(Input::InPlace, 11, item, at_wait);
        }
        // Three held, two allowed: the oldest goes.
        assert_eq!(released(&mut aligner, at_wait), ["a"]);
        let mut rest = Vec::new();
        aligner.drain(at_wait, &mut rest);
        assert_eq!(rest, ["b", "c"]);
    }
}
