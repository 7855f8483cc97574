//! Configuration of `mm-scorer`: the validated types the scorer takes. The key table is in
//! `keys.rs`, the raw serde layer and its validation in `raw.rs`.

mod keys;
mod raw;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::layer::{self, Sources};
use crate::units::ByteSize;
use crate::{Config, ConfigError, LogConfig, Secret, TraceConfig};

pub use keys::KEYS;

/// Prefix of the environment variables that override scorer keys.
pub const ENV_PREFIX: &str = "MM_SCORER_";

/// The validated scorer configuration.
#[derive(Clone, Debug)]
pub struct ScorerConfig {
    pub listen: SocketAddr,
    pub name: String,
    pub store: StoreConfig,
    /// Deadline of every store call.
    pub store_timeout: Duration,
    pub cache: CacheConfig,
    pub policy: PolicyConfig,
    pub warmup: WarmupConfig,
    pub images: ImagesConfig,
    pub versions: VersionsConfig,
    /// `auth.admin_keys`.
    pub admin_keys: Vec<Secret>,
    /// `auth.pool_key`: empty means the scorer is open.
    pub pool_key: Secret,
    /// `auth.pool_key_previous`: the pool key being replaced, accepted as the pool key is
    /// during a rotation (empty: none).
    pub pool_key_previous: Secret,
    /// `auth.metrics_keys`.
    pub metrics_keys: Vec<Secret>,
    /// `stats.*`: the bounds of a statistics push.
    pub stats: StatsLimits,
    pub http: HttpConfig,
    /// Most blocking threads for inference calls not run inline (the runtime gets 4 more,
    /// for store reads and heap trims); loads have their own threads.
    pub inference_threads: NonZeroUsize,
    /// Calls predicted to finish within this run inline on the async worker.
    pub inference_inline_max: Duration,
    /// Whether covered models are served by the native engine.
    pub native_engine: NativeEngine,
    /// Path of the ONNX Runtime shared library.
    pub onnxruntime_library: Option<PathBuf>,
    pub shutdown_drain: Duration,
    pub shutdown_grace: Duration,
    pub log: LogConfig,
    /// `trace.*`.
    pub trace: TraceConfig,
    /// `ledger.*`.
    pub ledger: LedgerConfig,
    /// `capture.*`.
    pub capture: CaptureConfig,
    /// `shadow.*`.
    pub shadow: ShadowConfig,
}

/// How shadow jobs run (`shadow.*`); which models are shadowed is runtime state kept in
/// the store (`<id>/shadow.json`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ShadowConfig {
    /// Bytes of jobs waiting, at most (a full queue skips).
    pub queue_bytes: u64,
    /// Workers, each running one job at a time.
    pub concurrency: NonZeroUsize,
}

/// One tenant of `tenants.shares`: a name, the model-id prefixes that make it up, and its
/// floor and cap as fractions of `cache.budget`.
#[derive(Clone, Debug, PartialEq)]
pub struct TenantShare {
    pub name: String,
    pub prefixes: Vec<String>,
    /// 0: no floor.
    pub floor: f64,
    /// 1: no cap.
    pub cap: f64,
}

/// The per-model ledger's size and accuracy (`ledger.*`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LedgerConfig {
    pub hot_models: NonZeroUsize,
    pub half_life_requests: u64,
    pub alpha: f64,
    pub max_buckets: NonZeroUsize,
}

/// Where and how captured payloads are written (`capture.*`); which models are captured is
/// runtime state kept in the store.
#[derive(Clone, Debug, PartialEq)]
pub struct CaptureConfig {
    /// Normalised: no leading or trailing `/`, not empty.
    pub prefix: String,
    pub queue_bytes: u64,
    pub flush_interval: Duration,
    pub batch_bytes: u64,
}

#[derive(Clone, Debug)]
pub enum StoreConfig {
    Local { path: PathBuf },
    Azure(AzureStoreConfig),
}

#[derive(Clone, Debug)]
pub struct AzureStoreConfig {
    pub account: String,
    pub container: String,
    /// Normalised: empty, or ending in `/`.
    pub prefix: String,
    pub endpoint: Option<String>,
    pub use_emulator: bool,
    pub credential: AzureCredential,
}

#[derive(Clone, Debug)]
pub enum AzureCredential {
    AccessKey(Secret),
    SasToken(Secret),
    /// Workload identity / managed identity, resolved by the storage client from its
    /// environment.
    Ambient,
}

