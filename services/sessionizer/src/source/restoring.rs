//! Partitions whose session state is being read back from the changelog. Reads run on
//! blocking threads while the pipeline loop keeps polling the consumer (so the group keeps
//! its member, other partitions keep flowing and SIGTERM is served); a failed read is retried
//! after the backoff that [`super::restore::decide`] returns, with a fresh consumer.
//!
//! The pipeline pauses a partition when it is assigned and resumes it once its state is
//! installed. Messages of a restoring partition that were fetched before the pause took
//! effect are held here, in order, and handed back with the state.

use crate::metrics::Metrics;
use crate::sessionize::store::RestoredPartition;
use crate::source::changelog::{ChangelogError, RestoreRead, read_partitions};
use crate::source::kafka::KafkaSettings;
use crate::source::read::ReadMessage;
use crate::source::restore::{RestoreDecision, STALL_TIMEOUT, decide};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tokio::task::{JoinError, JoinSet};
use trace_model::DecodeError;

/// A message fetched before its partition's state was back, with its schema prefetch result.
pub type HeldMessage = (ReadMessage, Option<DecodeError>);

/// One read of some partitions: which, the how-many-th, and when their restore began.
#[derive(Debug, Clone)]
struct Attempt {
    id: u64,
    partitions: Vec<i32>,
    number: u32,
}

/// A finished read, as the blocking thread hands it back.
#[derive(Debug)]
pub struct AttemptDone {
    attempt: Attempt,
    result: Result<RestoreRead, ChangelogError>,
}

/// What the pipeline does with a finished read.
#[derive(Debug)]
pub enum RestoreOutcome {
    /// Install each partition's state, process its held messages in order, then resume it.
    Restored(Vec<(i32, RestoredPartition, Vec<HeldMessage>)>),
    /// Will be read again; the partitions stay paused. `unreachable`: the broker did not
    /// answer (readiness reports it).
    Retrying { unreachable: bool },
    /// Cannot be restored: the run must end (the partitions are forgotten here).
    Failed {
        partitions: Vec<i32>,
        error: ChangelogError,
    },
    /// Nothing left to do (revoked meanwhile, or cancelled at shutdown).
    Nothing,
}

/// Restores in flight and waiting for their retry.
#[derive(Debug)]
pub struct Restoring {
    settings: KafkaSettings,
    changelog: String,
    metrics: Metrics,
    /// Partition → id of the attempt series restoring it; a revoked partition leaves.
    pending: HashMap<i32, u64>,
    /// When each partition's restore began, for the duration metric.
    began: HashMap<i32, Instant>,
    held: HashMap<i32, Vec<HeldMessage>>,
    running: JoinSet<AttemptDone>,
    /// Attempts waiting for their backoff to pass.
    scheduled: Vec<(Instant, Attempt)>,
    next_id: u64,
    /// Attempt series that failed at least once.
    failed: HashSet<u64>,
    cancel: Arc<AtomicBool>,
}

