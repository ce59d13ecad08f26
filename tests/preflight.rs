//! First contact with a cluster, as an operator meets it: `sessionizer preflight` against the
//! real broker and a local Openlayer-compatible server (no broker, a broker without the
//! topics, a changelog with another partition count, a wrong key, everything in place), and
//! `sessionizer run` started before its traces topic exists.

use end_to_end::{bootstrap, create_topic, num_partitions, sessionizer_path, unique_name};
use fakes::openlayer::OpenlayerServer;
use std::process::{Command, Output};

const KEY: &str = "preflight-key";
const PIPELINE: &str = "pipeline-preflight";

/// Topic and group names of one test, unique to it.
struct Names {
    traces: String,
    dead_letters: String,
    changelog: String,
    sessions: String,
    group: String,
}

impl Names {
    fn new() -> Self {
        Names {
            traces: unique_name("preflight-traces"),
            dead_letters: unique_name("preflight-dlq"),
            changelog: unique_name("preflight-state"),
            sessions: unique_name("preflight-sessions"),
            group: unique_name("preflight-group"),
        }
    }
}

/// The sessionizer binary configured through the environment alone, as in a Deployment.
fn sessionizer(names: &Names, brokers: &str, openlayer: &OpenlayerServer, key: &str) -> Command {
    let mut command = Command::new(sessionizer_path());
    command
        .env("SESSIONIZER__KAFKA__BOOTSTRAP_SERVERS", brokers)
        .env("SESSIONIZER__KAFKA__TOPIC", &names.traces)
        .env("SESSIONIZER__KAFKA__DEAD_LETTER_TOPIC", &names.dead_letters)
        .env("SESSIONIZER__KAFKA__CHANGELOG_TOPIC", &names.changelog)
        .env("SESSIONIZER__KAFKA__SESSIONS_TOPIC", &names.sessions)
        .env("SESSIONIZER__KAFKA__GROUP_ID", &names.group)
        .env("SESSIONIZER__HTTP__LISTEN", "127.0.0.1:0")
        .env("OPENLAYER_API_KEY", key)
        .env("OPENLAYER_BASE_URL", openlayer.base_url())
        .env("OPENLAYER_INFERENCE_PIPELINE_ID", PIPELINE)
        .env_remove("SESSIONIZER_CONFIG");
    command
}

async fn output(mut command: Command) -> Output {
    tokio::task::spawn_blocking(move || command.output().expect("the binary runs"))
        .await
        .expect("joined")
}

/// `preflight` with a short request bound; returns (succeeded, stdout).
async fn preflight(command: Command, extra: &[&str]) -> (bool, String) {
    let mut command = command;
    command
        .args(["preflight", "--timeout-secs", "5"])
        .args(extra);
    let output = output(command).await;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.code().is_some(),
        "preflight was killed: {stdout}"
    );
    (output.status.success(), stdout)
}

/// `run`, which must exit with code 1 (a fatal error); returns its stderr.
async fn run_fails(mut command: Command) -> String {
    command.arg("run");
    let output = output(command).await;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    stderr
}

/// The report's line about `subject`, which must be there.
fn line<'a>(stdout: &'a str, subject: &str) -> &'a str {
    stdout
        .lines()
        .find(|line| line.contains(subject))
        .unwrap_or_else(|| panic!("no line about {subject} in:\n{stdout}"))
}

/// The fix printed under the check about `subject`.
fn fix<'a>(stdout: &'a str, subject: &str) -> &'a str {
    let mut lines = stdout.lines();
    lines
        .find(|line| line.contains(subject))
        .unwrap_or_else(|| panic!("no line about {subject} in:\n{stdout}"));
    lines
        .next()
        .and_then(|next| next.trim_start().strip_prefix("fix: "))
        .unwrap_or_else(|| panic!("no fix under {subject} in:\n{stdout}"))
}

