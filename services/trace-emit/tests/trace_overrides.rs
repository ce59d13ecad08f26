//! `update_trace_user_session` changes the ids of the current trace only: not the request's
//! context, not the next trace, not a concurrent trace elsewhere.

use tokio::sync::oneshot;
use trace_emit::{
    CollectingSink, NoActiveTrace, UserSession, current_user_session, in_current_context,
    set_user_session_context, trace, update_trace_user_session, user_session_scope,
    with_user_session,
};
use trace_model::TraceEvent;

fn ids(event: &TraceEvent) -> (Option<&str>, Option<&str>) {
    (event.user_id.as_deref(), event.session_id.as_deref())
}

fn event_named<'a>(events: &'a [TraceEvent], name: &str) -> &'a TraceEvent {
    let mut matching = events.iter().filter(|event| event.name == name);
    let event = matching
        .next()
        .unwrap_or_else(|| panic!("no trace named {name}"));
    assert!(matching.next().is_none(), "several traces named {name}");
    event
}

#[tokio::test]
async fn override_changes_only_the_current_trace_and_keeps_the_other_id() {
    let sink = CollectingSink::new();
    with_user_session(Some("u1"), Some("s1"), async {
        trace("overridden")
            .sink(sink.clone())
            .run(async {
                update_trace_user_session(Some("u2"), None).expect("inside a trace");
                assert_eq!(
                    current_user_session(),
                    UserSession::new(Some("u1"), Some("s1"))
                );
                tokio::task::yield_now().await;
                assert_eq!(
                    current_user_session(),
                    UserSession::new(Some("u1"), Some("s1"))
                );
            })
            .await;
        assert_eq!(
            current_user_session(),
            UserSession::new(Some("u1"), Some("s1"))
        );
        trace("next").sink(sink.clone()).run(async {}).await;
    })
    .await;

    let events = sink.take();
    assert_eq!(events.len(), 2);
    assert_eq!(
        ids(event_named(&events, "overridden")),
        (Some("u2"), Some("s1"))
    );
    assert_eq!(ids(event_named(&events, "next")), (Some("u1"), Some("s1")));
}

#[tokio::test]
async fn override_from_a_nested_step_applies_to_the_whole_trace() {
    let sink = CollectingSink::new();
    with_user_session(Some("u1"), Some("s1"), async {
        trace("root")
            .sink(sink.clone())
            .run(async {
                trace("login")
                    .run(async {
                        trace("resolve_session")
                            .run(async {
                                update_trace_user_session(None, Some("s-from-step"))
                                    .expect("inside a nested step");
                            })
                            .await;
                    })
                    .await;
                // A later override wins field by field; the session override stays.
                update_trace_user_session(Some("u-first"), None).expect("inside the root");
                update_trace_user_session(Some("u-last"), None).expect("inside the root");
            })
            .await;
    })
    .await;

    let events = sink.take();
    assert_eq!(events.len(), 1);
    assert_eq!(ids(&events[0]), (Some("u-last"), Some("s-from-step")));
}

#[tokio::test]
async fn override_sets_ids_on_a_trace_outside_any_scope() {
    let sink = CollectingSink::new();
    trace("anonymous_then_known")
        .sink(sink.clone())
        .run(async {
            update_trace_user_session(Some("u"), Some("s")).expect("inside a trace");
        })
        .await;
    assert_eq!(current_user_session(), UserSession::default());
    let events = sink.take();
    assert_eq!(events.len(), 1);
    assert_eq!(ids(&events[0]), (Some("u"), Some("s")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn override_does_not_reach_a_concurrent_trace_in_another_task() {
    let sink = CollectingSink::new();
    let (overridden_tx, overridden_rx) = oneshot::channel::<()>();
    let (other_done_tx, other_done_rx) = oneshot::channel::<()>();
    with_user_session(Some("u1"), Some("s1"), async {
        let other_sink = sink.clone();
        // Both traces are open at the same time: "overriding" overrides, then waits for
        // "other" to finish before finishing itself.
        let overriding = tokio::spawn(in_current_context(
            trace("overriding").sink(sink.clone()).run(async move {
                update_trace_user_session(Some("u-override"), Some("s-override"))
                    .expect("inside a trace");
                overridden_tx.send(()).expect("other trace waits");
                other_done_rx.await.expect("other trace finishes");
            }),
        ));
        let other = tokio::spawn(in_current_context(async move {
            trace("other")
                .sink(other_sink)
                .run(async move {
                    overridden_rx.await.expect("overriding trace signals");
                    assert_eq!(
                        current_user_session(),
                        UserSession::new(Some("u1"), Some("s1"))
                    );
                })
                .await;
            other_done_tx.send(()).expect("overriding trace waits");
        }));
        overriding.await.expect("overriding task");
        other.await.expect("other task");

        let events = sink.take();
        assert_eq!(events.len(), 2);
        assert_eq!(
            ids(event_named(&events, "overriding")),
            (Some("u-override"), Some("s-override"))
        );
        assert_eq!(ids(event_named(&events, "other")), (Some("u1"), Some("s1")));
    })
    .await;
}

#[tokio::test]
async fn concurrent_root_traces_in_one_task_keep_separate_overrides() {
    let sink = CollectingSink::new();
    with_user_session(Some("u1"), Some("s1"), async {
        tokio::join!(
            trace("first").sink(sink.clone()).run(async {
                tokio::task::yield_now().await;
                update_trace_user_session(Some("u-first"), None).expect("inside first");
                tokio::task::yield_now().await;
            }),
            trace("second").sink(sink.clone()).run(async {
                tokio::task::yield_now().await;
                update_trace_user_session(None, Some("s-second")).expect("inside second");
                tokio::task::yield_now().await;
            }),
        );
    })
    .await;

    let events = sink.take();
    assert_eq!(events.len(), 2);
    assert_eq!(
        ids(event_named(&events, "first")),
        (Some("u-first"), Some("s1"))
    );
    assert_eq!(
        ids(event_named(&events, "second")),
        (Some("u1"), Some("s-second"))
    );
}

#[tokio::test]
async fn override_outside_a_trace_is_an_error_and_changes_nothing() {
    let sink = CollectingSink::new();
    user_session_scope(async {
        let _guard = set_user_session_context(Some("u1"), Some("s1")).expect("inside the scope");
        assert_eq!(
            update_trace_user_session(Some("u2"), Some("s2")),
            Err(NoActiveTrace)
        );
        assert_eq!(
            current_user_session(),
            UserSession::new(Some("u1"), Some("s1"))
        );
        trace("after").sink(sink.clone()).run(async {}).await;
    })
    .await;
    assert_eq!(
        update_trace_user_session(Some("u2"), None),
        Err(NoActiveTrace)
    );

    let events = sink.take();
    assert_eq!(events.len(), 1);
    assert_eq!(ids(&events[0]), (Some("u1"), Some("s1")));
}
