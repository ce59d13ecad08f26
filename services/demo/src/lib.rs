//! The embedded demo behind `make run`: the whole product in one process, with nothing to
//! install. An in-process Kafka cluster (librdkafka's mock cluster), synthetic chat traffic
//! emitted through the real producer helpers, the sessionizer service as deployed
//! (`sessionizer::service::run` with a demo configuration), and a local Openlayer-compatible
//! endpoint that records what would be sent (or the real Openlayer when `OPENLAYER_API_KEY`
//! and `OPENLAYER_INFERENCE_PIPELINE_ID` are set).
//!
//! The demo sees the service from outside only, as an operator would: progress and totals
//! come from its `/metrics` endpoint, the session table from the sessions topic.
//! Application glue, so errors are `anyhow` here, as in a `main`.
//!
//! # Layout
//! - [`config`]: the topics and the demo's `ValidatedConfig`
//! - [`destination`]: where rows go: the shared Openlayer-compatible fake (crate `fakes`),
//!   recording each request as a JSON line, or the real Openlayer
//! - [`traffic`]: what the producers send: the workload, late traces, poison messages
//! - [`workload`]: the scripted multi-user chats
//! - [`otel`]: the gateway in-process, and GenAI traces exported to it over OTLP/HTTP
//! - [`scrape`]: the service's `/metrics`, read over HTTP; the progress lines
//! - [`report`]: the session table read back from the sessions topic, and the totals

pub mod config;
pub mod destination;
pub mod otel;
pub mod report;
pub mod scrape;
pub mod traffic;
pub mod workload;

use anyhow::{Context as _, bail};
use destination::Destination;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use scrape::MetricsEndpoint;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Knobs of the demo, all with defaults that finish well within a minute on two cores.
#[derive(Debug, Clone)]
pub struct DemoSettings {
    pub num_users: usize,
    pub sessions_per_user: usize,
    pub turns_per_second: f64,
    /// Inactivity gap: short, so that sessions close by inactivity during the run.
    pub gap: Duration,
    pub output_dir: PathBuf,
    pub metrics_listen: SocketAddr,
    /// Give up waiting for every row after this long.
    pub timeout: Duration,
    /// Keep the service and /metrics running this long after every row was shipped (for
    /// scraping the finished demo, e.g. scripts/check-prometheus-live.sh); zero stops at once.
    pub keep_serving: Duration,
}

/// Runs the demo and prints its report.
///
/// # Errors
/// When a part cannot start, or not every trace was shipped or dead-lettered in time.
pub async fn run(settings: DemoSettings) -> anyhow::Result<()> {
    let cluster = config::start_cluster()?;
    let bootstrap = cluster.bootstrap_servers();
    let destination = Destination::choose(&settings.output_dir).await?;
    let metrics_listen = config::free_listen_address(settings.metrics_listen)?;
    let service_config =
        config::service_config(&bootstrap, settings.gap, &destination, metrics_listen)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(sessionizer::service::run(service_config, async {
        let _ = stopped.await;
    }));

    let metrics = MetricsEndpoint::new(metrics_listen);
    println!(
        "sessionizer demo: in-process Kafka at {bootstrap}, metrics at {}",
        metrics.url()
    );
    destination.announce();
    println!();

    let progress = tokio::spawn(scrape::print_progress(metrics.clone(), Instant::now()));
    let gateway = otel::Gateway::start(&bootstrap)?;
    let mut produced = traffic::produce(&bootstrap, settings.workload()).await?;
    produced.num_otel = gateway.export(settings.timeout).await?;
    let samples = metrics
        .wait_until_done(
            &produced,
            destination.sessions_pipeline_id().is_some(),
            Instant::now() + settings.timeout,
        )
        .await;
    if !settings.keep_serving.is_zero() {
        println!(
            "demo traffic done; serving {} for {:?} more",
            metrics.url(),
            settings.keep_serving
        );
        tokio::time::sleep(settings.keep_serving).await;
    }
    progress.abort();
    gateway.stop().await?;
    let _ = stop.send(());
    service.await?.context("sessionizer service")?;

    let summaries = report::read_summaries(&bootstrap)?;
    report::print_sessions(&summaries);
    report::print_totals(&produced, &samples, &destination, &metrics);
    // The emitter stays installed as the global sink until the process exits; stopping the
    // cluster under it would only make librdkafka log connection errors on the way out.
    std::mem::forget::<MockCluster<DefaultProducerContext>>(cluster);
    let shipped = samples.trace_rows_shipped();
    if shipped < produced.expected_rows() {
        bail!(
            "only {shipped} of {} rows were shipped within {:?}",
            produced.expected_rows(),
            settings.timeout
        );
    }
    Ok(())
}

impl DemoSettings {
    fn workload(&self) -> workload::WorkloadSettings {
        workload::WorkloadSettings {
            num_users: self.num_users,
            sessions_per_user: self.sessions_per_user,
            turns_per_second: self.turns_per_second,
        }
    }
}
