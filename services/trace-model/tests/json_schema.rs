//! `schemas/trace_event.schema.json`: the JSON Schema of the JSON encoding, generated from
//! `schemas/trace_event.avsc`, and proof that the codec's own JSON encodings satisfy it.
//!
//! The generator reads the structure (fields, types, defaults, docs) from the `.avsc` alone.
//! Which string fields carry JSON text in Avro (and so are plain JSON values in the JSON
//! encoding) the schema file does not mark in a form a program can read: the codec marks
//! them, by giving them a `serde_json::Value` type in `record.rs`. So the generator asks the
//! codec: it decodes a minimal JSON trace holding a probe object at each string position and
//! encodes it again. A position that keeps the object is JSON-typed; one that refuses an array
//! but keeps an object holds only objects (`row`, `row_config`). A field added to the `.avsc`
//! (say a JSON-typed `documents` on steps) therefore needs no change here, only a rerun with
//! `UPDATE_JSON_SCHEMA=1`.
//!
//! A small validator for exactly the keywords the generator writes checks real encodings:
//! the `jsonschema` crate would pull in a regex engine, an HTTP client feature set and URL
//! handling for what forty lines do here. Python examples validate with the `jsonschema`
//! package too (`tests/producers/python-json`).

mod support;

use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use support::fixtures::full_trace;
use trace_model::codec::avro::TRACE_EVENT_AVSC;
use trace_model::codec::json::encode_trace;
use trace_model::{Decoder, Encoding, Limits, TraceEvent, TraceKind, encode};

const UPDATE_VARIABLE: &str = "UPDATE_JSON_SCHEMA";
/// Keywords the generator writes; the validator below implements each of them.
const KEYWORDS: &[&str] = &[
    "$schema",
    "$id",
    "$defs",
    "$ref",
    "title",
    "description",
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "anyOf",
    "default",
];

fn schema_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../schemas/trace_event.schema.json")
}

// ---------------------------------------------------------------------------------------------
// What the codec makes of a string position
// ---------------------------------------------------------------------------------------------

/// How the JSON encoding carries an Avro string position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StringKind {
    /// A plain JSON string.
    Text,
    /// JSON text in Avro: any JSON value in the JSON encoding.
    AnyJson,
    /// JSON text of an object in Avro: a JSON object in the JSON encoding.
    JsonObject,
    /// JSON text of an array in Avro: a JSON array in the JSON encoding.
    JsonArray,
}

/// Named Avro types by name, for references like `"Step"`.
type Named<'a> = BTreeMap<String, &'a Value>;

fn collect_named<'a>(schema: &'a Value, named: &mut Named<'a>) {
    match schema {
        Value::Array(branches) => branches
            .iter()
            .for_each(|branch| collect_named(branch, named)),
        Value::Object(object) => match object.get("type") {
            Some(Value::String(kind)) if matches!(kind.as_str(), "record" | "enum" | "fixed") => {
                if let Some(Value::String(name)) = object.get("name") {
                    named.insert(name.clone(), schema);
                }
                for field in object
                    .get("fields")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    collect_named(&field["type"], named);
                }
            }
            Some(Value::String(kind)) if kind == "array" => collect_named(&schema["items"], named),
            Some(Value::String(kind)) if kind == "map" => collect_named(&schema["values"], named),
            Some(nested @ (Value::Object(_) | Value::Array(_))) => collect_named(nested, named),
            _ => {}
        },
        _ => {}
    }
}

fn resolve<'a>(schema: &'a Value, named: &Named<'a>) -> &'a Value {
    match schema.as_str() {
        Some(name) => named.get(name).copied().unwrap_or(schema),
        None => schema,
    }
}

fn type_name(schema: &Value) -> Option<&str> {
    match schema {
        Value::String(name) => Some(name),
        Value::Object(object) => object.get("type").and_then(Value::as_str),
        _ => None,
    }
}

fn has_default(field: &Value) -> bool {
    field.get("default").is_some()
}

