//! The OpenTelemetry part: the gateway runs in-process on the demo's cluster, and a service
//! instrumented with OpenTelemetry exports GenAI traces to its `/v1/traces`, as an OTel SDK's
//! OTLP/HTTP exporter does (protobuf, bearer key). Its traces join the same topic, sessions
//! and rows as the helpers'.

use crate::config::{TRACES, free_listen_address};
use anyhow::{Context as _, bail};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message as _;
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

const CLIENT_KEY: &str = "demo-otel-client-key";
const CONVERSATIONS: usize = 2;
const TURNS: usize = 3;

/// The running gateway; [`Gateway::stop`] ends it.
#[derive(Debug)]
pub struct Gateway {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), gateway::RunError>>,
    url: String,
}

impl Gateway {
    /// Starts the gateway on the demo's cluster, on free loopback ports.
    ///
    /// # Errors
    /// When its configuration is refused or a port cannot be found.
    pub fn start(bootstrap: &str) -> anyhow::Result<Gateway> {
        let listen = free_listen_address("127.0.0.1:0".parse()?)?;
        let ops = free_listen_address("127.0.0.1:0".parse()?)?;
        let env: HashMap<String, String> = [
            ("GATEWAY__KAFKA__BOOTSTRAP_SERVERS", bootstrap.to_owned()),
            ("GATEWAY__KAFKA__TOPIC", TRACES.to_owned()),
            ("GATEWAY__AUTH__API_KEYS", CLIENT_KEY.to_owned()),
            ("GATEWAY__HTTP__LISTEN", listen.to_string()),
            ("GATEWAY__OPS__LISTEN", ops.to_string()),
            ("GATEWAY__SHUTDOWN__UNREADY_DELAY_SECS", "0".to_owned()),
            ("GATEWAY__LOG__FILTER", "warn".to_owned()),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value))
        .collect();
        let config = gateway::config::GatewayConfig::load(None, env)
            .context("the demo's gateway configuration")?
            .validate()
            .context("the demo's gateway configuration")?;
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(gateway::run(config, async {
            let _ = stopped.await;
        }));
        Ok(Gateway {
            stop,
            task,
            url: format!("http://{listen}/v1/traces"),
        })
    }

    /// Exports the conversations' traces; returns how many traces the gateway took.
    ///
    /// # Errors
    /// When the gateway does not answer 200 within `timeout`, or refused a span.
    pub async fn export(&self, timeout: Duration) -> anyhow::Result<usize> {
        let body = conversations(now_nanos()).encode_to_vec();
        let client = reqwest::Client::new();
        let until = Instant::now() + timeout;
        loop {
            let sent = client
                .post(&self.url)
                .bearer_auth(CLIENT_KEY)
                .header("content-type", "application/x-protobuf")
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(response) if response.status().is_success() => {
                    let answer = ExportTraceServiceResponse::decode(response.bytes().await?)
                        .context("the gateway's OTLP answer")?;
                    if let Some(partial) = answer.partial_success {
                        bail!(
                            "the gateway refused {} spans: {}",
                            partial.rejected_spans,
                            partial.error_message
                        );
                    }
                    return Ok(CONVERSATIONS * TURNS);
                }
                // Starting up (connection refused), or Kafka not reachable yet (503).
                _ if Instant::now() < until => tokio::time::sleep(Duration::from_millis(200)).await,
                Ok(response) => bail!("the gateway answered {}", response.status()),
                Err(error) => return Err(error).context("exporting to the gateway"),
            }
        }
    }

    /// Stops it as SIGTERM would.
    ///
    /// # Errors
    /// When it ended with an error.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await?.context("the demo's gateway")
    }
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
        })
}

fn text(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..KeyValue::default()
    }
}

fn int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..KeyValue::default()
    }
}

/// Each conversation's turns, a request span around a chat span, 100 ms apart from `start`.
fn conversations(start: u64) -> ExportTraceServiceRequest {
    let mut spans = Vec::new();
    for conversation in 0..CONVERSATIONS {
        for turn in 0..TURNS {
            let trace = [u8::try_from(conversation * TURNS + turn + 1).unwrap_or(u8::MAX); 16];
            let begin = start + u64::try_from(turn).unwrap_or(0) * 100_000_000;
            let span_id = |n: u8| vec![0, 0, 0, 0, 0, 0, trace[0], n];
            let question = [
                "Which plan fits a team of five?",
                "Does it include SSO?",
                "Thanks!",
            ][turn];
            let answer = [
                "Team, at $12 a seat.",
                "Yes, on Team and above.",
                "Happy to help.",
            ][turn];
            spans.push(Span {
                trace_id: trace.to_vec(),
                span_id: span_id(1),
                name: "POST /support/chat".to_owned(),
                start_time_unix_nano: begin,
                end_time_unix_nano: begin + 60_000_000,
                attributes: vec![text("user.id", format!("otel-user-{conversation}"))],
                ..Span::default()
            });
            spans.push(Span {
                trace_id: trace.to_vec(),
                span_id: span_id(2),
                parent_span_id: span_id(1),
                name: "chat gpt-4o-mini".to_owned(),
                start_time_unix_nano: begin + 5_000_000,
                end_time_unix_nano: begin + 55_000_000,
                attributes: vec![
                    text("gen_ai.operation.name", "chat"),
                    text("gen_ai.provider.name", "openai"),
                    text("gen_ai.request.model", "gpt-4o-mini"),
                    text("gen_ai.conversation.id", format!("otel-support-{conversation}")),
                    int("gen_ai.usage.input_tokens", 40),
                    int("gen_ai.usage.output_tokens", 12),
                    text(
                        "gen_ai.input.messages",
                        format!(r#"[{{"role": "user", "parts": [{{"type": "text", "content": "{question}"}}]}}]"#),
                    ),
                    text(
                        "gen_ai.output.messages",
                        format!(r#"[{{"role": "assistant", "parts": [{{"type": "text", "content": "{answer}"}}]}}]"#),
                    ),
                ],
                ..Span::default()
            });
        }
    }
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![text("service.name", "support-bot")],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_exported_trace_assembles_into_its_conversation() {
        let request = conversations(1_780_000_000_000_000_000);
        let grouped = otel_ingest::group_by_trace(&request);
        assert_eq!(grouped.traces.len(), CONVERSATIONS * TURNS);
        for (trace_id, spans) in &grouped.traces {
            let event = otel_ingest::assemble(trace_id, spans, &trace_model::Limits::default())
                .expect("assembles");
            assert!(
                event
                    .session_id
                    .as_deref()
                    .is_some_and(|id| id.starts_with("otel-support-"))
            );
            assert_eq!(event.tokens, Some(52));
        }
    }
}
