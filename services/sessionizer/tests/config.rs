//! Loading and validating the configuration: precedence, unknown keys, error messages,
//! secrets, and the reference in `docs/configuration.md` staying in step with the code.

use sessionizer::config::{
    ApiKeySource, ConfigError, KeyOrigin, LogFormat, SecretSource, SessionizerConfig,
    ValidatedConfig,
};
use sessionizer::secret::Secret;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use trace_model::codec::registry::RegistryAuth;

const API_KEY: &str = "sk-live-SECRET-4711";

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect()
}

fn env_with_key(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    let mut variables = env(pairs);
    variables.insert("OPENLAYER_API_KEY".to_owned(), API_KEY.to_owned());
    variables
}

/// A file under the temp dir with a name unique to this process and call; removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(contents: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "sessionizer-config-test-{}-{}.toml",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, contents).expect("write temp file");
        TempFile(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn load(
    file: Option<&str>,
    variables: &HashMap<String, String>,
) -> Result<SessionizerConfig, ConfigError> {
    let temp_file = file.map(TempFile::new);
    SessionizerConfig::load(temp_file.as_ref().map(TempFile::path), variables)
}

fn load_valid(file: Option<&str>, variables: &HashMap<String, String>) -> ValidatedConfig {
    load(file, variables)
        .expect("configuration loads")
        .validate()
        .expect("configuration is valid")
}

fn load_invalid(file: Option<&str>, variables: &HashMap<String, String>) -> ConfigError {
    match load(file, variables).and_then(SessionizerConfig::validate) {
        Ok(config) => panic!("expected an error, got {config:?}"),
        Err(error) => error,
    }
}

/// The keys of every problem in an `Invalid` error.
fn problem_keys(error: &ConfigError) -> Vec<String> {
    assert!(
        matches!(error, ConfigError::Invalid(_)),
        "expected Invalid, got {error:?}"
    );
    error
        .problems()
        .iter()
        .map(|problem| problem.key.clone())
        .collect()
}

#[test]
fn defaults_validate_with_only_an_api_key() {
    let config = load_valid(None, &env_with_key(&[]));
    assert_eq!(config.kafka.bootstrap_servers, "localhost:9092");
    assert_eq!(config.kafka.group_id, "sessionizer");
    assert_eq!(config.kafka.topic, "llm-traces");
    assert_eq!(config.kafka.dead_letter_topic, "llm-traces-dlq");
    assert_eq!(config.kafka.sessions_topic.as_deref(), Some("llm-sessions"));
    assert_eq!(
        config.kafka.changelog_topic.as_deref(),
        Some("llm-sessions-state")
    );
    assert_eq!(config.kafka.checkpoint_interval, Duration::from_secs(1));
    assert_eq!(config.kafka.session_timeout, Duration::from_secs(45));
    assert!(config.kafka.client.is_empty());
    assert_eq!(config.session.gap, Duration::from_secs(1800));
    assert_eq!(config.session.max_duration, Duration::from_secs(86_400));
    assert_eq!(config.session.grace, Duration::from_secs(300));
    assert_eq!(config.session.idle_check_interval, Duration::from_secs(1));
    assert!(!config.session.infer_user_sessions);
    assert_eq!(config.batch.max_rows, 1000);
    assert_eq!(config.batch.max_bytes, 4 * 1024 * 1024);
    assert_eq!(config.batch.linger, Duration::from_millis(500));
    assert_eq!(config.batch.max_in_flight_requests, 4);
    assert_eq!(config.batch.max_unacked_rows, 50_000);
    assert_eq!(config.sink.base_url, "https://api.openlayer.com/v1");
    assert_eq!(config.sink.api_key.expose(), API_KEY);
    assert_eq!(config.sink.request_timeout, Duration::from_secs(60));
    assert_eq!(config.sink.initial_backoff, Duration::from_millis(500));
    assert_eq!(config.sink.max_backoff, Duration::from_secs(8));
    assert_eq!(config.sink.retry_deadline, None);
    assert!(config.sink.verify_tls);
    assert_eq!(config.openlayer.api_key_source, ApiKeySource::Value);
    assert_eq!(config.openlayer.default_pipeline_id, None);
    assert!(!config.openlayer.mark_final_turn);
    assert_eq!(config.limits, trace_model::Limits::default());
    assert_eq!(config.http.listen.to_string(), "0.0.0.0:9464");
    assert_eq!(config.http.liveness_window, Duration::from_secs(60));
    assert_eq!(config.log.format, LogFormat::Text);
    assert_eq!(config.log.filter, "info");
    assert_eq!(config.shutdown.drain_timeout, Duration::from_secs(20));
    assert!(
        config
            .warnings
            .iter()
            .any(|warning| warning.contains("default_pipeline_id")),
        "{:?}",
        config.warnings
    );
}

#[test]
fn file_overrides_defaults() {
    let config = load_valid(
        Some(
            r#"
            [kafka]
            topic = "traces-a"
            [session]
            gap_secs = 600
            [batch]
            linger_ms = 50
            [openlayer]
            retry_deadline_secs = 3600
            [limits]
            max_steps = 10
            [log]
            format = "json"
            "#,
        ),
        &env_with_key(&[]),
    );
    assert_eq!(config.kafka.topic, "traces-a");
    assert_eq!(
        config.kafka.group_id, "sessionizer",
        "untouched keys keep defaults"
    );
    assert_eq!(config.session.gap, Duration::from_secs(600));
    assert_eq!(config.batch.linger, Duration::from_millis(50));
    assert_eq!(config.sink.retry_deadline, Some(Duration::from_secs(3600)));
    assert_eq!(config.limits.max_steps, 10);
    assert_eq!(config.limits.max_step_depth, 32);
    assert_eq!(config.log.format, LogFormat::Json);
}

#[test]
fn environment_overrides_file() {
    let config = load_valid(
        Some("[kafka]\ntopic = \"from-file\"\n[session]\ninfer_user_sessions = false\n"),
        &env_with_key(&[
            ("SESSIONIZER__KAFKA__TOPIC", "from-env"),
            ("SESSIONIZER__SESSION__INFER_USER_SESSIONS", "true"),
            ("sessionizer__batch__max_rows", "10"),
        ]),
    );
    assert_eq!(config.kafka.topic, "from-env");
    assert!(config.session.infer_user_sessions);
    assert_eq!(config.batch.max_rows, 10, "names are case-insensitive");
}

#[test]
fn digit_only_text_stays_text() {
    let config = load_valid(
        None,
        &env(&[
            ("SESSIONIZER__KAFKA__GROUP_ID", "007"),
            (
                "SESSIONIZER__OPENLAYER__API_KEY",
                "0123456789012345678901234567890",
            ),
        ]),
    );
    assert_eq!(config.kafka.group_id, "007");
    assert_eq!(
        config.sink.api_key.expose(),
        "0123456789012345678901234567890"
    );
}

#[test]
fn unknown_key_in_file_fails_naming_key_and_file() {
    let file = TempFile::new("[kafka]\ntopic = \"t\"\nbogus = 1\n\n[sesion]\ngap_secs = 5\n");
    let error = SessionizerConfig::load(Some(file.path()), &env_with_key(&[]))
        .expect_err("unknown keys fail");
    let ConfigError::UnknownKeys(unknown_keys) = &error else {
        panic!("expected UnknownKeys, got {error:?}");
    };
    let keys: Vec<&str> = unknown_keys
        .iter()
        .map(|unknown| unknown.key.as_str())
        .collect();
    assert_eq!(keys, ["kafka.bogus", "sesion"]);
    assert_eq!(
        unknown_keys[0].origin,
        KeyOrigin::File(file.path().to_path_buf())
    );
    assert!(unknown_keys[1].expected.contains(&"session".to_owned()));
    let message = error.to_string();
    assert!(message.contains("kafka.bogus"), "{message}");
    assert!(
        message.contains(&file.path().display().to_string()),
        "{message}"
    );
    assert!(
        message.contains("bootstrap_servers"),
        "lists valid keys: {message}"
    );
}

#[test]
fn unknown_key_in_limits_fails() {
    let error =
        load(Some("[limits]\nmax_depth = 3\n"), &env_with_key(&[])).expect_err("unknown key");
    assert!(error.to_string().contains("limits.max_depth"), "{error}");
}

#[test]
fn unknown_key_in_environment_fails_naming_the_variable() {
    for (variable, key) in [
        ("SESSIONIZER__SESSION__GAP", "session.gap"),
        ("SESSIONIZER__LOG_LEVEL", "log_level"),
        ("SESSIONIZER__KAFKA__", "kafka."),
    ] {
        let error = load(None, &env_with_key(&[(variable, "5")])).expect_err("unknown key");
        let ConfigError::UnknownKeys(unknown_keys) = &error else {
            panic!("expected UnknownKeys for {variable}, got {error:?}");
        };
        assert_eq!(unknown_keys[0].key, key);
        assert_eq!(
            unknown_keys[0].origin,
            KeyOrigin::Environment(variable.to_owned())
        );
        let message = error.to_string();
        assert!(message.contains(variable), "{message}");
    }
}

#[test]
fn unrelated_variables_are_ignored() {
    // What Kubernetes injects for a Service named `sessionizer`, and the CLI's own variable.
    load_valid(
        None,
        &env_with_key(&[
            ("SESSIONIZER_PORT", "tcp://10.0.0.1:9464"),
            ("SESSIONIZER_SERVICE_HOST", "10.0.0.1"),
            ("SESSIONIZER_CONFIG", "/etc/sessionizer/config.toml"),
            ("PATH", "/usr/bin"),
        ]),
    );
}

#[test]
fn type_errors_name_the_key_path_and_source() {
    let error = load(
        None,
        &env_with_key(&[("SESSIONIZER__SESSION__GAP_SECS", "half an hour")]),
    )
    .expect_err("type error");
    assert!(matches!(error, ConfigError::Load(_)), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("session.gap_secs"), "{message}");
    assert!(message.contains("environment"), "{message}");

    let file = TempFile::new("[batch]\nmax_rows = \"many\"\n");
    let message = SessionizerConfig::load(Some(file.path()), &env_with_key(&[]))
        .expect_err("type error")
        .to_string();
    assert!(message.contains("batch.max_rows"), "{message}");
    // The config crate may show the path relative to the working directory; the file name
    // is in it either way.
    let file_name = file
        .path()
        .file_name()
        .expect("file name")
        .to_string_lossy()
        .into_owned();
    assert!(message.contains(&file_name), "{message}");

    let message = load(Some("[log]\nformat = \"xml\"\n"), &env_with_key(&[]))
        .expect_err("unknown variant")
        .to_string();
    assert!(
        message.contains("log.format") && message.contains("json"),
        "{message}"
    );
}

#[test]
fn missing_file_names_the_path() {
    let path = std::env::temp_dir().join("sessionizer-config-test-does-not-exist.toml");
    let message = SessionizerConfig::load(Some(&path), &env_with_key(&[]))
        .expect_err("missing file")
        .to_string();
    assert!(
        message.contains("sessionizer-config-test-does-not-exist"),
        "{message}"
    );
}

#[test]
fn toml_syntax_errors_name_the_line_and_key_but_never_the_value() {
    let too_large = load_invalid(
        Some("[batch]\nlinger_ms = 18446744073709551616\n"),
        &env_with_key(&[]),
    );
    let message = too_large.to_string();
    assert!(
        message.contains("line 2") && message.contains("`batch.linger_ms`"),
        "{message}"
    );
    let unterminated = load_invalid(
        Some("[kafka]\ngroup_id = \"g\"\n\n[openlayer]\napi_key = \"sk-live-UNTERMINATED\n"),
        &env(&[]),
    );
    let message = unterminated.to_string();
    assert!(
        message.contains("line 5") && message.contains("`openlayer.api_key`"),
        "{message}"
    );
    assert!(
        !message.contains("UNTERMINATED"),
        "the value is shown: {message}"
    );
}

#[test]
fn openlayer_variables_fill_unset_options() {
    let config = load_valid(
        None,
        &env_with_key(&[
            ("OPENLAYER_BASE_URL", "http://127.0.0.1:8080/v1/"),
            ("OPENLAYER_INFERENCE_PIPELINE_ID", "pipeline-1"),
            ("OPENLAYER_VERIFY_SSL", "false"),
        ]),
    );
    assert_eq!(config.sink.base_url, "http://127.0.0.1:8080/v1");
    assert_eq!(
        config.openlayer.default_pipeline_id.as_deref(),
        Some("pipeline-1")
    );
    assert!(!config.sink.verify_tls);
    assert!(
        config
            .warnings
            .iter()
            .any(|warning| warning.contains("verify_tls")),
        "{:?}",
        config.warnings
    );
}

#[test]
fn sessionizer_options_win_over_openlayer_variables() {
    let config = load_valid(
        Some(
            r#"
            [openlayer]
            base_url = "https://openlayer.internal.example/v1"
            default_pipeline_id = "from-file"
            verify_tls = true
            "#,
        ),
        &env_with_key(&[
            ("OPENLAYER_BASE_URL", "http://127.0.0.1:8080/v1"),
            ("OPENLAYER_INFERENCE_PIPELINE_ID", "from-openlayer-variable"),
            ("OPENLAYER_VERIFY_SSL", "false"),
            (
                "SESSIONIZER__OPENLAYER__API_KEY",
                "sk-from-sessionizer-variable",
            ),
        ]),
    );
    assert_eq!(
        config.sink.base_url,
        "https://openlayer.internal.example/v1"
    );
    assert_eq!(
        config.openlayer.default_pipeline_id.as_deref(),
        Some("from-file")
    );
    assert!(config.sink.verify_tls);
    assert_eq!(config.sink.api_key.expose(), "sk-from-sessionizer-variable");
}

#[test]
fn empty_openlayer_variables_count_as_unset() {
    let config = load_valid(
        None,
        &env_with_key(&[("OPENLAYER_BASE_URL", ""), ("OPENLAYER_VERIFY_SSL", "")]),
    );
    assert_eq!(config.sink.base_url, "https://api.openlayer.com/v1");
    assert!(config.sink.verify_tls);
    let error = load_invalid(None, &env(&[("OPENLAYER_API_KEY", "  ")]));
    assert_eq!(problem_keys(&error), ["openlayer.api_key"]);
}

#[test]
fn unreadable_verify_ssl_variable_is_an_error() {
    let error =
        load(None, &env_with_key(&[("OPENLAYER_VERIFY_SSL", "perhaps")])).expect_err("bad flag");
    assert_eq!(problem_keys(&error), ["OPENLAYER_VERIFY_SSL"]);
    assert!(error.to_string().contains("perhaps"));
}

#[test]
fn api_key_file_is_read_and_trimmed() {
    let key_file = TempFile::new("\n  sk-from-file-123 \n");
    let config = load_valid(
        Some(&format!(
            "[openlayer]\napi_key_file = {:?}\n",
            key_file.path().display().to_string()
        )),
        // The configured file wins over the SDK's variable.
        &env_with_key(&[]),
    );
    assert_eq!(config.sink.api_key.expose(), "sk-from-file-123");
    assert_eq!(
        config.openlayer.api_key_source,
        ApiKeySource::File(key_file.path().to_path_buf())
    );
}

#[test]
fn unreadable_api_key_file_names_the_path() {
    let missing = std::env::temp_dir().join("sessionizer-config-test-no-key-file");
    let error = load_invalid(
        None,
        &env(&[(
            "SESSIONIZER__OPENLAYER__API_KEY_FILE",
            &missing.display().to_string(),
        )]),
    );
    assert_eq!(problem_keys(&error), ["openlayer.api_key_file"]);
    assert!(
        error.to_string().contains(&missing.display().to_string()),
        "{error}"
    );
}

#[test]
fn bad_key_file_content_is_never_shown() {
    for content in [
        "",
        "   \n",
        "sk-very-secret-part-one\nsk-very-secret-part-two\n",
    ] {
        let key_file = TempFile::new(content);
        let error = load_invalid(
            None,
            &env(&[(
                "SESSIONIZER__OPENLAYER__API_KEY_FILE",
                &key_file.path().display().to_string(),
            )]),
        );
        assert_eq!(problem_keys(&error), ["openlayer.api_key_file"]);
        let message = format!("{error} {error:?}");
        assert!(
            message.contains(&key_file.path().display().to_string()),
            "{message}"
        );
        assert!(!message.contains("sk-very-secret"), "{message}");
    }
}

#[test]
fn missing_api_key_names_both_ways_to_set_it() {
    let error = load_invalid(None, &env(&[]));
    assert_eq!(problem_keys(&error), ["openlayer.api_key"]);
    let message = error.to_string();
    assert!(message.contains("OPENLAYER_API_KEY"), "{message}");
    assert!(message.contains("openlayer.api_key_file"), "{message}");
}

#[test]
fn api_key_and_key_file_together_are_refused() {
    let key_file = TempFile::new("sk-file");
    let error = load_invalid(
        None,
        &env(&[
            ("SESSIONIZER__OPENLAYER__API_KEY", "sk-value"),
            (
                "SESSIONIZER__OPENLAYER__API_KEY_FILE",
                &key_file.path().display().to_string(),
            ),
        ]),
    );
    assert_eq!(problem_keys(&error), ["openlayer.api_key"]);
    assert!(error.to_string().contains("only one"), "{error}");
}

#[test]
fn base_url_must_be_http_and_end_in_v1() {
    for url in [
        "ftp://api.openlayer.com/v1",
        "https://api.openlayer.com",
        "https://api.openlayer.com/v2",
        "api.openlayer.com/v1",
        "https://api.openlayer.com/v1?debug=1",
        "not a url",
    ] {
        let error = load_invalid(None, &env_with_key(&[("OPENLAYER_BASE_URL", url)]));
        assert_eq!(problem_keys(&error), ["openlayer.base_url"], "{url}");
        assert!(error.to_string().contains("/v1"), "{error}");
    }
    let config = load_valid(
        None,
        &env_with_key(&[(
            "SESSIONIZER__OPENLAYER__BASE_URL",
            "https://api.openlayer.com/v1//",
        )]),
    );
    assert_eq!(config.sink.base_url, "https://api.openlayer.com/v1");
}

#[test]
fn base_url_credentials_are_refused_without_echoing_them() {
    let error = load_invalid(
        None,
        &env_with_key(&[(
            "OPENLAYER_BASE_URL",
            "https://user:hunter2-pw@api.openlayer.com/v1",
        )]),
    );
    assert_eq!(problem_keys(&error), ["openlayer.base_url"]);
    assert!(!error.to_string().contains("hunter2-pw"), "{error}");
}

#[test]
fn plain_http_to_a_remote_host_warns() {
    let config = load_valid(
        None,
        &env_with_key(&[("OPENLAYER_BASE_URL", "http://openlayer.example/v1")]),
    );
    assert!(
        config
            .warnings
            .iter()
            .any(|warning| warning.contains("plain http")),
        "{:?}",
        config.warnings
    );
    let local = load_valid(
        None,
        &env_with_key(&[("OPENLAYER_BASE_URL", "http://[::1]:9/v1")]),
    );
    assert!(
        !local
            .warnings
            .iter()
            .any(|warning| warning.contains("plain http"))
    );
}

#[test]
fn drain_timeout_must_be_shorter_than_session_timeout() {
    let error = load_invalid(
        Some("[kafka]\nsession_timeout_ms = 10000\n[shutdown]\ndrain_timeout_secs = 20\n"),
        &env_with_key(&[]),
    );
    assert_eq!(problem_keys(&error), ["shutdown.drain_timeout_secs"]);
    let message = error.to_string();
    assert!(message.contains("kafka.session_timeout_ms"), "{message}");
    assert!(message.contains("e.g."), "{message}");
}

#[test]
fn max_poll_interval_must_outlast_the_drain_and_session_timeouts() {
    let error = load_invalid(
        Some("[kafka.client]\nmax.poll.interval.ms = 15000\n"),
        &env_with_key(&[]),
    );
    assert_eq!(problem_keys(&error), ["kafka.client.max.poll.interval.ms"]);
    let error = load_invalid(
        Some("[kafka.client]\n\"max.poll.interval.ms\" = \"soon\"\n"),
        &env_with_key(&[]),
    );
    assert_eq!(problem_keys(&error), ["kafka.client.max.poll.interval.ms"]);
    let error = load_invalid(
        Some("[kafka]\nsession_timeout_ms = 400000\n"),
        &env_with_key(&[]),
    );
    assert_eq!(problem_keys(&error), ["kafka.session_timeout_ms"]);
    load_valid(
        Some(
            "[kafka]\nsession_timeout_ms = 400000\n[kafka.client]\nmax.poll.interval.ms = 600000\n",
        ),
        &env_with_key(&[]),
    );
}

#[test]
fn liveness_window_must_outlast_the_drain_timeout() {
    let error = load_invalid(
        Some("[http]\nliveness_window_secs = 20\n"),
        &env_with_key(&[]),
    );
    assert_eq!(problem_keys(&error), ["http.liveness_window_secs"]);
    assert!(
        error.to_string().contains("shutdown.drain_timeout_secs"),
        "{error}"
    );
}

#[test]
fn step_depth_is_capped_at_64() {
    let error = load_invalid(Some("[limits]\nmax_step_depth = 65\n"), &env_with_key(&[]));
    assert_eq!(problem_keys(&error), ["limits.max_step_depth"]);
    assert!(error.to_string().contains("64"), "{error}");
    let config = load_valid(Some("[limits]\nmax_step_depth = 64\n"), &env_with_key(&[]));
    assert_eq!(config.limits.max_step_depth, 64);
}

#[test]
fn every_problem_is_reported_at_once_with_an_example() {
    let error = load_invalid(
        Some(
            r#"
            [kafka]
            bootstrap_servers = ""
            topic = "traces with spaces"
            dead_letter_topic = "llm-sessions"
            repartition_max_buffered = 0
            [batch]
            max_rows = 0
            [http]
            listen = "9464"
            [log]
            filter = "info,[[["
            "#,
        ),
        &env_with_key(&[]),
    );
    let keys = problem_keys(&error);
    assert_eq!(
        keys,
        [
            "kafka.bootstrap_servers",
            "kafka.topic",
            "kafka.sessions_topic",
            "kafka.repartition_max_buffered",
            "batch.max_rows",
            "http.listen",
            "log.filter",
        ]
    );
    let message = error.to_string();
    assert!(
        message.contains("kafka.bootstrap_servers must not be empty, e.g. `kafka:9092`"),
        "{message}"
    );
    assert!(
        message.contains("must differ from kafka.dead_letter_topic"),
        "{message}"
    );
}

#[test]
fn the_repartition_topic_is_the_group_s_unless_set_and_empty_turns_it_off() {
    let config = load_valid(
        Some("[kafka]\ngroup_id = \"chat-prod\"\n"),
        &env_with_key(&[]),
    );
    assert_eq!(
        config.kafka.repartition_topic.as_deref(),
        Some("chat-prod-repartition")
    );
    let off = load_valid(
        Some("[kafka]\nrepartition_topic = \"\"\n"),
        &env_with_key(&[]),
    );
    assert_eq!(off.kafka.repartition_topic, None);
    assert!(
        off.warnings
            .iter()
            .any(|warning| warning.contains("repartition_topic")),
        "{:?}",
        off.warnings
    );
    // Any group id is legal in Kafka, not every topic name: the option must then be set.
    let error = load_invalid(
        Some("[kafka]\ngroup_id = \"team:chat\"\n"),
        &env_with_key(&[]),
    );
    assert_eq!(problem_keys(&error), ["kafka.repartition_topic"]);
    assert!(error.to_string().contains("kafka.group_id"), "{error}");
    let set = load_valid(
        Some("[kafka]\ngroup_id = \"team:chat\"\nrepartition_topic = \"chat-repartition\"\n"),
        &env_with_key(&[]),
    );
    assert_eq!(
        set.kafka.repartition_topic.as_deref(),
        Some("chat-repartition")
    );
}

#[test]
fn empty_changelog_topic_keeps_state_in_memory_with_a_warning() {
    let config = load_valid(
        Some("[kafka]\nchangelog_topic = \"\"\n"),
        &env_with_key(&[]),
    );
    assert_eq!(config.kafka.changelog_topic, None);
    assert!(
        config
            .warnings
            .iter()
            .any(|warning| warning.contains("changelog_topic")),
        "{:?}",
        config.warnings
    );
}

#[test]
fn empty_sessions_topic_turns_summaries_off() {
    let config = load_valid(
        None,
        &env_with_key(&[("SESSIONIZER__KAFKA__SESSIONS_TOPIC", "")]),
    );
    assert_eq!(config.kafka.sessions_topic, None);
}

#[test]
fn client_properties_accept_every_spelling() {
    let config = load_valid(
        Some(
            r#"
            [kafka.client]
            security.protocol = "SSL"
            "sasl.mechanism" = "PLAIN"
            "fetch.wait.max.ms" = 100
            enable.ssl.certificate.verification = false
            log_level = 6
            "#,
        ),
        &env_with_key(&[
            ("SESSIONIZER__KAFKA__CLIENT__SECURITY__PROTOCOL", "SASL_SSL"),
            (
                "SESSIONIZER__KAFKA__CLIENT__SASL__MECHANISM",
                "SCRAM-SHA-512",
            ),
            ("SESSIONIZER__KAFKA__CLIENT__SASL__USERNAME", "svc"),
        ]),
    );
    let client: Vec<(&str, &str)> = config.kafka.client.iter().collect();
    assert_eq!(
        client,
        [
            ("enable.ssl.certificate.verification", "false"),
            ("fetch.wait.max.ms", "100"),
            ("log_level", "6"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", "svc"),
            ("security.protocol", "SASL_SSL"),
        ]
    );
}

#[test]
fn client_properties_the_sessionizer_owns_are_refused() {
    let error = load_invalid(
        Some("[kafka.client]\ngroup.id = \"other\"\nenable.auto.commit = true\n"),
        &env_with_key(&[]),
    );
    assert_eq!(
        problem_keys(&error),
        ["kafka.client.enable.auto.commit", "kafka.client.group.id"]
    );
    assert!(error.to_string().contains("kafka.group_id"), "{error}");
}

#[test]
fn secrets_never_appear_in_output() {
    let config = load(
        Some("[kafka.client]\nsasl.username = \"svc\"\n"),
        &env_with_key(&[(
            "SESSIONIZER__KAFKA__CLIENT__SASL__PASSWORD",
            "hunter2-kafka",
        )]),
    )
    .expect("configuration loads");
    let raw_debug = format!("{config:?}");
    let validated = config.validate().expect("configuration is valid");
    assert_eq!(validated.sink.api_key.expose(), API_KEY);
    assert_eq!(
        validated.kafka.client.get("sasl.password"),
        Some("hunter2-kafka")
    );
    let redacted = validated.to_redacted_toml();
    for shown in [raw_debug, format!("{validated:?}"), redacted.clone()] {
        assert!(!shown.contains(API_KEY), "{shown}");
        assert!(!shown.contains("hunter2-kafka"), "{shown}");
        assert!(shown.contains("**redacted**"), "{shown}");
    }
    assert!(
        redacted.contains("api_key = \"**redacted**\""),
        "{redacted}"
    );
    assert!(
        redacted.contains("\"sasl.username\" = \"svc\""),
        "{redacted}"
    );
}

#[test]
fn key_file_path_is_shown_instead_of_the_key() {
    let key_file = TempFile::new("sk-from-file-456");
    let config = load_valid(
        None,
        &env(&[(
            "SESSIONIZER__OPENLAYER__API_KEY_FILE",
            &key_file.path().display().to_string(),
        )]),
    );
    let redacted = config.to_redacted_toml();
    assert!(!redacted.contains("sk-from-file-456"), "{redacted}");
    assert!(
        redacted.contains(&key_file.path().display().to_string()),
        "{redacted}"
    );
    assert!(redacted.contains("# api_key is unset"), "{redacted}");
}

#[test]
fn redacted_toml_loads_back_to_the_same_configuration() {
    let config = load_valid(
        Some(
            r#"
            [kafka]
            bootstrap_servers = "a:9092, b:9092"
            sessions_topic = ""
            [kafka.client]
            security.protocol = "SSL"
            [openlayer]
            retry_deadline_secs = 600
            default_pipeline_id = "pipeline \"quoted\""
            [log]
            format = "json"
            "#,
        ),
        &env_with_key(&[("OPENLAYER_VERIFY_SSL", "false")]),
    );
    let printed = config.to_redacted_toml();
    let reloaded = load_valid(Some(&printed), &env(&[]));
    assert_eq!(reloaded.to_redacted_toml(), printed);
    assert_eq!(reloaded.kafka.bootstrap_servers, "a:9092,b:9092");
    assert_eq!(reloaded.kafka.sessions_topic, None);
    assert!(!reloaded.sink.verify_tls);
}

#[test]
fn a_config_built_in_code_validates() {
    let mut config = SessionizerConfig::default();
    config.kafka.bootstrap_servers = "127.0.0.1:39092".to_owned();
    config.openlayer.api_key = Some(Secret::new("sk-test"));
    config.openlayer.base_url = Some("http://127.0.0.1:8080/v1".to_owned());
    let validated = config.validate().expect("valid");
    assert_eq!(validated.sink.base_url, "http://127.0.0.1:8080/v1");
}

// ---- Schema Registry credentials -------------------------------------------------------------

const REGISTRY_URL: &str = "https://psrc-00000.europe-west3.gcp.confluent.cloud";
const REGISTRY_PASSWORD: &str = "sr-SECRET-password-4711";
const REGISTRY_TOKEN: &str = "sr-SECRET-token-0815";

/// `env_with_key` plus the registry URL.
fn env_with_registry(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    let mut variables = env_with_key(pairs);
    variables.insert(
        "SESSIONIZER__KAFKA__SCHEMA_REGISTRY_URL".to_owned(),
        REGISTRY_URL.to_owned(),
    );
    variables
}

#[test]
fn registry_basic_credentials_come_from_the_environment() {
    let config = load_valid(
        None,
        &env_with_registry(&[
            ("SESSIONIZER__KAFKA__SCHEMA_REGISTRY_USERNAME", "SR-API-KEY"),
            (
                "SESSIONIZER__KAFKA__SCHEMA_REGISTRY_PASSWORD",
                &format!(" {REGISTRY_PASSWORD}\n"),
            ),
        ]),
    );
    let registry = config.kafka.schema_registry_url.expect("a registry");
    assert_eq!(registry.endpoint.url, REGISTRY_URL);
    let RegistryAuth::Basic { username, password } = &registry.endpoint.auth else {
        panic!("expected basic auth: {registry:?}");
    };
    assert_eq!(username, "SR-API-KEY");
    assert_eq!(password.expose(), REGISTRY_PASSWORD);
    assert_eq!(registry.secret_source, Some(SecretSource::Value));
}

#[test]
fn registry_secrets_are_read_from_their_files_and_trimmed() {
    let password_file = TempFile::new(&format!("{REGISTRY_PASSWORD}\n"));
    let config = load_valid(
        Some(&format!(
            "[kafka]\nschema_registry_url = \"{REGISTRY_URL}/\"\n\
             schema_registry_username = \"SR-API-KEY\"\n\
             schema_registry_password_file = {:?}\n",
            password_file.path().display().to_string()
        )),
        &env_with_key(&[]),
    );
    let registry = config.kafka.schema_registry_url.expect("a registry");
    assert_eq!(
        registry.endpoint.url, REGISTRY_URL,
        "trailing slash removed"
    );
    assert!(
        matches!(&registry.endpoint.auth, RegistryAuth::Basic { password, .. } if password.expose() == REGISTRY_PASSWORD)
    );
    assert_eq!(
        registry.secret_source,
        Some(SecretSource::File(password_file.path().to_path_buf()))
    );

    let token_file = TempFile::new(&format!("  {REGISTRY_TOKEN}\n"));
    let config = load_valid(
        None,
        &env_with_registry(&[(
            "SESSIONIZER__KAFKA__SCHEMA_REGISTRY_BEARER_TOKEN_FILE",
            &token_file.path().display().to_string(),
        )]),
    );
    let registry = config.kafka.schema_registry_url.expect("a registry");
    assert!(
        matches!(&registry.endpoint.auth, RegistryAuth::Bearer(token) if token.expose() == REGISTRY_TOKEN)
    );
    assert!(
        registry
            .credential_keys()
            .contains("kafka.schema_registry_bearer_token_file"),
        "{}",
        registry.credential_keys()
    );
}

#[test]
fn registry_bearer_token_comes_from_the_environment() {
    let config = load_valid(
        None,
        &env_with_registry(&[(
            "SESSIONIZER__KAFKA__SCHEMA_REGISTRY_BEARER_TOKEN",
            REGISTRY_TOKEN,
        )]),
    );
    let registry = config.kafka.schema_registry_url.expect("a registry");
    assert!(
        matches!(&registry.endpoint.auth, RegistryAuth::Bearer(token) if token.expose() == REGISTRY_TOKEN)
    );
    assert_eq!(
        registry.credential_keys(),
        "kafka.schema_registry_bearer_token"
    );
}

#[test]
fn a_registry_without_credentials_sends_none() {
    let config = load_valid(None, &env_with_registry(&[]));
    let registry = config.kafka.schema_registry_url.expect("a registry");
    assert_eq!(registry.endpoint.auth, RegistryAuth::None);
    assert_eq!(registry.secret_source, None);
    assert!(
        load_valid(None, &env_with_key(&[]))
            .kafka
            .schema_registry_url
            .is_none()
    );
}

#[test]
fn registry_basic_and_bearer_together_are_refused() {
    let error = load_invalid(
        None,
        &env_with_registry(&[
            ("SESSIONIZER__KAFKA__SCHEMA_REGISTRY_USERNAME", "SR-API-KEY"),
            (
                "SESSIONIZER__KAFKA__SCHEMA_REGISTRY_PASSWORD",
                REGISTRY_PASSWORD,
            ),
            (
                "SESSIONIZER__KAFKA__SCHEMA_REGISTRY_BEARER_TOKEN",
                REGISTRY_TOKEN,
            ),
        ]),
    );
    assert_eq!(problem_keys(&error), ["kafka.schema_registry_bearer_token"]);
    let message = format!("{error} {error:?}");
    assert!(message.contains("basic authentication"), "{message}");
    assert!(!message.contains(REGISTRY_PASSWORD), "{message}");
    assert!(!message.contains(REGISTRY_TOKEN), "{message}");
}

#[test]
fn registry_username_and_password_need_each_other() {
    let error = load_invalid(
        None,
        &env_with_registry(&[("SESSIONIZER__KAFKA__SCHEMA_REGISTRY_USERNAME", "SR-API-KEY")]),
    );
    assert_eq!(problem_keys(&error), ["kafka.schema_registry_password"]);
    assert!(
        error
            .to_string()
            .contains("kafka.schema_registry_password_file"),
        "{error}"
    );

    let error = load_invalid(
        None,
        &env_with_registry(&[(
            "SESSIONIZER__KAFKA__SCHEMA_REGISTRY_PASSWORD",
            REGISTRY_PASSWORD,
        )]),
    );
    assert_eq!(problem_keys(&error), ["kafka.schema_registry_username"]);
    assert!(!format!("{error} {error:?}").contains(REGISTRY_PASSWORD));
}

#[test]
fn a_registry_username_with_a_colon_is_refused() {
    let error = load_invalid(
        None,
        &env_with_registry(&[
            ("SESSIONIZER__KAFKA__SCHEMA_REGISTRY_USERNAME", "key:secret"),
            (
                "SESSIONIZER__KAFKA__SCHEMA_REGISTRY_PASSWORD",
                REGISTRY_PASSWORD,
            ),
        ]),
    );
    assert_eq!(problem_keys(&error), ["kafka.schema_registry_username"]);
}

#[test]
fn registry_secret_value_and_file_together_are_refused() {
    let token_file = TempFile::new(REGISTRY_TOKEN);
    let error = load_invalid(
        None,
        &env_with_registry(&[
            (
                "SESSIONIZER__KAFKA__SCHEMA_REGISTRY_BEARER_TOKEN",
                REGISTRY_TOKEN,
            ),
            (
                "SESSIONIZER__KAFKA__SCHEMA_REGISTRY_BEARER_TOKEN_FILE",
                &token_file.path().display().to_string(),
            ),
        ]),
    );
    assert_eq!(problem_keys(&error), ["kafka.schema_registry_bearer_token"]);
    assert!(error.to_string().contains("only one"), "{error}");
}

#[test]
fn unreadable_registry_secret_files_name_the_key_and_path() {
    let missing = std::env::temp_dir().join("sessionizer-config-test-no-registry-secret");
    for (variable, key) in [
        (
            "SESSIONIZER__KAFKA__SCHEMA_REGISTRY_PASSWORD_FILE",
            "kafka.schema_registry_password_file",
        ),
        (
            "SESSIONIZER__KAFKA__SCHEMA_REGISTRY_BEARER_TOKEN_FILE",
            "kafka.schema_registry_bearer_token_file",
        ),
    ] {
        let missing_path = missing.display().to_string();
        let mut variables = vec![(variable, missing_path.as_str())];
        if key.contains("password") {
            variables.push(("SESSIONIZER__KAFKA__SCHEMA_REGISTRY_USERNAME", "SR-API-KEY"));
        }
        let error = load_invalid(None, &env_with_registry(&variables));
        assert_eq!(problem_keys(&error), [key], "{error}");
        assert!(
            error.to_string().contains(&missing.display().to_string()),
            "{error}"
        );
    }
}

#[test]
fn bad_registry_secret_file_content_is_never_shown() {
    for (variable, key, content) in [
        (
            "SESSIONIZER__KAFKA__SCHEMA_REGISTRY_BEARER_TOKEN_FILE",
            "kafka.schema_registry_bearer_token_file",
            "sr-SECRET-part-one\nsr-SECRET-part-two\n",
        ),
        (
            "SESSIONIZER__KAFKA__SCHEMA_REGISTRY_BEARER_TOKEN_FILE",
            "kafka.schema_registry_bearer_token_file",
            "sr-SECRET with spaces",
        ),
        (
            "SESSIONIZER__KAFKA__SCHEMA_REGISTRY_BEARER_TOKEN_FILE",
            "kafka.schema_registry_bearer_token_file",
            " \n",
        ),
        (
            "SESSIONIZER__KAFKA__SCHEMA_REGISTRY_PASSWORD_FILE",
            "kafka.schema_registry_password_file",
            "sr-SECRET-part-one\nsr-SECRET-part-two\n",
        ),
    ] {
        let secret_file = TempFile::new(content);
        let path = secret_file.path().display().to_string();
        let mut variables = vec![(variable, path.as_str())];
        if key.contains("password") {
            variables.push(("SESSIONIZER__KAFKA__SCHEMA_REGISTRY_USERNAME", "SR-API-KEY"));
        }
        let error = load_invalid(None, &env_with_registry(&variables));
        assert_eq!(problem_keys(&error), [key], "{error}");
        let message = format!("{error} {error:?}");
        assert!(message.contains(&path), "{message}");
        assert!(!message.contains("sr-SECRET"), "{message}");
    }
}

#[test]
fn a_registry_url_with_credentials_is_refused_without_echoing_them() {
    let error = load_invalid(
        None,
        &env_with_key(&[(
            "SESSIONIZER__KAFKA__SCHEMA_REGISTRY_URL",
            &format!("https://SR-API-KEY:{REGISTRY_PASSWORD}@registry.example:8081"),
        )]),
    );
    assert_eq!(problem_keys(&error), ["kafka.schema_registry_url"]);
    let message = format!("{error} {error:?}");
    assert!(!message.contains(REGISTRY_PASSWORD), "{message}");
    assert!(
        message.contains("kafka.schema_registry_username"),
        "{message}"
    );
}

#[test]
fn registry_credentials_without_a_registry_or_over_plain_http_warn() {
    let config = load_valid(
        None,
        &env_with_key(&[(
            "SESSIONIZER__KAFKA__SCHEMA_REGISTRY_BEARER_TOKEN",
            REGISTRY_TOKEN,
        )]),
    );
    assert!(config.kafka.schema_registry_url.is_none());
    assert!(
        config.warnings.iter().any(|warning| warning.contains(
            "kafka.schema_registry_bearer_token is set but kafka.schema_registry_url is empty"
        )),
        "{:?}",
        config.warnings
    );

    let config = load_valid(
        None,
        &env_with_key(&[
            (
                "SESSIONIZER__KAFKA__SCHEMA_REGISTRY_URL",
                "http://registry.example:8081",
            ),
            (
                "SESSIONIZER__KAFKA__SCHEMA_REGISTRY_BEARER_TOKEN",
                REGISTRY_TOKEN,
            ),
        ]),
    );
    assert!(
        config
            .warnings
            .iter()
            .any(|warning| warning.contains("credentials travel unencrypted")),
        "{:?}",
        config.warnings
    );
    let local = load_valid(
        None,
        &env_with_key(&[
            (
                "SESSIONIZER__KAFKA__SCHEMA_REGISTRY_URL",
                "http://127.0.0.1:8081",
            ),
            (
                "SESSIONIZER__KAFKA__SCHEMA_REGISTRY_BEARER_TOKEN",
                REGISTRY_TOKEN,
            ),
        ]),
    );
    assert!(
        !local
            .warnings
            .iter()
            .any(|warning| warning.contains("unencrypted")),
        "{:?}",
        local.warnings
    );
}

#[test]
fn registry_secrets_never_appear_in_output() {
    for (variable, secret, printed_key) in [
        (
            "SESSIONIZER__KAFKA__SCHEMA_REGISTRY_PASSWORD",
            REGISTRY_PASSWORD,
            "schema_registry_password",
        ),
        (
            "SESSIONIZER__KAFKA__SCHEMA_REGISTRY_BEARER_TOKEN",
            REGISTRY_TOKEN,
            "schema_registry_bearer_token",
        ),
    ] {
        let mut variables = vec![(variable, secret)];
        if printed_key.contains("password") {
            variables.push(("SESSIONIZER__KAFKA__SCHEMA_REGISTRY_USERNAME", "SR-API-KEY"));
        }
        let config = load(None, &env_with_registry(&variables)).expect("configuration loads");
        let raw_debug = format!("{config:?}");
        let validated = config.validate().expect("configuration is valid");
        let redacted = validated.to_redacted_toml();
        let registry = validated
            .kafka
            .schema_registry_url
            .clone()
            .expect("a registry");
        for shown in [
            raw_debug,
            format!("{validated:?}"),
            redacted.clone(),
            registry.credential_keys(),
        ] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(
            redacted.contains(&format!("{printed_key} = \"**redacted**\"")),
            "{redacted}"
        );
        // What is printed loads back to the same settings, the secret given again.
        let reloaded = load_valid(Some(&redacted), &env_with_key(&[(variable, secret)]));
        assert_eq!(reloaded.kafka.schema_registry_url, Some(registry));
    }
}

#[test]
fn registry_secret_files_are_printed_as_their_paths() {
    let password_file = TempFile::new(REGISTRY_PASSWORD);
    let path = password_file.path().display().to_string();
    let config = load_valid(
        None,
        &env_with_registry(&[
            ("SESSIONIZER__KAFKA__SCHEMA_REGISTRY_USERNAME", "SR-API-KEY"),
            ("SESSIONIZER__KAFKA__SCHEMA_REGISTRY_PASSWORD_FILE", &path),
        ]),
    );
    let redacted = config.to_redacted_toml();
    assert!(!redacted.contains(REGISTRY_PASSWORD), "{redacted}");
    assert!(redacted.contains(&path), "{redacted}");
    assert!(
        redacted.contains("schema_registry_username = \"SR-API-KEY\""),
        "{redacted}"
    );
    assert!(
        redacted.contains("# schema_registry_password is unset"),
        "{redacted}"
    );
    let reloaded = load_valid(Some(&redacted), &env_with_key(&[]));
    assert_eq!(reloaded.to_redacted_toml(), redacted);
}

// ---- docs/configuration.md stays in step with the code --------------------------------------

fn reference_doc() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md");
    std::fs::read_to_string(&path).expect("docs/configuration.md is readable")
}

/// Every option's key path and default, from the real type.
fn option_defaults() -> Vec<(String, serde_json::Value)> {
    fn walk(
        prefix: &str,
        value: &serde_json::Value,
        options: &mut Vec<(String, serde_json::Value)>,
    ) {
        let serde_json::Value::Object(table) = value else {
            options.push((prefix.to_owned(), value.clone()));
            return;
        };
        if prefix == "kafka.client" || prefix == "openlayer.sessions_pipelines" {
            options.push((prefix.to_owned(), value.clone()));
            return;
        }
        for (key, child) in table {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            walk(&path, child, options);
        }
    }
    let defaults = serde_json::to_value(SessionizerConfig::default()).expect("defaults serialize");
    let mut options = Vec::new();
    walk("", &defaults, &mut options);
    options
}

/// The table row documenting `key`.
fn doc_row<'doc>(doc: &'doc str, key: &str) -> Option<&'doc str> {
    let row_start = format!("| `{key}` |");
    doc.lines().find(|line| line.starts_with(&row_start))
}

