//! Dead letters: messages and rows that cannot go further, with why and where from.
//!
//! A dead letter keeps the original bytes (the undecodable message, or the row Openlayer
//! refused) and carries headers a person or a replay tool can act on: `error.reason` (a
//! bounded code), `error.stage` (`decode` or `sink`), `error.message`, and the source topic,
//! partition and offset. Deterministic failures are not retried: redelivery cannot help.

use crate::batch::Origin;
use crate::source::kafka::{FIRST_READ_OFFSET_HEADER, FIRST_READ_PARTITION_HEADER};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

/// Longest `error.message` / response body kept in a header.
const MAX_MESSAGE_BYTES: usize = 4096;

/// Where a dead letter came from (a message of the traces topic) and why it stopped.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub reason: &'static str,
    pub stage: &'static str,
    pub message: String,
    /// What it settles once delivered, and where it was read (its `source.*` headers).
    pub origin: Origin,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    /// Response status when Openlayer refused the row.
    pub http_status: Option<u16>,
    pub pipeline_id: Option<String>,
}

fn truncated(text: &str) -> &str {
    if text.len() <= MAX_MESSAGE_BYTES {
        return text;
    }
    let mut end = MAX_MESSAGE_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Queues `letter`, a message of `source_topic`, on `topic`; the future resolves when Kafka
/// acknowledged it.
///
/// # Errors
/// When the producer refuses to enqueue (its buffer is full): the caller retries later.
pub fn send_dead_letter(
    producer: &FutureProducer,
    topic: &str,
    source_topic: &str,
    letter: &DeadLetter,
) -> Result<DeliveryFuture, rdkafka::error::KafkaError> {
    let partition = letter.origin.read_at.partition.to_string();
    let offset = letter.origin.read_at.offset.to_string();
    let status = letter.http_status.map(|status| status.to_string());
    let mut headers = OwnedHeaders::new_with_capacity(8)
        .insert(Header {
            key: "error.reason",
            value: Some(letter.reason),
        })
        .insert(Header {
            key: "error.stage",
            value: Some(letter.stage),
        })
        .insert(Header {
            key: "error.message",
            value: Some(truncated(&letter.message)),
        })
        .insert(Header {
            key: "source.topic",
            value: Some(source_topic),
        })
        .insert(Header {
            key: FIRST_READ_PARTITION_HEADER,
            value: Some(partition.as_str()),
        })
        .insert(Header {
            key: FIRST_READ_OFFSET_HEADER,
            value: Some(offset.as_str()),
        });
    if let Some(status) = &status {
        headers = headers.insert(Header {
            key: "http.status",
            value: Some(status.as_str()),
        });
    }
    if let Some(pipeline_id) = &letter.pipeline_id {
        headers = headers.insert(Header {
            key: "openlayer.pipeline_id",
            value: Some(pipeline_id.as_str()),
        });
    }
    let mut record = FutureRecord::to(topic)
        .payload(letter.payload.as_slice())
        .headers(headers);
    if let Some(key) = &letter.key {
        record = record.key(key.as_slice());
    }
    producer
        .send_result(record)
        .map_err(|(error, _record)| error)
}
