//! Throughput: the sessionizer against two baselines on the same pre-loaded topic, and what
//! its repartition stage costs.
//!
//! Two topics (3 partitions each) are pre-loaded once, together, with the same traces by an
//! idempotent producer (the emitter's settings: acks=all, lz4, linger 20 ms, murmur2
//! partitioner) with realistic traces: sessions × turns, two sessions per user, turn-major
//! order so every session is open at once. The throughput topic holds each trace where the
//! emitter puts it, in its session's partition; the misplaced topic holds each in the next
//! partition after that one ([`Placing::Elsewhere`]). Then, `--reps` times, each run with a
//! fresh consumer group reading from the beginning:
//! - `bare`: a `BaseConsumer` that only counts messages;
//! - `minimal`: a `BaseConsumer` that decodes each message (`trace_model::Decoder`) and
//!   serializes it as an Openlayer row (`sessionizer::enrich::openlayer_row` with
//!   `Placement::Passthrough`): no state, no HTTP;
//! - `sessionizer`: `sessionizer::pipeline::run` with the production defaults (changelog,
//!   repartition topic, session summaries, 1000-row batches, 500 ms linger, 4 requests in
//!   flight), shipping to the in-process ack server ([`AckServer`]); producers agree, so it
//!   must forward nothing (checked from `sessionizer_traces_repartitioned_total`);
//! - `sessionizer_repartition_off`: the same with `kafka.repartition_topic` empty (no check,
//!   no repartition consumer): the baseline of what the repartition stage costs when
//!   producers agree;
//! - `sessionizer_all_forwarded`: the sessionizer on the misplaced topic, where every trace
//!   is forwarded once through the repartition topic and read back (checked: the counter
//!   equals the traces, and every row is shipped).
//!
//! Repetitions alternate which of `sessionizer` and `sessionizer_repartition_off` runs first,
//! and their ratio is the median of the repetitions' ratios: the two run back to back, while
//! this machine's speed drifts by a third within minutes (other tenants of its host), so a
//! ratio of medians taken apart would mostly measure the drift.
//! Each sessionizer run has a fresh group, hence a fresh `<group>-repartition` topic, which
//! it creates at start (before its window opens) and the bench deletes at the end.
//!
//! A run's window opens when its first message is consumed (the group join before it is not
//! measured) and closes when the last trace is done: counted by the baselines, acknowledged
//! by the ack server and settled in the pipeline (`rows_shipped`) for the sessionizer. CPU
//! per trace is this process's CPU over the window (every thread, from the per-thread
//! scheduler counters in `/proc/self/task/*/schedstat`; `/proc/self/stat` is recorded as a
//! check) divided by the traces. The broker is another process and is not included; its CPU
//! is reported apart when its pid is known, and so is the CPU of everything else on the
//! machine (noise). The ack server runs in this process on its own thread: its CPU is in the
//! process figure and also reported alone, so the sessionizer's own cost is the difference.

use crate::ack::AckServer;
use crate::kafka::{baseline_consumer, create_topics};
use crate::measure::{self, Window, median};
use crate::pipeline::{counter_sum, repartition_topic, sessionizer_settings, start_pipeline};
use crate::preload::{Placing, Workload, preload};
use crate::setup::{Bench, PARTITIONS, RUN_TIMEOUT, Topics, cores, unique};
use crate::traces::Population;
use anyhow::{Context as _, Result, ensure};
use rdkafka::message::Message;
use serde::Serialize;
use sessionizer::config::SessionizerConfig;
use sessionizer::enrich::openlayer_row;
use sessionizer::pipeline::PipelineSettings;
use sessionizer::sessionize::Placement;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;
use trace_model::{Decoder, Limits};

/// What consumes the topic in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub(crate) enum Variant {
    Bare,
    Minimal,
    Sessionizer,
    /// The sessionizer with `kafka.repartition_topic` empty, on the same topic.
    SessionizerRepartitionOff,
    /// The sessionizer on the misplaced topic: every trace forwarded once.
    SessionizerAllForwarded,
}

