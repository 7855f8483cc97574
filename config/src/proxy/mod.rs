//! Configuration of `mm-proxy`: the validated types the proxy takes. The key table is in
//! `keys.rs`, the raw serde layer and its validation in `raw.rs`.

mod keys;
mod raw;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::time::Duration;

use manymodels_contract::batch::IdTemplate;

use crate::layer::{self, Sources};
use crate::units::ByteSize;
use crate::{Config, ConfigError, LogConfig, Secret, TraceConfig};

pub use keys::KEYS;

/// Prefix of the environment variables that override proxy keys.
pub const ENV_PREFIX: &str = "MM_PROXY_";

/// The validated proxy configuration. Each field says the key it comes from; the meaning
/// and default of each key are in [`KEYS`].
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// `listen`.
    pub listen: SocketAddr,
    /// `threads`.
    pub threads: usize,
    /// `pool.scorers`, `pool.dns` or `pool.srv` (with `pool.resolver`).
    pub pool: PoolSource,
    /// `pool.refresh`.
    pub pool_refresh: Duration,
    /// `health.interval`.
    pub health_interval: Duration,
    /// `health.timeout`.
    pub health_timeout: Duration,
    /// `health.tolerated_timeouts`.
    pub tolerated_timeouts: usize,
    /// `health.eject_for`.
    pub eject_for: Duration,
    /// `routing.top_k`.
    pub top_k: usize,
    /// `routing.load_factor`.
    pub load_factor: f64,
    /// `routing.min_inflight`.
    pub min_inflight: usize,
    /// `routing.drain_handoff`.
    pub drain_handoff: bool,
    /// `routing.hot_ttl`.
    pub hot_ttl: Duration,
    /// `routing.hot_max_models`.
    pub hot_max_models: usize,
    /// `replication.threshold`, in requests per second; `None` (0) disables replication.
    pub replication_threshold: Option<f64>,
    /// `stats.push_interval`; `None` (0): statistics are kept but not pushed.
    pub stats_push_interval: Option<Duration>,
    /// `stats.half_life_requests`, in requests through this proxy.
    pub stats_half_life_requests: u64,
    /// `stats.top_models`.
    pub stats_top_models: usize,
    /// `upstream.connect_timeout`.
    pub connect_timeout: Duration,
    /// `upstream.read_timeout`.
    pub read_timeout: Duration,
    /// `upstream.retries`.
    pub retries: usize,
    /// `hedge.*`: hedged inference requests.
    pub hedge: HedgeConfig,
    /// `http.max_body`.
    pub max_body: ByteSize,
    /// `http.max_upload`.
    pub max_upload: ByteSize,
    /// `batch.*`: the many-model route.
    pub batch: BatchConfig,
    /// `auth.api_keys` and `auth.api_keys_file`.
    pub api_keys: Vec<ApiKey>,
    /// `auth.admin_keys`.
    pub admin_keys: Vec<ApiKey>,
    /// `limits.*`: each configured key name's rate, in-flight cap and priority (one entry
    /// per name that has any).
    pub key_settings: Vec<KeySettings>,
    /// `auth.pool_key`: empty means none is sent.
    pub pool_key: Secret,
    /// `auth.pool_key_previous`: the key being replaced (empty: no rotation under way).
    pub pool_key_previous: Secret,
    /// `shadow.judge_interval`; `None` (0): no judge runs in this proxy.
    pub shadow_judge_interval: Option<Duration>,
    /// `shutdown.grace`.
    pub shutdown_grace: Duration,
    /// `log.level` and `log.format`.
    pub log: LogConfig,
    /// `trace.*`.
    pub trace: TraceConfig,
}

/// A bearer key the proxy accepts (`auth.api_keys`, `auth.admin_keys`): its name (the
/// metrics label; `unnamed` for a bare key), the key, and the model-id prefixes it may use
/// (empty: every model).
#[derive(Clone, Debug)]
pub struct ApiKey {
    pub name: String,
    pub key: Secret,
    pub scope: Vec<String>,
}

