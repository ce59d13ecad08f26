//! Clocks of the benchmark: process and thread CPU time from `/proc`, resident memory, and
//! the window between the first message consumed and the last trace done.

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// Linux `USER_HZ`: the unit of `utime`/`stime` in `/proc/*/stat`. It is 100 on every Linux
/// architecture the Rust toolchain targets (the kernel's HZ is hidden behind it).
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// How often the window's progress is sampled: the window edges are this precise.
const POLL: Duration = Duration::from_millis(1);

/// CPU seconds (user + system) of this whole process so far, dead threads included.
///
/// Resolution: one clock tick, 10 ms.
pub(crate) fn process_cpu_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").context("reading /proc/self/stat")?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("unexpected /proc/self/stat format")?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Field 3 (state) is index 0 here; utime is field 14, stime field 15.
    let (Some(utime), Some(stime)) = (fields.get(11), fields.get(12)) else {
        bail!("unexpected /proc/self/stat format");
    };
    let ticks = utime.parse::<u64>()? + stime.parse::<u64>()?;
    Ok(ticks as f64 / CLOCK_TICKS_PER_SECOND)
}

/// The kernel id of the calling thread.
pub(crate) fn current_tid() -> Result<u32> {
    let link = std::fs::read_link("/proc/thread-self").context("reading /proc/thread-self")?;
    link.file_name()
        .and_then(|name| name.to_str())
        .and_then(|name| name.parse().ok())
        .context("unexpected /proc/thread-self link")
}

/// CPU seconds of one thread of this process, from the scheduler's nanosecond counter.
pub(crate) fn thread_cpu_seconds(tid: u32) -> Result<f64> {
    let path = format!("/proc/self/task/{tid}/schedstat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let nanos: u64 = text
        .split_whitespace()
        .next()
        .context("empty schedstat")?
        .parse()?;
    Ok(nanos as f64 / 1e9)
}

/// Resident set size of this process, in bytes (`VmRSS` of `/proc/self/status`).
pub(crate) fn rss_bytes() -> Result<u64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .context("no VmRSS in /proc/self/status")?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .context("malformed VmRSS line")?
        .parse()?;
    Ok(kib * 1024)
}

/// CPU time of every live thread of this process, from the scheduler's nanosecond counters
/// (`/proc/self/task/*/schedstat`): far finer than `/proc/self/stat`'s 10 ms ticks.
#[derive(Debug, Clone, Default)]
pub(crate) struct CpuSnapshot(HashMap<u32, (String, f64)>);

impl CpuSnapshot {
    pub(crate) fn take() -> Result<Self> {
        let mut threads = HashMap::new();
        for entry in std::fs::read_dir("/proc/self/task").context("listing /proc/self/task")? {
            let Some(tid) = entry?
                .file_name()
                .to_str()
                .and_then(|name| name.parse().ok())
            else {
                continue;
            };
            // A thread may end between the listing and the read: it is simply not counted.
            if let Ok(seconds) = thread_cpu_seconds(tid) {
                let name = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
                    .map(|name| name.trim().to_owned())
                    .unwrap_or_default();
                threads.insert(tid, (name, seconds));
            }
        }
        Ok(CpuSnapshot(threads))
    }

    /// CPU seconds spent since `earlier` by the threads alive now (threads started since
    /// count whole), summed per thread name (`tokio-rt-worker`, `rdk:broker111`, ...).
    /// Threads that ended in between are missed: the bench's threads all live through a
    /// measured window.
    pub(crate) fn by_name_since(&self, earlier: &CpuSnapshot) -> BTreeMap<String, f64> {
        let mut by_name = BTreeMap::new();
        for (tid, (name, now)) in &self.0 {
            let before = earlier.0.get(tid).map_or(0.0, |(_, seconds)| *seconds);
            *by_name.entry(name.clone()).or_insert(0.0) += now - before;
        }
        by_name
    }
}

