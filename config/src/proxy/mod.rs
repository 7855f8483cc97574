//! Configuration of `mm-proxy`: the validated types the proxy takes. The key table is in
//! `keys.rs`, the raw serde layer and its validation in `raw.rs`.

mod keys;
mod raw;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::time::Duration;

use crate::layer::{self, Sources};
use crate::units::ByteSize;
use crate::{Config, ConfigError, LogConfig, Secret};

pub use keys::KEYS;

/// Prefix of the environment variables that override proxy keys.
pub const ENV_PREFIX: &str = "MM_PROXY_";

/// The validated proxy configuration.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    pub threads: usize,
    pub pool: PoolSource,
    pub pool_refresh: Duration,
    pub health_interval: Duration,
    pub health_timeout: Duration,
    pub tolerated_timeouts: usize,
    pub eject_for: Duration,
    pub top_k: usize,
    pub load_factor: f64,
    pub min_inflight: usize,
    pub hot_ttl: Duration,
    /// Requests per second that make a model hot enough to replicate; `None` disables.
    pub replication_threshold: Option<f64>,
    /// `None`: statistics are kept but not pushed.
    pub stats_push_interval: Option<Duration>,
    /// In requests through this proxy.
    pub stats_half_life_requests: u64,
    pub stats_top_models: usize,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub retries: usize,
    pub max_body: ByteSize,
    pub max_upload: ByteSize,
    pub api_keys: Vec<Secret>,
    pub admin_keys: Vec<Secret>,
    pub shutdown_grace: Duration,
    pub log: LogConfig,
}

/// Where the scorers come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolSource {
    /// Named scorers (`host:port`); the name is the rendezvous identity.
    Static(Vec<String>),
    /// Every address a DNS name resolves to; the address is the identity.
    Dns(String),
}

impl ProxyConfig {
    /// Loads and validates the configuration from `sources`.
    pub fn load(sources: &Sources<'_>) -> Result<Self, ConfigError> {
        layer::merge::<raw::Raw>(KEYS, ENV_PREFIX, sources)?.validate()
    }
}

impl Config for ProxyConfig {
    const ENV_PREFIX: &'static str = ENV_PREFIX;

    fn load(sources: &Sources<'_>) -> Result<Self, ConfigError> {
        ProxyConfig::load(sources)
    }

    fn log(&self) -> &LogConfig {
        &self.log
    }
}