#[test]
fn reference_documents_every_option_with_its_variable_and_default() {
    let doc = reference_doc();
    let options = option_defaults();
    assert!(options.len() > 30, "found only {} options", options.len());
    for (key, default) in options {
        let row = doc_row(&doc, &key)
            .unwrap_or_else(|| panic!("docs/configuration.md has no row for `{key}`"));
        let variable = format!("SESSIONIZER__{}", key.to_uppercase().replace('.', "__"));
        assert!(
            row.contains(&variable),
            "row for `{key}` lacks `{variable}`: {row}"
        );
        let shown_default = match &default {
            serde_json::Value::Null => "unset".to_owned(),
            serde_json::Value::String(text) => format!("`\"{text}\"`"),
            serde_json::Value::Object(_) => "empty".to_owned(),
            other => format!("`{other}`"),
        };
        assert!(
            row.contains(&shown_default),
            "row for `{key}` does not show the default {shown_default}: {row}"
        );
    }
}

#[test]
fn reference_documents_no_option_the_code_lacks() {
    let doc = reference_doc();
    let known: Vec<String> = option_defaults().into_iter().map(|(key, _)| key).collect();
    for line in doc.lines().filter(|line| line.starts_with("| `")) {
        let key = line
            .trim_start_matches("| `")
            .split('`')
            .next()
            .expect("a key");
        if key.contains('.') && !key.starts_with("OPENLAYER_") {
            assert!(
                known.iter().any(|known_key| known_key == key),
                "documented key `{key}` does not exist"
            );
        }
    }
}

