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
//!
//! The bench's side ([`state_memory`]) runs one probe per `--memory-sessions` value, and one
//! with `--journal`, in child processes of this binary, and sums them up: bytes per session,
//! and whether the growth is linear in the sessions.

use crate::measure::rss_bytes;
use crate::setup::PIPELINE_ID;
use crate::traces::new_uuid;
use anyhow::{Context as _, Result, ensure};
use serde::{Deserialize, Serialize};
use sessionizer::sessionize::store::{PartitionJournal, StateAfter};
use sessionizer::sessionize::{PartitionWindows, SessionKey, SessionState, WindowSettings};
use std::hint::black_box;
use std::time::{SystemTime, UNIX_EPOCH};
use trace_model::TraceEvent;

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
        let mut partition_journal = PartitionJournal::new(None);
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

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Memory {
    pub(crate) probes: Vec<Probe>,
    /// Bytes per session at the largest N over bytes per session at the smallest. Not 1:
    /// the session table doubles, so its share per session swings by up to 2x with N.
    pub(crate) growth_ratio_largest_to_smallest: f64,
    /// Per probe: RSS growth per session at N/4, N/2 and N, max over min. Near 1 when the
    /// growth is proportional to the sessions over that 4x range.
    pub(crate) spread_within_probes: Vec<f64>,
    /// Growth proportional to the session count within every probe (spread <= 1.15) and no
    /// more than a table doubling apart between probes (ratio <= 1.6).
    pub(crate) linear: bool,
    /// RSS growth per session over the last doubling of the largest probe (N/2 to N).
    pub(crate) marginal_bytes_per_session: f64,
    pub(crate) journal: Option<Probe>,
    pub(crate) goal_bytes_per_session: f64,
}

fn spread(probe: &Probe) -> f64 {
    let per_session: Vec<f64> = probe
        .samples
        .iter()
        .filter(|(sessions, _)| *sessions >= probe.sessions / 4)
        .map(|(sessions, bytes)| *bytes as f64 / *sessions as f64)
        .collect();
    let max = per_session.iter().copied().fold(f64::NAN, f64::max);
    let min = per_session.iter().copied().fold(f64::NAN, f64::min);
    max / min
}

/// One probe per entry of `memory_sessions`, and one with the journal of
/// `journal_sessions` sessions (0: none), each in a child process.
pub(crate) fn state_memory(memory_sessions: &[usize], journal_sessions: usize) -> Result<Memory> {
    let mut probes = Vec::new();
    for sessions in memory_sessions {
        eprintln!("bench: state memory with {sessions} open sessions");
        probes.push(probe_in_child(*sessions, false)?);
    }
    let journal = if journal_sessions > 0 {
        eprintln!("bench: journal memory with {journal_sessions} touched sessions");
        Some(probe_in_child(journal_sessions, true)?)
    } else {
        None
    };
    let smallest = probes
        .iter()
        .min_by_key(|probe| probe.sessions)
        .context("no memory probe")?;
    let largest = probes
        .iter()
        .max_by_key(|probe| probe.sessions)
        .context("no memory probe")?;
    let ratio = largest.bytes_per_session / smallest.bytes_per_session;
    let marginal = match largest.samples.as_slice() {
        [.., (half, half_bytes), (all, all_bytes)] if all > half => {
            all_bytes.saturating_sub(*half_bytes) as f64 / (all - half) as f64
        }
        _ => largest.bytes_per_session,
    };
    let spreads: Vec<f64> = probes.iter().map(spread).collect();
    Ok(Memory {
        growth_ratio_largest_to_smallest: ratio,
        linear: spreads.iter().all(|spread| *spread <= 1.15) && ratio <= 1.6,
        spread_within_probes: spreads,
        marginal_bytes_per_session: marginal,
        probes,
        journal,
        // The memory goal (docs/performance.md): 512 B per open session at a million, linear.
        goal_bytes_per_session: 512.0,
    })
}
