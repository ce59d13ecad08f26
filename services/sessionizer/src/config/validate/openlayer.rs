//! Validation of `[openlayer]`: the base URL, the API key (given or read from its file),
//! retry timings and the default pipeline; what the sink runs with.

use super::super::DEFAULT_OPENLAYER_BASE_URL;
use super::super::model::OpenlayerConfig;
use super::super::validated::{ApiKeySource, OpenlayerSettings};
use crate::secret::Secret;
use crate::sink::SinkSettings;
use service_kit::problems::Problems;
use std::path::PathBuf;
use std::time::Duration;
use trace_model::Limits;

pub(super) fn validate_openlayer(
    openlayer: OpenlayerConfig,
    limits: &Limits,
    problems: &mut Problems,
    warnings: &mut Vec<String>,
) -> (Option<SinkSettings>, Option<OpenlayerSettings>) {
    let base_url = validate_base_url(openlayer.base_url.as_deref(), problems, warnings);
    let api_key = read_api_key(openlayer.api_key, openlayer.api_key_file, problems);
    problems.require_at_least_one(
        "openlayer.request_timeout_secs",
        openlayer.request_timeout_secs,
        "60",
    );
    problems.require_at_least_one(
        "openlayer.initial_backoff_ms",
        openlayer.initial_backoff_ms,
        "500",
    );
    if openlayer.max_backoff_ms < openlayer.initial_backoff_ms {
        problems.push(
            "openlayer.max_backoff_ms",
            format!(
                "({}) must be at least openlayer.initial_backoff_ms ({}), e.g. `8000`",
                openlayer.max_backoff_ms, openlayer.initial_backoff_ms
            ),
        );
    }
    if openlayer.retry_deadline_secs == Some(0) {
        problems.push(
            "openlayer.retry_deadline_secs",
            "must be at least 1, e.g. `3600`; leave it unset to retry forever",
        );
    }
    let default_pipeline_id = openlayer
        .default_pipeline_id
        .filter(|pipeline_id| !pipeline_id.trim().is_empty());
    match &default_pipeline_id {
        Some(pipeline_id) => {
            let num_chars = pipeline_id.chars().count();
            if num_chars > limits.max_id_chars || pipeline_id.chars().any(char::is_control) {
                problems.push(
                    "openlayer.default_pipeline_id",
                    format!(
                        "must be printable and at most {} characters (limits.max_id_chars), \
                         e.g. an inference pipeline id from the Openlayer app",
                        limits.max_id_chars
                    ),
                );
            }
        }
        None => warnings.push(
            "openlayer.default_pipeline_id is not set (nor OPENLAYER_INFERENCE_PIPELINE_ID): \
             traces without a pipeline_id cannot be routed to Openlayer"
                .to_owned(),
        ),
    }
    let verify_tls = openlayer.verify_tls.unwrap_or(true);
    if !verify_tls {
        warnings.push(
            "openlayer.verify_tls is off: the Openlayer server's certificate is not checked"
                .to_owned(),
        );
    }
    let (Some(base_url), Some((api_key, api_key_source))) = (base_url, api_key) else {
        return (None, None);
    };
    let sink = SinkSettings {
        base_url,
        api_key,
        request_timeout: Duration::from_secs(openlayer.request_timeout_secs),
        initial_backoff: Duration::from_millis(openlayer.initial_backoff_ms),
        max_backoff: Duration::from_millis(openlayer.max_backoff_ms),
        retry_deadline: openlayer.retry_deadline_secs.map(Duration::from_secs),
        verify_tls,
    };
    let settings = OpenlayerSettings {
        default_pipeline_id,
        mark_final_turn: openlayer.mark_final_turn,
        api_key_source,
    };
    (Some(sink), Some(settings))
}

