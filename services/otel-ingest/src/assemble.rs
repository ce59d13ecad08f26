//! The spans of one trace as one trace record: the root span is the trace, every other span
//! a step nested under its parent, children in start order.
//!
//! A span whose parent is not among the spans (it was dropped, or sampled out) hangs under the
//! root, counted in the trace's metadata (`otel.orphan_spans`). A trace without exactly one
//! root, with a span id twice, or with spans whose parents form a cycle is refused, as is one
//! beyond the step limits.

use crate::attributes::{Attributes, hex, to_map};
use crate::genai::{self, PIPELINE_ID, SESSION_KEYS, StepFields, USER_KEYS};
use crate::request::{SpanRef, valid_id};
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use serde_json::Value;
use std::collections::HashMap;
use trace_model::validate::validate_trace;
use trace_model::{Limits, Step, TraceEvent, ValidationError};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AssemblyError {
    #[error("no root span (a span without a parent) among its {0} spans")]
    NoRoot(usize),
    #[error("{0} root spans (spans without a parent); a trace has one")]
    SeveralRoots(usize),
    #[error("a span has no valid span id (8 bytes, not all zero)")]
    InvalidSpanId,
    #[error("span id {0} appears twice")]
    DuplicateSpanId(String),
    #[error("the parents of {0} spans form a cycle (first: {1})")]
    Cycle(usize, String),
    #[error("{spans} spans, more than the {max} steps a trace may have")]
    TooManySpans { spans: usize, max: usize },
    #[error("spans nest deeper than the {0} step levels a trace may have")]
    TooDeep(usize),
    #[error(transparent)]
    Invalid(#[from] ValidationError),
}

impl AssemblyError {
    /// A label for metrics, partial-success messages and dead letters.
    pub fn reason(&self) -> &'static str {
        match self {
            AssemblyError::NoRoot(_) => "otel_no_root",
            AssemblyError::SeveralRoots(_) => "otel_several_roots",
            AssemblyError::InvalidSpanId => "otel_span_id",
            AssemblyError::DuplicateSpanId(_) => "otel_duplicate_span",
            AssemblyError::Cycle(..) => "otel_cycle",
            AssemblyError::TooManySpans { .. } => "too_many_steps",
            AssemblyError::TooDeep(_) => "too_deep",
            AssemblyError::Invalid(_) => "invalid",
        }
    }
}

/// Assembles the spans of trace `trace_id` (lowercase hex; it becomes the inference id).
pub fn assemble(
    trace_id: &str,
    spans: &[SpanRef<'_>],
    limits: &Limits,
) -> Result<TraceEvent, AssemblyError> {
    // The root is the trace itself; the others are its steps (checked again below once the
    // root is known: a root that is a model call is a step too). Early, before any work.
    if spans.len() > limits.max_steps + 1 {
        return Err(AssemblyError::TooManySpans {
            spans: spans.len(),
            max: limits.max_steps,
        });
    }
    let mut index: HashMap<&[u8], usize> = HashMap::with_capacity(spans.len());
    for (position, span) in spans.iter().enumerate() {
        let id = &span.span.span_id[..];
        if !valid_id(id, 8) {
            return Err(AssemblyError::InvalidSpanId);
        }
        if index.insert(id, position).is_some() {
            return Err(AssemblyError::DuplicateSpanId(hex(id)));
        }
    }
    let roots: Vec<usize> = (0..spans.len())
        .filter(|position| !valid_id(&spans[*position].span.parent_span_id, 8))
        .collect();
    let root = match roots[..] {
        [root] => root,
        [] => return Err(AssemblyError::NoRoot(spans.len())),
        _ => return Err(AssemblyError::SeveralRoots(roots.len())),
    };
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); spans.len()];
    let mut orphans = 0usize;
    for (position, span) in spans.iter().enumerate() {
        if position == root {
            continue;
        }
        match index.get(&span.span.parent_span_id[..]) {
            Some(parent) => children[*parent].push(position),
            None => {
                orphans += 1;
                children[root].push(position);
            }
        }
    }
    for list in &mut children {
        list.sort_by_key(|position| (spans[*position].span.start_time_unix_nano, *position));
    }
    // A root that is itself a model or tool call becomes the trace's one step, one level
    // above its children.
    let wrapped = genai::step_type(Attributes(&spans[root].span.attributes).str(genai::OPERATION))
        != "user_call";
    let max_spans = limits.max_steps + usize::from(!wrapped);
    if spans.len() > max_spans {
        return Err(AssemblyError::TooManySpans {
            spans: spans.len(),
            max: limits.max_steps,
        });
    }
    let first_depth = if wrapped { 2 } else { 1 };
    let mut visited = vec![false; spans.len()];
    visited[root] = true;
    let mut steps = Vec::with_capacity(children[root].len());
    for child in &children[root] {
        steps.push(step(
            spans,
            &children,
            *child,
            first_depth,
            limits,
            &mut visited,
        )?);
    }
    if let Some(first) = visited.iter().position(|seen| !seen) {
        let count = visited.iter().filter(|seen| !**seen).count();
        return Err(AssemblyError::Cycle(count, hex(&spans[first].span.span_id)));
    }
    let event = trace(trace_id, spans, root, steps, orphans);
    validate_trace(&event, limits)?;
    Ok(event)
}

