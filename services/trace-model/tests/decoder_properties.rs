//! Properties of the decoder over generated input: arbitrary bytes and mutated messages never
//! panic and never yield an invalid trace, and arbitrary valid traces round-trip exactly.
//!
//! Case counts default to 256 per property to keep debug runs fast; set `PROPTEST_CASES` to
//! run more.

mod support;

use fakes::schema_registry::RegistryServer;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use serde_json::Value;
use support::fixtures::{
    SchemaVersion, V1_AVSC, avro_step_chain_datum, confluent, full_trace, single_object,
    v1_fingerprint,
};
use support::registry::client_of;
use trace_model::codec::avro::{self, SINGLE_OBJECT_HEADER_LEN};
use trace_model::validate::validate_trace;
use trace_model::{
    DecodeError, Decoder, Encoding, JsonMap, Limits, Step, TraceEvent, TraceKind, encode,
};

/// Every reason code a decode error may carry.
const KNOWN_REASONS: &[&str] = &[
    "empty",
    "too_large",
    "truncated",
    "unknown_framing",
    "unknown_fingerprint",
    "unknown_schema_id",
    "registry_unavailable",
    "registry_unauthorized",
    "incompatible_schema",
    "malformed_avro",
    "trailing_bytes",
    "invalid_utf8",
    "json_shape",
    "invalid_json_text",
    "unknown_kind",
    "steps_too_deep",
    "empty_id",
    "id_too_long",
    "id_not_printable",
    "too_many_steps",
    "invalid_number",
];

fn config() -> ProptestConfig {
    let from_environment = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_some() {
        from_environment
    } else {
        ProptestConfig {
            cases: 256,
            ..from_environment
        }
    }
}

/// Where a peek and a decode of the same bytes both succeed, they agree on the peeked fields.
fn check_peek(decoder: &Decoder, bytes: &[u8]) -> Result<(), TestCaseError> {
    if let (Some(head), Ok(event)) = (decoder.peek(bytes), decoder.decode(bytes)) {
        prop_assert_eq!(head.pipeline_id, event.pipeline_id.as_deref());
        prop_assert_eq!(head.user_id, event.user_id.as_deref());
        prop_assert_eq!(head.session_id, event.session_id.as_deref());
        prop_assert_eq!(head.kind, event.kind);
        prop_assert_eq!(head.timestamp_ms, event.timestamp_ms);
        prop_assert_eq!(head.route_key(), trace_model::routing::route_key(&event));
    }
    Ok(())
}

/// A decode either yields a trace that passes validation or a known, permanent error.
fn check_outcome(
    limits: &Limits,
    outcome: Result<TraceEvent, DecodeError>,
) -> Result<(), TestCaseError> {
    match outcome {
        Ok(event) => {
            prop_assert_eq!(validate_trace(&event, limits), Ok(()));
        }
        Err(error) => {
            prop_assert!(
                KNOWN_REASONS.contains(&error.reason()),
                "unknown reason {}",
                error.reason()
            );
            prop_assert!(!error.is_transient(), "{} without a registry", error);
        }
    }
    Ok(())
}

// ---- (a) arbitrary bytes ----

/// Random bytes, alone or behind each framing's header so the walk gets past detection.
fn arbitrary_message() -> impl Strategy<Value = Vec<u8>> {
    let body = prop::collection::vec(any::<u8>(), 0..4096);
    let current = avro::trace_event_fingerprint();
    let v1 = v1_fingerprint();
    prop_oneof![
        body.clone(),
        body.clone()
            .prop_map(move |bytes| single_object(current, &bytes)),
        body.clone()
            .prop_map(move |bytes| single_object(v1, &bytes)),
        body.clone().prop_map(|bytes| [&b"{"[..], &bytes].concat()),
        body.prop_map(|bytes| confluent(1, &bytes)),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic_and_never_decode_to_an_invalid_trace(
        bytes in arbitrary_message(),
    ) {
        let decoder = Decoder::default();
        check_outcome(decoder.limits(), decoder.decode(&bytes))?;
        check_peek(&decoder, &bytes)?;
    }
}

// ---- (b) mutated valid messages ----

#[derive(Debug, Clone)]
enum Mutation {
    FlipBit { at: Index, bit: u8 },
    Overwrite { at: Index, byte: u8 },
    Insert { at: Index, byte: u8 },
    Delete { at: Index },
    Truncate { at: Index },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Overwrite { at, byte }),
        (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Insert { at, byte }),
        any::<Index>().prop_map(|at| Mutation::Delete { at }),
        any::<Index>().prop_map(|at| Mutation::Truncate { at }),
    ]
}