/// CPU seconds of another process (`/proc/PID/stat`, 10 ms ticks): the broker's.
pub(crate) fn pid_cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("unexpected stat format")?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let (Some(utime), Some(stime)) = (fields.get(11), fields.get(12)) else {
        bail!("unexpected stat format");
    };
    Ok((utime.parse::<u64>()? + stime.parse::<u64>()?) as f64 / CLOCK_TICKS_PER_SECOND)
}

/// Busy CPU seconds of the whole machine, all cores summed (`/proc/stat`: everything but
/// idle and iowait).
pub(crate) fn machine_busy_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let total: u64 = ticks.iter().sum();
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    Ok((total - idle) as f64 / CLOCK_TICKS_PER_SECOND)
}

/// Every clock at one instant.
#[derive(Debug, Clone)]
pub(crate) struct Clocks {
    at: Instant,
    threads: CpuSnapshot,
    process_stat: f64,
    ack: f64,
    machine: f64,
    broker: Option<f64>,
}

impl Clocks {
    pub(crate) fn take(ack_tid: Option<u32>, broker_pid: Option<u32>) -> Result<Self> {
        Ok(Clocks {
            at: Instant::now(),
            threads: CpuSnapshot::take()?,
            process_stat: process_cpu_seconds()?,
            ack: ack_tid.map_or(Ok(0.0), thread_cpu_seconds)?,
            machine: machine_busy_seconds()?,
            // The broker may be gone or not ours to read: then it is not reported.
            broker: broker_pid.and_then(|pid| pid_cpu_seconds(pid).ok()),
        })
    }

    /// What happened between `earlier` and these clocks.
    pub(crate) fn since(&self, earlier: &Clocks) -> Window {
        let seconds = self.at.duration_since(earlier.at).as_secs_f64();
        let threads = self.threads.by_name_since(&earlier.threads);
        let process = threads.values().sum();
        let broker = match (self.broker, earlier.broker) {
            (Some(now), Some(before)) => Some(now - before),
            _ => None,
        };
        let machine = self.machine - earlier.machine;
        Window {
            seconds,
            seconds_to_nine_tenths: seconds,
            process_cpu_seconds: process,
            process_cpu_seconds_stat: self.process_stat - earlier.process_stat,
            ack_cpu_seconds: self.ack - earlier.ack,
            broker_cpu_seconds: broker,
            machine_busy_seconds: machine,
            others_cpu_seconds: (machine - process - broker.unwrap_or(0.0)).max(0.0),
            threads,
        }
    }
}

/// One measured window: from the first message consumed to the `n`-th trace done.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Window {
    pub(crate) seconds: f64,
    /// Seconds until nine tenths were done: the rest of `seconds` is the drain of the last
    /// tenth, where fixed waits (batch linger, alignment at the end of a backlog) show.
    pub(crate) seconds_to_nine_tenths: f64,
    /// Process CPU seconds spent in the window (every thread, the ack server's included),
    /// from the per-thread scheduler counters.
    pub(crate) process_cpu_seconds: f64,
    /// The same from `/proc/self/stat` (10 ms ticks, includes threads that ended): a check.
    pub(crate) process_cpu_seconds_stat: f64,
    /// CPU seconds of the in-process ack server's thread in the window (0 without one).
    pub(crate) ack_cpu_seconds: f64,
    /// CPU seconds of the broker process, when its pid is known (10 ms ticks).
    pub(crate) broker_cpu_seconds: Option<f64>,
    /// Busy CPU seconds of the whole machine.
    pub(crate) machine_busy_seconds: f64,
    /// Machine minus this process minus the broker: other people's work, i.e. the noise.
    pub(crate) others_cpu_seconds: f64,
    /// This process's CPU seconds per thread name: `tokio-rt-worker` is the sessionizer's
    /// runtime (pipeline task, HTTP client), `rdk:*` librdkafka, `ack-server` the ack server.
    pub(crate) threads: BTreeMap<String, f64>,
}

