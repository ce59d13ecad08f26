//! Where a read message goes: applied now, forwarded, or held until its turn among the
//! partition's inputs (`core::align`), then applied with the partition's next sequence.

use super::align::{Aligner, Input};
use super::effect::{Effect, ForwardedUpdate, Now, Received};
use super::merge::Stream;
use super::{CROSS_RELEASE_INTERVAL, Core};
use crate::batch::{Origin, Position};
use bytes::Bytes;
use trace_model::TraceEvent;
use trace_model::routing::route_key;

/// A message read and waiting to be applied (`core::align`), or applied at once.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) stream: Stream,
    pub(super) offset: i64,
    /// Where it was first read: its own position, or its forward's `first_read`.
    pub(super) read_at: Position,
    /// Set for a forward: the sender's position, recorded as applied when it is.
    pub(super) first_read: Option<Position>,
    pub(super) kafka_timestamp_ms: Option<i64>,
    pub(super) what: Apply,
}

#[derive(Debug)]
pub(super) enum Apply {
    /// Placed in its session window and shipped as a row.
    Trace {
        event: TraceEvent,
        pipeline_id: String,
    },
    /// A row update, sent once the messages applied before it settled.
    Update {
        event: TraceEvent,
        pipeline_id: String,
    },
    /// A trace read in place whose head ([`trace_model::Decoder::peek`]) was all its ordering
    /// and routing needed: decoded when applied, so that the alignment holds its bytes rather
    /// than its decoded form (held decoded traces went cold in the caches and cost about 2 us
    /// each when applied). `timestamp_ms`: its event time.
    Undecoded {
        timestamp_ms: i64,
        key: Option<Vec<u8>>,
        payload: Bytes,
    },
    /// Dead-lettered.
    Reject {
        reason: &'static str,
        description: String,
        key: Option<Vec<u8>>,
        payload: Vec<u8>,
    },
}

impl Core {
    /// Applies a message now, or holds it until its turn among the partition's inputs.
    pub(super) fn admit(
        &mut self,
        pending: Pending,
        received: Received<'_>,
        now: Now,
        out: &mut Vec<Effect>,
    ) {
        let partition = received.partition;
        let event_time = match &pending.what {
            Apply::Trace { event, .. } => Some(event.timestamp_ms),
            Apply::Undecoded { timestamp_ms, .. } => Some(*timestamp_ms),
            Apply::Update { .. } | Apply::Reject { .. } => None,
        };
        let (input, key) = match (pending.stream, pending.first_read) {
            // The sender's order key; a forward from before alignment has its event time.
            (Stream::Repartition, Some(first_read)) => (
                Input::From(first_read.partition),
                received.order_key_ms.or(event_time).unwrap_or(i64::MIN),
            ),
            (Stream::Traces, _) => {
                let key = match self.aligner_mut(partition) {
                    Some(aligner) => {
                        aligner.advance_in_place(event_time.unwrap_or(i64::MIN), now.instant)
                    }
                    None => event_time.unwrap_or(i64::MIN),
                };
                if let Apply::Trace { event, .. } = &pending.what
                    && let Some((to_partition, reason)) =
                        self.belongs_elsewhere(route_key(event), received)
                {
                    // Forwards leave in the order they were read, held back by nothing here.
                    if let Some(sequence) =
                        self.offsets.read(partition, Stream::Traces, pending.offset)
                    {
                        let origin = self.origin_of(partition, sequence, &pending);
                        self.forward(event, received, origin, (to_partition, reason), key, out);
                    }
                    return;
                }
                if let Apply::Reject { .. } = pending.what
                    && self
                        .aligner_mut(partition)
                        .is_none_or(|aligner| aligner.num_held_in_place() == 0)
                {
                    // Nothing of the partition's state depends on where it goes. Behind the
                    // partition's own traces still held it waits its turn, so that dead letters
                    // keep the order they were read in (a held trace may be one that fails to
                    // decode when applied).
                    self.apply(partition, pending, now, out);
                    return;
                }
                (Input::InPlace, key)
            }
            // Not a forward of ours: nothing to order it by.
            (Stream::Repartition, None) => {
                self.apply(partition, pending, now, out);
                return;
            }
        };
        if self.aligner_mut(partition).is_none() {
            self.apply(partition, pending, now, out);
            return;
        }
        self.offsets.hold(partition, pending.stream, pending.offset);
        let appended_ms = pending.kafka_timestamp_ms;
        if let Some(aligner) = self.aligner_mut(partition) {
            aligner.push(input, (key, appended_ms), pending, now.instant);
        }
        self.release(partition, now, out);
    }

    fn aligner_mut(&mut self, partition: i32) -> Option<&mut Aligner<Pending>> {
        self.owned.get_mut(&partition)?.aligner.as_mut()
    }

