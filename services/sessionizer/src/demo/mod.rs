//! The embedded demo behind `make run`: the whole product in one process, with nothing to
//! install. An in-process Kafka cluster (librdkafka's mock cluster), synthetic chat traffic
//! emitted through the real producer helpers, the real sessionizer pipeline unchanged, and a
//! local Openlayer-compatible endpoint that records what would be sent (or the real Openlayer
//! when `OPENLAYER_API_KEY` and `OPENLAYER_INFERENCE_PIPELINE_ID` are set).
//!
//! Application glue, so errors are `anyhow` here, as in `main`.

pub mod local_openlayer;
pub mod workload;

use crate::config::SessionizerConfig;
use crate::health::Health;
use crate::http::{HttpState, serve};
use crate::metrics::{Metrics, sample_sum};
use crate::pipeline::PipelineSettings;
use crate::secret::Secret;
use crate::source::changelog::ReadToEndContext;
use anyhow::{Context as _, bail};
use local_openlayer::{DEMO_KEY, LocalOpenlayer};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use trace_emit::{Emitter, EmitterConfig, set_global_sink};
use trace_model::{SessionSummary, TraceEvent};
use workload::WorkloadSettings;

const TRACES: &str = "llm-traces";
const DEAD_LETTERS: &str = "llm-traces-dlq";
const SESSIONS: &str = "llm-sessions";
const CHANGELOG: &str = "llm-sessions-state";
const DEMO_PIPELINE: &str = "demo-pipeline";

/// Knobs of the demo, all with defaults that finish well within a minute on two cores.
#[derive(Debug, Clone)]
pub struct DemoSettings {
    pub num_users: usize,
    pub sessions_per_user: usize,
    pub turns_per_second: f64,
    /// Inactivity gap: short, so that sessions close by inactivity during the run.
    pub gap: Duration,
    pub output_dir: PathBuf,
    pub metrics_listen: SocketAddr,
    /// Give up waiting for every row after this long.
    pub timeout: Duration,
    /// Keep the pipeline and /metrics running this long after every row was shipped (for
    /// scraping the finished demo, e.g. scripts/check-prometheus-live.sh); zero stops at once.
    pub keep_serving: Duration,
}

fn dead_letters_by_reason(registry: &prometheus::Registry) -> BTreeMap<String, u64> {
    let mut reasons = BTreeMap::new();
    for family in registry.gather() {
        if family.name() != "sessionizer_dead_letters_total" {
            continue;
        }
        for sample in family.get_metric() {
            let reason = sample
                .get_label()
                .iter()
                .find(|pair| pair.name() == "reason")
                .map(|pair| pair.value().to_owned())
                .unwrap_or_default();
            *reasons.entry(reason).or_default() += sample.get_counter().get_value() as u64;
        }
    }
    reasons
}

/// Poison messages a careless producer might send: the sessionizer must dead-letter them and
/// keep going.
fn poison_messages() -> Vec<(&'static str, Vec<u8>)> {
    let mut truncated = trace_model::encode(
        &TraceEvent::new("cut-short", 0),
        trace_model::Encoding::Avro,
    )
    .unwrap_or_default();
    truncated.truncate(truncated.len() / 2);
    vec![
        ("truncated avro", truncated),
        ("wrong magic bytes", b"\x42\x42 not a trace".to_vec()),
        (
            "json of the wrong shape",
            br#"{"name": 42, "timestamp_ms": "yesterday"}"#.to_vec(),
        ),
    ]
}

