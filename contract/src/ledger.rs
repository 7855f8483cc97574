//! The per-model ledger on the wire: what a scorer serves about the models it scored and
//! the proxy merges across the pool.
//!
//! These are plain data. The arithmetic (recording, merging, quantiles) lives in
//! `manymodels_policy::ledger` and `manymodels_policy::quantiles`, which convert to and
//! from these types and check a [`LatencySketch`] before trusting it.
//!
//! A scorer's [`LedgerReport`] holds the models it tracks exactly (its hottest, each
//! counted from `since`) and one `tail` aggregate of every other request, so the pool's
//! totals are always the sum of the two, exactly. Latencies are in seconds; times are unix
//! seconds given by the caller.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The error kinds a scorer's ledger counts (`Counts::errors`' keys), each a family of
/// the scorer's error kinds: a 400-family answer, a missing model or version, a file that
/// cannot be served, a load past its deadline, too many waiting for loads, the store down
/// or the scorer stopping, the request's own deadline, the engine failing.
pub const ERROR_KINDS: [&str; 8] = [
    "invalid",
    "not_found",
    "load_failed",
    "load_timeout",
    "overloaded",
    "unavailable",
    "deadline",
    "inference_failed",
];

/// A DDSketch-style latency sketch, compactly: bucket `offset + i` holds `counts[i]`
/// values in `(gamma^(k-1), gamma^k]` with `gamma = (1 + alpha) / (1 - alpha)`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct LatencySketch {
    /// The relative accuracy: a quantile is within `alpha` (relative) of the exact one.
    pub alpha: f64,
    /// Most buckets kept; below that the lowest buckets are collapsed.
    pub max_buckets: u32,
    /// Values at or below the sketch's smallest indexable value (zero latencies).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub zeros: u64,
    /// The index of `counts[0]`.
    #[serde(default)]
    pub offset: i32,
    /// A run of bucket counts from `offset` up; first and last non-zero.
    #[serde(default)]
    pub counts: Vec<u64>,
    /// The smallest and largest value seen, exactly; `None` when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Counters of one model (or of the tail aggregate).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Counts {
    pub requests: u64,
    /// Requests whose model was already in memory.
    pub hits: u64,
    /// Requests that waited for a cold load.
    pub loads: u64,
    /// Failed requests by error kind (the scorer's bounded kind names); zero kinds left out.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub errors: BTreeMap<String, u64>,
    /// Rows (records, instances) scored.
    pub rows: u64,
    /// Every request's latency (seconds).
    pub latency: LatencySketch,
    /// The latest time (unix seconds) a request was recorded; `None` if never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scored: Option<f64>,
    /// Quantiles read from `latency`, for people and pages that do not read sketches;
    /// filled by whoever serves the ledger, after any merge (a merge ignores them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantiles: Option<Quantiles>,
}

/// Latency quantiles in seconds, each within the sketch's `alpha` of the exact one.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Quantiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// Requests per model version for the highest few versions seen (the canary share), and
/// the requests of every older version together. Requests that named no version (failed
/// before one was resolved) are not in the mix.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct VersionMix {
    /// `[version, requests]`, highest version first.
    pub versions: Vec<(u64, u64)>,
    /// Requests served by versions older than every listed one.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub older: u64,
}

/// One model counted exactly since `since`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ModelLedger {
    pub model: String,
    /// When (unix seconds) the model was first tracked; requests before that are in the
    /// tail aggregate. Merged: the earliest.
    pub since: f64,
    #[serde(flatten)]
    pub counts: Counts,
    pub versions: VersionMix,
}

/// What a scorer (or, merged, the pool) knows: the tracked models and the tail.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct LedgerReport {
    /// Tracked models, most requests first.
    pub models: Vec<ModelLedger>,
    /// Every request not counted under `models`, summed.
    pub tail: Counts,
}

/// One model's answer whether or not it is tracked: its exact ledger where it is, and the
/// count-min upper bounds of its requests and errors (over its whole life, whether tracked
/// or not; never below the truth).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ModelReport {
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracked: Option<ModelLedger>,
    pub requests_at_most: u64,
    pub errors_at_most: u64,
}

/// A scorer the proxy could not count in a merged ledger, and why (unreachable, an
/// answer it could not read, a sketch configuration unlike the others').
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Missing {
    pub scorer: String,
    pub error: String,
}

