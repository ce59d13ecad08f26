//! Session state that survives crashes and follows its partition: a changelog written as of
//! the commit point.
//!
//! The scheme (DESIGN "changelog as of the commit point"):
//! - For every session touched by a not-yet-settled message, the journal keeps the session's
//!   state after each such message, and the partition's event time after each message.
//! - A checkpoint of partition `p` at watermark `W` (everything below `W` settled) writes,
//!   for every session whose state changed below `W` since the last checkpoint, its state
//!   *as of `W`* (after exactly the messages below `W`) to changelog partition `p`, each
//!   record carrying `W`; then a checkpoint record with `W` and the event time as of `W`.
//!   Only when Kafka acknowledged all of them is `W` stored as the partition's offset.
//! - On assignment the partition's records are read back (newest per key wins) and the
//!   consumer resumes at the committed offset. Messages below the checkpoint's `W` are
//!   skipped (already applied and acknowledged); a message of a session whose own record
//!   carries a higher `W` (a crash halfway through a checkpoint) is skipped below that `W`.
//!   Replayed messages thus get exactly the enrichment they had, and turn numbers and running
//!   totals continue as if nothing happened.
//!
//! A partition reads two streams, the traces topic and the repartition topic, as one sequence
//! (`core::merge`): the journal works on sequences, and records carry the offset of each
//! stream their watermark stands for (`w` for the traces topic, `rw` for the repartition
//! topic), so replays of either stream are skipped the same way. The checkpoint record also
//! carries, per traces partition, the highest offset whose forward was applied: a forward
//! sent again (its sender crashed before committing) is then recognised as a duplicate.
//!
//! Records are JSON: the state is internal to the sessionizer and JSON keeps it readable
//! with any Kafka tool. Closed sessions are written as closed (not as tombstones), so their
//! `W` is kept.

use super::window::{SessionKey, SessionState};
use crate::batch::Position;
use crate::source::Stream;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};

/// Key of the checkpoint record of a partition (cannot collide with a session key, which
/// always starts with a digit).
pub const CHECKPOINT_KEY: &str = "checkpoint";

/// Changelog key of a session: length-prefixed so that no two (pipeline, session) pairs share
/// one, whatever characters the ids hold.
pub fn changelog_key(key: &SessionKey) -> String {
    session_record_key(&key.pipeline_id, &key.session_id)
}

fn session_record_key(pipeline_id: &str, session_id: &str) -> String {
    format!("{}:{pipeline_id}/{session_id}", pipeline_id.len())
}

/// A session's state as of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Watermark this state is as of: it includes exactly the messages of the traces topic
    /// below `w` and of the repartition topic below `rw`.
    pub w: i64,
    #[serde(default)]
    pub rw: i64,
    pub pipeline_id: String,
    pub session_id: String,
    /// `None`: no window open (closed by an end event, a gap, or idleness).
    pub state: Option<SessionState>,
    /// Segment the next window of this session starts at (non-zero after a max-duration split).
    #[serde(default)]
    pub next_segment: i32,
    /// Per traces partition, the highest offset first read there whose forward is in this
    /// state: forwards are applied out of their repartition-topic order (`core::align`), so
    /// `rw` alone cannot tell which ones at or above it are.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rf: BTreeMap<i32, i64>,
}

impl SessionRecord {
    /// Whether this state holds messages that `checkpoint` does not (the checkpoint that
    /// wrote it did not land whole).
    pub fn is_ahead_of(&self, checkpoint: &CheckpointRecord) -> bool {
        self.w > checkpoint.w
            || self.rw > checkpoint.rw
            || self.rf.iter().any(|(partition, offset)| {
                checkpoint
                    .forwarded
                    .get(partition)
                    .is_none_or(|applied| offset > applied)
            })
    }
}

/// The partition's own checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRecord {
    pub w: i64,
    #[serde(default)]
    pub rw: i64,
    /// The partition's event time after the messages below `w`.
    pub event_time_ms: Option<i64>,
    /// Per traces partition, the highest offset first read there whose forward to this
    /// partition is applied.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub forwarded: BTreeMap<i32, i64>,
}

/// The offsets a checkpoint's watermark stands for, per stream (the next to read).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Watermarks {
    pub traces: i64,
    pub repartition: i64,
}

