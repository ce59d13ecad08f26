//! `sessionizer preflight`: connects with the service's own configuration and checks what
//! `run` will need, one line each (see [`service_kit::preflight`]): the brokers with the
//! configured TLS/SASL, every topic and the changelog's partition count (the Collector path's
//! too, when `otel.spans_topic` is set), the consumer group,
//! the Schema Registry when one is configured (with its credentials), and Openlayer with the
//! key, through a read-only request. Nothing is written: topics the service would create are
//! reported, not created, and the consumer group is only read, never joined.

use crate::config::{SchemaRegistrySettings, ValidatedConfig};
use crate::metrics::Metrics;
use crate::otel::OtelSettings;
use crate::otel::topics::state_partitions_fix;
use crate::sink::openlayer::OpenlayerSink;
use crate::source::kafka::KafkaSettings;
use crate::source::topics::{
    CHANGELOG_SETTINGS, NeededTopic, TopicRole, Verdict, creation_settings, judge, needed_topics,
    partition_mismatch_fix,
};
use service_kit::kafka::{KafkaProbe, TopicState};
use service_kit::preflight::{
    Check, Report, connect_brokers, inaccessible_topic, missing_topic, unanswered_topic,
};
use std::time::Duration;
use trace_model::codec::registry::{RegistryError, SchemaRegistry};

/// Runs every check; `extra_pipeline_ids` are checked with the key besides the default one.
pub async fn run(
    config: &ValidatedConfig,
    extra_pipeline_ids: &[String],
    timeout: Duration,
) -> Report {
    let mut report = Report::default();
    let kafka = config.kafka.clone();
    let otel = config.otel.clone();
    let kafka_checks =
        tokio::task::spawn_blocking(move || kafka_checks(&kafka, otel.as_ref(), timeout)).await;
    match kafka_checks {
        Ok(checks) => report.checks.extend(checks),
        Err(error) => report.push(Check::failed(
            "kafka",
            format!("the checks did not finish: {error}"),
            "run preflight again; report a bug if it repeats",
        )),
    }
    if let Some(registry) = &config.kafka.schema_registry_url {
        report.push(schema_registry_check(registry, timeout).await);
    }
    report
        .checks
        .extend(openlayer_checks(config, extra_pipeline_ids).await);
    report
}

/// Brokers, topics and the consumer group; blocking.
pub fn kafka_checks(
    settings: &KafkaSettings,
    otel: Option<&OtelSettings>,
    timeout: Duration,
) -> Vec<Check> {
    let mut report = Report::default();
    let Some(probe) = connect_brokers(
        &settings.bootstrap_servers,
        &settings.client,
        Some(&settings.group_id),
        timeout,
        &mut report,
    ) else {
        return report.checks;
    };
    let mut checks = report.checks;
    let mut num_traces_partitions = None;
    for needed in needed_topics(settings) {
        let subject = topic_subject(needed.name, needed.key);
        match probe.topic(needed.name) {
            Ok(state) => {
                let verdict = judge(needed.role, state, num_traces_partitions);
                if let (TopicRole::Traces, Verdict::Ready { num_partitions }) =
                    (needed.role, verdict)
                {
                    num_traces_partitions = Some(num_partitions);
                }
                checks.push(topic_check(
                    &probe,
                    settings,
                    needed,
                    verdict,
                    num_traces_partitions,
                    subject,
                ));
            }
            Err(error) => checks.push(unanswered_topic(subject, &error)),
        }
    }
    if let Some(otel) = otel {
        checks.extend(otel_checks(&probe, otel));
    }
    let subject = format!("consumer group `{}` (kafka.group_id)", settings.group_id);
    match num_traces_partitions {
        None => checks.push(Check::failed(
            subject,
            "not checked: the traces topic is not available",
            "fix the traces topic check above first",
        )),
        Some(num_partitions) => {
            match probe.num_committed_partitions(&settings.topic, num_partitions) {
                Ok(num_committed) => checks.push(Check::passed(
                    subject,
                    format!(
                        "committed offsets readable ({num_committed} of {num_partitions} \
                         partitions committed; a new group starts at kafka.client \
                         auto.offset.reset)"
                    ),
                )),
                Err(error) => checks.push(Check::failed(
                    subject,
                    format!("committed offsets cannot be read: {error}"),
                    if error.is_authorization() {
                        "grant the service's principal Read on the group (docs/operations.md)"
                    } else {
                        "check that the brokers are healthy, then run preflight again"
                    },
                )),
            }
        }
    }
    checks
}

