//! What a service needs to know of its cluster before it starts: whether the brokers answer
//! with the configured TLS/SASL settings, whether its topics exist and with how many
//! partitions, whether its consumer group is accessible; and, for whatever is missing, the
//! command that fixes it. Blocking calls, each bounded by the probe's timeout.

use crate::client_properties::ClientProperties;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// A topic as the cluster's metadata shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicState {
    Present {
        num_partitions: usize,
    },
    Absent,
    /// The broker refused to describe it (typically `TopicAuthorizationFailed`).
    Inaccessible(RDKafkaErrorCode),
}

/// Keeps librdkafka's latest error text: a connection refused or a failed SASL handshake is
/// reported there, while the request itself only times out.
#[derive(Debug, Default)]
pub struct ProbeContext {
    last_error: Mutex<Option<String>>,
}

impl ClientContext for ProbeContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(%error, reason, "kafka client error");
        if let Ok(mut last_error) = self.last_error.lock() {
            *last_error = Some(reason.to_owned());
        }
    }
}

impl ConsumerContext for ProbeContext {}

/// A consumer that never subscribes: it only asks for metadata and committed offsets, so
/// probing never joins (and never rebalances) the service's consumer group.
pub struct KafkaProbe {
    consumer: BaseConsumer<ProbeContext>,
    config: ClientConfig,
    bootstrap_servers: String,
    secured: bool,
    timeout: Duration,
}

impl std::fmt::Debug for KafkaProbe {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client configuration may hold secrets: never printed.
        formatter
            .debug_struct("KafkaProbe")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .finish_non_exhaustive()
    }
}

impl KafkaProbe {
    /// A probe with the service's own connection settings (`client`: librdkafka properties
    /// such as `security.protocol`, applied last) and, for group checks, its group id.
    ///
    /// # Errors
    /// When librdkafka refuses the configuration.
    pub fn try_new(
        bootstrap_servers: &str,
        client: &ClientProperties,
        group_id: Option<&str>,
        timeout: Duration,
    ) -> Result<Self, KafkaError> {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", bootstrap_servers);
        client.apply_to(&mut config);
        let mut consumer_config = config.clone();
        if let Some(group_id) = group_id {
            consumer_config.set("group.id", group_id);
        }
        // Never commits: it only reads what the group committed.
        consumer_config.set("enable.auto.commit", "false");
        let consumer = consumer_config.create_with_context(ProbeContext::default())?;
        let secured = TopicCommands::is_secured(&client.0);
        Ok(KafkaProbe {
            consumer,
            config,
            bootstrap_servers: bootstrap_servers.to_owned(),
            secured,
            timeout,
        })
    }

    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap_servers
    }

    /// The number of brokers in the cluster's metadata.
    ///
    /// # Errors
    /// No broker answered within the timeout; the error carries librdkafka's latest reason.
    pub fn num_brokers(&self) -> Result<usize, ProbeError> {
        let metadata = self
            .consumer
            .fetch_metadata(None, self.timeout)
            .map_err(|error| self.probe_error(error))?;
        Ok(metadata.brokers().len())
    }

    /// The topic as the metadata shows it.
    ///
    /// # Errors
    /// The metadata request failed as a whole.
    pub fn topic(&self, topic: &str) -> Result<TopicState, ProbeError> {
        let metadata = self
            .consumer
            .fetch_metadata(Some(topic), self.timeout)
            .map_err(|error| self.probe_error(error))?;
        let Some(found) = metadata
            .topics()
            .iter()
            .find(|candidate| candidate.name() == topic)
        else {
            return Ok(TopicState::Absent);
        };
        if let Some(error) = found.error() {
            let code = RDKafkaErrorCode::from(error);
            return Ok(match code {
                RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic => {
                    TopicState::Absent
                }
                other => TopicState::Inaccessible(other),
            });
        }
        Ok(match found.partitions().len() {
            0 => TopicState::Absent,
            num_partitions => TopicState::Present { num_partitions },
        })
    }

    /// How many of the topic's first `num_partitions` partitions have an offset committed by
    /// the probe's group: reading them needs the group's Describe permission.
    ///
    /// # Errors
    /// The broker refused or did not answer.
    pub fn num_committed_partitions(
        &self,
        topic: &str,
        num_partitions: usize,
    ) -> Result<usize, ProbeError> {
        let mut partitions = TopicPartitionList::new();
        for partition in 0..i32::try_from(num_partitions).unwrap_or(i32::MAX) {
            partitions.add_partition(topic, partition);
        }
        let committed = self
            .consumer
            .committed_offsets(partitions, self.timeout)
            .map_err(|error| self.probe_error(error))?;
        let num_committed = committed
            .elements()
            .iter()
            .filter(|element| matches!(element.offset(), Offset::Offset(_)))
            .count();
        // Dropped before the consumer: a live list would make dropping the consumer hang.
        drop(committed);
        Ok(num_committed)
    }

    /// Creates `topic` with `num_partitions` partitions and the broker's default replication.
    /// An existing topic of that name is not an error.
    ///
    /// # Errors
    /// The broker refused (e.g. not authorized to create topics) or did not answer.
    pub async fn create_topic(
        &self,
        topic: &str,
        num_partitions: usize,
        settings: &[(&str, &str)],
    ) -> Result<(), ProbeError> {
        let admin: AdminClient<DefaultClientContext> = self
            .config
            .create()
            .map_err(|error| self.probe_error(error))?;
        let num_partitions = i32::try_from(num_partitions).unwrap_or(i32::MAX);
        let mut new_topic = NewTopic::new(topic, num_partitions, TopicReplication::Fixed(-1));
        for (key, value) in settings {
            new_topic = new_topic.set(key, value);
        }
        let options = AdminOptions::new().operation_timeout(Some(self.timeout));
        let results = admin
            .create_topics([&new_topic], &options)
            .await
            .map_err(|error| self.probe_error(error))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => return Err(self.probe_error(KafkaError::AdminOp(code))),
            }
        }
        Ok(())
    }

    /// The `kafka-topics.sh` command that creates `topic` on this cluster.
    pub fn create_topic_command(
        &self,
        topic: &str,
        num_partitions: Option<usize>,
        settings: &[(&str, &str)],
    ) -> String {
        self.commands()
            .create_topic(topic, num_partitions, settings)
    }

    /// The `kafka-topics.sh` command that raises `topic` to `num_partitions` partitions.
    pub fn add_partitions_command(&self, topic: &str, num_partitions: usize) -> String {
        self.commands().add_partitions(topic, num_partitions)
    }

    fn commands(&self) -> TopicCommands<'_> {
        TopicCommands {
            bootstrap_servers: &self.bootstrap_servers,
            secured: self.secured,
        }
    }

    fn probe_error(&self, error: KafkaError) -> ProbeError {
        let reason = self
            .consumer
            .context()
            .last_error
            .lock()
            .ok()
            .and_then(|last_error| last_error.clone());
        ProbeError { error, reason }
    }
}

