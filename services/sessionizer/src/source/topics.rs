//! The topics the service needs, made ready before it consumes: the traces topic must exist;
//! the service's own topics (session-state changelog, dead letters, session summaries) are
//! created to match it when absent, the changelog compacted and co-partitioned (state of
//! traces partition `p` lives in changelog partition `p`). Whatever cannot be fixed here is
//! refused with the command that fixes it.

use crate::source::kafka::KafkaSettings;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use service_kit::kafka::{KafkaProbe, ProbeError, TopicState};
use std::time::Duration;
use thiserror::Error;

/// Bound of each metadata or admin request at start.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of the changelog topic: the newest state per session is all a restore needs.
pub const CHANGELOG_SETTINGS: &[(&str, &str)] = &[("cleanup.policy", "compact")];

/// Why the topics are not ready.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TopicError {
    #[error("kafka request failed")]
    Kafka(#[from] KafkaError),
    #[error("asking the brokers about topic `{topic}` failed")]
    Metadata {
        topic: String,
        #[source]
        source: Box<ProbeError>,
    },
    #[error(
        "topic `{topic}` ({key}) does not exist; create it, with as many partitions as sessionizer \
         replicas you will run at most: {command}"
    )]
    MissingTraces {
        topic: String,
        key: &'static str,
        command: String,
    },
    #[error(
        "topic `{topic}` ({key}) cannot be described ({code}): grant the service's principal \
         Describe, Read and Write on it (docs/operations.md lists every topic and ACL)"
    )]
    Inaccessible {
        topic: String,
        key: &'static str,
        code: RDKafkaErrorCode,
    },
    #[error(
        "changelog topic `{changelog}` has {found} partitions but the traces topic `{traces}` \
         has {expected}: the two must match partition for partition; {fix}"
    )]
    PartitionMismatch {
        changelog: String,
        traces: String,
        found: usize,
        expected: usize,
        fix: String,
    },
    #[error(
        "topic `{topic}` ({key}) does not exist and could not be created; create it: {command}"
    )]
    CreateFailed {
        topic: String,
        key: &'static str,
        command: String,
        #[source]
        source: Box<ProbeError>,
    },
}

/// One topic the service uses, with the option that names it.
#[derive(Debug, Clone, Copy)]
pub struct NeededTopic<'a> {
    pub key: &'static str,
    pub name: &'a str,
    pub role: TopicRole,
}

/// How the service uses a topic, which decides what it does when the topic is absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicRole {
    /// Read; the operator sizes it: never created here.
    Traces,
    /// Read and written, co-partitioned with the traces topic, compacted.
    Changelog,
    /// Written only; created with the traces topic's partition count when absent.
    Output,
}

/// Every topic of `settings`: the traces topic first, then the changelog (whose partition
/// count is checked against it).
pub fn needed_topics(settings: &KafkaSettings) -> Vec<NeededTopic<'_>> {
    let mut topics = vec![NeededTopic {
        key: "kafka.topic",
        name: &settings.topic,
        role: TopicRole::Traces,
    }];
    if let Some(changelog) = &settings.changelog_topic {
        topics.push(NeededTopic {
            key: "kafka.changelog_topic",
            name: changelog,
            role: TopicRole::Changelog,
        });
    }
    topics.push(NeededTopic {
        key: "kafka.dead_letter_topic",
        name: &settings.dead_letter_topic,
        role: TopicRole::Output,
    });
    if let Some(sessions) = &settings.sessions_topic {
        topics.push(NeededTopic {
            key: "kafka.sessions_topic",
            name: sessions,
            role: TopicRole::Output,
        });
    }
    topics
}

/// The fix when the changelog's partition count differs from the traces topic's: raise the
/// smaller one (partitions can be added, never removed).
pub fn partition_mismatch_fix(
    probe: &KafkaProbe,
    traces: &str,
    changelog: &str,
    num_traces: usize,
    num_changelog: usize,
) -> String {
    if num_changelog < num_traces {
        format!(
            "add partitions to the changelog: {}",
            probe.add_partitions_command(changelog, num_traces)
        )
    } else {
        format!(
            "add partitions to the traces topic (sessions in flight move partitions; see \
             docs/operations.md): {}",
            probe.add_partitions_command(traces, num_changelog)
        )
    }
}

/// Checks every topic of `settings` and creates the service's own topics when absent.
///
/// # Errors
/// The traces topic is missing or inaccessible, the changelog's partition count differs,
/// a topic cannot be created, or the brokers do not answer.
pub async fn prepare_topics(settings: &KafkaSettings) -> Result<(), TopicError> {
    let probe = KafkaProbe::try_new(
        &settings.bootstrap_servers,
        &settings.client,
        None,
        REQUEST_TIMEOUT,
    )?;
    let describe = |topic: &str| {
        probe.topic(topic).map_err(|source| TopicError::Metadata {
            topic: topic.to_owned(),
            source: Box::new(source),
        })
    };
    // Every topic is checked before any is created: a refusal leaves the cluster untouched.
    let mut num_traces_partitions = 0;
    let mut absent = Vec::new();
    for needed in needed_topics(settings) {
        match (needed.role, describe(needed.name)?) {
            (_, TopicState::Inaccessible(code)) => {
                return Err(TopicError::Inaccessible {
                    topic: needed.name.to_owned(),
                    key: needed.key,
                    code,
                });
            }
            (TopicRole::Traces, TopicState::Present { num_partitions }) => {
                num_traces_partitions = num_partitions;
            }
            (TopicRole::Traces, TopicState::Absent) => {
                return Err(TopicError::MissingTraces {
                    topic: needed.name.to_owned(),
                    key: needed.key,
                    command: probe.create_topic_command(needed.name, None, &[]),
                });
            }
            (TopicRole::Changelog, TopicState::Present { num_partitions })
                if num_partitions != num_traces_partitions =>
            {
                return Err(TopicError::PartitionMismatch {
                    changelog: needed.name.to_owned(),
                    traces: settings.topic.clone(),
                    found: num_partitions,
                    expected: num_traces_partitions,
                    fix: partition_mismatch_fix(
                        &probe,
                        &settings.topic,
                        needed.name,
                        num_traces_partitions,
                        num_partitions,
                    ),
                });
            }
            (TopicRole::Changelog | TopicRole::Output, TopicState::Present { .. }) => {}
            (TopicRole::Changelog | TopicRole::Output, TopicState::Absent) => absent.push(needed),
        }
    }
    for needed in absent {
        let topic_settings = if needed.role == TopicRole::Changelog {
            CHANGELOG_SETTINGS
        } else {
            &[]
        };
        probe
            .create_topic(needed.name, num_traces_partitions, topic_settings)
            .await
            .map_err(|source| TopicError::CreateFailed {
                topic: needed.name.to_owned(),
                key: needed.key,
                command: probe.create_topic_command(
                    needed.name,
                    Some(num_traces_partitions),
                    topic_settings,
                ),
                source: Box::new(source),
            })?;
        tracing::info!(
            topic = needed.name,
            num_partitions = num_traces_partitions,
            "created topic {}",
            needed.key
        );
    }
    Ok(())
}
