//! Openlayer data-stream client for the sink: one batch in, every row acknowledged or refused.
//!
//! [`OpenlayerSink::ship`] posts `{"config": .., "rows": [..]}` to
//! `{base_url}/inference-pipelines/{id}/data-stream`, writing each row's already-serialized
//! JSON straight into the body. What happens next is decided by [`super::retry`]:
//!
//! - transient failures (no response, 408, 409, 429, 5xx) are retried after a backoff, never
//!   sooner than the server's `Retry-After`, until success or until the batch's retry
//!   deadline would pass; then the rows are refused with the last status and body. A
//!   `Retry-After` holds back every request of the sink, not only the retried one;
//! - 413 splits the rows in halves, shipped one after the other, down to single rows; a single
//!   row still too large is refused with 413;
//! - 400 and 422 may be caused by a few rows only, so the batch is bisected the same way to let
//!   the good rows through; at most [`MAX_CONTENT_SPLITS`] splits per batch, after which the
//!   remaining parts are refused whole (a wrong `config` fails every row, and costs ~64
//!   requests instead of two per row);
//! - other refusals (401, 403, 404, ...) refuse the rows at once: splitting cannot help.
//!
//! Parts of a batch are shipped sequentially, in row order; nothing is sent twice on purpose
//! (a retry after a timeout may duplicate rows server-side: inference ids stay stable).
//! `ship` never gives up on its own when `retry_deadline` is `None`: cancel it by dropping the
//! future; rows it had not reported stay unacknowledged.
//!
//! The API key lives in a header value marked sensitive, is never formatted, and reqwest
//! errors are stripped of their URL before they reach a rejection or a log.

use super::retry::{self, Backoff, RetryAction, TransportError};
use super::{Rejection, RowJson, ShipReport, SinkSettings};
use crate::metrics::Metrics;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use reqwest::{StatusCode, Url};
use std::fmt;
use std::fmt::Write as _;
use std::ops::Range;
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;
use tokio::time::Instant;
use tracing::{debug, instrument, warn};

/// Response bodies kept in a [`Rejection`]: enough for Openlayer's error messages, bounded so
/// a proxy's HTML error page does not bloat dead letters.
pub const MAX_REJECTION_BODY_BYTES: usize = 4096;

/// Splits allowed per batch to isolate rows refused with 400 or 422 (each split costs two
/// requests). Enough to pin down a few bad rows in a batch of thousands.
pub const MAX_CONTENT_SPLITS: u32 = 32;

/// Sent with every request, so Openlayer can tell our traffic apart.
const USER_AGENT: &str = concat!("sessionizer/", env!("CARGO_PKG_VERSION"));

/// Metric label for attempts that got no response.
const NO_RESPONSE: &str = "error";

/// Construction failures; shipping itself never fails (see [`ShipReport`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// A setting the sink cannot work with. The message never echoes the key, nor the URL
    /// (it could carry credentials).
    #[error("invalid openlayer sink setting `{setting}`: {reason}")]
    InvalidSetting {
        setting: &'static str,
        reason: String,
    },
    /// reqwest could not build its client (TLS backend initialization).
    #[error("failed to build the openlayer http client")]
    BuildClient(#[source] reqwest::Error),
}

/// Attempts of a final-turn row update before it is given up (it is best-effort).
const MAX_ROW_UPDATE_ATTEMPTS: usize = 5;

