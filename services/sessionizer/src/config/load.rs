//! Loading the configuration: built-in defaults < the TOML file < `SESSIONIZER__*` variables,
//! then the Openlayer SDK's variables for the Openlayer options still unset.

use super::error::{ConfigError, Problem};
use super::model::SessionizerConfig;
use super::unknown_keys::{check_env_variable, find_unknown_file_keys, known_key_tree};
use super::{ENV_PREFIX, ENV_SEPARATOR};
use crate::secret::Secret;
use config::{Config, Environment, File, FileFormat};
use std::collections::HashMap;
use std::path::Path;

/// The Openlayer SDK's variables, honoured for the options the configuration leaves unset.
const OPENLAYER_API_KEY: &str = "OPENLAYER_API_KEY";
const OPENLAYER_BASE_URL: &str = "OPENLAYER_BASE_URL";
const OPENLAYER_INFERENCE_PIPELINE_ID: &str = "OPENLAYER_INFERENCE_PIPELINE_ID";
const OPENLAYER_VERIFY_SSL: &str = "OPENLAYER_VERIFY_SSL";

/// Parses the file as TOML first, because the `config` crate's messages for syntax errors
/// (e.g. an integer beyond 64 bits) name neither the line nor the key. A file that cannot be
/// read is left to the `config` crate, which names it.
fn check_toml_syntax(path: &Path) -> Result<(), ConfigError> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let Err(error) = text.parse::<toml::Table>() else {
        return Ok(());
    };
    let offset = error.span().map_or(0, |span| span.start).min(text.len());
    let before = text.get(..offset).unwrap_or_default();
    let line = before.matches('\n').count() + 1;
    let mut section = String::new();
    for header in before.lines() {
        let header = header.trim();
        if let Some(name) = header
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))
        {
            section = name.trim().to_owned();
        }
    }
    let key = text
        .lines()
        .nth(line - 1)
        .and_then(|line_text| line_text.split_once('='))
        .map(|(key, _)| key.trim())
        .filter(|key| {
            !key.is_empty()
                && key
                    .chars()
                    .all(|character| character.is_ascii_alphanumeric() || "_-.".contains(character))
        })
        .map(|key| {
            if section.is_empty() {
                key.to_owned()
            } else {
                format!("{section}.{key}")
            }
        });
    Err(ConfigError::Syntax {
        path: path.to_path_buf(),
        line,
        key,
        message: error.message().to_owned(),
    })
}

impl SessionizerConfig {
    /// Loads the configuration: defaults < the TOML file at `path` (if any) < `SESSIONIZER__*`
    /// variables in `env`; then `OPENLAYER_*` variables in `env` fill the Openlayer options
    /// still unset. `env` is the process environment in production and a map in tests.
    ///
    /// # Errors
    /// [`ConfigError::Load`] when the file is missing or not TOML or a value has the wrong
    /// type, [`ConfigError::UnknownKeys`] for keys no option has (in the file or in
    /// `SESSIONIZER__*` variables), [`ConfigError::Invalid`] for an unreadable
    /// `OPENLAYER_VERIFY_SSL`.
    pub fn load(path: Option<&Path>, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let known_keys = known_key_tree();
        let mut unknown_keys = Vec::new();
        let mut builder = Config::builder();
        if let Some(path) = path {
            check_toml_syntax(path)?;
            let file_config = Config::builder()
                .add_source(File::from(path).format(FileFormat::Toml))
                .build()
                .map_err(ConfigError::Load)?;
            let file_tree: serde_json::Value = file_config
                .clone()
                .try_deserialize()
                .map_err(ConfigError::Load)?;
            find_unknown_file_keys(&file_tree, &known_keys, "", path, &mut unknown_keys);
            builder = builder.add_source(file_config);
        }
        let mut variables: Vec<&String> = env.keys().collect();
        variables.sort();
        for variable in variables {
            if let Some(unknown_key) = check_env_variable(variable, &known_keys) {
                unknown_keys.push(unknown_key);
            }
        }
        if !unknown_keys.is_empty() {
            return Err(ConfigError::UnknownKeys(unknown_keys));
        }
        // No `try_parsing`: it turns digit-only text into numbers, so an API key or group id
        // such as `007` would lose its text; numbers and booleans parse from strings without
        // it, and the one list (`session.aggregates`) is written in the file.
        let environment = Environment::with_prefix(ENV_PREFIX)
            .separator(ENV_SEPARATOR)
            .source(Some(
                env.iter()
                    .map(|(name, value)| (name.clone(), value.clone()))
                    .collect(),
            ));
        let mut loaded: SessionizerConfig = builder
            .add_source(environment)
            .build()
            .and_then(Config::try_deserialize)
            .map_err(ConfigError::Load)?;
        loaded.apply_openlayer_env(env)?;
        Ok(loaded)
    }

    /// Fills Openlayer options the configuration left unset (or empty) from the SDK's
    /// variables; empty variables count as unset.
    fn apply_openlayer_env(&mut self, env: &HashMap<String, String>) -> Result<(), ConfigError> {
        let variable = |name: &str| {
            env.get(name)
                .map(|value| value.trim())
                .filter(|value| !value.is_empty())
        };
        let openlayer = &mut self.openlayer;
        if is_blank(openlayer.base_url.as_deref()) {
            openlayer.base_url = variable(OPENLAYER_BASE_URL).map(str::to_owned);
        }
        let api_key_unset = openlayer.api_key.as_ref().is_none_or(Secret::is_empty);
        if api_key_unset && openlayer.api_key_file.is_none() {
            openlayer.api_key = variable(OPENLAYER_API_KEY).map(Secret::new);
        }
        if is_blank(openlayer.default_pipeline_id.as_deref()) {
            openlayer.default_pipeline_id =
                variable(OPENLAYER_INFERENCE_PIPELINE_ID).map(str::to_owned);
        }
        if openlayer.verify_tls.is_none()
            && let Some(text) = variable(OPENLAYER_VERIFY_SSL)
        {
            let Some(verify) = parse_flag(text) else {
                return Err(ConfigError::Invalid(vec![Problem {
                    key: OPENLAYER_VERIFY_SSL.to_owned(),
                    message: format!("must be `true` or `false`, got `{text}`"),
                }]));
            };
            openlayer.verify_tls = Some(verify);
        }
        Ok(())
    }
}

fn is_blank(value: Option<&str>) -> bool {
    value.is_none_or(|text| text.trim().is_empty())
}

/// The words the config crate accepts for booleans, so `OPENLAYER_VERIFY_SSL` reads like
/// every other flag.
fn parse_flag(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "1" | "true" | "on" | "yes" => Some(true),
        "0" | "false" | "off" | "no" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_read_like_the_config_crate_booleans() {
        assert_eq!(parse_flag("FALSE"), Some(false));
        assert_eq!(parse_flag("0"), Some(false));
        assert_eq!(parse_flag("yes"), Some(true));
        assert_eq!(parse_flag("maybe"), None);
    }
}
