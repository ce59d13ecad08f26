//! Configuration of the sessionizer: what users write, how it is loaded, and the checked form
//! the runtime sees.
//!
//! - [`SessionizerConfig`] is what users write: one struct per TOML section, every field
//!   documented (those `///` docs are the user documentation; `docs/configuration.md` repeats
//!   them and a test keeps the two in step).
//! - [`SessionizerConfig::load`] merges, lowest precedence first: built-in defaults < the TOML
//!   file < `SESSIONIZER__SECTION__KEY` environment variables. Then the Openlayer SDK's own
//!   variables (`OPENLAYER_API_KEY`, `OPENLAYER_BASE_URL`, `OPENLAYER_INFERENCE_PIPELINE_ID`,
//!   `OPENLAYER_VERIFY_SSL`) fill the Openlayer options the configuration left unset: an
//!   explicit sessionizer setting always wins over the SDK's generic variable.
//! - [`SessionizerConfig::validate`] turns it into a [`ValidatedConfig`] (`Duration`s, parsed
//!   addresses, the sink's [`SinkSettings`], the API key read from its file) or reports every
//!   problem at once, each naming its key and showing an example.
//!
//! Unknown keys fail loudly, in the file and in `SESSIONIZER__*` variables alike, naming the
//! key and where it came from: a misspelt option silently falling back to its default is the
//! configuration bug that is hardest to see.

use crate::secret::Secret;
use crate::sink::SinkSettings;
use config::{Config, Environment, File, FileFormat};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::{BTreeMap, HashMap};
use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;
use trace_model::Limits;
use trace_model::secret::is_secret_client_property;

/// Prefix of the environment variables that set options: `SESSIONIZER__SECTION__KEY`.
pub const ENV_PREFIX: &str = "SESSIONIZER";
/// Separator between the prefix, the section and the key of those variables.
pub const ENV_SEPARATOR: &str = "__";
/// Openlayer's API as the official SDK defaults to it; the base includes `/v1`.
pub const DEFAULT_OPENLAYER_BASE_URL: &str = "https://api.openlayer.com/v1";
/// Deepest step nesting `limits.max_step_depth` may allow: decoding recurses once per level
/// and deeper records can overflow a worker thread's stack.
pub const MAX_STEP_DEPTH_CAP: usize = 64;

/// How secrets are shown wherever the configuration is printed.
const REDACTED: &str = "**redacted**";
/// The Openlayer SDK's variables, honoured for the options the configuration leaves unset.
const OPENLAYER_API_KEY: &str = "OPENLAYER_API_KEY";
const OPENLAYER_BASE_URL: &str = "OPENLAYER_BASE_URL";
const OPENLAYER_INFERENCE_PIPELINE_ID: &str = "OPENLAYER_INFERENCE_PIPELINE_ID";
const OPENLAYER_VERIFY_SSL: &str = "OPENLAYER_VERIFY_SSL";
/// Key paths whose tables are open maps (any key allowed), not structs.
const OPEN_TABLES: &[&str] = &["kafka.client"];
/// librdkafka's default `max.poll.interval.ms`.
const LIBRDKAFKA_MAX_POLL_INTERVAL_MS: u64 = 300_000;
/// librdkafka's allowed range of `session.timeout.ms`.
const LIBRDKAFKA_MAX_SESSION_TIMEOUT_MS: u64 = 3_600_000;
/// Kafka's longest legal topic name.
const MAX_TOPIC_CHARS: usize = 249;

// ---------------------------------------------------------------------------------------------
// What users write
// ---------------------------------------------------------------------------------------------

/// The whole configuration as written: TOML file, `SESSIONIZER__*` variables and defaults.
///
/// `Serialize` exists to print the configuration (`check-config`) and to list its keys; secret
/// values serialize as `**redacted**`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionizerConfig {
    /// `[kafka]`: the cluster, the consumer group and the topics.
    pub kafka: KafkaConfig,
    /// `[session]`: when sessions open and close.
    pub session: SessionConfig,
    /// `[batch]`: how rows are grouped into Openlayer requests.
    pub batch: BatchConfig,
    /// `[openlayer]`: where and how rows are shipped.
    pub openlayer: OpenlayerConfig,
    /// `[limits]`: bounds every trace must respect; violations go to the dead-letter topic.
    pub limits: Limits,
    /// `[http]`: the operations endpoint (`/metrics`, `/healthz`, `/readyz`).
    pub http: HttpConfig,
    /// `[log]`: what is logged and how.
    pub log: LogConfig,
    /// `[shutdown]`: how long a stopping replica may take.
    pub shutdown: ShutdownConfig,
}

/// `[kafka]`: the cluster, the consumer group and the topics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Brokers to bootstrap from, comma-separated `host:port`, e.g.
    /// `kafka-0.kafka:9092,kafka-1.kafka:9092`.
    pub bootstrap_servers: String,
    /// Consumer group: every replica of one deployment uses the same group and shares the
    /// partitions of `topic`.
    pub group_id: String,
    /// Topic the traces are read from.
    pub topic: String,
    /// Topic where undecodable, invalid and refused traces go, with the reason in headers.
    pub dead_letter_topic: String,
    /// Topic a `SessionSummary` record is produced to when a session closes; an empty string
    /// turns summaries off.
    pub sessions_topic: String,
    /// Compacted topic holding open sessions' state, co-partitioned with `topic`, so sessions
    /// survive restarts and follow their partition on rebalance. An empty string keeps state
    /// in memory only: after a restart or rebalance, open sessions restart their turn numbers.
    pub changelog_topic: String,
    /// How often session state is written to `changelog_topic` and acknowledged offsets are
    /// stored for the next commit.
    pub checkpoint_interval_ms: u64,
    /// Confluent Schema Registry (`http(s)://host:port`) that resolves the schema ids of
    /// Confluent-framed traces; empty: such traces are dead-lettered as `unknown_schema_id`.
    /// Avro single-object and JSON traces need no registry.
    pub schema_registry_url: String,
    /// Consumer group session timeout (librdkafka `session.timeout.ms`): a replica silent for
    /// this long is removed from the group. Must be longer than `shutdown.drain_timeout_secs`.
    pub session_timeout_ms: u64,
    /// Further librdkafka properties (TLS, SASL, fetch sizes, ...) passed through verbatim and
    /// applied last, e.g. `security.protocol = "SASL_SSL"`. In environment variables write
    /// each dot as `__`: `SESSIONIZER__KAFKA__CLIENT__SASL__PASSWORD`.
    pub client: ClientProperties,
}

/// `[session]`: when sessions open and close.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    /// A session closes after this much inactivity, in event time (and by wall clock on an
    /// idle partition).
    pub gap_secs: u64,
    /// A session is cut after this long; its later traces start a new session segment.
    pub max_duration_secs: u64,
    /// Lateness allowed, in event time: a trace older than its partition's newest trace
    /// timestamp minus this is shipped with a late marker (never dropped); within it, it joins
    /// its session.
    pub grace_secs: u64,
    /// How often idle partitions are checked for sessions to close by wall clock.
    pub idle_check_ms: u64,
    /// Give traces that carry a `user_id` but no `session_id` an inferred session (split by
    /// `user_gap_secs` of the user's inactivity, with a deterministic id).
    pub infer_user_sessions: bool,
    /// Inactivity that ends an inferred user session (with `infer_user_sessions`).
    pub user_gap_secs: u64,
}

