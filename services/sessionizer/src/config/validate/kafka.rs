//! Validation of `[kafka]`: brokers, group, topic names (legal and distinct), timeouts, the
//! Schema Registry (in `schema_registry`), and the librdkafka properties the sessionizer owns
//! itself.

use super::super::model::KafkaConfig;
use super::schema_registry::validate_schema_registry;
use crate::source::kafka::KafkaSettings;
use service_kit::client_properties::ClientProperties;
use service_kit::problems::Problems;
use std::time::Duration;

/// librdkafka's allowed range of `session.timeout.ms`.
const LIBRDKAFKA_MAX_SESSION_TIMEOUT_MS: u64 = 3_600_000;
/// Kafka's longest legal topic name.
pub(super) const MAX_TOPIC_CHARS: usize = 249;

pub(super) fn validate_kafka(
    kafka: KafkaConfig,
    problems: &mut Problems,
    warnings: &mut Vec<String>,
) -> KafkaSettings {
    let bootstrap_servers = validate_bootstrap_servers(&kafka.bootstrap_servers, problems);
    if kafka.group_id.trim().is_empty() {
        problems.push("kafka.group_id", "must not be empty, e.g. `sessionizer`");
    }
    let OptionalTopics {
        changelog_topic,
        repartition_topic,
        sessions_topic,
    } = validate_topics(&kafka, problems, warnings);
    if !(1..=LIBRDKAFKA_MAX_SESSION_TIMEOUT_MS).contains(&kafka.session_timeout_ms) {
        problems.push(
            "kafka.session_timeout_ms",
            format!(
                "must be between 1 and {LIBRDKAFKA_MAX_SESSION_TIMEOUT_MS} (librdkafka's range), \
                 e.g. `45000`"
            ),
        );
    }
    problems.require_at_least_one(
        "kafka.checkpoint_interval_ms",
        kafka.checkpoint_interval_ms,
        "1000",
    );
    problems.require_at_least_one(
        "kafka.repartition_max_wait_ms",
        kafka.repartition_max_wait_ms,
        "5000",
    );
    problems.require_at_least_one(
        "kafka.repartition_max_buffered",
        kafka.repartition_max_buffered,
        "50000",
    );
    check_client_properties(&kafka.client, problems);
    let schema_registry_url = validate_schema_registry(&kafka, problems, warnings);
    KafkaSettings {
        bootstrap_servers,
        group_id: kafka.group_id,
        topic: kafka.topic,
        dead_letter_topic: kafka.dead_letter_topic,
        sessions_topic,
        changelog_topic,
        repartition_topic,
        schema_registry_url,
        checkpoint_interval: Duration::from_millis(kafka.checkpoint_interval_ms),
        repartition_max_wait: Duration::from_millis(kafka.repartition_max_wait_ms),
        repartition_max_buffered: kafka.repartition_max_buffered,
        session_timeout: Duration::from_millis(kafka.session_timeout_ms),
        client: kafka.client,
    }
}

/// The servers comma-separated with whitespace removed.
fn validate_bootstrap_servers(bootstrap_servers: &str, problems: &mut Problems) -> String {
    let servers: Vec<&str> = bootstrap_servers.split(',').map(str::trim).collect();
    if bootstrap_servers.trim().is_empty() {
        problems.push(
            "kafka.bootstrap_servers",
            "must not be empty, e.g. `kafka:9092`",
        );
    } else if servers
        .iter()
        .any(|server| server.is_empty() || server.contains(char::is_whitespace))
    {
        problems.push(
            "kafka.bootstrap_servers",
            format!(
                "must be a comma-separated list of `host:port`, e.g. `kafka-0:9092,kafka-1:9092` \
                 (got `{bootstrap_servers}`)"
            ),
        );
    }
    servers.join(",")
}

/// The topics an empty name turns off; `None` for those that are off.
struct OptionalTopics {
    changelog_topic: Option<String>,
    repartition_topic: Option<String>,
    sessions_topic: Option<String>,
}

/// `<group_id>-repartition`: the topic belongs to the consumer group. A group id may hold
/// characters a topic name may not; then the option must be set.
fn derived_repartition_topic(group_id: &str, problems: &mut Problems) -> Option<String> {
    let derived = format!("{}-repartition", group_id.trim());
    if is_topic_name(&derived) {
        return Some(derived);
    }
    problems.push(
        "kafka.repartition_topic",
        format!(
            "is unset, and the name derived from kafka.group_id, `{derived}`, is not a Kafka \
             topic name (1 to {MAX_TOPIC_CHARS} of `a-z A-Z 0-9 . _ -`): set it, e.g. \
             `sessionizer-repartition`"
        ),
    );
    None
}

