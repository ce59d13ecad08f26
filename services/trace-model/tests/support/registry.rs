//! A client of the shared fake Schema Registry (crate `fakes`) with an empty cache.

use fakes::schema_registry::RegistryServer;
use std::time::Duration;
use trace_model::codec::registry::SchemaRegistry;

/// A new client with an empty cache, as a freshly started consumer has.
pub(crate) fn client_of(server: &RegistryServer) -> SchemaRegistry {
    SchemaRegistry::try_new(&server.url, Duration::from_secs(5)).expect("registry client")
}
