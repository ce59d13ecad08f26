//! What the pipeline runs with: the core's settings and what its IO loop needs besides.

use crate::core::CoreSettings;
use crate::sink::SinkSettings;
use crate::source::kafka::KafkaSettings;
use std::time::Duration;
use trace_model::Limits;

/// Everything the pipeline runs with, from [`crate::config::ValidatedConfig::pipeline_settings`].
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    pub kafka: KafkaSettings,
    pub sink: SinkSettings,
    pub limits: Limits,
    /// Longest wait for acknowledgements at shutdown.
    pub drain_timeout: Duration,
    /// Windows, batching, checkpoints: the core's part.
    pub core: CoreSettings,
}