/// The smallest JSON value the codec accepts for `schema`: required record fields only.
fn minimal(schema: &Value, named: &Named) -> Value {
    let schema = resolve(schema, named);
    if let Value::Array(branches) = schema {
        return branches
            .first()
            .map_or(Value::Null, |first| minimal(first, named));
    }
    match type_name(schema) {
        Some("null") => Value::Null,
        Some("boolean") => json!(false),
        Some("int" | "long") => json!(0),
        Some("float" | "double") => json!(0.0),
        Some("map") => json!({}),
        Some("array") => json!([]),
        Some("enum") => schema["symbols"][0].clone(),
        Some("record") => {
            let mut object = Map::new();
            for field in schema["fields"].as_array().into_iter().flatten() {
                if !has_default(field) {
                    let name = field["name"].as_str().unwrap_or_default().to_owned();
                    object.insert(name, minimal(&field["type"], named));
                }
            }
            Value::Object(object)
        }
        // Strings (ids, names) and fixed/bytes: a non-empty printable value passes validation.
        _ => json!("x"),
    }
}

/// `probe` placed where `field_type`'s strings go: the field itself, a map value, an array
/// item or the string branch of a union. `None` when the type holds no string.
fn embed_probe(field_type: &Value, probe: &Value, named: &Named) -> Option<Value> {
    let field_type = resolve(field_type, named);
    if let Value::Array(branches) = field_type {
        return branches
            .iter()
            .find_map(|branch| embed_probe(branch, probe, named));
    }
    match type_name(field_type) {
        Some("string") => Some(probe.clone()),
        Some("map") => embed_probe(&field_type["values"], probe, named)
            .map(|value| json!({ "probe-key": value })),
        Some("array") => {
            embed_probe(&field_type["items"], probe, named).map(|value| json!([value]))
        }
        _ => None,
    }
}

/// A minimal value of `schema` that holds a record named `record` whose field `field` is
/// `value`; `None` when `schema` cannot hold such a record. `seen` stops recursive types.
fn holding(
    schema: &Value,
    record: &str,
    field: &str,
    value: &Value,
    named: &Named,
    seen: &mut BTreeSet<String>,
) -> Option<Value> {
    let schema = resolve(schema, named);
    if let Value::Array(branches) = schema {
        return branches
            .iter()
            .find_map(|branch| holding(branch, record, field, value, named, seen));
    }
    match type_name(schema) {
        Some("array") => {
            holding(&schema["items"], record, field, value, named, seen).map(|item| json!([item]))
        }
        Some("map") => holding(&schema["values"], record, field, value, named, seen)
            .map(|item| json!({ "probe-key": item })),
        Some("record") => {
            let name = schema["name"].as_str().unwrap_or_default();
            let Value::Object(mut object) = minimal(schema, named) else {
                return None;
            };
            if name == record {
                object.insert(field.to_owned(), value.clone());
                return Some(Value::Object(object));
            }
            if !seen.insert(name.to_owned()) {
                return None;
            }
            let found = schema["fields"]
                .as_array()
                .into_iter()
                .flatten()
                .find_map(|child| {
                    holding(&child["type"], record, field, value, named, seen)
                        .map(|inner| (child["name"].as_str().unwrap_or_default(), inner))
                });
            seen.remove(name);
            let (child_name, inner) = found?;
            object.insert(child_name.to_owned(), inner);
            Some(Value::Object(object))
        }
        _ => None,
    }
}

fn contains(haystack: &Value, needle: &Value) -> bool {
    haystack == needle
        || match haystack {
            Value::Array(items) => items.iter().any(|item| contains(item, needle)),
            Value::Object(object) => object.values().any(|item| contains(item, needle)),
            _ => false,
        }
}

/// Whether the codec decodes `probe` at `record.field` and encodes it back unchanged.
fn codec_keeps(root: &Value, record: &str, field: &Value, probe: &Value, named: &Named) -> bool {
    let field_name = field["name"].as_str().unwrap_or_default();
    let Some(value) = embed_probe(&field["type"], probe, named) else {
        return false;
    };
    let Some(document) = holding(
        root,
        record,
        field_name,
        &value,
        named,
        &mut BTreeSet::new(),
    ) else {
        return false;
    };
    let bytes = serde_json::to_vec(&document).expect("probe serializes");
    match Decoder::new(Limits::default()).decode(&bytes) {
        Ok(event) => {
            let encoded: Value =
                serde_json::from_slice(&encode_trace(&event)).expect("codec writes json");
            contains(&encoded, probe)
        }
        Err(_) => false,
    }
}

