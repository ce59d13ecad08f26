//! Which partition a trace belongs in: one fixed function that every producer of this project
//! uses and that the sessionizer checks every trace against.
//!
//! The function is Kafka's Java default partitioner for keyed records, so Java and KafkaJS
//! producers (and librdkafka's `partitioner=murmur2_random`) put a trace where it belongs
//! without knowing about us: `(murmur2(key) & 0x7fffffff) % partitions`, with the key the
//! trace's session id, else its user id (the key the producer helpers write).

use crate::record::TraceEvent;

/// The routing key of a trace: its session id, else its user id (for inferred sessions);
/// `None` for a trace with neither, which has no session to keep together.
pub fn route_key(event: &TraceEvent) -> Option<&str> {
    route_key_of(event.session_id.as_deref(), event.user_id.as_deref())
}

/// The routing key of a trace with these ids (see [`route_key`]).
pub fn route_key_of<'a>(session_id: Option<&'a str>, user_id: Option<&'a str>) -> Option<&'a str> {
    session_id.or(user_id).filter(|key| !key.is_empty())
}

/// The partition, of `num_partitions`, that records keyed `key` belong in.
///
/// # Panics
/// When `num_partitions` is not positive (a topic always has at least one partition).
pub fn partition_for(key: &[u8], num_partitions: i32) -> i32 {
    assert!(num_partitions > 0, "a topic has at least one partition");
    // Kafka's `Utils.toPositive`: clears the sign bit rather than taking the absolute value.
    let positive = murmur2(key) & 0x7fff_ffff;
    (positive % num_partitions as u32) as i32
}

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`), seed `0x9747b28c`.
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len();
    // Java computes in 32-bit ints: the length wraps the same way.
    let mut h = SEED ^ (length as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kafka's own test vectors (`UtilsTest.testMurmur2`), as Java's signed ints.
    #[test]
    fn murmur2_matches_kafka() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (input, expected) in cases {
            assert_eq!(
                murmur2(input) as i32,
                expected,
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn partition_clears_the_sign_bit_like_java() {
        // murmur2("21") is negative as a Java int: toPositive, not abs.
        let hash = murmur2(b"21");
        assert!((hash as i32) < 0);
        assert_eq!(partition_for(b"21", 7), ((hash & 0x7fff_ffff) % 7) as i32);
        for partitions in 1..40 {
            let partition = partition_for(b"session-42", partitions);
            assert!((0..partitions).contains(&partition));
        }
    }

    #[test]
    fn route_key_prefers_the_session_then_the_user() {
        let mut event: TraceEvent =
            serde_json::from_str(r#"{"timestamp_ms": 1, "name": "chat"}"#).expect("trace");
        assert_eq!(route_key(&event), None);
        event.user_id = Some("user-1".into());
        assert_eq!(route_key(&event), Some("user-1"));
        event.session_id = Some("session-1".into());
        assert_eq!(route_key(&event), Some("session-1"));
    }
}
