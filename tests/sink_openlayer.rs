//! The Openlayer sink against a real local Openlayer-compatible server: the request on the
//! wire, waits that honour `Retry-After`, retries without loss, splitting on 413, isolating
//! refused rows, the retry deadline, reconnecting, and the metrics it leaves. Then the test
//! server's own checks, since later end-to-end tests rely on them.
//!
//! Real HTTP means real time: backoffs are kept at 10–50 ms through the settings, and only the
//! `Retry-After` tests wait a full (sub-)second, because the wait is what they check.

use fakes::openlayer::{Fault, OpenlayerServer};
use prometheus::Registry;
use serde_json::{Value, json};
use sessionizer::metrics::Metrics;
use sessionizer::secret::Secret;
use sessionizer::sink::openlayer::OpenlayerSink;
use sessionizer::sink::{Rejection, RowJson, ShipReport, SinkSettings};
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEY: &str = "sk-test-0123456789";
const PIPELINE: &str = "9b7e1c2a-0000-4000-8000-000000000001";

fn settings(base_url: String) -> SinkSettings {
    SinkSettings {
        base_url,
        api_key: Secret::new(KEY),
        request_timeout: Duration::from_secs(5),
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        retry_deadline: Some(Duration::from_secs(20)),
        verify_tls: true,
    }
}

fn sink_with(settings: SinkSettings) -> (OpenlayerSink, Registry) {
    let registry = Registry::new();
    let metrics = Metrics::register(&registry).expect("metrics registered");
    let sink = OpenlayerSink::try_new(settings, metrics).expect("sink built");
    (sink, registry)
}

fn sink_for(server: &OpenlayerServer) -> (OpenlayerSink, Registry) {
    sink_with(settings(server.base_url()))
}

fn config() -> Value {
    json!({
        "outputColumnName": "output",
        "inferenceIdColumnName": "inferenceId",
        "latencyColumnName": "latency",
        "sessionIdColumnName": "session_id",
    })
}

/// Rows written the way no serializer would (spacing, key order), to see they go out verbatim.
fn rows(count: usize) -> Vec<RowJson> {
    (0..count)
        .map(|index| {
            RowJson::try_from_text(format!(
                r#"{{"output": "answer {index}",  "inferenceId":"row-{index}","latency":{index}.50,"session_id":"s-1"}}"#
            ))
            .expect("valid row json")
        })
        .collect()
}

fn parsed(rows: &[RowJson]) -> Vec<Value> {
    rows.iter()
        .map(|row| serde_json::from_str(row.get()).expect("valid row json"))
        .collect()
}

fn rejected_indexes(report: &ShipReport) -> Vec<usize> {
    report.rejected.iter().map(|(index, _)| *index).collect()
}

/// The value of one sample in the registry's text exposition, e.g.
/// `sessionizer_openlayer_requests_total{status="200"}`; 0 when absent.
fn sample(registry: &Registry, series: &str) -> f64 {
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .expect("text exposition");
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |value| value.parse().expect("numeric sample"))
}

#[tokio::test]
async fn ships_rows_verbatim_with_the_key_as_bearer() {
    let server = OpenlayerServer::start(KEY).await;
    let (sink, _registry) = sink_for(&server);
    let rows = rows(3);

    let report = sink.ship(PIPELINE, &config(), &rows).await;

    assert_eq!(report, ShipReport::default());
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.status, 200);
    assert_eq!(request.pipeline_id, PIPELINE);
    assert_eq!(
        request.headers["authorization"],
        format!("Bearer {KEY}").as_str()
    );
    assert_eq!(request.headers["content-type"], "application/json");
    let user_agent = request.headers["user-agent"].to_str().expect("ascii");
    assert_eq!(user_agent, format!("sessionizer/{}", sessionizer::VERSION));
    let expected_body = format!(
        r#"{{"config":{},"rows":[{},{},{}]}}"#,
        config(),
        rows[0].get(),
        rows[1].get(),
        rows[2].get()
    );
    assert_eq!(
        std::str::from_utf8(&request.body).expect("utf-8 body"),
        expected_body
    );
    assert_eq!(request.config, Some(config()));
    assert_eq!(server.rows_for(PIPELINE), parsed(&rows));
    assert!(server.rows_for("another-pipeline").is_empty());
}

