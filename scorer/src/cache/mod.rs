//! The hot cache: loaded models bounded by bytes, with single-flight loads, ranked by the
//! pool-wide policy of `manymodels-policy`.
//!
//! Every request is counted, and a miss is loaded (once, however many requests wait for
//! it), served, and then **admitted** only if every resident it would displace has a lower
//! priority (rate × load cost per byte, where the rate is the larger of this scorer's own
//! decayed count and the pool-wide rate the proxies push). Requests hold an `Arc`, so
//! eviction never pulls a model from under a request: it is freed when its last request
//! finishes.
//!
//! `ModelCache` composes components that each own their state behind their own lock and
//! are unit-tested alone:
//! - `ledger::Ledger`: the resident set (`resident`: the policy, the memory reserved by
//!   loads in flight and the eviction log; pure), the reservations that give their bytes
//!   back on drop, the policy's clock, and trimming the heap after frees.
//! - `lives::Lives`: which version of each model is live here, the one before it, a
//!   refused version and the canary split read with it, and the store look-ups that find
//!   them.
//! - `failures::Failures`: failures remembered for their own time to live.
//! - `flight::Flights`: single flight, one load per key.
//! - `bounds::Waiters`: how many requests may wait for loads.
//! - `pool::PoolRates` and `pressure::Sizes`: the proxies' statistics and the working set.
//! - `loader::LoadThreads`: the load threads, a load's cost and its reservation's size.
//! - `slots::Slots`: the load slots, taken by priority (`batch` requests within
//!   `cache.batch_load_share`, behind interactive ones).
//! - `shadow::Shadows`: each model's shadow as followed from the store, its sampling, its
//!   counts, and the queue of shadow jobs.
//!
//! What the composition does with them, by file: the request path (this file), a miss
//! from the store read to a loaded model (`miss`), version checks, swaps, publish and pin
//! (`versions`), canaries (`canary`), shadows (`shadow`), warm-ups after a statistics push (`warmup`) and the
//! summary and explain views (`explain`). The lock order, where two are held: the resident
//! set before the pool's statistics; `Lives` never holds its lock while calling out.
//!
//! moka is kept for the two small caches with expiry (store look-ups, failures); the
//! resident set is not a moka cache because its eviction and admission must follow the
//! pool's statistics (BENCHMARKS.md, "Cache policy", measures moka's W-TinyLFU against it).

mod bounds;
mod canary;
mod explain;
mod failures;
mod flight;
mod ledger;
mod lives;
mod loader;
mod miss;
mod pool;
mod pressure;
mod resident;
mod shadow;
mod slots;
mod versions;
mod warmup;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, MutexGuard};

use manymodels_config::scorer::{CacheConfig, PolicyConfig, VersionsConfig, WarmupConfig};
use manymodels_contract::Priority;
use manymodels_policy::{Key, Policy, StatsReport, Tenants};
use tracing::Instrument;

use bounds::Waiters;
pub use explain::CacheSummary;
use failures::Failures;
use flight::Flights;
pub(crate) use ledger::trim_heap;
use ledger::{Ledger, Reservation};
use lives::Lives;
use loader::LoadThreads;
use miss::invalid_model;
use pool::PoolRates;
use resident::Resident;
use shadow::Shadows;
pub use shadow::{Comparison, Job, JobQueue, MAX_SHADOWS, NO_ROOM_RETRY, Sampled, compare};
use slots::Slots;

use crate::engine::{Engines, LoadedModel};
use crate::error::ScorerError;
use crate::images::Images;
use crate::metrics::Metrics;
use crate::model_id::ModelId;
use crate::store::ModelStore;

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
    fn text(model: &ModelId) -> std::borrow::Cow<'_, str> {
        std::borrow::Cow::Borrowed(model.as_str())
    }
}

/// `tenants.shares` as the policy takes them (already checked by the configuration).
fn tenants(config: &CacheConfig) -> Tenants {
    let shares = config
        .tenants
        .iter()
        .map(|s| manymodels_policy::Share {
            name: s.name.clone(),
            prefixes: s.prefixes.clone(),
            floor: s.floor,
            cap: s.cap,
        })
        .collect();
    Tenants::new(shares).expect("tenants.shares is checked by the configuration")
}

