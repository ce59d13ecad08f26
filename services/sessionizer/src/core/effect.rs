//! What the pipeline core asks its IO loop to do, and the inputs the loop hands it.
//!
//! Every effect that waits for an outcome is answered with exactly one input: `Ship` with
//! [`super::Core::shipped`] (or [`super::Core::ship_lost`]), `DeadLetter` with
//! [`super::Core::dead_letter_delivered`], `ForwardUpdate` with
//! [`super::Core::update_forwarded`], `Repartition` with [`super::Core::repartitioned`],
//! `WriteCheckpoint` with
//! [`super::Core::checkpoint_written`], and `Restore` with [`super::Core::restored`] or
//! [`super::Core::restore_failed`]. The others are fire-and-forget.

use super::merge::{Stream, StreamOffsets};
use crate::batch::{Batch, Origin, Position};
use crate::sessionize::store::ChangelogWrite;
use crate::source::dlq::DeadLetter;
use bytes::Bytes;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use trace_model::{SessionSummary, TraceEvent};

/// A closed session's last row, to be marked as its final turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinalTurnUpdate {
    pub pipeline_id: String,
    pub inference_id: String,
    /// The message that closed the session (or the idle close's own sequence).
    pub origin: Origin,
}

/// One thing for the IO loop to do.
#[derive(Debug)]
pub enum Effect {
    /// Send the batch to Openlayer's data-stream API.
    Ship(Batch),
    /// Write a message or row that cannot go further to the dead-letter topic.
    DeadLetter(DeadLetter),
    /// Forward a trace read in the wrong partition to its session's partition of the
    /// repartition topic.
    Repartition(Forward),
    /// Tell every other partition of the repartition topic how far this partition's
    /// forwards have come (fire-and-forget, sent after the forwards queued before it).
    Marker(Marker),
    /// Produce a closed session's summary to the sessions topic; the message that closed the
    /// session (`origin`) settles once Kafka has it.
    ProduceSummary {
        summary: SessionSummary,
        origin: Origin,
    },
    /// Mark a closed session's last row as its final turn; `origin` settles once Openlayer
    /// accepted it.
    MarkFinalTurn(FinalTurnUpdate),
    /// Send a row update read from the traces topic to Openlayer.
    ForwardUpdate(Box<ForwardedUpdate>),
    /// Store `offset` (the next to read) of `partition` of `stream`'s topic; librdkafka
    /// commits stored offsets.
    StoreOffset {
        stream: Stream,
        partition: i32,
        offset: i64,
    },
    /// Write these changelog records: the state of a partition as of a watermark.
    WriteCheckpoint {
        checkpoint: CheckpointId,
        writes: Vec<ChangelogWrite>,
    },
    /// Stop fetching these partitions.
    Pause(Vec<i32>),
    /// Fetch these partitions again.
    Resume(Vec<i32>),
    /// Stop fetching these partitions of the traces topic only (their alignment holds
    /// enough); their forwards and markers keep coming.
    PauseTraces(Vec<i32>),
    /// Fetch these partitions of the traces topic again (the core sends it only for
    /// partitions not paused as a whole: librdkafka has one pause per partition).
    ResumeTraces(Vec<i32>),
    /// Read these partitions' session state back from the changelog.
    Restore(Vec<i32>),
    /// Stop reading these partitions' state and drop the messages held for them: they were
    /// revoked meanwhile.
    AbandonRestore(Vec<i32>),
}

/// Which checkpoint an outcome is about: the partition, its ownership (a partition revoked
/// and assigned again in the same process is a new ownership, whose checkpoints are its own),
/// and the watermark (a sequence) with the stream offsets it stores once written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointId {
    pub partition: i32,
    pub ownership: u64,
    pub watermark: i64,
    pub offsets: StreamOffsets,
    /// Wall clock when it was cut.
    pub cut_ms: i64,
}

/// A trace on its way to its session's partition. Its payload is forwarded unchanged; the
/// position it was first read at goes along (a header), so ids derived from it stay the same.
#[derive(Debug, Clone)]
pub struct Forward {
    /// The message it was read as: settled once Kafka has the forward; `read_at` and the
    /// Kafka timestamp go along.
    pub origin: Origin,
    /// The partition (of the repartition topic) its session belongs in.
    pub to_partition: i32,
    /// The session (else user) id: the record's key.
    pub key: String,
    pub payload: Vec<u8>,
    /// Why it was forwarded, a metric label: `other_partition` or `no_key`.
    pub reason: &'static str,
    /// Its order key (`core::align`): the running maximum of event times in the partition it
    /// was read in, up to it.
    pub order_key_ms: i64,
}

/// A partition's high watermark, as the consumer's statistics last reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HighWatermark {
    pub offset: i64,
    /// Wall clock of the statistics that reported it.
    pub at_ms: i64,
}

/// A partition's progress, announced to the partitions it forwards to (`core::align`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    /// The partition (of the traces topic) it is about.
    pub from: i32,
    /// No forward sent later has a smaller order key; `None`: nothing read yet.
    pub bound_ms: Option<i64>,
    /// Every record of that partition with a Kafka timestamp at or before it was read, and
    /// forwarded before this marker; `None`: nothing known yet.
    pub read_through_ms: Option<i64>,
    /// Which ownership of `from` sent it (unique per instance and assignment; `None` from a
    /// sender before epochs): a partition owned by the same instance that has read a marker of
    /// the current ownership has read every forward sent before that ownership began, and
    /// may follow the sender's progress directly (`Core::follow_local`).
    pub epoch: Option<u64>,
}

/// A row update read from the traces topic (the gateway's `PUT .../rows`). It is sent once
/// every message below it is settled, so it reaches Openlayer after the rows produced before
/// it (the gateway keys an update like its row, so they share a partition), and it settles its
/// own message when Openlayer accepted it or its dead letter is written.
#[derive(Debug, Clone)]
pub struct ForwardedUpdate {
    pub origin: Origin,
    pub pipeline_id: String,
    pub event: TraceEvent,
}

/// A message as the consumer handed it over.
#[derive(Debug, Clone, Copy)]
pub struct Received<'a> {
    pub stream: Stream,
    pub partition: i32,
    pub offset: i64,
    /// For a forwarded trace, where it was first read in the traces topic (its header).
    pub first_read: Option<Position>,
    /// For a forwarded trace, its order key (its header).
    pub order_key_ms: Option<i64>,
    /// A marker read from the repartition topic instead of a trace.
    pub marker: Option<Marker>,
    pub kafka_timestamp_ms: Option<i64>,
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
    /// The same payload in a shared buffer, when the IO loop has one: a trace the alignment
    /// holds undecoded keeps it rather than a copy.
    pub shared_payload: Option<&'a Bytes>,
}

/// The time an input happens at: the core has no clock of its own.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// For linger, checkpoint and idle-check intervals.
    pub instant: Instant,
    /// Wall clock in ms since the epoch, for idle sessions and lag.
    pub wall_ms: i64,
}

impl Now {
    /// The system clocks.
    pub fn system() -> Self {
        let wall_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| {
                i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
            });
        Now {
            instant: Instant::now(),
            wall_ms,
        }
    }
}
