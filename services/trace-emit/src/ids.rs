//! Random v4 UUIDs for traces and steps.
//!
//! Ids come from a generator kept per thread (rand's ChaCha12, the algorithm of its
//! `ThreadRng`, seeded from the OS): a call into the OS per id was a third of building a
//! trace, and one per 16 ids still a tenth. A `fork` copies that generator, so it remembers the
//! process it was seeded in, and a trace, when it starts, gives its process id (read once per
//! trace): in another process the generator is seeded from the OS again, and parent and child
//! never hand out the same ids. (A trace started before a fork and finished in the child would
//! still use its parent's process id; nothing does that.)

use rand::rngs::{StdRng, SysRng};
use rand::{Rng as _, SeedableRng as _};
use std::cell::RefCell;

thread_local! {
    /// This thread's generator and the process it was seeded in.
    static GENERATOR: RefCell<Option<(u32, StdRng)>> = const { RefCell::new(None) };
}

/// The process that ids are drawn for: read once when a trace starts.
pub(crate) fn process() -> u32 {
    std::process::id()
}

/// A new random (version 4) UUID in its hyphenated lowercase form, for `pid` ([`process`]).
pub(crate) fn next_id(pid: u32) -> String {
    let bytes = GENERATOR.with_borrow_mut(|generator| {
        if generator
            .as_ref()
            .is_none_or(|(seeded_in, _)| *seeded_in != pid)
        {
            // First id of the thread, or a fork copied the parent's generator.
            *generator = Some((pid, StdRng::try_from_rng(&mut SysRng).ok()?));
        }
        let mut bytes = [0; 16];
        generator.as_mut()?.1.fill_bytes(&mut bytes);
        Some(bytes)
    });
    let id = match bytes {
        Some(bytes) => uuid::Builder::from_random_bytes(bytes).into_uuid(),
        // As `Uuid::new_v4`, which draws from the OS again (and panics if it still refuses).
        None => uuid::Uuid::new_v4(),
    };
    let mut text = [0; uuid::fmt::Hyphenated::LENGTH];
    String::from(&*id.hyphenated().encode_lower(&mut text))
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
        for _ in 0..100 {
            let id = new_id();
            assert_v4(&id);
            assert!(seen.insert(id), "an id came twice");
        }
    }

    #[test]
    fn a_generator_seeded_in_another_process_is_seeded_again() {
        let pid = process();
        let id_from = |rng: &mut StdRng| {
            let mut bytes = [0; 16];
            rng.fill_bytes(&mut bytes);
            uuid::Builder::from_random_bytes(bytes)
                .into_uuid()
                .hyphenated()
                .to_string()
        };
        // Two copies of one state, as a fork leaves in parent and child.
        let mut parent = StdRng::seed_from_u64(7);
        GENERATOR.set(Some((pid, StdRng::seed_from_u64(7))));
        assert_eq!(
            next_id(pid),
            id_from(&mut parent),
            "the same process goes on"
        );
        let in_child = next_id(pid.wrapping_add(1));
        assert_v4(&in_child);
        assert_ne!(
            in_child,
            id_from(&mut parent),
            "the child kept the parent's generator"
        );
        assert_ne!(next_id(pid.wrapping_add(1)), id_from(&mut parent));
    }
}
