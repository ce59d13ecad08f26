//! The source stage: the traces consumer group and the dead-letter side output.

pub mod changelog;
pub mod dlq;
pub mod kafka;
