//! The source stage: the traces consumer group, its topics and the dead-letter side output.

pub mod changelog;
pub mod dlq;
pub mod kafka;
pub mod restore;
pub mod restoring;
pub mod topics;
