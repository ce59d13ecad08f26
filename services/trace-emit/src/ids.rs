//! Random v4 UUIDs for traces and steps, without a system call each.
//!
//! `Uuid::new_v4` asks the kernel for randomness on every call; a trace with three steps
//! needs four ids, and those calls were a visible share of the request path. Ids only need
//! to be unique, not secret, so each thread seeds a SplitMix64 generator once from the OS.

use std::cell::Cell;

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    let mut seed = [0u8; 8];
    seed.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(seed)
}

/// SplitMix64 (Steele, Lea, Flood 2014): passes BigCrush, one add and three mixes per value.
fn next_u64() -> u64 {
    STATE.with(|state| {
        let next = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        state.set(next);
        let mut mixed = next;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        mixed ^ (mixed >> 31)
    })
}

/// A new random (version 4) UUID in its hyphenated lowercase form.
pub(crate) fn new_id() -> String {
    let mut random = [0u8; 16];
    random[..8].copy_from_slice(&next_u64().to_le_bytes());
    random[8..].copy_from_slice(&next_u64().to_le_bytes());
    let uuid = uuid::Builder::from_random_bytes(random).into_uuid();
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid.hyphenated().encode_lower(&mut text).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_version_4_uuids_and_do_not_repeat() {
        let ids: HashSet<String> = (0..10_000).map(|_| new_id()).collect();
        assert_eq!(ids.len(), 10_000);
        for id in ids.iter().take(100) {
            let parsed = uuid::Uuid::parse_str(id).expect("uuid");
            assert_eq!(parsed.get_version_num(), 4);
        }
    }

    #[test]
    fn threads_draw_different_ids() {
        let other = std::thread::spawn(new_id).join().expect("thread");
        assert_ne!(other, new_id());
    }
}
