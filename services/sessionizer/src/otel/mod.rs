//! The Collector path: OpenTelemetry spans read from the topic the Collector's Kafka exporter
//! writes (`otel.spans_topic`), assembled into traces and produced to the traces topic keyed
//! by session, where they take the normal way.

pub mod assembler;
#[cfg(test)]
mod assembler_tests;
