//! Traces and their nested steps, recorded around futures (or closures).
//!
//! `trace("name").run(fut)` is the Rust form of the Python SDK's `@trace`: outside any trace
//! it starts one, which is emitted when `fut` completes; inside a trace it records a nested
//! step. The active step is a task-local, set for exactly the polls of its own future, so
//! steps awaited concurrently (`join!`) still nest under the right parent. A trace whose
//! future is dropped or panics is not emitted.
//!
//! Steps carry the fields Openlayer shows per step type, named as in its SDK: a chat
//! completion's [`Trace::prompt`] (inputs `{"prompt": [{"role", "content"}, ...]}`),
//! [`Trace::provider`], [`Trace::model_parameters`] and [`Trace::raw_output`] (or
//! [`set_raw_output`] once the response is in); a retriever's [`Trace::documents`] (or
//! [`set_documents`]). The schema keeps all but the prompt on nested steps only: a root trace
//! records its prompt and drops the others.

use crate::context::{UserSession, current_user_session};
use crate::sink::{TraceSink, global_sink};
use serde::Serialize;
use serde_json::Value;
use std::fmt::Display;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use thiserror::Error;
use trace_model::{JsonMap, Step, TraceEvent, TraceKind};

/// Step type of a plain traced function, as Openlayer names it.
pub const USER_CALL: &str = "user_call";
/// Step type of an LLM call.
pub const CHAT_COMPLETION: &str = "chat_completion";
/// Step type of a retrieval.
pub const RETRIEVER: &str = "retriever";
/// Step type of a tool call.
pub const TOOL: &str = "tool";

tokio::task_local! {
    static ACTIVE: Active;
}

/// The trace and step that code running now belongs to.
#[derive(Clone)]
struct Active {
    root: Arc<RootState>,
    frame: Arc<Mutex<Frame>>,
}

/// State shared by every step of one trace.
struct RootState {
    /// Ids from the user/session context when the trace started, changed field by field by
    /// [`update_trace_user_session`]; moved into the event when the trace finishes.
    ids: Mutex<UserSession>,
    /// The process the trace's ids are drawn for (`ids::process`).
    pid: u32,
    /// Wall-clock start of the trace, read once: steps derive theirs from it and the
    /// monotonic clock, so a step costs one clock read at each end and a wall-clock step
    /// during the trace cannot reorder its steps.
    start_ms: i64,
    started: Instant,
}

/// One step being recorded.
struct Frame {
    /// Empty for the trace itself (its id is the inference id).
    id: String,
    name: String,
    /// `None`: [`USER_CALL`], allocated only when the step is recorded.
    step_type: Option<String>,
    inputs: JsonMap,
    output: Option<Value>,
    model: Option<String>,
    metadata: JsonMap,
    tokens: Option<i64>,
    prompt_tokens: Option<i64>,
    completion_tokens: Option<i64>,
    cost: Option<f64>,
    documents: Option<Vec<Value>>,
    provider: Option<String>,
    model_parameters: Option<JsonMap>,
    /// `Null`: not recorded.
    raw_output: Value,
    children: Vec<Step>,
    start_ms: i64,
    started: Instant,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

fn to_json(value: impl Serialize) -> Value {
    // Serialize impls that fail (maps with non-string keys) are recorded as their error text.
    serde_json::to_value(value).unwrap_or_else(|error| Value::String(error.to_string()))
}

fn add(total: Option<i64>, part: Option<i64>) -> Option<i64> {
    match (total, part) {
        (None, None) => None,
        (total, part) => Some(total.unwrap_or(0).saturating_add(part.unwrap_or(0))),
    }
}

fn add_cost(total: Option<f64>, part: Option<f64>) -> Option<f64> {
    match (total, part) {
        (None, None) => None,
        (total, part) => Some(total.unwrap_or(0.0) + part.unwrap_or(0.0)),
    }
}

fn to_json_list<T: Serialize>(items: impl IntoIterator<Item = T>) -> Vec<Value> {
    items.into_iter().map(to_json).collect()
}

/// Model parameters must be a JSON object (Openlayer's `modelParameters`); anything else is
/// not recorded.
fn to_json_object(name: &str, value: impl Serialize) -> Option<JsonMap> {
    let json_type = match to_json(value) {
        Value::Object(map) => return Some(map),
        Value::Array(_) => "array",
        Value::String(_) => "string",
        Value::Number(_) => "number",
        Value::Bool(_) => "boolean",
        Value::Null => "null",
    };
    // The type only: the value may hold anything the caller passed.
    tracing::warn!(
        step = name,
        json_type,
        "model parameters are not a JSON object; not recorded"
    );
    None
}

/// One message of a chat prompt, as Openlayer's SDK records it: `{"role": .., "content": ..}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, `tool`, ... (the provider's roles).
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }

    pub fn system(content: impl Into<String>) -> Self {
        ChatMessage::new("system", content)
    }

    pub fn user(content: impl Into<String>) -> Self {
        ChatMessage::new("user", content)
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        ChatMessage::new("assistant", content)
    }

    /// The JSON object, built directly (no serializer round trip).
    fn into_json(self) -> Value {
        let mut message = JsonMap::new();
        message.insert("role".to_owned(), Value::String(self.role));
        message.insert("content".to_owned(), Value::String(self.content));
        Value::Object(message)
    }
}