impl Variant {
    /// Every variant, in the order a repetition runs them.
    pub(crate) const ALL: [Variant; 5] = [
        Variant::Bare,
        Variant::Minimal,
        Variant::Sessionizer,
        Variant::SessionizerRepartitionOff,
        Variant::SessionizerAllForwarded,
    ];

    /// The order repetition `rep` (from 1) runs them in: [`Variant::ALL`], with repartitioning
    /// on and off swapped in even repetitions, so that neither side of that ratio always
    /// runs first (a run leaves the broker's caches and the machine warmer for the next).
    fn in_rep(rep: usize) -> [Variant; 5] {
        let mut order = Variant::ALL;
        if rep.is_multiple_of(2) {
            order.swap(2, 3);
        }
        order
    }

    /// Its name in the JSON and the progress lines.
    fn label(self) -> &'static str {
        match self {
            Variant::Bare => "bare",
            Variant::Minimal => "minimal",
            Variant::Sessionizer => "sessionizer",
            Variant::SessionizerRepartitionOff => "sessionizer_repartition_off",
            Variant::SessionizerAllForwarded => "sessionizer_all_forwarded",
        }
    }
}

/// The figures of one run over the whole topic.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Run {
    pub(crate) variant: Variant,
    pub(crate) traces: u64,
    pub(crate) seconds: f64,
    pub(crate) traces_per_second: f64,
    /// Process CPU over the window per trace (the ack server's thread included).
    pub(crate) cpu_us_per_trace: f64,
    /// The ack server thread's share of it (sessionizer runs only).
    pub(crate) ack_cpu_us_per_trace: f64,
    /// `cpu_us_per_trace` minus the ack server.
    pub(crate) cpu_us_per_trace_without_ack: f64,
    /// Share of the machine's cores busy in this process during the window.
    pub(crate) cpu_utilization: f64,
    /// Broker CPU per trace (another process, not in `cpu_us_per_trace`), when its pid is known.
    pub(crate) broker_cpu_us_per_trace: Option<f64>,
    /// Share of the machine's cores busy with neither this process nor the broker: other
    /// people's work on the machine during the window (noise).
    pub(crate) others_cpu_share: f64,
    pub(crate) window: Window,
    /// Mean size of the row JSON (minimal: one Passthrough row; sessionizer: request bytes
    /// per row, including the envelope).
    pub(crate) row_json_bytes_mean: Option<f64>,
    /// Openlayer requests (sessionizer only).
    pub(crate) requests: Option<u64>,
    /// Traces forwarded through the repartition topic
    /// (`sessionizer_traces_repartitioned_total`, sessionizer only).
    pub(crate) repartitioned: Option<u64>,
    /// What the repartition stage held at most at once, sampled every millisecond, and how
    /// many traces it let go before their inputs caught up (sessionizer only).
    pub(crate) holding: Option<Holding>,
}

/// The repartition stage's holding in one sessionizer run.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Holding {
    /// Peak of `sessionizer_partition_group_buffered_traces`.
    pub(crate) peak_partition_group: i64,
    /// Peak of `sessionizer_alignment_held_traces`.
    pub(crate) peak_alignment: i64,
    /// `sessionizer_alignment_forced_total` at the end.
    pub(crate) forced: u64,
}

/// A run's figures from its measured window; `cores` scales CPU seconds to machine shares.
pub(crate) fn run_from(variant: Variant, traces: u64, window: Window, cores: f64) -> Run {
    let per_trace = |seconds: f64| seconds * 1e6 / traces as f64;
    Run {
        variant,
        traces,
        seconds: window.seconds,
        traces_per_second: traces as f64 / window.seconds,
        cpu_us_per_trace: per_trace(window.process_cpu_seconds),
        ack_cpu_us_per_trace: per_trace(window.ack_cpu_seconds),
        cpu_us_per_trace_without_ack: per_trace(
            window.process_cpu_seconds - window.ack_cpu_seconds,
        ),
        cpu_utilization: window.process_cpu_seconds / window.seconds / cores,
        broker_cpu_us_per_trace: window.broker_cpu_seconds.map(per_trace),
        others_cpu_share: window.others_cpu_seconds / window.seconds / cores,
        window,
        row_json_bytes_mean: None,
        requests: None,
        repartitioned: None,
        holding: None,
    }
}