/// One record to write to the changelog, serialized by its writer: a checkpoint can hold
/// every session of a partition, and serializing and queueing 5,000 sessions' records took
/// 15-25 ms, a stall of the loop that reads traces.
#[derive(Debug, Clone, PartialEq)]
// Nearly every write is a session's: boxing it would allocate once more per session.
#[allow(clippy::large_enum_variant)]
pub enum ChangelogWrite {
    Session(SessionRecord),
    Checkpoint(CheckpointRecord),
}

impl ChangelogWrite {
    /// The record's key in the changelog.
    pub fn key(&self) -> String {
        match self {
            ChangelogWrite::Session(record) => {
                session_record_key(&record.pipeline_id, &record.session_id)
            }
            ChangelogWrite::Checkpoint(_) => CHECKPOINT_KEY.to_owned(),
        }
    }

    /// The record's value (JSON).
    pub fn value(&self) -> Vec<u8> {
        // Serializing plain data to a Vec cannot fail.
        match self {
            ChangelogWrite::Session(record) => serde_json::to_vec(record),
            ChangelogWrite::Checkpoint(record) => serde_json::to_vec(record),
        }
        .unwrap_or_default()
    }
}

/// A session's state after one message, as the journal keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct StateAfter {
    pub state: Option<SessionState>,
    pub next_segment: i32,
}

/// The journal of one partition between checkpoints.
#[derive(Debug, Default)]
pub struct PartitionJournal {
    /// Per session, its state after each unsettled message that touched it (by sequence).
    keys: HashMap<SessionKey, VecDeque<(i64, StateAfter)>>,
    /// Event time after each unsettled message.
    event_times: VecDeque<(i64, Option<i64>)>,
    base_event_time: Option<i64>,
    /// Forwards applied by unsettled messages: (sequence, first-read partition, offset).
    forwards: VecDeque<(i64, i32, i64)>,
    base_forwarded: BTreeMap<i32, i64>,
    /// Watermark (a sequence) of the last checkpoint written by this journal.
    checkpointed: Option<i64>,
}

impl PartitionJournal {
    /// The journal of a partition restored to `checkpoint` (`None`: nothing to restore).
    pub fn new(checkpoint: Option<&CheckpointRecord>) -> Self {
        PartitionJournal {
            base_event_time: checkpoint.and_then(|checkpoint| checkpoint.event_time_ms),
            base_forwarded: checkpoint
                .map(|checkpoint| checkpoint.forwarded.clone())
                .unwrap_or_default(),
            ..PartitionJournal::default()
        }
    }

    /// Records the state of `key` after the message at `sequence`.
    pub fn record_state(&mut self, sequence: i64, key: &SessionKey, after: StateAfter) {
        // Not `entry`: it would copy the key for every message, not just a session's first.
        match self.keys.get_mut(key) {
            Some(pending) => pending.push_back((sequence, after)),
            None => {
                self.keys
                    .insert(key.clone(), VecDeque::from([(sequence, after)]));
            }
        }
    }

    /// Records the partition's event time after the message at `sequence`.
    pub fn record_event_time(&mut self, sequence: i64, event_time_ms: Option<i64>) {
        self.event_times.push_back((sequence, event_time_ms));
    }

    /// Records that the message at `sequence` applied the forward first read at `offset` of
    /// traces partition `partition`.
    pub fn record_forward(&mut self, sequence: i64, partition: i32, offset: i64) {
        self.forwards.push_back((sequence, partition, offset));
    }

    /// Watermark of the last checkpoint written.
    pub fn checkpointed(&self) -> Option<i64> {
        self.checkpointed
    }

    /// Moves the partition's event time and applied forwards to watermark `w`.
    fn advance(&mut self, w: i64) {
        while self
            .event_times
            .front()
            .is_some_and(|(offset, _)| *offset < w)
        {
            if let Some((_, event_time)) = self.event_times.pop_front() {
                self.base_event_time = event_time;
            }
        }
        while let Some((_, partition, offset)) = self
            .forwards
            .front()
            .copied()
            .filter(|(sequence, ..)| *sequence < w)
        {
            self.forwards.pop_front();
            let highest = self.base_forwarded.entry(partition).or_insert(offset);
            *highest = (*highest).max(offset);
        }
    }

