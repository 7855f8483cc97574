//! Warm-up: after a statistics push, load the hottest models of this scorer's share that
//! are not in memory, within a byte allowance, skipping what the policy would refuse.
//! Each warm-up load is watched until its first hit (`mm_scorer_warmup_wasted_total`
//! counts the ones evicted or refused before serving anything).

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
                if let Ok((model, Lookup::Miss)) = self.lookup(&id, None, false).await {
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
        loaded.load(Ordering::Relaxed) as usize
    }
}
