use super::*;
use proptest::prelude::*;
use serde_json::json;
use trace_model::Decoder;

const NOW_MS: i64 = 1_800_000_000_000;

/// A request as the official tracer sends it: tokens in the nested completion step only.
fn tracer_request() -> Value {
    json!({
        "config": {
            "outputColumnName": "output",
            "inputVariableNames": ["user_message"],
            "latencyColumnName": "latency",
            "costColumnName": "cost",
            "timestampColumnName": "inferenceTimestamp",
            "inferenceIdColumnName": "inferenceId",
            "numOfTokenColumnName": "tokens",
            "userIdColumnName": "user_id",
            "sessionIdColumnName": "session_id"
        },
        "rows": [{
            "user_message": "Best time for Lisbon?",
            "output": "Spring.",
            "inferenceTimestamp": 1_700_000_000.25,
            "inferenceId": "inf-1",
            "latency": 812.5,
            "cost": 0,
            "tokens": 0,
            "user_id": "ana",
            "session_id": "trip",
            "custom": {"nested": [1, 2.5, null, true]},
            "steps": [{
                "name": "answer", "type": "user_call", "latency": 812.5,
                "steps": [
                    {"name": "retrieve", "type": "retriever", "steps": []},
                    {"name": "complete", "type": "chat_completion", "tokens": 42, "cost": 0.002, "steps": [
                        {"name": "inner", "type": "chat_completion", "tokens": 7, "cost": 0.0005, "steps": []}
                    ]}
                ]
            }]
        }]
    })
}

fn body(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("serializes")
}

fn decode(outgoing: &Outgoing) -> TraceEvent {
    Decoder::new(Limits::default())
        .decode(&outgoing.payload)
        .expect("decodes")
}

#[test]
fn maps_a_tracer_row_to_a_trace_keeping_the_row_as_sent() {
    let request = tracer_request();
    let records =
        stream_records("pipe-1", &body(&request), &Limits::default(), NOW_MS).expect("accepted");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].key.as_deref(), Some("trip"));
    assert_eq!(records[0].inference_id.as_deref(), Some("inf-1"));
    let event = decode(&records[0]);
    assert_eq!(event.kind, TraceKind::Trace);
    assert_eq!(event.pipeline_id.as_deref(), Some("pipe-1"));
    assert_eq!(event.inference_id.as_deref(), Some("inf-1"));
    assert_eq!(event.user_id.as_deref(), Some("ana"));
    assert_eq!(event.session_id.as_deref(), Some("trip"));
    assert_eq!(event.timestamp_ms, 1_700_000_000_250);
    assert_eq!(event.name, "answer");
    assert_eq!(event.output, json!("Spring."));
    assert_eq!(event.latency_ms, Some(812.5));
    assert_eq!(
        event.inputs.get("user_message"),
        Some(&json!("Best time for Lisbon?"))
    );
    // Row columns read 0; the totals come from the nested steps.
    assert_eq!(event.tokens, Some(49));
    assert!((event.cost.expect("cost") - 0.0025).abs() < 1e-12);
    assert_eq!(Value::Object(event.row.expect("row")), request["rows"][0]);
    assert_eq!(
        Value::Object(event.row_config.expect("config")),
        request["config"]
    );
}

#[test]
fn ships_the_row_as_its_text_and_reads_columns_named_with_escapes() {
    let row = r#"{ "out\u0070ut" : "Spring.",  "session_id": "trip", "steps": [7],
        "extra": {"deep": [1, 2.50, "x"]} }"#;
    let body = format!(
        r#"{{"config": {{"outputColumnName": "output",
        "sessionIdColumnName": "session_id", "inputVariableNames": ["output"]}},
        "rows": [{row}]}}"#
    );
    let records =
        stream_records("pipe-1", body.as_bytes(), &Limits::default(), NOW_MS).expect("accepted");
    let payload = &records[0].payload;
    assert!(
        payload
            .windows(row.len())
            .any(|window| window == row.as_bytes()),
        "the row's text is in the record as sent"
    );
    let event = decode(&records[0]);
    assert_eq!(event.output, json!("Spring."));
    // A column may be the output and an input at once.
    assert_eq!(event.inputs.get("output"), Some(&json!("Spring.")));
    assert_eq!(event.session_id.as_deref(), Some("trip"));
    // A first step that is not an object names nothing.
    assert_eq!(event.name, DEFAULT_TRACE_NAME);
    assert_eq!(
        Value::Object(event.row.expect("row")),
        serde_json::from_str::<Value>(row).expect("json")
    );
}

