//! Every metric the sessionizer exports, declared in one place with its help text.
//!
//! Names follow Prometheus conventions (`sessionizer_` prefix, base units, `_total` on
//! counters). Labels are bounded sets (`partition`, `reason`, `stage`, `status`, `outcome`):
//! never user, session or inference ids, raw error text or URLs.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Buckets for lags and delays: from 5 ms to 30 minutes, finer below a second, where a
/// healthy pipeline's p99 lies (with 0.25 and 0.5 only, a p99 interpolated between them
/// could be off by 200 ms).
const LAG_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0, 1800.0,
];
/// Buckets for Openlayer request durations.
const REQUEST_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Buckets for session durations: from a minute to a day.
const SESSION_DURATION_BUCKETS: &[f64] = &[
    1.0, 10.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0, 86400.0,
];
/// Buckets for restore durations: an empty changelog takes a fetch, a broker outage minutes.
const RESTORE_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
];
/// Buckets for turns per session.
const SESSION_TURN_BUCKETS: &[f64] =
    &[1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0, 34.0, 55.0, 89.0, 144.0];

/// Handles to every metric; cheap to clone (clones share the values).
#[derive(Debug, Clone)]
pub struct Metrics {
    pub events_consumed: IntCounter,
    pub events_invalid: IntCounterVec,
    pub dead_letters: IntCounterVec,
    pub late_events: IntCounterVec,
    pub passthrough_events: IntCounter,
    /// Copies of a session's recent turns (same inference id), not numbered again.
    pub duplicate_traces: IntCounter,
    /// Traces forwarded to their session's partition, by why they were elsewhere.
    pub repartitioned: IntCounterVec,
    /// Forwards read again (their sender crashed before committing) and skipped.
    pub repartitioned_duplicates: IntCounter,
    /// Traces waiting for the partition's other inputs to catch up (event-time alignment).
    pub alignment_held: IntGauge,
    /// Traces read but not yet handed on, waiting for the other owned partitions to be read as
    /// far (`source::partition_group`).
    pub partition_group_buffered: IntGauge,
    /// Traces applied before the other inputs caught up: waited too long, or too many waited.
    pub alignment_forced: IntCounter,
    /// Times a partition's reading paused because enough of its traces waited.
    pub alignment_throttled: IntCounter,
    /// Owned partitions whose reading is paused for that.
    pub partitions_throttled: IntGauge,
    pub sessions_open: IntGauge,
    pub sessions_opened: IntCounter,
    pub sessions_closed: IntCounterVec,
    pub session_duration: Histogram,
    pub session_turns: Histogram,
    pub summaries_produced: IntCounter,
    /// Rows of closed sessions answered by Openlayer, by outcome (shipped, rejected).
    pub session_rows: IntCounterVec,
    /// Aggregate columns left out of session rows, by reason (wrong_type, overflow).
    pub session_columns_omitted: IntCounterVec,
    pub sessionization_lag: Histogram,
    pub partition_lag: prometheus::GaugeVec,
    pub checkpoint_timestamp: prometheus::GaugeVec,
    pub consumer_lag: IntGaugeVec,
    pub openlayer_requests: IntCounterVec,
    pub openlayer_request_duration: HistogramVec,
    pub openlayer_retries: IntCounterVec,
    pub rows_shipped: IntCounter,
    pub rows_in_flight: IntGauge,
    pub end_to_end_delay: Histogram,
    pub rebalances: IntCounterVec,
    /// Revokes, while running, that gave partitions up before every changelog checkpoint
    /// queued until then was delivered.
    pub handovers_undelivered: IntCounter,
    pub partitions_assigned: IntGauge,
    pub partitions_paused: IntGauge,
    pub backpressure_seconds: prometheus::Counter,
    pub commits: IntCounterVec,
    pub errors: IntCounterVec,
    /// Changelog restore attempts by partition and outcome (restored, retried, failed).
    pub restore_attempts: IntCounterVec,
    /// Changelog records read while restoring, by partition.
    pub restore_records: IntCounterVec,
    /// Time from a partition's assignment to its state being back, by partition.
    pub restore_duration: HistogramVec,
    /// The Collector path (`otel`): messages read from the spans topic.
    pub otel_messages_consumed: IntCounter,
    /// Traces assembled from spans, by completion (quiet, forced).
    pub otel_traces_assembled: IntCounterVec,
    /// Spans read and not assembled nor dead-lettered, by reason (duplicate, shipped_before).
    pub otel_spans_skipped: IntCounterVec,
    pub otel_open_traces: IntGauge,
    pub otel_held_spans: IntGauge,
}

