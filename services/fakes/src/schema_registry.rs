//! A local Confluent-compatible Schema Registry, for the trace-model tests and the real-broker
//! tests: `GET /schemas/ids/{id}` and
//! `POST /subjects/{subject}/versions`, answering with the registry's media type and counting
//! every request so tests can prove what the client caches.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Media type of every Schema Registry request and response.
pub const REGISTRY_CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// What the fake registry knows and what it has been asked.
#[derive(Debug, Default)]
pub struct RegistryState {
    /// Schema text by id - 1: ids start at 1, as Confluent's do.
    schemas: Mutex<Vec<String>>,
    /// `GET /schemas/ids/{id}` requests per id, answered or not.
    fetches: Mutex<HashMap<u32, usize>>,
    /// `POST /subjects/{subject}/versions` requests per subject.
    registrations: Mutex<HashMap<String, usize>>,
    /// When set, every request is answered with this status (an outage).
    failure: Mutex<Option<StatusCode>>,
    /// When set, requests are accepted and never answered.
    hang: Mutex<bool>,
    /// Headers of every request, to check what the client sends.
    headers_seen: Mutex<Vec<SeenHeaders>>,
}

/// The request headers the tests look at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeenHeaders {
    pub accept: String,
    pub content_type: String,
    pub authorization: String,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().expect("registry state lock is not poisoned")
}

impl RegistryState {
    /// Stores `schema` as another producer would have, returning its id.
    pub fn preload(&self, schema: &str) -> u32 {
        let mut schemas = lock(&self.schemas);
        if let Some(index) = schemas.iter().position(|known| known == schema) {
            return id_of(index);
        }
        schemas.push(schema.to_owned());
        id_of(schemas.len() - 1)
    }

    pub fn num_fetches(&self, id: u32) -> usize {
        lock(&self.fetches).get(&id).copied().unwrap_or(0)
    }

    pub fn num_fetches_total(&self) -> usize {
        lock(&self.fetches).values().sum()
    }

    pub fn num_registrations(&self, subject: &str) -> usize {
        lock(&self.registrations).get(subject).copied().unwrap_or(0)
    }

    pub fn fail_with(&self, status: StatusCode) {
        *lock(&self.failure) = Some(status);
    }

    pub fn recover(&self) {
        *lock(&self.failure) = None;
        *lock(&self.hang) = false;
    }

    pub fn hang(&self) {
        *lock(&self.hang) = true;
    }

    /// Headers of every request, in order.
    pub fn headers_seen(&self) -> Vec<SeenHeaders> {
        lock(&self.headers_seen).clone()
    }

    fn record_headers(&self, headers: &HeaderMap) {
        let value = |name| {
            headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        lock(&self.headers_seen).push(SeenHeaders {
            accept: value(header::ACCEPT),
            content_type: value(header::CONTENT_TYPE),
            authorization: value(header::AUTHORIZATION),
        });
    }

    /// The answer to give instead of the real one during a simulated outage.
    async fn failure(&self) -> Option<Response> {
        let hangs = *lock(&self.hang);
        if hangs {
            std::future::pending::<()>().await;
        }
        let status = (*lock(&self.failure))?;
        Some(registry_response(
            status,
            json!({"error_code": 50001, "message": "simulated outage"}),
        ))
    }
}

fn id_of(index: usize) -> u32 {
    u32::try_from(index + 1).expect("few schemas in a test")
}

fn registry_response(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, REGISTRY_CONTENT_TYPE)],
        body.to_string(),
    )
        .into_response()
}

async fn get_schema_by_id(
    State(state): State<Arc<RegistryState>>,
    Path(id): Path<u32>,
    headers: HeaderMap,
) -> Response {
    state.record_headers(&headers);
    *lock(&state.fetches).entry(id).or_default() += 1;
    if let Some(failure) = state.failure().await {
        return failure;
    }
    let schema = usize::try_from(id)
        .ok()
        .and_then(|id| id.checked_sub(1))
        .and_then(|index| lock(&state.schemas).get(index).cloned());
    match schema {
        Some(schema) => registry_response(StatusCode::OK, json!({ "schema": schema })),
        None => registry_response(
            StatusCode::NOT_FOUND,
            json!({"error_code": 40403, "message": "Schema not found"}),
        ),
    }
}

async fn register_schema(
    State(state): State<Arc<RegistryState>>,
    Path(subject): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.record_headers(&headers);
    *lock(&state.registrations).entry(subject).or_default() += 1;
    if let Some(failure) = state.failure().await {
        return failure;
    }
    let schema = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|request| request.get("schema")?.as_str().map(str::to_owned));
    match schema {
        Some(schema) => registry_response(StatusCode::OK, json!({ "id": state.preload(&schema) })),
        None => registry_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"error_code": 42201, "message": "Invalid schema"}),
        ),
    }
}

/// The registry's routes over `state`.
pub fn app(state: Arc<RegistryState>) -> Router {
    Router::new()
        .route("/schemas/ids/{id}", get(get_schema_by_id))
        .route("/subjects/{subject}/versions", post(register_schema))
        .with_state(state)
}

/// A registry served on `127.0.0.1:0` by a task that stops when this is dropped.
#[derive(Debug)]
pub struct RegistryServer {
    pub url: String,
    pub state: Arc<RegistryState>,
    task: tokio::task::JoinHandle<()>,
}

impl RegistryServer {
    /// Serves an empty registry on a free loopback port.
    ///
    /// # Panics
    /// When no loopback port can be bound.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a local port");
        let address = listener.local_addr().expect("bound address");
        let state = Arc::new(RegistryState::default());
        let router = app(Arc::clone(&state));
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .await
                .expect("registry server runs");
        });
        RegistryServer {
            url: format!("http://{address}"),
            state,
            task,
        }
    }
}

impl Drop for RegistryServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A registry URL nobody listens on: the port was bound, then released.
pub fn unreachable_registry_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a local port");
    let address = listener.local_addr().expect("bound address");
    drop(listener);
    format!("http://{address}")
}
