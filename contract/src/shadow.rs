//! Per-model shadows: a candidate version run on a share of a model's live requests after
//! the live answer was sent, its answer compared with the live one and never returned.
//!
//! The shadow is model state in the store (`<id>/shadow.json`, [`ShadowSpec`]) like a
//! canary; each scorer counts what it compared ([`ShadowCounts`], keyed by the spec's
//! `since_ms` so that a new shadow starts from zero) and serves them
//! (`GET /v2/mm/shadows`, [`ShadowsReport`]); a proxy sums every scorer's counts
//! ([`ShadowCounts::merge`]) into the pool's view ([`ShadowView`]) and judges the rule
//! ([`verdict`]) on the pool's counts, never on one scorer's.

use serde::{Deserialize, Serialize};

/// What `shadow.json` holds and `PUT .../shadow` sets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShadowSpec {
    /// The candidate version (in the store, not the live one).
    pub version: u64,
    /// Share of the model's live inference requests (those naming no version) the
    /// candidate also runs on, 0 < percent <= 100.
    pub percent: f64,
    /// Two float outputs agree when every element differs by at most this (absolute).
    #[serde(default = "default_tolerance")]
    pub tolerance: f64,
    /// The optional promotion rule, judged on the pool's counts.
    #[serde(default)]
    pub rule: Option<ShadowRule>,
    /// When the shadow was set (ms since the Unix epoch, written by the scorer that set
    /// it): counts are kept per (version, since_ms), so setting a shadow again starts over.
    #[serde(default)]
    pub since_ms: u64,
}

pub fn default_tolerance() -> f64 {
    1e-6
}

/// What the judge does when the rule is met.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleAction {
    /// Pin the candidate (it becomes live) and drop the shadow.
    Promote,
    /// Only say so (the view's verdict; the log).
    Report,
}

/// "Agreement at least `min_agreement` over at least `min_requests` compared requests,
/// with at most `max_errors` candidate errors."
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShadowRule {
    pub min_requests: u64,
    /// A fraction, 0..=1 (0.995 for 99.5%).
    pub min_agreement: f64,
    #[serde(default)]
    pub max_errors: u64,
    pub action: RuleAction,
}

/// What one scorer (or, merged, the pool) counted for one shadow.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ShadowCounts {
    /// Requests whose live and candidate answers were both compared.
    pub compared: u64,
    /// Of those, the ones where every output agreed (labels equal, floats within the
    /// tolerance).
    pub agreed: u64,
    /// Compared requests where a label output (integer or string) differed in any row.
    pub label_flips: u64,
    /// Candidate runs that failed (load or inference), not compared.
    pub errors: u64,
    /// Sampled requests not run: the queue was full, or the candidate was not in
    /// memory and could not be loaded without evicting a live model.
    pub skipped: u64,
    /// Float elements compared, and the sum and maximum of their absolute differences.
    pub elements: u64,
    pub sum_abs_diff: f64,
    pub max_abs_diff: f64,
    /// Sums over compared requests of the live and the candidate engine time (µs).
    pub live_micros: u64,
    pub shadow_micros: u64,
}

impl ShadowCounts {
    /// Adds another scorer's counts of the same shadow.
    pub fn merge(&mut self, other: &ShadowCounts) {
        self.compared += other.compared;
        self.agreed += other.agreed;
        self.label_flips += other.label_flips;
        self.errors += other.errors;
        self.skipped += other.skipped;
        self.elements += other.elements;
        self.sum_abs_diff += other.sum_abs_diff;
        self.max_abs_diff = self.max_abs_diff.max(other.max_abs_diff);
        self.live_micros += other.live_micros;
        self.shadow_micros += other.shadow_micros;
    }

    /// `agreed / compared`, `None` before the first comparison.
    pub fn agreement(&self) -> Option<f64> {
        (self.compared > 0).then(|| self.agreed as f64 / self.compared as f64)
    }

    /// Mean absolute difference over compared float elements.
    pub fn mean_abs_diff(&self) -> Option<f64> {
        (self.elements > 0).then(|| self.sum_abs_diff / self.elements as f64)
    }

    /// Mean candidate time minus mean live time per compared request (µs).
    pub fn latency_diff_micros(&self) -> Option<f64> {
        (self.compared > 0)
            .then(|| (self.shadow_micros as f64 - self.live_micros as f64) / self.compared as f64)
    }
}

/// Where a shadow stands against its rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// No rule: counting only.
    NoRule,
    /// Fewer than `min_requests` compared, and not already failed.
    Collecting,
    /// The rule holds.
    Met,
    /// More errors than allowed, or enough requests and too little agreement.
    Failed,
}

