//! `UserSessionLayer` in an axum app: every trace started while serving a request carries the
//! ids from that request's headers, handlers can change them, and requests without ids
//! produce traces without ids.

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderName, Request, StatusCode};
use axum::routing::get;
use std::collections::BTreeSet;
use std::sync::Arc;
use tower::ServiceExt;
use trace_emit::{
    CHAT_COMPLETION, CollectingSink, RETRIEVER, UserSessionLayer, in_current_context,
    set_user_session_context, trace,
};
use trace_model::TraceEvent;

/// The traced function the handlers call: a root trace with two steps.
async fn answer_question(sink: Arc<CollectingSink>, phase: &'static str) -> String {
    trace("answer")
        .input("phase", phase)
        .sink(sink)
        .run(async {
            let context = trace("retrieve")
                .step_type(RETRIEVER)
                .run(async {
                    tokio::task::yield_now().await;
                    vec!["Paris is the capital of France."]
                })
                .await;
            trace("complete")
                .step_type(CHAT_COMPLETION)
                .run(async move { format!("From {} document(s): Paris.", context.len()) })
                .await
        })
        .await
}

async fn answer(State(sink): State<Arc<CollectingSink>>) -> String {
    answer_question(sink, "only").await
}

/// Traces once with the request's ids, then signs the user in and traces again.
async fn sign_in_then_answer(State(sink): State<Arc<CollectingSink>>) -> String {
    answer_question(sink.clone(), "before_sign_in").await;
    let _guard = set_user_session_context(Some("signed-in-user"), Some("fresh-session"))
        .expect("UserSessionLayer opens a scope for every request");
    answer_question(sink, "after_sign_in").await
}

/// Answers from a spawned task, as background work started by a handler would.
async fn answer_in_background(State(sink): State<Arc<CollectingSink>>) -> String {
    tokio::spawn(in_current_context(answer_question(sink, "background")))
        .await
        .expect("background task")
}

fn app(sink: Arc<CollectingSink>, layer: UserSessionLayer) -> Router {
    Router::new()
        .route("/answer", get(answer))
        .route("/sign-in", get(sign_in_then_answer))
        .route("/background", get(answer_in_background))
        .with_state(sink)
        .layer(layer)
}

