//! What a revoke waits for before its partitions go to their next owner: the changelog
//! checkpoints of those partitions that this process queued, or is still queueing.
//!
//! Why: the next owner reads a partition's changelog once the revoke is over, and the newest
//! record of a key wins. A checkpoint of this process still in its producer then would land
//! after the next owner's own records of the same sessions, and the restore after that (the
//! next handover, a restart) would read this process's older state and number turns again.
//! The revoke hook runs inside the consumer's poll, on the pipeline's task, so it must not
//! wait for the pipeline: checkpoints are queued on blocking threads (`pipeline::perform`)
//! and delivered by librdkafka's own threads, neither of which needs it.

use prometheus::IntCounter;
use rdkafka::producer::{FutureProducer, Producer};
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// The longest a revoke waits: a healthy broker acknowledges a checkpoint within
/// milliseconds, and the group's next round waits for this member meanwhile.
pub const HANDOVER_TIMEOUT: Duration = Duration::from_secs(5);

/// The producer of checkpoints (of nothing else, so that a revoke waits for checkpoints only),
/// the changelog it writes, and the checkpoints being queued on it.
#[derive(Clone)]
pub struct Handover {
    queueing: Queueings,
    producer: FutureProducer,
    changelog: String,
    /// `sessionizer_handovers_undelivered_total`: waits that ended before every checkpoint
    /// was delivered, for an alert rather than a log line only.
    undelivered: IntCounter,
}

impl std::fmt::Debug for Handover {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Handover")
            .field("changelog", &self.changelog)
            .field("queueing", &self.queueing)
            .finish_non_exhaustive()
    }
}

/// Why a revoke stopped waiting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandoverError {
    #[error("a checkpoint of partitions {0:?} was still being queued")]
    StillQueueing(Vec<i32>),
    #[error("the producer did not deliver every queued record")]
    NotDelivered(#[source] rdkafka::error::KafkaError),
}

impl Handover {
    /// `producer` writes checkpoints to `changelog`, and nothing else; `undelivered` counts
    /// the waits that ended without them.
    pub fn new(producer: FutureProducer, changelog: String, undelivered: IntCounter) -> Self {
        Handover {
            queueing: Queueings::default(),
            producer,
            changelog,
            undelivered,
        }
    }

    /// Where checkpoints are queued.
    pub fn producer(&self) -> &FutureProducer {
        &self.producer
    }

    /// The changelog topic.
    pub fn changelog(&self) -> &str {
        &self.changelog
    }

    /// Marks a checkpoint of `partition` as being queued until the guard is dropped (once
    /// every record of it is in the producer, or it gave up).
    #[must_use]
    pub fn queueing(&self, partition: i32) -> Queueing {
        self.queueing.start(partition)
    }

    /// Waits, at most `timeout`, until no checkpoint of `partitions` is being queued and the
    /// producer delivered everything queued on it; counts a wait that ended otherwise.
    ///
    /// # Errors
    /// The wait ran out, or the producer failed to deliver.
    pub fn wait(&self, partitions: &[i32], timeout: Duration) -> Result<(), HandoverError> {
        if partitions.is_empty() {
            return Ok(());
        }
        let deadline = Instant::now() + timeout;
        let waited = self
            .queueing
            .wait(partitions, deadline)
            .map_err(HandoverError::StillQueueing)
            .and_then(|()| {
                self.producer
                    .flush(deadline.saturating_duration_since(Instant::now()))
                    .map_err(HandoverError::NotDelivered)
            });
        if waited.is_err() {
            self.undelivered.inc();
        }
        waited
    }
}

/// Checkpoints being queued, per partition.
#[derive(Clone, Default)]
struct Queueings(Arc<Counts>);

#[derive(Default)]
struct Counts {
    per_partition: Mutex<HashMap<i32, usize>>,
    queued: Condvar,
}

impl std::fmt::Debug for Queueings {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_map()
            .entries(self.0.counts().iter())
            .finish()
    }
}

