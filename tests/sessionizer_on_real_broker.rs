//! The sessionizer pipeline end to end: traces produced through the helpers to the real
//! broker, consumed as a group, sessionized, enriched and shipped to a local
//! Openlayer-compatible server that checks every request.

use end_to_end::{
    ReadRecord, ServiceTopics, bootstrap, chat_trace, create_service_topics, now_ms, produce,
    produce_trace, producer, read_topic, start, unique_name,
};
use fakes::openlayer::{Fault, OpenlayerServer};
use fakes::schema_registry::RegistryServer;
use rdkafka::producer::FutureProducer;
use serde_json::Value;
use sessionizer::config::SessionizerConfig;
use sessionizer::metrics::sample_sum;
use sessionizer::secret::Secret;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use trace_model::{Encoding, TraceEvent, TraceKind};

const PARTITIONS: i32 = 3;
const API_KEY: &str = "test-key-not-a-secret";
const PIPELINE: &str = "pipeline-main";

/// The service's defaults with this test's topics and server, short windows and a short group
/// session timeout; tests change it further before [`start`] validates it, as the service does.
fn service_config(topics: &ServiceTopics, server: &OpenlayerServer) -> SessionizerConfig {
    let mut config = SessionizerConfig::default();
    config.kafka.bootstrap_servers = bootstrap();
    config.kafka.group_id = unique_name("sessionizer");
    config.kafka.topic.clone_from(&topics.traces);
    config
        .kafka
        .dead_letter_topic
        .clone_from(&topics.dead_letters);
    config.kafka.sessions_topic.clone_from(&topics.sessions);
    config.kafka.changelog_topic.clone_from(&topics.changelog);
    // Short: the test broker holds each JoinGroup for half of it.
    config.kafka.session_timeout_ms = 6000;
    config.kafka.checkpoint_interval_ms = 200;
    config.session.gap_secs = 3;
    config.session.user_gap_secs = 3;
    config.session.max_duration_secs = 3600;
    config.session.grace_secs = 60;
    config.session.idle_check_ms = 200;
    config.batch.max_rows = 50;
    config.batch.max_bytes = 1024 * 1024;
    config.batch.linger_ms = 100;
    config.batch.max_in_flight_requests = 2;
    config.batch.max_unacked_rows = 10_000;
    config.openlayer.base_url = Some(server.base_url());
    config.openlayer.api_key = Some(Secret::new(API_KEY));
    config.openlayer.default_pipeline_id = Some(PIPELINE.to_owned());
    config.openlayer.request_timeout_secs = 10;
    config.openlayer.initial_backoff_ms = 20;
    config.openlayer.max_backoff_ms = 200;
    config.openlayer.mark_final_turn = true;
    // Below the session timeout, as validation requires.
    config.shutdown.drain_timeout_secs = 5;
    config
}

/// The arrange step every test starts with: fresh topics, an Openlayer-compatible server
/// that accepts [`API_KEY`] and a producer.
async fn arrange() -> (ServiceTopics, OpenlayerServer, FutureProducer) {
    let topics = create_service_topics("", PARTITIONS).await;
    (topics, OpenlayerServer::start(API_KEY).await, producer())
}

/// What one run of the pipeline left behind.
struct Outcome {
    /// Rows the server accepted.
    rows: Vec<Value>,
    /// Records read back from a topic while the pipeline still ran.
    records: Vec<ReadRecord>,
    registry: prometheus::Registry,
}

/// The act of most tests: runs the pipeline `config` describes until `server` accepted
/// `num_rows` rows and, when `read_back` names a one-partition topic, that many records can
/// be read from it (a minute at most each); then stops it.
async fn run_until_rows(
    config: SessionizerConfig,
    server: &OpenlayerServer,
    num_rows: usize,
    read_back: Option<(&str, usize)>,
) -> Outcome {
    let running = start(config);
    let rows = server
        .wait_for_rows(num_rows, Duration::from_secs(60))
        .await;
    let records = read_back.map_or_else(Vec::new, |(topic, count)| {
        read_topic(&bootstrap(), topic, 1, count, Duration::from_secs(60))
    });
    let registry = running.stop().await;
    Outcome {
        rows,
        records,
        registry,
    }
}

