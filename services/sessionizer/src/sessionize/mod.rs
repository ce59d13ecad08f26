//! Sessionization: which session window each trace belongs to, per partition.
//!
//! [`window`] is the pure state machine; the pipeline owns one [`window::PartitionWindows`]
//! per assigned partition, so a session's state moves with its partition on rebalance.

pub mod recent;
pub mod store;
pub mod window;

pub use window::{
    CloseReason, ClosedSession, PartitionWindows, Placement, SessionKey, SessionState, Turn,
    WindowSettings,
};
