//! Messages as the IO loop keeps them once read: what the core needs of a record (its
//! position, timestamp, key, payload and repartition headers), with key and payload copied
//! into chunks shared by the messages of one partition rather than into an allocation each.
//!
//! Why: with repartitioning, a backlog's read-ahead traces wait in the partition group by the
//! tens of thousands. Held as `OwnedMessage`s (payload, key, topic name and headers, each its
//! own allocation) they fragmented the heap, which kept growing into fresh pages: clearing
//! them was a tenth of the process's CPU in a profile, with repartitioning on only. A
//! partition's messages leave in the order they came (the group, the restore hold and the
//! alignment's lane of the partition's own traces, which keeps their payloads, are FIFO per
//! partition), so a chunk is released soon after its last message is done with: what one
//! message keeps alive is at most what its partition read after it, forwards included. Each
//! partition read keeps its current chunk (64 KiB) between reads.

use crate::source::Stream;
use crate::source::repartition::{ForwardHeaders, forward_headers};
use bytes::{Bytes, BytesMut};
use rdkafka::message::Message;
use std::collections::HashMap;

/// Bytes a partition's chunk holds: a few dozen traces.
const CHUNK_BYTES: usize = 64 * 1024;

/// A payload larger than this gets an allocation of its own rather than most of a chunk.
const LARGE_BYTES: usize = CHUNK_BYTES / 4;

/// A record read from the traces or the repartition topic.
#[derive(Debug, Clone)]
pub struct ReadMessage {
    pub stream: Stream,
    pub partition: i32,
    pub offset: i64,
    /// The record's Kafka timestamp, when it has one.
    pub timestamp_ms: Option<i64>,
    /// The repartition topic's headers (default for the traces topic, which has none of ours).
    pub headers: ForwardHeaders,
    key: Option<Bytes>,
    payload: Bytes,
}

impl ReadMessage {
    pub fn key(&self) -> Option<&[u8]> {
        self.key.as_deref()
    }

    /// The payload (empty for a record without one, a tombstone).
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The payload as its shared buffer, to be kept without a copy.
    pub fn shared_payload(&self) -> &Bytes {
        &self.payload
    }
}

/// Copies read records out of librdkafka's buffers, one run of chunks per partition.
#[derive(Debug, Default)]
pub struct Reader {
    chunks: HashMap<(Stream, i32), BytesMut>,
}

impl Reader {
    /// `message`, read from `stream`, as the loop keeps it.
    pub fn read(&mut self, message: &impl Message, stream: Stream) -> ReadMessage {
        let partition = message.partition();
        let headers = match stream {
            Stream::Traces => ForwardHeaders::default(),
            Stream::Repartition => forward_headers(message),
        };
        let chunk = self.chunks.entry((stream, partition)).or_default();
        // Room for both first: a chunk is reused in place only when nothing read into it is
        // alive, and the key copied into it would be.
        let payload_len = message.payload().map_or(0, <[u8]>::len);
        make_room(
            chunk,
            message.key().map_or(0, <[u8]>::len)
                + if payload_len > LARGE_BYTES {
                    0
                } else {
                    payload_len
                },
        );
        ReadMessage {
            stream,
            partition,
            offset: message.offset(),
            timestamp_ms: message.timestamp().to_millis(),
            headers,
            key: message.key().map(|key| copy(chunk, key)),
            payload: copy(chunk, message.payload().unwrap_or_default()),
        }
    }

    /// Forgets the chunks of partitions no longer owned (what was read from them may still be
    /// alive; it keeps its chunk).
    pub fn forget(&mut self, partitions: &[i32]) {
        self.chunks
            .retain(|(_, partition), _| !partitions.contains(partition));
    }
}

/// `bytes` copied into `chunk`: where the chunk has room, or into a fresh one (the current
/// one is reused in place when nothing read into it is alive any more).
fn copy(chunk: &mut BytesMut, bytes: &[u8]) -> Bytes {
    if bytes.len() > LARGE_BYTES {
        return Bytes::copy_from_slice(bytes);
    }
    make_room(chunk, bytes.len());
    chunk.extend_from_slice(bytes);
    chunk.split().freeze()
}

