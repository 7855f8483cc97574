//! Payload capture's wire types: the rules (which models' requests are sampled, and at
//! what rate), kept as one document in the model store so every scorer agrees, the admin
//! API's bodies and answers, and one captured line.
//!
//! A rule names a model-id prefix (`fraud-` takes `fraud-eu`, `fraud-us`, ...) or, with
//! `exact`, one model. The most specific rule that matches a model decides its rate: an
//! exact rule before any prefix, a longer prefix before a shorter one. A rate of 0 turns a
//! model off inside a captured prefix.

use serde::{Deserialize, Serialize};

/// At most this many rules: a rule is looked at on every request of a model a rule
/// matches, and the document is read by every scorer every `versions.check_interval`.
pub const MAX_RULES: usize = 256;

/// The store path of the rules document (no model id begins with `_`, so it can never be
/// taken for a model).
pub const RULES_PATH: &str = "_manymodels/capture.json";

/// One capture rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureRule {
    /// A model-id prefix (a valid model id, or the start of one), or the model id itself
    /// when `exact`.
    pub prefix: String,
    /// The share of the matching requests captured, 0 to 1.
    pub rate: f64,
    /// Whether the rule takes only the model named `prefix`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exact: bool,
}

impl CaptureRule {
    /// A rule if `prefix` could start a model id (the model-id rule) and `rate` is a
    /// share, else why not.
    pub fn new(prefix: &str, rate: f64, exact: bool) -> Result<Self, String> {
        if !crate::valid_model_id(prefix) {
            return Err(format!(
                "'{}' is not a model id or the start of one",
                crate::truncate_for_message(prefix)
            ));
        }
        if !(0.0..=1.0).contains(&rate) {
            return Err("rate must be within 0-1".into());
        }
        Ok(CaptureRule {
            prefix: prefix.to_string(),
            rate,
            exact,
        })
    }

    /// Whether the rule takes model `id`.
    pub fn matches(&self, id: &str) -> bool {
        if self.exact {
            id == self.prefix
        } else {
            id.starts_with(self.prefix.as_str())
        }
    }

    /// Whether a key scoped to `scope` (model-id prefixes; empty: every model) may see
    /// and change this rule: every model the rule could take must be inside the scope.
    pub fn within(&self, scope: &[String]) -> bool {
        scope.is_empty() || scope.iter().any(|p| self.prefix.starts_with(p.as_str()))
    }
}

/// The rules document (`_manymodels/capture.json` in the store), also what `GET
/// /v2/mm/capture` answers in `rules`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureRules {
    /// Sorted by prefix, then exact rules after prefix ones; at most one rule per
    /// (prefix, exact).
    pub rules: Vec<CaptureRule>,
}

impl CaptureRules {
    /// Reads and checks a rules document.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let rules: CaptureRules = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if rules.rules.len() > MAX_RULES {
            return Err(format!("more than {MAX_RULES} rules"));
        }
        for rule in &rules.rules {
            CaptureRule::new(&rule.prefix, rule.rate, rule.exact)?;
        }
        Ok(rules)
    }

    /// The rate for model `id`: the most specific matching rule's (an exact rule, else
    /// the longest prefix), `None` when no rule matches.
    pub fn rate(&self, id: &str) -> Option<f64> {
        self.rules
            .iter()
            .filter(|rule| rule.matches(id))
            .max_by_key(|rule| (rule.exact, rule.prefix.len()))
            .map(|rule| rule.rate)
    }

    /// Sets (adds or replaces) a rule; `Err` when that would make more than
    /// [`MAX_RULES`].
    pub fn set(&mut self, rule: CaptureRule) -> Result<(), String> {
        let count = self.rules.len();
        match self
            .rules
            .iter_mut()
            .find(|r| r.prefix == rule.prefix && r.exact == rule.exact)
        {
            Some(existing) => *existing = rule,
            None if count >= MAX_RULES => {
                return Err(format!(
                    "there are {MAX_RULES} rules already; drop one first"
                ));
            }
            None => self.rules.push(rule),
        }
        self.rules
            .sort_by(|a, b| (a.exact, &a.prefix).cmp(&(b.exact, &b.prefix)));
        Ok(())
    }

    /// Drops the rules of `prefix` (both the prefix rule and the exact one); whether any
    /// was there.
    pub fn drop_prefix(&mut self, prefix: &str) -> bool {
        let before = self.rules.len();
        self.rules.retain(|r| r.prefix != prefix);
        self.rules.len() != before
    }
}

/// `PUT /v2/mm/capture/{prefix}`'s body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureSet {
    pub rate: f64,
    /// Only the model named by the path, not every model it prefixes.
    #[serde(default)]
    pub exact: bool,
}

/// This scorer's capture counters, in lines since it started.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CaptureCounters {
    /// Sampled and put in the queue.
    pub queued: u64,
    /// Sampled but dropped: the queue was full (`capture.queue_bytes`).
    pub dropped: u64,
    /// Written to the store.
    pub written: u64,
    /// Dropped after the store refused them on every attempt.
    pub failed: u64,
    /// Bytes waiting in the queue or in a batch now.
    pub queue_bytes: u64,
}

