//! Logging: the `[log]` section both services take (`format`: `text` for people, `json` for
//! log collectors; `filter`: `tracing`'s filter syntax), and the subscriber it sets up.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// `[log]`: what is logged and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` for people, `json` (one object per line) for log collectors.
    pub format: LogFormat,
    /// Which events are logged, in `tracing` filter syntax: a level, then levels per crate,
    /// e.g. `info,sessionizer=debug` or `info,gateway=debug`.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::default(),
            // `tracing`'s usual production level.
            filter: "info".to_owned(),
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl TryFrom<String> for LogFormat {
    type Error = String;

    /// Parsed by hand: the config crate's own message for an unknown variant lists none of
    /// the valid ones.
    fn try_from(text: String) -> Result<Self, Self::Error> {
        match text.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!(
                "unknown log format `{text}`, expected `text` or `json`"
            )),
        }
    }
}

/// Where a JSON line puts an event's own fields (its message among them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonFields {
    /// Beside `timestamp`, `level` and `target` (the sessionizer's lines).
    TopLevel,
    /// Under `fields` (the gateway's lines); kept so that its collectors' parsing holds.
    Nested,
}

/// Why logging could not be set up.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LoggingError {
    /// `log.filter` is not in `tracing`'s filter syntax.
    #[error(transparent)]
    Filter(#[from] tracing_subscriber::filter::ParseError),
    /// A global subscriber is installed already.
    #[error(transparent)]
    Install(Box<dyn std::error::Error + Send + Sync>),
}

/// Installs the global subscriber: `filter` in `tracing`'s syntax (e.g. `info,gateway=debug`),
/// lines written to stdout as `format` says; colour codes only for a person at a terminal,
/// never into a log collector.
///
/// # Errors
/// An invalid filter, or a subscriber already installed.
pub fn init(format: LogFormat, filter: &str, json_fields: JsonFields) -> Result<(), LoggingError> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(json_fields == JsonFields::TopLevel)
            .try_init(),
    };
    installed.map_err(LoggingError::Install)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_in_any_case_and_name_the_valid_ones_otherwise() {
        assert_eq!(
            LogFormat::try_from(" JSON ".to_owned()),
            Ok(LogFormat::Json)
        );
        assert_eq!(LogFormat::try_from("text".to_owned()), Ok(LogFormat::Text));
        let error = LogFormat::try_from("yaml".to_owned()).expect_err("unknown");
        assert!(error.contains("`text` or `json`"), "{error}");
    }
}
