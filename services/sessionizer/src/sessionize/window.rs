//! Session windows of one partition: a pure state machine with three entry points, like a
//! reduce transform: [`PartitionWindows::add`] places a trace in its session,
//! [`PartitionWindows::expire`] closes sessions whose gap passed, and
//! [`PartitionWindows::close_all`] empties the partition (tests, revocation).
//!
//! Time rules:
//! - event time orders a session: a trace a gap or more after its session's last trace opens
//!   a new window; on the tick, a window closes when the partition's watermark (the newest
//!   trace timestamp seen, minus `grace`) passes the session's last trace by `gap`;
//! - wall clock closes sessions of quiet partitions: a partition that received nothing for a
//!   whole gap closes its sessions (the idleness rule of Flink's watermarks). A backlog after a
//!   restart is never idle: its traces arrive at once and close sessions by event time;
//! - a session longer than `max_duration` (event time) closes and the next trace opens a new
//!   segment of the same session id;
//! - a `session_end` trace closes its session at once;
//! - a trace older than the partition's event time minus `grace` is late: it is shipped with
//!   a late marker and joins no window; within grace it joins its session as the next turn;
//! - a trace whose inference id is one of its open session's latest turns' is a copy
//!   ([`RecentIds`]): no turn, no row.
//!
//! Turns are numbered in arrival (offset) order within a window, which is what makes a replay
//! of the same offsets produce the same numbers.

use super::recent::RecentIds;
use crate::session_row::SessionTotals;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use trace_model::{TraceEvent, TraceKind};

/// Window rules for every session of a partition.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowSettings {
    pub gap: Duration,
    pub max_duration: Duration,
    pub grace: Duration,
    /// Give traces with a user and no session an inferred session (deterministic id).
    pub infer_user_sessions: bool,
    /// Inactivity gap of inferred sessions.
    pub user_gap: Duration,
}

impl Default for WindowSettings {
    fn default() -> Self {
        WindowSettings {
            gap: Duration::from_secs(30 * 60),
            max_duration: Duration::from_secs(24 * 60 * 60),
            grace: Duration::from_secs(5 * 60),
            infer_user_sessions: false,
            user_gap: Duration::from_secs(30 * 60),
        }
    }
}

/// Why a session window closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The partition's event time passed the last trace by the gap.
    Gap,
    /// No trace for the gap on the wall clock (a quiet partition).
    Idle,
    /// The session reached `max_duration`; the next trace opens a new segment.
    MaxDuration,
    /// A `session_end` trace arrived.
    EndEvent,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Gap => "gap",
            CloseReason::Idle => "idle",
            CloseReason::MaxDuration => "max_duration",
            CloseReason::EndEvent => "end_event",
        }
    }
}

/// Identifies a session within the pipeline: Openlayer pipeline and session id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionKey {
    /// Shared by the partition's sessions of one pipeline ([`PartitionWindows`] interns it).
    pub pipeline_id: Arc<str>,
    pub session_id: String,
}

impl SessionKey {
    /// `pipeline/session`, the key of summaries and changelog records.
    pub fn joined(&self) -> String {
        format!("{}/{}", self.pipeline_id, self.session_id)
    }
}

/// What the window knows about one open session: small, so millions fit in memory.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SessionState {
    pub user_id: Option<String>,
    /// 0 for the first window of this session id, +1 per window after a close.
    pub segment: i32,
    pub inferred: bool,
    pub started_at_ms: i64,
    /// Newest event time of the session's traces.
    pub last_event_ms: i64,
    /// Event time of the previous turn (the newest trace placed), for turn spacing.
    pub previous_turn_ms: i64,
    pub turns: i64,
    pub tokens: i64,
    pub cost: f64,
    pub latency_ms: f64,
    pub first_inference_id: String,
    pub last_inference_id: String,
    /// The producers' inference ids of the latest turns.
    #[serde(default, skip_serializing_if = "RecentIds::is_empty")]
    pub recent_ids: RecentIds,
    /// What a session row needs beyond the above; kept only with a sessions pipeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totals: Option<Box<SessionTotals>>,
}

/// Where a trace landed and the session context its row gets.
#[derive(Debug, Clone, PartialEq)]
pub enum Placement {
    /// No user and no session (and no inference): shipped without session columns.
    Passthrough,
    /// A turn of an open session.
    Turn(Turn),
    /// Older than the partition's event time minus grace: shipped with a late marker.
    Late {
        session_id: Option<String>,
        user_id: Option<String>,
    },
    /// A `session_end` trace: no row. `closed` is the session it ended, if one was open.
    End { closed: Option<ClosedSession> },
    /// A copy of one of the open session's latest turns (same inference id): no row.
    Duplicate,
}

