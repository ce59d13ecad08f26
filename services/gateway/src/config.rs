//! Configuration of the gateway: what users write, how it is loaded, and the checked form the
//! runtime sees.
//!
//! Same conventions as the sessionizer: one struct per TOML section with every field
//! documented (`docs/configuration.md` repeats these docs), loaded as built-in defaults < the
//! TOML file < `GATEWAY__SECTION__KEY` environment variables, unknown keys refused, and
//! [`GatewayConfig::validate`] turning it into a [`ValidatedConfig`] or listing every problem
//! with its key path. Client keys are [`Secret`]s: never printed, in errors neither. The
//! `kafka.client` passthrough ([`ClientProperties`]), the problem list and the `[log]` section
//! ([`LogConfig`]) are the sessionizer's too, from `service_kit`.

use config::{Config, Environment, File, FileFormat};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
pub use service_kit::client_properties::ClientProperties;
pub use service_kit::logging::{LogConfig, LogFormat};
pub use service_kit::problems::Problem;
use service_kit::problems::{Problems, bullet_list};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;
use trace_model::Limits;
use trace_model::secret::Secret;

/// Prefix of the environment variables that set options: `GATEWAY__SECTION__KEY`.
pub const ENV_PREFIX: &str = "GATEWAY";
/// Separator between the prefix, the section and the key of those variables.
pub const ENV_SEPARATOR: &str = "__";
/// How secrets are shown wherever the configuration is printed.
const REDACTED: &str = "**redacted**";
/// Kafka's longest legal topic name.
const MAX_TOPIC_CHARS: usize = 249;

/// The whole configuration as written: TOML file, `GATEWAY__*` variables and defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// `[http]`: the Openlayer-compatible API the SDKs talk to.
    pub http: HttpConfig,
    /// `[ops]`: `/metrics`, `/healthz`, `/readyz`, on their own port.
    pub ops: OpsConfig,
    /// `[auth]`: the bearer keys clients must present.
    pub auth: AuthConfig,
    /// `[kafka]`: where rows are produced.
    pub kafka: KafkaConfig,
    /// `[limits]`: bounds every row must respect, as the sessionizer applies them; a row
    /// that breaks one is refused with 400 instead of being dead-lettered later.
    pub limits: Limits,
    /// `[log]`: what is logged and how.
    pub log: LogConfig,
    /// `[shutdown]`: how long a stopping replica may take.
    pub shutdown: ShutdownConfig,
}

/// `[http]`: the Openlayer-compatible API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address and port of the API; SDKs set `OPENLAYER_BASE_URL=http://<host>:<port>/v1`.
    pub listen: String,
    /// Largest request body, in bytes; larger requests are answered 413.
    pub max_body_bytes: usize,
    /// Request body bytes held at once, over all requests (a body of unknown length or gzip
    /// counts as `max_body_bytes`); beyond it new requests are answered 503 at once, before
    /// their body is read, so concurrent large requests cannot exhaust memory.
    pub max_body_bytes_in_flight: usize,
    /// `Retry-After` sent with 503 when Kafka is slow or down, in seconds: the SDK waits this
    /// long before its own retry.
    pub retry_after_secs: u64,
    /// Rows produced and not yet acknowledged by Kafka, over all requests; beyond it new
    /// requests are answered 503 at once instead of queueing without bound.
    pub max_rows_in_flight: usize,
    /// Recently produced rows whose partition key is remembered, so that a later row update
    /// (`PUT .../rows?inferenceId=`) goes to the same partition as its row, after it.
    pub update_key_cache_entries: usize,
    /// When a request is answered 200: `"acknowledged"`, once Kafka acknowledged all its
    /// rows (nothing answered 200 is ever lost; the SDK retries what was not), or
    /// `"queued"`, once they are queued in the producer (the SDK waits for no broker, but a
    /// replica that dies with rows queued loses them, as do rows Kafka refuses before a
    /// failure is reported; after one, requests wait for their acknowledgement until one
    /// succeeds; see docs/operations.md).
    pub answer_after: AnswerAfter,
}

