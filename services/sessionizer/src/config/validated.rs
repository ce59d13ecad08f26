//! The validated configuration: what the runtime sees, with `Duration`s, parsed addresses and
//! the API key read.

use crate::sink::SinkSettings;
use service_kit::client_properties::ClientProperties;
use service_kit::logging::LogFormat;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use trace_model::Limits;

/// The checked configuration the runtime uses: durations, parsed addresses, the API key read.
#[derive(Debug, Clone)]
pub struct ValidatedConfig {
    pub kafka: KafkaSettings,
    pub session: SessionSettings,
    pub batch: BatchSettings,
    /// What the Openlayer sink runs with.
    pub sink: SinkSettings,
    pub openlayer: OpenlayerSettings,
    pub limits: Limits,
    pub http: HttpSettings,
    pub log: LogSettings,
    pub shutdown: ShutdownSettings,
    /// Settings that are valid but risky, to log at start (e.g. TLS verification off).
    pub warnings: Vec<String>,
}

/// Validated `[kafka]`.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// Comma-separated, whitespace removed.
    pub bootstrap_servers: String,
    pub group_id: String,
    pub topic: String,
    pub dead_letter_topic: String,
    /// `None` when session summaries are off.
    pub sessions_topic: Option<String>,
    /// `None` keeps session state in memory only.
    pub changelog_topic: Option<String>,
    /// `None`: Confluent-framed traces cannot be resolved.
    pub schema_registry_url: Option<String>,
    pub checkpoint_interval: Duration,
    pub session_timeout: Duration,
    /// Applied last with [`ClientProperties::apply_to`].
    pub client: ClientProperties,
}

/// Validated `[session]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSettings {
    pub gap: Duration,
    pub max_duration: Duration,
    pub grace: Duration,
    pub idle_check_interval: Duration,
    pub infer_user_sessions: bool,
    pub user_gap: Duration,
}

/// Validated `[batch]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchSettings {
    pub max_rows: usize,
    pub max_bytes: usize,
    pub linger: Duration,
    pub max_in_flight_requests: usize,
    pub max_unacked_rows: usize,
}

/// Validated `[openlayer]` beyond what the sink needs ([`ValidatedConfig::sink`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenlayerSettings {
    /// Pipeline for traces without their own `pipeline_id`.
    pub default_pipeline_id: Option<String>,
    pub mark_final_turn: bool,
    pub api_key_source: ApiKeySource,
}

/// Where the API key was read from (for logs; never the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiKeySource {
    /// `openlayer.api_key`, `SESSIONIZER__OPENLAYER__API_KEY` or `OPENLAYER_API_KEY`.
    Value,
    /// `openlayer.api_key_file`.
    File(PathBuf),
}

/// Validated `[http]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    pub listen: SocketAddr,
    pub liveness_window: Duration,
}

/// Validated `[log]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    pub format: LogFormat,
    /// Parses with `tracing_subscriber::EnvFilter::try_new`.
    pub filter: String,
}

/// Validated `[shutdown]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownSettings {
    pub drain_timeout: Duration,
}