/// Makes room for `len` bytes in `chunk`, in a fresh chunk if need be.
fn make_room(chunk: &mut BytesMut, len: usize) {
    if chunk.capacity() < len {
        chunk.reserve(CHUNK_BYTES.max(len));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::Timestamp;
    use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};

    fn message(partition: i32, offset: i64, payload: &[u8]) -> OwnedMessage {
        OwnedMessage::new(
            Some(payload.to_vec()),
            Some(format!("key-{offset}").into_bytes()),
            "traces".to_owned(),
            Timestamp::CreateTime(1_000 + offset),
            partition,
            offset,
            None,
        )
    }

    #[test]
    fn a_read_message_keeps_what_was_read_after_its_chunk_moves_on() {
        let mut reader = Reader::default();
        // Two partitions, payloads of 100 to 999 bytes: many chunks each.
        let payloads: Vec<Vec<u8>> = (0..2_000u16)
            .map(|n| vec![(n % 251) as u8; 100 + usize::from(n % 900)])
            .collect();
        let read: Vec<ReadMessage> = (0i64..)
            .zip(&payloads)
            .map(|(offset, payload)| {
                reader.read(
                    &message(i32::from(offset % 2 == 0), offset, payload),
                    Stream::Traces,
                )
            })
            .collect();
        for ((offset, read), payload) in (0i64..).zip(&read).zip(&payloads) {
            assert_eq!(read.payload(), payload.as_slice());
            assert_eq!(read.key(), Some(format!("key-{offset}").as_bytes()));
            assert_eq!(read.partition, i32::from(offset % 2 == 0));
            assert_eq!(read.offset, offset);
            assert_eq!(read.timestamp_ms, Some(1_000 + offset));
            assert_eq!(read.headers, ForwardHeaders::default());
        }
    }

    /// Whether a read into partition 0, after `first` (kept alive or not), starts the chunk
    /// `first` started.
    fn chunk_reused(keep_first_alive: bool) -> bool {
        let mut reader = Reader::default();
        let payload = vec![1u8; 1000];
        let first = reader.read(&message(0, 0, &payload), Stream::Traces);
        let start = first.key().map(<[u8]>::as_ptr);
        let kept = keep_first_alive.then_some(first);
        let reused = (1..)
            .take(CHUNK_BYTES / 1000 + 2)
            .map(|offset| reader.read(&message(0, offset, &payload), Stream::Traces))
            .any(|read| read.key().map(<[u8]>::as_ptr) == start);
        drop(kept);
        reused
    }

    #[test]
    fn a_chunk_is_reused_once_nothing_read_into_it_is_alive_and_not_before() {
        assert!(chunk_reused(false));
        assert!(!chunk_reused(true));
    }

    #[test]
    fn a_payload_larger_than_a_chunk_is_copied_whole() {
        let mut reader = Reader::default();
        let large = vec![7u8; CHUNK_BYTES * 3 + 5];
        let small = reader.read(&message(0, 0, b"small"), Stream::Traces);
        let read = reader.read(&message(0, 1, &large), Stream::Traces);
        assert_eq!(read.payload(), large.as_slice());
        assert_eq!(small.payload(), b"small");
    }

    #[test]
    fn a_message_without_payload_reads_as_empty_and_one_without_key_as_none() {
        let mut reader = Reader::default();
        let message = OwnedMessage::new(
            None,
            None,
            "traces".to_owned(),
            Timestamp::NotAvailable,
            0,
            3,
            None,
        );
        let read = reader.read(&message, Stream::Traces);
        assert_eq!(read.payload(), b"");
        assert_eq!(read.key(), None);
        assert_eq!(read.timestamp_ms, None);
    }

    #[test]
    fn the_repartition_topics_headers_are_read_and_the_traces_topics_ignored() {
        let headers = OwnedHeaders::new().insert(Header {
            key: crate::source::repartition::ORDER_KEY_HEADER,
            value: Some("42"),
        });
        let message = OwnedMessage::new(
            Some(b"payload".to_vec()),
            None,
            "repartition".to_owned(),
            Timestamp::CreateTime(5),
            1,
            9,
            Some(headers),
        );
        let mut reader = Reader::default();
        let forwarded = reader.read(&message, Stream::Repartition);
        assert_eq!(forwarded.headers.order_key_ms, Some(42));
        assert_eq!(forwarded.stream, Stream::Repartition);
        let read = reader.read(&message, Stream::Traces);
        assert_eq!(read.headers, ForwardHeaders::default());
    }
}