/// One run of a baseline (`bare` or `minimal`) on its own thread, in a fresh group.
pub(crate) fn run_baseline(
    bootstrap: &str,
    topic: &str,
    traces: u64,
    variant: Variant,
    broker_pid: Option<u32>,
) -> Result<Run> {
    let consumer = baseline_consumer(bootstrap, topic)?;
    let started = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let worker = {
        let (started, done) = (started.clone(), done.clone());
        std::thread::spawn(move || -> Result<u64> {
            let decoder = Decoder::new(Limits::default());
            let deadline = Instant::now() + RUN_TIMEOUT;
            let mut row_bytes = 0u64;
            let mut count = 0u64;
            while count < traces && Instant::now() < deadline {
                let Some(received) = consumer.poll(Duration::from_millis(100)) else {
                    continue;
                };
                let message = match received {
                    Ok(message) => message,
                    Err(error) => {
                        eprintln!("bench: consumer error: {error}");
                        continue;
                    }
                };
                started.store(1, Ordering::Relaxed);
                let payload = message.payload().unwrap_or_default();
                match variant {
                    Variant::Bare => {
                        black_box(payload.len());
                    }
                    _ => {
                        let event = decoder.decode(payload).context("preloaded trace")?;
                        let inference_id = event.inference_id.as_deref().unwrap_or_default();
                        let row = openlayer_row(&event, inference_id, &Placement::Passthrough);
                        row_bytes += black_box(row).get().len() as u64;
                    }
                }
                count += 1;
                done.store(count, Ordering::Relaxed);
            }
            drop(consumer);
            Ok(row_bytes)
        })
    };
    let window = measure::window(
        &|| started.load(Ordering::Relaxed),
        &|| done.load(Ordering::Relaxed),
        traces,
        (None, broker_pid),
        RUN_TIMEOUT,
    );
    let row_bytes = worker
        .join()
        .map_err(|_| anyhow::anyhow!("baseline consumer panicked"))??;
    let mut run = run_from(variant, traces, window?, cores());
    if variant == Variant::Minimal {
        run.row_json_bytes_mean = Some(row_bytes as f64 / traces as f64);
    }
    Ok(run)
}

