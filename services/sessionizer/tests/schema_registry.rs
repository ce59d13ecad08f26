//! The Schema Registry's credentials against the fake registry (crate `fakes`) requiring
//! them: `preflight`'s check passes with the right basic credentials or bearer token and
//! fails naming the options to fix otherwise, and `run` stops at start on a refusal, before
//! consuming anything; never showing a secret, also not in the logs.

use fakes::schema_registry::{RegistryServer, RequiredAuth};
use service_kit::preflight::{Check, Outcome};
use sessionizer::config::{SessionizerConfig, ValidatedConfig};
use sessionizer::preflight::schema_registry_check;
use sessionizer::secret::Secret;
use sessionizer::service::ServiceError;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use trace_model::codec::registry::SchemaRegistry;
use trace_model::{Decoder, Limits};

const USERNAME: &str = "SR-API-KEY";
const PASSWORD: &str = "sr-SECRET-password-4711";
const TOKEN: &str = "sr-SECRET-token-0815";
const TIMEOUT: Duration = Duration::from_secs(5);

/// A file holding `content` under the temp dir, removed on drop.
struct SecretFile(PathBuf);

impl SecretFile {
    fn new(name: &str, content: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "sessionizer-registry-test-{}-{name}",
            std::process::id()
        ));
        std::fs::write(&path, content).expect("write secret file");
        SecretFile(path)
    }
}

impl Drop for SecretFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A valid configuration for the registry at `url`, `credentials` applied to `[kafka]`.
fn config_with(url: &str, credentials: impl FnOnce(&mut SessionizerConfig)) -> ValidatedConfig {
    let mut config = SessionizerConfig::default();
    config.kafka.bootstrap_servers = "127.0.0.1:1".to_owned();
    config.kafka.schema_registry_url = url.to_owned();
    config.http.listen = "127.0.0.1:0".to_owned();
    config.openlayer.api_key = Some(Secret::new("sk-test"));
    config.openlayer.base_url = Some("http://127.0.0.1:1/v1".to_owned());
    credentials(&mut config);
    config.validate().expect("valid configuration")
}

async fn registry_requiring(auth: RequiredAuth) -> RegistryServer {
    let server = RegistryServer::start().await;
    server.state.require(auth);
    server
}

fn basic_required() -> RequiredAuth {
    RequiredAuth::Basic {
        username: USERNAME.to_owned(),
        password: PASSWORD.to_owned(),
    }
}

async fn check_registry(config: &ValidatedConfig) -> Check {
    let registry = config
        .kafka
        .schema_registry_url
        .as_ref()
        .expect("a registry");
    schema_registry_check(registry, TIMEOUT).await
}

fn fix_of(check: &Check) -> &str {
    match &check.outcome {
        Outcome::Failed { fix } => fix,
        Outcome::Passed => panic!("expected a failed check: {check:?}"),
    }
}

#[tokio::test]
async fn preflight_passes_with_the_right_basic_credentials_from_a_file() {
    let server = registry_requiring(basic_required()).await;
    let password_file = SecretFile::new("password", &format!("{PASSWORD}\n"));
    let config = config_with(&server.url, |config| {
        config.kafka.schema_registry_username = Some(USERNAME.to_owned());
        config.kafka.schema_registry_password_file = Some(password_file.0.clone());
    });
    let check = check_registry(&config).await;
    assert_eq!(check.outcome, Outcome::Passed, "{check:?}");
    assert!(check.finding.contains("credentials"), "{check:?}");
    assert_eq!(
        server.state.headers_seen()[0].authorization,
        basic_required().header_value()
    );
}

#[tokio::test]
async fn preflight_passes_with_the_right_bearer_token() {
    let server = registry_requiring(RequiredAuth::Bearer(TOKEN.to_owned())).await;
    let config = config_with(&server.url, |config| {
        config.kafka.schema_registry_bearer_token = Some(Secret::new(TOKEN));
    });
    let check = check_registry(&config).await;
    assert_eq!(check.outcome, Outcome::Passed, "{check:?}");
}

#[tokio::test]
async fn preflight_names_the_credential_options_when_the_registry_refuses_them() {
    let server = registry_requiring(basic_required()).await;
    let password_file = SecretFile::new("wrong-password", "sr-SECRET-wrong");
    let config = config_with(&server.url, |config| {
        config.kafka.schema_registry_username = Some(USERNAME.to_owned());
        config.kafka.schema_registry_password_file = Some(password_file.0.clone());
    });
    let check = check_registry(&config).await;
    let fix = fix_of(&check);
    assert!(check.finding.contains("401"), "{check:?}");
    assert!(
        check.finding.contains("refused the credentials"),
        "{check:?}"
    );
    assert!(fix.contains("kafka.schema_registry_username"), "{fix}");
    assert!(fix.contains("kafka.schema_registry_password_file"), "{fix}");
    assert!(
        fix.contains(&password_file.0.display().to_string()),
        "{fix}"
    );
    assert!(!format!("{check:?}").contains("sr-SECRET"), "{check:?}");

    let config = config_with(&server.url, |config| {
        config.kafka.schema_registry_bearer_token = Some(Secret::new(TOKEN));
    });
    let check = check_registry(&config).await;
    assert!(
        fix_of(&check).contains("kafka.schema_registry_bearer_token"),
        "{check:?}"
    );
    assert!(!format!("{check:?}").contains(TOKEN), "{check:?}");
}

