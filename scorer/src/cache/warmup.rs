//! Warm-up: after a statistics push, load the hottest models of this scorer's share that
//! are not in memory, within a byte allowance, skipping what the policy would refuse.
//! Each warm-up load is watched until its first hit (`mm_scorer_warmup_wasted_total`
//! counts the ones evicted or refused before serving anything). Warm-ups only fill free
//! room: none starts while residents and reservations take the whole budget.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::Semaphore;

use super::{Lookup, ModelCache, ModelKey};
use crate::model_id::ModelId;

impl ModelCache {
    /// Warms the hottest models of this scorer's share that are not in memory (from the
    /// proxies' latest push), at most `warmup.concurrency` at once and
    /// `warmup.max_fraction × cache.budget` bytes in all. Skips models the policy refused
    /// and would refuse again, and stops early once it refuses one (everything resident is
    /// worth more). Returns the models loaded, or `None` when a warm-up was already
    /// running (this one did nothing, and the share is not warm yet).
    pub async fn warm_up(&self) -> Option<usize> {
        if self.warming.swap(true, Ordering::AcqRel) {
            return None;
        }
        let max_bytes = (self.config.budget.bytes() as f64 * self.warmup.max_fraction) as u64;
        // Models whose last admission was refused and would be again are not loaded: a
        // load the policy drops at once is pure cost.
        let candidates: Vec<(ModelId, f64)> = {
            let state = self.state();
            let mut hottest = state.hottest_absent(256);
            hottest.retain(|(id, _)| !state.policy().refuses_again(id));
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
                // Only into free room: a warm-up's load reservation must not evict residents
                // (measured: with a full cache, 84% of warm-ups were evicted by the next
                // loads' reservations before serving anything).
                if !self.state().has_room() {
                    return;
                }
                if let Ok((model, Lookup::Miss)) = self.lookup(&id, None, false, false).await {
                    spent.fetch_add(model.weight, Ordering::Relaxed);
                    let key = ModelKey {
                        id,
                        version: model.version,
                    };
                    if self.state().contains(&key) {
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
        Some(loaded.load(Ordering::Relaxed) as usize)
    }
}

#[cfg(test)]
mod tests {
    use manymodels_policy::StatsReport;

    use super::super::testing::{Store, demo, id, local_cache};

    /// A push warms the hottest absent models; a warm-up that leaves memory before its
    /// first hit counts as wasted, one that served a request does not.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn warm_ups_load_the_hottest_absent_models_and_waste_is_counted() {
        let store = Store::new();
        for name in ["a", "b", "c"] {
            store.put(name, 1, &demo("linear-small"));
        }
        let cache = &local_cache(&store, |_| {});
        cache
            .apply_stats(
                StatsReport {
                    proxy: "p".into(),
                    models: vec![("a".into(), 30.0), ("b".into(), 20.0), ("c".into(), 10.0)],
                },
                usize::MAX,
            )
            .unwrap();
        // While one warm-up runs, another does nothing and says so (the scorer is not
        // ready on its account).
        cache
            .warming
            .store(true, std::sync::atomic::Ordering::Release);
        assert_eq!(cache.warm_up().await, None);
        cache
            .warming
            .store(false, std::sync::atomic::Ordering::Release);
        assert_eq!(cache.warm_up().await, Some(3));
        assert_eq!(cache.metrics.warmup_loads.get(), 3);
        // "a" serves a request from memory; then both leave.
        let (_, lookup) = cache.get(&id("a"), None).await.unwrap();
        assert_eq!(lookup, super::super::Lookup::Hit);
        assert_eq!(cache.unload(&id("a")).await, 1);
        assert_eq!(cache.unload(&id("b")).await, 1);
        assert_eq!(
            cache.metrics.warmup_wasted.get(),
            1,
            "only b was never used"
        );
        // Nothing absent is hot any more but a and b: a second warm-up loads them again.
        assert_eq!(cache.warm_up().await, Some(2));
    }
}
