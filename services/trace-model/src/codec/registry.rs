//! A small Confluent Schema Registry client: fetch writer schemas by id, register ours, and
//! cache both directions so each id costs one request per process.
//!
//! Credentials ([`RegistryAuth`]) go with every request: HTTP basic (Confluent's
//! `basic.auth.user.info`; on Confluent Cloud a Schema Registry API key and secret) or a
//! bearer token (Confluent's `bearer.auth.token`). A registry that refuses them (401 or 403)
//! gives [`RegistryError::Unauthorized`], which is not an outage: asking again with the same
//! credentials cannot succeed, so decoders treat it as permanent
//! ([`DecodeError::RegistryUnauthorized`](super::DecodeError::RegistryUnauthorized)) and the
//! first refusal after an accepted request is logged as an error.

use super::DecodeError;
use super::avro::{self, trace_event_fingerprint};
use super::avro_scan::ScanPlan;
use crate::record::TraceEvent;
use crate::secret::Secret;
use crate::validate::Limits;
use apache_avro::Schema;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// 401 (no or wrong credentials) or 403 (credentials without access): not an outage,
    /// the same request cannot succeed until the credentials change.
    #[error("schema registry refused the credentials ({status} {})", refusal_meaning(*status))]
    Unauthorized { status: u16 },
    #[error("schema registry request failed")]
    Request(#[source] reqwest::Error),
    #[error("schema registry returned a schema that does not parse")]
    InvalidSchema(#[source] apache_avro::Error),
}

fn refusal_meaning(status: u16) -> &'static str {
    if status == 403 {
        "forbidden: the credentials may not read schemas"
    } else {
        "unauthorized: credentials missing or wrong"
    }
}

/// How the client authenticates to the registry. `Debug` never shows a secret.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegistryAuth {
    /// No `Authorization` header.
    #[default]
    None,
    /// HTTP basic: Confluent's `basic.auth.user.info` (`username:password`); on Confluent
    /// Cloud, the Schema Registry API key and its secret.
    Basic { username: String, password: Secret },
    /// `Authorization: Bearer <token>`: Confluent's `bearer.auth.token`.
    Bearer(Secret),
}

/// Where the registry is and how to authenticate to it. Built from a bare URL (`&str`,
/// `String`) it sends no credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryEndpoint {
    /// Base URL, e.g. `http://registry:8081` (trailing slashes are ignored).
    pub url: String,
    pub auth: RegistryAuth,
}

impl From<String> for RegistryEndpoint {
    fn from(url: String) -> Self {
        RegistryEndpoint {
            url,
            auth: RegistryAuth::None,
        }
    }
}

impl From<&String> for RegistryEndpoint {
    fn from(url: &String) -> Self {
        RegistryEndpoint::from(url.clone())
    }
}

impl From<&str> for RegistryEndpoint {
    fn from(url: &str) -> Self {
        RegistryEndpoint::from(url.to_owned())
    }
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
    auth: RegistryAuth,
    cache: Arc<RwLock<Cache>>,
    /// Set by a refusal, cleared by an accepted request: only the first refusal in a row is
    /// logged as an error, so a stream of messages needing one schema cannot flood the log.
    refusing: Arc<AtomicBool>,
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
    /// A client for the registry at `endpoint`: a base URL (for example
    /// `http://registry:8081`) or a [`RegistryEndpoint`] with credentials.
    ///
    /// # Errors
    /// When the HTTP client cannot be built (no TLS roots available).
    pub fn try_new(
        endpoint: impl Into<RegistryEndpoint>,
        timeout: Duration,
    ) -> Result<Self, RegistryError> {
        let RegistryEndpoint { url, auth } = endpoint.into();
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(RegistryError::Request)?;
        Ok(SchemaRegistry {
            client,
            base_url: url.trim_end_matches('/').to_owned(),
            auth,
            cache: Arc::default(),
            refusing: Arc::default(),
        })
    }

    /// Sends HTTP basic credentials with every request.
    #[must_use]
    pub fn with_basic_auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.auth = RegistryAuth::Basic {
            username: user.into(),
            password: Secret::new(password),
        };
        self
    }

    /// Sends `Authorization: Bearer <token>` with every request.
    #[must_use]
    pub fn with_bearer_token(mut self, token: impl Into<String>) -> Self {
        self.auth = RegistryAuth::Bearer(Secret::new(token));
        self
    }

    fn request(&self, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        let builder = builder.header(reqwest::header::ACCEPT, CONTENT_TYPE);
        // Both helpers mark the header sensitive, so it is never shown by reqwest either.
        match &self.auth {
            RegistryAuth::None => builder,
            RegistryAuth::Basic { username, password } => {
                builder.basic_auth(username, Some(password.expose()))
            }
            RegistryAuth::Bearer(token) => builder.bearer_auth(token.expose()),
        }
    }

    /// Sends a request with the credentials; a refusal of them is `Unauthorized`.
    async fn send(
        &self,
        builder: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, RegistryError> {
        let response = self
            .request(builder)
            .send()
            .await
            .map_err(RegistryError::Request)?;
        self.check_refusal(response.status())?;
        Ok(response)
    }

    /// `Unauthorized` for 401 and 403, logging the first refusal in a row; any other status
    /// clears the refusal.
    fn check_refusal(&self, status: reqwest::StatusCode) -> Result<(), RegistryError> {
        let refused = matches!(
            status,
            reqwest::StatusCode::UNAUTHORIZED | reqwest::StatusCode::FORBIDDEN
        );
        if !refused {
            self.refusing.store(false, Ordering::Relaxed);
            return Ok(());
        }
        let error = RegistryError::Unauthorized {
            status: status.as_u16(),
        };
        if !self.refusing.swap(true, Ordering::Relaxed) {
            tracing::error!(
                %error,
                registry = %self.base_url,
                "schema registry refused the credentials; messages whose schema id is not \
                 cached cannot be decoded until the credentials are fixed"
            );
        }
        Err(error)
    }

    /// Asks the registry for its subjects (`GET /subjects`), the cheapest request that needs
    /// the credentials: a start-up and preflight check.
    ///
    /// # Errors
    /// `Unauthorized` for 401/403, `Status` for another failure, `Request` when the registry
    /// cannot be reached.
    pub async fn check_access(&self) -> Result<(), RegistryError> {
        let url = format!("{}/subjects", self.base_url);
        let response = self.send(self.client.get(url)).await?;
        let status = response.status();
        if !status.is_success() {
            return Err(RegistryError::Status {
                status: status.as_u16(),
            });
        }
        Ok(())
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
    /// `NotFound` for an unknown id; `Unauthorized` when the credentials are refused; `Status`
    /// or `Request` when the registry is unavailable.
    pub async fn fetch(&self, id: u32) -> Result<Arc<WriterSchema>, RegistryError> {
        if let Some(writer) = self.cached(id) {
            return Ok(writer);
        }
        let url = format!("{}/schemas/ids/{id}", self.base_url);
        let response = self.send(self.client.get(url)).await?;
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
    /// `Unauthorized` when the credentials are refused; `Status` or `Request` when the
    /// registry fails or cannot be reached.
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
            .send(
                self.client
                    .post(url)
                    .header(reqwest::header::CONTENT_TYPE, CONTENT_TYPE)
                    .body(body.to_string()),
            )
            .await?;
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
