//! Shared pieces of the real-broker tests: where the broker is, unique topics, a plain
//! consumer that reads a topic back.
//!
//! The broker comes from `scripts/kafka-broker.sh up` (`make test` starts it and exports
//! `KAFKA_BOOTSTRAP`). Without it these tests fail with a message saying so: they are never
//! skipped silently.

pub mod gateway;
pub mod otel;
pub mod reliability;
pub mod service;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use trace_model::{Encoding, TraceEvent};

/// The workspace root (scripts, test clients and broker state live under it).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// Bootstrap address of the test broker.
///
/// # Panics
/// When `KAFKA_BOOTSTRAP` is not set: run `make test`, or `make broker-up` and export it.
pub fn bootstrap() -> String {
    match std::env::var("KAFKA_BOOTSTRAP") {
        Ok(bootstrap) if !bootstrap.is_empty() => bootstrap,
        _ => panic!(
            "KAFKA_BOOTSTRAP is not set: these tests need the real broker. Run `make test`, \
             or `make broker-up` and export the KAFKA_BOOTSTRAP it prints"
        ),
    }
}

/// A name no other test run uses, so tests can run in parallel and be rerun.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// Creates `topic` with `partitions` partitions.
///
/// # Panics
/// When the broker refuses; a test cannot go on without its topic.
pub async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let results = admin
        .create_topics([&new_topic], &AdminOptions::new())
        .await
        .expect("create_topics request");
    for result in results {
        result.expect("topic created");
    }
}

/// Partitions of `topic` on `bootstrap`; `None` when the broker does not know it.
///
/// # Panics
/// When the metadata request fails.
pub fn num_partitions(bootstrap: &str, topic: &str) -> Option<usize> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    metadata
        .topics()
        .iter()
        .find(|found| found.name() == topic && found.error().is_none())
        .map(|found| found.partitions().len())
        .filter(|count| *count > 0)
}

/// One record as read back from the broker.
#[derive(Debug, Clone)]
pub struct ReadRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    /// Header names and values (values read as UTF-8, lossily).
    pub headers: Vec<(String, String)>,
}

impl ReadRecord {
    /// The value of header `name`, if the record has it.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    }
}

/// The topics one sessionizer under test uses, uniquely named.
#[derive(Debug, Clone)]
pub struct ServiceTopics {
    pub traces: String,
    pub dead_letters: String,
    pub sessions: String,
    /// Left to the sessionizer to create, co-partitioned with `traces`.
    pub changelog: String,
}

/// Creates the traces (with `partitions`), dead-letter and sessions topics under names
/// starting with `prefix`.
///
/// # Panics
/// When the broker refuses.
pub async fn create_service_topics(prefix: &str, partitions: i32) -> ServiceTopics {
    let bootstrap = bootstrap();
    let topics = ServiceTopics {
        traces: unique_name(&format!("{prefix}traces")),
        dead_letters: unique_name(&format!("{prefix}dlq")),
        sessions: unique_name(&format!("{prefix}sessions")),
        changelog: unique_name(&format!("{prefix}state")),
    };
    create_topic(&bootstrap, &topics.traces, partitions).await;
    create_topic(&bootstrap, &topics.dead_letters, 1).await;
    create_topic(&bootstrap, &topics.sessions, 1).await;
    topics
}

/// Reads `topic` from the beginning of each of its `partitions` until `expected` records
/// arrived or `deadline` passed, with a plain consumer (no group coordination: assigned).
///
/// # Panics
/// On consumer errors.
pub fn read_topic(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    expected: usize,
    deadline: Duration,
) -> Vec<ReadRecord> {
    read_records(bootstrap, topic, partitions, expected, deadline, None)
}

/// Every record of `topic`'s `partitions`: read until none came for `quiet` (at most
/// `deadline`). Not the high watermark: the test broker reports the base offset of a
/// partition's last batch plus one, short of the records in that batch.
///
/// # Panics
/// On consumer errors.
pub fn read_all(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    quiet: Duration,
    deadline: Duration,
) -> Vec<ReadRecord> {
    read_records(
        bootstrap,
        topic,
        partitions,
        usize::MAX,
        deadline,
        Some(quiet),
    )
}

fn read_records(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    expected: usize,
    deadline: Duration,
    quiet: Option<Duration>,
) -> Vec<ReadRecord> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique_name("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .expect("partition offset");
    }
    consumer.assign(&assignment).expect("assign");
    let until = Instant::now() + deadline;
    let mut records = Vec::with_capacity(expected.min(1 << 16));
    let mut last_record = Instant::now();
    while records.len() < expected && Instant::now() < until {
        let Some(result) = consumer.poll(Duration::from_millis(200)) else {
            if quiet.is_some_and(|quiet| last_record.elapsed() >= quiet) {
                break;
            }
            continue;
        };
        last_record = Instant::now();
        let message = result.expect("consume");
        let headers = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|header| {
                        let value = header
                            .value
                            .map(String::from_utf8_lossy)
                            .unwrap_or_default();
                        (header.key.to_owned(), value.into_owned())
                    })
                    .collect()
            })
            .unwrap_or_default();
        records.push(ReadRecord {
            headers,
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        });
    }
    // Drop the assignment list before the consumer (dropping a consumer while one is
    // alive can hang; see rust-rdkafka's consumer drop notes).
    drop(assignment);
    records
}

