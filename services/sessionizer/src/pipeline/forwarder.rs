//! Forwards and markers to the repartition topic, through one idempotent producer, so that
//! a partition's forwards reach their destination in order and without gaps (the destination
//! recognises a forward sent again by its first-read offset, `core::message`).
//!
//! librdkafka's gapless guarantee stops the producer rather than let a later forward pass an
//! earlier one that failed, e.g. when a broker lost the producer's sequence state in a
//! restart. The forwarder then recovers instead of ending the run: it waits until every
//! forward in flight has reported, makes a new producer, and sends the undelivered forwards
//! again, in the order they were read, before any newer one. A forward that had landed after
//! all is recognised as a duplicate where it lands. A stopped producer never reports on the
//! forwards it still holds (they never time out), so once it is found stopped, they count as
//! undelivered.

use crate::core::{Forward, Marker};
use crate::source::kafka::{FIRST_READ_OFFSET_HEADER, FIRST_READ_PARTITION_HEADER, KafkaSettings};
use crate::source::repartition::{
    MARKER_BOUND_HEADER, MARKER_EPOCH_HEADER, MARKER_FROM_HEADER, MARKER_READ_THROUGH_HEADER,
    ORDER_KEY_HEADER, create_forward_producer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// What became of a forward.
#[derive(Debug)]
pub(super) enum Outcome {
    /// Kafka has it: its message may settle.
    Delivered(Forward),
    /// It cannot be sent, not even through a new producer: the run must end.
    Failed(KafkaError),
}

/// The sender of forwards and markers; see the module docs.
pub(super) struct Forwarder {
    kafka: KafkaSettings,
    topic: String,
    num_partitions: i32,
    producer: FutureProducer,
    /// Set once `producer` is found stopped: its forwards in flight stop waiting.
    stopped: watch::Sender<bool>,
    in_flight: JoinSet<(Forward, bool)>,
    /// Set while recovering: the forwards to send through the next producer, undelivered
    /// ones and newer ones alike.
    waiting: Option<Vec<Forward>>,
    /// A recovery that failed after the last forward in flight was delivered: reported by
    /// the next [`Forwarder::next`].
    failed: Option<KafkaError>,
    /// Producers made after a fatal error, for the log.
    num_recoveries: u64,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Forwarder")
            .field("topic", &self.topic)
            .field("in_flight", &self.in_flight.len())
            .field("recovering", &self.waiting.is_some())
            .finish_non_exhaustive()
    }
}

impl Forwarder {
    /// # Errors
    /// Invalid librdkafka settings.
    pub(super) fn try_new(
        kafka: &KafkaSettings,
        topic: &str,
        num_partitions: i32,
    ) -> Result<Self, KafkaError> {
        Ok(Forwarder {
            producer: create_forward_producer(kafka)?,
            stopped: watch::Sender::new(false),
            kafka: kafka.clone(),
            topic: topic.to_owned(),
            num_partitions,
            in_flight: JoinSet::new(),
            waiting: None,
            failed: None,
            num_recoveries: 0,
        })
    }

    /// Whether forwards are in flight, or a failure waits to be reported (both come from
    /// [`Forwarder::next`]).
    pub(super) fn has_in_flight(&self) -> bool {
        !self.in_flight.is_empty() || self.failed.is_some()
    }

    /// Stops waiting for the forwards in flight (the drain's deadline passed).
    pub(super) fn abort_all(&mut self) {
        self.in_flight.abort_all();
    }

    /// Sends a forward (after the undelivered ones, while recovering).
    pub(super) fn send(&mut self, forward: Forward) -> Option<Outcome> {
        if let Some(waiting) = self.waiting.as_mut() {
            waiting.push(forward);
            return None;
        }
        match self.enqueue(&forward) {
            Ok(delivery) => {
                self.await_delivery(forward, delivery);
                None
            }
            Err(error) => {
                tracing::warn!(%error, "the forward producer refused a forward; recovering");
                self.waiting = Some(vec![forward]);
                self.stop_waiting_if_stopped();
                self.recover_when_settled()
            }
        }
    }

    /// Announces a partition's progress to every other partition of the topic, after the
    /// forwards sent before it. Dropped while recovering: a marker only lets the others go on
    /// sooner, and the next one says more.
    pub(super) fn send_marker(&mut self, marker: Marker) -> Option<Outcome> {
        if self.waiting.is_some() {
            return None;
        }
        let from = marker.from.to_string();
        let bound = marker.bound_ms.map(|bound| bound.to_string());
        let read_through = marker.read_through_ms.map(|through| through.to_string());
        let epoch = marker.epoch.map(|epoch| epoch.to_string());
        for partition in (0..self.num_partitions).filter(|partition| *partition != marker.from) {
            let mut headers = OwnedHeaders::new_with_capacity(4).insert(Header {
                key: MARKER_FROM_HEADER,
                value: Some(from.as_str()),
            });
            if let Some(read_through) = &read_through {
                headers = headers.insert(Header {
                    key: MARKER_READ_THROUGH_HEADER,
                    value: Some(read_through.as_str()),
                });
            }
            if let Some(bound) = &bound {
                headers = headers.insert(Header {
                    key: MARKER_BOUND_HEADER,
                    value: Some(bound.as_str()),
                });
            }
            if let Some(epoch) = &epoch {
                headers = headers.insert(Header {
                    key: MARKER_EPOCH_HEADER,
                    value: Some(epoch.as_str()),
                });
            }
            let record = FutureRecord::<(), ()>::to(&self.topic)
                .partition(partition)
                .headers(headers);
            // Its delivery is not awaited: a failure stops the producer, and the forwards
            // after it recover.
            if let Err((error, _)) = self.producer.send_result(record) {
                // A stopped producer: recover, or no marker would get through again.
                tracing::debug!(%error, partition, "failed to queue a marker");
                self.waiting.get_or_insert_with(Vec::new);
                self.stop_waiting_if_stopped();
                return self.recover_when_settled();
            }
        }
        None
    }

