//! The operations endpoint: `/metrics`, `/healthz`, `/readyz` and nothing else.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use sessionizer::health::Health;
use sessionizer::http::{HttpState, app, serve};
use sessionizer::metrics::Metrics;
use std::time::Duration;
use tower::ServiceExt as _;

const LIVENESS_WINDOW: Duration = Duration::from_secs(60);

fn state_with(health: Health) -> HttpState {
    let registry = prometheus::Registry::new();
    let metrics = Metrics::register(&registry).expect("metrics register");
    metrics.events_consumed.inc_by(7);
    HttpState::new(registry, health, LIVENESS_WINDOW)
}

struct Reply {
    status: StatusCode,
    content_type: Option<String>,
    body: String,
}

async fn get(state: HttpState, path: &str) -> Reply {
    let request = Request::get(path).body(Body::empty()).expect("request");
    let response = app(state).oneshot(request).await.expect("infallible");
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    let body = String::from_utf8(bytes.to_vec()).expect("utf-8 body");
    Reply {
        status,
        content_type,
        body,
    }
}

fn healthy() -> Health {
    let health = Health::new();
    health.record_progress();
    health.set_broker_reachable(true);
    health.set_joined();
    health
}

#[tokio::test]
async fn metrics_are_served_as_prometheus_text() {
    let reply = get(state_with(healthy()), "/metrics").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.content_type.as_deref(),
        Some("text/plain; version=0.0.4")
    );
    assert!(
        reply
            .body
            .contains("# TYPE sessionizer_events_consumed_total counter"),
        "{}",
        reply.body
    );
    assert!(
        reply.body.contains("sessionizer_events_consumed_total 7"),
        "{}",
        reply.body
    );
}

#[tokio::test]
async fn healthz_is_ok_while_the_loop_progresses() {
    let reply = get(state_with(healthy()), "/healthz").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "ok\n");
}

#[tokio::test]
async fn healthz_fails_without_progress() {
    let reply = get(state_with(Health::new()), "/healthz").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(reply.body.starts_with("stalled"), "{}", reply.body);
    assert!(reply.body.contains("60 s"), "{}", reply.body);
}

#[tokio::test]
async fn readyz_is_ok_when_assigned_reachable_and_sink_healthy() {
    let reply = get(state_with(healthy()), "/readyz").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "ready\n");
}

#[tokio::test]
async fn readyz_names_the_failing_check() {
    let health = healthy();
    health.set_broker_reachable(false);
    let reply = get(state_with(health.clone()), "/readyz").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.body, "not ready: kafka broker unreachable\n");

    health.set_broker_reachable(true);
    health.set_sink_failing(true);
    let reply = get(state_with(health.clone()), "/readyz").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.body, "not ready: openlayer requests failing\n");

    health.set_sink_failing(false);
    let reply = get(state_with(health), "/readyz").await;
    assert_eq!(reply.status, StatusCode::OK);

    let starting = Health::new();
    starting.record_progress();
    starting.set_broker_reachable(true);
    let reply = get(state_with(starting), "/readyz").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.body, "not ready: not yet joined the consumer group\n");
}

#[tokio::test]
async fn other_paths_are_not_found() {
    for path in ["/", "/metrics/extra", "/health", "/readyz/"] {
        let reply = get(state_with(healthy()), path).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
    }
}

#[tokio::test]
async fn serves_on_a_listener_until_shutdown() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, state_with(healthy()), async {
        let _ = stopped.await;
    }));
    let response = reqwest::get(format!("http://{address}/readyz"))
        .await
        .expect("request");
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    stop.send(()).expect("server is running");
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("server stops after the shutdown signal")
        .expect("server task")
        .expect("server result");
}
