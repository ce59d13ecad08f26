//! Where traces go: the global sink unless the root names its own; the JSON lines printer
//! writes one decodable line per trace.

use std::io::Write;
use std::sync::{Arc, Mutex};
use trace_emit::{CollectingSink, JsonLinesSink, global_sink, set_global_sink, trace};
use trace_model::TraceEvent;

/// A writer whose bytes the test can read back after handing it to the sink.
#[derive(Clone, Default)]
struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("buffer lock").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// The only test in this binary that touches the process-wide sink.
#[tokio::test]
async fn root_sink_wins_over_the_global_sink_and_step_sinks_are_ignored() {
    assert!(global_sink().is_none());
    let global = CollectingSink::new();
    set_global_sink(global.clone());
    let explicit = CollectingSink::new();
    let ignored = CollectingSink::new();

    trace("to_global")
        .run(async {
            trace("step_with_sink")
                .sink(ignored.clone())
                .run(async { 1 })
                .await
        })
        .await;
    trace("to_explicit")
        .sink(explicit.clone())
        .run(async {})
        .await;

    let global_events = global.take();
    assert_eq!(global_events.len(), 1);
    assert_eq!(global_events[0].name, "to_global");
    assert_eq!(global_events[0].steps.len(), 1);
    let explicit_events = explicit.take();
    assert_eq!(explicit_events.len(), 1);
    assert_eq!(explicit_events[0].name, "to_explicit");
    assert!(ignored.take().is_empty());
}

#[tokio::test]
async fn json_lines_sink_prints_one_decodable_line_per_trace() {
    let buffer = SharedBuffer::default();
    let sink = JsonLinesSink::new(buffer.clone());
    for turn in 0..2 {
        trace("turn")
            .input("turn", turn)
            .sink(sink.clone())
            .run(async move { trace("step").run(async move { turn + 1 }).await })
            .await;
    }

    let printed = String::from_utf8(buffer.0.lock().expect("buffer lock").clone()).expect("UTF-8");
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines.len(), 2);
    assert!(printed.ends_with('\n'));
    for (turn, line) in lines.iter().enumerate() {
        let event: TraceEvent = serde_json::from_str(line).expect("a TraceEvent per line");
        assert_eq!(event.inputs["turn"], serde_json::json!(turn));
        assert_eq!(event.steps.len(), 1);
        assert_eq!(event.output, serde_json::json!(turn + 1));
    }
}
