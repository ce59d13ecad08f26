//! The `sessionizer` executable as it is deployed: configured by environment variables only,
//! run as a child process against the real broker and the Openlayer-compatible test server,
//! stopped with SIGTERM.
//!
//! The binary is the one `cargo build -p sessionizer` leaves in the target directory
//! (`make test` builds it first). The key's secrecy under trace-level logging is checked by
//! the reliability suite's security scenario (`tests/reliability/security.rs`).

use end_to_end::reliability::probe::{partitions_of, sum, wait_until};
use end_to_end::service::{
    Expectations, Sessionizer, WAIT, free_local_address, http_get, inference_ids, service_env, set,
    shipped_ids,
};
use end_to_end::{
    ServiceTopics, bootstrap, chat_trace, create_service_topics, now_ms, produce, produce_trace,
    producer, read_all, unique_name,
};
use fakes::openlayer::{Fault, OpenlayerServer};
use serde_json::Value;
use sessionizer::sessionize::store::CHECKPOINT_KEY;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use trace_model::routing::partition_for;
use trace_model::{TraceEvent, TraceKind};

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_stream_drains_and_a_restart_ships_nothing_twice() {
    sigterm_then_restart(&[]).await;
}

/// The same stop and restart, with the producer's `linger.ms` (a passthrough librdkafka
/// property) keeping every changelog checkpoint in flight for a second, so that SIGTERM
/// comes while the checkpoint of the rows acknowledged before it is still being written.
/// The drain must still checkpoint and commit everything it acknowledged once that write is
/// done; a restart that redoes acknowledged rows ships them twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_a_checkpoint_is_in_flight_ships_nothing_twice_after_restart() {
    sigterm_then_restart(&[("SESSIONIZER__KAFKA__CLIENT__LINGER__MS", "1000")]).await;
}