fn string_kind(root: &Value, record: &str, field: &Value, named: &Named) -> StringKind {
    let object_probe = json!({ "json-schema-probe": [1, "two", null] });
    let array_probe = json!(["json-schema-probe", { "n": 1 }]);
    let keeps_object = codec_keeps(root, record, field, &object_probe, named);
    let keeps_array = codec_keeps(root, record, field, &array_probe, named);
    match (keeps_object, keeps_array) {
        (true, true) => StringKind::AnyJson,
        (true, false) => StringKind::JsonObject,
        (false, true) => StringKind::JsonArray,
        (false, false) => StringKind::Text,
    }
}

// ---------------------------------------------------------------------------------------------
// Avro schema → JSON Schema
// ---------------------------------------------------------------------------------------------

struct Generator<'a> {
    root: &'a Value,
    named: Named<'a>,
    defs: Map<String, Value>,
}

impl<'a> Generator<'a> {
    fn new(root: &'a Value) -> Self {
        let mut named = Named::new();
        collect_named(root, &mut named);
        Generator {
            root,
            named,
            defs: Map::new(),
        }
    }

    /// JSON Schema of `schema`, whose strings are carried as `strings`.
    fn of(&mut self, schema: &'a Value, strings: StringKind) -> Value {
        if let Value::Array(branches) = schema {
            let mut alternatives: Vec<Value> = branches
                .iter()
                .map(|branch| self.of(branch, strings))
                .collect();
            // Any JSON value already includes null.
            if alternatives
                .iter()
                .any(|alternative| alternative == &json!({}))
            {
                return json!({});
            }
            // ["null", X] with a simple X reads best as one `type` list.
            let simple: Option<Vec<Value>> = alternatives
                .iter()
                .map(|alternative| match alternative.as_object() {
                    Some(object) if object.len() == 1 => object.get("type").cloned(),
                    _ => None,
                })
                .collect();
            if let Some(types) = simple {
                return json!({ "type": types });
            }
            alternatives.dedup();
            return json!({ "anyOf": alternatives });
        }
        if let Some(reference) = schema.as_str()
            && let Some(target) = self.named.get(reference).copied()
        {
            return self.named_type(target);
        }
        match type_name(schema) {
            Some("null") => json!({"type": "null"}),
            Some("boolean") => json!({"type": "boolean"}),
            Some("int" | "long") => json!({"type": "integer"}),
            Some("float" | "double") => json!({"type": "number"}),
            Some("bytes" | "fixed") => json!({"type": "string"}),
            Some("string") => match strings {
                StringKind::Text => json!({"type": "string"}),
                StringKind::AnyJson => json!({}),
                StringKind::JsonObject => json!({"type": "object"}),
                StringKind::JsonArray => json!({"type": "array"}),
            },
            Some("map") => {
                json!({"type": "object", "additionalProperties": self.of(&schema["values"], strings)})
            }
            Some("array") => json!({"type": "array", "items": self.of(&schema["items"], strings)}),
            Some("enum") => json!({"enum": schema["symbols"].clone()}),
            Some("record") => self.named_type(schema),
            other => panic!("avro type {other:?} has no JSON Schema form here"),
        }
    }

    /// A `$ref` to the definition of a named type, generated on first use.
    fn named_type(&mut self, schema: &'a Value) -> Value {
        let name = schema["name"].as_str().expect("named type").to_owned();
        if type_name(schema) != Some("record") {
            return self.of_unnamed(schema);
        }
        if !self.defs.contains_key(&name) {
            // Placeholder first: the record may refer to itself.
            self.defs.insert(name.clone(), Value::Null);
            let definition = self.record(schema);
            self.defs.insert(name.clone(), definition);
        }
        json!({ "$ref": format!("#/$defs/{name}") })
    }

    fn of_unnamed(&mut self, schema: &'a Value) -> Value {
        match type_name(schema) {
            Some("enum") => json!({"enum": schema["symbols"].clone()}),
            _ => json!({"type": "string"}),
        }
    }

