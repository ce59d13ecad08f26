//! The service as deployed: metrics, health endpoints and the pipeline, from a validated
//! configuration, until the shutdown future resolves.

use crate::batch::BatchSettings;
use crate::config::ValidatedConfig;
use crate::health::Health;
use crate::http::{HttpState, serve};
use crate::metrics::Metrics;
use crate::pipeline::{PipelineSettings, RunError};
use crate::sessionize::WindowSettings;
use crate::source::kafka::KafkaSettings;
use std::future::Future;
use thiserror::Error;
use tokio_util::sync::CancellationToken;

/// Why the service could not run.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ServiceError {
    #[error("failed to register metrics")]
    Metrics(#[source] prometheus::Error),
    #[error("failed to listen on {address}")]
    Listen {
        address: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Pipeline(#[from] RunError),
}

impl PipelineSettings {
    /// The pipeline's part of a validated configuration.
    pub fn from_config(config: &ValidatedConfig) -> Self {
        PipelineSettings {
            kafka: KafkaSettings {
                bootstrap_servers: config.kafka.bootstrap_servers.clone(),
                group_id: config.kafka.group_id.clone(),
                topic: config.kafka.topic.clone(),
                dead_letter_topic: config.kafka.dead_letter_topic.clone(),
                sessions_topic: config.kafka.sessions_topic.clone(),
                changelog_topic: config.kafka.changelog_topic.clone(),
                schema_registry_url: config.kafka.schema_registry_url.clone(),
                // Validation bounds it to an hour.
                session_timeout_ms: u32::try_from(config.kafka.session_timeout.as_millis())
                    .unwrap_or(u32::MAX),
                client: config.kafka.client.clone(),
            },
            windows: WindowSettings {
                gap: config.session.gap,
                max_duration: config.session.max_duration,
                grace: config.session.grace,
                infer_user_sessions: config.session.infer_user_sessions,
                user_gap: config.session.user_gap,
            },
            idle_check: config.session.idle_check_interval,
            default_pipeline_id: config.openlayer.default_pipeline_id.clone(),
            batch: BatchSettings {
                max_rows: config.batch.max_rows,
                max_bytes: config.batch.max_bytes,
                linger: config.batch.linger,
            },
            max_in_flight_requests: config.batch.max_in_flight_requests,
            max_unacked_rows: config.batch.max_unacked_rows,
            sink: config.sink.clone(),
            limits: config.limits,
            drain_timeout: config.shutdown.drain_timeout,
            mark_final_turn: config.openlayer.mark_final_turn,
            checkpoint_interval: config.kafka.checkpoint_interval,
        }
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` and runs the pipeline until `shutdown`
/// resolves; then drains the pipeline and stops the HTTP server.
///
/// # Errors
/// Metrics registration, the HTTP listener, or a pipeline that cannot start.
pub async fn run(
    config: ValidatedConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServiceError> {
    let registry = prometheus::Registry::new();
    let metrics = Metrics::register(&registry).map_err(ServiceError::Metrics)?;
    service_kit::process_metrics::register(&registry, "sessionizer", crate::VERSION)
        .map_err(ServiceError::Metrics)?;
    let health = Health::new();
    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .map_err(|source| ServiceError::Listen {
            address: config.http.listen,
            source,
        })?;
    tracing::info!(address = %config.http.listen, "serving /metrics, /healthz and /readyz");
    let http_stop = CancellationToken::new();
    let http = tokio::spawn(serve(
        listener,
        HttpState::new(registry, health.clone(), config.http.liveness_window),
        http_stop.clone().cancelled_owned(),
    ));
    let result = crate::pipeline::run(
        PipelineSettings::from_config(&config),
        metrics,
        health,
        shutdown,
    )
    .await;
    http_stop.cancel();
    match http.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "metrics server stopped with an error"),
        Err(error) => tracing::warn!(%error, "metrics server task failed"),
    }
    result.map_err(ServiceError::from)
}
