//! Plumbing the sessionizer and the gateway share, so both behave alike at the edges an
//! operator sees: start-up, failure and `/metrics`.
//!
//! # Layout
//! - [`preflight`]: checks with a ✓/✗ line each and the fix for every ✗
//! - [`kafka`]: what a service needs to know of its cluster: brokers, topics, groups, and
//!   the commands that fix what is missing
//! - [`fatal`]: a fatal error reported with its whole cause chain, in the log and on stderr
//! - [`process_metrics`]: `process_*` and `<service>_build_info`

pub mod fatal;
pub mod kafka;
pub mod preflight;
pub mod process_metrics;
