//! The hot cache: loaded models bounded by bytes, with single-flight loads, ranked by the
//! pool-wide policy of `manymodels-policy`.
//!
//! Every request is counted, and a miss is loaded (once, however many requests wait for
//! it: a per-key `OnceCell`), served, and then **admitted** only if every resident it
//! would displace has a lower priority (rate × load cost per byte, where the rate is the
//! larger of this scorer's own decayed count and the pool-wide rate the proxies push).
//! Requests hold an `Arc`, so eviction never pulls a model from under a request: it is
//! freed when its last request finishes.
//!
//! The seams:
//! - `resident`: the resident set, the policy, the memory reserved by loads in flight and
//!   the eviction log, under one lock (pure; unit-tested).
//! - `loader`: the low-priority load threads, a load's cost (thread CPU time plus the store
//!   read) and how much memory a load reserves.
//! - `versions`: which version is live, version checks, swaps, publish and pin.
//! - `canary`: the split of unversioned inference requests between the live version and
//!   a canary, and the canary admin calls.
//! - `warmup`: loading the pool's hottest absent models after a statistics push.
//! - `explain`: the summary and explain views.
//!
//! This file is the request path: look-up, single flight, failures remembered for
//! `cache.failure_ttl` (a broken model answers fast instead of being reloaded by every
//! request), and a load from the store read to admission.
//!
//! moka is kept for the two small caches with expiry (live versions, failures); the
//! resident set is not a moka cache because its eviction and admission must follow the
//! pool's statistics (BENCHMARKS.md, "Cache policy", measures moka's W-TinyLFU against it).

mod bounds;
mod canary;
mod explain;
mod ledger;
mod loader;
mod pressure;
mod resident;
mod versions;
mod warmup;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use manymodels_config::scorer::{CacheConfig, PolicyConfig, VersionsConfig, WarmupConfig};
use manymodels_policy::{Key, Policy, PoolView, StatsReport};
use moka::Expiry;
use moka::future::Cache;

use manymodels_config::scorer::NativeEngine;
use serde::Serialize;
use tokio::sync::{Notify, OnceCell, Semaphore};

use bounds::Waiting;
pub use canary::CanaryStatus;
use canary::Split;
pub use explain::{
    CacheSummary, Explain, HotModel, ModelEviction, ModelExplain, RankedResident, ResidentView,
};
pub(crate) use ledger::trim_heap;
use ledger::{Ledger, Reservation};
use loader::{LoadThreads, Phase};
use resident::Resident;

use crate::engine::{Engines, LoadedModel, Native};
use crate::error::{LoadError, ScorerError};
use crate::images::Images;
use crate::metrics::Metrics;
use crate::model_id::ModelId;
use crate::store::{ModelState, ModelStore, StoreError};

/// How long "this model does not exist" is remembered, so a storm of requests for an
/// unknown id does not turn into a storm of store listings, while a newly published model
/// is found within a second.
const NOT_FOUND_TTL: Duration = Duration::from_secs(1);

/// How long a version that can never fit the budget is remembered: the budget does not
/// change while the process runs, and a new version is a new key.
const TOO_LARGE_TTL: Duration = Duration::from_secs(3600);

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

