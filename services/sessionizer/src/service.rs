//! The service as deployed: metrics, health endpoints and the pipeline, from a validated
//! configuration, until the shutdown future resolves.
//!
//! Before anything is consumed, a configured Schema Registry is asked once with its
//! credentials (`GET /subjects`). A refusal (401/403) stops the service naming the options to
//! fix: running on would dead-letter, as `registry_unauthorized`, every trace whose schema id
//! is not cached. An unreachable registry is only logged: the pipeline waits outages out.

use crate::config::{SchemaRegistrySettings, ValidatedConfig};
use crate::health::Health;
use crate::http::{HttpState, serve};
use crate::metrics::Metrics;
use crate::pipeline::RunError;
use std::future::Future;
use std::time::Duration;
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use trace_model::codec::registry::{RegistryError, SchemaRegistry};

/// Bound of the start-up request to the Schema Registry: the pipeline client's timeout.
const REGISTRY_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// The Schema Registry refused the credentials at start; `keys` names the options.
    #[error("the schema registry did not accept the configured credentials; check {keys}")]
    SchemaRegistryRefused {
        keys: String,
        #[source]
        source: RegistryError,
    },
    #[error("failed to create the schema registry client")]
    SchemaRegistryClient(#[source] RegistryError),
    #[error(transparent)]
    Pipeline(#[from] RunError),
    #[error("the OpenTelemetry Collector path (otel.spans_topic) stopped")]
    Otel(#[from] crate::otel::OtelError),
}

/// Serves `/metrics`, `/healthz` and `/readyz` and runs the pipeline until `shutdown`
/// resolves; then drains the pipeline and stops the HTTP server.
///
/// # Errors
/// Metrics registration, the HTTP listener, a Schema Registry refusing the credentials, or a
/// pipeline that cannot start.
pub async fn run(
    config: ValidatedConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServiceError> {
    let mut shutdown = std::pin::pin!(shutdown);
    if let Some(registry) = &config.kafka.schema_registry_url {
        tokio::select! {
            checked = check_schema_registry(registry) => checked?,
            () = shutdown.as_mut() => return Ok(()),
        }
    }
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
    // The Collector path runs beside the pipeline; a failure of it stops the service.
    let otel_stop = CancellationToken::new();
    let otel_failed = CancellationToken::new();
    let otel = config.otel.clone().map(|otel| {
        let run = crate::otel::run(
            otel,
            config.kafka.clone(),
            metrics.clone(),
            config.shutdown.drain_timeout,
            otel_stop.clone(),
        );
        let failed = otel_failed.clone();
        tokio::spawn(async move {
            let result = run.await;
            if result.is_err() {
                failed.cancel();
            }
            result
        })
    });
    let stop = async {
        tokio::select! {
            () = shutdown => {}
            () = otel_failed.cancelled() => {}
        }
    };
    let result = crate::pipeline::run(config.pipeline_settings(), metrics, health, stop).await;
    otel_stop.cancel();
    let otel_result = match otel {
        Some(otel) => match otel.await {
            Ok(result) => result,
            Err(error) => {
                tracing::warn!(%error, "the otel stage's task failed");
                Ok(())
            }
        },
        None => Ok(()),
    };
    http_stop.cancel();
    match http.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "metrics server stopped with an error"),
        Err(error) => tracing::warn!(%error, "metrics server task failed"),
    }
    result?;
    otel_result.map_err(ServiceError::from)
}

/// Tries the registry's credentials once; only a refusal is an error (see the module doc).
async fn check_schema_registry(settings: &SchemaRegistrySettings) -> Result<(), ServiceError> {
    let registry = SchemaRegistry::try_new(settings.endpoint.clone(), REGISTRY_CHECK_TIMEOUT)
        .map_err(ServiceError::SchemaRegistryClient)?;
    match registry.check_access().await {
        Ok(()) => {
            tracing::info!(registry = %settings.endpoint.url, "schema registry accepted the request");
            Ok(())
        }
        Err(error @ RegistryError::Unauthorized { .. }) => {
            Err(ServiceError::SchemaRegistryRefused {
                keys: settings.credential_keys(),
                source: error,
            })
        }
        Err(error) => {
            tracing::warn!(
                error = %service_kit::fatal::cause_chain(&error),
                registry = %settings.endpoint.url,
                "schema registry not checked at start; traces needing it wait until it answers"
            );
            Ok(())
        }
    }
}
