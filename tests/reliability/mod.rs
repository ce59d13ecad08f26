//! The reliability suite: the real `sessionizer` binary as child processes, the real broker and
//! the Openlayer-compatible test server, under crashes, rebalances, a broker restart, an
//! Openlayer outage, poison input and SIGTERM. Each scenario returns an [`Outcome`]: what was
//! sent, shipped, lost, duplicated and dead-lettered, and the checks that failed.
//!
//! `make reliability` runs every scenario at [`Size::Full`] (the `reliability` binary);
//! `make test` runs each at [`Size::Quick`] (the `reliability_quick` test).

pub mod bad_input;
pub mod broker_restart;
pub mod crash_loop;
pub mod feed;
pub mod graceful_shutdown;
pub mod openlayer_outage;
pub mod probe;
pub mod rebalance;
pub mod report;
pub mod security;

pub use report::{CloseEffects, Outcome, Report};

/// How much work each scenario does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// Seconds per scenario: what `make test` runs so the suite cannot rot.
    Quick,
    /// The sizes the issue asks for (200,000 traces and 20 kills, a 2-minute outage, ...).
    Full,
}

impl Size {
    /// `quick` or `full`.
    pub fn parse(name: &str) -> Option<Size> {
        match name {
            "quick" => Some(Size::Quick),
            "full" => Some(Size::Full),
            _ => None,
        }
    }

    pub fn pick<T>(self, quick: T, full: T) -> T {
        match self {
            Size::Quick => quick,
            Size::Full => full,
        }
    }
}

/// Every scenario's name, in the order the suite runs them.
pub const SCENARIOS: [&str; 8] = [
    "crash_loop",
    "rebalance",
    "broker_restart",
    "restore_interrupted",
    "openlayer_outage",
    "bad_input",
    "graceful_shutdown",
    "security",
];

/// Runs the scenario called `name`.
///
/// # Panics
/// For a name not in [`SCENARIOS`].
pub async fn run(name: &str, size: Size) -> Outcome {
    match name {
        "crash_loop" => crash_loop::run(size).await,
        "rebalance" => rebalance::run(size).await,
        "broker_restart" => broker_restart::run(size).await,
        "restore_interrupted" => broker_restart::run_during_restore(size).await,
        "openlayer_outage" => openlayer_outage::run(size).await,
        "bad_input" => bad_input::run(size).await,
        "graceful_shutdown" => graceful_shutdown::run(size).await,
        "security" => security::run(size).await,
        other => panic!("no scenario {other}; the scenarios are {SCENARIOS:?}"),
    }
}

use crate::service::{Expectations, free_local_address, service_env, set};
use crate::{ServiceTopics, create_service_topics, unique_name};
use fakes::openlayer::OpenlayerServer;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// What every scenario starts from: its own topics, consumer group and Openlayer server, and
/// the environment a deployment would give the service.
#[derive(Debug)]
pub struct Scene {
    pub topics: ServiceTopics,
    pub server: OpenlayerServer,
    pub env: BTreeMap<String, String>,
    /// How often the instances checkpoint (and so how much a crash may redo).
    pub checkpoint_interval: Duration,
    /// Where closed sessions' rows go, when the scenario asks for them.
    pub sessions_pipeline: Option<String>,
}

impl Scene {
    /// Topics on the shared test broker with `partitions` input partitions.
    pub async fn new(name: &str, partitions: i32) -> Scene {
        let topics = create_service_topics(&format!("rel-{name}-"), partitions).await;
        let api_key = format!("key-{}", uuid::Uuid::new_v4().simple());
        Scene::with_topics(topics, &api_key).await
    }

    /// A scene on topics created elsewhere, with Openlayer expecting `api_key`.
    pub async fn with_topics(topics: ServiceTopics, api_key: &str) -> Scene {
        let server = OpenlayerServer::start(api_key).await;
        let group = unique_name("rel-group");
        let mut env = service_env(&topics, &group, &server, api_key, free_local_address());
        let checkpoint_interval = Duration::from_millis(500);
        set(
            &mut env,
            "SESSIONIZER__KAFKA__CHECKPOINT_INTERVAL_MS",
            &checkpoint_interval.as_millis().to_string(),
        );
        // Warnings and errors, kept for a failure report; RELIABILITY_LOG=info shows more.
        let filter = std::env::var("RELIABILITY_LOG").unwrap_or_else(|_| "warn".to_owned());
        set(&mut env, "SESSIONIZER__LOG__FILTER", &filter);
        Scene {
            topics,
            server,
            env,
            checkpoint_interval,
            sessions_pipeline: None,
        }
    }

    /// Instances started from now on send a row per closed session to a sessions pipeline.
    pub fn with_session_rows(&mut self) {
        let pipeline = "rel-sessions".to_owned();
        set(
            &mut self.env,
            "SESSIONIZER__OPENLAYER__SESSIONS_PIPELINE_ID",
            &pipeline,
        );
        self.sessions_pipeline = Some(pipeline);
    }

    /// Rows the server accepted for traces (not session rows).
    pub fn trace_rows(&self) -> Vec<serde_json::Value> {
        match &self.sessions_pipeline {
            None => self.server.rows(),
            Some(sessions) => self
                .server
                .requests()
                .into_iter()
                .filter(|request| request.accepted() && &request.pipeline_id != sessions)
                .flat_map(|request| request.rows)
                .collect(),
        }
    }

    /// Ends a scenario: waits for `feed` and for every trace to ship (through `last`, the
    /// instance left running), stops `last` with SIGTERM, and takes the checks every scenario
    /// shares: Kafka acknowledged every trace, nothing was dead-lettered, every row carries the
    /// enrichment of an uninterrupted run. Returns when the last trace had shipped.
    pub async fn finish(
        &self,
        outcome: &mut Outcome,
        feed: feed::Feed,
        mut last: probe::Instance,
        timeout: Duration,
    ) -> Instant {
        let fed = feed.finish().await;
        outcome.check(fed.num_failed == 0, || {
            format!("{} traces not acknowledged by Kafka", fed.num_failed)
        });
        let all_shipped = self.wait_all_shipped(&fed.expected, timeout).await;
        let shipped_at = Instant::now();
        outcome.check(all_shipped, || "not every trace shipped in time".to_owned());
        outcome.observe_rss(last.process.peak_rss_bytes());
        last.process.stop().await;
        outcome.keep_logs(&last.process);
        let letters = crate::read_topic(
            &crate::bootstrap(),
            &self.topics.dead_letters,
            1,
            1,
            Duration::from_secs(3),
        );
        outcome.num_dead_lettered = letters.len();
        outcome.check(letters.is_empty(), || {
            "good traces were dead-lettered".to_owned()
        });
        outcome.take_verification(&fed.expected.verify(&self.trace_rows()));
        shipped_at
    }

    /// Waits until every expected trace reached the server, or `timeout`.
    pub async fn wait_all_shipped(&self, expected: &Expectations, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        loop {
            // Counting is cheap; checking ids copies every row, so only when it may pass.
            if self.server.num_rows() >= expected.rows.len()
                && expected.verify(&self.trace_rows()).lost.is_empty()
            {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