#[tokio::test]
async fn percent_encodes_the_pipeline_id() {
    let server = OpenlayerServer::start(KEY).await;
    let (sink, _registry) = sink_for(&server);
    let pipeline_id = "team a/b?c#d";

    let report = sink.ship(pipeline_id, &config(), &rows(1)).await;

    assert_eq!(report, ShipReport::default());
    assert_eq!(server.requests()[0].pipeline_id, pipeline_id);
}

#[tokio::test]
async fn waits_retry_after_seconds_after_a_429() {
    let server = OpenlayerServer::start(KEY).await;
    server.push_fault(Fault::RateLimitedSecs(1));
    let (sink, registry) = sink_for(&server);
    let rows = rows(2);

    let report = sink.ship(PIPELINE, &config(), &rows).await;

    assert_eq!(report, ShipReport::default());
    let requests = server.requests();
    assert_eq!(
        requests
            .iter()
            .map(|request| request.status)
            .collect::<Vec<_>>(),
        [429, 200]
    );
    let gap = requests[1].arrived - requests[0].arrived;
    assert!(gap >= Duration::from_secs(1), "retried after {gap:?}");
    assert!(gap < Duration::from_secs(3), "retried after {gap:?}");
    assert_eq!(server.rows(), parsed(&rows));
    assert_eq!(
        sample(
            &registry,
            r#"sessionizer_openlayer_retries_total{reason="rate_limited"}"#
        ),
        1.0
    );
}

/// `Retry-After` speaks of the server: a batch sent after another batch got a 429 waits too,
/// instead of adding to the load the server asked to stop.
#[tokio::test]
async fn a_retry_after_holds_back_every_batch_of_the_sink() {
    let server = OpenlayerServer::start(KEY).await;
    server.push_fault(Fault::RateLimitedSecs(1));
    let (sink, _registry) = sink_for(&server);
    let first_rows = rows(2);
    let second_rows = rows(3);
    let config = config();

    // The second batch starts while the first waits out its 429 (a loopback response takes
    // far less than the 200 ms head start).
    let (first, second) = tokio::join!(sink.ship(PIPELINE, &config, &first_rows), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        sink.ship(PIPELINE, &config, &second_rows).await
    });

    assert_eq!(
        (first, second),
        (ShipReport::default(), ShipReport::default())
    );
    let requests = server.requests();
    let statuses: Vec<u16> = requests.iter().map(|request| request.status).collect();
    assert_eq!(statuses, [429, 200, 200]);
    for later in &requests[1..] {
        let gap = later.arrived - requests[0].arrived;
        assert!(
            gap >= Duration::from_secs(1),
            "a request came {gap:?} after the 429"
        );
    }
}

#[tokio::test]
async fn waits_retry_after_ms_after_a_429() {
    let server = OpenlayerServer::start(KEY).await;
    server.push_fault(Fault::RateLimitedMs(300));
    server.push_fault(Fault::RateLimitedMs(200));
    let (sink, _registry) = sink_for(&server);

    let report = sink.ship(PIPELINE, &config(), &rows(1)).await;

    assert_eq!(report, ShipReport::default());
    let requests = server.requests();
    assert_eq!(requests.len(), 3);
    let first_gap = requests[1].arrived - requests[0].arrived;
    let second_gap = requests[2].arrived - requests[1].arrived;
    assert!(first_gap >= Duration::from_millis(300), "{first_gap:?}");
    assert!(second_gap >= Duration::from_millis(200), "{second_gap:?}");
    assert!(first_gap < Duration::from_secs(2), "{first_gap:?}");
}