    /// Applies what the partition's aligner lets go now.
    pub(super) fn release(&mut self, partition: i32, now: Now, out: &mut Vec<Effect>) {
        self.follow_local(partition, now);
        let mut ready = Vec::new();
        let Some(aligner) = self.aligner_mut(partition) else {
            return;
        };
        let forced = aligner.release(now.instant, &mut ready).forced;
        if forced > 0 {
            self.metrics.alignment_forced.inc_by(forced as u64);
        }
        for pending in ready {
            self.apply(partition, pending, now, out);
        }
        self.throttle(partition, now, out);
    }

    /// Releases what the other partitions owned here hold, after `partition` read on: at
    /// most every `CROSS_RELEASE_INTERVAL` (each release looks at every partition owned
    /// here), and on every tick.
    pub(super) fn release_others(&mut self, partition: i32, now: Now, out: &mut Vec<Effect>) {
        if self.owned.len() < 2
            || now
                .instant
                .saturating_duration_since(self.last_cross_release)
                < CROSS_RELEASE_INTERVAL
        {
            return;
        }
        self.last_cross_release = now.instant;
        let holding: Vec<i32> = self
            .owned
            .iter()
            .filter(|(other, owned)| {
                **other != partition && owned.aligner.as_ref().is_some_and(|a| a.num_held() > 0)
            })
            .map(|(other, _)| *other)
            .collect();
        for other in holding {
            self.release(other, now, out);
        }
    }

    /// Raises the inputs of `partition` from the other partitions owned here to their
    /// progress now, as their next marker would (a marker's delay is most of a trace's wait).
    /// Only once `partition` has read a marker of the sender's current ownership and every
    /// forward this ownership sent it. Forwards an earlier ownership in this process sent are
    /// before that marker (one producer, in order); those of an owner in another process are
    /// before it too, except ones still landing after its revoke, which this ownership read
    /// again and forwards again, so their second copy is the one applied (the duplicate check
    /// skips whichever comes later).
    fn follow_local(&mut self, partition: i32, now: Now) {
        let Some(owned) = self.owned.get(&partition) else {
            return;
        };
        let Some(aligner) = owned.aligner.as_ref().filter(|a| a.num_held() > 0) else {
            return;
        };
        let progress: Vec<(i32, Option<i64>, Option<i64>)> = self
            .owned
            .iter()
            .filter(|(from, sender)| {
                **from != partition
                    && aligner.epoch(**from) == Some(sender.epoch)
                    && sender.forwards_sent.get(&partition).is_none_or(|sent| {
                        owned.forwarded.get(from).is_some_and(|read| read >= sent)
                    })
            })
            .filter_map(|(from, sender)| {
                let bound = sender.aligner.as_ref()?.in_place_bound();
                Some((*from, bound, sender.read_through_ms))
            })
            .collect();
        if let Some(aligner) = self.aligner_mut(partition) {
            for (from, bound, read_through_ms) in progress {
                aligner.marker(from, bound, read_through_ms, now.instant);
            }
        }
    }

    fn origin_of(&self, partition: i32, sequence: i64, pending: &Pending) -> Origin {
        Origin {
            partition,
            sequence,
            read_at: pending.read_at,
            kafka_timestamp_ms: pending.kafka_timestamp_ms,
        }
    }

    /// Applies a message: it takes the partition's next sequence.
    fn apply(&mut self, partition: i32, mut pending: Pending, now: Now, out: &mut Vec<Effect>) {
        let Some(sequence) = self.offsets.read(partition, pending.stream, pending.offset) else {
            return;
        };
        if let Apply::Undecoded { key, payload, .. } = &pending.what {
            let decoded = self.decoder.decode(payload);
            let what = self.classify(
                decoded,
                (key.as_deref(), payload),
                (partition, pending.offset),
            );
            pending.what = what;
        }
        if let (Some(first_read), Some(journal)) = (
            pending.first_read,
            self.owned
                .get_mut(&partition)
                .and_then(|owned| owned.journal.as_mut()),
        ) {
            journal.record_forward(sequence, first_read.partition, first_read.offset);
        }
        let origin = self.origin_of(partition, sequence, &pending);
        match pending.what {
            Apply::Trace { event, pipeline_id } => {
                self.place(
                    &event,
                    &pipeline_id,
                    origin,
                    (pending.stream, pending.offset),
                    now,
                    out,
                );
            }
            Apply::Update { event, pipeline_id } => {
                self.offsets.track(partition, sequence, 1);
                self.forwarded_updates.push(ForwardedUpdate {
                    origin,
                    pipeline_id,
                    event,
                });
            }
            Apply::Reject {
                reason,
                description,
                key,
                payload,
            } => self.reject(origin, reason, description, key, payload, out),
            // Decoded above.
            Apply::Undecoded { .. } => {}
        }
    }
}

/// A message that cannot become a row, to be dead-lettered with its key and payload.
pub(super) fn rejected(
    (key, payload): (Option<&[u8]>, &[u8]),
    reason: &'static str,
    description: String,
) -> Apply {
    Apply::Reject {
        reason,
        description,
        key: key.map(<[u8]>::to_vec),
        payload: payload.to_vec(),
    }
}
