//! The API answered with `.oneshot`: what is produced for each request and what is answered,
//! against a publisher that records (or fails) instead of Kafka.

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use gateway::auth::ApiKeys;
use gateway::config::AnswerAfter;
use gateway::http::{ApiSettings, AppState, OpsState, api_app, ops_app};
use gateway::metrics::Metrics;
use gateway::publish::{BrokerState, Publish, PublishError, Settle};
use gateway::rows::Outgoing;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tower::ServiceExt as _;
use trace_model::secret::Secret;
use trace_model::{Decoder, Limits, TraceEvent, TraceKind};

const KEY: &str = "client-key-1";

/// Records what it is given once acknowledged, or fails every acknowledgement with
/// `failure`, or refuses to queue with `refusal`.
#[derive(Default)]
struct RecordingPublisher {
    published: Mutex<Vec<Outgoing>>,
    failure: Mutex<Option<PublishError>>,
    refusal: Mutex<Option<PublishError>>,
    /// Never acknowledges (a Kafka that hangs): the callbacks are kept uncalled.
    hang: std::sync::atomic::AtomicBool,
    hanging: Mutex<Vec<Settle>>,
    /// The last settled request failed (what `KafkaPublisher` reports).
    last_failed: std::sync::atomic::AtomicBool,
}

impl Publish for RecordingPublisher {
    fn publish(&self, records: Vec<Outgoing>, settle: Settle) -> Result<(), PublishError> {
        if let Some(error) = *self.refusal.lock().unwrap_or_else(PoisonError::into_inner) {
            return Err(error);
        }
        if self.hang.load(std::sync::atomic::Ordering::SeqCst) {
            self.hanging
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(settle);
            return Ok(());
        }
        let failure = *self.failure.lock().unwrap_or_else(PoisonError::into_inner);
        self.last_failed
            .store(failure.is_some(), std::sync::atomic::Ordering::SeqCst);
        if let Some(error) = failure {
            settle(Err(error));
            return Ok(());
        }
        self.published
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(records);
        settle(Ok(()));
        Ok(())
    }

    fn failing(&self) -> bool {
        self.last_failed.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl RecordingPublisher {
    /// Kafka answers at last the requests it hung on.
    fn release_hanging(&self, outcome: Result<(), PublishError>) {
        let hanging =
            std::mem::take(&mut *self.hanging.lock().unwrap_or_else(PoisonError::into_inner));
        for settle in hanging {
            settle(outcome);
        }
    }

    fn events(&self) -> Vec<(Option<String>, TraceEvent)> {
        let decoder = Decoder::new(Limits::default());
        self.published
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|record| {
                (
                    record.key.clone(),
                    decoder.decode(&record.payload).expect("decodes"),
                )
            })
            .collect()
    }
}

struct Fixture {
    app: Router,
    state: AppState,
    registry: prometheus::Registry,
    publisher: Arc<RecordingPublisher>,
    broker: BrokerState,
}

fn fixture(max_body_bytes: usize) -> Fixture {
    fixture_with(max_body_bytes, false, AnswerAfter::Acknowledged)
}

/// With `forward_spans`, as with `kafka.spans_topic` set.
fn fixture_with(max_body_bytes: usize, forward_spans: bool, answer_after: AnswerAfter) -> Fixture {
    fixture_from(settings(max_body_bytes, forward_spans, answer_after))
}

fn settings(max_body_bytes: usize, forward_spans: bool, answer_after: AnswerAfter) -> ApiSettings {
    ApiSettings {
        limits: Limits::default(),
        max_body_bytes,
        max_body_bytes_in_flight: 2 * max_body_bytes,
        // Short, for the test of a request that runs past it.
        request_deadline: Duration::from_millis(500),
        retry_after: Duration::from_secs(3),
        max_rows_in_flight: 100,
        update_key_cache_entries: 10,
        forward_spans,
        answer_after,
        produce_timeout: Duration::from_secs(10),
    }
}

fn fixture_from(settings: ApiSettings) -> Fixture {
    let registry = prometheus::Registry::new();
    let metrics = Metrics::try_new(&registry).expect("metrics");
    let publisher = Arc::new(RecordingPublisher::default());
    let broker = BrokerState::default();
    broker.set_reachable(true);
    let state = AppState::new(
        ApiKeys::new(vec![Secret::new(KEY), Secret::new("client-key-2")]),
        publisher.clone(),
        metrics,
        broker.clone(),
        settings,
    );
    Fixture {
        app: api_app(state.clone()),
        state,
        registry,
        publisher,
        broker,
    }
}

fn tracer_body(rows: usize) -> Value {
    let rows: Vec<Value> = (0..rows)
        .map(|index| {
            json!({
                "user_message": format!("question {index}"),
                "output": format!("answer {index}"),
                "inferenceTimestamp": 1_700_000_000 + index,
                "inferenceId": format!("inf-{index}"),
                "latency": 12.5,
                "tokens": 3,
                "cost": 0.5,
                "user_id": "ana",
                "session_id": "trip",
                "steps": [],
            })
        })
        .collect();
    json!({
        "config": {"outputColumnName": "output", "inputVariableNames": ["user_message"],
                   "inferenceIdColumnName": "inferenceId", "timestampColumnName": "inferenceTimestamp",
                   "userIdColumnName": "user_id", "sessionIdColumnName": "session_id"},
        "rows": rows,
    })
}

fn request(method: &str, uri: &str, key: Option<&str>, body: Vec<u8>) -> Request<Body> {
    let mut builder = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(key) = key {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {key}"));
    }
    builder.body(Body::from(body)).expect("request")
}

async fn send(app: &Router, request: Request<Body>) -> (StatusCode, Option<String>, Value) {
    let response = app.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .map(|value| value.to_str().expect("ascii").to_owned());
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, retry_after, body)
}

