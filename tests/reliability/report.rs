//! What a scenario found, and the suite's table and JSON report.

use crate::service::Verification;
use serde_json::{Value, json};

/// One scenario's result.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub scenario: &'static str,
    /// Distinct good traces produced.
    pub num_sent: usize,
    /// Distinct good traces Openlayer received at least once.
    pub num_shipped: usize,
    pub num_lost: usize,
    /// Rows received beyond the first for the same inference id.
    pub num_duplicated: usize,
    /// What duplicates may be: rows in flight (acknowledged after the last durable
    /// checkpoint) at each crash; 0 where nothing crashes.
    pub duplicate_bound: usize,
    pub num_dead_lettered: usize,
    /// Instances started beyond the first (restarts and scale-outs).
    pub num_restarts: usize,
    /// Highest `VmHWM` of any instance.
    pub peak_rss_bytes: u64,
    /// Checks that failed; empty means the scenario passed.
    pub failures: Vec<String>,
    /// What else was measured, for the report.
    pub notes: Vec<String>,
    /// The last log lines of each instance, shown when the scenario fails.
    pub logs: Vec<String>,
    /// Effects of session closes (summaries, session rows), a table row each.
    pub closes: Vec<CloseEffects>,
}

/// One kind of effect of the sessions' closes: how many sessions closed, how many of them got
/// it, and how many copies came.
#[derive(Debug, Clone, Default)]
pub struct CloseEffects {
    pub name: &'static str,
    pub num_sessions: usize,
    /// Sessions that got it at least once.
    pub num_delivered: usize,
    /// Everything that came, copies included.
    pub num_received: usize,
    /// What copies may be (closes redone after crashes).
    pub duplicate_bound: usize,
}

impl CloseEffects {
    pub fn num_lost(&self) -> usize {
        self.num_sessions - self.num_delivered
    }

    pub fn num_duplicated(&self) -> usize {
        self.num_received - self.num_delivered
    }
}

impl Outcome {
    pub fn new(scenario: &'static str) -> Outcome {
        Outcome {
            scenario,
            ..Outcome::default()
        }
    }

    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// Records a failed check unless `ok`.
    pub fn check(&mut self, ok: bool, failure: impl FnOnce() -> String) {
        if !ok {
            self.failures.push(failure());
        }
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// Keeps the last lines `process` logged, for a failure report.
    pub fn keep_logs(&mut self, process: &crate::service::Sessionizer) {
        let output = process.output();
        // librdkafka repeats these every few milliseconds while the broker is down: they
        // would push what led there out of the tail.
        let lines: Vec<&str> = output
            .lines()
            .filter(|line| {
                !line.contains("AllBrokersDown") && !line.contains("BrokerTransportFailure")
            })
            .collect();
        let tail = lines[lines.len().saturating_sub(150)..].join("\n");
        self.logs.push(tail);
    }

    pub fn observe_rss(&mut self, rss: Option<u64>) {
        self.peak_rss_bytes = self.peak_rss_bytes.max(rss.unwrap_or(0));
    }

    /// Takes the row checks: nothing lost, exact enrichment on every copy, duplicates within
    /// `duplicate_bound`.
    pub fn take_verification(&mut self, verification: &Verification) {
        self.num_sent = verification.num_sent;
        self.num_shipped = verification.num_shipped;
        self.num_lost = verification.lost.len();
        self.num_duplicated = verification.num_duplicated;
        let lost = &verification.lost;
        self.check(lost.is_empty(), || {
            format!(
                "{} traces lost, e.g. {:?}",
                lost.len(),
                &lost[..lost.len().min(5)]
            )
        });
        let mismatches = &verification.mismatches;
        self.check(mismatches.is_empty(), || {
            format!(
                "{} rows differ from an uninterrupted run, e.g. {:?}",
                mismatches.len(),
                &mismatches[..mismatches.len().min(3)]
            )
        });
        let (duplicated, bound) = (self.num_duplicated, self.duplicate_bound);
        self.check(duplicated <= bound, || {
            format!("{duplicated} duplicates, more than the {bound} rows in flight at crashes")
        });
    }

    /// Takes the counts of one effect of the closes: none lost, copies within the bound.
    pub fn take_close_effects(&mut self, effects: CloseEffects) {
        let name = effects.name;
        let lost = effects.num_lost();
        self.check(lost == 0, || {
            format!("{lost} closed sessions without their {name}")
        });
        let (duplicated, bound) = (effects.num_duplicated(), effects.duplicate_bound);
        self.check(duplicated <= bound, || {
            format!("{duplicated} duplicate {name}, more than the bound of {bound}")
        });
        self.closes.push(effects);
    }

    pub fn verdict(&self) -> &'static str {
        if self.passed() { "pass" } else { "FAIL" }
    }
}

/// The suite's results.
#[derive(Debug, Default)]
pub struct Report {
    pub outcomes: Vec<Outcome>,
}

