//! The example producers of `tests/producers/` (docs/producers.md), each run as a user would
//! run it, against the real `sessionizer` binary, the real broker and the Openlayer-compatible
//! test server.
//!
//! Each example produces sessions `PREFIX-1`..`PREFIX-3` with 2, 3 and 4 turns, turn `t` of
//! session `s` with inference id `s-turn-t`. A test passes when every one of those rows
//! reached Openlayer exactly once with its session id and turn number, nothing was
//! dead-lettered, and on the topic every record has the framing the example claims, its
//! session id as key, and the partition Java's murmur2 partitioner gives that key.
//!
//! `scripts/producer-toolchains.sh` installs and builds the toolchains once (a no-op when
//! `scripts/test.sh` already ran it). Each language is its own test, with its own topics and
//! sessionizer: the harness's [`Sessionizer`] owns its child process and kills it on drop, and
//! a process shared through a `static` would outlive a filtered test run. Java is missing:
//! kafka-clients cannot be resolved on the build machines (docs/producers.md).

use end_to_end::service::{Sessionizer, WAIT, free_local_address, service_env};
use end_to_end::workspace;
use end_to_end::{ServiceTopics, bootstrap, create_service_topics, read_topic, unique_name};
use fakes::openlayer::OpenlayerServer;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use trace_model::codec::avro::{SINGLE_OBJECT_MAGIC, trace_event_fingerprint};
use trace_model::{Decoder, Limits};

const PARTITIONS: i32 = 3;
/// Sessions each example produces; session `s` has `s + 1` turns.
const SESSIONS: usize = 3;
/// Bound of one example's run, toolchain start-up included.
const PRODUCER_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the dead-letter topic is watched once every row has shipped.
const DEAD_LETTER_WAIT: Duration = Duration::from_secs(2);
/// How often the dead-letter topic is looked at while rows are awaited.
const DEAD_LETTER_CHECK_EVERY: Duration = Duration::from_secs(3);