fn counter(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntCounter> {
    let metric = IntCounter::new(name, help)?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let metric = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

fn gauge(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntGauge> {
    let metric = IntGauge::new(name, help)?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: &[f64],
) -> prometheus::Result<Histogram> {
    let metric = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

impl Metrics {
    /// Registers every metric on `registry`.
    ///
    /// # Errors
    /// When a metric is already registered there.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let partition_lag = prometheus::GaugeVec::new(
            Opts::new(
                "sessionizer_partition_lag_seconds",
                "How far behind real time the newest processed record of each owned partition is while records wait (0 when caught up).",
            ),
            &["partition"],
        )?;
        registry.register(Box::new(partition_lag.clone()))?;
        let checkpoint_timestamp = prometheus::GaugeVec::new(
            Opts::new(
                "sessionizer_checkpoint_timestamp_seconds",
                "When (Unix seconds) the state of each owned partition's newest durable changelog checkpoint was cut: a restart replays what came after it.",
            ),
            &["partition"],
        )?;
        registry.register(Box::new(checkpoint_timestamp.clone()))?;
        let consumer_lag = IntGaugeVec::new(
            Opts::new(
                "sessionizer_consumer_lag_records",
                "Records between the fetch high watermark and the next record to process, per owned partition.",
            ),
            &["partition"],
        )?;
        registry.register(Box::new(consumer_lag.clone()))?;
        let openlayer_request_duration = HistogramVec::new(
            HistogramOpts::new(
                "sessionizer_openlayer_request_duration_seconds",
                "Duration of Openlayer data-stream requests, by status.",
            )
            .buckets(REQUEST_BUCKETS.to_vec()),
            &["status"],
        )?;
        registry.register(Box::new(openlayer_request_duration.clone()))?;
        let restore_duration = HistogramVec::new(
            HistogramOpts::new(
                "sessionizer_restore_duration_seconds",
                "Time from a partition's assignment until its session state was read back from the changelog, retries included, by partition.",
            )
            .buckets(RESTORE_BUCKETS.to_vec()),
            &["partition"],
        )?;
        registry.register(Box::new(restore_duration.clone()))?;
        let backpressure_seconds = prometheus::Counter::new(
            "sessionizer_backpressure_seconds_total",
            "Time partitions spent paused because too many rows were unacknowledged.",
        )?;
        registry.register(Box::new(backpressure_seconds.clone()))?;
        Ok(Metrics {
            events_consumed: counter(
                registry,
                "sessionizer_events_consumed_total",
                "Messages read from the traces topic.",
            )?,
            events_invalid: counter_vec(
                registry,
                "sessionizer_events_invalid_total",
                "Messages that could not be decoded or failed validation, by reason.",
                &["reason"],
            )?,
            dead_letters: counter_vec(
                registry,
                "sessionizer_dead_letters_total",
                "Messages and rows written to the dead-letter topic, by stage and reason.",
                &["stage", "reason"],
            )?,
            late_events: counter_vec(
                registry,
                "sessionizer_late_events_total",
                "Traces older than their session's window: joined within grace, or shipped with a late marker.",
                &["outcome"],
            )?,
            passthrough_events: counter(
                registry,
                "sessionizer_passthrough_events_total",
                "Traces without user or session shipped without session enrichment.",
            )?,
            duplicate_traces: counter(
                registry,
                "sessionizer_duplicate_traces_total",
                "Traces carrying the inference id of one of their open session's latest turns (produced again after a crash or a client's retry): no new turn, no row.",
            )?,
            repartitioned: counter_vec(
                registry,
                "sessionizer_traces_repartitioned_total",
                "Traces read in another partition than their session's and forwarded there, by reason (other_partition: keyed by another partitioner or key; no_key).",
                &["reason"],
            )?,
            repartitioned_duplicates: counter(
                registry,
                "sessionizer_repartitioned_duplicates_total",
                "Forwarded traces read a second time (their sender crashed before committing) and skipped.",
            )?,
            alignment_held: gauge(
                registry,
                "sessionizer_alignment_held_traces",
                "Traces waiting for their partition's other inputs (its own traces, forwards from each other partition) to catch up, so sessions are applied in event-time order.",
            )?,
            partition_group_buffered: gauge(
                registry,
                "sessionizer_partition_group_buffered_traces",
                "Traces read from the traces topic, not yet decoded, waiting for the other owned partitions to be read as far so that they are handed on in timestamp order.",
            )?,
            alignment_forced: counter(
                registry,
                "sessionizer_alignment_forced_total",
                "Traces applied before every other input of their partition caught up with them (they waited the maximum, or too many waited); their sessions may be numbered out of event-time order.",
            )?,
            alignment_throttled: counter(
                registry,
                "sessionizer_alignment_throttled_total",
                "Times an owned partition's reading of the traces topic paused because kafka.repartition_max_buffered of its traces waited for the other partitions to catch up (a backlog read at uneven paces).",
            )?,
            partitions_throttled: gauge(
                registry,
                "sessionizer_partitions_throttled",
                "Owned partitions whose reading of the traces topic is paused until the other partitions catch up (event-time alignment).",
            )?,
            sessions_open: gauge(
                registry,
                "sessionizer_sessions_open",
                "Sessions currently open in owned partitions.",
            )?,
            sessions_opened: counter(
                registry,
                "sessionizer_sessions_opened_total",
                "Sessions (or session segments) opened.",
            )?,
            sessions_closed: counter_vec(
                registry,
                "sessionizer_sessions_closed_total",
                "Sessions closed, by reason (gap, idle, max_duration, end_event).",
                &["reason"],
            )?,
            session_duration: histogram(
                registry,
                "sessionizer_session_duration_seconds",
                "Event-time duration of closed sessions.",
                SESSION_DURATION_BUCKETS,
            )?,
            session_turns: histogram(
                registry,
                "sessionizer_session_turns",
                "Turns per closed session.",
                SESSION_TURN_BUCKETS,
            )?,
            summaries_produced: counter(
                registry,
                "sessionizer_session_summaries_produced_total",
                "SessionSummary records produced to the sessions topic.",
            )?,
            session_rows: counter_vec(
                registry,
                "sessionizer_session_rows_total",
                "Rows of closed sessions answered by the sessions pipeline, by outcome (shipped; rejected: dead-lettered with Openlayer's answer).",
                &["outcome"],
            )?,
            session_columns_omitted: counter_vec(
                registry,
                "sessionizer_session_columns_omitted_total",
                "Aggregate columns left out of a session row, by reason (wrong_type: a metadata value of the wrong type; overflow: the sum left its range; too_large: a last value over 1 KiB).",
                &["reason"],
            )?,
            sessionization_lag: histogram(
                registry,
                "sessionizer_sessionization_lag_seconds",
                "Seconds between a trace's Kafka timestamp and its enrichment.",
                LAG_BUCKETS,
            )?,
            partition_lag,
            checkpoint_timestamp,
            consumer_lag,
            openlayer_requests: counter_vec(
                registry,
                "sessionizer_openlayer_requests_total",
                "Openlayer data-stream requests, by HTTP status (\"error\" for no response).",
                &["status"],
            )?,
            openlayer_request_duration,
            openlayer_retries: counter_vec(
                registry,
                "sessionizer_openlayer_retries_total",
                "Openlayer requests retried, by reason.",
                &["reason"],
            )?,
            rows_shipped: counter(
                registry,
                "sessionizer_rows_shipped_total",
                "Rows acknowledged by Openlayer: trace rows and session rows (sessionizer_session_rows_total counts the latter).",
            )?,
            rows_in_flight: gauge(
                registry,
                "sessionizer_rows_in_flight",
                "Messages consumed and not yet settled (row acknowledged by Openlayer or dead-lettered).",
            )?,
            end_to_end_delay: histogram(
                registry,
                "sessionizer_end_to_end_delay_seconds",
                "Seconds between a trace's Kafka timestamp and Openlayer's acknowledgement of its row.",
                LAG_BUCKETS,
            )?,
            rebalances: counter_vec(
                registry,
                "sessionizer_rebalances_total",
                "Consumer group rebalances seen, by kind (assign, revoke).",
                &["kind"],
            )?,
            handovers_undelivered: counter(
                registry,
                "sessionizer_handovers_undelivered_total",
                "Handovers (revokes while running, one per revoke) that gave partitions up before \
                 Kafka confirmed every changelog checkpoint queued until then (waited 5 s): a \
                 later restore of those partitions may read older session state.",
            )?,
            partitions_assigned: gauge(
                registry,
                "sessionizer_partitions_assigned",
                "Partitions of the traces topic this instance owns.",
            )?,
            partitions_paused: gauge(
                registry,
                "sessionizer_partitions_paused",
                "Owned partitions paused for backpressure.",
            )?,
            backpressure_seconds,
            commits: counter_vec(
                registry,
                "sessionizer_commits_total",
                "Offset commits, by outcome.",
                &["outcome"],
            )?,
            errors: counter_vec(
                registry,
                "sessionizer_errors_total",
                "Errors by type and stage (receiving, processing, sending).",
                &["error_type", "stage"],
            )?,
            restore_attempts: counter_vec(
                registry,
                "sessionizer_restore_attempts_total",
                "Attempts at reading a partition's session state from the changelog, by partition and outcome (restored, retried, failed).",
                &["partition", "outcome"],
            )?,
            restore_records: counter_vec(
                registry,
                "sessionizer_restore_records_total",
                "Changelog records read while restoring session state, by partition.",
                &["partition"],
            )?,
            restore_duration,
            otel_messages_consumed: counter(
                registry,
                "sessionizer_otel_messages_consumed_total",
                "Messages read from the OpenTelemetry spans topic (otel.spans_topic).",
            )?,
            otel_traces_assembled: counter_vec(
                registry,
                "sessionizer_otel_traces_assembled_total",
                "Traces assembled from OpenTelemetry spans and produced to the traces topic, by completion (quiet: no span came for otel.quiet_ms after the root; forced: open otel.max_open_secs).",
                &["completion"],
            )?,
            otel_spans_skipped: counter_vec(
                registry,
                "sessionizer_otel_spans_skipped_total",
                "OpenTelemetry spans neither assembled nor dead-lettered, by reason (duplicate: the same span again in an open trace; shipped_before: read again after a restart, its trace already shipped).",
                &["reason"],
            )?,
            otel_open_traces: gauge(
                registry,
                "sessionizer_otel_open_traces",
                "OpenTelemetry traces waiting for their root or for quiet.",
            )?,
            otel_held_spans: gauge(
                registry,
                "sessionizer_otel_held_spans",
                "Spans held in open OpenTelemetry traces (bounded by otel.max_held_spans).",
            )?,
        }
        .with_known_series())
    }

    /// Creates the series whose labels are known in advance at zero: a labelled series only
    /// appears once touched, and dashboards, alerts and `increase()` need it from the start.
    fn with_known_series(self) -> Self {
        for labels in [
            ["kafka", "receiving"],
            ["kafka", "sending"],
            ["changelog", "receiving"],
            ["changelog", "sending"],
            ["encode", "processing"],
        ] {
            self.errors.with_label_values(&labels);
        }
        for outcome in ["stored", "store_failed", "committed", "commit_failed"] {
            self.commits.with_label_values(&[outcome]);
        }
        for kind in ["assign", "revoke"] {
            self.rebalances.with_label_values(&[kind]);
        }
        for outcome in ["joined", "marked"] {
            self.late_events.with_label_values(&[outcome]);
        }
        for reason in ["other_partition", "no_key"] {
            self.repartitioned.with_label_values(&[reason]);
        }
        for reason in ["gap", "idle", "max_duration", "end_event"] {
            self.sessions_closed.with_label_values(&[reason]);
        }
        for outcome in ["shipped", "rejected"] {
            self.session_rows.with_label_values(&[outcome]);
        }
        for reason in ["wrong_type", "overflow", "too_large"] {
            self.session_columns_omitted.with_label_values(&[reason]);
        }
        for reason in RETRY_REASONS {
            self.openlayer_retries.with_label_values(&[reason]);
        }
        self.dead_letters
            .with_label_values(&["sink", "openlayer_rejected"]);
        for completion in ["quiet", "forced"] {
            self.otel_traces_assembled.with_label_values(&[completion]);
        }
        for reason in ["duplicate", "shipped_before"] {
            self.otel_spans_skipped.with_label_values(&[reason]);
        }
        self
    }
}

/// Every `reason` of `sink::retry::RetryAction::Retry`, created at zero so that the retry
/// panel and `OpenlayerRetriesHigh` see the series before the first retry (a test below keeps
/// the list equal to what `RetryAction` returns).
const RETRY_REASONS: [&str; 7] = [
    "request_timeout",
    "conflict",
    "rate_limited",
    "server_error",
    "timeout",
    "connection",
    "interrupted",
];

/// Value of the counter or gauge family `name` in `registry`, summed over its series, or over
/// those whose label `label.0` equals `label.1`. For reports and tests, not the hot path.
pub fn sample_sum(registry: &Registry, name: &str, label: Option<(&str, &str)>) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|family| family.name() == name)
        .flat_map(|family| family.get_metric().iter())
        .filter(|sample| {
            label.is_none_or(|(key, value)| {
                sample
                    .get_label()
                    .iter()
                    .any(|pair| pair.name() == key && pair.value() == value)
            })
        })
        .map(|sample| sample.get_counter().get_value() + sample.get_gauge().get_value())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::RETRY_REASONS;
    use crate::sink::retry::{RetryAction, TransportError};
    use std::collections::BTreeSet;
    use std::time::SystemTime;

    #[test]
    fn precreated_retry_reasons_are_exactly_those_retry_action_returns() {
        let mut reasons = BTreeSet::new();
        for code in 100..=599 {
            let status = reqwest::StatusCode::from_u16(code).expect("valid status code");
            let action = RetryAction::for_response(
                status,
                &reqwest::header::HeaderMap::new(),
                SystemTime::now(),
            );
            if let RetryAction::Retry { reason, .. } = action {
                reasons.insert(reason);
            }
        }
        for error in [
            TransportError::Timeout,
            TransportError::Connect,
            TransportError::Interrupted,
            TransportError::InvalidRequest,
        ] {
            if let RetryAction::Retry { reason, .. } = RetryAction::for_transport_error(error) {
                reasons.insert(reason);
            }
        }
        assert_eq!(reasons, RETRY_REASONS.into_iter().collect::<BTreeSet<_>>());
    }
}
