//! Shipping rows to Openlayer's data-stream API.
//!
//! The contract with the rest of the pipeline: [`openlayer::OpenlayerSink::ship`] takes one
//! batch for one inference pipeline and returns only when every row is either acknowledged
//! or refused for good ([`ShipReport::rejected`]); transient failures are retried inside,
//! following [`retry`]. Refused rows go to the dead-letter topic, so nothing is lost.

pub mod openlayer;
pub mod retry;
mod row;

pub use row::RowJson;

use crate::secret::Secret;
use std::time::Duration;

/// What the sink runs with, from the validated configuration.
#[derive(Debug, Clone)]
pub struct SinkSettings {
    /// Base URL including `/v1`, without a trailing slash (`OPENLAYER_BASE_URL`).
    pub base_url: String,
    /// Bearer key (`OPENLAYER_API_KEY` or a key file).
    pub api_key: Secret,
    /// Timeout of one HTTP request.
    pub request_timeout: Duration,
    /// First backoff; doubles per attempt up to `max_backoff`, with jitter.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Give up retrying a batch after this long and dead-letter its rows; `None` retries forever.
    pub retry_deadline: Option<Duration>,
    /// Verify the server's TLS certificate (`OPENLAYER_VERIFY_SSL`); on unless explicitly off.
    pub verify_tls: bool,
}

/// A row Openlayer refused for good (or gave up on at the retry deadline).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// HTTP status, `None` when no response came (deadline passed on connection errors).
    pub status: Option<u16>,
    /// Response body (truncated), or the reason when there was no response.
    pub body: String,
}

/// Outcome of shipping one batch: rows not listed in `rejected` were acknowledged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShipReport {
    /// Index into the shipped rows, and why it was refused.
    pub rejected: Vec<(usize, Rejection)>,
}
