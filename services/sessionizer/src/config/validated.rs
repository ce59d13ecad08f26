//! The validated configuration: what the runtime sees, with `Duration`s, parsed addresses and
//! the API key read; and the one place the pipeline's settings are derived from it.
//!
//! Sections the runtime reads as they are use its own types: [`KafkaSettings`] (the consumer,
//! producer, restore and topic checks), [`BatchSettings`] and [`SinkSettings`].

use crate::batch::BatchSettings;
use crate::core::CoreSettings;
use crate::otel::OtelSettings;
use crate::pipeline::PipelineSettings;
use crate::session_row::SessionRowSettings;
use crate::sessionize::WindowSettings;
use crate::sink::SinkSettings;
use crate::source::kafka::KafkaSettings;
use service_kit::logging::LogFormat;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use trace_model::Limits;
use trace_model::codec::registry::{RegistryAuth, RegistryEndpoint};

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
    /// The Collector path; `None`: off.
    pub otel: Option<OtelSettings>,
    /// Rows of closed sessions; `None`: off.
    pub session_rows: Option<SessionRowSettings>,
    /// Settings that are valid but risky, to log at start (e.g. TLS verification off).
    pub warnings: Vec<String>,
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

/// Validated Schema Registry settings (`kafka.schema_registry_*`): the URL and the
/// credentials, and where the secret came from so messages can name the option to fix.
/// `Debug` never shows the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaRegistrySettings {
    /// URL (no trailing slash) and credentials, as the registry client takes them.
    pub endpoint: RegistryEndpoint,
    /// Where the password or bearer token was read from; `None` without credentials.
    pub secret_source: Option<SecretSource>,
}

/// Where a secret was read from (for messages and `check-config`; never the secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// The option itself (file or `SESSIONIZER__*` variable).
    Value,
    /// The `..._file` option naming this file.
    File(PathBuf),
}

impl SchemaRegistrySettings {
    /// The options to check when the registry refuses the credentials, e.g.
    /// `kafka.schema_registry_username and kafka.schema_registry_password_file
    /// (/etc/sessionizer/sr-password)`.
    pub fn credential_keys(&self) -> String {
        let file = |key: &str| match &self.secret_source {
            Some(SecretSource::File(path)) => format!("{key}_file ({})", path.display()),
            _ => key.to_owned(),
        };
        match &self.endpoint.auth {
            RegistryAuth::Basic { .. } => format!(
                "kafka.schema_registry_username and {}",
                file("kafka.schema_registry_password")
            ),
            RegistryAuth::Bearer(_) => file("kafka.schema_registry_bearer_token"),
            _ => "kafka.schema_registry_username and kafka.schema_registry_password, or \
                  kafka.schema_registry_bearer_token (none is set, and the registry requires \
                  credentials)"
                .to_owned(),
        }
    }
}

/// What the pipeline builds its registry client from.
impl From<SchemaRegistrySettings> for RegistryEndpoint {
    fn from(settings: SchemaRegistrySettings) -> Self {
        settings.endpoint
    }
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

impl ValidatedConfig {
    /// What the pipeline runs with: the service, the demo and the tests all derive it here.
    pub fn pipeline_settings(&self) -> PipelineSettings {
        PipelineSettings {
            kafka: self.kafka.clone(),
            sink: self.sink.clone(),
            limits: self.limits,
            drain_timeout: self.shutdown.drain_timeout,
            core: CoreSettings {
                topic: self.kafka.topic.clone(),
                windows: WindowSettings {
                    gap: self.session.gap,
                    max_duration: self.session.max_duration,
                    grace: self.session.grace,
                    infer_user_sessions: self.session.infer_user_sessions,
                    user_gap: self.session.user_gap,
                },
                idle_check: self.session.idle_check_interval,
                default_pipeline_id: self.openlayer.default_pipeline_id.clone(),
                batch: self.batch,
                mark_final_turn: self.openlayer.mark_final_turn,
                checkpoint_interval: self.kafka.checkpoint_interval,
                changelog: self.kafka.changelog_topic.is_some(),
                summaries: self.kafka.sessions_topic.is_some(),
                // Known once the traces topic is described (`pipeline::run`).
                repartition_partitions: None,
                align_max_wait: self.kafka.repartition_max_wait,
                align_max_buffered: self.kafka.repartition_max_buffered,
                session_rows: self.session_rows.clone(),
                // Drawn per run (`pipeline::run`).
                instance: 0,
            },
        }
    }
}
