//! What the cache shows: the summary a statistics push is answered with, the explain
//! view (every resident with its priority, the pool's hottest models for this scorer), and
//! one model's explanation (why it is or is not in memory here). The views are the
//! contract's types (`manymodels_contract::explain`); this fills them.

use super::resident::{EVICTION_LOG, Resident};
use super::{
    Explain, HotModel, ModelCache, ModelEviction, ModelExplain, ModelKey, RankedResident, Reason,
    ResidentView,
};
use crate::engine::{Engine, LoadedModel};
use crate::error::ScorerError;
use crate::model_id::ModelId;
pub use manymodels_contract::CacheSummary;
use manymodels_contract::cache::TenantShareView;

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
            tenants: tenant_views(state.policy()),
            loads_by_priority: crate::metrics::LOAD_PRIORITIES
                .iter()
                .zip(&self.metrics.loads_started)
                .map(|(p, n)| (p.to_string(), n.get()))
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
            .map(|(r, idle_seconds)| resident_view(&state, r, idle_seconds))
            .collect();
        let pool = self.pool.view();
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

impl ModelCache {
    /// Why `id` is or is not in this scorer's memory: its versions in the store, each
    /// resident version with its place in the eviction order, the pool's rate for it (when
    /// it is in this scorer's share), its recent evictions, whether the policy would refuse
    /// it again and whether a load is in flight, summed up in one sentence.
    /// `ModelNotFound` when the store has no version of it.
    pub async fn explain_model(&self, id: &ModelId) -> Result<ModelExplain, ScorerError> {
        let stored = self.existing(id).await?;
        let loading = self.flights.any(|k| k.id == *id);
        let now = self.now();
        // The resident set's lock, then the pool's, in the order `explain` takes them.
        let state = self.state();
        let residents = state.residents();
        let count = residents.len();
        let resident: Vec<RankedResident> = residents
            .into_iter()
            .enumerate()
            .filter(|(_, (r, _))| r.key.id == *id)
            .map(|(rank, (r, idle_seconds))| RankedResident {
                view: resident_view(&state, r, idle_seconds),
                evict_rank: rank,
                residents: count,
            })
            .collect();
        let evictions: Vec<ModelEviction> = state
            .evictions()
            .iter()
            .rev()
            .filter(|e| e.model == id.as_str())
            .map(|e| ModelEviction {
                version: e.version,
                reason: e.reason,
                bytes: e.bytes,
                seconds_ago: (now - e.at).max(0.0),
            })
            .collect();
        let refused_again = state.policy().refuses_again(id);
        let pool_rate = self.pool.combined().get(id.as_str()).copied();
        drop(state);
        let mut explain = ModelExplain {
            model: id.to_string(),
            live: stored.live(),
            versions: stored.versions,
            resident,
            pool_rate,
            in_share: pool_rate.is_some(),
            evictions,
            refused_again,
            loading,
            verdict: String::new(),
        };
        explain.verdict = verdict(&explain);
        Ok(explain)
    }
}

/// One resident as the views show it (`engine` from the model in the set).
fn resident_view(
    state: &Resident<LoadedModel>,
    r: manymodels_policy::Resident<ModelKey>,
    idle_seconds: f64,
) -> ResidentView {
    ResidentView {
        engine: state
            .model(&r.key)
            .map_or("loading", |m| m.engine.as_str())
            .to_string(),
        model: r.key.id.to_string(),
        version: r.key.version,
        bytes: r.bytes,
        load_seconds: r.load_seconds,
        priority: r.priority,
        idle_seconds,
        rate: r.local_rate,
        pool_rate: r.pool_rate,
    }
}

/// `explain` in one sentence for people: in memory (and how close to eviction), loading,
/// or why not.
fn verdict(explain: &ModelExplain) -> String {
    let refused = if explain.refused_again {
        "; the policy would refuse it again, so warm-ups skip it"
    } else {
        ""
    };
    if let Some(r) = explain.resident.first() {
        let order = match r.evict_rank {
            0 => "it is the next to be evicted".to_string(),
            n => format!(
                "{n} of the {} residents would be evicted before it",
                r.residents
            ),
        };
        return format!(
            "In memory: version {} on {}, {order}.",
            r.view.version, r.view.engine
        );
    }
    if explain.loading {
        return "Not in memory yet: a load is in flight.".into();
    }
    let share = match explain.pool_rate {
        Some(rate) => format!(
            "it is in this scorer's share at {rate:.2} req/s, so a warm-up loads it when there is free room"
        ),
        None => "it is not in this scorer's share of the pool's hot models".into(),
    };
    let Some(last) = explain.evictions.first() else {
        return format!(
            "Not in memory: not requested here since the scorer started or its evictions left the log; {share}{refused}."
        );
    };
    let why = match last.reason {
        Reason::Capacity => "evicted to make room for models of higher priority",
        Reason::NotAdmitted => {
            "loaded for its requests but not kept, every resident being worth more"
        }
        Reason::Unload => "unloaded through the repository API",
        Reason::Replaced => "replaced when the live version moved on",
    };
    format!(
        "Not in memory: version {} was {why} {:.0} s ago; {share}{refused}.",
        last.version, last.seconds_ago
    )
}

