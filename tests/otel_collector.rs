//! The Collector path on the real broker: the official OpenTelemetry Python SDK writes its
//! spans to a spans topic as the Collector's Kafka exporter writes them (`otlp_proto`
//! `ExportTraceServiceRequest` messages, `tests/otel/genai_chat.py --kafka`), every span in a
//! message of its own, keyed by trace id or unkeyed; the `sessionizer` binary reads them with
//! `otel.spans_topic` set and ships to the Openlayer-compatible test server.

use end_to_end::otel::{self, OtelTurn, assert_exact_sessions};
use end_to_end::service::{Sessionizer, free_local_address, http_get, service_env, set};
use end_to_end::{bootstrap, create_service_topics, create_topic, read_topic, unique_name};
use fakes::openlayer::OpenlayerServer;
use std::process::Stdio;
use std::time::Duration;

/// Bound of every wait (a consumer group join alone takes about 3 s on the test broker).
const WAIT: Duration = Duration::from_secs(120);
const SESSIONS: usize = 3;
const TURNS: usize = 4;

/// The spans of `SESSIONS` conversations of `TURNS` turns, each span its own message, reach
/// Openlayer as one row per turn with exact session columns; nothing is dead-lettered.
async fn collector_spans_ship_as_sessions(keyed: bool) {
    let topics = create_service_topics("otel-coll-", 3).await;
    let spans_topic = unique_name("otlp-spans");
    create_topic(&bootstrap(), &spans_topic, 3).await;
    let api_key = format!("key-{}", uuid::Uuid::new_v4().simple());
    let server = OpenlayerServer::start(&api_key).await;
    let http = free_local_address();
    let mut env = service_env(
        &topics,
        &unique_name("otel-coll-group"),
        &server,
        &api_key,
        http,
    );
    set(&mut env, "SESSIONIZER__OTEL__SPANS_TOPIC", &spans_topic);
    set(&mut env, "SESSIONIZER__OTEL__QUIET_MS", "500");
    let mut sessionizer = Sessionizer::run(&env);

    let sent = std::env::temp_dir().join(format!("{}.jsonl", unique_name("otel-sent")));
    let mut client = otel::python("genai_chat.py");
    client
        .args(["--prefix", &unique_name("otel")])
        .args(["--sessions", &SESSIONS.to_string()])
        .args(["--turns", &TURNS.to_string()])
        .arg("--sent")
        .arg(&sent)
        .args(["--kafka", &bootstrap(), "--topic", &spans_topic])
        .args(["--batch-size", "1"])
        .stdin(Stdio::null());
    if keyed {
        client.arg("--keyed");
    }
    let run = tokio::task::spawn_blocking(move || client.output().expect("run the client"))
        .await
        .expect("joined");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "the client failed: {stderr}");
    let turns = OtelTurn::read_sent(&sent);
    assert_eq!(turns.len(), SESSIONS * TURNS);

    let shipped = server.wait_for_rows(turns.len(), WAIT).await;
    // Anything more would come within a quiet wait or two.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let shipped_now = server.rows();
    assert_eq!(shipped_now.len(), shipped.len(), "more rows than traces");
    assert_exact_sessions(&turns, &shipped, "genai-chat");
    let (_, metrics) = http_get(http, "/metrics").await.expect("metrics answer");
    let assembled = metrics
        .lines()
        .find(|line| {
            line.starts_with("sessionizer_otel_traces_assembled_total{completion=\"quiet\"}")
        })
        .expect("the assembled traces metric");
    assert!(
        assembled.ends_with(&format!(" {}", turns.len())),
        "{assembled}"
    );
    sessionizer.stop().await;
    let dead_letters = read_topic(
        &bootstrap(),
        &topics.dead_letters,
        1,
        1,
        Duration::from_secs(3),
    );
    let reasons: Vec<_> = dead_letters
        .iter()
        .map(|letter| letter.header("error.reason"))
        .collect();
    assert!(reasons.is_empty(), "dead letters: {reasons:?}");
}

/// `partition_traces_by_id`: one message per export and trace, keyed by the hex trace id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_spans_keyed_by_trace_id_ship_as_sessions_with_exact_turns() {
    collector_spans_ship_as_sessions(true).await;
}

/// The exporter's default: unkeyed, so a trace's spans land in different partitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unkeyed_collector_spans_ship_as_sessions_with_exact_turns() {
    collector_spans_ship_as_sessions(false).await;
}
