//! Draining for the pipeline's IO loop: stop fetching, flush, wait for acknowledgements until
//! the drain deadline, checkpoint, commit, flush the producers.

use super::forwarder::Forwarder;
use super::{Pipeline, next_forward};
use crate::core::Now;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::producer::Producer;
use std::time::Duration;

impl Pipeline {
    pub(super) async fn drain(&mut self) {
        // A revoke the consumer reported while shutdown won the `select!`: its partitions must
        // not be checkpointed after the revoke hook waited for their checkpoints. The consumer
        // is not polled again, so none comes later.
        self.apply_rebalances();
        if let Some(restoring) = self.restoring.as_mut() {
            restoring.cancel();
        }
        let deadline = tokio::time::Instant::now() + self.settings.drain_timeout;
        self.core.flush_all(&mut self.effects);
        self.perform();
        let drained = tokio::time::timeout_at(deadline, self.settle_in_flight()).await;
        if drained.is_err() {
            tracing::warn!(
                unsettled = self.core.num_unsettled(),
                "drain deadline passed; unacknowledged rows will be redelivered after restart"
            );
            self.shipping.abort_all();
            self.dead_letters.abort_all();
            if let Some(forwarder) = self.forwarder.as_mut() {
                forwarder.abort_all();
            }
            self.forwarded_in_flight.abort_all();
            self.summaries.abort_all();
            self.row_updates.abort_all();
        }
        self.core.store_settled(&mut self.effects);
        self.perform();
        // A checkpoint already in flight would make the next one skip its partition: let it
        // land first, then write the final one for everything acknowledged since.
        let checkpointed = tokio::time::timeout_at(deadline, async {
            self.write_checkpoints().await;
            self.core.checkpoint(Now::system(), &mut self.effects);
            self.perform();
            self.write_checkpoints().await;
        })
        .await;
        if checkpointed.is_err() {
            tracing::warn!("drain deadline passed before the last checkpoint was written");
        }
        self.commit_and_flush(deadline);
    }

    /// Waits for requests, dead letters, forwards, row updates and session summaries until
    /// none is in flight.
    async fn settle_in_flight(&mut self) {
        loop {
            self.core.send_forwarded_updates(&mut self.effects);
            self.core.send_final_turn_updates(&mut self.effects);
            self.perform();
            if self.shipping.is_empty()
                && self.dead_letters.is_empty()
                && self.summaries.is_empty()
                && self.row_updates.is_empty()
                && !self
                    .forwarder
                    .as_ref()
                    .is_some_and(Forwarder::has_in_flight)
                && self.core.num_waiting_batches() == 0
                && self.forwarded_in_flight.is_empty()
            {
                return;
            }
            tokio::select! {
                biased;
                Some(shipped) = self.shipping.join_next_with_id(), if !self.shipping.is_empty() => self.on_shipped(shipped),
                Some(delivered) = self.dead_letters.join_next(), if !self.dead_letters.is_empty() => self.on_dead_letter(delivered),
                Some(outcome) = next_forward(self.forwarder.as_mut()), if self.forwarder.as_ref().is_some_and(Forwarder::has_in_flight) => self.on_forward_outcome(outcome),
                Some(forwarded) = self.forwarded_in_flight.join_next(), if !self.forwarded_in_flight.is_empty() => self.on_forwarded_update(forwarded),
                Some(produced) = self.summaries.join_next(), if !self.summaries.is_empty() => self.on_summary(produced),
                Some(updated) = self.row_updates.join_next(), if !self.row_updates.is_empty() => self.on_final_turn_marked(updated),
                else => return,
            }
        }
    }

    async fn write_checkpoints(&mut self) {
        while let Some(written) = self.checkpoints.join_next().await {
            self.on_checkpoint_written(written);
        }
    }

    fn commit_and_flush(&mut self, deadline: tokio::time::Instant) {
        if let Some(repartition) = &self.repartition {
            repartition.commit();
        }
        match self.source.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => self.metrics.commits.with_label_values(&["committed"]).inc(),
            Err(error) => {
                self.metrics
                    .commits
                    .with_label_values(&["commit_failed"])
                    .inc();
                tracing::debug!(%error, "final commit");
            }
        }
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        if let Err(error) = self.producer.flush(remaining.max(Duration::from_secs(1))) {
            tracing::warn!(%error, "side outputs left undelivered at shutdown");
        }
        // The drain waited for every checkpoint it wrote; one left from a passed deadline
        // gets what time is left (the consumer's close, which revokes, waits for it too).
        if let Some(handover) = &self.handover {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if let Err(error) = handover.producer().flush(remaining) {
                tracing::warn!(%error, "changelog checkpoints left undelivered at shutdown");
            }
        }
        tracing::info!("pipeline stopped");
    }
}
