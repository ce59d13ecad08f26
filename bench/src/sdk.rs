//! The official Openlayer Python tracer on the same traces, against the same ack server: the
//! baseline of the "against the official SDK" figure.
//!
//! The bench writes the traces it generates (trace-model JSON, one per line) and runs
//! `bench/openlayer_sdk.py` with the SDK's venv (`scripts/python-venv.sh openlayer-sdk`),
//! `OPENLAYER_BASE_URL` pointing at the in-process ack server. The script replays each trace
//! through a `@trace()`-decorated function with the same nested steps; see its docstring.
//! - `sync` (`background_publish_enabled=False`): nothing is dropped; rows per second over the
//!   replay loop (the script's clock, after one warm-up trace that builds the SDK's client).
//!   The ack server's row count must equal the traces replayed.
//! - `background` (the SDK's default): a burst of the same traces; the ack server counts what
//!   was delivered, the script counts the SDK's "dropping trace" warnings.
//!
//! The sessionizer's side of the ratio is its median throughput from the throughput part
//! (rows acknowledged per second on the same ack server), where every trace of every run was
//! acknowledged: delivered = produced, dropped = 0.

use crate::ack::AckServer;
use crate::measure::median;
use crate::setup::{PIPELINE_ID, TURN_SPACING_MS, now_ms};
use crate::traces::Population;
use anyhow::{Context as _, Result, ensure};
use serde::{Deserialize, Serialize};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use trace_model::Encoding;