#[tokio::test]
async fn preflight_without_credentials_names_both_ways_to_set_them() {
    let server = registry_requiring(basic_required()).await;
    let config = config_with(&server.url, |_| {});
    let check = check_registry(&config).await;
    let fix = fix_of(&check);
    assert!(fix.contains("kafka.schema_registry_password"), "{fix}");
    assert!(fix.contains("kafka.schema_registry_bearer_token"), "{fix}");
    assert_eq!(server.state.headers_seen()[0].authorization, "");
}

#[tokio::test]
async fn the_service_stops_at_start_naming_the_options_when_the_registry_refuses_them() {
    let server = registry_requiring(basic_required()).await;
    let config = config_with(&server.url, |config| {
        config.kafka.schema_registry_username = Some(USERNAME.to_owned());
        config.kafka.schema_registry_password = Some(Secret::new("sr-SECRET-wrong"));
    });
    // No broker listens at the configured address: getting past the check would hang or fail
    // differently.
    let run = sessionizer::service::run(config, std::future::pending());
    let error = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("stops at once")
        .expect_err("refused credentials are fatal");
    assert!(
        matches!(error, ServiceError::SchemaRegistryRefused { .. }),
        "{error:?}"
    );
    let chain = service_kit::fatal::cause_chain(&error);
    assert!(chain.contains("kafka.schema_registry_username"), "{chain}");
    assert!(chain.contains("kafka.schema_registry_password"), "{chain}");
    assert!(chain.contains("401"), "{chain}");
    assert!(
        !format!("{chain} {error:?}").contains("sr-SECRET"),
        "{chain}"
    );
    assert_eq!(server.state.headers_seen().len(), 1);
}

#[tokio::test]
async fn a_shutdown_during_the_start_up_registry_check_stops_cleanly() {
    let server = RegistryServer::start().await;
    server.state.hang();
    let config = config_with(&server.url, |_| {});
    // Shutdown is requested once the registry holds the check's request unanswered.
    let state = std::sync::Arc::clone(&server.state);
    let shutdown = async move {
        while state.headers_seen().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let run = sessionizer::service::run(config, shutdown);
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("does not wait out the registry's 10 s timeout")
        .expect("a clean stop");
}

/// Log lines written while the returned guard lives (this thread only: `tokio::test` runs on
/// one thread).
#[derive(Clone, Default)]
struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl CapturedLogs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
    }
}

impl std::io::Write for CapturedLogs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_refusal_while_running_is_logged_once_in_a_row_without_the_secret() {
    let logs = CapturedLogs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = RegistryServer::start().await;
    let schema_id = server
        .state
        .preload(&trace_model::codec::avro::trace_event_schema().canonical_form());
    let config = config_with(&server.url, |config| {
        config.kafka.schema_registry_username = Some(USERNAME.to_owned());
        config.kafka.schema_registry_password = Some(Secret::new(PASSWORD));
    });
    let endpoint = config.kafka.schema_registry_url.expect("a registry");
    // What the pipeline builds from the settings.
    let registry = SchemaRegistry::try_new(endpoint, TIMEOUT).expect("client");
    let decoder = Decoder::new(Limits::default()).with_registry(registry);
    // Prefetching reads only the Confluent header: magic byte and schema id.
    let framed = |id: u32| [&[0u8][..], &id.to_be_bytes()[..], b"datum"].concat();
    let bytes = framed(schema_id);

    // The credentials are revoked while running: every attempt is refused, one error logged.
    server.state.require(RequiredAuth::Basic {
        username: USERNAME.to_owned(),
        password: "rotated".to_owned(),
    });
    for _ in 0..3 {
        let error = decoder.prefetch_schema(&bytes).await.expect_err("refused");
        assert_eq!(error.reason(), "registry_unauthorized");
        assert!(!error.is_transient());
    }
    let refusals = |text: &str| text.matches("refused the credentials;").count();
    assert_eq!(refusals(&logs.text()), 1, "{}", logs.text());
    assert!(logs.text().contains("ERROR"), "{}", logs.text());

    // Accepted again (the registry restored the key), then refused: logged again.
    server.state.require(basic_required());
    decoder.prefetch_schema(&bytes).await.expect("accepted");
    let other_id = server.state.preload("\"string\"");
    let other = framed(other_id);
    server.state.require(RequiredAuth::Bearer(TOKEN.to_owned()));
    decoder.prefetch_schema(&other).await.expect_err("refused");
    assert_eq!(refusals(&logs.text()), 2, "{}", logs.text());
    assert!(!logs.text().contains(PASSWORD), "{}", logs.text());
}