    /// The records of a checkpoint at watermark `w` (a sequence), which stands for the stream
    /// offsets `at`; nothing when `w` was checkpointed already. Call
    /// [`PartitionJournal::checkpoint_written`] once Kafka has them all.
    pub fn checkpoint(&mut self, w: i64, at: Watermarks) -> Vec<ChangelogWrite> {
        if self
            .checkpointed
            .is_some_and(|checkpointed| checkpointed >= w)
        {
            return Vec::new();
        }
        self.advance(w);
        let mut writes = Vec::with_capacity(self.keys.len() + 1);
        // One pass: a session whose state changed below `w` is written as of `w` (its state
        // after the last of those messages); one with nothing pending any more is fully
        // described by the window now, and forgotten.
        self.keys.retain(|key, pending| {
            let mut as_of_w = None;
            while let Some((_, after)) = pending.pop_front_if(|(sequence, _)| *sequence < w) {
                as_of_w = Some(after);
            }
            if let Some(after) = as_of_w {
                writes.push(ChangelogWrite::Session(SessionRecord {
                    w: at.traces,
                    rw: at.repartition,
                    pipeline_id: key.pipeline_id.to_string(),
                    session_id: key.session_id.clone(),
                    state: after.state,
                    next_segment: after.next_segment,
                    rf: self.base_forwarded.clone(),
                }));
            }
            !pending.is_empty()
        });
        writes.push(ChangelogWrite::Checkpoint(CheckpointRecord {
            w: at.traces,
            rw: at.repartition,
            event_time_ms: self.base_event_time,
            forwarded: self.base_forwarded.clone(),
        }));
        writes
    }

    /// Marks the checkpoint at `w` as durable.
    pub fn checkpoint_written(&mut self, w: i64) {
        self.checkpointed = Some(self.checkpointed.map_or(w, |previous| previous.max(w)));
    }

    /// Sessions with journal entries (for memory accounting in tests).
    pub fn num_keys(&self) -> usize {
        self.keys.len()
    }
}

/// What a partition's changelog holds, read back on assignment.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RestoredPartition {
    pub checkpoint: Option<CheckpointRecord>,
    /// Newest record per session.
    pub sessions: HashMap<SessionKey, SessionRecord>,
}

impl RestoredPartition {
    /// Applies one changelog record (in log order); undecodable records are skipped and
    /// reported.
    ///
    /// # Errors
    /// The record's JSON error, for the caller to count and log.
    pub fn apply(&mut self, key: &[u8], value: &[u8]) -> Result<(), serde_json::Error> {
        if key == CHECKPOINT_KEY.as_bytes() {
            let checkpoint: CheckpointRecord = serde_json::from_slice(value)?;
            // Both offsets only grow: a later checkpoint has neither smaller.
            if self
                .checkpoint
                .as_ref()
                .is_none_or(|current| (checkpoint.w, checkpoint.rw) >= (current.w, current.rw))
            {
                self.checkpoint = Some(checkpoint);
            }
            return Ok(());
        }
        let record: SessionRecord = serde_json::from_slice(value)?;
        let session_key = SessionKey {
            pipeline_id: record.pipeline_id.as_str().into(),
            session_id: record.session_id.clone(),
        };
        self.sessions.insert(session_key, record);
        Ok(())
    }

    /// Watermark of the traces topic below which every message was applied and acknowledged.
    pub fn checkpoint_w(&self) -> Option<i64> {
        self.checkpoint.as_ref().map(|checkpoint| checkpoint.w)
    }

