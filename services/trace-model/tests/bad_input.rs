//! Every kind of bad message is refused with a typed error and the right reason code, never a
//! panic or a stack overflow, and only an unreachable registry is reported as transient.

mod support;

use axum::http::StatusCode;
use fakes::schema_registry::{RegistryServer, unreachable_registry_url};
use std::time::Duration;
use support::fixtures::{
    SchemaVersion, avro_step_chain_closing_bytes, avro_step_chain_datum, confluent,
    full_session_summary, full_step, full_trace, json_step_chain, single_object, step_chain_trace,
    v1_fingerprint,
};
use support::registry::client_of;
use trace_model::codec::avro::{self, SINGLE_OBJECT_HEADER_LEN};
use trace_model::codec::registry::SchemaRegistry;
use trace_model::{
    DecodeError, Decoder, Encoding, Limits, Step, TraceEvent, ValidationError, encode,
};

fn decoder() -> Decoder {
    Decoder::new(Limits::default())
}

/// The error for `bytes`, failing the test if they decode.
#[track_caller]
fn decode_error(decoder: &Decoder, bytes: &[u8]) -> DecodeError {
    match decoder.decode(bytes) {
        Ok(event) => panic!(
            "decoded a trace named {:?} with {} steps",
            event.name,
            event.all_steps().count()
        ),
        Err(error) => error,
    }
}

/// Asserts `bytes` are refused for `reason`, as a permanent (dead-letter) failure.
#[track_caller]
fn assert_refused(decoder: &Decoder, bytes: &[u8], reason: &str) {
    let error = decode_error(decoder, bytes);
    assert_eq!(error.reason(), reason, "{error}");
    assert!(!error.is_transient(), "{error} is not transient");
}

fn avro(event: &TraceEvent) -> Vec<u8> {
    encode(event, Encoding::Avro).expect("encodes")
}

fn json(event: &TraceEvent) -> Vec<u8> {
    encode(event, Encoding::Json).expect("encodes")
}

#[test]
fn rejects_an_empty_message_as_empty() {
    assert!(matches!(decode_error(&decoder(), b""), DecodeError::Empty));
    assert_refused(&decoder(), b"", "empty");
}

#[test]
fn rejects_whitespace_only_messages_as_empty() {
    for bytes in [&b" "[..], b"\n", b" \t\r\n  \x0c"] {
        assert_refused(&decoder(), bytes, "empty");
    }
}

#[test]
fn rejects_every_truncated_prefix_of_an_avro_message_as_truncated() {
    let current = avro(&full_trace());
    let v1 = single_object(
        v1_fingerprint(),
        &avro_step_chain_datum(3, SchemaVersion::V1),
    );
    assert!(decoder().decode(&v1).is_ok(), "v1 fixture decodes whole");
    for message in [current, v1] {
        for length in 1..message.len() {
            let error = decode_error(&decoder(), &message[..length]);
            assert!(
                matches!(error, DecodeError::Truncated),
                "prefix of {length} of {} bytes: {error}",
                message.len()
            );
            assert_eq!(error.reason(), "truncated");
        }
    }
}

#[test]
fn rejects_every_truncated_prefix_of_a_json_message_as_json_shape_or_invalid_utf8() {
    let message = json(&full_trace());
    for length in 1..message.len() {
        let prefix = &message[..length];
        let expected = if std::str::from_utf8(prefix).is_ok() {
            "json_shape"
        } else {
            "invalid_utf8"
        };
        assert_refused(&decoder(), prefix, expected);
    }
}

#[test]
fn rejects_unknown_first_bytes_as_unknown_framing() {
    let valid = avro(&full_trace());
    let mut wrong_magic = valid.clone();
    wrong_magic[0] = 0x42;
    let mut wrong_version = valid.clone();
    wrong_version[1] = 0x02;
    let cases: [&[u8]; 9] = [
        &wrong_magic,
        &wrong_version,
        b"\x01\x00\x00\x00\x01",
        b"\xff\xfe{",
        b"[1, 2, 3]",
        br#" "a json string""#,
        b"null",
        b"42",
        b"\xef\xbb\xbf{\"name\":\"bom\",\"timestamp_ms\":0}",
    ];
    for bytes in cases {
        assert_refused(&decoder(), bytes, "unknown_framing");
    }
    assert!(matches!(
        decode_error(&decoder(), &wrong_magic),
        DecodeError::UnknownFraming(0x42)
    ));
}

