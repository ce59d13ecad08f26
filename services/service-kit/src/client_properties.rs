//! librdkafka client properties passed through verbatim (`kafka.client` in both services),
//! whatever way the configuration spells their keys, with secret values redacted wherever
//! they are printed.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;
use trace_model::secret::is_secret_client_property;

/// How secret values are shown wherever the properties are printed.
const REDACTED: &str = "**redacted**";

/// librdkafka properties passed through to the Kafka clients, keyed by their librdkafka name
/// (`security.protocol`, `sasl.password`, ...).
///
/// Deserializes from a table whose keys may be written dotted (`security.protocol = "SSL"`,
/// which TOML reads as nested tables), quoted (`"security.protocol" = "SSL"`), or in
/// environment variables with `__` for each dot; when both forms set one property, the nested
/// form (the one environment variables produce) wins. Values may be strings, numbers or
/// booleans: librdkafka takes them all as text.
///
/// `Debug` and `Serialize` show the values of secret-looking properties (passwords, secrets,
/// private keys, PEM material) as `**redacted**`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ClientProperties(
    /// The properties by librdkafka name; values are not redacted.
    pub BTreeMap<String, String>,
);

impl ClientProperties {
    /// Sets a property, returning the previous value.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) -> Option<String> {
        self.0.insert(key.into(), value.into())
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// Every property in key order; values are not redacted.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_str()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Sets every property on `client_config`. Call it after the service's own settings, so
    /// users can override them (the passthrough is applied last).
    pub fn apply_to(&self, client_config: &mut rdkafka::ClientConfig) {
        for (key, value) in &self.0 {
            client_config.set(key, value);
        }
    }
}

impl<'a> IntoIterator for &'a ClientProperties {
    type Item = (&'a String, &'a String);
    type IntoIter = std::collections::btree_map::Iter<'a, String, String>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for ClientProperties {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        ClientProperties(
            iter.into_iter()
                .map(|(key, value)| (key.into(), value.into()))
                .collect(),
        )
    }
}

fn redacted_property_value<'a>(key: &str, value: &'a str) -> &'a str {
    if is_secret_client_property(key) {
        REDACTED
    } else {
        value
    }
}

impl fmt::Debug for ClientProperties {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_map()
            .entries(
                self.0
                    .iter()
                    .map(|(key, value)| (key, redacted_property_value(key, value))),
            )
            .finish()
    }
}

impl Serialize for ClientProperties {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(
            self.0
                .iter()
                .map(|(key, value)| (key, redacted_property_value(key, value))),
        )
    }
}

impl<'de> Deserialize<'de> for ClientProperties {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let table = BTreeMap::<String, serde_json::Value>::deserialize(deserializer)?;
        let mut flattened = Vec::new();
        flatten_properties(&table, "", 1, &mut flattened).map_err(D::Error::custom)?;
        // Shallower first, so the nested spelling (what environment variables produce) is
        // inserted last and overrides a quoted dotted key from the file.
        flattened.sort_by_key(|(depth, _, _)| *depth);
        Ok(ClientProperties(
            flattened
                .into_iter()
                .map(|(_, key, value)| (key, value))
                .collect(),
        ))
    }
}

/// Appends `(depth, dotted key, value)` for every property in `table`; `depth` counts the
/// tables the key was nested in.
fn flatten_properties(
    table: &BTreeMap<String, serde_json::Value>,
    prefix: &str,
    depth: usize,
    flattened: &mut Vec<(usize, String, String)>,
) -> Result<(), String> {
    for (key, value) in table {
        let full_key = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        let text = match value {
            serde_json::Value::String(text) => text.clone(),
            serde_json::Value::Number(number) => number.to_string(),
            serde_json::Value::Bool(flag) => flag.to_string(),
            serde_json::Value::Object(nested) => {
                let nested: BTreeMap<String, serde_json::Value> = nested
                    .iter()
                    .map(|(key, value)| (key.clone(), value.clone()))
                    .collect();
                flatten_properties(&nested, &full_key, depth + 1, flattened)?;
                continue;
            }
            serde_json::Value::Null | serde_json::Value::Array(_) => {
                return Err(format!(
                    "librdkafka property `{full_key}` in kafka.client must be a string, number \
                     or boolean, e.g. `\"SASL_SSL\"`"
                ));
            }
        };
        flattened.push((depth, full_key, text));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_spelling_wins_over_a_quoted_dotted_key() {
        let table = serde_json::json!({
            "sasl.password": "from-file",
            "sasl": {"password": "from-env", "username": 7},
            "enable.ssl.certificate.verification": false,
        });
        let properties: ClientProperties = serde_json::from_value(table).expect("deserializes");
        assert_eq!(properties.get("sasl.password"), Some("from-env"));
        assert_eq!(properties.get("sasl.username"), Some("7"));
        assert_eq!(
            properties.get("enable.ssl.certificate.verification"),
            Some("false")
        );
    }

    #[test]
    fn lists_are_refused_naming_the_property() {
        let error = serde_json::from_value::<ClientProperties>(serde_json::json!({"a": {"b": []}}))
            .expect_err("refused");
        assert!(
            error.to_string().contains("`a.b` in kafka.client"),
            "{error}"
        );
    }

    #[test]
    fn secrets_are_redacted_when_printed() {
        let properties: ClientProperties = [
            ("sasl.password", "hunter2"),
            ("security.protocol", "SASL_SSL"),
        ]
        .into_iter()
        .collect();
        let shown = format!(
            "{properties:?} {}",
            serde_json::to_string(&properties).expect("serializes")
        );
        assert!(
            !shown.contains("hunter2") && shown.contains("SASL_SSL"),
            "{shown}"
        );
    }
}