fn by_inference_id(rows: &[Value]) -> HashMap<String, Value> {
    rows.iter()
        .map(|row| {
            (
                row["inferenceId"].as_str().expect("id").to_owned(),
                row.clone(),
            )
        })
        .collect()
}

/// Emits `turns` chat traces for each of `num_sessions` sessions through the producer helpers
/// (context scope, traced function with nested steps, Kafka emitter), one turn a second of
/// event time apart, and returns the traces as emitted.
async fn emit_chats_through_helpers(
    topic: &str,
    num_sessions: usize,
    turns: i64,
) -> Vec<TraceEvent> {
    let registry = prometheus::Registry::new();
    let emitter = trace_emit::Emitter::try_new(
        trace_emit::EmitterConfig::new(bootstrap(), topic),
        &registry,
    )
    .expect("emitter");
    let collected = trace_emit::CollectingSink::new();
    for session in 0..num_sessions {
        let user = format!("user-{}", session % 4);
        let session_id = format!("session-{session}");
        trace_emit::with_user_session(Some(&user), Some(&session_id), async {
            for turn in 1..=turns {
                trace_emit::trace("chat")
                    .input("user_message", format!("question {turn}"))
                    .inference_id(format!("{session_id}-turn-{turn}"))
                    .sink(collected.clone())
                    .run(async {
                        trace_emit::trace("retrieve")
                            .step_type(trace_emit::RETRIEVER)
                            .run(async { vec!["a document"] })
                            .await;
                        trace_emit::trace("complete")
                            .step_type(trace_emit::CHAT_COMPLETION)
                            .run(async {
                                trace_emit::record_usage(trace_emit::Usage::tokens(
                                    7 * turn,
                                    3 * turn,
                                ))
                                .expect("inside a trace");
                                format!("answer {turn}")
                            })
                            .await
                    })
                    .await;
            }
        })
        .await;
    }
    let mut events = collected.take();
    // One second of event time between turns, so the expected timings are exact.
    let base = now_ms();
    for event in &mut events {
        let id = event.inference_id.clone().expect("id");
        let turn: i64 = id
            .rsplit('-')
            .next()
            .expect("turn")
            .parse()
            .expect("number");
        event.timestamp_ms = base + turn * 1000;
        assert!(emitter.emit(event.clone()));
    }
    emitter.flush(Duration::from_secs(30)).expect("flush");
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ships_every_trace_once_with_session_enrichment() {
    let (topics, server, producer) = arrange().await;
    // Openlayer misbehaves first: rows must still arrive, once each.
    server.push_fault(Fault::Status(503));
    server.push_fault(Fault::RateLimitedMs(200));
    server.push_fault(Fault::Status(500));
    let expected = emit_chats_through_helpers(&topics.traces, 12, 5).await;
    let base = now_ms();
    let mut anonymous = TraceEvent::new("anonymous", base);
    anonymous.inference_id = Some("no-ids".into());
    anonymous.output = Value::from("hello");
    produce_trace(&producer, &topics.traces, &anonymous).await;

    let Outcome { rows, registry, .. } =
        run_until_rows(service_config(&topics, &server), &server, 61, None).await;

    assert_eq!(rows.len(), 61, "every trace shipped once");
    let rows = by_inference_id(&rows);
    assert_eq!(rows.len(), 61, "no inference id shipped twice");
    for event in &expected {
        let id = event.inference_id.as_deref().expect("id");
        let row = &rows[id];
        let turn = id
            .rsplit('-')
            .next()
            .expect("turn")
            .parse::<i64>()
            .expect("number");
        assert_eq!(row["session_turn"], turn, "{row}");
        assert_eq!(
            row["session_id"],
            event.session_id.as_deref().expect("session")
        );
        assert_eq!(row["user_id"], event.user_id.as_deref().expect("user"));
        assert_eq!(row["user_message"], format!("question {turn}"));
        assert_eq!(
            row["session_tokens_so_far"],
            (1..=turn).map(|t| 10 * t).sum::<i64>()
        );
        assert_eq!(row["seconds_since_session_start"], (turn - 1) as f64);
        if turn == 1 {
            assert_eq!(row["previous_inference_id"], Value::Null);
        } else {
            let session = event.session_id.as_deref().expect("session");
            assert_eq!(
                row["previous_inference_id"],
                format!("{session}-turn-{}", turn - 1)
            );
            assert_eq!(row["seconds_since_previous_turn"], 1.0);
        }
    }
    assert!(
        rows["no-ids"].get("session_turn").is_none(),
        "passthrough row is not enriched"
    );

    for request in server
        .requests()
        .into_iter()
        .filter(|request| request.accepted())
    {
        assert_eq!(request.pipeline_id, PIPELINE);
        let config = request.config.expect("config");
        assert_eq!(config["inferenceIdColumnName"], "inferenceId");
        assert_eq!(config["timestampColumnName"], "inferenceTimestamp");
        if request
            .rows
            .iter()
            .any(|row| row.get("session_id").is_some())
        {
            assert_eq!(config["sessionIdColumnName"], "session_id");
            assert_eq!(config["userIdColumnName"], "user_id");
        }
    }
    let metrics = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .expect("metrics");
    assert!(
        metrics.contains("sessionizer_rows_shipped_total 61"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sessionizer_events_consumed_total 61"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_poison_messages_with_reasons_while_good_ones_flow() {
    let (topics, server, producer) = arrange().await;
    let base = now_ms();
    let good = chat_trace("ana", "poison-test", 1, 10, base);
    let valid = trace_model::encode(&good, Encoding::Avro).expect("encode");
    let mut too_long_user = chat_trace(&"u".repeat(201), "poison-test", 2, 20, base);
    too_long_user.inference_id = Some("long-user".into());
    let poison: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", valid[..valid.len() / 2].to_vec()),
        ("unknown_framing", b"\x42not a trace".to_vec()),
        ("invalid_utf8", b"{\"name\": \"\xff\xfe\"}".to_vec()),
        ("json_shape", b"{\"name\": 5}".to_vec()),
        (
            "id_too_long",
            trace_model::encode(&too_long_user, Encoding::Json).expect("encode"),
        ),
    ];
    produce(&producer, &topics.traces, Some("poison-test"), &valid).await;
    for (_, payload) in &poison {
        produce(&producer, &topics.traces, Some("poison-test"), payload).await;
    }
    let mut after = chat_trace("ana", "poison-test", 3, 30, base + 1000);
    after.inference_id = Some("after-poison".into());
    produce_trace(&producer, &topics.traces, &after).await;

    let config = service_config(&topics, &server);
    let read_back = Some((topics.dead_letters.as_str(), poison.len()));
    let Outcome {
        rows,
        records: letters,
        ..
    } = run_until_rows(config, &server, 2, read_back).await;

    let ids: HashSet<&str> = rows
        .iter()
        .filter_map(|row| row["inferenceId"].as_str())
        .collect();
    assert_eq!(ids, HashSet::from(["poison-test-turn-1", "after-poison"]));
    assert_eq!(
        letters.len(),
        poison.len(),
        "every poison message dead-lettered"
    );
    for ((reason, payload), letter) in poison.iter().zip(&letters) {
        assert_eq!(letter.header("error.reason").as_deref(), Some(*reason));
        assert_eq!(letter.header("error.stage").as_deref(), Some("decode"));
        assert_eq!(
            letter.header("source.topic").as_deref(),
            Some(topics.traces.as_str())
        );
        assert!(letter.header("source.offset").is_some());
        assert_eq!(&letter.payload, payload, "original bytes kept");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_rows_openlayer_refuses_and_ships_the_rest() {
    let (topics, server, producer) = arrange().await;
    server.reject_inference_id("refused-turn-2");
    let base = now_ms();
    for turn in 1..=3 {
        produce_trace(
            &producer,
            &topics.traces,
            &chat_trace("ben", "refused", turn, 10 * turn, base + turn),
        )
        .await;
    }
    let mut config = service_config(&topics, &server);
    // One row per request, so only the refused row is refused.
    config.batch.max_rows = 1;
    let read_back = Some((topics.dead_letters.as_str(), 1));
    let Outcome {
        rows,
        records: letters,
        ..
    } = run_until_rows(config, &server, 2, read_back).await;

    let ids: HashSet<&str> = rows
        .iter()
        .filter_map(|row| row["inferenceId"].as_str())
        .collect();
    assert_eq!(ids, HashSet::from(["refused-turn-1", "refused-turn-3"]));
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].header("error.stage").as_deref(), Some("sink"));
    assert_eq!(letters[0].header("http.status").as_deref(), Some("400"));
    let row: Value = serde_json::from_slice(&letters[0].payload).expect("row json");
    assert_eq!(row["inferenceId"], "refused-turn-2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_pipelines_apart_and_closes_sessions_by_end_event_and_idleness() {
    let (topics, server, producer) = arrange().await;
    let base = now_ms();
    let mut ended = chat_trace("cy", "ended", 1, 10, base);
    ended.pipeline_id = Some("pipeline-other".into());
    produce_trace(&producer, &topics.traces, &ended).await;
    let mut end = TraceEvent::new("session_end", base + 10);
    end.kind = TraceKind::SessionEnd;
    end.session_id = Some("ended".into());
    end.pipeline_id = Some("pipeline-other".into());
    produce_trace(&producer, &topics.traces, &end).await;
    produce_trace(
        &producer,
        &topics.traces,
        &chat_trace("dee", "quiet", 1, 10, base),
    )
    .await;

    // The quiet session closes a gap (3 s) after its trace on the wall clock.
    let read_back = Some((topics.sessions.as_str(), 2));
    let mut config = service_config(&topics, &server);
    config.openlayer.sessions_pipeline_id = Some("sessions-main".to_owned());
    config
        .openlayer
        .sessions_pipelines
        .insert("pipeline-other".to_owned(), "sessions-other".to_owned());
    // Two trace rows and the two sessions' rows.
    let Outcome {
        records: summaries, ..
    } = run_until_rows(config, &server, 4, read_back).await;

    assert_eq!(server.rows_for("pipeline-other").len(), 1);
    assert_eq!(server.rows_for(PIPELINE).len(), 1);
    for (pipeline, session, reason) in [
        ("sessions-main", "quiet", "idle"),
        ("sessions-other", "ended", "end_event"),
    ] {
        let rows = server.rows_for(pipeline);
        assert_eq!(
            rows.len(),
            1,
            "one row per closed session in {pipeline}: {rows:?}"
        );
        let row = &rows[0];
        assert_eq!(row["session_id"], session);
        assert_eq!(row["close_reason"], reason);
        assert_eq!(row["turns"], 1);
        assert_eq!(row["last_inference_id"], format!("{session}-turn-1"));
        let config = server
            .requests()
            .into_iter()
            .find(|request| request.pipeline_id == pipeline)
            .and_then(|request| request.config)
            .expect("the session row's request has a config");
        for role in [
            "outputColumnName",
            "inferenceIdColumnName",
            "latencyColumnName",
        ] {
            let column = config[role].as_str().expect("a column name");
            assert!(
                row.get(column).is_some(),
                "{role} names {column}, not in {row}"
            );
        }
    }
    let mut updates: Vec<(String, Option<String>)> = server
        .row_updates()
        .into_iter()
        .map(|update| (update.pipeline_id, update.inference_id))
        .collect();
    updates.sort();
    assert_eq!(
        updates,
        [
            (PIPELINE.to_owned(), Some("quiet-turn-1".to_owned())),
            ("pipeline-other".to_owned(), Some("ended-turn-1".to_owned())),
        ],
        "each closed session's last row is marked as its final turn"
    );
    let mut reasons: Vec<(String, String)> = summaries
        .iter()
        .map(|record| {
            let summary = trace_model::codec::avro::decode_session_summary(&record.payload)
                .expect("summary decodes");
            assert_eq!(summary.num_turns, 1);
            (summary.session_id, summary.close_reason)
        })
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            ("ended".to_owned(), "end_event".to_owned()),
            ("quiet".to_owned(), "idle".to_owned())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_instance_continues_turn_numbers_and_totals() {
    let (topics, server, producer) = arrange().await;
    let base = now_ms();
    for turn in 1..=3 {
        produce_trace(
            &producer,
            &topics.traces,
            &chat_trace("eve", "resume", turn, 10 * turn, base + turn * 1000),
        )
        .await;
    }
    let mut config = service_config(&topics, &server);
    // Long enough that the session cannot close while the instances restart.
    config.session.gap_secs = 3600;
    let first = start(config.clone());
    assert_eq!(
        server.wait_for_rows(3, Duration::from_secs(60)).await.len(),
        3
    );
    first.stop().await;

    for turn in 4..=6 {
        produce_trace(
            &producer,
            &topics.traces,
            &chat_trace("eve", "resume", turn, 10 * turn, base + turn * 1000),
        )
        .await;
    }
    let second = start(config);
    let rows = server.wait_for_rows(6, Duration::from_secs(60)).await;
    second.stop().await;

    assert_eq!(rows.len(), 6, "a clean restart ships nothing twice");
    let rows = by_inference_id(&rows);
    for turn in 4..=6 {
        let row = &rows[&format!("resume-turn-{turn}")];
        assert_eq!(row["session_turn"], turn, "{row}");
        assert_eq!(
            row["session_tokens_so_far"],
            (1..=turn).map(|t| 10 * t).sum::<i64>()
        );
        assert_eq!(
            row["previous_inference_id"],
            format!("resume-turn-{}", turn - 1)
        );
        assert_eq!(row["seconds_since_session_start"], (turn - 1) as f64);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_in_one_group_split_partitions_and_ship_every_row() {
    let (topics, server, producer) = arrange().await;
    let config = service_config(&topics, &server);
    let first = start(config.clone());
    let second = start(config);
    let base = now_ms();
    let mut expected = HashSet::new();
    // Produce for a while so that both members are in the group while traces flow.
    for round in 1..=20 {
        for session in 0..9 {
            let event = chat_trace(
                "fay",
                &format!("split-{session}"),
                round,
                10 * round,
                base + round * 100,
            );
            expected.insert(event.inference_id.clone().expect("id"));
            produce_trace(&producer, &topics.traces, &event).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    server
        .wait_for_rows(expected.len(), Duration::from_secs(60))
        .await;
    let first_registry = first.stop().await;
    let second_registry = second.stop().await;
    let rows = server.rows();

    let mut seen: HashMap<String, Value> = HashMap::new();
    for row in &rows {
        let id = row["inferenceId"].as_str().expect("id").to_owned();
        if let Some(earlier) = seen.insert(id.clone(), row.clone()) {
            // At-least-once: a row redone after a rebalance is the same row.
            assert_eq!(&earlier, row, "a redelivered row keeps its enrichment");
        }
    }
    let shipped: HashSet<String> = seen.keys().cloned().collect();
    assert_eq!(shipped, expected, "every trace shipped");
    for session in 0..9 {
        for round in 1..=20 {
            let row = &seen[&format!("split-{session}-turn-{round}")];
            assert_eq!(row["session_turn"], round, "{row}");
        }
    }
    let first_shipped = sample_sum(&first_registry, "sessionizer_rows_shipped_total", None);
    let second_shipped = sample_sum(&second_registry, "sessionizer_rows_shipped_total", None);
    assert!(
        first_shipped > 0.0 && second_shipped > 0.0,
        "both members shipped: {first_shipped} {second_shipped}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closes_sessions_by_gap_and_max_duration_and_marks_late_traces() {
    let (topics, server, producer) = arrange().await;
    let base = now_ms();
    // gap 3 s: turn 2 comes 4 s of event time later and opens a new window at turn 1.
    produce_trace(
        &producer,
        &topics.traces,
        &chat_trace("gus", "gapped", 1, 10, base),
    )
    .await;
    produce_trace(
        &producer,
        &topics.traces,
        &chat_trace("gus", "gapped", 2, 20, base + 4000),
    )
    .await;
    // max duration 5 s, turns 2 s apart: turns 1-3 fill a segment, turn 4 opens segment 1.
    for turn in 1..=4 {
        produce_trace(
            &producer,
            &topics.traces,
            &chat_trace("hal", "long", turn, 10 * turn, base + (turn - 1) * 2000),
        )
        .await;
    }
    // grace 60 s: after a trace at +120 s, one at +30 s is late for its partition.
    produce_trace(
        &producer,
        &topics.traces,
        &chat_trace("ivy", "late", 1, 10, base + 120_000),
    )
    .await;
    produce_trace(
        &producer,
        &topics.traces,
        &chat_trace("ivy", "late", 2, 20, base + 30_000),
    )
    .await;

    let mut config = service_config(&topics, &server);
    config.session.max_duration_secs = 5;
    let read_back = Some((topics.sessions.as_str(), 2));
    let Outcome {
        rows,
        records: summaries,
        ..
    } = run_until_rows(config, &server, 8, read_back).await;

    let rows = by_inference_id(&rows);
    assert_eq!(
        rows["gapped-turn-2"]["session_turn"], 1,
        "a gap starts a new window"
    );
    assert_eq!(rows["long-turn-3"]["session_turn"], 3);
    assert_eq!(rows["long-turn-4"]["session_turn"], 1);
    assert_eq!(
        rows["long-turn-4"]["session_segment"], 1,
        "max duration opens the next segment"
    );
    assert_eq!(rows["late-turn-2"]["session_late"], true);
    assert!(
        rows["late-turn-2"].get("session_turn").is_none(),
        "late traces join no window"
    );
    assert_eq!(rows["late-turn-2"]["session_id"], "late");
    let reasons: HashSet<(String, String)> = summaries
        .iter()
        .map(|record| {
            let summary = trace_model::codec::avro::decode_session_summary(&record.payload)
                .expect("summary decodes");
            (summary.session_id, summary.close_reason)
        })
        .collect();
    assert!(
        reasons.contains(&("gapped".to_owned(), "gap".to_owned())),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&("long".to_owned(), "max_duration".to_owned())),
        "{reasons:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decodes_confluent_framed_traces_through_the_schema_registry() {
    let (topics, server, producer) = arrange().await;
    // A registry that knows one id: the current `TraceEvent` schema.
    let registry = RegistryServer::start().await;
    let known_id = registry
        .state
        .preload(trace_model::codec::avro::TRACE_EVENT_AVSC);
    let base = now_ms();
    let known = chat_trace("jo", "confluent", 1, 10, base);
    let payload = trace_model::encode(
        &known,
        Encoding::Confluent {
            schema_id: known_id,
        },
    )
    .expect("encode");
    produce(&producer, &topics.traces, Some("confluent"), &payload).await;
    let unknown = chat_trace("jo", "confluent", 2, 20, base + 1);
    let payload =
        trace_model::encode(&unknown, Encoding::Confluent { schema_id: 99 }).expect("encode");
    produce(&producer, &topics.traces, Some("confluent"), &payload).await;

    let mut config = service_config(&topics, &server);
    config.kafka.schema_registry_url = registry.url.clone();
    let read_back = Some((topics.dead_letters.as_str(), 1));
    let Outcome {
        rows,
        records: letters,
        ..
    } = run_until_rows(config, &server, 1, read_back).await;

    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["inferenceId"], "confluent-turn-1");
    assert_eq!(letters.len(), 1);
    assert_eq!(
        letters[0].header("error.reason").as_deref(),
        Some("unknown_schema_id")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pauses_partitions_while_openlayer_lags_and_resumes_without_loss() {
    let (topics, server, producer) = arrange().await;
    // Openlayer answers slowly: rows pile up unacknowledged.
    server.set_latency(Duration::from_millis(700));
    let base = now_ms();
    for turn in 1..=150 {
        let session = format!("slow-{}", turn % 10);
        produce_trace(
            &producer,
            &topics.traces,
            &chat_trace("kim", &session, turn, 10 * turn, base + turn),
        )
        .await;
    }
    let mut config = service_config(&topics, &server);
    config.batch.max_unacked_rows = 20;
    config.batch.max_rows = 5;
    config.batch.max_in_flight_requests = 1;
    let running = start(config);
    let registry = running.registry.clone();
    let mut paused_seen = false;
    for _ in 0..300 {
        if sample_sum(&registry, "sessionizer_partitions_paused", None) > 0.0 {
            paused_seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        paused_seen,
        "partitions pause while unacknowledged rows pass the limit"
    );
    server.set_latency(Duration::ZERO);
    let rows = server.wait_for_rows(150, Duration::from_secs(90)).await;
    let resumed = sample_sum(&registry, "sessionizer_partitions_paused", None) == 0.0;
    running.stop().await;
    assert_eq!(rows.len(), 150, "nothing lost");
    assert_eq!(by_inference_id(&rows).len(), 150, "nothing shipped twice");
    assert!(resumed, "partitions resume once Openlayer catches up");
}
