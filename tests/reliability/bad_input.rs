//! Bad input: truncated Avro, wrong magic bytes, unknown schema fingerprints, wrong JSON
//! shapes, ids over 200 characters, oversize messages, deeply nested steps and invalid UTF-8,
//! interleaved with good traces of the same sessions. Each bad one is dead-lettered with its
//! reason and its bytes, every good one is shipped with exact enrichment, nothing panics.

use super::probe::Instance;
use super::{Outcome, Scene, Size};
use crate::service::{Expectations, set};
use crate::{bootstrap, chat_trace, now_ms, produce, producer, read_topic};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;
use trace_model::Encoding;

/// The dead-letter limit on message size the scenario configures (the default is 1 MiB).
const MAX_MESSAGE_BYTES: usize = 64 * 1024;

pub async fn run(size: Size) -> Outcome {
    let mut outcome = Outcome::new("bad_input");
    let num_sessions = size.pick(20, 200);
    let num_turns = size.pick(15, 25);
    let mut scene = Scene::new("bad", 4).await;
    set(
        &mut scene.env,
        "SESSIONIZER__LIMITS__MAX_MESSAGE_BYTES",
        &MAX_MESSAGE_BYTES.to_string(),
    );
    let producer = producer();
    let base_ms = now_ms();
    let mut expected = Expectations::default();
    // (reason the dead letter must carry, bytes it must keep)
    let mut poison: Vec<(&'static str, Vec<u8>)> = Vec::new();
    let mut next_kind = 0_usize;
    for turn in 1..=num_turns as i64 {
        for session in 0..num_sessions {
            let session_id = format!("bad-{session}");
            let event = chat_trace(
                &format!("user-{session}"),
                &session_id,
                turn,
                5,
                base_ms + turn * 1000,
            );
            let good = trace_model::encode(&event, Encoding::Avro).expect("encode");
            produce(&producer, &scene.topics.traces, Some(&session_id), &good).await;
            expected.produced(&event);
            // Two bad messages for every three good ones, in the same partition as the session.
            if !(turn as usize * num_sessions + session).is_multiple_of(3) {
                let bad = bad_message(next_kind, &good, &event);
                next_kind += 1;
                produce(&producer, &scene.topics.traces, Some(&session_id), &bad.1).await;
                poison.push(bad);
            }
        }
    }
    outcome.note(format!(
        "{} good traces and {} bad messages of {} kinds, interleaved",
        expected.rows.len(),
        poison.len(),
        KINDS.len()
    ));

    let mut instance = Instance::start(&scene.env);
    let all_shipped = scene
        .wait_all_shipped(
            &expected,
            size.pick(Duration::from_secs(120), Duration::from_secs(600)),
        )
        .await;
    outcome.check(all_shipped, || {
        "not every good trace shipped in time".to_owned()
    });
    let letters = read_topic(
        &bootstrap(),
        &scene.topics.dead_letters,
        1,
        poison.len(),
        Duration::from_secs(60),
    );
    outcome.observe_rss(instance.process.peak_rss_bytes());
    outcome.check(instance.process.still_running(), || {
        "the service stopped on bad input".to_owned()
    });
    instance.process.stop().await;
    outcome.keep_logs(&instance.process);
    let output = instance.process.output();
    outcome.check(!output.contains("panicked"), || {
        format!("a panic:\n{output}")
    });

    outcome.num_dead_lettered = letters.len();
    outcome.check(letters.len() == poison.len(), || {
        format!(
            "{} bad messages, {} dead letters",
            poison.len(),
            letters.len()
        )
    });
    // Which bad message a letter is: its bytes (each is distinct); its reason must match.
    let reasons: BTreeMap<&[u8], &str> = poison
        .iter()
        .map(|(reason, bytes)| (bytes.as_slice(), *reason))
        .collect();
    outcome.check(reasons.len() == poison.len(), || {
        "bad messages are not distinct".to_owned()
    });
    let mut wrong = Vec::new();
    for letter in &letters {
        let got = letter.header("error.reason").unwrap_or_default();
        match reasons.get(letter.payload.as_slice()) {
            Some(want) if *want == got => {}
            want => wrong.push(format!("want {want:?}, got {got}")),
        }
    }
    outcome.check(wrong.is_empty(), || {
        format!(
            "{} dead letters with a wrong reason or bytes, e.g. {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(3)]
        )
    });
    outcome.take_verification(&expected.verify(&scene.server.rows()));
    outcome
}

const KINDS: [&str; 8] = [
    "truncated",
    "unknown_framing",
    "unknown_fingerprint",
    "json_shape",
    "id_too_long",
    "too_large",
    "steps_too_deep",
    "invalid_utf8",
];

/// The `index`-th bad message: the kinds in turn, each made distinct by `index`.
fn bad_message(
    index: usize,
    good_avro: &[u8],
    event: &trace_model::TraceEvent,
) -> (&'static str, Vec<u8>) {
    let reason = KINDS[index % KINDS.len()];
    let mut json_event: Value =
        serde_json::from_slice(&trace_model::encode(event, Encoding::Json).expect("encode json"))
            .expect("json");
    json_event["inference_id"] = json!(format!("bad-{index}"));
    let bytes = match reason {
        // Cut inside the datum; the index varies the cut.
        "truncated" => good_avro[..good_avro.len() - 1 - index % 8].to_vec(),
        "unknown_framing" => format!("\x42not a trace {index}").into_bytes(),
        "unknown_fingerprint" => {
            let mut bytes = vec![0xC3, 0x01];
            bytes.extend_from_slice(&(0xdead_0000_0000_0000_u64 + index as u64).to_le_bytes());
            bytes.extend_from_slice(&good_avro[10..]);
            bytes
        }
        "json_shape" => format!("{{\"name\": {index}}}").into_bytes(),
        "id_too_long" => {
            json_event["user_id"] = json!(format!("{index}-{}", "u".repeat(200)));
            serde_json::to_vec(&json_event).expect("json")
        }
        "too_large" => {
            json_event["metadata"] = json!({ "padding": "x".repeat(MAX_MESSAGE_BYTES) });
            serde_json::to_vec(&json_event).expect("json")
        }
        "steps_too_deep" => {
            let mut steps = json!([]);
            for depth in 0..64 {
                steps = json!([{
                    "id": format!("step-{depth}"), "name": "nested", "start_time_ms": 0,
                    "end_time_ms": 1, "latency_ms": 1.0, "steps": steps,
                }]);
            }
            json_event["steps"] = steps;
            serde_json::to_vec(&json_event).expect("json")
        }
        "invalid_utf8" => {
            let mut bytes = format!("{{\"name\": \"{index}").into_bytes();
            bytes.extend_from_slice(b"\xff\xfe\"}");
            bytes
        }
        other => unreachable!("no bad message of kind {other}"),
    };
    (reason, bytes)
}
