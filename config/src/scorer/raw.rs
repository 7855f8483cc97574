//! The scorer's raw serde layer, one struct per section, and its validation into
//! [`ScorerConfig`]. No field has a default of its own: every value, defaults included,
//! comes through [`KEYS`](super::KEYS).

use std::num::NonZeroUsize;
use std::path::PathBuf;

use serde::Deserialize;

use super::{
    AzureCredential, AzureStoreConfig, CacheConfig, CaptureConfig, HttpConfig, ImagesConfig,
    LedgerConfig, NativeEngine, PolicyConfig, ScorerConfig, ShadowConfig, StatsLimits, StoreConfig,
    TenantShare, VersionsConfig, WarmupConfig, available_cpus,
};
use crate::common::{self, RawTrace, at_least, at_least_one, list, positive, secrets, within};
use crate::units::{ByteSize, HumanDuration};
use crate::{ConfigError, LogConfig, Secret};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Raw {
    listen: String,
    name: String,
    store: RawStore,
    cache: RawCache,
    policy: RawPolicy,
    warmup: RawWarmup,
    images: RawImages,
    versions: RawVersions,
    auth: RawAuth,
    stats: RawStats,
    http: RawHttp,
    inference: RawInference,
    engine: RawEngine,
    onnxruntime: RawOnnxRuntime,
    shutdown: RawShutdown,
    log: LogConfig,
    trace: RawTrace,
    ledger: RawLedger,
    capture: RawCapture,
    shadow: RawShadow,
    tenants: RawTenants,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShadow {
    queue_bytes: ByteSize,
    concurrency: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenants {
    #[serde(deserialize_with = "list")]
    shares: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLedger {
    hot_models: usize,
    half_life_requests: u64,
    alpha: f64,
    max_buckets: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCapture {
    prefix: String,
    queue_bytes: ByteSize,
    flush_interval: HumanDuration,
    batch_bytes: ByteSize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    kind: String,
    path: PathBuf,
    timeout: HumanDuration,
    azure: RawAzure,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
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
#[serde(deny_unknown_fields)]
struct RawCache {
    budget: ByteSize,
    max_concurrent_loads: Concurrency,
    batch_load_share: f64,
    failure_ttl: HumanDuration,
    load_timeout: HumanDuration,
    max_waiting: usize,
    max_waiting_per_model: usize,
    weight_overhead: ByteSize,
    weight_per_file_byte: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    half_life_requests: u64,
    size_weight: f64,
    stats_stale_after: HumanDuration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVersions {
    check_interval: HumanDuration,
    checks_per_interval: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    #[serde(deserialize_with = "secrets")]
    admin_keys: Vec<Secret>,
    pool_key: Secret,
    pool_key_previous: Secret,
    #[serde(deserialize_with = "secrets")]
    metrics_keys: Vec<Secret>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStats {
    max_report_models: usize,
    max_sources: usize,
    max_source_rate: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImages {
    dir: PathBuf,
    max_bytes: ByteSize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWarmup {
    concurrency: usize,
    max_fraction: f64,
    ready_timeout: HumanDuration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    max_body: ByteSize,
    max_upload: ByteSize,
    max_elements: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInference {
    threads: usize,
    inline_max: HumanDuration,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEngine {
    native: NativeEngine,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOnnxRuntime {
    library: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShutdown {
    drain: HumanDuration,
    grace: HumanDuration,
}

impl Raw {
    pub(super) fn validate(self) -> Result<ScorerConfig, ConfigError> {
        let listen = common::listen(&self.listen)?;
        let store_timeout = self.store.timeout.0;
        let store = self.store.validate()?;
        positive("store.timeout", store_timeout)?;
        let cache = self.cache.validate(self.tenants.validate()?)?;
        positive("policy.half_life_requests", self.policy.half_life_requests)?;
        within("policy.size_weight", self.policy.size_weight, 0.0..=2.0)?;
        let warmup_concurrency = at_least_one("warmup.concurrency", self.warmup.concurrency)?;
        within("warmup.max_fraction", self.warmup.max_fraction, 0.0..=1.0)?;
        positive("versions.check_interval", self.versions.check_interval.0)?;
        at_least_one(
            "versions.checks_per_interval",
            self.versions.checks_per_interval,
        )?;
        positive("http.max_body", self.http.max_body.0)?;
        at_least_one("http.max_elements", self.http.max_elements)?;
        Ok(ScorerConfig {
            listen,
            name: self.name,
            store,
            store_timeout,
            cache,
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
            images: ImagesConfig {
                dir: (!self.images.dir.as_os_str().is_empty()).then_some(self.images.dir),
                max_bytes: self.images.max_bytes.0,
            },
            versions: VersionsConfig {
                check_interval: self.versions.check_interval.0,
                checks_per_interval: self.versions.checks_per_interval,
            },
            admin_keys: self.auth.admin_keys,
            pool_key_previous: if self.auth.pool_key.is_empty()
                && !self.auth.pool_key_previous.is_empty()
            {
                return Err(ConfigError::key(
                    "auth.pool_key_previous",
                    "needs auth.pool_key (the key that replaces it)",
                ));
            } else {
                self.auth.pool_key_previous
            },
            pool_key: self.auth.pool_key,
            metrics_keys: self.auth.metrics_keys,
            stats: self.stats.validate()?,
            http: HttpConfig {
                max_body: self.http.max_body,
                max_upload: self.http.max_upload,
                max_elements: self.http.max_elements,
            },
            inference_threads: self.inference.threads(),
            inference_inline_max: self.inference.inline_max.0,
            native_engine: self.engine.native,
            onnxruntime_library: self.onnxruntime.library(),
            shutdown_drain: self.shutdown.drain.0,
            shutdown_grace: self.shutdown.grace.0,
            log: self.log,
            trace: self.trace.validate()?,
            ledger: self.ledger.validate()?,
            capture: self.capture.validate()?,
            shadow: ShadowConfig {
                queue_bytes: positive("shadow.queue_bytes", self.shadow.queue_bytes.0)?,
                concurrency: at_least_one("shadow.concurrency", self.shadow.concurrency)?,
            },
        })
    }
}

impl RawTenants {
    /// `tenants.shares`: `name=prefix[+prefix...][:floor=F][:cap=C]` items.
    fn validate(self) -> Result<Vec<TenantShare>, ConfigError> {
        const KEY: &str = "tenants.shares";
        let bad = |item: &str, why: String| ConfigError::key(KEY, format!("`{item}`: {why}"));
        let mut shares: Vec<TenantShare> = Vec::new();
        for item in &self.shares {
            let mut parts = item.split(':');
            let head = parts.next().unwrap_or_default();
            let Some((name, prefixes)) = head.split_once('=') else {
                return Err(bad(item, "must start with `name=prefix`".into()));
            };
            let name = name.trim();
            if !crate::valid_model_id(name) || name == "default" {
                return Err(bad(
                    item,
                    format!(
                        "tenant name `{name}` must be letters, digits, `.`, `_` or `-` (not `default`)"
                    ),
                ));
            }
            if shares.iter().any(|s| s.name == name) {
                return Err(bad(item, format!("tenant `{name}` is named twice")));
            }
            let prefixes: Vec<String> = prefixes.split('+').map(|p| p.trim().to_string()).collect();
            if let Some(p) = prefixes.iter().find(|p| !crate::valid_model_id(p)) {
                return Err(bad(
                    item,
                    format!("prefix `{p}` must be the start of a valid model id"),
                ));
            }
            let (mut floor, mut cap) = (0.0, 1.0);
            for part in parts {
                let (field, value) = part.split_once('=').unwrap_or((part, ""));
                let number: f64 = value.trim().parse().map_err(|_| {
                    bad(
                        item,
                        format!("`{part}` must be `floor=<fraction>` or `cap=<fraction>`"),
                    )
                })?;
                match field.trim() {
                    "floor" => floor = number,
                    "cap" => cap = number,
                    other => {
                        return Err(bad(item, format!("unknown field `{other}` (floor, cap)")));
                    }
                }
            }
            if !(0.0..=1.0).contains(&floor) {
                return Err(bad(item, format!("floor {floor} must be between 0 and 1")));
            }
            if !(cap > 0.0 && cap <= 1.0) {
                return Err(bad(
                    item,
                    format!("cap {cap} must be above 0 and at most 1"),
                ));
            }
            if cap < floor {
                return Err(bad(item, format!("cap {cap} is below its floor {floor}")));
            }
            shares.push(TenantShare {
                name: name.to_string(),
                prefixes,
                floor,
                cap,
            });
        }
        let floors: f64 = shares.iter().map(|s| s.floor).sum();
        if floors > 1.0 + 1e-9 {
            return Err(ConfigError::key(
                KEY,
                format!("the floors sum to {floors}, more than 1"),
            ));
        }
        Ok(shares)
    }
}

impl RawLedger {
    fn validate(self) -> Result<LedgerConfig, ConfigError> {
        Ok(LedgerConfig {
            hot_models: at_least_one("ledger.hot_models", self.hot_models)?,
            half_life_requests: positive("ledger.half_life_requests", self.half_life_requests)?,
            alpha: within("ledger.alpha", self.alpha, 0.0001..=0.5)?,
            max_buckets: at_least_one("ledger.max_buckets", self.max_buckets)?,
        })
    }
}

impl RawCapture {
    fn validate(self) -> Result<CaptureConfig, ConfigError> {
        let prefix = self.prefix.trim_matches('/').to_string();
        if prefix.is_empty()
            || prefix
                .split('/')
                .any(|part| part.is_empty() || part == "." || part == "..")
        {
            return Err(ConfigError::key(
                "capture.prefix",
                "must be a non-empty relative path without empty, `.` or `..` parts",
            ));
        }
        if crate::valid_model_id(prefix.split('/').next().unwrap_or_default()) {
            return Err(ConfigError::key(
                "capture.prefix",
                "must not begin with a valid model id (its files would list as a model): start it with `_`",
            ));
        }
        Ok(CaptureConfig {
            prefix,
            queue_bytes: positive("capture.queue_bytes", self.queue_bytes.0)?,
            flush_interval: positive("capture.flush_interval", self.flush_interval.0)?,
            batch_bytes: positive("capture.batch_bytes", self.batch_bytes.0)?,
        })
    }
}

impl RawStore {
    fn validate(self) -> Result<StoreConfig, ConfigError> {
        match self.kind.as_str() {
            "local" => {
                if self.path.as_os_str().is_empty() {
                    return Err(ConfigError::key("store.path", "must not be empty"));
                }
                Ok(StoreConfig::Local { path: self.path })
            }
            "azure" => Ok(StoreConfig::Azure(self.azure.validate()?)),
            other => Err(ConfigError::key(
                "store.kind",
                format!("`{other}` is not `local` or `azure`"),
            )),
        }
    }
}

impl RawCache {
    fn validate(self, tenants: Vec<TenantShare>) -> Result<CacheConfig, ConfigError> {
        positive("cache.budget", self.budget.0)?;
        positive("cache.load_timeout", self.load_timeout.0)?;
        let max_waiting = at_least_one("cache.max_waiting", self.max_waiting)?;
        let max_waiting_per_model =
            at_least_one("cache.max_waiting_per_model", self.max_waiting_per_model)?;
        let max_concurrent_loads = match self.max_concurrent_loads {
            Concurrency::Auto(_) => available_cpus(),
            Concurrency::Fixed(n) => NonZeroUsize::new(n).ok_or_else(|| {
                ConfigError::key("cache.max_concurrent_loads", "must be `auto` or at least 1")
            })?,
        };
        at_least("cache.weight_per_file_byte", self.weight_per_file_byte, 0.0)?;
        let batch_load_share = within("cache.batch_load_share", self.batch_load_share, 0.0..=1.0)?;
        Ok(CacheConfig {
            budget: self.budget,
            max_concurrent_loads,
            batch_load_share,
            tenants,
            failure_ttl: self.failure_ttl.0,
            load_timeout: self.load_timeout.0,
            max_waiting,
            max_waiting_per_model,
            weight_overhead: self.weight_overhead,
            weight_per_file_byte: self.weight_per_file_byte,
        })
    }
}

impl RawStats {
    fn validate(self) -> Result<StatsLimits, ConfigError> {
        Ok(StatsLimits {
            bounds: manymodels_contract::stats::Bounds {
                max_models: self.max_report_models,
                max_source_rate: at_least("stats.max_source_rate", self.max_source_rate, 0.0)?,
            },
            max_sources: at_least_one("stats.max_sources", self.max_sources)?,
        })
    }
}

impl RawInference {
    /// `inference.threads`, 0 meaning the CPUs the process may use.
    fn threads(&self) -> NonZeroUsize {
        NonZeroUsize::new(self.threads)
            .or_else(|| std::thread::available_parallelism().ok())
            .unwrap_or(NonZeroUsize::MIN)
    }
}

impl RawOnnxRuntime {
    /// `onnxruntime.library`, else `ORT_DYLIB_PATH`, else none (the library is looked for).
    fn library(self) -> Option<PathBuf> {
        if self.library.is_empty() {
            std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from)
        } else {
            Some(PathBuf::from(self.library))
        }
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
