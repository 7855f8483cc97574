//! What the scorer's and the proxy's configurations share: the `log` section, the listen
//! address, and lists written either as TOML arrays or as comma-separated strings.

use std::net::SocketAddr;

use serde::{Deserialize, Deserializer};

use crate::layer::{KeyDoc, doc};
use crate::{ConfigError, Secret};

/// `log.level`, a key of both binaries.
pub(crate) const LOG_LEVEL: KeyDoc = doc(
    "log.level",
    "info",
    "Log filter (tracing `EnvFilter` syntax).",
);

/// `log.format`, a key of both binaries.
pub(crate) const LOG_FORMAT: KeyDoc = doc("log.format", "text", "Log format: `text` or `json`.");

/// `log.format`: how a binary writes its log lines to stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines, for a terminal.
    Text,
    /// One JSON object per line, for a log collector (the Helm chart sets this).
    Json,
}

/// The `log` section (its raw form is already valid).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `log.level`, in tracing `EnvFilter` syntax.
    pub level: String,
    /// `log.format`.
    pub format: LogFormat,
}

/// Parses the `listen` key.
pub(crate) fn listen(text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse()
        .map_err(|e| ConfigError::key("listen", format!("`{text}`: {e}")))
}

/// A list given as a TOML array or as one comma-separated string (handy in env vars).
pub(crate) fn list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        List(Vec<String>),
        Text(String),
    }
    Ok(match Raw::deserialize(deserializer)? {
        Raw::List(items) => items,
        Raw::Text(text) => text.split(',').map(str::to_string).collect(),
    }
    .into_iter()
    .map(|s| s.trim().to_string())
    .filter(|s| !s.is_empty())
    .collect())
}

/// A [`list`] of secrets.
pub(crate) fn secrets<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Secret>, D::Error> {
    Ok(list(deserializer)?.into_iter().map(Secret::new).collect())
}
