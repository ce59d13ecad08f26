//! Outcomes coming back to the core: batches acknowledged, dead letters delivered, row updates
//! accepted, checkpoints written; and the sends that wait for them.

use super::Core;
use super::effect::FinalTurnUpdate;
use super::effect::{CheckpointId, Effect, Forward, ForwardedUpdate, Now};
use super::offsets::CheckpointOutcome;
use crate::batch::{Batch, Origin, RowKind};
use crate::sink::{Rejection, ShipReport};
use crate::source::dlq::DeadLetter;
use std::collections::HashMap;
use std::time::Duration;
use trace_model::SessionSummary;

/// How long an undelivered session summary waits before it is sent again.
const SUMMARY_RETRY_INTERVAL: Duration = Duration::from_secs(1);

impl Core {
    /// Queues ready batches and hands out as many as there are free request slots.
    pub(super) fn dispatch(&mut self, ready: Vec<Batch>, out: &mut Vec<Effect>) {
        self.waiting.extend(ready);
        while self.num_shipping < self.settings.batch.max_in_flight_requests {
            let Some(batch) = self.waiting.pop_front() else {
                break;
            };
            self.num_shipping += 1;
            out.push(Effect::Ship(batch));
        }
    }

    /// Openlayer answered for a batch: acknowledged rows settle, refused ones are
    /// dead-lettered.
    pub fn shipped(&mut self, batch: Batch, report: ShipReport, now: Now, out: &mut Vec<Effect>) {
        self.num_shipping = self.num_shipping.saturating_sub(1);
        let rejected: HashMap<usize, &Rejection> = report
            .rejected
            .iter()
            .map(|(index, rejection)| (*index, rejection))
            .collect();
        if batch.kind == RowKind::Session {
            let num_rejected = rejected.len() as u64;
            let num_shipped = (batch.origins.len() as u64).saturating_sub(num_rejected);
            let rows = &self.metrics.session_rows;
            rows.with_label_values(&["shipped"]).inc_by(num_shipped);
            rows.with_label_values(&["rejected"]).inc_by(num_rejected);
        }
        let mut letters = Vec::new();
        for (index, origin) in batch.origins.iter().enumerate() {
            if let Some(rejection) = rejected.get(&index) {
                letters.push((*origin, index, (*rejection).clone()));
                continue;
            }
            self.metrics.rows_shipped.inc();
            if let Some(kafka_timestamp_ms) = origin.kafka_timestamp_ms {
                self.metrics
                    .end_to_end_delay
                    .observe((now.wall_ms - kafka_timestamp_ms).max(0) as f64 / 1000.0);
            }
            self.offsets.settle(origin.partition, origin.sequence);
        }
        for (origin, index, rejection) in letters {
            if !self.offsets.owns(origin.partition) {
                continue;
            }
            let letter = DeadLetter {
                // A session row is not a trace: replaying it to the traces topic would be wrong.
                reason: match batch.kind {
                    RowKind::Trace => "openlayer_rejected",
                    RowKind::Session => "openlayer_rejected_session_row",
                },
                stage: "sink",
                message: rejection.body,
                origin,
                key: None,
                payload: batch.rows[index].get().as_bytes().to_vec(),
                http_status: rejection.status,
                pipeline_id: Some(batch.pipeline_id.clone()),
            };
            self.dead_letter(letter, out);
        }
        self.offsets.store_advanced(out);
        self.dispatch(Vec::new(), out);
        self.apply_backpressure(now, out);
    }

    /// A request task failed without an answer (a panic in the sink): its rows stay unsettled,
    /// so their offsets are never committed and a restart redelivers them.
    pub fn ship_lost(&mut self, out: &mut Vec<Effect>) {
        self.num_shipping = self.num_shipping.saturating_sub(1);
        self.metrics
            .errors
            .with_label_values(&["panic", "sending"])
            .inc();
        self.dispatch(Vec::new(), out);
    }

    /// A dead letter's outcome: delivered settles its message; otherwise the message stays
    /// unsettled (never committed, redelivered after a restart).
    pub fn dead_letter_delivered(
        &mut self,
        origin: Origin,
        delivered: bool,
        out: &mut Vec<Effect>,
    ) {
        self.produced(origin, delivered, "dead letter", out);
    }

