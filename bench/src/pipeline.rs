//! The sessionizer under test, in this process: production defaults pointed at the bench's
//! broker, topics and ack server, started on the bench's runtime and stopped after each run.

use crate::ack::AckServer;
use crate::setup::{PIPELINE_ID, SESSION_TIMEOUT_MS, Topics, unique};
use anyhow::{Context as _, Result};
use prometheus::core::Collector as _;
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
    Ok(start_with(runtime, settings, metrics, registry))
}

/// The lag histogram's name: the service's, whose buckets the lag run replaces.
pub(crate) const LAG_HISTOGRAM: &str = "sessionizer_sessionization_lag_seconds";

/// Starts the pipeline as [`start_pipeline`] does, with its lag histogram's buckets 2 % apart:
/// the service's are 100 ms wide around the p99, too coarse for a goal of 1.2x the reference
/// consumer's exact p99. Each observation looks through a few hundred bounds (about 0.1 µs),
/// which the sessionizer's figures of the lag run then include.
pub(crate) fn start_pipeline_fine_lag(
    runtime: &Runtime,
    settings: PipelineSettings,
) -> Result<Running> {
    let registry = prometheus::Registry::new();
    let mut metrics = Metrics::register(&registry)?;
    // The registry keeps a name's help text after unregistering it, and refuses another.
    let help = metrics.sessionization_lag.desc()[0].help.clone();
    registry.unregister(Box::new(metrics.sessionization_lag.clone()))?;
    let fine = prometheus::Histogram::with_opts(
        prometheus::HistogramOpts::new(LAG_HISTOGRAM, help).buckets(fine_lag_buckets()?),
    )?;
    registry.register(Box::new(fine.clone()))?;
    metrics.sessionization_lag = fine;
    Ok(start_with(runtime, settings, metrics, registry))
}

/// 2 % apart from 10 ms to about 2 minutes, with 1 s among them (the share within 1 s is
/// read at a bound).
fn fine_lag_buckets() -> prometheus::Result<Vec<f64>> {
    let mut bounds = prometheus::exponential_buckets(0.01, 1.02, 476)?;
    bounds.push(1.0);
    bounds.sort_by(f64::total_cmp);
    bounds.dedup();
    Ok(bounds)
}

fn start_with(
    runtime: &Runtime,
    settings: PipelineSettings,
    metrics: Metrics,
    registry: prometheus::Registry,
) -> Running {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = runtime.spawn(run(settings, metrics.clone(), Health::default(), async {
        let _stop_or_drop = stopped.await;
    }));
    Running {
        stop,
        task,
        metrics,
        registry,
    }
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

#[cfg(test)]
mod tests {
    use super::fine_lag_buckets;

    #[test]
    fn fine_lag_buckets_are_2_percent_apart_and_hold_1_s() {
        let bounds = fine_lag_buckets().expect("valid buckets");
        assert!(bounds.contains(&1.0));
        assert!(bounds.first().is_some_and(|first| *first <= 0.01));
        assert!(bounds.last().is_some_and(|last| *last >= 120.0));
        for pair in bounds.windows(2) {
            assert!(pair[1] > pair[0], "not increasing: {pair:?}");
            assert!(pair[1] / pair[0] <= 1.020_001, "too far apart: {pair:?}");
        }
    }
}