/// Waits for `started() >= 1`, then for `done() >= n`, sampling every millisecond on the
/// calling thread, and returns the window between the two with its CPU time.
pub(crate) fn window(
    started: &dyn Fn() -> u64,
    done: &dyn Fn() -> u64,
    n: u64,
    (ack_tid, broker_pid): (Option<u32>, Option<u32>),
    timeout: Duration,
) -> Result<Window> {
    let deadline = Instant::now() + timeout;
    while started() == 0 {
        if Instant::now() > deadline {
            bail!("no message consumed within {timeout:?}");
        }
        std::thread::sleep(POLL);
    }
    let began = Clocks::take(ack_tid, broker_pid)?;
    let mut nine_tenths = None;
    while done() < n {
        if nine_tenths.is_none() && done() * 10 >= n * 9 {
            nine_tenths = Some(began.at.elapsed().as_secs_f64());
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {n} traces done within {timeout:?} ({} consumed)",
                done(),
                started()
            );
        }
        std::thread::sleep(POLL);
    }
    let mut window = Clocks::take(ack_tid, broker_pid)?.since(&began);
    window.seconds_to_nine_tenths = nine_tenths.unwrap_or(window.seconds);
    Ok(window)
}

/// Median of a non-empty list (mean of the middle two for an even count).
pub(crate) fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    match sorted.len() {
        0 => f64::NAN,
        len if len % 2 == 1 => sorted[middle],
        _ => (sorted[middle - 1] + sorted[middle]) / 2.0,
    }
}

/// Nearest-rank percentile of a list (`q` in 0..=1).
pub(crate) fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A Prometheus histogram: finite bucket upper bounds with cumulative counts, and the total.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Buckets {
    pub(crate) bounds: Vec<(f64, u64)>,
    pub(crate) count: u64,
    pub(crate) sum: f64,
}

impl Buckets {
    /// `histogram_quantile` as Prometheus computes it: linear interpolation inside the
    /// bucket that holds the rank. Above the last finite bound it returns that bound.
    pub(crate) fn quantile(&self, q: f64) -> f64 {
        if self.count == 0 {
            return f64::NAN;
        }
        let rank = q * self.count as f64;
        let mut lower = 0.0;
        let mut below = 0u64;
        for (upper, cumulative) in &self.bounds {
            if *cumulative as f64 >= rank {
                let in_bucket = (*cumulative - below) as f64;
                if in_bucket == 0.0 {
                    return *upper;
                }
                return lower + (upper - lower) * (rank - below as f64) / in_bucket;
            }
            lower = *upper;
            below = *cumulative;
        }
        lower
    }

    /// The observations made after `earlier` was taken from the same histogram.
    pub(crate) fn minus(&self, earlier: &Buckets) -> Buckets {
        Buckets {
            bounds: self
                .bounds
                .iter()
                .zip(&earlier.bounds)
                .map(|((upper, now), (_, before))| (*upper, now.saturating_sub(*before)))
                .collect(),
            count: self.count.saturating_sub(earlier.count),
            sum: self.sum - earlier.sum,
        }
    }

    /// Share of observations at or below `bound` (an exact bucket bound).
    pub(crate) fn share_at_or_below(&self, bound: f64) -> f64 {
        if self.count == 0 {
            return f64::NAN;
        }
        self.bounds
            .iter()
            .find(|(upper, _)| (*upper - bound).abs() < 1e-12)
            .map_or(f64::NAN, |(_, cumulative)| {
                *cumulative as f64 / self.count as f64
            })
    }
}

/// The buckets of histogram `name` in `registry`.
pub(crate) fn histogram(registry: &prometheus::Registry, name: &str) -> Option<Buckets> {
    let families = registry.gather();
    let family = families.iter().find(|family| family.name() == name)?;
    let metric = family.get_metric().first()?;
    let histogram = metric.get_histogram();
    Some(Buckets {
        bounds: histogram
            .get_bucket()
            .iter()
            .map(|bucket| (bucket.upper_bound(), bucket.cumulative_count()))
            .collect(),
        count: histogram.get_sample_count(),
        sum: histogram.get_sample_sum(),
    })
}
