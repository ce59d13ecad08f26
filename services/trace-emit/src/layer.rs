//! Tower middleware that scopes each request to the user and session named in its headers.
//!
//! The inner service's `call` and the whole response future run inside the scope, so every
//! trace started while serving the request carries the ids, and handlers can still change
//! them with [`crate::set_user_session_context`]. Works with axum, tonic and any tower stack.

use crate::context::{UserSession, with_context};
use http::request::Parts;
use http::{HeaderName, Request};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower_layer::Layer;
use tower_service::Service;
use trace_model::Limits;
use trace_model::validate::validate_id;

/// Header read for the user id unless configured otherwise.
pub const DEFAULT_USER_HEADER: &str = "x-user-id";
/// Header read for the session id unless configured otherwise.
pub const DEFAULT_SESSION_HEADER: &str = "x-session-id";

type Extractor = dyn Fn(&Parts) -> UserSession + Send + Sync;

/// Scopes every request to the ids taken from it.
#[derive(Clone)]
pub struct UserSessionLayer {
    extract: Arc<Extractor>,
}

impl fmt::Debug for UserSessionLayer {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("UserSessionLayer")
            .finish_non_exhaustive()
    }
}

impl Default for UserSessionLayer {
    fn default() -> Self {
        UserSessionLayer::from_headers(
            HeaderName::from_static(DEFAULT_USER_HEADER),
            HeaderName::from_static(DEFAULT_SESSION_HEADER),
        )
    }
}

impl UserSessionLayer {
    /// Reads `x-user-id` and `x-session-id`.
    pub fn new() -> Self {
        UserSessionLayer::default()
    }

    /// Reads the ids from the named headers. Missing, empty, non-UTF-8 or invalid ids (over
    /// 200 characters, control characters) are left unset rather than sent on.
    pub fn from_headers(user_header: HeaderName, session_header: HeaderName) -> Self {
        let limits = Limits::default();
        UserSessionLayer::from_fn(move |parts: &Parts| UserSession {
            user_id: header_id(parts, &user_header, "user_id", &limits),
            session_id: header_id(parts, &session_header, "session_id", &limits),
        })
    }

    /// Takes the ids from the request with `extract` (claims of a verified token, a cookie, ...).
    pub fn from_fn(extract: impl Fn(&Parts) -> UserSession + Send + Sync + 'static) -> Self {
        UserSessionLayer {
            extract: Arc::new(extract),
        }
    }
}

fn header_id(
    parts: &Parts,
    header: &HeaderName,
    field: &'static str,
    limits: &Limits,
) -> Option<String> {
    let value = parts.headers.get(header)?.to_str().ok()?.trim();
    if value.is_empty() {
        return None;
    }
    match validate_id(field, value, limits) {
        Ok(()) => Some(value.to_owned()),
        Err(error) => {
            tracing::debug!(%error, header = %header, "ignoring invalid id header");
            None
        }
    }
}

impl<S> Layer<S> for UserSessionLayer {
    type Service = UserSessionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        UserSessionService {
            inner,
            extract: self.extract.clone(),
        }
    }
}

/// The service [`UserSessionLayer`] wraps around its inner service.
#[derive(Clone)]
pub struct UserSessionService<S> {
    inner: S,
    extract: Arc<Extractor>,
}

impl<S: fmt::Debug> fmt::Debug for UserSessionService<S> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("UserSessionService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, B> Service<Request<B>> for UserSessionService<S>
where
    S: Service<Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let (parts, body) = request.into_parts();
        let ids = (self.extract)(&parts);
        let request = Request::from_parts(parts, body);
        // `call` may do work before returning its future; run it in the scope as well.
        let inner = &mut self.inner;
        let future = crate::context::with_user_session_sync(
            ids.user_id.as_deref(),
            ids.session_id.as_deref(),
            || inner.call(request),
        );
        Box::pin(with_context(ids, future))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::current_user_session;
    use std::convert::Infallible;
    use tower::ServiceExt;
    use tower::service_fn;

    async fn echo_ids(_request: Request<()>) -> Result<UserSession, Infallible> {
        tokio::task::yield_now().await;
        Ok(current_user_session())
    }

    fn request(headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().uri("/");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).expect("request")
    }

    #[tokio::test]
    async fn scopes_request_to_default_headers() {
        let service = UserSessionLayer::new().layer(service_fn(echo_ids));
        let ids = service
            .oneshot(request(&[("x-user-id", "u-1"), ("x-session-id", "s-1")]))
            .await
            .expect("infallible");
        assert_eq!(ids, UserSession::new(Some("u-1"), Some("s-1")));
    }

    #[tokio::test]
    async fn reads_configured_headers_and_ignores_invalid_ids() {
        let layer = UserSessionLayer::from_headers(
            HeaderName::from_static("x-customer"),
            HeaderName::from_static("x-thread"),
        );
        let too_long = "t".repeat(201);
        let ids = layer
            .layer(service_fn(echo_ids))
            .oneshot(request(&[
                ("x-customer", "c-9"),
                ("x-thread", too_long.as_str()),
                ("x-user-id", "not-this-one"),
            ]))
            .await
            .expect("infallible");
        assert_eq!(ids, UserSession::new(Some("c-9"), None));
    }

    #[tokio::test]
    async fn custom_extractor_sees_the_whole_request() {
        let layer = UserSessionLayer::from_fn(|parts| {
            UserSession::new(Some(parts.uri.path().trim_start_matches('/')), None)
        });
        let ids = layer
            .layer(service_fn(echo_ids))
            .oneshot(Request::builder().uri("/alice").body(()).expect("request"))
            .await
            .expect("infallible");
        assert_eq!(ids, UserSession::new(Some("alice"), None));
    }
}
