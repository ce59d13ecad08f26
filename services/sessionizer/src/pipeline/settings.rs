//! What the pipeline runs with, and the core's part of it.

use crate::batch::BatchSettings;
use crate::core::CoreSettings;
use crate::sessionize::WindowSettings;
use crate::sink::SinkSettings;
use crate::source::kafka::KafkaSettings;
use std::time::Duration;
use trace_model::Limits;

/// Everything the pipeline runs with, from the validated configuration.
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    pub kafka: KafkaSettings,
    pub windows: WindowSettings,
    /// How often quiet partitions are checked for sessions to close.
    pub idle_check: Duration,
    /// Openlayer pipeline of traces that name none.
    pub default_pipeline_id: Option<String>,
    pub batch: BatchSettings,
    pub max_in_flight_requests: usize,
    /// Above this many unsettled messages the partitions pause.
    pub max_unacked_rows: usize,
    pub sink: SinkSettings,
    pub limits: Limits,
    /// Longest wait for acknowledgements at shutdown.
    pub drain_timeout: Duration,
    /// Mark each closed session's last row with `session_final_turn: true` (row update).
    pub mark_final_turn: bool,
    /// How often session state is checkpointed to the changelog (and offsets stored).
    pub checkpoint_interval: Duration,
}

impl PipelineSettings {
    /// The core's part.
    pub fn core(&self) -> CoreSettings {
        CoreSettings {
            topic: self.kafka.topic.clone(),
            windows: self.windows,
            idle_check: self.idle_check,
            default_pipeline_id: self.default_pipeline_id.clone(),
            batch: self.batch,
            max_in_flight_requests: self.max_in_flight_requests,
            max_unacked_rows: self.max_unacked_rows,
            mark_final_turn: self.mark_final_turn,
            checkpoint_interval: self.checkpoint_interval,
            changelog: self.kafka.changelog_topic.is_some(),
            summaries: self.kafka.sessions_topic.is_some(),
        }
    }
}
