//! Assembly of the spans read from one partition of the OpenTelemetry spans topic into traces:
//! pure state, no IO and no clock (the time comes with each input).
//!
//! The Collector's Kafka exporter writes one `ExportTraceServiceRequest` per batch, so a
//! trace's spans may come in several messages: children usually first, the root (which ends
//! last) in a later batch. A trace is complete when its root has come and no span of it has
//! come for `quiet`, or when it has been open for `max_open` (forced). A trace that never
//! gets a root is refused after `max_open`. Spans of a trace completed a moment ago are
//! refused as late, never dropped.
//!
//! Completed traces go out in the order of their roots' positions (offset, then the root's
//! index among the message's spans), and Kafka acknowledges them in about that order, so what
//! was shipped is every rooted trace before a position plus a few after it ([`Resume`]). The
//! partition's commit point is that, with the lowest offset still holding spans of an
//! unshipped trace. Reading again from that offset with the [`Resume`] skips the traces
//! shipped already: a restart or a rebalance ships each trace once.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use otel_ingest::SpanRef;
use otel_ingest::attributes::hex;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use trace_model::{Limits, TraceEvent};

/// Where a root span was read: its message's offset and its index among the message's spans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub offset: i64,
    pub index: u32,
}

impl Position {
    /// Before every position: nothing was shipped.
    pub const START: Position = Position {
        offset: i64::MIN,
        index: 0,
    };
}

/// Which rooted traces were shipped: every one before `before`, and those rooted at `shipped`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resume {
    pub before: Position,
    pub shipped: BTreeSet<Position>,
}

impl Resume {
    /// Nothing was shipped.
    pub fn start() -> Self {
        Resume {
            before: Position::START,
            shipped: BTreeSet::new(),
        }
    }

    fn covers(&self, root: Position) -> bool {
        root < self.before || self.shipped.contains(&root)
    }
}

impl Default for Position {
    fn default() -> Self {
        Position::START
    }
}

#[derive(Debug, Clone)]
pub struct AssemblySettings {
    /// A rooted trace is complete once no span of it came for this long.
    pub quiet: Duration,
    /// The longest a trace stays open; a rootless one is then refused.
    pub max_open: Duration,
    pub limits: Limits,
}

/// Settles the messages behind one output once Kafka has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ticket(u64);

/// What the partition's spans became.
#[derive(Debug)]
pub enum Output {
    /// A complete trace, for the traces topic.
    Trace {
        ticket: Ticket,
        /// The first message holding its spans.
        read_at: i64,
        event: Box<TraceEvent>,
        /// Opened by the wait bound, not by quiet.
        forced: bool,
    },
    /// Spans that make no trace, for the dead-letter topic.
    Refused {
        ticket: Ticket,
        /// The first message holding them, for the dead letter's `source.offset`.
        read_at: i64,
        reason: &'static str,
        message: String,
        spans: ExportTraceServiceRequest,
    },
}

/// Counts of what the assembler decided without an output.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Skipped {
    /// Spans of a trace shipped before the last commit point (read again after a restart).
    pub shipped_before: usize,
    /// Spans sent twice (the same span id in one open trace): a producer's retry.
    pub duplicate_spans: usize,
}

#[derive(Debug)]
struct Held {
    span: Span,
    resource: Arc<Resource>,
    scope: Option<Arc<InstrumentationScope>>,
}

impl Held {
    fn as_ref(&self) -> SpanRef<'_> {
        SpanRef {
            span: &self.span,
            resource: &self.resource.attributes,
            scope: self.scope.as_deref(),
        }
    }
}

#[derive(Debug)]
struct Open {
    spans: Vec<Held>,
    span_ids: HashSet<Vec<u8>>,
    /// The messages holding its spans, each once.
    offsets: Vec<i64>,
    root: Option<Position>,
    /// The root span's start (Unix ms): the trace's timestamp.
    root_start_ms: i64,
    first_seen: Instant,
    last_seen: Instant,
}

#[derive(Debug)]
struct InFlight {
    offsets: Vec<i64>,
    root: Option<Position>,
}