impl Counts {
    fn counts(&self) -> MutexGuard<'_, HashMap<i32, usize>> {
        self.per_partition
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Queueings {
    fn start(&self, partition: i32) -> Queueing {
        *self.0.counts().entry(partition).or_default() += 1;
        Queueing {
            counts: Arc::clone(&self.0),
            partition,
        }
    }

    /// Waits until no checkpoint of `partitions` is being queued, or `deadline`; `Err` names
    /// those still being queued.
    fn wait(&self, partitions: &[i32], deadline: Instant) -> Result<(), Vec<i32>> {
        let mut counts = self.0.counts();
        loop {
            let pending: Vec<i32> = partitions
                .iter()
                .copied()
                .filter(|partition| counts.contains_key(partition))
                .collect();
            if pending.is_empty() {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(pending);
            }
            counts = self
                .0
                .queued
                .wait_timeout(counts, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// A checkpoint being queued ([`Handover::queueing`]).
pub struct Queueing {
    counts: Arc<Counts>,
    partition: i32,
}

impl std::fmt::Debug for Queueing {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Queueing")
            .field("partition", &self.partition)
            .finish_non_exhaustive()
    }
}

impl Drop for Queueing {
    fn drop(&mut self) {
        let mut counts = self.counts.counts();
        if let Some(count) = counts.get_mut(&self.partition) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.partition);
            }
        }
        drop(counts);
        self.counts.queued.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn soon() -> Instant {
        Instant::now() + Duration::from_millis(20)
    }

    #[test]
    fn waits_until_the_partitions_checkpoints_are_queued() {
        let queueings = Queueings::default();
        let revoked = queueings.start(3);
        let other = queueings.start(4);
        let (done, outcome) = std::sync::mpsc::channel();
        {
            let queueings = queueings.clone();
            // A deadline far beyond the test's patience: only the drop below can end the wait.
            let deadline = Instant::now() + Duration::from_secs(600);
            std::thread::spawn(move || done.send(queueings.wait(&[3], deadline)));
        }
        assert!(
            outcome.recv_timeout(Duration::from_millis(50)).is_err(),
            "a checkpoint of 3 is being queued"
        );
        drop(revoked);
        assert_eq!(
            outcome.recv_timeout(Duration::from_secs(10)),
            Ok(Ok(())),
            "woken once 3's checkpoint is queued; 4's is not waited for"
        );
        drop(other);
    }

    #[test]
    fn counts_the_waits_that_end_without_the_checkpoints() {
        let cluster =
            rdkafka::mocking::MockCluster::<rdkafka::producer::DefaultProducerContext>::new(1)
                .expect("a mock cluster");
        let producer: FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .create()
            .expect("a producer");
        let undelivered = IntCounter::new("undelivered", "test").expect("a counter");
        let handover = Handover::new(producer, "changelog".into(), undelivered.clone());
        let _queueing = handover.queueing(1);
        assert!(matches!(
            handover.wait(&[1], Duration::from_millis(20)),
            Err(HandoverError::StillQueueing(partitions)) if partitions == [1]
        ));
        assert_eq!(undelivered.get(), 1);
        handover
            .wait(&[2], Duration::from_secs(10))
            .expect("nothing of 2 queued, nothing in the producer");
        handover.wait(&[], Duration::ZERO).expect("no partitions");
        assert_eq!(undelivered.get(), 1);
    }

    #[test]
    fn gives_up_at_the_deadline_naming_the_partitions() {
        let queueings = Queueings::default();
        let _revoked = queueings.start(1);
        let _again = queueings.start(1);
        let _kept = queueings.start(2);
        assert_eq!(queueings.wait(&[1, 5], soon()), Err(vec![1]));
    }

    #[test]
    fn counts_each_checkpoint_of_a_partition() {
        let queueings = Queueings::default();
        let first = queueings.start(7);
        let second = queueings.start(7);
        drop(first);
        assert_eq!(
            queueings.wait(&[7], soon()),
            Err(vec![7]),
            "one of two is still being queued"
        );
        drop(second);
        assert_eq!(queueings.wait(&[7], soon()), Ok(()));
        assert!(queueings.0.counts().is_empty());
    }
}
