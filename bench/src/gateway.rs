//! The gateway (Openlayer-compatible ingest, `services/gateway`) on the real broker: rows per
//! second it gets acknowledged by Kafka, and request latency at half that rate.
//!
//! The gateway runs in this process through its library (`gateway::run`, production defaults,
//! a fresh 3-partition topic) on its own multi-threaded runtime and threads (`gateway-*`), so
//! its CPU can be told apart from the clients'. The clients run on the bench's runtime:
//! `--gateway-clients` concurrent requests over keep-alive connections
//! ([`crate::http_client`]: their CPU per request comes out of the gateway's two cores).
//!
//! Requests have the official SDK's shape: `POST /v1/inference-pipelines/{id}/data-stream`
//! with `{"config": {..}, "rows": [row]}`, the row as the Python tracer builds it (inputs and
//! metadata as columns, `output`, `inferenceId`, `inferenceTimestamp`, `latency`, `tokens`,
//! `cost`, `user_id`, `session_id`, and the nested `steps` tree): the sessionizer's own row
//! serialization of the bench's realistic traces (`openlayer_row`, which writes the SDK's
//! format), plus the session column the SDK's `set_user_session_context` adds. Bodies are
//! built before any clock starts.
//!
//! 1. Throughput, one trace per request (what the SDK sends): `--gateway-traces` requests, a
//!    few hundred warm-up requests first (connections, producer id, metadata). The window
//!    runs from the first request to the last answer, and, when the gateway answers once
//!    queued, on until it holds no unacknowledged row: the figure is rows in Kafka either
//!    way. A 503 is sent again after a few milliseconds (counted); only 200 answers count,
//!    anything else is reported and fails the bench, as does a row lost after its answer.
//! 2. Throughput, batched: the same rows, `--gateway-batch-rows` per request.
//! 3. Latency: requests of one trace at half the rate of 1., open loop (a request is sent at
//!    its scheduled time whether or not earlier ones were answered) for `--gateway-latency-secs`;
//!    each latency runs from the scheduled send time to the answer, so a client-side delay
//!    counts against the gateway rather than hiding it. p50/p99 exact over all requests.
//!    Answering once acknowledged, a bare producer with the gateway's settings then produces
//!    at the same rate: the broker's round trip, the floor of that latency
//!    ([`crate::produce_latency`]).
//! 4. The official SDK (sync) publishing through the gateway, against the same SDK publishing
//!    straight to the ack server, in turns ([`crate::sdk::through_gateway`]); when its venv is
//!    there.
//!
//! The ratio to the sessionizer divides 1. by the sessionizer's median end-to-end throughput
//! of the same run (`throughput` part), both in rows (traces) per second.
//!
//! All of it runs twice, on fresh topics: with the gateway's default `http.answer_after =
//! "acknowledged"` (an answer waits for Kafka), then with `"queued"`.

use crate::ack::AckServer;
use crate::http_client::Poster;
use crate::lag::Quantiles;
use crate::measure::{Clocks, percentile};
use crate::produce_latency;
use crate::setup::{PIPELINE_ID, TURN_SPACING_MS, cores, now_ms};
use crate::traces::Population;
use anyhow::{Context as _, Result, bail, ensure};
use axum::body::Bytes;
use gateway::config::AnswerAfter;
use serde::Serialize;
use serde_json::{Map, Value};
use sessionizer::enrich::{openlayer_config, openlayer_row};
use sessionizer::sessionize::Placement;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;
use trace_model::secret::Secret;

/// How `http.answer_after` is written in the configuration.
pub(crate) fn answer_label(answer_after: AnswerAfter) -> &'static str {
    match answer_after {
        AnswerAfter::Acknowledged => "acknowledged",
        AnswerAfter::Queued => "queued",
    }
}