/// `(role, content)` pairs: `.prompt([("system", rules), ("user", question)])`.
impl<R: Into<String>, C: Into<String>> From<(R, C)> for ChatMessage {
    fn from((role, content): (R, C)) -> Self {
        ChatMessage::new(role, content)
    }
}

/// Starts describing a traced function or step; finish with one of the `run` methods.
pub fn trace(name: impl Into<String>) -> Trace {
    Trace {
        name: name.into(),
        step_type: None,
        inputs: JsonMap::new(),
        model: None,
        metadata: JsonMap::new(),
        documents: None,
        provider: None,
        model_parameters: None,
        raw_output: Value::Null,
        pipeline_id: None,
        inference_id: None,
        sink: None,
    }
}

/// A trace or step about to run.
#[must_use = "nothing is recorded until a run method is called"]
pub struct Trace {
    name: String,
    /// `None` until set: [`USER_CALL`].
    step_type: Option<String>,
    inputs: JsonMap,
    model: Option<String>,
    metadata: JsonMap,
    documents: Option<Vec<Value>>,
    provider: Option<String>,
    model_parameters: Option<JsonMap>,
    raw_output: Value,
    pipeline_id: Option<String>,
    inference_id: Option<String>,
    sink: Option<Arc<dyn TraceSink>>,
}

impl std::fmt::Debug for Trace {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Trace")
            .field("name", &self.name)
            .field("step_type", &self.step_type.as_deref().unwrap_or(USER_CALL))
            .finish_non_exhaustive()
    }
}

impl Trace {
    /// Openlayer step type: [`USER_CALL`] (default), [`CHAT_COMPLETION`], [`RETRIEVER`], [`TOOL`], ...
    pub fn step_type(mut self, step_type: impl Into<String>) -> Self {
        self.step_type = Some(step_type.into());
        self
    }

    /// Records an input variable (a top-level column of the Openlayer row for the root trace).
    pub fn input(mut self, name: impl Into<String>, value: impl Serialize) -> Self {
        self.inputs.insert(name.into(), to_json(value));
        self
    }

    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// The chat messages sent to the model: sets input `prompt` to `[{"role", "content"}, ...]`,
    /// the shape Openlayer's SDK gives chat completion inputs. Takes [`ChatMessage`]s or
    /// `(role, content)` pairs.
    pub fn prompt<M: Into<ChatMessage>>(mut self, messages: impl IntoIterator<Item = M>) -> Self {
        let messages = messages
            .into_iter()
            .map(|message| message.into().into_json())
            .collect();
        self.inputs
            .insert("prompt".to_owned(), Value::Array(messages));
        self
    }

    /// Who serves the model, e.g. `OpenAI` (nested steps only).
    pub fn provider(mut self, provider: impl Into<String>) -> Self {
        self.provider = Some(provider.into());
        self
    }

    /// Parameters of the model call, e.g. `json!({"temperature": 0.2, "max_tokens": 256})` or
    /// a struct serializing to an object; anything that is not a JSON object is not recorded
    /// (a warning is logged). Nested steps only.
    pub fn model_parameters(mut self, parameters: impl Serialize) -> Self {
        self.model_parameters = to_json_object(&self.name, parameters);
        self
    }

    /// The provider's response as it came (nested steps only); usually known only inside the
    /// step: [`set_raw_output`].
    pub fn raw_output(mut self, raw_output: impl Serialize) -> Self {
        self.raw_output = to_json(raw_output);
        self
    }

    /// Documents a retriever step found (nested steps only); usually known only inside the
    /// step: [`set_documents`].
    pub fn documents<D: Serialize>(mut self, documents: impl IntoIterator<Item = D>) -> Self {
        self.documents = Some(to_json_list(documents));
        self
    }

