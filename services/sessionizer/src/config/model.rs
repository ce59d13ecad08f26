//! The file model of the configuration: what users write, one struct per TOML section, and the
//! defaults of every option with where each value comes from.

use super::REDACTED;
use crate::secret::Secret;
use crate::session_row::Aggregate;
use serde::{Deserialize, Serialize, Serializer};
use service_kit::client_properties::ClientProperties;
use service_kit::logging::LogConfig;
use std::collections::BTreeMap;
use std::path::PathBuf;
use trace_model::Limits;

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
    /// `[otel]`: OpenTelemetry spans read from the Collector's Kafka exporter.
    pub otel: OtelConfig,
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
    /// Topic, co-partitioned with `topic`, through which traces read in another partition than
    /// their session's (`murmur2(session id, else user id)`, Java's default partitioner) are
    /// forwarded there, so a session's traces meet whatever partitioner their producers used.
    /// Unset: `<group_id>-repartition` (it belongs to the group, as Kafka Streams names its
    /// repartition topics after the application); an empty string sessionizes traces where
    /// they are read.
    #[serde(default)]
    pub repartition_topic: Option<String>,
    /// With repartitioning, how long a trace waits at most for the other partitions'
    /// forwards to catch up with it, so that a session's traces are applied in event-time
    /// order after a backlog. A partition whose owner is gone holds the others back this long.
    pub repartition_max_wait_ms: u64,
    /// With repartitioning, how many of a partition's own traces may wait for the other
    /// partitions before its reading pauses until they catch up (as Kafka Streams'
    /// `buffered.records.per.partition`): bounds the memory of a backlog read unevenly.
    pub repartition_max_buffered: usize,
    /// How often session state is written to `changelog_topic` and acknowledged offsets are
    /// stored for the next commit.
    pub checkpoint_interval_ms: u64,
    /// Confluent Schema Registry (`http(s)://host:port`) that resolves the schema ids of
    /// Confluent-framed traces; empty: such traces are dead-lettered as `unknown_schema_id`.
    /// Avro single-object and JSON traces need no registry.
    pub schema_registry_url: String,
    /// User for HTTP basic authentication to the registry, with `schema_registry_password`:
    /// Confluent's `basic.auth.user.info` is `username:password`; on Confluent Cloud, the
    /// Schema Registry API key.
    pub schema_registry_username: Option<String>,
    /// Password for basic authentication (on Confluent Cloud, the API key's secret). Prefer
    /// `schema_registry_password_file` or the variable to writing it in a file that is not a
    /// secret.
    #[serde(serialize_with = "serialize_secret")]
    pub schema_registry_password: Option<Secret>,
    /// File holding the password (surrounding whitespace ignored), e.g. a Kubernetes Secret
    /// mounted as a volume. Read at start; set either this or `schema_registry_password`.
    #[serde(serialize_with = "serialize_path")]
    pub schema_registry_password_file: Option<PathBuf>,
    /// Token sent as `Authorization: Bearer` (Confluent's `bearer.auth.token`) instead of
    /// basic authentication. Read once at start: a token that expires needs a restart.
    #[serde(serialize_with = "serialize_secret")]
    pub schema_registry_bearer_token: Option<Secret>,
    /// File holding the bearer token (surrounding whitespace ignored), e.g. a mounted
    /// Kubernetes Secret. Read at start; set either this or `schema_registry_bearer_token`.
    #[serde(serialize_with = "serialize_path")]
    pub schema_registry_bearer_token_file: Option<PathBuf>,
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
    /// Session row columns computed from trace metadata, e.g.
    /// `{ column = "tool_calls", key = "tool_calls", op = "sum" }`; `op` is `sum`, `count`,
    /// `last` or `max`. Used with `openlayer.sessions_pipeline_id`.
    pub aggregates: Vec<Aggregate>,
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
    /// Inference pipeline that gets one row per closed session (turns, duration, tokens, cost,
    /// why it closed), for session-level tests in Openlayer. Unset or empty: no session rows.
    pub sessions_pipeline_id: Option<String>,
    /// Sessions pipeline per traces pipeline, when several traces pipelines need their own,
    /// e.g. `{ "pipeline-a" = "sessions-a" }`; others use `sessions_pipeline_id`.
    pub sessions_pipelines: BTreeMap<String, String>,
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

