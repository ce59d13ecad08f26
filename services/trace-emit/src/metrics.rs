//! Metrics of the producer helpers, registered on the caller's Prometheus registry.

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

/// Emitter counters; cheap to clone (clones share the values).
#[derive(Debug, Clone)]
pub(crate) struct EmitterMetrics {
    pub(crate) queued: IntCounter,
    pub(crate) delivered: IntCounter,
    pub(crate) delivery_errors: IntCounter,
    pub(crate) dropped_queue_full: IntCounter,
    pub(crate) dropped_closed: IntCounter,
    pub(crate) dropped_encode: IntCounter,
    pub(crate) dropped_refused: IntCounter,
}

impl EmitterMetrics {
    pub(crate) fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let queued = IntCounter::new(
            "trace_emit_events_queued_total",
            "Traces accepted into the producer's buffer.",
        )?;
        let delivered = IntCounter::new(
            "trace_emit_events_delivered_total",
            "Traces acknowledged by Kafka.",
        )?;
        let delivery_errors = IntCounter::new(
            "trace_emit_delivery_errors_total",
            "Traces Kafka did not acknowledge (after librdkafka's own retries).",
        )?;
        let dropped = IntCounterVec::new(
            Opts::new(
                "trace_emit_events_dropped_total",
                "Traces dropped before reaching Kafka, by reason.",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(queued.clone()))?;
        registry.register(Box::new(delivered.clone()))?;
        registry.register(Box::new(delivery_errors.clone()))?;
        registry.register(Box::new(dropped.clone()))?;
        Ok(EmitterMetrics {
            queued,
            delivered,
            delivery_errors,
            dropped_queue_full: dropped.with_label_values(&["queue_full"]),
            dropped_closed: dropped.with_label_values(&["closed"]),
            dropped_encode: dropped.with_label_values(&["encode_error"]),
            dropped_refused: dropped.with_label_values(&["refused"]),
        })
    }
}
