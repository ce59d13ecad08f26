//! A string that must never be printed: API keys (the sessionizer's Openlayer key, the
//! gateway's client keys). Shared here so both services use one redacting type.

use serde::{Deserialize, Deserializer};
use std::fmt;

/// Holds a secret; `Debug` and `Display` print a placeholder, so the value cannot reach logs,
/// error messages or `check-config` output by accident. Read it with [`Secret::expose`].
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("Secret(**redacted**)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("**redacted**")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

/// Whether a librdkafka client property holds a secret, so its value is never printed (both
/// services pass `kafka.client.*` through and print their effective configuration).
pub fn is_secret_client_property(key: &str) -> bool {
    const SECRET_MARKERS: &[&str] = &[
        "password",
        "passphrase",
        "secret",
        "private.key",
        "pem",
        "sasl.oauthbearer.config",
        "token",
    ];
    let lowercase_key = key.to_ascii_lowercase();
    SECRET_MARKERS
        .iter()
        .any(|marker| lowercase_key.contains(marker))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_client_properties_are_recognised() {
        for key in [
            "sasl.password",
            "ssl.key.password",
            "ssl.key.pem",
            "sasl.oauthbearer.client.secret",
            "sasl.oauthbearer.config",
            "SASL.PASSWORD",
        ] {
            assert!(is_secret_client_property(key), "{key}");
        }
        for key in ["security.protocol", "sasl.username", "ssl.ca.location"] {
            assert!(!is_secret_client_property(key), "{key}");
        }
    }

    #[test]
    fn never_prints_the_value() {
        let secret = Secret::new("sk-live-123");
        assert!(!format!("{secret:?} {secret}").contains("sk-live-123"));
        assert_eq!(secret.expose(), "sk-live-123");
    }
}