const API_KEY: &str = "bench-gateway-key-not-a-secret";
/// Requests sent before any window opens.
/// Warm-up rounds before a failing one is an error.
const WARMUP_ROUNDS: usize = 5;
const WARMUP_REQUESTS: usize = 300;
/// Longest wait for the gateway's `/readyz` (it checks the broker first).
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Answered once queued, a throughput run's client sends a request answered 503 again after
/// this long (the SDK
/// waits `Retry-After`, seconds, which would measure the wait instead of the gateway)...
const RETRY_503_AFTER: Duration = Duration::from_millis(5);
/// ...this many times at most, about a produce timeout, before it counts as a failure.
const RETRIES_503: usize = 2_000;

/// What the gateway part is told to do.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) traces: usize,
    pub(crate) batch_rows: usize,
    pub(crate) clients: usize,
    pub(crate) latency_secs: u64,
    pub(crate) sessions: usize,
    /// The broker's pid, to report its CPU apart from other people's work.
    pub(crate) broker_pid: Option<u32>,
    /// The official SDK (sync) through the gateway against straight to the ack server.
    pub(crate) sdk: Option<crate::sdk::Script>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct ThroughputRun {
    pub(crate) rows_per_request: usize,
    pub(crate) requests: usize,
    pub(crate) rows_acknowledged: u64,
    pub(crate) seconds: f64,
    pub(crate) rows_per_second: f64,
    /// Answers other than 200, by status (0: no answer, a client error), once retries of
    /// 503 gave up.
    pub(crate) failures: BTreeMap<u16, u64>,
    /// 503 answers that were retried, as the SDK retries them (the in-flight bound, mostly:
    /// answering once queued, rows wait for a slow broker in the gateway).
    pub(crate) retried_503: u64,
    /// Request body bytes per row.
    pub(crate) body_bytes_per_row: f64,
    /// CPU of the gateway's threads over the window, per row.
    pub(crate) gateway_cpu_us_per_row: f64,
    /// CPU of librdkafka's threads (the gateway's producer) over the window, per row.
    pub(crate) librdkafka_cpu_us_per_row: f64,
    /// CPU of the HTTP clients (the bench's runtime) over the window, per row.
    pub(crate) client_cpu_us_per_row: f64,
    /// CPU of the broker process per row, when its pid is known.
    pub(crate) broker_cpu_us_per_row: Option<f64>,
    /// Share of the machine's cores busy with neither this process nor the broker (noise).
    pub(crate) others_cpu_share: f64,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct LatencyRun {
    pub(crate) target_rate: f64,
    pub(crate) achieved_rate: f64,
    pub(crate) seconds: f64,
    pub(crate) requests: usize,
    pub(crate) failures: BTreeMap<u16, u64>,
    pub(crate) p50_seconds: f64,
    pub(crate) p99_seconds: f64,
    pub(crate) max_seconds: f64,
    /// Share of the machine's cores busy in this process (gateway and clients) during the run.
    pub(crate) process_cpu_share: f64,
    /// Answering once acknowledged: a bare producer with the gateway's settings at the same
    /// rate, right after ([`crate::produce_latency`]).
    pub(crate) bare_producer: Option<Quantiles>,
    /// Share of the machine's cores busy with neither this process nor the broker (noise).
    pub(crate) others_cpu_share: f64,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Gateway {
    /// `http.answer_after` of this run: `acknowledged` or `queued`.
    pub(crate) answer_after: AnswerAfter,
    pub(crate) clients: usize,
    pub(crate) single: ThroughputRun,
    pub(crate) batched: ThroughputRun,
    pub(crate) latency: LatencyRun,
    pub(crate) sdk: Option<crate::sdk::ThroughGateway>,
}

/// The gateway running on its own runtime and threads, stopped by `stop`.
struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<Result<()>>,
    url: String,
    /// What the SDK's `OPENLAYER_BASE_URL` is set to.
    base_url: String,
    /// The gateway's `/metrics`.
    metrics_url: String,
    /// What its producer is built from.
    kafka: gateway::config::KafkaSettings,
}

fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn start(bootstrap: &str, topic: &str, answer_after: AnswerAfter) -> Result<(Running, String)> {
    let (api_port, ops_port) = (free_port()?, free_port()?);
    let mut config = gateway::config::GatewayConfig::default();
    config.http.listen = format!("127.0.0.1:{api_port}");
    config.ops.listen = format!("127.0.0.1:{ops_port}");
    config.auth.api_keys = vec![Secret::new(API_KEY)];
    config.kafka.bootstrap_servers = bootstrap.to_owned();
    config.kafka.topic = topic.to_owned();
    config.http.answer_after = answer_after;
    // The bench stops it once every request is answered: nothing to drain.
    config.shutdown.unready_delay_secs = 0;
    config.shutdown.drain_timeout_secs = 5;
    let validated = config
        .validate()
        .map_err(|error| anyhow::anyhow!("gateway configuration: {error}"))?;
    let kafka = validated.kafka.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("gateway-rt")
        .enable_all()
        .build()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("gateway-main".to_owned())
        .spawn(move || -> Result<()> {
            runtime
                .block_on(gateway::run(validated, async {
                    let _stop_or_drop = stopped.await;
                }))
                .context("gateway")
        })?;
    let running = Running {
        stop,
        thread,
        url: format!(
            "http://127.0.0.1:{api_port}/v1/inference-pipelines/{PIPELINE_ID}/data-stream"
        ),
        base_url: format!("http://127.0.0.1:{api_port}/v1"),
        metrics_url: format!("http://127.0.0.1:{ops_port}/metrics"),
        kafka,
    };
    Ok((running, format!("http://127.0.0.1:{ops_port}/readyz")))
}

impl Running {
    fn stop(self) -> Result<()> {
        let _already_stopped = self.stop.send(());
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("gateway thread panicked"))?
    }
}