#[test]
fn refuses_what_a_json_parser_refuses_anywhere_in_the_body() {
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    for body in [
        r#"{"config": {"outputColumnName": "o"}, "rows": [{"o": 1, "x": 1e400}]}"#.to_owned(),
        r#"{"config": {"outputColumnName": "o"}, "rows": [{"o": 1, "x": "\ud800"}]}"#.to_owned(),
        format!(r#"{{"config": {{"outputColumnName": "o"}}, "rows": [{{"o": 1, "x": {deep}}}]}}"#),
        r#"{"config": {"outputColumnName": "o"}, "rows": [{"o": 1}], "junk": 1e400}"#.to_owned(),
    ] {
        let refusal = stream_records("pipe-1", body.as_bytes(), &Limits::default(), NOW_MS)
            .expect_err("refused");
        assert_eq!(refusal.status, 400, "{body}");
        assert!(
            refusal.message.starts_with("the body is not valid JSON"),
            "{}",
            refusal.message
        );
    }
    // Members of a list are no body, even in the order the body's would be.
    let refusal = stream_records(
        "pipe-1",
        br#"[{"outputColumnName": "o"}, [{"o": "hi"}]]"#,
        &Limits::default(),
        NOW_MS,
    )
    .expect_err("refused");
    assert_eq!(refusal.message, "the body must be a JSON object");
}

#[test]
fn the_trace_is_named_by_its_first_steps_name_alone() {
    let name = |steps: &str| steps_of(steps).first_name;
    assert_eq!(
        name(r#"[{"steps": [{"name": "inner"}], "name": "outer"}, "junk", {"name": "2nd"}]"#)
            .as_deref(),
        Some("outer")
    );
    assert_eq!(name(r#"[{"name": 5}]"#), None);
    assert_eq!(name(r#"[["Evil"]]"#), None);
    assert_eq!(
        name(r#"[{"name": "a", "name": "b"}]"#).as_deref(),
        Some("b")
    );
    assert_eq!(name(r#"[{"type": "chat"}]"#), None);
    assert_eq!(name("[]"), None);
    assert_eq!(name(r#"{"name": "not a list"}"#), None);
}

/// A `steps` value read as a row's `steps` column is.
fn steps_of(steps: &str) -> StepList {
    let columns = Columns {
        output: "output".to_owned(),
        ..Columns::default()
    };
    read_row(&format!(r#"{{"steps": {steps}}}"#), &columns)
        .expect("a row")
        .steps
}

/// The steps' sum of `key` as read from the steps parsed into values: the stack of steps,
/// last first, as the gateway sums (the order of a float sum shows in its last bits).
fn sum_of_parsed(steps: &Value, key: &str) -> Option<f64> {
    let mut stack: Vec<&Value> = match steps {
        Value::Array(steps) => steps.iter().collect(),
        _ => return None,
    };
    let mut total = None;
    while let Some(step) = stack.pop() {
        if let Some(value) = step.get(key).and_then(Value::as_f64)
            && value.is_finite()
            && value >= 0.0
        {
            total = Some(total.unwrap_or(0.0) + value);
        }
        if let Some(Value::Array(children)) = step.get("steps") {
            stack.extend(children.iter());
        }
    }
    total
}

/// The first step's name as read from the steps parsed into values.
fn first_name_of_parsed(steps: &Value) -> Option<String> {
    steps
        .as_array()?
        .first()?
        .get("name")?
        .as_str()
        .map(str::to_owned)
}

/// An amount as a step may hold it: decimals whose float sum depends on its order, other
/// numbers, and values of other types.
fn amount_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["0.1", "0.2", "0.3", "0.7", "1e16", "3", "-1", "12"])
            .prop_map(str::to_owned),
        1 => any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |value| value.is_finite())
            .prop_map(|value| value.to_string()),
        1 => any::<u64>().prop_map(|value| value.to_string()),
        1 => prop::sample::select(vec![r#""12""#, "null", "[1]", r#"{"tokens": 1}"#])
            .prop_map(str::to_owned),
    ]
}

/// A step object of `members`, some repeated, its own steps from `steps`.
fn step_text(steps: BoxedStrategy<String>) -> impl Strategy<Value = String> {
    let member = prop_oneof![
        3 => (prop::sample::select(vec!["tokens", "cost", "t\\u006fkens", "c\\u006fst"]), amount_text())
            .prop_map(|(key, value)| format!(r#""{key}": {value}"#)),
        1 => prop::sample::select(vec![
            r#""name": "chat""#,
            r#""name": "n\u0061me""#,
            r#""name": 5"#,
            r#""na\u006de": "escaped key""#,
            r#""other": {"tokens": 3, "name": "no", "steps": [{"cost": 1}]}"#,
        ])
        .prop_map(str::to_owned),
        2 => (prop::sample::select(vec!["steps", "st\\u0065ps"]), steps)
            .prop_map(|(key, steps)| format!(r#""{key}": {steps}"#)),
    ];
    prop::collection::vec(member, 0..6).prop_map(|members| format!("{{{}}}", members.join(", ")))
}

/// A `steps` value: mostly lists of step objects, nested; sometimes of other types.
fn steps_text() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("[]".to_owned()),
        prop::sample::select(vec!["7", "-2.5", "true", "null", r#""steps""#])
            .prop_map(str::to_owned),
        Just(r#"{"name": "not a list", "steps": [{"tokens": 1}]}"#.to_owned()),
        step_text(Just("[]".to_owned()).boxed()).prop_map(|step| format!("[{step}]")),
    ];
    leaf.prop_recursive(4, 64, 5, |inner| {
        let item = prop_oneof![
            6 => step_text(inner.clone().boxed()).boxed(),
            1 => Just(r#"["Evil", {"tokens": 2}]"#.to_owned()).boxed(),
            1 => prop::sample::select(vec!["null", "false", "4", "0.5", r#""a step""#])
                .prop_map(str::to_owned)
                .boxed(),
        ];
        prop::collection::vec(item, 0..5).prop_map(|items| format!("[{}]", items.join(", ")))
    })
}

/// Whether `read` names and sums as the steps parsed into values (`None`: no `steps`).
fn reads_as_parsed(read: &StepList, parsed: Option<&Value>) -> Result<(), TestCaseError> {
    for (key, amount) in [
        (
            "tokens",
            (|step| step.tokens) as fn(&StepAmounts) -> Option<f64>,
        ),
        ("cost", |step| step.cost),
    ] {
        prop_assert_eq!(
            sum_over_steps(&read.steps, amount).map(f64::to_bits),
            parsed
                .and_then(|steps| sum_of_parsed(steps, key))
                .map(f64::to_bits),
            "{}",
            key
        );
    }
    prop_assert_eq!(
        read.first_name.clone(),
        parsed.and_then(first_name_of_parsed)
    );
    Ok(())
}

/// A row's members: read columns, the steps (also under an escaped name), others; repeated.
fn row_text() -> impl Strategy<Value = String> {
    let member = prop_oneof![
        2 => (
            prop::sample::select(vec!["output", "q", "tokens", "outp\\u0075t"]),
            prop_oneof![amount_text(), Just(r#"{"nested": [1, "x"]}"#.to_owned())],
        )
            .prop_map(|(key, value)| format!(r#""{key}": {value}"#)),
        2 => (prop::sample::select(vec!["steps", "st\\u0065ps"]), steps_text())
            .prop_map(|(key, steps)| format!(r#""{key}": {steps}"#)),
        1 => Just(r#""other": {"steps": [{"tokens": 9}], "output": 1}"#.to_owned()),
    ];
    prop::collection::vec(member, 0..7).prop_map(|members| format!("{{{}}}", members.join(", ")))
}

proptest! {
    #[test]
    fn steps_read_in_one_pass_sum_and_name_as_the_steps_parsed(steps in steps_text()) {
        let parsed: Value = serde_json::from_str(&steps).expect("the strategy writes JSON");
        reads_as_parsed(&steps_of(&steps), Some(&parsed))?;
    }

    #[test]
    fn a_row_read_in_one_pass_holds_what_the_parsed_row_holds(
        row in row_text(),
        steps_is_a_column in any::<bool>(),
    ) {
        let columns = Columns {
            output: "output".to_owned(),
            tokens: Some("tokens".to_owned()),
            inputs: if steps_is_a_column {
                vec!["q".to_owned(), "steps".to_owned()]
            } else {
                vec!["q".to_owned()]
            },
            ..Columns::default()
        };
        let parsed: JsonMap = serde_json::from_str(&row).expect("the strategy writes JSON");
        let fields = read_row(&row, &columns).expect("a row");
        let read_names: &[&str] = if steps_is_a_column {
            &["output", "tokens", "q", "steps"]
        } else {
            &["output", "tokens", "q"]
        };
        let expected: JsonMap = parsed
            .iter()
            .filter(|(name, _)| read_names.contains(&name.as_str()))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        prop_assert_eq!(&fields.read, &expected);
        reads_as_parsed(&fields.steps, parsed.get("steps"))?;
    }
}

#[test]
fn sums_the_steps_in_the_order_the_parsed_steps_were_summed() {
    // Float sums of 0.1, 0.2 and 0.3 differ by order in their last bits.
    for steps in [
        r#"[{"cost": 0.1}, {"cost": 0.2}, {"cost": 0.3}]"#,
        r#"[{"steps": [{"cost": 0.1}, {"cost": 0.2}, {"cost": 0.3}]}]"#,
        r#"[{"cost": 0.3, "steps": [{"cost": 0.1, "steps": [{"cost": 0.7}]}, {"cost": 0.2}]}]"#,
    ] {
        let parsed: Value = serde_json::from_str(steps).expect("json");
        assert_eq!(
            sum_over_steps(&steps_of(steps).steps, |step| step.cost).map(f64::to_bits),
            sum_of_parsed(&parsed, "cost").map(f64::to_bits),
            "{steps}"
        );
    }
}

#[test]
fn a_steps_column_the_config_reads_is_also_summed() {
    let request = json!({
        "config": {"outputColumnName": "steps"},
        "rows": [{"steps": [{"name": "root", "tokens": 4, "steps": [{"tokens": 5}]}]}]
    });
    let records =
        stream_records("p", &body(&request), &Limits::default(), NOW_MS).expect("accepted");
    let event = decode(&records[0]);
    assert_eq!(event.name, "root");
    assert_eq!(event.tokens, Some(9), "no tokens column: the steps' sum");
    assert_eq!(event.output, request["rows"][0]["steps"]);
}

#[test]
fn keys_by_user_without_a_session_and_reads_integer_user_ids() {
    let mut request = tracer_request();
    let row = request["rows"][0].as_object_mut().expect("row");
    row.remove("session_id");
    row.insert("user_id".into(), json!(42));
    let records =
        stream_records("pipe-1", &body(&request), &Limits::default(), NOW_MS).expect("accepted");
    assert_eq!(records[0].key.as_deref(), Some("42"));
    let event = decode(&records[0]);
    assert_eq!(event.user_id.as_deref(), Some("42"));
    assert_eq!(event.row.expect("row")["user_id"], json!(42));
}

#[test]
fn reads_columns_under_the_names_the_config_gives() {
    let request = json!({
        "config": {"outputColumnName": "answer", "inferenceIdColumnName": "id",
                   "sessionIdColumnName": "conversation", "numOfTokenColumnName": "n"},
        "rows": [{"answer": {"text": "hi"}, "id": "x-1", "conversation": "c-9", "n": 12}]
    });
    let records =
        stream_records("p", &body(&request), &Limits::default(), NOW_MS).expect("accepted");
    let event = decode(&records[0]);
    assert_eq!(event.output, json!({"text": "hi"}));
    assert_eq!(event.inference_id.as_deref(), Some("x-1"));
    assert_eq!(event.session_id.as_deref(), Some("c-9"));
    assert_eq!(event.tokens, Some(12));
    assert_eq!(
        event.timestamp_ms, NOW_MS,
        "no timestamp column: received now"
    );
    assert_eq!(event.name, DEFAULT_TRACE_NAME);
}

fn refusal(request: &Value) -> Refusal {
    stream_records("p", &body(request), &Limits::default(), NOW_MS).expect_err("refused")
}

#[test]
fn refuses_a_request_naming_the_row_and_field_at_fault() {
    let mut request = tracer_request();
    let good = request["rows"][0].clone();
    let mut missing_output = good.clone();
    missing_output
        .as_object_mut()
        .expect("row")
        .remove("output");
    request["rows"] = json!([good.clone(), missing_output]);
    let missing = refusal(&request);
    assert_eq!(
        (missing.status, missing.row, missing.field.as_deref()),
        (400, Some(1), Some("output"))
    );

    let mut long_id = good.clone();
    long_id["session_id"] = json!("s".repeat(201));
    request["rows"] = json!([good.clone(), good.clone(), long_id]);
    let long = refusal(&request);
    assert_eq!(
        (long.status, long.row, long.field.as_deref()),
        (400, Some(2), Some("session_id"))
    );
    assert!(long.message.contains("201"), "{}", long.message);

    let mut wrong_type = good.clone();
    wrong_type["latency"] = json!("fast");
    request["rows"] = json!([wrong_type]);
    assert_eq!(refusal(&request).field.as_deref(), Some("latency"));

    request["rows"] = json!([good, 7]);
    assert_eq!(refusal(&request).row, Some(1));
}

#[test]
fn refuses_malformed_bodies_and_configs() {
    let malformed =
        stream_records("p", b"{\"rows\": [", &Limits::default(), NOW_MS).expect_err("refused");
    assert_eq!(
        (malformed.status, malformed.field.as_deref()),
        (400, Some("body"))
    );
    let no_output = refusal(&json!({"config": {}, "rows": [{"output": 1}]}));
    assert_eq!(no_output.field.as_deref(), Some("config.outputColumnName"));
    let no_rows = refusal(&json!({"config": {"outputColumnName": "o"}, "rows": []}));
    assert_eq!(no_rows.field.as_deref(), Some("rows"));
    let long_pipeline = stream_records(
        &"p".repeat(201),
        &body(&tracer_request()),
        &Limits::default(),
        NOW_MS,
    )
    .expect_err("refused");
    assert_eq!(long_pipeline.field.as_deref(), Some("inferencePipelineId"));
}

#[test]
fn refuses_a_row_whose_record_exceeds_the_message_limit_with_413() {
    let limits = Limits {
        max_message_bytes: 600,
        ..Limits::default()
    };
    let mut request = tracer_request();
    request["rows"][0]["custom"] = json!("x".repeat(1000));
    let too_large = stream_records("p", &body(&request), &limits, NOW_MS).expect_err("refused");
    assert_eq!((too_large.status, too_large.row), (413, Some(0)));
}

#[test]
fn maps_a_row_update_keyed_like_its_row() {
    let update = json!({"row": {"groundTruth": "Spring", "score": 0.5}, "config": {"groundTruthColumnName": "groundTruth"}});
    let outgoing = update_record(
        "p",
        Some("inf-1"),
        &body(&update),
        &Limits::default(),
        NOW_MS,
        |id| (id == "inf-1").then(|| "trip".to_owned()),
    )
    .expect("accepted");
    assert_eq!(outgoing.key.as_deref(), Some("trip"));
    let event = decode(&outgoing);
    assert_eq!(event.kind, TraceKind::RowUpdate);
    assert_eq!(event.inference_id.as_deref(), Some("inf-1"));
    assert_eq!(Value::Object(event.row.expect("row")), update["row"]);
    assert_eq!(
        Value::Object(event.row_config.expect("config")),
        update["config"]
    );

    let unknown = update_record(
        "p",
        Some("inf-2"),
        &body(&json!({"row": {"a": 1}})),
        &Limits::default(),
        NOW_MS,
        |_| None,
    )
    .expect("accepted");
    assert_eq!(
        unknown.key.as_deref(),
        Some("inf-2"),
        "unknown rows are keyed by their id"
    );
    let own_session = update_record(
        "p",
        Some("inf-3"),
        &body(&json!({"row": {"session_id": "s-3"}, "config": null})),
        &Limits::default(),
        NOW_MS,
        |_| Some("other".into()),
    )
    .expect("accepted");
    assert_eq!(own_session.key.as_deref(), Some("s-3"));
}

#[test]
fn refuses_row_updates_without_an_id_or_columns() {
    let ok_body = body(&json!({"row": {"a": 1}}));
    let no_id = update_record("p", None, &ok_body, &Limits::default(), NOW_MS, |_| None)
        .expect_err("refused");
    assert_eq!(no_id.field.as_deref(), Some("inferenceId"));
    let long_id = "i".repeat(201);
    let too_long = update_record(
        "p",
        Some(&long_id),
        &ok_body,
        &Limits::default(),
        NOW_MS,
        |_| None,
    )
    .expect_err("refused");
    assert_eq!(too_long.field.as_deref(), Some("inferenceId"));
    let no_row = update_record(
        "p",
        Some("i"),
        &body(&json!({"row": [1]})),
        &Limits::default(),
        NOW_MS,
        |_| None,
    )
    .expect_err("refused");
    assert_eq!(no_row.field.as_deref(), Some("row"));
}
