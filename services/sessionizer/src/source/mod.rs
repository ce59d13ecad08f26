//! The source stage: the traces consumer group, its topics and the dead-letter side output.

pub mod changelog;
pub mod dlq;
pub mod handover;
pub mod kafka;
pub mod partition_group;
pub mod read;
pub mod repartition;
pub mod restore;
pub mod restoring;
pub mod topics;

/// Which topic a message was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stream {
    /// The traces topic, where producers write.
    Traces,
    /// The repartition topic, where the sessionizer forwards traces read in another partition
    /// than their session's.
    Repartition,
}