/// Every topic name legal, and no two options naming the same topic.
fn validate_topics(
    kafka: &KafkaConfig,
    problems: &mut Problems,
    warnings: &mut Vec<String>,
) -> OptionalTopics {
    check_topic("kafka.topic", &kafka.topic, "llm-traces", problems);
    check_topic(
        "kafka.dead_letter_topic",
        &kafka.dead_letter_topic,
        "llm-traces-dlq",
        problems,
    );
    let changelog_topic = optional_topic(
        "kafka.changelog_topic",
        &kafka.changelog_topic,
        "llm-sessions-state",
        problems,
    );
    if changelog_topic.is_none() {
        warnings.push(
            "kafka.changelog_topic is empty: session state is kept in memory only, so open \
             sessions restart their turn numbers after a restart or rebalance"
                .to_owned(),
        );
    }
    let sessions_topic = optional_topic(
        "kafka.sessions_topic",
        &kafka.sessions_topic,
        "llm-sessions",
        problems,
    );
    let repartition_topic = match &kafka.repartition_topic {
        Some(configured) => optional_topic(
            "kafka.repartition_topic",
            configured,
            "sessionizer-repartition",
            problems,
        ),
        None => derived_repartition_topic(&kafka.group_id, problems),
    };
    if kafka.repartition_topic.as_deref() == Some("") {
        warnings.push(
            "kafka.repartition_topic is empty: traces are sessionized in the partition they are \
             read from, so a session whose traces come through producers that partition \
             differently is split"
                .to_owned(),
        );
    }
    let mut topics = vec![
        ("kafka.topic", kafka.topic.as_str()),
        ("kafka.dead_letter_topic", kafka.dead_letter_topic.as_str()),
    ];
    if let Some(changelog_topic) = &changelog_topic {
        topics.push(("kafka.changelog_topic", changelog_topic.as_str()));
    }
    if let Some(sessions_topic) = &sessions_topic {
        topics.push(("kafka.sessions_topic", sessions_topic.as_str()));
    }
    if let Some(repartition_topic) = &repartition_topic {
        topics.push(("kafka.repartition_topic", repartition_topic.as_str()));
    }
    for (index, (key, topic)) in topics.iter().enumerate() {
        for (earlier_key, earlier_topic) in &topics[..index] {
            if topic == earlier_topic {
                problems.push(
                    *key,
                    format!("must differ from {earlier_key} (both are `{topic}`)"),
                );
            }
        }
    }
    OptionalTopics {
        changelog_topic,
        repartition_topic,
        sessions_topic,
    }
}

/// `None` for an empty name (the feature is off), else the name once checked.
pub(super) fn optional_topic(
    key: &str,
    topic: &str,
    example: &str,
    problems: &mut Problems,
) -> Option<String> {
    if topic.is_empty() {
        return None;
    }
    check_topic(key, topic, example, problems);
    Some(topic.to_owned())
}

pub(super) fn is_topic_name(topic: &str) -> bool {
    let legal_characters = topic
        .chars()
        .all(|character| character.is_ascii_alphanumeric() || "._-".contains(character));
    !topic.is_empty()
        && topic.len() <= MAX_TOPIC_CHARS
        && legal_characters
        && topic != "."
        && topic != ".."
}

pub(super) fn check_topic(key: &str, topic: &str, example: &str, problems: &mut Problems) {
    if !is_topic_name(topic) {
        problems.push(
            key,
            format!(
                "must be a Kafka topic name (1 to {MAX_TOPIC_CHARS} of `a-z A-Z 0-9 . _ -`), \
                 e.g. `{example}` (got `{topic}`)"
            ),
        );
    }
}

fn check_client_properties(client: &ClientProperties, problems: &mut Problems) {
    for (key, _) in client.iter() {
        let owner = match key {
            "bootstrap.servers" | "metadata.broker.list" => Some("use kafka.bootstrap_servers"),
            "group.id" => Some("use kafka.group_id"),
            "session.timeout.ms" => Some("use kafka.session_timeout_ms"),
            "enable.auto.commit" | "enable.auto.offset.store" => Some(
                "the sessionizer manages offsets: it commits one only when every row below it \
                 is acknowledged",
            ),
            _ => None,
        };
        if let Some(owner) = owner {
            problems.push(
                format!("kafka.client.{key}"),
                format!("cannot be set here: {owner}"),
            );
        }
    }
    if let Some(text) = client.get("max.poll.interval.ms")
        && text.trim().parse::<u64>().is_err()
    {
        problems.push(
            "kafka.client.max.poll.interval.ms",
            format!("must be a whole number of milliseconds, e.g. `300000` (got `{text}`)"),
        );
    }
}
