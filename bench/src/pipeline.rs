//! The sessionizer under test, in this process: production defaults pointed at the bench's
//! broker, topics and ack server, started on the bench's runtime and stopped after each run.

use crate::ack::AckServer;
use crate::setup::{PIPELINE_ID, SESSION_TIMEOUT_MS, Topics, unique};
use anyhow::{Context as _, Result};
use sessionizer::config::SessionizerConfig;
use sessionizer::health::Health;
use sessionizer::metrics::Metrics;
use sessionizer::pipeline::{PipelineSettings, run};
use sessionizer::secret::Secret;
use tokio::runtime::Runtime;

/// Production defaults (`SessionizerConfig::default()`), validated as the service validates
/// them, with the bench's broker, topics, ack server and a short group session timeout.
/// `customize` changes the configuration before it is validated (group, batch size).
pub(crate) fn sessionizer_settings(
    bootstrap: &str,
    topics: &Topics,
    ack: &AckServer,
    changelog: Option<String>,
    customize: &dyn Fn(&mut SessionizerConfig),
) -> Result<PipelineSettings> {
    let mut config = SessionizerConfig::default();
    config.kafka.bootstrap_servers = bootstrap.to_owned();
    config.kafka.group_id = unique("bench-sessionizer");
    config.kafka.topic.clone_from(&topics.traces);
    config
        .kafka
        .dead_letter_topic
        .clone_from(&topics.dead_letters);
    config.kafka.sessions_topic.clone_from(&topics.sessions);
    config.kafka.changelog_topic = changelog.unwrap_or_default();
    config.kafka.session_timeout_ms = SESSION_TIMEOUT_MS;
    // Must stay below the session timeout. Every run stops once all its rows are
    // acknowledged, so the drain has nothing to wait for.
    config.shutdown.drain_timeout_secs = 1;
    config.openlayer.base_url = Some(ack.base_url());
    config.openlayer.api_key = Some(Secret::new("bench-key-not-a-secret"));
    config.openlayer.default_pipeline_id = Some(PIPELINE_ID.to_owned());
    customize(&mut config);
    let validated = config
        .validate()
        .map_err(|error| anyhow::anyhow!("bench configuration: {error}"))?;
    Ok(validated.pipeline_settings())
}

/// The repartition topic the pipeline of `settings` creates at start (`<group>-repartition`
/// unless repartitioning is off): a fresh group's is a fresh topic, for the bench to delete.
pub(crate) fn repartition_topic(settings: &PipelineSettings) -> Option<String> {
    settings.kafka.repartition_topic.clone()
}

/// A pipeline running on the runtime, stopped by `stop`.
pub(crate) struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), sessionizer::pipeline::RunError>>,
    pub(crate) metrics: Metrics,
    pub(crate) registry: prometheus::Registry,
}

/// Starts `sessionizer::pipeline::run` on `runtime`; it runs until [`Running::stop`].
pub(crate) fn start_pipeline(runtime: &Runtime, settings: PipelineSettings) -> Result<Running> {
    let registry = prometheus::Registry::new();
    let metrics = Metrics::register(&registry)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = runtime.spawn(run(settings, metrics.clone(), Health::default(), async {
        let _stop_or_drop = stopped.await;
    }));
    Ok(Running {
        stop,
        task,
        metrics,
        registry,
    })
}

impl Running {
    pub(crate) fn stop(self, runtime: &Runtime) -> Result<(Metrics, prometheus::Registry)> {
        let _already_stopped = self.stop.send(());
        runtime
            .block_on(self.task)
            .context("pipeline task")?
            .context("pipeline")?;
        Ok((self.metrics, self.registry))
    }
}

/// The sum of counter `name` over all its label values.
pub(crate) fn counter_sum(registry: &prometheus::Registry, name: &str) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|family| family.name() == name)
        .flat_map(|family| family.get_metric().iter())
        .map(|metric| metric.get_counter().get_value())
        .sum()
}