#[test]
fn rejects_headers_cut_short_as_truncated() {
    let cases: [&[u8]; 6] = [
        b"\xc3",
        b"\xc3\x01",
        b"\xc3\x01\x00\x00\x00\x00\x00\x00\x00",
        b"\x00",
        b"\x00\x00\x00",
        b"\x00\x00\x00\x00",
    ];
    for bytes in cases {
        assert_refused(&decoder(), bytes, "truncated");
    }
}

#[test]
fn rejects_an_unknown_fingerprint_as_unknown_fingerprint() {
    let datum = &avro(&full_trace())[SINGLE_OBJECT_HEADER_LEN..];
    let unknown = 0x0123_4567_89ab_cdef;
    let error = decode_error(&decoder(), &single_object(unknown, datum));
    assert!(
        matches!(error, DecodeError::UnknownFingerprint(fingerprint) if fingerprint == unknown)
    );
    assert_eq!(error.reason(), "unknown_fingerprint");

    // A session summary on the traces topic names a schema the trace decoder does not read.
    let summary = avro::encode_session_summary(&full_session_summary()).expect("encodes");
    assert_refused(&decoder(), &summary, "unknown_fingerprint");
}

#[test]
fn session_summary_decoder_refuses_traces_and_broken_summaries_with_typed_errors() {
    let trace = avro(&full_trace());
    assert_eq!(
        avro::decode_session_summary(&trace).map_err(|error| error.reason()),
        Err("unknown_fingerprint")
    );
    let summary = avro::encode_session_summary(&full_session_summary()).expect("encodes");
    for length in 0..summary.len() {
        let error = avro::decode_session_summary(&summary[..length])
            .expect_err("a prefix is not a summary");
        let expected = if length < SINGLE_OBJECT_HEADER_LEN {
            "truncated"
        } else {
            "malformed_avro"
        };
        assert_eq!(error.reason(), expected, "prefix of {length}: {error}");
    }
    let mut trailing = summary.clone();
    trailing.push(0);
    assert_eq!(
        avro::decode_session_summary(&trailing).map_err(|error| error.reason()),
        Err("trailing_bytes")
    );
    let mut wrong_magic = summary;
    wrong_magic[1] = 0x02;
    assert_eq!(
        avro::decode_session_summary(&wrong_magic).map_err(|error| error.reason()),
        Err("unknown_framing")
    );
}

#[tokio::test]
async fn rejects_a_confluent_schema_id_as_unknown_when_no_registry_is_configured() {
    let bytes = encode(&full_trace(), Encoding::Confluent { schema_id: 7 }).expect("encodes");
    let error = decode_error(&decoder(), &bytes);
    assert!(matches!(error, DecodeError::UnknownSchemaId(7)));
    assert!(!error.is_transient());
    let fetching = decoder()
        .decode_fetching(&bytes)
        .await
        .expect_err("no registry to fetch from");
    assert_eq!(fetching.reason(), "unknown_schema_id");
}

#[tokio::test]
async fn rejects_a_confluent_schema_id_the_registry_does_not_know_as_unknown_schema_id() {
    let server = RegistryServer::start().await;
    let decoder = decoder().with_registry(client_of(&server));
    let bytes = encode(&full_trace(), Encoding::Confluent { schema_id: 99 }).expect("encodes");

    // Without fetching, an uncached id is unknown and the registry is not asked.
    assert!(matches!(
        decode_error(&decoder, &bytes),
        DecodeError::UnknownSchemaId(99)
    ));
    assert_eq!(server.state.num_fetches_total(), 0);

    let error = decoder
        .decode_fetching(&bytes)
        .await
        .expect_err("id 99 is not registered");
    assert!(matches!(error, DecodeError::UnknownSchemaId(99)), "{error}");
    assert!(!error.is_transient());
    assert_eq!(server.state.num_fetches(99), 1);
}

