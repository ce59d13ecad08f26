//! Configuration of the sessionizer: what users write, how it is loaded, and the checked form
//! the runtime sees.
//!
//! - [`SessionizerConfig`] is what users write: one struct per TOML section, every field
//!   documented (those `///` docs are the user documentation; `docs/configuration.md` repeats
//!   them and a test keeps the two in step).
//! - [`SessionizerConfig::load`] merges, lowest precedence first: built-in defaults < the TOML
//!   file < `SESSIONIZER__SECTION__KEY` environment variables. Then the Openlayer SDK's own
//!   variables (`OPENLAYER_API_KEY`, `OPENLAYER_BASE_URL`, `OPENLAYER_INFERENCE_PIPELINE_ID`,
//!   `OPENLAYER_VERIFY_SSL`) fill the Openlayer options the configuration left unset: an
//!   explicit sessionizer setting always wins over the SDK's generic variable.
//! - [`SessionizerConfig::validate`] turns it into a [`ValidatedConfig`] (`Duration`s, parsed
//!   addresses, the sink's [`SinkSettings`](crate::sink::SinkSettings), the API key and the
//!   Schema Registry's password or token read from their files) or reports every problem at
//!   once, each naming its key and showing an example.
//!
//! Unknown keys fail loudly, in the file and in `SESSIONIZER__*` variables alike, naming the
//! key and where it came from: a misspelt option silently falling back to its default is the
//! configuration bug that is hardest to see.
//!
//! # Layout
//! - `model`: [`SessionizerConfig`] and its sections as written, with their defaults
//! - `load`: defaults < file < environment, then the Openlayer SDK's variables
//! - `unknown_keys`: keys no option has, in the file or the environment
//! - `validate`: every option and their relationships checked, by section
//! - `validated`: [`ValidatedConfig`], what the runtime sees, and the pipeline's settings
//!   derived from it ([`ValidatedConfig::pipeline_settings`])
//! - `print`: the effective configuration as redacted TOML (`check-config`)
//! - `error`: [`ConfigError`] and what it lists
//!
//! The `kafka.client` passthrough ([`ClientProperties`]), the problem list and the `[log]`
//! section ([`LogConfig`]) come from `service_kit`, shared with the gateway.

mod error;
mod load;
mod model;
mod print;
mod unknown_keys;
mod validate;
mod validated;

pub use error::{ConfigError, KeyOrigin, Problem, UnknownKey};
pub use model::{
    BatchConfig, HttpConfig, KafkaConfig, OpenlayerConfig, OtelConfig, SessionConfig,
    SessionizerConfig, ShutdownConfig,
};
pub use service_kit::client_properties::ClientProperties;
pub use service_kit::logging::{LogConfig, LogFormat};
pub use validated::{
    ApiKeySource, HttpSettings, LogSettings, OpenlayerSettings, SchemaRegistrySettings,
    SecretSource, SessionSettings, ShutdownSettings, ValidatedConfig,
};

/// Prefix of the environment variables that set options: `SESSIONIZER__SECTION__KEY`.
pub const ENV_PREFIX: &str = "SESSIONIZER";
/// Separator between the prefix, the section and the key of those variables.
pub const ENV_SEPARATOR: &str = "__";
/// Openlayer's API as the official SDK defaults to it; the base includes `/v1`.
pub const DEFAULT_OPENLAYER_BASE_URL: &str = "https://api.openlayer.com/v1";
/// Deepest step nesting `limits.max_step_depth` may allow: decoding recurses once per level
/// and deeper records can overflow a worker thread's stack.
pub const MAX_STEP_DEPTH_CAP: usize = 64;

/// How secrets are shown wherever the configuration is printed.
const REDACTED: &str = "**redacted**";
