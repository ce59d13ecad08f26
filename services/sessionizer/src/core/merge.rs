//! One partition's two input streams as one log: traces read from the traces topic where they
//! belong, and traces forwarded to the partition through the repartition topic.
//!
//! The core numbers every message of the partition with a *sequence* in the order it is
//! applied (`core::align` may hold a message back before applying it): session state, the
//! journal and the commit rule work on sequences exactly as they would on the offsets of a
//! single log. A sequence watermark turns into one offset per stream: the smallest offset of
//! that stream not yet below the watermark (held, or applied at or above it). A restart from
//! those offsets replays messages applied above the watermark too; the core recognises them
//! (a forward by its sender's position, `Owned::forwarded`; a trace read in place cannot be
//! applied before an earlier one of its partition that it is placed with).

pub use crate::source::Stream;
use std::collections::{BTreeSet, VecDeque};

/// Offsets to store per stream (the next to read); `None`: nothing read from that stream yet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamOffsets {
    pub traces: Option<i64>,
    pub repartition: Option<i64>,
}

impl StreamOffsets {
    fn get_mut(&mut self, stream: Stream) -> &mut Option<i64> {
        match stream {
            Stream::Traces => &mut self.traces,
            Stream::Repartition => &mut self.repartition,
        }
    }
}

/// Sequences of one partition's messages and the stream offsets behind them.
#[derive(Debug, Default)]
pub struct MergedLog {
    next_sequence: i64,
    /// Messages applied and not yet below a translated watermark: (sequence, stream and
    /// offset), in sequence order; a tick has no stream offset.
    unstored: VecDeque<(i64, Option<(Stream, i64)>)>,
    /// Offsets not below the last translated watermark: the unstored ones and those held.
    open: BTreeSet<(Stream, i64)>,
    /// Per stream, the offset after the newest message below the last translated watermark
    /// (the restored checkpoint's to begin with).
    below: StreamOffsets,
    /// The restored checkpoint's offsets: a message read below them is a replay of one
    /// applied before the checkpoint, so nothing is ever stored below them.
    floor: StreamOffsets,
}

impl MergedLog {
    /// A log whose first message gets sequence `first`. Sequences of a partition are never
    /// reused in a process, so an outcome of an earlier ownership finds nothing to settle in
    /// a later one.
    pub fn starting_at(first: i64) -> Self {
        MergedLog {
            next_sequence: first,
            ..MergedLog::default()
        }
    }

    /// The streams continue after `restored` (a checkpoint's offsets).
    pub fn continue_after(&mut self, restored: StreamOffsets) {
        self.below = restored;
        self.floor = restored;
    }

    /// The sequence the next message gets.
    pub fn next_sequence(&self) -> i64 {
        self.next_sequence
    }

    /// A message read and held back: its offset is not stored until it is applied and settled.
    pub fn hold(&mut self, stream: Stream, offset: i64) {
        self.open.insert((stream, offset));
    }

    /// The sequence of a message applied now (held before or not).
    pub fn push(&mut self, stream: Stream, offset: i64) -> i64 {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        self.unstored.push_back((sequence, Some((stream, offset))));
        self.open.insert((stream, offset));
        sequence
    }

    /// The sequence of something the partition does between messages (idle session closes):
    /// effects tracked on it hold the watermark back like a message's, and it stores no offset.
    pub fn push_tick(&mut self) -> i64 {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        self.unstored.push_back((sequence, None));
        sequence
    }

    /// The stream offsets equivalent to sequence watermark `sequence` (everything below it
    /// settled): per stream, the smallest offset held or applied at or above it, else the one
    /// after the newest below it. Watermarks only advance, so what is below is forgotten.
    pub fn offsets_at(&mut self, sequence: i64) -> StreamOffsets {
        while let Some((_, read)) = self
            .unstored
            .front()
            .copied()
            .filter(|(message_sequence, _)| *message_sequence < sequence)
        {
            self.unstored.pop_front();
            let Some((stream, offset)) = read else {
                continue;
            };
            self.open.remove(&(stream, offset));
            let below = self.below.get_mut(stream);
            *below = Some(below.map_or(offset + 1, |below| below.max(offset + 1)));
        }
        let mut offsets = self.below;
        for stream in [Stream::Traces, Stream::Repartition] {
            if let Some((_, offset)) = self
                .open
                .range((stream, i64::MIN)..=(stream, i64::MAX))
                .next()
            {
                let floor = *self.floor.get_mut(stream);
                *offsets.get_mut(stream) = Some(floor.map_or(*offset, |floor| floor.max(*offset)));
            }
        }
        offsets
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sequence_watermark_is_a_prefix_of_each_stream() {
        let mut log = MergedLog::starting_at(0);
        log.continue_after(StreamOffsets {
            traces: Some(10),
            repartition: None,
        });
        assert_eq!(log.push(Stream::Traces, 10), 0);
        assert_eq!(log.push(Stream::Repartition, 3), 1);
        assert_eq!(log.push(Stream::Traces, 11), 2);
        assert_eq!(log.push(Stream::Repartition, 4), 3);
        // Nothing settled: the restored position, and the first repartitioned message.
        assert_eq!(
            log.offsets_at(0),
            StreamOffsets {
                traces: Some(10),
                repartition: Some(3)
            }
        );
        // Sequences 0 and 1 settled: traces from 11, repartition from 4.
        assert_eq!(
            log.offsets_at(2),
            StreamOffsets {
                traces: Some(11),
                repartition: Some(4)
            }
        );
        // All settled: one past the newest of each.
        assert_eq!(
            log.offsets_at(4),
            StreamOffsets {
                traces: Some(12),
                repartition: Some(5)
            }
        );
    }

    #[test]
    fn a_tick_holds_the_watermark_and_stores_no_offset() {
        let mut log = MergedLog::starting_at(0);
        assert_eq!(log.push(Stream::Traces, 4), 0);
        assert_eq!(log.push_tick(), 1);
        assert_eq!(log.push(Stream::Traces, 5), 2);
        // The tick unsettled: the trace after it is not stored either.
        assert_eq!(
            log.offsets_at(1),
            StreamOffsets {
                traces: Some(5),
                repartition: None
            }
        );
        assert_eq!(
            log.offsets_at(2),
            StreamOffsets {
                traces: Some(5),
                repartition: None
            }
        );
        assert_eq!(
            log.offsets_at(3),
            StreamOffsets {
                traces: Some(6),
                repartition: None
            }
        );
    }

    #[test]
    fn a_stream_never_read_stores_nothing() {
        let mut log = MergedLog::starting_at(7);
        assert_eq!(log.push(Stream::Traces, 0), 7);
        assert_eq!(
            log.offsets_at(8),
            StreamOffsets {
                traces: Some(1),
                repartition: None
            }
        );
    }

    #[test]
    fn a_message_held_back_keeps_its_offset_and_those_after_it_unstored() {
        let mut log = MergedLog::starting_at(0);
        log.hold(Stream::Traces, 0);
        assert_eq!(log.push(Stream::Repartition, 5), 0);
        assert_eq!(log.push(Stream::Repartition, 3), 1);
        // Everything applied is settled, but traces offset 0 is still held, and repartition
        // offsets are stored from the smallest not below the watermark.
        assert_eq!(
            log.offsets_at(1),
            StreamOffsets {
                traces: Some(0),
                repartition: Some(3)
            }
        );
        assert_eq!(log.push(Stream::Traces, 0), 2);
        assert_eq!(
            log.offsets_at(3),
            StreamOffsets {
                traces: Some(1),
                repartition: Some(6)
            }
        );
    }
}