#[tokio::test]
async fn reports_an_unreachable_registry_as_transient_registry_unavailable() {
    let registry = SchemaRegistry::try_new(unreachable_registry_url(), Duration::from_secs(2))
        .expect("registry client");
    let decoder = decoder().with_registry(registry);
    let bytes = encode(&full_trace(), Encoding::Confluent { schema_id: 1 }).expect("encodes");
    let error = decoder
        .decode_fetching(&bytes)
        .await
        .expect_err("nobody listens");
    assert!(
        matches!(error, DecodeError::RegistryUnavailable { id: 1, .. }),
        "{error}"
    );
    assert_eq!(error.reason(), "registry_unavailable");
    assert!(error.is_transient());
}

#[tokio::test]
async fn rejects_truncated_deep_and_trailing_confluent_messages_with_typed_errors() {
    let server = RegistryServer::start().await;
    let registry = client_of(&server);
    let schema_id = registry
        .register("llm-traces-value", avro::trace_event_schema())
        .await
        .expect("registers");
    let limits = Limits {
        max_message_bytes: 4 * 1024 * 1024,
        ..Limits::default()
    };
    let decoder = Decoder::new(limits).with_registry(registry);

    let valid = encode(&full_trace(), Encoding::Confluent { schema_id }).expect("encodes");
    assert_eq!(decoder.decode(&valid).expect("decodes"), full_trace());
    for length in 1..valid.len() {
        assert_refused(&decoder, &valid[..length], "truncated");
    }
    let mut trailing = valid.clone();
    trailing.extend([0, 0, 0]);
    assert!(matches!(
        decode_error(&decoder, &trailing),
        DecodeError::TrailingBytes(3)
    ));

    let at_limit = avro_step_chain_datum(limits.max_step_depth, SchemaVersion::Current);
    assert_eq!(
        decoder
            .decode(&confluent(schema_id, &at_limit))
            .expect("depth at the limit decodes"),
        step_chain_trace(limits.max_step_depth)
    );
    for depth in [limits.max_step_depth + 1, 50_000] {
        let deep = avro_step_chain_datum(depth, SchemaVersion::Current);
        assert_refused(&decoder, &confluent(schema_id, &deep), "steps_too_deep");
    }
}

#[tokio::test]
async fn rejects_a_registry_schema_that_is_not_avro_as_a_permanent_incompatible_schema() {
    // Protobuf and JSON Schema producers use the same `00` + id framing; their schemas do not
    // parse as Avro and never will, so retrying would stall the partition forever.
    let server = RegistryServer::start().await;
    let protobuf_id = server
        .state
        .preload("syntax = \"proto3\";\nmessage Trace { string name = 1; }");
    let decoder = decoder().with_registry(client_of(&server));
    let bytes = confluent(protobuf_id, b"\x0a\x01t");
    let error = decoder
        .decode_fetching(&bytes)
        .await
        .expect_err("not an avro schema");
    assert_eq!(error.reason(), "incompatible_schema", "{error}");
    assert!(!error.is_transient(), "{error}");
}

#[tokio::test]
async fn rejects_an_avro_writer_schema_that_cannot_resolve_to_a_trace_as_incompatible_schema() {
    let server = RegistryServer::start().await;
    let other_record = r#"{"type":"record","name":"TraceEvent","namespace":"llmtrace",
        "fields":[{"name":"name","type":"string"}]}"#;
    let other_id = server.state.preload(other_record);
    let decoder = decoder().with_registry(client_of(&server));
    let bytes = confluent(other_id, b"\x02t");
    let error = decoder
        .decode_fetching(&bytes)
        .await
        .expect_err("timestamp_ms is missing and has no default");
    assert_eq!(error.reason(), "incompatible_schema", "{error}");
    assert!(!error.is_transient());
}

