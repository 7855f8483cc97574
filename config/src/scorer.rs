//! Configuration of `mm-scorer`.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::layer::{self, KeyDoc, Sources};
use crate::units::{ByteSize, HumanDuration};
use crate::{ConfigError, Secret};

/// Prefix of the environment variables that override scorer keys.
pub const ENV_PREFIX: &str = "MM_SCORER_";

/// Every scorer key, its default and meaning. README.md's table is rendered from this
/// (`cargo xtask config-table`), and a test checks that every key here deserialises.
pub const KEYS: &[KeyDoc] = &[
    doc(
        "listen",
        "127.0.0.1:8001",
        "Address the HTTP (Open Inference Protocol) server binds.",
    ),
    doc(
        "name",
        "",
        "Name reported in the `x-mm-scorer` response header and logs; empty means the listen address.",
    ),
    doc(
        "store.kind",
        "local",
        "Model store backend: `local` (a directory) or `azure` (Azure Blob Storage).",
    ),
    doc(
        "store.path",
        "models/demo",
        "Root directory of the local store: `<path>/<model_id>/<version>/model.onnx`.",
    ),
    doc("store.azure.account", "", "Azure Storage account name."),
    doc(
        "store.azure.container",
        "",
        "Blob container that holds the models.",
    ),
    doc(
        "store.azure.prefix",
        "",
        "Blob name prefix under which `<model_id>/<version>/model.onnx` live.",
    ),
    doc(
        "store.azure.endpoint",
        "",
        "Blob endpoint URL override (Azurite, sovereign clouds); empty means the public endpoint.",
    ),
    doc(
        "store.azure.use_emulator",
        "false",
        "Use Azurite's development account; its URL comes from `AZURITE_BLOB_STORAGE_URL` (default `http://127.0.0.1:10000`).",
    ),
    secret(
        "store.azure.access_key",
        "Storage account key; empty means SAS or workload identity.",
    ),
    secret(
        "store.azure.sas_token",
        "SAS token used instead of an account key.",
    ),
    doc(
        "cache.budget",
        "512MiB",
        "Bytes of loaded models the hot cache may hold.",
    ),
    doc(
        "cache.max_concurrent_loads",
        "auto",
        "Model loads that may run at the same time, each on its own low-priority load thread: `auto` is the CPUs the process may use (its cgroup quota on Kubernetes), or a number.",
    ),
    doc(
        "cache.failure_ttl",
        "30s",
        "How long a model that failed to load answers its error without retrying.",
    ),
    doc(
        "cache.weight_overhead",
        "96KiB",
        "Estimated fixed memory of a session, charged when a load overlapped another and could not be measured.",
    ),
    doc(
        "cache.weight_per_file_byte",
        "7.0",
        "Estimated memory per byte of ONNX file, charged with `weight_overhead` when a load could not be measured (ONNX Runtime keeps forests at 5.4-7.1x their file).",
    ),
    doc(
        "policy.half_life_requests",
        "10000",
        "Half-life of the decayed request counts that rank models for eviction and admission, in requests to this scorer (counts decay with traffic, not time, so ranking is the same at any request rate).",
    ),
    doc(
        "policy.size_weight",
        "1.0",
        "Weight of load cost per byte in a model's priority: 0 ranks by request rate alone (best for bytes loaded), 1 by rate × load cost / bytes (best for request hits).",
    ),
    doc(
        "policy.stats_stale_after",
        "15s",
        "A proxy's pool statistics are dropped when it has not pushed for this long.",
    ),
    doc(
        "warmup.concurrency",
        "2",
        "Background warm-up loads of the hot share that may run at once (they also take `cache.max_concurrent_loads` slots).",
    ),
    doc(
        "warmup.max_fraction",
        "0.8",
        "Warm-up after a statistics push loads at most this fraction of `cache.budget`.",
    ),
    doc(
        "warmup.ready_timeout",
        "10s",
        "A starting scorer reports ready once it has warmed its hot share from the first statistics push, or after this long; 0 means ready at once.",
    ),
    doc(
        "versions.check_interval",
        "1s",
        "How often the scorer asks the store whether the models it holds have a new live version (new upload, pin or unpin).",
    ),
    doc(
        "versions.checks_per_interval",
        "64",
        "Models checked per interval at most, least recently checked first (bounds store calls with many resident models).",
    ),
    secret(
        "auth.admin_keys",
        "Comma-separated bearer keys required on the scorer's admin routes (`/v2/mm/models/...`: publish, pin, refresh); empty leaves them open to the cluster network.",
    ),
    doc(
        "http.max_upload",
        "1GiB",
        "Largest model accepted by the publish route.",
    ),
    doc(
        "http.max_body",
        "32MiB",
        "Largest request body accepted; larger bodies get 413.",
    ),
    doc(
        "http.max_elements",
        "4194304",
        "Largest number of tensor elements in one request; more gets 400.",
    ),
    doc(
        "inference.threads",
        "0",
        "Threads that run ONNX Runtime calls and loads; 0 means one per core.",
    ),
    doc(
        "inference.inline_max",
        "20us",
        "A call this model has been measured to finish within this time runs on the async worker instead of a blocking thread; 0 sends every call to a blocking thread.",
    ),
    doc(
        "engine.native",
        "auto",
        "`auto`: a model whose whole graph the native engine covers (tree ensembles, linear models and their exporters' glue) is served by it, anything else by ONNX Runtime; `off`: every model is served by ONNX Runtime.",
    ),
    doc(
        "onnxruntime.library",
        "",
        "Path of libonnxruntime.so; empty means `ORT_DYLIB_PATH`, then `libonnxruntime.so.1` beside the executable, then `.cache/onnxruntime/lib`.",
    ),
    doc(
        "shutdown.drain",
        "2s",
        "On SIGTERM, how long the scorer keeps serving while reporting not ready, so proxies drop it from rotation before it stops accepting (at least the proxies' `health.interval`).",
    ),
    doc(
        "shutdown.grace",
        "30s",
        "On SIGTERM, after the drain, how long in-flight requests may take before the process exits.",
    ),
    doc(
        "log.level",
        "info",
        "Log filter (tracing `EnvFilter` syntax).",
    ),
    doc("log.format", "text", "Log format: `text` or `json`."),
];