/// Session context of one turn, as the row's enrichment columns show it.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    pub key: SessionKey,
    pub user_id: Option<String>,
    pub segment: i32,
    pub inferred: bool,
    /// 1-based.
    pub turn: i64,
    pub started_at_ms: i64,
    pub since_start_ms: i64,
    /// `None` on the first turn.
    pub since_previous_ms: Option<i64>,
    pub previous_inference_id: Option<String>,
    /// Running totals including this turn.
    pub tokens_so_far: i64,
    pub cost_so_far: f64,
    /// Joined within grace although older than the partition's event time.
    pub late_within_grace: bool,
}

/// A session window that closed.
#[derive(Debug, Clone, PartialEq)]
pub struct ClosedSession {
    pub key: SessionKey,
    pub state: SessionState,
    pub reason: CloseReason,
}

/// Every open session of one partition, and its event-time clock.
#[derive(Debug, Clone, Default)]
pub struct PartitionWindows {
    settings: WindowSettingsCell,
    /// Boxed: the table holds twice as many slots as sessions after it grows, and a slot of
    /// key and box is a quarter of one of key and state (`pipeline-bench`'s memory probe).
    sessions: HashMap<SessionKey, Box<SessionState>>,
    /// Newest trace timestamp seen in this partition (stream time).
    event_time_ms: Option<i64>,
    /// Wall-clock time the partition last received a trace, for the idleness rule.
    last_message_wall_ms: Option<i64>,
    /// Open inferred session of each (pipeline, user).
    inferred_by_user: HashMap<(String, String), String>,
    /// The pipeline ids the sessions' keys share; forgotten on the tick once no key holds it.
    pipelines: HashSet<Arc<str>>,
    /// Segment and end (event time) of sessions split by `max_duration`, for the window that
    /// continues them; forgotten once used or a gap later.
    next_segment: HashMap<SessionKey, (i32, i64)>,
}

/// `WindowSettings` with a `Default` for `PartitionWindows`' derive.
#[derive(Debug, Clone, Copy, Default)]
struct WindowSettingsCell(Option<WindowSettings>);

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// FNV-1a: stable across Rust versions and processes, unlike the std hasher, so inferred
/// session ids are the same after a restart.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in *part {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Deterministic id of an inferred session: the user and the event time it started.
pub fn inferred_session_id(user_id: &str, started_at_ms: i64) -> String {
    let hash = fnv1a(&[user_id.as_bytes(), &started_at_ms.to_le_bytes()]);
    format!("inferred-{hash:016x}")
}

impl PartitionWindows {
    pub fn new(settings: WindowSettings) -> Self {
        PartitionWindows {
            settings: WindowSettingsCell(Some(settings)),
            ..PartitionWindows::default()
        }
    }

    fn settings(&self) -> WindowSettings {
        self.settings.0.unwrap_or_default()
    }

    pub fn num_open(&self) -> usize {
        self.sessions.len()
    }

    /// Newest trace timestamp seen in this partition.
    pub fn event_time_ms(&self) -> Option<i64> {
        self.event_time_ms
    }

    pub fn session(&self, key: &SessionKey) -> Option<&SessionState> {
        self.sessions.get(key).map(|state| &**state)
    }

    /// The open session `key`, to add what the window does not keep itself.
    pub fn session_mut(&mut self, key: &SessionKey) -> Option<&mut SessionState> {
        self.sessions.get_mut(key).map(|state| &mut **state)
    }

    /// Open sessions, for persistence.
    pub fn sessions(&self) -> impl Iterator<Item = (&SessionKey, &SessionState)> {
        self.sessions.iter().map(|(key, state)| (key, &**state))
    }

    /// Puts a restored session back (state recovery).
    pub fn restore(&mut self, key: SessionKey, state: SessionState, event_time_ms: Option<i64>) {
        self.event_time_ms = self.event_time_ms.max(event_time_ms);
        let key = SessionKey {
            pipeline_id: self.intern(&key.pipeline_id),
            session_id: key.session_id,
        };
        if state.inferred
            && let Some(user_id) = &state.user_id
        {
            self.inferred_by_user.insert(
                (key.pipeline_id.to_string(), user_id.clone()),
                key.session_id.clone(),
            );
        }
        self.sessions.insert(key, Box::new(state));
    }

