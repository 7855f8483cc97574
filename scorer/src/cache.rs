//! The hot cache: loaded models bounded by bytes, with single-flight loads.
//!
//! A `moka` cache maps (model id, version selector) to an `Arc<LoadedModel>`, weighed by
//! the memory the model is charged (`cache.weight_overhead + cache.weight_per_file_byte ×
//! file size`, both measured; see ARCHITECTURE.md). `try_get_with` makes every concurrent
//! first request for a model wait on one load; loads of different models run in parallel,
//! at most `cache.max_concurrent_loads` at once. A failed load is remembered for
//! `cache.failure_ttl` so a broken model answers fast instead of being reloaded by every
//! request. Requests hold an `Arc`, so eviction never pulls a session from under a request:
//! the session is freed when its last request finishes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use manymodels_config::scorer::{CacheConfig, CachePolicy};
use moka::Expiry;
use moka::future::Cache;
use moka::notification::RemovalCause;
use moka::policy::EvictionPolicy;
use ort::environment::Environment;
use tokio::sync::Semaphore;

use crate::error::{LoadError, ScorerError};
use crate::metrics::Metrics;
use crate::model_id::ModelId;
use crate::runtime::{self, LoadedModel};
use crate::store::{ModelStore, StoreError};

/// How long "this model does not exist" is remembered, so a storm of requests for an
/// unknown id does not turn into a storm of store listings, while a newly published model
/// is found within a second.
const NOT_FOUND_TTL: Duration = Duration::from_secs(1);

/// One loaded version of one model: the unit the cache holds and charges.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ModelKey {
    pub id: ModelId,
    pub version: u64,
}

/// What a remembered failure is about: a model's live version (`None`: the model does
/// not exist) or one version (it does not exist, or failed to load).
type FailureKey = (ModelId, Option<u64>);

/// Whether a look-up was answered from memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    Hit,
    Miss,
}

impl Lookup {
    pub fn as_str(self) -> &'static str {
        match self {
            Lookup::Hit => "hit",
            Lookup::Miss => "miss",
        }
    }
}

#[derive(Clone)]
struct Failure {
    error: ScorerError,
    ttl: Duration,
}

struct FailureExpiry;

impl Expiry<FailureKey, Failure> for FailureExpiry {
    fn expire_after_create(&self, _: &FailureKey, value: &Failure, _: Instant) -> Option<Duration> {
        Some(value.ttl)
    }
}

pub struct ModelCache {
    store: Arc<dyn ModelStore>,
    environment: &'static Environment,
    loaded: Cache<ModelKey, Arc<LoadedModel>>,
    /// The live (highest) version of each model seen, so a request for the live version
    /// does not list the store.
    live: Cache<ModelId, u64>,
    failures: Cache<FailureKey, Failure>,
    load_slots: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    config: CacheConfig,
    /// Set when an eviction freed a session; cleared by the next trim.
    freed: Arc<AtomicBool>,
}

impl ModelCache {
    pub fn new(
        config: CacheConfig,
        store: Arc<dyn ModelStore>,
        environment: &'static Environment,
        metrics: Arc<Metrics>,
    ) -> Self {
        let freed = Arc::new(AtomicBool::new(false));
        let listener_metrics = metrics.clone();
        let listener_freed = freed.clone();
        let loaded = Cache::builder()
            .max_capacity(config.budget.bytes())
            .weigher(|_key: &ModelKey, model: &Arc<LoadedModel>| {
                u32::try_from(model.weight).unwrap_or(u32::MAX)
            })
            .eviction_policy(match config.policy {
                CachePolicy::TinyLfu => EvictionPolicy::tiny_lfu(),
                CachePolicy::Lru => EvictionPolicy::lru(),
            })
            .eviction_listener(move |key: Arc<ModelKey>, model: Arc<LoadedModel>, cause| {
                let reason = match cause {
                    RemovalCause::Size => "size",
                    RemovalCause::Explicit => "explicit",
                    RemovalCause::Replaced => "replaced",
                    RemovalCause::Expired => "expired",
                };
                listener_metrics.evictions.with_label_values(&[reason]).inc();
                listener_freed.store(true, Ordering::Relaxed);
                tracing::debug!(model = %key.id, version = model.version, reason, "model left the hot cache");
            })
            .build();
        let failures = Cache::builder()
            .max_capacity(100_000)
            .expire_after(FailureExpiry)
            .build();
        ModelCache {
            store,
            environment,
            loaded,
            live: Cache::builder().max_capacity(1_000_000).build(),
            failures,
            load_slots: Arc::new(Semaphore::new(config.max_concurrent_loads.get())),
            metrics,
            config,
            freed,
        }
    }

