//! Realistic traces: built once through the producer helpers (`trace-emit`), as a chat service
//! would, then varied per user, session, turn and time.
//!
//! Shape: a `chat` trace with a `retrieve` step (holding a nested `embed_query` step) and a
//! `complete` chat-completion step: three steps, two levels deep, token usage and cost on the
//! model calls, two metadata entries. Sixteen question/answer/document combinations give Avro
//! payloads of about 1.2–1.9 KB.

use std::sync::Arc;
use trace_emit::{
    CHAT_COMPLETION, CollectingSink, RETRIEVER, TraceSink, Usage, record_usage, trace,
    with_user_session_sync,
};
use trace_model::{Step, TraceEvent};

const QUESTIONS: [&str; 4] = [
    "Which neighbourhood in Lisbon is best for walking to restaurants in the evening?",
    "My Rust future never runs unless I await it. Why is that, and how do I run two of them \
     concurrently without spawning tasks?",
    "Can you suggest a quick vegan dinner without chickpeas that takes under thirty minutes?",
    "What changed between version 2 and version 3 of the billing API, and do I need to migrate \
     the webhooks I registered last year before the old endpoints are switched off in June?",
];

const ANSWERS: [&str; 4] = [
    "Alfama is hard to beat for evening walks: most tascas and fado houses are a few minutes \
     apart, though the streets are steep.",
    "Futures in Rust are lazy: nothing happens until they are polled. Use `join!` or \
     `futures::join` to poll both on the same task, so they make progress concurrently.",
    "Try a peanut noodle stir-fry: rice noodles, tofu, broccoli and a sauce of peanut butter, \
     soy, lime and chilli. It takes about twenty minutes.",
    "Version 3 moves invoices to a cursor-based list and signs webhooks with a new header. \
     Existing webhooks keep working until June, but you should re-register them against the v3 \
     endpoint and verify the new signature before then.",
];

const DOCUMENTS: [&str; 3] = [
    "Alfama is Lisbon's oldest district, a maze of narrow streets between the castle and the \
     river, known for fado houses and small tascas. Tram 28 passes through it.",
    "A future does nothing unless it is polled. Executors poll futures when they are woken; \
     `join` polls several futures from one task.",
    "The v3 billing API replaces offset pagination with cursors and signs webhook payloads \
     with the Billing-Signature header. v2 endpoints are retired on June 30.",
];

/// Builds one template through the helpers, exactly as an instrumented service would.
fn template(question: &str, answer: &'static str, document: &'static str) -> Option<TraceEvent> {
    let collector = CollectingSink::new();
    let sink: Arc<dyn TraceSink> = collector.clone();
    let question_tokens = 40 + question.len() as i64 / 4;
    with_user_session_sync(Some("template-user"), Some("template-session"), || {
        trace("chat")
            .input("user_message", question)
            .metadata("app_version", "2.14.1")
            .metadata("region", "eu-west-1")
            .sink(sink)
            .run_sync(|| {
                let documents = trace("retrieve")
                    .step_type(RETRIEVER)
                    .input("query", question)
                    .run_sync(|| {
                        trace("embed_query")
                            .model("text-embedding-3-small")
                            .run_sync(|| {
                                let _in_trace = record_usage(
                                    Usage::tokens(question_tokens, 0).cost(2e-8 * 20.0),
                                );
                                1536
                            });
                        vec![document]
                    });
                trace("complete")
                    .step_type(CHAT_COMPLETION)
                    .model("gpt-4o-mini")
                    .input("context", documents[0])
                    .run_sync(|| {
                        let _in_trace =
                            record_usage(Usage::tokens(question_tokens + 60, 45).cost(0.000_119));
                        answer
                    })
            });
    });
    collector.take().pop()
}

/// A random v4 UUID, hyphenated: the form the helpers give inference and step ids.
pub(crate) fn new_uuid() -> String {
    uuid::Uuid::new_v4().hyphenated().to_string()
}

/// Users and sessions of the benchmark, and the traces of their turns.
#[derive(Debug)]
pub(crate) struct Population {
    templates: Vec<TraceEvent>,
    /// (user id, session id) per session; two sessions per user.
    sessions: Vec<(String, String)>,
}

impl Population {
    pub(crate) fn new(num_sessions: usize) -> anyhow::Result<Self> {
        let mut templates = Vec::new();
        for (index, question) in QUESTIONS.iter().enumerate() {
            for offset in 0..4 {
                let answer = ANSWERS[(index + offset) % ANSWERS.len()];
                let document = DOCUMENTS[(index + offset) % DOCUMENTS.len()];
                let event = template(question, answer, document)
                    .ok_or_else(|| anyhow::anyhow!("the helpers emitted no trace"))?;
                templates.push(event);
            }
        }
        let sessions = (0..num_sessions)
            .map(|index| (format!("user-{:06}", index / 2), new_uuid()))
            .collect();
        Ok(Population {
            templates,
            sessions,
        })
    }

    pub(crate) fn num_sessions(&self) -> usize {
        self.sessions.len()
    }

    pub(crate) fn num_users(&self) -> usize {
        self.sessions.len().div_ceil(2)
    }

    /// The trace of `turn` (0-based) of session `session` at event time `timestamp_ms`.
    pub(crate) fn trace(&self, session: usize, turn: usize, timestamp_ms: i64) -> TraceEvent {
        let index = session % self.sessions.len();
        let variant = (index * 7 + turn) % self.templates.len();
        let mut event = self.templates[variant].clone();
        let shift = timestamp_ms - event.timestamp_ms;
        event.timestamp_ms = timestamp_ms;
        event.inference_id = Some(new_uuid());
        let (user_id, session_id) = &self.sessions[index];
        event.user_id = Some(user_id.clone());
        event.session_id = Some(session_id.clone());
        for step in &mut event.steps {
            restamp(step, shift);
        }
        event
    }
}

/// Fresh step ids, and the step times moved by `shift` milliseconds, down the whole tree.
fn restamp(step: &mut Step, shift: i64) {
    step.id = new_uuid();
    step.start_time_ms += shift;
    step.end_time_ms += shift;
    for child in &mut step.steps {
        restamp(child, shift);
    }
}

/// Steps and nesting depth of a trace, for the report.
pub(crate) fn shape(event: &TraceEvent) -> (usize, usize) {
    fn depth(steps: &[Step]) -> usize {
        steps
            .iter()
            .map(|step| 1 + depth(&step.steps))
            .max()
            .unwrap_or(0)
    }
    (event.all_steps().count(), depth(&event.steps))
}
