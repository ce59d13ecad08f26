//! Producer-side helpers: tag each request with its user and session, trace functions and
//! their nested steps, and emit every finished trace to Kafka without blocking the request.
//!
//! # Layout
//! - [`context`]: the user/session scope (tokio task-local) and its guard form
//! - [`trace`]: traces and nested steps around futures, per-trace id overrides
//! - [`layer`]: tower middleware that scopes each request to the ids in its headers
//! - [`sink`]: where finished traces go (global or per trace), JSON printer, collector
//! - [`emitter`]: bounded, non-blocking Kafka emitter with an idempotent producer
//! - `metrics`: the emitter's Prometheus metrics
//!
//! ```no_run
//! use trace_emit::{trace, with_user_session, record_usage, Usage, CHAT_COMPLETION};
//!
//! async fn answer(question: &str) -> String {
//!     trace("answer").input("user_message", question).run(async {
//!         let context = trace("retrieve").step_type(trace_emit::RETRIEVER)
//!             .input("query", question)
//!             .run(async { vec!["Paris is the capital of France.".to_owned()] })
//!             .await;
//!         trace("complete").step_type(CHAT_COMPLETION).model("gpt-4o-mini")
//!             .run(async {
//!                 let _ = record_usage(Usage::tokens(42, 7).cost(0.0001));
//!                 format!("From {} document(s): Paris.", context.len())
//!             })
//!             .await
//!     })
//!     .await
//! }
//!
//! # async fn demo() {
//! let reply = with_user_session(Some("user-7"), Some("chat-42"), answer("Capital of France?")).await;
//! # }
//! ```

pub mod context;
pub mod emitter;
mod ids;
pub mod layer;
mod metrics;
pub mod sink;
pub mod trace;

pub use context::{
    ContextGuard, NoContextScope, UserSession, clear_user_session_context, current_user_session,
    in_current_context, set_user_session_context, user_session_scope, with_context,
    with_user_session, with_user_session_sync,
};
pub use emitter::{Emitter, EmitterConfig, EmitterError};
pub use layer::UserSessionLayer;
pub use sink::{CollectingSink, JsonLinesSink, TraceSink, global_sink, set_global_sink};
pub use trace::{
    CHAT_COMPLETION, NoActiveTrace, RETRIEVER, TOOL, Trace, USER_CALL, Usage, add_metadata,
    record_usage, session_end_event, set_output, trace, update_trace_user_session,
};

/// The README's examples, compiled and run as doc tests so they cannot go stale.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