/// Runs `scripts/producer-toolchains.sh` once per test process.
fn toolchains() -> &'static Path {
    static READY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let ready = READY.get_or_init(|| {
        let root = workspace();
        let output = Command::new(root.join("scripts/producer-toolchains.sh"))
            .stdin(Stdio::null())
            .output()
            .map_err(|error| format!("run scripts/producer-toolchains.sh: {error}"))?;
        if output.status.success() {
            Ok(root)
        } else {
            Err(format!(
                "scripts/producer-toolchains.sh failed ({}):\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    });
    match ready {
        Ok(root) => root,
        Err(message) => panic!("{message}"),
    }
}

/// The encoding an example writes, as its records' first bytes show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Json,
    AvroSingleObject,
}

/// Runs `command` (an example producer) with the broker, topic and session prefix in its
/// environment, and panics with its output unless it succeeds in time.
fn run_producer(name: &str, mut command: Command, topic: &str, prefix: &str) {
    let mut child = command
        .env("BOOTSTRAP_SERVERS", bootstrap())
        .env("TRACES_TOPIC", topic)
        .env("SESSION_PREFIX", prefix)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("start the {name} producer: {error}"));
    let until = Instant::now() + PRODUCER_TIMEOUT;
    while child.try_wait().expect("poll the producer").is_none() {
        if Instant::now() >= until {
            let _killed = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().expect("producer output");
    assert!(
        output.status.success(),
        "the {name} producer failed ({}) or ran longer than {PRODUCER_TIMEOUT:?}\n\
         --- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Kafka's murmur2 (Java's `Utils.murmur2`).
fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    let mut hash = SEED ^ u32::try_from(data.len()).expect("short key");
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        hash = hash.wrapping_mul(M) ^ k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        for (index, byte) in tail.iter().enumerate().rev() {
            hash ^= u32::from(*byte) << (8 * index);
        }
        hash = hash.wrapping_mul(M);
    }
    hash ^= hash >> 13;
    hash = hash.wrapping_mul(M);
    hash ^ (hash >> 15)
}

/// The partition Java's default partitioner (librdkafka's `murmur2_random`) gives `key`.
fn murmur2_partition(key: &[u8], partitions: i32) -> i32 {
    let positive = murmur2(key) & 0x7fff_ffff;
    i32::try_from(positive % u32::try_from(partitions).expect("positive")).expect("small")
}

/// Expected rows: session id → inference ids of turns 1..=n, in turn order.
fn expected_sessions(prefix: &str) -> BTreeMap<String, Vec<String>> {
    (1..=SESSIONS)
        .map(|session| {
            let session_id = format!("{prefix}-{session}");
            let turns = (1..=session + 1)
                .map(|turn| format!("{session_id}-turn-{turn}"))
                .collect();
            (session_id, turns)
        })
        .collect()
}

/// Shipped rows: session id → inference ids ordered by `session_turn`, each turn checked to
/// be the next integer from 1.
fn shipped_sessions(rows: &[Value]) -> Result<BTreeMap<String, Vec<String>>, String> {
    let mut by_session: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
    for row in rows {
        let (Some(session), Some(turn), Some(id)) = (
            row["session_id"].as_str(),
            row["session_turn"].as_i64(),
            row["inferenceId"].as_str(),
        ) else {
            return Err(format!(
                "row without session_id, session_turn or inferenceId: {row}"
            ));
        };
        by_session
            .entry(session.to_owned())
            .or_default()
            .push((turn, id.to_owned()));
    }
    by_session
        .into_iter()
        .map(|(session, mut turns)| {
            turns.sort();
            let numbers: Vec<i64> = turns.iter().map(|(turn, _)| *turn).collect();
            let want: Vec<i64> = (1..=i64::try_from(turns.len()).expect("few")).collect();
            if numbers != want {
                return Err(format!(
                    "session {session} has turns {numbers:?}, want {want:?}"
                ));
            }
            Ok((session, turns.into_iter().map(|(_, id)| id).collect()))
        })
        .collect()
}

/// What is on the traces topic: every record decodes, has `framing`, is keyed by its
/// session id and sits in the partition murmur2 gives that key.
fn check_topic(name: &str, topics: &ServiceTopics, framing: Framing, num_traces: usize) {
    let records = read_topic(
        &bootstrap(),
        &topics.traces,
        PARTITIONS,
        num_traces,
        Duration::from_secs(30),
    );
    assert_eq!(
        records.len(),
        num_traces,
        "{name}: records on the traces topic"
    );
    let decoder = Decoder::new(Limits::default());
    let mut avro_header = SINGLE_OBJECT_MAGIC.to_vec();
    avro_header.extend_from_slice(&trace_event_fingerprint().to_le_bytes());
    for record in &records {
        match framing {
            Framing::Json => {
                assert_eq!(record.payload.first(), Some(&b'{'), "{name}: a JSON record")
            }
            Framing::AvroSingleObject => assert!(
                record.payload.starts_with(&avro_header),
                "{name}: single-object header C3 01 + the little-endian fingerprint {:02x?}, \
                 got {:02x?}",
                avro_header,
                &record.payload[..record.payload.len().min(10)]
            ),
        }
        let event = decoder
            .decode(&record.payload)
            .unwrap_or_else(|error| panic!("{name}: record does not decode: {error}"));
        let session = event.session_id.expect("every example sets a session");
        let key = record.key.as_deref().expect("every example sets a key");
        assert_eq!(key, session.as_bytes(), "{name}: key is the session id");
        assert_eq!(
            record.partition,
            murmur2_partition(key, PARTITIONS),
            "{name}: {session} is in the partition murmur2 gives its key"
        );
    }
}

/// The `error.reason` header of every record on the dead-letter topic, read for `wait`.
async fn dead_letter_reasons(topics: &ServiceTopics, wait: Duration) -> Vec<String> {
    let topic = topics.dead_letters.clone();
    let records = tokio::task::spawn_blocking(move || read_topic(&bootstrap(), &topic, 1, 1, wait))
        .await
        .expect("dead-letter reader");
    records
        .iter()
        .map(|record| record.header("error.reason").unwrap_or_default())
        .collect()
}

/// Runs one example against a sessionizer of its own and checks everything it produced.
async fn example_sessions_ship(name: &'static str, framing: Framing, command: Command) {
    let started = Instant::now();
    toolchains();
    let topics = create_service_topics(&format!("producers-{name}-"), PARTITIONS).await;
    let api_key = format!("key-{}", uuid::Uuid::new_v4().simple());
    let server = OpenlayerServer::start(&api_key).await;
    let env = service_env(
        &topics,
        &unique_name("producers-group"),
        &server,
        &api_key,
        free_local_address(),
    );
    let mut sessionizer = Sessionizer::run(&env);

    let prefix = unique_name(name);
    let expected = expected_sessions(&prefix);
    let num_traces: usize = expected.values().map(Vec::len).sum();
    let topic = topics.traces.clone();
    let producer_prefix = prefix.clone();
    tokio::task::spawn_blocking(move || run_producer(name, command, &topic, &producer_prefix))
        .await
        .expect("producer thread");

    let until = Instant::now() + WAIT;
    let mut next_dead_letter_check = Instant::now() + DEAD_LETTER_CHECK_EVERY;
    while server.rows().len() < num_traces {
        assert!(
            Instant::now() < until && sessionizer.still_running(),
            "{name}: {} of {num_traces} rows shipped\n{}",
            server.rows().len(),
            sessionizer.output()
        );
        // A dead-lettered trace never ships: say why at once instead of waiting out WAIT.
        if Instant::now() >= next_dead_letter_check {
            let reasons = dead_letter_reasons(&topics, Duration::from_millis(1500)).await;
            assert!(reasons.is_empty(), "{name}: dead-lettered: {reasons:?}");
            next_dead_letter_check = Instant::now() + DEAD_LETTER_CHECK_EVERY;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reasons = dead_letter_reasons(&topics, DEAD_LETTER_WAIT).await;
    sessionizer.stop().await;

    let rows = server.rows();
    assert_eq!(
        rows.len(),
        num_traces,
        "{name}: one row per trace: {rows:#?}"
    );
    let shipped = shipped_sessions(&rows).unwrap_or_else(|error| panic!("{name}: {error}"));
    assert_eq!(
        shipped, expected,
        "{name}: sessions with their turns in order"
    );
    assert!(reasons.is_empty(), "{name}: dead-lettered: {reasons:?}");
    check_topic(name, &topics, framing, num_traces);
    eprintln!("{name}: {:.1} s", started.elapsed().as_secs_f64());
}

fn cache(path: &str) -> PathBuf {
    toolchains().join(".cache").join(path)
}

fn example(path: &str) -> PathBuf {
    toolchains().join("tests/producers").join(path)
}

fn python(script: &str) -> Command {
    let mut command = Command::new(cache("venv/producers/bin/python"));
    command.arg(example(script));
    command
}

// ---------------------------------------------------------------------------------------------
// Tests: one per language, so a failure names it
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_confluent_kafka_json_sessions_ship_in_order() {
    example_sessions_ship(
        "python-json",
        Framing::Json,
        python("python-json/produce.py"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_fastavro_single_object_sessions_ship_in_order() {
    example_sessions_ship(
        "python-avro",
        Framing::AvroSingleObject,
        python("python-avro/produce.py"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_kafkajs_json_sessions_ship_in_order() {
    let mut command = Command::new("node");
    command
        .arg(example("node-kafkajs/produce.js"))
        .env("NODE_PATH", cache("node/producers-kafkajs/node_modules"));
    example_sessions_ship("node-kafkajs", Framing::Json, command).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_sarama_json_sessions_ship_in_order() {
    let command = Command::new(cache("producers/bin/go-sarama"));
    example_sessions_ship("go-sarama", Framing::Json, command).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcat_json_lines_sessions_ship_in_order() {
    let mut command = Command::new(example("kcat/produce.sh"));
    // Debian's librdkafka 2.0.2 cannot read the test broker's ApiVersions answer; the
    // toolchain script links the confluent-kafka wheel's librdkafka here.
    command.env("LD_LIBRARY_PATH", cache("producers/lib"));
    example_sessions_ship("kcat", Framing::Json, command).await;
}

#[test]
fn murmur2_matches_kafkas_reference_values() {
    // Values from Kafka's own UtilsTest (murmur2 of these strings).
    for (key, hash) in [
        ("21", -973_932_308_i32),
        ("foobar", -790_332_482),
        ("a-little-bit-long-string", -985_981_536),
        ("a-little-bit-longer-string", -1_486_304_829),
        (
            "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
            -58_897_971,
        ),
        ("abc", 479_470_107),
    ] {
        assert_eq!(
            murmur2(key.as_bytes()).cast_signed(),
            hash,
            "murmur2({key})"
        );
    }
}
