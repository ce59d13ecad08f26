//! The restore policy: what the pipeline does after a failed attempt at reading a partition's
//! session state back from the changelog. Pure, so the rule is property-tested without a
//! broker; the pipeline performs it (a fresh read after the backoff, or the end of the run).
//!
//! A broker that is down, restarting or slow is waited out for as long as it takes (the
//! partition stays paused and the service unready meanwhile); a changelog that is still
//! unknown after a few attempts is taken as deleted; what no wait can fix (no permission, a
//! corrupt record) ends the run at once, naming the partition and the cause.

use crate::source::changelog::FailureKind;
use std::time::Duration;

/// Bound of one attempt without progress: no record and no partition end for this long.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(20);
/// Attempts that may find the changelog unknown (a broker still loading its metadata after a
/// restart) before it counts as deleted.
pub const MISSING_TOPIC_ATTEMPTS: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// After a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreDecision {
    /// Read again, with a fresh consumer, after this long.
    RetryAfter(Duration),
    /// Stop: processing the partition without its state would renumber its sessions.
    GiveUp,
    /// Shutdown cancelled the read: nothing to do.
    Abandon,
}

/// The decision after attempt number `attempt` (1-based) failed with `kind`.
pub fn decide(kind: FailureKind, attempt: u32) -> RestoreDecision {
    match kind {
        FailureKind::Transient => RestoreDecision::RetryAfter(backoff(attempt)),
        FailureKind::Missing if attempt < MISSING_TOPIC_ATTEMPTS => {
            RestoreDecision::RetryAfter(backoff(attempt))
        }
        FailureKind::Missing | FailureKind::Permanent => RestoreDecision::GiveUp,
        FailureKind::Cancelled => RestoreDecision::Abandon,
    }
}

/// 1 s after the first failure, doubling up to 30 s.
pub fn backoff(attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1).min(16);
    FIRST_BACKOFF
        .saturating_mul(1 << doublings)
        .min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kinds() -> impl Strategy<Value = FailureKind> {
        prop_oneof![
            Just(FailureKind::Transient),
            Just(FailureKind::Missing),
            Just(FailureKind::Permanent),
            Just(FailureKind::Cancelled),
        ]
    }

    proptest! {
        #[test]
        fn a_broker_outage_is_waited_out_however_long(attempt in 1u32..=u32::MAX) {
            prop_assert!(matches!(
                decide(FailureKind::Transient, attempt),
                RestoreDecision::RetryAfter(_)
            ));
        }

        #[test]
        fn waits_are_bounded_and_never_shrink(attempt in 1u32..10_000) {
            let wait = backoff(attempt);
            prop_assert!(wait >= FIRST_BACKOFF && wait <= MAX_BACKOFF);
            prop_assert!(backoff(attempt + 1) >= wait);
        }

        #[test]
        fn only_permanent_or_persistently_missing_ends_the_run(
            kind in kinds(),
            attempt in 1u32..1_000,
        ) {
            let gives_up = decide(kind, attempt) == RestoreDecision::GiveUp;
            let expected = kind == FailureKind::Permanent
                || (kind == FailureKind::Missing && attempt >= MISSING_TOPIC_ATTEMPTS);
            prop_assert_eq!(gives_up, expected);
        }
    }

    #[test]
    fn backoff_doubles_from_one_second_to_thirty() {
        let waits: Vec<u64> = (1..=7).map(|attempt| backoff(attempt).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
    }

    #[test]
    fn a_cancelled_read_is_abandoned_not_retried() {
        assert_eq!(decide(FailureKind::Cancelled, 1), RestoreDecision::Abandon);
    }
}
