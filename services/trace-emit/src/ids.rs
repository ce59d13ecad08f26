//! Random v4 UUIDs for traces and steps.
//!
//! Ids come from OS randomness drawn [`IDS_PER_DRAW`] ids at a time into a buffer kept per
//! thread: one call per id was a third of building a trace. A `fork` copies that buffer, so
//! the buffer remembers the process it was drawn in, and a trace, when it starts, gives its
//! process id (read once per trace): a buffer drawn in another process is thrown away, and
//! parent and child never hand out the same ids. (A trace started before a fork and finished
//! in the child would still use its parent's process id; nothing does that.)

use std::cell::RefCell;

/// Ids one draw from the OS covers.
const IDS_PER_DRAW: usize = 16;
const ID_BYTES: usize = 16;

struct Pool {
    /// The process the bytes were drawn in.
    pid: u32,
    random: [u8; IDS_PER_DRAW * ID_BYTES],
    next: usize,
}

thread_local! {
    static POOL: RefCell<Pool> = const {
        RefCell::new(Pool { pid: 0, random: [0; IDS_PER_DRAW * ID_BYTES], next: IDS_PER_DRAW * ID_BYTES })
    };
}

/// The process that ids are drawn for: read once when a trace starts.
pub(crate) fn process() -> u32 {
    std::process::id()
}

/// A new random (version 4) UUID in its hyphenated lowercase form, for `pid` ([`process`]).
pub(crate) fn next_id(pid: u32) -> String {
    let bytes = POOL.with_borrow_mut(|pool| {
        if pool.pid != pid || pool.next == pool.random.len() {
            getrandom::fill(&mut pool.random).ok()?;
            pool.pid = pid;
            pool.next = 0;
        }
        let mut bytes = [0; ID_BYTES];
        bytes.copy_from_slice(&pool.random[pool.next..pool.next + ID_BYTES]);
        pool.next += ID_BYTES;
        Some(bytes)
    });
    match bytes {
        Some(bytes) => uuid::Builder::from_random_bytes(bytes).into_uuid(),
        // As `Uuid::new_v4`, which draws again (and panics if the OS still refuses).
        None => uuid::Uuid::new_v4(),
    }
    .hyphenated()
    .to_string()
}

/// One id outside any trace.
pub(crate) fn new_id() -> String {
    next_id(process())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn assert_v4(id: &str) {
        assert_eq!(id.len(), uuid::fmt::Hyphenated::LENGTH);
        assert_eq!(id, id.to_lowercase());
        let parsed = uuid::Uuid::parse_str(id).expect("uuid");
        assert_eq!(parsed.get_version_num(), 4);
        assert_eq!(parsed.get_variant(), uuid::Variant::RFC4122);
    }

    #[test]
    fn ids_are_hyphenated_lowercase_version_4_uuids_and_never_repeat() {
        let mut seen = HashSet::new();
        for _ in 0..IDS_PER_DRAW * 3 + 1 {
            let id = new_id();
            assert_v4(&id);
            assert!(seen.insert(id), "an id came twice");
        }
    }

    #[test]
    fn a_buffer_drawn_in_another_process_is_drawn_again() {
        let pid = process();
        let first = next_id(pid);
        // What a forked child sees: the parent's buffer, under its own process id.
        let copied = POOL.with_borrow(|pool| pool.random);
        let in_child = next_id(pid.wrapping_add(1));
        assert_v4(&in_child);
        assert_ne!(in_child, first);
        let fresh = POOL.with_borrow(|pool| pool.random);
        assert_ne!(copied, fresh, "the child kept the parent's random bytes");
    }
}
