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
//! - every input has a *read-through* time: every record of its partition with a Kafka
//!   timestamp at or before it has been read (and, for another partition, forwarded before
//!   the marker that said so);
//! - the item with the smallest key among the inputs' heads (ties: the first appended) is
//!   released once every input with nothing held has a bound past it, or has read through the item's own Kafka
//!   timestamp: a session's earlier turn was appended before its later one, so it has
//!   arrived already.
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
    /// Its Kafka timestamp in the partition it was first read in.
    appended_ms: Option<i64>,
    since: Instant,
    item: T,
}

#[derive(Debug)]
struct Lane<T> {
    held: VecDeque<Held<T>>,
    /// No later item of this input has a smaller key; `None`: nothing known yet.
    bound: Option<i64>,
    /// Every record of the input's partition with a Kafka timestamp at or before it has
    /// arrived; `None`: nothing known yet.
    read_through_ms: Option<i64>,
    /// When its bound last moved (or its liveness changed); `None`: never, count from the
    /// aligner's start.
    heard_at: Option<Instant>,
    /// The sender's ownership of the newest marker read (`Marker::epoch`).
    epoch: Option<u64>,
}

impl<T> Lane<T> {
    fn new() -> Self {
        Lane {
            held: VecDeque::new(),
            bound: None,
            read_through_ms: None,
            heard_at: None,
            epoch: None,
        }
    }