/// The demo's pipeline settings, validated as the service's are: the defaults with the
/// in-process cluster, short windows and timeouts that finish within a minute, and where rows
/// go. The drain stays below the short group session timeout, as validation requires.
fn pipeline_settings(
    bootstrap: &str,
    gap: Duration,
    base_url: String,
    api_key: String,
    pipeline_id: String,
) -> anyhow::Result<PipelineSettings> {
    let mut config = SessionizerConfig::default();
    config.kafka.bootstrap_servers = bootstrap.to_owned();
    config.kafka.group_id = "sessionizer-demo".to_owned();
    config.kafka.topic = TRACES.to_owned();
    config.kafka.dead_letter_topic = DEAD_LETTERS.to_owned();
    config.kafka.sessions_topic = SESSIONS.to_owned();
    config.kafka.changelog_topic = CHANGELOG.to_owned();
    config.kafka.session_timeout_ms = 6000;
    config.session.gap_secs = gap.as_secs();
    config.session.user_gap_secs = gap.as_secs();
    config.session.max_duration_secs = 3600;
    config.session.grace_secs = 30;
    config.session.idle_check_ms = 250;
    config.batch.max_rows = 100;
    config.batch.linger_ms = 200;
    config.batch.max_unacked_rows = 10_000;
    config.openlayer.base_url = Some(base_url);
    config.openlayer.api_key = Some(Secret::new(api_key));
    config.openlayer.default_pipeline_id = Some(pipeline_id);
    config.openlayer.request_timeout_secs = 30;
    config.openlayer.retry_deadline_secs = Some(30);
    config.openlayer.mark_final_turn = true;
    config.shutdown.drain_timeout_secs = 5;
    let validated = config.validate().context("demo configuration")?;
    Ok(validated.pipeline_settings())
}