/// How the hot cache ranks models (see `manymodels-policy`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PolicyConfig {
    /// In requests to this scorer.
    pub half_life_requests: u64,
    pub size_weight: f64,
    pub stats_stale_after: Duration,
}

/// The bounds a proxy's statistics push is held to (`stats.*`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StatsLimits {
    /// `stats.max_report_models` and `stats.max_source_rate`, checked per push.
    pub bounds: manymodels_contract::stats::Bounds,
    /// `stats.max_sources`: proxies whose reports are kept at once.
    pub max_sources: NonZeroUsize,
}

/// How the scorer notices new live versions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VersionsConfig {
    pub check_interval: Duration,
    pub checks_per_interval: usize,
}

/// Native images of compiled models on node-local disk (`images.*`).
#[derive(Clone, Debug, PartialEq)]
pub struct ImagesConfig {
    /// `None`: images are off.
    pub dir: Option<PathBuf>,
    /// Disk bound of the directory, in bytes.
    pub max_bytes: u64,
}

/// Background warm-up of the models the pool says this scorer owns.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WarmupConfig {
    pub concurrency: NonZeroUsize,
    pub max_fraction: f64,
    pub ready_timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct CacheConfig {
    pub budget: ByteSize,
    /// Resolved: `auto` became the CPUs available when the configuration was loaded.
    pub max_concurrent_loads: NonZeroUsize,
    /// `cache.batch_load_share`: the share of the load slots batch requests may use.
    pub batch_load_share: f64,
    /// `tenants.shares`: tenants' floors and caps of the budget, checked (floors sum to at
    /// most 1, each cap at least its floor); empty: no tenants.
    pub tenants: Vec<TenantShare>,
    pub failure_ttl: Duration,
    /// A load's own deadline, separate from the request's.
    pub load_timeout: Duration,
    /// Requests waiting for loads on this scorer, and for one model's load.
    pub max_waiting: NonZeroUsize,
    pub max_waiting_per_model: NonZeroUsize,
    pub weight_overhead: ByteSize,
    pub weight_per_file_byte: f64,
}

impl CacheConfig {
    /// Load slots `batch` requests may hold at once: `batch_load_share` of them, rounded
    /// down, at least one.
    pub fn batch_load_slots(&self) -> usize {
        ((self.max_concurrent_loads.get() as f64 * self.batch_load_share).floor() as usize)
            .clamp(1, self.max_concurrent_loads.get())
    }

    /// The estimated memory of a model whose ONNX file has `file_bytes` bytes, charged when
    /// its load could not be measured.
    pub fn weigh(&self, file_bytes: u64) -> u64 {
        self.weight_overhead.0 + (file_bytes as f64 * self.weight_per_file_byte) as u64
    }
}

#[derive(Clone, Debug)]
pub struct HttpConfig {
    pub max_body: ByteSize,
    pub max_upload: ByteSize,
    pub max_elements: usize,
}

impl ScorerConfig {
    /// Loads and validates the configuration from `sources`.
    pub fn load(sources: &Sources<'_>) -> Result<Self, ConfigError> {
        layer::merge::<raw::Raw>(KEYS, ENV_PREFIX, sources)?.validate()
    }

    /// Defaults only, with the store at `path`: handy for tests.
    pub fn for_local_store(path: impl Into<PathBuf>) -> Self {
        let mut config = Self::load(&Sources::default()).expect("defaults are valid");
        config.store = StoreConfig::Local { path: path.into() };
        config
    }

    /// The name this scorer reports: the configured one, or the listen address.
    pub fn display_name(&self) -> String {
        if self.name.is_empty() {
            self.listen.to_string()
        } else {
            self.name.clone()
        }
    }
}

impl Config for ScorerConfig {
    const ENV_PREFIX: &'static str = ENV_PREFIX;

    fn load(sources: &Sources<'_>) -> Result<Self, ConfigError> {
        ScorerConfig::load(sources)
    }

    fn log(&self) -> &LogConfig {
        &self.log
    }
}

/// The CPUs this process may use: the affinity mask and the cgroup CPU quota (cgroup v1
/// and v2, as Kubernetes sets `resources.limits.cpu`), rounded down, at least one.
pub fn available_cpus() -> NonZeroUsize {
    std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
}

/// `engine.native`: whether models the native engine covers are served by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NativeEngine {
    /// Covered models go native, the rest to ONNX Runtime.
    Auto,
    /// Every model is served by ONNX Runtime.
    Off,
}
