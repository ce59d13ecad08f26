//! `pipeline-bench`: the sessionizer end to end on the real broker, every figure set against a
//! baseline measured in the same run on the same machine.
//!
//! 1. Throughput. One topic (3 partitions) is pre-loaded once with an idempotent producer
//!    (the emitter's settings: acks=all, lz4, linger 20 ms) with realistic traces: sessions ×
//!    turns, two sessions per user, turn-major order so every session is open at once. Then,
//!    `--reps` times, each with a fresh consumer group reading from the beginning:
//!    - `bare`: a `BaseConsumer` that only counts messages;
//!    - `minimal`: a `BaseConsumer` that decodes each message (`trace_model::Decoder`) and
//!      serializes it as an Openlayer row (`sessionizer::enrich::openlayer_row` with
//!      `Placement::Passthrough`): no state, no HTTP;
//!    - `sessionizer`: `sessionizer::pipeline::run` with the production defaults (changelog,
//!      session summaries, 1000-row batches, 500 ms linger, 4 requests in flight), shipping to
//!      the in-process ack server ([`ack`]).
//!
//!    A run's window opens when its first message is consumed (the group join before it is
//!    not measured) and closes when the last trace is done: counted by the baselines,
//!    acknowledged by the ack server and settled in the pipeline (`rows_shipped`) for the
//!    sessionizer. CPU per trace is this process's CPU over the window (every thread, from
//!    the per-thread scheduler counters in `/proc/self/task/*/schedstat`; `/proc/self/stat`
//!    is recorded as a check) divided by the traces. The broker is another process and is not
//!    included; its CPU is reported apart when its pid is known, and so is the CPU of
//!    everything else on the machine (noise). The ack server runs in this process on its own
//!    thread: its CPU is in the process figure and also reported alone, so the sessionizer's
//!    own cost is the difference.
//! 2. Lag. A fresh topic and sessionizer, plus a reference consumer (a bare consumer in its
//!    own group on the same topic). After a few hundred warm-up traces have gone through (so
//!    the producer's and consumers' start-up is not measured), traces are produced at half
//!    the measured maximum for `--lag-secs`; p50/p99 come from the pipeline's own histogram
//!    (`sessionizer_sessionization_lag_seconds`: enrichment time minus Kafka timestamp,
//!    snapshot before and after, interpolated in its buckets), the reference consumer's lag
//!    exactly per message (what broker and fetching cost before any sessionizer code), and
//!    the delay to the ack server per row.
//! 3. Gateway. The ingest gateway in-process, driven over HTTP with SDK-shaped requests of
//!    the same traces: rows/s acknowledged by Kafka (one trace per request, and batched) and
//!    request latency at half that rate ([`gateway`]).
//! 4. State memory. Child processes open N single-turn sessions in `PartitionWindows` and
//!    report RSS growth per session ([`memory`]).
//!
//! Writes the figures to `--out` (JSON) for `scripts/bench_report.py`.

mod ack;
mod gateway;
mod measure;
mod memory;
mod scaling;
mod sdk;
mod traces;

use ack::AckServer;
use anyhow::{Context as _, Result, bail, ensure};
use clap::{Parser, Subcommand, ValueEnum};
use measure::{Buckets, Window, median, percentile};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext};
use serde::Serialize;
use sessionizer::config::SessionizerConfig;
use sessionizer::enrich::openlayer_row;
use sessionizer::health::Health;
use sessionizer::metrics::Metrics;
use sessionizer::pipeline::{PipelineSettings, run};
use sessionizer::secret::Secret;
use sessionizer::sessionize::Placement;
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::runtime::Runtime;
use trace_model::{Decoder, Encoding, Limits};
use traces::Population;

