//! Helpers shared by the integration tests: record fixtures, hand-built wire bytes, and
//! the shared local Confluent-compatible Schema Registry.
// Each test crate compiles this module on its own and uses a different part of it.
#![allow(dead_code)]

pub(crate) mod fixtures;
pub(crate) mod registry;
