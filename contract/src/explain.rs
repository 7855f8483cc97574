//! What a scorer shows of its cache beyond the [`CacheSummary`]: the explain view (every
//! resident with its priority, the pool's hottest models for this scorer;
//! `GET /v2/mm/cache`) and one model's explanation, why it is or is not in memory there
//! (`GET /v2/mm/models/{id}/explain`). The scorer fills these in `scorer::cache::explain`.

use serde::{Deserialize, Serialize};

use crate::{CacheSummary, EvictionReason};

/// The answer of `GET /v2/mm/cache`: the scorer's name (as in `x-mm-scorer`), its
/// readiness and its explain view.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CacheView {
    pub scorer: String,
    pub ready: bool,
    pub cache: Explain,
}

/// The explain view: the summary, every resident model with its priority (next to be
/// evicted first), and the pool's hottest models for this scorer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Explain {
    #[serde(flatten)]
    pub summary: CacheSummary,
    /// Proxies whose statistics are current.
    pub proxies: usize,
    /// Lowest priority (next to be evicted) first.
    pub resident: Vec<ResidentView>,
    pub hottest: Vec<HotModel>,
}

/// One resident model version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResidentView {
    pub model: String,
    pub version: u64,
    /// The engine serving it: `onnxruntime` or `native` (`loading` while its load is in
    /// flight).
    pub engine: String,
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

/// One of the pool's hottest models in this scorer's share.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HotModel {
    pub model: String,
    /// The pool-wide rate (req/s) the proxies pushed.
    pub rate: f64,
    /// Whether a version of it is in memory here.
    pub resident: bool,
}

/// One model's explanation as a scorer answers it: the scorer's name (as in
/// `x-mm-scorer`) beside the explanation's fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScorerExplain {
    pub scorer: String,
    #[serde(flatten)]
    pub explain: ModelExplain,
}

/// One model's explanation (`GET /v2/mm/models/{id}/explain`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelExplain {
    pub model: String,
    /// The version requests without a version get, by the store (the pin, else the
    /// highest).
    pub live: Option<u64>,
    /// In the store, ascending.
    pub versions: Vec<u64>,
    /// Its versions in memory here.
    pub resident: Vec<RankedResident>,
    /// The pool-wide rate (req/s) the proxies pushed for it: `None` when it is not in
    /// this scorer's share (no proxy counts it hot, or it ranks elsewhere).
    pub pool_rate: Option<f64>,
    pub in_share: bool,
    /// Its evictions still in the log, newest first.
    pub evictions: Vec<ModelEviction>,
    /// Refused by its last admission, and would be again now: warm-ups skip it.
    pub refused_again: bool,
    /// A load of one of its versions is in flight.
    pub loading: bool,
    /// The above in one sentence.
    pub verdict: String,
}

/// A resident version of the explained model and its place in the eviction order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RankedResident {
    #[serde(flatten)]
    pub view: ResidentView,
    /// 0: the next to be evicted.
    pub evict_rank: usize,
    /// How many models this scorer holds (the eviction order's length).
    pub residents: usize,
}

/// An eviction of the explained model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelEviction {
    pub version: u64,
    pub reason: EvictionReason,
    pub bytes: u64,
    pub seconds_ago: f64,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::Eviction;
    use crate::testing::round_trips;

    fn resident(model: &str) -> ResidentView {
        ResidentView {
            model: model.into(),
            version: 2,
            engine: "native".into(),
            bytes: 1024,
            load_seconds: 0.25,
            priority: -3.5,
            idle_seconds: 1.0,
            rate: 0.5,
            pool_rate: 4.0,
        }
    }

    #[test]
    fn the_cache_view_round_trips_with_the_summary_flattened() {
        let view = CacheView {
            scorer: "s0".into(),
            ready: true,
            cache: Explain {
                summary: CacheSummary {
                    budget_bytes: 4096,
                    resident_bytes: 1024,
                    resident_models: 1,
                    loads_by_engine: [("native".to_string(), 1)].into_iter().collect(),
                    uptime: 12.5,
                    evictions: vec![Eviction {
                        model: "gone".into(),
                        version: 1,
                        bytes: 10,
                        reason: EvictionReason::Capacity,
                        at: 3.0,
                    }],
                    ..CacheSummary::default()
                },
                proxies: 2,
                resident: vec![resident("m")],
                hottest: vec![HotModel {
                    model: "m".into(),
                    rate: 4.0,
                    resident: true,
                }],
            },
        };
        let json = round_trips(&view);
        // The summary's fields sit beside the view's own, not under a key of their own.
        assert_eq!(json["cache"]["budget_bytes"], json!(4096));
        assert_eq!(json["cache"]["proxies"], json!(2));
        assert_eq!(json["cache"]["resident"][0]["engine"], json!("native"));
        assert!(json["cache"].get("summary").is_none(), "{json}");
    }

    #[test]
    fn a_model_explanation_round_trips_with_its_resident_views_flattened() {
        let explain = ScorerExplain {
            scorer: "s0".into(),
            explain: ModelExplain {
                model: "m".into(),
                live: Some(2),
                versions: vec![1, 2],
                resident: vec![RankedResident {
                    view: resident("m"),
                    evict_rank: 0,
                    residents: 3,
                }],
                pool_rate: Some(4.0),
                in_share: true,
                evictions: vec![ModelEviction {
                    version: 1,
                    reason: EvictionReason::Replaced,
                    bytes: 10,
                    seconds_ago: 5.0,
                }],
                refused_again: false,
                loading: false,
                verdict: "In memory: version 2 on native, it is the next to be evicted.".into(),
            },
        };
        let json = round_trips(&explain);
        assert_eq!(json["scorer"], json!("s0"));
        assert_eq!(json["model"], json!("m"));
        assert_eq!(
            json["resident"][0],
            json!({
                "model": "m", "version": 2, "engine": "native", "bytes": 1024,
                "load_seconds": 0.25, "priority": -3.5, "idle_seconds": 1.0, "rate": 0.5,
                "pool_rate": 4.0, "evict_rank": 0, "residents": 3,
            })
        );
        assert_eq!(json["evictions"][0]["reason"], json!("replaced"));
        let cold = ModelExplain {
            live: None,
            resident: vec![],
            pool_rate: None,
            in_share: false,
            evictions: vec![],
            ..explain.explain
        };
        assert_eq!(round_trips(&cold)["pool_rate"], json!(null));
    }
}