/// One partition's open traces and the messages they hold.
#[derive(Debug)]
pub struct Assembler {
    settings: AssemblySettings,
    /// The traces shipped before the commit point this partition was read again from.
    resume: Resume,
    /// Roots of traces Kafka acknowledged, at or after the point before which all are.
    acked_roots: BTreeSet<Position>,
    open: HashMap<String, Open>,
    /// Open traces with a root, by the root's position: they ship in this order.
    by_root: BTreeMap<Position, String>,
    /// Outputs Kafka has not acknowledged yet.
    in_flight: HashMap<Ticket, InFlight>,
    in_flight_roots: BTreeMap<Position, Ticket>,
    /// Messages still holding spans of an unshipped trace (or an unacknowledged output), and
    /// how many.
    pending: BTreeMap<i64, u32>,
    next_offset: Option<i64>,
    /// Traces completed lately: a span of theirs arriving now is late (or, for a trace
    /// shipped before the commit point, `true`, one read again).
    completed: HashMap<String, (Instant, bool)>,
    completed_order: VecDeque<(Instant, String)>,
    held_spans: usize,
    next_ticket: u64,
    skipped: Skipped,
}

impl Assembler {
    /// A partition read from its commit point, after `resume` was shipped.
    pub fn new(settings: AssemblySettings, resume: Resume) -> Self {
        Assembler {
            settings,
            resume,
            acked_roots: BTreeSet::new(),
            open: HashMap::new(),
            by_root: BTreeMap::new(),
            in_flight: HashMap::new(),
            in_flight_roots: BTreeMap::new(),
            pending: BTreeMap::new(),
            next_offset: None,
            completed: HashMap::new(),
            completed_order: VecDeque::new(),
            held_spans: 0,
            next_ticket: 0,
            skipped: Skipped::default(),
        }
    }

    /// Spans held in open traces.
    pub fn held_spans(&self) -> usize {
        self.held_spans
    }

    pub fn open_traces(&self) -> usize {
        self.open.len()
    }

    /// The earliest timestamp (root start, Unix ms) of the open traces that have their root:
    /// they complete soon, and a trace that started later must not be shipped before them.
    pub fn oldest_open_ms(&self) -> Option<i64> {
        self.by_root
            .values()
            .filter_map(|trace_id| self.open.get(trace_id))
            .map(|open| open.root_start_ms)
            .min()
    }

    /// Takes the counts gathered since the last call.
    pub fn take_skipped(&mut self) -> Skipped {
        std::mem::take(&mut self.skipped)
    }

    /// The message at `offset` holds no spans (a marker).
    pub fn skip(&mut self, offset: i64) {
        self.consumed(offset);
    }

    /// The message at `offset` could not be decoded: it is dead-lettered whole, and settles
    /// with the ticket.
    pub fn undecodable(&mut self, offset: i64) -> Ticket {
        self.consumed(offset);
        self.ticket_for(offset)
    }

    /// The spans of the message at `offset`.
    pub fn message(
        &mut self,
        offset: i64,
        request: ExportTraceServiceRequest,
        now: Instant,
    ) -> Vec<Output> {
        self.consumed(offset);
        let mut outputs = Vec::new();
        // Spans refused at once, by reason, kept in the request's order.
        let mut refused: BTreeMap<&'static str, Vec<Held>> = BTreeMap::new();
        let mut index = 0u32;
        for resource_spans in request.resource_spans {
            let resource = Arc::new(resource_spans.resource.unwrap_or_default());
            for scope_spans in resource_spans.scope_spans {
                let scope = scope_spans.scope.map(Arc::new);
                for span in scope_spans.spans {
                    let position = Position { offset, index };
                    index = index.saturating_add(1);
                    let held = Held {
                        span,
                        resource: resource.clone(),
                        scope: scope.clone(),
                    };
                    if let Some(reason) = self.add(held, position, now, &mut refused) {
                        outputs.push(reason);
                    }
                }
            }
        }
        for (reason, spans) in refused {
            let message = match reason {
                TRACE_ID => "spans without a valid trace id (16 bytes, not all zero)".to_owned(),
                _ => format!(
                    "spans of a trace completed less than {:?} ago",
                    self.settings.max_open
                ),
            };
            let ticket = self.ticket_for(offset);
            outputs.push(Output::Refused {
                ticket,
                read_at: offset,
                reason,
                message,
                spans: request_of(spans),
            });
        }
        outputs
    }