impl ApiKey {
    /// The name of a key given without one.
    pub const UNNAMED: &'static str = "unnamed";

    /// Whether this key may use `model`: it is unscoped, or `model` starts with one of its
    /// prefixes.
    pub fn allows(&self, model: &str) -> bool {
        scope_allows(&self.scope, model)
    }

    /// Whether this key may use every model.
    pub fn unscoped(&self) -> bool {
        self.scope.is_empty()
    }

    /// The key in `keys` that `given` is, compared in constant time per key.
    pub fn find<'a>(given: &str, keys: &'a [ApiKey]) -> Option<&'a ApiKey> {
        keys.iter()
            .find(|k| Secret::matches_any(given, std::slice::from_ref(&k.key)))
    }
}

/// Hedged inference requests (`hedge.*`).
#[derive(Clone, Debug)]
pub struct HedgeConfig {
    /// `hedge.enabled`.
    pub enabled: bool,
    /// `hedge.floor`.
    pub floor: Duration,
    /// `hedge.cap`.
    pub cap: Duration,
    /// `hedge.budget`: hedges earned per request.
    pub budget: f64,
    /// `hedge.burst`.
    pub burst: f64,
    /// `hedge.stalled_after`: 0 never ejects.
    pub stalled_after: usize,
}

/// One key name's settings (`limits.*`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KeySettings {
    /// The key's name in `auth.api_keys` or `auth.admin_keys`.
    pub name: String,
    /// `limits.rate` and `limits.burst`.
    pub rate: Option<RateLimit>,
    /// `limits.inflight`.
    pub inflight: Option<usize>,
    /// `limits.priority`.
    pub priority: Option<manymodels_contract::Priority>,
}

/// A token bucket: `per_second` tokens a second, at most `burst` held.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
}

/// The many-model route (`batch.*`).
#[derive(Clone, Debug)]
pub struct BatchConfig {
    /// `batch.id_template`.
    pub id_template: Option<IdTemplate>,
    /// `batch.key_templates`: (key name, template).
    pub key_templates: Vec<(String, IdTemplate)>,
    /// `batch.max_bytes`.
    pub max_bytes: ByteSize,
    /// `batch.max_records`.
    pub max_records: usize,
    /// `batch.parallelism`.
    pub parallelism: usize,
    /// `batch.groups_per_request`.
    pub groups_per_request: usize,
    /// `batch.concurrency`.
    pub concurrency: usize,
}

impl BatchConfig {
    /// The id template for a request made with the key named `key` (its own, else the
    /// route's).
    pub fn template(&self, key: Option<&str>) -> Option<&IdTemplate> {
        key.and_then(|key| {
            self.key_templates
                .iter()
                .find(|(name, _)| name == key)
                .map(|(_, t)| t)
        })
        .or(self.id_template.as_ref())
    }
}

/// Whether a key scoped to `scope` (model-id prefixes; empty: every model) may use
/// `model`: the one rule for single requests ([`ApiKey::allows`]) and each record of a
/// many-model request.
pub fn scope_allows(scope: &[String], model: &str) -> bool {
    scope.is_empty()
        || scope
            .iter()
            .any(|prefix| model.starts_with(prefix.as_str()))
}

/// Where the scorers come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolSource {
    /// Named scorers (`host:port`); the name is the rendezvous identity.
    Static(Vec<String>),
    /// Every address a DNS name resolves to; the address is the identity.
    Dns(String),
    /// The records of a DNS SRV name; each scorer is named `<target>:<port>` (the target
    /// without its trailing dot), so a StatefulSet pod keeps its name, and its share, across
    /// restarts and new addresses, exactly as with the same names in `Static`.
    Srv {
        /// The SRV name, fully qualified (it ends with a dot: no search domains apply).
        name: String,
        /// The DNS server to ask; `None`: the system's (`/etc/resolv.conf`).
        resolver: Option<SocketAddr>,
    },
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
