//! Liveness and readiness as the pipeline reports them and `/healthz` / `/readyz` read them.
//!
//! Liveness means the processing loop is making progress, not that the process exists: the
//! loop records progress on every message and tick, and a stuck loop stops doing so.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Shared health flags; cheap to clone (clones share the values).
#[derive(Debug, Clone, Default)]
pub struct Health {
    inner: Arc<HealthFlags>,
}

#[derive(Debug, Default)]
struct HealthFlags {
    last_progress_ms: AtomicU64,
    joined: AtomicBool,
    broker_reachable: AtomicBool,
    sink_failing: AtomicBool,
    restore_retrying: AtomicBool,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

/// Why the service is not ready, as `/readyz` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotReady {
    NotJoined,
    BrokerUnreachable,
    SinkFailing,
    RestoreRetrying,
}

impl NotReady {
    pub fn as_str(self) -> &'static str {
        match self {
            NotReady::NotJoined => "not yet joined the consumer group",
            NotReady::BrokerUnreachable => "kafka broker unreachable",
            NotReady::SinkFailing => "openlayer requests failing",
            NotReady::RestoreRetrying => "session state restore retrying",
        }
    }
}

impl Health {
    pub fn new() -> Self {
        Health::default()
    }

    /// The loop moved: a message, an acknowledgement or a tick.
    pub fn record_progress(&self) {
        self.inner
            .last_progress_ms
            .store(now_ms(), Ordering::Relaxed);
    }

    /// The first rebalance completed: the consumer is a member of its group, with or without
    /// partitions.
    pub fn set_joined(&self) {
        self.inner.joined.store(true, Ordering::Relaxed);
    }

    pub fn set_broker_reachable(&self, reachable: bool) {
        self.inner
            .broker_reachable
            .store(reachable, Ordering::Relaxed);
    }

    pub fn set_sink_failing(&self, failing: bool) {
        self.inner.sink_failing.store(failing, Ordering::Relaxed);
    }

    /// A partition's session state could not be read back yet and is being retried.
    pub fn set_restore_retrying(&self, retrying: bool) {
        self.inner
            .restore_retrying
            .store(retrying, Ordering::Relaxed);
    }

    /// Alive when the loop made progress within `window`.
    pub fn is_alive(&self, window: Duration) -> bool {
        let last = self.inner.last_progress_ms.load(Ordering::Relaxed);
        last != 0
            && now_ms().saturating_sub(last)
                <= u64::try_from(window.as_millis()).unwrap_or(u64::MAX)
    }

    /// Ready when the consumer joined its group, the broker answers, the sink is not failing
    /// and no partition's state restore is being retried. A member that owns no partitions (more replicas than partitions) is ready and
    /// idle: were it unready, a rollout surging one replica over the partition count would
    /// wait forever for it.
    ///
    /// # Errors
    /// The first check that fails.
    pub fn readiness(&self) -> Result<(), NotReady> {
        // Before the first rebalance the broker has simply not been heard from yet.
        if !self.inner.joined.load(Ordering::Relaxed) {
            return Err(NotReady::NotJoined);
        }
        if !self.inner.broker_reachable.load(Ordering::Relaxed) {
            return Err(NotReady::BrokerUnreachable);
        }
        if self.inner.sink_failing.load(Ordering::Relaxed) {
            return Err(NotReady::SinkFailing);
        }
        if self.inner.restore_retrying.load(Ordering::Relaxed) {
            return Err(NotReady::RestoreRetrying);
        }
        Ok(())
    }
}
