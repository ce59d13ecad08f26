//! Scaling with work: how throughput and CPU per trace change with the number of input
//! partitions (and sessionizer instances) and with the batch size.
//!
//! - Partitions: one topic per count in `--partition-counts` (1, 2, 4), each pre-loaded with
//!   the same traces; as many sessionizer pipelines as partitions, in this process, in one
//!   consumer group (started together, so they join in one generation: the broker holds a
//!   JoinGroup for half the session timeout). Each changelog topic is created beforehand with
//!   the input's partition count. Baseline: the same run's 1-partition, 1-instance figure.
//!   In-process instances share this process's runtime (as many worker threads as cores), so
//!   on a small machine the figure shows what coordination costs more than parallel speed-up.
//! - Batch size: one pipeline on the throughput topic with `batch.max_rows` from
//!   `--batch-rows` (100, 1,000, 5,000); `batch.max_bytes` is raised to 16 KiB per row so the
//!   row count, not the 4 MiB byte cap, closes batches. Baseline: the same run's 1,000-row
//!   figure (the production default).
//! - Everything else is the production default, the 500 ms batch linger included: it must
//!   be long enough for 5,000 rows to gather (a shorter one would close batches early). Every
//!   run ends with a partial batch that waits for it (the instances' in parallel), so each
//!   window holds up to 0.5 s of it alike; runs are sized to last several seconds.
//!
//! Runs are interleaved (every configuration once per repetition); medians are reported.

use crate::kafka::create_topics;
use crate::measure;
use crate::pipeline::{
    Running, counter_sum, repartition_topic, sessionizer_settings, start_pipeline,
};
use crate::preload::{Placing, preload};
use crate::setup::{Bench, PARTITIONS, RUN_TIMEOUT, Topics, cores, unique};
use crate::throughput::{Run, Variant, run_from};
use crate::traces::Population;
use anyhow::{Result, ensure};
use serde::Serialize;
use tokio::runtime::Runtime;

/// The production default of `batch.max_rows`: the baseline of the batch-size figures.
pub(crate) const DEFAULT_BATCH_ROWS: usize = 1_000;