    pub fn store(&self) -> &Arc<dyn ModelStore> {
        &self.store
    }

    /// The loaded model for `id` at `version` (`None`: live), loading it if needed.
    pub async fn get(
        &self,
        id: &ModelId,
        version: Option<u64>,
    ) -> Result<(Arc<LoadedModel>, Lookup), ScorerError> {
        let version = match version {
            Some(version) => version,
            None => self.live_version(id).await?,
        };
        let key = ModelKey {
            id: id.clone(),
            version,
        };
        if let Some(model) = self.loaded.get(&key).await {
            self.metrics.cache_hits.inc();
            return Ok((model, Lookup::Hit));
        }
        if let Some(failure) = self.failures.get(&(id.clone(), Some(version))).await {
            if matches!(failure.error, ScorerError::Load(_)) {
                self.metrics.failed_fast.inc();
            }
            return Err(failure.error);
        }
        self.metrics.cache_misses.inc();
        let model = self
            .loaded
            .try_get_with(key.clone(), self.load(key))
            .await
            .map_err(|shared: Arc<ScorerError>| (*shared).clone())?;
        // Apply evictions now rather than on moka's schedule, so the budget holds.
        self.loaded.run_pending_tasks().await;
        self.trim_if_freed();
        Ok((model, Lookup::Miss))
    }

    /// The highest version of `id` in the store, listed once and then remembered.
    async fn live_version(&self, id: &ModelId) -> Result<u64, ScorerError> {
        if let Some(version) = self.live.get(id).await {
            return Ok(version);
        }
        let missing = (id.clone(), None);
        if let Some(failure) = self.failures.get(&missing).await {
            return Err(failure.error);
        }
        let resolve = async {
            let versions = self
                .store
                .list_versions(id)
                .await
                .map_err(|e| ScorerError::Store(e.to_string()))?;
            match versions.last() {
                Some(&version) => Ok(version),
                None => {
                    let error = ScorerError::ModelNotFound(id.to_string());
                    self.remember(missing, error.clone(), NOT_FOUND_TTL).await;
                    Err(error)
                }
            }
        };
        self.live
            .try_get_with(id.clone(), resolve)
            .await
            .map_err(|shared: Arc<ScorerError>| (*shared).clone())
    }

    async fn remember(&self, key: FailureKey, error: ScorerError, ttl: Duration) {
        self.failures.insert(key, Failure { error, ttl }).await;
    }

    /// The single-flight body: runs once per key however many requests wait on it.
    async fn load(&self, key: ModelKey) -> Result<Arc<LoadedModel>, ScorerError> {
        let _slot = self
            .load_slots
            .acquire()
            .await
            .expect("semaphore never closed");
        self.metrics.loads_in_progress.inc();
        let _in_progress = scopeguard(|| self.metrics.loads_in_progress.dec());
        let started = Instant::now();
        let result = self.read_and_create(&key).await;
        match &result {
            Ok(model) => {
                self.metrics.loads.inc();
                self.metrics
                    .load_duration
                    .observe(started.elapsed().as_secs_f64());
                tracing::info!(
                    model = %key.id, version = model.version, file_bytes = model.file_bytes,
                    weight = model.weight, weight_measured = model.weight_measured,
                    ms = started.elapsed().as_secs_f64() * 1e3,
                    "model loaded"
                );
            }
            Err(error) => {
                let ttl = match error {
                    ScorerError::VersionNotFound { .. } => Some(NOT_FOUND_TTL),
                    ScorerError::Load(_) => {
                        self.metrics.load_failures.inc();
                        tracing::warn!(model = %key.id, %error, "model failed to load");
                        Some(self.config.failure_ttl)
                    }
                    // A store outage is not remembered: the next request tries again.
                    _ => None,
                };
                if let Some(ttl) = ttl {
                    self.remember((key.id.clone(), Some(key.version)), error.clone(), ttl)
                        .await;
                }
            }
        }
        result.map(Arc::new)
    }

