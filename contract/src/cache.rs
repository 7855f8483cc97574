//! What a scorer says about its cache: the [`crate::header::CACHE`] value of an answer, and the
//! summary it answers a statistics push with (shown by the proxy's pool view).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Whether a look-up was answered from memory: the value of the [`crate::header::CACHE`]
/// header.
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

    pub fn parse(text: &str) -> Option<Lookup> {
        match text {
            "hit" => Some(Lookup::Hit),
            "miss" => Some(Lookup::Miss),
            _ => None,
        }
    }
}

/// Why a model left memory (the `reason` label of `mm_scorer_cache_evictions_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvictionReason {
    /// Displaced by a model of higher priority.
    Capacity,
    /// Loaded for its requests but not kept: every resident was worth more.
    NotAdmitted,
    /// Unloaded through the repository API.
    Unload,
    /// The live version moved on (a new version, a pin or an unpin) and this one went idle.
    Replaced,
}

impl EvictionReason {
    pub const ALL: [EvictionReason; 4] = [
        EvictionReason::Capacity,
        EvictionReason::NotAdmitted,
        EvictionReason::Unload,
        EvictionReason::Replaced,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EvictionReason::Capacity => "capacity",
            EvictionReason::NotAdmitted => "not_admitted",
            EvictionReason::Unload => "unload",
            EvictionReason::Replaced => "replaced",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Eviction {
    pub model: String,
    pub version: u64,
    pub bytes: u64,
    pub reason: EvictionReason,
    /// Seconds since the scorer started.
    pub at: f64,
}

/// A scorer's cache in numbers: the answer to a statistics push, and the head of the
/// explain view (`/v2/mm/cache`). A field missing from the JSON reads as zero (empty), so
/// a proxy reads the summary of an older scorer during a rolling upgrade.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CacheSummary {
    pub budget_bytes: u64,
    pub resident_bytes: u64,
    pub resident_models: usize,
    /// Memory reserved by loads in flight.
    pub reserved_bytes: u64,
    /// The most residents plus reservations may hold: the budget and the load headroom.
    pub ceiling_bytes: u64,
    pub warmup_loads: u64,
    /// Warm-up loads that left (or were refused) before serving a request.
    pub warmup_wasted: u64,
    /// Loads refused because the model can never fit the budget.
    pub too_large: u64,
    pub hits: u64,
    pub misses: u64,
    pub loads: u64,
    /// Loads by the engine that serves the model (`onnxruntime`, `native`).
    pub loads_by_engine: BTreeMap<String, u64>,
    pub loaded_bytes: u64,
    /// Seconds since the scorer started (eviction times count from it).
    pub uptime: f64,
    /// Most recent first.
    pub evictions: Vec<Eviction>,
    /// Each tenant's share of the budget and what it holds (`tenants.shares`), the default
    /// tenant last; empty when no tenants are configured.
    pub tenants: Vec<TenantShareView>,
    /// Cold loads started, by request priority (`interactive`, `batch`).
    pub loads_by_priority: BTreeMap<String, u64>,
}

/// One tenant in a scorer's cache: its resident models and bytes against its floor (kept
/// against other tenants' models) and cap (the most it may hold).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TenantShareView {
    pub name: String,
    pub resident_bytes: u64,
    pub resident_models: usize,
    /// The configured fractions of the budget (the default tenant: 0 and 1).
    pub floor: f64,
    pub cap: f64,
    /// The same in bytes.
    pub floor_bytes: u64,
    pub cap_bytes: u64,
}

/// A scorer's answer to a statistics push.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatsAnswer {
    pub scorer: String,
    pub ready: bool,
    pub cache: CacheSummary,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_round_trip_through_their_header_value() {
        for lookup in [Lookup::Hit, Lookup::Miss] {
            assert_eq!(Lookup::parse(lookup.as_str()), Some(lookup));
        }
        assert_eq!(Lookup::parse("HIT"), None);
    }

    #[test]
    fn a_stats_answer_round_trips_and_reasons_are_snake_case() {
        let answer = StatsAnswer {
            scorer: "s0".into(),
            ready: true,
            cache: CacheSummary {
                budget_bytes: 10,
                loads_by_engine: [("native".to_string(), 3)].into_iter().collect(),
                evictions: vec![Eviction {
                    model: "m".into(),
                    version: 2,
                    bytes: 5,
                    reason: EvictionReason::NotAdmitted,
                    at: 1.5,
                }],
                tenants: vec![TenantShareView {
                    name: "b".into(),
                    resident_bytes: 5,
                    resident_models: 1,
                    floor: 0.5,
                    cap: 1.0,
                    floor_bytes: 5,
                    cap_bytes: 10,
                }],
                ..CacheSummary::default()
            },
        };
        let text = serde_json::to_string(&answer).unwrap();
        assert!(text.contains("\"reason\":\"not_admitted\""), "{text}");
        assert_eq!(serde_json::from_str::<StatsAnswer>(&text).unwrap(), answer);
        // A summary from a scorer that sends fewer fields still reads.
        let old: CacheSummary = serde_json::from_str(r#"{"budget_bytes": 7, "extra": 1}"#).unwrap();
        assert_eq!((old.budget_bytes, old.loads), (7, 0));
        for reason in EvictionReason::ALL {
            let json = serde_json::to_string(&reason).unwrap();
            assert_eq!(json, format!("\"{}\"", reason.as_str()));
        }
    }
}
