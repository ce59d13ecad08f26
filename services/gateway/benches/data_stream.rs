//! The gateway's work on a data-stream body, per row, against parsing the same body into
//! `serde_json` values and writing each row back as text: what a handler written with the
//! crates alone would do before it could even build a record.
//!
//! The body: one the official Python SDK (`openlayer==0.36.0`, `tests/sdk/traced_chat.py`)
//! sent, a chat trace whose `steps` hold a retriever step (with an embedding step) and a chat
//! completion (`sdk_body.json`); and the same row 100 times, as a batched request.
//!
//! - `values_and_text`, the baseline: `serde_json::from_slice::<Value>` of the body, then
//!   each row and the config written back with `serde_json::to_string`;
//! - `stream_records`: `gateway::rows::stream_records`, which checks the whole body as
//!   strictly, reads the row's columns and steps, and encodes each row's Avro record.
//!
//! `scripts/bench_report.py` reports `stream_records / values_and_text` per row.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::Value;
use std::hint::black_box;
use trace_model::Limits;

const SDK_BODY: &str = include_str!("sdk_body.json");
const PIPELINE_ID: &str = "00000000-0000-0000-0000-000000000001";
const NOW_MS: i64 = 1_796_442_620_000;

/// The SDK's body as sent, its one row's text repeated `rows` times (members in the SDK's
/// order: parsing and writing it again would sort them).
fn body_of(rows: usize) -> Vec<u8> {
    let fixture = SDK_BODY.trim_end();
    let (head, row) = fixture
        .split_once(r#""rows":["#)
        .expect("the SDK writes rows last");
    let row = row.strip_suffix("]}").expect("one list of rows, last");
    let body = format!(r#"{head}"rows":[{}]}}"#, vec![row; rows].join(","));
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("JSON")["rows"]
            .as_array()
            .map(Vec::len),
        Some(rows)
    );
    body.into_bytes()
}

/// The baseline: parsed into values, each row and the config written back as text.
fn values_and_text(body: &[u8]) -> usize {
    let body: Value = serde_json::from_slice(body).expect("the body is JSON");
    let config = serde_json::to_string(&body["config"]).expect("serializes");
    let rows = body["rows"].as_array().expect("rows");
    rows.iter()
        .map(|row| serde_json::to_string(row).expect("serializes").len() + config.len())
        .sum()
}

fn data_stream(criterion: &mut Criterion) {
    let limits = Limits::default();
    for rows in [1, 100] {
        let body = body_of(rows);
        let records = gateway::rows::stream_records(PIPELINE_ID, &body, &limits, NOW_MS)
            .expect("the SDK's body is accepted");
        assert_eq!(records.len(), rows);
        assert!(values_and_text(&body) > 0);
        let mut group = criterion.benchmark_group(format!("data_stream_{rows}"));
        group.throughput(Throughput::Elements(rows as u64));
        // The baseline first: the report takes only results written after it.
        group.bench_function("values_and_text", |bench| {
            bench.iter(|| values_and_text(black_box(&body)));
        });
        group.bench_function("stream_records", |bench| {
            bench.iter(|| {
                gateway::rows::stream_records(PIPELINE_ID, black_box(&body), &limits, NOW_MS)
            });
        });
        group.finish();
    }
}

criterion_group!(benches, data_stream);
criterion_main!(benches);
