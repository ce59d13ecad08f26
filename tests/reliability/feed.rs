//! The traffic of a scenario: multi-turn chat sessions produced at a steady rate while the
//! scenario misbehaves, with the enrichment each trace must get.

use crate::chat_trace;
use crate::service::Expectations;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use trace_model::{Encoding, TraceEvent, TraceKind};

/// What to produce.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Session ids are `{prefix}-{n}`.
    pub prefix: String,
    pub num_sessions: usize,
    pub num_turns: usize,
    /// Traces per second; the whole feed takes `sessions × turns / rate` seconds.
    pub traces_per_sec: f64,
    /// Each session's turns go through producers that partition differently (CRC32 keyed,
    /// murmur2 keyed, no key), as when services in several languages serve one chat: its
    /// traces then reach their partition several ways and are merged there by event time.
    pub mixed: bool,
    /// Sessions end with a `session_end` event after their last turn, and have from 1 to
    /// `num_turns` turns, so that sessions close all through the feed.
    pub end_sessions: bool,
}

impl Plan {
    pub fn num_traces(&self) -> usize {
        (0..self.num_sessions)
            .map(|session| self.turns_of(session))
            .sum()
    }

    /// Session `{prefix}-{session}`'s number of turns.
    pub fn turns_of(&self, session: usize) -> usize {
        if self.end_sessions {
            1 + session % self.num_turns
        } else {
            self.num_turns
        }
    }

    pub fn session_id(&self, session: usize) -> String {
        format!("{}-{session}", self.prefix)
    }
}

/// A feed in progress.
#[derive(Debug)]
pub struct Feed {
    handle: JoinHandle<Fed>,
    produced: Arc<AtomicUsize>,
    pause: Arc<Pause>,
}

/// Holds the feed between two traces, every delivery settled.
#[derive(Debug, Default)]
struct Pause {
    wanted: AtomicBool,
    holding: AtomicBool,
}

/// A finished feed: what every trace's row must say, and what Kafka refused.
#[derive(Debug)]
pub struct Fed {
    pub expected: Expectations,
    /// Deliveries Kafka reported as failed: `expected` assumes every trace reached Kafka,
    /// so a scenario fails on any.
    pub num_failed: usize,
}