/// Runs the demo and prints its report.
///
/// # Errors
/// When a part cannot start, or not every trace was shipped or dead-lettered in time.
pub async fn run(settings: DemoSettings) -> anyhow::Result<()> {
    let cluster =
        MockCluster::<DefaultProducerContext>::new(1).context("in-process kafka cluster")?;
    for (topic, partitions) in [
        (TRACES, 3),
        (DEAD_LETTERS, 1),
        (SESSIONS, 1),
        (CHANGELOG, 3),
    ] {
        cluster
            .create_topic(topic, partitions, 1)
            .with_context(|| format!("creating topic {topic}"))?;
    }
    let bootstrap = cluster.bootstrap_servers();

    let real_key = std::env::var("OPENLAYER_API_KEY")
        .ok()
        .filter(|key| !key.is_empty());
    let real_pipeline = std::env::var("OPENLAYER_INFERENCE_PIPELINE_ID")
        .ok()
        .filter(|id| !id.is_empty());
    let (local, base_url, api_key, pipeline_id) = match (real_key, real_pipeline) {
        (Some(key), Some(pipeline)) => {
            let base_url = std::env::var("OPENLAYER_BASE_URL")
                .ok()
                .filter(|url| !url.is_empty())
                .unwrap_or_else(|| "https://api.openlayer.com/v1".to_owned());
            println!("shipping to Openlayer at {base_url}, pipeline {pipeline}");
            (
                None,
                base_url.trim_end_matches('/').to_owned(),
                key,
                pipeline,
            )
        }
        _ => {
            let local = LocalOpenlayer::start(&settings.output_dir)
                .await
                .context("starting the local Openlayer-compatible endpoint")?;
            let base_url = local.base_url.clone();
            (
                Some(local),
                base_url,
                DEMO_KEY.to_owned(),
                DEMO_PIPELINE.to_owned(),
            )
        }
    };

    let registry = prometheus::Registry::new();
    let metrics = Metrics::register(&registry)?;
    service_kit::process_metrics::register(&registry, "sessionizer", crate::VERSION)?;
    let health = Health::new();
    let listener = match tokio::net::TcpListener::bind(settings.metrics_listen).await {
        Ok(listener) => listener,
        Err(_) => tokio::net::TcpListener::bind("127.0.0.1:0").await?,
    };
    let metrics_url = format!("http://{}/metrics", listener.local_addr()?);
    let http_stop = CancellationToken::new();
    let http = tokio::spawn(serve(
        listener,
        HttpState::new(registry.clone(), health.clone(), Duration::from_secs(60)),
        http_stop.clone().cancelled_owned(),
    ));

    let pipeline_settings =
        pipeline_settings(&bootstrap, settings.gap, base_url, api_key, pipeline_id)?;
    let stop = CancellationToken::new();
    let pipeline = tokio::spawn(crate::pipeline::run(
        pipeline_settings,
        metrics,
        health,
        stop.clone().cancelled_owned(),
    ));

    println!("sessionizer demo: in-process Kafka at {bootstrap}, metrics at {metrics_url}");
    if let Some(local) = &local {
        println!(
            "recording what would be sent to Openlayer in {}",
            local.requests_file.display()
        );
    }
    println!();

    let emitter_registry = prometheus::Registry::new();
    let emitter = Emitter::try_new(EmitterConfig::new(&bootstrap, TRACES), &emitter_registry)
        .context("starting the trace emitter")?;
    set_global_sink(emitter.clone());
    let raw: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .context("creating a raw producer")?;

    let started = Instant::now();
    let progress_stop = CancellationToken::new();
    let progress = tokio::spawn(print_progress(
        registry.clone(),
        progress_stop.clone(),
        started,
    ));

    let workload = WorkloadSettings {
        num_users: settings.num_users,
        sessions_per_user: settings.sessions_per_user,
        turns_per_second: settings.turns_per_second,
    };
    let emitted = workload::run(&emitter, workload).await;
    // A few traces arrive late (their event time is minutes old) and a few messages are
    // garbage: the first are shipped with a late marker, the second dead-lettered.
    let num_late = emit_late_traces(&emitter);
    let poison = poison_messages();
    for (_, payload) in &poison {
        raw.send(
            FutureRecord::<(), _>::to(TRACES).payload(payload),
            Duration::from_secs(5),
        )
        .await
        .map_err(|(error, _)| error)
        .context("producing a poison message")?;
    }
    let emitter_for_flush = emitter.clone();
    tokio::task::spawn_blocking(move || emitter_for_flush.flush(Duration::from_secs(10)))
        .await?
        .context("flushing traces")?;
    let expected_rows = (emitted.traces + num_late) as f64;

    let deadline = Instant::now() + settings.timeout;
    loop {
        let shipped = sample_sum(&registry, "sessionizer_rows_shipped_total", None);
        let open = sample_sum(&registry, "sessionizer_sessions_open", None);
        let poisoned = sample_sum(
            &registry,
            "sessionizer_dead_letters_total",
            Some(("stage", "decode")),
        );
        if shipped >= expected_rows && open == 0.0 && poisoned >= poison.len() as f64 {
            break;
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if !settings.keep_serving.is_zero() {
        println!(
            "demo traffic done; serving {metrics_url} for {:?} more",
            settings.keep_serving
        );
        tokio::time::sleep(settings.keep_serving).await;
    }
    progress_stop.cancel();
    let _ = progress.await;
    stop.cancel();
    pipeline.await?.context("sessionizer pipeline")?;
    http_stop.cancel();
    let _ = http.await;

    let shipped = sample_sum(&registry, "sessionizer_rows_shipped_total", None);
    let summaries = read_summaries(&bootstrap)?;
    print_sessions(&summaries);
    println!();
    println!(
        "traces emitted through the helpers: {} ({} late), session end events: {}, poison messages: {}",
        emitted.traces + num_late,
        num_late,
        emitted.session_ends,
        poison.len()
    );
    println!("rows shipped: {shipped}");
    let reasons = dead_letters_by_reason(&registry);
    let described: Vec<String> = reasons
        .iter()
        .filter(|(_, count)| **count > 0)
        .map(|(reason, count)| format!("{reason}: {count}"))
        .collect();
    println!(
        "dead letters: {} ({})",
        reasons.values().sum::<u64>(),
        described.join(", ")
    );
    if let Some(local) = &local {
        println!(
            "requests recorded ({} rows): {}",
            local.rows(),
            local.requests_file.display()
        );
    }
    println!("metrics were served at {metrics_url} while the demo ran");
    // The emitter stays installed as the global sink until the process exits; stopping the
    // cluster under it would only make librdkafka log connection errors on the way out.
    std::mem::forget(cluster);
    if shipped < expected_rows {
        bail!(
            "only {shipped} of {expected_rows} rows were shipped within {:?}",
            settings.timeout
        );
    }
    Ok(())
}

/// Traces of the first user's first session, stamped five minutes ago: late for the partition.
fn emit_late_traces(emitter: &Arc<Emitter>) -> usize {
    let now_ms = chrono_ms();
    let mut count = 0;
    for minutes in [5, 6] {
        let mut event = TraceEvent::new("chat", now_ms - minutes * 60_000);
        event.inference_id = Some(format!("late-{minutes}"));
        event.user_id = Some("user-01".to_owned());
        event.session_id = Some("chat-01-travel-1".to_owned());
        event.inputs.insert(
            "user_message".to_owned(),
            "(sent from a phone that was offline)".into(),
        );
        event.output = "Answered when the phone came back online.".into();
        event.latency_ms = Some(850.0);
        if emitter.emit(event) {
            count += 1;
        }
    }
    count
}

fn chrono_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

async fn print_progress(registry: prometheus::Registry, stop: CancellationToken, started: Instant) {
    let mut previous = 0.0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let consumed = sample_sum(&registry, "sessionizer_events_consumed_total", None);
        println!(
            "[{:>4.1}s] consumed {:>4}  shipped {:>4}  open sessions {:>3}  {:>5.0} events/s",
            started.elapsed().as_secs_f64(),
            consumed,
            sample_sum(&registry, "sessionizer_rows_shipped_total", None),
            sample_sum(&registry, "sessionizer_sessions_open", None),
            consumed - previous,
        );
        previous = consumed;
    }
}

fn read_summaries(bootstrap: &str) -> anyhow::Result<Vec<SessionSummary>> {
    let consumer: BaseConsumer<ReadToEndContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "sessionizer-demo-report")
        .set("enable.partition.eof", "true")
        .create_with_context(ReadToEndContext)?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(SESSIONS, 0, Offset::Beginning)?;
    consumer.assign(&assignment)?;
    drop(assignment);
    let mut summaries = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
            Some(Err(error)) => return Err(error.into()),
            Some(Ok(message)) => {
                let payload = message.payload().unwrap_or_default();
                summaries.push(trace_model::codec::avro::decode_session_summary(payload)?);
            }
        }
    }
    Ok(summaries)
}

