//! A local Openlayer-compatible endpoint for the demo: accepts the data-stream and row-update
//! requests Openlayer accepts and records each one as a JSON line, so a user can see exactly
//! what would have been sent.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::{post, put};
use axum::{Json, Router};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The key the demo's sessionizer sends to the local endpoint.
pub const DEMO_KEY: &str = "demo-key";

#[derive(Clone)]
struct Recorder {
    file: Arc<Mutex<std::fs::File>>,
    rows: Arc<AtomicU64>,
}

impl Recorder {
    fn record(&self, line: &Value) {
        let mut file = self
            .file
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Err(error) = writeln!(file, "{line}") {
            tracing::warn!(%error, "failed to record a demo request");
        }
    }
}

fn authorized(headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value == format!("Bearer {DEMO_KEY}"))
}

async fn data_stream(
    State(recorder): State<Recorder>,
    Path(pipeline_id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    if !authorized(&headers) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid api key"})),
        );
    }
    let Some(rows) = body.get("rows").and_then(Value::as_array) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "rows must be an array"})),
        );
    };
    if body
        .pointer("/config/outputColumnName")
        .and_then(Value::as_str)
        .is_none()
    {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "config.outputColumnName is required"})),
        );
    }
    recorder
        .rows
        .fetch_add(rows.len() as u64, Ordering::Relaxed);
    recorder.record(&json!({"request": "data-stream", "pipeline_id": pipeline_id, "config": body["config"], "rows": rows}));
    (StatusCode::OK, Json(json!({"success": true})))
}

async fn row_update(
    State(recorder): State<Recorder>,
    Path(pipeline_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    if !authorized(&headers) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid api key"})),
        );
    }
    recorder.record(&json!({"request": "row-update", "pipeline_id": pipeline_id, "inference_id": query.get("inferenceId"), "row": body["row"]}));
    (StatusCode::OK, Json(json!({"success": true})))
}

/// A running local endpoint.
#[derive(Debug)]
pub struct LocalOpenlayer {
    pub base_url: String,
    pub requests_file: PathBuf,
    rows: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl LocalOpenlayer {
    /// Serves on a free loopback port, recording into `directory/requests.jsonl`.
    ///
    /// # Errors
    /// When the directory, file or port cannot be had.
    pub async fn start(directory: &std::path::Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(directory)?;
        let requests_file = directory.join("requests.jsonl");
        let file = std::fs::File::create(&requests_file)?;
        let rows = Arc::new(AtomicU64::new(0));
        let recorder = Recorder {
            file: Arc::new(Mutex::new(file)),
            rows: rows.clone(),
        };
        let app = Router::new()
            .route(
                "/v1/inference-pipelines/{id}/data-stream",
                post(data_stream),
            )
            .route("/v1/inference-pipelines/{id}/rows", put(row_update))
            .with_state(recorder);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base_url = format!("http://{}/v1", listener.local_addr()?);
        let task = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::warn!(%error, "local openlayer endpoint stopped");
            }
        });
        Ok(LocalOpenlayer {
            base_url,
            requests_file,
            rows,
            task,
        })
    }

    /// Rows accepted so far.
    pub fn rows(&self) -> u64 {
        self.rows.load(Ordering::Relaxed)
    }
}

impl Drop for LocalOpenlayer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