    /// Files one span; returns a refusal that cannot wait for the end of the message (a trace
    /// past the step limit).
    fn add(
        &mut self,
        held: Held,
        position: Position,
        now: Instant,
        refused: &mut BTreeMap<&'static str, Vec<Held>>,
    ) -> Option<Output> {
        if !valid_id(&held.span.trace_id, 16) {
            refused.entry(TRACE_ID).or_default().push(held);
            return None;
        }
        let trace_id = hex(&held.span.trace_id);
        match self.completed.get(&trace_id) {
            Some((_, true)) => {
                self.skipped.shipped_before += 1;
                return None;
            }
            Some((_, false)) => {
                refused.entry(LATE).or_default().push(held);
                return None;
            }
            None => {}
        }
        let is_root = !valid_id(&held.span.parent_span_id, 8);
        let open = self.open.entry(trace_id.clone()).or_insert_with(|| Open {
            spans: Vec::new(),
            span_ids: HashSet::new(),
            offsets: Vec::new(),
            root: None,
            root_start_ms: 0,
            first_seen: now,
            last_seen: now,
        });
        if !open.span_ids.insert(held.span.span_id.clone()) {
            // A producer's retry; an invalid span id (empty) is refused by the assembly.
            if valid_id(&held.span.span_id, 8) {
                self.skipped.duplicate_spans += 1;
                return None;
            }
        }
        open.last_seen = now;
        if open.offsets.last() != Some(&position.offset) {
            open.offsets.push(position.offset);
            *self.pending.entry(position.offset).or_insert(0) += 1;
        }
        let start_ms =
            i64::try_from(held.span.start_time_unix_nano / 1_000_000).unwrap_or(i64::MAX);
        open.spans.push(held);
        self.held_spans += 1;
        if is_root && open.root.is_none() {
            open.root = Some(position);
            open.root_start_ms = start_ms;
            if self.resume.covers(position) {
                // Shipped before the commit point this partition was read again from.
                let open = self.close(&trace_id, now);
                self.completed.insert(trace_id.clone(), (now, true));
                self.skipped.shipped_before += open.spans.len();
                self.settle_offsets(&open.offsets);
                return None;
            }
            self.by_root.insert(position, trace_id.clone());
        }
        let open = &self.open[&trace_id];
        if open.spans.len() > self.settings.limits.max_steps + 1 {
            // Refused now: holding more of it is what the limit is there to prevent.
            let open = self.close(&trace_id, now);
            let message = format!(
                "more than {} spans, the {} steps a trace may have",
                open.spans.len() - 1,
                self.settings.limits.max_steps
            );
            return Some(self.refuse(open, "too_many_steps", message));
        }
        None
    }

    /// Ships the traces that are complete and refuses those that can no longer get a root.
    pub fn tick(&mut self, now: Instant) -> Vec<Output> {
        let mut outputs = Vec::new();
        while let Some((_, trace_id)) = self.by_root.first_key_value() {
            let open = &self.open[trace_id];
            let quiet = now.saturating_duration_since(open.last_seen) >= self.settings.quiet;
            let forced = now.saturating_duration_since(open.first_seen) >= self.settings.max_open;
            if !quiet && !forced {
                break;
            }
            let trace_id = trace_id.clone();
            let open = self.close(&trace_id, now);
            outputs.push(self.assemble(&trace_id, open, forced && !quiet));
        }
        let rootless: Vec<String> = self
            .open
            .iter()
            .filter(|(_, open)| {
                open.root.is_none()
                    && now.saturating_duration_since(open.first_seen) >= self.settings.max_open
            })
            .map(|(trace_id, _)| trace_id.clone())
            .collect();
        for trace_id in rootless {
            let open = self.close(&trace_id, now);
            let message = format!(
                "no root span (a span without a parent) came within {:?} of its first span",
                self.settings.max_open
            );
            outputs.push(self.refuse(open, "otel_no_root", message));
        }
        while let Some((since, _)) = self.completed_order.front() {
            if now.saturating_duration_since(*since) < self.settings.max_open {
                break;
            }
            if let Some((since, trace_id)) = self.completed_order.pop_front()
                && self.completed.get(&trace_id).map(|(at, _)| *at) == Some(since)
            {
                self.completed.remove(&trace_id);
            }
        }
        outputs
    }

    /// Kafka has the output of `ticket`.
    pub fn settled(&mut self, ticket: Ticket) {
        if let Some(in_flight) = self.in_flight.remove(&ticket) {
            if let Some(root) = in_flight.root {
                self.in_flight_roots.remove(&root);
                self.acked_roots.insert(root);
            }
            self.settle_offsets(&in_flight.offsets);
        }
    }