/// Wall-clock time in milliseconds since the Unix epoch, as trace timestamps use it.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

/// An idempotent producer on the test broker, partitioning as the helpers do.
///
/// # Panics
/// When the client cannot be created.
pub fn producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("enable.idempotence", "true")
        // The helpers' partitioner: traces land in their session's partition, as the
        // emitter's and the gateway's do (tests/repartition.rs and the reliability feed
        // produce with others).
        .set("partitioner", "murmur2_random")
        .create()
        .expect("producer")
}

/// Produces one record and waits for Kafka's acknowledgement.
///
/// # Panics
/// When Kafka refuses it.
pub async fn produce(producer: &FutureProducer, topic: &str, key: Option<&str>, payload: &[u8]) {
    let mut record = FutureRecord::to(topic).payload(payload);
    if let Some(key) = key {
        record = record.key(key);
    }
    producer
        .send(record, Duration::from_secs(10))
        .await
        .map_err(|(error, _)| error)
        .expect("produced");
}

/// Produces `event` as the Rust helpers do: Avro single-object, keyed by session (else user).
///
/// # Panics
/// When Kafka refuses it.
pub async fn produce_trace(producer: &FutureProducer, topic: &str, event: &TraceEvent) {
    let payload = trace_model::encode(event, Encoding::Avro).expect("encode");
    produce(producer, topic, event.partition_key(), &payload).await;
}

/// The `sessionizer` executable in the target directory.
///
/// # Panics
/// When it was not built: run `cargo build -p sessionizer` first (`make test` does).
pub fn sessionizer_path() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf();
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => workspace.join(dir),
        _ => workspace.join("target"),
    };
    // `make reliability` points at a release build.
    if let Some(binary) = std::env::var_os("SESSIONIZER_BIN").filter(|path| !path.is_empty()) {
        return PathBuf::from(binary);
    }
    let binary = target.join("debug").join("sessionizer");
    assert!(
        binary.is_file(),
        "{} does not exist: run `cargo build -p sessionizer` first (`make test` does)",
        binary.display()
    );
    binary
}

/// Turn `turn` of a chat session: inference id `{session}-turn-{turn}`, a question input, an
/// answer output, `tokens` tokens and a cost proportional to them.
pub fn chat_trace(user: &str, session: &str, turn: i64, tokens: i64, at_ms: i64) -> TraceEvent {
    let mut event = TraceEvent::new("chat", at_ms);
    event.inference_id = Some(format!("{session}-turn-{turn}"));
    event.user_id = Some(user.to_owned());
    event.session_id = Some(session.to_owned());
    event
        .inputs
        .insert("user_message".into(), format!("question {turn}").into());
    event.output = format!("answer {turn}").into();
    event.latency_ms = Some(120.0);
    event.tokens = Some(tokens);
    event.cost = Some(0.0001 * tokens as f64);
    event
}

/// The sessionizer pipeline running in this process, on the test's runtime.
#[derive(Debug)]
pub struct Running {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    pub registry: prometheus::Registry,
}

/// Validates `config` and runs the pipeline it describes, as the service does.
///
/// # Panics
/// When the configuration is invalid (a bug in the test).
pub fn start(config: sessionizer::config::SessionizerConfig) -> Running {
    let settings = config
        .validate()
        .expect("valid configuration")
        .pipeline_settings();
    let registry = prometheus::Registry::new();
    let metrics = sessionizer::metrics::Metrics::register(&registry).expect("metrics");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let health = sessionizer::health::Health::default();
        sessionizer::pipeline::run(settings, metrics, health, async {
            // A dropped sender stops the pipeline too.
            let _stop_or_drop = stopped.await;
        })
        .await
        .expect("pipeline runs");
    });
    Running {
        stop: Some(stop),
        task,
        registry,
    }
}

impl Running {
    /// Stops the pipeline (it drains and commits) and returns its metrics.
    ///
    /// # Panics
    /// When the pipeline task panicked.
    pub async fn stop(mut self) -> prometheus::Registry {
        if let Some(stop) = self.stop.take() {
            let _already_stopped = stop.send(());
        }
        (&mut self.task).await.expect("pipeline task");
        self.registry.clone()
    }
}