const PARTITIONS: i32 = 3;
const PIPELINE_ID: &str = "6b0f3a52-1c7e-4d0b-9a55-3f2e8c1d7a90";
/// Short: the test broker holds each JoinGroup for half of it (kafka-broker facts), so every
/// consumer of the bench joins in about a second.
const SESSION_TIMEOUT_MS: u64 = 2000;
/// Traces produced and shipped before the lag run's clock starts, so that neither the
/// producer's start (idempotent producer id, metadata) nor the first fetches count.
const LAG_WARMUP_TRACES: u64 = 300;
/// Event time between two turns of a session.
const TURN_SPACING_MS: i64 = 20_000;
/// Longest a single run may take before the bench gives up.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Parser, Debug)]
#[command(
    about = "Sessionizer throughput, lag and state memory against same-run baselines",
    long_about = None
)]
struct Args {
    #[command(subcommand)]
    probe: Option<ProbeCommand>,
    /// Kafka bootstrap servers of the test broker (`scripts/kafka-broker.sh up` prints them).
    #[arg(long, env = "KAFKA_BOOTSTRAP")]
    bootstrap: Option<String>,
    /// Sessions of the throughput topic (two per user).
    #[arg(long, default_value_t = 5_000)]
    sessions: usize,
    /// Turns per session: the throughput topic holds sessions × turns traces.
    #[arg(long, default_value_t = 10)]
    turns: usize,
    /// Runs of each throughput variant, interleaved (medians are reported).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Seconds of production at half the maximum rate for the lag figure.
    #[arg(long, default_value_t = 30)]
    lag_secs: u64,
    /// Production rate of the lag run (traces/s); default: half the sessionizer's measured
    /// throughput.
    #[arg(long)]
    lag_rate: Option<f64>,
    /// Seconds at the start of the lag run also reported apart (steady state after them).
    #[arg(long, default_value_t = 5)]
    lag_warmup_secs: u64,
    /// Open sessions of each state-memory probe.
    #[arg(long, value_delimiter = ',', default_values_t = [100_000, 1_000_000])]
    memory_sessions: Vec<usize>,
    /// Sessions of the probe that also measures the changelog journal (0: skip it).
    #[arg(long, default_value_t = 100_000)]
    journal_sessions: usize,
    /// Python of the official Openlayer SDK's venv (`scripts/python-venv.sh openlayer-sdk`
    /// prints its bin directory); without it the SDK comparison is skipped.
    #[arg(long, env = "OPENLAYER_SDK_PYTHON")]
    sdk_python: Option<PathBuf>,
    /// The SDK replay script.
    #[arg(long, default_value = "bench/openlayer_sdk.py")]
    sdk_script: PathBuf,
    /// Traces the SDK publishes synchronously (rows/s figure).
    #[arg(long, default_value_t = 1_000)]
    sdk_traces: usize,
    /// Traces of the burst in the SDK's default background mode (delivered/dropped figure).
    #[arg(long, default_value_t = 1_000)]
    sdk_burst: usize,
    /// Sessions of each scaling topic (sessions × turns traces per partition count).
    #[arg(long, default_value_t = 5_000)]
    scaling_sessions: usize,
    /// Runs of each scaling configuration, interleaved (medians are reported).
    #[arg(long, default_value_t = 3)]
    scaling_reps: usize,
    /// Input partition counts of the scaling figure (as many sessionizer instances each).
    #[arg(long, value_delimiter = ',', default_values_t = [1, 2, 4])]
    partition_counts: Vec<i32>,
    /// `batch.max_rows` values of the batch-size figure (on the throughput topic).
    #[arg(long, value_delimiter = ',', default_values_t = [100, 1_000, 5_000])]
    batch_rows: Vec<usize>,
    /// Requests of one trace each for the gateway's throughput (and as many rows again in
    /// batched requests).
    #[arg(long, default_value_t = 20_000)]
    gateway_traces: usize,
    /// Rows per request of the gateway's batched variant.
    #[arg(long, default_value_t = 100)]
    gateway_batch_rows: usize,
    /// Concurrent HTTP requests driving the gateway.
    #[arg(long, default_value_t = 64)]
    gateway_clients: usize,
    /// Seconds of the gateway's latency run at half its measured rate.
    #[arg(long, default_value_t = 10)]
    gateway_latency_secs: u64,
    /// Pid of the broker process, to report its CPU apart (scripts/bench.sh finds it).
    #[arg(long, env = "KAFKA_BROKER_PID")]
    broker_pid: Option<u32>,
    /// Run the sessionizer without its changelog (state in memory only).
    #[arg(long)]
    no_changelog: bool,
    /// Parts to run.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Part::Throughput, Part::Sdk, Part::Gateway, Part::Scaling, Part::Lag, Part::Memory])]
    only: Vec<Part>,
    /// Where the JSON figures go.
    #[arg(long, default_value = "target/bench/pipeline.json")]
    out: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Part {
    Throughput,
    Sdk,
    Gateway,
    Scaling,
    Lag,
    Memory,
}

#[derive(Subcommand, Debug)]
enum ProbeCommand {
    /// Internal: one state-memory measurement in a fresh process (JSON on stdout).
    #[command(hide = true)]
    MemoryProbe {
        #[arg(long)]
        sessions: usize,
        #[arg(long)]
        journal: bool,
    },
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

// ---------------------------------------------------------------------------------------------
// Kafka plumbing
// ---------------------------------------------------------------------------------------------

async fn create_topics(bootstrap: &str, topics: &[(&str, i32)]) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
        .collect();
    for result in admin
        .create_topics(&new_topics, &AdminOptions::new())
        .await?
    {
        result.map_err(|(topic, code)| anyhow::anyhow!("creating {topic}: {code}"))?;
    }
    Ok(())
}

async fn delete_topics(bootstrap: &str, topics: &[String]) -> Result<()> {
    if topics.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    for result in admin.delete_topics(&names, &AdminOptions::new()).await? {
        if let Err((topic, code)) = result {
            eprintln!("bench: could not delete topic {topic}: {code}");
        }
    }
    Ok(())
}

/// Counts failed deliveries: the preload must be complete.
#[derive(Debug, Default)]
struct DeliveryCounter {
    failed: AtomicU64,
}

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _opaque: ()) {
        if result.is_err() {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The emitter's producer settings (trace-emit `Emitter`), with room for a bulk load.
fn producer(bootstrap: &str) -> Result<ThreadedProducer<DeliveryCounter>> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .create_with_context(DeliveryCounter::default())?)
}

