//! A preflight report: one line per check, ✓ or ✗, and under every ✗ the fix. The command
//! exits 0 only when every check passed, so it can gate a rollout as an init container.

use std::fmt;

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
