//! The hot cache: loaded models bounded by bytes, with single-flight loads, ranked by the
//! pool-wide policy of `manymodels-policy`.
//!
//! Resident sessions live in a map guarded together with the [`Policy`] that decides
//! what stays: every request is counted, and a miss is loaded (once, however many
//! requests wait for it: a per-key `OnceCell`), served, and then **admitted** only if
//! every resident it would displace has a lower priority (rate × load cost per byte,
//! where the rate is the larger of this scorer's own decayed count and the pool-wide rate
//! the proxies push). Each model is charged what its session really keeps (see
//! `runtime`). Loads of different models run in parallel, at most
//! `cache.max_concurrent_loads` at once. A failed load is remembered for
//! `cache.failure_ttl` so a broken model answers fast instead of being reloaded by every
//! request. Requests hold an `Arc`, so eviction never pulls a session from under a request:
//! the session is freed when its last request finishes.
//!
//! moka is kept for the two small caches with expiry (live versions, failures); the
//! resident set is not a moka cache because its eviction and admission must follow the
//! pool's statistics (BENCHMARKS.md, "Cache policy", measures moka's W-TinyLFU against it).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use manymodels_config::scorer::{CacheConfig, PolicyConfig, VersionsConfig, WarmupConfig};
use manymodels_policy::{Key, Policy, PoolView, StatsReport};
use moka::Expiry;
use moka::future::Cache;

use serde::Serialize;
use tokio::sync::{OnceCell, Semaphore};

use crate::engine::{Engine, Engines, LoadedModel};
use crate::error::{LoadError, ScorerError};
use crate::metrics::Metrics;
use crate::model_id::ModelId;
use crate::store::{ModelState, ModelStore, StoreError};

/// How long "this model does not exist" is remembered, so a storm of requests for an
/// unknown id does not turn into a storm of store listings, while a newly published model
/// is found within a second.
const NOT_FOUND_TTL: Duration = Duration::from_secs(1);

/// Recent evictions kept for the explain endpoint.
const EVICTION_LOG: usize = 200;

/// One loaded version of one model: the unit the cache holds and charges.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelKey {
    pub id: ModelId,
    pub version: u64,
}

impl Key for ModelKey {
    type Model = ModelId;
    fn model(&self) -> &ModelId {
        &self.id
    }
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

/// Why a model left memory (the `reason` label of `mm_scorer_cache_evictions_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Displaced by a model of higher priority.
    Capacity,
    /// Loaded for its requests but not kept: every resident was worth more.
    NotAdmitted,
    /// Unloaded through the repository API.
    Unload,
    /// The live version moved on (a new version, a pin or an unpin) and this one went idle.
    Replaced,
}