fn send(producer: &ThreadedProducer<DeliveryCounter>, topic: &str, key: &str, payload: &[u8]) {
    let mut record = BaseRecord::to(topic).key(key).payload(payload);
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((_, unsent)) => {
                // Queue full: let librdkafka's thread deliver some, then retry.
                record = unsent;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

#[derive(Debug, Clone, Serialize)]
struct Workload {
    traces: u64,
    sessions: usize,
    users: usize,
    turns_per_session: usize,
    partitions: i32,
    avro_bytes_mean: f64,
    avro_bytes_min: usize,
    avro_bytes_max: usize,
    steps_per_trace: usize,
    step_nesting_depth: usize,
    preload_seconds: f64,
    preload_traces_per_second: f64,
}

/// Produces sessions × turns traces, turn by turn across all sessions, and waits for them all.
fn preload(
    bootstrap: &str,
    topic: &str,
    population: &Population,
    turns: usize,
) -> Result<Workload> {
    let producer = producer(bootstrap)?;
    let sessions = population.num_sessions();
    let started = Instant::now();
    let base = now_ms() - turns as i64 * TURN_SPACING_MS - 60_000;
    let (mut total_bytes, mut min_bytes, mut max_bytes) = (0usize, usize::MAX, 0usize);
    let mut shape = (0, 0);
    for turn in 0..turns {
        for session in 0..sessions {
            let timestamp = base + turn as i64 * TURN_SPACING_MS + session as i64 % 1000;
            let event = population.trace(session, turn, timestamp);
            let payload = trace_model::encode(&event, Encoding::Avro)?;
            total_bytes += payload.len();
            min_bytes = min_bytes.min(payload.len());
            max_bytes = max_bytes.max(payload.len());
            if turn == 0 && session == 0 {
                shape = traces::shape(&event);
            }
            send(
                &producer,
                topic,
                event.partition_key().unwrap_or_default(),
                &payload,
            );
        }
    }
    producer
        .flush(Duration::from_secs(120))
        .context("preload not delivered")?;
    let failed = producer.context().failed.load(Ordering::Relaxed);
    ensure!(failed == 0, "{failed} preload traces not delivered");
    let seconds = started.elapsed().as_secs_f64();
    let traces = (sessions * turns) as u64;
    Ok(Workload {
        traces,
        sessions,
        users: population.num_users(),
        turns_per_session: turns,
        partitions: PARTITIONS,
        avro_bytes_mean: total_bytes as f64 / traces as f64,
        avro_bytes_min: min_bytes,
        avro_bytes_max: max_bytes,
        steps_per_trace: shape.0,
        step_nesting_depth: shape.1,
        preload_seconds: seconds,
        preload_traces_per_second: traces as f64 / seconds,
    })
}

/// What the baselines share with the sessionizer's consumer: a fresh group reading from the
/// beginning, classic protocol, short session timeout for a quick join.
fn baseline_consumer(bootstrap: &str, topic: &str) -> Result<BaseConsumer> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("bench-baseline"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", SESSION_TIMEOUT_MS.to_string())
        .set(
            "heartbeat.interval.ms",
            (SESSION_TIMEOUT_MS / 3).to_string(),
        )
        .set("group.protocol", "classic")
        .create()?;
    consumer.subscribe(&[topic])?;
    Ok(consumer)
}

// ---------------------------------------------------------------------------------------------
// Throughput
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Variant {
    Bare,
    Minimal,
    Sessionizer,
}

#[derive(Debug, Clone, Serialize)]
struct Run {
    variant: Variant,
    traces: u64,
    seconds: f64,
    traces_per_second: f64,
    /// Process CPU over the window per trace (the ack server's thread included).
    cpu_us_per_trace: f64,
    /// The ack server thread's share of it (sessionizer runs only).
    ack_cpu_us_per_trace: f64,
    /// `cpu_us_per_trace` minus the ack server.
    cpu_us_per_trace_without_ack: f64,
    /// Share of the machine's cores busy in this process during the window.
    cpu_utilization: f64,
    /// Broker CPU per trace (another process, not in `cpu_us_per_trace`), when its pid is known.
    broker_cpu_us_per_trace: Option<f64>,
    /// Share of the machine's cores busy with neither this process nor the broker: other
    /// people's work on the machine during the window (noise).
    others_cpu_share: f64,
    window: Window,
    /// Mean size of the row JSON (minimal: one Passthrough row; sessionizer: request bytes
    /// per row, including the envelope).
    row_json_bytes_mean: Option<f64>,
    /// Openlayer requests (sessionizer only).
    requests: Option<u64>,
}

fn run_from(variant: Variant, traces: u64, window: Window, cores: f64) -> Run {
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

fn run_baseline(
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

#[derive(Debug, Clone)]
struct Topics {
    traces: String,
    dead_letters: String,
    sessions: String,
}

/// Production defaults (`SessionizerConfig::default()`), validated as the service validates
/// them, with the bench's broker, topics, ack server and a short group session timeout.
/// `customize` changes the configuration before it is validated (group, batch size).
fn sessionizer_settings(
    bootstrap: &str,
    topics: &Topics,
    ack: &AckServer,
    changelog: Option<String>,
    customize: &dyn Fn(&mut SessionizerConfig),
) -> Result<PipelineSettings> {
    let mut config = SessionizerConfig::default();
    config.kafka.bootstrap_servers = bootstrap.to_owned();
    config.kafka.group_id = unique("bench-sessionizer");
    config.kafka.topic.clone_from(&topics.traces);
    config
        .kafka
        .dead_letter_topic
        .clone_from(&topics.dead_letters);
    config.kafka.sessions_topic.clone_from(&topics.sessions);
    config.kafka.changelog_topic = changelog.unwrap_or_default();
    config.kafka.session_timeout_ms = SESSION_TIMEOUT_MS;
    // Must stay below the session timeout. Every run stops once all its rows are
    // acknowledged, so the drain has nothing to wait for.
    config.shutdown.drain_timeout_secs = 1;
    config.openlayer.base_url = Some(ack.base_url());
    config.openlayer.api_key = Some(Secret::new("bench-key-not-a-secret"));
    config.openlayer.default_pipeline_id = Some(PIPELINE_ID.to_owned());
    customize(&mut config);
    let validated = config
        .validate()
        .map_err(|error| anyhow::anyhow!("bench configuration: {error}"))?;
    Ok(PipelineSettings::from_config(&validated))
}

/// A pipeline running on the runtime, stopped by `stop`.
struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), sessionizer::pipeline::RunError>>,
    metrics: Metrics,
    registry: prometheus::Registry,
}

fn start_pipeline(runtime: &Runtime, settings: PipelineSettings) -> Result<Running> {
    let registry = prometheus::Registry::new();
    let metrics = Metrics::register(&registry)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = runtime.spawn(run(settings, metrics.clone(), Health::default(), async {
        let _stop_or_drop = stopped.await;
    }));
    Ok(Running {
        stop,
        task,
        metrics,
        registry,
    })
}

impl Running {
    fn stop(self, runtime: &Runtime) -> Result<(Metrics, prometheus::Registry)> {
        let _already_stopped = self.stop.send(());
        runtime
            .block_on(self.task)
            .context("pipeline task")?
            .context("pipeline")?;
        Ok((self.metrics, self.registry))
    }
}

fn counter_sum(registry: &prometheus::Registry, name: &str) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|family| family.name() == name)
        .flat_map(|family| family.get_metric().iter())
        .map(|metric| metric.get_counter().get_value())
        .sum()
}