/// The Collector path's topics, judged as `run` treats them (`otel::topics::prepare`): the
/// spans topic must exist; the repartition topic is created with the spans topic's partition
/// count, and the state topic, compacted, with the repartition topic's.
fn otel_checks(probe: &KafkaProbe, otel: &OtelSettings) -> Vec<Check> {
    let mut checks = Vec::new();
    let present = |subject: String, num_partitions: usize| {
        Check::passed(subject, format!("present, {num_partitions} partitions"))
    };
    let spans = topic_subject(&otel.spans_topic, "otel.spans_topic");
    let num_spans = match readable(probe, &otel.spans_topic, &spans, &mut checks) {
        Some(TopicState::Present { num_partitions }) => {
            checks.push(present(spans, num_partitions));
            Some(num_partitions)
        }
        Some(_) => {
            checks.push(Check::failed(
                spans,
                "does not exist",
                format!(
                    "point the Collector's Kafka exporter at it, or create it: {}",
                    probe.create_topic_command(&otel.spans_topic, None, &[])
                ),
            ));
            None
        }
        None => None,
    };
    let repartition = topic_subject(&otel.repartition_topic, "otel.repartition_topic");
    let mut repartition_absent = false;
    let num_repartition = match readable(probe, &otel.repartition_topic, &repartition, &mut checks)
    {
        Some(TopicState::Present { num_partitions }) => {
            checks.push(present(repartition, num_partitions));
            Some(num_partitions)
        }
        Some(_) => {
            repartition_absent = true;
            checks.push(created_by_run(
                repartition,
                &probe.create_topic_command(&otel.repartition_topic, num_spans, &[]),
            ));
            num_spans
        }
        None => None,
    };
    let state = topic_subject(&otel.state_topic, "otel.state_topic");
    match readable(probe, &otel.state_topic, &state, &mut checks) {
        Some(TopicState::Present { num_partitions }) => checks.push(match num_repartition {
            Some(expected) if expected != num_partitions => Check::failed(
                state,
                format!(
                    "{num_partitions} partitions, but the repartition topic `{}` has \
                     {expected}; the two must match partition for partition",
                    otel.repartition_topic
                ),
                if repartition_absent && num_partitions > expected {
                    // No topic to add partitions to yet: create it as large as the state.
                    format!(
                        "create `{}` with {num_partitions} partitions before `run` does: {}",
                        otel.repartition_topic,
                        probe.create_topic_command(
                            &otel.repartition_topic,
                            Some(num_partitions),
                            &[]
                        )
                    )
                } else {
                    state_partitions_fix(probe, otel, num_partitions, expected)
                },
            ),
            _ => present(state, num_partitions),
        }),
        Some(_) => checks.push(created_by_run(
            state,
            &probe.create_topic_command(&otel.state_topic, num_repartition, CHANGELOG_SETTINGS),
        )),
        None => {}
    }
    checks
}

fn topic_subject(topic: &str, key: &str) -> String {
    format!("topic `{topic}` ({key})")
}

/// The topic's state when the broker described it; otherwise the failed check is pushed.
fn readable(
    probe: &KafkaProbe,
    topic: &str,
    subject: &str,
    checks: &mut Vec<Check>,
) -> Option<TopicState> {
    match probe.topic(topic) {
        Ok(TopicState::Inaccessible(code)) => {
            checks.push(inaccessible_topic(subject.to_owned(), code));
            None
        }
        Ok(state) => Some(state),
        Err(error) => {
            checks.push(unanswered_topic(subject.to_owned(), &error));
            None
        }
    }
}

fn created_by_run(subject: String, command: &str) -> Check {
    Check::passed(
        subject,
        format!(
            "absent; `run` creates it, which needs permission to create topics, or create it \
             yourself: {command}"
        ),
    )
}

/// The check line for one topic's verdict.
fn topic_check(
    probe: &KafkaProbe,
    settings: &KafkaSettings,
    needed: NeededTopic<'_>,
    verdict: Verdict,
    num_traces_partitions: Option<usize>,
    subject: String,
) -> Check {
    match verdict {
        Verdict::Inaccessible(code) => inaccessible_topic(subject, code),
        Verdict::MissingTraces => missing_topic(probe, subject, needed.name),
        Verdict::PartitionMismatch { found, expected } => Check::failed(
            subject,
            format!(
                "{found} partitions, but the traces topic `{}` has {expected}; the two must \
                 match partition for partition",
                settings.topic
            ),
            partition_mismatch_fix(probe, &settings.topic, needed.name, expected, found),
        ),
        Verdict::Ready { num_partitions } if needed.role == TopicRole::Changelog => Check::passed(
            subject,
            format!(
                "present, {num_partitions} partitions, as many as `{}`",
                settings.topic
            ),
        ),
        Verdict::Ready { num_partitions } => {
            Check::passed(subject, format!("present, {num_partitions} partitions"))
        }
        Verdict::Create => Check::passed(
            subject,
            format!(
                "absent; `run` creates it, which needs permission to create topics, or create \
                 it yourself: {}",
                probe.create_topic_command(
                    needed.name,
                    num_traces_partitions,
                    creation_settings(needed.role)
                )
            ),
        ),
    }
}

