//! Sessions whatever the producers' partitioner: the same sessions produced through
//! librdkafka's default partitioner (CRC32), murmur2 (Java, KafkaJS), FNV-1a (Go's sarama and
//! kafka-go hash) and without a key come out of the real sessionizer, on the real broker, with
//! exact turn numbers and running totals, the traces read in another partition than their
//! session's having gone through the repartition topic.

use end_to_end::{
    ServiceTopics, bootstrap, chat_trace, create_service_topics, now_ms, start, unique_name,
};
use fakes::openlayer::OpenlayerServer;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use sessionizer::config::SessionizerConfig;
use sessionizer::secret::Secret;
use std::collections::BTreeMap;
use std::time::Duration;
use trace_model::Encoding;

const PARTITIONS: i32 = 3;
const API_KEY: &str = "test-key-not-a-secret";
const SESSIONS: usize = 12;
const TURNS: usize = 4;

/// A producer with librdkafka's `partitioner` set (`None`: its default, CRC32).
fn producer_with(partitioner: Option<&str>) -> FutureProducer {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap())
        .set("enable.idempotence", "true");
    if let Some(partitioner) = partitioner {
        config.set("partitioner", partitioner);
    }
    config.create().expect("producer")
}

/// The sessionizer on `topics`, repartitioning through a topic of its own.
fn config_for(topics: &ServiceTopics, server: &OpenlayerServer) -> SessionizerConfig {
    let mut config = SessionizerConfig::default();
    config.kafka.bootstrap_servers = bootstrap();
    config.kafka.group_id = unique_name("repartition");
    config.kafka.topic.clone_from(&topics.traces);
    config
        .kafka
        .dead_letter_topic
        .clone_from(&topics.dead_letters);
    config.kafka.sessions_topic.clone_from(&topics.sessions);
    config.kafka.changelog_topic.clone_from(&topics.changelog);
    config.kafka.repartition_topic = Some(unique_name("repartition"));
    config.kafka.session_timeout_ms = 6000;
    config.kafka.checkpoint_interval_ms = 200;
    config.session.gap_secs = 3600;
    config.batch.linger_ms = 50;
    config.openlayer.base_url = Some(server.base_url());
    config.openlayer.api_key = Some(Secret::new(API_KEY));
    config.openlayer.default_pipeline_id = Some("pipeline-main".to_owned());
    config.shutdown.drain_timeout_secs = 5;
    config
}

/// Producers that partition differently, and whether each keys its records. Each turn of a
/// session goes through another one, as when a chat's requests are served by services
/// written in different languages.
fn mixed_producers() -> [(FutureProducer, bool); 4] {
    [
        (producer_with(None), true),
        (producer_with(Some("murmur2_random")), true),
        (producer_with(Some("fnv1a")), true),
        (producer_with(None), false),
    ]
}

/// Turn `turn` of every session, each session through another producer.
async fn produce_turn(
    producers: &[(FutureProducer, bool)],
    topic: &str,
    turn: usize,
    start_ms: i64,
) {
    for session in 0..SESSIONS {
        let (producer, keyed) = &producers[(session + turn) % producers.len()];
        let session_id = format!("mixed-{session}");
        let event = chat_trace(
            &format!("user-{session}"),
            &session_id,
            turn as i64,
            10 * turn as i64,
            start_ms + (turn * 1000) as i64,
        );
        let payload = trace_model::encode(&event, Encoding::Json).expect("encode");
        let mut record = FutureRecord::to(topic).payload(&payload);
        if *keyed {
            record = record.key(&session_id);
        }
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(error, _)| error)
            .expect("produced");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_keep_exact_turns_whatever_partitioner_their_producers_use() {
    let topics = create_service_topics("", PARTITIONS).await;
    let server = OpenlayerServer::start(API_KEY).await;
    let running = start(config_for(&topics, &server));
    let producers = mixed_producers();
    let start_ms = now_ms() - 60_000;
    for turn in 1..=TURNS {
        produce_turn(&producers, &topics.traces, turn, start_ms).await;
        // The next turn of a chat follows the answer to this one.
        server
            .wait_for_rows(SESSIONS * turn, Duration::from_secs(60))
            .await;
    }
    let rows = server
        .wait_for_rows(SESSIONS * TURNS, Duration::from_secs(60))
        .await;
    let registry = running.stop().await;
    check_sessions(&rows);
    check_forwarded(&registry);
}

/// A backlog (the sessionizer was down while the chats went on): each partition's traces are
/// read at once, those in place racing ahead of the ones forwarded to them, yet every session
/// is numbered in event-time order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_mixed_sessions_is_numbered_in_event_time_order() {
    let topics = create_service_topics("", PARTITIONS).await;
    let server = OpenlayerServer::start(API_KEY).await;
    let producers = mixed_producers();
    let start_ms = now_ms() - 60_000;
    for turn in 1..=TURNS {
        produce_turn(&producers, &topics.traces, turn, start_ms).await;
    }
    let mut config = config_for(&topics, &server);
    // The end of the backlog waits for the statistics to find the quiet partitions caught
    // up (seconds): on a loaded machine that can near the 5 s default, and this test is
    // about order, not latency.
    config.kafka.repartition_max_wait_ms = 30_000;
    let running = start(config);
    let rows = server
        .wait_for_rows(SESSIONS * TURNS, Duration::from_secs(60))
        .await;
    let registry = running.stop().await;
    check_sessions(&rows);
    check_forwarded(&registry);
    // In order because every partition waited for the others, not because one gave up.
    let forced =
        sessionizer::metrics::sample_sum(&registry, "sessionizer_alignment_forced_total", None);
    assert_eq!(forced, 0.0, "traces applied before their inputs caught up");
}

/// Every trace shipped once, each session with turns 1 to `TURNS` and exact running tokens.
fn check_sessions(rows: &[Value]) {
    assert_eq!(rows.len(), SESSIONS * TURNS, "every trace shipped once");
    let mut by_session: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for row in rows {
        let session = row["session_id"].as_str().expect("session id").to_owned();
        by_session.entry(session).or_default().push(row);
    }
    assert_eq!(by_session.len(), SESSIONS);
    for (session, mut rows) in by_session {
        rows.sort_by_key(|row| row["inferenceId"].as_str().map(str::to_owned));
        let turns: Vec<i64> = rows
            .iter()
            .map(|row| row["session_turn"].as_i64().expect("turn"))
            .collect();
        assert_eq!(turns, [1, 2, 3, 4], "turns of {session}");
        let tokens: Vec<i64> = rows
            .iter()
            .map(|row| row["session_tokens_so_far"].as_i64().expect("tokens"))
            .collect();
        assert_eq!(tokens, [10, 30, 60, 100], "running tokens of {session}");
    }
}

/// Traces were forwarded for both reasons.
fn check_forwarded(registry: &prometheus::Registry) {
    let exposition = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .expect("metrics");
    for reason in ["other_partition", "no_key"] {
        let line = exposition
            .lines()
            .find(|line| {
                line.starts_with(&format!(
                    "sessionizer_traces_repartitioned_total{{reason=\"{reason}\"}}"
                ))
            })
            .unwrap_or_else(|| panic!("no repartitioned series for {reason}: {exposition}"));
        let count: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .expect("value");
        assert!(count > 0.0, "traces forwarded for {reason}: {line}");
    }
}
