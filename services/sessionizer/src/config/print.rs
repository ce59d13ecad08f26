//! The effective configuration printed as TOML for `check-config`: the keys a file takes, the
//! API key, the Schema Registry's password or token and secret librdkafka properties
//! redacted.

use super::model::{
    BatchConfig, HttpConfig, KafkaConfig, OpenlayerConfig, OtelConfig, SessionConfig,
    SessionizerConfig, ShutdownConfig,
};
use super::validated::{ApiKeySource, SchemaRegistrySettings, SecretSource, ValidatedConfig};
use service_kit::logging::LogConfig;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;
use trace_model::codec::registry::RegistryAuth;
use trace_model::secret::Secret;

impl ValidatedConfig {
    /// The effective configuration as TOML (the same keys a file takes), with the API key and
    /// secret librdkafka properties shown as `**redacted**`; for `check-config`.
    pub fn to_redacted_toml(&self) -> String {
        let tree = serde_json::to_value(self.to_config())
            .unwrap_or_else(|_| serde_json::Value::Object(serde_json::Map::new()));
        let mut toml = String::from("# Effective sessionizer configuration (secrets redacted).\n");
        if let Some(sections) = tree.as_object() {
            write_toml_table(&mut toml, "", sections);
        }
        toml
    }

    /// The options that produce this configuration.
    fn to_config(&self) -> SessionizerConfig {
        let (api_key, api_key_file) = match &self.openlayer.api_key_source {
            ApiKeySource::Value => (Some(self.sink.api_key.clone()), None),
            ApiKeySource::File(path) => (None, Some(path.clone())),
        };
        let registry = RegistryOptions::of(self.kafka.schema_registry_url.as_ref());
        SessionizerConfig {
            kafka: KafkaConfig {
                bootstrap_servers: self.kafka.bootstrap_servers.clone(),
                group_id: self.kafka.group_id.clone(),
                topic: self.kafka.topic.clone(),
                dead_letter_topic: self.kafka.dead_letter_topic.clone(),
                sessions_topic: self.kafka.sessions_topic.clone().unwrap_or_default(),
                changelog_topic: self.kafka.changelog_topic.clone().unwrap_or_default(),
                repartition_topic: Some(self.kafka.repartition_topic.clone().unwrap_or_default()),
                checkpoint_interval_ms: millis(self.kafka.checkpoint_interval),
                repartition_max_wait_ms: millis(self.kafka.repartition_max_wait),
                repartition_max_buffered: self.kafka.repartition_max_buffered,
                schema_registry_url: registry.url,
                schema_registry_username: registry.username,
                schema_registry_password: registry.password,
                schema_registry_password_file: registry.password_file,
                schema_registry_bearer_token: registry.bearer_token,
                schema_registry_bearer_token_file: registry.bearer_token_file,
                session_timeout_ms: millis(self.kafka.session_timeout),
                client: self.kafka.client.clone(),
            },
            session: SessionConfig {
                gap_secs: self.session.gap.as_secs(),
                max_duration_secs: self.session.max_duration.as_secs(),
                grace_secs: self.session.grace.as_secs(),
                idle_check_ms: millis(self.session.idle_check_interval),
                infer_user_sessions: self.session.infer_user_sessions,
                user_gap_secs: self.session.user_gap.as_secs(),
                aggregates: self
                    .session_rows
                    .as_ref()
                    .map(|rows| rows.aggregates.clone())
                    .unwrap_or_default(),
            },
            batch: BatchConfig {
                max_rows: self.batch.max_rows,
                max_bytes: self.batch.max_bytes,
                linger_ms: millis(self.batch.linger),
                max_in_flight_requests: self.batch.max_in_flight_requests,
                max_unacked_rows: self.batch.max_unacked_rows,
            },
            openlayer: OpenlayerConfig {
                base_url: Some(self.sink.base_url.clone()),
                api_key,
                api_key_file,
                default_pipeline_id: self.openlayer.default_pipeline_id.clone(),
                request_timeout_secs: self.sink.request_timeout.as_secs(),
                initial_backoff_ms: millis(self.sink.initial_backoff),
                max_backoff_ms: millis(self.sink.max_backoff),
                retry_deadline_secs: self.sink.retry_deadline.map(|deadline| deadline.as_secs()),
                verify_tls: Some(self.sink.verify_tls),
                mark_final_turn: self.openlayer.mark_final_turn,
                sessions_pipeline_id: self
                    .session_rows
                    .as_ref()
                    .and_then(|rows| rows.pipeline_id.clone()),
                sessions_pipelines: self
                    .session_rows
                    .as_ref()
                    .map(|rows| rows.by_traces_pipeline.clone())
                    .unwrap_or_default(),
            },
            limits: self.limits,
            http: HttpConfig {
                listen: self.http.listen.to_string(),
                liveness_window_secs: self.http.liveness_window.as_secs(),
            },
            log: LogConfig {
                format: self.log.format,
                filter: self.log.filter.clone(),
            },
            shutdown: ShutdownConfig {
                drain_timeout_secs: self.shutdown.drain_timeout.as_secs(),
            },
            otel: self
                .otel
                .as_ref()
                .map_or_else(OtelConfig::default, |otel| OtelConfig {
                    spans_topic: otel.spans_topic.clone(),
                    repartition_topic: Some(otel.repartition_topic.clone()),
                    state_topic: Some(otel.state_topic.clone()),
                    quiet_ms: millis(otel.assembly.quiet),
                    max_open_secs: otel.assembly.max_open.as_secs(),
                    max_held_spans: otel.max_held_spans,
                }),
        }
    }
}

