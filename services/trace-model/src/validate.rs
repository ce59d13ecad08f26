//! Limits every trace must respect before it reaches a session window or Openlayer.
//!
//! Reasons are a bounded set ([`ValidationError::reason`]) so they can label metrics and
//! dead-letter headers.

use crate::record::{Step, TraceEvent, TraceKind};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Longest id accepted: Langfuse's limit, which Openlayer users also meet.
pub const DEFAULT_MAX_ID_CHARS: usize = 200;
/// Largest message accepted, in bytes: Kafka's default `message.max.bytes` is about this size.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// Deepest step nesting accepted; real agents nest a handful of levels.
pub const DEFAULT_MAX_STEP_DEPTH: usize = 32;
/// Most steps (at any depth) in one trace.
pub const DEFAULT_MAX_STEPS: usize = 1000;

/// Bounds applied when decoding and validating a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest encoded message, in bytes.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// Longest id (inference, pipeline, user, session, step), in characters.
    #[serde(default = "default_max_id_chars")]
    pub max_id_chars: usize,
    /// Deepest nesting of steps (a trace's own steps are depth 1).
    #[serde(default = "default_max_step_depth")]
    pub max_step_depth: usize,
    /// Most steps in one trace, at any depth.
    #[serde(default = "default_max_steps")]
    pub max_steps: usize,
}

const fn default_max_message_bytes() -> usize {
    DEFAULT_MAX_MESSAGE_BYTES
}
const fn default_max_id_chars() -> usize {
    DEFAULT_MAX_ID_CHARS
}
const fn default_max_step_depth() -> usize {
    DEFAULT_MAX_STEP_DEPTH
}
const fn default_max_steps() -> usize {
    DEFAULT_MAX_STEPS
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_id_chars: DEFAULT_MAX_ID_CHARS,
            max_step_depth: DEFAULT_MAX_STEP_DEPTH,
            max_steps: DEFAULT_MAX_STEPS,
        }
    }
}