/// Which figure a run belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Kind {
    Partitions,
    BatchSize,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct ScalingRun {
    pub(crate) kind: Kind,
    pub(crate) partitions: i32,
    pub(crate) instances: usize,
    pub(crate) batch_rows: usize,
    pub(crate) run: Run,
    /// Partitions each instance held at the end of the run.
    pub(crate) assigned: Vec<i64>,
    /// Rebalances (assign and revoke events) summed over the instances.
    pub(crate) rebalances: f64,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Point {
    pub(crate) partitions: i32,
    pub(crate) instances: usize,
    pub(crate) batch_rows: usize,
    pub(crate) traces: u64,
    pub(crate) median_traces_per_second: f64,
    pub(crate) median_cpu_us_per_trace_without_ack: f64,
    pub(crate) median_others_cpu_share: f64,
    /// Median throughput over the baseline's (see `baseline`).
    pub(crate) throughput_ratio: f64,
    /// Median CPU per trace (without the ack server) over the baseline's.
    pub(crate) cpu_ratio: f64,
    pub(crate) mean_rows_per_request: f64,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Scaling {
    pub(crate) reps: usize,
    pub(crate) partitions_baseline: String,
    pub(crate) partitions: Vec<Point>,
    pub(crate) batches_baseline: String,
    pub(crate) batches: Vec<Point>,
    pub(crate) runs: Vec<ScalingRun>,
}

/// `instances` pipelines in one group on `topic`, until all `traces` are acknowledged.
fn run_instances(
    bench: &mut Bench<'_>,
    kind: Kind,
    topic: &str,
    partitions: i32,
    instances: usize,
    batch_rows: usize,
    traces: u64,
) -> Result<ScalingRun> {
    let topics = Topics {
        traces: topic.to_owned(),
        ..bench.topics.clone()
    };
    let changelog = if bench.args.no_changelog {
        None
    } else {
        let name = unique("bench-scaling-state");
        bench
            .runtime
            .block_on(create_topics(&bench.bootstrap, &[(&name, partitions)]))?;
        bench.created.push(name.clone());
        Some(name)
    };
    let group = unique("bench-scaling");
    let customize = |config: &mut sessionizer::config::SessionizerConfig| {
        config.kafka.group_id.clone_from(&group);
        config.batch.max_rows = batch_rows;
        config.batch.max_bytes = config.batch.max_bytes.max(batch_rows * 16 * 1024);
        config.batch.max_unacked_rows = config.batch.max_unacked_rows.max(batch_rows * 10);
    };
    bench.ack.reset(false);
    let mut running = Vec::with_capacity(instances);
    for _ in 0..instances {
        let settings = sessionizer_settings(
            &bench.bootstrap,
            &topics,
            &bench.ack,
            changelog.clone(),
            &customize,
        )?;
        // The instances share one group, so one repartition topic.
        if running.is_empty() {
            bench.created.extend(repartition_topic(&settings));
        }
        running.push(start_pipeline(&bench.runtime, settings)?);
    }
    let all_metrics: Vec<_> = running.iter().map(|one| one.metrics.clone()).collect();
    let window = measure::window(
        &|| {
            all_metrics
                .iter()
                .map(|metrics| metrics.events_consumed.get())
                .sum()
        },
        &|| {
            all_metrics
                .iter()
                .map(|metrics| metrics.rows_shipped.get())
                .sum()
        },
        traces,
        (Some(bench.ack.tid()), bench.broker_pid),
        RUN_TIMEOUT,
    );
    let assigned: Vec<i64> = all_metrics
        .iter()
        .map(|metrics| metrics.partitions_assigned.get())
        .collect();
    let (rebalances, dead_letters) = stop_instances(running, &bench.runtime)?;
    let window = window?;
    ensure!(
        dead_letters == 0.0,
        "{dead_letters} traces dead-lettered: the bench must measure the happy path"
    );
    ensure!(
        bench.ack.rows() >= traces,
        "the ack server counted {} rows of {traces}",
        bench.ack.rows()
    );
    let mut run = run_from(Variant::Sessionizer, traces, window, cores());
    run.row_json_bytes_mean = Some(bench.ack.body_bytes() as f64 / bench.ack.rows() as f64);
    run.requests = Some(bench.ack.requests());
    eprintln!(
        "bench: scaling {partitions} partition(s), {instances} instance(s), batch {batch_rows}: \
         {:>8.0} traces/s  {:>6.1} µs CPU/trace  (assigned {assigned:?}, {rebalances} rebalance \
         events)",
        run.traces_per_second, run.cpu_us_per_trace_without_ack
    );
    Ok(ScalingRun {
        kind,
        partitions,
        instances,
        batch_rows,
        run,
        assigned,
        rebalances,
    })
}

/// Stops every instance (all of them, even after one fails), then sums their rebalance and
/// dead-letter counters.
fn stop_instances(running: Vec<Running>, runtime: &Runtime) -> Result<(f64, f64)> {
    let mut rebalances = 0.0;
    let mut dead_letters = 0.0;
    let mut stopped = Vec::new();
    for one in running {
        stopped.push(one.stop(runtime));
    }
    for result in stopped {
        let (_, registry) = result?;
        rebalances += counter_sum(&registry, "sessionizer_rebalances_total");
        dead_letters += counter_sum(&registry, "sessionizer_dead_letters_total");
    }
    Ok((rebalances, dead_letters))
}

fn point(runs: &[&ScalingRun], baseline: Option<(f64, f64)>) -> Point {
    let median_of = |field: fn(&ScalingRun) -> f64| {
        measure::median(&runs.iter().map(|run| field(run)).collect::<Vec<_>>())
    };
    let throughput = median_of(|one| one.run.traces_per_second);
    let cpu = median_of(|one| one.run.cpu_us_per_trace_without_ack);
    let (base_throughput, base_cpu) = baseline.unwrap_or((throughput, cpu));
    let first = runs[0];
    Point {
        partitions: first.partitions,
        instances: first.instances,
        batch_rows: first.batch_rows,
        traces: first.run.traces,
        median_traces_per_second: throughput,
        median_cpu_us_per_trace_without_ack: cpu,
        median_others_cpu_share: median_of(|one| one.run.others_cpu_share),
        throughput_ratio: throughput / base_throughput,
        cpu_ratio: cpu / base_cpu,
        mean_rows_per_request: median_of(|one| {
            one.run.traces as f64 / one.run.requests.unwrap_or(1).max(1) as f64
        }),
    }
}

/// Points for each value of `key` in `values`, relative to the one equal to `baseline`.
fn points(
    runs: &[ScalingRun],
    values: &[usize],
    key: fn(&ScalingRun) -> usize,
    baseline: usize,
) -> Vec<Point> {
    let of = |value: usize| -> Vec<&ScalingRun> {
        runs.iter().filter(|run| key(run) == value).collect()
    };
    let base = of(baseline);
    let base_figures = (!base.is_empty()).then(|| {
        let base_point = point(&base, None);
        (
            base_point.median_traces_per_second,
            base_point.median_cpu_us_per_trace_without_ack,
        )
    });
    values
        .iter()
        .map(|value| of(*value))
        .filter(|selected| !selected.is_empty())
        .map(|selected| point(&selected, base_figures))
        .collect()
}

pub(crate) fn scaling(
    bench: &mut Bench<'_>,
    throughput_traces: Option<u64>,
    partition_counts: &[i32],
    batch_rows: &[usize],
) -> Result<Scaling> {
    let args = bench.args;
    // One topic per partition count, the same traces in each.
    let mut topics = Vec::new();
    for partitions in partition_counts {
        let topic = unique(&format!("bench-scaling-{partitions}p"));
        bench
            .runtime
            .block_on(create_topics(&bench.bootstrap, &[(&topic, *partitions)]))?;
        bench.created.push(topic.clone());
        let population = Population::new(args.scaling_sessions)?;
        eprintln!(
            "bench: scaling: pre-loading {} traces to {partitions} partition(s)",
            args.scaling_sessions * args.turns
        );
        let workload = preload(
            &bench.bootstrap,
            &[(&topic, Placing::ByKey)],
            &population,
            args.turns,
        )?;
        topics.push((*partitions, topic, workload.traces));
    }
    let throughput_topic = bench.topics.traces.clone();
    let mut runs = Vec::new();
    for rep in 1..=args.scaling_reps {
        eprintln!("bench: scaling rep {rep}");
        for (partitions, topic, traces) in &topics {
            let instances = usize::try_from(*partitions)?;
            runs.push(run_instances(
                bench,
                Kind::Partitions,
                topic,
                *partitions,
                instances,
                DEFAULT_BATCH_ROWS,
                *traces,
            )?);
        }
        if let Some(traces) = throughput_traces {
            for rows in batch_rows {
                runs.push(run_instances(
                    bench,
                    Kind::BatchSize,
                    &throughput_topic,
                    PARTITIONS,
                    1,
                    *rows,
                    traces,
                )?);
            }
        }
    }
    let (partition_runs, batch_runs): (Vec<ScalingRun>, Vec<ScalingRun>) = runs
        .iter()
        .cloned()
        .partition(|run| run.kind == Kind::Partitions);
    let counts: Vec<usize> = partition_counts
        .iter()
        .filter_map(|count| usize::try_from(*count).ok())
        .collect();
    Ok(Scaling {
        reps: args.scaling_reps,
        partitions_baseline: "1 partition, 1 instance, same run".to_owned(),
        partitions: points(&partition_runs, &counts, |run| run.partitions as usize, 1),
        batches_baseline: format!("{DEFAULT_BATCH_ROWS} rows per request (the default), same run"),
        batches: points(
            &batch_runs,
            batch_rows,
            |run| run.batch_rows,
            DEFAULT_BATCH_ROWS,
        ),
        runs,
    })
}
