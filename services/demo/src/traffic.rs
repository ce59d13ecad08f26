//! What the demo's producers send: the scripted chats through the helpers, a few traces that
//! arrive late (their event time is minutes old, so they are shipped with a late marker) and
//! a few poison messages a careless producer might send (the sessionizer must dead-letter
//! them and keep going).

use crate::config::TRACES;
use crate::workload::{self, Emitted, WorkloadSettings};
use anyhow::Context as _;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::sync::Arc;
use std::time::Duration;
use trace_emit::{Emitter, EmitterConfig, set_global_sink};
use trace_model::TraceEvent;

/// What was produced, for the end-of-run checks and the report.
#[derive(Debug, Clone, Copy)]
pub struct Produced {
    pub workload: Emitted,
    pub num_late: usize,
    pub num_poison: usize,
    /// Traces an OpenTelemetry-instrumented service exported to the gateway (`otel`).
    pub num_otel: usize,
}

impl Produced {
    /// Rows the sessionizer must ship: every good trace, late and OpenTelemetry ones included.
    pub fn expected_rows(&self) -> f64 {
        (self.workload.traces + self.num_late + self.num_otel) as f64
    }
}

/// Sends the whole demo traffic and waits until the producers have delivered it.
///
/// # Errors
/// When a producer cannot start or a message cannot be delivered.
pub async fn produce(bootstrap: &str, settings: WorkloadSettings) -> anyhow::Result<Produced> {
    // The emitter's own metrics are not part of the demo's report.
    let emitter_registry = prometheus::Registry::new();
    let emitter = Emitter::try_new(EmitterConfig::new(bootstrap, TRACES), &emitter_registry)
        .context("starting the trace emitter")?;
    set_global_sink(emitter.clone());
    let raw: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .context("creating a raw producer")?;

    let workload = workload::run(&emitter, settings).await;
    let num_late = emit_late_traces(&emitter);
    let poison = poison_messages();
    for (_, payload) in &poison {
        raw.send(
            FutureRecord::<(), _>::to(TRACES).payload(payload),
            Duration::from_secs(5),
        )
        .await
        .map_err(|(error, _)| error)
        .context("producing a poison message")?;
    }
    let emitter_for_flush = emitter.clone();
    tokio::task::spawn_blocking(move || emitter_for_flush.flush(Duration::from_secs(10)))
        .await?
        .context("flushing traces")?;
    Ok(Produced {
        workload,
        num_late,
        num_poison: poison.len(),
        num_otel: 0,
    })
}

/// Poison messages a careless producer might send.
fn poison_messages() -> Vec<(&'static str, Vec<u8>)> {
    let mut truncated = trace_model::encode(
        &TraceEvent::new("cut-short", 0),
        trace_model::Encoding::Avro,
    )
    .unwrap_or_default();
    truncated.truncate(truncated.len() / 2);
    vec![
        ("truncated avro", truncated),
        ("wrong magic bytes", b"\x42\x42 not a trace".to_vec()),
        (
            "json of the wrong shape",
            br#"{"name": 42, "timestamp_ms": "yesterday"}"#.to_vec(),
        ),
    ]
}

/// Traces of the first user's first session, stamped five minutes ago: late for the partition.
fn emit_late_traces(emitter: &Arc<Emitter>) -> usize {
    let now_ms = unix_now_ms();
    let mut count = 0;
    for minutes in [5, 6] {
        let mut event = TraceEvent::new("chat", now_ms - minutes * 60_000);
        event.inference_id = Some(format!("late-{minutes}"));
        event.user_id = Some("user-01".to_owned());
        event.session_id = Some("chat-01-travel-1".to_owned());
        event.inputs.insert(
            "user_message".to_owned(),
            "(sent from a phone that was offline)".into(),
        );
        event.output = "Answered when the phone came back online.".into();
        event.latency_ms = Some(850.0);
        if emitter.emit(event) {
            count += 1;
        }
    }
    count
}

fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}
