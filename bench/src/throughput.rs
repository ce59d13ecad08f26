//! Throughput: the sessionizer against two baselines on the same pre-loaded topic.
//!
//! One topic (3 partitions) is pre-loaded once with an idempotent producer (the emitter's
//! settings: acks=all, lz4, linger 20 ms) with realistic traces: sessions × turns, two
//! sessions per user, turn-major order so every session is open at once. Then, `--reps`
//! times, each with a fresh consumer group reading from the beginning:
//! - `bare`: a `BaseConsumer` that only counts messages;
//! - `minimal`: a `BaseConsumer` that decodes each message (`trace_model::Decoder`) and
//!   serializes it as an Openlayer row (`sessionizer::enrich::openlayer_row` with
//!   `Placement::Passthrough`): no state, no HTTP;
//! - `sessionizer`: `sessionizer::pipeline::run` with the production defaults (changelog,
//!   session summaries, 1000-row batches, 500 ms linger, 4 requests in flight), shipping to
//!   the in-process ack server ([`AckServer`]).
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
use crate::kafka::baseline_consumer;
use crate::measure::{self, Window, median};
use crate::pipeline::{counter_sum, sessionizer_settings, start_pipeline};
use crate::preload::{Workload, preload};
use crate::setup::{Bench, RUN_TIMEOUT, cores, unique};
use crate::traces::Population;
use anyhow::{Context as _, Result, ensure};
use rdkafka::message::Message;
use serde::Serialize;
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Variant {
    Bare,
    Minimal,
    Sessionizer,
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

/// One run of the sessionizer pipeline until the ack server has every trace's row.
pub(crate) fn run_sessionizer(
    runtime: &Runtime,
    settings: PipelineSettings,
    ack: &AckServer,
    traces: u64,
    broker_pid: Option<u32>,
) -> Result<Run> {
    ack.reset(false);
    let running = start_pipeline(runtime, settings)?;
    let metrics = running.metrics.clone();
    let window = measure::window(
        &|| metrics.events_consumed.get(),
        &|| metrics.rows_shipped.get(),
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
    let mut run = run_from(Variant::Sessionizer, traces, window, cores());
    run.row_json_bytes_mean = Some(ack.body_bytes() as f64 / ack.rows() as f64);
    run.requests = Some(ack.requests());
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
    pub(crate) runs: Vec<Run>,
    pub(crate) bare: VariantSummary,
    pub(crate) minimal: VariantSummary,
    pub(crate) sessionizer: VariantSummary,
    /// Median sessionizer throughput over median minimal-pipeline throughput.
    pub(crate) ratio_to_minimal: f64,
    /// Same, per repetition (runs of one repetition ran back to back).
    pub(crate) ratio_to_minimal_per_rep: Vec<f64>,
    pub(crate) ratio_to_bare: f64,
    pub(crate) minimal_ratio_to_bare: f64,
    pub(crate) goal_ratio_to_minimal: f64,
}

/// Pre-loads the throughput topic, then runs the three variants `--reps` times, interleaved.
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
    eprintln!(
        "bench: pre-loading {} traces ({} sessions x {} turns) to {}",
        args.sessions * args.turns,
        args.sessions,
        args.turns,
        topics.traces
    );
    let workload = preload(bootstrap, &topics.traces, &population, args.turns)?;
    eprintln!(
        "bench: pre-loaded in {:.1} s ({:.0} traces/s), Avro {:.0} B mean",
        workload.preload_seconds, workload.preload_traces_per_second, workload.avro_bytes_mean
    );
    let traces = workload.traces;
    let mut runs = Vec::new();
    for rep in 1..=args.reps {
        for variant in [Variant::Bare, Variant::Minimal, Variant::Sessionizer] {
            let run = match variant {
                Variant::Sessionizer => {
                    let changelog = (!args.no_changelog).then(|| unique("bench-state"));
                    if let Some(changelog) = &changelog {
                        created.push(changelog.clone());
                    }
                    let settings =
                        sessionizer_settings(bootstrap, topics, ack, changelog, &|_| {})?;
                    run_sessionizer(runtime, settings, ack, traces, *broker_pid)?
                }
                _ => run_baseline(bootstrap, &topics.traces, traces, variant, *broker_pid)?,
            };
            eprintln!(
                "bench: rep {rep} {:<11} {:>8.0} traces/s  {:>6.1} µs CPU/trace  ({:.2} s)",
                format!("{variant:?}").to_lowercase(),
                run.traces_per_second,
                run.cpu_us_per_trace,
                run.seconds
            );
            runs.push(run);
        }
    }
    let bare = summarize(&runs, Variant::Bare);
    let minimal = summarize(&runs, Variant::Minimal);
    let sessionizer = summarize(&runs, Variant::Sessionizer);
    let per_rep = runs
        .chunks(3)
        .map(|rep| rep[2].traces_per_second / rep[1].traces_per_second)
        .collect();
    Ok(Throughput {
        workload,
        changelog: !args.no_changelog,
        ratio_to_minimal: sessionizer.median_traces_per_second / minimal.median_traces_per_second,
        ratio_to_minimal_per_rep: per_rep,
        ratio_to_bare: sessionizer.median_traces_per_second / bare.median_traces_per_second,
        minimal_ratio_to_bare: minimal.median_traces_per_second / bare.median_traces_per_second,
        goal_ratio_to_minimal: 0.6,
        runs,
        bare,
        minimal,
        sessionizer,
    })
}
