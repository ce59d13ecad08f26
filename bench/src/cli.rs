//! The command line: which parts run, their sizes, and the hidden memory-probe subcommand
//! the memory part runs in child processes.

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    about = "Sessionizer throughput, lag and state memory against same-run baselines",
    long_about = None
)]
pub(crate) struct Args {
    #[command(subcommand)]
    pub(crate) probe: Option<ProbeCommand>,
    /// Kafka bootstrap servers of the test broker (`scripts/kafka-broker.sh up` prints them).
    #[arg(long, env = "KAFKA_BOOTSTRAP")]
    pub(crate) bootstrap: Option<String>,
    /// Sessions of the throughput topic (two per user).
    #[arg(long, default_value_t = 5_000)]
    pub(crate) sessions: usize,
    /// Turns per session: the throughput topic holds sessions × turns traces.
    #[arg(long, default_value_t = 10)]
    pub(crate) turns: usize,
    /// Runs of each throughput variant, interleaved (medians are reported).
    #[arg(long, default_value_t = 5)]
    pub(crate) reps: usize,
    /// Throughput variants to run (all by default; a subset leaves the others' figures out,
    /// e.g. to profile one).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = crate::throughput::Variant::ALL)]
    pub(crate) variants: Vec<crate::throughput::Variant>,
    /// Seconds of production at half the maximum rate for the lag figure.
    #[arg(long, default_value_t = 30)]
    pub(crate) lag_secs: u64,
    /// Production rate of the lag run (traces/s); default: half the sessionizer's measured
    /// throughput.
    #[arg(long)]
    pub(crate) lag_rate: Option<f64>,
    /// Run the lag part with `kafka.repartition_topic` empty (to see what the repartition
    /// stage's alignment adds to the lag; the figure's goal is for the default).
    #[arg(long)]
    pub(crate) lag_repartition_off: bool,
    /// Seconds at the start of the lag run also reported apart (steady state after them).
    #[arg(long, default_value_t = 5)]
    pub(crate) lag_warmup_secs: u64,
    /// Open sessions of each state-memory probe.
    #[arg(long, value_delimiter = ',', default_values_t = [100_000, 1_000_000])]
    pub(crate) memory_sessions: Vec<usize>,
    /// Sessions of the probe that also measures the changelog journal (0: skip it).
    #[arg(long, default_value_t = 100_000)]
    pub(crate) journal_sessions: usize,
    /// Open traces of the Collector path's memory probe (0: skip it).
    #[arg(long, default_value_t = 100_000)]
    pub(crate) otel_traces: usize,
    /// Python of the official Openlayer SDK's venv (`scripts/python-venv.sh openlayer-sdk`
    /// prints its bin directory); without it the SDK comparison is skipped.
    #[arg(long, env = "OPENLAYER_SDK_PYTHON")]
    pub(crate) sdk_python: Option<PathBuf>,
    /// The SDK replay script.
    #[arg(long, default_value = "bench/openlayer_sdk.py")]
    pub(crate) sdk_script: PathBuf,
    /// Traces the SDK publishes synchronously (rows/s figure).
    #[arg(long, default_value_t = 1_000)]
    pub(crate) sdk_traces: usize,
    /// Traces of the burst in the SDK's default background mode (delivered/dropped figure).
    #[arg(long, default_value_t = 1_000)]
    pub(crate) sdk_burst: usize,
    /// Sessions of each scaling topic (sessions × turns traces per partition count).
    #[arg(long, default_value_t = 5_000)]
    pub(crate) scaling_sessions: usize,
    /// Runs of each scaling configuration, interleaved (medians are reported).
    #[arg(long, default_value_t = 3)]
    pub(crate) scaling_reps: usize,
    /// Input partition counts of the scaling figure (as many sessionizer instances each).
    #[arg(long, value_delimiter = ',', default_values_t = [1, 2, 4])]
    pub(crate) partition_counts: Vec<i32>,
    /// `batch.max_rows` values of the batch-size figure (on the throughput topic).
    #[arg(long, value_delimiter = ',', default_values_t = [100, 1_000, 5_000])]
    pub(crate) batch_rows: Vec<usize>,
    /// Requests of one trace each for the gateway's throughput (and as many rows again in
    /// batched requests).
    #[arg(long, default_value_t = 20_000)]
    pub(crate) gateway_traces: usize,
    /// Rows per request of the gateway's batched variant.
    #[arg(long, default_value_t = 100)]
    pub(crate) gateway_batch_rows: usize,
    /// Concurrent HTTP requests driving the gateway.
    #[arg(long, default_value_t = 64)]
    pub(crate) gateway_clients: usize,
    /// Traces the official SDK (sync) publishes per run through the gateway and straight to
    /// the ack server (per answer mode of the gateway).
    #[arg(long, default_value_t = 1_000)]
    pub(crate) sdk_gateway_traces: usize,
    /// Runs of each, in turns: runs of 500 traces moved by a fifth between repetitions.
    #[arg(long, default_value_t = 5)]
    pub(crate) sdk_gateway_reps: usize,
    /// Seconds of the gateway's latency run at half its measured rate.
    #[arg(long, default_value_t = 10)]
    pub(crate) gateway_latency_secs: u64,
    /// Pid of the broker process, to report its CPU apart (scripts/bench.sh finds it).
    #[arg(long, env = "KAFKA_BROKER_PID")]
    pub(crate) broker_pid: Option<u32>,
    /// Run the sessionizer without its changelog (state in memory only).
    #[arg(long)]
    pub(crate) no_changelog: bool,
    /// Parts to run.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Part::Throughput, Part::Sdk, Part::Gateway, Part::Scaling, Part::Lag, Part::Memory])]
    pub(crate) only: Vec<Part>,
    /// Where the JSON figures go.
    #[arg(long, default_value = "target/bench/pipeline.json")]
    pub(crate) out: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Part {
    Throughput,
    Sdk,
    Gateway,
    Scaling,
    Lag,
    Memory,
}

#[derive(Subcommand, Debug)]
pub(crate) enum ProbeCommand {
    /// Internal: one state-memory measurement in a fresh process (JSON on stdout).
    #[command(hide = true)]
    MemoryProbe {
        #[arg(long)]
        sessions: usize,
        #[arg(long)]
        journal: bool,
    },
    /// Internal: memory per open trace of the Collector path's assembler, in a fresh process.
    #[command(hide = true)]
    OtelMemoryProbe {
        #[arg(long)]
        traces: usize,
    },
}

impl Args {
    pub(crate) fn wants(&self, part: Part) -> bool {
        self.only.contains(&part)
    }

    /// Whether any part to run needs the broker (all but the state memory).
    pub(crate) fn wants_broker(&self) -> bool {
        self.wants(Part::Throughput)
            || self.wants(Part::Lag)
            || self.wants(Part::Scaling)
            || self.wants(Part::Sdk)
            || self.wants(Part::Gateway)
    }
}