    fn record(&mut self, schema: &'a Value) -> Value {
        let record_name = schema["name"].as_str().unwrap_or_default();
        let mut properties = Map::new();
        let mut required = Vec::new();
        for field in schema["fields"].as_array().into_iter().flatten() {
            let name = field["name"].as_str().expect("field name");
            let strings = string_kind(self.root, record_name, field, &self.named);
            let mut property = match self.of(&field["type"], strings) {
                Value::Object(object) => object,
                _ => Map::new(),
            };
            let mut description = field
                .get("doc")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            if strings != StringKind::Text {
                let what = match strings {
                    StringKind::JsonObject => "a JSON object",
                    StringKind::JsonArray => "a JSON array",
                    _ => "any JSON value",
                };
                let (carried, value) = if type_name(&field["type"]) == Some("map") {
                    ("each value", "each value is")
                } else {
                    ("it", "it is")
                };
                let note = format!(
                    "JSON-typed: Avro carries {carried} as JSON text; in the JSON encoding \
                     {value} {what} itself, not a string holding JSON."
                );
                description = if description.is_empty() {
                    note
                } else {
                    format!("{description} {note}")
                };
            }
            if !description.is_empty() {
                property.insert("description".into(), description.into());
            }
            match field.get("default") {
                // A JSON-typed string's default is JSON text, not the value; `null`, `{}` and
                // `[]` (of a map or an array) mean the same in both encodings.
                Some(default) if strings == StringKind::Text || !default.is_string() => {
                    property.insert("default".into(), default.clone());
                }
                Some(_) => {}
                None => required.push(Value::from(name)),
            }
            properties.insert(name.to_owned(), Value::Object(property));
        }
        let mut definition = Map::new();
        definition.insert("type".into(), "object".into());
        if let Some(doc) = schema.get("doc") {
            definition.insert("description".into(), doc.clone());
        }
        definition.insert("properties".into(), Value::Object(properties));
        definition.insert("required".into(), Value::Array(required));
        definition.insert("additionalProperties".into(), false.into());
        Value::Object(definition)
    }

    fn document(mut self) -> Value {
        let root_ref = self.of(self.root, StringKind::Text);
        let root_name = root_ref["$ref"]
            .as_str()
            .and_then(|reference| reference.strip_prefix("#/$defs/"))
            .expect("the schema is a record")
            .to_owned();
        let Some(Value::Object(root)) = self.defs.remove(&root_name) else {
            panic!("root record generated");
        };
        let mut document = Map::new();
        document.insert(
            "$schema".into(),
            "https://json-schema.org/draft/2020-12/schema".into(),
        );
        document.insert("$id".into(), "trace_event.schema.json".into());
        document.insert("title".into(), root_name.into());
        document.extend(root);
        let description = format!(
            "{} GENERATED from schemas/trace_event.avsc by services/trace-model/tests/json_schema.rs \
             (UPDATE_JSON_SCHEMA=1 cargo test -p trace-model --test json_schema); do not edit. \
             Unknown properties are ignored by the sessionizer; this schema refuses them to catch \
             misspelt field names.",
            document
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or_default()
        );
        document.insert("description".into(), description.into());
        if !self.defs.is_empty() {
            document.insert("$defs".into(), Value::Object(self.defs));
        }
        Value::Object(document)
    }
}

