//! A consumed message through the core: decode, sessionize, journal, enrich, batch; or a
//! dead letter when it cannot become a row.

use super::Core;
use super::effect::FinalTurnUpdate;
use super::effect::{Effect, Forward, Now, Received};
use super::inputs::{Apply, Pending, rejected};
use super::merge::Stream;
use crate::batch::{Origin, Position, RowKind, RowToBatch};
use crate::enrich::{openlayer_row, row_id_columns};
use crate::session_row::session_row;
use crate::sessionize::store::StateAfter;
use crate::sessionize::{ClosedSession, Placement, SessionKey};
use crate::source::dlq::DeadLetter;
use bytes::Bytes;
use trace_model::routing::{partition_for, route_key};
use trace_model::{DecodeError, SessionSummary, TraceEvent, TraceKind};

impl Core {
    /// A message consumed from an owned partition whose state is installed. `schema_error`:
    /// the Confluent writer schema it needs could not be had (it is dead-lettered).
    ///
    /// A message of a partition still awaiting its state must be held by the IO loop and
    /// handed in after [`Core::restored`]; one of a partition not owned is ignored (a fetch
    /// from before the revoke: its new owner handles it).
    pub fn message(
        &mut self,
        received: Received<'_>,
        schema_error: Option<DecodeError>,
        now: Now,
        out: &mut Vec<Effect>,
    ) {
        let Received {
            stream,
            partition,
            offset,
            ..
        } = received;
        if stream == Stream::Traces {
            // Forwards and markers read from the repartition topic are not new traces.
            self.metrics.events_consumed.inc();
        }
        if !self.offsets.owns(partition) || self.awaiting_state.contains(&partition) {
            return;
        }
        let Some(owned) = self.owned.get_mut(&partition) else {
            return;
        };
        if stream == Stream::Traces {
            owned.position = Some(offset + 1);
            owned.read_through(received.kafka_timestamp_ms, now);
        }
        let skip = if let Some(marker) = received.marker {
            if let Some(aligner) = owned.aligner.as_mut() {
                aligner.marker(
                    marker.from,
                    marker.bound_ms,
                    marker.read_through_ms,
                    now.instant,
                );
                if let Some(epoch) = marker.epoch {
                    aligner.heard_epoch(marker.from, epoch, now.instant);
                }
            }
            true
        } else if owned
            .restored
            .as_ref()
            .is_some_and(|restored| restored.already_applied(None, (stream, offset), None))
        {
            // Applied and acknowledged before the last checkpoint: replaying it would count
            // it twice.
            true
        } else if let (Stream::Repartition, Some(first_read)) = (stream, received.first_read) {
            let highest = owned.forwarded.entry(first_read.partition).or_insert(-1);
            let duplicate = first_read.offset <= *highest;
            if duplicate {
                // Forwarded again by a sender that crashed before committing (forwards from
                // one partition arrive in order and without gaps): applying it would count it
                // twice.
                self.metrics.repartitioned_duplicates.inc();
            } else {
                *highest = first_read.offset;
            }
            duplicate
        } else {
            false
        };
        if skip {
            if let Some(sequence) = self.offsets.read(partition, stream, offset) {
                self.offsets.track(partition, sequence, 0);
            }
            self.release(partition, now, out);
            return;
        }
        let what = match self.undecoded(received, schema_error.as_ref()) {
            Some(what) => what,
            None => {
                let decoded = match schema_error {
                    Some(error) => Err(error),
                    None => self.decoder.decode(received.payload),
                };
                self.classify(
                    decoded,
                    (received.key, received.payload),
                    (partition, offset),
                )
            }
        };
        let pending = Pending {
            stream,
            offset,
            read_at: received
                .first_read
                .unwrap_or(Position { partition, offset }),
            first_read: received
                .first_read
                .filter(|_| stream == Stream::Repartition),
            kafka_timestamp_ms: received.kafka_timestamp_ms,
            what,
        };
        self.admit(pending, received, now, out);
        if stream == Stream::Traces {
            // The partition's progress may let traces of others owned here go.
            self.release_others(partition, now, out);
        }
    }

    /// What becomes of a decoded message (or of one that failed to decode).
    pub(super) fn classify(
        &self,
        decoded: Result<TraceEvent, DecodeError>,
        message: (Option<&[u8]>, &[u8]),
        (partition, offset): (i32, i64),
    ) -> Apply {
        let event = match decoded {
            Ok(event) => event,
            Err(error) => {
                tracing::debug!(%error, partition, offset, "undecodable trace, dead-lettering");
                return rejected(message, error.reason(), error.to_string());
            }
        };
        let pipeline_id = match self.pipeline_of(event.pipeline_id.as_deref()) {
            Ok(pipeline_id) => pipeline_id.to_owned(),
            Err((reason, description)) => return rejected(message, reason, description),
        };
        if event.kind == TraceKind::RowUpdate {
            Apply::Update { event, pipeline_id }
        } else {
            Apply::Trace { event, pipeline_id }
        }
    }