fn run_sessionizer(
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
struct VariantSummary {
    median_traces_per_second: f64,
    median_cpu_us_per_trace: f64,
    median_cpu_us_per_trace_without_ack: f64,
    median_ack_cpu_us_per_trace: f64,
    median_broker_cpu_us_per_trace: Option<f64>,
    median_others_cpu_share: f64,
}

fn summarize(runs: &[Run], variant: Variant) -> VariantSummary {
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
struct Throughput {
    workload: Workload,
    changelog: bool,
    runs: Vec<Run>,
    bare: VariantSummary,
    minimal: VariantSummary,
    sessionizer: VariantSummary,
    /// Median sessionizer throughput over median minimal-pipeline throughput.
    ratio_to_minimal: f64,
    /// Same, per repetition (runs of one repetition ran back to back).
    ratio_to_minimal_per_rep: Vec<f64>,
    ratio_to_bare: f64,
    minimal_ratio_to_bare: f64,
    goal_ratio_to_minimal: f64,
}

/// What the Kafka parts share.
struct Bench<'a> {
    args: &'a Args,
    runtime: Runtime,
    bootstrap: String,
    topics: Topics,
    ack: AckServer,
    broker_pid: Option<u32>,
    /// Topics to delete at the end.
    created: Vec<String>,
}

fn throughput(bench: &mut Bench<'_>) -> Result<Throughput> {
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

// ---------------------------------------------------------------------------------------------
// Lag
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize)]
struct Quantiles {
    p50_seconds: f64,
    p99_seconds: f64,
    max_seconds: Option<f64>,
    count: u64,
}

impl Quantiles {
    fn of_histogram(buckets: &Buckets) -> Self {
        Quantiles {
            p50_seconds: buckets.quantile(0.5),
            p99_seconds: buckets.quantile(0.99),
            max_seconds: None,
            count: buckets.count,
        }
    }

