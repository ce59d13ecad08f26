//! Many concurrent requests on a multi-threaded runtime: every task sees only its own user and
//! session after every `.await`, and every trace it emits carries only its own ids.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Barrier;
use trace_emit::{
    CHAT_COMPLETION, CollectingSink, RETRIEVER, Usage, UserSession, current_user_session,
    in_current_context, record_usage, set_user_session_context, trace, user_session_scope,
    with_user_session,
};

const NUM_TASKS: usize = 1_000;
const NUM_TRACES_PER_TASK: usize = 2;
const NUM_PAUSES_PER_TRACE: usize = 3;

fn user_of(task: usize) -> String {
    format!("user-{task}")
}

fn session_of(task: usize) -> String {
    format!("session-{task}")
}

fn own_ids(task: usize) -> UserSession {
    UserSession::new(Some(&user_of(task)), Some(&session_of(task)))
}

fn assert_own_ids(task: usize, after: &str) {
    assert_eq!(
        current_user_session(),
        own_ids(task),
        "task {task} saw other ids after {after}"
    );
}

/// Pauses of 0 to 2 ms, different on every run (SplitMix64 seeded from a random hasher).
struct Pauses {
    state: u64,
}

impl Pauses {
    fn for_task(task: usize) -> Self {
        Pauses {
            state: RandomState::new().hash_one(task),
        }
    }

    fn next(&mut self) -> Duration {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut mixed = self.state;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        mixed ^= mixed >> 31;
        Duration::from_micros(mixed % 2_001)
    }

    fn take(&mut self) -> [Duration; NUM_PAUSES_PER_TRACE] {
        std::array::from_fn(|_| self.next())
    }
}

/// One traced request turn: a retrieval step with a nested embedding step, then a completion.
async fn traced_turn(
    task: usize,
    turn: usize,
    sink: Arc<CollectingSink>,
    pauses: [Duration; NUM_PAUSES_PER_TRACE],
) -> String {
    trace("turn")
        .input("task", task)
        .input("turn", turn)
        .sink(sink)
        .run(async move {
            assert_own_ids(task, "starting the trace");
            tokio::task::yield_now().await;
            assert_own_ids(task, "yield_now in the root");
            let documents = trace("retrieve")
                .step_type(RETRIEVER)
                .input("task", task)
                .run(async move {
                    tokio::time::sleep(pauses[0]).await;
                    assert_own_ids(task, "sleep in retrieve");
                    let embedding_size = trace("embed")
                        .input("task", task)
                        .run(async move {
                            tokio::task::yield_now().await;
                            assert_own_ids(task, "yield_now in embed");
                            tokio::time::sleep(pauses[1]).await;
                            assert_own_ids(task, "sleep in embed");
                            record_usage(Usage::tokens(1, 0)).expect("inside embed");
                            task
                        })
                        .await;
                    assert_own_ids(task, "the embed step");
                    vec![format!("document for {embedding_size}")]
                })
                .await;
            assert_own_ids(task, "the retrieve step");
            trace("complete")
                .step_type(CHAT_COMPLETION)
                .input("task", task)
                .run(async move {
                    tokio::time::sleep(pauses[2]).await;
                    assert_own_ids(task, "sleep in complete");
                    format!("answer for {task} from {}", documents.len())
                })
                .await
        })
        .await
}

async fn serve_task(task: usize, sink: Arc<CollectingSink>, start: Arc<Barrier>) {
    let mut pauses = Pauses::for_task(task);
    start.wait().await;
    assert_own_ids(task, "the start barrier");
    for turn in 0..NUM_TRACES_PER_TASK {
        let answer = traced_turn(task, turn, sink.clone(), pauses.take()).await;
        assert_eq!(answer, format!("answer for {task} from 1"));
        assert_own_ids(task, "a whole trace");
    }
}