    /// The pipeline a trace naming `pipeline_id` goes to, or why it cannot go anywhere.
    fn pipeline_of<'a>(
        &'a self,
        pipeline_id: Option<&'a str>,
    ) -> Result<&'a str, (&'static str, String)> {
        let Some(pipeline_id) = pipeline_id.or(self.settings.default_pipeline_id.as_deref()) else {
            return Err((
                "no_pipeline_id",
                "trace names no pipeline_id and no default is configured".to_owned(),
            ));
        };
        if self
            .settings
            .session_rows
            .as_ref()
            .is_some_and(|rows| rows.is_sessions_pipeline(pipeline_id))
        {
            return Err((
                "sessions_pipeline",
                format!(
                    "trace names pipeline {pipeline_id}, which receives session rows \
                     (openlayer.sessions_pipeline_id / sessions_pipelines)"
                ),
            ));
        }
        Ok(pipeline_id)
    }

    /// A trace read in place that the alignment may hold undecoded ([`Apply::Undecoded`]):
    /// its head is readable, it is a plain trace of a pipeline it may go to, and it stays in
    /// this partition. Anything else is decoded now, as before.
    fn undecoded(
        &self,
        received: Received<'_>,
        schema_error: Option<&DecodeError>,
    ) -> Option<Apply> {
        if received.stream != Stream::Traces
            || schema_error.is_some()
            || self
                .owned
                .get(&received.partition)
                .is_none_or(|owned| owned.aligner.is_none())
        {
            return None;
        }
        let head = self.decoder.peek(received.payload)?;
        if head.kind != TraceKind::Trace || self.pipeline_of(head.pipeline_id).is_err() {
            return None;
        }
        let stays = self.belongs_elsewhere(head.route_key(), received).is_none();
        stays.then(|| Apply::Undecoded {
            timestamp_ms: head.timestamp_ms,
            key: received.key.map(<[u8]>::to_vec),
            payload: received
                .shared_payload
                .cloned()
                .unwrap_or_else(|| Bytes::copy_from_slice(received.payload)),
        })
    }

    /// The partition a trace read in `received.partition` belongs in instead, and why it was
    /// not there, when repartitioning is on.
    /// `route_key`: the trace's ([`trace_model::routing::route_key`]).
    pub(super) fn belongs_elsewhere(
        &self,
        route_key: Option<&str>,
        received: Received<'_>,
    ) -> Option<(i32, &'static str)> {
        let num_partitions = self.settings.repartition_partitions?;
        let key = route_key?;
        let to_partition = partition_for(key.as_bytes(), num_partitions);
        if to_partition == received.partition {
            return None;
        }
        let reason = if received.key.is_none() {
            "no_key"
        } else {
            "other_partition"
        };
        Some((to_partition, reason))
    }

    /// Sends a trace to its session's partition through the repartition topic; its message
    /// settles once Kafka has the forward.
    pub(super) fn forward(
        &mut self,
        event: &TraceEvent,
        received: Received<'_>,
        origin: Origin,
        (to_partition, reason): (i32, &'static str),
        order_key_ms: i64,
        out: &mut Vec<Effect>,
    ) {
        self.offsets.track(origin.partition, origin.sequence, 1);
        if let Some(owned) = self.owned.get_mut(&origin.partition) {
            let sent = owned.forwards_sent.entry(to_partition).or_insert(-1);
            *sent = (*sent).max(origin.read_at.offset);
        }
        out.push(Effect::Repartition(Forward {
            origin,
            to_partition,
            key: route_key(event).unwrap_or_default().to_owned(),
            payload: received.payload.to_vec(),
            reason,
            order_key_ms,
        }));
    }

    /// Dead-letters a message that cannot become a row (decode or validation failure, no
    /// pipeline); it settles once the dead letter is acknowledged.
    pub(super) fn reject(
        &mut self,
        origin: Origin,
        reason: &'static str,
        description: String,
        key: Option<Vec<u8>>,
        payload: Vec<u8>,
        out: &mut Vec<Effect>,
    ) {
        self.metrics
            .events_invalid
            .with_label_values(&[reason])
            .inc();
        self.offsets.track(origin.partition, origin.sequence, 1);
        self.dead_letter(
            DeadLetter {
                reason,
                stage: "decode",
                message: description,
                origin,
                key,
                payload,
                http_status: None,
                pipeline_id: None,
            },
            out,
        );
    }

    pub(super) fn dead_letter(&mut self, letter: DeadLetter, out: &mut Vec<Effect>) {
        self.metrics
            .dead_letters
            .with_label_values(&[letter.stage, letter.reason])
            .inc();
        out.push(Effect::DeadLetter(letter));
    }

    /// Places a trace in its session window, journals the touched sessions, and batches its
    /// enriched row. `read`: the stream and offset it was read at, for replays.
    pub(super) fn place(
        &mut self,
        event: &TraceEvent,
        pipeline_id: &str,
        origin: Origin,
        read: (Stream, i64),
        now: Now,
        out: &mut Vec<Effect>,
    ) {
        let Origin {
            partition,
            sequence,
            ..
        } = origin;
        let Some(owned) = self.owned.get_mut(&partition) else {
            return;
        };
        let windows = &mut owned.windows;
        let key = windows.peek_key(event, pipeline_id);
        if owned.restored.as_ref().is_some_and(|restored| {
            restored.already_applied(key.as_ref(), read, Some(origin.read_at))
        }) {
            // Its session's state already holds it, but the partition's event time may not: a
            // checkpoint that landed in part has the session's record and not the partition's.
            // Without this, a later trace could be judged on time when it was late.
            windows.restore_event_time(Some(event.timestamp_ms));
            if let Some(journal) = owned.journal.as_mut() {
                journal.record_event_time(sequence, windows.event_time_ms());
            }
            self.offsets.track(partition, sequence, 0);
            return;
        }
        let mut closed = Vec::new();
        let num_open_before = windows.num_open();
        let placement = windows.add(event, pipeline_id, now.wall_ms, &mut closed);
        self.metrics
            .sessions_open
            .add(windows.num_open() as i64 - num_open_before as i64);
        if let Placement::End {
            closed: Some(ended),
        } = &placement
        {
            closed.push(ended.clone());
        }
        if let Placement::Turn(turn) = &placement
            && let Some(state) = windows.session_mut(&turn.key)
        {
            if event.inference_id.is_none() {
                // The window knows the producer's ids only; the row's is derived (below), and
                // the next turn's `previous_inference_id`, the final-turn update and the
                // session row name it.
                let derived = derived_inference_id(&self.settings.topic, origin.read_at);
                if turn.turn == 1 {
                    state.first_inference_id.clone_from(&derived);
                }
                state.last_inference_id = derived;
            }
            // What the session row adds up, journaled with the session's state below. Only
            // turns count: whether a trace past grace finds its session open depends on ticks.
            if let Some(rows) = &self.settings.session_rows {
                let totals = state.totals.get_or_insert_default();
                totals.add(event, turn.late_within_grace, &rows.aggregates);
            }
        }
        if let Some(journal) = owned.journal.as_mut() {
            let mut touched: Vec<&SessionKey> = closed.iter().map(|session| &session.key).collect();
            if let Placement::Turn(turn) = &placement {
                touched.push(&turn.key);
            }
            for key in touched {
                let after = StateAfter {
                    state: windows.session(key).cloned(),
                    next_segment: windows.next_segment_of(key),
                };
                journal.record_state(sequence, key, after);
            }
            journal.record_event_time(sequence, windows.event_time_ms());
        }
        for session in closed {
            self.on_session_closed(session, origin, now, out);
        }
        if let Placement::End { .. } | Placement::Duplicate = placement {
            if matches!(placement, Placement::Duplicate) {
                self.metrics.duplicate_traces.inc();
            }
            self.offsets.track(partition, sequence, 0);
            self.offsets.store_advanced(out);
            return;
        }
        self.count_placement(&placement);
        self.batch_row(event, pipeline_id, origin, &placement, now, out);
    }

    /// Batches the closed session's row for its sessions pipeline, if it has one; the message
    /// that closed it settles only once the row is acknowledged.
    fn batch_session_row(
        &mut self,
        session: &ClosedSession,
        closed_by: Origin,
        now: Now,
        out: &mut Vec<Effect>,
    ) {
        let Some(pipeline_id) = self
            .settings
            .session_rows
            .as_ref()
            .and_then(|rows| rows.pipeline_for(&session.key.pipeline_id))
            .map(str::to_owned)
        else {
            return;
        };
        let (row, omitted) = session_row(session, session.reason.as_str());
        for reason in omitted {
            self.metrics
                .session_columns_omitted
                .with_label_values(&[reason.as_str()])
                .inc();
        }
        self.offsets
            .track(closed_by.partition, closed_by.sequence, 1);
        let mut ready = Vec::new();
        self.batcher.add(
            RowToBatch {
                pipeline_id: &pipeline_id,
                row,
                origin: Origin {
                    kafka_timestamp_ms: None,
                    ..closed_by
                },
                kind: RowKind::Session,
                input_names: std::iter::empty::<&String>(),
                has_user: session.state.user_id.is_some(),
                has_session: true,
            },
            now.instant,
            &mut ready,
        );
        self.dispatch(ready, out);
    }

    fn count_placement(&self, placement: &Placement) {
        match placement {
            Placement::Turn(turn) => {
                if turn.turn == 1 {
                    self.metrics.sessions_opened.inc();
                }
                if turn.late_within_grace {
                    self.metrics
                        .late_events
                        .with_label_values(&["joined"])
                        .inc();
                }
            }
            Placement::Late { .. } => {
                self.metrics
                    .late_events
                    .with_label_values(&["marked"])
                    .inc();
            }
            Placement::Passthrough => self.metrics.passthrough_events.inc(),
            Placement::End { .. } | Placement::Duplicate => {}
        }
    }

    /// Enriches the trace into its Openlayer row and hands it to the batcher.
    fn batch_row(
        &mut self,
        event: &TraceEvent,
        pipeline_id: &str,
        origin: Origin,
        placement: &Placement,
        now: Now,
        out: &mut Vec<Effect>,
    ) {
        if let Some(kafka_timestamp_ms) = origin.kafka_timestamp_ms {
            let lag_seconds = (now.wall_ms - kafka_timestamp_ms).max(0) as f64 / 1000.0;
            self.metrics.sessionization_lag.observe(lag_seconds);
            if let Some(owned) = self.owned.get_mut(&origin.partition) {
                owned.newest_timestamp_ms = Some(kafka_timestamp_ms);
            }
        }
        let inference_id = event
            .inference_id
            .clone()
            .unwrap_or_else(|| derived_inference_id(&self.settings.topic, origin.read_at));
        let row = openlayer_row(event, &inference_id, placement);
        let (has_user, has_session) = row_id_columns(event, placement);
        self.offsets.track(origin.partition, origin.sequence, 1);
        let mut ready = Vec::new();
        self.batcher.add(
            RowToBatch {
                pipeline_id,
                row,
                origin,
                kind: RowKind::Trace,
                input_names: event.inputs.keys(),
                has_user,
                has_session,
            },
            now.instant,
            &mut ready,
        );
        self.dispatch(ready, out);
        self.apply_backpressure(now, out);
    }

    /// `closed_by`: the message that closed it, or the idle close's own sequence; the session's
    /// rows all sit below it, and its session row holds it back until acknowledged.
    pub(super) fn on_session_closed(
        &mut self,
        session: ClosedSession,
        closed_by: Origin,
        now: Now,
        out: &mut Vec<Effect>,
    ) {
        let Origin {
            partition,
            sequence: close_sequence,
            ..
        } = closed_by;
        let reason = session.reason.as_str();
        self.metrics
            .sessions_closed
            .with_label_values(&[reason])
            .inc();
        let state = &session.state;
        let duration_seconds = (state.last_event_ms - state.started_at_ms).max(0) as f64 / 1000.0;
        self.metrics.session_duration.observe(duration_seconds);
        self.metrics.session_turns.observe(state.turns as f64);
        tracing::debug!(partition, reason, turns = state.turns, "session closed");
        self.batch_session_row(&session, closed_by, now, out);
        if self.settings.mark_final_turn && !state.last_inference_id.is_empty() {
            // Sent once the final row itself is acknowledged (every message below the close
            // is settled): updating a row Openlayer has not stored yet would be lost.
            self.offsets.track(partition, close_sequence, 1);
            self.final_turns.push(FinalTurnUpdate {
                pipeline_id: session.key.pipeline_id.to_string(),
                inference_id: state.last_inference_id.clone(),
                origin: closed_by,
            });
        }
        if !self.settings.summaries {
            return;
        }
        self.offsets.track(partition, close_sequence, 1);
        let summary = SessionSummary {
            schema_version: trace_model::record::SESSION_SUMMARY_SCHEMA_VERSION,
            session_key: session.key.joined(),
            pipeline_id: session.key.pipeline_id.to_string(),
            session_id: session.key.session_id.clone(),
            user_id: state.user_id.clone(),
            segment: state.segment,
            started_at_ms: state.started_at_ms,
            ended_at_ms: state.last_event_ms,
            num_turns: state.turns,
            total_tokens: state.tokens,
            total_cost: state.cost,
            total_latency_ms: state.latency_ms,
            close_reason: reason.to_owned(),
            first_inference_id: state.first_inference_id.clone(),
            last_inference_id: state.last_inference_id.clone(),
        };
        out.push(Effect::ProduceSummary {
            summary,
            origin: closed_by,
        });
    }
}

/// The id of a trace that came without one: derived from the position it was first read at,
/// stable across redeliveries and forwards, so a retried row is recognisably the same row.
fn derived_inference_id(topic: &str, read_at: Position) -> String {
    format!("{topic}-{}-{}", read_at.partition, read_at.offset)
}
