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

use rdkafka::producer::{FutureProducer, Producer};
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// The longest a revoke waits: a healthy broker acknowledges a checkpoint within
/// milliseconds, and the group's next round waits for this member meanwhile.
pub const HANDOVER_TIMEOUT: Duration = Duration::from_secs(5);

/// Checkpoints being queued per partition, and the producer they are queued on.
#[derive(Clone)]
pub struct Handover {
    shared: Arc<Shared>,
    producer: FutureProducer,
}

#[derive(Default)]
struct Shared {
    queueing: Mutex<HashMap<i32, usize>>,
    queued: Condvar,
}

impl std::fmt::Debug for Handover {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Handover")
            .field("queueing", &*self.shared.queueing())
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

impl Shared {
    fn queueing(&self) -> MutexGuard<'_, HashMap<i32, usize>> {
        self.queueing.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Handover {
    /// Checkpoints go to the changelog through `producer`.
    pub fn new(producer: FutureProducer) -> Self {
        Handover {
            shared: Arc::default(),
            producer,
        }
    }

    /// Marks a checkpoint of `partition` as being queued until the guard is dropped (once
    /// every record of it is in the producer, or it gave up).
    #[must_use]
    pub fn queueing(&self, partition: i32) -> Queueing {
        *self.shared.queueing().entry(partition).or_default() += 1;
        Queueing {
            shared: Arc::clone(&self.shared),
            partition,
        }
    }

    /// Waits, at most `timeout`, until no checkpoint of `partitions` is being queued and the
    /// producer delivered everything queued on it.
    ///
    /// # Errors
    /// The wait ran out, or the producer failed to deliver.
    pub fn wait(&self, partitions: &[i32], timeout: Duration) -> Result<(), HandoverError> {
        let deadline = Instant::now().checked_add(timeout);
        let mut queueing = self.shared.queueing();
        loop {
            let pending: Vec<i32> = partitions
                .iter()
                .copied()
                .filter(|partition| queueing.get(partition).is_some_and(|count| *count > 0))
                .collect();
            if pending.is_empty() {
                break;
            }
            let left = deadline.map_or(Duration::MAX, |deadline| {
                deadline.saturating_duration_since(Instant::now())
            });
            if left.is_zero() {
                return Err(HandoverError::StillQueueing(pending));
            }
            queueing = self
                .shared
                .queued
                .wait_timeout(queueing, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        drop(queueing);
        let left = deadline.map_or(timeout, |deadline| {
            deadline.saturating_duration_since(Instant::now())
        });
        self.producer
            .flush(left)
            .map_err(HandoverError::NotDelivered)
    }
}

/// A checkpoint being queued ([`Handover::queueing`]).
pub struct Queueing {
    shared: Arc<Shared>,
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
        let mut queueing = self.shared.queueing();
        if let Some(count) = queueing.get_mut(&self.partition) {
            *count -= 1;
            if *count == 0 {
                queueing.remove(&self.partition);
            }
        }
        drop(queueing);
        self.shared.queued.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::ClientConfig;

    /// A producer that never connects (nothing is sent here, so a flush returns at once).
    fn handover() -> Handover {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:9")
            .create()
            .expect("producer");
        Handover::new(producer)
    }

    #[test]
    fn waits_until_the_partitions_checkpoints_are_queued() {
        let handover = handover();
        let revoked = handover.queueing(3);
        let other = handover.queueing(4);
        let (started, waiting) = std::sync::mpsc::channel();
        let waiter = {
            let handover = handover.clone();
            std::thread::spawn(move || {
                started.send(()).expect("main thread waits");
                handover.wait(&[3], Duration::from_secs(30))
            })
        };
        waiting.recv().expect("the waiter started");
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished(), "a checkpoint of 3 is being queued");
        drop(revoked);
        assert!(
            waiter.join().expect("no panic").is_ok(),
            "3's checkpoint is queued; 4's is not waited for"
        );
        drop(other);
    }

    #[test]
    fn gives_up_after_the_timeout_naming_the_partitions() {
        let handover = handover();
        let _revoked = handover.queueing(1);
        let _again = handover.queueing(1);
        let _kept = handover.queueing(2);
        match handover.wait(&[1, 5], Duration::from_millis(20)) {
            Err(HandoverError::StillQueueing(partitions)) => assert_eq!(partitions, vec![1]),
            other => panic!("expected StillQueueing, got {other:?}"),
        }
    }

    #[test]
    fn counts_each_checkpoint_of_a_partition() {
        let handover = handover();
        let first = handover.queueing(7);
        let second = handover.queueing(7);
        drop(first);
        assert!(
            handover.wait(&[7], Duration::from_millis(20)).is_err(),
            "one of two is still being queued"
        );
        drop(second);
        assert!(handover.wait(&[7], Duration::from_millis(20)).is_ok());
        assert!(handover.shared.queueing().is_empty());
    }
}
