//! Where finished traces go: the Kafka emitter in production, a JSON printer for debugging,
//! a collector in tests.

use std::io::Write;
use std::sync::{Arc, Mutex, RwLock};
use trace_model::TraceEvent;

/// Receives each finished trace. Implementations must not block: `emit` runs on the request path.
pub trait TraceSink: Send + Sync + 'static {
    fn emit(&self, event: TraceEvent);
}

static GLOBAL_SINK: RwLock<Option<Arc<dyn TraceSink>>> = RwLock::new(None);

/// Sends traces without an explicit sink to `sink` from now on.
pub fn set_global_sink(sink: Arc<dyn TraceSink>) {
    *GLOBAL_SINK
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(sink);
}

/// The sink set by [`set_global_sink`], if any.
pub fn global_sink() -> Option<Arc<dyn TraceSink>> {
    GLOBAL_SINK
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone()
}

/// Keeps every trace in memory; for tests and examples.
#[derive(Debug, Default)]
pub struct CollectingSink {
    events: Mutex<Vec<TraceEvent>>,
}

impl CollectingSink {
    pub fn new() -> Arc<Self> {
        Arc::new(CollectingSink::default())
    }

    /// Takes the traces collected so far.
    pub fn take(&self) -> Vec<TraceEvent> {
        std::mem::take(
            &mut *self
                .events
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }
}

impl TraceSink for CollectingSink {
    fn emit(&self, event: TraceEvent) {
        self.events
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(event);
    }
}

/// Prints each trace as one JSON line, the same JSON the Kafka emitter's JSON encoding sends.
#[derive(Debug)]
pub struct JsonLinesSink<W> {
    out: Mutex<W>,
}

impl<W: Write + Send + 'static> JsonLinesSink<W> {
    pub fn new(out: W) -> Arc<Self> {
        Arc::new(JsonLinesSink {
            out: Mutex::new(out),
        })
    }
}

impl<W: Write + Send + 'static> TraceSink for JsonLinesSink<W> {
    fn emit(&self, event: TraceEvent) {
        let mut line = trace_model::codec::json::encode_trace(&event);
        line.push(b'\n');
        let mut out = self
            .out
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Err(error) = out.write_all(&line) {
            tracing::warn!(%error, "failed to print trace");
        }
    }
}