    /// A forward's outcome: delivered settles the message it was read as; otherwise the
    /// message stays unsettled (never committed, read and forwarded again after a restart).
    pub fn repartitioned(&mut self, forward: &Forward, delivered: bool, out: &mut Vec<Effect>) {
        if delivered {
            self.metrics
                .repartitioned
                .with_label_values(&[forward.reason])
                .inc();
        }
        self.produced(forward.origin, delivered, "forward", out);
    }

    /// A record produced for a message (its dead letter, its forward): once Kafka has it the
    /// message settles.
    fn produced(&mut self, origin: Origin, delivered: bool, what: &str, out: &mut Vec<Effect>) {
        if delivered {
            self.offsets.settle(origin.partition, origin.sequence);
            self.offsets.store_advanced(out);
            return;
        }
        self.metrics
            .errors
            .with_label_values(&["kafka", "sending"])
            .inc();
        tracing::error!(
            partition = origin.read_at.partition,
            offset = origin.read_at.offset,
            "{what} not delivered; the message stays uncommitted"
        );
    }

    /// A forwarded row update's outcome: accepted settles it; refused dead-letters it.
    pub fn update_forwarded(
        &mut self,
        update: ForwardedUpdate,
        accepted: bool,
        out: &mut Vec<Effect>,
    ) {
        let origin = update.origin;
        self.row_update_done(origin, accepted, out, || DeadLetter {
            reason: "openlayer_row_update_failed",
            stage: "sink",
            message: "openlayer did not accept the row update".to_owned(),
            origin,
            key: update
                .event
                .partition_key()
                .map(|key| key.as_bytes().to_vec()),
            payload: trace_model::codec::json::encode_trace(&update.event),
            http_status: None,
            pipeline_id: Some(update.pipeline_id),
        });
    }

    /// A row update's outcome for the message at `origin`: accepted settles its part; not
    /// accepted, `letter` goes to the dead-letter topic, which settles it once delivered.
    fn row_update_done(
        &mut self,
        origin: Origin,
        accepted: bool,
        out: &mut Vec<Effect>,
        letter: impl FnOnce() -> DeadLetter,
    ) {
        if !self.offsets.owns(origin.partition) {
            return;
        }
        if accepted {
            self.offsets.settle(origin.partition, origin.sequence);
            self.offsets.store_advanced(out);
            return;
        }
        self.dead_letter(letter(), out);
    }

    /// Splits `updates` of owned partitions into those whose messages below `origin` are all
    /// settled and those still waiting; drops those of partitions no longer owned.
    fn ready_updates<T>(&self, updates: Vec<T>, origin: impl Fn(&T) -> Origin) -> (Vec<T>, Vec<T>) {
        updates
            .into_iter()
            .filter(|update| self.offsets.owns(origin(update).partition))
            .partition(|update| {
                let origin = origin(update);
                self.offsets
                    .watermark(origin.partition)
                    .is_some_and(|watermark| watermark >= origin.sequence)
            })
    }

    /// A checkpoint's outcome: once delivered, its watermark is stored.
    pub fn checkpoint_written(
        &mut self,
        checkpoint: CheckpointId,
        delivered: bool,
        out: &mut Vec<Effect>,
    ) {
        let CheckpointId {
            partition, cut_ms, ..
        } = checkpoint;
        let journal = self
            .owned
            .get_mut(&partition)
            .and_then(|owned| owned.journal.as_mut());
        match self
            .offsets
            .checkpoint_written(checkpoint, delivered, journal, out)
        {
            CheckpointOutcome::Stored => self
                .metrics
                .checkpoint_timestamp
                .with_label_values(&[&partition.to_string()])
                .set(cut_ms as f64 / 1000.0),
            CheckpointOutcome::Frozen => {
                self.metrics
                    .errors
                    .with_label_values(&["changelog", "sending"])
                    .inc();
                tracing::error!(
                    partition,
                    "changelog checkpoint not delivered; offsets of this partition stay where they are until restart"
                );
            }
            CheckpointOutcome::OfEarlierOwnership => {
                // Its records are in the changelog now (or never will be): the new ownership
                // may read it.
                if self.restore_held.remove(&partition) {
                    out.push(Effect::Restore(vec![partition]));
                }
            }
        }
    }