impl Restoring {
    pub fn new(settings: KafkaSettings, changelog: String, metrics: Metrics) -> Self {
        Restoring {
            settings,
            changelog,
            metrics,
            pending: HashMap::new(),
            began: HashMap::new(),
            held: HashMap::new(),
            running: JoinSet::new(),
            scheduled: Vec::new(),
            next_id: 0,
            failed: HashSet::new(),
            cancel: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Starts reading the state of newly assigned `partitions`.
    pub fn begin(&mut self, partitions: &[i32]) {
        if partitions.is_empty() {
            return;
        }
        self.next_id += 1;
        let now = Instant::now();
        for partition in partitions {
            self.pending.insert(*partition, self.next_id);
            self.began.insert(*partition, now);
        }
        self.spawn(Attempt {
            id: self.next_id,
            partitions: partitions.to_vec(),
            number: 1,
        });
    }

    /// Revoked partitions: their reads' results will be ignored, their held messages dropped
    /// (the next owner reads them again).
    pub fn forget(&mut self, partitions: &[i32]) {
        for partition in partitions {
            self.pending.remove(partition);
            self.began.remove(partition);
            self.held.remove(partition);
        }
    }

    /// Keeps a message of a restoring partition, to be processed once its state is back.
    pub fn hold(&mut self, message: ReadMessage, schema_error: Option<DecodeError>) {
        self.held
            .entry(message.partition)
            .or_default()
            .push((message, schema_error));
    }

    /// Some partition's restore failed at least once and is still being retried.
    pub fn is_retrying(&self) -> bool {
        self.pending.values().any(|id| self.failed.contains(id))
    }

    pub fn has_running(&self) -> bool {
        !self.running.is_empty()
    }

    /// The next finished read (pending forever when none runs: guard with `has_running`).
    pub async fn join_next(&mut self) -> Option<Result<AttemptDone, JoinError>> {
        self.running.join_next().await
    }

    /// Starts the retries whose backoff has passed.
    pub fn start_due(&mut self, now: Instant) {
        let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.scheduled)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.scheduled = waiting;
        for (_, attempt) in due {
            let partitions = self.still_pending(&attempt);
            if !partitions.is_empty() {
                self.spawn(Attempt {
                    partitions,
                    ..attempt
                });
            }
        }
    }

    /// Takes a finished read and says what the pipeline must do.
    pub fn finish(&mut self, joined: Result<AttemptDone, JoinError>) -> RestoreOutcome {
        let AttemptDone { attempt, result } = match joined {
            Ok(done) => done,
            // A panicked read: its attempt cannot be identified; the partitions it held
            // would wait forever, so the run ends.
            Err(error) => {
                let partitions: Vec<i32> = self.pending.keys().copied().collect();
                self.forget(&partitions);
                return RestoreOutcome::Failed {
                    partitions,
                    error: ChangelogError::Panicked(error.to_string()),
                };
            }
        };
        let partitions = self.still_pending(&attempt);
        if partitions.is_empty() {
            return RestoreOutcome::Nothing;
        }
        match result {
            Ok(mut read) => {
                let mut restored = Vec::with_capacity(partitions.len());
                for partition in partitions {
                    let label = partition.to_string();
                    self.metrics
                        .restore_attempts
                        .with_label_values(&[&label, "restored"])
                        .inc();
                    self.metrics
                        .restore_records
                        .with_label_values(&[&label])
                        .inc_by(read.num_records.get(&partition).copied().unwrap_or(0));
                    if let Some(began) = self.began.remove(&partition) {
                        self.metrics
                            .restore_duration
                            .with_label_values(&[&label])
                            .observe(began.elapsed().as_secs_f64());
                    }
                    self.pending.remove(&partition);
                    let state = read.partitions.remove(&partition).unwrap_or_default();
                    let held = self.held.remove(&partition).unwrap_or_default();
                    restored.push((partition, state, held));
                }
                RestoreOutcome::Restored(restored)
            }
            Err(error) => match decide(error.kind(), attempt.number) {
                RestoreDecision::RetryAfter(wait) => {
                    self.count(&partitions, "retried");
                    tracing::warn!(
                        %error,
                        ?partitions,
                        attempt = attempt.number,
                        retry_in = ?wait,
                        "failed to restore session state; the partitions stay paused until it succeeds"
                    );
                    let unreachable = error.is_unreachable();
                    self.failed.insert(attempt.id);
                    self.scheduled.push((
                        Instant::now() + wait,
                        Attempt {
                            partitions,
                            number: attempt.number + 1,
                            ..attempt
                        },
                    ));
                    RestoreOutcome::Retrying { unreachable }
                }
                RestoreDecision::GiveUp => {
                    self.count(&partitions, "failed");
                    self.forget(&partitions);
                    RestoreOutcome::Failed { partitions, error }
                }
                RestoreDecision::Abandon => RestoreOutcome::Nothing,
            },
        }
    }

    /// Shutdown: reads in progress stop within a poll interval, retries are dropped.
    pub fn cancel(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        self.scheduled.clear();
        self.running.detach_all();
    }

    /// The attempt's partitions that are still waiting for it (not revoked meanwhile).
    fn still_pending(&self, attempt: &Attempt) -> Vec<i32> {
        attempt
            .partitions
            .iter()
            .copied()
            .filter(|partition| self.pending.get(partition) == Some(&attempt.id))
            .collect()
    }

    fn count(&self, partitions: &[i32], outcome: &str) {
        for partition in partitions {
            self.metrics
                .restore_attempts
                .with_label_values(&[&partition.to_string(), outcome])
                .inc();
        }
    }

    fn spawn(&mut self, attempt: Attempt) {
        let settings = self.settings.clone();
        let changelog = self.changelog.clone();
        let cancel = Arc::clone(&self.cancel);
        self.running.spawn_blocking(move || {
            let result = read_partitions(
                &settings,
                &changelog,
                &attempt.partitions,
                STALL_TIMEOUT,
                &cancel,
            );
            AttemptDone { attempt, result }
        });
    }
}
