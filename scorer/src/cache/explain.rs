//! What the cache shows: the summary a statistics push is answered with, and the explain
//! view (every resident with its priority, the pool's hottest models for this scorer).

use serde::Serialize;

use super::ModelCache;
use super::resident::EVICTION_LOG;
use crate::engine::Engine;
pub use manymodels_contract::CacheSummary;

impl ModelCache {
    /// Counters and the most recent evictions.
    pub fn summary(&self, evictions: usize) -> CacheSummary {
        let state = self.state();
        CacheSummary {
            budget_bytes: self.config.budget.bytes(),
            resident_bytes: state.policy().used(),
            reserved_bytes: state.reserved(),
            ceiling_bytes: state.ceiling(),
            resident_models: state.len(),
            warmup_loads: self.metrics.warmup_loads.get(),
            warmup_wasted: self.metrics.warmup_wasted.get(),
            too_large: self.metrics.too_large.get(),
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
                    (e.as_str().to_string(), n)
                })
                .collect(),
            loaded_bytes: self.metrics.loaded_bytes.get(),
            uptime: self.now(),
            evictions: state
                .evictions()
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
        let summary = self.summary(EVICTION_LOG);
        let state = self.state();
        let resident = state
            .residents()
            .into_iter()
            .map(|(r, idle_seconds)| ResidentView {
                engine: state
                    .model(&r.key)
                    .map(|m| m.engine.as_str())
                    .unwrap_or("loading"),
                model: r.key.id.to_string(),
                version: r.key.version,
                bytes: r.bytes,
                load_seconds: r.load_seconds,
                priority: r.priority,
                idle_seconds,
                rate: r.local_rate,
                pool_rate: r.pool_rate,
            })
            .collect();
        let pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        let mut top: Vec<(String, f64)> = pool.combined().into_iter().collect();
        top.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        top.truncate(hottest);
        let resident_ids: std::collections::HashSet<String> =
            state.models().map(|(k, _)| k.id.to_string()).collect();
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

#[cfg(test)]
mod tests {
    use super::super::Reason;
    use super::super::testing::{Store, demo, id, scorer};

    /// The summary and the explain view describe the same resident set: bytes add up,
    /// every resident is listed lowest priority first, evictions newest first.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_views_agree_with_the_resident_set() {
        let store = Store::new();
        store.put("small", 1, &demo("linear-small"));
        store.put("forest", 1, &demo("forest-1mb"));
        let scorer = scorer(&store, |_| {});
        let cache = &scorer.cache;
        for _ in 0..5 {
            cache.get(&id("small"), None).await.unwrap();
        }
        cache.get(&id("forest"), None).await.unwrap();
        let explain = cache.explain(10);
        assert_eq!(explain.summary.resident_models, 2);
        let listed: u64 = explain.resident.iter().map(|r| r.bytes).sum();
        assert_eq!(listed, explain.summary.resident_bytes);
        assert_eq!(explain.summary.reserved_bytes, 0, "no load in flight");
        assert!(explain.summary.ceiling_bytes > explain.summary.budget_bytes);
        assert!(
            explain
                .resident
                .windows(2)
                .all(|w| w[0].priority <= w[1].priority)
        );
        assert!(explain.resident.iter().all(|r| r.engine == "native"));
        let small = explain
            .resident
            .iter()
            .find(|r| r.model == "small")
            .unwrap();
        assert!(small.rate > 0.0 && small.load_seconds > 0.0);
        cache.unload(&id("small")).await;
        cache.unload(&id("forest")).await;
        let summary = cache.summary(10);
        assert_eq!(summary.resident_models, 0);
        let gone: Vec<&str> = summary.evictions.iter().map(|e| e.model.as_str()).collect();
        assert_eq!(gone, ["forest", "small"], "newest first");
        assert!(summary.evictions.iter().all(|e| e.reason == Reason::Unload));
    }
}