/// Keys in sorted order at every level, whatever `serde_json`'s map features: the file must
/// not depend on which other crates share the build.
fn sorted(value: Value) -> Value {
    match value {
        Value::Object(object) => {
            let ordered: BTreeMap<String, Value> = object
                .into_iter()
                .map(|(key, item)| (key, sorted(item)))
                .collect();
            Value::Object(ordered.into_iter().collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

fn generate() -> String {
    let avsc: Value = serde_json::from_str(TRACE_EVENT_AVSC).expect("avsc is json");
    let schema = sorted(Generator::new(&avsc).document());
    let mut text = serde_json::to_string_pretty(&schema).expect("serializes");
    text.push('\n');
    text
}

fn checked_in_schema() -> Value {
    let text = std::fs::read_to_string(schema_path()).expect("read trace_event.schema.json");
    serde_json::from_str(&text).expect("trace_event.schema.json is json")
}

// ---------------------------------------------------------------------------------------------
// A validator for the keywords above
// ---------------------------------------------------------------------------------------------

fn type_matches(expected: &str, instance: &Value) -> bool {
    match expected {
        "null" => instance.is_null(),
        "boolean" => instance.is_boolean(),
        "integer" => instance.is_i64() || instance.is_u64(),
        "number" => instance.is_number(),
        "string" => instance.is_string(),
        "array" => instance.is_array(),
        "object" => instance.is_object(),
        other => panic!("unknown type {other}"),
    }
}

/// Errors of `instance` against `schema`, each with its JSON pointer.
fn validate(root: &Value, schema: &Value, instance: &Value, at: &str, errors: &mut Vec<String>) {
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        let pointer = reference.strip_prefix('#').expect("local reference");
        let target = root.pointer(pointer).expect("reference resolves");
        validate(root, target, instance, at, errors);
    }
    if let Some(expected) = schema.get("type") {
        let types: Vec<&str> = match expected {
            Value::String(one) => vec![one.as_str()],
            Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
            other => panic!("type {other}"),
        };
        if !types.iter().any(|name| type_matches(name, instance)) {
            errors.push(format!("{at}: {instance} is not of type {expected}"));
            return;
        }
    }
    if let Some(Value::Array(symbols)) = schema.get("enum")
        && !symbols.contains(instance)
    {
        errors.push(format!("{at}: {instance} is not one of {symbols:?}"));
    }
    if let Some(Value::Array(alternatives)) = schema.get("anyOf")
        && !alternatives.iter().any(|alternative| {
            let mut ignored = Vec::new();
            validate(root, alternative, instance, at, &mut ignored);
            ignored.is_empty()
        })
    {
        errors.push(format!("{at}: {instance} matches no alternative"));
    }
    if let (Some(items), Value::Array(values)) = (schema.get("items"), instance) {
        for (index, value) in values.iter().enumerate() {
            validate(root, items, value, &format!("{at}/{index}"), errors);
        }
    }
    let Value::Object(object) = instance else {
        return;
    };
    for name in schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if !object.contains_key(name) {
            errors.push(format!("{at}: required property {name} is missing"));
        }
    }
    let properties = schema.get("properties").and_then(Value::as_object);
    for (name, value) in object {
        let place = format!("{at}/{name}");
        match (
            properties.and_then(|known| known.get(name)),
            schema.get("additionalProperties"),
        ) {
            (Some(property), _) => validate(root, property, value, &place, errors),
            (None, Some(Value::Bool(false))) => {
                errors.push(format!("{place}: property is not in the schema"));
            }
            (None, Some(additional @ Value::Object(_))) => {
                validate(root, additional, value, &place, errors);
            }
            (None, _) => {}
        }
    }
}

fn errors_of(schema: &Value, instance: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    validate(schema, schema, instance, "", &mut errors);
    errors
}

fn keywords_used(schema: &Value, used: &mut BTreeSet<String>) {
    let Value::Object(object) = schema else {
        return;
    };
    for (key, value) in object {
        used.insert(key.clone());
        match key.as_str() {
            "properties" | "$defs" => value
                .as_object()
                .into_iter()
                .flat_map(Map::values)
                .for_each(|child| keywords_used(child, used)),
            "items" | "additionalProperties" => keywords_used(value, used),
            "anyOf" => value
                .as_array()
                .into_iter()
                .flatten()
                .for_each(|child| keywords_used(child, used)),
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn checked_in_json_schema_is_the_one_generated_from_the_avsc() {
    let generated = generate();
    let path = schema_path();
    if std::env::var_os(UPDATE_VARIABLE).is_some_and(|value| value == "1") {
        std::fs::write(&path, &generated).expect("write trace_event.schema.json");
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "schemas/trace_event.schema.json is not the schema generated from \
         schemas/trace_event.avsc. Regenerate it with\n  \
         {UPDATE_VARIABLE}=1 cargo test -p trace-model --test json_schema\nand commit the \
         result.\n--- generated ---\n{generated}"
    );
}

#[test]
fn generator_writes_only_the_keywords_the_validator_knows() {
    let mut used = BTreeSet::new();
    keywords_used(&checked_in_schema(), &mut used);
    let unknown: Vec<&String> = used
        .iter()
        .filter(|keyword| !KEYWORDS.contains(&keyword.as_str()))
        .collect();
    assert!(unknown.is_empty(), "keywords without a check: {unknown:?}");
}

#[test]
fn json_typed_fields_are_json_values_and_ids_are_strings() {
    let schema = checked_in_schema();
    let trace = &schema["properties"];
    let step = &schema["$defs"]["Step"]["properties"];
    // Any JSON value: no `type` at all.
    for (field, property) in [
        ("output", &trace["output"]),
        ("inputs values", &trace["inputs"]["additionalProperties"]),
        (
            "metadata values",
            &trace["metadata"]["additionalProperties"],
        ),
        ("step.output", &step["output"]),
        (
            "step.inputs values",
            &step["inputs"]["additionalProperties"],
        ),
    ] {
        assert!(property.get("type").is_none(), "{field}: {property}");
    }
    assert_eq!(trace["row"]["type"], json!(["null", "object"]));
    assert_eq!(trace["row_config"]["type"], json!(["null", "object"]));
    for field in ["session_id", "user_id", "inference_id", "model"] {
        assert_eq!(trace[field]["type"], json!(["null", "string"]), "{field}");
    }
    assert_eq!(trace["kind"]["type"], "string");
    assert_eq!(trace["timestamp_ms"]["type"], "integer");
    assert_eq!(schema["required"], json!(["timestamp_ms", "name"]));
    assert_eq!(
        schema["$defs"]["Step"]["required"],
        json!(["id", "name", "start_time_ms", "end_time_ms", "latency_ms"])
    );
    assert_eq!(step["steps"]["items"]["$ref"], "#/$defs/Step");
}

/// Field names the root record's doc lists as JSON-typed: the identifiers inside the
/// parentheses after "JSON-typed fields" (`inputs, output, metadata values, row, ...`).
fn json_typed_names_in_the_doc(avsc: &Value) -> BTreeSet<String> {
    let doc = avsc["doc"].as_str().unwrap_or_default();
    let list = doc
        .split_once("JSON-typed fields (")
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(list, _)| list)
        .expect("the record doc lists its JSON-typed fields");
    list.split(|character: char| !(character.is_ascii_alphanumeric() || character == '_'))
        .filter(|word| !word.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Every string-holding field of every record, as (record, field).
fn string_fields<'a>(named: &Named<'a>) -> Vec<(&'a str, &'a Value)> {
    let mut fields = Vec::new();
    for schema in named.values() {
        let record = schema["name"].as_str().unwrap_or_default();
        for field in schema["fields"].as_array().into_iter().flatten() {
            if embed_probe(&field["type"], &json!("x"), named).is_some() {
                fields.push((record, field));
            }
        }
    }
    fields
}

/// The `.avsc` says in words which fields carry JSON text; the generator asks the codec.
/// They must agree, so the schema's own words and the JSON Schema never tell two stories.
#[test]
fn the_avsc_doc_and_the_codec_agree_on_json_typed_fields() {
    let avsc: Value = serde_json::from_str(TRACE_EVENT_AVSC).expect("avsc is json");
    let mut named = Named::new();
    collect_named(&avsc, &mut named);
    let listed = json_typed_names_in_the_doc(&avsc);
    let mut disagreements = Vec::new();
    for (record, field) in string_fields(&named) {
        let name = field["name"].as_str().unwrap_or_default();
        let kind = string_kind(&avsc, record, field, &named);
        let says_json_text = field["doc"]
            .as_str()
            .is_some_and(|doc| doc.contains("JSON text"));
        let json_typed = kind != StringKind::Text;
        if json_typed != listed.contains(name) || (says_json_text && !json_typed) {
            disagreements.push(format!(
                "{record}.{name}: codec {kind:?}, listed in the record doc: {}, field doc \
                 says JSON text: {says_json_text}",
                listed.contains(name)
            ));
        }
    }
    assert!(disagreements.is_empty(), "{disagreements:#?}");
}

fn encodings_of_the_codec() -> Vec<(String, Value)> {
    let mut minimal = TraceEvent::new("minimal", 0);
    minimal.output = Value::Null;
    let mut chat = TraceEvent::new("chat", 1_700_000_000_000);
    chat.session_id = Some("session-1".into());
    chat.user_id = Some("user-1".into());
    chat.inference_id = Some("session-1-turn-1".into());
    chat.inputs.insert("question".into(), json!("hello?"));
    chat.output = json!("hi");
    chat.tokens = Some(12);
    chat.cost = Some(0.0001);
    chat.latency_ms = Some(87.5);
    let mut end = TraceEvent::new("end", 1_700_000_001_000);
    end.kind = TraceKind::SessionEnd;
    end.session_id = Some("session-1".into());
    let mut update = TraceEvent::new("update", 1_700_000_002_000);
    update.kind = TraceKind::RowUpdate;
    update.inference_id = Some("session-1-turn-1".into());
    update.row = Some(
        json!({"user_feedback": "thumbs_up"})
            .as_object()
            .cloned()
            .expect("object"),
    );
    [
        ("minimal", minimal),
        ("chat turn", chat),
        ("session end", end),
        ("row update", update),
        ("every field, nested steps", full_trace()),
    ]
    .into_iter()
    .map(|(name, event)| {
        let bytes = encode(&event, Encoding::Json).expect("json encoding");
        let value = serde_json::from_slice(&bytes).expect("json");
        (name.to_owned(), value)
    })
    .collect()
}

#[test]
fn json_encodings_of_the_codec_satisfy_the_schema() {
    let schema = checked_in_schema();
    for (name, instance) in encodings_of_the_codec() {
        let errors = errors_of(&schema, &instance);
        assert!(errors.is_empty(), "{name}: {errors:#?}\n{instance}");
    }
}

#[test]
fn schema_refuses_what_the_codec_refuses() {
    let schema = checked_in_schema();
    let decoder = Decoder::new(Limits::default());
    let cases = [
        ("no name", json!({"timestamp_ms": 0})),
        ("no timestamp", json!({"name": "t"})),
        (
            "timestamp as text",
            json!({"name": "t", "timestamp_ms": "0"}),
        ),
        (
            "session id as number",
            json!({"name": "t", "timestamp_ms": 0, "session_id": 7}),
        ),
        (
            "inputs as a list",
            json!({"name": "t", "timestamp_ms": 0, "inputs": [1]}),
        ),
        (
            "row as a string",
            json!({"name": "t", "timestamp_ms": 0, "row": "{}"}),
        ),
        (
            "step without an id",
            json!({"name": "t", "timestamp_ms": 0, "steps": [
                {"name": "s", "start_time_ms": 0, "end_time_ms": 1, "latency_ms": 1.0}
            ]}),
        ),
        (
            "tokens as a fraction",
            json!({"name": "t", "timestamp_ms": 0, "tokens": 1.5}),
        ),
    ];
    for (name, instance) in cases {
        assert!(
            !errors_of(&schema, &instance).is_empty(),
            "{name}: the schema accepts {instance}"
        );
        let bytes = serde_json::to_vec(&instance).expect("json");
        assert!(
            decoder.decode(&bytes).is_err(),
            "{name}: the codec accepts {instance}"
        );
    }
}

#[test]
fn what_the_schema_accepts_the_codec_decodes() {
    let schema = checked_in_schema();
    let decoder = Decoder::new(Limits::default());
    let instance = json!({
        "name": "chat",
        "timestamp_ms": 1_700_000_000_000_i64,
        "session_id": "s-1",
        "inputs": {"question": "hi", "history": [{"role": "user"}]},
        "output": {"answer": "hello", "score": 0.5},
        "metadata": {"tags": ["a"]},
        "steps": [{"id": "s", "name": "llm", "start_time_ms": 0, "end_time_ms": 5,
                   "latency_ms": 5, "output": ["any", 1]}],
        "row": {"custom": 1},
        "latency_ms": null,
    });
    assert_eq!(errors_of(&schema, &instance), Vec::<String>::new());
    let bytes = serde_json::to_vec(&instance).expect("json");
    let event = decoder.decode(&bytes).expect("the codec decodes it");
    assert_eq!(event.output, json!({"answer": "hello", "score": 0.5}));
}
