//! The gateway with Openlayer's official Python SDK (openlayer==0.36.0) as its client: a
//! traced chat service (`tests/sdk/traced_chat.py`) points `OPENLAYER_BASE_URL` at the
//! gateway (run in-process), the real `sessionizer` binary consumes the traces topic on the
//! real broker and ships to the Openlayer-compatible test server.
//!
//! The SDK's venv comes from `scripts/python-venv.sh openlayer-sdk`; the sessionizer binary
//! from `cargo build -p sessionizer` (`make test` builds it first). The outage test starts and
//! stops a broker of its own and never touches the shared one.

use end_to_end::gateway::{CLIENT_KEY, Gateway};
use end_to_end::otel::{self, OtelTurn, assert_exact_sessions};
use end_to_end::service::{Sessionizer, free_local_address, service_env, set};
use end_to_end::workspace;
use end_to_end::{
    ServiceTopics, bootstrap, create_service_topics, create_topic, num_partitions, read_topic,
    unique_name,
};
use fakes::openlayer::OpenlayerServer;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use trace_model::{Decoder, Limits, TraceKind};

const PIPELINE: &str = "pipeline-sdk";
/// Bound of every wait (a consumer group join alone takes about 3 s on the test broker).
const WAIT: Duration = Duration::from_secs(120);
/// The session columns every turn row carries (the sessionizer's `enrich::SESSION_COLUMNS`).
use sessionizer::enrich::SESSION_COLUMNS;

// ---------------------------------------------------------------------------------------------
// The sessionizer binary (the shared child-process helpers of `end_to_end::service`)
// ---------------------------------------------------------------------------------------------

/// `sessionizer run` on `topics`, shipping to `server` with `api_key`.
fn run_sessionizer(topics: &ServiceTopics, server: &OpenlayerServer, api_key: &str) -> Sessionizer {
    let group = unique_name("gateway-sdk-group");
    Sessionizer::run(&service_env(
        topics,
        &group,
        server,
        api_key,
        free_local_address(),
    ))
}

// ---------------------------------------------------------------------------------------------
// The SDK client
// ---------------------------------------------------------------------------------------------

/// The venv's python, created by `scripts/python-venv.sh openlayer-sdk` if needed.
fn sdk_python() -> PathBuf {
    let output = Command::new(workspace().join("scripts/python-venv.sh"))
        .arg("openlayer-sdk")
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/python-venv.sh");
    assert!(
        output.status.success(),
        "scripts/python-venv.sh openlayer-sdk failed"
    );
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()).join("python")
}

struct SdkRun {
    output: Output,
    /// Each row the SDK streamed, in order.
    rows: Vec<Map<String, Value>>,
    /// Each row update the SDK sent: (inference id, columns, config).
    updates: Vec<(String, Value, Value)>,
}

/// Runs `tests/sdk/traced_chat.py` against `base_url` with `args`, on a blocking thread.
async fn run_sdk(base_url: String, key: &str, args: Vec<String>) -> SdkRun {
    let sent = std::env::temp_dir().join(format!("{}.jsonl", unique_name("sdk-sent")));
    let python = sdk_python();
    let script = workspace().join("tests/sdk/traced_chat.py");
    let key = key.to_owned();
    let sent_arg = sent.to_string_lossy().into_owned();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .args(&args)
            .args(["--sent", &sent_arg])
            .env_clear()
            .env("OPENLAYER_BASE_URL", base_url)
            .env("OPENLAYER_API_KEY", key)
            .env("OPENLAYER_INFERENCE_PIPELINE_ID", PIPELINE)
            .stdin(Stdio::null())
            .output()
            .expect("run the SDK script")
    })
    .await
    .expect("joined");
    let text = std::fs::read_to_string(&sent).unwrap_or_default();
    let _removed = std::fs::remove_file(&sent);
    let mut rows = Vec::new();
    let mut updates = Vec::new();
    for line in text.lines() {
        let record: Value = serde_json::from_str(line).expect("sent line is JSON");
        if let Some(sent_rows) = record["rows"].as_array() {
            rows.extend(
                sent_rows
                    .iter()
                    .map(|row| row.as_object().expect("row object").clone()),
            );
        }
        if let Some(update) = record.get("update") {
            updates.push((
                update["inferenceId"].as_str().expect("id").to_owned(),
                update["row"].clone(),
                update["config"].clone(),
            ));
        }
    }
    SdkRun {
        output,
        rows,
        updates,
    }
}

