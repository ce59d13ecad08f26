//! The schema contract: every field survives every encoding, the single-object header is the
//! one the Avro spec defines, JSON uses the schema's field names, and records written with the
//! earlier or a next schema version stay readable.

mod support;

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value as AvroValue;
use fakes::schema_registry::RegistryServer;
use serde_json::Value;
use std::collections::BTreeSet;
use support::fixtures::{
    SchemaVersion, V1_AVSC, V2_AVSC, V3_AVSC, avro_step_chain_datum, confluent,
    full_session_summary, full_trace, header_fingerprint, single_object, step_chain_trace,
    v1_datum, v1_full_trace, v1_schema, v2_datum, v2_full_trace, v2_schema, v3_datum,
    v3_full_trace, v3_schema,
};
use support::registry::client_of;
use trace_model::codec::avro::{
    self, SESSION_SUMMARY_AVSC, SINGLE_OBJECT_HEADER_LEN, TRACE_EVENT_AVSC,
    TRACE_EVENT_HISTORY_AVSC,
};
use trace_model::{Decoder, Encoding, Limits, TraceEvent, TraceKind, encode};

fn decoder() -> Decoder {
    Decoder::new(Limits::default())
}

/// CRC-64-AVRO exactly as the specification's "Schema Fingerprints" section writes it.
fn crc64_avro(bytes: &[u8]) -> u64 {
    const EMPTY: u64 = 0xc15d_213a_a4d7_a795;
    let mut table = [0u64; 256];
    for (index, entry) in (0u64..).zip(table.iter_mut()) {
        let mut fingerprint = index;
        for _ in 0..8 {
            fingerprint = (fingerprint >> 1) ^ (EMPTY & 0u64.wrapping_sub(fingerprint & 1));
        }
        *entry = fingerprint;
    }
    bytes.iter().fold(EMPTY, |fingerprint, byte| {
        let index = usize::try_from((fingerprint ^ u64::from(*byte)) & 0xff).expect("one byte");
        (fingerprint >> 8) ^ table[index]
    })
}

#[test]
fn the_full_trace_fixture_sets_every_step_field_of_version_4() {
    // The round trips below prove something about these fields only if they are set.
    let event = full_trace();
    assert_eq!(event.all_steps().count(), 5);
    for step in event.all_steps() {
        assert!(step.documents.as_ref().is_some_and(|items| items.len() > 1));
        assert_eq!(step.provider.as_deref(), Some("OpenAI"));
        assert!(
            step.model_parameters
                .as_ref()
                .is_some_and(|map| !map.is_empty())
        );
        assert!(step.raw_output.is_object());
    }
}

#[test]
fn trace_with_every_field_set_round_trips_through_avro_single_object() {
    let event = full_trace();
    let bytes = encode(&event, Encoding::Avro).expect("encodes");
    assert_eq!(bytes[..2], [0xC3, 0x01]);
    assert_eq!(decoder().decode(&bytes).expect("decodes"), event);
}

#[test]
fn trace_with_every_field_set_round_trips_through_json() {
    let event = full_trace();
    let bytes = encode(&event, Encoding::Json).expect("encodes");
    assert_eq!(bytes.first(), Some(&b'{'));
    assert_eq!(decoder().decode(&bytes).expect("decodes"), event);
}

#[tokio::test]
async fn trace_with_every_field_set_round_trips_through_confluent_framing() {
    let server = RegistryServer::start().await;
    let producer_registry = client_of(&server);
    let schema_id = producer_registry
        .register("llm-traces-value", avro::trace_event_schema())
        .await
        .expect("registers");
    let event = full_trace();
    let bytes = encode(&event, Encoding::Confluent { schema_id }).expect("encodes");
    assert_eq!(bytes[0], 0x00);
    assert_eq!(bytes[1..5], schema_id.to_be_bytes());

    // The producer's client cached the id when registering; a fresh consumer fetches it.
    let registering = decoder().with_registry(producer_registry);
    assert_eq!(
        registering.decode(&bytes).expect("decodes from cache"),
        event
    );
    let consuming = decoder().with_registry(client_of(&server));
    assert_eq!(
        consuming.decode_fetching(&bytes).await.expect("decodes"),
        event
    );
}

#[test]
fn session_summary_with_every_field_set_round_trips_through_avro() {
    let summary = full_session_summary();
    let bytes = avro::encode_session_summary(&summary).expect("encodes");
    assert_eq!(bytes[..2], [0xC3, 0x01]);
    assert_eq!(
        avro::decode_session_summary(&bytes).expect("decodes"),
        summary
    );
}