async fn send(app: &Router, uri: &str, headers: &[(&str, &str)]) -> String {
    let mut builder = Request::builder().uri(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(Body::empty()).expect("valid request");
    let response = app
        .clone()
        .oneshot(request)
        .await
        .expect("axum routers are infallible");
    assert_eq!(response.status(), StatusCode::OK);
    let body = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .expect("small body");
    String::from_utf8(body.to_vec()).expect("UTF-8 body")
}

fn ids(event: &TraceEvent) -> (Option<&str>, Option<&str>) {
    (event.user_id.as_deref(), event.session_id.as_deref())
}

fn phase(event: &TraceEvent) -> &str {
    event.inputs["phase"].as_str().expect("phase input")
}

#[tokio::test]
async fn default_headers_tag_every_trace_of_the_request() {
    let sink = CollectingSink::new();
    let app = app(sink.clone(), UserSessionLayer::new());
    let body = send(
        &app,
        "/answer",
        &[("x-user-id", "user-7"), ("x-session-id", "chat-42")],
    )
    .await;
    assert_eq!(body, "From 1 document(s): Paris.");

    let events = sink.take();
    assert_eq!(events.len(), 1);
    assert_eq!(ids(&events[0]), (Some("user-7"), Some("chat-42")));
    let step_names: Vec<&str> = events[0].steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(step_names, ["retrieve", "complete"]);
}

#[tokio::test]
async fn configured_headers_replace_the_defaults() {
    let sink = CollectingSink::new();
    let layer = UserSessionLayer::from_headers(
        HeaderName::from_static("x-customer-id"),
        HeaderName::from_static("x-conversation-id"),
    );
    let app = app(sink.clone(), layer);
    send(
        &app,
        "/answer",
        &[
            ("x-customer-id", "customer-3"),
            ("x-conversation-id", "conversation-9"),
            ("x-user-id", "not-this-user"),
            ("x-session-id", "not-this-session"),
        ],
    )
    .await;
    send(&app, "/answer", &[("x-user-id", "not-this-user")]).await;

    let events = sink.take();
    assert_eq!(events.len(), 2);
    assert_eq!(
        ids(&events[0]),
        (Some("customer-3"), Some("conversation-9"))
    );
    assert_eq!(ids(&events[1]), (None, None));
}

#[tokio::test]
async fn handler_can_change_the_ids_mid_request_without_leaking_them() {
    let sink = CollectingSink::new();
    let app = app(sink.clone(), UserSessionLayer::new());
    send(
        &app,
        "/sign-in",
        &[("x-user-id", "anonymous-1"), ("x-session-id", "visit-1")],
    )
    .await;
    send(&app, "/answer", &[]).await;

    let events = sink.take();
    assert_eq!(events.len(), 3);
    assert_eq!(phase(&events[0]), "before_sign_in");
    assert_eq!(ids(&events[0]), (Some("anonymous-1"), Some("visit-1")));
    assert_eq!(phase(&events[1]), "after_sign_in");
    assert_eq!(
        ids(&events[1]),
        (Some("signed-in-user"), Some("fresh-session"))
    );
    assert_eq!(phase(&events[2]), "only");
    assert_eq!(ids(&events[2]), (None, None));
}

#[tokio::test]
async fn requests_without_id_headers_produce_traces_without_ids() {
    let sink = CollectingSink::new();
    let app = app(sink.clone(), UserSessionLayer::new());
    send(&app, "/answer", &[]).await;
    send(&app, "/answer", &[("x-user-id", "user-only")]).await;
    send(&app, "/answer", &[("x-session-id", "  ")]).await;

    let events = sink.take();
    assert_eq!(events.len(), 3);
    assert_eq!(ids(&events[0]), (None, None));
    assert_eq!(ids(&events[1]), (Some("user-only"), None));
    assert_eq!(ids(&events[2]), (None, None));
}

#[tokio::test]
async fn background_work_spawned_in_current_context_keeps_the_request_ids() {
    let sink = CollectingSink::new();
    let app = app(sink.clone(), UserSessionLayer::new());
    send(
        &app,
        "/background",
        &[("x-user-id", "user-5"), ("x-session-id", "chat-5")],
    )
    .await;

    let events = sink.take();
    assert_eq!(events.len(), 1);
    assert_eq!(phase(&events[0]), "background");
    assert_eq!(ids(&events[0]), (Some("user-5"), Some("chat-5")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_keep_their_own_ids() {
    const NUM_REQUESTS: usize = 200;
    let sink = CollectingSink::new();
    let app = app(sink.clone(), UserSessionLayer::new());
    let requests: Vec<_> = (0..NUM_REQUESTS)
        .map(|request| {
            let app = app.clone();
            tokio::spawn(async move {
                let user = format!("user-{request}");
                let session = format!("session-{request}");
                let uri = if request % 2 == 0 {
                    "/answer"
                } else {
                    "/sign-in"
                };
                send(
                    &app,
                    uri,
                    &[("x-user-id", &user), ("x-session-id", &session)],
                )
                .await
            })
        })
        .collect();
    for request in requests {
        request.await.expect("request task");
    }

    let events = sink.take();
    assert_eq!(events.len(), NUM_REQUESTS / 2 + 2 * (NUM_REQUESTS / 2));
    let mut header_users = BTreeSet::new();
    for event in &events {
        if phase(event) == "after_sign_in" {
            assert_eq!(ids(event), (Some("signed-in-user"), Some("fresh-session")));
            continue;
        }
        let user = event.user_id.as_deref().expect("header user id");
        let session = event.session_id.as_deref().expect("header session id");
        assert_eq!(
            user.strip_prefix("user-"),
            session.strip_prefix("session-"),
            "a trace mixed two requests' ids"
        );
        assert!(header_users.insert(user), "{user} traced twice");
    }
    let expected_users: BTreeSet<String> = (0..NUM_REQUESTS)
        .map(|request| format!("user-{request}"))
        .collect();
    assert!(
        header_users
            .iter()
            .copied()
            .eq(expected_users.iter().map(String::as_str))
    );
}
