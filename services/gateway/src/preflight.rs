//! `gateway preflight`: connects with the gateway's own configuration and checks what `run`
//! needs, one line each (see [`service_kit::preflight`]): the brokers with the configured
//! TLS/SASL and the topics it produces to (traces, and spans when set). Nothing is produced.

use crate::config::KafkaSettings;
use service_kit::kafka::TopicState;
use service_kit::preflight::{
    Check, Report, connect_brokers, inaccessible_topic, missing_topic, unanswered_topic,
};
use std::time::Duration;

/// Runs every check; blocking, each request bounded by `timeout`.
pub fn run(settings: &KafkaSettings, timeout: Duration) -> Report {
    let mut report = Report::default();
    let Some(probe) = connect_brokers(
        &settings.bootstrap_servers,
        &settings.client,
        None,
        timeout,
        &mut report,
    ) else {
        return report;
    };
    let topics = std::iter::once(("kafka.topic", &settings.topic)).chain(
        settings
            .spans_topic
            .iter()
            .map(|topic| ("kafka.spans_topic", topic)),
    );
    for (key, topic) in topics {
        let subject = format!("topic `{topic}` ({key})");
        report.push(match probe.topic(topic) {
            Ok(TopicState::Present { num_partitions }) => Check::passed(
                subject,
                format!(
                    "present, {num_partitions} partitions (whether this principal may write to \
                     it shows only on the first produce: grant Write, and IdempotentWrite on the \
                     cluster for brokers before Kafka 3.0)"
                ),
            ),
            Ok(TopicState::Absent) => missing_topic(&probe, subject, topic),
            Ok(TopicState::Inaccessible(code)) => inaccessible_topic(subject, code),
            Err(error) => unanswered_topic(subject, &error),
        });
    }
    report
}