#[test]
fn reference_example_is_a_valid_configuration() {
    let doc = reference_doc();
    let example = doc
        .split("## Example")
        .nth(1)
        .and_then(|section| section.split("```toml\n").nth(1))
        .and_then(|block| block.split("```").next())
        .expect("an example block after `## Example`");
    let config = load_valid(Some(example), &env_with_key(&[]));
    assert_eq!(
        config.kafka.client.get("security.protocol"),
        Some("SASL_SSL")
    );
    assert_eq!(config.log.format, LogFormat::Json);
}

#[test]
fn reference_confluent_cloud_example_sets_basic_credentials() {
    let doc = reference_doc();
    let example = doc
        .split("Confluent Cloud (")
        .nth(1)
        .and_then(|section| section.split("```toml\n").nth(1))
        .and_then(|block| block.split("```").next())
        .expect("a Confluent Cloud example block");
    // Loaded, not validated: the secret file it names exists only in the pod.
    let config = load(Some(example), &env(&[])).expect("the example's keys exist");
    assert!(config.kafka.schema_registry_url.starts_with("https://"));
    assert_eq!(
        config.kafka.schema_registry_username.as_deref(),
        Some("SR_API_KEY")
    );
    assert!(config.kafka.schema_registry_password_file.is_some());
}