    /// Without a changelog, stores every watermark that advanced (the drain's last step).
    pub fn store_settled(&mut self, out: &mut Vec<Effect>) {
        self.offsets.store_advanced(out);
    }

    /// Sends final-turn updates whose session rows are all settled (every message below the
    /// close); forgets those of partitions this instance no longer owns (the new owner closes
    /// the session again: its close is not committed before the update is accepted).
    pub fn send_final_turn_updates(&mut self, out: &mut Vec<Effect>) {
        if self.final_turns.is_empty() {
            return;
        }
        let updates = std::mem::take(&mut self.final_turns);
        let (ready, waiting) = self.ready_updates(updates, |update| update.origin);
        self.final_turns = waiting;
        for update in ready {
            out.push(Effect::MarkFinalTurn(update));
        }
    }

    /// A final-turn update's outcome: accepted settles its part of the close; refused
    /// dead-letters it (with the row it was for).
    pub fn final_turn_marked(
        &mut self,
        update: FinalTurnUpdate,
        accepted: bool,
        out: &mut Vec<Effect>,
    ) {
        let origin = update.origin;
        self.row_update_done(origin, accepted, out, || DeadLetter {
            reason: "final_turn_update_failed",
            stage: "sink",
            message: "openlayer did not accept the final-turn row update (refused, or failed \
                      through its retries)"
                .to_owned(),
            origin,
            key: None,
            payload: serde_json::json!({
                "inferenceId": update.inference_id,
                "row": { crate::enrich::FINAL_TURN_COLUMN: true },
            })
            .to_string()
            .into_bytes(),
            http_status: None,
            pipeline_id: Some(update.pipeline_id),
        });
    }

    /// A session summary's outcome: delivered settles its part of the close; otherwise it is
    /// sent again a second later (`retry_summaries`), its close uncommitted meanwhile.
    pub fn summary_produced(
        &mut self,
        summary: SessionSummary,
        origin: Origin,
        delivered: bool,
        out: &mut Vec<Effect>,
    ) {
        if delivered {
            self.metrics.summaries_produced.inc();
            self.produced(origin, true, "session summary", out);
            return;
        }
        if !self.offsets.owns(origin.partition) {
            return;
        }
        self.metrics
            .errors
            .with_label_values(&["kafka", "sending"])
            .inc();
        tracing::warn!(
            partition = origin.partition,
            "session summary not delivered; sending it again"
        );
        self.unsent_summaries.push((summary, origin));
    }

    /// A summary that cannot be encoded (it never will be): its part of the close settles
    /// without it, counted as an `encode` error where it was found.
    pub fn summary_dropped(&mut self, origin: Origin, out: &mut Vec<Effect>) {
        self.produced(origin, true, "session summary", out);
    }

    /// Sends again the summaries Kafka did not take, at most once a second.
    pub(super) fn retry_summaries(&mut self, now: Now, out: &mut Vec<Effect>) {
        if self.unsent_summaries.is_empty()
            || now
                .instant
                .saturating_duration_since(self.last_summary_retry)
                < SUMMARY_RETRY_INTERVAL
        {
            return;
        }
        self.last_summary_retry = now.instant;
        for (summary, origin) in std::mem::take(&mut self.unsent_summaries) {
            if self.offsets.owns(origin.partition) {
                out.push(Effect::ProduceSummary { summary, origin });
            }
        }
    }

    /// Sends the row updates whose messages below are all settled; forgets those of
    /// partitions this instance no longer owns (their new owner sends them).
    pub fn send_forwarded_updates(&mut self, out: &mut Vec<Effect>) {
        if self.forwarded_updates.is_empty() {
            return;
        }
        let updates = std::mem::take(&mut self.forwarded_updates);
        let (ready, waiting) = self.ready_updates(updates, |update| update.origin);
        self.forwarded_updates = waiting;
        out.extend(
            ready
                .into_iter()
                .map(|update| Effect::ForwardUpdate(Box::new(update))),
        );
    }
}