#[tokio::test]
async fn keeps_reporting_a_registry_outage_until_the_registry_recovers() {
    let server = RegistryServer::start().await;
    let schema_id = server
        .state
        .preload(&avro::trace_event_schema().canonical_form());
    server.state.fail_with(StatusCode::SERVICE_UNAVAILABLE);
    let decoder = decoder().with_registry(client_of(&server));
    let bytes = encode(&full_trace(), Encoding::Confluent { schema_id }).expect("encodes");
    let error = decoder.decode_fetching(&bytes).await.expect_err("outage");
    assert!(error.is_transient(), "{error}");
    server.state.recover();
    assert_eq!(
        decoder.decode_fetching(&bytes).await.expect("recovered"),
        full_trace()
    );
}

#[test]
fn rejects_invalid_utf8_in_a_json_message_as_invalid_utf8() {
    let cases: [&[u8]; 3] = [
        b"{\"name\": \"\xff\", \"timestamp_ms\": 0}",
        b"{\"name\": \"t\", \"timestamp_ms\": 0, \"inputs\": {\"\xc3\x28\": 1}}",
        b"  {\"name\": \"cut \xe6\x97\"}",
    ];
    for bytes in cases {
        assert!(matches!(
            decode_error(&decoder(), bytes),
            DecodeError::InvalidUtf8
        ));
        assert_refused(&decoder(), bytes, "invalid_utf8");
    }
}

#[test]
fn rejects_json_of_the_wrong_shape_as_json_shape() {
    let cases = [
        r#"{}"#,
        r#"{"timestamp_ms": 0}"#,
        r#"{"name": "missing timestamp"}"#,
        r#"{"name": "t", "timestamp_ms": "1700000000000"}"#,
        r#"{"name": 42, "timestamp_ms": 0}"#,
        r#"{"name": ["t"], "timestamp_ms": 0}"#,
        r#"{"name": "t", "timestamp_ms": 1.5}"#,
        r#"{"name": "t", "timestamp_ms": 1e30}"#,
        r#"{"name": "t", "timestamp_ms": 0, "inputs": [1, 2]}"#,
        r#"{"name": "t", "timestamp_ms": 0, "inputs": "text"}"#,
        r#"{"name": "t", "timestamp_ms": 0, "metadata": null}"#,
        r#"{"name": "t", "timestamp_ms": 0, "steps": {}}"#,
        r#"{"name": "t", "timestamp_ms": 0, "steps": [{"name": "no id"}]}"#,
        r#"{"name": "t", "timestamp_ms": 0, "tokens": "12"}"#,
        r#"{"name": "t", "timestamp_ms": 0, "kind": "other"}"#,
        r#"{"name": "t", "timestamp_ms": 0, "user_id": 7}"#,
        r#"{"name": "t", "timestamp_ms": 0,}"#,
        r#"{"name": "t", "timestamp_ms": 0} {"name": "second"}"#,
        r#"{"name": "t", "timestamp_ms": 0}x"#,
        r#"{name: "t", timestamp_ms: 0}"#,
    ];
    for text in cases {
        let error = decode_error(&decoder(), text.as_bytes());
        assert!(matches!(error, DecodeError::Json(_)), "{text}: {error}");
        assert_refused(&decoder(), text.as_bytes(), "json_shape");
    }
}

type SetId = fn(&mut TraceEvent, String);

