//! The gateway part's load generator: HTTP/1.1 posts over hyper's connection-level client,
//! keep-alive connections reused from an idle list and opened when none is idle (as a pooled
//! client does). Its CPU per request comes out of the two cores the gateway is measured on:
//! reqwest (its pool, per-request timeouts and header handling) took 20-25 µs per request,
//! this 14-16.

use anyhow::{Context as _, Result, bail};
use axum::body::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use http::{Request, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::net::TcpStream;

/// Longest a request may take before it counts as unanswered.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Posts bodies to one URL with a bearer key.
pub(crate) struct Poster {
    address: SocketAddr,
    path: Uri,
    host: HeaderValue,
    authorization: HeaderValue,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
    /// Idle connections kept at most; more are closed once answered.
    max_idle: usize,
}

impl Poster {
    /// `url` is `http://<ip>:<port><path>`.
    pub(crate) fn new(url: &str, api_key: &str, max_idle: usize) -> Result<Self> {
        let uri: Uri = url.parse().with_context(|| format!("URL {url}"))?;
        let (Some(authority), Some(path)) = (uri.authority(), uri.path_and_query()) else {
            bail!("URL {url} has no host or path");
        };
        Ok(Poster {
            address: authority
                .as_str()
                .parse()
                .with_context(|| format!("{url} is not an IP address and port"))?,
            path: Uri::from_maybe_shared(Bytes::copy_from_slice(path.as_str().as_bytes()))?,
            host: HeaderValue::from_str(authority.as_str())?,
            authorization: HeaderValue::from_str(&format!("Bearer {api_key}"))?,
            idle: Mutex::new(Vec::new()),
            max_idle,
        })
    }

    /// Sends one body; its status, 0 when no answer came.
    pub(crate) async fn post(&self, body: Bytes) -> u16 {
        match tokio::time::timeout(REQUEST_TIMEOUT, self.try_post(body)).await {
            Ok(Ok(status)) => status,
            Ok(Err(_)) | Err(_) => 0,
        }
    }

    async fn try_post(&self, body: Bytes) -> Result<u16> {
        // An idle connection found closed is replaced; one the server closes later fails the
        // request (status 0): the gateway keeps idle connections open.
        let reused = match self.take_idle() {
            Some(mut sender) => sender.ready().await.is_ok().then_some(sender),
            None => None,
        };
        let mut sender = match reused {
            Some(sender) => sender,
            None => {
                let mut sender = self.connect().await?;
                sender.ready().await?;
                sender
            }
        };
        let request = Request::post(self.path.clone())
            .header(HOST, self.host.clone())
            .header(AUTHORIZATION, self.authorization.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(Full::new(body))?;
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        // Read the answer so the connection can carry the next request.
        response.into_body().collect().await?;
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if !sender.is_closed() && idle.len() < self.max_idle {
            idle.push(sender);
        }
        Ok(status)
    }

    /// An idle connection not known to be closed.
    fn take_idle(&self) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        std::iter::from_fn(|| idle.pop()).find(|sender| !sender.is_closed())
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>> {
        let stream = TcpStream::connect(self.address).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            // Ends when the server closes the connection or the sender is dropped.
            let _closed = connection.await;
        });
        Ok(sender)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::post;

    /// 200 when the request carries the key, JSON and the body sent; 503 for `/busy`.
    async fn serve() -> String {
        async fn check(headers: HeaderMap, body: Bytes) -> StatusCode {
            let has = |name, value: &str| headers.get(name).is_some_and(|got| got == value);
            if has(AUTHORIZATION, "Bearer key")
                && has(CONTENT_TYPE, "application/json")
                && body.as_ref() == b"{\"rows\":[]}"
            {
                StatusCode::OK
            } else {
                StatusCode::BAD_REQUEST
            }
        }
        let app = Router::new()
            .route("/v1/rows", post(check))
            .route("/busy", post(|| async { StatusCode::SERVICE_UNAVAILABLE }))
            .route(
                "/close",
                post(|| async { (StatusCode::OK, [(http::header::CONNECTION, "close")]) }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{address}")
    }

    #[tokio::test]
    async fn posts_with_the_key_reuses_its_connection_and_reports_the_status() {
        let base = serve().await;
        let body = Bytes::from_static(b"{\"rows\":[]}");
        let rows = Poster::new(&format!("{base}/v1/rows"), "key", 4).expect("poster");
        assert_eq!(rows.post(body.clone()).await, 200);
        assert_eq!(rows.post(body.clone()).await, 200);
        assert_eq!(
            rows.idle.lock().expect("idle").len(),
            1,
            "one connection, reused"
        );
        assert_eq!(rows.post(Bytes::from_static(b"{}")).await, 400);

        let busy = Poster::new(&format!("{base}/busy"), "key", 4).expect("poster");
        assert_eq!(busy.post(body.clone()).await, 503);

        // The server closes each connection after its answer: the next request takes another.
        let closing = Poster::new(&format!("{base}/close"), "key", 4).expect("poster");
        for _ in 0..3 {
            assert_eq!(closing.post(body.clone()).await, 200);
        }

        let closed = Poster::new("http://127.0.0.1:9/v1/rows", "key", 4).expect("poster");
        assert_eq!(closed.post(Bytes::new()).await, 0, "no answer");
        assert!(
            Poster::new("http://localhost:80/v1/rows", "key", 4).is_err(),
            "not an IP"
        );
    }
}