/// `GET /v2/mm/capture`'s answer (also `PUT`'s and `DELETE`'s, after the change): the
/// rules the caller's key may see, and the answering scorer's counters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CaptureView {
    pub rules: Vec<CaptureRule>,
    /// Where captures go in the store (`capture.prefix`).
    pub prefix: String,
    /// The answering scorer's name.
    pub scorer: String,
    pub counters: CaptureCounters,
}

/// A tensor as a capture line holds it: the Open Inference Protocol's JSON tensor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CapturedTensor {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
    pub data: serde_json::Value,
}

/// One line of a capture file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CaptureLine {
    /// The request's `x-request-id`.
    pub request_id: String,
    /// When the model answered, RFC 3339 UTC with milliseconds.
    pub time: String,
    pub model: String,
    pub version: u64,
    /// The engine run's time, in milliseconds.
    pub latency_ms: f64,
    /// How the request came: `rest`, `grpc`, `records` (a model's records route, the
    /// many-model route's groups included) or `unknown`.
    pub protocol: String,
    pub inputs: Vec<CapturedTensor>,
    pub outputs: Vec<CapturedTensor>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::round_trips;

    fn rule(prefix: &str, rate: f64, exact: bool) -> CaptureRule {
        CaptureRule::new(prefix, rate, exact).unwrap()
    }

    #[test]
    fn the_most_specific_rule_decides() {
        let mut rules = CaptureRules::default();
        rules.set(rule("fraud-", 0.1, false)).unwrap();
        rules.set(rule("fraud-eu", 0.5, false)).unwrap();
        rules.set(rule("fraud-eu-7", 0.0, true)).unwrap();
        assert_eq!(rules.rate("fraud-us"), Some(0.1));
        assert_eq!(rules.rate("fraud-eu-1"), Some(0.5));
        assert_eq!(rules.rate("fraud-eu-7"), Some(0.0));
        assert_eq!(rules.rate("fraud-eu-70"), Some(0.5));
        assert_eq!(rules.rate("churn"), None);
        // Replacing a rule keeps one per (prefix, exact); dropping takes both kinds.
        rules.set(rule("fraud-", 0.2, false)).unwrap();
        assert_eq!(rules.rules.len(), 3);
        assert_eq!(rules.rate("fraud-us"), Some(0.2));
        assert!(rules.drop_prefix("fraud-eu-7"));
        assert!(!rules.drop_prefix("fraud-eu-7"));
        assert_eq!(rules.rate("fraud-eu-7"), Some(0.5));
    }

    #[test]
    fn rules_are_bounded_and_checked() {
        let mut rules = CaptureRules::default();
        for i in 0..MAX_RULES {
            rules.set(rule(&format!("m{i}"), 1.0, false)).unwrap();
        }
        assert!(rules.set(rule("another", 1.0, false)).is_err());
        // Replacing one is still fine at the bound.
        rules.set(rule("m7", 0.5, false)).unwrap();
        let text = serde_json::to_vec(&rules).unwrap();
        assert_eq!(CaptureRules::parse(&text).unwrap(), rules);
        rules.rules.push(rule("over", 1.0, false));
        assert!(CaptureRules::parse(&serde_json::to_vec(&rules).unwrap()).is_err());
        assert!(CaptureRule::new("_x", 0.5, false).is_err());
        assert!(CaptureRule::new("m", 1.5, false).is_err());
        assert!(CaptureRule::new("m", f64::NAN, false).is_err());
        assert!(CaptureRules::parse(br#"{"rules":[{"prefix":"a/b","rate":1}]}"#).is_err());
    }

    #[test]
    fn a_scoped_key_reaches_only_rules_inside_its_prefixes() {
        let scope = vec!["acme-".to_string()];
        assert!(rule("acme-fraud", 1.0, false).within(&scope));
        assert!(rule("acme-", 1.0, false).within(&scope));
        assert!(!rule("acme", 1.0, false).within(&scope));
        assert!(!rule("other", 1.0, true).within(&scope));
        assert!(rule("other", 1.0, false).within(&[]));
    }

    #[test]
    fn capture_types_round_trip() {
        let json = round_trips(&CaptureRules {
            rules: vec![rule("a", 0.25, false), rule("b", 1.0, true)],
        });
        assert_eq!(
            json,
            serde_json::json!({"rules": [{"prefix": "a", "rate": 0.25},
                {"prefix": "b", "rate": 1.0, "exact": true}]})
        );
        round_trips(&CaptureSet {
            rate: 0.1,
            exact: false,
        });
        round_trips(&CaptureView {
            rules: vec![rule("a", 0.5, false)],
            prefix: "_captures".into(),
            scorer: "s1".into(),
            counters: CaptureCounters {
                queued: 3,
                dropped: 1,
                written: 2,
                failed: 0,
                queue_bytes: 10,
            },
        });
        round_trips(&CaptureLine {
            request_id: "r1".into(),
            time: "2026-12-07T02:00:00.000Z".into(),
            model: "m".into(),
            version: 2,
            latency_ms: 0.5,
            protocol: "rest".into(),
            inputs: vec![CapturedTensor {
                name: "x".into(),
                datatype: "FP32".into(),
                shape: vec![1, 2],
                data: serde_json::json!([1.5, 2.0]),
            }],
            outputs: vec![],
        });
    }
}
