//! Rebalance: instances join and leave the group mid-stream (1 → 3 → 1), one of them killed
//! while it holds partitions. No trace is lost, no session is split (every row carries the
//! enrichment of an uninterrupted run), and an instance reports lag only for the partitions
//! it owns.

use super::feed::{Feed, Plan};
use super::probe::{Instance, partitions_of, sum, wait_until};
use super::{Outcome, Scene, Size};
use crate::bootstrap;
use crate::service::set;
use std::collections::BTreeSet;
use std::time::Duration;

const PARTITIONS: i32 = 4;
/// Series that carry a `partition` label: each instance must export them for its own
/// partitions only.
const PER_PARTITION: [&str; 2] = [
    "sessionizer_consumer_lag_records",
    "sessionizer_partition_lag_seconds",
];
/// Bound of each wait for the group to settle (the broker holds joins for 3 s, and a killed
/// member is evicted after the 6 s session timeout).
const SETTLE: Duration = Duration::from_secs(60);
/// How long a partition waits for a stalled peer before it applies out of event-time order.
/// A SIGKILLed member's partitions stall until the broker evicts it (the 6 s session timeout,
/// then the join); the 5 s default would trade turn order for latency there, so the scenario
/// waits longer and checks that nothing was applied early.
const ALIGN_MAX_WAIT: Duration = Duration::from_secs(60);

pub async fn run(size: Size) -> Outcome {
    let mut outcome = Outcome::new("rebalance");
    let plan = Plan {
        prefix: "rebalance".to_owned(),
        num_sessions: size.pick(200, 2000),
        num_turns: size.pick(20, 25),
        traces_per_sec: size.pick(120.0, 700.0),
        mixed: true,
        end_sessions: false,
    };
    outcome.note(format!(
        "{} traces in {} sessions over {PARTITIONS} partitions; 1 -> 3 instances, one of \
         them SIGKILLed, the other stopped by SIGTERM -> 1",
        plan.num_traces(),
        plan.num_sessions
    ));
    let mut scene = Scene::new("rebalance", PARTITIONS).await;
    set(
        &mut scene.env,
        "SESSIONIZER__KAFKA__REPARTITION_MAX_WAIT_MS",
        &ALIGN_MAX_WAIT.as_millis().to_string(),
    );
    let feed = Feed::start(&bootstrap(), &scene.topics.traces, plan);

    let first = Instance::start(&scene.env);
    let started = wait_until(SETTLE, async || scene.server.num_rows() > 0).await;
    outcome.check(started, || "the first instance shipped nothing".to_owned());

    let mut killed = Instance::start(&scene.env);
    let mut stopped = Instance::start(&scene.env);
    outcome.num_restarts += 2;
    if let Err(view) = owners_agree(&[&first, &killed, &stopped]).await {
        outcome
            .failures
            .push(format!("with three instances: {view}"));
    }
    for _ in 0..10 {
        killed.sample(&scene.server).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    outcome.observe_rss(killed.process.peak_rss_bytes());
    killed.process.kill();
    outcome.keep_logs(&killed.process);
    tokio::time::sleep(Duration::from_millis(200)).await;
    outcome.duplicate_bound +=
        killed.rows_in_flight(scene.server.num_rows(), scene.checkpoint_interval);
    if let Err(view) = owners_agree(&[&first, &stopped]).await {
        outcome.failures.push(format!("after the kill: {view}"));
    }

    stopped.sample(&scene.server).await;
    outcome.note(format!(
        "{:.0} traces applied before their partition's inputs caught up by the instances that left",
        killed.alignment_forced() + stopped.alignment_forced()
    ));
    outcome.observe_rss(stopped.process.peak_rss_bytes());
    stopped.process.stop().await;
    outcome.keep_logs(&stopped.process);
    if let Err(view) = owners_agree(&[&first]).await {
        outcome
            .failures
            .push(format!("back to one instance: {view}"));
    }

    let timeout = size.pick(Duration::from_secs(120), Duration::from_secs(600));
    scene.finish(&mut outcome, feed, first, timeout).await;
    outcome
}

/// Waits until the instances own every partition between them, each at least one, and each
/// exports per-partition lag for exactly the partitions it owns (no two the same).
async fn owners_agree(instances: &[&Instance]) -> Result<(), String> {
    let mut last_view = String::new();
    let agreed = wait_until(SETTLE, async || {
        let mut assigned = Vec::new();
        let mut reported: Vec<BTreeSet<i32>> = Vec::new();
        for instance in instances {
            let Some(metrics) = instance.metrics().await else {
                last_view = "an instance does not answer /metrics".to_owned();
                return false;
            };
            assigned.push(sum(&metrics, "sessionizer_partitions_assigned") as usize);
            for name in PER_PARTITION {
                reported.push(partitions_of(&metrics, name));
            }
        }
        last_view =
            format!("assigned {assigned:?}, lag series by instance and metric {reported:?}");
        let total: usize = assigned.iter().sum();
        if total != PARTITIONS as usize || assigned.contains(&0) {
            return false;
        }
        // Per metric: each instance's set has its assignment's size, and the sets are disjoint.
        PER_PARTITION.iter().enumerate().all(|(metric, _)| {
            let sets: Vec<&BTreeSet<i32>> = reported
                .iter()
                .skip(metric)
                .step_by(PER_PARTITION.len())
                .collect();
            let union: BTreeSet<i32> = sets.iter().flat_map(|set| set.iter().copied()).collect();
            sets.iter()
                .zip(&assigned)
                .all(|(set, count)| set.len() == *count)
                && union.len() == PARTITIONS as usize
        })
    })
    .await;
    if agreed { Ok(()) } else { Err(last_view) }
}