    /// The next forward delivered (or the failure that ends the run). Cancel-safe: waits only
    /// in [`JoinSet::join_next`].
    pub(super) async fn next(&mut self) -> Option<Outcome> {
        if let Some(error) = self.failed.take() {
            return Some(Outcome::Failed(error));
        }
        loop {
            let (forward, delivered) = match self.in_flight.join_next().await? {
                Ok(outcome) => outcome,
                Err(error) => {
                    // Only a panicked task gets here, and its forward is gone with it.
                    tracing::error!(%error, "forward task failed");
                    return Some(Outcome::Failed(KafkaError::Canceled));
                }
            };
            if delivered {
                // A refused send (a full queue) waits for what was in flight: if that was the
                // last, the recovery starts now, or nothing would send again.
                if self.waiting.is_some()
                    && let Some(Outcome::Failed(error)) = self.recover_when_settled()
                {
                    self.failed = Some(error);
                }
                return Some(Outcome::Delivered(forward));
            }
            self.waiting.get_or_insert_with(Vec::new).push(forward);
            if let Some(outcome) = self.recover_when_settled() {
                return Some(outcome);
            }
        }
    }

    /// Reports `forward` once Kafka has it, or as undelivered once the producer is found
    /// stopped.
    fn await_delivery(&mut self, forward: Forward, delivery: DeliveryFuture) {
        let mut stopped = self.stopped.subscribe();
        self.in_flight.spawn(async move {
            tokio::select! {
                delivery = delivery => (forward, matches!(delivery, Ok(Ok(_)))),
                _ = stopped.wait_for(|stopped| *stopped) => (forward, false),
            }
        });
    }

    /// A producer stopped by a fatal error reports nothing more: what it holds in flight is
    /// undelivered.
    fn stop_waiting_if_stopped(&self) {
        if let Some((code, reason)) = self.producer.client().fatal_error() {
            tracing::warn!(?code, reason, "the forward producer stopped");
            self.stopped.send_replace(true);
        }
    }

    /// Once nothing is in flight any more, sends what waits through a new producer.
    fn recover_when_settled(&mut self) -> Option<Outcome> {
        if !self.in_flight.is_empty() {
            return None;
        }
        let mut waiting = self.waiting.take()?;
        // In the order they were read, per partition they were read in: the order the
        // destination's duplicate check relies on.
        waiting.sort_by_key(|forward| {
            (
                forward.origin.read_at.partition,
                forward.origin.read_at.offset,
            )
        });
        self.num_recoveries += 1;
        tracing::warn!(
            undelivered = waiting.len(),
            recoveries = self.num_recoveries,
            topic = self.topic,
            "the forward producer failed; sending the undelivered forwards again through a new one"
        );
        self.producer = match create_forward_producer(&self.kafka) {
            Ok(producer) => producer,
            Err(error) => return Some(Outcome::Failed(error)),
        };
        self.stopped = watch::Sender::new(false);
        for forward in waiting {
            match self.enqueue(&forward) {
                Ok(delivery) => self.await_delivery(forward, delivery),
                Err(error) => return Some(Outcome::Failed(error)),
            }
        }
        None
    }

    /// Queues a forward: its payload unchanged, with headers naming where it was first read
    /// (its derived id and dead letters use them) and its order key.
    fn enqueue(&self, forward: &Forward) -> Result<DeliveryFuture, KafkaError> {
        let partition = forward.origin.read_at.partition.to_string();
        let offset = forward.origin.read_at.offset.to_string();
        let order_key = forward.order_key_ms.to_string();
        let headers = OwnedHeaders::new_with_capacity(3)
            .insert(Header {
                key: FIRST_READ_PARTITION_HEADER,
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: FIRST_READ_OFFSET_HEADER,
                value: Some(offset.as_str()),
            })
            .insert(Header {
                key: ORDER_KEY_HEADER,
                value: Some(order_key.as_str()),
            });
        let mut record = FutureRecord::to(&self.topic)
            .partition(forward.to_partition)
            .key(forward.key.as_str())
            .payload(forward.payload.as_slice())
            .headers(headers);
        if let Some(timestamp_ms) = forward.origin.kafka_timestamp_ms {
            record = record.timestamp(timestamp_ms);
        }
        self.producer
            .send_result(record)
            .map_err(|(error, _)| error)
    }
}