/// `[batch]`: how rows are grouped into Openlayer requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchConfig {
    /// Most rows in one request.
    pub max_rows: usize,
    /// Largest request body, in bytes; a single larger row is sent alone.
    pub max_bytes: usize,
    /// Longest a row waits for its batch to fill before the batch is sent anyway.
    pub linger_ms: u64,
    /// Requests in flight at once, across all inference pipelines.
    pub max_in_flight_requests: usize,
    /// Backpressure: when this many rows are enriched but not yet acknowledged, partitions are
    /// paused until acknowledgements catch up. Must be at least `max_rows`.
    pub max_unacked_rows: usize,
}

/// `[openlayer]`: where and how rows are shipped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpenlayerConfig {
    /// API base URL including `/v1`. Unset: `OPENLAYER_BASE_URL`, else
    /// `https://api.openlayer.com/v1`.
    pub base_url: Option<String>,
    /// API key. Unset (and no `api_key_file`): `OPENLAYER_API_KEY`. Prefer `api_key_file` or
    /// the variable to writing the key in a file that is not a secret.
    #[serde(serialize_with = "serialize_secret")]
    pub api_key: Option<Secret>,
    /// File holding the API key (surrounding whitespace ignored), e.g. a Kubernetes Secret
    /// mounted as a volume. Read at start; set either this or `api_key`.
    #[serde(serialize_with = "serialize_path")]
    pub api_key_file: Option<PathBuf>,
    /// Inference pipeline for traces that carry no `pipeline_id`. Unset:
    /// `OPENLAYER_INFERENCE_PIPELINE_ID`; without either such traces cannot be routed.
    pub default_pipeline_id: Option<String>,
    /// Timeout of one HTTP request.
    pub request_timeout_secs: u64,
    /// First wait before retrying a failed request; doubles per attempt, with jitter.
    pub initial_backoff_ms: u64,
    /// Longest wait between retries (unless the server's `Retry-After` asks for more).
    pub max_backoff_ms: u64,
    /// Give up retrying a batch after this long and dead-letter its rows; unset retries
    /// forever (offsets do not advance meanwhile, so nothing is lost).
    pub retry_deadline_secs: Option<u64>,
    /// Verify the server's TLS certificate. Unset: off only when `OPENLAYER_VERIFY_SSL` is
    /// `false`.
    pub verify_tls: Option<bool>,
    /// When a session closes, update its last row in Openlayer to mark it the final turn.
    pub mark_final_turn: bool,
}

/// `[http]`: the operations endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address and port serving `/metrics`, `/healthz` and `/readyz`.
    pub listen: String,
    /// `/healthz` fails when the processing loop has made no progress for this long. Must be
    /// longer than `shutdown.drain_timeout_secs`, which a rebalance may spend waiting.
    pub liveness_window_secs: u64,
}