fn print_sessions(summaries: &[SessionSummary]) {
    println!();
    println!(
        "{:<9} {:<24} {:>5} {:>9} {:>7} {:>10}  closed by",
        "user", "session", "turns", "duration", "tokens", "cost"
    );
    let mut sorted: Vec<&SessionSummary> = summaries.iter().collect();
    sorted.sort_by(|a, b| (&a.user_id, &a.session_id).cmp(&(&b.user_id, &b.session_id)));
    let mut by_reason: HashMap<&str, usize> = HashMap::new();
    for summary in sorted {
        *by_reason.entry(summary.close_reason.as_str()).or_default() += 1;
        println!(
            "{:<9} {:<24} {:>5} {:>8.1}s {:>7} {:>10.6}  {}",
            summary.user_id.as_deref().unwrap_or("-"),
            summary.session_id,
            summary.num_turns,
            (summary.ended_at_ms - summary.started_at_ms) as f64 / 1000.0,
            summary.total_tokens,
            summary.total_cost,
            summary.close_reason
        );
    }
    let mut reasons: Vec<String> = by_reason
        .iter()
        .map(|(reason, count)| format!("{reason}: {count}"))
        .collect();
    reasons.sort();
    println!(
        "{} sessions closed ({})",
        summaries.len(),
        reasons.join(", ")
    );
}
