//! `[otel]`: the Collector path, off unless `otel.spans_topic` names a topic.

use super::kafka::{MAX_TOPIC_CHARS, check_topic, is_topic_name, optional_topic};
use crate::config::model::OtelConfig;
use crate::otel::OtelSettings;
use crate::otel::assembler::AssemblySettings;
use crate::source::kafka::KafkaSettings;
use service_kit::problems::Problems;
use std::time::Duration;
use trace_model::Limits;

/// A trace may be held open at most this long: reading pauses while the held spans are at
/// their bound, and librdkafka leaves the group when it is not polled for
/// `max.poll.interval.ms` (5 minutes by default).
const MAX_OPEN_SECS_CAP: u64 = 240;

pub(super) fn validate_otel(
    otel: OtelConfig,
    kafka: &KafkaSettings,
    limits: &Limits,
    problems: &mut Problems,
) -> Option<OtelSettings> {
    let spans_topic = optional_topic(
        "otel.spans_topic",
        &otel.spans_topic,
        "otlp_spans",
        problems,
    )?;
    let repartition_topic = owned_topic(
        "otel.repartition_topic",
        otel.repartition_topic,
        &kafka.group_id,
        "otel-repartition",
        problems,
    );
    let state_topic = owned_topic(
        "otel.state_topic",
        otel.state_topic,
        &kafka.group_id,
        "otel-state",
        problems,
    );
    let mut taken = vec![
        ("kafka.topic", Some(kafka.topic.as_str())),
        (
            "kafka.dead_letter_topic",
            Some(kafka.dead_letter_topic.as_str()),
        ),
        ("kafka.changelog_topic", kafka.changelog_topic.as_deref()),
        (
            "kafka.repartition_topic",
            kafka.repartition_topic.as_deref(),
        ),
        ("kafka.sessions_topic", kafka.sessions_topic.as_deref()),
    ];
    taken.push(("otel.spans_topic", Some(spans_topic.as_str())));
    for (key, topic) in [
        ("otel.spans_topic", &spans_topic),
        ("otel.state_topic", &state_topic),
    ] {
        if let Some((other, _)) = taken
            .iter()
            .find(|(other, name)| *other != key && *name == Some(topic.as_str()))
        {
            problems.push(
                key,
                format!("must differ from {other} (both are `{topic}`)"),
            );
        }
    }
    problems.require_at_least_one("otel.quiet_ms", otel.quiet_ms, "2000");
    problems.require_at_least_one("otel.max_held_spans", otel.max_held_spans, "100000");
    if !(1..=MAX_OPEN_SECS_CAP).contains(&otel.max_open_secs) {
        problems.push(
            "otel.max_open_secs",
            format!(
                "must be between 1 and {MAX_OPEN_SECS_CAP} (reading pauses while held spans are at \
                 their bound, and a consumer not polled for 5 minutes leaves its group), e.g. `60`"
            ),
        );
    } else if Duration::from_millis(otel.quiet_ms) >= Duration::from_secs(otel.max_open_secs) {
        problems.push(
            "otel.quiet_ms",
            format!(
                "({} ms) must be shorter than otel.max_open_secs ({} s), e.g. `2000`",
                otel.quiet_ms, otel.max_open_secs
            ),
        );
    }
    if otel.max_held_spans < limits.max_steps + 1 {
        problems.push(
            "otel.max_held_spans",
            format!(
                "({}) must hold one trace of limits.max_steps ({}) spans and its root, e.g. \
                 `100000`",
                otel.max_held_spans, limits.max_steps
            ),
        );
    }
    Some(OtelSettings {
        group_id: format!("{}.otel", kafka.group_id.trim()),
        assembly_group_id: format!("{}.otel-assembly", kafka.group_id.trim()),
        spans_topic,
        repartition_topic,
        state_topic,
        assembly: AssemblySettings {
            quiet: Duration::from_millis(otel.quiet_ms),
            max_open: Duration::from_secs(otel.max_open_secs),
            limits: *limits,
        },
        max_held_spans: otel.max_held_spans,
    })
}

/// A topic of the service's own: as configured, else `<group_id>-<suffix>` (it belongs to the
/// group, as Kafka Streams names its internal topics after the application).
fn owned_topic(
    key: &'static str,
    configured: Option<String>,
    group_id: &str,
    suffix: &str,
    problems: &mut Problems,
) -> String {
    let example = format!("sessionizer-{suffix}");
    if let Some(configured) = configured {
        check_topic(key, &configured, &example, problems);
        return configured;
    }
    let derived = format!("{}-{suffix}", group_id.trim());
    if !is_topic_name(&derived) {
        problems.push(
            key,
            format!(
                "is unset, and the name derived from kafka.group_id, `{derived}`, is not a Kafka \
                 topic name (1 to {MAX_TOPIC_CHARS} of `a-z A-Z 0-9 . _ -`): set it, e.g. \
                 `{example}`"
            ),
        );
    }
    derived
}
