//! A small Confluent Schema Registry client: fetch writer schemas by id, register ours, and
//! cache both directions so each id costs one request per process.

use super::DecodeError;
use super::avro::{self, trace_event_fingerprint};
use super::avro_scan::ScanPlan;
use crate::record::TraceEvent;
use crate::validate::Limits;
use apache_avro::Schema;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use thiserror::Error;

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// Why a registry request failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RegistryError {
    #[error("schema registry has no schema {what}")]
    NotFound { what: String },
    #[error("schema registry answered {status}")]
    Status { status: u16 },
    #[error("schema registry request failed")]
    Request(#[source] reqwest::Error),
    #[error("schema registry returned a schema that does not parse")]
    InvalidSchema(#[source] apache_avro::Error),
}

/// A writer schema from the registry, prepared for decoding.
#[derive(Debug)]
pub struct WriterSchema {
    schema: Schema,
    plan: ScanPlan,
    /// Same canonical form as our current schema: decode on the fast path.
    is_current: bool,
}

impl WriterSchema {
    fn try_new(schema: Schema) -> Result<Self, apache_avro::Error> {
        let plan = ScanPlan::try_new(&schema)?;
        let fingerprint = schema.fingerprint::<apache_avro::rabin::Rabin>().bytes;
        let is_current = fingerprint[..] == trace_event_fingerprint().to_le_bytes()[..];
        Ok(WriterSchema {
            schema,
            plan,
            is_current,
        })
    }

    pub(crate) fn decode(&self, datum: &[u8], limits: &Limits) -> Result<TraceEvent, DecodeError> {
        if self.is_current {
            avro::decode_current_datum(datum, limits)
        } else {
            avro::decode_resolving_datum(datum, &self.schema, &self.plan, limits)
        }
    }
}

#[derive(Debug, Default)]
struct Cache {
    by_id: HashMap<u32, Arc<WriterSchema>>,
    /// (subject, canonical form) -> id
    registered: HashMap<(String, String), u32>,
}

/// Schema Registry client with an id cache; cheap to clone (clones share the cache).
#[derive(Debug, Clone)]
pub struct SchemaRegistry {
    client: reqwest::Client,
    base_url: String,
    basic_auth: Option<(String, String)>,
    cache: Arc<RwLock<Cache>>,
}

#[derive(Deserialize)]
struct SchemaResponse {
    schema: String,
}

#[derive(Deserialize)]
struct IdResponse {
    id: u32,
}

impl SchemaRegistry {
    /// A client for the registry at `base_url` (for example `http://registry:8081`).
    ///
    /// # Errors
    /// When the HTTP client cannot be built (no TLS roots available).
    pub fn try_new(base_url: impl Into<String>, timeout: Duration) -> Result<Self, RegistryError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(RegistryError::Request)?;
        Ok(SchemaRegistry {
            client,
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            basic_auth: None,
            cache: Arc::default(),
        })
    }

    /// Sends HTTP basic credentials with every request.
    #[must_use]
    pub fn with_basic_auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.basic_auth = Some((user.into(), password.into()));
        self
    }

    fn request(&self, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        let builder = builder.header(reqwest::header::ACCEPT, CONTENT_TYPE);
        match &self.basic_auth {
            Some((user, password)) => builder.basic_auth(user, Some(password)),
            None => builder,
        }
    }

    /// The writer schema for `id` if it was fetched before.
    pub fn cached(&self, id: u32) -> Option<Arc<WriterSchema>> {
        let cache = self
            .cache
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        cache.by_id.get(&id).cloned()
    }

    /// Fetches and caches the writer schema for `id` (`GET /schemas/ids/{id}`).
    ///
    /// # Errors
    /// `NotFound` for an unknown id; `Status` or `Request` when the registry is unavailable.
    pub async fn fetch(&self, id: u32) -> Result<Arc<WriterSchema>, RegistryError> {
        if let Some(writer) = self.cached(id) {
            return Ok(writer);
        }
        let url = format!("{}/schemas/ids/{id}", self.base_url);
        let response = self
            .request(self.client.get(url))
            .send()
            .await
            .map_err(RegistryError::Request)?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(RegistryError::NotFound {
                what: format!("with id {id}"),
            });
        }
        if !status.is_success() {
            return Err(RegistryError::Status {
                status: status.as_u16(),
            });
        }
        let body: SchemaResponse = response.json().await.map_err(RegistryError::Request)?;
        let schema = Schema::parse_str(&body.schema).map_err(RegistryError::InvalidSchema)?;
        let writer = Arc::new(WriterSchema::try_new(schema).map_err(RegistryError::InvalidSchema)?);
        let mut cache = self
            .cache
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Ok(cache.by_id.entry(id).or_insert(writer).clone())
    }

    /// Registers `schema` under `subject` (`POST /subjects/{subject}/versions`) and returns its
    /// id; registering the same schema again is answered from the cache.
    ///
    /// # Errors
    /// `Status` or `Request` when the registry refuses or cannot be reached.
    pub async fn register(&self, subject: &str, schema: &Schema) -> Result<u32, RegistryError> {
        let canonical = schema.canonical_form();
        let key = (subject.to_owned(), canonical);
        if let Some(id) = self
            .cache
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .registered
            .get(&key)
        {
            return Ok(*id);
        }
        let url = format!("{}/subjects/{subject}/versions", self.base_url);
        let body = serde_json::json!({ "schema": key.1 });
        let response = self
            .request(self.client.post(url))
            .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
            .body(body.to_string())
            .send()
            .await
            .map_err(RegistryError::Request)?;
        let status = response.status();
        if !status.is_success() {
            return Err(RegistryError::Status {
                status: status.as_u16(),
            });
        }
        let IdResponse { id } = response.json().await.map_err(RegistryError::Request)?;
        let writer =
            Arc::new(WriterSchema::try_new(schema.clone()).map_err(RegistryError::InvalidSchema)?);
        let mut cache = self
            .cache
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        cache.registered.insert(key, id);
        cache.by_id.entry(id).or_insert(writer);
        Ok(id)
    }
}
