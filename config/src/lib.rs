//! Typed configuration for manymodels' binaries.
//!
//! Each binary has a *raw* serde layer (unknown keys rejected) and a *validated* layer of
//! real types (`SocketAddr`, `Duration`, byte sizes, enums) that the services take. Values
//! come from the defaults, a TOML file, then environment variables, then `--set key=value`
//! flags. The key tables ([`scorer::KEYS`], [`proxy::KEYS`]) document every key, hold its
//! one default and derive the environment variable names. An invalid configuration never
//! reaches a service: loading fails with an error that names the key.
//!
//! This crate does no I/O beyond reading the config file, and knows nothing of HTTP or ONNX.

mod common;
mod ids;
mod layer;
pub mod proxy;
pub mod scorer;
mod units;

use std::fmt;

pub use common::{LogConfig, LogFormat, TraceConfig};
pub use ids::{MAX_MODEL_ID_LEN, valid_model_id};
pub use layer::{KeyDoc, Sources};
pub use units::{ByteSize, HumanDuration, parse_bytes, parse_duration};

/// Why a configuration was refused. Always names the file or key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {message}")]
    File { path: String, message: String },
    #[error("config key `{key}`: {message}")]
    Key { key: String, message: String },
}

impl ConfigError {
    pub(crate) fn key(key: &str, message: impl Into<String>) -> Self {
        ConfigError::Key {
            key: key.to_string(),
            message: message.into(),
        }
    }
}

/// What a binary's start-up (`manymodels-boot`) needs of its configuration.
pub trait Config: Sized {
    /// Prefix of the environment variables that override keys (`MM_SCORER_`); the one named
    /// `{ENV_PREFIX}CONFIG` gives the configuration file.
    const ENV_PREFIX: &'static str;

    /// Loads and validates the configuration from `sources`.
    fn load(sources: &Sources<'_>) -> Result<Self, ConfigError>;

    /// The `log` section.
    fn log(&self) -> &LogConfig;
}

/// A secret string (storage key, SAS token, API key) that never prints.
#[derive(Clone, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `given` is one of `keys`, compared in constant time per key (no early exit
    /// on the first differing byte).
    pub fn matches_any(given: &str, keys: &[Secret]) -> bool {
        keys.iter().any(|key| {
            let key = key.0.as_bytes();
            key.len() == given.len()
                && key
                    .iter()
                    .zip(given.as_bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        })
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "<unset>"
        } else {
            "<redacted>"
        })
    }
}

/// Renders a key table as the Markdown table in docs/configuration.md (`cargo xtask docs`).
pub fn markdown_table(keys: &[KeyDoc], env_prefix: &str) -> String {
    let mut out = String::from("| key | env var | default | meaning |\n|---|---|---|---|\n");
    for doc in keys {
        let default = if doc.default.is_empty() {
            "(empty)".to_string()
        } else {
            format!("`{}`", doc.default)
        };
        out.push_str(&format!(
            "| `{}` | `{}` | {} | {} |\n",
            doc.key,
            doc.env_var(env_prefix),
            default,
            doc.doc
        ));
    }
    out
}
