//! `gateway preflight` as an operator runs it, against the real test broker
//! (`KAFKA_BOOTSTRAP`, set by `make test`): no broker, no topic, everything in place.

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

fn bootstrap() -> String {
    match std::env::var("KAFKA_BOOTSTRAP") {
        Ok(bootstrap) if !bootstrap.is_empty() => bootstrap,
        _ => panic!(
            "KAFKA_BOOTSTRAP is not set: these tests need the real broker. Run `make test`, \
             or `make broker-up` and export the KAFKA_BOOTSTRAP it prints"
        ),
    }
}

fn unique_topic(test: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    format!("gateway-preflight-{test}-{}-{nanos}", std::process::id())
}

/// Runs `gateway preflight` configured through the environment; (succeeded, stdout).
fn preflight(brokers: &str, topic: &str) -> (bool, String) {
    preflight_with(brokers, topic, &[])
}

fn preflight_with(brokers: &str, topic: &str, extra: &[(&str, &str)]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["preflight", "--timeout-secs", "5"])
        .env("GATEWAY__KAFKA__BOOTSTRAP_SERVERS", brokers)
        .env("GATEWAY__KAFKA__TOPIC", topic)
        .env("GATEWAY__AUTH__API_KEYS", "client-key")
        .envs(extra.iter().copied())
        .env_remove("GATEWAY_CONFIG")
        .output()
        .expect("the gateway runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.code().is_some(), "killed: {stdout}");
    (output.status.success(), stdout)
}

#[tokio::test(flavor = "multi_thread")]
async fn passes_when_the_broker_answers_and_the_topic_exists() {
    let bootstrap = bootstrap();
    let topic = unique_topic("present");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("admin client");
    let results = admin
        .create_topics(
            [&NewTopic::new(&topic, 2, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .expect("create_topics");
    for result in results {
        result.expect("topic created");
    }

    let (passed, stdout) = tokio::task::spawn_blocking(move || preflight(&bootstrap, &topic))
        .await
        .expect("ran");

    assert!(passed, "{stdout}");
    assert!(
        stdout.starts_with("✓ kafka brokers: 1 broker(s) answered"),
        "{stdout}"
    );
    assert!(stdout.contains("present, 2 partitions"), "{stdout}");
    assert!(stdout.ends_with("all 2 checks passed\n"), "{stdout}");
}

#[test]
fn a_missing_topic_gets_the_command_that_creates_it() {
    let bootstrap = bootstrap();
    let topic = unique_topic("absent");

    let (passed, stdout) = preflight(&bootstrap, &topic);

    assert!(!passed, "{stdout}");
    assert!(
        stdout.contains(&format!("✗ topic `{topic}` (kafka.topic): does not exist")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "fix: create it, with as many partitions as sessionizer replicas you will run at \
             most: kafka-topics.sh --bootstrap-server {bootstrap} --create --topic {topic} \
             --partitions <partitions>"
        )),
        "{stdout}"
    );
}

/// With `kafka.spans_topic` set, the spans topic is checked as the traces topic is.
#[test]
fn a_missing_spans_topic_is_named_by_its_key() {
    let bootstrap = bootstrap();
    let topic = unique_topic("traces-absent");
    let spans_topic = unique_topic("spans-absent");

    let (passed, stdout) = preflight_with(
        &bootstrap,
        &topic,
        &[("GATEWAY__KAFKA__SPANS_TOPIC", &spans_topic)],
    );

    assert!(!passed, "{stdout}");
    assert!(
        stdout.contains(&format!(
            "✗ topic `{spans_topic}` (kafka.spans_topic): does not exist"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("--create --topic {spans_topic} ")),
        "{stdout}"
    );
}

#[test]
fn without_a_broker_fails_naming_the_address() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed = listener.local_addr().expect("address").to_string();
    drop(listener);

    let (passed, stdout) = preflight(&closed, "llm-traces");

    assert!(!passed, "{stdout}");
    assert!(
        stdout.starts_with(&format!(
            "✗ kafka brokers: no answer from {closed} (plaintext)"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("✗ topics: not checked: no broker answered"),
        "{stdout}"
    );
}