/// `GET /subjects` with the configured credentials: the cheapest request the registry
/// authenticates, the same one `run` makes at start.
pub async fn schema_registry_check(settings: &SchemaRegistrySettings, timeout: Duration) -> Check {
    let subject = "schema registry (kafka.schema_registry_url)";
    let url = &settings.endpoint.url;
    let registry = match SchemaRegistry::try_new(settings.endpoint.clone(), timeout) {
        Ok(registry) => registry,
        Err(error) => {
            return Check::failed(
                subject,
                format!(
                    "no HTTP client: {}",
                    service_kit::fatal::cause_chain(&error)
                ),
                "report a bug",
            );
        }
    };
    match registry.check_access().await {
        Ok(()) => Check::passed(
            subject,
            format!(
                "{url} accepted the request{}",
                match &settings.secret_source {
                    Some(_) => " and the credentials",
                    None => "",
                }
            ),
        ),
        Err(error @ RegistryError::Unauthorized { .. }) => Check::failed(
            subject,
            format!("GET {url}/subjects: {error}"),
            format!(
                "check {} and that the credentials may read the registry's subjects",
                settings.credential_keys()
            ),
        ),
        Err(RegistryError::Request(error)) => Check::failed(
            subject,
            format!(
                "no answer from {url}: {}",
                service_kit::fatal::cause_chain(&error.without_url())
            ),
            "check kafka.schema_registry_url and that this pod may reach it",
        ),
        Err(error) => Check::failed(
            subject,
            format!("GET {url}/subjects: {error}"),
            "check kafka.schema_registry_url and the registry's access rules",
        ),
    }
}

/// The key against each pipeline (the default one, the sessions pipelines and those passed),
/// with the request the SDK calls `inference_pipelines.retrieve`.
async fn openlayer_checks(config: &ValidatedConfig, extra_pipeline_ids: &[String]) -> Vec<Check> {
    let sessions_pipelines = config.session_rows.iter().flat_map(|rows| {
        rows.pipeline_id
            .iter()
            .chain(rows.by_traces_pipeline.values())
    });
    let mut pipeline_ids: Vec<&str> = config
        .openlayer
        .default_pipeline_id
        .iter()
        .chain(sessions_pipelines)
        .map(String::as_str)
        .chain(extra_pipeline_ids.iter().map(String::as_str))
        .collect();
    pipeline_ids.sort_unstable();
    pipeline_ids.dedup();
    if pipeline_ids.is_empty() {
        return vec![Check::failed(
            "openlayer key",
            "not checked: no pipeline id to check it against",
            "set openlayer.default_pipeline_id (OPENLAYER_INFERENCE_PIPELINE_ID), or pass \
             --pipeline-id ID for a pipeline your producers name",
        )];
    }
    let metrics = match Metrics::register(&prometheus::Registry::new()) {
        Ok(metrics) => metrics,
        Err(error) => {
            return vec![Check::failed(
                "openlayer",
                format!("{error}"),
                "report a bug",
            )];
        }
    };
    let sink = match OpenlayerSink::try_new(config.sink.clone(), metrics) {
        Ok(sink) => sink,
        Err(error) => {
            return vec![Check::failed(
                "openlayer",
                service_kit::fatal::cause_chain(&error),
                "correct the [openlayer] settings the message names",
            )];
        }
    };
    let base_url = &config.sink.base_url;
    let mut checks = Vec::new();
    for pipeline_id in pipeline_ids {
        let subject = format!("openlayer pipeline `{pipeline_id}`");
        let check = match sink.retrieve_pipeline(pipeline_id).await {
            Ok(status) if status.is_success() => {
                Check::passed(subject, format!("{base_url} accepted the key ({status})"))
            }
            Ok(status) if matches!(status.as_u16(), 401 | 403) => Check::failed(
                subject,
                format!("{base_url} refused the key ({status})"),
                "check the key in OPENLAYER_API_KEY or the file openlayer.api_key_file names \
                 (the Kubernetes Secret), and that it may use this pipeline",
            ),
            Ok(status) if status.as_u16() == 404 => Check::failed(
                subject,
                format!("{base_url} does not know this pipeline ({status})"),
                "check openlayer.default_pipeline_id (OPENLAYER_INFERENCE_PIPELINE_ID) or the \
                 pipeline_id your producers set",
            ),
            Ok(status) => Check::failed(
                subject,
                format!("{base_url} answered {status}"),
                "run preflight again; if it repeats, check Openlayer's status",
            ),
            Err(error) => Check::failed(
                subject,
                format!(
                    "no answer from {base_url}: {}",
                    service_kit::fatal::cause_chain(&error)
                ),
                "check openlayer.base_url (OPENLAYER_BASE_URL), that this pod may reach it \
                 (NetworkPolicy egress, proxy), and its TLS certificate",
            ),
        };
        checks.push(check);
    }
    checks
}
