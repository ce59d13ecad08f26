//! Validation of the configuration: every option checked, and the relationships between
//! options (timeouts above all), with every problem reported at once, each naming its key and
//! showing an example. The `[kafka]` and `[openlayer]` sections, the largest, have files of
//! their own, and so do the Schema Registry options of `[kafka]`.

mod kafka;
mod openlayer;
mod otel;
mod schema_registry;
mod session_rows;

use super::MAX_STEP_DEPTH_CAP;
use super::error::ConfigError;
use super::model::{BatchConfig, HttpConfig, SessionConfig, SessionizerConfig};
use super::validated::{
    HttpSettings, LogSettings, SessionSettings, ShutdownSettings, ValidatedConfig,
};
use crate::batch::BatchSettings;
use crate::source::kafka::KafkaSettings;
use kafka::validate_kafka;
use openlayer::validate_openlayer;
use otel::validate_otel;
use service_kit::logging::LogConfig;
use service_kit::problems::Problems;
use session_rows::validate_session_rows;
use std::net::SocketAddr;
use std::time::Duration;
use trace_model::Limits;

/// librdkafka's default `max.poll.interval.ms`.
const LIBRDKAFKA_MAX_POLL_INTERVAL_MS: u64 = 300_000;

impl SessionizerConfig {
    /// Checks every option and their relationships, reads `openlayer.api_key_file` and the
    /// Schema Registry's secret files, and returns what the runtime uses.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] listing every problem found; each names its key and what was
    /// expected. Messages never contain the API key or a registry secret (nor an unreadable
    /// secret file's content).
    pub fn validate(self) -> Result<ValidatedConfig, ConfigError> {
        let mut problems = Problems::default();
        let mut warnings = Vec::new();
        let kafka = validate_kafka(self.kafka, &mut problems, &mut warnings);
        let session = validate_session(&self.session, &mut problems);
        let batch = validate_batch(&self.batch, &mut problems);
        validate_limits(&self.limits, &mut problems);
        let session_rows = validate_session_rows(
            &self.openlayer,
            self.session.aggregates.clone(),
            (&self.limits, kafka.changelog_topic.is_some()),
            &mut problems,
            &mut warnings,
        );
        let (sink, openlayer) =
            validate_openlayer(self.openlayer, &self.limits, &mut problems, &mut warnings);
        let otel = validate_otel(self.otel, &kafka, &self.limits, &mut problems);
        let http = validate_http(&self.http, &mut problems);
        let log = validate_log(self.log, &mut problems);
        let shutdown = ShutdownSettings {
            drain_timeout: Duration::from_secs(self.shutdown.drain_timeout_secs),
        };
        problems.require_at_least_one(
            "shutdown.drain_timeout_secs",
            self.shutdown.drain_timeout_secs,
            "20",
        );
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
            (Some(sink), Some(openlayer), Some(http)) if problems.is_empty() => {
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
                    otel,
                    session_rows,
                    warnings,
                })
            }
            _ => Err(ConfigError::Invalid(problems.into_vec())),
        }
    }
}

fn validate_session(session: &SessionConfig, problems: &mut Problems) -> SessionSettings {
    problems.require_at_least_one("session.gap_secs", session.gap_secs, "1800");
    problems.require_at_least_one(
        "session.max_duration_secs",
        session.max_duration_secs,
        "86400",
    );
    problems.require_at_least_one("session.idle_check_ms", session.idle_check_ms, "1000");
    problems.require_at_least_one("session.user_gap_secs", session.user_gap_secs, "1800");
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
    problems.require_at_least_one("batch.max_rows", batch.max_rows, "1000");
    problems.require_at_least_one("batch.max_bytes", batch.max_bytes, "4194304");
    problems.require_at_least_one(
        "batch.max_in_flight_requests",
        batch.max_in_flight_requests,
        "4",
    );
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
    problems.require_at_least_one(
        "limits.max_message_bytes",
        limits.max_message_bytes,
        "1048576",
    );
    problems.require_at_least_one("limits.max_id_chars", limits.max_id_chars, "200");
    problems.require_at_least_one("limits.max_steps", limits.max_steps, "1000");
}

fn validate_http(http: &HttpConfig, problems: &mut Problems) -> Option<HttpSettings> {
    problems.require_at_least_one("http.liveness_window_secs", http.liveness_window_secs, "60");
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