/// Re-raises a task's panic so that its own assertion message is reported.
async fn join_all(handles: Vec<tokio::task::JoinHandle<()>>) {
    for handle in handles {
        if let Err(error) = handle.await {
            std::panic::resume_unwind(error.into_panic());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_tasks_only_ever_see_and_emit_their_own_ids() {
    let sink = CollectingSink::new();
    let start = Arc::new(Barrier::new(NUM_TASKS));
    let handles = (0..NUM_TASKS)
        .map(|task| {
            let sink = sink.clone();
            let start = start.clone();
            if task % 2 == 0 {
                // Guard form: an empty scope, then the ids set with a guard after an await.
                tokio::spawn(user_session_scope(async move {
                    assert_eq!(current_user_session(), UserSession::default());
                    tokio::task::yield_now().await;
                    assert_eq!(current_user_session(), UserSession::default());
                    let guard =
                        set_user_session_context(Some(&user_of(task)), Some(&session_of(task)))
                            .expect("inside user_session_scope");
                    serve_task(task, sink, start).await;
                    drop(guard);
                    assert_eq!(current_user_session(), UserSession::default());
                }))
            } else {
                // Scope form.
                let user = user_of(task);
                let session = session_of(task);
                tokio::spawn(with_user_session(
                    Some(&user),
                    Some(&session),
                    serve_task(task, sink, start),
                ))
            }
        })
        .collect();
    join_all(handles).await;
    assert_eq!(current_user_session(), UserSession::default());

    let events = sink.take();
    assert_eq!(events.len(), NUM_TASKS * NUM_TRACES_PER_TASK);
    let mut num_traces_by_task: BTreeMap<usize, usize> = BTreeMap::new();
    for event in &events {
        let task = event.inputs["task"]
            .as_u64()
            .and_then(|task| usize::try_from(task).ok())
            .expect("every trace records its task");
        *num_traces_by_task.entry(task).or_default() += 1;
        assert_eq!(event.user_id.as_deref(), Some(user_of(task).as_str()));
        assert_eq!(event.session_id.as_deref(), Some(session_of(task).as_str()));
        assert_eq!(
            event.output,
            serde_json::json!(format!("answer for {task} from 1"))
        );
        let step_names: Vec<&str> = event.all_steps().map(|step| step.name.as_str()).collect();
        assert_eq!(step_names, ["retrieve", "embed", "complete"]);
        for step in event.all_steps() {
            assert_eq!(
                step.inputs["task"],
                serde_json::json!(task),
                "a step of task {task}'s trace came from another task"
            );
        }
        assert_eq!(event.tokens, Some(1), "usage from another task's step");
    }
    assert_eq!(num_traces_by_task.len(), NUM_TASKS);
    assert!(
        num_traces_by_task
            .values()
            .all(|&num_traces| num_traces == NUM_TRACES_PER_TASK)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spawned_work_inherits_ids_only_through_in_current_context() {
    with_user_session(Some("parent-user"), Some("parent-session"), async {
        let carried = tokio::spawn(in_current_context(async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            current_user_session()
        }));
        let plain = tokio::spawn(async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            current_user_session()
        });
        assert_eq!(
            carried.await.expect("carried task"),
            UserSession::new(Some("parent-user"), Some("parent-session"))
        );
        assert_eq!(plain.await.expect("plain task"), UserSession::default());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn guard_in_a_spawned_copy_does_not_change_the_parent_scope() {
    user_session_scope(async {
        let _parent_guard =
            set_user_session_context(Some("parent-user"), None).expect("inside the scope");
        let child = tokio::spawn(in_current_context(async {
            let _child_guard = set_user_session_context(Some("child-user"), Some("child-session"))
                .expect("in_current_context opens a scope");
            tokio::task::yield_now().await;
            current_user_session()
        }));
        assert_eq!(
            child.await.expect("child task"),
            UserSession::new(Some("child-user"), Some("child-session"))
        );
        assert_eq!(
            current_user_session(),
            UserSession::new(Some("parent-user"), None)
        );
    })
    .await;
}
