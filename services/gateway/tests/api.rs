//! The API answered with `.oneshot`: what is produced for each request and what is answered,
//! against a publisher that records (or fails) instead of Kafka.

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use gateway::auth::ApiKeys;
use gateway::http::{ApiSettings, AppState, OpsState, api_app, ops_app};
use gateway::metrics::Metrics;
use gateway::publish::{BrokerState, Publish, PublishError, PublishFuture};
use gateway::rows::Outgoing;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tower::ServiceExt as _;
use trace_model::secret::Secret;
use trace_model::{Decoder, Limits, TraceEvent, TraceKind};

const KEY: &str = "client-key-1";

/// Records what it is given, or fails every publish with `failure`.
#[derive(Default)]
struct RecordingPublisher {
    published: Mutex<Vec<Outgoing>>,
    failure: Mutex<Option<PublishError>>,
}

impl Publish for RecordingPublisher {
    fn publish(&self, records: Vec<Outgoing>) -> PublishFuture<'_> {
        Box::pin(async move {
            if let Some(error) = *self.failure.lock().unwrap_or_else(PoisonError::into_inner) {
                return Err(error);
            }
            self.published
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(records);
            Ok(())
        })
    }
}

impl RecordingPublisher {
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
        ApiSettings {
            limits: Limits::default(),
            max_body_bytes,
            retry_after: Duration::from_secs(3),
            max_rows_in_flight: 100,
            update_key_cache_entries: 10,
        },
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