/// When a request is answered 200 (`http.answer_after`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerAfter {
    /// Once Kafka acknowledged every row of the request.
    #[default]
    Acknowledged,
    /// Once every row is queued in the producer; Kafka's acknowledgement is awaited behind
    /// the answer, and rows it refuses then are counted as lost.
    Queued,
}

impl AnswerAfter {
    /// The producer's `linger.ms`: none while requests wait for their acknowledgement, which
    /// a linger would add to; librdkafka's default when nobody waits, so that rows share
    /// produce requests (a fraction of the CPU per row at one row per request).
    pub fn linger(self) -> Duration {
        match self {
            AnswerAfter::Acknowledged => Duration::ZERO,
            AnswerAfter::Queued => Duration::from_millis(5),
        }
    }
}

/// `[ops]`: the operations endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpsConfig {
    /// Address and port serving `/metrics`, `/healthz` and `/readyz`.
    pub listen: String,
    /// How often the broker is asked for the topic's metadata (`gateway_broker_reachable`);
    /// while it does not answer, requests get 503 with `Retry-After` at once.
    pub readiness_check_ms: u64,
}

/// `[auth]`: the bearer keys clients must present.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Accepted keys (`Authorization: Bearer <key>`). In the environment, comma-separated:
    /// `GATEWAY__AUTH__API_KEYS=key-a,key-b`. Prefer `api_keys_file`.
    #[serde(
        serialize_with = "serialize_secrets",
        deserialize_with = "deserialize_keys"
    )]
    pub api_keys: Vec<Secret>,
    /// File holding accepted keys, one per line (blank lines and surrounding whitespace
    /// ignored), e.g. a Kubernetes Secret mounted as a volume. Read at start.
    pub api_keys_file: Option<PathBuf>,
}

/// `[kafka]`: where rows are produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Brokers to bootstrap from, comma-separated `host:port`.
    pub bootstrap_servers: String,
    /// The traces topic the sessionizer reads.
    pub topic: String,
    /// OTLP/HTTP spans go here as they come, one message per trace and request keyed by trace
    /// id, for the sessionizer to assemble (its `otel.spans_topic`): a trace whose spans come
    /// in several export requests is then whole. Empty: each request's traces are assembled
    /// here from that request's spans alone.
    pub spans_topic: String,
    /// Longest wait for Kafka to acknowledge a request's rows (librdkafka
    /// `message.timeout.ms`); after it the request is answered 503 and the SDK retries.
    pub produce_timeout_ms: u64,
    /// Further librdkafka properties (TLS, SASL, ...) passed through verbatim and applied
    /// last. In environment variables write each dot as `__`:
    /// `GATEWAY__KAFKA__CLIENT__SASL__PASSWORD`.
    pub client: ClientProperties,
}

/// `[shutdown]`: how long a stopping replica may take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// After SIGTERM `/readyz` fails at once; requests keep being served for this long so
    /// the Service stops routing here before the listener closes.
    pub unready_delay_secs: u64,
    /// Then: longest wait for open requests to finish and Kafka to acknowledge their rows.
    /// Keep `unready_delay_secs + drain_timeout_secs` below the pod's grace period.
    pub drain_timeout_secs: u64,
}

// Defaults, with where each value comes from.