#[test]
fn session_row_options_are_checked_naming_the_key() {
    let mut config = SessionizerConfig::default();
    config.openlayer.api_key = Some(Secret::new("sk-test"));
    config.openlayer.default_pipeline_id = Some("traces".to_owned());
    config.openlayer.sessions_pipeline_id = Some("traces".to_owned());
    config.session.aggregates = toml::from_str::<toml::Value>(
        r#"list = [
            { column = "turns", key = "k", op = "sum" },
            { column = "calls", key = "", op = "max" },
            { column = "calls", key = "k", op = "count" },
        ]"#,
    )
    .and_then(|value| value["list"].clone().try_into())
    .expect("aggregates parse");
    let Err(ConfigError::Invalid(problems)) = config.validate() else {
        panic!("invalid session row options are refused");
    };
    let keys: Vec<&str> = problems
        .iter()
        .map(|problem| problem.key.as_str())
        .collect();
    for key in [
        "openlayer.sessions_pipeline_id",
        "session.aggregates[0].column",
        "session.aggregates[1].key",
        "session.aggregates[2].column",
    ] {
        assert!(keys.contains(&key), "{key} not named in {keys:?}");
    }
}

#[test]
fn an_unknown_aggregate_op_is_refused_at_load() {
    let error = load(
        Some("[[session.aggregates]]\ncolumn = \"c\"\nkey = \"k\"\nop = \"avg\"\n"),
        &HashMap::new(),
    )
    .expect_err("avg is not an aggregate");
    let message = format!("{error:#}");
    assert!(
        message.contains("avg") && message.contains("session.aggregates[0]"),
        "{message}"
    );
}