/// Each tenant's resident bytes against its floor and cap, the default tenant last; none
/// when no tenants are configured.
fn tenant_views(policy: &manymodels_policy::Policy<ModelKey>) -> Vec<TenantShareView> {
    if policy.tenants().is_empty() {
        return Vec::new();
    }
    policy
        .tenant_usage()
        .into_iter()
        .map(|t| TenantShareView {
            name: t.name,
            resident_bytes: t.bytes,
            resident_models: t.models,
            floor: t.floor,
            cap: t.cap,
            floor_bytes: t.floor_bytes,
            cap_bytes: t.cap_bytes,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::Reason;
    use super::super::testing::{Store, demo, id, local_cache};

    /// The summary and the explain view describe the same resident set: bytes add up,
    /// every resident is listed lowest priority first, evictions newest first.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_views_agree_with_the_resident_set() {
        let store = Store::new();
        store.put("small", 1, &demo("linear-small"));
        store.put("forest", 1, &demo("forest-1mb"));
        let cache = &local_cache(&store, |_| {});
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

    /// One model's explanation follows it in and out of memory: resident with its place
    /// in the eviction order, then evicted with the reason, and not found for a model the
    /// store does not have.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_model_explanation_follows_it_in_and_out_of_memory() {
        let store = Store::new();
        store.put("small", 1, &demo("linear-small"));
        store.put("small", 2, &demo("linear-small"));
        store.put("forest", 1, &demo("forest-1mb"));
        let cache = &local_cache(&store, |_| {});
        let cold = cache.explain_model(&id("small")).await.unwrap();
        assert_eq!(cold.versions, [1, 2]);
        assert_eq!(cold.live, Some(2));
        assert!(cold.resident.is_empty() && cold.evictions.is_empty());
        assert!(!cold.loading && !cold.in_share && cold.pool_rate.is_none());
        assert!(
            cold.verdict.starts_with("Not in memory"),
            "{}",
            cold.verdict
        );

        cache.get(&id("small"), None).await.unwrap();
        cache.get(&id("forest"), None).await.unwrap();
        cache
            .apply_stats(
                manymodels_policy::StatsReport {
                    proxy: "p".into(),
                    models: vec![("small".into(), 4.0)],
                },
                usize::MAX,
            )
            .unwrap();
        let warm = cache.explain_model(&id("small")).await.unwrap();
        assert_eq!(warm.resident.len(), 1);
        let r = &warm.resident[0];
        assert_eq!(
            (r.view.version, r.view.engine.as_str(), r.residents),
            (2, "native", 2)
        );
        // Its rank is its place in the whole view's lowest-priority-first order.
        let order: Vec<String> = cache
            .explain(0)
            .resident
            .iter()
            .map(|r| r.model.clone())
            .collect();
        assert_eq!(order[r.evict_rank], "small");
        assert_eq!((warm.pool_rate, warm.in_share), (Some(4.0), true));
        assert!(
            warm.verdict.starts_with("In memory: version 2"),
            "{}",
            warm.verdict
        );

        cache.unload(&id("small")).await;
        let gone = cache.explain_model(&id("small")).await.unwrap();
        assert!(gone.resident.is_empty());
        assert_eq!(gone.evictions.len(), 1);
        assert_eq!(
            (gone.evictions[0].version, gone.evictions[0].reason),
            (2, Reason::Unload)
        );
        assert!(gone.verdict.contains("unloaded"), "{}", gone.verdict);
        // The other model's evictions are not this one's.
        let forest = cache.explain_model(&id("forest")).await.unwrap();
        assert!(forest.evictions.is_empty() && forest.resident.len() == 1);

        let missing = cache.explain_model(&id("absent")).await.unwrap_err();
        assert!(
            matches!(missing, crate::error::ScorerError::ModelNotFound(_)),
            "{missing}"
        );
    }
}