    pub fn metadata(mut self, key: impl Into<String>, value: impl Serialize) -> Self {
        self.metadata.insert(key.into(), to_json(value));
        self
    }

    /// Openlayer inference pipeline of this trace (root only; the sessionizer's default otherwise).
    pub fn pipeline(mut self, pipeline_id: impl Into<String>) -> Self {
        self.pipeline_id = Some(pipeline_id.into());
        self
    }

    /// Uses a known inference id instead of a generated one (root only).
    pub fn inference_id(mut self, inference_id: impl Into<String>) -> Self {
        self.inference_id = Some(inference_id.into());
        self
    }

    /// Sends the finished trace to `sink` instead of the global sink (root only).
    pub fn sink(mut self, sink: Arc<dyn TraceSink>) -> Self {
        self.sink = Some(sink);
        self
    }

    /// Runs `future` as this trace or step and records its value as the output.
    pub async fn run<F>(self, future: F) -> F::Output
    where
        F: Future,
        F::Output: Serialize,
    {
        let (active, finish) = self.start();
        let output = ACTIVE.scope(active.clone(), future).await;
        finish.finish(&active, Some(to_json(&output)));
        output
    }

    /// Runs `future` and records `Ok` values as the output and `Err` values as metadata `error`.
    pub async fn run_result<F, T, E>(self, future: F) -> Result<T, E>
    where
        F: Future<Output = Result<T, E>>,
        T: Serialize,
        E: Display,
    {
        let (active, finish) = self.start();
        let result = ACTIVE.scope(active.clone(), future).await;
        let output = match &result {
            Ok(value) => Some(to_json(value)),
            Err(error) => {
                lock(&active.frame)
                    .metadata
                    .insert("error".to_owned(), Value::String(error.to_string()));
                None
            }
        };
        finish.finish(&active, output);
        result
    }

    /// Runs `future` without recording its value; use [`set_output`] inside instead.
    pub async fn run_unrecorded<F: Future>(self, future: F) -> F::Output {
        let (active, finish) = self.start();
        let output = ACTIVE.scope(active.clone(), future).await;
        finish.finish(&active, None);
        output
    }

    /// Runs the synchronous `body` as this trace or step and records its value as the output.
    pub fn run_sync<R: Serialize>(self, body: impl FnOnce() -> R) -> R {
        let (active, finish) = self.start();
        let output = ACTIVE.sync_scope(active.clone(), body);
        finish.finish(&active, Some(to_json(&output)));
        output
    }

    fn start(self) -> (Active, Finish) {
        let (root, id, start_ms, started, finish) = match ACTIVE.try_with(Active::clone) {
            Ok(parent) => {
                let root = parent.root.clone();
                let id = crate::ids::next_id(root.pid);
                let started = Instant::now();
                let offset_ms = started.saturating_duration_since(root.started).as_millis();
                let start_ms = root
                    .start_ms
                    .saturating_add(i64::try_from(offset_ms).unwrap_or(i64::MAX));
                (root, id, start_ms, started, Finish::Step { parent })
            }
            Err(_) => {
                let (start_ms, started) = (now_ms(), Instant::now());
                let root = Arc::new(RootState {
                    ids: Mutex::new(current_user_session()),
                    pid: crate::ids::process(),
                    start_ms,
                    started,
                });
                let finish = Finish::Root {
                    pipeline_id: self.pipeline_id,
                    inference_id: self.inference_id,
                    sink: self.sink,
                };
                (root, String::new(), start_ms, started, finish)
            }
        };
        let frame = Arc::new(Mutex::new(Frame {
            id,
            name: self.name,
            step_type: self.step_type,
            inputs: self.inputs,
            output: None,
            model: self.model,
            metadata: self.metadata,
            tokens: None,
            prompt_tokens: None,
            completion_tokens: None,
            cost: None,
            documents: self.documents,
            provider: self.provider,
            model_parameters: self.model_parameters,
            raw_output: self.raw_output,
            children: Vec::new(),
            start_ms,
            started,
        }));
        (Active { root, frame }, finish)
    }
}

/// What happens when a trace or step completes.
enum Finish {
    Step {
        parent: Active,
    },
    Root {
        pipeline_id: Option<String>,
        inference_id: Option<String>,
        sink: Option<Arc<dyn TraceSink>>,
    },
}