async fn wait_ready(client: &reqwest::Client, readyz: &str) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(response) = client.get(readyz).send().await
            && response.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the gateway was not ready within {READY_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `traces` SDK-shaped rows of the bench's realistic traces (turn-major over the sessions).
fn sdk_rows(sessions: usize, traces: usize) -> Result<(Vec<Value>, Value)> {
    let population = Population::new(sessions)?;
    let num_sessions = population.num_sessions();
    let turns = traces.div_ceil(num_sessions);
    let base = now_ms() - turns as i64 * TURN_SPACING_MS - 60_000;
    let mut input_names = BTreeSet::new();
    let mut rows = Vec::with_capacity(traces);
    for index in 0..traces {
        let (session, turn) = (index % num_sessions, index / num_sessions);
        let event = population.trace(session, turn, base + turn as i64 * TURN_SPACING_MS);
        input_names.extend(event.inputs.keys().cloned());
        let inference_id = event.inference_id.clone().unwrap_or_default();
        let row = openlayer_row(&event, &inference_id, &Placement::Passthrough);
        let mut row: Map<String, Value> = serde_json::from_str(row.get())?;
        if let Some(session_id) = &event.session_id {
            row.insert("session_id".to_owned(), Value::from(session_id.as_str()));
        }
        rows.push(Value::Object(row));
    }
    Ok((rows, openlayer_config(&input_names, true, true)))
}

fn bodies(rows: &[Value], config: &Value, rows_per_request: usize) -> Result<Vec<Bytes>> {
    rows.chunks(rows_per_request)
        .map(|chunk| {
            let body = serde_json::json!({"config": config, "rows": chunk});
            Ok(Bytes::from(serde_json::to_vec(&body)?))
        })
        .collect()
}

fn cpu_by_prefix(threads: &BTreeMap<String, f64>, prefix: &str) -> f64 {
    threads
        .iter()
        .filter(|(name, _)| name.starts_with(prefix))
        .map(|(_, seconds)| seconds)
        .sum()
}

/// Sends every body with `clients` requests in flight; the window is first send to last answer,
/// and, with `metrics_url` (answers once queued), until the gateway has no row left
/// unacknowledged: the figure is rows in Kafka either way. With it too, a 503 is sent again
/// (the in-flight bound: rows answered once queued wait in the gateway for a slow broker);
/// answering once acknowledged, a 503 is a failure.
#[allow(clippy::too_many_arguments)]
fn saturate(
    runtime: &Runtime,
    (poster, client): (&Arc<Poster>, &reqwest::Client),
    metrics_url: Option<&str>,
    bodies: &Arc<Vec<Bytes>>,
    rows_per_request: usize,
    clients: usize,
    broker_pid: Option<u32>,
) -> Result<ThroughputRun> {
    let before = Clocks::take(None, broker_pid)?;
    let started = Instant::now();
    let outcomes: Vec<(Vec<u16>, u64)> = runtime.block_on(async {
        let next = Arc::new(AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        let retries = if metrics_url.is_some() {
            RETRIES_503
        } else {
            0
        };
        for _ in 0..clients {
            let (poster, bodies, next) = (poster.clone(), bodies.clone(), next.clone());
            tasks.spawn(async move {
                let mut statuses = Vec::new();
                let mut retried = 0u64;
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(body) = bodies.get(index) else {
                        return (statuses, retried);
                    };
                    let mut status = poster.post(body.clone()).await;
                    for _ in 0..retries {
                        if status != 503 {
                            break;
                        }
                        retried += 1;
                        tokio::time::sleep(RETRY_503_AFTER).await;
                        status = poster.post(body.clone()).await;
                    }
                    statuses.push(status);
                }
            });
        }
        tasks.join_all().await
    });
    if let Some(metrics_url) = metrics_url {
        runtime.block_on(wait_acknowledged(client, metrics_url))?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let window = Clocks::take(None, broker_pid)?.since(&before);
    let threads = &window.threads;
    let mut failures = BTreeMap::new();
    let mut acknowledged = 0u64;
    let retried_503 = outcomes.iter().map(|(_, retried)| retried).sum();
    for status in outcomes.into_iter().flat_map(|(statuses, _)| statuses) {
        if status == 200 {
            acknowledged += 1;
        } else {
            *failures.entry(status).or_insert(0) += 1;
        }
    }
    let rows = acknowledged * rows_per_request as u64;
    let body_bytes: usize = bodies.iter().map(Bytes::len).sum();
    let per_row = |cpu_seconds: f64| cpu_seconds * 1e6 / rows.max(1) as f64;
    Ok(ThroughputRun {
        rows_per_request,
        requests: bodies.len(),
        rows_acknowledged: rows,
        seconds,
        rows_per_second: rows as f64 / seconds,
        failures,
        retried_503,
        body_bytes_per_row: body_bytes as f64 / (bodies.len() * rows_per_request) as f64,
        // The gateway's threads and its producer's polling thread, which settles requests.
        gateway_cpu_us_per_row: per_row(
            cpu_by_prefix(threads, "gateway-") + cpu_by_prefix(threads, "producer pol"),
        ),
        librdkafka_cpu_us_per_row: per_row(cpu_by_prefix(threads, "rdk:")),
        client_cpu_us_per_row: per_row(cpu_by_prefix(threads, "tokio-rt-worker")),
        broker_cpu_us_per_row: window.broker_cpu_seconds.map(per_row),
        others_cpu_share: window.others_cpu_seconds / window.seconds / cores(),
    })
}

/// Reads one unlabelled sample of the gateway's `/metrics`.
async fn gateway_metric(client: &reqwest::Client, metrics_url: &str, name: &str) -> Result<f64> {
    let text = client.get(metrics_url).send().await?.text().await?;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .with_context(|| format!("no {name} in the gateway's metrics"))
}

/// Waits until the gateway holds no row that Kafka has not acknowledged.
async fn wait_acknowledged(client: &reqwest::Client, metrics_url: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while gateway_metric(client, metrics_url, "gateway_rows_in_flight").await? > 0.0 {
        ensure!(
            Instant::now() < deadline,
            "the gateway's rows were not acknowledged within a minute"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

/// One-trace requests at `rate` per second for `seconds`, open loop.
fn paced(
    runtime: &Runtime,
    poster: &Arc<Poster>,
    bodies: &Arc<Vec<Bytes>>,
    rate: f64,
    seconds: u64,
    broker_pid: Option<u32>,
) -> Result<LatencyRun> {
    let total = (rate * seconds as f64).round().max(1.0) as usize;
    let before = Clocks::take(None, broker_pid)?;
    let started = Instant::now();
    let outcomes: Vec<(u16, f64)> = runtime.block_on(async {
        let origin = tokio::time::Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for index in 0..total {
            let scheduled = origin + Duration::from_secs_f64(index as f64 / rate);
            tokio::time::sleep_until(scheduled).await;
            let poster = poster.clone();
            let body = bodies[index % bodies.len()].clone();
            tasks.spawn(async move {
                let status = poster.post(body).await;
                (status, scheduled.elapsed().as_secs_f64())
            });
        }
        tasks.join_all().await
    });
    let elapsed = started.elapsed().as_secs_f64();
    let window = Clocks::take(None, broker_pid)?.since(&before);
    let mut failures = BTreeMap::new();
    let mut latencies = Vec::with_capacity(outcomes.len());
    for (status, latency) in outcomes {
        if status == 200 {
            latencies.push(latency);
        } else {
            *failures.entry(status).or_insert(0) += 1;
        }
    }
    latencies.sort_by(f64::total_cmp);
    ensure!(
        !latencies.is_empty(),
        "no request of the latency run succeeded"
    );
    Ok(LatencyRun {
        target_rate: rate,
        achieved_rate: total as f64 / elapsed,
        seconds: elapsed,
        requests: total,
        failures,
        p50_seconds: percentile(&latencies, 0.5),
        p99_seconds: percentile(&latencies, 0.99),
        max_seconds: latencies.last().copied().unwrap_or_default(),
        process_cpu_share: window.process_cpu_seconds / window.seconds / cores(),
        others_cpu_share: window.others_cpu_seconds / window.seconds / cores(),
        bare_producer: None,
    })
}

/// Sends the warm-up requests, outside any window. Readiness does not wait for Kafka (the
/// gateway answers 503 while it cannot produce), and a fresh topic may not take records at
/// once: the warm-up goes again, as the SDK would retry, until a whole round is acknowledged.
fn warm_up(
    runtime: &Runtime,
    clients_of: (&Arc<Poster>, &reqwest::Client),
    warmup: &Arc<Vec<Bytes>>,
    clients: usize,
) -> Result<()> {
    let mut warm = saturate(runtime, clients_of, None, warmup, 1, clients, None)?;
    for _ in 1..WARMUP_ROUNDS {
        if warm.failures.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
        warm = saturate(runtime, clients_of, None, warmup, 1, clients, None)?;
    }
    ensure!(
        warm.failures.is_empty(),
        "gateway warm-up failed in each of {WARMUP_ROUNDS} rounds, the last: {:?}",
        warm.failures
    );
    Ok(())
}

/// Runs the three measurements against a gateway producing to `topic` (already created),
/// answering as `answer_after` says.
pub(crate) fn measure(
    runtime: &Runtime,
    (bootstrap, topic): (&str, &str),
    answer_after: AnswerAfter,
    plan: &Plan,
    ack: &AckServer,
) -> Result<Gateway> {
    let traces = plan.traces.max(plan.batch_rows);
    eprintln!(
        "bench: gateway answering {}: building {traces} SDK-shaped requests ({} concurrent clients)",
        answer_label(answer_after),
        plan.clients
    );
    let (rows, config) = sdk_rows(plan.sessions, traces + WARMUP_REQUESTS)?;
    let warmup = Arc::new(bodies(&rows[traces..], &config, 1)?);
    let single_bodies = Arc::new(bodies(&rows[..traces], &config, 1)?);
    let batched_bodies = Arc::new(bodies(&rows[..traces], &config, plan.batch_rows)?);
    drop(rows);

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(plan.clients)
        .timeout(Duration::from_secs(60))
        .build()?;
    let (running, readyz) = start(bootstrap, topic, answer_after)?;
    let poster = Arc::new(Poster::new(&running.url, API_KEY, plan.clients)?);
    let base_url = running.base_url.clone();
    let metrics_url = running.metrics_url.clone();
    // Answered once queued, a window lasts until Kafka acknowledged every row too.
    let settled = (answer_after == AnswerAfter::Queued).then_some(metrics_url.as_str());
    let outcome = (|| -> Result<Gateway> {
        runtime.block_on(wait_ready(&client, &readyz))?;
        warm_up(runtime, (&poster, &client), &warmup, plan.clients)?;
        let single = saturate(
            runtime,
            (&poster, &client),
            settled,
            &single_bodies,
            1,
            plan.clients,
            plan.broker_pid,
        )?;
        eprintln!(
            "bench: gateway 1 trace/request: {:.0} rows/s ({} rows in {:.2} s, failures {:?}, 503 retried {})",
            single.rows_per_second,
            single.rows_acknowledged,
            single.seconds,
            single.failures,
            single.retried_503
        );
        let batched_run = saturate(
            runtime,
            (&poster, &client),
            settled,
            &batched_bodies,
            plan.batch_rows,
            plan.clients,
            plan.broker_pid,
        )?;
        eprintln!(
            "bench: gateway {} traces/request: {:.0} rows/s ({} rows in {:.2} s, failures {:?}, 503 retried {})",
            plan.batch_rows,
            batched_run.rows_per_second,
            batched_run.rows_acknowledged,
            batched_run.seconds,
            batched_run.failures,
            batched_run.retried_503
        );
        let rate = single.rows_per_second / 2.0;
        eprintln!(
            "bench: gateway latency at {rate:.0} requests/s for {} s",
            plan.latency_secs
        );
        let mut latency = paced(
            runtime,
            &poster,
            &single_bodies,
            rate,
            plan.latency_secs,
            plan.broker_pid,
        )?;
        eprintln!(
            "bench: gateway latency p50 {:.4} s, p99 {:.4} s (achieved {:.0}/s, failures {:?})",
            latency.p50_seconds, latency.p99_seconds, latency.achieved_rate, latency.failures
        );
        if answer_after == AnswerAfter::Acknowledged {
            let bare =
                produce_latency::measure(&running.kafka, &single_bodies, rate, plan.latency_secs)?;
            eprintln!(
                "bench: bare producer at {rate:.0} records/s: p50 {:.4} s, p99 {:.4} s",
                bare.p50_seconds, bare.p99_seconds
            );
            latency.bare_producer = Some(bare);
        }
        for (label, failures) in [
            ("single", &single.failures),
            ("batched", &batched_run.failures),
            ("latency", &latency.failures),
        ] {
            ensure!(
                failures.is_empty(),
                "gateway {label} run: requests not acknowledged: {failures:?}"
            );
        }
        let sdk = match &plan.sdk {
            Some(script) => {
                let through = crate::sdk::through_gateway(script, ack, (&base_url, API_KEY))?;
                eprintln!(
                    "bench: official SDK sync through the gateway: {:.0} rows/s, straight {:.0} rows/s",
                    through.gateway_median, through.direct_median
                );
                Some(through)
            }
            None => None,
        };
        // Rows answered once queued that Kafka then refused would not be in the figures.
        let lost = runtime.block_on(async {
            wait_acknowledged(&client, &metrics_url).await?;
            gateway_metric(&client, &metrics_url, "gateway_rows_lost_total").await
        })?;
        ensure!(
            lost == 0.0,
            "the gateway lost {lost} rows answered once queued"
        );
        Ok(Gateway {
            answer_after,
            clients: plan.clients,
            single,
            batched: batched_run,
            latency,
            sdk,
        })
    })();
    let stopped = running.stop();
    let gateway = outcome?;
    stopped?;
    Ok(gateway)
}