#[test]
fn single_object_headers_carry_the_spec_crc64_fingerprint_little_endian() {
    // Check the reference implementation against the spec's test vector first.
    assert_eq!(crc64_avro(br#""null""#), 7_195_948_357_588_979_594);

    let trace_bytes = encode(&full_trace(), Encoding::Avro).expect("encodes");
    let trace_fingerprint = crc64_avro(avro::trace_event_schema().canonical_form().as_bytes());
    assert_eq!(
        trace_bytes[2..SINGLE_OBJECT_HEADER_LEN],
        trace_fingerprint.to_le_bytes()
    );
    assert_eq!(avro::trace_event_fingerprint(), trace_fingerprint);

    let summary_bytes = avro::encode_session_summary(&full_session_summary()).expect("encodes");
    let summary_fingerprint =
        crc64_avro(avro::session_summary_schema().canonical_form().as_bytes());
    assert_eq!(
        summary_bytes[2..SINGLE_OBJECT_HEADER_LEN],
        summary_fingerprint.to_le_bytes()
    );
}

fn avsc_field_names(record: &Value) -> BTreeSet<String> {
    record["fields"]
        .as_array()
        .expect("record has fields")
        .iter()
        .map(|field| field["name"].as_str().expect("field has a name").to_owned())
        .collect()
}

fn json_keys(value: &Value) -> BTreeSet<String> {
    value
        .as_object()
        .expect("a JSON object")
        .keys()
        .cloned()
        .collect()
}

#[test]
fn json_wire_form_uses_the_avro_field_names() {
    let schema: Value = serde_json::from_str(TRACE_EVENT_AVSC).expect("schema is JSON");
    let step_schema = step_record(&schema);
    let json: Value =
        serde_json::from_slice(&encode(&full_trace(), Encoding::Json).expect("encodes"))
            .expect("encoded JSON parses");
    assert_eq!(json_keys(&json), avsc_field_names(&schema));
    assert_eq!(json_keys(&json["steps"][0]), avsc_field_names(step_schema));
    assert_eq!(json["kind"], "session_end");

    let summary_schema: Value = serde_json::from_str(SESSION_SUMMARY_AVSC).expect("schema is JSON");
    let summary = serde_json::to_value(full_session_summary()).expect("serializes");
    assert_eq!(json_keys(&summary), avsc_field_names(&summary_schema));
}

#[test]
fn json_without_optional_fields_decodes_to_the_schema_defaults() {
    let event = decoder()
        .decode(br#"  {"name": "minimal", "timestamp_ms": 1700000000000}"#)
        .expect("decodes");
    assert_eq!(event, TraceEvent::new("minimal", 1_700_000_000_000));
    assert_eq!(
        event.schema_version,
        trace_model::record::TRACE_EVENT_SCHEMA_VERSION
    );

    let step = decoder()
        .decode(
            br#"{"name": "t", "timestamp_ms": 0, "steps": [
                {"id": "s", "name": "n", "start_time_ms": 1, "end_time_ms": 2, "latency_ms": 1.0}
            ]}"#,
        )
        .expect("decodes")
        .steps
        .remove(0);
    assert_eq!(step.step_type, "user_call");
}

#[test]
fn hand_built_step_chain_bytes_match_the_production_encoding() {
    // The bad-input tests build deep chains by hand; prove the layout is the schema's.
    for depth in [0, 1, 3] {
        let produced = encode(&step_chain_trace(depth), Encoding::Avro).expect("encodes");
        let by_hand = single_object(
            avro::trace_event_fingerprint(),
            &avro_step_chain_datum(depth, SchemaVersion::Current),
        );
        assert_eq!(by_hand, produced, "depth {depth}");
    }
}

// ---- evolution ----

#[test]
fn history_holds_the_v1_v2_and_v3_schema_files() {
    assert_eq!(TRACE_EVENT_HISTORY_AVSC, [V1_AVSC, V2_AVSC, V3_AVSC]);
    for earlier in [v1_schema(), v2_schema(), v3_schema()] {
        assert_ne!(
            earlier.canonical_form(),
            avro::trace_event_schema().canonical_form()
        );
    }
}

#[test]
fn v3_record_decodes_with_the_step_field_defaults_and_every_other_field_intact() {
    let expected = v3_full_trace();
    assert!(expected.row.is_some(), "v3 fields are set");
    let v3_fingerprint = crc64_avro(v3_schema().canonical_form().as_bytes());
    assert_ne!(v3_fingerprint, avro::trace_event_fingerprint());
    let bytes = single_object(v3_fingerprint, &v3_datum(&expected));
    assert_eq!(header_fingerprint(&bytes), v3_fingerprint);

    let decoded = decoder().decode(&bytes).expect("v3 record decodes");
    assert_eq!(decoded.schema_version, 3);
    for step in decoded.all_steps() {
        assert_eq!(step.documents, None);
        assert_eq!(step.provider, None);
        assert_eq!(step.model_parameters, None);
        assert_eq!(step.raw_output, Value::Null);
    }
    assert_eq!(decoded, expected);
}

#[tokio::test]
async fn v3_record_in_confluent_framing_resolves_to_the_current_schema() {
    let server = RegistryServer::start().await;
    let v3_id = server.state.preload(V3_AVSC);
    let decoding = decoder().with_registry(client_of(&server));
    let bytes = confluent(v3_id, &v3_datum(&v3_full_trace()));
    assert_eq!(
        decoding.decode_fetching(&bytes).await.expect("v3 decodes"),
        v3_full_trace()
    );
    // The current writer schema next to it on the same topic.
    let current_id = server
        .state
        .preload(&avro::trace_event_schema().canonical_form());
    let current = encode(
        &full_trace(),
        Encoding::Confluent {
            schema_id: current_id,
        },
    )
    .expect("encodes");
    assert_eq!(
        decoding.decode_fetching(&current).await.expect("decodes"),
        full_trace()
    );
}

#[test]
fn v2_record_decodes_without_row_columns_and_every_other_field_intact() {
    let expected = v2_full_trace();
    let v2_fingerprint = crc64_avro(v2_schema().canonical_form().as_bytes());
    let bytes = single_object(v2_fingerprint, &v2_datum(&expected));
    assert_eq!(header_fingerprint(&bytes), v2_fingerprint);

    let decoded = decoder().decode(&bytes).expect("v2 record decodes");
    assert_eq!((&decoded.row, &decoded.row_config), (&None, &None));
    assert_eq!(decoded.pipeline_id, expected.pipeline_id);
    assert_eq!(decoded, expected);
}

#[test]
fn row_update_with_its_columns_round_trips_through_avro_and_json() {
    let mut update = TraceEvent::new("row_update", 1_700_000_000_000);
    update.kind = TraceKind::RowUpdate;
    update.inference_id = Some("inf-7".to_owned());
    update.pipeline_id = Some("pipeline-7f3c".to_owned());
    update.row = Some(
        serde_json::json!({"groundTruth": "yes", "score": 0.5, "tags": [1, null]})
            .as_object()
            .cloned()
            .expect("object"),
    );
    for encoding in [Encoding::Avro, Encoding::Json] {
        let bytes = encode(&update, encoding).expect("encodes");
        assert_eq!(decoder().decode(&bytes).expect("decodes"), update);
    }
    update.inference_id = None;
    let bytes = encode(&update, Encoding::Avro).expect("encodes");
    let error = decoder()
        .decode(&bytes)
        .expect_err("a row update names its row");
    assert_eq!(error.reason(), "missing_id");
}

#[test]
fn v1_record_decodes_with_the_pipeline_id_default_and_every_other_field_intact() {
    let expected = v1_full_trace();
    let v1_fingerprint = crc64_avro(v1_schema().canonical_form().as_bytes());
    let bytes = single_object(v1_fingerprint, &v1_datum(&expected));
    assert_eq!(header_fingerprint(&bytes), v1_fingerprint);

    let decoded = decoder().decode(&bytes).expect("v1 record decodes");
    assert_eq!(decoded.pipeline_id, None);
    assert_eq!(decoded, expected);
}

/// The `Step` record of a `TraceEvent` schema file.
fn step_record(schema: &Value) -> &Value {
    &schema["fields"]
        .as_array()
        .expect("record has fields")
        .iter()
        .find(|field| field["name"] == "steps")
        .expect("steps field")["type"]["items"]
}

/// Fields of `current` whose names `earlier` lacks.
fn added_fields<'a>(current: &'a Value, earlier: &Value) -> Vec<&'a Value> {
    let earlier_fields = avsc_field_names(earlier);
    current["fields"]
        .as_array()
        .expect("record has fields")
        .iter()
        .filter(|field| !earlier_fields.contains(field["name"].as_str().unwrap_or_default()))
        .collect()
}

