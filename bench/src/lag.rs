//! Lag: how long traces take to get through the sessionizer at half its maximum rate.
//!
//! A fresh topic and sessionizer, plus a reference consumer (a bare consumer in its own group
//! on the same topic). After a few hundred warm-up traces have gone through (so the
//! producer's and consumers' start-up is not measured), traces are produced at half the
//! measured maximum for `--lag-secs`; p50/p99 come from the pipeline's own histogram
//! (`sessionizer_sessionization_lag_seconds`: enrichment time minus Kafka timestamp, snapshot
//! before and after, given buckets 2 % apart for this run and interpolated in them), the
//! reference consumer's lag exactly per message (what broker and fetching cost before any
//! sessionizer code), and the delay to the ack server per row.

use crate::kafka::{DeliveryCounter, baseline_consumer, create_topics, producer, send};
use crate::measure::{self, Buckets, Window, percentile};
use crate::pipeline::{
    LAG_HISTOGRAM, Running, repartition_topic, sessionizer_settings, start_pipeline_fine_lag,
};
use crate::setup::{Bench, PARTITIONS, Topics, cores, now_ms, unique};
use crate::traces::Population;
use anyhow::{Context as _, Result, anyhow};
use rdkafka::consumer::Consumer as _;
use rdkafka::message::Message;
use rdkafka::producer::{Producer, ThreadedProducer};
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use trace_model::Encoding;

/// Traces produced and shipped before the lag run's clock starts, so that neither the
/// producer's start (idempotent producer id, metadata) nor the first fetches count.
const LAG_WARMUP_TRACES: u64 = 300;
const DELAY_HISTOGRAM: &str = "sessionizer_end_to_end_delay_seconds";

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Quantiles {
    pub(crate) p50_seconds: f64,
    pub(crate) p99_seconds: f64,
    pub(crate) max_seconds: Option<f64>,
    pub(crate) count: u64,
}

impl Quantiles {
    pub(crate) fn of_histogram(buckets: &Buckets) -> Self {
        Quantiles {
            p50_seconds: buckets.quantile(0.5),
            p99_seconds: buckets.quantile(0.99),
            max_seconds: None,
            count: buckets.count,
        }
    }