pub use manymodels_contract::{Eviction, EvictionReason as Reason, Lookup};
// The views this cache fills, typed in the contract (their JSON is the admin API's).
pub use manymodels_contract::explain::{
    Explain, HotModel, ModelEviction, ModelExplain, RankedResident, ResidentView,
};
pub use manymodels_contract::versions::{CanaryStatus, Refresh, Refusal, VersionStatus};

/// The hot cache: the components below, composed. Each owns its state behind its own
/// lock; the request path (this file), versions, canaries, warm-ups and the views are
/// what the composition does with them.
pub struct ModelCache {
    store: Arc<dyn ModelStore>,
    engines: Engines,
    /// The resident set, the reservations and the policy's clock.
    ledger: Arc<Ledger>,
    loads: LoadThreads,
    /// Loads from native images: the same slots (`load_slots`), normal priority.
    image_loads: LoadThreads,
    /// `cache.max_concurrent_loads` slots, `cache.batch_load_share` of them for batch.
    load_slots: Arc<Slots>,
    /// Loads in flight: one per key, whoever waits for it.
    flights: Flights<ModelKey, Result<Arc<LoadedModel>, ScorerError>>,
    /// Requests waiting for loads (`cache.max_waiting`, `cache.max_waiting_per_model`).
    waiters: Waiters,
    /// The live version of each model seen.
    lives: Lives,
    failures: Failures,
    /// The proxies' statistics.
    pool: PoolRates,
    /// The last known size of models that were resident, for the working set.
    sizes: pressure::Sizes,
    metrics: Arc<Metrics>,
    config: CacheConfig,
    versions: VersionsConfig,
    warmup: WarmupConfig,
    warming: AtomicBool,
    /// Native images of compiled models (`images.dir`), `None` when off.
    images: Option<Arc<Images>>,
    /// Each model's shadow, its counts and the shadow jobs' queue.
    shadows: Shadows,
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
        let policy = Policy::with_tenants(
            config.budget.bytes(),
            manymodels_policy::PolicyConfig {
                half_life: policy_config.half_life_requests as f64,
                size_weight: policy_config.size_weight,
                ..manymodels_policy::PolicyConfig::default()
            },
            tenants(&config),
        );
        let threads = config.max_concurrent_loads.get();
        let metrics_for_shadows = metrics.clone();
        ModelCache {
            store,
            engines,
            ledger: Ledger::new(
                Resident::new(policy, resident::LOAD_ALLOWANCE, metrics.clone()),
                metrics.clone(),
            ),
            loads: LoadThreads::new(threads),
            image_loads: LoadThreads::for_images(threads),
            load_slots: Slots::new(threads, config.batch_load_slots()),
            flights: Flights::new(),
            waiters: Waiters::new(config.max_waiting.get(), config.max_waiting_per_model.get()),
            lives: Lives::new(versions.check_interval, config.failure_ttl),
            failures: Failures::new(),
            pool: PoolRates::new(policy_config.stats_stale_after.as_secs_f64()),
            sizes: pressure::Sizes::default(),
            metrics,
            config,
            versions,
            warmup,
            warming: AtomicBool::new(false),
            images: None,
            shadows: Shadows::with_defaults(metrics_for_shadows),
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
        self.ledger.now()
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
        self.ledger.trim_if_freed();
        crate::request::record_model(id);
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
        if let Some(error) = self.failures.get(&(id.clone(), Some(version))).await {
            if matches!(error, ScorerError::Load(_)) {
                self.metrics.failed_fast.inc();
            }
            return Err(error);
        }
        let _waiting = self.waiters.enter(id)?;
        if count {
            self.metrics.cache_misses.inc();
        }
        // Read on the request's task: the load's slot is taken by this priority.
        let priority = crate::request::priority();
        // Spans (`debug`: built only when exported): this request's wait, and the load it
        // started when it is the first to miss (the load's work on the load threads is a
        // child of that, `loader::LoadThreads::run_holding`).
        // Only under a recorded request: an unsampled one starts no trace of its own.
        let traced = manymodels_boot::telemetry::traced_here();
        let wait = if traced {
            tracing::debug_span!("load.wait", model = %id, version)
        } else {
            tracing::Span::none()
        };
        let result = self
            .flights
            .join(&key, || {
                let load = if traced {
                    tracing::debug_span!("load", model = %id, version, warmup = !count)
                } else {
                    tracing::Span::none()
                };
                self.load_within_deadline(key.clone(), !count, priority)
                    .instrument(load)
            })
            .instrument(wait)
            .await;
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
        priority: Priority,
    ) -> Result<Arc<LoadedModel>, ScorerError> {
        let loaded = self
            .within_load_timeout(&key, self.load_and_admit(key.clone(), warmup, priority))
            .await;
        if let Err(error @ ScorerError::LoadTimeout { .. }) = &loaded {
            self.failures
                .remember(
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
        priority: Priority,
    ) -> Result<Arc<LoadedModel>, ScorerError> {
        let (model, cost, reservation) = self.load(key.clone(), priority).await?;
        let now = self.now();
        let admitted = self.state().admit(key, model.clone(), cost, now, warmup);
        if !admitted.admitted {
            // Served, not kept: its memory stays accounted until the requests holding it
            // finish, and the next look-up trims the heap.
            self.ledger.keep_accounted(&model);
            self.ledger.mark_freed();
        }
        // The model is charged (or held) now: the load's reservation goes back.
        drop(reservation);
        self.ledger.dropped(admitted.dropped);
        Ok(model)
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
        self.failures.forget(id).await;
        self.lives.remove(id);
        self.lives.invalidate(id).await;
        let count = dropped.len();
        self.ledger.dropped(dropped);
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
        let combined = self.pool.apply(report, now, max_sources)?;
        let rates = combined
            .into_iter()
            .filter_map(|(id, rate)| ModelId::parse(&id).ok().map(|id| (id, rate)));
        self.state().set_pool_rates(rates, now);
        self.metrics.stats_pushes.inc();
        Ok(self.summary(20))
    }
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use super::testing::{MemoryStore, demo, id, native_cache};
    use super::*;

    /// Concurrent first requests share one load; later ones are hits.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_misses_load_a_model_once() {
        let store = MemoryStore::new();
        store.put("m", 1, &demo("forest-1mb"));
        let cache = native_cache(store.clone(), |_| {});
        let gets: Vec<_> = (0..8)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move { cache.get(&id("m"), None).await.unwrap() })
            })
            .collect();
        let mut models = Vec::new();
        for get in gets {
            models.push(get.await.unwrap().0);
        }
        assert!(models.iter().all(|m| Arc::ptr_eq(m, &models[0])));
        assert_eq!(cache.metrics.loads.get(), 1);
        assert_eq!(store.reads.load(Ordering::SeqCst), 1);
        let (_, lookup) = cache.get(&id("m"), None).await.unwrap();
        assert_eq!(lookup, Lookup::Hit);
    }

    /// A store outage answers 503 and is not remembered: the next request after it ends
    /// loads the model. A missing model is remembered for a second, then found.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_outage_is_not_remembered_and_a_missing_model_only_briefly() {
        let store = MemoryStore::new();
        let cache = native_cache(store.clone(), |_| {});
        store.set_unavailable(true);
        let error = cache.get(&id("m"), None).await.unwrap_err();
        assert!(matches!(error, ScorerError::Store(_)), "{error}");
        store.set_unavailable(false);
        let error = cache.get(&id("m"), None).await.unwrap_err();
        assert!(matches!(error, ScorerError::ModelNotFound(_)), "{error}");
        store.put("m", 1, &demo("linear-small"));
        let lookups = store.lookups.load(Ordering::SeqCst);
        let error = cache.get(&id("m"), None).await.unwrap_err();
        assert!(matches!(error, ScorerError::ModelNotFound(_)), "remembered");
        assert_eq!(
            store.lookups.load(Ordering::SeqCst),
            lookups,
            "not asked again"
        );
        tokio::time::sleep(miss::NOT_FOUND_TTL + Duration::from_millis(200)).await;
        let (model, lookup) = cache.get(&id("m"), None).await.unwrap();
        assert_eq!((model.version, lookup), (1, Lookup::Miss));
    }

    /// Tenant A floods the cache with models each asked for more often than B's: B keeps
    /// its floor (half the budget) throughout, and `summary` shows both tenants. Without
    /// the floor the same flood takes B's place.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_floor_holds_while_another_tenant_floods_the_cache() {
        let store = MemoryStore::new();
        let model = demo("linear-small");
        for i in 0..10 {
            store.put(&format!("b-{i}"), 1, &model);
        }
        for i in 0..60 {
            store.put(&format!("a-{i}"), 1, &model);
        }
        let weight = {
            let probe = native_cache(store.clone(), |_| {});
            probe.get(&id("b-0"), None).await.unwrap().0.weight
        };
        let b_resident = |floor: f64| {
            let store = store.clone();
            async move {
                let cache = native_cache(store, |config| {
                    // Room for 16 models; B's 10 are 62.5% of it.
                    config.cache.budget = manymodels_config::ByteSize(16 * weight);
                    config.cache.tenants = vec![
                        manymodels_config::scorer::TenantShare {
                            name: "b".into(),
                            prefixes: vec!["b-".into()],
                            floor,
                            cap: 1.0,
                        },
                        manymodels_config::scorer::TenantShare {
                            name: "a".into(),
                            prefixes: vec!["a-".into()],
                            floor: 0.0,
                            cap: 1.0,
                        },
                    ];
                });
                for i in 0..10 {
                    cache.get(&id(&format!("b-{i}")), None).await.unwrap();
                }
                let mut lowest = u64::MAX;
                for i in 0..60 {
                    for _ in 0..3 {
                        cache.get(&id(&format!("a-{i}")), None).await.unwrap();
                    }
                    let summary = cache.summary(0);
                    assert_eq!(summary.tenants.len(), 3, "b, a and the default tenant");
                    assert!(summary.resident_bytes <= summary.budget_bytes);
                    lowest = lowest.min(summary.tenants[0].resident_bytes);
                }
                let summary = cache.summary(0);
                assert_eq!(summary.tenants[0].name, "b");
                assert_eq!(
                    summary.tenants[0].floor_bytes,
                    (floor * (16 * weight) as f64) as u64
                );
                assert!(summary.tenants[1].resident_bytes > 0, "A got the rest");
                lowest
            }
        };
        let floored = b_resident(0.5).await;
        assert!(
            floored >= 8 * weight,
            "B fell to {floored} bytes, under its floor of {}",
            8 * weight
        );
        let flooded = b_resident(0.0).await;
        assert!(
            flooded < 8 * weight,
            "without a floor the flood must take B's place: {flooded}"
        );
    }

    /// A batch request's load takes a batch slot, counted by priority; a request outside
    /// any request context (a warm-up) counts as interactive.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn loads_are_counted_by_the_priority_of_the_request_that_started_them() {
        let store = MemoryStore::new();
        store.put("m", 1, &demo("linear-small"));
        store.put("n", 1, &demo("linear-small"));
        let cache = native_cache(store.clone(), |_| {});
        crate::request::as_priority(Priority::Batch, cache.get(&id("m"), None))
            .await
            .unwrap();
        cache.get(&id("n"), None).await.unwrap();
        let counts: Vec<u64> = cache
            .metrics
            .loads_started
            .iter()
            .map(|c| c.get())
            .collect();
        assert_eq!(counts, vec![1, 1]);
        let summary = cache.summary(0);
        assert_eq!(summary.loads_by_priority["batch"], 1);
        assert!(summary.tenants.is_empty(), "no tenants configured");
    }

    /// A version that fails to load answers its error fast for `cache.failure_ttl`
    /// without another load; `unload` forgets it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_load_is_answered_fast_until_forgotten() {
        let store = MemoryStore::new();
        store.put("m", 1, b"not a model");
        let cache = native_cache(store.clone(), |config| {
            config.cache.failure_ttl = Duration::from_secs(60);
        });
        let first = cache.get(&id("m"), None).await.unwrap_err();
        assert!(matches!(first, ScorerError::Load(_)), "{first}");
        let second = cache.get(&id("m"), None).await.unwrap_err();
        assert_eq!(second.to_string(), first.to_string());
        assert_eq!(store.reads.load(Ordering::SeqCst), 1, "read once");
        assert_eq!(cache.metrics.failed_fast.get(), 1);
        cache.unload(&id("m")).await;
        store.put("m", 1, &demo("linear-small"));
        assert_eq!(cache.get(&id("m"), None).await.unwrap().0.version, 1);
    }
}