/// `[log]`: what is logged and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` for people, `json` (one object per line) for log collectors.
    pub format: LogFormat,
    /// Which events are logged, in `tracing` filter syntax, e.g. `info,sessionizer=debug`.
    pub filter: String,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[shutdown]`: how long a stopping replica may take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// On SIGTERM or a partition revoke: how long to wait for in-flight rows to be
    /// acknowledged before committing what is and stopping. Keep it below the pod's
    /// `terminationGracePeriodSeconds` and `kafka.session_timeout_ms`.
    pub drain_timeout_secs: u64,
}

impl TryFrom<String> for LogFormat {
    type Error = String;

    /// Parsed by hand: the config crate's own message for an unknown variant lists none of
    /// the valid ones.
    fn try_from(text: String) -> Result<Self, Self::Error> {
        match text.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!(
                "unknown log format `{text}`, expected `text` or `json`"
            )),
        }
    }
}

// Defaults, with where each value comes from.

// Kafka's conventional listener on the local machine; librdkafka itself has no default.
fn default_bootstrap_servers() -> String {
    "localhost:9092".to_owned()
}
// The service's name: one group per deployment.
fn default_group_id() -> String {
    "sessionizer".to_owned()
}
// The topic the producer helpers (`trace-emit`) write to by default.
fn default_topic() -> String {
    "llm-traces".to_owned()
}
// `<topic>-dlq`, the usual dead-letter naming.
fn default_dead_letter_topic() -> String {
    "llm-traces-dlq".to_owned()
}
// DESIGN.md: session summaries go to `llm-sessions`.
fn default_sessions_topic() -> String {
    "llm-sessions".to_owned()
}
// `<sessions>-state`, after Kafka Streams' `-changelog` naming of state topics.
fn default_changelog_topic() -> String {
    "llm-sessions-state".to_owned()
}
// The consumer's auto-commit interval: each checkpoint's offsets go out with the next commit.
const fn default_checkpoint_interval_ms() -> u64 {
    1_000
}
// librdkafka 2.x default (Kafka clients since 3.0 use the same 45 s); it must exceed the
// drain timeout (20 s), which librdkafka's pre-2.0 default of 10 s would not.
const fn default_session_timeout_ms() -> u64 {
    45_000
}
// DESIGN.md: 30 minutes of inactivity, the common web-analytics session gap.
const fn default_gap_secs() -> u64 {
    30 * 60
}
// DESIGN.md: 24 hours, then a new session segment starts.
const fn default_max_duration_secs() -> u64 {
    24 * 60 * 60
}
// Five minutes: covers producer retries and batching delays without holding closed sessions long.
const fn default_grace_secs() -> u64 {
    5 * 60
}
// Once a second: closing by wall clock need not be more precise than that.
const fn default_idle_check_ms() -> u64 {
    1_000
}
// DESIGN.md: inferring sessions is opt-in.
const fn default_infer_user_sessions() -> bool {
    false
}
// Same as the session gap.
const fn default_user_gap_secs() -> u64 {
    default_gap_secs()
}
// Enough rows per request to amortize it; small enough to keep retries cheap.
const fn default_max_rows() -> usize {
    1_000
}
// 4 MiB: well under common reverse-proxy body limits (Openlayer documents none).
const fn default_max_bytes() -> usize {
    4 * 1024 * 1024
}
// Half a second: rows reach Openlayer quickly even at low traffic.
const fn default_linger_ms() -> u64 {
    500
}
// A few concurrent requests hide latency without hammering the API.
const fn default_max_in_flight_requests() -> usize {
    4
}
// 50 batches of the default size; bounded memory (rows are a few KiB each).
const fn default_max_unacked_rows() -> usize {
    50_000
}
// The official SDK's request timeout.
const fn default_request_timeout_secs() -> u64 {
    60
}
// The official SDK's first backoff.
const fn default_initial_backoff_ms() -> u64 {
    500
}
// The official SDK's longest backoff.
const fn default_max_backoff_ms() -> u64 {
    8_000
}
// DESIGN.md: row updates for the final turn are optional.
const fn default_mark_final_turn() -> bool {
    false
}
// The port registered for Prometheus exporters in the 94xx range, unused by common exporters.
fn default_listen() -> String {
    "0.0.0.0:9464".to_owned()
}
// Six missed 10 s probe periods; well above the drain timeout a rebalance may take.
const fn default_liveness_window_secs() -> u64 {
    60
}
// `tracing`'s usual production level.
fn default_log_filter() -> String {
    "info".to_owned()
}
// Leaves 10 s for commit and producer flush inside Kubernetes' default 30 s grace period.
const fn default_drain_timeout_secs() -> u64 {
    20
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: default_bootstrap_servers(),
            group_id: default_group_id(),
            topic: default_topic(),
            dead_letter_topic: default_dead_letter_topic(),
            sessions_topic: default_sessions_topic(),
            changelog_topic: default_changelog_topic(),
            checkpoint_interval_ms: default_checkpoint_interval_ms(),
            schema_registry_url: String::new(),
            session_timeout_ms: default_session_timeout_ms(),
            client: ClientProperties::default(),
        }
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            gap_secs: default_gap_secs(),
            max_duration_secs: default_max_duration_secs(),
            grace_secs: default_grace_secs(),
            idle_check_ms: default_idle_check_ms(),
            infer_user_sessions: default_infer_user_sessions(),
            user_gap_secs: default_user_gap_secs(),
        }
    }
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_rows: default_max_rows(),
            max_bytes: default_max_bytes(),
            linger_ms: default_linger_ms(),
            max_in_flight_requests: default_max_in_flight_requests(),
            max_unacked_rows: default_max_unacked_rows(),
        }
    }
}

impl Default for OpenlayerConfig {
    fn default() -> Self {
        OpenlayerConfig {
            base_url: None,
            api_key: None,
            api_key_file: None,
            default_pipeline_id: None,
            request_timeout_secs: default_request_timeout_secs(),
            initial_backoff_ms: default_initial_backoff_ms(),
            max_backoff_ms: default_max_backoff_ms(),
            retry_deadline_secs: None,
            verify_tls: None,
            mark_final_turn: default_mark_final_turn(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: default_listen(),
            liveness_window_secs: default_liveness_window_secs(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::default(),
            filter: default_log_filter(),
        }
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            drain_timeout_secs: default_drain_timeout_secs(),
        }
    }
}

fn serialize_secret<S: Serializer>(
    secret: &Option<Secret>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match secret {
        Some(_) => serializer.serialize_some(REDACTED),
        None => serializer.serialize_none(),
    }
}

fn serialize_path<S: Serializer>(path: &Option<PathBuf>, serializer: S) -> Result<S::Ok, S::Error> {
    match path {
        Some(path) => serializer.serialize_some(&path.to_string_lossy()),
        None => serializer.serialize_none(),
    }
}

// ---------------------------------------------------------------------------------------------
// librdkafka passthrough
// ---------------------------------------------------------------------------------------------

/// librdkafka properties passed through to the Kafka clients, keyed by their librdkafka name
/// (`security.protocol`, `sasl.password`, ...).
///
/// Deserializes from a table whose keys may be written dotted (`security.protocol = "SSL"`,
/// which TOML reads as nested tables), quoted (`"security.protocol" = "SSL"`), or in
/// environment variables with `__` for each dot; when both forms set one property, the nested
/// form (the one environment variables produce) wins. Values may be strings, numbers or
/// booleans: librdkafka takes them all as text.
///
/// `Debug` and `Serialize` show the values of secret-looking properties (passwords, secrets,
/// private keys, PEM material) as `**redacted**`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ClientProperties(BTreeMap<String, String>);

impl ClientProperties {
    /// Sets a property, returning the previous value.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) -> Option<String> {
        self.0.insert(key.into(), value.into())
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// The properties as a plain map; values are not redacted.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.0.clone()
    }

    /// Every property in key order; values are not redacted.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_str()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Sets every property on `client_config`. Call it after the sessionizer's own settings,
    /// so users can override them (the passthrough is applied last).
    pub fn apply_to(&self, client_config: &mut rdkafka::ClientConfig) {
        for (key, value) in &self.0 {
            client_config.set(key, value);
        }
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for ClientProperties {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        ClientProperties(
            iter.into_iter()
                .map(|(key, value)| (key.into(), value.into()))
                .collect(),
        )
    }
}

fn redacted_property_value<'a>(key: &str, value: &'a str) -> &'a str {
    if is_secret_client_property(key) {
        REDACTED
    } else {
        value
    }
}

impl fmt::Debug for ClientProperties {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_map()
            .entries(
                self.0
                    .iter()
                    .map(|(key, value)| (key, redacted_property_value(key, value))),
            )
            .finish()
    }
}

impl Serialize for ClientProperties {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(
            self.0
                .iter()
                .map(|(key, value)| (key, redacted_property_value(key, value))),
        )
    }
}

impl<'de> Deserialize<'de> for ClientProperties {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let table = BTreeMap::<String, serde_json::Value>::deserialize(deserializer)?;
        let mut flattened = Vec::new();
        flatten_properties(&table, "", 1, &mut flattened).map_err(D::Error::custom)?;
        // Shallower first, so the nested spelling (what environment variables produce) is
        // inserted last and overrides a quoted dotted key from the file.
        flattened.sort_by_key(|(depth, _, _)| *depth);
        Ok(ClientProperties(
            flattened
                .into_iter()
                .map(|(_, key, value)| (key, value))
                .collect(),
        ))
    }
}

fn flatten_properties(
    table: &BTreeMap<String, serde_json::Value>,
    prefix: &str,
    depth: usize,
    flattened: &mut Vec<(usize, String, String)>,
) -> Result<(), String> {
    for (key, value) in table {
        let full_key = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        let text = match value {
            serde_json::Value::String(text) => text.clone(),
            serde_json::Value::Number(number) => number.to_string(),
            serde_json::Value::Bool(flag) => flag.to_string(),
            serde_json::Value::Object(nested) => {
                let nested: BTreeMap<String, serde_json::Value> = nested
                    .iter()
                    .map(|(key, value)| (key.clone(), value.clone()))
                    .collect();
                flatten_properties(&nested, &full_key, depth + 1, flattened)?;
                continue;
            }
            serde_json::Value::Null | serde_json::Value::Array(_) => {
                return Err(format!(
                    "librdkafka property `{full_key}` in kafka.client must be a string, number \
                     or boolean, e.g. `\"SASL_SSL\"`"
                ));
            }
        };
        flattened.push((depth, full_key, text));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why the configuration cannot be used.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file is missing or not TOML, or a value has the wrong type; the message names the
    /// key and the source (file path or "the environment").
    #[error(transparent)]
    Load(config::ConfigError),
    /// The file is not TOML: where, by line and (when one is on that line) key, never by
    /// value, which may be a secret.
    #[error(
        "{} is not valid TOML: line {line}{}: {message}",
        path.display(),
        key.as_ref().map(|key| format!(", key `{key}`")).unwrap_or_default()
    )]
    Syntax {
        path: PathBuf,
        line: usize,
        key: Option<String>,
        message: String,
    },
    /// Keys that no option has.
    #[error("unknown configuration key{}:\n{}", plural(.0.len()), bullet_list(.0))]
    UnknownKeys(Vec<UnknownKey>),
    /// Values out of range or inconsistent with each other; every problem found is listed.
    #[error("invalid configuration:\n{}", bullet_list(.0))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    /// The validation problems, empty unless this is [`ConfigError::Invalid`].
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid(problems) => problems,
            _ => &[],
        }
    }
}