// An unprivileged port commonly used for HTTP APIs in pods.
fn default_http_listen() -> String {
    "0.0.0.0:8080".to_owned()
}
// The sessionizer's default request size (`batch.max_bytes`); the SDK sends one trace per request.
const fn default_max_body_bytes() -> usize {
    4 * 1024 * 1024
}
// Eight maximum-size bodies (32 MiB): thousands of the SDK's one-trace requests; their
// parsed form, a few times the bytes for real traffic, fits the Deployment's 256 MiB limit.
const fn default_max_body_bytes_in_flight() -> usize {
    8 * default_max_body_bytes()
}
// Short enough that the SDK's default two retries span a broker leader election.
const fn default_retry_after_secs() -> u64 {
    2
}
// Bounded memory (rows are a few KiB) while hiding Kafka's latency for many concurrent requests.
const fn default_max_rows_in_flight() -> usize {
    10_000
}
// Minutes of traffic at a few hundred rows per second; ~100 bytes per entry.
const fn default_update_key_cache_entries() -> usize {
    100_000
}
// Next to the sessionizer's 9464, in the range registered for Prometheus exporters.
fn default_ops_listen() -> String {
    "0.0.0.0:9465".to_owned()
}
// A readiness probe runs every 10 s by default; a fresher answer than that costs nothing.
const fn default_readiness_check_ms() -> u64 {
    2_000
}
// Kafka's conventional listener on the local machine.
fn default_bootstrap_servers() -> String {
    "localhost:9092".to_owned()
}
// The sessionizer's and the producer helpers' default topic.
fn default_topic() -> String {
    "llm-traces".to_owned()
}
// Well inside the SDK's 60 s request timeout, long enough for a leader election.
const fn default_produce_timeout_ms() -> u64 {
    10_000
}
// Endpoints of a terminating pod are removed within a few seconds.
const fn default_unready_delay_secs() -> u64 {
    5
}
// With the unready delay, inside Kubernetes' default 30 s grace period.
const fn default_drain_timeout_secs() -> u64 {
    20
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: default_http_listen(),
            max_body_bytes: default_max_body_bytes(),
            max_body_bytes_in_flight: default_max_body_bytes_in_flight(),
            retry_after_secs: default_retry_after_secs(),
            max_rows_in_flight: default_max_rows_in_flight(),
            update_key_cache_entries: default_update_key_cache_entries(),
            answer_after: AnswerAfter::default(),
        }
    }
}

impl Default for OpsConfig {
    fn default() -> Self {
        OpsConfig {
            listen: default_ops_listen(),
            readiness_check_ms: default_readiness_check_ms(),
        }
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: default_bootstrap_servers(),
            topic: default_topic(),
            spans_topic: String::new(),
            produce_timeout_ms: default_produce_timeout_ms(),
            client: ClientProperties::default(),
        }
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            unready_delay_secs: default_unready_delay_secs(),
            drain_timeout_secs: default_drain_timeout_secs(),
        }
    }
}

fn serialize_secrets<S: Serializer>(secrets: &[Secret], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(secrets.iter().map(|_| REDACTED))
}

/// Keys as a list (TOML) or as one comma-separated string (the environment).
fn deserialize_keys<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Secret>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Keys {
        List(Vec<String>),
        CommaSeparated(String),
    }
    let keys = match Keys::deserialize(deserializer)? {
        Keys::List(keys) => keys,
        Keys::CommaSeparated(text) => text.split(',').map(str::to_owned).collect(),
    };
    Ok(keys
        .into_iter()
        .map(|key| key.trim().to_owned())
        .filter(|key| !key.is_empty())
        .map(Secret::new)
        .collect())
}

/// Why the configuration cannot be used.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file is missing or not TOML, a key is unknown or a value has the wrong type; the
    /// message names the key.
    #[error(transparent)]
    Load(#[from] config::ConfigError),
    /// Values out of range or inconsistent; every problem found is listed.
    #[error("invalid configuration:\n{}", bullet_list(.0))]
    Invalid(Vec<Problem>),
}

/// The configuration the runtime runs with.
#[derive(Debug, Clone)]
pub struct ValidatedConfig {
    pub listen: SocketAddr,
    pub ops_listen: SocketAddr,
    pub max_body_bytes: usize,
    pub max_body_bytes_in_flight: usize,
    pub retry_after: Duration,
    pub max_rows_in_flight: usize,
    pub update_key_cache_entries: usize,
    pub answer_after: AnswerAfter,
    pub readiness_check: Duration,
    /// Every accepted key, from `auth.api_keys` and `auth.api_keys_file`.
    pub api_keys: Vec<Secret>,
    pub kafka: KafkaSettings,
    pub limits: Limits,
    pub log: LogConfig,
    pub unready_delay: Duration,
    pub drain_timeout: Duration,
}

/// What the producer is built from.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    pub bootstrap_servers: String,
    pub topic: String,
    /// `kafka.spans_topic`, when set.
    pub spans_topic: Option<String>,
    pub produce_timeout: Duration,
    /// librdkafka `linger.ms`, from `http.answer_after` ([`AnswerAfter::linger`]).
    pub linger: Duration,
    /// librdkafka passthrough applied last; `Debug` redacts secret values.
    pub client: ClientProperties,
}