const STREAM: &str = "/v1/inference-pipelines/pipe-1/data-stream";

#[tokio::test]
async fn streams_rows_to_kafka_and_answers_success() {
    let fixture = fixture(1 << 20);
    let body = tracer_body(3);
    let (status, _, answer) = send(
        &fixture.app,
        request(
            "POST",
            STREAM,
            Some(KEY),
            serde_json::to_vec(&body).expect("json"),
        ),
    )
    .await;
    assert_eq!((status, answer), (StatusCode::OK, json!({"success": true})));
    let events = fixture.publisher.events();
    assert_eq!(events.len(), 3);
    for (index, (key, event)) in events.iter().enumerate() {
        assert_eq!(key.as_deref(), Some("trip"));
        assert_eq!(event.pipeline_id.as_deref(), Some("pipe-1"));
        assert_eq!(
            Value::Object(event.row.clone().expect("row")),
            body["rows"][index]
        );
    }
    let metrics = prometheus::TextEncoder::new()
        .encode_to_string(&fixture.registry.gather())
        .expect("metrics");
    assert!(
        metrics.contains(r#"gateway_requests_total{route="data_stream",status="200"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"gateway_rows_produced_total{kind="trace"} 3"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn refuses_missing_and_wrong_keys_with_401_and_produces_nothing() {
    let fixture = fixture(1 << 20);
    let body = serde_json::to_vec(&tracer_body(1)).expect("json");
    for key in [None, Some("client-key-3"), Some("")] {
        let (status, _, answer) =
            send(&fixture.app, request("POST", STREAM, key, body.clone())).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "key {key:?}");
        assert!(!answer.to_string().contains("client-key"), "{answer}");
    }
    let (status, _, _) = send(
        &fixture.app,
        request("POST", STREAM, Some("client-key-2"), body),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "the second configured key works");
    assert_eq!(fixture.publisher.events().len(), 1);
}

#[tokio::test]
async fn refuses_bad_rows_with_400_naming_row_and_field_and_produces_nothing() {
    let fixture = fixture(1 << 20);
    let mut body = tracer_body(3);
    body["rows"][2]["session_id"] = json!("s".repeat(201));
    let (status, _, answer) = send(
        &fixture.app,
        request(
            "POST",
            STREAM,
            Some(KEY),
            serde_json::to_vec(&body).expect("json"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(answer["row"], 2);
    assert_eq!(answer["field"], "session_id");
    assert_eq!(answer["success"], false);

    let (status, _, answer) = send(
        &fixture.app,
        request("POST", STREAM, Some(KEY), b"{\"config\":".to_vec()),
    )
    .await;
    assert_eq!(
        (status, &answer["field"]),
        (StatusCode::BAD_REQUEST, &json!("body"))
    );
    assert!(fixture.publisher.events().is_empty());
}

#[tokio::test]
async fn refuses_bodies_over_the_limit_with_413_and_produces_nothing() {
    let fixture = fixture(2048);
    let mut body = tracer_body(1);
    body["rows"][0]["output"] = json!("x".repeat(4096));
    let (status, _, answer) = send(
        &fixture.app,
        request(
            "POST",
            STREAM,
            Some(KEY),
            serde_json::to_vec(&body).expect("json"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer["success"], false);
    // Unauthenticated requests are refused before their body is read.
    let (status, _, _) = send(
        &fixture.app,
        request(
            "POST",
            STREAM,
            None,
            serde_json::to_vec(&body).expect("json"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(fixture.publisher.events().is_empty());
}

/// Polls the metrics until one reads `line`; panics after many polls.
async fn wait_for_metric(registry: &prometheus::Registry, line: &str) {
    let mut metrics = String::new();
    for _ in 0..500 {
        metrics = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .expect("metrics");
        if metrics.lines().any(|candidate| candidate == line) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no `{line}` in\n{metrics}");
}

#[tokio::test]
async fn answered_once_queued_rows_wait_for_kafka_behind_the_answer() {
    use std::sync::atomic::Ordering::SeqCst;
    let fixture = fixture_with(1 << 20, false, AnswerAfter::Queued);
    let post = |rows: usize| {
        request(
            "POST",
            STREAM,
            Some(KEY),
            serde_json::to_vec(&tracer_body(rows)).expect("json"),
        )
    };
    // Kafka hangs: answered all the same, and the 60 rows stay in flight.
    fixture.publisher.hang.store(true, SeqCst);
    let (status, _, _) = send(&fixture.app, post(60)).await;
    assert_eq!(status, StatusCode::OK);
    wait_for_metric(&fixture.registry, "gateway_rows_in_flight 60").await;
    // 60 more would pass the bound of 100 rows in flight.
    let (status, retry_after, _) = send(&fixture.app, post(60)).await;
    assert_eq!(
        (status, retry_after.as_deref()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("3"))
    );
    assert!(fixture.publisher.events().is_empty(), "none acknowledged");

    // Kafka refuses rows already answered: they are counted lost.
    fixture.publisher.hang.store(false, SeqCst);
    *fixture.publisher.failure.lock().expect("lock") = Some(PublishError::Timeout);
    let (status, _, _) = send(&fixture.app, post(2)).await;
    assert_eq!(status, StatusCode::OK);
    wait_for_metric(&fixture.registry, "gateway_rows_lost_total 2").await;
    wait_for_metric(
        &fixture.registry,
        r#"gateway_produce_errors_total{reason="timeout"} 1"#,
    )
    .await;
    // Kafka failed last: requests wait for their acknowledgement, so this failure is a 503
    // the SDK retries, not a loss.
    let (status, _, _) = send(&fixture.app, post(1)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    wait_for_metric(
        &fixture.registry,
        r#"gateway_produce_errors_total{reason="timeout"} 2"#,
    )
    .await;
    wait_for_metric(&fixture.registry, "gateway_rows_lost_total 2").await;

    // Kafka is back: the waiting request is acknowledged, produced, out of the bound, and the
    // next ones are answered once queued again.
    *fixture.publisher.failure.lock().expect("lock") = None;
    let (status, _, _) = send(&fixture.app, post(3)).await;
    assert_eq!(status, StatusCode::OK);
    wait_for_metric(
        &fixture.registry,
        r#"gateway_rows_produced_total{kind="trace"} 3"#,
    )
    .await;
    assert!(!fixture.publisher.failing());
    wait_for_metric(&fixture.registry, "gateway_rows_in_flight 60").await;
    assert_eq!(fixture.publisher.events().len(), 3);

    // Rows the producer cannot even queue are refused: nothing was answered for them.
    *fixture.publisher.refusal.lock().expect("lock") = Some(PublishError::QueueFull);
    let (status, _, _) = send(&fixture.app, post(1)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // One for the in-flight bound above, one for this refusal.
    wait_for_metric(
        &fixture.registry,
        r#"gateway_produce_errors_total{reason="queue_full"} 2"#,
    )
    .await;
    wait_for_metric(&fixture.registry, "gateway_rows_in_flight 60").await;
    wait_for_metric(&fixture.registry, "gateway_rows_lost_total 2").await;

    // Kafka answers the first request at last.
    fixture.publisher.release_hanging(Ok(()));
    wait_for_metric(&fixture.registry, "gateway_rows_in_flight 0").await;
    wait_for_metric(
        &fixture.registry,
        r#"gateway_rows_produced_total{kind="trace"} 63"#,
    )
    .await;
}

#[tokio::test]
async fn answers_503_with_retry_after_when_kafka_fails_or_is_unreachable() {
    let fixture = fixture(1 << 20);
    let body = serde_json::to_vec(&tracer_body(1)).expect("json");
    *fixture.publisher.failure.lock().expect("lock") = Some(PublishError::Timeout);
    let (status, retry_after, answer) = send(
        &fixture.app,
        request("POST", STREAM, Some(KEY), body.clone()),
    )
    .await;
    assert_eq!(
        (status, retry_after.as_deref()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("3"))
    );
    assert_eq!(answer["success"], false);

    *fixture.publisher.failure.lock().expect("lock") = None;
    fixture.broker.set_reachable(false);
    let (status, retry_after, _) = send(
        &fixture.app,
        request("POST", STREAM, Some(KEY), body.clone()),
    )
    .await;
    assert_eq!(
        (status, retry_after.as_deref()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("3"))
    );
    assert!(fixture.publisher.events().is_empty());

    fixture.broker.set_reachable(true);
    let (status, _, _) = send(&fixture.app, request("POST", STREAM, Some(KEY), body)).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn forwards_row_updates_keyed_like_their_row() {
    let fixture = fixture(1 << 20);
    let (status, _, _) = send(
        &fixture.app,
        request(
            "POST",
            STREAM,
            Some(KEY),
            serde_json::to_vec(&tracer_body(1)).expect("json"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let update = json!({"row": {"groundTruth": "answer 0", "thumbs": 1}, "config": null});
    let (status, _, answer) = send(
        &fixture.app,
        request(
            "PUT",
            "/v1/inference-pipelines/pipe-1/rows?inferenceId=inf-0",
            Some(KEY),
            serde_json::to_vec(&update).expect("json"),
        ),
    )
    .await;
    assert_eq!((status, answer), (StatusCode::OK, json!({"success": true})));
    let events = fixture.publisher.events();
    let (key, event) = events.last().expect("update produced");
    assert_eq!(
        key.as_deref(),
        Some("trip"),
        "same partition key as the row"
    );
    assert_eq!(event.kind, TraceKind::RowUpdate);
    assert_eq!(event.inference_id.as_deref(), Some("inf-0"));
    assert_eq!(
        Value::Object(event.row.clone().expect("row")),
        update["row"]
    );

    let (status, _, answer) = send(
        &fixture.app,
        request(
            "PUT",
            "/v1/inference-pipelines/pipe-1/rows",
            Some(KEY),
            serde_json::to_vec(&update).expect("json"),
        ),
    )
    .await;
    assert_eq!(
        (status, &answer["field"]),
        (StatusCode::BAD_REQUEST, &json!("inferenceId"))
    );
    assert_eq!(fixture.publisher.events().len(), 2);
}

#[tokio::test]
async fn readiness_follows_the_broker_and_shutdown() {
    let fixture = fixture(1 << 20);
    let ops = ops_app(OpsState {
        registry: fixture.registry.clone(),
        app: fixture.state.clone(),
    });
    let get = |path: &str| {
        Request::builder()
            .uri(path)
            .body(Body::empty())
            .expect("request")
    };
    let status = |response: axum::response::Response| response.status();
    assert_eq!(
        status(ops.clone().oneshot(get("/readyz")).await.expect("ok")),
        StatusCode::OK
    );
    // Kafka down: still ready, so clients keep reaching the gateway and get 503 with
    // Retry-After rather than refused connections.
    fixture.broker.set_reachable(false);
    assert_eq!(
        status(ops.clone().oneshot(get("/readyz")).await.expect("ok")),
        StatusCode::OK
    );
    fixture.broker.set_reachable(true);
    fixture.state.begin_draining();
    assert_eq!(
        status(ops.clone().oneshot(get("/readyz")).await.expect("ok")),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        status(ops.clone().oneshot(get("/healthz")).await.expect("ok")),
        StatusCode::OK
    );
    let metrics = ops.oneshot(get("/metrics")).await.expect("ok");
    let text = axum::body::to_bytes(metrics.into_body(), usize::MAX)
        .await
        .expect("body");
    let text = String::from_utf8_lossy(&text);
    for name in [
        "gateway_requests_in_flight",
        "gateway_rows_in_flight",
        "gateway_produce_duration_seconds",
        "gateway_broker_reachable 1",
    ] {
        assert!(text.contains(name), "{name} in\n{text}");
    }
}

#[tokio::test]
async fn a_request_whose_client_goes_away_gives_back_its_body_and_keeps_its_rows_until_kafka_reports()
 {
    let fixture = fixture(1 << 20);
    let body = serde_json::to_vec(&tracer_body(60)).expect("json");
    fixture
        .publisher
        .hang
        .store(true, std::sync::atomic::Ordering::SeqCst);
    // The client gives up while Kafka has not answered: the request is dropped mid-await.
    let abandoned = tokio::time::timeout(
        Duration::from_millis(200),
        fixture
            .app
            .clone()
            .oneshot(request("POST", STREAM, Some(KEY), body.clone())),
    )
    .await;
    assert!(abandoned.is_err(), "the publish hangs");
    let metrics = prometheus::TextEncoder::new()
        .encode_to_string(&fixture.registry.gather())
        .expect("metrics");
    // Its rows are still queued in the producer: they count against the bound until Kafka
    // reports on them, whoever waits.
    for gauge in [
        "gateway_rows_in_flight 60",
        "gateway_requests_in_flight 0",
        "gateway_body_bytes_in_flight 0",
    ] {
        assert!(metrics.contains(gauge), "{gauge}: {metrics}");
    }
    fixture
        .publisher
        .hang
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let (status, _, _) = send(
        &fixture.app,
        request("POST", STREAM, Some(KEY), body.clone()),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "60 + 60 rows > 100"
    );
    // Kafka acknowledges them at last: counted as produced, and out of the bound.
    fixture.publisher.release_hanging(Ok(()));
    wait_for_metric(&fixture.registry, "gateway_rows_in_flight 0").await;
    wait_for_metric(
        &fixture.registry,
        r#"gateway_rows_produced_total{kind="trace"} 60"#,
    )
    .await;
    let (status, _, _) = send(&fixture.app, request("POST", STREAM, Some(KEY), body)).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_request_running_past_its_deadline_gets_408_and_gives_back_its_body() {
    let fixture = fixture(1 << 20);
    fixture
        .publisher
        .hang
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let body = serde_json::to_vec(&tracer_body(3)).expect("json");
    let (status, _, _) = send(&fixture.app, request("POST", STREAM, Some(KEY), body)).await;
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
    let metrics = prometheus::TextEncoder::new()
        .encode_to_string(&fixture.registry.gather())
        .expect("metrics");
    assert!(
        metrics.contains("gateway_body_bytes_in_flight 0"),
        "{metrics}"
    );
    // Its 3 rows stay queued in the producer until Kafka reports on them.
    assert!(metrics.contains("gateway_rows_in_flight 3"), "{metrics}");
    fixture
        .publisher
        .release_hanging(Err(PublishError::Timeout));
    wait_for_metric(&fixture.registry, "gateway_rows_in_flight 0").await;
}

/// librdkafka reports on every record within the produce timeout; a report that never comes
/// (a defect) must not hold the request for its whole deadline: it is answered 503 once the
/// produce timeout and a margin passed, and its rows count in flight until the report comes.
/// The clock is tokio's, paused: it jumps to each timer.
#[tokio::test(start_paused = true)]
async fn a_report_that_never_comes_is_a_503_after_the_produce_timeout_and_a_margin() {
    let fixture = fixture_from(ApiSettings {
        // Beyond the acknowledgement deadline (produce timeout + 5 s), as by default.
        request_deadline: Duration::from_secs(60),
        produce_timeout: Duration::from_secs(1),
        ..settings(1 << 20, false, AnswerAfter::Acknowledged)
    });
    fixture
        .publisher
        .hang
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let body = serde_json::to_vec(&tracer_body(3)).expect("json");
    let started = tokio::time::Instant::now();
    let (status, retry_after, answer) =
        send(&fixture.app, request("POST", STREAM, Some(KEY), body)).await;
    assert_eq!(
        (status, retry_after.as_deref()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("3"))
    );
    assert_eq!(answer["success"], false);
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(6),
        "answered at the acknowledgement deadline, not the request's"
    );
    let metrics = prometheus::TextEncoder::new()
        .encode_to_string(&fixture.registry.gather())
        .expect("metrics");
    assert!(metrics.contains("gateway_rows_in_flight 3"), "{metrics}");
    // Counted when the report comes, as a failure of a request that was waiting (not a loss).
    assert!(
        metrics.contains(r#"gateway_produce_errors_total{reason="timeout"} 0"#),
        "{metrics}"
    );
    fixture
        .publisher
        .release_hanging(Err(PublishError::Timeout));
    wait_for_metric(&fixture.registry, "gateway_rows_in_flight 0").await;
    wait_for_metric(
        &fixture.registry,
        r#"gateway_produce_errors_total{reason="timeout"} 1"#,
    )
    .await;
    wait_for_metric(&fixture.registry, "gateway_rows_lost_total 0").await;
}

#[tokio::test]
async fn bodies_beyond_the_bytes_in_flight_are_shed_before_they_are_read() {
    // Room for two bodies of 1 KiB at once.
    let fixture = fixture(1024);
    let declared = |length: usize| {
        Request::builder()
            .method("POST")
            .uri(STREAM)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::AUTHORIZATION, format!("Bearer {KEY}"))
            .header(header::CONTENT_LENGTH, length)
            .body(Body::from(vec![b' '; length]))
            .expect("request")
    };
    // Larger than a body may be: 413 from its declared length alone.
    let (status, _, _) = send(&fixture.app, declared(2000)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    fixture
        .publisher
        .hang
        .store(true, std::sync::atomic::Ordering::SeqCst);
    // Small, but sent without a length: each counts as the largest body, so two fill the room.
    let small = serde_json::to_vec(&tracer_body(1)).expect("json");
    assert!(small.len() < 1024);
    let hold = |app: Router| {
        let body = small.clone();
        tokio::spawn(async move { app.oneshot(request("POST", STREAM, Some(KEY), body)).await })
    };
    let first = hold(fixture.app.clone());
    let second = hold(fixture.app.clone());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, retry_after, _) = send(
        &fixture.app,
        request("POST", STREAM, Some(KEY), small.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(retry_after.as_deref(), Some("3"));
    let metrics = prometheus::TextEncoder::new()
        .encode_to_string(&fixture.registry.gather())
        .expect("metrics");
    assert!(
        metrics.contains("gateway_requests_shed_total 1"),
        "{metrics}"
    );
    first.abort();
    second.abort();
}

// ---------------------------------------------------------------------------------------------
// OTLP/HTTP (`POST /v1/traces`)
// ---------------------------------------------------------------------------------------------

mod otlp {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use prost::Message as _;
    use std::io::Write as _;

    fn attribute(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value.to_owned())),
            }),
            ..KeyValue::default()
        }
    }

    /// Turn `turn` of conversation `session`: a handler span around a chat span.
    fn turn_spans(trace: u8, session: &str, turn: u64) -> Vec<Span> {
        let start = 1_780_000_000_000_000_000 + turn * 1_000_000_000;
        let span = |id: u8, parent: Option<u8>, name: &str, attributes| Span {
            trace_id: vec![trace; 16],
            span_id: vec![0, 0, 0, 0, 0, 0, trace, id],
            parent_span_id: parent
                .map_or(Vec::new(), |parent| vec![0, 0, 0, 0, 0, 0, trace, parent]),
            name: name.to_owned(),
            start_time_unix_nano: start,
            end_time_unix_nano: start + 500_000_000,
            attributes,
            ..Span::default()
        };
        vec![
            span(1, None, "POST /chat", vec![attribute("user.id", "ana")]),
            span(
                2,
                Some(1),
                "chat gpt-4o",
                vec![
                    attribute("gen_ai.operation.name", "chat"),
                    attribute("gen_ai.conversation.id", session),
                    attribute(
                        "gen_ai.output.messages",
                        r#"[{"role": "assistant", "content": "ok"}]"#,
                    ),
                ],
            ),
        ]
    }

    fn export(spans: Vec<Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..ScopeSpans::default()
                }],
                ..ResourceSpans::default()
            }],
        }
    }

    fn post(content_type: &str, encoding: Option<&str>, body: Vec<u8>) -> Request<Body> {
        let mut builder = Request::builder()
            .method("POST")
            .uri("/v1/traces")
            .header(header::CONTENT_TYPE, content_type)
            .header(header::AUTHORIZATION, format!("Bearer {KEY}"));
        if let Some(encoding) = encoding {
            builder = builder.header(header::CONTENT_ENCODING, encoding);
        }
        builder.body(Body::from(body)).expect("request")
    }

    async fn answer(app: &Router, request: Request<Body>) -> (StatusCode, Vec<u8>) {
        let response = app.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        (status, bytes.to_vec())
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(bytes).expect("gzip");
        encoder.finish().expect("gzip")
    }

    /// Exports `spans` in protobuf; the answer must be 200 with a partial success.
    async fn partial_success(app: &Router, spans: Vec<Span>) -> ExportTracePartialSuccess {
        let (status, bytes) = answer(
            app,
            post(
                "application/x-protobuf",
                None,
                export(spans).encode_to_vec(),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        ExportTraceServiceResponse::decode(&bytes[..])
            .expect("protobuf answer")
            .partial_success
            .expect("partial success")
    }

    #[tokio::test]
    async fn protobuf_and_gzip_exports_become_one_record_per_trace_keyed_by_session() {
        let fixture = fixture(1 << 20);
        // The later turn has the smaller trace id.
        let mut spans = turn_spans(2, "conv-1", 1);
        spans.extend(turn_spans(1, "conv-1", 2));
        let body = export(spans).encode_to_vec();
        let (status, answer_bytes) = answer(
            &fixture.app,
            post("application/x-protobuf", None, body.clone()),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let response =
            ExportTraceServiceResponse::decode(&answer_bytes[..]).expect("protobuf answer");
        assert_eq!(response.partial_success, None, "nothing refused");
        let (status, _) = answer(
            &fixture.app,
            post("application/x-protobuf", Some("gzip"), gzip(&body)),
        )
        .await;
        assert_eq!(status, StatusCode::OK);

        let events = fixture.publisher.events();
        assert_eq!(events.len(), 4, "two traces, twice");
        let first_ids: Vec<Option<&str>> = events[..2]
            .iter()
            .map(|(_, event)| event.inference_id.as_deref())
            .collect();
        assert_eq!(
            first_ids,
            [
                Some("02020202020202020202020202020202"),
                Some("01010101010101010101010101010101")
            ],
            "produced in the order the traces started, as turns are numbered"
        );
        for (key, event) in &events {
            assert_eq!(key.as_deref(), Some("conv-1"));
            assert_eq!(event.session_id.as_deref(), Some("conv-1"));
            assert_eq!(event.user_id.as_deref(), Some("ana"));
            assert_eq!(event.steps[0].step_type, "chat_completion");
            assert_eq!(event.output, json!("ok"));
        }
        let metrics = prometheus::TextEncoder::new()
            .encode_to_string(&fixture.registry.gather())
            .expect("metrics");
        assert!(
            metrics.contains(r#"gateway_rows_produced_total{kind="otel_trace"} 4"#),
            "{metrics}"
        );
    }

    #[tokio::test]
    async fn refused_traces_are_a_partial_success_and_the_rest_is_produced() {
        let fixture = fixture(1 << 20);
        let mut spans = turn_spans(1, "conv-1", 1);
        // A trace of two roots.
        let mut second_root = turn_spans(2, "conv-2", 1);
        second_root[1].parent_span_id.clear();
        spans.extend(second_root);
        let partial = partial_success(&fixture.app, spans).await;
        assert_eq!(partial.rejected_spans, 2);
        assert!(
            partial.error_message.contains("root spans"),
            "{}",
            partial.error_message
        );
        assert_eq!(fixture.publisher.events().len(), 1);
        let metrics = prometheus::TextEncoder::new()
            .encode_to_string(&fixture.registry.gather())
            .expect("metrics");
        assert!(
            metrics.contains(r#"gateway_otlp_spans_rejected_total{reason="otel_several_roots"} 2"#),
            "{metrics}"
        );
    }

    /// With a spans topic: each trace's spans of the request, keyed by trace id, as they
    /// came (a part without its root included: its root may come in another request).
    #[tokio::test]
    async fn with_a_spans_topic_spans_are_forwarded_per_trace_keyed_by_trace_id() {
        use gateway::rows::Destination;
        let fixture = fixture_with(1 << 20, true, AnswerAfter::Acknowledged);
        let mut spans = turn_spans(1, "conv-1", 1);
        // Trace 2's chat span without its root, and a span without a trace id.
        spans.push(turn_spans(2, "conv-1", 2).remove(1));
        let mut no_trace_id = turn_spans(3, "conv-1", 3).remove(0);
        no_trace_id.trace_id.clear();
        spans.push(no_trace_id);
        let partial = partial_success(&fixture.app, spans).await;
        assert_eq!(partial.rejected_spans, 1, "the span without a trace id");

        let published = fixture
            .publisher
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let forwarded: Vec<(Option<&str>, usize)> = published
            .iter()
            .map(|record| {
                assert_eq!(record.destination, Destination::Spans);
                let request =
                    ExportTraceServiceRequest::decode(&record.payload[..]).expect("otlp_proto");
                let spans = request.resource_spans[0].scope_spans[0].spans.len();
                (record.key.as_deref(), spans)
            })
            .collect();
        assert_eq!(
            forwarded,
            [
                (Some("01010101010101010101010101010101"), 2),
                (Some("02020202020202020202020202020202"), 1)
            ]
        );
        let metrics = prometheus::TextEncoder::new()
            .encode_to_string(&fixture.registry.gather())
            .expect("metrics");
        assert!(
            metrics.contains(r#"gateway_rows_produced_total{kind="otel_spans"} 2"#),
            "{metrics}"
        );
    }

    /// More spans of one trace in one request than a trace may have are refused at once.
    #[tokio::test]
    async fn with_a_spans_topic_a_trace_beyond_the_step_limit_is_refused() {
        let fixture = fixture_with(1 << 20, true, AnswerAfter::Acknowledged);
        let max_steps = Limits::default().max_steps;
        let spans: Vec<Span> = (0..=max_steps + 1)
            .map(|index| {
                let mut span = turn_spans(1, "conv-1", 1).remove(1);
                span.span_id = u64::try_from(index + 10)
                    .expect("fits")
                    .to_be_bytes()
                    .to_vec();
                span
            })
            .collect();
        let partial = partial_success(&fixture.app, spans).await;
        assert_eq!(
            partial.rejected_spans,
            i64::try_from(max_steps + 2).expect("fits")
        );
        assert!(
            fixture
                .publisher
                .published
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_empty()
        );
    }

    #[tokio::test]
    async fn otlp_json_is_answered_in_json() {
        let fixture = fixture(1 << 20);
        let body = json!({"resourceSpans": [{"scopeSpans": [{"spans": [{
            "traceId": "0102030405060708090a0b0c0d0e0f10",
            "spanId": "0102030405060708",
            "name": "chat",
            "startTimeUnixNano": "1780000000000000000",
            "endTimeUnixNano": "1780000000500000000",
            "attributes": [
                {"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
                {"key": "session.id", "value": {"stringValue": "s-9"}},
                {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "7"}}
            ]
        }]}]}]});
        let (status, bytes) = answer(
            &fixture.app,
            post(
                "application/json; charset=utf-8",
                None,
                body.to_string().into_bytes(),
            ),
        )
        .await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&bytes)
        );
        let _: Value = serde_json::from_slice(&bytes).expect("a JSON answer");
        let events = fixture.publisher.events();
        assert_eq!(events.len(), 1);
        let (key, event) = &events[0];
        assert_eq!(key.as_deref(), Some("s-9"));
        assert_eq!(
            event.inference_id.as_deref(),
            Some("0102030405060708090a0b0c0d0e0f10")
        );
        assert_eq!(event.steps[0].prompt_tokens, Some(7));
    }

    #[tokio::test]
    async fn bad_requests_are_refused_and_nothing_is_produced() {
        let fixture = fixture(64 * 1024);
        let valid = export(turn_spans(1, "conv-1", 1)).encode_to_vec();
        // Inflates far past the limit: stopped while inflating.
        let bomb = gzip(&vec![0u8; 10 << 20]);
        assert!(bomb.len() < 64 * 1024, "the bomb itself fits the limit");
        let cases = [
            (
                post("text/plain", None, valid.clone()),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ),
            (
                post("application/x-protobuf", Some("br"), valid.clone()),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ),
            (
                post("application/x-protobuf", None, b"\x0a\xff\xff".to_vec()),
                StatusCode::BAD_REQUEST,
            ),
            (
                post("application/json", None, b"{\"resourceSpans\": 1}".to_vec()),
                StatusCode::BAD_REQUEST,
            ),
            (
                post("application/x-protobuf", Some("gzip"), b"not gzip".to_vec()),
                StatusCode::BAD_REQUEST,
            ),
            (
                post("application/x-protobuf", Some("gzip"), bomb),
                StatusCode::PAYLOAD_TOO_LARGE,
            ),
            (
                post("application/x-protobuf", None, vec![0x0a; 70_000]),
                StatusCode::PAYLOAD_TOO_LARGE,
            ),
        ];
        for (request, expected) in cases {
            let (status, bytes) = answer(&fixture.app, request).await;
            assert_eq!(status, expected, "{}", String::from_utf8_lossy(&bytes));
        }
        let unauthorized = Request::builder()
            .method("POST")
            .uri("/v1/traces")
            .header(header::CONTENT_TYPE, "application/x-protobuf")
            .body(Body::from(valid))
            .expect("request");
        assert_eq!(
            answer(&fixture.app, unauthorized).await.0,
            StatusCode::UNAUTHORIZED
        );
        assert!(fixture.publisher.events().is_empty());
    }

    #[tokio::test]
    async fn kafka_down_is_503_with_retry_after() {
        let fixture = fixture(1 << 20);
        fixture.broker.set_reachable(false);
        let body = export(turn_spans(1, "conv-1", 1)).encode_to_vec();
        let (status, retry_after, _) =
            send(&fixture.app, post("application/x-protobuf", None, body)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(retry_after.as_deref(), Some("3"));
    }
}