impl Reason {
    pub const ALL: [Reason; 4] = [
        Reason::Capacity,
        Reason::NotAdmitted,
        Reason::Unload,
        Reason::Replaced,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Capacity => "capacity",
            Reason::NotAdmitted => "not_admitted",
            Reason::Unload => "unload",
            Reason::Replaced => "replaced",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Eviction {
    pub model: String,
    pub version: u64,
    pub bytes: u64,
    pub reason: Reason,
    /// Seconds since the scorer started.
    pub at: f64,
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

type LoadCell = Arc<OnceCell<Result<Arc<LoadedModel>, ScorerError>>>;

/// What this scorer serves as a model's live version.
#[derive(Clone, Debug)]
struct Live {
    version: u64,
    /// The version served before this one, to fall back to if this one fails to load.
    previous: Option<u64>,
    /// When the store was last asked.
    checked: Instant,
    /// A version that was refused (failed to load, its smoke inference, or the
    /// signature check), why, and when.
    refused: Option<(u64, String, Instant)>,
}

impl Live {
    /// The entry for `id` (a new one serving `version` if there was none), marked as
    /// checked against the store just now.
    fn checked_now<'a>(
        lives: &'a mut HashMap<ModelId, Live>,
        id: &ModelId,
        version: u64,
    ) -> &'a mut Live {
        let live = lives.entry(id.clone()).or_insert_with(|| Live {
            version,
            previous: None,
            checked: Instant::now(),
            refused: None,
        });
        live.checked = Instant::now();
        live
    }
}

/// A model's versions as this scorer sees them (admin status).
#[derive(Clone, Debug, Serialize)]
pub struct VersionStatus {
    pub model: String,
    /// In the store, ascending.
    pub versions: Vec<u64>,
    pub pinned: Option<u64>,
    /// What this scorer answers requests without a version with.
    pub live: Option<u64>,
    /// Versions in memory here.
    pub resident: Vec<u64>,
    pub refused: Option<Refusal>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Refusal {
    pub version: u64,
    pub error: String,
    pub seconds_ago: f64,
}

/// What a refresh did.
#[derive(Clone, Debug, Serialize)]
pub struct Refresh {
    pub model: String,
    pub live: u64,
    /// The version served before, when the live version changed.
    pub previous: Option<u64>,
    /// Whether a loaded session was replaced by a new one (in the background, then
    /// switched atomically).
    pub swapped: bool,
    /// Set when the store's live version was refused and the previous one kept.
    pub refused: Option<Refusal>,
}

/// The resident set and the policy ranking it, changed together under one lock.
struct State {
    policy: Policy<ModelKey>,
    models: HashMap<ModelKey, Arc<LoadedModel>>,
    evictions: VecDeque<Eviction>,
}

pub struct ModelCache {
    store: Arc<dyn ModelStore>,
    engines: Engines,
    state: Mutex<State>,
    inflight: Mutex<HashMap<ModelKey, LoadCell>>,
    /// The live version of each model seen, so a request for the live version does not
    /// ask the store: kept while the model is resident (the version checker refreshes it)
    /// and for `versions.check_interval` otherwise.
    live: Mutex<HashMap<ModelId, Live>>,
    /// Store look-ups in flight or just done, so a burst of requests for a model that is
    /// not in memory asks the store once.
    resolving: Cache<ModelId, ModelState>,
    versions: VersionsConfig,
    failures: Cache<FailureKey, Failure>,
    pool: Mutex<PoolView>,
    load_slots: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    config: CacheConfig,
    policy_config: PolicyConfig,
    warmup: WarmupConfig,
    warming: AtomicBool,
    started: Instant,
    /// Set when an eviction freed a session; cleared by the next trim.
    freed: AtomicBool,
}

impl ModelCache {
    pub fn new(
        config: CacheConfig,
        policy_config: PolicyConfig,
        warmup: WarmupConfig,
        versions: VersionsConfig,
        store: Arc<dyn ModelStore>,
        engines: Engines,
        metrics: Arc<Metrics>,
    ) -> Self {
        let policy = Policy::new(
            config.budget.bytes(),
            manymodels_policy::PolicyConfig {
                half_life: policy_config.half_life.as_secs_f64(),
                size_weight: policy_config.size_weight,
                ..manymodels_policy::PolicyConfig::default()
            },
        );
        let failures = Cache::builder()
            .max_capacity(100_000)
            .expire_after(FailureExpiry)
            .build();
        ModelCache {
            store,
            engines,
            state: Mutex::new(State {
                policy,
                models: HashMap::new(),
                evictions: VecDeque::new(),
            }),
            inflight: Mutex::new(HashMap::new()),
            live: Mutex::new(HashMap::new()),
            resolving: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(1))
                .build(),
            versions,
            failures,
            pool: Mutex::new(PoolView::default()),
            load_slots: Arc::new(Semaphore::new(config.max_concurrent_loads.get())),
            metrics,
            config,
            policy_config,
            warmup,
            warming: AtomicBool::new(false),
            started: Instant::now(),
            freed: AtomicBool::new(false),
        }
    }

    /// Seconds since start: the policy's clock.
    fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
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
        self.lookup(id, version, true).await
    }

    /// `get`, optionally without counting a request (warm-up loads are not demand).
    async fn lookup(
        &self,
        id: &ModelId,
        version: Option<u64>,
        count: bool,
    ) -> Result<(Arc<LoadedModel>, Lookup), ScorerError> {
        self.trim_if_freed();
        let Some(version) = version else {
            let live = self.live_version(id).await?;
            return match self.lookup_version(id, live, count).await {
                Err(error @ ScorerError::Load(_)) => match self.fall_back(id, live, &error) {
                    Some(previous) => self.lookup_version(id, previous, count).await,
                    None => Err(error),
                },
                other => other,
            };
        };
        self.lookup_version(id, version, count).await
    }