pub use manymodels_contract::{Eviction, EvictionReason as Reason, Lookup};

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
    /// The store's canary as of `checked`, and its counts here.
    split: Option<Split>,
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
            split: None,
        });
        live.checked = Instant::now();
        live
    }

    /// Where the next request that names no version goes: `(version, to_canary)`. With
    /// `split`, an inference request, the canary takes its share; otherwise (metadata,
    /// readiness, warm loads) the live version.
    fn target(&mut self, split: bool, metrics: &Metrics) -> (u64, bool) {
        let Some(canary) = self.split.as_mut().filter(|_| split) else {
            return (self.version, false);
        };
        let to_canary = canary.pick();
        metrics.canary_requests[usize::from(to_canary)].inc();
        if to_canary {
            (canary.canary.version, true)
        } else {
            (self.version, false)
        }
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
    /// The store's canary, with this scorer's counts.
    pub canary: Option<CanaryStatus>,
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

pub struct ModelCache {
    store: Arc<dyn ModelStore>,
    engines: Engines,
    ledger: Arc<Ledger>,
    loads: LoadThreads,
    /// Loads from native images: the same slots (`load_slots`), normal priority.
    image_loads: LoadThreads,
    inflight: Mutex<HashMap<ModelKey, LoadCell>>,
    /// Requests waiting for loads (`cache.max_waiting`, `cache.max_waiting_per_model`).
    waiting: Mutex<Waiting>,
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
    /// The last known size of models that were resident, for the working set.
    sizes: Mutex<pressure::Sizes>,
    load_slots: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    config: CacheConfig,
    policy_config: PolicyConfig,
    warmup: WarmupConfig,
    warming: AtomicBool,
    started: Instant,
    /// Set when an eviction freed a session; cleared by the next trim.
    freed: AtomicBool,
    /// Native images of compiled models (`images.dir`), `None` when off.
    images: Option<Arc<Images>>,
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
                half_life: policy_config.half_life_requests as f64,
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
            ledger: Arc::new(Ledger {
                state: Mutex::new(Resident::new(
                    policy,
                    resident::LOAD_ALLOWANCE,
                    metrics.clone(),
                )),
                released: Notify::new(),
                metrics: metrics.clone(),
            }),
            loads: LoadThreads::new(config.max_concurrent_loads.get()),
            image_loads: LoadThreads::for_images(config.max_concurrent_loads.get()),
            inflight: Mutex::new(HashMap::new()),
            waiting: Mutex::new(Waiting::default()),
            live: Mutex::new(HashMap::new()),
            resolving: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(1))
                .build(),
            versions,
            failures,
            pool: Mutex::new(PoolView::default()),
            sizes: Mutex::default(),
            load_slots: Arc::new(Semaphore::new(config.max_concurrent_loads.get())),
            metrics,
            config,
            policy_config,
            warmup,
            warming: AtomicBool::new(false),
            started: Instant::now(),
            freed: AtomicBool::new(false),
            images: None,
        }
    }

    /// Loads natively compiled models from `images` when it holds their image, and writes
    /// one after every native compile.
    pub fn with_images(mut self, images: Arc<Images>) -> Self {
        self.images = Some(images);
        self
    }

    /// Seconds since start: the policy's clock.
    fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    fn state(&self) -> MutexGuard<'_, Resident<LoadedModel>> {
        self.ledger.state()
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
        self.lookup(id, version, true, false).await
    }

    /// The model an inference request runs on: `version` when it names one, else the
    /// canary's version for the canary's share of requests (`canary`), else the live one.
    pub async fn get_for_inference(
        &self,
        id: &ModelId,
        version: Option<u64>,
    ) -> Result<(Arc<LoadedModel>, Lookup), ScorerError> {
        self.lookup(id, version, true, true).await
    }

    /// `get`, optionally without counting a request (warm-up loads are not demand), and
    /// with the canary's split (`split`) for a request that names no version.
    async fn lookup(
        &self,
        id: &ModelId,
        version: Option<u64>,
        count: bool,
        split: bool,
    ) -> Result<(Arc<LoadedModel>, Lookup), ScorerError> {
        self.trim_if_freed();
        let Some(version) = version else {
            let (live, to_canary) = self.live_version(id, split).await?;
            if to_canary {
                // The canary's share gets the canary's version, errors included: no
                // fall-back hides a broken canary.
                return self.lookup_version(id, live, count).await;
            }
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
        let now = self.now();
        if let Some(model) = self.state().lookup(&key, now, count) {
            if count {
                self.metrics.cache_hits.inc();
            }
            return Ok((model, Lookup::Hit));
        }
        if let Some(failure) = self.failures.get(&(id.clone(), Some(version))).await {
            if matches!(failure.error, ScorerError::Load(_)) {
                self.metrics.failed_fast.inc();
            }
            return Err(failure.error);
        }
        let _waiting = self.wait_for_load(id)?;
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
            .get_or_init(|| self.load_within_deadline(key.clone(), !count))
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

    /// `load_and_admit` within `cache.load_timeout`, the load's own deadline whoever waits
    /// for it. Past it the load is abandoned: every waiter gets a 503 with `Retry-After`
    /// and the failure is remembered for `cache.failure_ttl`, so requests do not pile
    /// reload upon reload.
    async fn load_within_deadline(
        &self,
        key: ModelKey,
        warmup: bool,
    ) -> Result<Arc<LoadedModel>, ScorerError> {
        let loaded = self
            .within_load_timeout(&key, self.load_and_admit(key.clone(), warmup))
            .await;
        if let Err(error @ ScorerError::LoadTimeout { .. }) = &loaded {
            self.remember(
                (key.id.clone(), Some(key.version)),
                error.clone(),
                self.config.failure_ttl,
            )
            .await;
        }
        loaded
    }

    /// `work`, a load of `key` (and what follows it on the load threads), within
    /// Loads `key`, then lets the policy decide whether it stays (`warmup`: loaded ahead
    /// of demand, watched until its first hit).
    async fn load_and_admit(
        &self,
        key: ModelKey,
        warmup: bool,
    ) -> Result<Arc<LoadedModel>, ScorerError> {
        let (model, cost, reservation) = self.load(key.clone()).await?;
        let now = self.now();
        let admitted = self.state().admit(key, model.clone(), cost, now, warmup);
        if !admitted.admitted {
            // Served, not kept: its memory stays accounted until the requests holding it
            // finish, and the next look-up trims the heap.
            self.keep_accounted(&model);
            self.freed.store(true, Ordering::Relaxed);
        }
        // The model is charged (or held) now: the load's reservation goes back.
        drop(reservation);
        self.dropped(admitted.dropped);
        Ok(model)
    }

    async fn remember(&self, key: FailureKey, error: ScorerError, ttl: Duration) {
        self.failures.insert(key, Failure { error, ttl }).await;
    }

    /// The single-flight body: runs once per key however many requests wait on it.
    /// Returns the model, what its load cost (thread CPU seconds of the compile or session
    /// creation plus the store read's seconds) and its memory reservation, to be dropped
    /// once the model is charged. Time queued for a load slot, a reservation or a core is
    /// not the model's cost: counting it would rank the models of a burst of cold loads (a
    /// scan) above the hot set.
    async fn load(
        &self,
        key: ModelKey,
    ) -> Result<(Arc<LoadedModel>, f64, Reservation), ScorerError> {
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
            Ok((model, cost, _)) => {
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
                    ms = seconds * 1e3, cost_ms = cost * 1e3,
                    "model loaded"
                );
            }
            Err(error) => {
                let ttl = match error {
                    ScorerError::VersionNotFound { .. } => Some(NOT_FOUND_TTL),
                    ScorerError::TooLarge { .. } => {
                        self.metrics.too_large.inc();
                        tracing::warn!(model = %key.id, %error, "model can never fit");
                        Some(TOO_LARGE_TTL)
                    }
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
        result.map(|(model, cost, reservation)| (Arc::new(model), cost, reservation))
    }

    async fn read_and_create(
        &self,
        key: &ModelKey,
    ) -> Result<(LoadedModel, f64, Reservation), ScorerError> {
        let (id, version) = (&key.id, key.version);
        let not_found = |e: StoreError| match e {
            StoreError::NotFound => ScorerError::VersionNotFound {
                id: id.to_string(),
                version: version.to_string(),
            },
            other => ScorerError::Store(other.to_string()),
        };
        let read_started = Instant::now();
        // With images on, the store's tag of the file (one `stat` or `HEAD`) says whether
        // an image compiled from exactly this file can stand in for it.
        let tag = match &self.images {
            Some(_) if self.engines.native == NativeEngine::Auto => Some(
                self.store
                    .source_tag(id, version)
                    .await
                    .map_err(not_found)?,
            ),
            _ => None,
        };
        let tagged = read_started.elapsed().as_secs_f64();
        if let Some(tag) = &tag
            && let Some((model, cpu, reservation)) = self.load_from_image(key, tag).await?
        {
            return Ok((model, tagged + cpu, reservation));
        }
        let bytes = self.store.read(id, version).await.map_err(not_found)?;
        let read = read_started.elapsed().as_secs_f64();
        let (model, cost, reservation) = self.create(key, bytes, tag, read).await?;
        tracing::debug!(
            model = %id, version,
            read_ms = read * 1e3,
            cost_ms = cost * 1e3,
            "load phases"
        );
        Ok((model, cost, reservation))
    }

    /// The model from its image in `images.dir`, when there is one compiled from the file
    /// `tag` names; `None` (and the image deleted) when it is missing, stale or corrupt,
    /// and the caller compiles the file. Reserves the image's size only: the model's arrays
    /// are the image's bytes (mapped, or read into one buffer when small).
    async fn load_from_image(
        &self,
        key: &ModelKey,
        tag: &str,
    ) -> Result<Option<(LoadedModel, f64, Reservation)>, ScorerError> {
        let Some(images) = self.images.clone() else {
            return Ok(None);
        };
        // Two system calls (open, fstat): not worth a trip to a blocking thread.
        let Some((file, len)) = images.open_image(&key.id, key.version) else {
            return Ok(None);
        };
        if !self.state().fits(len) {
            // No model that fits the budget has an image this large: a damaged file. The
            // compile decides whether the model itself fits (a 507 is the file's to give).
            images.remove(&key.id, key.version);
            self.metrics.images.with_label_values(&["corrupt"]).inc();
            return Ok(None);
        }
        let reservation = self.reserve(key, Phase::Image, len).await?;
        let engines = self.engines;
        let (id, version, tag) = (key.id.clone(), key.version, tag.to_string());
        let (loaded, cpu, reservation) = self
            .image_loads
            .run_holding(false, reservation, move || {
                let loaded = engines.load_image(id.clone(), version, &file, len, &tag);
                if loaded.is_err() {
                    images.remove(&id, version);
                }
                loaded
            })
            .await
            .map_err(ScorerError::Store)?;
        match loaded {
            Ok(model) => {
                self.metrics.images.with_label_values(&["loaded"]).inc();
                self.fitting(key, model, cpu, reservation).map(Some)
            }
            Err(error) => {
                let event = match error {
                    manymodels_native::ImageError::Stale(_) => "stale",
                    manymodels_native::ImageError::Corrupt(_) => "corrupt",
                };
                self.metrics.images.with_label_values(&[event]).inc();
                tracing::warn!(model = %key.id, version = key.version, %error, "image not used; compiling the model file");
                Ok(None)
            }
        }
    }

    /// Compiles or creates a model from its file on a load thread, with its memory
    /// reserved first: natively when the engine covers it, else with ONNX Runtime (whose
    /// larger reservation is taken only then). Returns the model, what loading it again
    /// costs (the `read` seconds of the file plus the CPU seconds it took; for a model
    /// whose image was just written, the image's load) and its reservation. A model that
    /// could never fit the budget is refused before anything is evicted for it.
    async fn create(
        &self,
        key: &ModelKey,
        bytes: bytes::Bytes,
        tag: Option<String>,
        read: f64,
    ) -> Result<(LoadedModel, f64, Reservation), ScorerError> {
        let (id, version) = (&key.id, key.version);
        let file = bytes.len() as u64;
        // The file is in memory already: accounted at once, whatever waits next.
        // The file and the reservations travel with the work on the load thread
        // (`run_holding`): a load abandoned at `cache.load_timeout` keeps its memory
        // accounted until its thread is done with it.
        let mut file_hold = self.hold(file);
        let engines = self.engines;
        let mut cpu = read;
        let mut refusal = None;
        if self.engines.native == NativeEngine::Auto {
            let reservation = self.reserve(key, Phase::Native, file).await?;
            let (model_id, file_bytes) = (id.clone(), bytes.clone());
            let trims = reservation.trims();
            let images = self.images.clone().zip(tag);
            let ((native, written), seconds, (reservation, held)) = self
                .loads
                .run_holding(trims, (reservation, file_hold), move || {
                    let native = engines.load_native(model_id.clone(), version, &file_bytes);
                    // The image is written while the load still holds its reservation
                    // (the image's buffer is smaller than the file it was compiled from).
                    let written = match (&native, images) {
                        (Ok(Native::Loaded(model)), Some((images, tag))) => {
                            Some(write_image(&images, &model_id, version, model, &tag))
                        }
                        _ => None,
                    };
                    (native, written)
                })
                .await
                .map_err(ScorerError::Store)?;
            file_hold = held;
            cpu += seconds;
            match written {
                Some(Ok(written)) => {
                    self.metrics.images.with_label_values(&["written"]).inc();
                    self.metrics
                        .images
                        .with_label_values(&["evicted"])
                        .inc_by(written.evicted as u64);
                    // What the next load of this model costs is reading its image, not
                    // the read and compile (and image write) just done.
                    cpu = image_load_seconds(written.bytes);
                }
                Some(Err(error)) => {
                    tracing::warn!(model = %id, version, %error, "could not write the image");
                }
                None => {}
            }
            match native.map_err(|message| invalid_model(id, version, message))? {
                Native::Loaded(model) => return self.fitting(key, *model, cpu, reservation),
                Native::Refused(why) => refusal = why,
            }
        }
        let reservation = self.reserve(key, Phase::OnnxRuntime, file).await?;
        let estimate = self.config.weigh(file);
        let model_id = id.clone();
        let trims = reservation.trims();
        let (created, seconds, (reservation, _file)) = self
            .loads
            .run_holding(trims, (reservation, file_hold), move || {
                engines.load_onnx(model_id, version, &bytes, estimate, refusal)
            })
            .await
            .map_err(ScorerError::Store)?;
        cpu += seconds;
        let model = created.map_err(|message| invalid_model(id, version, message))?;
        self.fitting(key, model, cpu, reservation)
    }

    /// Loads the live version now (repository `load`). Returns the version loaded.
    pub async fn warm(&self, id: &ModelId) -> Result<u64, ScorerError> {
        self.get(id, None).await.map(|(model, _)| model.version)
    }

    /// Drops every cached version of `id` and forgets its failures. Returns how many
    /// sessions were dropped.
    pub async fn unload(&self, id: &ModelId) -> usize {
        let now = self.now();
        let dropped = self.state().unload(id, now);
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
        self.dropped(dropped);
        count
    }

    /// The models in memory now.
    pub fn resident(&self) -> Vec<Arc<LoadedModel>> {
        self.state().models().map(|(_, m)| m.clone()).collect()
    }

    /// Brings the resident gauges up to date (called when metrics are scraped).
    pub fn refresh_gauges(&self) {
        let state = self.state();
        self.metrics
            .resident_bytes
            .set(state.policy().used() as i64);
        self.metrics.resident_models.set(state.len() as i64);
        self.metrics.reserved_bytes.set(state.reserved() as i64);
        drop(state);
        let working_set = self.working_set();
        self.metrics
            .working_set_bytes
            .set(i64::try_from(working_set).unwrap_or(i64::MAX));
    }

    /// Takes a proxy's statistics push: combines it with the other proxies' latest and
    /// re-ranks the resident models. Returns the cache's summary for the proxy's pool view.
    /// Refused when a new proxy would exceed `max_sources` (the view keeps the others).
    pub fn apply_stats(
        &self,
        report: StatsReport,
        max_sources: usize,
    ) -> Result<CacheSummary, manymodels_policy::StatsRefusal> {
        let now = self.now();
        let combined = {
            let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            pool.apply_bounded(
                report,
                now,
                self.policy_config.stats_stale_after.as_secs_f64(),
                max_sources,
            )?;
            pool.combined()
        };
        let rates = combined
            .into_iter()
            .filter_map(|(id, rate)| ModelId::parse(&id).ok().map(|id| (id, rate)));
        self.state().set_pool_rates(rates, now);
        self.metrics.stats_pushes.inc();
        Ok(self.summary(20))
    }
}

/// Writes `model`'s image (on the load thread that compiled it).
fn write_image(
    images: &Images,
    id: &ModelId,
    version: u64,
    model: &LoadedModel,
    tag: &str,
) -> Result<crate::images::Written, String> {
    let image = model
        .image(tag)
        .ok_or_else(|| "the model's layout cannot be imaged".to_string())?;
    images
        .write(id, version, &image)
        .map_err(|e| format!("{}: {e}", images.dir().display()))
}

/// Seconds a load from an image of `bytes` costs: the policy's reload cost of a model
/// that has an image (measured by `cargo xtask bench images`: about 0.15 ns per byte
/// mapped, hashed and checked, plus the fixed cost of a load).
fn image_load_seconds(bytes: u64) -> f64 {
    const FIXED: f64 = 100e-6;
    const PER_BYTE: f64 = 0.15e-9;
    FIXED + bytes as f64 * PER_BYTE
}

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

#[cfg(test)]
pub(crate) mod testing;
