//! Watching running instances from outside, as an operator would: `/metrics`, `/readyz`,
//! `/proc`, and what the Openlayer server received.

use crate::service::{Sessionizer, free_local_address, http_get, set};
use fakes::openlayer::OpenlayerServer;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A `sessionizer run` child with its own HTTP port.
#[derive(Debug)]
pub struct Instance {
    pub process: Sessionizer,
    pub http: SocketAddr,
    /// When it was started.
    pub started: Instant,
    /// Samples of durable checkpoints, for [`Instance::rows_in_flight`].
    samples: Vec<Sample>,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    /// Wall clock, in Unix seconds.
    at_secs: f64,
    /// The oldest cut of the owned partitions' durable checkpoints
    /// (`sessionizer_checkpoint_timestamp_seconds`), when every assigned partition has one.
    durable_since_secs: Option<f64>,
    /// `sessionizer_rebalances_total{kind="revoke"}`: partitions given up, each replayed by
    /// its next owner (this process too) from its durable checkpoint.
    revokes: f64,
    /// Rows the Openlayer server had accepted at that moment.
    rows_received: usize,
    /// `sessionizer_traces_repartitioned_total`: traces this instance forwarded.
    repartitioned: f64,
    /// `sessionizer_alignment_forced_total`: traces applied before their inputs caught up.
    forced: f64,
}

impl Instance {
    pub fn start(env: &BTreeMap<String, String>) -> Instance {
        let http = free_local_address();
        let mut env = env.clone();
        set(&mut env, "SESSIONIZER__HTTP__LISTEN", &http.to_string());
        Instance {
            process: Sessionizer::run(&env),
            http,
            started: Instant::now(),
            samples: Vec::new(),
        }
    }

    pub async fn metrics(&self) -> Option<String> {
        match http_get(self.http, "/metrics").await {
            Some((200, body)) => Some(body),
            _ => None,
        }
    }

    /// `/readyz`'s status, `None` when nothing answers.
    pub async fn readiness(&self) -> Option<u16> {
        http_get(self.http, "/readyz")
            .await
            .map(|(status, _)| status)
    }

    /// Takes one sample of the checkpoint counter against what the server has received.
    pub async fn sample(&mut self, server: &OpenlayerServer) {
        let rows_received = server.num_rows();
        if let Some(metrics) = self.metrics().await {
            let cuts = values(&metrics, "sessionizer_checkpoint_timestamp_seconds");
            let assigned = sum(&metrics, "sessionizer_partitions_assigned");
            let durable_since_secs = (assigned > 0.0 && cuts.len() as f64 >= assigned)
                .then(|| cuts.iter().copied().fold(f64::INFINITY, f64::min));
            self.samples.push(Sample {
                at_secs: unix_secs(),
                durable_since_secs,
                revokes: sum(&metrics, "sessionizer_rebalances_total{kind=\"revoke\"}"),
                rows_received,
                repartitioned: sum(&metrics, "sessionizer_traces_repartitioned_total"),
                forced: sum(&metrics, "sessionizer_alignment_forced_total"),
            });
        }
    }

    /// Traces this instance forwarded through the repartition topic, as last sampled.
    pub fn repartitioned(&self) -> f64 {
        self.samples
            .last()
            .map_or(0.0, |sample| sample.repartitioned)
    }

    /// Traces this instance applied before their partition's inputs caught up, as last
    /// sampled.
    pub fn alignment_forced(&self) -> f64 {
        self.samples.last().map_or(0.0, |sample| sample.forced)
    }

    /// Rows this instance may have shipped twice: at every revocation it sampled, and at a
    /// crash right now, those the server accepted since the oldest cut of its durable
    /// checkpoints (the next owner replays what came after each partition's), less `slack`:
    /// requests in flight are acknowledged out of order, so a row accepted just before a cut
    /// may sit above an unsettled one and be replayed too. Counted from the first sample
    /// when some partition had no durable checkpoint. Rows earlier instances left in flight
    /// count against those instances.
    pub fn rows_in_flight(&self, rows_now: usize, slack: Duration) -> usize {
        let revocations: usize = self
            .samples
            .windows(2)
            .enumerate()
            .filter(|(_, pair)| pair[1].revokes > pair[0].revokes)
            .map(|(before, pair)| self.in_flight_after(before, pair[1].rows_received, slack))
            .sum();
        let now = self
            .samples
            .len()
            .checked_sub(1)
            .map_or(0, |last| self.in_flight_after(last, rows_now, slack));
        revocations + now
    }

    /// Rows accepted by `rows_then` that the durable checkpoints as of sample `index` do not
    /// cover.
    fn in_flight_after(&self, index: usize, rows_then: usize, slack: Duration) -> usize {
        let samples = &self.samples[..=index];
        let durable_since = samples[index]
            .durable_since_secs
            .map(|since| since - slack.as_secs_f64());
        let covered = durable_since
            .and_then(|since| samples.iter().rev().find(|sample| sample.at_secs <= since))
            .unwrap_or(&samples[0])
            .rows_received;
        rows_then.saturating_sub(covered)
    }
}

fn unix_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |elapsed| elapsed.as_secs_f64())
}

/// The values of `name`'s series.
fn values(exposition: &str, name: &str) -> Vec<f64> {
    exposition
        .lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .collect()
}

/// Sum of the samples of series starting with `series` (a name, or a name with the first
/// labels, e.g. `x_total{outcome="stored"}`); 0 when there is none.
pub fn sum(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.strip_prefix(series).is_some_and(|rest| {
                rest.starts_with(' ') || rest.starts_with('{') || rest.starts_with(',')
            })
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The `partition` label values of `name`'s series.
pub fn partitions_of(exposition: &str, name: &str) -> BTreeSet<i32> {
    exposition
        .lines()
        .filter_map(|line| line.strip_prefix(name)?.strip_prefix('{'))
        .filter_map(|labels| {
            let value = labels.split("partition=\"").nth(1)?;
            value.split('"').next()?.parse().ok()
        })
        .collect()
}

/// Polls until `done` or `timeout`; returns whether `done` came.
pub async fn wait_until(timeout: Duration, mut done: impl AsyncFnMut() -> bool) -> bool {
    let until = Instant::now() + timeout;
    loop {
        if done().await {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A small deterministic generator for kill moments: seeded and printed, so a failing run can
/// be repeated.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn seeded() -> Rng {
        let seed = std::env::var("RELIABILITY_SEED")
            .ok()
            .and_then(|seed| seed.parse().ok())
            .unwrap_or_else(|| crate::now_ms() as u64);
        Rng(seed)
    }

    pub fn seed(&self) -> u64 {
        self.0
    }

    /// SplitMix64.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut mixed = self.0;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        mixed ^ (mixed >> 31)
    }

    /// A duration uniformly between `low` and `high`.
    pub fn between(&mut self, low: Duration, high: Duration) -> Duration {
        let span = high.saturating_sub(low).as_millis().max(1) as u64;
        low + Duration::from_millis(self.next_u64() % span)
    }
}
