//! The service as deployed: metrics, health endpoints and the pipeline, from a validated
//! configuration, until the shutdown future resolves.

use crate::config::ValidatedConfig;
use crate::health::Health;
use crate::http::{HttpState, serve};
use crate::metrics::Metrics;
use crate::pipeline::RunError;
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
    let result = crate::pipeline::run(config.pipeline_settings(), metrics, health, shutdown).await;
    http_stop.cancel();
    match http.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "metrics server stopped with an error"),
        Err(error) => tracing::warn!(%error, "metrics server task failed"),
    }
    result.map_err(ServiceError::from)
}
