use super::*;
use crate::sessionize::recent::RecentIds;
use crate::sessionize::{CloseReason, SessionKey, SessionState};
use serde_json::json;

fn aggregate(column: &str, op: AggregateOp) -> Aggregate {
    Aggregate {
        column: column.to_owned(),
        key: "k".to_owned(),
        op,
    }
}

fn event(value: Option<Value>) -> TraceEvent {
    let mut event = TraceEvent::new("turn", 1_700_000_000_000);
    if let Some(value) = value {
        event.metadata.insert("k".to_owned(), value);
    }
    event
}

fn totals_of(op: AggregateOp, values: &[Value]) -> Option<Accumulated> {
    let aggregates = [aggregate("c", op)];
    let mut totals = SessionTotals::default();
    for value in values {
        totals.add(&event(Some(value.clone())), false, &aggregates);
    }
    totals.aggregates.get("c").cloned()
}

#[test]
fn aggregates_fold_each_traces_value() {
    let values = [json!(2), json!(null), json!(5)];
    assert_eq!(
        totals_of(AggregateOp::Sum, &values),
        Some(Accumulated::Int(7))
    );
    assert_eq!(
        totals_of(AggregateOp::Count, &values),
        Some(Accumulated::Int(2))
    );
    assert_eq!(
        totals_of(AggregateOp::Last, &values),
        Some(Accumulated::Value(json!(5)))
    );
    assert_eq!(
        totals_of(AggregateOp::Max, &values),
        Some(Accumulated::Value(json!(5)))
    );
    assert_eq!(
        totals_of(AggregateOp::Sum, &[json!(1), json!(0.5)]),
        Some(Accumulated::Float(1.5))
    );
    assert_eq!(
        totals_of(AggregateOp::Sum, &[]),
        None,
        "no value, no column"
    );
}

#[test]
fn a_value_of_the_wrong_type_or_an_overflow_omits_the_column_for_good() {
    assert_eq!(
        totals_of(AggregateOp::Sum, &[json!(1), json!("two"), json!(3)]),
        Some(Accumulated::Omitted(OmitReason::WrongType))
    );
    assert_eq!(
        totals_of(AggregateOp::Max, &[json!([1])]),
        Some(Accumulated::Omitted(OmitReason::WrongType))
    );
    assert_eq!(
        totals_of(AggregateOp::Sum, &[json!(i64::MAX), json!(1)]),
        Some(Accumulated::Omitted(OmitReason::Overflow))
    );
    assert_eq!(
        totals_of(AggregateOp::Sum, &[json!(f64::MAX), json!(f64::MAX)]),
        Some(Accumulated::Omitted(OmitReason::Overflow))
    );
    let long = json!("x".repeat(MAX_LAST_VALUE_BYTES));
    assert_eq!(
        totals_of(AggregateOp::Last, &[long, json!("short")]),
        Some(Accumulated::Omitted(OmitReason::TooLarge)),
        "a value too large to journal"
    );
}

#[test]
fn the_row_has_every_session_column_and_the_aggregates_that_could_be_computed() {
    let aggregates = [
        aggregate("tool_calls", AggregateOp::Sum),
        Aggregate {
            column: "bad".to_owned(),
            key: "b".to_owned(),
            op: AggregateOp::Max,
        },
    ];
    let mut totals = SessionTotals::default();
    let mut first = event(Some(json!(2)));
    first.prompt_tokens = Some(10);
    first.completion_tokens = Some(4);
    first.latency_ms = Some(300.0);
    first.model = Some("gpt-4o".to_owned());
    first.metadata.insert("b".to_owned(), json!("x"));
    totals.add(&first, false, &aggregates);
    let mut second = event(Some(json!(3)));
    second.prompt_tokens = Some(20);
    second.latency_ms = Some(500.0);
    second.model = Some("gpt-4o".to_owned());
    totals.add(&second, true, &aggregates);
    let session = ClosedSession {
        key: SessionKey {
            pipeline_id: "traces".into(),
            session_id: "s1".to_owned(),
        },
        state: SessionState {
            user_id: Some("ana".to_owned()),
            segment: 2,
            inferred: false,
            started_at_ms: 1_700_000_000_000,
            last_event_ms: 1_700_000_090_000,
            previous_turn_ms: 1_700_000_090_000,
            turns: 2,
            tokens: 34,
            cost: 0.25,
            latency_ms: 800.0,
            first_inference_id: "a".to_owned(),
            last_inference_id: "b".to_owned(),
            recent_ids: RecentIds::default(),
            totals: Some(Box::new(totals)),
        },
        reason: CloseReason::Gap,
    };
    let (row, omitted) = session_row(&session, "gap");
    let row: Value = serde_json::from_str(row.get()).expect("a JSON row");
    assert_eq!(omitted, [OmitReason::WrongType]);
    let columns: Vec<&str> = row
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    for column in SESSION_ROW_COLUMNS {
        assert!(columns.contains(column), "{column} missing from {row}");
    }
    assert_eq!(row["inferenceId"], "traces/s1@1700000000000");
    assert_eq!(row["latency"], 90_000.0);
    assert_eq!(row["duration_seconds"], 90.0);
    assert_eq!(row["prompt_tokens"], 30);
    assert_eq!(row["completion_tokens"], 4);
    assert_eq!(row["models"], json!(["gpt-4o"]));
    assert_eq!(row["mean_turn_latency_ms"], 400.0);
    assert_eq!(row["max_turn_latency_ms"], 500.0);
    assert_eq!(row["late_traces"], 1);
    assert_eq!(row["tool_calls"], 5);
    assert!(row.get("bad").is_none(), "{row}");
    assert!(
        session_config(false).get("userIdColumnName").is_none(),
        "no user column named when no row has one"
    );
    let config = session_config(true);
    assert_eq!(row["output"], "2 turn(s) over 90 s");
    for role in [
        "outputColumnName",
        "inferenceIdColumnName",
        "timestampColumnName",
        "latencyColumnName",
        "costColumnName",
        "numOfTokenColumnName",
        "sessionIdColumnName",
        "userIdColumnName",
    ] {
        let column = config[role].as_str().expect("a column name");
        assert!(
            columns.contains(&column),
            "{role} names {column}, not a column"
        );
    }
}
