//! Panics: the guard still restores the scope's ids while unwinding, a trace whose future
//! panics is not emitted, and the trace around a panicking step carries on intact.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::task::Poll;
use trace_emit::{
    CollectingSink, Usage, UserSession, add_metadata, current_user_session, in_current_context,
    record_usage, set_user_session_context, trace, user_session_scope, with_user_session,
    with_user_session_sync,
};

/// `catch_unwind` for a future: polls it, turning a panic during any poll into `Err`.
async fn catch_unwind<F: Future>(future: F) -> std::thread::Result<F::Output> {
    let mut future = pin!(future);
    std::future::poll_fn(|context| {
        match std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(context))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(payload) => Poll::Ready(Err(payload)),
        }
    })
    .await
}

/// A panic with a concrete output type for the traced bodies (which must be `Serialize`).
fn fail(message: &str) -> u32 {
    panic!("{message}")
}

#[test]
fn guard_restores_the_scope_when_a_sync_body_panics() {
    with_user_session_sync(Some("outer-user"), Some("outer-session"), || {
        let outcome = std::panic::catch_unwind(|| {
            let _guard = set_user_session_context(Some("inner-user"), None)
                .expect("inside with_user_session_sync");
            assert_eq!(
                current_user_session(),
                UserSession::new(Some("inner-user"), None)
            );
            panic!("request handler failed");
        });
        assert!(outcome.is_err());
        assert_eq!(
            current_user_session(),
            UserSession::new(Some("outer-user"), Some("outer-session"))
        );
    });
}

#[test]
fn sync_scope_ends_when_its_body_panics() {
    let outcome = std::panic::catch_unwind(|| {
        with_user_session_sync(Some("u"), Some("s"), || panic!("request handler failed"))
    });
    assert!(outcome.is_err());
    assert_eq!(current_user_session(), UserSession::default());
}

#[tokio::test]
async fn guard_restores_the_scope_when_an_async_body_panics_after_an_await() {
    with_user_session(Some("outer-user"), Some("outer-session"), async {
        let outcome = catch_unwind(async {
            let _guard = set_user_session_context(Some("inner-user"), Some("inner-session"))
                .expect("inside with_user_session");
            tokio::task::yield_now().await;
            assert_eq!(
                current_user_session(),
                UserSession::new(Some("inner-user"), Some("inner-session"))
            );
            panic!("request handler failed");
        })
        .await;
        assert!(outcome.is_err());
        assert_eq!(
            current_user_session(),
            UserSession::new(Some("outer-user"), Some("outer-session"))
        );
        tokio::task::yield_now().await;
        assert_eq!(
            current_user_session(),
            UserSession::new(Some("outer-user"), Some("outer-session"))
        );
    })
    .await;
}

#[tokio::test]
async fn panicking_task_leaves_the_parent_scope_and_later_tasks_clean() {
    user_session_scope(async {
        let _guard = set_user_session_context(Some("parent-user"), Some("parent-session"))
            .expect("inside the scope");
        let failed = tokio::spawn(in_current_context(async {
            let _guard = set_user_session_context(Some("doomed-user"), Some("doomed-session"))
                .expect("in_current_context opens a scope");
            tokio::task::yield_now().await;
            panic!("request handler failed");
        }))
        .await
        .expect_err("the task panics");
        assert!(failed.is_panic());
        assert_eq!(
            current_user_session(),
            UserSession::new(Some("parent-user"), Some("parent-session"))
        );
        // The next task on this (single) worker thread sees no ids at all.
        let later = tokio::spawn(async { current_user_session() })
            .await
            .expect("plain task");
        assert_eq!(later, UserSession::default());
    })
    .await;
}

#[tokio::test]
async fn trace_whose_future_panics_is_not_emitted() {
    let sink = CollectingSink::new();
    let task_sink = sink.clone();
    let failed = tokio::spawn(with_user_session(Some("u"), Some("s"), async move {
        trace("doomed")
            .sink(task_sink)
            .run(async {
                trace("finished_step").run(async { 1 }).await;
                tokio::task::yield_now().await;
                fail("model call failed")
            })
            .await
    }))
    .await
    .expect_err("the task panics");
    assert!(failed.is_panic());

    let outcome = catch_unwind(
        trace("doomed_in_place")
            .sink(sink.clone())
            .run(async { fail("model call failed") }),
    )
    .await;
    assert!(outcome.is_err());
    assert!(sink.take().is_empty(), "a panicked trace was emitted");

    // The next trace in the same task starts a fresh root, not a step of the panicked one.
    trace("next").sink(sink.clone()).run(async {}).await;
    let events = sink.take();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].name, "next");
    assert!(events[0].steps.is_empty());
}

#[tokio::test]
async fn panicking_steps_are_dropped_and_the_parent_trace_continues() {
    let sink = CollectingSink::new();
    with_user_session(Some("u"), Some("s"), async {
        trace("root")
            .sink(sink.clone())
            .run(async {
                trace("before")
                    .run(async {
                        record_usage(Usage::tokens(1, 1)).expect("inside before");
                    })
                    .await;
                let outcome = catch_unwind(trace("doomed").run(async {
                    trace("inner").run(async { 2 }).await;
                    record_usage(Usage::tokens(100, 100)).expect("inside doomed");
                    tokio::task::yield_now().await;
                    fail("tool call failed")
                }))
                .await;
                assert!(outcome.is_err());
                let sync_outcome = std::panic::catch_unwind(|| {
                    trace("doomed_sync").run_sync(|| fail("parser failed"))
                });
                assert!(sync_outcome.is_err());
                // Recording goes to the root again, not to a panicked step.
                record_usage(Usage::tokens(3, 0)).expect("inside the root");
                add_metadata("recovered", true).expect("inside the root");
                trace("after").run(async { "done" }).await
            })
            .await;
    })
    .await;

    let events = sink.take();
    assert_eq!(events.len(), 1);
    let event = &events[0];
    let step_names: Vec<&str> = event.all_steps().map(|step| step.name.as_str()).collect();
    assert_eq!(step_names, ["before", "after"]);
    assert_eq!(event.tokens, Some(2 + 3));
    assert_eq!(event.prompt_tokens, Some(1 + 3));
    assert_eq!(event.metadata["recovered"], serde_json::json!(true));
    assert_eq!(event.output, serde_json::json!("done"));
    assert_eq!(
        (event.user_id.as_deref(), event.session_id.as_deref()),
        (Some("u"), Some("s"))
    );
}