    /// One version: from memory, or loaded once however many requests wait for it.
    async fn lookup_version(
        &self,
        id: &ModelId,
        version: u64,
        count: bool,
    ) -> Result<(Arc<LoadedModel>, Lookup), ScorerError> {
        let key = ModelKey {
            id: id.clone(),
            version,
        };
        {
            let now = self.now();
            let mut state = self.state();
            if count {
                state.policy.record(&key, now);
            }
            if let Some(model) = state.models.get(&key) {
                if count {
                    self.metrics.cache_hits.inc();
                }
                return Ok((model.clone(), Lookup::Hit));
            }
        }
        if let Some(failure) = self.failures.get(&(id.clone(), Some(version))).await {
            if matches!(failure.error, ScorerError::Load(_)) {
                self.metrics.failed_fast.inc();
            }
            return Err(failure.error);
        }
        if count {
            self.metrics.cache_misses.inc();
        }
        let cell = self
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        let result = cell
            .get_or_init(|| self.load_and_admit(key.clone()))
            .await
            .clone();
        {
            let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            if inflight.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                inflight.remove(&key);
            }
        }
        result.map(|model| (model, Lookup::Miss))
    }

    /// Loads `key`, then lets the policy decide whether it stays.
    async fn load_and_admit(&self, key: ModelKey) -> Result<Arc<LoadedModel>, ScorerError> {
        let (model, seconds) = self.load(key.clone()).await?;
        let now = self.now();
        let mut dropped = Vec::new();
        {
            let mut state = self.state();
            let decision = state
                .policy
                .admit(key.clone(), model.weight, Some(seconds), now);
            if decision.admitted {
                state.models.insert(key.clone(), model.clone());
            } else {
                self.log_eviction(&mut state, &key, model.weight, Reason::NotAdmitted, now);
                // Its session is freed when the requests holding it finish; the next
                // look-up trims the heap.
                self.freed.store(true, Ordering::Relaxed);
            }
            for victim in decision.evicted {
                if let Some(gone) = state.models.remove(&victim) {
                    self.log_eviction(&mut state, &victim, gone.weight, Reason::Capacity, now);
                    dropped.push(gone);
                }
            }
        }
        if !dropped.is_empty() {
            drop(dropped);
            self.freed.store(true, Ordering::Relaxed);
            self.trim_if_freed();
        }
        Ok(model)
    }

    fn log_eviction(
        &self,
        state: &mut State,
        key: &ModelKey,
        bytes: u64,
        reason: Reason,
        now: f64,
    ) {
        self.metrics
            .evictions
            .with_label_values(&[reason.as_str()])
            .inc();
        tracing::debug!(model = %key.id, version = key.version, bytes, reason = reason.as_str(), "model left the hot cache");
        if state.evictions.len() == EVICTION_LOG {
            state.evictions.pop_front();
        }
        state.evictions.push_back(Eviction {
            model: key.id.to_string(),
            version: key.version,
            bytes,
            reason,
            at: now,
        });
    }

    fn lives(&self) -> MutexGuard<'_, HashMap<ModelId, Live>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live version of `id`: what this scorer already serves while it holds it (the
    /// version checker moves it on), otherwise the store's pinned or highest version.
    async fn live_version(&self, id: &ModelId) -> Result<u64, ScorerError> {
        let known = self.lives().get(id).map(|l| (l.version, l.checked));
        if let Some((version, checked)) = known {
            let key = ModelKey {
                id: id.clone(),
                version,
            };
            if checked.elapsed() < self.versions.check_interval
                || self.state().models.contains_key(&key)
            {
                return Ok(version);
            }
        }
        let missing = (id.clone(), None);
        if let Some(failure) = self.failures.get(&missing).await {
            return Err(failure.error);
        }
        let state = self
            .resolving
            .try_get_with(id.clone(), async {
                self.store.model_state(id).await.map_err(store_error)
            })
            .await
            .map_err(|shared: Arc<ScorerError>| (*shared).clone())?;
        let Some(target) = state.live() else {
            let error = ScorerError::ModelNotFound(id.to_string());
            self.remember(missing, error.clone(), NOT_FOUND_TTL).await;
            self.lives().remove(id);
            return Err(error);
        };
        let mut lives = self.lives();
        let entry = Live::checked_now(&mut lives, id, target);
        let refused = entry
            .refused
            .as_ref()
            .is_some_and(|(v, _, at)| *v == target && at.elapsed() < self.config.failure_ttl);
        if entry.version != target && !refused {
            entry.previous = Some(entry.version);
            entry.version = target;
        }
        Ok(entry.version)
    }

    /// After the live version `failed` could not be loaded, falls back to the version
    /// served before it, if any, and remembers the refusal. Returns the fallback.
    fn fall_back(&self, id: &ModelId, failed: u64, error: &ScorerError) -> Option<u64> {
        let mut lives = self.lives();
        let live = lives.get_mut(id)?;
        let previous = live.previous.filter(|p| *p != failed)?;
        if live.version == failed {
            live.version = previous;
            live.previous = None;
        }
        live.refused = Some((failed, error.to_string(), Instant::now()));
        self.metrics.version_refusals.inc();
        tracing::warn!(model = %id, refused = failed, serving = previous, %error, "new live version refused; serving the previous one");
        Some(previous)
    }

    async fn remember(&self, key: FailureKey, error: ScorerError, ttl: Duration) {
        self.failures.insert(key, Failure { error, ttl }).await;
    }

    /// The single-flight body: runs once per key however many requests wait on it.
    /// Returns the model and the seconds the load itself took, from when it got a load
    /// slot: time queued behind other loads is not this model's cost, and counting it
    /// would rank the models of a burst of cold loads (a scan) above the hot set.
    async fn load(&self, key: ModelKey) -> Result<(Arc<LoadedModel>, f64), ScorerError> {
        let _slot = self
            .load_slots
            .acquire()
            .await
            .expect("semaphore never closed");
        self.metrics.loads_in_progress.inc();
        let _in_progress = scopeguard(|| self.metrics.loads_in_progress.dec());
        let started = Instant::now();
        let result = self.read_and_create(&key).await;
        let seconds = started.elapsed().as_secs_f64();
        match &result {
            Ok(model) => {
                self.metrics.loads.inc();
                self.metrics
                    .engine_loads
                    .with_label_values(&[model.engine.as_str()])
                    .inc();
                self.metrics.loaded_bytes.inc_by(model.weight);
                self.metrics.load_duration.observe(seconds);
                tracing::info!(
                    model = %key.id, version = model.version, file_bytes = model.file_bytes,
                    engine = model.engine.as_str(), native_refusal = model.native_refusal.as_deref(),
                    weight = model.weight, weight_measured = model.weight_measured,
                    ms = seconds * 1e3,
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
        result.map(|model| (Arc::new(model), seconds))
    }

    async fn read_and_create(&self, key: &ModelKey) -> Result<LoadedModel, ScorerError> {
        let (id, version) = (&key.id, key.version);
        let read_started = Instant::now();
        let bytes = self.store.read(id, version).await.map_err(|e| match e {
            StoreError::NotFound => ScorerError::VersionNotFound {
                id: id.to_string(),
                version: version.to_string(),
            },
            StoreError::Unavailable(message) | StoreError::Conflict(message) => {
                ScorerError::Store(message)
            }
        })?;
        let estimate = self.config.weigh(bytes.len() as u64);
        let engines = self.engines;
        let model_id = id.clone();
        let read = read_started.elapsed();
        let handed_over = Instant::now();
        let (result, queued, created) = tokio::task::spawn_blocking(move || {
            let queued = handed_over.elapsed();
            let started = Instant::now();
            let result = engines.load(model_id, version, &bytes, estimate);
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
        result.map_err(|message| invalid_model(id, version, message))
    }

    /// Checks the store for new live versions of the models in memory, the least recently
    /// checked first, at most `versions.checks_per_interval` of them, 8 at a time. Run by
    /// the scorer every `versions.check_interval`.
    pub async fn check_versions(&self) {
        use futures::StreamExt;
        let mut ids: Vec<(Instant, ModelId)> = {
            let state = self.state();
            let lives = self.lives();
            let mut seen = std::collections::HashSet::new();
            state
                .models
                .keys()
                .filter(|k| seen.insert(k.id.clone()))
                .map(|k| {
                    let checked = lives.get(&k.id).map_or(self.started, |l| l.checked);
                    (checked, k.id.clone())
                })
                .collect()
        };
        ids.sort();
        ids.truncate(self.versions.checks_per_interval);
        futures::stream::iter(ids)
            .for_each_concurrent(8, |(_, id)| async move {
                if let Err(error) = self.refresh(&id).await {
                    tracing::debug!(model = %id, %error, "version check failed");
                }
            })
            .await;
    }

    /// Asks the store for `id`'s live version now and moves to it: if an older version is
    /// in memory, the new one is loaded and checked (smoke inference, same inputs) while
    /// the old one keeps serving, then swapped in atomically; requests in flight finish on
    /// the old session, which is freed when they are done. A version that fails is
    /// refused and the old one keeps serving.
    pub async fn refresh(&self, id: &ModelId) -> Result<Refresh, ScorerError> {
        let state = self.store.model_state(id).await.map_err(store_error)?;
        self.resolving.invalidate(id).await;
        let Some(target) = state.live() else {
            self.lives().remove(id);
            return Err(ScorerError::ModelNotFound(id.to_string()));
        };
        let current = { Live::checked_now(&mut self.lives(), id, target).clone() };
        let mut outcome = Refresh {
            model: id.to_string(),
            live: current.version,
            previous: None,
            swapped: false,
            refused: None,
        };
        if current.version == target {
            return Ok(outcome);
        }
        if let Some((version, error, at)) = &current.refused
            && *version == target
            && at.elapsed() < self.config.failure_ttl
        {
            outcome.refused = Some(Refusal {
                version: *version,
                error: error.clone(),
                seconds_ago: at.elapsed().as_secs_f64(),
            });
            return Ok(outcome);
        }
        let old_key = ModelKey {
            id: id.clone(),
            version: current.version,
        };
        let old = self.state().models.get(&old_key).cloned();
        if let Some(old) = old {
            let new_key = ModelKey {
                id: id.clone(),
                version: target,
            };
            match self.prepare(&new_key, &old).await {
                Ok((model, seconds)) => {
                    self.install(&old_key, new_key, model, seconds);
                    outcome.swapped = true;
                    self.metrics.version_swaps.inc();
                }
                Err(error) => {
                    let message = error.to_string();
                    let mut lives = self.lives();
                    if let Some(live) = lives.get_mut(id) {
                        live.refused = Some((target, message.clone(), Instant::now()));
                    }
                    self.metrics.version_refusals.inc();
                    tracing::warn!(model = %id, refused = target, serving = current.version, error = %message, "new live version refused; the old one keeps serving");
                    outcome.refused = Some(Refusal {
                        version: target,
                        error: message,
                        seconds_ago: 0.0,
                    });
                    return Ok(outcome);
                }
            }
        }
        {
            let mut lives = self.lives();
            if let Some(live) = lives.get_mut(id) {
                live.previous = Some(current.version);
                live.version = target;
                live.refused = None;
            }
        }
        tracing::info!(model = %id, from = current.version, to = target, swapped = outcome.swapped, "live version changed");
        outcome.previous = Some(current.version);
        outcome.live = target;
        Ok(outcome)
    }

    /// Loads `key` outside the cache and checks it can replace `old`: a smoke inference on
    /// zeros, and the same input names and datatypes (so requests that work today keep
    /// working). Returns the model and its load time.
    async fn prepare(
        &self,
        key: &ModelKey,
        old: &Arc<LoadedModel>,
    ) -> Result<(Arc<LoadedModel>, f64), ScorerError> {
        let (model, seconds) = self.load(key.clone()).await?;
        let (checked, old) = (model.clone(), old.clone());
        let verdict = tokio::task::spawn_blocking(move || checked.vet(Some(&old)))
            .await
            .map_err(|e| ScorerError::Store(format!("check task failed: {e}")))?;
        verdict.map_err(|message| invalid_model(&key.id, key.version, message))?;
        Ok((model, seconds))
    }

    /// Swaps `old_key` out and `new_key` in under one lock.
    fn install(
        &self,
        old_key: &ModelKey,
        new_key: ModelKey,
        model: Arc<LoadedModel>,
        seconds: f64,
    ) {
        let now = self.now();
        let mut dropped = Vec::new();
        {
            let mut state = self.state();
            state.policy.remove(old_key);
            if let Some(old) = state.models.remove(old_key) {
                self.log_eviction(&mut state, old_key, old.weight, Reason::Replaced, now);
                dropped.push(old);
            }
            let decision = state
                .policy
                .admit(new_key.clone(), model.weight, Some(seconds), now);
            if decision.admitted {
                state.models.insert(new_key, model);
            } else {
                self.log_eviction(&mut state, &new_key, model.weight, Reason::NotAdmitted, now);
            }
            for victim in decision.evicted {
                if let Some(gone) = state.models.remove(&victim) {
                    self.log_eviction(&mut state, &victim, gone.weight, Reason::Capacity, now);
                    dropped.push(gone);
                }
            }
        }
        drop(dropped);
        self.freed.store(true, Ordering::Relaxed);
        self.trim_if_freed();
    }

    /// Versions, alias and what this scorer serves for `id`.
    pub async fn version_status(&self, id: &ModelId) -> Result<VersionStatus, ScorerError> {
        let state = self.store.model_state(id).await.map_err(store_error)?;
        if state.versions.is_empty() {
            return Err(ScorerError::ModelNotFound(id.to_string()));
        }
        let mut resident: Vec<u64> = self
            .state()
            .models
            .keys()
            .filter(|k| k.id == *id)
            .map(|k| k.version)
            .collect();
        resident.sort_unstable();
        let live = self.lives().get(id).cloned();
        Ok(VersionStatus {
            model: id.to_string(),
            live: live.as_ref().map(|l| l.version).or(state.live()),
            refused: live
                .and_then(|l| l.refused)
                .map(|(version, error, at)| Refusal {
                    version,
                    error,
                    seconds_ago: at.elapsed().as_secs_f64(),
                }),
            versions: state.versions,
            pinned: state.pinned,
            resident,
        })
    }

    /// Validates `bytes` as a model (a session and a smoke inference, and the same inputs
    /// as the version in memory, if any) and publishes it as `id`/`version`.
    pub async fn publish(
        &self,
        id: &ModelId,
        version: u64,
        bytes: bytes::Bytes,
    ) -> Result<Refresh, ScorerError> {
        let current = {
            let lives = self.lives();
            lives.get(id).map(|l| l.version)
        };
        let old = current.and_then(|v| {
            self.state()
                .models
                .get(&ModelKey {
                    id: id.clone(),
                    version: v,
                })
                .cloned()
        });
        let engines = self.engines;
        let (model_id, checked) = (id.clone(), bytes.clone());
        let estimate = self.config.weigh(bytes.len() as u64);
        let verdict = tokio::task::spawn_blocking(move || {
            engines
                .load(model_id, version, &checked, estimate)?
                .vet(old.as_deref())
        })
        .await
        .map_err(|e| ScorerError::Store(format!("check task failed: {e}")))?;
        verdict.map_err(|message| invalid_model(id, version, message))?;
        self.store
            .write_version(id, version, bytes)
            .await
            .map_err(|e| match e {
                StoreError::Conflict(message) => ScorerError::Conflict(message),
                other => ScorerError::Store(other.to_string()),
            })?;
        tracing::info!(model = %id, version, "version published");
        self.refresh(id).await
    }

    /// Pins `id` to `version` (`None`: unpins, so the highest version is live), persisted
    /// in the store, and moves this scorer to it.
    pub async fn pin(&self, id: &ModelId, version: Option<u64>) -> Result<Refresh, ScorerError> {
        if let Some(version) = version {
            let state = self.store.model_state(id).await.map_err(store_error)?;
            if !state.versions.contains(&version) {
                return Err(ScorerError::VersionNotFound {
                    id: id.to_string(),
                    version: version.to_string(),
                });
            }
        }
        self.store
            .write_alias(id, version)
            .await
            .map_err(store_error)?;
        tracing::info!(model = %id, pinned = ?version, "alias written");
        self.refresh(id).await
    }

    /// Loads the live version now (repository `load`). Returns the version loaded.
    pub async fn warm(&self, id: &ModelId) -> Result<u64, ScorerError> {
        self.get(id, None).await.map(|(model, _)| model.version)
    }

    /// Drops every cached version of `id` and forgets its failures. Returns how many
    /// sessions were dropped.
    pub async fn unload(&self, id: &ModelId) -> usize {
        let dropped: Vec<Arc<LoadedModel>> = {
            let now = self.now();
            let mut state = self.state();
            let keys: Vec<ModelKey> = state
                .models
                .keys()
                .filter(|k| k.id == *id)
                .cloned()
                .collect();
            let mut dropped = Vec::new();
            for key in keys {
                state.policy.remove(&key);
                if let Some(model) = state.models.remove(&key) {
                    self.log_eviction(&mut state, &key, model.weight, Reason::Unload, now);
                    dropped.push(model);
                }
            }
            dropped
        };
        let failed: Vec<Arc<FailureKey>> = self
            .failures
            .iter()
            .filter(|(key, _)| key.0 == *id)
            .map(|(key, _)| key)
            .collect();
        for key in failed {
            self.failures.invalidate(key.as_ref()).await;
        }
        self.lives().remove(id);
        self.resolving.invalidate(id).await;
        let count = dropped.len();
        if count > 0 {
            drop(dropped);
            self.freed.store(true, Ordering::Relaxed);
            self.trim_if_freed();
        }
        count
    }

    /// The models in memory now.
    pub fn resident(&self) -> Vec<Arc<LoadedModel>> {
        self.state().models.values().cloned().collect()
    }

    /// Brings the resident gauges up to date (called when metrics are scraped).
    pub fn refresh_gauges(&self) {
        let state = self.state();
        self.metrics.resident_bytes.set(state.policy.used() as i64);
        self.metrics.resident_models.set(state.models.len() as i64);
    }

    /// Takes a proxy's statistics push: combines it with the other proxies' latest and
    /// re-ranks the resident models. Returns the cache's summary for the proxy's pool view.
    pub fn apply_stats(&self, report: StatsReport) -> CacheSummary {
        let now = self.now();
        let combined = {
            let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            pool.apply(
                report,
                now,
                self.policy_config.stats_stale_after.as_secs_f64(),
            );
            pool.combined()
        };
        let rates = combined
            .into_iter()
            .filter_map(|(id, rate)| ModelId::parse(&id).ok().map(|id| (id, rate)));
        self.state().policy.set_pool_rates(rates, now);
        self.metrics.stats_pushes.inc();
        self.summary(20)
    }

    /// Warms the hottest models of this scorer's share that are not in memory (from the
    /// proxies' latest push), at most `warmup.concurrency` at once and
    /// `warmup.max_fraction × cache.budget` bytes in all. Skips models the policy refused
    /// and would refuse again, and stops early once it refuses one (everything resident is
    /// worth more). Returns the models loaded.
    pub async fn warm_up(&self) -> usize {
        if self.warming.swap(true, Ordering::AcqRel) {
            return 0;
        }
        let max_bytes = (self.config.budget.bytes() as f64 * self.warmup.max_fraction) as u64;
        // Models whose last admission was refused and would be again are not loaded: a
        // load the policy drops at once is pure cost.
        let candidates: Vec<(ModelId, f64)> = {
            let state = self.state();
            let mut hottest = state.policy.hottest_absent(256, self.now());
            hottest.retain(|(id, _)| !state.policy.refuses_again(id));
            hottest
        };
        let slots = Arc::new(Semaphore::new(self.warmup.concurrency.get()));
        let spent = AtomicU64::new(0);
        let refused = AtomicBool::new(false);
        let loaded = AtomicU64::new(0);
        let work = candidates.into_iter().map(|(id, _rate)| {
            let slots = slots.clone();
            let (spent, refused, loaded) = (&spent, &refused, &loaded);
            async move {
                let _slot = slots.acquire_owned().await.expect("never closed");
                if refused.load(Ordering::Relaxed) || spent.load(Ordering::Relaxed) >= max_bytes {
                    return;
                }
                if let Ok((model, Lookup::Miss)) = self.lookup(&id, None, false).await {
                    spent.fetch_add(model.weight, Ordering::Relaxed);
                    let key = ModelKey {
                        id,
                        version: model.version,
                    };
                    if self.state().models.contains_key(&key) {
                        loaded.fetch_add(1, Ordering::Relaxed);
                        self.metrics.warmup_loads.inc();
                    } else {
                        refused.store(true, Ordering::Relaxed);
                    }
                }
            }
        });
        futures::future::join_all(work).await;
        self.warming.store(false, Ordering::Release);
        loaded.load(Ordering::Relaxed) as usize
    }

    /// Counters and the most recent evictions.
    pub fn summary(&self, evictions: usize) -> CacheSummary {
        let state = self.state();
        CacheSummary {
            budget_bytes: self.config.budget.bytes(),
            resident_bytes: state.policy.used(),
            resident_models: state.models.len(),
            hits: self.metrics.cache_hits.get(),
            misses: self.metrics.cache_misses.get(),
            loads: self.metrics.loads.get(),
            loads_by_engine: Engine::ALL
                .iter()
                .map(|e| {
                    let n = self
                        .metrics
                        .engine_loads
                        .with_label_values(&[e.as_str()])
                        .get();
                    (e.as_str(), n)
                })
                .collect(),
            loaded_bytes: self.metrics.loaded_bytes.get(),
            uptime: self.now(),
            evictions: state
                .evictions
                .iter()
                .rev()
                .take(evictions)
                .cloned()
                .collect(),
        }
    }

    /// Everything the explain endpoint shows: the summary, every resident model with its
    /// priority (next to be evicted first), and the pool's hottest models for this scorer.
    pub fn explain(&self, hottest: usize) -> Explain {
        let now = self.now();
        let summary = self.summary(EVICTION_LOG);
        let state = self.state();
        let resident = state
            .policy
            .residents(now)
            .into_iter()
            .map(|r| ResidentView {
                engine: state
                    .models
                    .get(&r.key)
                    .map(|m| m.engine.as_str())
                    .unwrap_or("loading"),
                model: r.key.id.to_string(),
                version: r.key.version,
                bytes: r.bytes,
                load_seconds: r.load_seconds,
                priority: r.priority,
                idle_seconds: now - r.last_use,
                rate: r.local_rate,
                pool_rate: r.pool_rate,
            })
            .collect();
        let pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        let mut top: Vec<(String, f64)> = pool.combined().into_iter().collect();
        top.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        top.truncate(hottest);
        let resident_ids: std::collections::HashSet<String> =
            state.models.keys().map(|k| k.id.to_string()).collect();
        Explain {
            summary,
            proxies: pool.proxies(),
            resident,
            hottest: top
                .into_iter()
                .map(|(model, rate)| HotModel {
                    resident: resident_ids.contains(&model),
                    model,
                    rate,
                })
                .collect(),
        }
    }

    /// After evictions, give freed heap pages back to the OS so RSS follows the budget:
    /// glibc keeps freed memory in its arenas otherwise. Measured: with a trim after every
    /// eviction, RSS under churn stays within about one budget of the idle process; without,
    /// it grew to 2.4 budgets (BENCHMARKS.md). The trim runs on a blocking thread, off the
    /// request path.
    fn trim_if_freed(&self) {
        // A plain load first: most look-ups find nothing freed, and a swap would write
        // the shared cache line on every request.
        if self.freed.load(Ordering::Relaxed) && self.freed.swap(false, Ordering::Relaxed) {
            tokio::task::spawn_blocking(trim_heap);
        }
    }
}

/// A scorer's cache in numbers: the answer to a statistics push, and the head of the
/// explain endpoint.
#[derive(Clone, Debug, Serialize)]
pub struct CacheSummary {
    pub budget_bytes: u64,
    pub resident_bytes: u64,
    pub resident_models: usize,
    pub hits: u64,
    pub misses: u64,
    pub loads: u64,
    /// Loads by the engine that serves the model (`onnxruntime`, `native`).
    pub loads_by_engine: std::collections::BTreeMap<&'static str, u64>,
    pub loaded_bytes: u64,
    /// Seconds since the scorer started (eviction times count from it).
    pub uptime: f64,
    /// Most recent first.
    pub evictions: Vec<Eviction>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ResidentView {
    pub model: String,
    pub version: u64,
    /// The engine serving it: `onnxruntime` or `native`.
    pub engine: &'static str,
    pub bytes: u64,
    pub load_seconds: f64,
    /// ln(decayed request count) + size_weight × ln(load seconds / byte): higher stays.
    pub priority: f64,
    pub idle_seconds: f64,
    /// This scorer's own request rate (req/s, decayed).
    pub rate: f64,
    /// The pool-wide rate the proxies last reported.
    pub pool_rate: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct HotModel {
    pub model: String,
    pub rate: f64,
    pub resident: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Explain {
    #[serde(flatten)]
    pub summary: CacheSummary,
    /// Proxies whose statistics are current.
    pub proxies: usize,
    /// Lowest priority (next to be evicted) first.
    pub resident: Vec<ResidentView>,
    pub hottest: Vec<HotModel>,
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

/// The model file itself is at fault (422): ONNX Runtime refused it, or it failed the
/// checks a new version must pass.
fn invalid_model(id: &ModelId, version: u64, message: String) -> ScorerError {
    ScorerError::Load(LoadError {
        id: id.to_string(),
        version,
        message: message.into(),
        invalid_model: true,
    })
}

/// A store failure while looking a model up: the store is unavailable (503).
fn store_error(error: StoreError) -> ScorerError {
    ScorerError::Store(error.to_string())
}

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
