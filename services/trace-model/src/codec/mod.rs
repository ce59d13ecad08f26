//! Encodings of a trace on the wire and the one decoder that tells them apart.
//!
//! A message is read by its first bytes:
//! - `C3 01` + 8-byte fingerprint: Avro single-object encoding (the helpers' default; needs no
//!   registry because the fingerprint names the writer schema);
//! - `00` + 4-byte schema id: Confluent framing, the writer schema fetched from a Schema
//!   Registry and cached;
//! - `{` (after optional whitespace): JSON with the same field names, for any language.
//!
//! Every decode ends with [`crate::validate::validate_trace`], so a decoded trace is a valid one.

pub mod avro;
mod avro_read;
mod avro_scan;
mod avro_write;
pub mod json;
pub mod registry;

use crate::record::{TraceEvent, TraceKind};
use crate::validate::{Limits, ValidationError, validate_optional_id, validate_trace};
use registry::{RegistryError, SchemaRegistry};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// First byte of Confluent framing; a 4-byte big-endian schema id follows.
pub const CONFLUENT_MAGIC: u8 = 0x00;
const CONFLUENT_HEADER_LEN: usize = 5;

/// How the producer helpers encode a trace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// Avro single-object encoding: self-describing, no registry needed.
    #[default]
    Avro,
    /// JSON with the same field names as the Avro schema.
    Json,
    /// Confluent framing with a schema id registered in a Schema Registry.
    Confluent { schema_id: u32 },
}

/// Why a message could not be turned into a valid trace.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("message is empty")]
    Empty,
    #[error("message has {size} bytes, more than the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("message ends before its header or datum is complete")]
    Truncated,
    #[error(
        "unknown framing: first byte {0:#04x} is not avro (c3 01), confluent (00) or json ({{)"
    )]
    UnknownFraming(u8),
    #[error("unknown avro schema fingerprint {0:#018x}")]
    UnknownFingerprint(u64),
    #[error("schema id {0} is not known to the schema registry")]
    UnknownSchemaId(u32),
    #[error("schema id {id} could not be fetched")]
    RegistryUnavailable {
        id: u32,
        #[source]
        source: RegistryError,
    },
    /// The registry refused the credentials (401/403): permanent for this process, whose
    /// credentials are read at start.
    #[error("schema id {id} could not be fetched with the configured credentials")]
    RegistryUnauthorized {
        id: u32,
        #[source]
        source: RegistryError,
    },
    #[error("writer schema cannot be read as a trace: {0}")]
    IncompatibleSchema(String),
    #[error("malformed avro datum: {0}")]
    Avro(String),
    #[error("{0} bytes follow the end of the datum")]
    TrailingBytes(usize),
    #[error("message is not valid utf-8")]
    InvalidUtf8,
    #[error("json is not a trace: {0}")]
    Json(#[source] serde_json::Error),
    #[error("{field} holds text that is not json")]
    InvalidJsonText { field: &'static str },
    #[error("kind is not one of trace, session_end")]
    UnknownKind,
    #[error("steps nest deeper than the limit of {limit}")]
    NestingTooDeep { limit: usize },
    #[error(transparent)]
    Invalid(#[from] ValidationError),
}

impl DecodeError {
    /// Bounded reason code for metrics labels and dead-letter headers.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Empty => "empty",
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::Truncated => "truncated",
            DecodeError::UnknownFraming(_) => "unknown_framing",
            DecodeError::UnknownFingerprint(_) => "unknown_fingerprint",
            DecodeError::UnknownSchemaId(_) => "unknown_schema_id",
            DecodeError::RegistryUnavailable { .. } => "registry_unavailable",
            DecodeError::RegistryUnauthorized { .. } => "registry_unauthorized",
            DecodeError::IncompatibleSchema(_) => "incompatible_schema",
            DecodeError::Avro(_) => "malformed_avro",
            DecodeError::TrailingBytes(_) => "trailing_bytes",
            DecodeError::InvalidUtf8 => "invalid_utf8",
            DecodeError::Json(_) => "json_shape",
            DecodeError::InvalidJsonText { .. } => "invalid_json_text",
            DecodeError::UnknownKind => "unknown_kind",
            DecodeError::NestingTooDeep { .. } => "steps_too_deep",
            DecodeError::Invalid(error) => error.reason(),
        }
    }

    /// True when the same bytes may decode later (the registry was unreachable): such a
    /// message must be retried, not dead-lettered. A refusal of the credentials
    /// (`RegistryUnauthorized`) is not: retrying with the same credentials cannot succeed,
    /// and waiting would stall every partition behind one message.
    pub fn is_transient(&self) -> bool {
        matches!(self, DecodeError::RegistryUnavailable { .. })
    }
}