/// The pool's ledger, as a proxy merges it from every serving scorer.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PoolLedger {
    /// The scorers counted.
    pub scorers: Vec<String>,
    /// The scorers not counted, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<Missing>,
    /// Every tracked model and the tail, pool-wide, with quantiles filled.
    #[serde(flatten)]
    pub report: LedgerReport,
    /// The pool's totals (models and tail), with quantiles filled.
    pub pool: Counts,
}

/// One model across the pool, as a proxy merges it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PoolModelLedger {
    pub scorers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<Missing>,
    #[serde(flatten)]
    pub report: ModelReport,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LedgerReport {
        let latency = LatencySketch {
            alpha: 0.01,
            max_buckets: 1024,
            zeros: 1,
            offset: -230,
            counts: vec![3, 0, 1],
            min: Some(0.0),
            max: Some(0.0102),
        };
        let counts = Counts {
            requests: 5,
            hits: 4,
            loads: 1,
            errors: BTreeMap::from([("not_found".to_string(), 1)]),
            rows: 40,
            latency,
            last_scored: Some(1_800_000_000.5),
            quantiles: Some(Quantiles {
                p50: 0.0,
                p90: 0.0101,
                p99: 0.0101,
                max: 0.0102,
            }),
        };
        LedgerReport {
            models: vec![ModelLedger {
                model: "store-0412".into(),
                since: 1_799_999_000.0,
                counts: counts.clone(),
                versions: VersionMix {
                    versions: vec![(3, 1), (2, 3)],
                    older: 0,
                },
            }],
            tail: Counts {
                latency: LatencySketch {
                    alpha: 0.01,
                    max_buckets: 1024,
                    ..Default::default()
                },
                ..Default::default()
            },
        }
    }

    #[test]
    fn a_report_round_trips_through_json_and_leaves_empty_fields_out() {
        let report = sample();
        let json = serde_json::to_string(&report).unwrap();
        assert_eq!(serde_json::from_str::<LedgerReport>(&json).unwrap(), report);
        // The tail is empty: no min, max, zeros, errors or last_scored on the wire.
        let tail = serde_json::to_value(&report.tail).unwrap();
        assert_eq!(
            tail,
            serde_json::json!({"requests": 0, "hits": 0, "loads": 0, "rows": 0,
                "latency": {"alpha": 0.01, "max_buckets": 1024, "offset": 0, "counts": []}})
        );
        // A model's counters sit beside its id (flattened).
        let model = serde_json::to_value(&report.models[0]).unwrap();
        assert_eq!(model["requests"], 5);
        assert_eq!(model["errors"]["not_found"], 1);
        assert_eq!(model["versions"]["versions"][0], serde_json::json!([3, 1]));
    }

    #[test]
    fn pool_views_round_trip_with_their_reports_flattened() {
        let report = sample();
        let pool = PoolLedger {
            scorers: vec!["s1".into(), "s2".into()],
            missing: vec![Missing {
                scorer: "s3".into(),
                error: "unreachable".into(),
            }],
            pool: report.models[0].counts.clone(),
            report,
        };
        let json = serde_json::to_value(&pool).unwrap();
        assert_eq!(json["models"][0]["model"], "store-0412");
        assert_eq!(json["missing"][0]["scorer"], "s3");
        assert_eq!(json["pool"]["quantiles"]["p90"], 0.0101);
        assert_eq!(serde_json::from_value::<PoolLedger>(json).unwrap(), pool);
        let one = PoolModelLedger {
            scorers: vec!["s1".into()],
            missing: Vec::new(),
            report: ModelReport {
                model: "m".into(),
                tracked: None,
                requests_at_most: 3,
                errors_at_most: 0,
            },
        };
        let json = serde_json::to_value(&one).unwrap();
        assert_eq!(json["requests_at_most"], 3);
        assert!(json.get("missing").is_none());
        assert_eq!(
            serde_json::from_value::<PoolModelLedger>(json).unwrap(),
            one
        );
    }

    #[test]
    fn a_model_report_round_trips_tracked_or_not() {
        for tracked in [None, Some(sample().models.remove(0))] {
            let report = ModelReport {
                model: "store-0412".into(),
                tracked,
                requests_at_most: 7,
                errors_at_most: 2,
            };
            let json = serde_json::to_string(&report).unwrap();
            assert_eq!(serde_json::from_str::<ModelReport>(&json).unwrap(), report);
        }
    }
}
