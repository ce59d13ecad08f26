//! The user and session of the request being served, scoped to one tokio task.
//!
//! Openlayer's Python SDK keeps these in context variables; the async-Rust equivalent is a
//! `tokio::task_local!`: it survives `.await`, moves with the task between worker threads, and
//! is invisible to every other task. Two forms:
//! - a scope, [`with_user_session`], which sets the ids for one future;
//! - a guard, [`set_user_session_context`], which changes the ids of the enclosing scope until
//!   it is dropped (also when unwinding from a panic). The guard needs an enclosing scope: the
//!   [`crate::UserSessionLayer`] opens one per request, and [`user_session_scope`] opens one
//!   anywhere else. There is deliberately no thread-local fallback: under a multi-threaded
//!   runtime a thread-local would leak ids between tasks.
//!
//! Task-locals do not follow `tokio::spawn`; wrap spawned work in [`in_current_context`].

use std::cell::RefCell;
use std::future::Future;
use thiserror::Error;

/// The ids that tag every trace started in the current scope.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct UserSession {
    pub user_id: Option<String>,
    pub session_id: Option<String>,
}

impl UserSession {
    pub fn new(user_id: Option<&str>, session_id: Option<&str>) -> Self {
        UserSession {
            user_id: user_id.map(str::to_owned),
            session_id: session_id.map(str::to_owned),
        }
    }
}

tokio::task_local! {
    static CONTEXT: RefCell<UserSession>;
}

/// Runs `future` with `user_id` and `session_id` as the current ids.
pub fn with_user_session<F: Future>(
    user_id: Option<&str>,
    session_id: Option<&str>,
    future: F,
) -> impl Future<Output = F::Output> + use<F> {
    // `use<F>`: the ids are copied before this returns, so the future does not borrow them
    // (edition 2024 would otherwise tie it to their lifetime and refuse `tokio::spawn`).
    with_context(UserSession::new(user_id, session_id), future)
}

/// Runs `future` with `ids` as the current ids.
pub fn with_context<F: Future>(ids: UserSession, future: F) -> impl Future<Output = F::Output> {
    CONTEXT.scope(RefCell::new(ids), future)
}

/// Runs `future` in an empty scope, so that [`set_user_session_context`] works inside it.
pub fn user_session_scope<F: Future>(future: F) -> impl Future<Output = F::Output> {
    with_context(UserSession::default(), future)
}

/// Runs the synchronous `body` with the given ids (for code outside any async task).
pub fn with_user_session_sync<R>(
    user_id: Option<&str>,
    session_id: Option<&str>,
    body: impl FnOnce() -> R,
) -> R {
    CONTEXT.sync_scope(RefCell::new(UserSession::new(user_id, session_id)), body)
}

/// Wraps `future` so that it carries the current ids; use it around work given to
/// `tokio::spawn`, which does not inherit task-locals.
pub fn in_current_context<F: Future>(future: F) -> impl Future<Output = F::Output> {
    with_context(current_user_session(), future)
}

/// The ids of the current scope; both `None` outside any scope.
pub fn current_user_session() -> UserSession {
    CONTEXT
        .try_with(|cell| cell.borrow().clone())
        .unwrap_or_default()
}

/// Returned when the guard form is used outside any scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error(
    "no user/session scope: serve the request through UserSessionLayer or wrap the future in user_session_scope()"
)]
pub struct NoContextScope;

/// Restores the previous ids of the scope when dropped.
#[derive(Debug)]
#[must_use = "the ids are cleared again when the guard is dropped"]
pub struct ContextGuard {
    previous: Option<UserSession>,
}

/// Sets the ids of the enclosing scope until the returned guard is dropped.
///
/// # Errors
/// [`NoContextScope`] outside any scope (see the module docs).
pub fn set_user_session_context(
    user_id: Option<&str>,
    session_id: Option<&str>,
) -> Result<ContextGuard, NoContextScope> {
    let ids = UserSession::new(user_id, session_id);
    CONTEXT
        .try_with(|cell| cell.replace(ids))
        .map(|previous| ContextGuard {
            previous: Some(previous),
        })
        .map_err(|_| NoContextScope)
}

/// Clears the ids of the enclosing scope (no-op outside any scope).
pub fn clear_user_session_context() {
    // Outside a scope there is nothing to clear.
    let _outside_scope = CONTEXT.try_with(|cell| cell.replace(UserSession::default()));
}

impl Drop for ContextGuard {
    fn drop(&mut self) {
        if let Some(previous) = self.previous.take() {
            // The guard may be dropped after its scope ended (moved out); nothing to restore then.
            let _outside_scope = CONTEXT.try_with(|cell| cell.replace(previous));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn scope_survives_await_and_ends_with_the_future() {
        let seen = with_user_session(Some("u1"), Some("s1"), async {
            tokio::task::yield_now().await;
            current_user_session()
        })
        .await;
        assert_eq!(seen, UserSession::new(Some("u1"), Some("s1")));
        assert_eq!(current_user_session(), UserSession::default());
    }

    #[tokio::test]
    async fn guard_restores_previous_ids_on_drop() {
        with_user_session(Some("outer"), None, async {
            {
                let _guard = set_user_session_context(Some("inner"), Some("s")).expect("in scope");
                tokio::task::yield_now().await;
                assert_eq!(
                    current_user_session(),
                    UserSession::new(Some("inner"), Some("s"))
                );
            }
            assert_eq!(
                current_user_session(),
                UserSession::new(Some("outer"), None)
            );
        })
        .await;
    }

    #[test]
    fn guard_outside_any_scope_is_an_error() {
        assert_eq!(
            set_user_session_context(Some("u"), None).map(drop),
            Err(NoContextScope)
        );
    }

    #[tokio::test]
    async fn explicit_clear_empties_the_scope() {
        user_session_scope(async {
            let _guard = set_user_session_context(Some("u"), Some("s")).expect("in scope");
            clear_user_session_context();
            assert_eq!(current_user_session(), UserSession::default());
        })
        .await;
    }

    #[tokio::test]
    async fn spawned_tasks_get_ids_only_through_in_current_context() {
        with_user_session(Some("u"), Some("s"), async {
            let plain = tokio::spawn(async { current_user_session() });
            let carried = tokio::spawn(in_current_context(async { current_user_session() }));
            assert_eq!(plain.await.expect("join"), UserSession::default());
            assert_eq!(
                carried.await.expect("join"),
                UserSession::new(Some("u"), Some("s"))
            );
        })
        .await;
    }

    #[test]
    fn sync_scope_sets_ids_for_the_closure() {
        let seen = with_user_session_sync(Some("u"), None, current_user_session);
        assert_eq!(seen, UserSession::new(Some("u"), None));
    }
}
