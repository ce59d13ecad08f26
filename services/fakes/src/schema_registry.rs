//! A local Confluent-compatible Schema Registry, for the trace-model tests, the sessionizer's
//! start and preflight checks and the real-broker tests: `GET /schemas/ids/{id}`,
//! `GET /subjects` and `POST /subjects/{subject}/versions`, answering with the registry's
//! media type and counting every request so tests can prove what the client caches.
//!
//! Like Confluent Cloud, it can require credentials ([`RegistryState::require`]): a request
//! without the expected `Authorization` header is answered 401 with the registry's error
//! body, before anything else is looked at.

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
    /// When set, requests without these credentials are answered 401.
    required_auth: Mutex<Option<RequiredAuth>>,
    /// Subjects registered through `POST /subjects/{subject}/versions`, for `GET /subjects`.
    subjects: Mutex<Vec<String>>,
}

/// Credentials the fake registry requires on every request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequiredAuth {
    /// HTTP basic (`Authorization: Basic base64(username:password)`), as Confluent Cloud's
    /// Schema Registry API keys.
    Basic { username: String, password: String },
    /// `Authorization: Bearer <token>`.
    Bearer(String),
}

impl RequiredAuth {
    /// The `Authorization` header value that satisfies this requirement.
    pub fn header_value(&self) -> String {
        match self {
            RequiredAuth::Basic { username, password } => {
                format!(
                    "Basic {}",
                    base64(format!("{username}:{password}").as_bytes())
                )
            }
            RequiredAuth::Bearer(token) => format!("Bearer {token}"),
        }
    }
}

/// Standard base64 with padding (RFC 4648), enough for a basic-auth header.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut encoded = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let triple = chunk.iter().enumerate().fold(0u32, |bits, (index, byte)| {
            bits | u32::from(*byte) << (16 - 8 * index)
        });
        for index in 0..4 {
            if index <= chunk.len() {
                let sextet = (triple >> (18 - 6 * index)) & 0x3F;
                encoded.push(char::from(ALPHABET[sextet as usize]));
            } else {
                encoded.push('=');
            }
        }
    }
    encoded
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

    /// From now on, every request must carry `auth` or is answered 401.
    pub fn require(&self, auth: RequiredAuth) {
        *lock(&self.required_auth) = Some(auth);
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

    /// 401, as Confluent's registry answers it, when credentials are required and `headers`
    /// lack them.
    fn refusal(&self, headers: &HeaderMap) -> Option<Response> {
        let required = lock(&self.required_auth).clone()?;
        let sent = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok());
        if sent == Some(required.header_value().as_str()) {
            return None;
        }
        Some(registry_response(
            StatusCode::UNAUTHORIZED,
            json!({"error_code": 401, "message": "Unauthorized"}),
        ))
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
    if let Some(refusal) = state.refusal(&headers) {
        return refusal;
    }
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
    *lock(&state.registrations)
        .entry(subject.clone())
        .or_default() += 1;
    if let Some(refusal) = state.refusal(&headers) {
        return refusal;
    }
    if let Some(failure) = state.failure().await {
        return failure;
    }
    let schema = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|request| request.get("schema")?.as_str().map(str::to_owned));
    match schema {
        Some(schema) => {
            let mut subjects = lock(&state.subjects);
            if !subjects.contains(&subject) {
                subjects.push(subject);
            }
            drop(subjects);
            registry_response(StatusCode::OK, json!({ "id": state.preload(&schema) }))
        }
        None => registry_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"error_code": 42201, "message": "Invalid schema"}),
        ),
    }
}

/// `GET /subjects`: the subjects registered so far (what preflight and the service's start
/// check ask, to try the credentials cheaply).
async fn list_subjects(State(state): State<Arc<RegistryState>>, headers: HeaderMap) -> Response {
    state.record_headers(&headers);
    if let Some(refusal) = state.refusal(&headers) {
        return refusal;
    }
    if let Some(failure) = state.failure().await {
        return failure;
    }
    let subjects = lock(&state.subjects).clone();
    registry_response(StatusCode::OK, json!(subjects))
}

/// The registry's routes over `state`.
pub fn app(state: Arc<RegistryState>) -> Router {
    Router::new()
        .route("/schemas/ids/{id}", get(get_schema_by_id))
        .route("/subjects", get(list_subjects))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_encode_as_rfc_4648_base64() {
        let auth = RequiredAuth::Basic {
            username: "registry-user".to_owned(),
            password: "s3cret".to_owned(),
        };
        assert_eq!(auth.header_value(), "Basic cmVnaXN0cnktdXNlcjpzM2NyZXQ=");
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foob"), "Zm9vYg==");
    }
}
