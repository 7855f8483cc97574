//! What the scorer's and the proxy's configurations share: the `log` section, the listen
//! address, and lists written either as TOML arrays or as comma-separated strings.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::ops::RangeInclusive;

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

/// `trace.endpoint`, a key of both binaries.
pub(crate) const TRACE_ENDPOINT: KeyDoc = doc(
    "trace.endpoint",
    "",
    "OpenTelemetry collector to export spans to over OTLP/HTTP (protobuf), e.g. `http://otel-collector:4318` (spans go to `<endpoint>/v1/traces`); empty exports nothing. A W3C `traceparent` is accepted and propagated (proxy to scorer) whether or not spans are exported.",
);

/// `trace.sample_ratio`, a key of both binaries.
pub(crate) const TRACE_SAMPLE_RATIO: KeyDoc = doc(
    "trace.sample_ratio",
    "0.01",
    "Share of new traces recorded (0 to 1); a request whose `traceparent` is sampled is recorded whatever the ratio (parent-based sampling), so a trace is whole across the proxy and the scorers.",
);

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

/// The `trace` section, raw.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTrace {
    endpoint: String,
    sample_ratio: f64,
}

impl RawTrace {
    pub(crate) fn validate(self) -> Result<TraceConfig, ConfigError> {
        let endpoint = self.endpoint.trim().trim_end_matches('/').to_string();
        if !endpoint.is_empty()
            && !endpoint.starts_with("http://")
            && !endpoint.starts_with("https://")
        {
            return Err(ConfigError::key(
                "trace.endpoint",
                format!("`{endpoint}` must be an http:// or https:// URL"),
            ));
        }
        Ok(TraceConfig {
            endpoint: (!endpoint.is_empty()).then_some(endpoint),
            sample_ratio: within("trace.sample_ratio", self.sample_ratio, 0.0..=1.0)?,
        })
    }
}

/// The `trace` section: where spans go and how many traces are recorded.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceConfig {
    /// The OTLP/HTTP collector's base URL (no trailing `/`); `None` exports nothing.
    pub endpoint: Option<String>,
    /// Share of new traces recorded.
    pub sample_ratio: f64,
}

/// Parses the `listen` key.
pub(crate) fn listen(text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse()
        .map_err(|e| ConfigError::key("listen", format!("`{text}`: {e}")))
}

/// A count that must be at least 1.
pub(crate) fn at_least_one(key: &str, value: usize) -> Result<NonZeroUsize, ConfigError> {
    NonZeroUsize::new(value).ok_or_else(|| ConfigError::key(key, "must be at least 1"))
}

/// A quantity (bytes, a duration, a half-life) that must be greater than 0.
pub(crate) fn positive<T: Default + PartialEq>(key: &str, value: T) -> Result<T, ConfigError> {
    if value == T::default() {
        return Err(ConfigError::key(key, "must be greater than 0"));
    }
    Ok(value)
}

/// A finite number no smaller than `min`.
pub(crate) fn at_least(key: &str, value: f64, min: f64) -> Result<f64, ConfigError> {
    within(key, value, min..=f64::INFINITY)
}

/// A finite number within `range` (an infinite end is no upper bound).
pub(crate) fn within(
    key: &str,
    value: f64,
    range: RangeInclusive<f64>,
) -> Result<f64, ConfigError> {
    if value.is_finite() && range.contains(&value) {
        return Ok(value);
    }
    let (start, end) = range.into_inner();
    Err(ConfigError::key(
        key,
        if end.is_finite() {
            format!("must be between {start} and {end}")
        } else {
            format!("must be a number ≥ {start}")
        },
    ))
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn checks_name_the_key_and_the_bound() {
        let message = |error: ConfigError| error.to_string();
        assert_eq!(
            message(within("k", 1.5, 0.0..=1.0).unwrap_err()),
            "config key `k`: must be between 0 and 1"
        );
        assert_eq!(
            message(at_least("k", f64::INFINITY, 1.0).unwrap_err()),
            "config key `k`: must be a number ≥ 1"
        );
        assert!(at_least("k", f64::NAN, 0.0).is_err());
        assert_eq!(at_least("k", 0.0, 0.0).unwrap(), 0.0);
        assert_eq!(
            message(positive("k", Duration::ZERO).unwrap_err()),
            "config key `k`: must be greater than 0"
        );
        assert_eq!(
            message(at_least_one("k", 0).unwrap_err()),
            "config key `k`: must be at least 1"
        );
        assert_eq!(at_least_one("k", 3).unwrap().get(), 3);
    }
}