fn sdk_args(prefix: &str, sessions: usize, turns: usize, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "--prefix".to_owned(),
        prefix.to_owned(),
        "--sessions".to_owned(),
        sessions.to_string(),
        "--turns".to_owned(),
        turns.to_string(),
    ];
    args.extend(extra.iter().map(|arg| (*arg).to_owned()));
    args
}

fn assert_sdk_succeeded(run: &SdkRun) {
    assert!(
        run.output.status.success(),
        "the SDK script failed: {}\nstdout: {}\nstderr: {}",
        run.output.status,
        String::from_utf8_lossy(&run.output.stdout),
        String::from_utf8_lossy(&run.output.stderr)
    );
}

fn inference_id(row: &Map<String, Value>) -> String {
    row["inferenceId"]
        .as_str()
        .expect("inferenceId is a string")
        .to_owned()
}

/// Sum of `key` over every step of a row's `steps` tree.
fn steps_sum(steps: &Value, key: &str) -> f64 {
    steps
        .as_array()
        .map(|steps| {
            steps
                .iter()
                .map(|step| step[key].as_f64().unwrap_or(0.0) + steps_sum(&step["steps"], key))
                .sum()
        })
        .unwrap_or(0.0)
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_traces_arrive_once_with_the_sdks_columns_and_session_enrichment() {
    const SESSIONS: usize = 4;
    const TURNS: usize = 3;
    let topics = create_service_topics("gw-sdk-", 3).await;
    let shipping_key = format!("key-{}", uuid::Uuid::new_v4().simple());
    let server = OpenlayerServer::start(&shipping_key).await;
    let _sessionizer = run_sessionizer(&topics, &server, &shipping_key);
    let gateway = Gateway::start(&bootstrap(), &topics.traces, &[]).await;

    let prefix = unique_name("chat");
    let sdk = run_sdk(
        gateway.base_url(),
        CLIENT_KEY,
        sdk_args(
            &prefix,
            SESSIONS,
            TURNS,
            &["--override-every", "5", "--updates"],
        ),
    )
    .await;
    assert_sdk_succeeded(&sdk);
    let sent = sdk.rows;
    assert_eq!(sent.len(), SESSIONS * TURNS, "one row per trace");

    let shipped = server.wait_for_rows(sent.len(), WAIT).await;
    // Exactly once: every sent id shipped, none twice, nothing else.
    let mut shipped_by_id: HashMap<String, Map<String, Value>> = HashMap::new();
    for row in &shipped {
        let row = row.as_object().expect("row object").clone();
        let previous = shipped_by_id.insert(inference_id(&row), row);
        assert!(previous.is_none(), "shipped twice: {previous:?}");
    }
    assert_eq!(shipped.len(), sent.len());

    // Every key and JSON type as the SDK sent it, plus exactly the session columns.
    for sent_row in &sent {
        let id = inference_id(sent_row);
        let row = shipped_by_id
            .get(&id)
            .unwrap_or_else(|| panic!("{id} not shipped"));
        for (column, value) in sent_row {
            assert_eq!(
                row.get(column),
                Some(value),
                "{id}: column {column} as sent"
            );
        }
        let added: HashSet<&str> = row
            .keys()
            .filter(|column| !sent_row.contains_key(*column))
            .map(String::as_str)
            .collect();
        assert_eq!(
            added,
            SESSION_COLUMNS.iter().copied().collect(),
            "{id}: added columns"
        );
    }
    // The sent rows carry the ids the SDK's context set, including the in-trace override.
    let overridden: Vec<&Map<String, Value>> = sent
        .iter()
        .filter(|row| row["session_id"] == json!(format!("{prefix}-override")))
        .collect();
    assert_eq!(
        overridden.len(),
        SESSIONS * TURNS / 5,
        "update_trace_user_session took effect"
    );

    // Enrichment: per session, turns in time order, running tokens and cost over all steps.
    let mut by_session: BTreeMap<String, Vec<&Map<String, Value>>> = BTreeMap::new();
    for sent_row in &sent {
        let session = sent_row["session_id"]
            .as_str()
            .expect("session id")
            .to_owned();
        by_session.entry(session).or_default().push(sent_row);
    }
    for (session, rows) in &by_session {
        let (mut tokens_so_far, mut cost_so_far) = (0.0, 0.0);
        let mut previous: Option<String> = None;
        for (index, sent_row) in rows.iter().enumerate() {
            let row = &shipped_by_id[&inference_id(sent_row)];
            tokens_so_far += steps_sum(&sent_row["steps"], "tokens");
            cost_so_far += steps_sum(&sent_row["steps"], "cost");
            assert_eq!(row["session_turn"], json!(index + 1), "{session} turn");
            assert_eq!(
                row["session_tokens_so_far"].as_f64(),
                Some(tokens_so_far),
                "{session} tokens"
            );
            let cost = row["session_cost_so_far"].as_f64().expect("cost");
            assert!(
                (cost - cost_so_far).abs() < 1e-9,
                "{session} cost {cost} vs {cost_so_far}"
            );
            assert_eq!(
                row["previous_inference_id"],
                json!(previous),
                "{session} previous"
            );
            assert_eq!(row["session_late"], json!(false));
            previous = Some(inference_id(sent_row));
        }
    }

    // Row updates reach Openlayer after their rows, once each, with the columns sent.
    assert_eq!(sdk.updates.len(), by_session.len());
    let until = Instant::now() + WAIT;
    while server.row_updates().len() < sdk.updates.len() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let updates = server.row_updates();
    assert_eq!(updates.len(), sdk.updates.len(), "{updates:?}");
    for (id, columns, config) in &sdk.updates {
        let matching: Vec<_> = updates
            .iter()
            .filter(|update| update.inference_id.as_deref() == Some(id.as_str()))
            .collect();
        assert_eq!(matching.len(), 1, "one update for {id}");
        assert_eq!(matching[0].status, 200);
        assert_eq!(matching[0].pipeline_id, PIPELINE);
        assert_eq!(matching[0].row.as_ref(), Some(columns));
        assert_eq!(
            matching[0].config.as_ref(),
            Some(config),
            "the update's config forwarded"
        );
    }
    // Shipped with the sessionizer's key (the server accepts no other), never the client's.
    assert!(server.requests().iter().all(|request| request.accepted()));
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_2000_sdk_traces_in_sync_mode_loses_none() {
    sdk_burst_ships_once("burst", (50, 40), &[], false).await;
}

/// Answered once queued (`http.answer_after = "queued"`): every trace of the official SDK
/// (sync) arrives once. The gateway is stopped as soon as the SDK is done, before anything is
/// shipped (whether rows are still queued then depends on the broker's speed: the flush at
/// shutdown is not forced here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answered_once_queued_sdk_traces_all_arrive_once() {
    sdk_burst_ships_once(
        "queued",
        (20, 25),
        &[("GATEWAY__HTTP__ANSWER_AFTER", "queued")],
        true,
    )
    .await;
}

/// The official SDK (sync) publishes `sessions` x `turns` traces through a gateway started
/// with `gateway_env`; every one must be shipped once. With `stop_first` the gateway stops as
/// soon as the SDK is done, else once all are shipped, after its count of rows produced is
/// checked.
async fn sdk_burst_ships_once(
    name: &str,
    (sessions, turns): (usize, usize),
    gateway_env: &[(&str, &str)],
    stop_first: bool,
) {
    let topics = create_service_topics(&format!("gw-{name}-"), 3).await;
    let shipping_key = format!("key-{}", uuid::Uuid::new_v4().simple());
    let server = OpenlayerServer::start(&shipping_key).await;
    let _sessionizer = run_sessionizer(&topics, &server, &shipping_key);
    let gateway = Gateway::start(&bootstrap(), &topics.traces, gateway_env).await;

    let sdk = run_sdk(
        gateway.base_url(),
        CLIENT_KEY,
        sdk_args(&unique_name(name), sessions, turns, &[]),
    )
    .await;
    assert_sdk_succeeded(&sdk);
    assert_eq!(sdk.rows.len(), sessions * turns);
    let sent: HashSet<String> = sdk.rows.iter().map(inference_id).collect();
    assert_eq!(sent.len(), sessions * turns, "distinct inference ids");
    let running = if stop_first {
        gateway.stop().await;
        None
    } else {
        Some(gateway)
    };

    let shipped = server.wait_for_rows(sent.len(), WAIT).await;
    let shipped_ids: Vec<String> = shipped
        .iter()
        .map(|row| inference_id(row.as_object().expect("row")))
        .collect();
    let unique: HashSet<String> = shipped_ids.iter().cloned().collect();
    assert_eq!(unique, sent, "every trace shipped");
    assert_eq!(shipped_ids.len(), sent.len(), "none twice");
    if let Some(gateway) = running {
        assert_eq!(
            gateway
                .metric("gateway_rows_produced_total", "kind=\"trace\"")
                .await,
            (sessions * turns) as f64
        );
        gateway.stop().await;
    }
}

async fn post(url: &str, key: &str, body: Vec<u8>) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(url)
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("the gateway answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_their_status_and_produce_nothing() {
    let topic = unique_name("gw-bad-traces");
    create_topic(&bootstrap(), &topic, 1).await;
    let gateway = Gateway::start(
        &bootstrap(),
        &topic,
        &[("GATEWAY__HTTP__MAX_BODY_BYTES", "4096")],
    )
    .await;
    let url = format!(
        "{}/inference-pipelines/{PIPELINE}/data-stream",
        gateway.base_url()
    );
    let config = json!({"outputColumnName": "output", "inferenceIdColumnName": "inferenceId",
                        "sessionIdColumnName": "session_id"});
    let row = |id: &str| json!({"output": "o", "inferenceId": id, "session_id": "s"});
    let body =
        |rows: Value| serde_json::to_vec(&json!({"config": config, "rows": rows})).expect("json");

    let (status, answer) = post(&url, CLIENT_KEY, b"{\"config\": {".to_vec()).await;
    assert_eq!((status, &answer["field"]), (400, &json!("body")));
    let mut no_output = row("bad-1");
    no_output.as_object_mut().expect("row").remove("output");
    let (status, answer) = post(&url, CLIENT_KEY, body(json!([row("bad-0"), no_output]))).await;
    assert_eq!(
        (status, &answer["row"], &answer["field"]),
        (400, &json!(1), &json!("output"))
    );
    let (status, answer) = post(&url, CLIENT_KEY, body(json!([row(&"x".repeat(201))]))).await;
    assert_eq!(
        (status, &answer["row"], &answer["field"]),
        (400, &json!(0), &json!("inferenceId"))
    );
    let (status, _) = post(&url, "not-a-key", body(json!([row("bad-2")]))).await;
    assert_eq!(status, 401);
    let mut huge = row("bad-3");
    huge["output"] = json!("x".repeat(8192));
    let (status, _) = post(&url, CLIENT_KEY, body(json!([huge]))).await;
    assert_eq!(status, 413);

    // One good request last: on the single partition, anything produced before would precede it.
    let (status, answer) = post(&url, CLIENT_KEY, body(json!([row("good-1")]))).await;
    assert_eq!((status, answer), (200, json!({"success": true})));
    let records = read_topic(&bootstrap(), &topic, 1, 1, WAIT);
    assert_eq!(records.len(), 1);
    let event = Decoder::new(Limits::default())
        .decode(&records[0].payload)
        .expect("decodes");
    assert_eq!(event.inference_id.as_deref(), Some("good-1"));
    assert_eq!(
        records[0].offset, 0,
        "nothing was produced before the good request"
    );
    for (status, count) in [("400", 3.0), ("401", 1.0), ("413", 1.0), ("200", 1.0)] {
        let labels = format!("status=\"{status}\"");
        assert_eq!(
            gateway.metric("gateway_requests_total", &labels).await,
            count,
            "{status}"
        );
    }
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_shutdown_readiness_fails_first_while_requests_are_still_served() {
    let topic = unique_name("gw-drain-traces");
    create_topic(&bootstrap(), &topic, 1).await;
    // A long unready delay: the test's steps below happen inside it, in order.
    let mut gateway = Gateway::start(
        &bootstrap(),
        &topic,
        &[("GATEWAY__SHUTDOWN__UNREADY_DELAY_SECS", "30")],
    )
    .await;
    let url = format!(
        "{}/inference-pipelines/{PIPELINE}/data-stream",
        gateway.base_url()
    );
    let body = serde_json::to_vec(&json!({
        "config": {"outputColumnName": "output", "inferenceIdColumnName": "inferenceId"},
        "rows": [{"output": "o", "inferenceId": "during-drain"}],
    }))
    .expect("json");
    gateway.signal_stop();
    let until = Instant::now() + WAIT;
    while gateway.get_ops("/readyz").await.map(|(status, _)| status) == Some(200) {
        assert!(
            Instant::now() < until,
            "readiness never failed after the shutdown signal"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, body_text) = gateway
        .get_ops("/readyz")
        .await
        .expect("answers while draining");
    assert!(body_text.contains("shutting down"), "{body_text}");
    // Still served, and acknowledged by Kafka, while the Service stops routing here.
    let (status, answer) = post(&url, CLIENT_KEY, body).await;
    assert_eq!((status, answer), (200, json!({"success": true})));
    let records = read_topic(&bootstrap(), &topic, 1, 1, WAIT);
    assert_eq!(records.len(), 1);
    gateway.abort();
}

// ---------------------------------------------------------------------------------------------
// A broker of this test's own, stopped and started again
// ---------------------------------------------------------------------------------------------

/// A broker started with `scripts/kafka-broker.sh` in a private cache directory and port, so
/// stopping it leaves the shared test broker alone. Stopped when dropped.
struct OwnBroker {
    cache: PathBuf,
    port: u16,
}

impl OwnBroker {
    fn script(&self, command: &str) -> Output {
        Command::new(workspace().join("scripts/kafka-broker.sh"))
            .arg(command)
            .env("KAFKA_BROKER_CACHE", &self.cache)
            .env("KAFKA_BROKER_PORT", self.port.to_string())
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/kafka-broker.sh")
    }

    fn start() -> OwnBroker {
        let cache = std::env::temp_dir().join(unique_name("gateway-broker"));
        std::fs::create_dir_all(cache.join("bin")).expect("cache dir");
        // Reuse the shared cache's verified binary instead of downloading it again.
        let shared = workspace().join(".cache/kafka-broker/bin");
        if let Ok(entries) = std::fs::read_dir(&shared) {
            for entry in entries.flatten() {
                let _copied =
                    std::fs::copy(entry.path(), cache.join("bin").join(entry.file_name()));
            }
        }
        let broker = OwnBroker {
            cache,
            port: free_local_address().port(),
        };
        broker.up();
        broker
    }

    fn up(&self) {
        let output = self.script("up");
        assert!(output.status.success(), "own broker up failed");
    }

    fn down(&self) {
        let output = self.script("down");
        assert!(output.status.success(), "own broker down failed");
    }

    fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let _stopped = self.script("down");
        let _removed = std::fs::remove_dir_all(&self.cache);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_broker_down_the_gateway_answers_503_and_sdk_retries_deliver_once_it_is_back() {
    const TRACES: usize = 6;
    let broker = OwnBroker::start();
    let topic = unique_name("gw-outage-traces");
    // A memory broker forgets its topics when it stops; the gateway's producer recreates this
    // one (auto-creation) when the broker is back.
    create_topic(&broker.bootstrap(), &topic, 1).await;
    let gateway = Gateway::start(
        &broker.bootstrap(),
        &topic,
        &[
            ("GATEWAY__HTTP__RETRY_AFTER_SECS", "1"),
            ("GATEWAY__KAFKA__PRODUCE_TIMEOUT_MS", "2000"),
        ],
    )
    .await;
    broker.down();
    let until = Instant::now() + WAIT;
    while gateway.metric("gateway_broker_reachable", "").await != 0.0 {
        assert!(
            Instant::now() < until,
            "the gateway never noticed the broker was down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Still ready: the Service keeps routing here, and clients get 503 with Retry-After.
    assert_eq!(
        gateway.get_ops("/readyz").await.map(|(status, _)| status),
        Some(200)
    );

    // The SDK publishes while the broker is down; its own retries (Retry-After: 1) go on
    // until the gateway answers 200.
    let sdk = tokio::spawn(run_sdk(
        gateway.base_url(),
        CLIENT_KEY,
        sdk_args(
            &unique_name("outage"),
            2,
            TRACES / 2,
            &["--max-retries", "60"],
        ),
    ));
    let until = Instant::now() + WAIT;
    while gateway
        .metric("gateway_requests_total", "status=\"503\"")
        .await
        < 2.0
    {
        assert!(Instant::now() < until, "the gateway never answered 503");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    broker.up();
    let sdk = sdk.await.expect("joined");
    assert_sdk_succeeded(&sdk);
    assert_eq!(sdk.rows.len(), TRACES);

    let partitions = num_partitions(&broker.bootstrap(), &topic).expect("the topic exists again");
    let partitions = i32::try_from(partitions).expect("a partition count");
    let records = read_topic(&broker.bootstrap(), &topic, partitions, TRACES, WAIT);
    let decoder = Decoder::new(Limits::default());
    let mut delivered: Vec<String> = records
        .iter()
        .map(|record| decoder.decode(&record.payload).expect("decodes"))
        .filter(|event| event.kind == TraceKind::Trace)
        .map(|event| event.inference_id.expect("id"))
        .collect();
    delivered.sort();
    let mut sent: Vec<String> = sdk.rows.iter().map(inference_id).collect();
    sent.sort();
    assert_eq!(
        delivered, sent,
        "each trace delivered once after the outage"
    );
    gateway.stop().await;
}

// ---------------------------------------------------------------------------------------------
// OpenTelemetry: the official Python SDK exporting OTLP/HTTP to the gateway
// ---------------------------------------------------------------------------------------------

/// Where the gateway puts OTLP spans.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Assembly {
    /// Each request's traces assembled at the gateway (no `kafka.spans_topic`).
    PerRequest,
    /// Forwarded to a spans topic, assembled by the sessionizer (`otel.spans_topic`).
    SpansTopic,
}

/// `client` exports multi-turn GenAI traces to the gateway; every turn must reach Openlayer
/// once, numbered in its conversation, with running tokens and the mapped chat step.
async fn otel_client_ships_exact_sessions(client: Command, service_name: &str) {
    otel_client_ships_through(client, service_name, Assembly::PerRequest).await;
}

async fn otel_client_ships_through(mut client: Command, service_name: &str, assembly: Assembly) {
    const SESSIONS: usize = 3;
    const TURNS: usize = 4;
    let topics = create_service_topics("gw-otel-", 3).await;
    let shipping_key = format!("key-{}", uuid::Uuid::new_v4().simple());
    let server = OpenlayerServer::start(&shipping_key).await;
    let spans_topic = unique_name("gw-otlp-spans");
    let mut env = service_env(
        &topics,
        &unique_name("gateway-sdk-group"),
        &server,
        &shipping_key,
        free_local_address(),
    );
    let mut gateway_env = Vec::new();
    if assembly == Assembly::SpansTopic {
        create_topic(&bootstrap(), &spans_topic, 3).await;
        set(&mut env, "SESSIONIZER__OTEL__SPANS_TOPIC", &spans_topic);
        set(&mut env, "SESSIONIZER__OTEL__QUIET_MS", "500");
        gateway_env.push(("GATEWAY__KAFKA__SPANS_TOPIC", spans_topic.as_str()));
    }
    let _sessionizer = Sessionizer::run(&env);
    let gateway = Gateway::start(&bootstrap(), &topics.traces, &gateway_env).await;

    let sent = std::env::temp_dir().join(format!("{}.jsonl", unique_name("otel-sent")));
    client
        .args(["--prefix", &unique_name("otel")])
        .args(["--sessions", &SESSIONS.to_string()])
        .args(["--turns", &TURNS.to_string()])
        .arg("--sent")
        .arg(&sent)
        .env(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            format!("{}/traces", gateway.base_url()),
        )
        .env(
            "OTEL_EXPORTER_OTLP_HEADERS",
            format!("Authorization=Bearer%20{CLIENT_KEY}"),
        )
        .stdin(Stdio::null());
    let run = tokio::task::spawn_blocking(move || client.output().expect("run the client"))
        .await
        .expect("joined");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "the client failed: {stderr}");
    assert!(
        !stderr.to_lowercase().contains("failed to export"),
        "the exporter reported a failure: {stderr}"
    );
    let turns = OtelTurn::read_sent(&sent);
    assert_eq!(turns.len(), SESSIONS * TURNS);
    let shipped = server.wait_for_rows(turns.len(), WAIT).await;
    assert_exact_sessions(&turns, &shipped, service_name);
    let (kind, records) = match assembly {
        Assembly::PerRequest => ("otel_trace", turns.len()),
        // Two spans per turn, each exported alone by the client this mode is tested with.
        Assembly::SpansTopic => ("otel_spans", 2 * turns.len()),
    };
    assert!(
        gateway
            .metric("gateway_rows_produced_total", &format!(r#"kind="{kind}""#))
            .await
            >= records as f64
    );
    assert_eq!(
        gateway
            .metric(
                "gateway_otlp_spans_rejected_total",
                r#"reason="otel_no_root""#
            )
            .await,
        0.0
    );
    gateway.stop().await;
}

/// Every span in an export request of its own (`--batch-size 1`), as the batch span
/// processor sends a trace whose spans end on either side of an export: with
/// `kafka.spans_topic` the sessionizer assembles each trace from its requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_exported_in_several_requests_ships_whole_through_the_spans_topic() {
    let mut client = otel::python("genai_chat.py");
    client.args(["--batch-size", "1"]);
    otel_client_ships_through(client, "genai-chat", Assembly::SpansTopic).await;
}

/// The official Python SDK's OTLP/HTTP exporter sends protobuf.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opentelemetry_python_sdk_genai_traces_ship_as_sessions_with_exact_turns() {
    otel_client_ships_exact_sessions(otel::python("genai_chat.py"), "genai-chat").await;
}

/// The official OpenAI instrumentation records the model calls of the openai client; the
/// service's own span around each call carries the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opentelemetry_openai_instrumentation_traces_ship_as_sessions_with_exact_turns() {
    otel_client_ships_exact_sessions(otel::python("openai_chat.py"), "genai-chat-openai").await;
}

/// The JavaScript SDK's OTLP/HTTP exporter sends OTLP JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opentelemetry_js_sdk_json_traces_ship_as_sessions_with_exact_turns() {
    otel_client_ships_exact_sessions(otel::node(), "genai-chat-node").await;
}