/// What the script prints.
#[derive(Debug, Clone, Deserialize)]
struct ScriptOutput {
    warmup_traces: u64,
    traces: u64,
    seconds: f64,
    dropped: u64,
    failed: u64,
    sdk_version: String,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct SdkRun {
    pub(crate) mode: &'static str,
    /// Traces replayed after the warm-up (the figure's).
    pub(crate) traces: u64,
    pub(crate) seconds: f64,
    /// Rows the ack server received for them.
    pub(crate) delivered: u64,
    pub(crate) rows_per_second: f64,
    /// Traces the SDK logged as dropped (background queue full).
    pub(crate) dropped_logged: u64,
    /// Publish errors the SDK logged.
    pub(crate) failed_logged: u64,
    /// Request body bytes per row at the ack server (config envelope included).
    pub(crate) request_bytes_per_row: f64,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Sdk {
    pub(crate) sdk_version: String,
    /// Mean size of the replayed traces in trace-model JSON.
    pub(crate) trace_json_bytes_mean: f64,
    pub(crate) sync: SdkRun,
    pub(crate) background: SdkRun,
}

/// Writes `count` traces (turn-major over the population's sessions, event times in the
/// recent past) as trace-model JSON lines; returns their mean size.
fn write_traces(path: &Path, sessions: usize, count: usize) -> Result<f64> {
    let population = Population::new(sessions)?;
    let num_sessions = population.num_sessions();
    let turns = count.div_ceil(num_sessions);
    let base = now_ms() - turns as i64 * TURN_SPACING_MS - 60_000;
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    let mut bytes = 0usize;
    for index in 0..count {
        let (session, turn) = (index % num_sessions, index / num_sessions);
        let timestamp = base + turn as i64 * TURN_SPACING_MS + session as i64 % 1000;
        let event = population.trace(session, turn, timestamp);
        let json = trace_model::encode(&event, Encoding::Json)?;
        bytes += json.len();
        file.write_all(&json)?;
        file.write_all(b"\n")?;
    }
    file.flush()?;
    Ok(bytes as f64 / count.max(1) as f64)
}

/// Runs the script against `base_url`; its output.
fn script_output(
    python: &Path,
    script: &Path,
    traces: &Path,
    mode: &'static str,
    limit: usize,
    (base_url, api_key): (&str, &str),
) -> Result<ScriptOutput> {
    let output = Command::new(python)
        .arg(script)
        .arg("--traces")
        .arg(traces)
        .arg("--mode")
        .arg(mode)
        .arg("--limit")
        .arg(limit.to_string())
        .env("OPENLAYER_BASE_URL", base_url)
        .env("OPENLAYER_API_KEY", api_key)
        .env("OPENLAYER_INFERENCE_PIPELINE_ID", PIPELINE_ID)
        .env_remove("OPENLAYER_DISABLE_PUBLISH")
        .output()
        .with_context(|| format!("running {} {}", python.display(), script.display()))?;
    ensure!(
        output.status.success(),
        "the SDK script failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|line| line.starts_with('{'))
        .context("the SDK script printed no result")?;
    serde_json::from_str(line).context("the SDK script's result")
}

fn run_script(
    python: &Path,
    script: &Path,
    traces: &Path,
    mode: &'static str,
    limit: usize,
    ack: &AckServer,
) -> Result<(SdkRun, String)> {
    ack.reset(false);
    let result = script_output(
        python,
        script,
        traces,
        mode,
        limit,
        (&ack.base_url(), "bench-key-not-a-secret"),
    )?;
    let delivered = ack.rows().saturating_sub(result.warmup_traces);
    let run = SdkRun {
        mode,
        traces: result.traces,
        seconds: result.seconds,
        delivered,
        rows_per_second: delivered as f64 / result.seconds,
        dropped_logged: result.dropped,
        failed_logged: result.failed,
        request_bytes_per_row: ack.body_bytes() as f64 / ack.rows().max(1) as f64,
    };
    Ok((run, result.sdk_version))
}

/// The SDK in sync mode publishing straight to the ack server, then through the gateway at
/// `gateway_base_url` (which answers once Kafka acknowledged the row), `reps` times in turn.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ThroughGateway {
    pub(crate) traces: usize,
    /// Rows per second of each rep, straight to the ack server.
    pub(crate) direct_rows_per_second: Vec<f64>,
    /// Rows per second of each rep, through the gateway (every row acknowledged by Kafka).
    pub(crate) gateway_rows_per_second: Vec<f64>,
    pub(crate) direct_median: f64,
    pub(crate) gateway_median: f64,
}

/// What [`through_gateway`] runs: the SDK's python, the script and where to write traces.
#[derive(Debug, Clone)]
pub(crate) struct Script {
    pub(crate) python: PathBuf,
    pub(crate) script: PathBuf,
    pub(crate) work_dir: PathBuf,
    pub(crate) sessions: usize,
    pub(crate) traces: usize,
    pub(crate) reps: usize,
}

pub(crate) fn through_gateway(
    script: &Script,
    ack: &AckServer,
    (gateway_base_url, gateway_key): (&str, &str),
) -> Result<ThroughGateway> {
    std::fs::create_dir_all(&script.work_dir)?;
    let traces = script.work_dir.join("sdk-gateway-traces.jsonl");
    write_traces(&traces, script.sessions, script.traces + 1)?;
    let (mut direct, mut via_gateway) = (Vec::new(), Vec::new());
    for rep in 1..=script.reps {
        let (run, _) = run_script(
            &script.python,
            &script.script,
            &traces,
            "sync",
            script.traces + 1,
            ack,
        )?;
        ensure!(
            run.delivered == run.traces && run.failed_logged == 0,
            "the SDK straight to the ack server delivered {} of {} traces",
            run.delivered,
            run.traces
        );
        let gateway = script_output(
            &script.python,
            &script.script,
            &traces,
            "sync",
            script.traces + 1,
            (gateway_base_url, gateway_key),
        )?;
        // The gateway answers 200 only once Kafka acknowledged a row, and the SDK logs every
        // other answer: no error logged is every row in Kafka.
        ensure!(
            gateway.failed == 0,
            "the SDK through the gateway: {} publish errors in {} traces",
            gateway.failed,
            gateway.traces
        );
        let gateway_rate = gateway.traces as f64 / gateway.seconds;
        eprintln!(
            "bench: official SDK sync, rep {rep}: {:.0} rows/s straight, {gateway_rate:.0} rows/s through the gateway",
            run.rows_per_second
        );
        direct.push(run.rows_per_second);
        via_gateway.push(gateway_rate);
    }
    ack.reset(false);
    Ok(ThroughGateway {
        traces: script.traces,
        direct_median: median(&direct),
        gateway_median: median(&via_gateway),
        direct_rows_per_second: direct,
        gateway_rows_per_second: via_gateway,
    })
}

/// Runs the script in sync mode on `sync_traces` traces and in background mode on a burst of
/// `burst_traces`.
pub(crate) fn measure(
    python: &Path,
    script: &Path,
    work_dir: &Path,
    sessions: usize,
    (sync_traces, burst_traces): (usize, usize),
    ack: &AckServer,
) -> Result<Sdk> {
    std::fs::create_dir_all(work_dir)?;
    let traces: PathBuf = work_dir.join("sdk-traces.jsonl");
    // One warm-up trace first, then the measured ones.
    let trace_json_bytes_mean = write_traces(&traces, sessions, sync_traces.max(burst_traces) + 1)?;
    eprintln!("bench: official SDK, synchronous publishing, {sync_traces} traces");
    let (sync, sdk_version) = run_script(python, script, &traces, "sync", sync_traces + 1, ack)?;
    ensure!(
        sync.delivered == sync.traces && sync.failed_logged == 0,
        "the SDK in sync mode delivered {} of {} traces ({} publish errors)",
        sync.delivered,
        sync.traces,
        sync.failed_logged
    );
    eprintln!(
        "bench: official SDK sync: {:.0} rows/s; background mode, burst of {burst_traces}",
        sync.rows_per_second
    );
    let (background, _) = run_script(python, script, &traces, "background", burst_traces + 1, ack)?;
    eprintln!(
        "bench: official SDK background: {} of {} delivered, {} dropped",
        background.delivered, background.traces, background.dropped_logged
    );
    ack.reset(false);
    Ok(Sdk {
        sdk_version,
        trace_json_bytes_mean,
        sync,
        background,
    })
}