impl GatewayConfig {
    /// Loads defaults < the TOML file at `path` (if any) < `GATEWAY__*` variables in `env`
    /// (the process environment in production, a map in tests).
    ///
    /// # Errors
    /// [`ConfigError::Load`] naming the key for a missing file, an unknown key or a wrong type.
    pub fn load(path: Option<&Path>, env: HashMap<String, String>) -> Result<Self, ConfigError> {
        let mut builder = Config::builder();
        if let Some(path) = path {
            builder = builder.add_source(File::new(&path.to_string_lossy(), FileFormat::Toml));
        }
        let environment = Environment::with_prefix(ENV_PREFIX)
            .separator(ENV_SEPARATOR)
            // No `try_parsing`: it turns digit-only text into numbers, so a SASL username or
            // password such as `007` would lose its text; numbers and booleans parse from
            // strings without it, and `auth.api_keys` splits its own commas.
            .ignore_empty(true)
            .source(Some(env.into_iter().collect()));
        let loaded = builder.add_source(environment).build()?;
        Ok(loaded.try_deserialize()?)
    }

    /// Checks every value and reads the key file.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] listing every problem with its key.
    pub fn validate(&self) -> Result<ValidatedConfig, ConfigError> {
        let mut problems = Problems::default();
        let listen = parse_address("http.listen", &self.http.listen, &mut problems);
        let ops_listen = parse_address("ops.listen", &self.ops.listen, &mut problems);
        problems.require_at_least_one("http.max_body_bytes", self.http.max_body_bytes, "4194304");
        if self.http.max_body_bytes_in_flight < self.http.max_body_bytes {
            problems.push(
                "http.max_body_bytes_in_flight",
                "must be at least http.max_body_bytes, or no request of the largest size could \
                 ever be served (default: 8 times it)",
            );
        }
        problems.require_at_least_one(
            "http.max_rows_in_flight",
            self.http.max_rows_in_flight,
            "10000",
        );
        problems.require_at_least_one(
            "ops.readiness_check_ms",
            self.ops.readiness_check_ms,
            "2000",
        );
        let kafka = validate_kafka(&self.kafka, self.http.answer_after, &mut problems);
        if self.limits.max_id_chars == 0 || self.limits.max_message_bytes == 0 {
            problems.push(
                "limits",
                "max_id_chars and max_message_bytes must be at least 1",
            );
        }
        let api_keys = read_api_keys(&self.auth, &mut problems);
        let (Some(listen), Some(ops_listen), true) = (listen, ops_listen, problems.is_empty())
        else {
            return Err(ConfigError::Invalid(problems.into_vec()));
        };
        Ok(ValidatedConfig {
            listen,
            ops_listen,
            max_body_bytes: self.http.max_body_bytes,
            max_body_bytes_in_flight: self.http.max_body_bytes_in_flight,
            retry_after: Duration::from_secs(self.http.retry_after_secs),
            max_rows_in_flight: self.http.max_rows_in_flight,
            update_key_cache_entries: self.http.update_key_cache_entries,
            answer_after: self.http.answer_after,
            readiness_check: Duration::from_millis(self.ops.readiness_check_ms),
            api_keys,
            kafka,
            limits: self.limits,
            log: self.log.clone(),
            unready_delay: Duration::from_secs(self.shutdown.unready_delay_secs),
            drain_timeout: Duration::from_secs(self.shutdown.drain_timeout_secs),
        })
    }
}

fn parse_address(key: &str, text: &str, problems: &mut Problems) -> Option<SocketAddr> {
    let parsed = text.parse().ok();
    if parsed.is_none() {
        problems.push(
            key,
            format!("must be an address and port, e.g. `0.0.0.0:8080`, got `{text}`"),
        );
    }
    parsed
}

