//! What the Openlayer-compatible server saw: data-stream requests as the responder closure
//! sees them and as recorded, row updates, and the JSON-lines journal the demo shows users.

use axum::body::Bytes;
use axum::http::HeaderMap;
use serde_json::Value;
use std::fs::File;
use std::io::Write as _;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

/// A data-stream request as the responder closure sees it, after the checks passed.
#[derive(Debug)]
pub struct IncomingRequest<'a> {
    pub pipeline_id: &'a str,
    pub headers: &'a HeaderMap,
    pub body_len: usize,
    pub config: &'a Value,
    pub rows: &'a [Value],
    /// How many data-stream requests came before this one.
    pub index: usize,
}

/// One data-stream request, as received and answered.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// Percent-decoded from the path.
    pub pipeline_id: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// `config` of the body, when the body was JSON with one.
    pub config: Option<Value>,
    /// `rows` of the body, when the body was JSON with an array of them.
    pub rows: Vec<Value>,
    /// What the server answered.
    pub status: u16,
    pub arrived: Instant,
}

impl RecordedRequest {
    pub fn accepted(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// One `PUT .../rows?inferenceId=..` request.
#[derive(Debug, Clone)]
pub struct RowUpdate {
    pub pipeline_id: String,
    /// `None` when the query lacked it (answered 400).
    pub inference_id: Option<String>,
    pub row: Option<Value>,
    pub config: Option<Value>,
    pub status: u16,
    pub arrived: Instant,
}

/// Accepted requests appended to a file as JSON lines, so a user can see exactly what would
/// have been sent: `{"request": "data-stream", "pipeline_id", "config", "rows"}` and
/// `{"request": "row-update", "pipeline_id", "inference_id", "row"}`.
#[derive(Debug)]
pub(super) struct Journal {
    file: Mutex<File>,
}

impl Journal {
    /// Creates (or truncates) `path`, creating its directory.
    pub(super) fn create(path: &Path) -> std::io::Result<Journal> {
        if let Some(directory) = path.parent() {
            std::fs::create_dir_all(directory)?;
        }
        Ok(Journal {
            file: Mutex::new(File::create(path)?),
        })
    }

    pub(super) fn record(&self, line: &Value) {
        let mut file = self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // A journal line lost is a line missing from what the user sees, not a failed request.
        if let Err(error) = writeln!(file, "{line}") {
            eprintln!("openlayer fake: cannot write the journal: {error}");
        }
    }
}
