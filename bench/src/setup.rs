//! What the parts of the bench share: its constants, wall clock, names and core count, and
//! [`Bench`], the run on the broker (runtime, topics, ack server) the Kafka parts take in turn.

use crate::ack::AckServer;
use crate::cli::Args;
use anyhow::Result;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::runtime::Runtime;

/// Partitions of the throughput, lag and gateway topics.
pub(crate) const PARTITIONS: i32 = 3;
/// The inference pipeline every row is shipped to.
pub(crate) const PIPELINE_ID: &str = "6b0f3a52-1c7e-4d0b-9a55-3f2e8c1d7a90";
/// Short: the test broker holds each JoinGroup for half of it (kafka-broker facts), so every
/// consumer of the bench joins in about a second.
pub(crate) const SESSION_TIMEOUT_MS: u64 = 2000;
/// Event time between two turns of a session.
pub(crate) const TURN_SPACING_MS: i64 = 20_000;
/// Longest a single run may take before the bench gives up.
pub(crate) const RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// Wall clock in milliseconds since the Unix epoch: the unit of event times.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

/// `prefix` made unique, for topic and group names no earlier run used.
pub(crate) fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// Cores this process may run on: CPU shares of "the machine" are over these.
pub(crate) fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |cores| cores.get() as f64)
}

/// The topics a sessionizer of the bench reads and writes.
#[derive(Debug, Clone)]
pub(crate) struct Topics {
    pub(crate) traces: String,
    pub(crate) dead_letters: String,
    pub(crate) sessions: String,
}

/// What the Kafka parts share.
pub(crate) struct Bench<'a> {
    pub(crate) args: &'a Args,
    pub(crate) runtime: Runtime,
    pub(crate) bootstrap: String,
    pub(crate) topics: Topics,
    pub(crate) ack: AckServer,
    pub(crate) broker_pid: Option<u32>,
    /// Topics to delete at the end.
    pub(crate) created: Vec<String>,
}

impl<'a> Bench<'a> {
    /// A fresh runtime and ack server, and names for the shared topics (the caller creates
    /// them, and deletes everything in `created` at the end).
    pub(crate) fn start(args: &'a Args, bootstrap: String) -> Result<Self> {
        let topics = Topics {
            traces: unique("bench-traces"),
            dead_letters: unique("bench-dlq"),
            sessions: unique("bench-sessions"),
        };
        Ok(Bench {
            args,
            runtime: tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?,
            ack: AckServer::start()?,
            broker_pid: args.broker_pid,
            created: vec![
                topics.traces.clone(),
                topics.dead_letters.clone(),
                topics.sessions.clone(),
            ],
            bootstrap,
            topics,
        })
    }
}