    pub(crate) fn of_samples(samples: &mut [f64]) -> Self {
        samples.sort_by(f64::total_cmp);
        Quantiles {
            p50_seconds: percentile(samples, 0.5),
            p99_seconds: percentile(samples, 0.99),
            max_seconds: samples.last().copied(),
            count: samples.len() as u64,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct LagFigures {
    /// `sessionizer_sessionization_lag_seconds`: enrichment time minus Kafka timestamp,
    /// interpolated inside the lag run's buckets, 2 % apart (`start_pipeline_fine_lag`): at
    /// most one bucket off the exact quantile.
    pub(crate) sessionization_lag: Quantiles,
    /// Share of traces enriched within 1 s of their Kafka timestamp (exact: a bucket bound).
    pub(crate) share_within_1s: f64,
    /// The reference: a bare consumer in its own group on the same topic at the same time,
    /// receive time minus Kafka timestamp per message (exact). What the broker, the fetch
    /// protocol and librdkafka cost before any sessionizer code runs.
    pub(crate) reference_consumer_lag: Quantiles,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Lag {
    pub(crate) target_rate: f64,
    pub(crate) rate_source: &'static str,
    pub(crate) achieved_rate: f64,
    pub(crate) seconds: f64,
    pub(crate) traces: u64,
    /// Process CPU share of the machine while producing (producer, sessionizer, ack server
    /// and reference consumer; the broker is another process).
    pub(crate) cpu_utilization: f64,
    /// The broker's share of the machine while producing, when its pid is known.
    pub(crate) broker_cpu_share: Option<f64>,
    /// Share of the machine busy with neither: other people's work (noise).
    pub(crate) others_cpu_share: f64,
    pub(crate) window: Window,
    /// Over the whole production: what the goal is judged on.
    pub(crate) whole_run: LagFigures,
    /// Traces produced after the first `warmup_seconds` only (steady state).
    pub(crate) after_warmup: LagFigures,
    pub(crate) warmup_seconds: f64,
    pub(crate) sessionization_lag_buckets: Buckets,
    /// `sessionizer_end_to_end_delay_seconds`: Kafka timestamp to Openlayer acknowledgement.
    pub(crate) end_to_end_delay: Option<Quantiles>,
    /// Measured per row at the ack server: arrival minus the trace's event time (set when it
    /// was produced), so it includes producer linger (20 ms) and batch linger (500 ms).
    pub(crate) ack_arrival_delay: Quantiles,
    /// Goal: sessionization lag p99 at most this times the reference consumer's.
    pub(crate) goal_p99_to_reference: f64,
    /// Whether the repartition stage ran (off only with `--lag-repartition-off`).
    pub(crate) repartitioning: bool,
}

/// The reference consumer on its own thread, and what it shares with the bench.
struct Reference {
    /// Set once the consumer holds every partition of the topic.
    assigned: Arc<AtomicBool>,
    /// Messages received so far.
    received: Arc<AtomicU64>,
    /// Messages to receive before it stops; unknown (`u64::MAX`) until production ends.
    expected: Arc<AtomicU64>,
    /// (Kafka timestamp ms, lag s) per message.
    thread: JoinHandle<Vec<(i64, f64)>>,
}

/// A bare consumer on the lag topic recording (Kafka timestamp ms, lag s) per message until
/// it has the expected messages or `deadline` passes.
fn start_reference(bootstrap: &str, topic: &str, deadline: Instant) -> Result<Reference> {
    let consumer = baseline_consumer(bootstrap, topic)?;
    let assigned = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let expected = Arc::new(AtomicU64::new(u64::MAX));
    let thread = {
        let (assigned, received, expected) = (assigned.clone(), received.clone(), expected.clone());
        std::thread::spawn(move || {
            let mut lags = Vec::new();
            while (lags.len() as u64) < expected.load(Ordering::Relaxed)
                && Instant::now() < deadline
            {
                if let Some(Ok(message)) = consumer.poll(Duration::from_millis(50))
                    && let Some(timestamp) = message.timestamp().to_millis()
                {
                    lags.push((timestamp, (now_ms() - timestamp) as f64 / 1000.0));
                    received.store(lags.len() as u64, Ordering::Relaxed);
                }
                if !assigned.load(Ordering::Relaxed)
                    && consumer
                        .assignment()
                        .is_ok_and(|list| list.count() == PARTITIONS as usize)
                {
                    assigned.store(true, Ordering::Relaxed);
                }
            }
            lags
        })
    };
    Ok(Reference {
        assigned,
        received,
        expected,
        thread,
    })
}

/// Produces the lag run's traces one at a time, each stamped with the time it is sent.
struct LagProducer<'a> {
    producer: ThreadedProducer<DeliveryCounter>,
    population: Population,
    topic: &'a str,
    /// Traces produced so far, the warm-up's included.
    sent: u64,
}

impl<'a> LagProducer<'a> {
    fn new(bootstrap: &str, topic: &'a str, num_sessions: usize) -> Result<Self> {
        Ok(LagProducer {
            producer: producer(bootstrap)?,
            population: Population::new(num_sessions)?,
            topic,
            sent: 0,
        })
    }

    fn produce_one(&mut self) -> Result<()> {
        let sessions = self.population.num_sessions();
        let index = self.sent as usize;
        let event = self
            .population
            .trace(index % sessions, index / sessions, now_ms());
        let payload = trace_model::encode(&event, Encoding::Avro)?;
        send(
            &self.producer,
            self.topic,
            event.partition_key().unwrap_or_default(),
            None,
            &payload,
        );
        self.sent += 1;
        Ok(())
    }
}

/// What the paced production measured.
struct Production {
    /// Traces produced at the target rate (after the warm-up traces).
    traces: u64,
    seconds: f64,
    window: Window,
    /// Wall clock (ms) when the pacing began.
    began_ms: i64,
    /// The lag histogram once the warm-up seconds had passed.
    lag_at_warmup: Option<Buckets>,
}

/// Polls `done` every 10 ms; fails with `timed_out()` once `limit` has passed.
fn wait_until(
    limit: Duration,
    done: impl Fn() -> bool,
    timed_out: impl FnOnce() -> anyhow::Error,
) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !done() {
        if Instant::now() > deadline {
            return Err(timed_out());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Produces at `rate` traces per second for `duration`, snapshotting the lag histogram of
/// `registry` once `warmup` has passed.
fn produce_paced(
    producer: &mut LagProducer<'_>,
    registry: &prometheus::Registry,
    (rate, duration, warmup): (f64, Duration, Duration),
    (ack_tid, broker_pid): (u32, Option<u32>),
) -> Result<Production> {
    let clocks_began = measure::Clocks::take(Some(ack_tid), broker_pid)?;
    let began = Instant::now();
    let began_ms = now_ms();
    let mut lag_at_warmup = None;
    let mut paced: u64 = 0;
    while began.elapsed() < duration {
        let due = (began.elapsed().as_secs_f64() * rate) as u64;
        while paced < due {
            producer.produce_one()?;
            paced += 1;
        }
        if lag_at_warmup.is_none() && began.elapsed() >= warmup {
            // Approximate: traces of the warm-up still in flight land after the snapshot.
            lag_at_warmup = measure::histogram(registry, LAG_HISTOGRAM);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let seconds = began.elapsed().as_secs_f64();
    let window = measure::Clocks::take(Some(ack_tid), broker_pid)?.since(&clocks_began);
    Ok(Production {
        traces: paced,
        seconds,
        window,
        began_ms,
        lag_at_warmup,
    })
}

/// The pipeline's lag and delay histograms at one moment.
struct Histograms {
    /// `sessionizer_sessionization_lag_seconds`: always there once a trace went through.
    lag: Buckets,
    /// `sessionizer_end_to_end_delay_seconds`.
    delay: Option<Buckets>,
}

impl Histograms {
    fn read(registry: &prometheus::Registry) -> Result<Self> {
        Ok(Histograms {
            lag: measure::histogram(registry, LAG_HISTOGRAM)
                .context("no sessionization lag histogram")?,
            delay: measure::histogram(registry, DELAY_HISTOGRAM),
        })
    }
}

/// Reference consumer lags of the messages with a Kafka timestamp at or after `since_ms`.
fn reference_lags(reference: &[(i64, f64)], since_ms: i64) -> Vec<f64> {
    reference
        .iter()
        .filter(|(timestamp, _)| *timestamp >= since_ms)
        .map(|(_, lag)| *lag)
        .collect()
}

/// The figures of the lag run from what it recorded.
fn lag_figures(
    (rate, rate_source): (f64, &'static str),
    production: Production,
    (before, after): (Histograms, Histograms),
    reference: &[(i64, f64)],
    mut arrivals: Vec<f64>,
    warmup: Duration,
) -> Lag {
    let lag_buckets = after.lag.minus(&before.lag);
    let end_to_end = after.delay.map(|delay_after| match &before.delay {
        Some(delay_before) => delay_after.minus(delay_before),
        None => delay_after,
    });
    let steady_buckets = match &production.lag_at_warmup {
        Some(earlier) => after.lag.minus(earlier),
        None => lag_buckets.clone(),
    };
    let warmup_ms = production.began_ms + warmup.as_millis() as i64;
    let mut reference_all = reference_lags(reference, production.began_ms);
    let mut reference_steady = reference_lags(reference, warmup_ms);
    let window = production.window;
    Lag {
        target_rate: rate,
        rate_source,
        achieved_rate: production.traces as f64 / production.seconds,
        seconds: production.seconds,
        traces: production.traces,
        cpu_utilization: window.process_cpu_seconds / window.seconds / cores(),
        broker_cpu_share: window
            .broker_cpu_seconds
            .map(|broker| broker / window.seconds / cores()),
        others_cpu_share: window.others_cpu_seconds / window.seconds / cores(),
        window,
        whole_run: LagFigures {
            sessionization_lag: Quantiles::of_histogram(&lag_buckets),
            share_within_1s: lag_buckets.share_at_or_below(1.0),
            reference_consumer_lag: Quantiles::of_samples(&mut reference_all),
        },
        after_warmup: LagFigures {
            sessionization_lag: Quantiles::of_histogram(&steady_buckets),
            share_within_1s: steady_buckets.share_at_or_below(1.0),
            reference_consumer_lag: Quantiles::of_samples(&mut reference_steady),
        },
        warmup_seconds: warmup.as_secs_f64(),
        sessionization_lag_buckets: lag_buckets,
        end_to_end_delay: end_to_end.as_ref().map(Quantiles::of_histogram),
        ack_arrival_delay: Quantiles::of_samples(&mut arrivals),
        goal_p99_to_reference: 1.2,
        repartitioning: true,
    }
}

/// A fresh topic and sessionizer, the reference consumer beside it, both assigned every
/// partition.
fn start_consumers(bench: &mut Bench<'_>) -> Result<(Topics, Running, Reference)> {
    let Bench {
        args,
        runtime,
        bootstrap,
        topics,
        ack,
        created,
        ..
    } = bench;
    let lag_topics = Topics {
        traces: unique("bench-lag-traces"),
        ..topics.clone()
    };
    runtime.block_on(create_topics(
        bootstrap,
        &[(&lag_topics.traces, PARTITIONS)],
    ))?;
    created.push(lag_topics.traces.clone());
    let changelog = (!args.no_changelog).then(|| unique("bench-lag-state"));
    if let Some(changelog) = &changelog {
        created.push(changelog.clone());
    }
    let repartition_off = args.lag_repartition_off;
    let settings = sessionizer_settings(bootstrap, &lag_topics, ack, changelog, &|config| {
        if repartition_off {
            config.kafka.repartition_topic = Some(String::new());
        }
    })?;
    created.extend(repartition_topic(&settings));
    ack.reset(true);
    let running = start_pipeline_fine_lag(runtime, settings)?;
    let reference = start_reference(
        bootstrap,
        &lag_topics.traces,
        Instant::now() + Duration::from_secs(args.lag_secs + 240),
    )?;
    wait_until(
        Duration::from_secs(60),
        || {
            running.metrics.partitions_assigned.get() >= i64::from(PARTITIONS)
                && reference.assigned.load(Ordering::Relaxed)
        },
        || anyhow!("the lag run's consumers got no assignment within 60 s"),
    )?;
    Ok((lag_topics, running, reference))
}

/// The lag run at `rate` traces per second (`rate_source` says where the rate came from).
pub(crate) fn lag(bench: &mut Bench<'_>, rate: f64, rate_source: &'static str) -> Result<Lag> {
    let (lag_topics, running, reference) = start_consumers(bench)?;
    let Bench {
        args,
        runtime,
        bootstrap,
        ack,
        broker_pid,
        ..
    } = bench;
    let duration = Duration::from_secs(args.lag_secs);
    let warmup = Duration::from_secs(args.lag_warmup_secs.min(args.lag_secs / 2));
    let mut producer = LagProducer::new(bootstrap, &lag_topics.traces, args.sessions)?;
    // Client warm-up, outside the figures: a few traces through the whole path.
    while producer.sent < LAG_WARMUP_TRACES {
        producer.produce_one()?;
    }
    let warmup_traces = producer.sent;
    wait_until(
        Duration::from_secs(60),
        || {
            running.metrics.rows_shipped.get() >= warmup_traces
                && reference.received.load(Ordering::Relaxed) >= warmup_traces
        },
        || anyhow!("lag run: warm-up traces not through within 60 s"),
    )?;
    let before = Histograms::read(&running.registry)?;
    ack.take_delays();
    eprintln!(
        "bench: lag run: producing {rate:.0} traces/s for {} s",
        args.lag_secs
    );
    let production = produce_paced(
        &mut producer,
        &running.registry,
        (rate, duration, warmup),
        (ack.tid(), *broker_pid),
    )?;
    let sent = producer.sent;
    reference.expected.store(sent, Ordering::Relaxed);
    producer
        .producer
        .flush(Duration::from_secs(60))
        .context("lag traces not delivered")?;
    wait_until(
        Duration::from_secs(120),
        || running.metrics.rows_shipped.get() >= sent,
        || {
            anyhow!(
                "lag run: {} of {sent} rows shipped after 120 s",
                running.metrics.rows_shipped.get()
            )
        },
    )?;
    let (_, registry) = running.stop(runtime)?;
    let reference = reference
        .thread
        .join()
        .map_err(|_| anyhow!("reference consumer panicked"))?;
    let after = Histograms::read(&registry)?;
    let arrivals = ack.take_delays();
    ack.reset(false);
    Ok(Lag {
        repartitioning: !args.lag_repartition_off,
        ..lag_figures(
            (rate, rate_source),
            production,
            (before, after),
            &reference,
            arrivals,
            warmup,
        )
    })
}
