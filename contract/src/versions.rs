//! What a scorer's admin routes about one model's versions answer (the proxy forwards
//! `/v2/admin/models/...` to them): its version status, the outcome of a refresh, pin,
//! unpin or publish, its canary, and a version's digest; and the bodies they take. The
//! scorer fills these in `scorer::cache`; `mmctl` reads them.

use serde::{Deserialize, Serialize};

/// A model's versions as this scorer sees them (`GET /v2/mm/models/{id}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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

/// A version that was refused (failed to load, its smoke inference, or the signature
/// check), why, and how long ago.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Refusal {
    pub version: u64,
    pub error: String,
    pub seconds_ago: f64,
}

/// What a refresh did (also the answer to a pin, an unpin and a publish).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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

/// A canary as the admin API shows it: the store's canary, whether it splits requests
/// (`active`: false once its version has left the store), and what the scorer that
/// answered counted for it (its own share of the model's traffic; 0 when it has not split
/// requests for this canary).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CanaryStatus {
    pub version: u64,
    /// 0-100.
    pub percent: f64,
    pub active: bool,
    pub requests: u64,
    pub to_canary: u64,
}

/// The answer to showing (`GET`) or setting (`PUT`) a model's canary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CanaryAnswer {
    pub model: String,
    pub canary: CanaryStatus,
}

/// The answer to dropping a model's canary (`DELETE`): the canary as it was; `None` when
/// what was dropped was a canary file that did not parse.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CanaryDropped {
    pub model: String,
    pub dropped: Option<CanaryStatus>,
}

/// The answer to promoting a model's canary: the canary as it was, and the refresh the
/// pin of its version made.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CanaryPromoted {
    pub model: String,
    pub promoted: CanaryStatus,
    pub pinned: Refresh,
}

/// A version's size and SHA-256 in the store (`GET /v2/mm/models/{id}/versions/{v}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Digest {
    pub model: String,
    pub version: u64,
    pub bytes: u64,
    /// Lowercase hex.
    pub sha256: String,
}

/// The body of a pin (`POST /v2/mm/models/{id}/pin`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PinRequest {
    pub version: u64,
}

/// The body that sets a canary (`PUT /v2/mm/models/{id}/canary`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CanaryRequest {
    pub version: u64,
    /// 0-100, fractions allowed.
    pub percent: f64,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::round_trips;

    fn canary() -> CanaryStatus {
        CanaryStatus {
            version: 3,
            percent: 12.5,
            active: true,
            requests: 80,
            to_canary: 10,
        }
    }

    fn refresh() -> Refresh {
        Refresh {
            model: "m".into(),
            live: 2,
            previous: None,
            swapped: false,
            refused: Some(Refusal {
                version: 3,
                error: "broken".into(),
                seconds_ago: 0.0,
            }),
        }
    }

    #[test]
    fn a_version_status_round_trips_in_its_wire_shape() {
        let status = VersionStatus {
            model: "m".into(),
            versions: vec![1, 2, 3],
            pinned: None,
            live: Some(2),
            resident: vec![2],
            refused: refresh().refused,
            canary: Some(canary()),
        };
        assert_eq!(
            round_trips(&status),
            json!({
                "model": "m", "versions": [1, 2, 3], "pinned": null, "live": 2,
                "resident": [2],
                "refused": { "version": 3, "error": "broken", "seconds_ago": 0.0 },
                "canary": {
                    "version": 3, "percent": 12.5, "active": true, "requests": 80,
                    "to_canary": 10,
                },
            })
        );
        let bare = VersionStatus {
            pinned: Some(1),
            live: None,
            refused: None,
            canary: None,
            ..status
        };
        round_trips(&bare);
    }

    #[test]
    fn refreshes_and_canary_answers_round_trip() {
        let json = round_trips(&refresh());
        assert_eq!(json["previous"], json!(null));
        let swapped = Refresh {
            previous: Some(1),
            swapped: true,
            refused: None,
            ..refresh()
        };
        round_trips(&swapped);
        let shown = round_trips(&CanaryAnswer {
            model: "m".into(),
            canary: canary(),
        });
        assert_eq!(shown["canary"]["to_canary"], json!(10));
        for dropped in [Some(canary()), None] {
            round_trips(&CanaryDropped {
                model: "m".into(),
                dropped,
            });
        }
        let promoted = round_trips(&CanaryPromoted {
            model: "m".into(),
            promoted: canary(),
            pinned: swapped,
        });
        assert_eq!(promoted["pinned"]["live"], json!(2));
    }

    #[test]
    fn a_digest_and_the_request_bodies_round_trip() {
        assert_eq!(
            round_trips(&Digest {
                model: "m".into(),
                version: 4,
                bytes: 10,
                sha256: "ab".repeat(32),
            }),
            json!({ "model": "m", "version": 4, "bytes": 10, "sha256": "ab".repeat(32) })
        );
        assert_eq!(
            round_trips(&PinRequest { version: 2 }),
            json!({ "version": 2 })
        );
        assert_eq!(
            round_trips(&CanaryRequest {
                version: 2,
                percent: 10.0
            }),
            json!({ "version": 2, "percent": 10.0 })
        );
    }
}