const fn doc(key: &'static str, default: &'static str, doc: &'static str) -> KeyDoc {
    KeyDoc::new(key, default, doc)
}

const fn secret(key: &'static str, doc: &'static str) -> KeyDoc {
    KeyDoc::secret(key, doc)
}

/// The validated scorer configuration.
#[derive(Clone, Debug)]
pub struct ScorerConfig {
    pub listen: SocketAddr,
    pub name: String,
    pub store: StoreConfig,
    pub cache: CacheConfig,
    pub policy: PolicyConfig,
    pub warmup: WarmupConfig,
    pub versions: VersionsConfig,
    pub admin_keys: Vec<Secret>,
    pub http: HttpConfig,
    /// Threads for ONNX Runtime calls and loads.
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

/// How the scorer notices new live versions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VersionsConfig {
    pub check_interval: Duration,
    pub checks_per_interval: usize,
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
    pub failure_ttl: Duration,
    pub weight_overhead: ByteSize,
    pub weight_per_file_byte: f64,
}

impl CacheConfig {
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
}

impl ScorerConfig {
    /// Loads and validates the configuration from `sources`.
    pub fn load(sources: &Sources<'_>) -> Result<Self, ConfigError> {
        let raw: Raw = layer::merge(KEYS, ENV_PREFIX, sources)?;
        raw.validate()
    }

