//! The assembler against traces split across messages, and against a crash at any point:
//! reading again from the commit point ships every trace, and none shipped before.

use super::assembler::{Assembler, AssemblySettings, Output, Position, Resume, Ticket};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};
use trace_model::Limits;

const QUIET: Duration = Duration::from_millis(50);
const MAX_OPEN: Duration = Duration::from_secs(10);

fn settings() -> AssemblySettings {
    AssemblySettings {
        quiet: QUIET,
        max_open: MAX_OPEN,
        limits: Limits::default(),
    }
}

fn trace_id(trace: u8) -> Vec<u8> {
    let mut id = vec![0; 16];
    id[15] = trace + 1;
    id
}

fn span_id(trace: u8, span: u8) -> Vec<u8> {
    vec![1, 0, 0, 0, 0, 0, trace + 1, span + 1]
}

/// Span `span` of trace `trace`: span 0 is the root, the others its children.
fn span(trace: u8, span: u8) -> Span {
    Span {
        trace_id: trace_id(trace),
        span_id: span_id(trace, span),
        parent_span_id: if span == 0 {
            Vec::new()
        } else {
            span_id(trace, 0)
        },
        name: format!("span {span}"),
        start_time_unix_nano: 1_700_000_000_000_000_000 + u64::from(span) * 1_000_000,
        end_time_unix_nano: 1_700_000_000_000_000_000 + u64::from(span) * 1_000_000 + 500_000,
        attributes: vec![KeyValue {
            key: "session.id".to_owned(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(format!("session-{trace}"))),
            }),
            ..KeyValue::default()
        }],
        ..Span::default()
    }
}

fn request(spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource::default()),
            scope_spans: vec![ScopeSpans {
                spans,
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    }
}