/// Encodes a trace for the traces topic.
///
/// # Errors
/// Only on a build defect (record types out of step with the schema).
pub fn encode(event: &TraceEvent, encoding: Encoding) -> Result<Vec<u8>, avro::EncodeError> {
    match encoding {
        Encoding::Avro => avro::encode_trace(event),
        Encoding::Json => Ok(json::encode_trace(event)),
        Encoding::Confluent { schema_id } => {
            let mut bytes = Vec::with_capacity(1024);
            bytes.push(CONFLUENT_MAGIC);
            bytes.extend_from_slice(&schema_id.to_be_bytes());
            avro::encode_trace_datum(event, &mut bytes)?;
            Ok(bytes)
        }
    }
}

/// The wire framings [`Decoder`] recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    AvroSingleObject,
    Confluent { schema_id: u32 },
    Json,
}

/// Tells the framing from the first bytes.
///
/// # Errors
/// `Empty`, `Truncated` (a Confluent header cut short) or `UnknownFraming`.
pub fn detect_framing(bytes: &[u8]) -> Result<Framing, DecodeError> {
    let first = *bytes.first().ok_or(DecodeError::Empty)?;
    match first {
        0xC3 => Ok(Framing::AvroSingleObject),
        CONFLUENT_MAGIC => {
            let id_bytes: [u8; 4] = bytes
                .get(1..CONFLUENT_HEADER_LEN)
                .and_then(|slice| slice.try_into().ok())
                .ok_or(DecodeError::Truncated)?;
            Ok(Framing::Confluent {
                schema_id: u32::from_be_bytes(id_bytes),
            })
        }
        _ => {
            let first_visible = bytes.iter().find(|byte| !byte.is_ascii_whitespace());
            match first_visible {
                Some(b'{') => Ok(Framing::Json),
                Some(_) => Err(DecodeError::UnknownFraming(first)),
                None => Err(DecodeError::Empty),
            }
        }
    }
}

/// The leading fields of a trace, borrowed from its bytes ([`Decoder::peek`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceHead<'a> {
    pub pipeline_id: Option<&'a str>,
    pub user_id: Option<&'a str>,
    pub session_id: Option<&'a str>,
    pub kind: TraceKind,
    pub timestamp_ms: i64,
}

impl TraceHead<'_> {
    /// Its routing key, as [`crate::routing::route_key`] gives it for the decoded trace.
    pub fn route_key(&self) -> Option<&str> {
        crate::routing::route_key_of(self.session_id, self.user_id)
    }
}

/// Decodes and validates traces in any supported framing.
#[derive(Debug, Clone, Default)]
pub struct Decoder {
    limits: Limits,
    registry: Option<SchemaRegistry>,
}

impl Decoder {
    pub fn new(limits: Limits) -> Self {
        Decoder {
            limits,
            registry: None,
        }
    }