fn validate_kafka(
    kafka: &KafkaConfig,
    answer_after: AnswerAfter,
    problems: &mut Problems,
) -> KafkaSettings {
    if kafka.bootstrap_servers.trim().is_empty() {
        problems.push(
            "kafka.bootstrap_servers",
            "must not be empty, e.g. `kafka-0.kafka:9092`",
        );
    }
    if !is_topic_name(&kafka.topic) {
        problems.push(
            "kafka.topic",
            format!(
                "must be a Kafka topic name (letters, digits, `.`, `_`, `-`; at most {MAX_TOPIC_CHARS}), e.g. `llm-traces`, got `{}`",
                kafka.topic
            ),
        );
    }
    let spans_topic = &kafka.spans_topic;
    if !spans_topic.is_empty() && !is_topic_name(spans_topic) {
        problems.push(
            "kafka.spans_topic",
            format!(
                "must be empty or a Kafka topic name (letters, digits, `.`, `_`, `-`; at most {MAX_TOPIC_CHARS}), e.g. `otlp_spans`, got `{spans_topic}`"
            ),
        );
    } else if !spans_topic.is_empty() && *spans_topic == kafka.topic {
        problems.push(
            "kafka.spans_topic",
            format!(
                "must differ from kafka.topic (`{spans_topic}`): spans are assembled into the traces that topic holds"
            ),
        );
    }
    problems.require_at_least_one(
        "kafka.produce_timeout_ms",
        kafka.produce_timeout_ms,
        "10000",
    );
    KafkaSettings {
        bootstrap_servers: kafka.bootstrap_servers.clone(),
        topic: kafka.topic.clone(),
        spans_topic: (!spans_topic.is_empty()).then(|| spans_topic.clone()),
        produce_timeout: Duration::from_millis(kafka.produce_timeout_ms),
        linger: answer_after.linger(),
        client: kafka.client.clone(),
    }
}