/// Why a decoded trace was refused.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum ValidationError {
    #[error("{field} is empty")]
    EmptyId { field: &'static str },
    /// A row update names no row to update.
    #[error("{field} is required for kind {kind}")]
    MissingId {
        field: &'static str,
        kind: &'static str,
    },
    #[error("{field} has {chars} characters, more than the limit of {limit}")]
    IdTooLong {
        field: &'static str,
        chars: usize,
        limit: usize,
    },
    #[error("{field} contains a control character")]
    IdNotPrintable { field: &'static str },
    #[error("steps nest {depth} deep, deeper than the limit of {limit}")]
    StepsTooDeep { depth: usize, limit: usize },
    #[error("trace has more than {limit} steps")]
    TooManySteps { limit: usize },
    #[error("{field} is {value}, expected a finite number >= 0")]
    InvalidNumber { field: &'static str, value: f64 },
    #[error("{field} is {value}, expected >= 0")]
    NegativeCount { field: &'static str, value: i64 },
}

impl ValidationError {
    /// Bounded reason code for metrics labels and dead-letter headers.
    pub fn reason(&self) -> &'static str {
        match self {
            ValidationError::EmptyId { .. } => "empty_id",
            ValidationError::MissingId { .. } => "missing_id",
            ValidationError::IdTooLong { .. } => "id_too_long",
            ValidationError::IdNotPrintable { .. } => "id_not_printable",
            ValidationError::StepsTooDeep { .. } => "steps_too_deep",
            ValidationError::TooManySteps { .. } => "too_many_steps",
            ValidationError::InvalidNumber { .. } | ValidationError::NegativeCount { .. } => {
                "invalid_number"
            }
        }
    }
}

/// Checks an id: non-empty, at most `limits.max_id_chars` characters, no control characters.
///
/// # Errors
/// The first rule the id breaks.
pub fn validate_id(field: &'static str, id: &str, limits: &Limits) -> Result<(), ValidationError> {
    if id.is_empty() {
        return Err(ValidationError::EmptyId { field });
    }
    // Byte length bounds the char count from above, so most ids skip the count.
    if id.len() > limits.max_id_chars {
        let chars = id.chars().count();
        if chars > limits.max_id_chars {
            return Err(ValidationError::IdTooLong {
                field,
                chars,
                limit: limits.max_id_chars,
            });
        }
    }
    if id.chars().any(char::is_control) {
        return Err(ValidationError::IdNotPrintable { field });
    }
    Ok(())
}

pub(crate) fn validate_optional_id(
    field: &'static str,
    id: Option<&str>,
    limits: &Limits,
) -> Result<(), ValidationError> {
    id.map_or(Ok(()), |id| validate_id(field, id, limits))
}

fn validate_amount(field: &'static str, value: Option<f64>) -> Result<(), ValidationError> {
    match value {
        Some(value) if !value.is_finite() || value < 0.0 => {
            Err(ValidationError::InvalidNumber { field, value })
        }
        _ => Ok(()),
    }
}

fn validate_count(field: &'static str, value: Option<i64>) -> Result<(), ValidationError> {
    match value {
        Some(value) if value < 0 => Err(ValidationError::NegativeCount { field, value }),
        _ => Ok(()),
    }
}

/// Checks ids, numbers and step bounds of a decoded trace.
///
/// # Errors
/// The first rule the trace breaks.
pub fn validate_trace(event: &TraceEvent, limits: &Limits) -> Result<(), ValidationError> {
    if event.kind == TraceKind::RowUpdate && event.inference_id.is_none() {
        return Err(ValidationError::MissingId {
            field: "inference_id",
            kind: TraceKind::RowUpdate.as_str(),
        });
    }
    validate_optional_id("inference_id", event.inference_id.as_deref(), limits)?;
    validate_optional_id("pipeline_id", event.pipeline_id.as_deref(), limits)?;
    validate_optional_id("user_id", event.user_id.as_deref(), limits)?;
    validate_optional_id("session_id", event.session_id.as_deref(), limits)?;
    validate_amount("latency_ms", event.latency_ms)?;
    validate_amount("cost", event.cost)?;
    validate_count("tokens", event.tokens)?;
    validate_count("prompt_tokens", event.prompt_tokens)?;
    validate_count("completion_tokens", event.completion_tokens)?;
    let mut num_steps = 0;
    validate_steps(&event.steps, 1, &mut num_steps, limits)
}

fn validate_steps(
    steps: &[Step],
    depth: usize,
    num_steps: &mut usize,
    limits: &Limits,
) -> Result<(), ValidationError> {
    if steps.is_empty() {
        return Ok(());
    }
    if depth > limits.max_step_depth {
        return Err(ValidationError::StepsTooDeep {
            depth,
            limit: limits.max_step_depth,
        });
    }
    for step in steps {
        *num_steps += 1;
        if *num_steps > limits.max_steps {
            return Err(ValidationError::TooManySteps {
                limit: limits.max_steps,
            });
        }
        validate_id("step.id", &step.id, limits)?;
        validate_amount("step.latency_ms", Some(step.latency_ms))?;
        validate_amount("step.cost", step.cost)?;
        validate_count("step.tokens", step.tokens)?;
        validate_count("step.prompt_tokens", step.prompt_tokens)?;
        validate_count("step.completion_tokens", step.completion_tokens)?;
        validate_steps(&step.steps, depth + 1, num_steps, limits)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step_chain(depth: usize) -> Vec<Step> {
        let mut steps = Vec::new();
        for level in 0..depth {
            let step = Step {
                id: format!("s{level}"),
                name: "nested".into(),
                step_type: "user_call".into(),
                inputs: Default::default(),
                output: serde_json::Value::Null,
                start_time_ms: 0,
                end_time_ms: 1,
                latency_ms: 1.0,
                tokens: None,
                prompt_tokens: None,
                completion_tokens: None,
                cost: None,
                model: None,
                metadata: Default::default(),
                steps,
                documents: None,
                provider: None,
                model_parameters: None,
                raw_output: serde_json::Value::Null,
            };
            steps = vec![step];
        }
        steps
    }

    #[test]
    fn accepts_ids_at_the_limit_and_refuses_one_more() {
        let limits = Limits::default();
        let at_limit = "é".repeat(200);
        assert_eq!(validate_id("user_id", &at_limit, &limits), Ok(()));
        let over = "a".repeat(201);
        assert_eq!(
            validate_id("user_id", &over, &limits),
            Err(ValidationError::IdTooLong {
                field: "user_id",
                chars: 201,
                limit: 200
            })
        );
    }

    #[test]
    fn refuses_empty_and_control_character_ids() {
        let limits = Limits::default();
        assert_eq!(
            validate_id("session_id", "", &limits).map_err(|error| error.reason()),
            Err("empty_id")
        );
        assert_eq!(
            validate_id("session_id", "a\u{0}b", &limits).map_err(|error| error.reason()),
            Err("id_not_printable")
        );
    }

    #[test]
    fn bounds_step_depth() {
        let limits = Limits {
            max_step_depth: 3,
            ..Limits::default()
        };
        let mut event = TraceEvent::new("t", 0);
        event.steps = step_chain(3);
        assert_eq!(validate_trace(&event, &limits), Ok(()));
        event.steps = step_chain(4);
        assert_eq!(
            validate_trace(&event, &limits),
            Err(ValidationError::StepsTooDeep { depth: 4, limit: 3 })
        );
    }

    #[test]
    fn bounds_step_count() {
        let limits = Limits {
            max_steps: 5,
            ..Limits::default()
        };
        let mut event = TraceEvent::new("t", 0);
        event.steps = (0..5).flat_map(|_| step_chain(1)).collect();
        assert_eq!(validate_trace(&event, &limits), Ok(()));
        event.steps.extend(step_chain(1));
        assert_eq!(
            validate_trace(&event, &limits),
            Err(ValidationError::TooManySteps { limit: 5 })
        );
    }

    #[test]
    fn row_updates_must_name_their_row() {
        let limits = Limits::default();
        let mut event = TraceEvent::new("update", 0);
        event.kind = TraceKind::RowUpdate;
        assert_eq!(
            validate_trace(&event, &limits).map_err(|error| error.reason()),
            Err("missing_id")
        );
        event.inference_id = Some("inf-1".into());
        assert_eq!(validate_trace(&event, &limits), Ok(()));
    }

    #[test]
    fn refuses_negative_and_non_finite_numbers() {
        let limits = Limits::default();
        let mut event = TraceEvent::new("t", 0);
        event.cost = Some(f64::NAN);
        assert!(matches!(
            validate_trace(&event, &limits),
            Err(ValidationError::InvalidNumber { field: "cost", .. })
        ));
        event.cost = None;
        event.tokens = Some(-1);
        assert_eq!(
            validate_trace(&event, &limits),
            Err(ValidationError::NegativeCount {
                field: "tokens",
                value: -1
            })
        );
    }
}
