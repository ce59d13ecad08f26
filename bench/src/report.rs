//! The report: every part's figures in one structure, printed as a summary on stdout and
//! written as JSON to `--out` for `scripts/bench_report.py`.

use crate::gateway::Gateway;
use crate::lag::Lag;
use crate::memory::Memory;
use crate::otel_memory::OtelProbe;
use crate::scaling::Scaling;
use crate::sdk::Sdk;
use crate::throughput::Throughput;
use anyhow::{Context as _, Result};
use serde::Serialize;
use std::path::Path;

#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) cores: f64,
    pub(crate) seconds: f64,
    pub(crate) throughput: Option<Throughput>,
    pub(crate) sdk: Option<Sdk>,
    /// The gateway answering once Kafka acknowledged (its default).
    pub(crate) gateway: Option<Gateway>,
    /// The gateway answering once queued (`http.answer_after = "queued"`).
    pub(crate) gateway_queued: Option<Gateway>,
    pub(crate) scaling: Option<Scaling>,
    pub(crate) lag: Option<Lag>,
    pub(crate) memory: Option<Memory>,
    /// Memory per open trace of the Collector path's assembler.
    pub(crate) otel_memory: Option<OtelProbe>,
}

impl Report {
    /// A report with no part's figures yet.
    pub(crate) fn new(cores: f64) -> Self {
        Report {
            cores,
            seconds: 0.0,
            throughput: None,
            sdk: None,
            gateway: None,
            gateway_queued: None,
            scaling: None,
            lag: None,
            memory: None,
            otel_memory: None,
        }
    }
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

/// The summary on stdout, one block per part that ran.
pub(crate) fn print(report: &Report) {
    println!();
    println!("Sessionizer end to end ({} cores)", report.cores);
    if let Some(throughput) = &report.throughput {
        print_throughput(throughput);
    }
    if let Some(sdk) = &report.sdk {
        print_sdk(sdk, report.throughput.as_ref());
    }
    for gateway in [&report.gateway, &report.gateway_queued]
        .into_iter()
        .flatten()
    {
        print_gateway(gateway, report.throughput.as_ref());
    }
    if let Some(scaling) = &report.scaling {
        print_scaling(scaling);
    }
    if let Some(lag) = &report.lag {
        print_lag(lag);
    }
    if let Some(memory) = &report.memory {
        print_memory(memory);
    }
    if let Some(otel) = &report.otel_memory {
        println!(
            "  OpenTelemetry assembly: {} open traces ({} spans) hold {:.0} B/trace \
             ({:.0} B of protobuf on the wire)",
            otel.traces, otel.held_spans, otel.bytes_per_open_trace, otel.protobuf_bytes_per_trace
        );
    }
}

fn print_throughput(t: &Throughput) {
    let w = &t.workload;
    println!(
        "  workload: {} traces, {} sessions x {} turns, {} users, {} partitions; \
         Avro {:.0} B mean ({}-{}), {} steps {} deep",
        w.traces,
        w.sessions,
        w.turns_per_session,
        w.users,
        w.partitions,
        w.avro_bytes_mean,
        w.avro_bytes_min,
        w.avro_bytes_max,
        w.steps_per_trace,
        w.step_nesting_depth
    );
    for (label, summary) in [
        ("bare consumption", &t.bare),
        ("minimal decode+row", &t.minimal),
        ("sessionizer", &t.sessionizer),
        ("  repartition off", &t.sessionizer_repartition_off),
        ("  all forwarded", &t.sessionizer_all_forwarded),
    ] {
        println!(
            "  {label:<19} {:>8.0} traces/s  {:>6.1} µs CPU/trace  (broker {} µs/trace, \
             others busy {:.0} % of the machine)",
            summary.median_traces_per_second,
            summary.median_cpu_us_per_trace,
            summary
                .median_broker_cpu_us_per_trace
                .map_or("?".to_owned(), |broker| format!("{broker:.1}")),
            summary.median_others_cpu_share * 100.0
        );
    }
    println!(
        "  sessionizer CPU without the ack server: {:.1} µs/trace (ack server {:.1} µs/trace)",
        t.sessionizer.median_cpu_us_per_trace_without_ack,
        t.sessionizer.median_ack_cpu_us_per_trace
    );
    println!(
        "  sessionizer / minimal = {:.2}x (per rep {:?})  goal >= {:.1}: {}",
        t.ratio_to_minimal,
        rounded(&t.ratio_to_minimal_per_rep),
        t.goal_ratio_to_minimal,
        verdict(t.ratio_to_minimal >= t.goal_ratio_to_minimal)
    );
    println!(
        "  sessionizer / bare = {:.2}x, minimal / bare = {:.2}x",
        t.ratio_to_bare, t.minimal_ratio_to_bare
    );
    println!(
        "  agreeing producers, repartitioning on / off = {:.2}x (per rep {:?})  goal >= {:.2}: {}",
        t.ratio_repartition_on_to_off,
        rounded(&t.ratio_repartition_on_to_off_per_rep),
        t.goal_ratio_repartition_on_to_off,
        verdict(t.ratio_repartition_on_to_off >= t.goal_ratio_repartition_on_to_off)
    );
    println!(
        "  every trace repartitioned / agreeing = {:.2}x (per rep {:?})",
        t.ratio_all_forwarded_to_agreeing,
        rounded(&t.ratio_all_forwarded_to_agreeing_per_rep)
    );
}

/// Ratios to two decimals, for the per-repetition lists.
fn rounded(ratios: &[f64]) -> Vec<f64> {
    ratios
        .iter()
        .map(|ratio| (ratio * 100.0).round() / 100.0)
        .collect()
}

fn print_sdk(sdk: &Sdk, throughput: Option<&Throughput>) {
    println!(
        "  official SDK {} (Python): synchronous {:.0} rows/s ({} traces in {:.1} s); \
         background burst of {}: {} delivered, {} dropped",
        sdk.sdk_version,
        sdk.sync.rows_per_second,
        sdk.sync.traces,
        sdk.sync.seconds,
        sdk.background.traces,
        sdk.background.delivered,
        sdk.background.dropped_logged
    );
    if let Some(t) = throughput {
        println!(
            "    sessionizer / SDK sync = {:.1}x (goal >= 50x: {})",
            t.sessionizer.median_traces_per_second / sdk.sync.rows_per_second,
            verdict(t.sessionizer.median_traces_per_second / sdk.sync.rows_per_second >= 50.0)
        );
    }
}

fn print_gateway(g: &Gateway, throughput: Option<&Throughput>) {
    for run in [&g.single, &g.batched] {
        println!(
            "  gateway answering {}, {} trace(s)/request, {} clients: {:.0} rows/s acknowledged by \
             Kafka ({:.0} B/row; CPU per row: gateway {:.1} µs, librdkafka {:.1} µs, clients \
             {:.1} µs; others busy {:.0} % of the machine; {} answers 503 retried)",
            crate::gateway::answer_label(g.answer_after),
            run.rows_per_request,
            g.clients,
            run.rows_per_second,
            run.body_bytes_per_row,
            run.gateway_cpu_us_per_row,
            run.librdkafka_cpu_us_per_row,
            run.client_cpu_us_per_row,
            run.others_cpu_share * 100.0,
            run.retried_503
        );
    }
    println!(
        "  gateway latency at {:.0} requests/s (achieved {:.0}/s for {:.0} s): p50 {:.4} s, \
         p99 {:.4} s, max {:.4} s; this process {:.0} %, others {:.0} % of the machine",
        g.latency.target_rate,
        g.latency.achieved_rate,
        g.latency.seconds,
        g.latency.p50_seconds,
        g.latency.p99_seconds,
        g.latency.max_seconds,
        g.latency.process_cpu_share * 100.0,
        g.latency.others_cpu_share * 100.0
    );
    if let Some(bare) = &g.latency.bare_producer {
        println!(
            "    a bare producer with the gateway's settings at that rate: p50 {:.4} s, p99 {:.4} s, \
             max {:.4} s; gateway p99 / bare p99 = {:.2}x",
            bare.p50_seconds,
            bare.p99_seconds,
            bare.max_seconds.unwrap_or(f64::NAN),
            g.latency.p99_seconds / bare.p99_seconds
        );
    }
    if let Some(t) = throughput {
        println!(
            "    gateway / sessionizer throughput = {:.2}x",
            g.single.rows_per_second / t.sessionizer.median_traces_per_second
        );
    }
}

fn print_scaling(s: &Scaling) {
    for (label, points) in [("partitions", &s.partitions), ("batch rows", &s.batches)] {
        for point in points {
            println!(
                "  scaling {label}: {} partition(s) x {} instance(s), batch {}: {:.0} traces/s \
                 ({:.2}x), {:.1} µs CPU/trace ({:.2}x)",
                point.partitions,
                point.instances,
                point.batch_rows,
                point.median_traces_per_second,
                point.throughput_ratio,
                point.median_cpu_us_per_trace_without_ack,
                point.cpu_ratio
            );
        }
    }
}

fn print_lag(l: &Lag) {
    println!(
        "  lag at {:.0} traces/s ({}; achieved {:.0}/s for {:.0} s; machine share: this \
         process {:.0} %, broker {}, others {:.0} %):",
        l.target_rate,
        l.rate_source,
        l.achieved_rate,
        l.seconds,
        l.cpu_utilization * 100.0,
        l.broker_cpu_share
            .map_or("?".to_owned(), |share| format!("{:.0} %", share * 100.0)),
        l.others_cpu_share * 100.0
    );
    for (label, figures) in [
        ("whole run", &l.whole_run),
        ("after warm-up", &l.after_warmup),
    ] {
        println!(
            "    {label:<13}: sessionization lag p50 {:.3} s, p99 {:.3} s ({:.2} % within 1 s); \
             reference consumer p50 {:.3} s, p99 {:.3} s",
            figures.sessionization_lag.p50_seconds,
            figures.sessionization_lag.p99_seconds,
            figures.share_within_1s * 100.0,
            figures.reference_consumer_lag.p50_seconds,
            figures.reference_consumer_lag.p99_seconds,
        );
    }
    let core_share = |prefix: &str| {
        l.window
            .threads
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(_, seconds)| seconds)
            .sum::<f64>()
            / l.window.seconds
            * 100.0
    };
    println!(
        "    busy, in % of one core: sessionizer runtime (tokio-rt-worker) {:.0} %, \
         librdkafka threads {:.0} %, ack server {:.0} %, bench producer (main) {:.0} %",
        core_share("tokio-rt-worker"),
        core_share("rdk:"),
        core_share("ack-server"),
        core_share("pipeline-bench"),
    );
    let ratio =
        l.whole_run.sessionization_lag.p99_seconds / l.whole_run.reference_consumer_lag.p99_seconds;
    println!(
        "    goal p99 <= {:.1}x the reference consumer's (whole run): {ratio:.2}x, {}",
        l.goal_p99_to_reference,
        verdict(ratio <= l.goal_p99_to_reference)
    );
    println!(
        "    arrival at the ack server p50 {:.3} s, p99 {:.3} s (batch linger included)",
        l.ack_arrival_delay.p50_seconds, l.ack_arrival_delay.p99_seconds
    );
}