    /// Defaults only, with the store at `path`: handy for tests.
    pub fn for_local_store(path: impl Into<PathBuf>) -> Self {
        let mut config = Raw::default().validate().expect("defaults are valid");
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

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Raw {
    listen: String,
    name: String,
    store: RawStore,
    cache: RawCache,
    policy: RawPolicy,
    warmup: RawWarmup,
    versions: RawVersions,
    auth: RawAuth,
    http: RawHttp,
    inference: RawInference,
    engine: RawEngine,
    onnxruntime: RawOnnxRuntime,
    shutdown: RawShutdown,
    log: RawLog,
}

impl Default for Raw {
    fn default() -> Self {
        Raw {
            listen: "127.0.0.1:8001".into(),
            name: String::new(),
            store: RawStore::default(),
            cache: RawCache::default(),
            policy: RawPolicy::default(),
            warmup: RawWarmup::default(),
            versions: RawVersions::default(),
            auth: RawAuth::default(),
            http: RawHttp::default(),
            inference: RawInference::default(),
            engine: RawEngine::default(),
            onnxruntime: RawOnnxRuntime::default(),
            shutdown: RawShutdown::default(),
            log: RawLog::default(),
        }
    }
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawStore {
    kind: String,
    path: PathBuf,
    azure: RawAzure,
}

impl Default for RawStore {
    fn default() -> Self {
        RawStore {
            kind: "local".into(),
            path: "models/demo".into(),
            azure: RawAzure::default(),
        }
    }
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawAzure {
    account: String,
    container: String,
    prefix: String,
    endpoint: String,
    use_emulator: bool,
    access_key: Secret,
    sas_token: Secret,
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawCache {
    budget: ByteSize,
    max_concurrent_loads: Concurrency,
    failure_ttl: HumanDuration,
    weight_overhead: ByteSize,
    weight_per_file_byte: f64,
}

impl Default for RawCache {
    fn default() -> Self {
        RawCache {
            budget: ByteSize::mib(512),
            max_concurrent_loads: Concurrency::Auto(Auto::Auto),
            failure_ttl: HumanDuration(Duration::from_secs(30)),
            weight_overhead: ByteSize::kib(96),
            weight_per_file_byte: 7.0,
        }
    }
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawPolicy {
    half_life_requests: u64,
    size_weight: f64,
    stats_stale_after: HumanDuration,
}

impl Default for RawPolicy {
    fn default() -> Self {
        RawPolicy {
            half_life_requests: 10_000,
            size_weight: 1.0,
            stats_stale_after: HumanDuration(Duration::from_secs(15)),
        }
    }
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawVersions {
    check_interval: HumanDuration,
    checks_per_interval: usize,
}

impl Default for RawVersions {
    fn default() -> Self {
        RawVersions {
            check_interval: HumanDuration(Duration::from_secs(1)),
            checks_per_interval: 64,
        }
    }
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawAuth {
    #[serde(deserialize_with = "crate::proxy::secrets")]
    admin_keys: Vec<Secret>,
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawWarmup {
    concurrency: usize,
    max_fraction: f64,
    ready_timeout: HumanDuration,
}

impl Default for RawWarmup {
    fn default() -> Self {
        RawWarmup {
            concurrency: 2,
            max_fraction: 0.8,
            ready_timeout: HumanDuration(Duration::from_secs(10)),
        }
    }
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawHttp {
    max_body: ByteSize,
    max_upload: ByteSize,
    max_elements: usize,
}

impl Default for RawHttp {
    fn default() -> Self {
        RawHttp {
            max_body: ByteSize::mib(32),
            max_upload: ByteSize::mib(1024),
            max_elements: 1 << 22,
        }
    }
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawInference {
    threads: usize,
    inline_max: HumanDuration,
}

impl Default for RawInference {
    fn default() -> Self {
        RawInference {
            threads: 0,
            inline_max: HumanDuration(Duration::from_micros(20)),
        }
    }
}

/// `cache.max_concurrent_loads`: `auto` or a count.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(untagged)]
enum Concurrency {
    Auto(Auto),
    Fixed(usize),
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Auto {
    Auto,
}

/// The CPUs this process may use: the affinity mask and the cgroup CPU quota (cgroup v1
/// and v2, as Kubernetes sets `resources.limits.cpu`), rounded down, at least one.
pub fn available_cpus() -> NonZeroUsize {
    std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
}

/// `engine.native`: whether models the native engine covers are served by it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NativeEngine {
    /// Covered models go native, the rest to ONNX Runtime.
    #[default]
    Auto,
    /// Every model is served by ONNX Runtime.
    Off,
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawEngine {
    native: NativeEngine,
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawOnnxRuntime {
    library: String,
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawShutdown {
    drain: HumanDuration,
    grace: HumanDuration,
}

impl Default for RawShutdown {
    fn default() -> Self {
        RawShutdown {
            drain: HumanDuration(Duration::from_secs(2)),
            grace: HumanDuration(Duration::from_secs(30)),
        }
    }
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawLog {
    level: String,
    format: LogFormat,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

impl Raw {
    fn validate(self) -> Result<ScorerConfig, ConfigError> {
        let listen = self
            .listen
            .parse::<SocketAddr>()
            .map_err(|e| ConfigError::key("listen", format!("`{}`: {e}", self.listen)))?;
        let store = match self.store.kind.as_str() {
            "local" => {
                if self.store.path.as_os_str().is_empty() {
                    return Err(ConfigError::key("store.path", "must not be empty"));
                }
                StoreConfig::Local {
                    path: self.store.path,
                }
            }
            "azure" => StoreConfig::Azure(self.store.azure.validate()?),
            other => {
                return Err(ConfigError::key(
                    "store.kind",
                    format!("`{other}` is not `local` or `azure`"),
                ));
            }
        };
        let cache = &self.cache;
        if cache.budget.0 == 0 {
            return Err(ConfigError::key("cache.budget", "must be greater than 0"));
        }
        let max_concurrent_loads = match cache.max_concurrent_loads {
            Concurrency::Auto(_) => available_cpus(),
            Concurrency::Fixed(n) => NonZeroUsize::new(n).ok_or_else(|| {
                ConfigError::key("cache.max_concurrent_loads", "must be `auto` or at least 1")
            })?,
        };
        if !(cache.weight_per_file_byte.is_finite() && cache.weight_per_file_byte >= 0.0) {
            return Err(ConfigError::key(
                "cache.weight_per_file_byte",
                "must be a non-negative number",
            ));
        }
        if self.policy.half_life_requests == 0 {
            return Err(ConfigError::key(
                "policy.half_life_requests",
                "must be greater than 0",
            ));
        }
        if !(0.0..=2.0).contains(&self.policy.size_weight) {
            return Err(ConfigError::key(
                "policy.size_weight",
                "must be between 0 and 2",
            ));
        }
        let warmup_concurrency = NonZeroUsize::new(self.warmup.concurrency)
            .ok_or_else(|| ConfigError::key("warmup.concurrency", "must be at least 1"))?;
        if !(0.0..=1.0).contains(&self.warmup.max_fraction) {
            return Err(ConfigError::key(
                "warmup.max_fraction",
                "must be between 0 and 1",
            ));
        }
        if self.versions.check_interval.0.is_zero() {
            return Err(ConfigError::key(
                "versions.check_interval",
                "must be greater than 0",
            ));
        }
        if self.versions.checks_per_interval == 0 {
            return Err(ConfigError::key(
                "versions.checks_per_interval",
                "must be at least 1",
            ));
        }
        if self.http.max_body.0 == 0 {
            return Err(ConfigError::key("http.max_body", "must be greater than 0"));
        }
        if self.http.max_elements == 0 {
            return Err(ConfigError::key("http.max_elements", "must be at least 1"));
        }
        let inference_threads = NonZeroUsize::new(self.inference.threads)
            .or_else(|| std::thread::available_parallelism().ok())
            .unwrap_or(NonZeroUsize::MIN);
        let onnxruntime_library = if self.onnxruntime.library.is_empty() {
            std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from)
        } else {
            Some(PathBuf::from(self.onnxruntime.library))
        };
        Ok(ScorerConfig {
            listen,
            name: self.name,
            store,
            cache: CacheConfig {
                budget: cache.budget,
                max_concurrent_loads,
                failure_ttl: cache.failure_ttl.0,
                weight_overhead: cache.weight_overhead,
                weight_per_file_byte: cache.weight_per_file_byte,
            },
            policy: PolicyConfig {
                half_life_requests: self.policy.half_life_requests,
                size_weight: self.policy.size_weight,
                stats_stale_after: self.policy.stats_stale_after.0,
            },
            warmup: WarmupConfig {
                concurrency: warmup_concurrency,
                max_fraction: self.warmup.max_fraction,
                ready_timeout: self.warmup.ready_timeout.0,
            },
            versions: VersionsConfig {
                check_interval: self.versions.check_interval.0,
                checks_per_interval: self.versions.checks_per_interval,
            },
            admin_keys: self.auth.admin_keys,
            http: HttpConfig {
                max_body: self.http.max_body,
                max_upload: self.http.max_upload,
                max_elements: self.http.max_elements,
            },
            inference_threads,
            inference_inline_max: self.inference.inline_max.0,
            native_engine: self.engine.native,
            onnxruntime_library,
            shutdown_drain: self.shutdown.drain.0,
            shutdown_grace: self.shutdown.grace.0,
            log: LogConfig {
                level: self.log.level,
                format: self.log.format,
            },
        })
    }
}

impl RawAzure {
    fn validate(self) -> Result<AzureStoreConfig, ConfigError> {
        if self.account.is_empty() && !self.use_emulator {
            return Err(ConfigError::key(
                "store.azure.account",
                "required when store.kind = \"azure\" (or set store.azure.use_emulator)",
            ));
        }
        if self.container.is_empty() {
            return Err(ConfigError::key(
                "store.azure.container",
                "required when store.kind = \"azure\"",
            ));
        }
        if !self.access_key.is_empty() && !self.sas_token.is_empty() {
            return Err(ConfigError::key(
                "store.azure.sas_token",
                "set either an access key or a SAS token, not both",
            ));
        }
        let credential = if !self.access_key.is_empty() {
            AzureCredential::AccessKey(self.access_key)
        } else if !self.sas_token.is_empty() {
            AzureCredential::SasToken(self.sas_token)
        } else {
            AzureCredential::Ambient
        };
        let prefix = self.prefix.trim_matches('/');
        Ok(AzureStoreConfig {
            account: self.account,
            container: self.container,
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            endpoint: (!self.endpoint.is_empty()).then_some(self.endpoint),
            use_emulator: self.use_emulator,
            credential,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(
        file: Option<&str>,
        env: &[(&str, &str)],
        sets: &[&str],
    ) -> Result<ScorerConfig, ConfigError> {
        let dir = std::env::temp_dir().join(format!("mm-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{}.toml", file.map(str::len).unwrap_or(0)));
        if let Some(text) = file {
            std::fs::write(&path, text).unwrap();
        }
        ScorerConfig::load(&Sources {
            file: file.map(|_| path.as_path()),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            sets: sets.iter().map(|s| s.to_string()).collect(),
        })
    }

    #[test]
    fn defaults_match_the_key_table() {
        let config = load(None, &[], &[]).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:8001");
        assert_eq!(config.cache.budget, ByteSize::mib(512));
        assert_eq!(config.cache.failure_ttl, Duration::from_secs(30));
        assert_eq!(config.http.max_body, ByteSize::mib(32));
        assert_eq!(config.policy.half_life_requests, 10_000);
        assert_eq!(config.warmup.ready_timeout, Duration::from_secs(10));
        assert!(load(None, &[], &["warmup.max_fraction=1.5"]).is_err());
        assert!(load(None, &[], &["policy.half_life_requests=0"]).is_err());
        // Every documented default, fed back through `--set`, must be accepted.
        for doc in KEYS {
            if doc.default.is_empty() {
                continue;
            }
            let set = format!("{}={}", doc.key, doc.default);
            load(None, &[], &[&set]).unwrap_or_else(|e| panic!("{set}: {e}"));
        }
    }

    #[test]
    fn file_then_env_then_flags_override_in_order() {
        let file =
            "listen = \"127.0.0.1:9000\"\n[cache]\nbudget = \"1GiB\"\nmax_concurrent_loads = 2\n";
        let config = load(
            Some(file),
            &[
                ("MM_SCORER_CACHE_BUDGET", "64MiB"),
                ("MM_SCORER_LISTEN", "127.0.0.1:9001"),
            ],
            &["listen=127.0.0.1:9002"],
        )
        .unwrap();
        assert_eq!(config.cache.budget, ByteSize::mib(64));
        assert_eq!(config.cache.max_concurrent_loads.get(), 2);
        assert_eq!(config.listen.to_string(), "127.0.0.1:9002");
        // `auto` (the default) is the CPUs this process may use.
        let auto = load(
            None,
            &[("MM_SCORER_CACHE_MAX_CONCURRENT_LOADS", "auto")],
            &[],
        )
        .unwrap();
        assert_eq!(auto.cache.max_concurrent_loads, available_cpus());
        assert_eq!(
            load(None, &[], &[]).unwrap().cache.max_concurrent_loads,
            available_cpus()
        );
        assert!(load(None, &[], &["cache.max_concurrent_loads=often"]).is_err());
    }

    #[test]
    fn errors_name_the_bad_key() {
        let err = load(Some("[cache]\nbudget = \"lots\"\n"), &[], &[]).unwrap_err();
        assert!(err.to_string().contains("cache.budget"), "{err}");
        let err = load(Some("[cache]\nbugdet = 1\n"), &[], &[]).unwrap_err();
        assert!(err.to_string().contains("bugdet"), "{err}");
        let err = load(None, &[("MM_SCORER_CACHE_MAX_CONCURRENT_LOADS", "0")], &[]).unwrap_err();
        assert!(
            err.to_string().contains("cache.max_concurrent_loads"),
            "{err}"
        );
        let err = load(None, &[], &["cache.nope=1"]).unwrap_err();
        assert!(err.to_string().contains("cache.nope"), "{err}");
        let err = load(None, &[], &["store.kind=s3"]).unwrap_err();
        assert!(err.to_string().contains("store.kind"), "{err}");
    }

    #[test]
    fn azure_store_requires_a_container_and_redacts_its_key() {
        let err = load(None, &[], &["store.kind=azure", "store.azure.account=acct"]).unwrap_err();
        assert!(err.to_string().contains("store.azure.container"), "{err}");
        let config = load(
            None,
            &[("MM_SCORER_STORE_AZURE_ACCESS_KEY", "c2VjcmV0")],
            &[
                "store.kind=azure",
                "store.azure.account=acct",
                "store.azure.container=models",
                "store.azure.prefix=/team/a/",
            ],
        )
        .unwrap();
        let StoreConfig::Azure(azure) = &config.store else {
            panic!("expected azure store");
        };
        assert_eq!(azure.prefix, "team/a/");
        assert!(
            matches!(&azure.credential, AzureCredential::AccessKey(k) if k.expose() == "c2VjcmV0")
        );
        assert!(!format!("{config:?}").contains("c2VjcmV0"));
    }

    #[test]
    fn readme_documents_every_key_with_its_env_var() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
        let table = crate::markdown_table(KEYS, ENV_PREFIX);
        assert!(
            readme.contains(&table),
            "README.md's scorer key table is out of date: paste the output of `cargo xtask config-table`"
        );
    }

    #[test]
    fn the_weight_rule_charges_overhead_plus_a_multiple_of_the_file() {
        let config = load(
            None,
            &[],
            &[
                "cache.weight_overhead=100KiB",
                "cache.weight_per_file_byte=5",
            ],
        )
        .unwrap();
        assert_eq!(config.cache.weigh(1000), 100 * 1024 + 5000);
    }
}
