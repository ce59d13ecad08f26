//! Why a configuration cannot be used: [`ConfigError`], and the problems and unknown keys it
//! lists.

pub use service_kit::problems::Problem;
use service_kit::problems::bullet_list;
use std::fmt;
use std::path::PathBuf;
use thiserror::Error;

/// Why the configuration cannot be used.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file is missing or not TOML, or a value has the wrong type; the message names the
    /// key and the source (file path or "the environment").
    #[error(transparent)]
    Load(config::ConfigError),
    /// The file is not TOML: where, by line and (when one is on that line) key, never by
    /// value, which may be a secret.
    #[error(
        "{} is not valid TOML: line {line}{}: {message}",
        path.display(),
        key.as_ref().map(|key| format!(", key `{key}`")).unwrap_or_default()
    )]
    Syntax {
        path: PathBuf,
        line: usize,
        key: Option<String>,
        message: String,
    },
    /// Keys that no option has.
    #[error("unknown configuration key{}:\n{}", plural(.0.len()), bullet_list(.0))]
    UnknownKeys(Vec<UnknownKey>),
    /// Values out of range or inconsistent with each other; every problem found is listed.
    #[error("invalid configuration:\n{}", bullet_list(.0))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    /// The validation problems, empty unless this is [`ConfigError::Invalid`].
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid(problems) => problems,
            _ => &[],
        }
    }
}

fn plural(count: usize) -> &'static str {
    if count == 1 { "" } else { "s" }
}

/// A key that no option has, where it was set, and the keys valid at that level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownKey {
    /// Key path such as `kafka.bogus`.
    pub key: String,
    pub origin: KeyOrigin,
    /// The keys valid where this one was found.
    pub expected: Vec<String>,
}

impl fmt::Display for UnknownKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "`{}` {}; expected one of: {}",
            self.key,
            self.origin,
            self.expected.join(", ")
        )
    }
}

/// Where a key was set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOrigin {
    File(PathBuf),
    /// The environment variable's name.
    Environment(String),
}

impl fmt::Display for KeyOrigin {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyOrigin::File(path) => write!(formatter, "in {}", path.display()),
            KeyOrigin::Environment(variable) => {
                write!(formatter, "from environment variable {variable}")
            }
        }
    }
}
