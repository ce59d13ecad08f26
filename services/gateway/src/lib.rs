//! The gateway: an Openlayer-compatible ingest endpoint. Services instrumented with
//! Openlayer's official SDKs point `OPENLAYER_BASE_URL` here; every row they stream becomes a
//! `TraceEvent` on the traces topic (the SDK's row kept as sent), and the sessionizer ships it
//! to Openlayer with session columns. The clients' keys stay here: the sessionizer ships with
//! its own.
//!
//! # Layout
//! - [`config`]: `GatewayConfig` → `validate()` → `ValidatedConfig` (defaults < TOML < env)
//! - [`auth`]: bearer keys compared in constant time
//! - [`rows`]: Openlayer requests to trace records, with per-row refusals
//! - [`publish`]: the idempotent Kafka producer behind the `Publish` seam
//! - [`http`]: the API routes and the operations endpoint
//! - [`metrics`]: every `gateway_` metric
//! - [`preflight`]: `gateway preflight`: brokers and topic checked before a rollout
//! - [`run`]: serve until shutdown, then drain

pub mod auth;
pub mod config;
pub mod http;
pub mod metrics;
pub mod otlp;
pub mod preflight;
pub mod publish;
pub mod rows;

use crate::auth::ApiKeys;
use crate::config::{AnswerAfter, ValidatedConfig};
use crate::http::{ApiSettings, AppState, OpsState};
use crate::metrics::Metrics;
use crate::publish::{BrokerState, KafkaPublisher};
use std::future::Future;
use std::sync::Arc;
use tokio::sync::watch;

/// Version of this build, as `--version` prints it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Why the gateway could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    #[error("failed to create the kafka producer")]
    Producer(#[source] rdkafka::error::KafkaError),
    #[error("failed to bind {address}")]
    Bind {
        address: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to register metrics")]
    Metrics(#[source] prometheus::Error),
}

/// Serves the API and the operations endpoint until `shutdown` resolves, then drains:
/// `/readyz` fails at once, requests are still served for `unready_delay` (so the Service
/// routes elsewhere first), then the listener closes, open requests finish (their rows
/// acknowledged or answered 503) within `drain_timeout`, and the producer is flushed: with
/// `http.answer_after = "queued"`, that is when rows answered already reach Kafka.
///
/// # Errors
/// When the producer cannot be created or a port cannot be bound.
pub async fn run(
    config: ValidatedConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let registry = prometheus::Registry::new();
    let metrics = Metrics::try_new(&registry).map_err(RunError::Metrics)?;
    service_kit::process_metrics::register(&registry, "gateway", VERSION)
        .map_err(RunError::Metrics)?;
    let broker = BrokerState::default();
    let publisher = Arc::new(
        KafkaPublisher::try_new(&config.kafka, broker.clone()).map_err(RunError::Producer)?,
    );
    let bind = |address| async move {
        tokio::net::TcpListener::bind(address)
            .await
            .map_err(|source| RunError::Bind { address, source })
    };
    let api_listener = bind(config.listen).await?;
    let ops_listener = bind(config.ops_listen).await?;
    let state = AppState::new(
        ApiKeys::new(config.api_keys.clone()),
        publisher.clone(),
        metrics,
        broker,
        ApiSettings {
            limits: config.limits,
            max_body_bytes: config.max_body_bytes,
            max_body_bytes_in_flight: config.max_body_bytes_in_flight,
            request_deadline: config.kafka.produce_timeout + std::time::Duration::from_secs(60),
            retry_after: config.retry_after,
            max_rows_in_flight: config.max_rows_in_flight,
            update_key_cache_entries: config.update_key_cache_entries,
            forward_spans: config.kafka.spans_topic.is_some(),
            answer_after: config.answer_after,
            produce_timeout: config.kafka.produce_timeout,
        },
    );
    // The bound addresses: a configured port 0 becomes a real one.
    let listen = api_listener.local_addr().unwrap_or(config.listen);
    let ops_listen = ops_listener.local_addr().unwrap_or(config.ops_listen);
    tracing::info!(
        %listen,
        %ops_listen,
        topic = %config.kafka.topic,
        num_keys = config.api_keys.len(),
        "gateway serving"
    );

    let (stop_checks, readiness) =
        spawn_readiness_checks(publisher.clone(), config.readiness_check);
    let (close_api, mut api_task) = serve_until_closed(api_listener, http::api_app(state.clone()));
    let ops_app = http::ops_app(OpsState {
        registry,
        app: state.clone(),
    });
    let (close_ops, ops_task) = serve_until_closed(ops_listener, ops_app);

    shutdown.await;
    tracing::info!("shutdown requested: failing readiness, then draining");
    state.begin_draining();
    tokio::time::sleep(config.unready_delay).await;
    let _closing = close_api.send(true);
    let deadline = tokio::time::Instant::now() + config.drain_timeout;
    match tokio::time::timeout_at(deadline, &mut api_task).await {
        Ok(_served) => tracing::info!("open requests finished"),
        Err(_elapsed) => {
            tracing::warn!("drain deadline passed with requests still open; aborting them");
            api_task.abort();
        }
    }
    flush_publisher(&publisher, deadline, config.answer_after).await;
    let _stopped = stop_checks.send(true);
    let _stopped = readiness.await;
    let _closing = close_ops.send(true);
    let _served = ops_task.await;
    tracing::info!("gateway stopped");
    Ok(())
}

/// Checks the broker every `interval` for readiness until the returned sender is set or
/// dropped.
fn spawn_readiness_checks(
    publisher: Arc<KafkaPublisher>,
    interval: std::time::Duration,
) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let (stop_checks, mut checks_stopped) = watch::channel(false);
    let task = tokio::spawn(async move {
        loop {
            let probe = publisher.clone();
            let _reachable = tokio::task::spawn_blocking(move || {
                probe.check_broker(interval.max(std::time::Duration::from_secs(1)))
            })
            .await;
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = checks_stopped.changed() => return,
            }
        }
    });
    (stop_checks, task)
}

/// Serves `app` until the returned sender is set: then the listener closes and open requests
/// finish.
fn serve_until_closed(
    listener: tokio::net::TcpListener,
    app: axum::Router,
) -> (
    watch::Sender<bool>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let (close, mut closing) = watch::channel(false);
    let served = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _closed = closing.wait_for(|closing| *closing).await;
    });
    (close, tokio::spawn(async move { served.await }))
}

/// Waits for the producer's outstanding records until `deadline` (at least a second).
async fn flush_publisher(
    publisher: &Arc<KafkaPublisher>,
    deadline: tokio::time::Instant,
    answer_after: AnswerAfter,
) {
    let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
    let flusher = publisher.clone();
    let flushed = tokio::task::spawn_blocking(move || {
        flusher.flush(remaining.max(std::time::Duration::from_secs(1)))
    })
    .await;
    if matches!(flushed, Ok(Ok(()))) {
        return;
    }
    match answer_after {
        AnswerAfter::Acknowledged => tracing::warn!(
            "records left unacknowledged at shutdown (their requests were answered 503)"
        ),
        AnswerAfter::Queued => tracing::error!(
            "records left unacknowledged at shutdown: those of requests answered 200 \
             (http.answer_after = queued) are lost"
        ),
    }
}