    fn of_samples(samples: &mut [f64]) -> Self {
        samples.sort_by(f64::total_cmp);
        Quantiles {
            p50_seconds: percentile(samples, 0.5),
            p99_seconds: percentile(samples, 0.99),
            max_seconds: samples.last().copied(),
            count: samples.len() as u64,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
struct LagFigures {
    /// `sessionizer_sessionization_lag_seconds`: enrichment time minus Kafka timestamp,
    /// interpolated inside histogram buckets (bounds 5, 10, 25, 50, 100, 250, 500, 1000 ms ...).
    sessionization_lag: Quantiles,
    /// Share of traces enriched within 1 s of their Kafka timestamp (exact: a bucket bound).
    /// p99 < 1 s exactly when this is at least 0.99; the interpolated p99 is an estimate.
    share_within_1s: f64,
    /// The reference: a bare consumer in its own group on the same topic at the same time,
    /// receive time minus Kafka timestamp per message (exact). What the broker, the fetch
    /// protocol and librdkafka cost before any sessionizer code runs.
    reference_consumer_lag: Quantiles,
}

#[derive(Debug, Clone, Serialize)]
struct Lag {
    target_rate: f64,
    rate_source: &'static str,
    achieved_rate: f64,
    seconds: f64,
    traces: u64,
    /// Process CPU share of the machine while producing (producer, sessionizer, ack server
    /// and reference consumer; the broker is another process).
    cpu_utilization: f64,
    /// The broker's share of the machine while producing, when its pid is known.
    broker_cpu_share: Option<f64>,
    /// Share of the machine busy with neither: other people's work (noise).
    others_cpu_share: f64,
    window: Window,
    /// Over the whole production: what the goal is judged on.
    whole_run: LagFigures,
    /// Traces produced after the first `warmup_seconds` only (steady state).
    after_warmup: LagFigures,
    warmup_seconds: f64,
    sessionization_lag_buckets: Buckets,
    /// `sessionizer_end_to_end_delay_seconds`: Kafka timestamp to Openlayer acknowledgement.
    end_to_end_delay: Option<Quantiles>,
    /// Measured per row at the ack server: arrival minus the trace's event time (set when it
    /// was produced), so it includes producer linger (20 ms) and batch linger (500 ms).
    ack_arrival_delay: Quantiles,
    goal_p99_seconds: f64,
}

/// A bare consumer on the lag topic recording (Kafka timestamp ms, lag s) per message until
/// it has `expected` messages or `deadline` passes.
fn reference_consumer(
    bootstrap: &str,
    topic: &str,
    assigned: Arc<std::sync::atomic::AtomicBool>,
    received: Arc<AtomicU64>,
    expected: Arc<AtomicU64>,
    deadline: Instant,
) -> Result<std::thread::JoinHandle<Vec<(i64, f64)>>> {
    let consumer = baseline_consumer(bootstrap, topic)?;
    Ok(std::thread::spawn(move || {
        let mut lags = Vec::new();
        while (lags.len() as u64) < expected.load(Ordering::Relaxed) && Instant::now() < deadline {
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(50))
                && let Some(timestamp) = message.timestamp().to_millis()
            {
                lags.push((timestamp, (now_ms() - timestamp) as f64 / 1000.0));
                received.store(lags.len() as u64, Ordering::Relaxed);
            }
            if !assigned.load(Ordering::Relaxed)
                && consumer
                    .assignment()
                    .is_ok_and(|list| list.count() == PARTITIONS as usize)
            {
                assigned.store(true, Ordering::Relaxed);
            }
        }
        lags
    }))
}

fn lag(bench: &mut Bench<'_>, rate: f64, rate_source: &'static str) -> Result<Lag> {
    let Bench {
        args,
        runtime,
        bootstrap,
        topics,
        ack,
        broker_pid,
        created,
    } = bench;
    let lag_topics = Topics {
        traces: unique("bench-lag-traces"),
        ..topics.clone()
    };
    runtime.block_on(create_topics(
        bootstrap,
        &[(&lag_topics.traces, PARTITIONS)],
    ))?;
    created.push(lag_topics.traces.clone());
    let changelog = (!args.no_changelog).then(|| unique("bench-lag-state"));
    if let Some(changelog) = &changelog {
        created.push(changelog.clone());
    }
    let settings = sessionizer_settings(bootstrap, &lag_topics, ack, changelog, &|_| {})?;
    ack.reset(true);
    let running = start_pipeline(runtime, settings)?;
    let reference_assigned = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reference_expected = Arc::new(AtomicU64::new(u64::MAX));
    let reference_count = Arc::new(AtomicU64::new(0));
    let reference = reference_consumer(
        bootstrap,
        &lag_topics.traces,
        reference_assigned.clone(),
        reference_count.clone(),
        reference_expected.clone(),
        Instant::now() + Duration::from_secs(args.lag_secs + 240),
    )?;
    let assigned_by = Instant::now() + Duration::from_secs(60);
    while running.metrics.partitions_assigned.get() < i64::from(PARTITIONS)
        || !reference_assigned.load(Ordering::Relaxed)
    {
        if Instant::now() > assigned_by {
            bail!("the lag run's consumers got no assignment within 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let duration = Duration::from_secs(args.lag_secs);
    let warmup = Duration::from_secs(args.lag_warmup_secs.min(args.lag_secs / 2));
    let producer = producer(bootstrap)?;
    let population = Population::new(args.sessions)?;
    let sessions = population.num_sessions();
    let mut sent: u64 = 0;
    let produce_one = |sent: &mut u64| -> Result<()> {
        let index = *sent as usize;
        let event = population.trace(index % sessions, index / sessions, now_ms());
        let payload = trace_model::encode(&event, Encoding::Avro)?;
        send(
            &producer,
            &lag_topics.traces,
            event.partition_key().unwrap_or_default(),
            &payload,
        );
        *sent += 1;
        Ok(())
    };
    // Client warm-up, outside the figures: a few traces through the whole path.
    while sent < LAG_WARMUP_TRACES {
        produce_one(&mut sent)?;
    }
    let warmed_by = Instant::now() + Duration::from_secs(60);
    while running.metrics.rows_shipped.get() < sent
        || reference_count.load(Ordering::Relaxed) < sent
    {
        if Instant::now() > warmed_by {
            bail!("lag run: warm-up traces not through within 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let lag_before =
        measure::histogram(&running.registry, "sessionizer_sessionization_lag_seconds")
            .context("no sessionization lag histogram")?;
    let delay_before =
        measure::histogram(&running.registry, "sessionizer_end_to_end_delay_seconds");
    ack.take_delays();
    eprintln!(
        "bench: lag run: producing {rate:.0} traces/s for {} s",
        args.lag_secs
    );
    let clocks_began = measure::Clocks::take(Some(ack.tid()), *broker_pid)?;
    let began = Instant::now();
    let began_ms = now_ms();
    let mut lag_at_warmup = None;
    let mut paced: u64 = 0;
    while began.elapsed() < duration {
        let due = (began.elapsed().as_secs_f64() * rate) as u64;
        while paced < due {
            produce_one(&mut sent)?;
            paced += 1;
        }
        if lag_at_warmup.is_none() && began.elapsed() >= warmup {
            // Approximate: traces of the warm-up still in flight land after the snapshot.
            lag_at_warmup =
                measure::histogram(&running.registry, "sessionizer_sessionization_lag_seconds");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let seconds = began.elapsed().as_secs_f64();
    let window = measure::Clocks::take(Some(ack.tid()), *broker_pid)?.since(&clocks_began);
    reference_expected.store(sent, Ordering::Relaxed);
    producer
        .flush(Duration::from_secs(60))
        .context("lag traces not delivered")?;
    let shipped_by = Instant::now() + Duration::from_secs(120);
    while running.metrics.rows_shipped.get() < sent {
        if Instant::now() > shipped_by {
            bail!(
                "lag run: {} of {sent} rows shipped after 120 s",
                running.metrics.rows_shipped.get()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let (_, registry) = running.stop(runtime)?;
    let reference = reference
        .join()
        .map_err(|_| anyhow::anyhow!("reference consumer panicked"))?;
    let lag_after = measure::histogram(&registry, "sessionizer_sessionization_lag_seconds")
        .context("no sessionization lag histogram")?;
    let lag_buckets = lag_after.minus(&lag_before);
    let end_to_end =
        measure::histogram(&registry, "sessionizer_end_to_end_delay_seconds").map(|after| {
            match &delay_before {
                Some(before) => after.minus(before),
                None => after,
            }
        });
    let mut arrivals = ack.take_delays();
    ack.reset(false);
    let steady_buckets = match &lag_at_warmup {
        Some(earlier) => lag_after.minus(earlier),
        None => lag_buckets.clone(),
    };
    let warmup_ms = began_ms + warmup.as_millis() as i64;
    let mut reference_all: Vec<f64> = reference
        .iter()
        .filter(|(timestamp, _)| *timestamp >= began_ms)
        .map(|(_, lag)| *lag)
        .collect();
    let mut reference_steady: Vec<f64> = reference
        .iter()
        .filter(|(timestamp, _)| *timestamp >= warmup_ms)
        .map(|(_, lag)| *lag)
        .collect();
    Ok(Lag {
        target_rate: rate,
        rate_source,
        achieved_rate: paced as f64 / seconds,
        seconds,
        traces: paced,
        cpu_utilization: window.process_cpu_seconds / window.seconds / cores(),
        broker_cpu_share: window
            .broker_cpu_seconds
            .map(|broker| broker / window.seconds / cores()),
        others_cpu_share: window.others_cpu_seconds / window.seconds / cores(),
        window,
        whole_run: LagFigures {
            sessionization_lag: Quantiles::of_histogram(&lag_buckets),
            share_within_1s: lag_buckets.share_at_or_below(1.0),
            reference_consumer_lag: Quantiles::of_samples(&mut reference_all),
        },
        after_warmup: LagFigures {
            sessionization_lag: Quantiles::of_histogram(&steady_buckets),
            share_within_1s: steady_buckets.share_at_or_below(1.0),
            reference_consumer_lag: Quantiles::of_samples(&mut reference_steady),
        },
        warmup_seconds: warmup.as_secs_f64(),
        sessionization_lag_buckets: lag_buckets,
        end_to_end_delay: end_to_end.as_ref().map(Quantiles::of_histogram),
        ack_arrival_delay: Quantiles::of_samples(&mut arrivals),
        goal_p99_seconds: 1.0,
    })
}

// ---------------------------------------------------------------------------------------------
// State memory
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize)]
struct Memory {
    probes: Vec<memory::Probe>,
    /// Bytes per session at the largest N over bytes per session at the smallest. Not 1:
    /// the session table doubles, so its share per session swings by up to 2x with N.
    growth_ratio_largest_to_smallest: f64,
    /// Per probe: RSS growth per session at N/4, N/2 and N, max over min. Near 1 when the
    /// growth is proportional to the sessions over that 4x range.
    spread_within_probes: Vec<f64>,
    /// Growth proportional to the session count within every probe (spread <= 1.15) and no
    /// more than a table doubling apart between probes (ratio <= 1.6).
    linear: bool,
    /// RSS growth per session over the last doubling of the largest probe (N/2 to N).
    marginal_bytes_per_session: f64,
    journal: Option<memory::Probe>,
    goal_bytes_per_session: f64,
}

fn spread(probe: &memory::Probe) -> f64 {
    let per_session: Vec<f64> = probe
        .samples
        .iter()
        .filter(|(sessions, _)| *sessions >= probe.sessions / 4)
        .map(|(sessions, bytes)| *bytes as f64 / *sessions as f64)
        .collect();
    let max = per_session.iter().copied().fold(f64::NAN, f64::max);
    let min = per_session.iter().copied().fold(f64::NAN, f64::min);
    max / min
}

fn state_memory(args: &Args) -> Result<Memory> {
    let mut probes = Vec::new();
    for sessions in &args.memory_sessions {
        eprintln!("bench: state memory with {sessions} open sessions");
        probes.push(memory::probe_in_child(*sessions, false)?);
    }
    let journal = if args.journal_sessions > 0 {
        eprintln!(
            "bench: journal memory with {} touched sessions",
            args.journal_sessions
        );
        Some(memory::probe_in_child(args.journal_sessions, true)?)
    } else {
        None
    };
    let smallest = probes
        .iter()
        .min_by_key(|probe| probe.sessions)
        .context("no memory probe")?;
    let largest = probes
        .iter()
        .max_by_key(|probe| probe.sessions)
        .context("no memory probe")?;
    let ratio = largest.bytes_per_session / smallest.bytes_per_session;
    let marginal = match largest.samples.as_slice() {
        [.., (half, half_bytes), (all, all_bytes)] if all > half => {
            all_bytes.saturating_sub(*half_bytes) as f64 / (all - half) as f64
        }
        _ => largest.bytes_per_session,
    };
    let spreads: Vec<f64> = probes.iter().map(spread).collect();
    Ok(Memory {
        growth_ratio_largest_to_smallest: ratio,
        linear: spreads.iter().all(|spread| *spread <= 1.15) && ratio <= 1.6,
        spread_within_probes: spreads,
        marginal_bytes_per_session: marginal,
        probes,
        journal,
        goal_bytes_per_session: 1024.0,
    })
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

pub(crate) fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |cores| cores.get() as f64)
}

#[derive(Debug, Serialize)]
struct Report {
    cores: f64,
    seconds: f64,
    throughput: Option<Throughput>,
    sdk: Option<sdk::Sdk>,
    gateway: Option<gateway::Gateway>,
    scaling: Option<scaling::Scaling>,
    lag: Option<Lag>,
    memory: Option<Memory>,
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

fn print_report(report: &Report) {
    println!();
    println!("Sessionizer end to end ({} cores)", report.cores);
    if let Some(t) = &report.throughput {
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
            t.ratio_to_minimal_per_rep
                .iter()
                .map(|ratio| (ratio * 100.0).round() / 100.0)
                .collect::<Vec<_>>(),
            t.goal_ratio_to_minimal,
            verdict(t.ratio_to_minimal >= t.goal_ratio_to_minimal)
        );
        println!(
            "  sessionizer / bare = {:.2}x, minimal / bare = {:.2}x",
            t.ratio_to_bare, t.minimal_ratio_to_bare
        );
    }
    if let Some(sdk) = &report.sdk {
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
        if let Some(t) = &report.throughput {
            println!(
                "    sessionizer / SDK sync = {:.1}x (goal >= 50x: {})",
                t.sessionizer.median_traces_per_second / sdk.sync.rows_per_second,
                verdict(t.sessionizer.median_traces_per_second / sdk.sync.rows_per_second >= 50.0)
            );
        }
    }
    if let Some(g) = &report.gateway {
        for run in [&g.single, &g.batched] {
            println!(
                "  gateway, {} trace(s)/request, {} clients: {:.0} rows/s acknowledged by Kafka \
                 ({:.0} B/row; CPU per row: gateway {:.1} µs, librdkafka {:.1} µs, clients {:.1} µs; \
                 others busy {:.0} % of the machine)",
                run.rows_per_request,
                g.clients,
                run.rows_per_second,
                run.body_bytes_per_row,
                run.gateway_cpu_us_per_row,
                run.librdkafka_cpu_us_per_row,
                run.client_cpu_us_per_row,
                run.others_cpu_share * 100.0
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
        if let Some(t) = &report.throughput {
            println!(
                "    gateway / sessionizer throughput = {:.2}x",
                g.single.rows_per_second / t.sessionizer.median_traces_per_second
            );
        }
    }
    if let Some(s) = &report.scaling {
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
    if let Some(l) = &report.lag {
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
        println!(
            "    goal p99 < {:.0} s (whole run; exact from the 1 s bucket: >= 99 % within it): {}",
            l.goal_p99_seconds,
            verdict(l.whole_run.share_within_1s >= 0.99)
        );
        println!(
            "    arrival at the ack server p50 {:.3} s, p99 {:.3} s (batch linger included)",
            l.ack_arrival_delay.p50_seconds, l.ack_arrival_delay.p99_seconds
        );
    }
    if let Some(m) = &report.memory {
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
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(ProbeCommand::MemoryProbe { sessions, journal }) = &args.probe {
        let probe = memory::probe(*sessions, *journal)?;
        println!("{}", serde_json::to_string(&probe)?);
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let started = Instant::now();
    let wants = |part| args.only.contains(&part);
    let mut report = Report {
        cores: cores(),
        seconds: 0.0,
        throughput: None,
        sdk: None,
        gateway: None,
        scaling: None,
        lag: None,
        memory: None,
    };
    if wants(Part::Sdk) && args.sdk_python.is_none() {
        eprintln!(
            "bench: no --sdk-python (OPENLAYER_SDK_PYTHON): skipping the official SDK comparison"
        );
    }
    if wants(Part::Throughput)
        || wants(Part::Lag)
        || wants(Part::Scaling)
        || wants(Part::Sdk)
        || wants(Part::Gateway)
    {
        let bootstrap = args.bootstrap.clone().context(
            "KAFKA_BOOTSTRAP is not set: run scripts/bench.sh, or `scripts/kafka-broker.sh up` \
             and pass the KAFKA_BOOTSTRAP it prints",
        )?;
        let topics = Topics {
            traces: unique("bench-traces"),
            dead_letters: unique("bench-dlq"),
            sessions: unique("bench-sessions"),
        };
        let mut bench = Bench {
            args: &args,
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
        };
        let outcome = (|| -> Result<()> {
            bench.runtime.block_on(create_topics(
                &bench.bootstrap,
                &[
                    (&bench.topics.traces, PARTITIONS),
                    (&bench.topics.dead_letters, 1),
                    (&bench.topics.sessions, 1),
                ],
            ))?;
            if wants(Part::Throughput) {
                report.throughput = Some(throughput(&mut bench)?);
            }
            if wants(Part::Sdk)
                && let Some(python) = &args.sdk_python
            {
                let work_dir = args
                    .out
                    .parent()
                    .map_or_else(|| PathBuf::from("."), PathBuf::from);
                report.sdk = Some(sdk::measure(
                    python,
                    &args.sdk_script,
                    &work_dir,
                    args.sessions,
                    (args.sdk_traces, args.sdk_burst),
                    &bench.ack,
                )?);
            }
            if wants(Part::Gateway) {
                let topic = unique("bench-gateway");
                bench.created.push(topic.clone());
                bench
                    .runtime
                    .block_on(create_topics(&bench.bootstrap, &[(&topic, PARTITIONS)]))?;
                report.gateway = Some(gateway::measure(
                    &bench.runtime,
                    &bench.bootstrap,
                    &topic,
                    &gateway::Plan {
                        traces: args.gateway_traces,
                        batch_rows: args.gateway_batch_rows,
                        clients: args.gateway_clients,
                        latency_secs: args.gateway_latency_secs,
                        sessions: args.sessions,
                        broker_pid: args.broker_pid,
                    },
                )?);
            }
            if wants(Part::Scaling) {
                let throughput_traces = report.throughput.as_ref().map(|t| t.workload.traces);
                report.scaling = Some(scaling::scaling(
                    &mut bench,
                    throughput_traces,
                    &args.partition_counts,
                    &args.batch_rows,
                )?);
            }
            if wants(Part::Lag) {
                let measured = report
                    .throughput
                    .as_ref()
                    .map(|t| t.sessionizer.median_traces_per_second / 2.0);
                let (rate, source) = match (args.lag_rate, measured) {
                    (Some(rate), _) => (rate, "--lag-rate"),
                    (None, Some(rate)) => (rate, "half the measured sessionizer maximum"),
                    (None, None) => bail!("--only lag needs --lag-rate"),
                };
                report.lag = Some(lag(&mut bench, rate, source)?);
            }
            Ok(())
        })();
        // The broker keeps topics in memory: give it back whatever happened.
        if let Err(error) = bench
            .runtime
            .block_on(delete_topics(&bench.bootstrap, &bench.created))
        {
            eprintln!("bench: could not delete the bench topics: {error}");
        }
        outcome?;
    }
    if wants(Part::Memory) {
        report.memory = Some(state_memory(&args)?);
    }
    report.seconds = started.elapsed().as_secs_f64();
    print_report(&report);
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!("\nfigures written to {}", args.out.display());
    Ok(())
}