type Shipped = Vec<(Ticket, String)>;
type Refusals = Vec<(Ticket, &'static str)>;

/// The inference ids of shipped traces and the reasons of refusals, with their tickets.
fn split(outputs: Vec<Output>) -> (Shipped, Refusals) {
    let mut traces = Vec::new();
    let mut refused = Vec::new();
    for output in outputs {
        match output {
            Output::Trace { ticket, event, .. } => {
                traces.push((ticket, event.inference_id.clone().unwrap_or_default()));
            }
            Output::Refused { ticket, reason, .. } => refused.push((ticket, reason)),
        }
    }
    (traces, refused)
}

fn id_of(trace: u8) -> String {
    otel_ingest::attributes::hex(&trace_id(trace))
}

#[test]
fn a_trace_split_across_messages_ships_once_quiet_with_all_its_spans() {
    let start = Instant::now();
    let mut assembler = Assembler::new(settings(), Resume::start());
    assert!(
        assembler
            .message(0, request(vec![span(0, 1), span(0, 2)]), start)
            .is_empty()
    );
    assert!(assembler.tick(start + QUIET * 2).is_empty(), "no root yet");
    let root_at = start + QUIET * 3;
    assert!(
        assembler
            .message(1, request(vec![span(0, 0)]), root_at)
            .is_empty()
    );
    assert!(
        assembler.tick(root_at + QUIET / 2).is_empty(),
        "not quiet yet"
    );
    let outputs = assembler.tick(root_at + QUIET);
    let [
        Output::Trace {
            ticket,
            event,
            forced,
            ..
        },
    ] = &outputs[..]
    else {
        panic!("one trace: {outputs:?}");
    };
    assert!(!forced);
    assert_eq!(event.inference_id.as_deref(), Some(id_of(0).as_str()));
    assert_eq!(event.steps.len(), 2);
    assert_eq!(event.session_id.as_deref(), Some("session-0"));
    let ticket = *ticket;
    assert_eq!(assembler.commit_point().map(|(offset, _)| offset), Some(0));
    assembler.settled(ticket);
    assert_eq!(
        assembler.commit_point(),
        Some((
            2,
            Resume {
                before: Position {
                    offset: 2,
                    index: 0
                },
                shipped: BTreeSet::new()
            }
        ))
    );
    assert_eq!(assembler.held_spans(), 0);
}

#[test]
fn a_span_after_completion_is_refused_as_late_and_a_rootless_trace_after_the_wait() {
    let start = Instant::now();
    let mut assembler = Assembler::new(settings(), Resume::start());
    assembler.message(0, request(vec![span(0, 0), span(1, 1)]), start);
    let (shipped, _) = split(assembler.tick(start + QUIET));
    assert_eq!(shipped.len(), 1);
    let outputs = assembler.message(1, request(vec![span(0, 1)]), start + QUIET * 2);
    let (_, refused) = split(outputs);
    assert_eq!(
        refused
            .iter()
            .map(|(_, reason)| *reason)
            .collect::<Vec<_>>(),
        ["otel_span_after_completion"]
    );
    let (_, refused) = split(assembler.tick(start + MAX_OPEN));
    assert_eq!(
        refused
            .iter()
            .map(|(_, reason)| *reason)
            .collect::<Vec<_>>(),
        ["otel_no_root"]
    );
    // Every message waits for its outputs, and only for them.
    assert_eq!(assembler.commit_point().map(|(offset, _)| offset), Some(0));
    for (ticket, _) in shipped {
        assembler.settled(ticket);
    }
    assert_eq!(assembler.commit_point().map(|(offset, _)| offset), Some(0));
}

#[test]
fn a_retried_span_is_counted_not_assembled_twice() {
    let start = Instant::now();
    let mut assembler = Assembler::new(settings(), Resume::start());
    assembler.message(0, request(vec![span(0, 1)]), start);
    assembler.message(1, request(vec![span(0, 1), span(0, 0)]), start);
    let outputs = assembler.tick(start + QUIET);
    let [Output::Trace { event, .. }] = &outputs[..] else {
        panic!("one trace: {outputs:?}");
    };
    assert_eq!(event.steps.len(), 1);
    assert_eq!(assembler.take_skipped().duplicate_spans, 1);
}

#[test]
fn a_trace_past_the_step_limit_is_refused_at_once_and_not_held() {
    let start = Instant::now();
    let limits = Limits {
        max_steps: 2,
        ..Limits::default()
    };
    let mut assembler = Assembler::new(
        AssemblySettings {
            limits,
            ..settings()
        },
        Resume::start(),
    );
    let outputs = assembler.message(0, request((1..6).map(|n| span(0, n)).collect()), start);
    let (_, refused) = split(outputs);
    assert_eq!(
        refused
            .iter()
            .map(|(_, reason)| *reason)
            .collect::<Vec<_>>(),
        ["too_many_steps", "otel_span_after_completion"]
    );
    assert_eq!(assembler.held_spans(), 0);
}

#[test]
fn traces_ship_in_the_order_of_their_roots() {
    let start = Instant::now();
    let mut assembler = Assembler::new(settings(), Resume::start());
    assembler.message(0, request(vec![span(0, 0), span(1, 0)]), start);
    // Trace 0 keeps getting spans: trace 1, complete, waits behind it.
    assembler.message(1, request(vec![span(0, 1)]), start + QUIET);
    assert!(assembler.tick(start + QUIET).is_empty());
    let (shipped, _) = split(assembler.tick(start + QUIET * 2));
    assert_eq!(
        shipped.into_iter().map(|(_, id)| id).collect::<Vec<_>>(),
        [id_of(0), id_of(1)]
    );
}

#[test]
fn a_trace_acknowledged_before_an_earlier_rooted_one_is_not_shipped_again() {
    let start = Instant::now();
    let mut first = Assembler::new(settings(), Resume::start());
    first.message(0, request(vec![span(0, 0)]), start);
    first.message(1, request(vec![span(1, 0)]), start);
    let (shipped, _) = split(first.tick(start + QUIET));
    let [(_, ref trace_0), (ticket_1, ref trace_1)] = shipped[..] else {
        panic!("two traces: {shipped:?}");
    };
    assert_eq!((trace_0, trace_1), (&id_of(0), &id_of(1)));
    // Kafka acknowledges trace 1 first; then the process stops.
    first.settled(ticket_1);
    let commit = first.commit_point().expect("a commit point");
    let mut second = Assembler::new(settings(), commit.1);
    for offset in commit.0..2 {
        let trace = u8::try_from(offset).expect("a small offset");
        second.message(offset, request(vec![span(trace, 0)]), start);
    }
    let (shipped, _) = split(second.tick(start + QUIET));
    assert_eq!(
        shipped.into_iter().map(|(_, id)| id).collect::<Vec<_>>(),
        [id_of(0)]
    );
}

/// A generated log: each trace's spans split over up to three messages, root in the last,
/// traces interleaved.
fn log() -> impl Strategy<Value = Vec<Vec<(u8, u8)>>> {
    prop::collection::vec((1u8..4, 1u8..4), 1..12)
        .prop_flat_map(|traces| {
            let mut parts: Vec<Vec<(u8, u8)>> = Vec::new();
            for (trace, (children, splits)) in traces.iter().enumerate() {
                let trace = u8::try_from(trace).expect("few traces");
                let mut spans: Vec<(u8, u8)> = (1..=*children).map(|n| (trace, n)).collect();
                spans.push((trace, 0));
                let chunk = spans.len().div_ceil(usize::from(*splits));
                parts.extend(spans.chunks(chunk).map(<[(u8, u8)]>::to_vec));
            }
            let num_parts = parts.len();
            (Just(parts), prop::collection::vec(any::<u8>(), num_parts))
        })
        .prop_map(|(parts, keys)| {
            // Interleave, keeping each trace's own parts in order (the root last).
            let mut queues: BTreeMap<u8, VecDeque<Vec<(u8, u8)>>> = BTreeMap::new();
            for part in parts {
                queues.entry(part[0].0).or_default().push_back(part);
            }
            let mut messages = Vec::new();
            for key in keys {
                let live: Vec<u8> = queues
                    .iter()
                    .filter(|(_, queue)| !queue.is_empty())
                    .map(|(trace, _)| *trace)
                    .collect();
                let trace = live[usize::from(key) % live.len()];
                let part = queues.get_mut(&trace).and_then(VecDeque::pop_front);
                messages.push(part.expect("a part"));
            }
            messages
        })
}

/// Runs the log from `from` with ticks between messages; Kafka acknowledges `acked_per_step`
/// outputs at a time, in any order (`picks`); stops after `stop_after` messages (a crash).
/// Returns the traces Kafka acknowledged, those sent but not acknowledged, and the last
/// commit point.
fn run(
    messages: &[Vec<(u8, u8)>],
    (from, resume): (i64, Resume),
    stop_after: usize,
    (acked_per_step, picks): (usize, &[usize]),
) -> (Vec<String>, Vec<String>, Option<(i64, Resume)>) {
    let start = Instant::now();
    let mut assembler = Assembler::new(settings(), resume);
    let mut unacked: VecDeque<(Ticket, String)> = VecDeque::new();
    let mut acked = Vec::new();
    let mut commit = None;
    let mut now = start;
    let offsets = usize::try_from(from).expect("an offset")..messages.len();
    for (step, offset) in offsets.take(stop_after).enumerate() {
        now = start + QUIET * u32::try_from(step).expect("few steps") / 2;
        let spans = messages[offset]
            .iter()
            .map(|(trace, n)| span(*trace, *n))
            .collect();
        let outputs = assembler.message(offset as i64, request(spans), now);
        let (traces, refused) = split(outputs);
        assert!(refused.is_empty(), "refused: {refused:?}");
        unacked.extend(traces);
        let (traces, refused) = split(assembler.tick(now));
        assert!(refused.is_empty(), "refused: {refused:?}");
        unacked.extend(traces);
        for pick in picks.iter().cycle().skip(step).take(acked_per_step) {
            if unacked.is_empty() {
                break;
            }
            let (ticket, id) = unacked.remove(pick % unacked.len()).expect("an output");
            assembler.settled(ticket);
            acked.push(id);
        }
        commit = assembler.commit_point();
    }
    if stop_after >= messages.len() {
        // No crash: everything completes and is acknowledged.
        let (traces, refused) = split(assembler.tick(now + MAX_OPEN));
        assert!(refused.is_empty(), "refused: {refused:?}");
        unacked.extend(traces);
        for (ticket, id) in unacked.drain(..) {
            assembler.settled(ticket);
            acked.push(id);
        }
        commit = assembler.commit_point();
        assert_eq!(assembler.held_spans(), 0);
    }
    (
        acked,
        unacked.into_iter().map(|(_, id)| id).collect(),
        commit,
    )
}

proptest! {
    #[test]
    fn reading_again_from_the_commit_point_ships_every_trace_and_none_twice(
        messages in log(),
        crash_at in 0usize..40,
        acked_per_step in 0usize..3,
        picks in prop::collection::vec(0usize..4, 1..8),
    ) {
        let num_traces = messages.iter().flatten().map(|(trace, _)| *trace).max().map_or(0, |max| max + 1);
        let start = (0, Resume::start());
        let (before, in_flight, commit) =
            run(&messages, start.clone(), crash_at, (acked_per_step, &picks));
        let (after, left, _) = run(&messages, commit.unwrap_or(start), usize::MAX, (1, &[0]));
        prop_assert!(left.is_empty());
        let mut shipped = before.clone();
        shipped.extend(after.iter().cloned());
        for trace in 0..num_traces {
            let id = id_of(trace);
            let times = shipped.iter().filter(|shipped| **shipped == id).count();
            prop_assert!(times >= 1, "trace {trace} lost");
            // Only a trace Kafka may have had without acknowledging it goes twice, however
            // the acknowledgements came.
            if times > 1 {
                prop_assert!(in_flight.contains(&id), "trace {trace} shipped {times} times");
            }
        }
    }
}
