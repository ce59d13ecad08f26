//! Local stand-ins for the HTTP services the pipeline talks to, one implementation each,
//! shared by the real-broker tests, the crate tests, the demo and the bench.
//!
//! # Layout
//! - [`openlayer`]: an Openlayer-compatible server: checks requests as the real API does,
//!   records them (in memory, and as JSON lines for the demo), misbehaves on demand, or
//!   acknowledges at once without parsing (the bench's fast-ack mode)
//! - [`schema_registry`]: a Confluent-compatible Schema Registry that counts what it is asked
//!   and simulates outages

pub mod openlayer;
pub mod schema_registry;
