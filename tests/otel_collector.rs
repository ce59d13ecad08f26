//! The Collector path on the real broker: the official OpenTelemetry Python SDK writes its
//! spans to a spans topic as the Collector's Kafka exporter writes them (`otlp_proto`
//! `ExportTraceServiceRequest` messages, `tests/otel/genai_chat.py --kafka`), every span in a
//! message of its own, keyed by trace id or unkeyed; the `sessionizer` binary reads them with
//! `otel.spans_topic` set and ships to the Openlayer-compatible test server.

use end_to_end::otel::{self, OtelTurn, assert_exact_sessions};
use end_to_end::service::{Sessionizer, free_local_address, http_get, service_env, set};
use end_to_end::{
    ServiceTopics, bootstrap, create_service_topics, create_topic, produce, producer, read_topic,
    unique_name,
};
use fakes::openlayer::OpenlayerServer;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message as _;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// Bound of every wait (a consumer group join alone takes about 3 s on the test broker).
const WAIT: Duration = Duration::from_secs(120);
const SESSIONS: usize = 3;
const TURNS: usize = 4;

/// The file the client waits for before it ends the last turn's root span (it removes it).
struct Release {
    file: PathBuf,
    released: bool,
}

impl Release {
    fn new() -> Release {
        Release {
            file: std::env::temp_dir().join(unique_name("otel-release")),
            released: false,
        }
    }

    fn now(&mut self) {
        std::fs::write(&self.file, b"").expect("write the release file");
        self.released = true;
    }
}

impl Drop for Release {
    /// A test that fails first still lets the client finish.
    fn drop(&mut self) {
        if !self.released {
            let _written = std::fs::write(&self.file, b"");
        }
    }
}

/// A sessionizer with the Collector path on, and what it needs.
struct Setup {
    topics: ServiceTopics,
    spans_topic: String,
    server: OpenlayerServer,
    http: SocketAddr,
    env: BTreeMap<String, String>,
    prefix: String,
}

impl Setup {
    async fn new() -> Setup {
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
        Setup {
            topics,
            spans_topic,
            server,
            http,
            env,
            prefix: unique_name("otel"),
        }
    }

    /// The client writes turns `first_turn..first_turn + TURNS` of `SESSIONS` conversations,
    /// every span in a message of its own; returns what it recorded.
    async fn client(&self, first_turn: usize, keyed: bool) -> Vec<OtelTurn> {
        self.start_client(first_turn, keyed, None)
            .await
            .expect("the client ran")
    }

    /// Starts the client; with `hold_last_root`, the last turn's root span ends once that
    /// file exists.
    fn start_client(
        &self,
        first_turn: usize,
        keyed: bool,
        hold_last_root: Option<&Path>,
    ) -> tokio::task::JoinHandle<Vec<OtelTurn>> {
        let sent = std::env::temp_dir().join(format!("{}.jsonl", unique_name("otel-sent")));
        let mut client = otel::python("genai_chat.py");
        client
            .args(["--prefix", &self.prefix])
            .args(["--sessions", &SESSIONS.to_string()])
            .args(["--turns", &TURNS.to_string()])
            .args(["--first-turn", &first_turn.to_string()])
            .arg("--sent")
            .arg(&sent)
            .args(["--kafka", &bootstrap(), "--topic", &self.spans_topic])
            .args(["--batch-size", "1"])
            .stdin(Stdio::null());
        if keyed {
            client.arg("--keyed");
        }
        if let Some(file) = hold_last_root {
            client.arg("--hold-last-root").arg(file);
        }
        tokio::task::spawn_blocking(move || {
            let run = client.output().expect("run the client");
            let stderr = String::from_utf8_lossy(&run.stderr);
            assert!(run.status.success(), "the client failed: {stderr}");
            let turns = OtelTurn::read_sent(&sent);
            assert_eq!(turns.len(), SESSIONS * TURNS);
            turns
        })
    }