/// The admin commands that fix a topic, for messages and preflight lines.
#[derive(Debug, Clone, Copy)]
pub struct TopicCommands<'a> {
    pub bootstrap_servers: &'a str,
    /// TLS or SASL: the admin tool then needs the same settings from a properties file.
    pub secured: bool,
}

impl TopicCommands<'_> {
    /// Whether `client` (librdkafka properties) connects with TLS or SASL.
    pub fn is_secured(client: &BTreeMap<String, String>) -> bool {
        client
            .get("security.protocol")
            .is_some_and(|protocol| !protocol.eq_ignore_ascii_case("plaintext"))
    }

    /// Creates `topic`; `num_partitions: None` leaves a placeholder for the operator's choice.
    pub fn create_topic(
        &self,
        topic: &str,
        num_partitions: Option<usize>,
        settings: &[(&str, &str)],
    ) -> String {
        let partitions =
            num_partitions.map_or_else(|| "<partitions>".to_owned(), |count| count.to_string());
        let mut command = format!(
            "kafka-topics.sh --bootstrap-server {} --create --topic {topic} --partitions {partitions}",
            self.bootstrap_servers
        );
        for (key, value) in settings {
            command.push_str(&format!(" --config {key}={value}"));
        }
        self.with_command_config(command)
    }

    /// Raises `topic` to `num_partitions` partitions.
    pub fn add_partitions(&self, topic: &str, num_partitions: usize) -> String {
        self.with_command_config(format!(
            "kafka-topics.sh --bootstrap-server {} --alter --topic {topic} --partitions {num_partitions}",
            self.bootstrap_servers
        ))
    }

    fn with_command_config(&self, command: String) -> String {
        if self.secured {
            command + " --command-config client.properties"
        } else {
            command
        }
    }
}

/// A failed request, with librdkafka's latest reported reason (e.g. "Connection refused",
/// "SASL authentication error") when there is one.
#[derive(Debug)]
pub struct ProbeError {
    pub error: KafkaError,
    pub reason: Option<String>,
}

impl ProbeError {
    /// The broker refused on authorization grounds.
    pub fn is_authorization(&self) -> bool {
        matches!(
            self.error.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::TopicAuthorizationFailed
                    | RDKafkaErrorCode::GroupAuthorizationFailed
                    | RDKafkaErrorCode::ClusterAuthorizationFailed
            )
        )
    }
}

impl std::fmt::Display for ProbeError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.reason {
            Some(reason) => write!(formatter, "{} ({reason})", self.error),
            None => write!(formatter, "{}", self.error),
        }
    }
}

impl std::error::Error for ProbeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(client: &[(&str, &str)]) -> KafkaProbe {
        let client = client
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect();
        KafkaProbe::try_new("k1:9092,k2:9092", &client, None, Duration::from_secs(1))
            .expect("probe")
    }

    #[test]
    fn create_command_names_topic_partitions_and_settings() {
        assert_eq!(
            probe(&[]).create_topic_command(
                "llm-traces-changelog",
                Some(12),
                &[("cleanup.policy", "compact")]
            ),
            "kafka-topics.sh --bootstrap-server k1:9092,k2:9092 --create --topic \
             llm-traces-changelog --partitions 12 --config cleanup.policy=compact"
        );
        assert_eq!(
            probe(&[]).create_topic_command("llm-traces", None, &[]),
            "kafka-topics.sh --bootstrap-server k1:9092,k2:9092 --create --topic llm-traces \
             --partitions <partitions>"
        );
    }

    #[test]
    fn commands_for_secured_clusters_carry_the_client_properties() {
        let secured = probe(&[
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", "sessionizer"),
            ("sasl.password", "hunter2"),
        ]);
        assert!(secured.add_partitions_command("llm-traces", 6).ends_with(
            "--alter --topic llm-traces --partitions 6 --command-config client.properties"
        ));
        assert!(
            !probe(&[("security.protocol", "plaintext")])
                .add_partitions_command("t", 1)
                .contains("--command-config")
        );
    }

    #[test]
    fn debug_never_shows_client_settings() {
        let probe = probe(&[("sasl.password", "hunter2")]);
        assert!(!format!("{probe:?}").contains("hunter2"));
    }
}