/// One run of the sessionizer pipeline until the ack server has every trace's row; `variant`
/// names it in the figures.
pub(crate) fn run_sessionizer(
    runtime: &Runtime,
    settings: PipelineSettings,
    ack: &AckServer,
    (traces, variant): (u64, Variant),
    broker_pid: Option<u32>,
) -> Result<Run> {
    ack.reset(false);
    let running = start_pipeline(runtime, settings)?;
    let metrics = running.metrics.clone();
    let holding = std::cell::Cell::new(Holding::default());
    let window = measure::window(
        &|| metrics.events_consumed.get(),
        &|| {
            let peak = holding.get();
            holding.set(Holding {
                peak_partition_group: peak
                    .peak_partition_group
                    .max(metrics.partition_group_buffered.get()),
                peak_alignment: peak.peak_alignment.max(metrics.alignment_held.get()),
                forced: metrics.alignment_forced.get(),
            });
            metrics.rows_shipped.get()
        },
        traces,
        (Some(ack.tid()), broker_pid),
        RUN_TIMEOUT,
    );
    let (_, registry) = running.stop(runtime)?;
    let window = window?;
    let dead_letters = counter_sum(&registry, "sessionizer_dead_letters_total");
    ensure!(
        dead_letters == 0.0,
        "{dead_letters} traces dead-lettered: the bench must measure the happy path"
    );
    ensure!(
        ack.rows() >= traces,
        "the ack server counted {} rows of {traces}",
        ack.rows()
    );
    let mut run = run_from(variant, traces, window, cores());
    run.row_json_bytes_mean = Some(ack.body_bytes() as f64 / ack.rows() as f64);
    run.requests = Some(ack.requests());
    // A whole number: the sum of integer counters.
    run.repartitioned =
        Some(counter_sum(&registry, "sessionizer_traces_repartitioned_total") as u64);
    run.holding = Some(holding.get());
    Ok(run)
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct VariantSummary {
    pub(crate) median_traces_per_second: f64,
    pub(crate) median_cpu_us_per_trace: f64,
    pub(crate) median_cpu_us_per_trace_without_ack: f64,
    pub(crate) median_ack_cpu_us_per_trace: f64,
    pub(crate) median_broker_cpu_us_per_trace: Option<f64>,
    pub(crate) median_others_cpu_share: f64,
}

/// Medians over the runs of `variant`.
pub(crate) fn summarize(runs: &[Run], variant: Variant) -> VariantSummary {
    let of = |field: fn(&Run) -> f64| {
        median(
            &runs
                .iter()
                .filter(|run| run.variant == variant)
                .map(field)
                .collect::<Vec<_>>(),
        )
    };
    VariantSummary {
        median_traces_per_second: of(|run| run.traces_per_second),
        median_cpu_us_per_trace: of(|run| run.cpu_us_per_trace),
        median_cpu_us_per_trace_without_ack: of(|run| run.cpu_us_per_trace_without_ack),
        median_ack_cpu_us_per_trace: of(|run| run.ack_cpu_us_per_trace),
        median_broker_cpu_us_per_trace: Some(of(|run| {
            run.broker_cpu_us_per_trace.unwrap_or(f64::NAN)
        }))
        .filter(|value| value.is_finite()),
        median_others_cpu_share: of(|run| run.others_cpu_share),
    }
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Throughput {
    pub(crate) workload: Workload,
    pub(crate) changelog: bool,
    /// The variants run (all, unless `--variants` chose some): the others' figures are NaN
    /// (`null` in the JSON).
    pub(crate) variants: Vec<Variant>,
    /// Repetitions: each ran every variant in `variants` once, in [`Variant::in_rep`]'s order.
    pub(crate) reps: usize,
    pub(crate) runs: Vec<Run>,
    pub(crate) bare: VariantSummary,
    pub(crate) minimal: VariantSummary,
    pub(crate) sessionizer: VariantSummary,
    pub(crate) sessionizer_repartition_off: VariantSummary,
    pub(crate) sessionizer_all_forwarded: VariantSummary,
    /// Median sessionizer throughput over median minimal-pipeline throughput.
    pub(crate) ratio_to_minimal: f64,
    /// Same, per repetition (runs of one repetition ran back to back).
    pub(crate) ratio_to_minimal_per_rep: Vec<f64>,
    pub(crate) ratio_to_bare: f64,
    pub(crate) minimal_ratio_to_bare: f64,
    pub(crate) goal_ratio_to_minimal: f64,
    /// Agreeing producers: sessionizer throughput with repartitioning on over off, the median
    /// of the repetitions' ratios.
    pub(crate) ratio_repartition_on_to_off: f64,
    pub(crate) ratio_repartition_on_to_off_per_rep: Vec<f64>,
    /// The same pairs' ratios of CPU per trace without the ack server, and their median.
    pub(crate) cpu_ratio_repartition_on_to_off: f64,
    pub(crate) cpu_ratio_repartition_on_to_off_per_rep: Vec<f64>,
    pub(crate) goal_ratio_repartition_on_to_off: f64,
    /// Median throughput with every trace forwarded over agreeing producers' (repartitioning
    /// on in both); no goal.
    pub(crate) ratio_all_forwarded_to_agreeing: f64,
    pub(crate) ratio_all_forwarded_to_agreeing_per_rep: Vec<f64>,
}

/// `numerator`'s throughput over `denominator`'s in each repetition of `per_rep` runs.
fn ratio_per_rep(runs: &[Run], per_rep: usize, pair: (Variant, Variant)) -> Vec<f64> {
    figure_ratio_per_rep(runs, per_rep, pair, |run| run.traces_per_second)
}

/// `figure` of `numerator` over `denominator` in each repetition of `per_rep` runs.
fn figure_ratio_per_rep(
    runs: &[Run],
    per_rep: usize,
    (numerator, denominator): (Variant, Variant),
    figure: fn(&Run) -> f64,
) -> Vec<f64> {
    let of = |rep: &[Run], variant: Variant| {
        rep.iter()
            .find(|run| run.variant == variant)
            .map_or(f64::NAN, figure)
    };
    runs.chunks(per_rep.max(1))
        .map(|rep| of(rep, numerator) / of(rep, denominator))
        .collect()
}

/// How many traces a sessionizer variant must have forwarded through the repartition topic.
fn expected_forwards(variant: Variant, traces: u64) -> u64 {
    match variant {
        Variant::SessionizerAllForwarded => traces,
        _ => 0,
    }
}

/// Pre-loads the throughput and misplaced topics, then runs the variants `--reps` times,
/// interleaved.
pub(crate) fn throughput(bench: &mut Bench<'_>) -> Result<Throughput> {
    let Bench {
        args,
        runtime,
        bootstrap,
        topics,
        ack,
        broker_pid,
        created,
    } = bench;
    let population = Population::new(args.sessions)?;
    let misplaced = Topics {
        traces: unique("bench-traces-misplaced"),
        ..topics.clone()
    };
    runtime.block_on(create_topics(bootstrap, &[(&misplaced.traces, PARTITIONS)]))?;
    created.push(misplaced.traces.clone());
    eprintln!(
        "bench: pre-loading {} traces ({} sessions x {} turns) to {} and, each in another \
         partition than its session's, to {}",
        args.sessions * args.turns,
        args.sessions,
        args.turns,
        topics.traces,
        misplaced.traces
    );
    let workload = preload(
        bootstrap,
        &[
            (&topics.traces, Placing::ByKey),
            (&misplaced.traces, Placing::Elsewhere),
        ],
        &population,
        args.turns,
    )?;
    eprintln!(
        "bench: pre-loaded in {:.1} s ({:.0} traces/s to each topic), Avro {:.0} B mean",
        workload.preload_seconds, workload.preload_traces_per_second, workload.avro_bytes_mean
    );
    let traces = workload.traces;
    let mut variants = args.variants.clone();
    variants.sort_unstable();
    variants.dedup();
    let mut runs = Vec::new();
    for rep in 1..=args.reps {
        for variant in Variant::in_rep(rep)
            .into_iter()
            .filter(|variant| variants.contains(variant))
        {
            let run = match variant {
                Variant::Bare | Variant::Minimal => {
                    run_baseline(bootstrap, &topics.traces, traces, variant, *broker_pid)?
                }
                _ => {
                    let changelog = (!args.no_changelog).then(|| unique("bench-state"));
                    if let Some(changelog) = &changelog {
                        created.push(changelog.clone());
                    }
                    let (read, customize): (&Topics, &dyn Fn(&mut SessionizerConfig)) =
                        match variant {
                            Variant::SessionizerRepartitionOff => (topics, &|config| {
                                config.kafka.repartition_topic = Some(String::new());
                            }),
                            Variant::SessionizerAllForwarded => (&misplaced, &|_| {}),
                            _ => (topics, &|_| {}),
                        };
                    let settings =
                        sessionizer_settings(bootstrap, read, ack, changelog, customize)?;
                    created.extend(repartition_topic(&settings));
                    let run =
                        run_sessionizer(runtime, settings, ack, (traces, variant), *broker_pid)?;
                    let forwarded = run.repartitioned.unwrap_or_default();
                    let expected = expected_forwards(variant, traces);
                    ensure!(
                        forwarded == expected,
                        "{}: {forwarded} traces forwarded through the repartition topic, \
                         expected {expected} of {traces}",
                        variant.label()
                    );
                    run
                }
            };
            let held = run.holding.map_or(String::new(), |holding| {
                format!(
                    ", held at most {} + {}, {} forced",
                    holding.peak_partition_group, holding.peak_alignment, holding.forced
                )
            });
            eprintln!(
                "bench: rep {rep} {:<27} {:>8.0} traces/s  {:>6.1} µs CPU/trace  ({:.2} s, \
                 the last tenth {:.2} s{held})",
                variant.label(),
                run.traces_per_second,
                run.cpu_us_per_trace,
                run.seconds,
                run.seconds - run.window.seconds_to_nine_tenths
            );
            runs.push(run);
        }
    }
    let bare = summarize(&runs, Variant::Bare);
    let minimal = summarize(&runs, Variant::Minimal);
    let sessionizer = summarize(&runs, Variant::Sessionizer);
    let repartition_off = summarize(&runs, Variant::SessionizerRepartitionOff);
    let all_forwarded = summarize(&runs, Variant::SessionizerAllForwarded);
    let per_rep = variants.len();
    let on_to_off = (Variant::Sessionizer, Variant::SessionizerRepartitionOff);
    let on_to_off_per_rep = ratio_per_rep(&runs, per_rep, on_to_off);
    let cpu_on_to_off_per_rep = figure_ratio_per_rep(&runs, per_rep, on_to_off, |run| {
        run.cpu_us_per_trace_without_ack
    });
    Ok(Throughput {
        workload,
        changelog: !args.no_changelog,
        variants,
        reps: args.reps,
        ratio_to_minimal: sessionizer.median_traces_per_second / minimal.median_traces_per_second,
        ratio_to_minimal_per_rep: ratio_per_rep(
            &runs,
            per_rep,
            (Variant::Sessionizer, Variant::Minimal),
        ),
        ratio_to_bare: sessionizer.median_traces_per_second / bare.median_traces_per_second,
        minimal_ratio_to_bare: minimal.median_traces_per_second / bare.median_traces_per_second,
        goal_ratio_to_minimal: 0.6,
        ratio_repartition_on_to_off: median(&on_to_off_per_rep),
        ratio_repartition_on_to_off_per_rep: on_to_off_per_rep,
        cpu_ratio_repartition_on_to_off: median(&cpu_on_to_off_per_rep),
        cpu_ratio_repartition_on_to_off_per_rep: cpu_on_to_off_per_rep,
        goal_ratio_repartition_on_to_off: 0.98,
        ratio_all_forwarded_to_agreeing: all_forwarded.median_traces_per_second
            / sessionizer.median_traces_per_second,
        ratio_all_forwarded_to_agreeing_per_rep: ratio_per_rep(
            &runs,
            per_rep,
            (Variant::SessionizerAllForwarded, Variant::Sessionizer),
        ),
        runs,
        bare,
        minimal,
        sessionizer,
        sessionizer_repartition_off: repartition_off,
        sessionizer_all_forwarded: all_forwarded,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rep_runs_every_variant_once() {
        for rep in 1..=4 {
            let order = Variant::in_rep(rep);
            for variant in Variant::ALL {
                assert_eq!(order.iter().filter(|&&run| run == variant).count(), 1);
            }
        }
    }

    #[test]
    fn repartition_on_and_off_take_turns_to_run_first() {
        let position = |rep, variant| {
            Variant::in_rep(rep)
                .iter()
                .position(|&run| run == variant)
                .unwrap_or(usize::MAX)
        };
        assert!(
            position(1, Variant::Sessionizer) < position(1, Variant::SessionizerRepartitionOff)
        );
        assert!(
            position(2, Variant::SessionizerRepartitionOff) < position(2, Variant::Sessionizer)
        );
    }
}