    async fn read_and_create(&self, key: &ModelKey) -> Result<LoadedModel, ScorerError> {
        let (id, version) = (&key.id, key.version);
        let read_started = Instant::now();
        let bytes = self.store.read(id, version).await.map_err(|e| match e {
            StoreError::NotFound => ScorerError::VersionNotFound {
                id: id.to_string(),
                version: version.to_string(),
            },
            StoreError::Unavailable(message) => ScorerError::Store(message),
        })?;
        let estimate = self.config.weigh(bytes.len() as u64);
        let environment = self.environment;
        let model_id = id.clone();
        let read = read_started.elapsed();
        let handed_over = Instant::now();
        let (result, queued, created) = tokio::task::spawn_blocking(move || {
            let queued = handed_over.elapsed();
            let started = Instant::now();
            let result = runtime::load(environment, model_id, version, &bytes, estimate);
            (result, queued, started.elapsed())
        })
        .await
        .map_err(|e| ScorerError::Store(format!("load task failed: {e}")))?;
        tracing::debug!(
            model = %id, version,
            read_ms = read.as_secs_f64() * 1e3,
            queued_ms = queued.as_secs_f64() * 1e3,
            create_ms = created.as_secs_f64() * 1e3,
            "load phases"
        );
        result.map_err(|message| {
            ScorerError::Load(LoadError {
                id: id.to_string(),
                version,
                message: message.into(),
                invalid_model: true,
            })
        })
    }

    /// Loads the live version now (repository `load`). Returns the version loaded.
    pub async fn warm(&self, id: &ModelId) -> Result<u64, ScorerError> {
        self.get(id, None).await.map(|(model, _)| model.version)
    }

    /// Drops every cached version of `id` and forgets its failures. Returns how many
    /// sessions were dropped.
    pub async fn unload(&self, id: &ModelId) -> usize {
        let keys: Vec<Arc<ModelKey>> = self
            .loaded
            .iter()
            .filter(|(key, _)| key.id == *id)
            .map(|(key, _)| key)
            .collect();
        for key in &keys {
            self.loaded.invalidate(key.as_ref()).await;
        }
        let failed: Vec<Arc<FailureKey>> = self
            .failures
            .iter()
            .filter(|(key, _)| key.0 == *id)
            .map(|(key, _)| key)
            .collect();
        for key in failed {
            self.failures.invalidate(key.as_ref()).await;
        }
        self.live.invalidate(id).await;
        self.loaded.run_pending_tasks().await;
        self.trim_if_freed();
        keys.len()
    }

    /// The models in memory now.
    pub fn resident(&self) -> Vec<Arc<LoadedModel>> {
        self.loaded.iter().map(|(_, model)| model).collect()
    }

    /// Brings the resident gauges up to date (called when metrics are scraped).
    pub async fn refresh_gauges(&self) {
        self.loaded.run_pending_tasks().await;
        self.metrics
            .resident_bytes
            .set(self.loaded.weighted_size() as i64);
        self.metrics
            .resident_models
            .set(self.loaded.entry_count() as i64);
    }

    /// After evictions, give freed heap pages back to the OS so RSS follows the budget:
    /// glibc keeps freed memory in its arenas otherwise. Measured: with a trim after every
    /// eviction, RSS under churn stays within about one budget of the idle process; without,
    /// it grew to 2.4 budgets (BENCHMARKS.md). The trim runs on a blocking thread, off the
    /// request path.
    fn trim_if_freed(&self) {
        if self.freed.swap(false, Ordering::Relaxed) {
            tokio::task::spawn_blocking(trim_heap);
        }
    }
}

#[cfg(target_env = "gnu")]
fn trim_heap() {
    // SAFETY: malloc_trim only walks glibc's own arenas; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(target_env = "gnu"))]
fn trim_heap() {}

/// Runs `f` on drop.
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}
