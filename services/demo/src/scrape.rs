//! The service's `/metrics`, read over HTTP as a Prometheus would: when the demo's traffic
//! is all shipped, the progress lines, and the totals of the report.

use crate::traffic::Produced;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The `/metrics` endpoint of the running service.
#[derive(Debug, Clone)]
pub struct MetricsEndpoint {
    client: reqwest::Client,
    url: String,
}

/// One sample of the text exposition: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// Every sample of one scrape.
#[derive(Debug, Clone, Default)]
pub struct Samples(Vec<Sample>);

impl MetricsEndpoint {
    pub fn new(listen: SocketAddr) -> Self {
        MetricsEndpoint {
            client: reqwest::Client::new(),
            url: format!("http://{listen}/metrics"),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// One scrape.
    ///
    /// # Errors
    /// While the service is not listening yet, or when it answers with an error.
    pub async fn scrape(&self) -> anyhow::Result<Samples> {
        let text = self
            .client
            .get(&self.url)
            .timeout(Duration::from_secs(5))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(Samples::parse(&text))
    }

    /// Scrapes until every good trace was shipped, no session is open, every closed session's
    /// row was shipped (with `session_rows`) and every poison message was dead-lettered, or
    /// until `deadline`; returns the last scrape.
    pub async fn wait_until_done(
        &self,
        produced: &Produced,
        session_rows: bool,
        deadline: Instant,
    ) -> Samples {
        let mut last = Samples::default();
        loop {
            if let Ok(samples) = self.scrape().await {
                last = samples;
            }
            let poisoned = last.sum("sessionizer_dead_letters_total", Some(("stage", "decode")));
            let done = last.trace_rows_shipped() >= produced.expected_rows()
                && last.sessions_open() == 0.0
                && (!session_rows || last.session_rows_shipped() >= last.sessions_closed())
                && poisoned >= produced.num_poison as f64;
            if done || Instant::now() >= deadline {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Prints a progress line every second until aborted.
pub async fn print_progress(metrics: MetricsEndpoint, started: Instant) {
    let mut previous = 0.0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        // The service may not listen yet during its first second.
        let Ok(samples) = metrics.scrape().await else {
            continue;
        };
        let consumed = samples.sum("sessionizer_events_consumed_total", None);
        println!(
            "[{:>4.1}s] consumed {:>4}  shipped {:>4}  open sessions {:>3}  {:>5.0} events/s",
            started.elapsed().as_secs_f64(),
            consumed,
            samples.rows_shipped(),
            samples.sessions_open(),
            consumed - previous,
        );
        previous = consumed;
    }
}

impl Samples {
    /// Parses the Prometheus text format; lines that are not samples are skipped.
    fn parse(text: &str) -> Samples {
        Samples(text.lines().filter_map(parse_sample).collect())
    }

    /// Sum of the samples named `name`, of those carrying `label` when given.
    pub fn sum(&self, name: &str, label: Option<(&str, &str)>) -> f64 {
        self.0
            .iter()
            .filter(|sample| sample.name == name)
            .filter(|sample| {
                label.is_none_or(|(key, value)| {
                    sample
                        .labels
                        .iter()
                        .any(|(found_key, found_value)| found_key == key && found_value == value)
                })
            })
            .map(|sample| sample.value)
            .sum()
    }

    /// Rows of traces and of closed sessions.
    pub fn rows_shipped(&self) -> f64 {
        self.sum("sessionizer_rows_shipped_total", None)
    }

    /// Rows of closed sessions, shipped to the sessions pipeline.
    pub fn session_rows_shipped(&self) -> f64 {
        self.sum(
            "sessionizer_session_rows_total",
            Some(("outcome", "shipped")),
        )
    }

    pub fn trace_rows_shipped(&self) -> f64 {
        self.rows_shipped() - self.session_rows_shipped()
    }

    pub fn sessions_closed(&self) -> f64 {
        self.sum("sessionizer_sessions_closed_total", None)
    }

    pub fn sessions_open(&self) -> f64 {
        self.sum("sessionizer_sessions_open", None)
    }

    /// Dead letters per `reason` label.
    pub fn dead_letters_by_reason(&self) -> BTreeMap<String, u64> {
        let mut reasons = BTreeMap::new();
        for sample in self
            .0
            .iter()
            .filter(|sample| sample.name == "sessionizer_dead_letters_total")
        {
            let reason = sample
                .labels
                .iter()
                .find(|(key, _)| key == "reason")
                .map(|(_, value)| value.clone())
                .unwrap_or_default();
            *reasons.entry(reason).or_default() += sample.value as u64;
        }
        reasons
    }
}

/// `name{key="value",..} value [timestamp]`; `None` for comments and anything malformed.
fn parse_sample(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_owned();
    let (labels, rest) = if line[name_end..].starts_with('{') {
        parse_labels(&line[name_end + 1..])?
    } else {
        (Vec::new(), &line[name_end..])
    };
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// The labels after `{`, up to and including `}`; returns them and the text after `}`.
fn parse_labels(text: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    let mut rest = text.trim_start();
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let equals = rest.find('=')?;
        let key = rest[..equals].trim().to_owned();
        let quoted = rest[equals + 1..].trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = quoted.char_indices();
        let closing = loop {
            match chars.next()? {
                (index, '"') => break index,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    escaped => value.push(escaped),
                },
                (_, other) => value.push(other),
            }
        };
        labels.push((key, value));
        rest = quoted[closing + 1..].trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
}

#[cfg(test)]
mod tests {
    use super::Samples;

    #[test]
    fn sums_samples_by_name_and_label_and_skips_comments() {
        let text = "# HELP sessionizer_dead_letters_total Dead letters.\n\
            # TYPE sessionizer_dead_letters_total counter\n\
            sessionizer_dead_letters_total{reason=\"bad \\\"magic\\\"\",stage=\"decode\"} 2\n\
            sessionizer_dead_letters_total{reason=\"too_large\",stage=\"validate\"} 1\n\
            sessionizer_rows_shipped_total 45\n\
            sessionizer_sessions_open 0 1700000000000\n";
        let samples = Samples::parse(text);
        assert_eq!(samples.rows_shipped(), 45.0);
        assert_eq!(samples.sessions_open(), 0.0);
        assert_eq!(
            samples.sum("sessionizer_dead_letters_total", Some(("stage", "decode"))),
            2.0
        );
        let reasons = samples.dead_letters_by_reason();
        assert_eq!(reasons["bad \"magic\""], 2);
        assert_eq!(reasons["too_large"], 1);
    }
}