impl Report {
    /// The table printed at the end of a run.
    pub fn table(&self) -> String {
        let header = [
            "scenario",
            "sent",
            "shipped",
            "lost",
            "duplicated",
            "dup bound",
            "dead-lettered",
            "restarts",
            "peak RSS MiB",
            "verdict",
        ];
        let mut rows: Vec<[String; 10]> = Vec::new();
        for outcome in &self.outcomes {
            rows.push([
                outcome.scenario.to_owned(),
                outcome.num_sent.to_string(),
                outcome.num_shipped.to_string(),
                outcome.num_lost.to_string(),
                outcome.num_duplicated.to_string(),
                outcome.duplicate_bound.to_string(),
                outcome.num_dead_lettered.to_string(),
                outcome.num_restarts.to_string(),
                format!("{:.1}", outcome.peak_rss_bytes as f64 / (1024.0 * 1024.0)),
                outcome.verdict().to_owned(),
            ]);
            // A row per effect of the closes: sent = sessions closed, shipped = sessions that
            // got it.
            for effects in &outcome.closes {
                rows.push([
                    format!("{}: {}", outcome.scenario, effects.name),
                    effects.num_sessions.to_string(),
                    effects.num_delivered.to_string(),
                    effects.num_lost().to_string(),
                    effects.num_duplicated().to_string(),
                    effects.duplicate_bound.to_string(),
                    "-".to_owned(),
                    "-".to_owned(),
                    "-".to_owned(),
                    outcome.verdict().to_owned(),
                ]);
            }
        }
        let mut widths = header.map(str::len);
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.len());
            }
        }
        let line = |cells: &[String]| {
            let padded: Vec<String> = cells
                .iter()
                .zip(widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect();
            format!("| {} |\n", padded.join(" | "))
        };
        let mut table = line(&header.map(str::to_owned));
        table.push_str(&line(&widths.map(|width| "-".repeat(width))));
        for row in &rows {
            table.push_str(&line(row));
        }
        for outcome in &self.outcomes {
            for note in &outcome.notes {
                table.push_str(&format!("{}: {note}\n", outcome.scenario));
            }
            for failure in &outcome.failures {
                table.push_str(&format!("{}: FAILED: {failure}\n", outcome.scenario));
            }
        }
        table
    }

    /// The bench report's shape (`figures` with name, value, unit, baseline, ratio, goal, met),
    /// one figure per scenario and measure, plus the table's rows under `scenarios`.
    pub fn json(&self) -> Value {
        let mut figures = Vec::new();
        let mut scenarios = Vec::new();
        for outcome in &self.outcomes {
            let sent = outcome.num_sent as f64;
            let ratio = |value: usize| {
                if sent > 0.0 {
                    json!(value as f64 / sent)
                } else {
                    Value::Null
                }
            };
            figures.push(json!({
                "name": format!("{} lost", outcome.scenario),
                "value": outcome.num_lost, "unit": "traces",
                "baseline": outcome.num_sent, "ratio": ratio(outcome.num_lost),
                "goal": "0", "met": outcome.num_lost == 0,
            }));
            figures.push(json!({
                "name": format!("{} duplicated", outcome.scenario),
                "value": outcome.num_duplicated, "unit": "rows",
                "baseline": outcome.num_sent, "ratio": ratio(outcome.num_duplicated),
                "goal": format!("<= {} (in flight at crashes)", outcome.duplicate_bound),
                "met": outcome.num_duplicated <= outcome.duplicate_bound,
            }));
            figures.push(json!({
                "name": format!("{} verdict", outcome.scenario),
                "value": if outcome.passed() { 1 } else { 0 }, "unit": "pass",
                "baseline": Value::Null, "ratio": Value::Null,
                "goal": "every check passes", "met": outcome.passed(),
            }));
            for effects in &outcome.closes {
                let sessions = effects.num_sessions;
                let ratio = |value: usize| {
                    if sessions > 0 {
                        json!(value as f64 / sessions as f64)
                    } else {
                        Value::Null
                    }
                };
                figures.push(json!({
                    "name": format!("{} {} lost", outcome.scenario, effects.name),
                    "value": effects.num_lost(), "unit": "sessions",
                    "baseline": sessions, "ratio": ratio(effects.num_lost()),
                    "goal": "0", "met": effects.num_lost() == 0,
                }));
                figures.push(json!({
                    "name": format!("{} {} duplicated", outcome.scenario, effects.name),
                    "value": effects.num_duplicated(), "unit": "records",
                    "baseline": sessions, "ratio": ratio(effects.num_duplicated()),
                    "goal": format!("<= {} (closes redone after crashes)", effects.duplicate_bound),
                    "met": effects.num_duplicated() <= effects.duplicate_bound,
                }));
            }
            scenarios.push(json!({
                "scenario": outcome.scenario,
                "sent": outcome.num_sent,
                "shipped": outcome.num_shipped,
                "lost": outcome.num_lost,
                "duplicated": outcome.num_duplicated,
                "duplicate_bound": outcome.duplicate_bound,
                "dead_lettered": outcome.num_dead_lettered,
                "restarts": outcome.num_restarts,
                "peak_rss_bytes": outcome.peak_rss_bytes,
                "verdict": outcome.verdict(),
                "failures": outcome.failures,
                "notes": outcome.notes,
            }));
        }
        json!({ "figures": figures, "scenarios": scenarios })
    }
}
