//! Effects performed by the pipeline's IO loop: each turns into one Kafka or Openlayer call
//! (or a task awaiting one), and nothing else.

use super::Pipeline;
use crate::batch::{Batch, Origin};
use crate::core::{CheckpointId, Effect, Forward, ForwardedUpdate, Stream};
use crate::sessionize::store::ChangelogWrite;
use crate::source::dlq::{DeadLetter, send_dead_letter};
use crate::source::kafka::store_next_offset;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::Consumer;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use std::time::Instant;
use trace_model::SessionSummary;
use trace_model::codec::avro::encode_session_summary;

impl Pipeline {
    /// Performs the effects the core returned, in order.
    pub(super) fn perform(&mut self) {
        for effect in std::mem::take(&mut self.effects) {
            match effect {
                Effect::Ship(batch) => self.ship(batch),
                Effect::DeadLetter(letter) => self.send_dead_letter(letter),
                Effect::ProduceSummary { summary, origin } => {
                    self.produce_summary(summary, origin);
                }
                Effect::MarkFinalTurn(update) => {
                    let sink = self.sink.clone();
                    self.row_updates.spawn(async move {
                        let columns = serde_json::json!({ crate::enrich::FINAL_TURN_COLUMN: true });
                        let accepted = sink
                            .update_row(&update.pipeline_id, &update.inference_id, &columns)
                            .await;
                        (update, accepted)
                    });
                }
                Effect::ForwardUpdate(update) => self.forward_update(*update),
                Effect::Repartition(forward) => self.forward(forward),
                Effect::Marker(marker) => {
                    if let Some(outcome) = self
                        .forwarder
                        .as_mut()
                        .and_then(|forwarder| forwarder.send_marker(marker))
                    {
                        self.on_forward_outcome(outcome);
                    }
                }
                Effect::StoreOffset {
                    stream,
                    partition,
                    offset,
                } => self.store_offset(stream, partition, offset),
                Effect::WriteCheckpoint { checkpoint, writes } => {
                    self.write_checkpoint(checkpoint, writes);
                }
                Effect::Pause(partitions) => self.set_fetching(&partitions, false),
                Effect::Resume(partitions) => self.set_fetching(&partitions, true),
                Effect::PauseTraces(partitions) => self.set_fetching_traces(&partitions, false),
                Effect::ResumeTraces(partitions) => self.set_fetching_traces(&partitions, true),
                Effect::Restore(partitions) => {
                    if let Some(restoring) = self.restoring.as_mut() {
                        restoring.begin(&partitions);
                    }
                }
                Effect::AbandonRestore(partitions) => {
                    if let Some(restoring) = self.restoring.as_mut() {
                        restoring.forget(&partitions);
                        self.health.set_restore_retrying(restoring.is_retrying());
                    }
                }
            }
        }
    }

    fn ship(&mut self, batch: Batch) {
        let sink = self.sink.clone();
        let task = self.shipping.spawn(async move {
            let report = sink
                .ship(&batch.pipeline_id, &batch.config, &batch.rows)
                .await;
            (batch, report)
        });
        self.shipping_started.insert(task.id(), Instant::now());
    }

    fn send_dead_letter(&mut self, letter: DeadLetter) {
        let kafka = &self.settings.kafka;
        match send_dead_letter(
            &self.producer,
            &kafka.dead_letter_topic,
            &kafka.topic,
            &letter,
        ) {
            Ok(delivery) => {
                self.dead_letters.spawn(async move {
                    let delivered = matches!(delivery.await, Ok(Ok(_)));
                    (letter.origin, delivered)
                });
            }
            Err(error) => {
                // Left unsettled: its offset is never committed, so a restart redelivers it.
                self.metrics
                    .errors
                    .with_label_values(&["kafka", "sending"])
                    .inc();
                tracing::error!(%error, "failed to queue a dead letter; the message stays uncommitted");
            }
        }
    }

    /// One Kafka did not take goes back to the core, which sends it again.
    fn produce_summary(&mut self, summary: SessionSummary, origin: Origin) {
        let Some(topic) = self.settings.kafka.sessions_topic.as_deref() else {
            return;
        };
        let payload = match encode_session_summary(&summary) {
            Ok(payload) => payload,
            Err(error) => {
                self.metrics
                    .errors
                    .with_label_values(&["encode", "processing"])
                    .inc();
                tracing::error!(%error, "failed to encode a session summary; it is dropped");
                self.core.summary_dropped(origin, &mut self.effects);
                return;
            }
        };
        let record = FutureRecord::to(topic)
            .key(summary.session_key.as_str())
            .payload(&payload);
        match self.producer.send_result(record) {
            Ok(delivery) => {
                self.summaries.spawn(async move {
                    let delivered = matches!(delivery.await, Ok(Ok(_)));
                    (summary, origin, delivered)
                });
            }
            Err((error, _)) => {
                tracing::debug!(%error, "failed to queue a session summary");
                self.core
                    .summary_produced(summary, origin, false, &mut self.effects);
            }
        }
    }

