//! The topics the service needs, made ready before it consumes: the traces topic must exist;
//! the service's own topics (session-state changelog, repartition topic, dead letters, session
//! summaries) are created to match it when absent, the changelog compacted, and both it and
//! the repartition topic co-partitioned (state of traces partition `p` lives in changelog
//! partition `p`, traces of its sessions read elsewhere are forwarded to repartition
//! partition `p`). Whatever cannot be fixed here is
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
        "topic `{topic}` ({key}) has {found} partitions but the traces topic `{traces}` has \
         {expected}: the two must match partition for partition; {fix}"
    )]
    PartitionMismatch {
        topic: String,
        key: &'static str,
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
    /// Read and written, co-partitioned with the traces topic.
    Repartition,
    /// Written only; created with the traces topic's partition count when absent.
    Output,
}

/// Every topic of `settings`: the traces topic first, then the changelog and the repartition
/// topic (whose partition counts are checked against it).
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
    if let Some(repartition) = &settings.repartition_topic {
        topics.push(NeededTopic {
            key: "kafka.repartition_topic",
            name: repartition,
            role: TopicRole::Repartition,
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

/// The fix when a co-partitioned topic's partition count differs from the traces topic's:
/// raise the smaller one (partitions can be added, never removed).
pub fn partition_mismatch_fix(
    probe: &KafkaProbe,
    traces: &str,
    copartitioned: &str,
    num_traces: usize,
    num_copartitioned: usize,
) -> String {
    if num_copartitioned < num_traces {
        format!(
            "add partitions to `{copartitioned}`: {}",
            probe.add_partitions_command(copartitioned, num_traces)
        )
    } else {
        format!(
            "add partitions to the traces topic (sessions in flight move partitions; see \
             docs/operations.md): {}",
            probe.add_partitions_command(traces, num_copartitioned)
        )
    }
}

/// What a topic's state means for the service, whatever acts on it (`run` or `preflight`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Usable as it is.
    Ready { num_partitions: usize },
    /// Absent and the service's own: `run` creates it.
    Create,
    /// The traces topic is absent: the operator sizes and creates it.
    MissingTraces,
    /// The brokers refuse to describe it (authorization, most often).
    Inaccessible(RDKafkaErrorCode),
    /// A co-partitioned topic's partition count differs from the traces topic's.
    PartitionMismatch { found: usize, expected: usize },
}

/// Judges one topic; `num_traces_partitions` is the traces topic's count when known (it is
/// judged first, see [`needed_topics`]).
pub fn judge(role: TopicRole, state: TopicState, num_traces_partitions: Option<usize>) -> Verdict {
    match (role, state) {
        (_, TopicState::Inaccessible(code)) => Verdict::Inaccessible(code),
        (TopicRole::Traces, TopicState::Absent) => Verdict::MissingTraces,
        (TopicRole::Changelog | TopicRole::Repartition, TopicState::Present { num_partitions })
            if num_traces_partitions.is_some_and(|expected| expected != num_partitions) =>
        {
            Verdict::PartitionMismatch {
                found: num_partitions,
                expected: num_traces_partitions.unwrap_or_default(),
            }
        }
        (_, TopicState::Present { num_partitions }) => Verdict::Ready { num_partitions },
        (TopicRole::Changelog | TopicRole::Repartition | TopicRole::Output, TopicState::Absent) => {
            Verdict::Create
        }
    }
}

/// Topic-level settings the service creates `role` with.
pub fn creation_settings(role: TopicRole) -> &'static [(&'static str, &'static str)] {
    if role == TopicRole::Changelog {
        CHANGELOG_SETTINGS
    } else {
        &[]
    }
}

/// Checks every topic of `settings` and creates the service's own topics when absent; returns
/// the traces topic's partition count.
///
/// # Errors
/// The traces topic is missing or inaccessible, the changelog's partition count differs,
/// a topic cannot be created, or the brokers do not answer.
pub async fn prepare_topics(settings: &KafkaSettings) -> Result<i32, TopicError> {
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
    let mut num_traces_partitions = None;
    let mut absent = Vec::new();
    for needed in needed_topics(settings) {
        let state = describe(needed.name)?;
        match judge(needed.role, state, num_traces_partitions) {
            Verdict::Ready { num_partitions } => {
                if needed.role == TopicRole::Traces {
                    num_traces_partitions = Some(num_partitions);
                }
            }
            Verdict::Create => absent.push(needed),
            Verdict::MissingTraces => {
                return Err(TopicError::MissingTraces {
                    topic: needed.name.to_owned(),
                    key: needed.key,
                    command: probe.create_topic_command(needed.name, None, &[]),
                });
            }
            Verdict::Inaccessible(code) => {
                return Err(TopicError::Inaccessible {
                    topic: needed.name.to_owned(),
                    key: needed.key,
                    code,
                });
            }
            Verdict::PartitionMismatch { found, expected } => {
                return Err(TopicError::PartitionMismatch {
                    topic: needed.name.to_owned(),
                    key: needed.key,
                    traces: settings.topic.clone(),
                    found,
                    expected,
                    fix: partition_mismatch_fix(
                        &probe,
                        &settings.topic,
                        needed.name,
                        expected,
                        found,
                    ),
                });
            }
        }
    }
    // The traces topic comes first and stops the start when absent: its count is known here.
    let num_traces_partitions = num_traces_partitions.unwrap_or_default();
    for needed in absent {
        let topic_settings = creation_settings(needed.role);
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
    Ok(i32::try_from(num_traces_partitions).unwrap_or(i32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRESENT_3: TopicState = TopicState::Present { num_partitions: 3 };

    #[test]
    fn only_the_traces_topic_is_never_created() {
        assert_eq!(
            judge(TopicRole::Traces, TopicState::Absent, None),
            Verdict::MissingTraces
        );
        assert_eq!(
            judge(TopicRole::Changelog, TopicState::Absent, Some(3)),
            Verdict::Create
        );
        assert_eq!(
            judge(TopicRole::Output, TopicState::Absent, Some(3)),
            Verdict::Create
        );
    }

    #[test]
    fn the_changelog_must_match_the_traces_topic_when_its_count_is_known() {
        assert_eq!(
            judge(TopicRole::Changelog, PRESENT_3, Some(4)),
            Verdict::PartitionMismatch {
                found: 3,
                expected: 4
            }
        );
        assert_eq!(
            judge(TopicRole::Changelog, PRESENT_3, Some(3)),
            Verdict::Ready { num_partitions: 3 }
        );
        assert_eq!(
            judge(TopicRole::Changelog, PRESENT_3, None),
            Verdict::Ready { num_partitions: 3 }
        );
        assert_eq!(
            judge(TopicRole::Repartition, PRESENT_3, Some(4)),
            Verdict::PartitionMismatch {
                found: 3,
                expected: 4
            }
        );
        // Outputs need not match: their partitioning does not carry state.
        assert_eq!(
            judge(TopicRole::Output, PRESENT_3, Some(4)),
            Verdict::Ready { num_partitions: 3 }
        );
    }

    #[test]
    fn an_inaccessible_topic_is_refused_whatever_its_role() {
        let code = RDKafkaErrorCode::TopicAuthorizationFailed;
        for role in [
            TopicRole::Traces,
            TopicRole::Changelog,
            TopicRole::Repartition,
            TopicRole::Output,
        ] {
            assert_eq!(
                judge(role, TopicState::Inaccessible(code), Some(3)),
                Verdict::Inaccessible(code)
            );
        }
    }
}