impl Finish {
    fn finish(self, active: &Active, recorded_output: Option<Value>) {
        let mut frame = lock(&active.frame);
        let latency = frame.started.elapsed().as_secs_f64() * 1000.0;
        // An explicit set_output wins over the recorded return value.
        let output = frame
            .output
            .take()
            .or(recorded_output)
            .unwrap_or(Value::Null);
        match self {
            Finish::Step { parent } => {
                let step = frame.take_step(output, latency);
                drop(frame);
                lock(&parent.frame).children.push(step);
            }
            Finish::Root {
                pipeline_id,
                inference_id,
                sink,
            } => {
                let ids = std::mem::take(&mut *lock(&active.root.ids));
                let inference_id =
                    inference_id.unwrap_or_else(|| crate::ids::next_id(active.root.pid));
                let event = frame.take_event(output, latency, ids, pipeline_id, inference_id);
                drop(frame);
                match sink.or_else(global_sink) {
                    Some(sink) => sink.emit(event),
                    None => tracing::debug!(
                        name = %event.name,
                        "trace finished with no sink set; call set_global_sink or Trace::sink"
                    ),
                }
            }
        }
    }
}

fn latency_end_ms(start_ms: i64, latency_ms: f64) -> i64 {
    // Latency is measured on a monotonic clock; the end time is derived from it so that
    // end - start always equals the latency, even if the wall clock steps meanwhile.
    start_ms.saturating_add(latency_ms.round() as i64)
}

impl Frame {
    /// Token total: the explicit one, or prompt plus completion.
    fn own_tokens(&self) -> Option<i64> {
        self.tokens
            .or_else(|| add(self.prompt_tokens, self.completion_tokens))
    }

    /// The finished step, built straight from the frame's fields: a frame and a step are
    /// some 400 bytes each, and copying the frame out first cost 7 % of building a trace.
    fn take_step(&mut self, output: Value, latency_ms: f64) -> Step {
        Step {
            tokens: self.own_tokens(),
            id: std::mem::take(&mut self.id),
            name: std::mem::take(&mut self.name),
            step_type: self
                .step_type
                .take()
                .unwrap_or_else(|| USER_CALL.to_owned()),
            inputs: std::mem::take(&mut self.inputs),
            output,
            start_time_ms: self.start_ms,
            end_time_ms: latency_end_ms(self.start_ms, latency_ms),
            latency_ms,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            cost: self.cost,
            model: self.model.take(),
            metadata: std::mem::take(&mut self.metadata),
            steps: std::mem::take(&mut self.children),
            documents: self.documents.take(),
            provider: self.provider.take(),
            model_parameters: self.model_parameters.take(),
            raw_output: self.raw_output.take(),
        }
    }

    fn take_event(
        &mut self,
        output: Value,
        latency_ms: f64,
        ids: UserSession,
        pipeline_id: Option<String>,
        inference_id: String,
    ) -> TraceEvent {
        // Row totals are the root's own usage plus every nested step's: the official tracer
        // reports only the top-level step's, which reads 0 when completions are nested.
        let mut tokens = self.own_tokens();
        let mut prompt_tokens = self.prompt_tokens;
        let mut completion_tokens = self.completion_tokens;
        let mut cost = self.cost;
        let mut event = TraceEvent::new(std::mem::take(&mut self.name), self.start_ms);
        event.steps = std::mem::take(&mut self.children);
        // Recursion instead of `all_steps`, whose iterator allocates its stack.
        fn sum_into(steps: &[Step], totals: &mut UsageTotals) {
            for step in steps {
                totals.0 = add(totals.0, step.tokens);
                totals.1 = add(totals.1, step.prompt_tokens);
                totals.2 = add(totals.2, step.completion_tokens);
                totals.3 = add_cost(totals.3, step.cost);
                sum_into(&step.steps, totals);
            }
        }
        let mut totals: UsageTotals = (tokens, prompt_tokens, completion_tokens, cost);
        sum_into(&event.steps, &mut totals);
        (tokens, prompt_tokens, completion_tokens, cost) = totals;
        event.inference_id = Some(inference_id);
        event.pipeline_id = pipeline_id;
        event.user_id = ids.user_id;
        event.session_id = ids.session_id;
        event.kind = TraceKind::Trace;
        event.inputs = std::mem::take(&mut self.inputs);
        event.output = output;
        event.latency_ms = Some(latency_ms);
        event.tokens = tokens;
        event.prompt_tokens = prompt_tokens;
        event.completion_tokens = completion_tokens;
        event.cost = cost;
        event.model = self.model.take();
        event.metadata = std::mem::take(&mut self.metadata);
        event
    }
}

/// Tokens, prompt tokens, completion tokens and cost summed over a trace's steps.
type UsageTotals = (Option<i64>, Option<i64>, Option<i64>, Option<f64>);

