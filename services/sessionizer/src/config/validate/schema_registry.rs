//! Validation of the Schema Registry options of `[kafka]`: the URL, and the credentials
//! (basic: username and password; or a bearer token), each secret given as a value or read
//! from its file. Messages name the option and, for a file, its path; never a secret.

use super::super::model::KafkaConfig;
use super::super::validated::{SchemaRegistrySettings, SecretSource};
use crate::secret::Secret;
use service_kit::problems::Problems;
use std::path::PathBuf;
use trace_model::codec::registry::{RegistryAuth, RegistryEndpoint};

const URL: &str = "kafka.schema_registry_url";
const USERNAME: &str = "kafka.schema_registry_username";
const PASSWORD: &str = "kafka.schema_registry_password";
const PASSWORD_FILE: &str = "kafka.schema_registry_password_file";
const BEARER_TOKEN: &str = "kafka.schema_registry_bearer_token";
const BEARER_TOKEN_FILE: &str = "kafka.schema_registry_bearer_token_file";

/// The registry settings; `None` without a URL (no registry). Credentials without a URL are
/// still checked (a file that cannot be read is an error) and then warned about as unused.
pub(super) fn validate_schema_registry(
    kafka: &KafkaConfig,
    problems: &mut Problems,
    warnings: &mut Vec<String>,
) -> Option<SchemaRegistrySettings> {
    let url = validate_url(&kafka.schema_registry_url, problems);
    let username = kafka
        .schema_registry_username
        .as_deref()
        .map(str::trim)
        .filter(|username| !username.is_empty());
    let password = read_secret(
        SecretOption {
            key: PASSWORD,
            file_key: PASSWORD_FILE,
            what: "password",
        },
        kafka.schema_registry_password.as_ref(),
        kafka.schema_registry_password_file.as_ref(),
        problems,
    );
    let bearer_token = read_secret(
        SecretOption {
            key: BEARER_TOKEN,
            file_key: BEARER_TOKEN_FILE,
            what: "bearer token",
        },
        kafka.schema_registry_bearer_token.as_ref(),
        kafka.schema_registry_bearer_token_file.as_ref(),
        problems,
    );
    let basic_set = username.is_some() || !matches!(password, Read::Unset);
    if basic_set && let Read::Set(_, source) | Read::Failed(source) = &bearer_token {
        problems.push(
            source.key(BEARER_TOKEN, BEARER_TOKEN_FILE),
            format!(
                "cannot be combined with basic authentication ({USERNAME} and {PASSWORD}); \
                 set one or the other"
            ),
        );
        return None;
    }
    let (auth, secret_source) = match (username, password, bearer_token) {
        (_, _, Read::Failed(_)) | (_, Read::Failed(_), _) => return None, // recorded already
        (None, Read::Unset, Read::Unset) => (RegistryAuth::None, None),
        (None, Read::Unset, Read::Set(token, source)) => {
            (RegistryAuth::Bearer(token), Some(source))
        }
        (Some(username), Read::Set(password, source), _) => {
            check_username(username, problems);
            let username = username.to_owned();
            (RegistryAuth::Basic { username, password }, Some(source))
        }
        (Some(_), Read::Unset, _) => {
            problems.push(
                PASSWORD,
                format!(
                    "is not set but {USERNAME} is: set it or {PASSWORD_FILE}, e.g. the secret \
                     of a Confluent Cloud Schema Registry API key"
                ),
            );
            return None;
        }
        (None, Read::Set(_, source), _) => {
            problems.push(
                USERNAME,
                format!(
                    "is not set but {} is: set it, e.g. the Confluent Cloud Schema Registry API \
                     key",
                    source.key(PASSWORD, PASSWORD_FILE)
                ),
            );
            return None;
        }
    };
    let Some(url) = url else {
        // An unusable URL has its own problem; only an empty one leaves credentials unused.
        let no_registry = kafka.schema_registry_url.trim().is_empty();
        if no_registry && let Some(source) = &secret_source {
            let key = match &auth {
                RegistryAuth::Bearer(_) => source.key(BEARER_TOKEN, BEARER_TOKEN_FILE),
                _ => USERNAME,
            };
            warnings.push(format!(
                "{key} is set but {URL} is empty: the credentials are not used"
            ));
        }
        return None;
    };
    if secret_source.is_some() && url.scheme() == "http" && !is_loopback(&url) {
        warnings.push(format!(
            "{URL} `{}` is plain http to another host: the registry credentials travel \
             unencrypted",
            url.as_str().trim_end_matches('/')
        ));
    }
    Some(SchemaRegistrySettings {
        endpoint: RegistryEndpoint {
            url: kafka
                .schema_registry_url
                .trim()
                .trim_end_matches('/')
                .to_owned(),
            auth,
        },
        secret_source,
    })
}