/// `[otel]`: OpenTelemetry spans read from the topic the Collector's Kafka exporter writes
/// (`otlp_proto` or `otlp_json`, keyed by trace id or not), assembled into traces and produced
/// to `kafka.topic` keyed by session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OtelConfig {
    /// Topic of `ExportTraceServiceRequest` messages (the Collector's default is
    /// `otlp_spans`); an empty string turns the Collector path off.
    pub spans_topic: String,
    /// Topic through which spans are routed by trace id, so a trace's spans meet in one
    /// partition however the Collector partitioned them. Unset: `<group_id>-otel-repartition`.
    #[serde(default)]
    pub repartition_topic: Option<String>,
    /// Compacted topic, co-partitioned with `repartition_topic`, keeping each partition's
    /// commit point (which traces are shipped), so a restart or rebalance ships each trace
    /// once. Unset: `<group_id>-otel-state`.
    #[serde(default)]
    pub state_topic: Option<String>,
    /// A trace whose root span has come is complete once no span of it came for this long.
    pub quiet_ms: u64,
    /// The longest a trace is held open: it then ships as it is (counted as forced), or, with
    /// no root span, its spans are dead-lettered as `otel_no_root`.
    pub max_open_secs: u64,
    /// Spans held in open traces at most, per replica; reading pauses at the bound until
    /// traces complete.
    pub max_held_spans: usize,
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
// Long enough for a partition's owner to be heard of after a restart (markers go out every
// 50-100 ms while behind, statistics every 2 s), short enough that a dead owner stalls little.
const fn default_repartition_max_wait_ms() -> u64 {
    5_000
}
// `batch.max_unacked_rows`'s default: a partition pauses where its waiting traces used to be
// forced out of order. A pause discards what librdkafka fetched ahead: at 20,000, two
// instances of one partition each, 25,000 traces behind, ran at 19,000-41,000 traces/s
// against 45,000-67,000 (the one read first paused again and again).
const fn default_repartition_max_buffered() -> usize {
    50_000
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
            repartition_topic: None,
            repartition_max_wait_ms: default_repartition_max_wait_ms(),
            repartition_max_buffered: default_repartition_max_buffered(),
            checkpoint_interval_ms: default_checkpoint_interval_ms(),
            schema_registry_url: String::new(),
            schema_registry_username: None,
            schema_registry_password: None,
            schema_registry_password_file: None,
            schema_registry_bearer_token: None,
            schema_registry_bearer_token_file: None,
            session_timeout_ms: default_session_timeout_ms(),
            client: ClientProperties::default(),
        }
    }
}

// Ten Collector batch timeouts (200 ms): a trace's spans exported in the next batches still
// meet.
const fn default_otel_quiet_ms() -> u64 {
    2_000
}
// Long enough for an agent's run; short enough that an abandoned trace's memory comes back.
const fn default_otel_max_open_secs() -> u64 {
    60
}
// About 140 MB of held GenAI spans (1.4 KB each decoded, docs/performance.md).
const fn default_otel_max_held_spans() -> usize {
    100_000
}

impl Default for OtelConfig {
    fn default() -> Self {
        OtelConfig {
            spans_topic: String::new(),
            repartition_topic: None,
            state_topic: None,
            quiet_ms: default_otel_quiet_ms(),
            max_open_secs: default_otel_max_open_secs(),
            max_held_spans: default_otel_max_held_spans(),
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
            aggregates: Vec::new(),
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
            sessions_pipeline_id: None,
            sessions_pipelines: BTreeMap::new(),
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