    fn forward_update(&mut self, update: ForwardedUpdate) {
        let sink = self.sink.clone();
        self.forwarded_in_flight.spawn(async move {
            let columns = serde_json::Value::Object(update.event.row.clone().unwrap_or_default());
            let config = update
                .event
                .row_config
                .clone()
                .map(serde_json::Value::Object);
            let inference_id = update.event.inference_id.as_deref().unwrap_or_default();
            let accepted = sink
                .update_row_with_config(
                    &update.pipeline_id,
                    inference_id,
                    &columns,
                    config.as_ref(),
                )
                .await;
            (update, accepted)
        });
    }

    /// Forwards a trace to its session's partition of the repartition topic.
    fn forward(&mut self, forward: Forward) {
        let Some(forwarder) = self.forwarder.as_mut() else {
            // The core forwards only when repartitioning is on, which makes a forwarder.
            tracing::error!("a trace to forward but no repartition topic; it stays uncommitted");
            return;
        };
        if let Some(outcome) = forwarder.send(forward) {
            self.on_forward_outcome(outcome);
        }
    }

    fn store_offset(&mut self, stream: Stream, partition: i32, offset: i64) {
        let result = match (stream, &self.repartition) {
            (Stream::Traces, _) => store_next_offset(
                &self.source.consumer,
                &self.settings.kafka.topic,
                partition,
                offset,
            ),
            (Stream::Repartition, Some(repartition)) => {
                store_next_offset(&repartition.consumer, &repartition.topic, partition, offset)
            }
            (Stream::Repartition, None) => return,
        };
        match result {
            Ok(()) => self.metrics.commits.with_label_values(&["stored"]).inc(),
            Err(error) => {
                // The partition was revoked meanwhile: its new owner carries on.
                self.metrics
                    .commits
                    .with_label_values(&["store_failed"])
                    .inc();
                tracing::debug!(%error, partition, "failed to store an offset");
            }
        }
    }

    /// Serializes and queues a checkpoint's records in order on a blocking thread, so that a
    /// checkpoint of thousands of sessions does not stall the loop; at most one checkpoint
    /// per partition is in flight (`core::offsets`), so partitions' records stay in order. Its
    /// outcome goes back to the core when Kafka has them all (or one failed).
    fn write_checkpoint(&mut self, checkpoint: CheckpointId, writes: Vec<ChangelogWrite>) {
        let Some(handover) = self.handover.as_ref() else {
            return;
        };
        let producer = handover.producer().clone();
        let changelog = handover.changelog().to_owned();
        // A revoke of the partition waits until its records are queued, then delivered. The
        // blocking thread starts here, not in the task below: the revoke hook blocks this
        // loop's worker, which may be the runtime's only one.
        let queueing = handover.queueing(checkpoint.partition);
        let queued = tokio::task::spawn_blocking(move || {
            let queued =
                queue_changelog_writes(&producer, &changelog, checkpoint.partition, &writes);
            drop(queueing);
            queued
        });
        self.checkpoints.spawn(async move {
            let queued = queued.await;
            let Ok((deliveries, queued_all)) = queued else {
                tracing::error!(
                    partition = checkpoint.partition,
                    "the task queueing a checkpoint failed"
                );
                return (checkpoint, false);
            };
            let mut delivered = queued_all;
            for delivery in deliveries {
                delivered &= matches!(delivery.await, Ok(Ok(_)));
            }
            (checkpoint, delivered)
        });
    }

    fn set_fetching(&mut self, partitions: &[i32], fetching: bool) {
        self.set_fetching_traces(partitions, fetching);
        if let Some(repartition) = &self.repartition {
            repartition.set_fetching(partitions, fetching);
        }
    }

    /// Pauses or resumes these partitions of the traces topic only.
    fn set_fetching_traces(&mut self, partitions: &[i32], fetching: bool) {
        if partitions.is_empty() {
            return;
        }
        let mut list = TopicPartitionList::new();
        for partition in partitions {
            list.add_partition(&self.settings.kafka.topic, *partition);
        }
        let result = if fetching {
            self.source.consumer.resume(&list)
        } else {
            self.source.consumer.pause(&list)
        };
        // What the partitions read ahead waits in the group while they are paused (librdkafka
        // resumes after it), so that a pause bounds what reaches the core.
        if let Some(group) = self.group.as_mut() {
            group.set_paused(partitions, !fetching);
            self.group_ready |= fetching;
        }
        if let Err(error) = result {
            tracing::warn!(%error, fetching, "failed to pause or resume partitions");
        }
    }
}

/// Queues `writes` to `partition` of `changelog`, in order, until one is refused; returns
/// their deliveries and whether all were queued.
fn queue_changelog_writes(
    producer: &FutureProducer,
    changelog: &str,
    partition: i32,
    writes: &[ChangelogWrite],
) -> (Vec<DeliveryFuture>, bool) {
    let mut deliveries = Vec::with_capacity(writes.len());
    for write in writes {
        let (key, value) = (write.key(), write.value());
        let record = FutureRecord::to(changelog)
            .partition(partition)
            .key(key.as_str())
            .payload(value.as_slice());
        match producer.send_result(record) {
            Ok(delivery) => deliveries.push(delivery),
            Err((error, _)) => {
                tracing::error!(%error, partition, "failed to queue a changelog record");
                return (deliveries, false);
            }
        }
    }
    (deliveries, true)
}
