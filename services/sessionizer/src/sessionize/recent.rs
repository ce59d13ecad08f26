//! The inference ids of a session's latest turns, so that a trace produced again is not
//! numbered as a new turn: the Collector path assembles and produces again what it shipped
//! since its last commit point after a crash, and a client retries a request whose traces
//! Kafka had in part. The copy comes after the original, in the same partition, within
//! moments; it carries the same inference id.
//!
//! Kept as 64-bit hashes (FNV-1a, stable across processes, as the changelog needs), newest
//! first: 64 bytes per open session, and a false match only at random 64-bit collisions.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// How many of a session's latest turns are remembered. A copy further back (more turns of
/// its session in between) is numbered as a new turn.
pub const RECENT_TURNS: usize = 8;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecentIds {
    /// Newest first; 0 is an empty slot (no id hashes to 0, see [`hash`]).
    hashes: [u64; RECENT_TURNS],
}

impl RecentIds {
    pub fn contains(&self, inference_id: &str) -> bool {
        let hash = hash(inference_id);
        self.hashes.contains(&hash)
    }

    /// Remembers `inference_id` as the newest, forgetting the oldest.
    pub fn push(&mut self, inference_id: &str) {
        self.hashes.copy_within(..RECENT_TURNS - 1, 1);
        self.hashes[0] = hash(inference_id);
    }

    pub fn is_empty(&self) -> bool {
        self.hashes[0] == 0
    }
}

/// FNV-1a of the id, never 0.
fn hash(inference_id: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in inference_id.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash.max(1)
}

/// In the changelog: the hashes held, newest first.
impl Serialize for RecentIds {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.hashes.iter().take_while(|hash| **hash != 0))
    }
}

impl<'de> Deserialize<'de> for RecentIds {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let held = Vec::<u64>::deserialize(deserializer)?;
        let mut recent = RecentIds::default();
        for (slot, hash) in recent.hashes.iter_mut().zip(held) {
            *slot = hash;
        }
        Ok(recent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_the_latest_turns_only() {
        let mut recent = RecentIds::default();
        assert!(recent.is_empty());
        assert!(!recent.contains(""));
        for turn in 0..=RECENT_TURNS {
            recent.push(&format!("inference-{turn}"));
        }
        assert!(!recent.contains("inference-0"), "pushed out");
        for turn in 1..=RECENT_TURNS {
            assert!(recent.contains(&format!("inference-{turn}")), "{turn}");
        }
        assert!(!recent.contains("inference-99"));
    }

    #[test]
    fn survives_the_changelog() {
        let mut recent = RecentIds::default();
        recent.push("a");
        recent.push("b");
        let json = serde_json::to_string(&recent).expect("serializes");
        assert_eq!(json.matches(',').count(), 1, "only the held hashes: {json}");
        let restored: RecentIds = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(restored, recent);
        let empty: RecentIds = serde_json::from_str("[]").expect("deserializes");
        assert!(empty.is_empty());
    }
}