/// The `kafka.schema_registry_*` options that produce the registry settings; a secret read
/// from a file is shown as its file.
#[derive(Default)]
struct RegistryOptions {
    url: String,
    username: Option<String>,
    password: Option<Secret>,
    password_file: Option<PathBuf>,
    bearer_token: Option<Secret>,
    bearer_token_file: Option<PathBuf>,
}

impl RegistryOptions {
    fn of(settings: Option<&SchemaRegistrySettings>) -> Self {
        let Some(settings) = settings else {
            return RegistryOptions::default();
        };
        let mut options = RegistryOptions {
            url: settings.endpoint.url.clone(),
            ..RegistryOptions::default()
        };
        let file = match &settings.secret_source {
            Some(SecretSource::File(path)) => Some(path.clone()),
            _ => None,
        };
        match &settings.endpoint.auth {
            RegistryAuth::Basic { username, password } => {
                options.username = Some(username.clone());
                match file {
                    Some(path) => options.password_file = Some(path),
                    None => options.password = Some(password.clone()),
                }
            }
            RegistryAuth::Bearer(token) => match file {
                Some(path) => options.bearer_token_file = Some(path),
                None => options.bearer_token = Some(token.clone()),
            },
            _ => {}
        }
        options
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Writes a table's plain values, then its sub-tables as `[path]` sections. An unset option
/// becomes a comment (TOML has no null).
fn write_toml_table(
    toml: &mut String,
    path: &str,
    table: &serde_json::Map<String, serde_json::Value>,
) {
    if !path.is_empty() {
        // Writing to a String cannot fail.
        let _ = writeln!(toml, "\n[{path}]");
    }
    for (key, value) in table {
        match value {
            serde_json::Value::Object(_) => {}
            serde_json::Value::Null => {
                let _ = writeln!(toml, "# {} is unset", toml_key(key));
            }
            _ => {
                let _ = writeln!(toml, "{} = {}", toml_key(key), toml_value(value));
            }
        }
    }
    for (key, value) in table {
        if let serde_json::Value::Object(sub_table) = value {
            let sub_path = if path.is_empty() {
                toml_key(key)
            } else {
                format!("{path}.{}", toml_key(key))
            };
            write_toml_table(toml, &sub_path, sub_table);
        }
    }
}

fn toml_key(key: &str) -> String {
    let bare = !key.is_empty()
        && key.chars().all(|character| {
            character.is_ascii_alphanumeric() || character == '_' || character == '-'
        });
    if bare {
        key.to_owned()
    } else {
        toml_string(key)
    }
}

fn toml_value(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(text) => toml_string(text),
        serde_json::Value::Array(items) => {
            let items: Vec<String> = items.iter().map(toml_value).collect();
            format!("[{}]", items.join(", "))
        }
        other => other.to_string(),
    }
}

/// A TOML basic string.
fn toml_string(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for character in text.chars() {
        match character {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            '\t' => quoted.push_str("\\t"),
            '\r' => quoted.push_str("\\r"),
            control if control.is_control() => {
                let _ = write!(quoted, "\\u{:04X}", u32::from(control));
            }
            plain => quoted.push(plain),
        }
    }
    quoted.push('"');
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_strings_escape_quotes_and_controls() {
        assert_eq!(toml_string("a\"b\\c\u{7f}\n"), "\"a\\\"b\\\\c\\u007F\\n\"");
        assert_eq!(toml_key("security.protocol"), "\"security.protocol\"");
        assert_eq!(toml_key("gap_secs"), "gap_secs");
    }
}