    /// The shared copy of `pipeline_id`, added when new.
    fn intern(&mut self, pipeline_id: &str) -> Arc<str> {
        if let Some(known) = self.pipelines.get(pipeline_id) {
            return Arc::clone(known);
        }
        let interned: Arc<str> = pipeline_id.into();
        self.pipelines.insert(Arc::clone(&interned));
        interned
    }

    /// The shared copy of `pipeline_id` if there is one, else a copy of its own.
    fn pipeline(&self, pipeline_id: &str) -> Arc<str> {
        self.pipelines
            .get(pipeline_id)
            .map_or_else(|| pipeline_id.into(), Arc::clone)
    }

    /// Whether `state` is a session this trace would close (gap, max duration) or a tick
    /// could have closed by now (the watermark a gap past it): a copy is judged only in a
    /// session open either way, so that a replay, which runs no ticks, places it alike.
    fn would_close(&self, state: &SessionState, timestamp: i64) -> bool {
        let settings = self.settings();
        let gap = self.gap_for(state.inferred);
        let watermark = self
            .event_time_ms
            .map_or(i64::MIN, |now| now.saturating_sub(millis(settings.grace)));
        timestamp.saturating_sub(state.last_event_ms) >= gap
            || timestamp.saturating_sub(state.started_at_ms) >= millis(settings.max_duration)
            || watermark.saturating_sub(state.last_event_ms) >= gap
    }

    fn gap_for(&self, inferred: bool) -> i64 {
        let settings = self.settings();
        millis(if inferred {
            settings.user_gap
        } else {
            settings.gap
        })
    }

