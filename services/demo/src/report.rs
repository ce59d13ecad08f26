//! The demo's report: each closed session as the sessionizer published it on the sessions
//! topic, then what was produced, shipped and dead-lettered, and where to look.

use crate::config::SESSIONS;
use crate::destination::Destination;
use crate::scrape::{MetricsEndpoint, Samples};
use crate::traffic::Produced;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use sessionizer::source::changelog::ReadToEndContext;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use trace_model::SessionSummary;

/// Every session summary on the sessions topic.
///
/// # Errors
/// When the consumer fails or a summary does not decode.
pub fn read_summaries(bootstrap: &str) -> anyhow::Result<Vec<SessionSummary>> {
    let consumer: BaseConsumer<ReadToEndContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "sessionizer-demo-report")
        .set("enable.partition.eof", "true")
        .create_with_context(ReadToEndContext)?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(SESSIONS, 0, Offset::Beginning)?;
    consumer.assign(&assignment)?;
    drop(assignment);
    let mut summaries = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
            Some(Err(error)) => return Err(error.into()),
            Some(Ok(message)) => {
                let payload = message.payload().unwrap_or_default();
                summaries.push(trace_model::codec::avro::decode_session_summary(payload)?);
            }
        }
    }
    Ok(summaries)
}

/// One line per session, by user and session, then the count per close reason.
pub fn print_sessions(summaries: &[SessionSummary]) {
    println!();
    println!(
        "{:<9} {:<24} {:>5} {:>9} {:>7} {:>10}  closed by",
        "user", "session", "turns", "duration", "tokens", "cost"
    );
    let mut sorted: Vec<&SessionSummary> = summaries.iter().collect();
    sorted.sort_by(|a, b| (&a.user_id, &a.session_id).cmp(&(&b.user_id, &b.session_id)));
    let mut by_reason: HashMap<&str, usize> = HashMap::new();
    for summary in sorted {
        *by_reason.entry(summary.close_reason.as_str()).or_default() += 1;
        println!(
            "{:<9} {:<24} {:>5} {:>8.1}s {:>7} {:>10.6}  {}",
            summary.user_id.as_deref().unwrap_or("-"),
            summary.session_id,
            summary.num_turns,
            (summary.ended_at_ms - summary.started_at_ms) as f64 / 1000.0,
            summary.total_tokens,
            summary.total_cost,
            summary.close_reason
        );
    }
    let mut reasons: Vec<String> = by_reason
        .iter()
        .map(|(reason, count)| format!("{reason}: {count}"))
        .collect();
    reasons.sort();
    println!(
        "{} sessions closed ({})",
        summaries.len(),
        reasons.join(", ")
    );
}

/// What was produced, shipped and dead-lettered (from the last scrape), and where to look.
pub fn print_totals(
    produced: &Produced,
    samples: &Samples,
    destination: &Destination,
    metrics: &MetricsEndpoint,
) {
    println!();
    println!(
        "traces emitted through the helpers: {} ({} late), session end events: {}, poison messages: {}",
        produced.workload.traces + produced.num_late,
        produced.num_late,
        produced.workload.session_ends,
        produced.num_poison
    );
    println!(
        "OpenTelemetry GenAI traces exported to the gateway's /v1/traces (OTLP/HTTP): {}",
        produced.num_otel
    );
    println!("rows shipped: {}", samples.trace_rows_shipped());
    if let Some(pipeline_id) = destination.sessions_pipeline_id() {
        println!(
            "session rows shipped to the sessions pipeline {pipeline_id}: {} (one per closed session)",
            samples.session_rows_shipped()
        );
    }
    let reasons = samples.dead_letters_by_reason();
    let described: Vec<String> = reasons
        .iter()
        .filter(|(_, count)| **count > 0)
        .map(|(reason, count)| format!("{reason}: {count}"))
        .collect();
    println!(
        "dead letters: {} ({})",
        reasons.values().sum::<u64>(),
        described.join(", ")
    );
    if let Some(recorded) = destination.recorded() {
        println!("{recorded}");
    }
    println!(
        "metrics were served at {} while the demo ran",
        metrics.url()
    );
}