    /// Waits for a row per turn, and a moment more for any row too many.
    async fn shipped(&self, turns: &[OtelTurn]) -> Vec<Value> {
        let shipped = self.server.wait_for_rows(turns.len(), WAIT).await;
        // Anything more would come within a quiet wait or two.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            self.server.rows().len(),
            shipped.len(),
            "more rows than traces"
        );
        shipped
    }

    /// The value of the series `series` (name and labels) of the sessionizer's metrics.
    async fn metric(&self, series: &str) -> f64 {
        let (_, metrics) = http_get(self.http, "/metrics")
            .await
            .expect("metrics answer");
        let prefix = format!("{series} ");
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("no series {series}"))
    }

    /// The `error.reason` of every dead letter.
    fn dead_letter_reasons(&self) -> Vec<Option<String>> {
        read_topic(
            &bootstrap(),
            &self.topics.dead_letters,
            1,
            1,
            Duration::from_secs(3),
        )
        .iter()
        .map(|letter| letter.header("error.reason"))
        .collect()
    }
}

/// The spans of `SESSIONS` conversations of `TURNS` turns reach Openlayer as one row per turn
/// with exact session columns; nothing is dead-lettered.
async fn collector_spans_ship_as_sessions(keyed: bool) {
    let setup = Setup::new().await;
    let mut sessionizer = Sessionizer::run(&setup.env);
    let turns = setup.client(1, keyed).await;
    let shipped = setup.shipped(&turns).await;
    assert_exact_sessions(&turns, &shipped, "genai-chat");
    assert_eq!(
        setup
            .metric(r#"sessionizer_otel_traces_assembled_total{completion="quiet"}"#)
            .await,
        turns.len() as f64
    );
    sessionizer.stop().await;
    let reasons = setup.dead_letter_reasons();
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

/// A stop while a trace is still being assembled (its spans read, its root not yet written):
/// the next run reads the spans again from the commit point, ships that trace whole, and none
/// of those shipped before (every turn numbered as if nothing had happened).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_during_assembly_ships_each_trace_once() {
    let setup = Setup::new().await;
    let mut first = Sessionizer::run(&setup.env);
    let mut release = Release::new();
    let client = setup.start_client(1, false, Some(&release.file));
    // Every turn but the last, whose root the client still holds, and that one's chat span
    // read: its trace is open when the process stops.
    setup.server.wait_for_rows(SESSIONS * TURNS - 1, WAIT).await;
    let deadline = std::time::Instant::now() + WAIT;
    while setup.metric("sessionizer_otel_open_traces").await < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the held trace was never read"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    first.stop().await;
    let mut second = Sessionizer::run(&setup.env);
    release.now();
    let mut turns = client.await.expect("the client ran");
    turns.extend(setup.client(1 + TURNS, false).await);
    let shipped = setup.shipped(&turns).await;
    assert_exact_sessions(&turns, &shipped, "genai-chat");
    second.stop().await;
    let reasons = setup.dead_letter_reasons();
    assert!(reasons.is_empty(), "dead letters: {reasons:?}");
}

/// A span of a trace whose two spans are each other's parent: it never gets a root.
fn cyclic_span(n: u8) -> Span {
    Span {
        trace_id: vec![7; 16],
        span_id: vec![n; 8],
        parent_span_id: vec![3 - n; 8],
        name: format!("cyclic {n}"),
        ..Span::default()
    }
}

fn one_request(spans: Vec<Span>) -> Vec<u8> {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans,
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    }
    .encode_to_vec()
}