/// Every id field, the name validation reports for it, and how to set it.
fn id_fields() -> [(&'static str, SetId); 6] {
    [
        ("inference_id", |event, id| event.inference_id = Some(id)),
        ("pipeline_id", |event, id| event.pipeline_id = Some(id)),
        ("user_id", |event, id| event.user_id = Some(id)),
        ("session_id", |event, id| event.session_id = Some(id)),
        ("step.id", |event, id| event.steps[0].id = id),
        ("step.id", |event, id| {
            event.steps[0].steps[0].steps[0].id = id
        }),
    ]
}

fn trace_with_id(set_id: SetId, id: &str) -> TraceEvent {
    let mut event = full_trace();
    set_id(&mut event, id.to_owned());
    event
}

#[test]
fn rejects_ids_over_200_characters_in_avro_and_json_as_id_too_long() {
    for (field, set_id) in id_fields() {
        for id in ["a".repeat(201), "日".repeat(201), "x".repeat(10_000)] {
            let event = trace_with_id(set_id, &id);
            for bytes in [avro(&event), json(&event)] {
                let error = decode_error(&decoder(), &bytes);
                assert_eq!(
                    error.to_string(),
                    DecodeError::Invalid(ValidationError::IdTooLong {
                        field,
                        chars: id.chars().count(),
                        limit: 200
                    })
                    .to_string()
                );
                assert_refused(&decoder(), &bytes, "id_too_long");
            }
        }
    }
}

#[test]
fn accepts_ids_of_exactly_200_characters() {
    for (_, set_id) in id_fields() {
        let event = trace_with_id(set_id, &"é".repeat(200));
        for bytes in [avro(&event), json(&event)] {
            assert_eq!(decoder().decode(&bytes).expect("decodes"), event);
        }
    }
}

#[test]
fn rejects_empty_ids_in_avro_and_json_as_empty_id() {
    for (field, set_id) in id_fields() {
        let event = trace_with_id(set_id, "");
        for bytes in [avro(&event), json(&event)] {
            let error = decode_error(&decoder(), &bytes);
            assert!(
                matches!(&error, DecodeError::Invalid(ValidationError::EmptyId { field: got }) if *got == field),
                "{field}: {error}"
            );
            assert_refused(&decoder(), &bytes, "empty_id");
        }
    }
}

#[test]
fn rejects_ids_with_control_characters_as_id_not_printable() {
    for (_, set_id) in id_fields() {
        for id in ["tab\there", "nul\u{0}", "line\nbreak", "del\u{7f}"] {
            let event = trace_with_id(set_id, id);
            for bytes in [avro(&event), json(&event)] {
                assert_refused(&decoder(), &bytes, "id_not_printable");
            }
        }
    }
}

#[test]
fn rejects_messages_over_max_message_bytes_as_too_large() {
    for bytes in [avro(&full_trace()), json(&full_trace())] {
        let at_limit = Decoder::new(Limits {
            max_message_bytes: bytes.len(),
            ..Limits::default()
        });
        assert!(at_limit.decode(&bytes).is_ok());
        let below = Decoder::new(Limits {
            max_message_bytes: bytes.len() - 1,
            ..Limits::default()
        });
        let error = decode_error(&below, &bytes);
        assert!(
            matches!(error, DecodeError::TooLarge { size, limit } if size == bytes.len() && limit == bytes.len() - 1)
        );
        assert_eq!(error.reason(), "too_large");
    }

    // The default limit is 1 MiB.
    let mut event = full_trace();
    event
        .inputs
        .insert("document".into(), "x".repeat(1024 * 1024).into());
    for bytes in [avro(&event), json(&event)] {
        assert_refused(&decoder(), &bytes, "too_large");
    }
}

fn avro_chain(depth: usize, version: SchemaVersion) -> Vec<u8> {
    let fingerprint = match version {
        SchemaVersion::V1 => v1_fingerprint(),
        SchemaVersion::V2 => support::fixtures::v2_fingerprint(),
        SchemaVersion::V3 => support::fixtures::v3_fingerprint(),
        SchemaVersion::Current => avro::trace_event_fingerprint(),
    };
    single_object(fingerprint, &avro_step_chain_datum(depth, version))
}

#[test]
fn accepts_steps_nested_to_max_step_depth_and_rejects_one_level_more() {
    for max_step_depth in [1, 3, 32] {
        let limits = Limits {
            max_step_depth,
            ..Limits::default()
        };
        let decoder = Decoder::new(limits);
        let at_limit = step_chain_trace(max_step_depth);
        let too_deep = step_chain_trace(max_step_depth + 1);
        // v1 records take the resolving path, whose stack use is covered on its own below.
        let versions: &[SchemaVersion] = if max_step_depth <= 3 {
            &[
                SchemaVersion::Current,
                SchemaVersion::V1,
                SchemaVersion::V2,
                SchemaVersion::V3,
            ]
        } else {
            &[SchemaVersion::Current]
        };
        for &version in versions {
            let decoded = decoder
                .decode(&avro_chain(max_step_depth, version))
                .expect("depth at the limit decodes");
            assert_eq!(decoded.steps, at_limit.steps);
        }
        for version in [
            SchemaVersion::Current,
            SchemaVersion::V1,
            SchemaVersion::V2,
            SchemaVersion::V3,
        ] {
            assert_refused(
                &decoder,
                &avro_chain(max_step_depth + 1, version),
                "steps_too_deep",
            );
        }
        assert_eq!(decoder.decode(&avro(&at_limit)).expect("decodes"), at_limit);
        assert_eq!(decoder.decode(&json(&at_limit)).expect("decodes"), at_limit);
        assert_refused(&decoder, &avro(&too_deep), "steps_too_deep");
        assert_refused(&decoder, &json(&too_deep), "steps_too_deep");
        assert_eq!(
            decoder
                .decode(json_step_chain(max_step_depth).as_bytes())
                .expect("decodes"),
            at_limit
        );
        assert_refused(
            &decoder,
            json_step_chain(max_step_depth + 1).as_bytes(),
            "steps_too_deep",
        );
    }
}

/// Stack of a tokio worker thread (and of a test thread): 2 MiB unless configured.
const WORKER_STACK_BYTES: usize = 2 * 1024 * 1024;

/// Holds in debug builds because the workspace compiles trace-model with `opt-level = 1`
/// (unoptimized, apache-avro's generic decoder takes about 128 KiB of stack per level).
#[test]
fn decodes_v1_records_nested_to_the_default_depth_limit_within_a_worker_thread_stack() {
    let bytes = avro_chain(Limits::default().max_step_depth, SchemaVersion::V1);
    let decoded = std::thread::Builder::new()
        .stack_size(WORKER_STACK_BYTES)
        .spawn(move || decoder().decode(&bytes).map_err(|error| error.to_string()))
        .expect("spawns")
        .join()
        .expect("decoding does not panic");
    let expected = step_chain_trace(Limits::default().max_step_depth);
    assert_eq!(decoded.expect("decodes").steps, expected.steps);
}

/// Limits that let a 50,000-level message through the size check, so depth is what refuses it.
fn roomy_limits() -> Limits {
    Limits {
        max_message_bytes: 16 * 1024 * 1024,
        ..Limits::default()
    }
}

#[test]
fn rejects_fifty_thousand_nested_avro_steps_as_steps_too_deep_without_overflowing_the_stack() {
    let roomy = Decoder::new(roomy_limits());
    for version in [SchemaVersion::Current, SchemaVersion::V1] {
        let bytes = avro_chain(50_000, version);
        let error = decode_error(&roomy, &bytes);
        assert!(
            matches!(error, DecodeError::NestingTooDeep { limit: 32 }),
            "{error}"
        );
        assert_eq!(error.reason(), "steps_too_deep");
    }
    // With the default 1 MiB limit, as deep as fits in a message.
    // 28 bytes open a level; the step's trailing null fields and the block end close it.
    let bytes_per_level = 28 + avro_step_chain_closing_bytes(SchemaVersion::Current);
    let deepest_that_fits = (1024 * 1024 - 64) / bytes_per_level;
    let bytes = avro_chain(deepest_that_fits, SchemaVersion::Current);
    assert!(bytes.len() <= 1024 * 1024);
    assert_refused(&decoder(), &bytes, "steps_too_deep");
}

#[test]
fn rejects_fifty_thousand_nested_json_steps_as_steps_too_deep_without_overflowing_the_stack() {
    let roomy = Decoder::new(roomy_limits());
    let text = json_step_chain(50_000);
    assert_refused(&roomy, text.as_bytes(), "steps_too_deep");
    // Around serde_json's own nesting limit (128 containers, two per step level).
    for depth in [60, 63, 64, 65, 100] {
        assert_refused(&roomy, json_step_chain(depth).as_bytes(), "steps_too_deep");
    }
}

fn flat_steps(count: usize) -> Vec<Step> {
    (0..count)
        .map(|index| Step {
            // Without the version 4 fields: 1000 full steps with them pass 1 MiB in JSON.
            documents: None,
            provider: None,
            model_parameters: None,
            raw_output: serde_json::Value::Null,
            ..full_step(&format!("flat-{index}"), Vec::new())
        })
        .collect()
}

#[test]
fn rejects_more_steps_than_max_steps_as_too_many_steps() {
    let mut event = full_trace();
    event.steps = flat_steps(1000);
    for bytes in [avro(&event), json(&event)] {
        assert_eq!(decoder().decode(&bytes).expect("1000 steps decode"), event);
    }
    event.steps = flat_steps(1001);
    for bytes in [avro(&event), json(&event)] {
        assert_refused(&decoder(), &bytes, "too_many_steps");
    }

    // Nested steps count too: full_trace has 5 steps over three levels.
    assert_eq!(full_trace().all_steps().count(), 5);
    let limits = Limits {
        max_steps: 4,
        ..Limits::default()
    };
    for bytes in [avro(&full_trace()), json(&full_trace())] {
        let error = decode_error(&Decoder::new(limits), &bytes);
        assert!(
            matches!(
                error,
                DecodeError::Invalid(ValidationError::TooManySteps { limit: 4 })
            ),
            "{error}"
        );
    }
}

#[test]
fn rejects_bytes_after_an_avro_datum_as_trailing_bytes() {
    let messages = [
        avro(&full_trace()),
        avro_chain(2, SchemaVersion::V1),
        avro_chain(0, SchemaVersion::Current),
    ];
    for message in messages {
        for trailing in [&[0u8][..], b"\x02", b"garbage after the datum"] {
            let mut bytes = message.clone();
            bytes.extend_from_slice(trailing);
            let error = decode_error(&decoder(), &bytes);
            assert!(
                matches!(error, DecodeError::TrailingBytes(count) if count == trailing.len()),
                "{error}"
            );
            assert_eq!(error.reason(), "trailing_bytes");
        }
    }
}

#[test]
fn accepts_whitespace_around_json_and_refuses_anything_else_after_it() {
    let mut padded = b" \n\t".to_vec();
    padded.extend(json(&full_trace()));
    padded.extend(b" \r\n");
    assert_eq!(decoder().decode(&padded).expect("decodes"), full_trace());
    let mut trailing = json(&full_trace());
    trailing.extend(b"\x00");
    assert_refused(&decoder(), &trailing, "json_shape");
}

#[test]
fn rejects_negative_and_non_finite_numbers_as_invalid_number() {
    type Spoil = fn(&mut TraceEvent);
    let spoilers: [Spoil; 8] = [
        |event| event.latency_ms = Some(f64::NAN),
        |event| event.cost = Some(f64::INFINITY),
        |event| event.cost = Some(-0.5),
        |event| event.tokens = Some(-1),
        |event| event.prompt_tokens = Some(i64::MIN),
        |event| event.steps[0].latency_ms = f64::NEG_INFINITY,
        |event| event.steps[0].steps[0].cost = Some(-1.0),
        |event| event.steps[1].completion_tokens = Some(-3),
    ];
    for spoil in spoilers {
        let mut event = full_trace();
        spoil(&mut event);
        assert_refused(&decoder(), &avro(&event), "invalid_number");
    }
    let negative_tokens = br#"{"name": "t", "timestamp_ms": 0, "tokens": -5}"#;
    assert_refused(&decoder(), negative_tokens, "invalid_number");
}

#[test]
fn rejects_an_unknown_kind_in_avro_as_unknown_kind() {
    // kind is the sixth field of the hand-built datum: "trace" -> "tracx".
    let mut datum = avro_step_chain_datum(0, SchemaVersion::Current);
    let kind_end = 5 + 6;
    assert_eq!(&datum[5..kind_end], b"\x0atrace");
    datum[kind_end - 1] = b'x';
    let bytes = single_object(avro::trace_event_fingerprint(), &datum);
    assert!(matches!(
        decode_error(&decoder(), &bytes),
        DecodeError::UnknownKind
    ));
    assert_refused(&decoder(), &bytes, "unknown_kind");
}

#[test]
fn rejects_avro_map_values_that_are_not_json_text_as_invalid_json_text() {
    // inputs is the ninth field, right after name "deep": splice in {"k": "{not json"}.
    let datum = avro_step_chain_datum(0, SchemaVersion::Current);
    let inputs_at = 5 + 6 + 1 + 5;
    assert_eq!(&datum[inputs_at - 5..inputs_at], b"\x08deep");
    let mut spliced = datum[..inputs_at].to_vec();
    spliced.extend(b"\x02\x02k\x12{not json\x00");
    spliced.extend(&datum[inputs_at + 1..]);
    let bytes = single_object(avro::trace_event_fingerprint(), &spliced);
    let error = decode_error(&decoder(), &bytes);
    assert!(
        matches!(error, DecodeError::InvalidJsonText { field: "inputs" }),
        "{error}"
    );
    assert_eq!(error.reason(), "invalid_json_text");
}

/// A one-step chain datum whose step has `text` in the version 4 field at `index`
/// (0 documents, 1 provider, 2 model_parameters, 3 raw_output) instead of null.
fn one_step_with_v4_field(index: usize, text: &str) -> Vec<u8> {
    let datum = avro_step_chain_datum(1, SchemaVersion::Current);
    // The datum ends: step's documents .. raw_output (4 nulls), end of block, row, row_config.
    let field_at = datum.len() - 7 + index;
    assert_eq!(datum[field_at], 0x00, "a null union branch");
    let mut spliced = datum[..field_at].to_vec();
    spliced.push(0x02); // union branch 1: string
    spliced.push(u8::try_from(text.len() * 2).expect("short text")); // zig-zag length
    spliced.extend(text.as_bytes());
    spliced.extend(&datum[field_at + 1..]);
    single_object(avro::trace_event_fingerprint(), &spliced)
}

#[test]
fn rejects_step_documents_and_model_parameters_of_the_wrong_json_type_as_invalid_json_text() {
    let decoded = decoder()
        .decode(&one_step_with_v4_field(0, r#"["doc", {"id": 1}]"#))
        .expect("an array of documents decodes");
    assert_eq!(
        decoded.steps[0].documents,
        Some(vec![serde_json::json!("doc"), serde_json::json!({"id": 1})])
    );
    let decoded = decoder()
        .decode(&one_step_with_v4_field(3, "[1, 2]"))
        .expect("raw output may be any JSON");
    assert_eq!(decoded.steps[0].raw_output, serde_json::json!([1, 2]));

    for (index, text, field) in [
        (0, r#"{"not": "an array"}"#, "step.documents"),
        (0, "[unclosed", "step.documents"),
        (2, "[0.2, 256]", "step.model_parameters"),
        (3, "{not json", "step.raw_output"),
    ] {
        let error = decode_error(&decoder(), &one_step_with_v4_field(index, text));
        assert!(
            matches!(error, DecodeError::InvalidJsonText { field: refused } if refused == field),
            "{text}: {error}"
        );
        assert_eq!(error.reason(), "invalid_json_text");
    }
}

#[test]
fn rejects_malformed_avro_datums_as_malformed_avro() {
    let mut datum = avro_step_chain_datum(0, SchemaVersion::Current);
    // inference_id's union index 5 does not exist.
    datum[1] = 0x0a;
    assert_refused(
        &decoder(),
        &single_object(avro::trace_event_fingerprint(), &datum),
        "malformed_avro",
    );
    // name "deep" with a byte that is not UTF-8.
    let mut datum = avro_step_chain_datum(0, SchemaVersion::Current);
    datum[13] = 0xff;
    assert_refused(
        &decoder(),
        &single_object(avro::trace_event_fingerprint(), &datum),
        "malformed_avro",
    );
}