    /// Resolves Confluent schema ids through `registry`.
    #[must_use]
    pub fn with_registry(mut self, registry: SchemaRegistry) -> Self {
        self.registry = Some(registry);
        self
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// What ordering and routing need of a trace, read without decoding the rest of it, for
    /// a caller that decodes it later (the repartition stage's alignment holds traces
    /// undecoded). Only Avro single-object records of the current schema are read so; `None`
    /// for any other, which must be decoded instead, and for one whose ids would fail
    /// validation (so that a record rejected for them never orders others). The rest is not
    /// validated: when [`Decoder::decode`] succeeds on the same bytes, its trace has these
    /// values.
    pub fn peek<'a>(&self, bytes: &'a [u8]) -> Option<TraceHead<'a>> {
        if bytes.len() > self.limits.max_message_bytes
            || !matches!(detect_framing(bytes), Ok(Framing::AvroSingleObject))
        {
            return None;
        }
        let head = avro::peek_single_object(bytes)?;
        validate_optional_id("pipeline_id", head.pipeline_id, &self.limits).ok()?;
        validate_optional_id("user_id", head.user_id, &self.limits).ok()?;
        validate_optional_id("session_id", head.session_id, &self.limits).ok()?;
        Some(TraceHead {
            pipeline_id: head.pipeline_id,
            user_id: head.user_id,
            session_id: head.session_id,
            kind: TraceKind::parse(head.kind)?,
            timestamp_ms: head.timestamp_ms,
        })
    }

    /// Decodes without network access: a Confluent schema id must already be cached.
    ///
    /// # Errors
    /// A [`DecodeError`] naming what is wrong; never panics on any input.
    pub fn decode(&self, bytes: &[u8]) -> Result<TraceEvent, DecodeError> {
        let framing = self.check_size_and_framing(bytes)?;
        let event = match framing {
            Framing::AvroSingleObject => avro::decode_single_object(bytes, &self.limits)?,
            Framing::Json => json::decode_trace(bytes, &self.limits)?,
            Framing::Confluent { schema_id } => {
                let writer = self
                    .registry
                    .as_ref()
                    .and_then(|registry| registry.cached(schema_id))
                    .ok_or(DecodeError::UnknownSchemaId(schema_id))?;
                writer.decode(&bytes[CONFLUENT_HEADER_LEN..], &self.limits)?
            }
        };
        validate_trace(&event, &self.limits)?;
        Ok(event)
    }

    /// Decodes, first fetching an uncached Confluent writer schema from the registry.
    ///
    /// # Errors
    /// As [`Decoder::decode`]; `RegistryUnavailable` (transient) when the registry cannot be
    /// reached, `UnknownSchemaId` when it does not know the id.
    pub async fn decode_fetching(&self, bytes: &[u8]) -> Result<TraceEvent, DecodeError> {
        self.prefetch_schema(bytes).await?;
        self.decode(bytes)
    }

    /// Fetches the writer schema of a Confluent-framed message when the registry is configured
    /// and the id is not cached yet; does nothing for other messages. After `Ok`,
    /// [`Decoder::decode`] needs no network.
    ///
    /// # Errors
    /// `RegistryUnavailable` (transient), `UnknownSchemaId`, `IncompatibleSchema` or
    /// `RegistryUnauthorized` (permanent).
    pub async fn prefetch_schema(&self, bytes: &[u8]) -> Result<(), DecodeError> {
        if let (Ok(Framing::Confluent { schema_id }), Some(registry)) =
            (detect_framing(bytes), &self.registry)
            && registry.cached(schema_id).is_none()
        {
            match registry.fetch(schema_id).await {
                Ok(_) => {}
                Err(RegistryError::NotFound { .. }) => {
                    return Err(DecodeError::UnknownSchemaId(schema_id));
                }
                // Deterministic (a Protobuf or JSON Schema id, say): retrying cannot help.
                Err(RegistryError::InvalidSchema(source)) => {
                    return Err(DecodeError::IncompatibleSchema(format!(
                        "schema id {schema_id} is not an avro schema: {source}"
                    )));
                }
                Err(source @ RegistryError::Unauthorized { .. }) => {
                    return Err(DecodeError::RegistryUnauthorized {
                        id: schema_id,
                        source,
                    });
                }
                Err(source) => {
                    return Err(DecodeError::RegistryUnavailable {
                        id: schema_id,
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    fn check_size_and_framing(&self, bytes: &[u8]) -> Result<Framing, DecodeError> {
        if bytes.len() > self.limits.max_message_bytes {
            return Err(DecodeError::TooLarge {
                size: bytes.len(),
                limit: self.limits.max_message_bytes,
            });
        }
        detect_framing(bytes)
    }
}