    /// Places `event` (already validated) of pipeline `pipeline_id`, processed at wall-clock
    /// `wall_ms`. Windows the trace closes on its way (gap passed, max duration reached) are
    /// appended to `closed`.
    pub fn add(
        &mut self,
        event: &TraceEvent,
        pipeline_id: &str,
        wall_ms: i64,
        closed: &mut Vec<ClosedSession>,
    ) -> Placement {
        let settings = self.settings();
        let timestamp = event.timestamp_ms;
        self.last_message_wall_ms = Some(wall_ms);
        let is_late = self
            .event_time_ms
            .is_some_and(|now| timestamp < now.saturating_sub(millis(settings.grace)));
        if !is_late {
            self.event_time_ms = Some(
                self.event_time_ms
                    .map_or(timestamp, |now| now.max(timestamp)),
            );
        }

        let (session_id, inferred) = match (&event.session_id, &event.user_id) {
            (Some(session_id), _) => (Some(session_id.clone()), false),
            (None, Some(_)) if settings.infer_user_sessions => (None, true),
            _ => (None, false),
        };
        if event.kind == TraceKind::SessionEnd {
            let closed_session = session_id.and_then(|session_id| {
                let key = SessionKey {
                    pipeline_id: self.pipeline(pipeline_id),
                    session_id,
                };
                self.close(&key, CloseReason::EndEvent)
            });
            return Placement::End {
                closed: closed_session,
            };
        }
        if session_id.is_none() && !inferred {
            return Placement::Passthrough;
        }
        if is_late {
            return Placement::Late {
                session_id: event.session_id.clone(),
                user_id: event.user_id.clone(),
            };
        }
        // Interned before any key is made: a new session's key then shares it.
        let pipeline = self.intern(pipeline_id);
        let mut key = match session_id {
            Some(session_id) => SessionKey {
                pipeline_id: pipeline,
                session_id,
            },
            None => self.inferred_key(pipeline_id, event, timestamp),
        };
        if let Some(inference_id) = event.inference_id.as_deref()
            && let Some(state) = self.sessions.get(&key)
            && state.recent_ids.contains(inference_id)
            && !self.would_close(state, timestamp)
        {
            return Placement::Duplicate;
        }
        let gap = self.gap_for(inferred);
        if let Some(state) = self.sessions.get(&key) {
            let reason = if timestamp.saturating_sub(state.last_event_ms) >= gap {
                Some(CloseReason::Gap)
            } else if timestamp.saturating_sub(state.started_at_ms) >= millis(settings.max_duration)
            {
                Some(CloseReason::MaxDuration)
            } else {
                None
            };
            if let Some(reason) = reason
                && let Some(closed_session) = self.close(&key, reason)
            {
                closed.push(closed_session);
            }
        }
        // An inferred session that just closed continues under a new id, started now.
        if inferred && !self.sessions.contains_key(&key) {
            key = self.inferred_key(pipeline_id, event, timestamp);
        }

        let inference_id = event.inference_id.clone().unwrap_or_default();
        let event_tokens = event.tokens.unwrap_or(0);
        let event_cost = event.cost.unwrap_or(0.0);
        let late_within_grace = self.event_time_ms.is_some_and(|now| timestamp < now);
        match self.sessions.get_mut(&key) {
            Some(state) => {
                if let Some(inference_id) = event.inference_id.as_deref() {
                    state.recent_ids.push(inference_id);
                }
                let previous_turn_ms = state.previous_turn_ms;
                let previous_inference_id =
                    std::mem::replace(&mut state.last_inference_id, inference_id);
                state.turns += 1;
                state.tokens = state.tokens.saturating_add(event_tokens);
                state.cost += event_cost;
                state.latency_ms += event.latency_ms.unwrap_or(0.0);
                state.last_event_ms = state.last_event_ms.max(timestamp);
                state.previous_turn_ms = timestamp;
                if state.user_id.is_none() {
                    state.user_id.clone_from(&event.user_id);
                }
                Placement::Turn(Turn {
                    user_id: state.user_id.clone(),
                    segment: state.segment,
                    inferred: state.inferred,
                    turn: state.turns,
                    started_at_ms: state.started_at_ms,
                    since_start_ms: timestamp.saturating_sub(state.started_at_ms),
                    since_previous_ms: Some(timestamp.saturating_sub(previous_turn_ms)),
                    previous_inference_id: Some(previous_inference_id),
                    tokens_so_far: state.tokens,
                    cost_so_far: state.cost,
                    late_within_grace,
                    key,
                })
            }
            None => {
                // A session resumed a gap after its last segment ended is a new session, whether
                // or not a tick dropped the marker meanwhile.
                let segment = self
                    .next_segment
                    .remove(&key)
                    .filter(|(_, ended_ms)| {
                        timestamp.saturating_sub(*ended_ms) < millis(settings.gap)
                    })
                    .map_or(0, |(segment, _)| segment);
                if inferred && let Some(user_id) = &event.user_id {
                    self.inferred_by_user.insert(
                        (pipeline_id.to_owned(), user_id.clone()),
                        key.session_id.clone(),
                    );
                }
                let mut state = SessionState {
                    user_id: event.user_id.clone(),
                    segment,
                    inferred,
                    started_at_ms: timestamp,
                    last_event_ms: timestamp,
                    previous_turn_ms: timestamp,
                    turns: 1,
                    tokens: event_tokens,
                    cost: event_cost,
                    latency_ms: event.latency_ms.unwrap_or(0.0),
                    first_inference_id: inference_id.clone(),
                    last_inference_id: inference_id,
                    recent_ids: RecentIds::default(),
                    totals: None,
                };
                if let Some(inference_id) = event.inference_id.as_deref() {
                    state.recent_ids.push(inference_id);
                }
                let turn = Turn {
                    key: key.clone(),
                    user_id: state.user_id.clone(),
                    segment,
                    inferred,
                    turn: 1,
                    started_at_ms: timestamp,
                    since_start_ms: 0,
                    since_previous_ms: None,
                    previous_inference_id: None,
                    tokens_so_far: state.tokens,
                    cost_so_far: state.cost,
                    late_within_grace,
                };
                self.sessions.insert(key, Box::new(state));
                Placement::Turn(turn)
            }
        }
    }

    /// The open inferred session of this user, or the key of a new one starting now.
    fn inferred_key(&self, pipeline_id: &str, event: &TraceEvent, timestamp: i64) -> SessionKey {
        let user_id = event.user_id.as_deref().unwrap_or_default();
        let open = self
            .inferred_by_user
            .get(&(pipeline_id.to_owned(), user_id.to_owned()));
        SessionKey {
            pipeline_id: self.pipeline(pipeline_id),
            session_id: open
                .cloned()
                .unwrap_or_else(|| inferred_session_id(user_id, timestamp)),
        }
    }

    fn close(&mut self, key: &SessionKey, reason: CloseReason) -> Option<ClosedSession> {
        let state = self.sessions.remove(key)?;
        if state.inferred
            && let Some(user_id) = &state.user_id
        {
            self.inferred_by_user
                .remove(&(key.pipeline_id.to_string(), user_id.clone()));
        }
        // A session split by max_duration continues in a new segment; other closes end it.
        if reason == CloseReason::MaxDuration && !state.inferred {
            self.next_segment
                .insert(key.clone(), (state.segment + 1, state.last_event_ms));
        }
        Some(ClosedSession {
            key: key.clone(),
            state: *state,
            reason,
        })
    }