fn plural(count: usize) -> &'static str {
    if count == 1 { "" } else { "s" }
}

fn bullet_list<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|item| format!("  - {item}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// One invalid value: its key path and what was expected (never a secret's value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Key path such as `kafka.bootstrap_servers`, or the variable such as `OPENLAYER_VERIFY_SSL`.
    pub key: String,
    /// What is wrong and what was expected, with an example.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{} {}", self.key, self.message)
    }
}

/// A key that no option has, where it was set, and the keys valid at that level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownKey {
    /// Key path such as `kafka.bogus`.
    pub key: String,
    pub origin: KeyOrigin,
    /// The keys valid where this one was found.
    pub expected: Vec<String>,
}

impl fmt::Display for UnknownKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "`{}` {}; expected one of: {}",
            self.key,
            self.origin,
            self.expected.join(", ")
        )
    }
}

/// Where a key was set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOrigin {
    File(PathBuf),
    /// The environment variable's name.
    Environment(String),
}

impl fmt::Display for KeyOrigin {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyOrigin::File(path) => write!(formatter, "in {}", path.display()),
            KeyOrigin::Environment(variable) => {
                write!(formatter, "from environment variable {variable}")
            }
        }
    }
}

#[derive(Debug, Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Loading

/// Parses the file as TOML first, because the `config` crate's messages for syntax errors
/// (e.g. an integer beyond 64 bits) name neither the line nor the key. A file that cannot be
/// read is left to the `config` crate, which names it.
fn check_toml_syntax(path: &Path) -> Result<(), ConfigError> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let Err(error) = text.parse::<toml::Table>() else {
        return Ok(());
    };
    let offset = error.span().map_or(0, |span| span.start).min(text.len());
    let before = text.get(..offset).unwrap_or_default();
    let line = before.matches('\n').count() + 1;
    let mut section = String::new();
    for header in before.lines() {
        let header = header.trim();
        if let Some(name) = header
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))
        {
            section = name.trim().to_owned();
        }
    }
    let key = text
        .lines()
        .nth(line - 1)
        .and_then(|line_text| line_text.split_once('='))
        .map(|(key, _)| key.trim())
        .filter(|key| {
            !key.is_empty()
                && key
                    .chars()
                    .all(|character| character.is_ascii_alphanumeric() || "_-.".contains(character))
        })
        .map(|key| {
            if section.is_empty() {
                key.to_owned()
            } else {
                format!("{section}.{key}")
            }
        });
    Err(ConfigError::Syntax {
        path: path.to_path_buf(),
        line,
        key,
        message: error.message().to_owned(),
    })
}
// ---------------------------------------------------------------------------------------------

impl SessionizerConfig {
    /// Loads the configuration: defaults < the TOML file at `path` (if any) < `SESSIONIZER__*`
    /// variables in `env`; then `OPENLAYER_*` variables in `env` fill the Openlayer options
    /// still unset. `env` is the process environment in production and a map in tests.
    ///
    /// # Errors
    /// [`ConfigError::Load`] when the file is missing or not TOML or a value has the wrong
    /// type, [`ConfigError::UnknownKeys`] for keys no option has (in the file or in
    /// `SESSIONIZER__*` variables), [`ConfigError::Invalid`] for an unreadable
    /// `OPENLAYER_VERIFY_SSL`.
    pub fn load(path: Option<&Path>, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let known_keys = known_key_tree();
        let mut unknown_keys = Vec::new();
        let mut builder = Config::builder();
        if let Some(path) = path {
            check_toml_syntax(path)?;
            let file_config = Config::builder()
                .add_source(File::from(path).format(FileFormat::Toml))
                .build()
                .map_err(ConfigError::Load)?;
            let file_tree: serde_json::Value = file_config
                .clone()
                .try_deserialize()
                .map_err(ConfigError::Load)?;
            find_unknown_file_keys(&file_tree, &known_keys, "", path, &mut unknown_keys);
            builder = builder.add_source(file_config);
        }
        let mut variables: Vec<&String> = env.keys().collect();
        variables.sort();
        for variable in variables {
            if let Some(unknown_key) = check_env_variable(variable, &known_keys) {
                unknown_keys.push(unknown_key);
            }
        }
        if !unknown_keys.is_empty() {
            return Err(ConfigError::UnknownKeys(unknown_keys));
        }
        // No `try_parsing`: it turns digit-only text into numbers, so an API key or group id
        // such as `007` would lose its text; numbers and booleans parse from strings without
        // it, and no option is a list.
        let environment = Environment::with_prefix(ENV_PREFIX)
            .separator(ENV_SEPARATOR)
            .source(Some(
                env.iter()
                    .map(|(name, value)| (name.clone(), value.clone()))
                    .collect(),
            ));
        let mut loaded: SessionizerConfig = builder
            .add_source(environment)
            .build()
            .and_then(Config::try_deserialize)
            .map_err(ConfigError::Load)?;
        loaded.apply_openlayer_env(env)?;
        Ok(loaded)
    }

    /// Fills Openlayer options the configuration left unset (or empty) from the SDK's
    /// variables; empty variables count as unset.
    fn apply_openlayer_env(&mut self, env: &HashMap<String, String>) -> Result<(), ConfigError> {
        let variable = |name: &str| {
            env.get(name)
                .map(|value| value.trim())
                .filter(|value| !value.is_empty())
        };
        let openlayer = &mut self.openlayer;
        if is_blank(openlayer.base_url.as_deref()) {
            openlayer.base_url = variable(OPENLAYER_BASE_URL).map(str::to_owned);
        }
        let api_key_unset = openlayer.api_key.as_ref().is_none_or(Secret::is_empty);
        if api_key_unset && openlayer.api_key_file.is_none() {
            openlayer.api_key = variable(OPENLAYER_API_KEY).map(Secret::new);
        }
        if is_blank(openlayer.default_pipeline_id.as_deref()) {
            openlayer.default_pipeline_id =
                variable(OPENLAYER_INFERENCE_PIPELINE_ID).map(str::to_owned);
        }
        if openlayer.verify_tls.is_none()
            && let Some(text) = variable(OPENLAYER_VERIFY_SSL)
        {
            let Some(verify) = parse_flag(text) else {
                return Err(ConfigError::Invalid(vec![Problem {
                    key: OPENLAYER_VERIFY_SSL.to_owned(),
                    message: format!("must be `true` or `false`, got `{text}`"),
                }]));
            };
            openlayer.verify_tls = Some(verify);
        }
        Ok(())
    }
}

fn is_blank(value: Option<&str>) -> bool {
    value.is_none_or(|text| text.trim().is_empty())
}

/// The words the config crate accepts for booleans, so `OPENLAYER_VERIFY_SSL` reads like
/// every other flag.
fn parse_flag(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "1" | "true" | "on" | "yes" => Some(true),
        "0" | "false" | "off" | "no" => Some(false),
        _ => None,
    }
}

