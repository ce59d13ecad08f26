//! The sessionizer: reads traces from Kafka as a consumer group, groups each session's traces
//! in windowed state, enriches every trace with its session context, and bulk-ships rows to
//! Openlayer's data-stream API.
//!
//! # Layout
//! Not built yet: the stages (source, sessionize, enrich, batch, sink, commit) arrive with the
//! sessionizer issue. See `docs/ARCHITECTURE.md` for the intended flow.

/// Version of this build, as `--version` prints it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
