//! The producer helpers against a real broker: every trace arrives, keyed by session (user
//! when there is no session), each session in one partition and in order.

use end_to_end::{ReadRecord, bootstrap, create_topic, read_topic, unique_name};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;
use trace_emit::{CollectingSink, Emitter, EmitterConfig, trace, with_user_session};
use trace_model::{Decoder, Encoding, Limits, TraceEvent};

const PARTITIONS: i32 = 3;

/// Traces of `num_sessions` sessions, `turns` each, produced through the real helpers, plus
/// traces with a user and no session and traces with neither.
async fn chat_workload(num_sessions: usize, turns: usize) -> Vec<TraceEvent> {
    let sink = CollectingSink::new();
    let mut tasks = Vec::new();
    for session in 0..num_sessions {
        let sink = sink.clone();
        let user = format!("user-{}", session % 7);
        let session_id = format!("session-{session}");
        tasks.push(tokio::spawn(async move {
            with_user_session(Some(&user), Some(&session_id), async {
                for turn in 0..turns {
                    trace("chat")
                        .input("user_message", format!("question {turn}"))
                        .metadata("turn", turn)
                        .sink(sink.clone())
                        .run(async {
                            trace("retrieve")
                                .step_type(trace_emit::RETRIEVER)
                                .run(async { vec!["doc"] })
                                .await;
                            tokio::task::yield_now().await;
                            format!("answer {turn}")
                        })
                        .await;
                }
            })
            .await;
        }));
    }
    for task in tasks {
        task.await.expect("workload task");
    }
    for turn in 0..turns {
        with_user_session(Some("lonely-user"), None, async {
            trace("chat")
                .metadata("turn", turn)
                .sink(sink.clone())
                .run(async { "no session" })
                .await;
        })
        .await;
        trace("anonymous")
            .metadata("turn", turn)
            .sink(sink.clone())
            .run(async { "no ids" })
            .await;
    }
    sink.take()
}

fn turn_of(event: &TraceEvent) -> u64 {
    event.metadata["turn"].as_u64().expect("turn metadata")
}

fn decode_all(records: &[ReadRecord]) -> Vec<(ReadRecord, TraceEvent)> {
    let decoder = Decoder::new(Limits::default());
    records
        .iter()
        .map(|record| {
            let event = decoder.decode(&record.payload).expect("decodes");
            (record.clone(), event)
        })
        .collect()
}

async fn emits_every_trace_keyed_and_in_order(encoding: Encoding) {
    let bootstrap = bootstrap();
    let topic = unique_name("traces");
    create_topic(&bootstrap, &topic, PARTITIONS).await;
    let events = chat_workload(40, 10).await;
    let registry = prometheus::Registry::new();
    let mut config = EmitterConfig::new(&bootstrap, &topic);
    config.encoding = encoding;
    let emitter = Emitter::try_new(config, &registry).expect("emitter");
    for event in &events {
        assert!(
            emitter.emit(event.clone()),
            "queue has room for the workload"
        );
    }
    emitter.flush(Duration::from_secs(60)).expect("flush");

    let records = read_topic(
        &bootstrap,
        &topic,
        PARTITIONS,
        events.len(),
        Duration::from_secs(60),
    );
    assert_eq!(records.len(), events.len(), "every trace is on the topic");
    let decoded = decode_all(&records);

    let sent: HashMap<&str, &TraceEvent> = events
        .iter()
        .map(|event| (event.inference_id.as_deref().expect("id"), event))
        .collect();
    let mut seen = HashSet::new();
    for (record, event) in &decoded {
        let id = event.inference_id.as_deref().expect("id");
        assert!(seen.insert(id.to_owned()), "trace {id} arrived once");
        assert_eq!(sent[id], event, "trace arrives unchanged");
        let expected_key = event.session_id.as_deref().or(event.user_id.as_deref());
        assert_eq!(
            record.key.as_deref(),
            expected_key.map(str::as_bytes),
            "key is the session id, else the user id"
        );
    }

    // Each key lives in one partition, and within it turns arrive in the order emitted.
    let mut by_key: BTreeMap<Vec<u8>, Vec<(i32, i64, u64)>> = BTreeMap::new();
    for (record, event) in &decoded {
        if let Some(key) = &record.key {
            by_key.entry(key.clone()).or_default().push((
                record.partition,
                record.offset,
                turn_of(event),
            ));
        }
    }
    assert_eq!(by_key.len(), 41, "40 sessions and one session-less user");
    let mut partitions_used = HashSet::new();
    for (key, mut positions) in by_key {
        let partitions: HashSet<i32> = positions.iter().map(|(partition, ..)| *partition).collect();
        assert_eq!(partitions.len(), 1, "key {key:?} stays in one partition");
        assert!(
            partitions.contains(&trace_model::routing::partition_for(&key, PARTITIONS)),
            "key {key:?} is in its murmur2 partition (the sessionizer's routing function)"
        );
        partitions_used.extend(partitions);
        positions.sort_by_key(|(_, offset, _)| *offset);
        let turns: Vec<u64> = positions.iter().map(|(.., turn)| *turn).collect();
        assert_eq!(
            turns,
            (0..10).collect::<Vec<_>>(),
            "key {key:?} keeps order"
        );
    }
    assert_eq!(
        partitions_used.len(),
        PARTITIONS as usize,
        "sessions spread over all partitions"
    );

    let metrics = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .expect("metrics");
    let delivered = format!("trace_emit_events_delivered_total {}", events.len());
    assert!(metrics.contains(&delivered), "{metrics}");
    assert!(
        metrics.contains("trace_emit_events_dropped_total{reason=\"queue_full\"} 0"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emits_every_avro_trace_keyed_by_session_in_order_across_partitions() {
    emits_every_trace_keyed_and_in_order(Encoding::Avro).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emits_every_json_trace_keyed_by_session_in_order_across_partitions() {
    emits_every_trace_keyed_and_in_order(Encoding::Json).await;
}