#[tokio::test]
async fn retries_server_errors_without_losing_rows() {
    let server = OpenlayerServer::start(KEY).await;
    for status in [500, 502, 503, 504] {
        server.push_fault(Fault::Status(status));
    }
    let (sink, registry) = sink_for(&server);
    let rows = rows(5);

    let report = sink.ship(PIPELINE, &config(), &rows).await;

    assert_eq!(report, ShipReport::default());
    let statuses: Vec<u16> = server
        .requests()
        .iter()
        .map(|request| request.status)
        .collect();
    assert_eq!(statuses, [500, 502, 503, 504, 200]);
    assert_eq!(server.rows(), parsed(&rows), "every row once, in order");
    assert_eq!(
        sample(
            &registry,
            r#"sessionizer_openlayer_retries_total{reason="server_error"}"#
        ),
        4.0
    );
}

#[tokio::test]
async fn retries_requests_that_time_out() {
    let server = OpenlayerServer::start(KEY).await;
    server.push_fault(Fault::Delay(Duration::from_secs(3)));
    let mut settings = settings(server.base_url());
    settings.request_timeout = Duration::from_millis(300);
    let (sink, registry) = sink_with(settings);
    let rows = rows(2);

    let report = sink.ship(PIPELINE, &config(), &rows).await;

    assert_eq!(report, ShipReport::default());
    assert_eq!(
        sample(
            &registry,
            r#"sessionizer_openlayer_retries_total{reason="timeout"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &registry,
            r#"sessionizer_openlayer_requests_total{status="error"}"#
        ),
        1.0
    );
    // The timed-out request may or may not have been stored server-side: at least once.
    assert_eq!(server.rows()[..2], parsed(&rows));
}

