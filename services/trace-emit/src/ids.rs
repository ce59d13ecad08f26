//! Random v4 UUIDs for traces and steps.
//!
//! Ids come from a generator kept per thread (rand's ChaCha12, the algorithm of its
//! `ThreadRng`, seeded from the OS): a call into the OS per id was a third of building a
//! trace, and one per 16 ids still a tenth. A `fork` copies that generator, so it remembers
//! the process it was seeded in, and a trace, when it starts, gives its process id (read once
//! per trace): in another process the generator is seeded from the OS again, and parent and
//! child never hand out the same ids. It is also seeded again every [`IDS_PER_SEED`] ids, as
//! `ThreadRng` is every 64 KiB: a descendant that got an exited process's id (pid reuse) and
//! still holds that process's generator repeats at most those. (A trace started before a fork
//! and finished in the child would still use its parent's process id; nothing does that.)

use rand::rngs::{StdRng, SysRng};
use rand::{Rng as _, SeedableRng as _};
use std::cell::RefCell;

/// Ids drawn from one seed: 64 KiB of output.
const IDS_PER_SEED: u32 = 4096;

/// A thread's generator: the process it was seeded in, and ids left before the next seed.
struct Generator {
    pid: u32,
    left: u32,
    rng: StdRng,
}

thread_local! {
    static GENERATOR: RefCell<Option<Generator>> = const { RefCell::new(None) };
}

/// The process that ids are drawn for: read once when a trace starts.
pub(crate) fn process() -> u32 {
    std::process::id()
}

/// 16 random bytes from this thread's generator for `pid`; `None` when the OS refuses a seed,
/// or once the thread's locals are gone (a trace finished in another local's destructor).
fn random_bytes(pid: u32) -> Option<[u8; 16]> {
    GENERATOR
        .try_with(|cell| {
            let mut generator = cell.try_borrow_mut().ok()?;
            let current = generator
                .as_mut()
                .filter(|generator| generator.pid == pid && generator.left > 0);
            let generator = match current {
                Some(generator) => generator,
                // First id of the thread, a fork copied the parent's generator, or the seed
                // is used up.
                None => generator.insert(Generator {
                    pid,
                    left: IDS_PER_SEED,
                    rng: StdRng::try_from_rng(&mut SysRng).ok()?,
                }),
            };
            generator.left -= 1;
            let mut bytes = [0; 16];
            generator.rng.fill_bytes(&mut bytes);
            Some(bytes)
        })
        .ok()
        .flatten()
}

/// A new random (version 4) UUID in its hyphenated lowercase form, for `pid` ([`process`]).
pub(crate) fn next_id(pid: u32) -> String {
    let id = match random_bytes(pid) {
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

    fn id_from(rng: &mut StdRng) -> String {
        let mut bytes = [0; 16];
        rng.fill_bytes(&mut bytes);
        uuid::Builder::from_random_bytes(bytes)
            .into_uuid()
            .hyphenated()
            .to_string()
    }

    /// Installs a generator in `pid` with `left` ids to go, and returns a copy of its state
    /// (what a fork leaves in the other process).
    fn install(pid: u32, left: u32) -> StdRng {
        let rng = StdRng::seed_from_u64(7);
        GENERATOR.set(Some(Generator { pid, left, rng }));
        StdRng::seed_from_u64(7)
    }

    fn seeded_in() -> Option<(u32, u32)> {
        GENERATOR.with_borrow(|generator| {
            generator
                .as_ref()
                .map(|generator| (generator.pid, generator.left))
        })
    }

    #[test]
    fn a_generator_seeded_in_another_process_is_seeded_again() {
        let pid = process();
        let mut parent = install(pid, IDS_PER_SEED);
        assert_eq!(
            next_id(pid),
            id_from(&mut parent),
            "the same process goes on"
        );
        let child = pid.wrapping_add(1);
        let in_child = next_id(child);
        assert_v4(&in_child);
        assert_ne!(
            in_child,
            id_from(&mut parent),
            "the child kept the parent's generator"
        );
        assert_eq!(seeded_in(), Some((child, IDS_PER_SEED - 1)));
        assert_ne!(next_id(child), id_from(&mut parent));
        assert_eq!(seeded_in(), Some((child, IDS_PER_SEED - 2)));
    }

    #[test]
    fn an_id_drawn_while_the_generator_is_borrowed_comes_from_the_os() {
        GENERATOR.with(|cell| {
            let _held = cell.borrow_mut();
            assert_v4(&new_id());
        });
    }

    #[test]
    fn a_generator_is_seeded_again_after_its_ids_per_seed() {
        let pid = process();
        let mut copy = install(pid, 1);
        assert_eq!(next_id(pid), id_from(&mut copy), "the last id of the seed");
        assert_eq!(seeded_in(), Some((pid, 0)));
        assert_ne!(next_id(pid), id_from(&mut copy), "a used-up seed went on");
        assert_eq!(seeded_in(), Some((pid, IDS_PER_SEED - 1)));
    }
}