fn mutate(bytes: &mut Vec<u8>, mutation: &Mutation) {
    if bytes.is_empty() {
        if let Mutation::Insert { byte, .. } = mutation {
            bytes.push(*byte);
        }
        return;
    }
    match mutation {
        Mutation::FlipBit { at, bit } => {
            let position = at.index(bytes.len());
            bytes[position] ^= 1 << bit;
        }
        Mutation::Overwrite { at, byte } => {
            let position = at.index(bytes.len());
            bytes[position] = *byte;
        }
        Mutation::Insert { at, byte } => bytes.insert(at.index(bytes.len() + 1), *byte),
        Mutation::Delete { at } => {
            bytes.remove(at.index(bytes.len()));
        }
        Mutation::Truncate { at } => bytes.truncate(at.index(bytes.len())),
    }
}

/// Valid messages in every framing the decoder reads without a registry.
fn valid_messages() -> Vec<Vec<u8>> {
    let mut small = TraceEvent::new("small", 1);
    small.session_id = Some("s".into());
    vec![
        encode(&full_trace(), Encoding::Avro).expect("encodes"),
        encode(&full_trace(), Encoding::Json).expect("encodes"),
        encode(&small, Encoding::Avro).expect("encodes"),
        encode(&small, Encoding::Json).expect("encodes"),
        single_object(
            v1_fingerprint(),
            &avro_step_chain_datum(3, SchemaVersion::V1),
        ),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn mutated_valid_messages_never_panic_and_decode_only_to_valid_traces(
        message in prop::sample::select(valid_messages()),
        mutations in prop::collection::vec(mutation(), 1..8),
    ) {
        let mut bytes = message;
        for mutation in &mutations {
            mutate(&mut bytes, mutation);
        }
        let decoder = Decoder::default();
        check_outcome(decoder.limits(), decoder.decode(&bytes))?;
        check_peek(&decoder, &bytes)?;
    }
}

#[tokio::test]
async fn mutated_confluent_datums_never_panic_for_current_or_resolved_writer_schemas() {
    let server = RegistryServer::start().await;
    let registry = client_of(&server);
    let current_id = registry
        .register("llm-traces-value", avro::trace_event_schema())
        .await
        .expect("registers");
    let v1_id = server.state.preload(V1_AVSC);
    registry.fetch(v1_id).await.expect("fetches v1");
    let decoder = Decoder::default().with_registry(registry);

    let current_datum = encode(&full_trace(), Encoding::Avro).expect("encodes")
        [SINGLE_OBJECT_HEADER_LEN..]
        .to_vec();
    let v1_datum = avro_step_chain_datum(3, SchemaVersion::V1);
    let messages = vec![
        confluent(current_id, &current_datum),
        confluent(v1_id, &v1_datum),
    ];
    for message in &messages {
        assert!(decoder.decode(message).is_ok(), "unmutated message decodes");
    }
    let strategy = (
        prop::sample::select(messages),
        prop::collection::vec(mutation(), 1..8),
    );
    let mut runner = TestRunner::new(config());
    let result = runner.run(&strategy, |(message, mutations)| {
        let mut bytes = message;
        for mutation in &mutations {
            mutate(&mut bytes, mutation);
        }
        // The registry is never asked again: an unknown id is a permanent failure here.
        check_outcome(decoder.limits(), decoder.decode(&bytes))
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
    assert_eq!(server.state.num_fetches(v1_id), 1);
}

// ---- (c) arbitrary valid traces round-trip ----

fn finite_f64() -> impl Strategy<Value = f64> {
    use prop::num::f64::{NEGATIVE, NORMAL, POSITIVE, SUBNORMAL, ZERO};
    POSITIVE | NEGATIVE | ZERO | NORMAL | SUBNORMAL
}

fn non_negative_finite_f64() -> impl Strategy<Value = f64> {
    use prop::num::f64::{NORMAL, POSITIVE, SUBNORMAL, ZERO};
    POSITIVE | ZERO | NORMAL | SUBNORMAL
}

fn count() -> impl Strategy<Value = i64> {
    0..=i64::MAX
}

/// 1 to 200 printable characters: any id validation accepts.
fn id() -> impl Strategy<Value = String> {
    "\\PC{1,200}"
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        finite_f64().prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..5)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

fn json_map() -> impl Strategy<Value = JsonMap> {
    prop::collection::btree_map(any::<String>(), json_value(), 0..4)
        .prop_map(|map| map.into_iter().collect())
}

/// Steps nested up to `levels` deep.
fn steps(levels: usize) -> BoxedStrategy<Vec<Step>> {
    if levels == 0 {
        return Just(Vec::new()).boxed();
    }
    let step = (
        (id(), any::<String>(), any::<String>()),
        (json_map(), json_value(), json_map()),
        (any::<i64>(), any::<i64>(), non_negative_finite_f64()),
        (
            proptest::option::of(count()),
            proptest::option::of(count()),
            proptest::option::of(count()),
            proptest::option::of(non_negative_finite_f64()),
            proptest::option::of(any::<String>()),
        ),
        (
            proptest::option::of(prop::collection::vec(json_value(), 0..4)),
            proptest::option::of(any::<String>()),
            proptest::option::of(json_map()),
            json_value(),
        ),
        steps(levels - 1),
    )
        .prop_map(
            |(
                (id, name, step_type),
                (inputs, output, metadata),
                (start_time_ms, end_time_ms, latency_ms),
                (tokens, prompt_tokens, completion_tokens, cost, model),
                (documents, provider, model_parameters, raw_output),
                steps,
            )| Step {
                id,
                name,
                step_type,
                inputs,
                output,
                start_time_ms,
                end_time_ms,
                latency_ms,
                tokens,
                prompt_tokens,
                completion_tokens,
                cost,
                model,
                metadata,
                steps,
                documents,
                provider,
                model_parameters,
                raw_output,
            },
        );
    prop::collection::vec(step, 0..3).boxed()
}

fn trace_event() -> impl Strategy<Value = TraceEvent> {
    (
        (
            any::<i32>(),
            proptest::option::of(id()),
            proptest::option::of(id()),
            proptest::option::of(id()),
            proptest::option::of(id()),
            prop_oneof![
                Just(TraceKind::Trace),
                Just(TraceKind::SessionEnd),
                Just(TraceKind::RowUpdate)
            ],
        ),
        (any::<i64>(), any::<String>()),
        (json_map(), json_value(), json_map()),
        (
            proptest::option::of(non_negative_finite_f64()),
            proptest::option::of(count()),
            proptest::option::of(count()),
            proptest::option::of(count()),
            proptest::option::of(non_negative_finite_f64()),
            proptest::option::of(any::<String>()),
        ),
        steps(3),
        (
            proptest::option::of(json_map()),
            proptest::option::of(json_map()),
        ),
    )
        .prop_map(
            |(
                (schema_version, inference_id, pipeline_id, user_id, session_id, kind),
                (timestamp_ms, name),
                (inputs, output, metadata),
                (latency_ms, tokens, prompt_tokens, completion_tokens, cost, model),
                steps,
                (row, row_config),
            )| TraceEvent {
                schema_version,
                // A row update always names its row (validation requires it).
                inference_id: match (kind, inference_id) {
                    (TraceKind::RowUpdate, None) => Some("updated-row".to_owned()),
                    (_, inference_id) => inference_id,
                },
                pipeline_id,
                user_id,
                session_id,
                kind,
                timestamp_ms,
                name,
                inputs,
                output,
                latency_ms,
                tokens,
                prompt_tokens,
                completion_tokens,
                cost,
                model,
                metadata,
                steps,
                row,
                row_config,
            },
        )
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_valid_traces_round_trip_through_avro(event in trace_event()) {
        let bytes = encode(&event, Encoding::Avro).expect("encodes");
        prop_assert_eq!(Decoder::default().decode(&bytes).expect("decodes"), event);
    }

    #[test]
    fn arbitrary_valid_traces_round_trip_through_json(event in trace_event()) {
        let bytes = encode(&event, Encoding::Json).expect("encodes");
        prop_assert_eq!(Decoder::default().decode(&bytes).expect("decodes"), event);
    }

    #[test]
    fn arbitrary_valid_avro_traces_are_peeked_as_they_decode(event in trace_event()) {
        let bytes = encode(&event, Encoding::Avro).expect("encodes");
        let decoder = Decoder::default();
        prop_assert!(decoder.peek(&bytes).is_some());
        check_peek(&decoder, &bytes)?;
    }

    #[test]
    fn json_traces_are_not_peeked(event in trace_event()) {
        let bytes = encode(&event, Encoding::Json).expect("encodes");
        prop_assert_eq!(Decoder::default().peek(&bytes), None);
    }
}

/// What `peek` declines, to be decoded instead: other framings and schemas, records over the
/// size limit, and ids that would fail validation.
#[test]
fn only_current_schema_single_objects_with_valid_ids_within_limits_are_peeked() {
    let event = full_trace();
    let bytes = encode(&event, Encoding::Avro).expect("encodes");
    let datum = &bytes[SINGLE_OBJECT_HEADER_LEN..];
    let decoder = Decoder::default();
    let head = decoder
        .peek(&bytes)
        .expect("the current schema's record is peeked");
    assert_eq!(head.session_id, event.session_id.as_deref());
    assert_eq!(decoder.peek(&single_object(v1_fingerprint(), datum)), None);
    assert_eq!(decoder.peek(&confluent(1, datum)), None);
    let small = Decoder::new(Limits {
        max_message_bytes: bytes.len() - 1,
        ..Limits::default()
    });
    assert_eq!(small.peek(&bytes), None);
    let mut control = event.clone();
    control.session_id = Some("session\u{7}".to_owned());
    let control = encode(&control, Encoding::Avro).expect("encodes");
    assert!(decoder.decode(&control).is_err(), "the id fails validation");
    assert_eq!(decoder.peek(&control), None);
}
