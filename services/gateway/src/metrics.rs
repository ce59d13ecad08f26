//! Every metric the gateway exports, declared in one place with its help text.
//!
//! Prometheus naming: `gateway_` prefix, base units, `_total` on counters. Labels are bounded
//! sets (`route`, `status`, `kind`, `reason`): never pipeline, user, session or inference ids.

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

/// Buckets for request and produce durations: Kafka acknowledgements take milliseconds, a
/// broker outage up to the produce timeout.
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The routes requests are counted under.
pub const ROUTES: &[&str] = &["data_stream", "row_update", "otlp_traces", "other"];

/// Handles to every metric; cheap to clone (clones share the values).
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Answered requests by route and HTTP status.
    pub requests: IntCounterVec,
    /// Time to answer, by route.
    pub request_duration: HistogramVec,
    /// Requests being handled right now.
    pub requests_in_flight: IntGauge,
    /// Records Kafka acknowledged, by kind (`trace`, `row_update`, `otel_trace`, `otel_spans`).
    pub rows_produced: IntCounterVec,
    /// Time from handing a request's records to the producer until Kafka acknowledged all.
    pub produce_duration: Histogram,
    /// Records handed to the producer and not yet acknowledged.
    pub rows_in_flight: IntGauge,
    /// Requests whose records could not be produced, by reason: answered 503, or, answered
    /// already (`http.answer_after = "queued"`), lost.
    pub produce_errors: IntCounterVec,
    /// Records answered 200 before Kafka's acknowledgement that Kafka then refused.
    pub rows_lost: prometheus::IntCounter,
    /// 1 while the broker answered the last readiness check or delivery, else 0.
    pub broker_reachable: IntGauge,
    /// OTLP spans refused (answered as partial success), by reason.
    pub otlp_spans_rejected: IntCounterVec,
    /// Request body bytes held (`http.max_body_bytes_in_flight` bounds it).
    pub body_bytes_in_flight: IntGauge,
    /// Requests answered 503 before their body was read, the body bytes bound being reached.
    pub requests_shed: prometheus::IntCounter,
}

impl Metrics {
    /// Registers every metric on `registry`, series with known labels created at zero.
    ///
    /// # Errors
    /// When a metric is already registered there.
    pub fn try_new(registry: &Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "gateway_requests_total",
                "Requests answered, by route and HTTP status.",
            ),
            &["route", "status"],
        )?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "gateway_request_duration_seconds",
                "Time to answer a request, by route.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["route"],
        )?;
        let requests_in_flight =
            IntGauge::new("gateway_requests_in_flight", "Requests being handled.")?;
        let rows_produced = IntCounterVec::new(
            Opts::new(
                "gateway_rows_produced_total",
                "Records Kafka acknowledged, by kind.",
            ),
            &["kind"],
        )?;
        let produce_duration = Histogram::with_opts(
            HistogramOpts::new(
                "gateway_produce_duration_seconds",
                "Time from producing a request's records until Kafka acknowledged every one.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
        )?;
        let rows_in_flight = IntGauge::new(
            "gateway_rows_in_flight",
            "Records handed to the producer and not yet acknowledged by Kafka.",
        )?;
        let produce_errors = IntCounterVec::new(
            Opts::new(
                "gateway_produce_errors_total",
                "Requests whose records could not be produced, by reason: answered 503, or lost when answered once queued.",
            ),
            &["reason"],
        )?;
        let rows_lost = prometheus::IntCounter::new(
            "gateway_rows_lost_total",
            "Records answered 200 once queued (http.answer_after = queued) that Kafka did not acknowledge.",
        )?;
        let broker_reachable = IntGauge::new(
            "gateway_broker_reachable",
            "1 while the broker answered the last readiness check or delivery, else 0.",
        )?;
        let otlp_spans_rejected = IntCounterVec::new(
            Opts::new(
                "gateway_otlp_spans_rejected_total",
                "OTLP spans refused and reported back as partial success, by reason.",
            ),
            &["reason"],
        )?;
        let body_bytes_in_flight = IntGauge::new(
            "gateway_body_bytes_in_flight",
            "Request body bytes held (length, or the maximum body size when unknown or compressed).",
        )?;
        let requests_shed = prometheus::IntCounter::new(
            "gateway_requests_shed_total",
            "Requests answered 503 before their body was read: http.max_body_bytes_in_flight was reached.",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(requests_in_flight.clone()))?;
        registry.register(Box::new(rows_produced.clone()))?;
        registry.register(Box::new(produce_duration.clone()))?;
        registry.register(Box::new(rows_in_flight.clone()))?;
        registry.register(Box::new(produce_errors.clone()))?;
        registry.register(Box::new(rows_lost.clone()))?;
        registry.register(Box::new(broker_reachable.clone()))?;
        registry.register(Box::new(otlp_spans_rejected.clone()))?;
        registry.register(Box::new(body_bytes_in_flight.clone()))?;
        registry.register(Box::new(requests_shed.clone()))?;
        for route in ROUTES {
            let _zero = request_duration.with_label_values(&[route]);
        }
        for kind in ["trace", "row_update", "otel_trace", "otel_spans"] {
            let _zero = rows_produced.with_label_values(&[kind]);
        }
        for reason in crate::publish::PublishError::REASONS {
            let _zero = produce_errors.with_label_values(&[reason]);
        }
        Ok(Metrics {
            requests,
            request_duration,
            requests_in_flight,
            rows_produced,
            produce_duration,
            rows_in_flight,
            produce_errors,
            rows_lost,
            broker_reachable,
            otlp_spans_rejected,
            body_bytes_in_flight,
            requests_shed,
        })
    }
}
