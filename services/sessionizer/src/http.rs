//! The operations endpoint: `/metrics`, `/healthz` and `/readyz`; every other path is 404.
//!
//! The handlers only read: the pipeline reports into the shared [`Health`] flags and the
//! metrics registry. `/healthz` is liveness (the processing loop progressed within the
//! liveness window, `http.liveness_window_secs`), `/readyz` is readiness as
//! [`Health::readiness`] defines it; both bodies say why when they fail.

use crate::health::Health;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::Registry;
use std::future::Future;
use std::time::Duration;

/// What the handlers read; cheap to clone (clones share the registry and the flags).
#[derive(Debug, Clone)]
pub struct HttpState {
    /// Served by `/metrics`.
    pub registry: Registry,
    /// Written by the pipeline, read by `/healthz` and `/readyz`.
    pub health: Health,
    /// `/healthz` fails when the loop made no progress for this long.
    pub liveness_window: Duration,
}

impl HttpState {
    pub fn new(registry: Registry, health: Health, liveness_window: Duration) -> Self {
        HttpState {
            registry,
            health,
            liveness_window,
        }
    }
}

/// The routes; anything else is 404.
pub fn app(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Serves [`app`] on `listener` until `shutdown` completes, then lets open requests finish.
///
/// # Errors
/// Never in practice (axum retries failed accepts); the `io::Result` is axum's signature.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: HttpState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics(State(state): State<HttpState>) -> Response {
    service_kit::metrics_endpoint::response(&state.registry)
}

async fn healthz(State(state): State<HttpState>) -> Response {
    if state.health.is_alive(state.liveness_window) {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        let body = format!(
            "stalled: the processing loop made no progress in the last {} s\n",
            state.liveness_window.as_secs()
        );
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

async fn readyz(State(state): State<HttpState>) -> Response {
    match state.health.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(not_ready) => {
            let body = format!("not ready: {}\n", not_ready.as_str());
            (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
        }
    }
}