#[tokio::test]
async fn splits_too_large_batches_until_accepted() {
    let server = OpenlayerServer::start(KEY).await;
    let rows = rows(21);
    let one_row_body = format!(r#"{{"config":{},"rows":[{}]}}"#, config(), rows[20].get());
    // Room for three rows per request, not four.
    let limit = one_row_body.len() + 2 * (rows[20].get().len() + 1);
    server.set_max_body_bytes(Some(limit));
    let (sink, _registry) = sink_for(&server);

    let report = sink.ship(PIPELINE, &config(), &rows).await;

    assert_eq!(report, ShipReport::default());
    assert_eq!(
        server.rows(),
        parsed(&rows),
        "every row exactly once, in order"
    );
    let requests = server.requests();
    assert!(requests.iter().any(|request| request.status == 413));
    for request in requests.iter().filter(|request| request.accepted()) {
        assert!(request.body.len() <= limit);
    }
}

#[tokio::test]
async fn refuses_a_single_row_that_is_still_too_large() {
    let server = OpenlayerServer::start(KEY).await;
    let mut rows = rows(4);
    let small_body_len = format!(r#"{{"config":{},"rows":[{}]}}"#, config(), rows[0].get()).len();
    rows[2] = RowJson::try_from_text(format!(
        r#"{{"inferenceId":"huge","output":"{}"}}"#,
        "x".repeat(small_body_len * 3)
    ))
    .expect("valid row json");
    server.set_max_body_bytes(Some(small_body_len * 2));
    let (sink, registry) = sink_for(&server);

    let report = sink.ship(PIPELINE, &config(), &rows).await;

    assert_eq!(rejected_indexes(&report), [2]);
    let rejection = &report.rejected[0].1;
    assert_eq!(rejection.status, Some(413));
    assert!(rejection.body.contains("too large"), "{}", rejection.body);
    let expected: Vec<Value> = [0, 1, 3]
        .iter()
        .map(|index| parsed(&rows)[*index].clone())
        .collect();
    assert_eq!(server.rows(), expected);
    assert_eq!(
        sample(
            &registry,
            r#"sessionizer_errors_total{error_type="openlayer_row_too_large",stage="sending"}"#
        ),
        1.0
    );
}

#[tokio::test]
async fn refuses_bad_rows_with_status_and_body_and_ships_the_rest() {
    let server = OpenlayerServer::start(KEY).await;
    server.reject_rows_where(|row| matches!(row["inferenceId"].as_str(), Some("row-3" | "row-7")));
    let (sink, registry) = sink_for(&server);
    let rows = rows(10);

    let report = sink.ship(PIPELINE, &config(), &rows).await;

    assert_eq!(rejected_indexes(&report), [3, 7]);
    for (index, rejection) in &report.rejected {
        assert_eq!(rejection.status, Some(400));
        let body: Value = serde_json::from_str(&rejection.body).expect("json error body");
        assert_eq!(body["error"], "invalid rows");
        assert_eq!(body["rows"][0]["inferenceId"], format!("row-{index}"));
    }
    let expected: Vec<Value> = parsed(&rows)
        .into_iter()
        .filter(|row| !matches!(row["inferenceId"].as_str(), Some("row-3" | "row-7")))
        .collect();
    assert_eq!(
        server.rows(),
        expected,
        "the good rows, once each, in order"
    );
    assert_eq!(
        sample(
            &registry,
            r#"sessionizer_errors_total{error_type="openlayer_refused",stage="sending"}"#
        ),
        2.0
    );
    assert_eq!(
        sample(&registry, "sessionizer_openlayer_retries_total"),
        0.0,
        "refusals are not retried"
    );
}

#[tokio::test]
async fn refuses_every_row_at_once_on_a_wrong_key() {
    let server = OpenlayerServer::start("sk-another-key").await;
    let (sink, _registry) = sink_for(&server);

    let report = sink.ship(PIPELINE, &config(), &rows(8)).await;

    assert_eq!(rejected_indexes(&report), (0..8).collect::<Vec<_>>());
    assert!(
        report
            .rejected
            .iter()
            .all(|(_, rejection)| rejection.status == Some(401))
    );
    assert_eq!(
        server.requests().len(),
        1,
        "no retry and no bisection on 401"
    );
}

#[tokio::test]
async fn gives_up_at_the_retry_deadline_without_losing_rows() {
    let server = OpenlayerServer::start(KEY).await;
    server.push_faults(Fault::Status(503), 10_000);
    let mut settings = settings(server.base_url());
    settings.retry_deadline = Some(Duration::from_millis(400));
    let (sink, registry) = sink_with(settings);
    let started = Instant::now();

    let report = sink.ship(PIPELINE, &config(), &rows(4)).await;

    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_millis(1500),
        "gave up after {elapsed:?}"
    );
    assert_eq!(rejected_indexes(&report), [0, 1, 2, 3]);
    for (_, rejection) in &report.rejected {
        assert_eq!(rejection.status, Some(503));
        assert!(
            rejection.body.contains("Service Unavailable"),
            "{}",
            rejection.body
        );
    }
    let num_requests = server.requests().len();
    assert!(num_requests > 2, "only {num_requests} attempts");
    assert!(server.rows().is_empty());
    assert_eq!(
        sample(
            &registry,
            r#"sessionizer_errors_total{error_type="openlayer_retry_deadline",stage="sending"}"#
        ),
        1.0
    );
}

#[tokio::test]
async fn gives_up_on_a_dead_server_with_no_status() {
    let mut server = OpenlayerServer::start(KEY).await;
    server.stop().await;
    let mut settings = settings(server.base_url());
    settings.retry_deadline = Some(Duration::from_millis(200));
    let (sink, _registry) = sink_with(settings);

    let report = sink.ship(PIPELINE, &config(), &rows(2)).await;

    assert_eq!(rejected_indexes(&report), [0, 1]);
    let Rejection { status, body } = &report.rejected[0].1;
    assert_eq!(*status, None);
    assert!(body.contains("connection"), "{body}");
    assert!(!body.contains(KEY));
}

#[tokio::test]
async fn retries_until_a_stopped_server_comes_back() {
    let mut server = OpenlayerServer::start(KEY).await;
    let address = server.address();
    server.stop().await;
    let (sink, registry) = sink_for(&server);
    let sink = Arc::new(sink);
    let rows = rows(3);

    let shipping = tokio::spawn({
        let sink = Arc::clone(&sink);
        let rows = rows.clone();
        async move { sink.ship(PIPELINE, &config(), &rows).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let restarted = OpenlayerServer::start_on(KEY, address).await;
    let report = tokio::time::timeout(Duration::from_secs(10), shipping)
        .await
        .expect("shipped once the server is back")
        .expect("ship task");

    assert_eq!(report, ShipReport::default());
    assert_eq!(restarted.rows(), parsed(&rows));
    assert!(
        sample(
            &registry,
            r#"sessionizer_openlayer_requests_total{status="error"}"#
        ) >= 2.0
    );
    assert!(
        sample(
            &registry,
            r#"sessionizer_openlayer_retries_total{reason="connection"}"#
        ) >= 2.0
    );
}

#[tokio::test]
async fn counts_requests_durations_retries_and_errors() {
    let server = OpenlayerServer::start(KEY).await;
    server.push_fault(Fault::Status(503));
    let (sink, registry) = sink_for(&server);

    assert_eq!(
        sink.ship(PIPELINE, &config(), &rows(2)).await,
        ShipReport::default()
    );
    // 422 on a single row: refused, nothing to bisect.
    server.push_fault(Fault::Status(422));
    let report = sink.ship(PIPELINE, &config(), &rows(1)).await;
    assert_eq!(rejected_indexes(&report), [0]);

    for (series, expected) in [
        (r#"sessionizer_openlayer_requests_total{status="503"}"#, 1.0),
        (r#"sessionizer_openlayer_requests_total{status="200"}"#, 1.0),
        (r#"sessionizer_openlayer_requests_total{status="422"}"#, 1.0),
        (
            r#"sessionizer_openlayer_request_duration_seconds_count{status="200"}"#,
            1.0,
        ),
        (
            r#"sessionizer_openlayer_request_duration_seconds_count{status="503"}"#,
            1.0,
        ),
        (
            r#"sessionizer_openlayer_retries_total{reason="server_error"}"#,
            1.0,
        ),
        (
            r#"sessionizer_errors_total{error_type="openlayer_refused",stage="sending"}"#,
            1.0,
        ),
    ] {
        assert_eq!(sample(&registry, series), expected, "{series}");
    }
}

#[tokio::test]
async fn never_shows_the_key_in_debug_output() {
    let server = OpenlayerServer::start(KEY).await;
    let (sink, _registry) = sink_for(&server);
    let debug = format!("{sink:?}");
    assert!(!debug.contains(KEY), "{debug}");
}

// The test server's own checks: later end-to-end tests count on them.

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("http client")
}

async fn post_raw(server: &OpenlayerServer, key: &str, content_type: &str, body: &str) -> u16 {
    http()
        .post(format!(
            "{}/inference-pipelines/{PIPELINE}/data-stream",
            server.base_url()
        ))
        .bearer_auth(key)
        .header("content-type", content_type)
        .body(body.to_owned())
        .send()
        .await
        .expect("response")
        .status()
        .as_u16()
}

#[tokio::test]
async fn test_server_checks_key_content_type_and_body_shape() {
    let server = OpenlayerServer::start(KEY).await;
    let good = r#"{"config":{"outputColumnName":"output"},"rows":[{"output":"a"}]}"#;
    for (key, content_type, body, expected) in [
        ("sk-wrong", "application/json", good, 401),
        (KEY, "text/plain", good, 415),
        (KEY, "application/json", "not json", 400),
        (KEY, "application/json", r#"{"rows":[{"output":"a"}]}"#, 400),
        (
            KEY,
            "application/json",
            r#"{"config":{},"rows":[{"output":"a"}]}"#,
            400,
        ),
        (
            KEY,
            "application/json",
            r#"{"config":{"outputColumnName":"output"},"rows":[]}"#,
            400,
        ),
        (
            KEY,
            "application/json",
            r#"{"config":{"outputColumnName":"output"},"rows":[1]}"#,
            400,
        ),
        (KEY, "application/json; charset=utf-8", good, 200),
    ] {
        assert_eq!(
            post_raw(&server, key, content_type, body).await,
            expected,
            "{content_type} {body}"
        );
    }
    let statuses: Vec<u16> = server
        .requests()
        .iter()
        .map(|request| request.status)
        .collect();
    assert_eq!(statuses, [401, 415, 400, 400, 400, 400, 400, 200]);
    assert_eq!(server.rows(), [json!({"output": "a"})]);
}

#[tokio::test]
async fn test_server_scripts_faults_and_responders() {
    let server = OpenlayerServer::start(KEY).await;
    let good = r#"{"config":{"outputColumnName":"output"},"rows":[{"output":"a"}]}"#;
    server.push_fault(Fault::Response {
        status: 503,
        headers: vec![("retry-after".to_owned(), "0".to_owned())],
        body: "busy".to_owned(),
    });
    server.set_responder(|request| (request.index == 1).then_some(Fault::Status(409)));
    server.set_latency(Duration::from_millis(50));
    let started = Instant::now();
    assert_eq!(post_raw(&server, KEY, "application/json", good).await, 503);
    assert_eq!(post_raw(&server, KEY, "application/json", good).await, 409);
    assert_eq!(post_raw(&server, KEY, "application/json", good).await, 200);
    assert!(
        started.elapsed() >= Duration::from_millis(100),
        "latency added"
    );
    assert_eq!(server.num_pending_faults(), 0);
}

#[tokio::test]
async fn test_server_records_row_updates() {
    let server = OpenlayerServer::start(KEY).await;
    let url = format!("{}/inference-pipelines/{PIPELINE}/rows", server.base_url());
    let response = http()
        .put(format!("{url}?inferenceId=row-1"))
        .bearer_auth(KEY)
        .json(&json!({"row": {"session_final_turn": true}, "config": null}))
        .send()
        .await
        .expect("response");
    assert_eq!(response.status().as_u16(), 200);
    let missing_id = http()
        .put(&url)
        .bearer_auth(KEY)
        .json(&json!({"row": {}}))
        .send()
        .await
        .expect("response");
    assert_eq!(missing_id.status().as_u16(), 400);

    let updates = server.row_updates();
    assert_eq!(updates.len(), 2);
    assert_eq!(updates[0].pipeline_id, PIPELINE);
    assert_eq!(updates[0].inference_id.as_deref(), Some("row-1"));
    assert_eq!(updates[0].row, Some(json!({"session_final_turn": true})));
    assert_eq!(updates[0].config, Some(Value::Null));
    assert_eq!(updates[1].status, 400);
}

#[tokio::test]
async fn bounds_the_bisection_when_every_row_is_refused() {
    let server = OpenlayerServer::start(KEY).await;
    server.reject_rows_where(|_| true);
    let (sink, _registry) = sink_for(&server);

    let report = sink.ship(PIPELINE, &config(), &rows(500)).await;

    assert_eq!(rejected_indexes(&report), (0..500).collect::<Vec<_>>());
    assert!(
        report
            .rejected
            .iter()
            .all(|(_, rejection)| rejection.status == Some(400))
    );
    let max_splits =
        usize::try_from(sessionizer::sink::openlayer::MAX_CONTENT_SPLITS).expect("small constant");
    // Each split costs two requests; the parts left when the budget runs out (at most the
    // depth of the split tree) one each.
    let num_requests = server.requests().len();
    assert!(
        num_requests <= 1 + 2 * max_splits + 10,
        "{num_requests} requests"
    );
}
