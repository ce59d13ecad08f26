//! The sessionizer: reads traces from Kafka as a consumer group, groups each session's traces
//! in windowed state, enriches every trace with its session context, and bulk-ships rows to
//! Openlayer's data-stream API with at-least-once delivery.
//!
//! # Layout
//! - [`config`]: `SessionizerConfig` → `validate()` → `ValidatedConfig` (file < env) →
//!   `pipeline_settings()`; a tree split by role (model, load, validate, print, errors)
//! - [`source`]: Kafka consumer group, decode and validate, dead letters
//! - [`sessionize`]: pure session-window state machine per partition
//! - [`enrich`]: session columns and the Openlayer row of a trace
//! - [`batch`]: rows grouped per Openlayer pipeline, flushed by rows, bytes or linger
//! - [`sink`]: Openlayer data-stream client with the retry policy
//! - [`commit`]: the lowest fully acknowledged offset per partition
//! - [`core`]: the pipeline's state and decisions without IO: inputs in, effects out, and
//!   the commit rule
//! - [`service`]: the deployed service: HTTP endpoints plus the pipeline, from the config
//! - [`pipeline`]: the IO loop around the core: Kafka, Openlayer, timers, shutdown
//! - [`preflight`]: `sessionizer preflight`: brokers, topics, group, registry and key checked
//! - [`metrics`], [`health`], [`http`]: `/metrics`, `/healthz`, `/readyz`
//! - [`secret`]: a string that never prints

pub mod batch;
pub mod commit;
pub mod config;
pub mod core;
pub mod enrich;
pub mod health;
pub mod http;
pub mod metrics;
pub mod otel;
pub mod pipeline;
pub mod preflight;
pub mod secret;
pub mod service;
pub mod session_row;
pub mod sessionize;
pub mod sink;
pub mod source;

/// Version of this build, as `--version` prints it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