fn is_topic_name(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= MAX_TOPIC_CHARS
        && topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Every accepted key, from `auth.api_keys` and `auth.api_keys_file`.
fn read_api_keys(auth: &AuthConfig, problems: &mut Problems) -> Vec<Secret> {
    let mut api_keys: Vec<Secret> = auth
        .api_keys
        .iter()
        .filter(|key| !key.expose().trim().is_empty())
        .map(|key| Secret::new(key.expose().trim()))
        .collect();
    if let Some(path) = &auth.api_keys_file {
        match std::fs::read_to_string(path) {
            Ok(text) => api_keys.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|line| !line.is_empty())
                    .map(Secret::new),
            ),
            Err(error) => {
                problems.push(
                    "auth.api_keys_file",
                    format!("cannot be read ({}): {error}", path.display()),
                );
                // The unreadable file is the problem to fix, not a missing key.
                return api_keys;
            }
        }
    }
    if api_keys.is_empty() {
        problems.push(
            "auth.api_keys",
            "no client key configured: set auth.api_keys_file (e.g. `/etc/gateway/keys`) or auth.api_keys",
        );
    }
    api_keys
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect()
    }

    #[test]
    fn environment_overrides_defaults_and_lists_keys() {
        let config = GatewayConfig::load(
            None,
            env(&[
                ("GATEWAY__AUTH__API_KEYS", "key-a,key-b"),
                ("GATEWAY__KAFKA__TOPIC", "traces-x"),
                ("GATEWAY__KAFKA__CLIENT__SASL__PASSWORD", "hunter2"),
                ("GATEWAY__KAFKA__CLIENT__SASL__USERNAME", "007"),
                // The property operations.md suggests, five dots deep.
                (
                    "GATEWAY__KAFKA__CLIENT__MAX__IN__FLIGHT__REQUESTS__PER__CONNECTION",
                    "1",
                ),
                ("GATEWAY__HTTP__MAX_BODY_BYTES", "1024"),
            ]),
        )
        .expect("loads");
        let validated = config.validate().expect("valid");
        let keys: Vec<&str> = validated.api_keys.iter().map(Secret::expose).collect();
        assert_eq!(keys, ["key-a", "key-b"]);
        assert_eq!(validated.kafka.topic, "traces-x");
        assert_eq!(validated.max_body_bytes, 1024);
        assert_eq!(validated.kafka.client.get("sasl.password"), Some("hunter2"));
        // Digit-only text stays text: a SASL username `007` is not the number 7.
        assert_eq!(validated.kafka.client.get("sasl.username"), Some("007"));
        assert_eq!(
            validated
                .kafka
                .client
                .get("max.in.flight.requests.per.connection"),
            Some("1")
        );
        let shown = format!(
            "{validated:?} {}",
            serde_json::to_string(&config).expect("serializes")
        );
        assert!(
            !shown.contains("hunter2") && !shown.contains("key-a"),
            "{shown}"
        );
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_the_key() {
        let unknown = GatewayConfig::load(None, env(&[("GATEWAY__KAFKA__TOPICS", "x")]))
            .expect_err("unknown key");
        assert!(unknown.to_string().contains("topics"), "{unknown}");
        let wrong = GatewayConfig::load(None, env(&[("GATEWAY__HTTP__MAX_BODY_BYTES", "lots")]))
            .expect_err("wrong type");
        assert!(wrong.to_string().contains("http.max_body_bytes"), "{wrong}");
        let answer = GatewayConfig::load(None, env(&[("GATEWAY__HTTP__ANSWER_AFTER", "sent")]))
            .expect_err("no such answer");
        assert!(answer.to_string().contains("http.answer_after"), "{answer}");
    }

    #[test]
    fn answering_once_queued_lets_the_producer_linger() {
        let mut config = GatewayConfig::default();
        config.auth.api_keys = vec![Secret::new("key")];
        let acknowledged = config.validate().expect("valid");
        assert_eq!(acknowledged.answer_after, AnswerAfter::Acknowledged);
        assert_eq!(acknowledged.kafka.linger, Duration::ZERO);
        let queued = GatewayConfig::load(None, env(&[("GATEWAY__HTTP__ANSWER_AFTER", "queued")]))
            .expect("loads");
        let mut queued_config = queued;
        queued_config.auth.api_keys = vec![Secret::new("key")];
        let queued = queued_config.validate().expect("valid");
        assert_eq!(queued.answer_after, AnswerAfter::Queued);
        assert_eq!(queued.kafka.linger, Duration::from_millis(5));
    }

    #[test]
    fn validation_lists_every_problem_by_key_without_secrets() {
        let mut config = GatewayConfig::default();
        config.http.listen = "nowhere".into();
        config.kafka.topic = "bad topic".into();
        config.kafka.spans_topic = "spans?".into();
        let error = config.validate().expect_err("invalid");
        let keys: Vec<String> = match &error {
            ConfigError::Invalid(problems) => problems.iter().map(|p| p.key.clone()).collect(),
            other => panic!("{other}"),
        };
        assert_eq!(
            keys,
            [
                "http.listen",
                "kafka.topic",
                "kafka.spans_topic",
                "auth.api_keys"
            ]
        );
    }

    #[test]
    fn the_spans_topic_is_off_by_default_and_not_the_traces_topic() {
        let mut config = GatewayConfig::default();
        config.auth.api_keys = vec![Secret::new("key")];
        assert_eq!(config.validate().expect("valid").kafka.spans_topic, None);
        config.kafka.spans_topic = "otlp_spans".into();
        assert_eq!(
            config
                .validate()
                .expect("valid")
                .kafka
                .spans_topic
                .as_deref(),
            Some("otlp_spans")
        );
        config.kafka.spans_topic = config.kafka.topic.clone();
        let error = config.validate().expect_err("the traces topic");
        assert!(error.to_string().contains("kafka.spans_topic"), "{error}");
    }

    #[test]
    fn reads_keys_from_a_mounted_file() {
        let path = std::env::temp_dir().join(format!("gateway-keys-{}", std::process::id()));
        std::fs::write(&path, "  key-one \n\nkey-two\n").expect("write");
        let mut config = GatewayConfig::default();
        config.auth.api_keys_file = Some(path.clone());
        let validated = config.validate().expect("valid");
        let _removed = std::fs::remove_file(&path);
        let keys: Vec<&str> = validated.api_keys.iter().map(Secret::expose).collect();
        assert_eq!(keys, ["key-one", "key-two"]);
    }
}
