//! State memory per open session, measured on `PartitionWindows` itself in a fresh process
//! (so no allocator state left by the Kafka runs hides or inflates growth).
//!
//! The probe opens `n` single-turn sessions in one partition's windows (default window
//! settings: 30 min gap, so none closes), reading `VmRSS` before and at 10 %, 25 %, 50 % and
//! 100 % of them. With `--journal` it then records each session's state in a
//! `PartitionJournal` as the pipeline does per message, and reads `VmRSS` again: the journal
//! holds a session only between a message and the next checkpoint (1 s by default), so that
//! figure is per session *touched since the last checkpoint*, not per open session.
//!
//! Ids have production lengths: pipeline, session and inference ids are 36-character UUIDs,
//! user ids 11 characters.

use crate::measure::rss_bytes;
use crate::traces::new_uuid;
use anyhow::{Context as _, Result, ensure};
use serde::{Deserialize, Serialize};
use sessionizer::sessionize::store::{PartitionJournal, StateAfter};
use sessionizer::sessionize::{PartitionWindows, SessionKey, SessionState, WindowSettings};
use std::hint::black_box;
use std::time::{SystemTime, UNIX_EPOCH};
use trace_model::TraceEvent;

const PIPELINE_ID: &str = "6b0f3a52-1c7e-4d0b-9a55-3f2e8c1d7a90";

/// What one probe process reports (one JSON line on stdout).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Probe {
    pub(crate) sessions: usize,
    pub(crate) open_sessions: usize,
    pub(crate) rss_before_bytes: u64,
    pub(crate) rss_after_bytes: u64,
    /// RSS growth per open session over all `sessions`.
    pub(crate) bytes_per_session: f64,
    /// (sessions open, RSS growth in bytes) along the way.
    pub(crate) samples: Vec<(usize, u64)>,
    /// RSS growth per session of the journal entries, when measured.
    pub(crate) journal_bytes_per_session: Option<f64>,
    pub(crate) session_key_size: usize,
    pub(crate) session_state_size: usize,
    pub(crate) seconds: f64,
}

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

/// Runs in the probe process.
pub(crate) fn probe(sessions: usize, journal: bool) -> Result<Probe> {
    ensure!(sessions > 0, "at least one session");
    let started = std::time::Instant::now();
    let mut windows = PartitionWindows::new(WindowSettings::default());
    let now = wall_ms();
    // Warm up the allocator and the code paths outside the measurement.
    let mut closed = Vec::new();
    black_box(new_uuid());
    let rss_before = rss_bytes()?;
    let marks = [sessions / 10, sessions / 4, sessions / 2];
    let mut samples = Vec::new();
    for index in 0..sessions {
        // One turn, one millisecond apart: inside the 30 min gap and the 5 min grace.
        let mut event = TraceEvent::new("chat", now - sessions as i64 + index as i64);
        event.inference_id = Some(new_uuid());
        event.user_id = Some(format!("user-{index:06}"));
        event.session_id = Some(new_uuid());
        event.tokens = Some(508);
        event.cost = Some(0.000_119);
        event.latency_ms = Some(1234.0);
        let placement = windows.add(&event, PIPELINE_ID, now, &mut closed);
        black_box(&placement);
        if marks.contains(&(index + 1)) {
            samples.push((index + 1, rss_bytes()?.saturating_sub(rss_before)));
        }
    }
    ensure!(closed.is_empty(), "no session may close during the probe");
    let rss_after = rss_bytes()?;
    samples.push((sessions, rss_after.saturating_sub(rss_before)));
    let mut journal_bytes_per_session = None;
    if journal {
        // What the pipeline records per message: the session's state after it (a clone,
        // keyed by a clone of the key) and the partition's event time.
        let mut partition_journal = PartitionJournal::new(None, None);
        for (offset, (key, state)) in windows.sessions().enumerate() {
            let offset = offset as i64;
            partition_journal.record_state(
                offset,
                key,
                StateAfter {
                    state: Some(state.clone()),
                    next_segment: windows.next_segment_of(key),
                },
            );
            partition_journal.record_event_time(offset, windows.event_time_ms());
        }
        let rss_journal = rss_bytes()?;
        journal_bytes_per_session =
            Some(rss_journal.saturating_sub(rss_after) as f64 / sessions as f64);
        black_box(&partition_journal);
    }
    let open_sessions = windows.num_open();
    black_box(&windows);
    Ok(Probe {
        sessions,
        open_sessions,
        rss_before_bytes: rss_before,
        rss_after_bytes: rss_after,
        bytes_per_session: rss_after.saturating_sub(rss_before) as f64 / sessions as f64,
        samples,
        journal_bytes_per_session,
        session_key_size: std::mem::size_of::<SessionKey>(),
        session_state_size: std::mem::size_of::<SessionState>(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Runs a probe in a child process of this same binary and reads its report.
pub(crate) fn probe_in_child(sessions: usize, journal: bool) -> Result<Probe> {
    let exe = std::env::current_exe().context("locating this binary")?;
    let mut command = std::process::Command::new(exe);
    command
        .arg("memory-probe")
        .arg("--sessions")
        .arg(sessions.to_string());
    if journal {
        command.arg("--journal");
    }
    let output = command.output().context("running the memory probe")?;
    ensure!(
        output.status.success(),
        "memory probe failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).context("reading the memory probe's report")
}