impl Feed {
    /// Produces the plan's traces turn by turn (every session's turn 1, then turn 2, ...), one
    /// event-time second apart per turn, keyed by session, with idempotent producers that keep
    /// each session's order through broker trouble. The first producer keeps librdkafka's
    /// default partitioner (CRC32), as a confluent-kafka service would: most sessions'
    /// partition by it is not their murmur2 one, so their traces reach the sessionizer through
    /// the repartition topic while the scenario crashes, rebalances or restarts the broker.
    /// With [`Plan::mixed`], turns rotate over it, a murmur2 producer and a keyless one.
    pub fn start(bootstrap: &str, topic: &str, plan: Plan) -> Feed {
        let bootstrap = bootstrap.to_owned();
        let producer = move |partitioner: Option<&str>| -> FutureProducer {
            let mut config = ClientConfig::new();
            config
                .set("bootstrap.servers", &bootstrap)
                .set("enable.idempotence", "true")
                .set("linger.ms", "5")
                // Rides out a broker restart: delivery is retried for up to five minutes.
                .set("message.timeout.ms", "300000");
            if let Some(partitioner) = partitioner {
                config.set("partitioner", partitioner);
            }
            config.create().expect("feed producer")
        };
        // (producer, keyed)
        let mixed = plan.mixed;
        let producers_for = move || {
            if mixed {
                vec![
                    (producer(None), true),
                    (producer(Some("murmur2_random")), true),
                    (producer(None), false),
                ]
            } else {
                vec![(producer(None), true)]
            }
        };
        let mut producers = producers_for();
        let topic = topic.to_owned();
        let produced = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&produced);
        let pause = Arc::new(Pause::default());
        let holder = Arc::clone(&pause);
        let handle = tokio::spawn(async move {
            let mut expected = Expectations::default();
            let mut pending = Vec::new();
            let mut num_failed = 0;
            let started = Instant::now();
            let base_ms = crate::now_ms();
            let mut index = 0_usize;
            // Sessions whose last turn went out two rounds ago: their end events go first in
            // this one, a second and a half of event time after that turn, once Kafka has the
            // turn (the user closed the chat a while after the answer came). An end event
            // sent before its last turn was appended could be read ahead of it in one
            // partition, and the sessionizer's event-time order is only as fine as what each
            // partition has read (docs/ARCHITECTURE.md, "Repartition").
            let mut ending: Vec<String> = Vec::new();
            let mut ended_last_round: Vec<String> = Vec::new();
            for turn in 1..=plan.num_turns as i64 + 2 {
                let end_at_ms = base_ms + (turn - 2) * 1000 + 500;
                if !ending.is_empty() {
                    num_failed += settle(&mut pending).await;
                }
                for session_id in ending.drain(..) {
                    let mut end = TraceEvent::new("session_end", end_at_ms);
                    end.kind = TraceKind::SessionEnd;
                    end.session_id = Some(session_id);
                    let payload = trace_model::encode(&end, Encoding::Avro).expect("encode");
                    let key = end.partition_key().unwrap_or_default();
                    let record = FutureRecord::to(&topic).payload(&payload).key(key);
                    // Through the keyed CRC32 producer: its partition is mostly not the
                    // session's, so the end event takes another way than some of its turns.
                    match producers[0].0.send_result(record) {
                        Ok(delivery) => pending.push(delivery),
                        Err((error, _)) => panic!("the feed's producer queue refused: {error}"),
                    }
                }
                ending.append(&mut ended_last_round);
                if turn > plan.num_turns as i64 {
                    continue;
                }
                for session in 0..plan.num_sessions {
                    let num_turns = plan.turns_of(session) as i64;
                    if turn > num_turns {
                        continue;
                    }
                    if holder.wanted.load(Ordering::SeqCst) {
                        num_failed += settle(&mut pending).await;
                        holder.holding.store(true, Ordering::SeqCst);
                        while holder.wanted.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        holder.holding.store(false, Ordering::SeqCst);
                        // Fresh producers: the test broker forgets idempotent producers when
                        // it restarts, which a producer with history takes as fatal.
                        producers = producers_for();
                    }
                    let tokens = (turn * 7 + session as i64) % 13 + 1;
                    let session_id = plan.session_id(session);
                    let event = chat_trace(
                        &format!("user-{}", session % 50),
                        &session_id,
                        turn,
                        tokens,
                        base_ms + turn * 1000,
                    );
                    let payload = trace_model::encode(&event, Encoding::Avro).expect("encode");
                    let (producer, keyed) = &producers[(session + turn as usize) % producers.len()];
                    let mut record = FutureRecord::to(&topic).payload(&payload);
                    if *keyed {
                        record = record.key(event.partition_key().unwrap_or_default());
                    }
                    match producer.send_result(record) {
                        Ok(delivery) => pending.push(delivery),
                        Err((error, _)) => panic!("the feed's producer queue refused: {error}"),
                    }
                    expected.produced(&event);
                    if plan.end_sessions && turn == num_turns {
                        ended_last_round.push(session_id);
                    }
                    index += 1;
                    counter.store(index, Ordering::Relaxed);
                    if pending.len() >= 1000 {
                        num_failed += settle(&mut pending).await;
                    }
                    let due = Duration::from_secs_f64(index as f64 / plan.traces_per_sec);
                    let elapsed = started.elapsed();
                    if due > elapsed + Duration::from_millis(20) {
                        tokio::time::sleep(due - elapsed).await;
                    }
                }
            }
            num_failed += settle(&mut pending).await;
            Fed {
                expected,
                num_failed,
            }
        });
        Feed {
            handle,
            produced,
            pause,
        }
    }

    /// Stops producing once every trace produced so far is acknowledged (the feed may have
    /// ended first).
    pub async fn pause(&self) {
        self.pause.wanted.store(true, Ordering::SeqCst);
        while !self.pause.holding.load(Ordering::SeqCst) && !self.handle.is_finished() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Produces on, through new producers.
    pub fn resume(&self) {
        self.pause.wanted.store(false, Ordering::SeqCst);
    }

    /// Traces handed to the producer so far.
    pub fn num_produced(&self) -> usize {
        self.produced.load(Ordering::Relaxed)
    }

    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Waits until every trace was produced and acknowledged by Kafka.
    pub async fn finish(self) -> Fed {
        self.handle.await.expect("the feed task")
    }
}

/// Awaits the deliveries; returns how many failed.
async fn settle(pending: &mut Vec<rdkafka::producer::DeliveryFuture>) -> usize {
    let mut num_failed = 0;
    for delivery in pending.drain(..) {
        if !matches!(delivery.await, Ok(Ok(_))) {
            num_failed += 1;
        }
    }
    num_failed
}
