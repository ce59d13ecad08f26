//! `pipeline-bench`: the sessionizer end to end on the real broker, every figure set against a
//! baseline measured in the same run on the same machine.
//!
//! 1. Throughput: the sessionizer against a bare and a minimal consumer on one pre-loaded
//!    topic, and its repartition stage: on against off with agreeing producers, and every
//!    trace forwarded (a second topic, each trace in another partition) ([`throughput`]).
//! 2. Lag: traces produced at half the measured maximum, their delay through the pipeline
//!    against a reference consumer's ([`lag`]).
//! 3. Gateway. The ingest gateway in-process, driven over HTTP with SDK-shaped requests of
//!    the same traces: rows/s acknowledged by Kafka (one trace per request, and batched) and
//!    request latency at half that rate ([`gateway`]).
//! 4. State memory. Child processes open N single-turn sessions in `PartitionWindows` and
//!    report RSS growth per session ([`memory`]).
//!
//! Also: the official SDK on the same traces ([`sdk`]) and scaling with partitions and batch
//! size ([`scaling`]). Writes the figures to `--out` (JSON) for `scripts/bench_report.py`.
//!
//! # Layout
//! - [`cli`]: the command line.
//! - [`setup`]: constants, names and the run on the broker every Kafka part shares.
//! - [`kafka`]: topic admin, the loading producer, the baselines' consumer.
//! - [`traces`]: realistic traces built through the producer helpers.
//! - [`preload`]: the workload produced to a topic before the runs.
//! - [`pipeline`]: the sessionizer under test, started and stopped per run.
//! - [`ack`]: the in-process Openlayer-compatible server the sessionizer ships to.
//! - [`measure`]: clocks, CPU and memory counters, histograms and quantiles.
//! - [`throughput`], [`sdk`], [`gateway`], [`scaling`], [`lag`], [`memory`]: the parts.
//! - [`report`]: the summary on stdout and the JSON figures.

mod ack;
mod cli;
mod gateway;
mod http_client;
mod kafka;
mod lag;
mod measure;
mod memory;
mod otel_memory;
mod pipeline;
mod preload;
mod produce_latency;
mod report;
mod scaling;
mod sdk;
mod setup;
mod throughput;
mod traces;

use ::gateway::config::AnswerAfter;
use anyhow::{Context as _, Result, bail};
use clap::Parser as _;
use cli::{Args, Part, ProbeCommand};
use report::Report;
use setup::{Bench, PARTITIONS, cores, unique};
use std::path::{Path, PathBuf};
use std::time::Instant;

