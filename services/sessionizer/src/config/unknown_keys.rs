//! Keys no option has: found in the file's tree or in a `SESSIONIZER__*` variable's name,
//! each reported with where it was set and the keys valid at that level.

use super::error::{KeyOrigin, UnknownKey};
use super::model::SessionizerConfig;
use super::{ENV_PREFIX, ENV_SEPARATOR};
use std::path::Path;

/// Key paths whose tables are open maps (any key allowed), not structs.
const OPEN_TABLES: &[&str] = &["kafka.client", "openlayer.sessions_pipelines"];

/// Every key the configuration has, as the tree its defaults serialize to.
pub(super) fn known_key_tree() -> serde_json::Value {
    serde_json::to_value(SessionizerConfig::default())
        .unwrap_or_else(|_| serde_json::Value::Object(serde_json::Map::new()))
}

fn child_keys(tree: &serde_json::Map<String, serde_json::Value>) -> Vec<String> {
    tree.keys().cloned().collect()
}

fn join_key(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

pub(super) fn find_unknown_file_keys(
    tree: &serde_json::Value,
    known: &serde_json::Value,
    prefix: &str,
    path: &Path,
    unknown_keys: &mut Vec<UnknownKey>,
) {
    let (Some(table), Some(known_table)) = (tree.as_object(), known.as_object()) else {
        return; // not a table: the type error is reported by deserialization, naming the key
    };
    for (key, value) in table {
        let full_key = join_key(prefix, key);
        match known_table.get(key) {
            None => unknown_keys.push(UnknownKey {
                key: full_key,
                origin: KeyOrigin::File(path.to_path_buf()),
                expected: child_keys(known_table),
            }),
            Some(_) if OPEN_TABLES.contains(&full_key.as_str()) => {}
            Some(known_child) => {
                find_unknown_file_keys(value, known_child, &full_key, path, unknown_keys);
            }
        }
    }
}

/// The key path a `SESSIONIZER__*` variable sets, the way the config crate derives it
/// (case-insensitive prefix, lowercased, `__` → `.`); `None` for other variables.
fn env_key_path(variable: &str) -> Option<String> {
    let lowercase = variable.to_lowercase();
    let prefix = format!("{ENV_PREFIX}{ENV_SEPARATOR}").to_lowercase();
    lowercase
        .strip_prefix(&prefix)
        .map(|rest| rest.replace(ENV_SEPARATOR, "."))
}

pub(super) fn check_env_variable(variable: &str, known: &serde_json::Value) -> Option<UnknownKey> {
    let key_path = env_key_path(variable)?;
    let mut node = known;
    let mut walked = String::new();
    for segment in key_path.split('.') {
        if OPEN_TABLES.contains(&walked.as_str()) {
            return None;
        }
        let table = node.as_object()?; // deeper than a leaf: a type error names the key
        let full_key = join_key(&walked, segment);
        match table.get(segment) {
            Some(child) => node = child,
            None => {
                return Some(UnknownKey {
                    key: full_key,
                    origin: KeyOrigin::Environment(variable.to_owned()),
                    expected: child_keys(table),
                });
            }
        }
        walked = full_key;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_key_paths_follow_the_config_crate() {
        assert_eq!(
            env_key_path("SESSIONIZER__KAFKA__CLIENT__SASL__PASSWORD").as_deref(),
            Some("kafka.client.sasl.password")
        );
        assert_eq!(
            env_key_path("sessionizer__session__gap_secs").as_deref(),
            Some("session.gap_secs")
        );
        assert_eq!(env_key_path("SESSIONIZER_PORT"), None);
        assert_eq!(env_key_path("SESSIONIZERX__A"), None);
    }
}