    /// Whether this input keeps an item of key `key`, appended at `appended_ms`, waiting:
    /// only when it holds nothing, may still send something before `key`, and has not read
    /// through the item's append time.
    fn holds_back(
        &self,
        (key, appended_ms): (i64, Option<i64>),
        started: Instant,
        now: Instant,
        max_wait: Duration,
    ) -> Hold {
        let read_through = self
            .read_through_ms
            .zip(appended_ms)
            .is_some_and(|(through, appended)| through >= appended);
        // A bound equal to the key is not enough: a later item may tie, and ties go by append
        // time (producers that disagree append a session's earlier turn after another
        // session's later one, which raises the earlier turn's key to theirs).
        if !self.held.is_empty() || read_through || self.bound.is_some_and(|bound| bound > key) {
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

    /// An item arrives on `input` with order key `key` and its Kafka timestamp; it waits for
    /// [`Aligner::release`]. Returns the key it is ordered by (never below an earlier item's
    /// of the same input).
    pub fn push(
        &mut self,
        input: Input,
        (key, appended_ms): (i64, Option<i64>),
        item: T,
        now: Instant,
    ) -> i64 {
        let lane = self.lane(input, now);
        let key = lane.bound.map_or(key, |bound| bound.max(key));
        lane.bound = Some(key);
        lane.heard_at = Some(now);
        lane.held.push_back(Held {
            key,
            appended_ms,
            since: now,
            item,
        });
        self.num_held += 1;
        key
    }

    /// The sender of `from` announced that nothing it sends later has a key below `bound`,
    /// and that it has read (and forwarded) its partition through `read_through_ms`. Both
    /// are facts of the logs, true whoever owns the partition now.
    pub fn marker(
        &mut self,
        from: i32,
        bound: Option<i64>,
        read_through_ms: Option<i64>,
        now: Instant,
    ) {
        let lane = self.lane(Input::From(from), now);
        if bound > lane.bound || read_through_ms > lane.read_through_ms {
            lane.heard_at = Some(now);
        }
        lane.bound = lane.bound.max(bound);
        lane.read_through_ms = lane.read_through_ms.max(read_through_ms);
    }

    /// A marker of the sender of `from` named the ownership it was sent in.
    pub fn heard_epoch(&mut self, from: i32, epoch: u64, now: Instant) {
        self.lane(Input::From(from), now).epoch = Some(epoch);
    }

    /// The ownership of `from` whose marker was read last.
    pub fn epoch(&self, from: i32) -> Option<u64> {
        self.lanes
            .get(&Input::From(from))
            .and_then(|lane| lane.epoch)
    }

    /// How far the partition's own input has been read.
    pub fn read_in_place_through(&mut self, read_through_ms: Option<i64>, now: Instant) {
        let lane = self.lane(Input::InPlace, now);
        lane.read_through_ms = lane.read_through_ms.max(read_through_ms);
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

    /// Items of the partition's own input waiting.
    pub fn num_held_in_place(&self) -> usize {
        self.lanes
            .get(&Input::InPlace)
            .map_or(0, |lane| lane.held.len())
    }

    /// Releases, in order, every item that may go now, into `out`.
    pub fn release(&mut self, now: Instant, out: &mut Vec<T>) -> Released {
        self.release_while(now, false, out)
    }

    /// Every item held, in order, whatever the other inputs (the run ends).
    pub fn drain(&mut self, now: Instant, out: &mut Vec<T>) {
        self.release_while(now, true, out);
    }

    /// The smallest head among the inputs, ties going to the one appended first: (key,
    /// appended, input, held since).
    fn next_head(&self) -> Option<(i64, Option<i64>, Input, Instant)> {
        self.lanes
            .iter()
            .filter_map(|(input, lane)| {
                let head = lane.held.front()?;
                Some((head.key, head.appended_ms, *input, head.since))
            })
            .min()
    }

    fn release_while(&mut self, now: Instant, all: bool, out: &mut Vec<T>) -> Released {
        let started = *self.started.get_or_insert(now);
        let mut released = Released::default();
        while let Some((key, appended_ms, input, since)) = self.next_head() {
            let hold = self
                .lanes
                .iter()
                .filter(|(other, _)| **other != input)
                .map(|(_, lane)| lane.holds_back((key, appended_ms), started, now, self.max_wait))
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
        aligner.push(Input::InPlace, (20, None), "in place at 20", now);
        assert!(released(&mut aligner, now).is_empty());
        aligner.push(Input::From(1), (10, None), "from 1 at 10", now);
        aligner.marker(2, Some(15), None, now);
        // Partition 2 may still send something between 15 and 20.
        assert_eq!(released(&mut aligner, now), ["from 1 at 10"]);
        aligner.marker(2, Some(25), None, now);
        // Partition 1 may too: its last forward was at 10.
        assert!(released(&mut aligner, now).is_empty());
        // A bound of 20 is not enough: 1 may still send a 20 appended earlier.
        aligner.marker(1, Some(20), None, now);
        assert!(released(&mut aligner, now).is_empty());
        aligner.marker(1, Some(21), None, now);
        assert_eq!(released(&mut aligner, now), ["in place at 20"]);
        assert_eq!(aligner.num_held(), 0);
    }

    #[test]
    fn inputs_merge_in_key_order() {
        let now = Instant::now();
        let mut aligner = Aligner::new(0, 2, WAIT, 100);
        aligner.push(Input::InPlace, (1, None), "a1", now);
        aligner.push(Input::InPlace, (3, None), "a3", now);
        aligner.push(Input::InPlace, (6, None), "a6", now);
        aligner.push(Input::From(1), (2, None), "b2", now);
        aligner.push(Input::From(1), (4, None), "b4", now);
        // b's last key bounds what it sends later: a6 waits.
        assert_eq!(released(&mut aligner, now), ["a1", "b2", "a3", "b4"]);
        aligner.marker(1, Some(7), None, now);
        assert_eq!(released(&mut aligner, now), ["a6"]);
    }

    #[test]
    fn equal_keys_go_in_append_order() {
        let now = Instant::now();
        let mut aligner = Aligner::new(0, 2, WAIT, 100);
        // Partition 1 read another session's turn at 20 first: this session's turn 7 after it
        // took its key. Turn 8, read in place, has 20 too, but was appended later.
        aligner.push(Input::InPlace, (20, Some(2_000)), "turn 8", now);
        aligner.marker(1, Some(20), Some(900), now);
        assert!(released(&mut aligner, now).is_empty());
        aligner.push(Input::From(1), (20, Some(1_000)), "turn 7", now);
        aligner.marker(1, Some(20), Some(2_500), now);
        assert_eq!(released(&mut aligner, now), ["turn 7", "turn 8"]);
    }

    #[test]
    fn keys_never_go_back_along_an_input() {
        let now = Instant::now();
        let mut aligner = Aligner::new(0, 1, WAIT, 100);
        assert_eq!(
            aligner.push(Input::InPlace, (10, None), "late clock", now),
            10
        );
        assert_eq!(aligner.push(Input::InPlace, (5, None), "earlier", now), 10);
        assert_eq!(aligner.in_place_bound(), Some(10));
        assert_eq!(aligner.advance_in_place(7, now), 10);
    }

    #[test]
    fn an_input_read_through_an_items_append_time_holds_it_back_no_longer() {
        let now = Instant::now();
        let mut aligner = Aligner::new(0, 3, WAIT, 100);
        aligner.marker(1, None, Some(1_000), now);
        aligner.marker(2, None, Some(2_000), now);
        aligner.push(Input::InPlace, (20, Some(1_500)), "appended at 1.5 s", now);
        // 1 has not read through 1.5 s: an earlier turn may still be on its way from it.
        assert!(released(&mut aligner, now).is_empty());
        // A marker from an earlier owner says less, and changes nothing.
        aligner.marker(1, None, Some(900), now);
        assert!(released(&mut aligner, now).is_empty());
        aligner.marker(1, None, Some(1_500), now);
        assert_eq!(released(&mut aligner, now), ["appended at 1.5 s"]);
        // Without its append time, an item waits for the bounds.
        aligner.push(Input::InPlace, (30, None), "no timestamp", now);
        assert!(released(&mut aligner, now).is_empty());
    }

    #[test]
    fn a_silent_input_holds_back_only_for_the_wait() {
        let now = Instant::now();
        let mut aligner = Aligner::new(0, 3, WAIT, 100);
        aligner.marker(1, None, Some(5_000), now);
        let later = now + Duration::from_secs(1);
        aligner.push(Input::InPlace, (20, Some(1_000)), "in place", later);
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
        aligner.marker(1, Some(5), None, now);
        let later = now + Duration::from_secs(1);
        aligner.push(Input::InPlace, (10, None), "in place", later);
        // The same bound again says nothing new: 1 is stuck at 5 since `now`.
        aligner.marker(1, Some(5), None, later);
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
        aligner.marker(1, Some(0), None, now);
        aligner.push(Input::InPlace, (10, None), "first", now);
        let later = now + Duration::from_secs(1);
        // Partition 1 moves on, but not past 10.
        aligner.marker(1, Some(1), None, later);
        assert!(released(&mut aligner, later).is_empty());
        let mut out = Vec::new();
        let at_wait = now + WAIT;
        aligner.marker(1, Some(2), None, at_wait);
        assert_eq!(aligner.release(at_wait, &mut out), Released { forced: 1 });
        assert_eq!(out, ["first"]);
        for item in ["a", "b", "c"] {
            aligner.push(Input::InPlace, (11, None), item, at_wait);
        }
        // Three held, two allowed: the oldest goes.
        assert_eq!(released(&mut aligner, at_wait), ["a"]);
        let mut rest = Vec::new();
        aligner.drain(at_wait, &mut rest);
        assert_eq!(rest, ["b", "c"]);
    }
}