    /// Whether the message at `offset` of `stream`, of session `key`, is already in the
    /// restored state. `first_read`: where a forward was first read.
    pub fn already_applied(
        &self,
        key: Option<&SessionKey>,
        (stream, offset): (Stream, i64),
        first_read: Option<Position>,
    ) -> bool {
        let below = |w: i64, rw: i64| match stream {
            Stream::Traces => offset < w,
            Stream::Repartition => offset < rw,
        };
        if self
            .checkpoint
            .as_ref()
            .is_some_and(|checkpoint| below(checkpoint.w, checkpoint.rw))
        {
            return true;
        }
        let forward_in = |record: &SessionRecord| {
            first_read
                .filter(|_| stream == Stream::Repartition)
                .is_some_and(|first_read| {
                    record
                        .rf
                        .get(&first_read.partition)
                        .is_some_and(|applied| first_read.offset <= *applied)
                })
        };
        key.and_then(|key| self.sessions.get(key))
            .is_some_and(|record| below(record.w, record.rw) || forward_in(record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sessionize::recent::RecentIds;

    fn key(session: &str) -> SessionKey {
        SessionKey {
            pipeline_id: "pipe".into(),
            session_id: session.into(),
        }
    }

    fn state(turns: i64) -> SessionState {
        SessionState {
            user_id: Some("u".into()),
            segment: 0,
            inferred: false,
            started_at_ms: 0,
            last_event_ms: turns * 1000,
            previous_turn_ms: turns * 1000,
            turns,
            tokens: turns * 10,
            cost: 0.0,
            latency_ms: 0.0,
            first_inference_id: "first".into(),
            last_inference_id: format!("t{turns}"),
            recent_ids: {
                let mut recent = RecentIds::default();
                recent.push(&format!("t{turns}"));
                recent
            },
            totals: None,
        }
    }

    /// A watermark of a partition that read only the traces topic (sequence = offset).
    fn at(w: i64) -> Watermarks {
        Watermarks {
            traces: w,
            repartition: 0,
        }
    }

    fn after(turns: i64) -> StateAfter {
        StateAfter {
            state: Some(state(turns)),
            next_segment: 0,
        }
    }

    fn decode(writes: &[ChangelogWrite]) -> RestoredPartition {
        let mut restored = RestoredPartition::default();
        for write in writes {
            restored
                .apply(write.key().as_bytes(), &write.value())
                .expect("record decodes");
        }
        restored
    }

    #[test]
    fn writes_state_as_of_the_watermark_not_the_newest() {
        let mut journal = PartitionJournal::new(None);
        journal.record_state(0, &key("s"), after(1));
        journal.record_event_time(0, Some(1000));
        journal.record_state(1, &key("s"), after(2));
        journal.record_event_time(1, Some(2000));
        let restored = decode(&journal.checkpoint(1, at(1)));
        assert_eq!(restored.checkpoint_w(), Some(1));
        assert_eq!(
            restored.checkpoint.as_ref().and_then(|c| c.event_time_ms),
            Some(1000)
        );
        let record = &restored.sessions[&key("s")];
        assert_eq!(record.w, 1);
        assert_eq!(record.state.as_ref().map(|state| state.turns), Some(1));
    }

    #[test]
    fn writes_only_sessions_that_changed_below_the_watermark() {
        let mut journal = PartitionJournal::new(None);
        journal.record_state(0, &key("a"), after(1));
        journal.record_state(1, &key("b"), after(1));
        let first = decode(&journal.checkpoint(1, at(1)));
        assert_eq!(first.sessions.len(), 1);
        journal.checkpoint_written(1);
        assert!(
            journal.checkpoint(1, at(1)).is_empty(),
            "checkpointed already"
        );
        let second = decode(&journal.checkpoint(2, at(2)));
        assert_eq!(second.sessions.keys().collect::<Vec<_>>(), [&key("b")]);
        assert_eq!(journal.num_keys(), 0, "nothing pending is kept");
    }

    #[test]
    fn closed_sessions_are_written_as_closed_with_their_watermark() {
        let mut journal = PartitionJournal::new(None);
        journal.record_state(
            4,
            &key("s"),
            StateAfter {
                state: None,
                next_segment: 2,
            },
        );
        let restored = decode(&journal.checkpoint(5, at(5)));
        let record = &restored.sessions[&key("s")];
        assert_eq!(
            (record.state.is_none(), record.next_segment, record.w),
            (true, 2, 5)
        );
    }

    #[test]
    fn replay_skips_messages_below_the_checkpoint_and_below_a_session_record() {
        let mut restored = RestoredPartition::default();
        let checkpoint = CheckpointRecord {
            w: 10,
            rw: 0,
            event_time_ms: None,
            forwarded: BTreeMap::new(),
        };
        restored
            .apply(
                CHECKPOINT_KEY.as_bytes(),
                &serde_json::to_vec(&checkpoint).expect("json"),
            )
            .expect("applies");
        let record = SessionRecord {
            w: 14,
            rw: 0,
            pipeline_id: "pipe".into(),
            session_id: "ahead".into(),
            state: Some(state(3)),
            next_segment: 0,
            rf: BTreeMap::new(),
        };
        restored
            .apply(
                changelog_key(&key("ahead")).as_bytes(),
                &serde_json::to_vec(&record).expect("json"),
            )
            .expect("applies");
        assert!(restored.already_applied(None, (Stream::Traces, 9), None));
        assert!(!restored.already_applied(None, (Stream::Traces, 10), None));
        assert!(restored.already_applied(Some(&key("ahead")), (Stream::Traces, 13), None));
        assert!(!restored.already_applied(Some(&key("ahead")), (Stream::Traces, 14), None));
        assert!(!restored.already_applied(Some(&key("other")), (Stream::Traces, 12), None));
    }

    #[test]
    fn a_forward_applied_out_of_order_is_known_by_where_it_was_first_read() {
        let checkpoint = CheckpointRecord {
            w: 0,
            rw: 3,
            event_time_ms: None,
            forwarded: BTreeMap::from([(1, 40)]),
        };
        // The session's record landed, its checkpoint record did not: it holds the forward
        // first read at offset 45 of partition 1, read at repartition offset 7, applied while
        // repartition offset 3 still waited.
        let record = SessionRecord {
            w: 0,
            rw: 3,
            pipeline_id: "pipe".into(),
            session_id: "s".into(),
            state: Some(state(2)),
            next_segment: 0,
            rf: BTreeMap::from([(1, 45)]),
        };
        assert!(record.is_ahead_of(&checkpoint), "the record holds more");
        let mut restored = RestoredPartition::default();
        for (key, value) in [
            (CHECKPOINT_KEY.to_owned(), serde_json::to_vec(&checkpoint)),
            (changelog_key(&key("s")), serde_json::to_vec(&record)),
        ] {
            restored
                .apply(key.as_bytes(), &value.expect("json"))
                .expect("applies");
        }
        let from_1 = |offset| {
            Some(Position {
                partition: 1,
                offset,
            })
        };
        let read = (Stream::Repartition, 7);
        assert!(restored.already_applied(Some(&key("s")), read, from_1(45)));
        assert!(!restored.already_applied(Some(&key("s")), read, from_1(46)));
        assert!(!restored.already_applied(Some(&key("other")), read, from_1(45)));
    }

    #[test]
    fn keys_of_different_id_splits_never_collide() {
        let one = SessionKey {
            pipeline_id: "a/b".into(),
            session_id: "c".into(),
        };
        let two = SessionKey {
            pipeline_id: "a".into(),
            session_id: "b/c".into(),
        };
        assert_ne!(changelog_key(&one), changelog_key(&two));
    }

    #[test]
    fn newest_checkpoint_wins_on_restore() {
        let mut restored = RestoredPartition::default();
        for w in [3, 7, 5] {
            let checkpoint = CheckpointRecord {
                w,
                rw: 0,
                event_time_ms: Some(w),
                forwarded: BTreeMap::new(),
            };
            restored
                .apply(
                    CHECKPOINT_KEY.as_bytes(),
                    &serde_json::to_vec(&checkpoint).expect("json"),
                )
                .expect("applies");
        }
        assert_eq!(restored.checkpoint_w(), Some(7));
    }
}

#[cfg(test)]
mod forward_tests {
    use super::*;

    #[test]
    fn checkpoints_carry_the_highest_forward_applied_below_the_watermark() {
        let restored = CheckpointRecord {
            w: 0,
            rw: 0,
            event_time_ms: None,
            forwarded: BTreeMap::from([(1, 40)]),
        };
        let mut journal = PartitionJournal::new(Some(&restored));
        journal.record_forward(0, 1, 41);
        journal.record_forward(1, 2, 7);
        journal.record_forward(2, 1, 42);
        let writes = journal.checkpoint(
            2,
            Watermarks {
                traces: 0,
                repartition: 2,
            },
        );
        let mut read = RestoredPartition::default();
        for write in &writes {
            read.apply(write.key().as_bytes(), &write.value())
                .expect("decodes");
        }
        let checkpoint = read.checkpoint.expect("checkpoint record");
        // Sequence 2 (offset 42) is not below the watermark yet.
        assert_eq!(checkpoint.forwarded, BTreeMap::from([(1, 41), (2, 7)]));
        assert_eq!(checkpoint.rw, 2);
    }
}