/// Judges `counts` against `rule`.
pub fn verdict(rule: Option<&ShadowRule>, counts: &ShadowCounts) -> Verdict {
    let Some(rule) = rule else {
        return Verdict::NoRule;
    };
    if counts.errors > rule.max_errors {
        return Verdict::Failed;
    }
    if counts.compared < rule.min_requests.max(1) {
        return Verdict::Collecting;
    }
    match counts.agreement() {
        Some(a) if a >= rule.min_agreement => Verdict::Met,
        _ => Verdict::Failed,
    }
}

/// One shadow as a scorer counts it or as the pool sums it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShadowView {
    pub model: String,
    /// The live version the candidate is compared with (the scorer's, when it has one).
    pub live: Option<u64>,
    pub spec: ShadowSpec,
    pub counts: ShadowCounts,
    pub verdict: Verdict,
    /// Whether the candidate is in this scorer's memory (merged: in any scorer's).
    pub resident: bool,
}

/// `GET /v2/mm/shadows` on a scorer: every shadow it knows (set in the store for a model it
/// has served or been asked about), narrowed by the key's model prefixes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShadowsReport {
    pub scorer: String,
    pub shadows: Vec<ShadowView>,
}

/// `GET /v2/admin/models/{id}/shadow` (and every shadow, `GET /v2/admin/shadows`) on a
/// proxy: the pool's counts and which scorers answered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoolShadows {
    pub shadows: Vec<ShadowView>,
    /// Scorers asked that did not answer (their counts are missing from the sums).
    pub missing: Vec<String>,
}

/// The answer to a promotion: the candidate pinned, the shadow dropped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShadowPromoted {
    pub model: String,
    pub promoted: ShadowSpec,
    pub pinned: crate::versions::Refresh,
}

/// The answer to a drop: the shadow that was set, if any.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShadowDropped {
    pub model: String,
    pub dropped: Option<ShadowSpec>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::round_trips;

    fn rule() -> ShadowRule {
        ShadowRule {
            min_requests: 100,
            min_agreement: 0.995,
            max_errors: 0,
            action: RuleAction::Promote,
        }
    }

    fn counts(compared: u64, agreed: u64, errors: u64) -> ShadowCounts {
        ShadowCounts {
            compared,
            agreed,
            errors,
            ..ShadowCounts::default()
        }
    }

    #[test]
    fn the_rule_waits_for_enough_requests_then_judges_agreement() {
        assert_eq!(verdict(None, &counts(10, 10, 0)), Verdict::NoRule);
        assert_eq!(
            verdict(Some(&rule()), &counts(99, 99, 0)),
            Verdict::Collecting
        );
        assert_eq!(verdict(Some(&rule()), &counts(200, 199, 0)), Verdict::Met);
        assert_eq!(
            verdict(Some(&rule()), &counts(200, 198, 0)),
            Verdict::Failed
        );
        // An error fails it at once, before enough requests.
        assert_eq!(verdict(Some(&rule()), &counts(5, 5, 1)), Verdict::Failed);
        let zero = ShadowRule {
            min_requests: 0,
            ..rule()
        };
        assert_eq!(verdict(Some(&zero), &counts(0, 0, 0)), Verdict::Collecting);
    }

    #[test]
    fn merged_counts_sum_and_keep_the_largest_difference() {
        let mut a = ShadowCounts {
            compared: 3,
            agreed: 2,
            elements: 6,
            sum_abs_diff: 0.6,
            max_abs_diff: 0.5,
            live_micros: 30,
            shadow_micros: 60,
            ..ShadowCounts::default()
        };
        let b = ShadowCounts {
            compared: 1,
            agreed: 1,
            label_flips: 1,
            elements: 2,
            sum_abs_diff: 0.2,
            max_abs_diff: 0.1,
            live_micros: 10,
            shadow_micros: 10,
            ..ShadowCounts::default()
        };
        a.merge(&b);
        assert_eq!((a.compared, a.agreed, a.label_flips), (4, 3, 1));
        assert_eq!(a.agreement(), Some(0.75));
        assert!((a.mean_abs_diff().unwrap() - 0.1).abs() < 1e-12);
        assert_eq!(a.max_abs_diff, 0.5);
        assert_eq!(a.latency_diff_micros(), Some(7.5));
        assert_eq!(ShadowCounts::default().agreement(), None);
    }

    #[test]
    fn a_spec_fills_its_defaults_and_round_trips() {
        let spec: ShadowSpec = serde_json::from_value(json!({"version": 3, "percent": 20}))
            .expect("a bare spec parses");
        assert_eq!(spec.tolerance, default_tolerance());
        assert_eq!((spec.rule, spec.since_ms), (None, 0));
        let full = ShadowSpec {
            rule: Some(rule()),
            since_ms: 7,
            ..spec
        };
        let json = round_trips(&full);
        assert_eq!(json["rule"]["action"], json!("promote"));
        assert_eq!(json["rule"]["min_agreement"], json!(0.995));
    }
}