/// Why a pipeline could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RetrieveError {
    #[error("invalid pipeline id: {0}")]
    InvalidId(&'static str),
    #[error("no response from openlayer")]
    Request(#[source] reqwest::Error),
}

/// Ships batches of rows to Openlayer. Cheap to share: `ship` takes `&self` and may run
/// concurrently for different batches.
pub struct OpenlayerSink {
    client: reqwest::Client,
    /// Validated, without a trailing slash.
    base_url: String,
    /// `Bearer <key>`, marked sensitive so even `HeaderValue`'s `Debug` hides it.
    authorization: HeaderValue,
    settings: SinkSettings,
    metrics: Metrics,
    /// Set by a `Retry-After` (or `retry-after-ms`) on any response: no request of this sink,
    /// whichever batch it carries, starts before it. The hint is about the server, not about
    /// the one request that got it, so other batches in flight honour it too.
    not_before: Mutex<Option<Instant>>,
}

impl fmt::Debug for OpenlayerSink {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("OpenlayerSink")
            .field("base_url", &self.base_url)
            .field("request_timeout", &self.settings.request_timeout)
            .field("initial_backoff", &self.settings.initial_backoff)
            .field("max_backoff", &self.settings.max_backoff)
            .field("retry_deadline", &self.settings.retry_deadline)
            .field("verify_tls", &self.settings.verify_tls)
            .finish_non_exhaustive()
    }
}

/// How one part of a batch ended.
enum Settled {
    Acked,
    /// 413.
    TooLarge(Rejection),
    /// Refused for good; `row_specific` when smaller parts may get through.
    Refused {
        rejection: Rejection,
        row_specific: bool,
    },
    /// Still failing when the retry deadline came.
    GaveUp(Rejection),
}

/// What one request got back.
struct Attempt {
    action: RetryAction,
    /// `None` when no response came.
    status: Option<StatusCode>,
    /// The body (truncated), or what went wrong when no response came.
    detail: String,
}

impl Attempt {
    fn rejection(&self) -> Rejection {
        Rejection {
            status: self.status.map(|status| status.as_u16()),
            body: self.detail.clone(),
        }
    }

    fn status_label(&self) -> &str {
        self.status.as_ref().map_or(NO_RESPONSE, StatusCode::as_str)
    }
}