fn print_memory(m: &Memory) {
    for probe in &m.probes {
        println!(
            "  state memory: {:>8} open sessions  {:>6.0} B/session  goal < {:.0}: {}",
            probe.sessions,
            probe.bytes_per_session,
            m.goal_bytes_per_session,
            verdict(probe.bytes_per_session < m.goal_bytes_per_session)
        );
    }
    println!(
        "    growth {} (per-session spread within probes {:?}; largest/smallest {:.2}; \
         marginal {:.0} B/session over the last doubling)",
        if m.linear { "linear" } else { "NOT linear" },
        m.spread_within_probes
            .iter()
            .map(|spread| (spread * 100.0).round() / 100.0)
            .collect::<Vec<_>>(),
        m.growth_ratio_largest_to_smallest,
        m.marginal_bytes_per_session
    );
    if let Some(journal) = &m.journal
        && let Some(bytes) = journal.journal_bytes_per_session
    {
        println!("    journal: +{bytes:.0} B per session touched since the last checkpoint");
    }
}

/// Writes the figures as JSON to `out`, creating its directory.
pub(crate) fn write(report: &Report, out: &Path) -> Result<()> {
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(out, serde_json::to_string_pretty(report)?)
        .with_context(|| format!("writing {}", out.display()))?;
    println!("\nfigures written to {}", out.display());
    Ok(())
}