#[test]
fn every_field_added_since_each_earlier_version_has_a_default() {
    let current: Value = serde_json::from_str(TRACE_EVENT_AVSC).expect("schema is JSON");
    for earlier in [V1_AVSC, V2_AVSC, V3_AVSC] {
        let earlier: Value = serde_json::from_str(earlier).expect("history file is JSON");
        let mut added = added_fields(&current, &earlier);
        added.extend(added_fields(step_record(&current), step_record(&earlier)));
        assert!(
            !added.is_empty(),
            "{} and the current schema are the same",
            earlier["doc"]
        );
        for field in added {
            assert!(
                field.get("default").is_some(),
                "field {} has no default",
                field["name"]
            );
        }
    }
    let v3: Value = serde_json::from_str(V3_AVSC).expect("history file is JSON");
    let step_fields_added_in_v4: BTreeSet<&str> =
        added_fields(step_record(&current), step_record(&v3))
            .iter()
            .filter_map(|field| field["name"].as_str())
            .collect();
    assert_eq!(
        step_fields_added_in_v4,
        BTreeSet::from(["documents", "model_parameters", "provider", "raw_output"])
    );
}

/// The current schema with `extra` appended to the top-level fields and `step_extra` to the
/// `Step` fields: what the next version would look like.
fn next_version_schema(extra: Value, step_extra: Value) -> Schema {
    let mut schema: Value = serde_json::from_str(TRACE_EVENT_AVSC).expect("schema is JSON");
    let fields = schema["fields"].as_array_mut().expect("record has fields");
    let steps = fields
        .iter_mut()
        .find(|field| field["name"] == "steps")
        .expect("steps field");
    steps["type"]["items"]["fields"]
        .as_array_mut()
        .expect("step has fields")
        .push(step_extra);
    fields.push(extra);
    Schema::parse_str(&schema.to_string()).expect("next version parses")
}

