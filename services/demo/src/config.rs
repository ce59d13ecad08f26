//! The demo's topics and its service configuration: the defaults with the in-process
//! cluster, short windows and timeouts that finish within a minute, and where rows go,
//! validated exactly as the deployed service's configuration is.

use crate::destination::Destination;
use anyhow::Context as _;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use sessionizer::config::{SessionizerConfig, ValidatedConfig};
use sessionizer::secret::Secret;
use std::net::SocketAddr;
use std::time::Duration;

pub const TRACES: &str = "llm-traces";
pub const DEAD_LETTERS: &str = "llm-traces-dlq";
pub const SESSIONS: &str = "llm-sessions";
pub const CHANGELOG: &str = "llm-sessions-state";
/// The group's repartition topic (`<group_id>-repartition`, the default).
pub const REPARTITION: &str = "sessionizer-demo-repartition";
const GROUP_ID: &str = "sessionizer-demo";

/// An in-process Kafka cluster with the service's topics.
///
/// # Errors
/// When librdkafka cannot start the mock cluster or create a topic.
pub fn start_cluster() -> anyhow::Result<MockCluster<'static, DefaultProducerContext>> {
    let cluster =
        MockCluster::<DefaultProducerContext>::new(1).context("in-process kafka cluster")?;
    for (topic, partitions) in [
        (TRACES, 3),
        (DEAD_LETTERS, 1),
        (SESSIONS, 1),
        (CHANGELOG, 3),
        (REPARTITION, 3),
    ] {
        cluster
            .create_topic(topic, partitions, 1)
            .with_context(|| format!("creating topic {topic}"))?;
    }
    Ok(cluster)
}

/// `wanted` when it is free, else a free loopback port: the service binds `http.listen`
/// itself, so the demo settles the address first to print it and scrape it. The port is
/// released again for the service to bind; nothing else on a demo machine races for it.
///
/// # Errors
/// When not even a loopback port can be bound.
pub fn free_listen_address(wanted: SocketAddr) -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(wanted)
        .or_else(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .context("finding a port for /metrics")?;
    Ok(listener.local_addr()?)
}

/// The service configuration of the demo. The drain stays below the short group session
/// timeout, as validation requires.
///
/// # Errors
/// When validation refuses it (a bug in the demo's values).
pub fn service_config(
    bootstrap: &str,
    gap: Duration,
    destination: &Destination,
    metrics_listen: SocketAddr,
) -> anyhow::Result<ValidatedConfig> {
    let mut config = SessionizerConfig::default();
    config.kafka.bootstrap_servers = bootstrap.to_owned();
    config.kafka.group_id = GROUP_ID.to_owned();
    config.kafka.topic = TRACES.to_owned();
    config.kafka.dead_letter_topic = DEAD_LETTERS.to_owned();
    config.kafka.sessions_topic = SESSIONS.to_owned();
    config.kafka.changelog_topic = CHANGELOG.to_owned();
    config.kafka.repartition_topic = Some(REPARTITION.to_owned());
    config.kafka.session_timeout_ms = 6000;
    config.session.gap_secs = gap.as_secs();
    config.session.user_gap_secs = gap.as_secs();
    config.session.max_duration_secs = 3600;
    config.session.grace_secs = 30;
    config.session.idle_check_ms = 250;
    config.batch.max_rows = 100;
    config.batch.linger_ms = 200;
    config.batch.max_unacked_rows = 10_000;
    config.openlayer.base_url = Some(destination.base_url().to_owned());
    config.openlayer.api_key = Some(Secret::new(destination.api_key().to_owned()));
    config.openlayer.default_pipeline_id = Some(destination.pipeline_id().to_owned());
    config.openlayer.request_timeout_secs = 30;
    config.openlayer.retry_deadline_secs = Some(30);
    config.openlayer.mark_final_turn = true;
    config.openlayer.sessions_pipeline_id = destination.sessions_pipeline_id().map(str::to_owned);
    config.shutdown.drain_timeout_secs = 5;
    config.http.listen = metrics_listen.to_string();
    config.http.liveness_window_secs = 60;
    config.validate().context("demo configuration")
}