/// An address nothing listens on.
fn closed_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    drop(listener);
    address.to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn passes_every_check_when_everything_is_in_place() {
    let names = Names::new();
    let bootstrap = bootstrap();
    create_topic(&bootstrap, &names.traces, 3).await;
    create_topic(&bootstrap, &names.changelog, 3).await;
    create_topic(&bootstrap, &names.dead_letters, 1).await;
    create_topic(&bootstrap, &names.sessions, 1).await;
    let openlayer = OpenlayerServer::start(KEY).await;

    let (passed, stdout) = preflight(sessionizer(&names, &bootstrap, &openlayer, KEY), &[]).await;

    assert!(passed, "{stdout}");
    assert!(!stdout.contains('✗'), "{stdout}");
    assert!(line(&stdout, "kafka brokers").starts_with('✓'), "{stdout}");
    assert!(
        line(&stdout, &names.traces).contains("3 partitions"),
        "{stdout}"
    );
    assert!(line(&stdout, &names.changelog).starts_with('✓'), "{stdout}");
    assert!(
        line(&stdout, &format!("consumer group `{}`", names.group)).starts_with('✓'),
        "{stdout}"
    );
    assert!(line(&stdout, PIPELINE).starts_with('✓'), "{stdout}");
    assert!(stdout.ends_with("checks passed\n"), "{stdout}");
    // Read-only: the key was checked with a GET, nothing was shipped.
    assert_eq!(
        openlayer.retrieved_pipelines(),
        vec![(PIPELINE.to_owned(), 200)]
    );
    assert!(openlayer.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_broker_names_the_settings_to_check_and_still_checks_openlayer() {
    let names = Names::new();
    let openlayer = OpenlayerServer::start(KEY).await;
    let brokers = closed_address();

    let (passed, stdout) = preflight(sessionizer(&names, &brokers, &openlayer, KEY), &[]).await;

    assert!(!passed, "{stdout}");
    let brokers_line = line(&stdout, "kafka brokers");
    assert!(brokers_line.starts_with('✗'), "{stdout}");
    assert!(brokers_line.contains(&brokers), "{stdout}");
    assert!(fix(&stdout, "kafka brokers").contains("kafka.bootstrap_servers"));
    assert!(line(&stdout, "topics").contains("not checked"), "{stdout}");
    assert!(line(&stdout, PIPELINE).starts_with('✓'), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_without_the_topics_gets_the_commands_that_create_them_and_nothing_is_created() {
    let names = Names::new();
    let bootstrap = bootstrap();
    let openlayer = OpenlayerServer::start(KEY).await;

    let (passed, stdout) = preflight(sessionizer(&names, &bootstrap, &openlayer, KEY), &[]).await;

    assert!(!passed, "{stdout}");
    assert!(line(&stdout, &names.traces).starts_with('✗'), "{stdout}");
    assert!(
        fix(&stdout, &names.traces).contains(&format!(
            "kafka-topics.sh --bootstrap-server {bootstrap} --create --topic {} --partitions",
            names.traces
        )),
        "{stdout}"
    );
    // The service's own topics are created by `run`; preflight says so and how.
    let changelog_line = line(&stdout, &names.changelog);
    assert!(changelog_line.starts_with('✓'), "{stdout}");
    assert!(
        changelog_line.contains("--config cleanup.policy=compact"),
        "{stdout}"
    );
    assert!(
        line(&stdout, &format!("consumer group `{}`", names.group)).contains("not checked"),
        "{stdout}"
    );
    let repartition = format!("{}-repartition", names.group);
    assert!(line(&stdout, &repartition).starts_with('✓'), "{stdout}");
    for topic in [
        &names.traces,
        &names.changelog,
        &repartition,
        &names.dead_letters,
        &names.sessions,
    ] {
        assert_eq!(
            num_partitions(&bootstrap, topic),
            None,
            "preflight created {topic}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changelog_with_another_partition_count_is_refused_with_the_command_that_fixes_it() {
    let names = Names::new();
    let bootstrap = bootstrap();
    create_topic(&bootstrap, &names.traces, 3).await;
    create_topic(&bootstrap, &names.changelog, 2).await;
    let openlayer = OpenlayerServer::start(KEY).await;

    let (passed, stdout) = preflight(sessionizer(&names, &bootstrap, &openlayer, KEY), &[]).await;

    assert!(!passed, "{stdout}");
    let changelog_line = line(&stdout, &names.changelog);
    assert!(changelog_line.starts_with('✗'), "{stdout}");
    assert!(changelog_line.contains("2 partitions"), "{stdout}");
    assert!(
        fix(&stdout, &names.changelog).contains(&format!(
            "--alter --topic {} --partitions 3",
            names.changelog
        )),
        "{stdout}"
    );
    assert!(line(&stdout, &names.traces).starts_with('✓'), "{stdout}");

    // `run` refuses the same way, with the cause chain on stderr.
    let stderr = run_fails(sessionizer(&names, &bootstrap, &openlayer, KEY)).await;
    assert!(
        stderr.contains(&format!(
            "the topics are not ready: topic `{}` (kafka.changelog_topic) has 2 partitions",
            names.changelog
        )),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repartition_topic_with_another_partition_count_is_refused_naming_it() {
    let names = Names::new();
    let bootstrap = bootstrap();
    let repartition = format!("{}-repartition", names.group);
    create_topic(&bootstrap, &names.traces, 3).await;
    create_topic(&bootstrap, &repartition, 2).await;
    let openlayer = OpenlayerServer::start(KEY).await;

    let (passed, stdout) = preflight(sessionizer(&names, &bootstrap, &openlayer, KEY), &[]).await;

    assert!(!passed, "{stdout}");
    let repartition_line = line(&stdout, &repartition);
    assert!(repartition_line.starts_with('✗'), "{stdout}");
    assert!(
        repartition_line.contains("(kafka.repartition_topic)"),
        "{stdout}"
    );
    assert!(
        fix(&stdout, &repartition)
            .contains(&format!("--alter --topic {repartition} --partitions 3")),
        "{stdout}"
    );
    let stderr = run_fails(sessionizer(&names, &bootstrap, &openlayer, KEY)).await;
    assert!(
        stderr.contains(&format!(
            "topic `{repartition}` (kafka.repartition_topic) has 2 partitions"
        )),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_openlayer_key_or_an_unknown_pipeline_fails_its_check() {
    let names = Names::new();
    let bootstrap = bootstrap();
    create_topic(&bootstrap, &names.traces, 1).await;
    let openlayer = OpenlayerServer::start(KEY).await;
    openlayer.set_known_pipelines(&[PIPELINE]);

    let (passed, stdout) = preflight(
        sessionizer(&names, &bootstrap, &openlayer, "not-the-key"),
        &[],
    )
    .await;
    assert!(!passed, "{stdout}");
    let key_line = line(&stdout, PIPELINE);
    assert!(key_line.starts_with('✗'), "{stdout}");
    assert!(key_line.contains("refused the key (401"), "{stdout}");
    assert!(
        fix(&stdout, PIPELINE).contains("OPENLAYER_API_KEY"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("not-the-key"),
        "the key is never printed: {stdout}"
    );

    let (passed, stdout) = preflight(
        sessionizer(&names, &bootstrap, &openlayer, KEY),
        &["--pipeline-id", "pipeline-nobody-made"],
    )
    .await;
    assert!(!passed, "{stdout}");
    assert!(line(&stdout, PIPELINE).starts_with('✓'), "{stdout}");
    assert!(
        line(&stdout, "pipeline-nobody-made").contains("does not know this pipeline (404"),
        "{stdout}"
    );

    // The sessions pipeline is checked too.
    let mut command = sessionizer(&names, &bootstrap, &openlayer, KEY);
    command.env(
        "SESSIONIZER__OPENLAYER__SESSIONS_PIPELINE_ID",
        "sessions-nobody-made",
    );
    let (passed, stdout) = preflight(command, &[]).await;
    assert!(!passed, "{stdout}");
    assert!(line(&stdout, PIPELINE).starts_with('✓'), "{stdout}");
    assert!(
        line(&stdout, "sessions-nobody-made").contains("does not know this pipeline (404"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_schema_registry_fails_its_check() {
    let names = Names::new();
    let bootstrap = bootstrap();
    create_topic(&bootstrap, &names.traces, 1).await;
    let openlayer = OpenlayerServer::start(KEY).await;
    let registry = format!("http://{}", closed_address());
    let mut command = sessionizer(&names, &bootstrap, &openlayer, KEY);
    command.env("SESSIONIZER__KAFKA__SCHEMA_REGISTRY_URL", &registry);

    let (passed, stdout) = preflight(command, &[]).await;

    assert!(!passed, "{stdout}");
    let registry_line = line(&stdout, "schema registry");
    assert!(registry_line.starts_with('✗'), "{stdout}");
    assert!(registry_line.contains(&registry), "{stdout}");
    assert!(fix(&stdout, "schema registry").contains("kafka.schema_registry_url"));
    assert!(line(&stdout, PIPELINE).starts_with('✓'), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn run_before_the_traces_topic_exists_names_it_and_the_command_then_exits_one() {
    let names = Names::new();
    let bootstrap = bootstrap();
    let openlayer = OpenlayerServer::start(KEY).await;

    let stderr = run_fails(sessionizer(&names, &bootstrap, &openlayer, KEY)).await;

    assert!(
        stderr.contains(&format!(
            "sessionizer: the topics are not ready: topic `{}` (kafka.topic) does not exist",
            names.traces
        )),
        "the cause chain on stderr: {stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "kafka-topics.sh --bootstrap-server {bootstrap} --create --topic {}",
            names.traces
        )),
        "{stderr}"
    );
    assert!(stderr.contains("sessionizer preflight"), "{stderr}");
}

/// With the Collector path on, its topics are checked as `run` treats them: the spans topic
/// must exist, the repartition topic is created when absent, and a state topic of another
/// partition count is refused with the command that fixes it.
#[tokio::test(flavor = "multi_thread")]
async fn the_collector_paths_topics_are_checked_by_their_keys() {
    let names = Names::new();
    let bootstrap = bootstrap();
    let spans = unique_name("preflight-spans");
    let repartition = unique_name("preflight-otel-repartition");
    let state = unique_name("preflight-otel-state");
    create_topic(&bootstrap, &names.traces, 3).await;
    let openlayer = OpenlayerServer::start(KEY).await;
    let with_otel = || {
        let mut command = sessionizer(&names, &bootstrap, &openlayer, KEY);
        command
            .env("SESSIONIZER__OTEL__SPANS_TOPIC", &spans)
            .env("SESSIONIZER__OTEL__REPARTITION_TOPIC", &repartition)
            .env("SESSIONIZER__OTEL__STATE_TOPIC", &state);
        command
    };

    let (passed, stdout) = preflight(with_otel(), &[]).await;
    assert!(!passed, "{stdout}");
    let spans_line = line(&stdout, &format!("topic `{spans}`"));
    assert!(
        spans_line.starts_with('✗') && spans_line.contains("(otel.spans_topic): does not exist"),
        "{stdout}"
    );
    assert!(
        fix(&stdout, &format!("topic `{spans}`")).contains(&format!("--create --topic {spans}")),
        "{stdout}"
    );
    for (topic, key) in [
        (&repartition, "otel.repartition_topic"),
        (&state, "otel.state_topic"),
    ] {
        let topic_line = line(&stdout, &format!("topic `{topic}`"));
        assert!(
            topic_line.starts_with('✓')
                && topic_line.contains(key)
                && topic_line.contains("`run` creates it"),
            "{stdout}"
        );
    }

    create_topic(&bootstrap, &spans, 2).await;
    create_topic(&bootstrap, &state, 1).await;
    let (passed, stdout) = preflight(with_otel(), &[]).await;
    assert!(!passed, "{stdout}");
    assert!(
        line(&stdout, &format!("topic `{spans}`")).starts_with('✓'),
        "{stdout}"
    );
    assert!(
        line(&stdout, &format!("topic `{repartition}`")).contains("--partitions 2"),
        "created like the spans topic: {stdout}"
    );
    let state_line = line(&stdout, &format!("topic `{state}`"));
    assert!(
        state_line.starts_with('✗') && state_line.contains("1 partitions"),
        "{stdout}"
    );
    assert!(
        fix(&stdout, &format!("topic `{state}`"))
            .contains(&format!("--alter --topic {state} --partitions 2")),
        "{stdout}"
    );
    assert_eq!(
        num_partitions(&bootstrap, &repartition),
        None,
        "preflight creates nothing"
    );
}
