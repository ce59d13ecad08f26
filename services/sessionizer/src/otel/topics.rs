//! The Collector path's topics, made ready before it reads: the spans topic must exist (the
//! Collector or the operator creates it); the repartition topic is created like it when
//! absent, and the state topic co-partitioned with the repartition topic, compacted.

use crate::otel::OtelSettings;
use crate::source::kafka::KafkaSettings;
use crate::source::topics::CHANGELOG_SETTINGS;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use service_kit::kafka::{KafkaProbe, ProbeError, TopicState};
use std::time::Duration;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OtelTopicError {
    #[error("kafka request failed")]
    Kafka(#[from] KafkaError),
    #[error("asking the brokers about topic `{topic}` failed")]
    Metadata {
        topic: String,
        #[source]
        source: Box<ProbeError>,
    },
    #[error(
        "topic `{topic}` (otel.spans_topic) does not exist; point the Collector's Kafka exporter \
         at it, or create it: {command}"
    )]
    MissingSpans { topic: String, command: String },
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
        "topic `{topic}` (otel.state_topic) has {found} partitions but the repartition topic \
         (otel.repartition_topic) has {expected}: the two must match partition for partition; \
         {fix}"
    )]
    PartitionMismatch {
        topic: String,
        found: usize,
        expected: usize,
        fix: String,
    },
    #[error("topic `{topic}` ({key}) could not be created; create it: {command}")]
    CreateFailed {
        topic: String,
        key: &'static str,
        command: String,
        #[source]
        source: Box<ProbeError>,
    },
}

/// The fix when the state topic has `found` partitions and the repartition topic `expected`:
/// raise the smaller one (partitions can be added, never removed).
pub fn state_partitions_fix(
    probe: &KafkaProbe,
    otel: &OtelSettings,
    found: usize,
    expected: usize,
) -> String {
    let (topic, partitions) = if found < expected {
        (&otel.state_topic, expected)
    } else {
        (&otel.repartition_topic, found)
    };
    format!(
        "add partitions to `{topic}`: {}",
        probe.add_partitions_command(topic, partitions)
    )
}

/// The partition counts the Collector path works with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionCounts {
    pub spans: i32,
    pub repartition: i32,
}

/// Checks the spans topic and creates the repartition and state topics when absent.
///
/// # Errors
/// The spans topic is missing or inaccessible, the state topic's partition count differs from
/// the repartition topic's, a topic cannot be created, or the brokers do not answer.
pub async fn prepare(
    kafka: &KafkaSettings,
    otel: &OtelSettings,
) -> Result<PartitionCounts, OtelTopicError> {
    let probe = KafkaProbe::try_new(
        &kafka.bootstrap_servers,
        &kafka.client,
        None,
        REQUEST_TIMEOUT,
    )?;
    let describe = |topic: &str, key: &'static str| match probe.topic(topic) {
        Ok(TopicState::Inaccessible(code)) => Err(OtelTopicError::Inaccessible {
            topic: topic.to_owned(),
            key,
            code,
        }),
        Ok(state) => Ok(state),
        Err(source) => Err(OtelTopicError::Metadata {
            topic: topic.to_owned(),
            source: Box::new(source),
        }),
    };
    let create = |topic: &'static str, name: String, partitions: usize, settings| {
        let probe = &probe;
        async move {
            probe
                .create_topic(&name, partitions, settings)
                .await
                .map_err(|source| OtelTopicError::CreateFailed {
                    command: probe.create_topic_command(&name, Some(partitions), settings),
                    topic: name.clone(),
                    key: topic,
                    source: Box::new(source),
                })?;
            tracing::info!(topic = name, partitions, "created topic {topic}");
            Ok::<(), OtelTopicError>(())
        }
    };
    let num_spans = match describe(&otel.spans_topic, "otel.spans_topic")? {
        TopicState::Present { num_partitions } => num_partitions,
        _ => {
            return Err(OtelTopicError::MissingSpans {
                topic: otel.spans_topic.clone(),
                command: probe.create_topic_command(&otel.spans_topic, None, &[]),
            });
        }
    };
    let num_repartition = match describe(&otel.repartition_topic, "otel.repartition_topic")? {
        TopicState::Present { num_partitions } => num_partitions,
        _ => {
            let name = otel.repartition_topic.clone();
            create("otel.repartition_topic", name, num_spans, &[]).await?;
            num_spans
        }
    };
    match describe(&otel.state_topic, "otel.state_topic")? {
        TopicState::Present {
            num_partitions: found,
        } if found != num_repartition => {
            return Err(OtelTopicError::PartitionMismatch {
                topic: otel.state_topic.clone(),
                found,
                expected: num_repartition,
                fix: state_partitions_fix(&probe, otel, found, num_repartition),
            });
        }
        TopicState::Present { .. } => {}
        _ => {
            let name = otel.state_topic.clone();
            create(
                "otel.state_topic",
                name,
                num_repartition,
                CHANGELOG_SETTINGS,
            )
            .await?;
        }
    }
    let count = |count: usize| i32::try_from(count).unwrap_or(i32::MAX);
    Ok(PartitionCounts {
        spans: count(num_spans),
        repartition: count(num_repartition),
    })
}
