//! What a proxy shows of its pool: the pool view (`GET /v2/mm/pool`, drawn by `/status`
//! and `mmctl top`) and one model's placement (`GET /v2/mm/pool/models/{id}`). The proxy
//! builds these from its own state; `mmctl` reads them.

use serde::{Deserialize, Serialize};

use crate::EvictionReason;

/// The pool view (`GET /v2/mm/pool`): this proxy's counts, every member with the cache
/// summary it last answered a statistics push with, the hottest models and the pool's
/// recent evictions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoolView {
    /// The proxy's instance id (random per process).
    pub proxy: String,
    pub uptime_seconds: f64,
    /// Model requests counted by this proxy since it started.
    pub requests: u64,
    /// Hits over hits and misses in the history; `None` before the first answer.
    pub hit_ratio: Option<f64>,
    /// The width of one history bucket.
    pub history_bucket_seconds: u64,
    /// Hits and misses per bucket, oldest first.
    pub history: Vec<HitBucket>,
    /// Every member, in rotation or not.
    pub scorers: Vec<PoolScorer>,
    /// Hottest first.
    pub hottest: Vec<PoolHotModel>,
    /// The members' recent evictions, most recent first.
    pub evictions: Vec<PoolEviction>,
    pub statistics: StatisticsFootprint,
}

/// One bucket of the hit-ratio history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HitBucket {
    /// How long ago the bucket started.
    pub seconds_ago: u64,
    pub hits: u64,
    pub misses: u64,
}

/// One member of the pool, with the summary it last answered a push with (the summary's
/// fields are `None` until it has answered one).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoolScorer {
    pub name: String,
    pub addr: String,
    /// In rotation: healthy, as the health check last saw it.
    pub healthy: bool,
    /// Since its last answered push.
    pub pushed_seconds_ago: Option<f64>,
    pub budget_bytes: Option<u64>,
    pub resident_bytes: Option<u64>,
    pub resident_models: Option<usize>,
    pub hits: Option<u64>,
    pub misses: Option<u64>,
    pub loads: Option<u64>,
    pub loaded_bytes: Option<u64>,
}

/// One of the pool's hottest models, by this proxy's count.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoolHotModel {
    pub model: String,
    /// Requests per second (decayed).
    pub rate: f64,
    /// The first member in its rendezvous order; `None` in an empty pool.
    pub owner: Option<String>,
}

/// An eviction on one of the members, as its last push answer told it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoolEviction {
    pub scorer: String,
    pub model: String,
    pub version: u64,
    pub bytes: u64,
    pub reason: EvictionReason,
    pub seconds_ago: f64,
}

/// What the proxy's own statistics hold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatisticsFootprint {
    /// Models counted exactly (the hottest ids).
    pub tracked_models: usize,
    /// The statistics' fixed memory.
    pub memory_bytes: usize,
}

/// Where a model lives from one proxy's view (`GET /v2/mm/pool/models/{id}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Placement {
    pub model: String,
    /// The first member in rotation, healthy and not ejected, in the model's rendezvous
    /// order: where admin calls about it go, and its requests unless another scorer
    /// holds it hot or takes a spill; `None` when there is none.
    pub owner: Option<String>,
    /// Every member in the model's rendezvous order.
    pub ranking: Vec<RankedScorer>,
    /// The pool-wide rate this proxy counts for it (req/s); `None` when it is not among
    /// the models tracked exactly (a sketch estimate would only bound it from above).
    pub rate: Option<f64>,
}

/// One member in a model's rendezvous order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RankedScorer {
    pub name: String,
    pub addr: String,
    pub healthy: bool,
    /// Whether this proxy believes it holds the model hot (a recent answer for it).
    pub hot: bool,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::round_trips;

    #[test]
    fn the_pool_view_round_trips_in_its_wire_shape() {
        let view = PoolView {
            proxy: "proxy-00ff".into(),
            uptime_seconds: 75.5,
            requests: 1234,
            hit_ratio: Some(0.875),
            history_bucket_seconds: 10,
            history: vec![HitBucket {
                seconds_ago: 10,
                hits: 7,
                misses: 1,
            }],
            scorers: vec![
                PoolScorer {
                    name: "s0".into(),
                    addr: "127.0.0.1:1".into(),
                    healthy: true,
                    pushed_seconds_ago: Some(0.5),
                    budget_bytes: Some(1000),
                    resident_bytes: Some(500),
                    resident_models: Some(3),
                    hits: Some(10),
                    misses: Some(2),
                    loads: Some(2),
                    loaded_bytes: Some(600),
                },
                PoolScorer {
                    name: "s1".into(),
                    addr: "127.0.0.1:2".into(),
                    healthy: false,
                    pushed_seconds_ago: None,
                    budget_bytes: None,
                    resident_bytes: None,
                    resident_models: None,
                    hits: None,
                    misses: None,
                    loads: None,
                    loaded_bytes: None,
                },
            ],
            hottest: vec![PoolHotModel {
                model: "m".into(),
                rate: 1.5,
                owner: Some("s0".into()),
            }],
            evictions: vec![PoolEviction {
                scorer: "s0".into(),
                model: "old".into(),
                version: 2,
                bytes: 2048,
                reason: EvictionReason::Capacity,
                seconds_ago: 3.0,
            }],
            statistics: StatisticsFootprint {
                tracked_models: 9,
                memory_bytes: 4096,
            },
        };
        let json = round_trips(&view);
        assert_eq!(json["hit_ratio"], json!(0.875));
        assert_eq!(json["scorers"][1]["budget_bytes"], json!(null));
        assert_eq!(json["evictions"][0]["reason"], json!("capacity"));
        assert_eq!(
            json["statistics"],
            json!({ "tracked_models": 9, "memory_bytes": 4096 })
        );
        let empty = PoolView {
            hit_ratio: None,
            history: vec![],
            scorers: vec![],
            hottest: vec![],
            evictions: vec![],
            ..view
        };
        assert_eq!(round_trips(&empty)["hit_ratio"], json!(null));
    }

    #[test]
    fn a_placement_round_trips_in_its_wire_shape() {
        let placement = Placement {
            model: "m".into(),
            owner: Some("s1".into()),
            ranking: vec![
                RankedScorer {
                    name: "s0".into(),
                    addr: "127.0.0.1:1".into(),
                    healthy: false,
                    hot: false,
                },
                RankedScorer {
                    name: "s1".into(),
                    addr: "127.0.0.1:2".into(),
                    healthy: true,
                    hot: true,
                },
            ],
            rate: None,
        };
        assert_eq!(
            round_trips(&placement),
            json!({
                "model": "m", "owner": "s1", "rate": null,
                "ranking": [
                    { "name": "s0", "addr": "127.0.0.1:1", "healthy": false, "hot": false },
                    { "name": "s1", "addr": "127.0.0.1:2", "healthy": true, "hot": true },
                ],
            })
        );
    }
}