fn main() -> Result<()> {
    let args = Args::parse();
    match &args.probe {
        Some(ProbeCommand::MemoryProbe { sessions, journal }) => {
            let probe = memory::probe(*sessions, *journal)?;
            println!("{}", serde_json::to_string(&probe)?);
            return Ok(());
        }
        Some(ProbeCommand::OtelMemoryProbe { traces }) => {
            let probe = otel_memory::probe(*traces)?;
            println!("{}", serde_json::to_string(&probe)?);
            return Ok(());
        }
        None => {}
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let started = Instant::now();
    let mut report = Report::new(cores());
    if args.wants(Part::Sdk) && args.sdk_python.is_none() {
        eprintln!(
            "bench: no --sdk-python (OPENLAYER_SDK_PYTHON): skipping the official SDK comparison"
        );
    }
    if args.wants_broker() {
        run_on_broker(&args, &mut report)?;
    }
    if args.wants(Part::Memory) {
        report.memory = Some(memory::state_memory(
            &args.memory_sessions,
            args.journal_sessions,
        )?);
        if args.otel_traces > 0 {
            eprintln!(
                "bench: memory of {} open OpenTelemetry traces",
                args.otel_traces
            );
            report.otel_memory = Some(otel_memory::probe_in_child(args.otel_traces)?);
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    report::print(&report);
    report::write(&report, &args.out)
}

/// The parts that need the broker, one after the other on one [`Bench`].
fn run_on_broker(args: &Args, report: &mut Report) -> Result<()> {
    let bootstrap = args.bootstrap.clone().context(
        "KAFKA_BOOTSTRAP is not set: run scripts/bench.sh, or `scripts/kafka-broker.sh up` \
         and pass the KAFKA_BOOTSTRAP it prints",
    )?;
    let mut bench = Bench::start(args, bootstrap)?;
    let outcome = run_broker_parts(&mut bench, report);
    // The broker keeps topics in memory: give it back whatever happened.
    if let Err(error) = bench
        .runtime
        .block_on(kafka::delete_topics(&bench.bootstrap, &bench.created))
    {
        eprintln!("bench: could not delete the bench topics: {error}");
    }
    outcome
}

fn run_broker_parts(bench: &mut Bench<'_>, report: &mut Report) -> Result<()> {
    let args = bench.args;
    bench.runtime.block_on(kafka::create_topics(
        &bench.bootstrap,
        &[
            (&bench.topics.traces, PARTITIONS),
            (&bench.topics.dead_letters, 1),
            (&bench.topics.sessions, 1),
        ],
    ))?;
    if args.wants(Part::Throughput) {
        report.throughput = Some(throughput::throughput(bench)?);
    }
    if args.wants(Part::Sdk)
        && let Some(python) = &args.sdk_python
    {
        report.sdk = Some(run_sdk(bench, python)?);
    }
    if args.wants(Part::Gateway) {
        report.gateway = Some(run_gateway(bench, AnswerAfter::Acknowledged)?);
        report.gateway_queued = Some(run_gateway(bench, AnswerAfter::Queued)?);
    }
    if args.wants(Part::Scaling) {
        let throughput_traces = report.throughput.as_ref().map(|t| t.workload.traces);
        report.scaling = Some(scaling::scaling(
            bench,
            throughput_traces,
            &args.partition_counts,
            &args.batch_rows,
        )?);
    }
    if args.wants(Part::Lag) {
        let (rate, source) = lag_rate(args, report.throughput.as_ref())?;
        report.lag = Some(lag::lag(bench, rate, source)?);
    }
    Ok(())
}

/// Where the SDK's trace files go: beside the report.
fn work_dir(args: &Args) -> PathBuf {
    args.out
        .parent()
        .map_or_else(|| PathBuf::from("."), PathBuf::from)
}

fn run_sdk(bench: &Bench<'_>, python: &Path) -> Result<sdk::Sdk> {
    let args = bench.args;
    sdk::measure(
        python,
        &args.sdk_script,
        &work_dir(args),
        args.sessions,
        (args.sdk_traces, args.sdk_burst),
        &bench.ack,
    )
}

fn run_gateway(bench: &mut Bench<'_>, answer_after: AnswerAfter) -> Result<gateway::Gateway> {
    let args = bench.args;
    let topic = unique("bench-gateway");
    bench.created.push(topic.clone());
    bench.runtime.block_on(kafka::create_topics(
        &bench.bootstrap,
        &[(&topic, PARTITIONS)],
    ))?;
    gateway::measure(
        &bench.runtime,
        (&bench.bootstrap, &topic),
        answer_after,
        &gateway::Plan {
            traces: args.gateway_traces,
            batch_rows: args.gateway_batch_rows,
            clients: args.gateway_clients,
            latency_secs: args.gateway_latency_secs,
            sessions: args.sessions,
            broker_pid: args.broker_pid,
            sdk: args.sdk_python.as_ref().map(|python| sdk::Script {
                python: python.clone(),
                script: args.sdk_script.clone(),
                work_dir: work_dir(args),
                sessions: args.sessions,
                traces: args.sdk_gateway_traces,
                reps: args.sdk_gateway_reps,
            }),
        },
        &bench.ack,
    )
}

/// The lag run's production rate: `--lag-rate`, else half the sessionizer's measured maximum.
fn lag_rate(
    args: &Args,
    throughput: Option<&throughput::Throughput>,
) -> Result<(f64, &'static str)> {
    let measured = throughput
        .map(|t| t.sessionizer.median_traces_per_second / 2.0)
        .filter(|rate| rate.is_finite());
    Ok(match (args.lag_rate, measured) {
        (Some(rate), _) => (rate, "--lag-rate"),
        (None, Some(rate)) => (rate, "half the measured sessionizer maximum"),
        (None, None) => bail!("--only lag needs --lag-rate"),
    })
}
