//! Plumbing the sessionizer and the gateway share, so both behave alike at the edges an
//! operator sees: configuration, start-up, shutdown, failure and `/metrics`.
//!
//! # Layout
//! - [`client_properties`]: the `kafka.client` librdkafka passthrough, secrets redacted
//! - [`problems`]: configuration problems, all reported at once by key
//! - [`logging`]: `log.format` and `log.filter`, and the subscriber they set up
//! - [`shutdown`]: SIGTERM or Ctrl-C
//! - [`metrics_endpoint`]: the `/metrics` answer
//! - [`preflight`]: checks with a ✓/✗ line each and the fix for every ✗
//! - [`kafka`]: what a service needs to know of its cluster: brokers, topics, groups, and
//!   the commands that fix what is missing
//! - [`fatal`]: a fatal error reported with its whole cause chain, in the log and on stderr
//! - [`process_metrics`]: `process_*` and `<service>_build_info`

pub mod client_properties;
pub mod fatal;
pub mod kafka;
pub mod logging;
pub mod metrics_endpoint;
pub mod preflight;
pub mod problems;
pub mod process_metrics;
pub mod shutdown;