/// The trace record of the root span, with its steps.
fn trace(
    trace_id: &str,
    spans: &[SpanRef<'_>],
    root: usize,
    steps: Vec<Step>,
    orphans: usize,
) -> TraceEvent {
    let root_ref = spans[root];
    let span = root_ref.span;
    let fields = genai::step_fields(span);
    let mut event = TraceEvent::new(span.name.clone(), millis(span.start_time_unix_nano));
    event.inference_id = Some(trace_id.to_owned());
    event.latency_ms = Some(duration_ms(span));
    // Ids may sit on any span (instrumentation often sets them on the LLM call only): the
    // root's first, then the others in order, then the resource.
    let find = |keys: &[&str]| {
        std::iter::once(root_ref)
            .chain(spans.iter().copied())
            .find_map(|span| Attributes(&span.span.attributes).first_str(keys))
            .or_else(|| Attributes(root_ref.resource).first_str(keys))
            .map(str::to_owned)
    };
    event.session_id = find(&SESSION_KEYS);
    event.user_id = find(&USER_KEYS);
    event.pipeline_id = find(&[PIPELINE_ID]);
    let mut metadata = without_ids(to_map(root_ref.resource));
    if let Some(scope) = root_ref.scope.filter(|scope| !scope.name.is_empty()) {
        metadata.insert(
            "otel.scope.name".to_owned(),
            Value::from(scope.name.clone()),
        );
    }
    if orphans > 0 {
        metadata.insert("otel.orphan_spans".to_owned(), Value::from(orphans));
    }
    // The trace's usage, for the session totals: its own (a plain root's) and its steps'. A
    // span that reports usage while spans under it do too (an agent or workflow span with its
    // children's totals) is not counted again: usage counts where it is recorded deepest.
    let own = if fields.step_type == "user_call" {
        // A plain root (a request handler, a workflow): the trace itself, its children the
        // steps; it answers with what its last model call did unless it says otherwise.
        let own = Usage {
            tokens: fields.tokens,
            prompt_tokens: fields.prompt_tokens,
            completion_tokens: fields.completion_tokens,
            cost: fields.cost,
        };
        event.output = if fields.output.is_null() {
            last_completion_output(&steps).unwrap_or(Value::Null)
        } else {
            fields.output
        };
        event.inputs = fields.inputs;
        metadata.extend(without_ids(fields.metadata));
        metadata.extend(status(span));
        event.metadata = metadata;
        event.steps = steps;
        own
    } else {
        // A model or tool call with no span around it: the trace wraps it as its one step,
        // as the Openlayer SDK wraps a traced call in a `user_call`.
        event.inputs = fields.inputs.clone();
        event.output = fields.output.clone();
        event.metadata = metadata;
        let mut only = to_step(span, fields);
        only.steps = steps;
        event.steps = vec![only];
        Usage::default()
    };
    let usage = Usage::deepest(own, &event.steps);
    event.tokens = usage.tokens;
    event.prompt_tokens = usage.prompt_tokens;
    event.completion_tokens = usage.completion_tokens;
    event.cost = usage.cost;
    event
}

/// Tokens and cost, each `None` until some span reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Usage {
    tokens: Option<i64>,
    prompt_tokens: Option<i64>,
    completion_tokens: Option<i64>,
    cost: Option<f64>,
}

impl Usage {
    fn of(step: &Step) -> Usage {
        Usage {
            tokens: step.tokens,
            prompt_tokens: step.prompt_tokens,
            completion_tokens: step.completion_tokens,
            cost: step.cost,
        }
    }

    fn is_reported(&self) -> bool {
        self.tokens.is_some() || self.cost.is_some()
    }