impl OpenlayerSink {
    /// Builds the HTTP client: request timeout from the settings, TLS verification unless
    /// `verify_tls` is false, redirects not followed (a POST must not turn into a GET, nor the
    /// key travel elsewhere), and no proxy from the environment (`HTTP(S)_PROXY` would silently
    /// reroute the key-bearing traffic; an explicit proxy setting can be added when needed).
    ///
    /// # Errors
    /// [`SinkError::InvalidSetting`] for a base URL that is not an absolute `http(s)` URL
    /// without credentials, query or fragment, an empty API key or one that cannot be a header
    /// value, or a zero request timeout; [`SinkError::BuildClient`] when reqwest fails.
    pub fn try_new(settings: SinkSettings, metrics: Metrics) -> Result<Self, SinkError> {
        let base_url = settings.base_url.trim_end_matches('/').to_owned();
        validate_base_url(&base_url)?;
        let authorization = bearer_header(&settings)?;
        if settings.request_timeout.is_zero() {
            return Err(SinkError::InvalidSetting {
                setting: "request_timeout",
                reason: "must be above zero, e.g. 60 s".to_owned(),
            });
        }
        if !settings.verify_tls {
            warn!("openlayer tls certificate verification is off");
        }
        let client = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .timeout(settings.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .tls_danger_accept_invalid_certs(!settings.verify_tls)
            .build()
            .map_err(|error| SinkError::BuildClient(error.without_url()))?;
        Ok(OpenlayerSink {
            client,
            base_url,
            authorization,
            settings,
            metrics,
            not_before: Mutex::new(None),
        })
    }

    /// Ships `rows` to the inference pipeline `pipeline_id` with `config`, retrying and
    /// splitting as the module doc says. Returns once every row is acknowledged or refused;
    /// the report lists the refused ones, by index into `rows`, in order.
    #[instrument(skip(self, config, rows), fields(num_rows = rows.len()))]
    pub async fn ship(
        &self,
        pipeline_id: &str,
        config: &serde_json::Value,
        rows: &[RowJson],
    ) -> ShipReport {
        let mut report = ShipReport::default();
        if rows.is_empty() {
            return report;
        }
        let url = match self.data_stream_url(pipeline_id) {
            Ok(url) => url,
            Err(reason) => {
                warn!(reason, "openlayer pipeline id cannot be shipped to");
                self.count_error("invalid_pipeline_id");
                let rejection = Rejection {
                    status: None,
                    body: format!("invalid pipeline id: {reason}"),
                };
                report
                    .rejected
                    .extend((0..rows.len()).map(|index| (index, rejection.clone())));
                return report;
            }
        };
        let config_json = config.to_string();
        let deadline = self
            .settings
            .retry_deadline
            .map(|retry_deadline| Instant::now() + retry_deadline);
        let mut backoff = Backoff::new(self.settings.initial_backoff, self.settings.max_backoff);
        let mut content_splits_left = MAX_CONTENT_SPLITS;
        // A stack of parts still to ship, the next one on top: halves are pushed second half
        // first, so rows go out in order and the report comes out sorted.
        let mut pending: Vec<Range<usize>> = Vec::with_capacity(16);
        pending.push(0..rows.len());
        while let Some(part) = pending.pop() {
            let settled = self
                .settle(
                    &url,
                    &config_json,
                    &rows[part.clone()],
                    deadline,
                    &mut backoff,
                )
                .await;
            let (rejection, error_type) = match settled {
                Settled::Acked => {
                    debug!(num_rows = part.len(), "openlayer acknowledged rows");
                    continue;
                }
                Settled::TooLarge(_) if part.len() > 1 => {
                    debug!(
                        num_rows = part.len(),
                        "openlayer request too large, splitting"
                    );
                    push_halves(&mut pending, part);
                    continue;
                }
                Settled::Refused {
                    row_specific: true, ..
                } if part.len() > 1 && content_splits_left > 0 => {
                    content_splits_left -= 1;
                    debug!(num_rows = part.len(), "openlayer refused rows, bisecting");
                    push_halves(&mut pending, part);
                    continue;
                }
                Settled::TooLarge(rejection) => (rejection, "openlayer_row_too_large"),
                Settled::Refused { rejection, .. } => (rejection, "openlayer_refused"),
                Settled::GaveUp(rejection) => (rejection, "openlayer_retry_deadline"),
            };
            warn!(
                status = rejection.status,
                error_type,
                num_rows = part.len(),
                "openlayer rows refused"
            );
            self.count_error(error_type);
            report
                .rejected
                .extend(part.map(|index| (index, rejection.clone())));
        }
        report
    }

    /// Sends one part until it is acknowledged, refused, or the deadline would pass.
    async fn settle(
        &self,
        url: &str,
        config_json: &str,
        rows: &[RowJson],
        deadline: Option<Instant>,
        backoff: &mut Backoff,
    ) -> Settled {
        let request = match self
            .client
            .post(url)
            .header(AUTHORIZATION, self.authorization.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(request_body(config_json, rows))
            .build()
        {
            Ok(request) => request,
            Err(error) => {
                return Settled::Refused {
                    rejection: Rejection {
                        status: None,
                        body: describe_transport_error(error),
                    },
                    row_specific: false,
                };
            }
        };
        let mut num_attempts: u32 = 0;
        loop {
            // In-memory bodies always clone (cheaply: the bytes are shared).
            let Some(this_request) = request.try_clone() else {
                return Settled::Refused {
                    rejection: Rejection {
                        status: None,
                        body: "request body cannot be resent".to_owned(),
                    },
                    row_specific: false,
                };
            };
            num_attempts = num_attempts.saturating_add(1);
            let attempt = self.attempt(this_request).await;
            let (reason, server_hint) = match attempt.action {
                RetryAction::Successful => {
                    backoff.reset();
                    return Settled::Acked;
                }
                RetryAction::TooLarge => return Settled::TooLarge(attempt.rejection()),
                RetryAction::DontRetry { .. } => {
                    return Settled::Refused {
                        rejection: attempt.rejection(),
                        row_specific: attempt.status.is_some_and(retry::may_be_row_specific),
                    };
                }
                RetryAction::Retry { reason, after } => (reason, after),
            };
            let wait = backoff.next_wait(server_hint, fastrand::f64());
            if deadline.is_some_and(|deadline| Instant::now() + wait > deadline) {
                return Settled::GaveUp(attempt.rejection());
            }
            self.metrics
                .openlayer_retries
                .with_label_values(&[reason])
                .inc();
            warn!(
                status = attempt.status_label(),
                reason,
                attempt = num_attempts,
                wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                "openlayer request failed, retrying"
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// Sets columns of an already streamed row (`PUT .../rows?inferenceId=`), used to mark a
    /// session's final turn. Retried like data-stream requests, at most
    /// `MAX_ROW_UPDATE_ATTEMPTS` times; returns whether Openlayer accepted it.
    pub async fn update_row(
        &self,
        pipeline_id: &str,
        inference_id: &str,
        columns: &serde_json::Value,
    ) -> bool {
        self.update_row_with_config(pipeline_id, inference_id, columns, None)
            .await
    }

    /// [`OpenlayerSink::update_row`] sending `config` with the columns (the `config` an SDK
    /// gave its row update, forwarded by the gateway); `None` sends `"config": null`.
    pub async fn update_row_with_config(
        &self,
        pipeline_id: &str,
        inference_id: &str,
        columns: &serde_json::Value,
        config: Option<&serde_json::Value>,
    ) -> bool {
        // Unreserved-only percent-encoding is valid in a query value as in a path segment.
        let (Ok(segment), Ok(query)) = (
            encode_path_segment(pipeline_id),
            encode_path_segment(inference_id),
        ) else {
            self.count_error("invalid_pipeline_id");
            return false;
        };
        let url = format!(
            "{}/inference-pipelines/{segment}/rows?inferenceId={query}",
            self.base_url
        );
        let body = serde_json::json!({ "row": columns, "config": config }).to_string();
        let mut backoff = Backoff::new(self.settings.initial_backoff, self.settings.max_backoff);
        for _ in 0..MAX_ROW_UPDATE_ATTEMPTS {
            let request = self
                .client
                .put(&url)
                .header(AUTHORIZATION, self.authorization.clone())
                .header(CONTENT_TYPE, "application/json")
                .body(body.clone())
                .build();
            let Ok(request) = request else {
                return false;
            };
            let attempt = self.attempt(request).await;
            match attempt.action {
                RetryAction::Successful => return true,
                RetryAction::Retry { reason, after } => {
                    self.metrics
                        .openlayer_retries
                        .with_label_values(&[reason])
                        .inc();
                    tokio::time::sleep(backoff.next_wait(after, fastrand::f64())).await;
                }
                RetryAction::DontRetry { .. } | RetryAction::TooLarge => break,
            }
        }
        self.count_error("openlayer_row_update");
        false
    }

    /// Waits until the server's last `Retry-After` has passed.
    async fn honour_server_wait(&self) {
        loop {
            let not_before = *self
                .not_before
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match not_before {
                Some(instant) if instant > Instant::now() => {
                    tokio::time::sleep_until(instant).await
                }
                _ => return,
            }
        }
    }

    fn remember_server_wait(&self, action: &RetryAction) {
        let RetryAction::Retry {
            after: Some(hint), ..
        } = action
        else {
            return;
        };
        let until = Instant::now() + (*hint).min(retry::MAX_SERVER_WAIT);
        let mut not_before = self
            .not_before
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if not_before.is_none_or(|current| current < until) {
            *not_before = Some(until);
        }
    }

    /// One request, with its metrics; it starts no sooner than the server's last wait hint.
    async fn attempt(&self, request: reqwest::Request) -> Attempt {
        self.honour_server_wait().await;
        let started = Instant::now();
        let attempt = match self.client.execute(request).await {
            Ok(mut response) => {
                let status = response.status();
                let action =
                    RetryAction::for_response(status, response.headers(), SystemTime::now());
                // Read even a success's small body, so the connection goes back to the pool.
                let detail = read_body_truncated(&mut response).await;
                Attempt {
                    action,
                    status: Some(status),
                    detail,
                }
            }
            Err(error) => Attempt {
                action: RetryAction::for_transport_error(TransportError::classify(&error)),
                status: None,
                detail: describe_transport_error(error),
            },
        };
        self.remember_server_wait(&attempt.action);
        let status_label = attempt.status_label();
        self.metrics
            .openlayer_requests
            .with_label_values(&[status_label])
            .inc();
        self.metrics
            .openlayer_request_duration
            .with_label_values(&[status_label])
            .observe(started.elapsed().as_secs_f64());
        attempt
    }

    /// Reads a pipeline (`GET {base}/inference-pipelines/{id}`, the SDK's
    /// `inference_pipelines.retrieve`): writes nothing, so preflight can check the key and the
    /// pipeline id with it. Returns the HTTP status; 200 means the key may use the pipeline.
    ///
    /// # Errors
    /// An id that cannot be a path segment, or no response (connection, TLS, timeout).
    pub async fn retrieve_pipeline(
        &self,
        pipeline_id: &str,
    ) -> Result<reqwest::StatusCode, RetrieveError> {
        let url = format!(
            "{}/inference-pipelines/{}",
            self.base_url,
            encode_path_segment(pipeline_id).map_err(RetrieveError::InvalidId)?
        );
        let response = self
            .client
            .get(&url)
            .header(AUTHORIZATION, self.authorization.clone())
            .send()
            .await
            .map_err(|error| RetrieveError::Request(error.without_url()))?;
        Ok(response.status())
    }

    fn data_stream_url(&self, pipeline_id: &str) -> Result<String, &'static str> {
        Ok(format!(
            "{}/inference-pipelines/{}/data-stream",
            self.base_url,
            encode_path_segment(pipeline_id)?
        ))
    }

    fn count_error(&self, error_type: &str) {
        self.metrics
            .errors
            .with_label_values(&[error_type, "sending"])
            .inc();
    }
}

fn push_halves(pending: &mut Vec<Range<usize>>, part: Range<usize>) {
    let middle = part.start + part.len() / 2;
    pending.push(middle..part.end);
    pending.push(part.start..middle);
}

fn validate_base_url(base_url: &str) -> Result<(), SinkError> {
    let invalid = |reason: &str| SinkError::InvalidSetting {
        setting: "base_url",
        reason: format!("{reason}, e.g. `https://api.openlayer.com/v1`"),
    };
    let url = Url::parse(base_url).map_err(|error| invalid(&format!("not a url ({error})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("the scheme must be http or https"));
    }
    if !url.has_host() {
        return Err(invalid("a host is required"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("credentials in the url are not supported"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("a query or fragment is not supported"));
    }
    Ok(())
}

fn bearer_header(settings: &SinkSettings) -> Result<HeaderValue, SinkError> {
    let invalid = |reason: &str| SinkError::InvalidSetting {
        setting: "api_key",
        reason: reason.to_owned(),
    };
    let key = settings.api_key.expose();
    if key.trim().is_empty() {
        return Err(invalid("empty; set OPENLAYER_API_KEY"));
    }
    let mut header = HeaderValue::from_str(&format!("Bearer {key}"))
        .map_err(|_| invalid("not usable in an http header (control characters?)"))?;
    header.set_sensitive(true);
    Ok(header)
}

/// Percent-encodes everything but RFC 3986 unreserved characters, so an id cannot add path
/// segments, a query or a fragment. `.` and `..` are refused: URL parsers resolve them (even
/// percent-encoded) as dot segments.
fn encode_path_segment(segment: &str) -> Result<String, &'static str> {
    match segment {
        "" => return Err("empty"),
        "." | ".." => return Err("a dot segment"),
        _ => {}
    }
    let mut encoded = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(encoded, "%{byte:02X}");
        }
    }
    Ok(encoded)
}

/// `{"config":<config>,"rows":[<row>,...]}` with each row's JSON copied verbatim.
fn request_body(config_json: &str, rows: &[RowJson]) -> Vec<u8> {
    const FRAME: &[u8] = br#"{"config":,"rows":[]}"#;
    let separators_len = rows.len().saturating_sub(1);
    let rows_len: usize = rows.iter().map(|row| row.get().len()).sum::<usize>() + separators_len;
    let mut body = Vec::with_capacity(FRAME.len() + config_json.len() + rows_len);
    body.extend_from_slice(br#"{"config":"#);
    body.extend_from_slice(config_json.as_bytes());
    body.extend_from_slice(br#","rows":["#);
    for (index, row) in rows.iter().enumerate() {
        if index > 0 {
            body.push(b',');
        }
        body.extend_from_slice(row.get().as_bytes());
    }
    body.extend_from_slice(b"]}");
    body
}

/// The body, cut at [`MAX_REJECTION_BODY_BYTES`]; the rest is not read.
async fn read_body_truncated(response: &mut reqwest::Response) -> String {
    let mut bytes = Vec::new();
    let mut suffix = "";
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = MAX_REJECTION_BODY_BYTES - bytes.len();
                if chunk.len() > room {
                    bytes.extend_from_slice(&chunk[..room]);
                    suffix = "...[truncated]";
                    break;
                }
                bytes.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(_) => {
                suffix = "...[body unreadable]";
                break;
            }
        }
    }
    let mut body = String::from_utf8_lossy(&bytes).into_owned();
    body.push_str(suffix);
    body
}

/// The error and its causes, without the URL, e.g. `error sending request: client error
/// (Connect): tcp connect error: Connection refused (os error 111)`.
fn describe_transport_error(error: reqwest::Error) -> String {
    let error = error.without_url();
    let kind = match TransportError::classify(&error) {
        TransportError::Timeout => "timeout",
        TransportError::Connect => "connection failed",
        TransportError::Interrupted => "connection interrupted",
        TransportError::InvalidRequest => "invalid request",
    };
    let mut description = format!("no response ({kind}): {error}");
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        let _ = write!(description, ": {cause}");
        source = cause.source();
    }
    if description.len() > MAX_REJECTION_BODY_BYTES {
        let mut cut = MAX_REJECTION_BODY_BYTES;
        while !description.is_char_boundary(cut) {
            cut -= 1;
        }
        description.truncate(cut);
    }
    description
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
    use std::time::Duration;

    fn settings(base_url: &str, api_key: &str) -> SinkSettings {
        SinkSettings {
            base_url: base_url.to_owned(),
            api_key: Secret::new(api_key),
            request_timeout: Duration::from_secs(5),
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(100),
            retry_deadline: None,
            verify_tls: true,
        }
    }

    fn metrics() -> Metrics {
        Metrics::register(&prometheus::Registry::new()).expect("fresh registry")
    }

    fn sink(base_url: &str) -> OpenlayerSink {
        OpenlayerSink::try_new(settings(base_url, "sk-secret-key"), metrics()).expect("valid sink")
    }

    fn setting_error(base_url: &str, api_key: &str) -> String {
        match OpenlayerSink::try_new(settings(base_url, api_key), metrics()) {
            Err(error @ SinkError::InvalidSetting { .. }) => error.to_string(),
            other => panic!("expected an invalid setting, got {other:?}"),
        }
    }

    #[test]
    fn builds_the_data_stream_url() {
        let sink = sink("https://api.openlayer.com/v1/");
        assert_eq!(
            sink.data_stream_url("0f3c-12ab").expect("valid id"),
            "https://api.openlayer.com/v1/inference-pipelines/0f3c-12ab/data-stream"
        );
    }

    #[test]
    fn percent_encodes_pipeline_ids() {
        assert_eq!(
            encode_path_segment("a/b?c#d e%").expect("encodable"),
            "a%2Fb%3Fc%23d%20e%25"
        );
        assert_eq!(encode_path_segment("é").expect("encodable"), "%C3%A9");
        assert_eq!(
            encode_path_segment("A-z_0.9~").expect("encodable"),
            "A-z_0.9~"
        );
        assert_eq!(encode_path_segment("..."), Ok("...".to_owned()));
        assert!(encode_path_segment("").is_err());
        assert!(encode_path_segment(".").is_err());
        assert!(encode_path_segment("..").is_err());
    }

    #[test]
    fn writes_rows_verbatim_into_the_body() {
        let rows: Vec<RowJson> = ["{\"b\": 1,  \"a\":2.50}", "{\"x\":\"\\u00e9\"}"]
            .into_iter()
            .map(|row| RowJson::try_from_text(row).expect("valid json"))
            .collect();
        let body = request_body(r#"{"outputColumnName":"output"}"#, &rows);
        assert_eq!(
            String::from_utf8(body.clone()).expect("utf-8"),
            r#"{"config":{"outputColumnName":"output"},"rows":[{"b": 1,  "a":2.50},{"x":"\u00e9"}]}"#
        );
        let parsed: serde_json::Value = serde_json::from_slice(&body).expect("valid json body");
        assert_eq!(parsed["rows"][1]["x"], "é");
        assert_eq!(body.capacity(), body.len(), "exact preallocation");
    }

    #[test]
    fn rejects_unusable_settings_without_echoing_them() {
        let message = setting_error("ftp://user:hunter2@example.com/v1", "sk-key");
        assert!(message.contains("base_url"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
        let message = setting_error("https://user:hunter2@example.com/v1", "sk-key");
        assert!(message.contains("credentials"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
        assert!(setting_error("not a url", "sk-key").contains("base_url"));
        assert!(setting_error("https://example.com/v1?x=1", "sk-key").contains("query"));
        assert!(setting_error("https://example.com/v1", " ").contains("api_key"));
        let message = setting_error("https://example.com/v1", "sk-bad\nkey");
        assert!(
            message.contains("api_key") && !message.contains("sk-bad"),
            "{message}"
        );
        let mut zero_timeout = settings("https://example.com/v1", "sk-key");
        zero_timeout.request_timeout = Duration::ZERO;
        assert!(OpenlayerSink::try_new(zero_timeout, metrics()).is_err());
    }

    #[test]
    fn debug_output_never_shows_the_key() {
        let sink = sink("https://api.openlayer.com/v1");
        let debug = format!("{sink:?} {:?}", sink.authorization);
        assert!(!debug.contains("sk-secret-key"), "{debug}");
        assert!(debug.contains("api.openlayer.com"), "{debug}");
    }

    #[tokio::test]
    async fn refuses_every_row_for_an_unusable_pipeline_id_without_a_request() {
        // Port 9 (discard) on loopback: a request would fail, not hang, if one were made.
        let sink = sink("http://127.0.0.1:9/v1");
        let rows: Vec<RowJson> = (0..3)
            .map(|index| RowJson::try_from_text(format!("{{\"i\":{index}}}")).expect("json"))
            .collect();
        let report = sink.ship("..", &serde_json::json!({}), &rows).await;
        assert_eq!(report.rejected.len(), 3);
        assert!(
            report
                .rejected
                .iter()
                .enumerate()
                .all(|(position, (index, rejection))| position == *index
                    && rejection.status.is_none()
                    && rejection.body.contains("dot segment"))
        );
        assert_eq!(
            sink.metrics
                .openlayer_requests
                .with_label_values(&[NO_RESPONSE])
                .get(),
            0
        );
    }

    #[tokio::test]
    async fn ships_nothing_for_an_empty_batch() {
        let sink = sink("http://127.0.0.1:9/v1");
        let report = sink.ship("pipeline", &serde_json::json!({}), &[]).await;
        assert_eq!(report, ShipReport::default());
    }

    #[test]
    fn splits_parts_in_order() {
        let mut pending = Vec::new();
        push_halves(&mut pending, 0..5);
        assert_eq!(pending, [2..5, 0..2]);
        let first = pending.pop().expect("a part");
        push_halves(&mut pending, first);
        assert_eq!(pending.pop(), Some(0..1));
        assert_eq!(pending.pop(), Some(1..2));
        assert_eq!(pending.pop(), Some(2..5));
    }
}