/// Produces traces of several sessions, stops a first instance with SIGTERM while one of its
/// requests is in flight, produces more, and lets a second instance of the same group finish.
async fn sigterm_then_restart(extra_env: &[(&str, &str)]) {
    const SESSIONS: i64 = 15;
    const FIRST_TURNS: i64 = 20;
    const MORE_TURNS: i64 = 5;
    /// Data-stream requests answered before the one held while SIGTERM comes.
    const HELD_REQUEST: usize = 4;
    /// How long that request is held: SIGTERM comes half a second into it, and the drain
    /// (five seconds at most) waits for the rest.
    const HOLD: Duration = Duration::from_secs(3);
    const SIGTERM_INTO_HOLD: Duration = Duration::from_millis(500);
    let topics = create_service_topics("bin-", 3).await;
    let api_key = format!("key-{}", uuid::Uuid::new_v4().simple());
    let server = OpenlayerServer::start(&api_key).await;
    // One request is held for a while: SIGTERM comes while it is in flight, and the drain
    // must wait for its acknowledgement. Meanwhile the first instance checkpoints what was
    // acknowledged before it.
    let held = Arc::new(AtomicBool::new(false));
    let holding = Arc::clone(&held);
    server.set_responder(move |request| {
        (request.index == HELD_REQUEST).then(|| {
            holding.store(true, Ordering::SeqCst);
            Fault::Delay(HOLD)
        })
    });
    let producer = producer();
    let base = now_ms();
    let mut expected = Expectations::default();
    let mut produce_turns = async |turns: std::ops::RangeInclusive<i64>| {
        for turn in turns {
            for session in 0..SESSIONS {
                let tokens = (turn * 7 + session) % 13 + 1;
                let event = chat_trace(
                    &format!("user-{}", session % 4),
                    &format!("sigterm-{session}"),
                    turn,
                    tokens,
                    base + turn * 1000,
                );
                produce_trace(&producer, &topics.traces, &event).await;
                expected.produced(&event);
            }
        }
    };
    produce_turns(1..=FIRST_TURNS).await;
    let first_total = (SESSIONS * FIRST_TURNS) as usize;

    let group = unique_name("bin-group");
    let mut env = service_env(&topics, &group, &server, &api_key, free_local_address());
    // Small batches, one request at a time, and backpressure after two batches: little is
    // unacknowledged when SIGTERM comes, so the drain finishes well inside its deadline.
    set(&mut env, "SESSIONIZER__BATCH__MAX_ROWS", "10");
    set(&mut env, "SESSIONIZER__BATCH__MAX_IN_FLIGHT_REQUESTS", "1");
    set(&mut env, "SESSIONIZER__BATCH__MAX_UNACKED_ROWS", "20");
    // A checkpoint at least every 200 ms: one starts between the hold and SIGTERM.
    set(
        &mut env,
        "SESSIONIZER__KAFKA__CHECKPOINT_INTERVAL_MS",
        "200",
    );
    for (name, value) in extra_env {
        set(&mut env, name, value);
    }
    let mut first = Sessionizer::run(&env);
    let until = Instant::now() + WAIT;
    while !held.load(Ordering::SeqCst) {
        assert!(
            Instant::now() < until && first.still_running(),
            "the first instance never sent request {HELD_REQUEST}\n{}",
            first.output()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(SIGTERM_INTO_HOLD).await;
    let shipped_at_sigterm = server.rows().len();
    assert!(
        (1..first_total).contains(&shipped_at_sigterm),
        "SIGTERM comes mid-stream: {shipped_at_sigterm} of {first_total} rows shipped"
    );
    first.stop().await;
    let first_output = first.output();
    assert!(
        first_output.contains("SIGTERM received"),
        "the signal is handled\n{first_output}"
    );
    assert!(
        !first_output.contains("drain deadline passed"),
        "the drain finished inside its deadline\n{first_output}"
    );
    let shipped_by_first = server.rows().len();
    assert!(
        (shipped_at_sigterm + 1..first_total).contains(&shipped_by_first),
        "the drain shipped the rows in flight at SIGTERM, and the first instance stopped \
         before the end of the stream: {shipped_at_sigterm} rows at SIGTERM, \
         {shipped_by_first} at exit"
    );

    produce_turns(FIRST_TURNS + 1..=FIRST_TURNS + MORE_TURNS).await;
    let total = expected.rows.len();
    set(
        &mut env,
        "SESSIONIZER__HTTP__LISTEN",
        &free_local_address().to_string(),
    );
    let mut second = Sessionizer::run(&env);
    // Every id, not a row count: a duplicate must not end the wait before the last row.
    let until = Instant::now() + WAIT;
    while !expected
        .rows
        .keys()
        .all(|id| shipped_ids(&server).contains(id))
        && Instant::now() < until
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    second.stop().await;

    let rows = server.rows();
    let ids = inference_ids(&rows);
    let unique: HashSet<&String> = ids.iter().collect();
    let expected_ids: HashSet<&String> = expected.rows.keys().collect();
    let missing: Vec<&&String> = expected_ids.difference(&unique).collect();
    assert!(missing.is_empty(), "never shipped: {missing:?}");
    let mut counts: HashMap<&String, usize> = HashMap::new();
    for id in &ids {
        *counts.entry(id).or_default() += 1;
    }
    let mut twice: Vec<(&String, usize)> = counts.into_iter().filter(|(_, n)| *n > 1).collect();
    twice.sort();
    assert!(
        twice.is_empty(),
        "a clean SIGTERM and restart ship nothing twice; {} rows shipped more than once \
         (the first instance shipped {shipped_by_first}): {twice:?}\n{first_output}\n{}",
        twice.len(),
        second.output()
    );
    assert_eq!(rows.len(), total);
    for row in &rows {
        let id = row["inferenceId"].as_str().expect("id");
        let want = &expected.rows[id];
        assert_eq!(row["session_id"], want.session_id.as_str(), "{row}");
        assert_eq!(row["session_turn"], want.turn, "turn of {id}: {row}");
        assert_eq!(
            row["session_tokens_so_far"], want.tokens_so_far,
            "tokens so far of {id}: {row}"
        );
        match &want.previous_inference_id {
            Some(previous) => assert_eq!(row["previous_inference_id"], previous.as_str(), "{row}"),
            None => assert_eq!(row["previous_inference_id"], Value::Null, "{row}"),
        }
    }
}

/// A partition moves to a second instance while the first one's changelog checkpoint of it is
/// still in the first one's producer, held there by `linger.ms` (45 s, a passthrough
/// librdkafka property). The revoke must wait for that checkpoint: one that lands later, after
/// the new owner's checkpoints of the same sessions, is the last record of their keys, and the
/// next restore of the partition reads that stale state and numbers turns again. Here the
/// second instance is killed once it checkpointed a later turn, and the first one takes the
/// partition back and restores it: every row must carry the enrichment of an uninterrupted
/// run, and no record of a key may land behind a newer one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_moved_while_its_checkpoint_is_in_flight_keeps_exact_state() {
    const SESSIONS: usize = 8;
    /// Longer than a handover takes here (two cooperative rounds, about 20 s from the first
    /// instance's start).
    const LINGER: Duration = Duration::from_secs(45);
    let topics = create_service_topics("handover-", 2).await;
    let api_key = format!("key-{}", uuid::Uuid::new_v4().simple());
    let server = OpenlayerServer::start(&api_key).await;
    let producer = producer();
    let base = now_ms();
    let mut expected = Expectations::default();
    // Half of the sessions in each partition: whichever one moves holds some.
    let sessions: Vec<String> = [0, 1]
        .into_iter()
        .flat_map(|partition| {
            (0..)
                .map(|n| format!("handover-{n}"))
                .filter(move |session| partition_for(session.as_bytes(), 2) == partition)
                .take(SESSIONS / 2)
        })
        .collect();
    let mut produce_turn = async |turn: i64| {
        let mut ids = Vec::new();
        for (session, session_id) in (0..).zip(&sessions) {
            let event = chat_trace(
                &format!("user-{}", session % 3),
                session_id,
                turn,
                (turn * 5 + session) % 11 + 1,
                base + turn * 1000,
            );
            produce_trace(&producer, &topics.traces, &event).await;
            expected.produced(&event);
            ids.push(event.inference_id.clone().expect("inference id"));
        }
        ids
    };
    let all_shipped = async |ids: &[String]| {
        wait_until(WAIT, async || {
            let shipped = shipped_ids(&server);
            ids.iter().all(|id| shipped.contains(id))
        })
        .await
    };
    let group = unique_name("handover-group");
    let mut env = service_env(&topics, &group, &server, &api_key, free_local_address());
    set(
        &mut env,
        "SESSIONIZER__KAFKA__CHECKPOINT_INTERVAL_MS",
        "200",
    );
    let mut lingering = env.clone();
    set(
        &mut lingering,
        "SESSIONIZER__KAFKA__CLIENT__LINGER__MS",
        &LINGER.as_millis().to_string(),
    );
    // Its first checkpoint comes once it applied turns 1-2 (they wait on the topic), so the
    // one that lingers holds their sessions' state.
    set(
        &mut lingering,
        "SESSIONIZER__KAFKA__CHECKPOINT_INTERVAL_MS",
        "2000",
    );
    let first_http = free_local_address();
    set(
        &mut lingering,
        "SESSIONIZER__HTTP__LISTEN",
        &first_http.to_string(),
    );
    let second_http = free_local_address();
    set(
        &mut env,
        "SESSIONIZER__HTTP__LISTEN",
        &second_http.to_string(),
    );

    let mut ids = produce_turn(1).await;
    ids.extend(produce_turn(2).await);
    let mut first = Sessionizer::run(&lingering);
    let first_started = Instant::now();
    assert!(
        all_shipped(&ids).await,
        "the first instance shipped turns 1-2\n{}",
        first.output()
    );
    // Its checkpoints of them wait in its producer. The second instance joins and takes a
    // partition.
    let mut second = Sessionizer::run(&env);
    let assigned = async |http: SocketAddr| {
        http_get(http, "/metrics")
            .await
            .map(|(_, body)| sum(&body, "sessionizer_partitions_assigned"))
    };
    assert!(
        wait_until(WAIT, async || {
            assigned(first_http).await == Some(1.0) && assigned(second_http).await == Some(1.0)
        })
        .await,
        "the second instance took one partition\n{}\n{}",
        first.output(),
        second.output()
    );
    assert!(
        first_started.elapsed() < LINGER,
        "the handover came while the first instance's checkpoints lingered"
    );
    let ids = produce_turn(3).await;
    assert!(
        all_shipped(&ids).await,
        "turn 3 shipped\n{}\n{}",
        first.output(),
        second.output()
    );
    // The second instance checkpoints its sessions' third turn: a checkpoint record of the
    // moved partition as of its end (4 sessions x 3 turns, one record each).
    let mut moved = BTreeSet::new();
    assert!(
        wait_until(WAIT, async || {
            if let Some((_, body)) = http_get(second_http, "/metrics").await {
                moved = partitions_of(&body, "sessionizer_consumer_lag_records");
            }
            moved.len() == 1
        })
        .await,
        "the second instance reports its partition\n{}",
        second.output()
    );
    let moved = moved.into_iter().next().expect("one partition");
    let turn_3_end = (SESSIONS / 2 * 3) as i64;
    assert!(
        wait_until(WAIT, async || {
            read_all(
                &bootstrap(),
                &topics.changelog,
                2,
                Duration::from_millis(500),
                WAIT,
            )
            .iter()
            .any(|record| {
                record.partition == moved
                    && record.key.as_deref() == Some(CHECKPOINT_KEY.as_bytes())
                    && serde_json::from_slice::<Value>(&record.payload)
                        .is_ok_and(|value| value["w"].as_i64() >= Some(turn_3_end))
            })
        })
        .await,
        "the second instance checkpointed turn 3 of partition {moved}\n{}",
        second.output()
    );
    // Taking the partition back, the first instance restores it once its own checkpoint of
    // it is delivered (in-process ownerships wait for each other): without the revoke's wait,
    // that checkpoint lands only now, after the second instance's, 45 s after it was queued.
    second.kill();
    assert!(
        wait_until(WAIT, async || assigned(first_http).await == Some(2.0)).await,
        "the first instance took the partition back\n{}",
        first.output()
    );
    let ids = produce_turn(4).await;
    assert!(
        all_shipped(&ids).await,
        "turn 4 shipped\n{}",
        first.output()
    );
    let undelivered = http_get(first_http, "/metrics")
        .await
        .map(|(_, body)| sum(&body, "sessionizer_handovers_undelivered_total"));
    assert_eq!(undelivered, Some(0.0), "no handover counted undelivered");
    first.stop().await;
    assert!(
        !first
            .output()
            .contains("revoking partitions whose last changelog checkpoint is not delivered"),
        "the revoke's wait ended in time\n{}",
        first.output()
    );
    // No record of a key lands behind one written as of a later watermark (the compaction
    // of the changelog keeps the last record of each key).
    let mut watermarks: HashMap<(i32, Vec<u8>), (i64, i64, i64)> = HashMap::new();
    let changelog = read_all(
        &bootstrap(),
        &topics.changelog,
        2,
        Duration::from_secs(2),
        WAIT,
    );
    for record in &changelog {
        let value: Value = serde_json::from_slice(&record.payload).expect("a JSON record");
        let at = (
            value["w"].as_i64().expect("w"),
            value["rw"].as_i64().expect("rw"),
        );
        let key = (record.partition, record.key.clone().expect("a key"));
        if let Some((w, rw, offset)) = watermarks.get(&key) {
            assert!(
                (*w, *rw) <= at,
                "changelog partition {} key {}: offset {} as of {at:?} after offset {offset} \
                 as of {:?}",
                record.partition,
                String::from_utf8_lossy(&key.1),
                record.offset,
                (w, rw)
            );
        }
        watermarks.insert(key, (at.0, at.1, record.offset));
    }
    let verification = expected.verify(&server.rows());
    assert!(
        verification.lost.is_empty(),
        "lost: {:?}",
        verification.lost
    );
    assert!(
        verification.mismatches.is_empty(),
        "rows unlike an uninterrupted run's: {:#?}\n{}\n{}",
        verification.mismatches,
        first.output(),
        second.output()
    );
}

/// Metric names the catalogue declares: every `"sessionizer_..."` string literal of
/// `services/sessionizer/src/metrics.rs`.
fn declared_metric_names() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../services/sessionizer/src/metrics.rs");
    let source = std::fs::read_to_string(&path).expect("read metrics.rs");
    let mut names = Vec::new();
    let mut rest = source.as_str();
    while let Some(start) = rest.find("\"sessionizer_") {
        let literal = &rest[start + 1..];
        let end = literal.find('"').expect("closing quote");
        let name = &literal[..end];
        if name
            .chars()
            .all(|character| character.is_ascii_alphanumeric() || character == '_')
        {
            names.push(name.to_owned());
        }
        rest = &literal[end + 1..];
    }
    names.sort();
    names.dedup();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_exports_the_documented_names() {
    let declared = declared_metric_names();
    assert!(
        declared.len() >= 20,
        "the scan found the catalogue: {declared:?}"
    );
    let topics = create_service_topics("bin-", 3).await;
    let api_key = format!("key-{}", uuid::Uuid::new_v4().simple());
    let server = OpenlayerServer::start(&api_key).await;
    // One retried request, so the retry metrics have a sample.
    server.push_fault(Fault::Status(503));
    let http = free_local_address();
    let env = service_env(&topics, &unique_name("bin-group"), &server, &api_key, http);
    let mut sessionizer = Sessionizer::run(&env);

    // Ready only once partitions are assigned, which takes a group join.
    let mut first_answer = None;
    let until = Instant::now() + WAIT;
    let ready_body = loop {
        if let Some((status, body)) = http_get(http, "/readyz").await {
            first_answer.get_or_insert((status, body.clone()));
            if status == 200 {
                break body;
            }
        }
        assert!(
            Instant::now() < until && sessionizer.still_running(),
            "/readyz never became 200: {first_answer:?}\n{}",
            sessionizer.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(ready_body, "ready\n");
    let (first_status, first_body) = first_answer.expect("an answer");
    assert!(
        first_status == 503 && first_body.starts_with("not ready: "),
        "not ready, saying why, before the assignment: {first_status} {first_body:?}"
    );

    let producer = producer();
    let base = now_ms();
    for turn in 1..=3 {
        let event = chat_trace("mia", "metrics", turn, 5, base + turn * 1000);
        produce_trace(&producer, &topics.traces, &event).await;
    }
    // Ten minutes older than the partition's event time: beyond grace, shipped marked late.
    let mut late = chat_trace("mia", "metrics", 99, 5, base - 600_000);
    late.inference_id = Some("metrics-late".into());
    produce_trace(&producer, &topics.traces, &late).await;
    let mut end = TraceEvent::new("session_end", base + 4000);
    end.kind = TraceKind::SessionEnd;
    end.session_id = Some("metrics".into());
    produce_trace(&producer, &topics.traces, &end).await;
    let mut anonymous = TraceEvent::new("anonymous", base);
    anonymous.inference_id = Some("metrics-anonymous".into());
    produce_trace(&producer, &topics.traces, &anonymous).await;
    produce(
        &producer,
        &topics.traces,
        Some("metrics"),
        b"\x42not a trace",
    )
    .await;
    let rows = server.wait_for_rows(5, WAIT).await;
    assert_eq!(rows.len(), 5, "{}", sessionizer.output());

    let (status, healthz) = http_get(http, "/healthz").await.expect("/healthz answers");
    assert_eq!((status, healthz.as_str()), (200, "ok\n"));
    for path in ["/", "/metrics/extra", "/health", "/nope"] {
        let (status, _) = http_get(http, path).await.expect("an answer");
        assert_eq!(status, 404, "{path}");
    }

    // Counters and gauges that move with this traffic may lag a checkpoint or a statistics
    // interval; poll until every declared name is exported.
    let until = Instant::now() + Duration::from_secs(30);
    let (missing, exposition) = loop {
        let (status, exposition) = http_get(http, "/metrics").await.expect("/metrics answers");
        assert_eq!(status, 200);
        let missing: Vec<&String> = declared
            .iter()
            .filter(|name| !exposition.contains(&format!("# TYPE {name} ")))
            .collect();
        if missing.is_empty() || Instant::now() >= until {
            break (missing.into_iter().cloned().collect::<Vec<_>>(), exposition);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        exposition.contains("sessionizer_rows_shipped_total 5"),
        "{exposition}"
    );
    // A family with labels has no series until a first label set is used, and the Prometheus
    // client leaves it out of the exposition: the catalogue then promises a name that
    // dashboards and alerts (`increase(..)` misses the first sample of a new series) cannot see.
    assert!(
        missing.is_empty(),
        "declared in metrics.rs but not exported by /metrics after traffic: {missing:?} \
         (labelled families need their known label sets initialised)\n{exposition}"
    );
    sessionizer.stop().await;
}

/// Kubernetes may stop a pod at any moment, also while it is still joining the group or
/// restoring state: that is a clean stop with exit code 0, not a death by signal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_start_up_is_a_clean_stop() {
    let topics = create_service_topics("bin-", 3).await;
    let api_key = format!("key-{}", uuid::Uuid::new_v4().simple());
    let server = OpenlayerServer::start(&api_key).await;
    let http = free_local_address();
    let env = service_env(&topics, &unique_name("bin-group"), &server, &api_key, http);
    let mut sessionizer = Sessionizer::run(&env);
    // The first sign of life: the HTTP server, served before the changelog topic is ensured
    // and the group joined.
    let until = Instant::now() + WAIT;
    while http_get(http, "/healthz").await.is_none() {
        assert!(
            Instant::now() < until && sessionizer.still_running(),
            "/healthz never answered\n{}",
            sessionizer.output()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (status, _) = http_get(http, "/readyz").await.expect("/readyz answers");
    assert_eq!(status, 503, "still starting: not ready");
    sessionizer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_configuration_fails_at_start_naming_the_key() {
    let topics = ServiceTopics {
        traces: "bin-traces-never-created".to_owned(),
        dead_letters: "bin-dlq-never-created".to_owned(),
        sessions: "bin-sessions-never-created".to_owned(),
        changelog: "bin-state-never-created".to_owned(),
    };
    let api_key = format!("sk-live-DISTINCTIVE-{}", uuid::Uuid::new_v4().simple());
    let server = OpenlayerServer::start(&api_key).await;
    let valid = service_env(
        &topics,
        "bin-group-never-joined",
        &server,
        &api_key,
        free_local_address(),
    );
    let cases: [(&str, &str, &[&str]); 4] = [
        ("SESSIONIZER__BATCH__MAX_ROWS", "abc", &["batch.max_rows"]),
        (
            "SESSIONIZER__KAFKA__BOGUS",
            "1",
            &["kafka.bogus", "SESSIONIZER__KAFKA__BOGUS"],
        ),
        // Inconsistent with the session timeout (6000 ms).
        (
            "SESSIONIZER__SHUTDOWN__DRAIN_TIMEOUT_SECS",
            "6",
            &["shutdown.drain_timeout_secs", "kafka.session_timeout_ms"],
        ),
        (
            "OPENLAYER_BASE_URL",
            "http://127.0.0.1:1/not-v1",
            &["openlayer.base_url"],
        ),
    ];
    for (variable, value, named) in cases {
        let mut env = valid.clone();
        set(&mut env, variable, value);
        for command in ["run", "check-config"] {
            let mut sessionizer = Sessionizer::spawn("invalid", &[command], &env);
            let Some(exit) = sessionizer.wait_exit(Duration::from_secs(30)).await else {
                panic!(
                    "`{command}` with {variable}={value} did not exit\n{}",
                    sessionizer.output()
                );
            };
            let stderr = sessionizer.stderr();
            assert_eq!(
                exit.code(),
                Some(2),
                "`{command}` with {variable}={value}\n{}",
                sessionizer.output()
            );
            for key in named {
                assert!(
                    stderr.contains(key),
                    "`{command}` with {variable}={value}: stderr names `{key}`\n{stderr}"
                );
            }
            assert!(!stderr.contains(&api_key), "the key is printed\n{stderr}");
            assert!(
                sessionizer.stdout().is_empty(),
                "nothing on stdout for an invalid configuration\n{}",
                sessionizer.output()
            );
        }
    }
}