#[test]
fn session_rows_load_from_the_file_and_the_environment() {
    let config = load_valid(
        Some(
            r#"
            [openlayer]
            sessions_pipeline_id = "sessions-default"

            [openlayer.sessions_pipelines]
            "Traces-A" = "sessions-a"

            [[session.aggregates]]
            column = "tool_calls"
            key = "tool_calls"
            op = "sum"
            "#,
        ),
        &env_with_key(&[(
            "SESSIONIZER__OPENLAYER__SESSIONS_PIPELINES__TRACES-B",
            "sessions-b",
        )]),
    );
    let rows = config.session_rows.expect("session rows are on");
    assert_eq!(rows.pipeline_id.as_deref(), Some("sessions-default"));
    let mapped: Vec<(&str, &str)> = rows
        .by_traces_pipeline
        .iter()
        .map(|(traces, sessions)| (traces.as_str(), sessions.as_str()))
        .collect();
    assert_eq!(
        mapped,
        [("Traces-A", "sessions-a"), ("traces-b", "sessions-b")]
    );
    assert_eq!(rows.pipeline_for("Traces-A"), Some("sessions-a"));
    assert_eq!(rows.pipeline_for("other"), Some("sessions-default"));
    assert_eq!(rows.aggregates.len(), 1);
}