    /// Closes sessions whose gap passed, on the tick. Two rules, each chosen so that whether a
    /// tick ran between two traces never changes where the second one goes (a replay after a
    /// restart runs without ticks in between, and must number turns as the first run did):
    /// - by event time, when the partition's watermark (its event time minus `grace`: no trace
    ///   still joinable is older) is a gap past the session's last trace; any trace of the
    ///   session not yet late is then a gap past it too, and `add` would close it as well;
    /// - by the wall clock (reason `Idle`), when the partition has received nothing for a whole
    ///   gap: a quiet partition still closes its sessions, and a backlog never looks quiet.
    ///
    /// Scans every open session: call it on a tick, not per trace.
    pub fn expire(&mut self, wall_ms: i64, closed: &mut Vec<ClosedSession>) {
        let (Some(event_time), Some(last_wall)) = (self.event_time_ms, self.last_message_wall_ms)
        else {
            return;
        };
        let quiet_for = wall_ms.saturating_sub(last_wall).max(0);
        let watermark = event_time.saturating_sub(millis(self.settings().grace));
        let gap = millis(self.settings().gap);
        let user_gap = millis(self.settings().user_gap);
        let due: Vec<(SessionKey, CloseReason)> = self
            .sessions
            .iter()
            .filter_map(|(key, state)| {
                let gap = if state.inferred { user_gap } else { gap };
                if watermark.saturating_sub(state.last_event_ms) >= gap {
                    Some((key.clone(), CloseReason::Gap))
                } else if quiet_for >= gap {
                    Some((key.clone(), CloseReason::Idle))
                } else {
                    None
                }
            })
            .collect();
        for (key, reason) in due {
            closed.extend(self.close(&key, reason));
        }
        self.next_segment.retain(|_, (_, ended_ms)| {
            watermark.saturating_sub(*ended_ms) < gap && quiet_for < gap
        });
        // Pipelines no key holds any more.
        self.pipelines
            .retain(|pipeline| Arc::strong_count(pipeline) > 1);
    }

    /// The partition's state was restored at wall-clock `wall_ms`: its sessions close by the
    /// wall clock after a gap without traces from then on, as if a trace had come.
    pub fn resumed(&mut self, wall_ms: i64) {
        self.last_message_wall_ms.get_or_insert(wall_ms);
    }

    /// The partition was paused (its traces waited in Kafka) and is fetched again from
    /// `wall_ms`: the idle rule counts quiet from then, not from its last trace.
    pub fn restart_quiet_clock(&mut self, wall_ms: i64) {
        self.last_message_wall_ms = Some(
            self.last_message_wall_ms
                .map_or(wall_ms, |last| last.max(wall_ms)),
        );
    }

    /// Restores the partition's event time (state recovery).
    pub fn restore_event_time(&mut self, event_time_ms: Option<i64>) {
        self.event_time_ms = self.event_time_ms.max(event_time_ms);
    }

    /// Segment the next window of `key` starts at (non-zero after a max-duration split).
    pub fn next_segment_of(&self, key: &SessionKey) -> i32 {
        self.next_segment
            .get(key)
            .map_or(0, |(segment, _)| *segment)
    }

    /// Restores a pending max-duration continuation (state recovery).
    pub fn restore_next_segment(&mut self, key: SessionKey, segment: i32, ended_ms: i64) {
        let key = SessionKey {
            pipeline_id: self.intern(&key.pipeline_id),
            session_id: key.session_id,
        };
        self.next_segment.insert(key, (segment, ended_ms));
    }

    /// The key `event` would be placed under, without placing it (`None`: no session).
    pub fn peek_key(&self, event: &TraceEvent, pipeline_id: &str) -> Option<SessionKey> {
        match (&event.session_id, &event.user_id) {
            (Some(session_id), _) => Some(SessionKey {
                pipeline_id: self.pipeline(pipeline_id),
                session_id: session_id.clone(),
            }),
            (None, Some(_)) if self.settings().infer_user_sessions => {
                Some(self.inferred_key(pipeline_id, event, event.timestamp_ms))
            }
            _ => None,
        }
    }

    /// Removes every open session without a close reason (the partition moved elsewhere).
    pub fn close_all(&mut self) -> Vec<(SessionKey, SessionState)> {
        self.next_segment.clear();
        self.inferred_by_user.clear();
        self.pipelines.clear();
        self.sessions
            .drain()
            .map(|(key, state)| (key, *state))
            .collect()
    }
}

#[cfg(test)]
#[path = "window_tests.rs"]
mod tests;