/// The base URL without trailing slashes, or `None` after recording why it is unusable.
fn validate_base_url(
    configured: Option<&str>,
    problems: &mut Problems,
    warnings: &mut Vec<String>,
) -> Option<String> {
    const KEY: &str = "openlayer.base_url";
    let trimmed = configured
        .map(str::trim)
        .filter(|text| !text.is_empty())
        .unwrap_or(DEFAULT_OPENLAYER_BASE_URL)
        .trim_end_matches('/');
    let example = format!("e.g. `{DEFAULT_OPENLAYER_BASE_URL}` or `http://127.0.0.1:8080/v1`");
    let url = match reqwest::Url::parse(trimmed) {
        Ok(url) => url,
        Err(error) => {
            problems.push(
                KEY,
                format!("(or OPENLAYER_BASE_URL) is not a URL ({error}), {example}"),
            );
            return None;
        }
    };
    if !url.username().is_empty() || url.password().is_some() {
        // Not echoed: the credentials would be printed.
        problems.push(
            KEY,
            "must not contain credentials; the API key goes in openlayer.api_key or \
             OPENLAYER_API_KEY",
        );
        return None;
    }
    let is_http = matches!(url.scheme(), "http" | "https");
    if !is_http
        || url.host_str().is_none()
        || url.query().is_some()
        || url.fragment().is_some()
        || !url.path().ends_with("/v1")
    {
        problems.push(
            KEY,
            format!(
                "(or OPENLAYER_BASE_URL) must be an http(s) URL ending in `/v1`, {example} \
                 (got `{trimmed}`)"
            ),
        );
        return None;
    }
    let host = url.host_str().unwrap_or_default();
    let is_loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|address| address.is_loopback());
    if url.scheme() == "http" && !is_loopback {
        warnings.push(format!(
            "openlayer.base_url `{trimmed}` is plain http to another host: the API key travels \
             unencrypted"
        ));
    }
    Some(trimmed.to_owned())
}

/// The API key and where it came from, or `None` after recording why there is none.
fn read_api_key(
    api_key: Option<Secret>,
    api_key_file: Option<PathBuf>,
    problems: &mut Problems,
) -> Option<(Secret, ApiKeySource)> {
    let api_key = api_key.filter(|key| !key.expose().trim().is_empty());
    let (key, source) = match (api_key, api_key_file) {
        (Some(_), Some(_)) => {
            problems.push(
                "openlayer.api_key",
                "and openlayer.api_key_file are both set; set only one",
            );
            return None;
        }
        (Some(key), None) => (Secret::new(key.expose().trim()), ApiKeySource::Value),
        (None, Some(path)) => match std::fs::read_to_string(&path) {
            // The io::Error says why (missing, permissions, not UTF-8), never what the file holds.
            Err(error) => {
                problems.push(
                    "openlayer.api_key_file",
                    format!("cannot be read: `{}`: {error}", path.display()),
                );
                return None;
            }
            Ok(content) if content.trim().is_empty() => {
                problems.push(
                    "openlayer.api_key_file",
                    format!("`{}` is empty; it must hold the API key", path.display()),
                );
                return None;
            }
            Ok(content) => (Secret::new(content.trim()), ApiKeySource::File(path)),
        },
        (None, None) => {
            problems.push(
                "openlayer.api_key",
                "is not set: set OPENLAYER_API_KEY, or openlayer.api_key_file to a file holding \
                 the key, e.g. a Kubernetes Secret mounted at `/etc/sessionizer/openlayer-api-key`",
            );
            return None;
        }
    };
    let printable = key
        .expose()
        .chars()
        .all(|character| character.is_ascii_graphic());
    if !printable {
        let key_path = match &source {
            ApiKeySource::Value => "openlayer.api_key",
            ApiKeySource::File(_) => "openlayer.api_key_file",
        };
        let location = match &source {
            ApiKeySource::Value => String::new(),
            ApiKeySource::File(path) => format!("`{}` ", path.display()),
        };
        problems.push(
            key_path,
            format!(
                "{location}holds a key with spaces or non-printable characters (the value is \
                 not shown); an API key is one word of printable ASCII"
            ),
        );
        return None;
    }
    Some((key, source))
}