/// Removes record fields named `name`, at any depth.
fn without_field(value: AvroValue, name: &str) -> AvroValue {
    match value {
        AvroValue::Record(fields) => AvroValue::Record(
            fields
                .into_iter()
                .filter(|(field, _)| field != name)
                .map(|(field, value)| (field, without_field(value, name)))
                .collect(),
        ),
        AvroValue::Array(items) => AvroValue::Array(
            items
                .into_iter()
                .map(|item| without_field(item, name))
                .collect(),
        ),
        other => other,
    }
}

fn current_datum(event: &TraceEvent) -> Vec<u8> {
    let bytes = encode(event, Encoding::Avro).expect("encodes");
    bytes[SINGLE_OBJECT_HEADER_LEN..].to_vec()
}

#[test]
fn current_bytes_are_readable_by_a_next_version_that_adds_defaulted_fields() {
    let next = next_version_schema(
        serde_json::json!({"name": "region", "type": ["null", "string"], "default": null}),
        serde_json::json!({"name": "span_kind", "type": "string", "default": "internal"}),
    );
    let current = avro::trace_event_schema();
    let datum = current_datum(&full_trace());

    let as_written = GenericDatumReader::builder(current)
        .build()
        .expect("reader")
        .read_value(&mut datum.as_slice())
        .expect("reads with the writer schema");
    let as_next = GenericDatumReader::builder(current)
        .reader_schema(&next)
        .build()
        .expect("resolving reader")
        .read_value(&mut datum.as_slice())
        .expect("next version reads current bytes");

    let AvroValue::Record(fields) = &as_next else {
        panic!("not a record: {as_next:?}");
    };
    let (last_name, last_value) = fields.last().expect("fields");
    assert_eq!(last_name, "region");
    assert_eq!(*last_value, AvroValue::Union(0, Box::new(AvroValue::Null)));
    let step_kinds = full_trace().all_steps().count();
    let num_span_kinds = format!("{as_next:?}")
        .matches(r#"("span_kind", String("internal"))"#)
        .count();
    assert_eq!(num_span_kinds, step_kinds);
    assert_eq!(
        without_field(without_field(as_next, "region"), "span_kind"),
        as_written
    );
}

#[test]
fn a_next_version_adding_a_field_without_a_default_cannot_read_current_bytes() {
    // The counterpart of the test above: resolution does fail when the rule is broken.
    let next = next_version_schema(
        serde_json::json!({"name": "region", "type": "string"}),
        serde_json::json!({"name": "span_kind", "type": "string", "default": "internal"}),
    );
    let current = avro::trace_event_schema();
    let datum = current_datum(&full_trace());
    let result = GenericDatumReader::builder(current)
        .reader_schema(&next)
        .build()
        .expect("resolving reader")
        .read_value(&mut datum.as_slice());
    assert!(result.is_err(), "read {result:?}");
}