/// Every key the configuration has, as the tree its defaults serialize to.
fn known_key_tree() -> serde_json::Value {
    serde_json::to_value(SessionizerConfig::default())
        .unwrap_or_else(|_| serde_json::Value::Object(serde_json::Map::new()))
}

fn child_keys(tree: &serde_json::Map<String, serde_json::Value>) -> Vec<String> {
    tree.keys().cloned().collect()
}

fn join_key(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

fn find_unknown_file_keys(
    tree: &serde_json::Value,
    known: &serde_json::Value,
    prefix: &str,
    path: &Path,
    unknown_keys: &mut Vec<UnknownKey>,
) {
    let (Some(table), Some(known_table)) = (tree.as_object(), known.as_object()) else {
        return; // not a table: the type error is reported by deserialization, naming the key
    };
    for (key, value) in table {
        let full_key = join_key(prefix, key);
        match known_table.get(key) {
            None => unknown_keys.push(UnknownKey {
                key: full_key,
                origin: KeyOrigin::File(path.to_path_buf()),
                expected: child_keys(known_table),
            }),
            Some(_) if OPEN_TABLES.contains(&full_key.as_str()) => {}
            Some(known_child) => {
                find_unknown_file_keys(value, known_child, &full_key, path, unknown_keys);
            }
        }
    }
}

/// The key path a `SESSIONIZER__*` variable sets, the way the config crate derives it
/// (case-insensitive prefix, lowercased, `__` → `.`); `None` for other variables.
fn env_key_path(variable: &str) -> Option<String> {
    let lowercase = variable.to_lowercase();
    let prefix = format!("{ENV_PREFIX}{ENV_SEPARATOR}").to_lowercase();
    lowercase
        .strip_prefix(&prefix)
        .map(|rest| rest.replace(ENV_SEPARATOR, "."))
}

fn check_env_variable(variable: &str, known: &serde_json::Value) -> Option<UnknownKey> {
    let key_path = env_key_path(variable)?;
    let mut node = known;
    let mut walked = String::new();
    for segment in key_path.split('.') {
        if OPEN_TABLES.contains(&walked.as_str()) {
            return None;
        }
        let table = node.as_object()?; // deeper than a leaf: a type error names the key
        let full_key = join_key(&walked, segment);
        match table.get(segment) {
            Some(child) => node = child,
            None => {
                return Some(UnknownKey {
                    key: full_key,
                    origin: KeyOrigin::Environment(variable.to_owned()),
                    expected: child_keys(table),
                });
            }
        }
        walked = full_key;
    }
    None
}

// ---------------------------------------------------------------------------------------------
// The validated configuration
// ---------------------------------------------------------------------------------------------

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

impl SessionizerConfig {
    /// Checks every option and their relationships, reads `openlayer.api_key_file`, and
    /// returns what the runtime uses.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] listing every problem found; each names its key and what was
    /// expected. Messages never contain the API key (nor an unreadable key file's content).
    pub fn validate(self) -> Result<ValidatedConfig, ConfigError> {
        let mut problems = Problems::default();
        let mut warnings = Vec::new();
        let kafka = validate_kafka(self.kafka, &mut problems, &mut warnings);
        let session = validate_session(&self.session, &mut problems);
        let batch = validate_batch(&self.batch, &mut problems);
        validate_limits(&self.limits, &mut problems);
        let (sink, openlayer) =
            validate_openlayer(self.openlayer, &self.limits, &mut problems, &mut warnings);
        let http = validate_http(&self.http, &mut problems);
        let log = validate_log(self.log, &mut problems);
        let shutdown = ShutdownSettings {
            drain_timeout: Duration::from_secs(self.shutdown.drain_timeout_secs),
        };
        if self.shutdown.drain_timeout_secs == 0 {
            problems.push(
                "shutdown.drain_timeout_secs",
                "must be at least 1, e.g. `20`",
            );
        }
        check_timeouts(&kafka, &session, http.as_ref(), &shutdown, &mut problems);
        let sink_durations = sink.as_ref().map_or([None; 4], |sink| {
            [
                Some(sink.request_timeout),
                Some(sink.initial_backoff),
                Some(sink.max_backoff),
                sink.retry_deadline,
            ]
        });
        check_duration_bounds(
            &[
                (
                    "kafka.checkpoint_interval_ms",
                    Some(kafka.checkpoint_interval),
                ),
                ("session.gap_secs", Some(session.gap)),
                ("session.max_duration_secs", Some(session.max_duration)),
                ("session.grace_secs", Some(session.grace)),
                ("session.idle_check_ms", Some(session.idle_check_interval)),
                ("session.user_gap_secs", Some(session.user_gap)),
                ("batch.linger_ms", Some(batch.linger)),
                ("shutdown.drain_timeout_secs", Some(shutdown.drain_timeout)),
                (
                    "http.liveness_window_secs",
                    http.as_ref().map(|http| http.liveness_window),
                ),
                ("openlayer.request_timeout_secs", sink_durations[0]),
                ("openlayer.initial_backoff_ms", sink_durations[1]),
                ("openlayer.max_backoff_ms", sink_durations[2]),
                ("openlayer.retry_deadline_secs", sink_durations[3]),
            ],
            &mut problems,
        );
        match (sink, openlayer, http) {
            (Some(sink), Some(openlayer), Some(http)) if problems.0.is_empty() => {
                Ok(ValidatedConfig {
                    kafka,
                    session,
                    batch,
                    sink,
                    openlayer,
                    limits: self.limits,
                    http,
                    log,
                    shutdown,
                    warnings,
                })
            }
            _ => Err(ConfigError::Invalid(problems.0)),
        }
    }
}

fn validate_kafka(
    kafka: KafkaConfig,
    problems: &mut Problems,
    warnings: &mut Vec<String>,
) -> KafkaSettings {
    let servers: Vec<&str> = kafka.bootstrap_servers.split(',').map(str::trim).collect();
    if kafka.bootstrap_servers.trim().is_empty() {
        problems.push(
            "kafka.bootstrap_servers",
            "must not be empty, e.g. `kafka:9092`",
        );
    } else if servers
        .iter()
        .any(|server| server.is_empty() || server.contains(char::is_whitespace))
    {
        problems.push(
            "kafka.bootstrap_servers",
            format!(
                "must be a comma-separated list of `host:port`, e.g. `kafka-0:9092,kafka-1:9092` \
                 (got `{}`)",
                kafka.bootstrap_servers
            ),
        );
    }
    if kafka.group_id.trim().is_empty() {
        problems.push("kafka.group_id", "must not be empty, e.g. `sessionizer`");
    }
    check_topic("kafka.topic", &kafka.topic, "llm-traces", problems);
    check_topic(
        "kafka.dead_letter_topic",
        &kafka.dead_letter_topic,
        "llm-traces-dlq",
        problems,
    );
    let changelog_topic = optional_topic(
        "kafka.changelog_topic",
        &kafka.changelog_topic,
        "llm-sessions-state",
        problems,
    );
    if changelog_topic.is_none() {
        warnings.push(
            "kafka.changelog_topic is empty: session state is kept in memory only, so open \
             sessions restart their turn numbers after a restart or rebalance"
                .to_owned(),
        );
    }
    let sessions_topic = optional_topic(
        "kafka.sessions_topic",
        &kafka.sessions_topic,
        "llm-sessions",
        problems,
    );
    let mut topics = vec![
        ("kafka.topic", kafka.topic.as_str()),
        ("kafka.dead_letter_topic", kafka.dead_letter_topic.as_str()),
    ];
    if let Some(changelog_topic) = &changelog_topic {
        topics.push(("kafka.changelog_topic", changelog_topic.as_str()));
    }
    if let Some(sessions_topic) = &sessions_topic {
        topics.push(("kafka.sessions_topic", sessions_topic.as_str()));
    }
    for (index, (key, topic)) in topics.iter().enumerate() {
        for (earlier_key, earlier_topic) in &topics[..index] {
            if topic == earlier_topic {
                problems.push(
                    *key,
                    format!("must differ from {earlier_key} (both are `{topic}`)"),
                );
            }
        }
    }
    if !(1..=LIBRDKAFKA_MAX_SESSION_TIMEOUT_MS).contains(&kafka.session_timeout_ms) {
        problems.push(
            "kafka.session_timeout_ms",
            format!(
                "must be between 1 and {LIBRDKAFKA_MAX_SESSION_TIMEOUT_MS} (librdkafka's range), \
                 e.g. `45000`"
            ),
        );
    }
    if kafka.checkpoint_interval_ms == 0 {
        problems.push(
            "kafka.checkpoint_interval_ms",
            "must be at least 1, e.g. `1000`",
        );
    }
    check_client_properties(&kafka.client, problems);
    let schema_registry_url = kafka
        .schema_registry_url
        .trim()
        .trim_end_matches('/')
        .to_owned();
    let is_http =
        schema_registry_url.starts_with("http://") || schema_registry_url.starts_with("https://");
    if !schema_registry_url.is_empty() && !is_http {
        problems.push(
            "kafka.schema_registry_url",
            "must be an http(s) URL or empty, e.g. `http://schema-registry:8081`",
        );
    }
    KafkaSettings {
        schema_registry_url: (!schema_registry_url.is_empty()).then_some(schema_registry_url),
        bootstrap_servers: servers.join(","),
        group_id: kafka.group_id,
        topic: kafka.topic,
        dead_letter_topic: kafka.dead_letter_topic,
        sessions_topic,
        changelog_topic,
        checkpoint_interval: Duration::from_millis(kafka.checkpoint_interval_ms),
        session_timeout: Duration::from_millis(kafka.session_timeout_ms),
        client: kafka.client,
    }
}

/// `None` for an empty name (the feature is off), else the name once checked.
fn optional_topic(
    key: &str,
    topic: &str,
    example: &str,
    problems: &mut Problems,
) -> Option<String> {
    if topic.is_empty() {
        return None;
    }
    check_topic(key, topic, example, problems);
    Some(topic.to_owned())
}

fn check_topic(key: &str, topic: &str, example: &str, problems: &mut Problems) {
    let legal_characters = topic
        .chars()
        .all(|character| character.is_ascii_alphanumeric() || "._-".contains(character));
    let legal = !topic.is_empty()
        && topic.len() <= MAX_TOPIC_CHARS
        && legal_characters
        && topic != "."
        && topic != "..";
    if !legal {
        problems.push(
            key,
            format!(
                "must be a Kafka topic name (1 to {MAX_TOPIC_CHARS} of `a-z A-Z 0-9 . _ -`), \
                 e.g. `{example}` (got `{topic}`)"
            ),
        );
    }
}

fn check_client_properties(client: &ClientProperties, problems: &mut Problems) {
    for (key, _) in client.iter() {
        let owner = match key {
            "bootstrap.servers" | "metadata.broker.list" => Some("use kafka.bootstrap_servers"),
            "group.id" => Some("use kafka.group_id"),
            "session.timeout.ms" => Some("use kafka.session_timeout_ms"),
            "enable.auto.commit" | "enable.auto.offset.store" => Some(
                "the sessionizer manages offsets: it commits one only when every row below it \
                 is acknowledged",
            ),
            _ => None,
        };
        if let Some(owner) = owner {
            problems.push(
                format!("kafka.client.{key}"),
                format!("cannot be set here: {owner}"),
            );
        }
    }
    if let Some(text) = client.get("max.poll.interval.ms")
        && text.trim().parse::<u64>().is_err()
    {
        problems.push(
            "kafka.client.max.poll.interval.ms",
            format!("must be a whole number of milliseconds, e.g. `300000` (got `{text}`)"),
        );
    }
}

fn validate_session(session: &SessionConfig, problems: &mut Problems) -> SessionSettings {
    for (key, value, example) in [
        ("session.gap_secs", session.gap_secs, "1800"),
        (
            "session.max_duration_secs",
            session.max_duration_secs,
            "86400",
        ),
        ("session.idle_check_ms", session.idle_check_ms, "1000"),
        ("session.user_gap_secs", session.user_gap_secs, "1800"),
    ] {
        if value == 0 {
            problems.push(key, format!("must be at least 1, e.g. `{example}`"));
        }
    }
    if session.max_duration_secs < session.gap_secs {
        problems.push(
            "session.max_duration_secs",
            format!(
                "({}) must be at least session.gap_secs ({}), e.g. `86400`",
                session.max_duration_secs, session.gap_secs
            ),
        );
    }
    SessionSettings {
        gap: Duration::from_secs(session.gap_secs),
        max_duration: Duration::from_secs(session.max_duration_secs),
        grace: Duration::from_secs(session.grace_secs),
        idle_check_interval: Duration::from_millis(session.idle_check_ms),
        infer_user_sessions: session.infer_user_sessions,
        user_gap: Duration::from_secs(session.user_gap_secs),
    }
}

/// Longest duration any option may set: far beyond any sensible value, and small enough that
/// adding it to an `Instant` or a timestamp can never overflow (which would panic at run time).
const MAX_OPTION_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

fn check_duration_bounds(durations: &[(&'static str, Option<Duration>)], problems: &mut Problems) {
    for (key, duration) in durations {
        if duration.is_some_and(|duration| duration > MAX_OPTION_DURATION) {
            problems.push(
                *key,
                format!(
                    "must be at most {} s (ten years)",
                    MAX_OPTION_DURATION.as_secs()
                ),
            );
        }
    }
}

fn validate_batch(batch: &BatchConfig, problems: &mut Problems) -> BatchSettings {
    for (key, value, example) in [
        ("batch.max_rows", batch.max_rows, "1000"),
        ("batch.max_bytes", batch.max_bytes, "4194304"),
        (
            "batch.max_in_flight_requests",
            batch.max_in_flight_requests,
            "4",
        ),
    ] {
        if value == 0 {
            problems.push(key, format!("must be at least 1, e.g. `{example}`"));
        }
    }
    if batch.max_unacked_rows < batch.max_rows {
        problems.push(
            "batch.max_unacked_rows",
            format!(
                "({}) must be at least batch.max_rows ({}), or a full batch would pause \
                 consumption before it is sent, e.g. `50000`",
                batch.max_unacked_rows, batch.max_rows
            ),
        );
    }
    BatchSettings {
        max_rows: batch.max_rows,
        max_bytes: batch.max_bytes,
        linger: Duration::from_millis(batch.linger_ms),
        max_in_flight_requests: batch.max_in_flight_requests,
        max_unacked_rows: batch.max_unacked_rows,
    }
}

fn validate_limits(limits: &Limits, problems: &mut Problems) {
    if !(1..=MAX_STEP_DEPTH_CAP).contains(&limits.max_step_depth) {
        problems.push(
            "limits.max_step_depth",
            format!(
                "must be between 1 and {MAX_STEP_DEPTH_CAP} (deeper records can overflow a \
                 worker thread's stack while decoding), e.g. `32`"
            ),
        );
    }
    for (key, value, example) in [
        (
            "limits.max_message_bytes",
            limits.max_message_bytes,
            "1048576",
        ),
        ("limits.max_id_chars", limits.max_id_chars, "200"),
        ("limits.max_steps", limits.max_steps, "1000"),
    ] {
        if value == 0 {
            problems.push(key, format!("must be at least 1, e.g. `{example}`"));
        }
    }
}

fn validate_openlayer(
    openlayer: OpenlayerConfig,
    limits: &Limits,
    problems: &mut Problems,
    warnings: &mut Vec<String>,
) -> (Option<SinkSettings>, Option<OpenlayerSettings>) {
    let base_url = validate_base_url(openlayer.base_url.as_deref(), problems, warnings);
    let api_key = read_api_key(openlayer.api_key, openlayer.api_key_file, problems);
    for (key, value, example) in [
        (
            "openlayer.request_timeout_secs",
            openlayer.request_timeout_secs,
            "60",
        ),
        (
            "openlayer.initial_backoff_ms",
            openlayer.initial_backoff_ms,
            "500",
        ),
    ] {
        if value == 0 {
            problems.push(key, format!("must be at least 1, e.g. `{example}`"));
        }
    }
    if openlayer.max_backoff_ms < openlayer.initial_backoff_ms {
        problems.push(
            "openlayer.max_backoff_ms",
            format!(
                "({}) must be at least openlayer.initial_backoff_ms ({}), e.g. `8000`",
                openlayer.max_backoff_ms, openlayer.initial_backoff_ms
            ),
        );
    }
    if openlayer.retry_deadline_secs == Some(0) {
        problems.push(
            "openlayer.retry_deadline_secs",
            "must be at least 1, e.g. `3600`; leave it unset to retry forever",
        );
    }
    let default_pipeline_id = openlayer
        .default_pipeline_id
        .filter(|pipeline_id| !pipeline_id.trim().is_empty());
    match &default_pipeline_id {
        Some(pipeline_id) => {
            let num_chars = pipeline_id.chars().count();
            if num_chars > limits.max_id_chars || pipeline_id.chars().any(char::is_control) {
                problems.push(
                    "openlayer.default_pipeline_id",
                    format!(
                        "must be printable and at most {} characters (limits.max_id_chars), \
                         e.g. an inference pipeline id from the Openlayer app",
                        limits.max_id_chars
                    ),
                );
            }
        }
        None => warnings.push(
            "openlayer.default_pipeline_id is not set (nor OPENLAYER_INFERENCE_PIPELINE_ID): \
             traces without a pipeline_id cannot be routed to Openlayer"
                .to_owned(),
        ),
    }
    let verify_tls = openlayer.verify_tls.unwrap_or(true);
    if !verify_tls {
        warnings.push(
            "openlayer.verify_tls is off: the Openlayer server's certificate is not checked"
                .to_owned(),
        );
    }
    let (Some(base_url), Some((api_key, api_key_source))) = (base_url, api_key) else {
        return (None, None);
    };
    let sink = SinkSettings {
        base_url,
        api_key,
        request_timeout: Duration::from_secs(openlayer.request_timeout_secs),
        initial_backoff: Duration::from_millis(openlayer.initial_backoff_ms),
        max_backoff: Duration::from_millis(openlayer.max_backoff_ms),
        retry_deadline: openlayer.retry_deadline_secs.map(Duration::from_secs),
        verify_tls,
    };
    let settings = OpenlayerSettings {
        default_pipeline_id,
        mark_final_turn: openlayer.mark_final_turn,
        api_key_source,
    };
    (Some(sink), Some(settings))
}

/// The base URL without trailing slashes, or `None` after recording why it is unusable.
fn validate_base_url(
    configured: Option<&str>,
    problems: &mut Problems,
    warnings: &mut Vec<String>,
) -> Option<String> {
    const KEY: &str = "openlayer.base_url";
    let trimmed = configured
        .map(str::trim)
        .filter(|text| !text.is_empty())
        .unwrap_or(DEFAULT_OPENLAYER_BASE_URL)
        .trim_end_matches('/');
    let example = format!("e.g. `{DEFAULT_OPENLAYER_BASE_URL}` or `http://127.0.0.1:8080/v1`");
    let url = match reqwest::Url::parse(trimmed) {
        Ok(url) => url,
        Err(error) => {
            problems.push(
                KEY,
                format!("(or OPENLAYER_BASE_URL) is not a URL ({error}), {example}"),
            );
            return None;
        }
    };
    if !url.username().is_empty() || url.password().is_some() {
        // Not echoed: the credentials would be printed.
        problems.push(
            KEY,
            "must not contain credentials; the API key goes in openlayer.api_key or \
             OPENLAYER_API_KEY",
        );
        return None;
    }
    let is_http = matches!(url.scheme(), "http" | "https");
    if !is_http
        || url.host_str().is_none()
        || url.query().is_some()
        || url.fragment().is_some()
        || !url.path().ends_with("/v1")
    {
        problems.push(
            KEY,
            format!(
                "(or OPENLAYER_BASE_URL) must be an http(s) URL ending in `/v1`, {example} \
                 (got `{trimmed}`)"
            ),
        );
        return None;
    }
    let host = url.host_str().unwrap_or_default();
    let is_loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|address| address.is_loopback());
    if url.scheme() == "http" && !is_loopback {
        warnings.push(format!(
            "openlayer.base_url `{trimmed}` is plain http to another host: the API key travels \
             unencrypted"
        ));
    }
    Some(trimmed.to_owned())
}

/// The API key and where it came from, or `None` after recording why there is none.
fn read_api_key(
    api_key: Option<Secret>,
    api_key_file: Option<PathBuf>,
    problems: &mut Problems,
) -> Option<(Secret, ApiKeySource)> {
    let api_key = api_key.filter(|key| !key.expose().trim().is_empty());
    let (key, source) = match (api_key, api_key_file) {
        (Some(_), Some(_)) => {
            problems.push(
                "openlayer.api_key",
                "and openlayer.api_key_file are both set; set only one",
            );
            return None;
        }
        (Some(key), None) => (Secret::new(key.expose().trim()), ApiKeySource::Value),
        (None, Some(path)) => match std::fs::read_to_string(&path) {
            // The io::Error says why (missing, permissions, not UTF-8), never what the file holds.
            Err(error) => {
                problems.push(
                    "openlayer.api_key_file",
                    format!("cannot be read: `{}`: {error}", path.display()),
                );
                return None;
            }
            Ok(content) if content.trim().is_empty() => {
                problems.push(
                    "openlayer.api_key_file",
                    format!("`{}` is empty; it must hold the API key", path.display()),
                );
                return None;
            }
            Ok(content) => (Secret::new(content.trim()), ApiKeySource::File(path)),
        },
        (None, None) => {
            problems.push(
                "openlayer.api_key",
                "is not set: set OPENLAYER_API_KEY, or openlayer.api_key_file to a file holding \
                 the key, e.g. a Kubernetes Secret mounted at `/etc/sessionizer/openlayer-api-key`",
            );
            return None;
        }
    };
    let printable = key
        .expose()
        .chars()
        .all(|character| character.is_ascii_graphic());
    if !printable {
        let key_path = match &source {
            ApiKeySource::Value => "openlayer.api_key",
            ApiKeySource::File(_) => "openlayer.api_key_file",
        };
        let location = match &source {
            ApiKeySource::Value => String::new(),
            ApiKeySource::File(path) => format!("`{}` ", path.display()),
        };
        problems.push(
            key_path,
            format!(
                "{location}holds a key with spaces or non-printable characters (the value is \
                 not shown); an API key is one word of printable ASCII"
            ),
        );
        return None;
    }
    Some((key, source))
}

fn validate_http(http: &HttpConfig, problems: &mut Problems) -> Option<HttpSettings> {
    if http.liveness_window_secs == 0 {
        problems.push("http.liveness_window_secs", "must be at least 1, e.g. `60`");
    }
    match http.listen.trim().parse::<SocketAddr>() {
        Ok(listen) => Some(HttpSettings {
            listen,
            liveness_window: Duration::from_secs(http.liveness_window_secs),
        }),
        Err(_) => {
            problems.push(
                "http.listen",
                format!(
                    "must be an IP address and port, e.g. `0.0.0.0:9464` or `[::]:9464` (got `{}`)",
                    http.listen
                ),
            );
            None
        }
    }
}

fn validate_log(log: LogConfig, problems: &mut Problems) -> LogSettings {
    if let Err(error) = tracing_subscriber::EnvFilter::try_new(&log.filter) {
        problems.push(
            "log.filter",
            format!("is not a valid filter ({error}), e.g. `info,sessionizer=debug`"),
        );
    }
    LogSettings {
        format: log.format,
        filter: log.filter,
    }
}

/// The timeout relationships a running consumer depends on (STYLE §3).
fn check_timeouts(
    kafka: &KafkaSettings,
    session: &SessionSettings,
    http: Option<&HttpSettings>,
    shutdown: &ShutdownSettings,
    problems: &mut Problems,
) {
    let drain = shutdown.drain_timeout;
    if drain >= kafka.session_timeout {
        problems.push(
            "shutdown.drain_timeout_secs",
            format!(
                "({} s) must be shorter than kafka.session_timeout_ms ({} ms): a replica drains \
                 for up to this long while its partitions are revoked and must not be dropped \
                 from the group meanwhile, e.g. drain_timeout_secs = 20 with \
                 session_timeout_ms = 45000",
                drain.as_secs(),
                kafka.session_timeout.as_millis()
            ),
        );
    }
    if let Some(Ok(max_poll_interval_ms)) = kafka
        .client
        .get("max.poll.interval.ms")
        .map(|text| text.trim().parse::<u64>())
    {
        let max_poll_interval = Duration::from_millis(max_poll_interval_ms);
        if max_poll_interval <= drain || max_poll_interval < kafka.session_timeout {
            problems.push(
                "kafka.client.max.poll.interval.ms",
                format!(
                    "({max_poll_interval_ms} ms) must be longer than shutdown.drain_timeout_secs \
                     ({} s) and at least kafka.session_timeout_ms ({} ms), e.g. `{}` \
                     (librdkafka's default)",
                    drain.as_secs(),
                    kafka.session_timeout.as_millis(),
                    LIBRDKAFKA_MAX_POLL_INTERVAL_MS
                ),
            );
        }
    } else if Duration::from_millis(LIBRDKAFKA_MAX_POLL_INTERVAL_MS) < kafka.session_timeout {
        problems.push(
            "kafka.session_timeout_ms",
            format!(
                "({} ms) must not exceed max.poll.interval.ms ({LIBRDKAFKA_MAX_POLL_INTERVAL_MS} \
                 ms by default); raise kafka.client.max.poll.interval.ms too",
                kafka.session_timeout.as_millis()
            ),
        );
    }
    if let Some(http) = http {
        if http.liveness_window <= drain {
            problems.push(
                "http.liveness_window_secs",
                format!(
                    "({} s) must be longer than shutdown.drain_timeout_secs ({} s): a rebalance \
                     may wait that long without progress, e.g. `60`",
                    http.liveness_window.as_secs(),
                    drain.as_secs()
                ),
            );
        }
        if http.liveness_window <= session.idle_check_interval {
            problems.push(
                "http.liveness_window_secs",
                format!(
                    "({} s) must be longer than session.idle_check_ms ({} ms), the longest an \
                     idle processing loop waits between ticks, e.g. `60`",
                    http.liveness_window.as_secs(),
                    session.idle_check_interval.as_millis()
                ),
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Printing the effective configuration
// ---------------------------------------------------------------------------------------------

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
        SessionizerConfig {
            kafka: KafkaConfig {
                bootstrap_servers: self.kafka.bootstrap_servers.clone(),
                group_id: self.kafka.group_id.clone(),
                topic: self.kafka.topic.clone(),
                dead_letter_topic: self.kafka.dead_letter_topic.clone(),
                sessions_topic: self.kafka.sessions_topic.clone().unwrap_or_default(),
                changelog_topic: self.kafka.changelog_topic.clone().unwrap_or_default(),
                checkpoint_interval_ms: millis(self.kafka.checkpoint_interval),
                schema_registry_url: self.kafka.schema_registry_url.clone().unwrap_or_default(),
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
        }
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
    fn flags_read_like_the_config_crate_booleans() {
        assert_eq!(parse_flag("FALSE"), Some(false));
        assert_eq!(parse_flag("0"), Some(false));
        assert_eq!(parse_flag("yes"), Some(true));
        assert_eq!(parse_flag("maybe"), None);
    }

    #[test]
    fn env_key_paths_follow_the_config_crate() {
        assert_eq!(
            env_key_path("SESSIONIZER__KAFKA__CLIENT__SASL__PASSWORD").as_deref(),
            Some("kafka.client.sasl.password")
        );
        assert_eq!(
            env_key_path("sessionizer__session__gap_secs").as_deref(),
            Some("session.gap_secs")
        );
        assert_eq!(env_key_path("SESSIONIZER_PORT"), None);
        assert_eq!(env_key_path("SESSIONIZERX__A"), None);
    }

    #[test]
    fn toml_strings_escape_quotes_and_controls() {
        assert_eq!(toml_string("a\"b\\c\u{7f}\n"), "\"a\\\"b\\\\c\\u007F\\n\"");
        assert_eq!(toml_key("security.protocol"), "\"security.protocol\"");
        assert_eq!(toml_key("gap_secs"), "gap_secs");
    }
}