/// Messages that are not OTLP, spans without a trace id and a trace that never gets a root
/// are dead-lettered with their reason; the conversations around them ship exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_span_messages_are_dead_lettered_and_the_rest_ships() {
    let mut setup = Setup::new().await;
    set(&mut setup.env, "SESSIONIZER__OTEL__MAX_OPEN_SECS", "3");
    let mut sessionizer = Sessionizer::run(&setup.env);
    let producer = producer();
    let without_trace_id = Span {
        span_id: vec![5; 8],
        name: "no trace".to_owned(),
        ..Span::default()
    };
    let bad: [&[u8]; 4] = [
        // A length-delimited field longer than the message.
        &[0x0a, 0xff, 0xff, 0xff, 0x0f],
        b"{\"resourceSpans\": 7}",
        &one_request(vec![without_trace_id]),
        &one_request(vec![cyclic_span(1), cyclic_span(2)]),
    ];
    for payload in bad {
        produce(&producer, &setup.spans_topic, None, payload).await;
    }
    let turns = setup.client(1, false).await;
    let shipped = setup.shipped(&turns).await;
    assert_exact_sessions(&turns, &shipped, "genai-chat");
    // The rootless trace is dead-lettered once open `otel.max_open_secs` (3 s); reading asks
    // for one letter more than expected, so a spurious one shows.
    let mut reasons: Vec<String> = Vec::new();
    let deadline = std::time::Instant::now() + WAIT;
    while reasons.len() < 4 && std::time::Instant::now() < deadline {
        reasons = read_topic(
            &bootstrap(),
            &setup.topics.dead_letters,
            1,
            5,
            Duration::from_secs(5),
        )
        .iter()
        .filter_map(|letter| letter.header("error.reason"))
        .collect();
    }
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "otel_no_root",
            "otel_trace_id",
            "otlp_json",
            "otlp_protobuf"
        ]
    );
    sessionizer.stop().await;
}

/// SIGKILL while a trace is half read, `settle` after the others shipped: nothing is lost
/// (the held trace ships whole after the restart) and every trace is one turn, however much
/// the Collector path produces again (rows the pipeline ships again repeat their turn).
async fn sigkill_during_assembly(settle: Duration) {
    let setup = Setup::new().await;
    let mut first = Sessionizer::run(&setup.env);
    let mut release = Release::new();
    let client = setup.start_client(1, false, Some(&release.file));
    setup.server.wait_for_rows(SESSIONS * TURNS - 1, WAIT).await;
    tokio::time::sleep(settle).await;
    first.kill();
    let mut second = Sessionizer::run(&setup.env);
    release.now();
    let turns = client.await.expect("the client ran");
    let held = turns.last().expect("turns").trace_id.clone();
    let deadline = std::time::Instant::now() + WAIT;
    let ids = |rows: &[Value]| -> Vec<String> {
        rows.iter()
            .filter_map(|row| row["inferenceId"].as_str().map(str::to_owned))
            .collect()
    };
    while !ids(&setup.server.rows()).contains(&held) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rows = setup.server.rows();
    let shipped = ids(&rows);
    for turn in &turns {
        assert!(shipped.contains(&turn.trace_id), "{} lost", turn.trace_id);
    }
    let held_row = rows
        .iter()
        .find(|row| row["inferenceId"] == held.as_str())
        .expect("the held trace shipped");
    assert_eq!(
        held_row["steps"][0]["steps"][0]["type"], "chat_completion",
        "the held trace ships whole, its chat span read again after the restart: {held_row}"
    );
    let turns_shipped: std::collections::HashSet<(String, String)> = rows
        .iter()
        .map(|row| {
            (
                row["inferenceId"].to_string(),
                row["session_turn"].to_string(),
            )
        })
        .collect();
    assert_eq!(
        turns_shipped.len(),
        turns.len(),
        "a trace counted as a turn twice: {turns_shipped:?}"
    );
    eprintln!(
        "copies not numbered again after the kill: {}",
        setup.metric("sessionizer_duplicate_traces_total").await
    );
    second.stop().await;
}

/// A checkpoint interval (1 s) after the others shipped: the commit points cover them, and
/// nothing is produced again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_during_assembly_loses_nothing() {
    sigkill_during_assembly(Duration::from_secs(3)).await;
}

/// At once: the traces acknowledged since the last commit point are assembled and produced
/// again, and the spans read since the router's last commit routed again; the sessionizer
/// knows them by their inference ids and numbers none of them twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_right_after_shipping_numbers_no_trace_twice() {
    sigkill_during_assembly(Duration::ZERO).await;
}