/// The parsed URL; `None` when empty (no registry) or unusable.
fn validate_url(configured: &str, problems: &mut Problems) -> Option<reqwest::Url> {
    let trimmed = configured.trim().trim_end_matches('/');
    if trimmed.is_empty() {
        return None;
    }
    let url = reqwest::Url::parse(trimmed).ok().filter(|url| {
        matches!(url.scheme(), "http" | "https")
            && url.host_str().is_some_and(|host| !host.is_empty())
    });
    let Some(url) = url else {
        problems.push(
            URL,
            "must be an http(s) URL or empty, e.g. `http://schema-registry:8081`",
        );
        return None;
    };
    if !url.username().is_empty() || url.password().is_some() {
        // Not echoed: the credentials would be printed.
        problems.push(
            URL,
            format!(
                "must not contain credentials; set {USERNAME} and {PASSWORD} (or \
                 {PASSWORD_FILE}), or {BEARER_TOKEN}"
            ),
        );
        return None;
    }
    Some(url)
}

fn is_loopback(url: &reqwest::Url) -> bool {
    let host = url.host_str().unwrap_or_default();
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|address| address.is_loopback())
}

/// RFC 7617: the user-id of basic authentication cannot contain a colon.
fn check_username(username: &str, problems: &mut Problems) {
    if username.contains(':') || username.chars().any(char::is_control) {
        problems.push(
            USERNAME,
            "must not contain `:` or control characters (basic authentication sends \
             `username:password`), e.g. a Confluent Cloud Schema Registry API key",
        );
    }
}

/// A secret option and its `_file` twin.
struct SecretOption {
    key: &'static str,
    file_key: &'static str,
    /// What it holds, for messages: `password`, `bearer token`.
    what: &'static str,
}

/// A secret read from its option or file.
enum Read {
    Unset,
    Set(Secret, SecretSource),
    /// A problem was recorded; the source says which option was set.
    Failed(SecretSource),
}

impl SecretSource {
    fn key(&self, key: &'static str, file_key: &'static str) -> &'static str {
        match self {
            SecretSource::Value => key,
            SecretSource::File(_) => file_key,
        }
    }
}

/// The secret, trimmed, from the option or its file (an empty value counts as unset).
fn read_secret(
    option: SecretOption,
    value: Option<&Secret>,
    file: Option<&PathBuf>,
    problems: &mut Problems,
) -> Read {
    let value = value.filter(|secret| !secret.expose().trim().is_empty());
    let (secret, source) = match (value, file) {
        (None, None) => return Read::Unset,
        (Some(_), Some(_)) => {
            problems.push(
                option.key,
                format!("and {} are both set; set only one", option.file_key),
            );
            return Read::Failed(SecretSource::Value);
        }
        (Some(secret), None) => (Secret::new(secret.expose().trim()), SecretSource::Value),
        (None, Some(path)) => {
            let source = SecretSource::File(path.clone());
            match std::fs::read_to_string(path) {
                // The io::Error says why (missing, permissions, not UTF-8), never what the
                // file holds.
                Err(error) => {
                    problems.push(
                        option.file_key,
                        format!("cannot be read: `{}`: {error}", path.display()),
                    );
                    return Read::Failed(source);
                }
                Ok(content) if content.trim().is_empty() => {
                    problems.push(
                        option.file_key,
                        format!(
                            "`{}` is empty; it must hold the {}",
                            path.display(),
                            option.what
                        ),
                    );
                    return Read::Failed(source);
                }
                Ok(content) => (Secret::new(content.trim()), source),
            }
        }
    };
    // A bearer token is one header word; a password may hold spaces, but a line break or
    // other control character is a mistake (two values in one file, say).
    let usable = if option.key == BEARER_TOKEN {
        secret
            .expose()
            .chars()
            .all(|character| character.is_ascii_graphic())
    } else {
        !secret.expose().chars().any(char::is_control)
    };
    if !usable {
        let location = match &source {
            SecretSource::Value => String::new(),
            SecretSource::File(path) => format!("`{}` ", path.display()),
        };
        let expected = if option.key == BEARER_TOKEN {
            "a bearer token is one word of printable ASCII"
        } else {
            "a password is one line"
        };
        problems.push(
            source.key(option.key, option.file_key),
            format!(
                "{location}holds a {} with {} (the value is not shown); {expected}",
                option.what,
                if option.key == BEARER_TOKEN {
                    "spaces or non-printable characters"
                } else {
                    "control characters"
                }
            ),
        );
        return Read::Failed(source);
    }
    Read::Set(secret, source)
}
