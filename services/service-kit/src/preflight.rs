//! A preflight report: one line per check, ✓ or ✗, and under every ✗ the fix. The command
//! exits 0 only when every check passed, so it can gate a rollout as an init container.

use crate::client_properties::ClientProperties;
use crate::kafka::{KafkaProbe, ProbeError};
use rdkafka::error::RDKafkaErrorCode;
use std::fmt;
use std::time::Duration;

/// How one check ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    /// What to do about it, in a sentence or a command.
    Failed {
        fix: String,
    },
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What was checked, e.g. "topic `llm-traces`".
    pub subject: String,
    /// What was found.
    pub finding: String,
    pub outcome: Outcome,
}

impl Check {
    pub fn passed(subject: impl Into<String>, finding: impl Into<String>) -> Self {
        Check {
            subject: subject.into(),
            finding: finding.into(),
            outcome: Outcome::Passed,
        }
    }

    pub fn failed(
        subject: impl Into<String>,
        finding: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Check {
            subject: subject.into(),
            finding: finding.into(),
            outcome: Outcome::Failed { fix: fix.into() },
        }
    }

    pub fn is_passed(&self) -> bool {
        self.outcome == Outcome::Passed
    }
}

/// Every check of one preflight run, in the order they ran.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    pub fn push(&mut self, check: Check) {
        self.checks.push(check);
    }

    /// True when there is at least one check and none failed.
    pub fn all_passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(Check::is_passed)
    }

    pub fn num_failed(&self) -> usize {
        self.checks
            .iter()
            .filter(|check| !check.is_passed())
            .count()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for check in &self.checks {
            match &check.outcome {
                Outcome::Passed => writeln!(formatter, "✓ {}: {}", check.subject, check.finding)?,
                Outcome::Failed { fix } => {
                    writeln!(formatter, "✗ {}: {}", check.subject, check.finding)?;
                    writeln!(formatter, "    fix: {fix}")?;
                }
            }
        }
        let num_failed = self.num_failed();
        if num_failed == 0 {
            writeln!(formatter, "all {} checks passed", self.checks.len())
        } else {
            writeln!(
                formatter,
                "{num_failed} of {} checks failed",
                self.checks.len()
            )
        }
    }
}

/// The first lines of every service's preflight: connect with the service's settings and
/// check that the brokers answer. Returns the probe for the topic checks when they did.
pub fn connect_brokers(
    bootstrap_servers: &str,
    client: &ClientProperties,
    group_id: Option<&str>,
    timeout: Duration,
    report: &mut Report,
) -> Option<KafkaProbe> {
    let probe = match KafkaProbe::try_new(bootstrap_servers, client, group_id, timeout) {
        Ok(probe) => probe,
        Err(error) => {
            report.push(Check::failed(
                "kafka client",
                format!("librdkafka refused the settings: {error}"),
                "correct the kafka.client setting the message names",
            ));
            return None;
        }
    };
    let protocol = client.get("security.protocol").unwrap_or("plaintext");
    match probe.num_brokers() {
        Ok(num_brokers) => {
            report.push(Check::passed(
                "kafka brokers",
                format!("{num_brokers} broker(s) answered at {bootstrap_servers} ({protocol})"),
            ));
            Some(probe)
        }
        Err(error) => {
            report.push(Check::failed(
                "kafka brokers",
                format!(
                    "no answer from {bootstrap_servers} ({protocol}) within {timeout:?}: {error}"
                ),
                "check kafka.bootstrap_servers, that this pod may reach the brokers \
                 (NetworkPolicy, firewall), and the TLS/SASL settings under kafka.client \
                 (security.protocol, sasl.mechanism, sasl.username, sasl.password, \
                 ssl.ca.location)",
            ));
            report.push(Check::failed(
                "topics",
                "not checked: no broker answered",
                "fix the broker check above first",
            ));
            None
        }
    }
}

/// A topic the broker refuses to describe.
pub fn inaccessible_topic(subject: String, code: RDKafkaErrorCode) -> Check {
    Check::failed(
        subject,
        format!("the broker refuses to describe it ({code})"),
        "grant the service's principal access to it (docs/operations.md lists every topic \
         and ACL)",
    )
}

/// A topic whose metadata request failed as a whole.
pub fn unanswered_topic(subject: String, error: &ProbeError) -> Check {
    Check::failed(
        subject,
        format!("the metadata request failed: {error}"),
        "check that the brokers are healthy, then run preflight again",
    )
}

/// A topic that must exist and does not: the command creates it.
pub fn missing_topic(probe: &KafkaProbe, subject: String, topic: &str) -> Check {
    Check::failed(
        subject,
        "does not exist",
        format!(
            "create it, with as many partitions as sessionizer replicas you will run at most: {}",
            probe.create_topic_command(topic, None, &[])
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_a_line_per_check_and_the_fix_under_each_failure() {
        let mut report = Report::default();
        report.push(Check::passed("kafka", "1 broker answered"));
        report.push(Check::failed(
            "topic `llm-traces`",
            "does not exist",
            "kafka-topics.sh --create --topic llm-traces",
        ));
        assert!(!report.all_passed());
        assert_eq!(
            report.to_string(),
            "✓ kafka: 1 broker answered\n\
             ✗ topic `llm-traces`: does not exist\n    fix: kafka-topics.sh --create --topic llm-traces\n\
             1 of 2 checks failed\n"
        );
    }

    #[test]
    fn an_empty_report_has_not_passed() {
        assert!(!Report::default().all_passed());
        let mut report = Report::default();
        report.push(Check::passed("a", "b"));
        assert!(report.all_passed());
    }
}