    fn plus(self, other: Usage) -> Usage {
        let add = |total: Option<i64>, more: Option<i64>| match (total, more) {
            (Some(total), Some(more)) => Some(total.saturating_add(more)),
            (total, more) => total.or(more),
        };
        Usage {
            tokens: add(self.tokens, other.tokens),
            prompt_tokens: add(self.prompt_tokens, other.prompt_tokens),
            completion_tokens: add(self.completion_tokens, other.completion_tokens),
            cost: match (self.cost, other.cost) {
                (Some(total), Some(more)) => Some(total + more),
                (total, more) => total.or(more),
            },
        }
    }

    /// `own` usage with `children` under it: the children's when any of them reports usage,
    /// else `own`.
    fn deepest(own: Usage, children: &[Step]) -> Usage {
        let below = children.iter().fold(Usage::default(), |total, child| {
            total.plus(Usage::deepest(Usage::of(child), &child.steps))
        });
        if below.is_reported() { below } else { own }
    }
}

fn step(
    spans: &[SpanRef<'_>],
    children: &[Vec<usize>],
    position: usize,
    depth: usize,
    limits: &Limits,
    visited: &mut [bool],
) -> Result<Step, AssemblyError> {
    if depth > limits.max_step_depth {
        return Err(AssemblyError::TooDeep(limits.max_step_depth));
    }
    visited[position] = true;
    let span = spans[position].span;
    let mut nested = Vec::with_capacity(children[position].len());
    for child in &children[position] {
        nested.push(step(spans, children, *child, depth + 1, limits, visited)?);
    }
    let mut step = to_step(span, genai::step_fields(span));
    step.steps = nested;
    Ok(step)
}

fn to_step(span: &opentelemetry_proto::tonic::trace::v1::Span, fields: StepFields) -> Step {
    let mut metadata = without_ids(fields.metadata);
    metadata.extend(status(span));
    Step {
        id: hex(&span.span_id),
        name: span.name.clone(),
        step_type: fields.step_type.to_owned(),
        inputs: fields.inputs,
        output: fields.output,
        start_time_ms: millis(span.start_time_unix_nano),
        end_time_ms: millis(span.end_time_unix_nano),
        latency_ms: duration_ms(span),
        tokens: fields.tokens,
        prompt_tokens: fields.prompt_tokens,
        completion_tokens: fields.completion_tokens,
        cost: fields.cost,
        model: fields.model,
        metadata,
        steps: Vec::new(),
        documents: None,
        provider: fields.provider,
        model_parameters: fields.model_parameters,
        raw_output: fields.raw_output,
    }
}

/// Session, user and pipeline ids are the trace's columns, not step metadata.
fn without_ids(mut metadata: serde_json::Map<String, Value>) -> serde_json::Map<String, Value> {
    for key in SESSION_KEYS.iter().chain(&USER_KEYS).chain(&[PIPELINE_ID]) {
        metadata.remove(*key);
    }
    metadata
}

/// A failed span says so in its metadata (`otel.status_code`, `otel.status_message`).
fn status(
    span: &opentelemetry_proto::tonic::trace::v1::Span,
) -> impl Iterator<Item = (String, Value)> {
    let failed = span
        .status
        .as_ref()
        .filter(|status| status.code == StatusCode::Error as i32);
    failed.into_iter().flat_map(|status| {
        let mut pairs = vec![("otel.status_code".to_owned(), Value::from("ERROR"))];
        if !status.message.is_empty() {
            pairs.push((
                "otel.status_message".to_owned(),
                Value::from(status.message.clone()),
            ));
        }
        pairs
    })
}

/// The output of the last chat completion to end, depth first.
fn last_completion_output(steps: &[Step]) -> Option<Value> {
    let mut best: Option<(i64, &Value)> = None;
    let mut stack: Vec<&Step> = steps.iter().collect();
    while let Some(step) = stack.pop() {
        if step.step_type == "chat_completion"
            && !step.output.is_null()
            && best.is_none_or(|(end, _)| step.end_time_ms >= end)
        {
            best = Some((step.end_time_ms, &step.output));
        }
        stack.extend(&step.steps);
    }
    best.map(|(_, output)| output.clone())
}

fn millis(nanos: u64) -> i64 {
    i64::try_from(nanos / 1_000_000).unwrap_or(i64::MAX)
}

fn duration_ms(span: &opentelemetry_proto::tonic::trace::v1::Span) -> f64 {
    span.end_time_unix_nano
        .saturating_sub(span.start_time_unix_nano) as f64
        / 1e6
}