/// Token counts, cost and model of an LLM call, recorded on the current step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    pub prompt_tokens: Option<i64>,
    pub completion_tokens: Option<i64>,
    /// Total; prompt plus completion when left out.
    pub tokens: Option<i64>,
    pub cost: Option<f64>,
    pub model: Option<String>,
}

impl Usage {
    pub fn tokens(prompt_tokens: i64, completion_tokens: i64) -> Self {
        Usage {
            prompt_tokens: Some(prompt_tokens),
            completion_tokens: Some(completion_tokens),
            ..Usage::default()
        }
    }

    #[must_use]
    pub fn cost(mut self, cost: f64) -> Self {
        self.cost = Some(cost);
        self
    }

    #[must_use]
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }
}

/// Returned when a function that needs an active trace runs outside one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("no active trace: call this inside trace(..).run(..)")]
pub struct NoActiveTrace;

fn with_frame<R>(change: impl FnOnce(&mut Frame) -> R) -> Result<R, NoActiveTrace> {
    ACTIVE
        .try_with(|active| change(&mut lock(&active.frame)))
        .map_err(|_| NoActiveTrace)
}

/// Adds token counts, cost and model to the current step.
///
/// # Errors
/// [`NoActiveTrace`] outside any trace.
pub fn record_usage(usage: Usage) -> Result<(), NoActiveTrace> {
    with_frame(|frame| {
        frame.prompt_tokens = add(frame.prompt_tokens, usage.prompt_tokens);
        frame.completion_tokens = add(frame.completion_tokens, usage.completion_tokens);
        // Each call's total is its explicit one or prompt plus completion, so that calls
        // giving only a total and calls giving only the split add up on one step.
        let usage_tokens = usage
            .tokens
            .or_else(|| add(usage.prompt_tokens, usage.completion_tokens));
        frame.tokens = add(frame.tokens, usage_tokens);
        frame.cost = add_cost(frame.cost, usage.cost);
        if usage.model.is_some() {
            frame.model = usage.model;
        }
    })
}

/// Sets the output of the current step (wins over the value its future returns).
///
/// # Errors
/// [`NoActiveTrace`] outside any trace.
pub fn set_output(output: impl Serialize) -> Result<(), NoActiveTrace> {
    let output = to_json(output);
    with_frame(|frame| frame.output = Some(output))
}

/// Sets the provider's raw response on the current step (Openlayer's `rawOutput`; an object,
/// or an array of chunks when streamed).
///
/// # Errors
/// [`NoActiveTrace`] outside any trace.
pub fn set_raw_output(raw_output: impl Serialize) -> Result<(), NoActiveTrace> {
    let raw_output = to_json(raw_output);
    with_frame(|frame| frame.raw_output = raw_output)
}

/// Sets the documents of the current (retriever) step, replacing any set before.
///
/// # Errors
/// [`NoActiveTrace`] outside any trace.
pub fn set_documents<D: Serialize>(
    documents: impl IntoIterator<Item = D>,
) -> Result<(), NoActiveTrace> {
    let documents = to_json_list(documents);
    with_frame(|frame| frame.documents = Some(documents))
}

/// Adds a metadata entry to the current step.
///
/// # Errors
/// [`NoActiveTrace`] outside any trace.
pub fn add_metadata(key: impl Into<String>, value: impl Serialize) -> Result<(), NoActiveTrace> {
    let value = to_json(value);
    with_frame(|frame| {
        frame.metadata.insert(key.into(), value);
    })
}

/// Changes the user and/or session of the current trace only (`None` leaves that id as it
/// is); the request's context and other traces are untouched.
///
/// # Errors
/// [`NoActiveTrace`] outside any trace.
pub fn update_trace_user_session(
    user_id: Option<&str>,
    session_id: Option<&str>,
) -> Result<(), NoActiveTrace> {
    ACTIVE
        .try_with(|active| {
            let mut ids = lock(&active.root.ids);
            if let Some(user_id) = user_id {
                ids.user_id = Some(user_id.to_owned());
            }
            if let Some(session_id) = session_id {
                ids.session_id = Some(session_id.to_owned());
            }
        })
        .map_err(|_| NoActiveTrace)
}

/// A `session_end` record for the given ids: tells the sessionizer the session is over.
pub fn session_end_event(ids: &UserSession) -> TraceEvent {
    let mut event = TraceEvent::new("session_end", now_ms());
    event.kind = TraceKind::SessionEnd;
    event.inference_id = Some(crate::ids::new_id());
    event.user_id = ids.user_id.clone();
    event.session_id = ids.session_id.clone();
    event
}