    /// Where to read again from: the lowest offset holding spans of an unshipped trace, and
    /// which rooted traces are shipped. `None` before any message.
    pub fn commit_point(&mut self) -> Option<(i64, Resume)> {
        let next_offset = self.next_offset?;
        let offset = self.pending.keys().next().copied().unwrap_or(next_offset);
        let unshipped = [
            self.by_root.keys().next(),
            self.in_flight_roots.keys().next(),
        ]
        .into_iter()
        .flatten()
        .min()
        .copied()
        .unwrap_or(Position {
            offset: next_offset,
            index: 0,
        });
        let before = unshipped.max(self.resume.before);
        // What is before it needs no list.
        self.acked_roots = self.acked_roots.split_off(&before);
        self.resume.shipped = self.resume.shipped.split_off(&before);
        // Bounded, so the record stays small: a trace left out of the list is shipped again
        // after a restart, never lost.
        let shipped = self
            .acked_roots
            .union(&self.resume.shipped)
            .take(MAX_SHIPPED_LISTED)
            .copied()
            .collect();
        Some((offset, Resume { before, shipped }))
    }

    fn consumed(&mut self, offset: i64) {
        self.next_offset = Some(
            self.next_offset
                .map_or(offset + 1, |next| next.max(offset + 1)),
        );
    }

    fn close(&mut self, trace_id: &str, now: Instant) -> Open {
        let open = self.open.remove(trace_id).expect("an open trace");
        if let Some(root) = open.root {
            self.by_root.remove(&root);
        }
        self.held_spans -= open.spans.len();
        self.completed.insert(trace_id.to_owned(), (now, false));
        self.completed_order.push_back((now, trace_id.to_owned()));
        open
    }

    fn assemble(&mut self, trace_id: &str, open: Open, forced: bool) -> Output {
        let spans: Vec<SpanRef<'_>> = open.spans.iter().map(Held::as_ref).collect();
        match otel_ingest::assemble(trace_id, &spans, &self.settings.limits) {
            Ok(event) => Output::Trace {
                read_at: open.offsets.first().copied().unwrap_or_default(),
                ticket: self.ticket(open.offsets, open.root),
                event: Box::new(event),
                forced,
            },
            Err(error) => self.refuse(open, error.reason(), error.to_string()),
        }
    }

    fn refuse(&mut self, open: Open, reason: &'static str, message: String) -> Output {
        Output::Refused {
            read_at: open.offsets.first().copied().unwrap_or_default(),
            ticket: self.ticket(open.offsets, open.root),
            reason,
            message,
            spans: request_of(open.spans),
        }
    }

    /// A ticket for one more output of the message at `offset`.
    fn ticket_for(&mut self, offset: i64) -> Ticket {
        *self.pending.entry(offset).or_insert(0) += 1;
        self.ticket(vec![offset], None)
    }

    fn ticket(&mut self, offsets: Vec<i64>, root: Option<Position>) -> Ticket {
        let ticket = Ticket(self.next_ticket);
        self.next_ticket += 1;
        if let Some(root) = root {
            self.in_flight_roots.insert(root, ticket);
        }
        self.in_flight.insert(ticket, InFlight { offsets, root });
        ticket
    }

    fn settle_offsets(&mut self, offsets: &[i64]) {
        for offset in offsets {
            if let Some(parts) = self.pending.get_mut(offset) {
                *parts -= 1;
                if *parts == 0 {
                    self.pending.remove(offset);
                }
            }
        }
    }
}

/// Traces shipped past the first unshipped one that a commit point lists at most (about
/// 200 KB of JSON).
const MAX_SHIPPED_LISTED: usize = 16_384;

const TRACE_ID: &str = "otel_trace_id";
const LATE: &str = "otel_span_after_completion";

fn valid_id(id: &[u8], len: usize) -> bool {
    id.len() == len && id.iter().any(|byte| *byte != 0)
}

/// The spans as a request of their own, resource and scope kept, for a dead letter.
fn request_of(spans: Vec<Held>) -> ExportTraceServiceRequest {
    let mut resource_spans: Vec<ResourceSpans> = Vec::new();
    let mut last: Option<(Arc<Resource>, Option<Arc<InstrumentationScope>>)> = None;
    for held in spans {
        let same = last.as_ref().is_some_and(|(resource, scope)| {
            Arc::ptr_eq(resource, &held.resource)
                && match (scope, &held.scope) {
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    (None, None) => true,
                    _ => false,
                }
        });
        if !same {
            resource_spans.push(ResourceSpans {
                resource: Some((*held.resource).clone()),
                scope_spans: vec![ScopeSpans {
                    scope: held.scope.as_deref().cloned(),
                    ..ScopeSpans::default()
                }],
                ..ResourceSpans::default()
            });
            last = Some((held.resource.clone(), held.scope.clone()));
        }
        if let Some(scope_spans) = resource_spans
            .last_mut()
            .and_then(|resource| resource.scope_spans.last_mut())
        {
            scope_spans.spans.push(held.span);
        }
    }
    ExportTraceServiceRequest { resource_spans }
}
