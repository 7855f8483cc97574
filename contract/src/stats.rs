//! What a proxy pushes to a scorer (`PUT /v2/mm/stats`), and the bounds a scorer holds a
//! push to before it lets the push steer its eviction and warm-up.

use serde::{Deserialize, Serialize};

use crate::{MAX_MODEL_ID_LEN, truncate_for_message, valid_model_id};

/// The pool-wide rates of the hot models a scorer owns, from one proxy.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct StatsReport {
    /// The proxy's instance id (random per process): a report replaces that proxy's
    /// previous one.
    pub proxy: String,
    /// `[model id, requests per second]`, hottest first.
    pub models: Vec<(String, f64)>,
}

/// What one push may claim (the scorer's `stats.max_report_models` and
/// `stats.max_source_rate`). The number of proxies is bounded where reports are kept
/// (`manymodels_policy::PoolView`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bounds {
    /// Most entries in one report.
    pub max_models: usize,
    /// Most requests per second one report may claim, summed over its entries.
    pub max_source_rate: f64,
}

/// Why a push was refused. [`StatsRefusal::reason`] is a bounded label for metrics.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum StatsRefusal {
    #[error(
        "statistics push lists {count} models; at most {max} are accepted (stats.max_report_models)"
    )]
    TooManyModels { count: usize, max: usize },
    #[error(
        "statistics push has an invalid proxy id '{0}': expected 1-{MAX_MODEL_ID_LEN} characters from [A-Za-z0-9._-]"
    )]
    InvalidSource(String),
    #[error("statistics push names an invalid model id '{0}'")]
    InvalidModel(String),
    #[error(
        "statistics push gives model '{model}' the rate {rate}: rates must be finite and non-negative"
    )]
    InvalidRate { model: String, rate: f64 },
    #[error(
        "statistics push claims {total} requests per second in total; one proxy may claim at most {max} (stats.max_source_rate)"
    )]
    RateTooHigh { total: f64, max: f64 },
    #[error(
        "statistics from {max} proxies are already kept; a push from another is refused until one goes stale (stats.max_sources)"
    )]
    TooManySources { max: usize },
}

impl StatsRefusal {
    /// The label a refusal is counted under.
    pub fn reason(&self) -> &'static str {
        match self {
            StatsRefusal::TooManyModels { .. } => "too_many_models",
            StatsRefusal::InvalidSource(_) => "invalid_source",
            StatsRefusal::InvalidModel(_) => "invalid_model",
            StatsRefusal::InvalidRate { .. } => "invalid_rate",
            StatsRefusal::RateTooHigh { .. } => "rate_too_high",
            StatsRefusal::TooManySources { .. } => "too_many_sources",
        }
    }

    /// Every value of [`StatsRefusal::reason`], for metrics registered up front.
    pub const REASONS: [&'static str; 6] = [
        "too_many_models",
        "invalid_source",
        "invalid_model",
        "invalid_rate",
        "rate_too_high",
        "too_many_sources",
    ];
}

impl StatsReport {
    /// Checks the report against `bounds`: the entry count, the proxy id and every model id
    /// (the contract's id rule), each rate finite and non-negative, and their sum. Pure, so
    /// a refusal costs no lock and no allocation beyond its message.
    pub fn check(&self, bounds: &Bounds) -> Result<(), StatsRefusal> {
        if self.models.len() > bounds.max_models {
            return Err(StatsRefusal::TooManyModels {
                count: self.models.len(),
                max: bounds.max_models,
            });
        }
        if !valid_model_id(&self.proxy) {
            return Err(StatsRefusal::InvalidSource(truncate_for_message(
                &self.proxy,
            )));
        }
        let mut total = 0.0;
        for (model, rate) in &self.models {
            if !valid_model_id(model) {
                return Err(StatsRefusal::InvalidModel(truncate_for_message(model)));
            }
            if !rate.is_finite() || *rate < 0.0 {
                return Err(StatsRefusal::InvalidRate {
                    model: model.clone(),
                    rate: *rate,
                });
            }
            total += rate;
        }
        if total > bounds.max_source_rate {
            return Err(StatsRefusal::RateTooHigh {
                total,
                max: bounds.max_source_rate,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: Bounds = Bounds {
        max_models: 3,
        max_source_rate: 100.0,
    };

    fn report(models: &[(&str, f64)]) -> StatsReport {
        StatsReport {
            proxy: "proxy-1".into(),
            models: models.iter().map(|(m, r)| (m.to_string(), *r)).collect(),
        }
    }

    #[test]
    fn a_push_within_the_bounds_passes() {
        assert_eq!(report(&[]).check(&BOUNDS), Ok(()));
        assert_eq!(
            report(&[("a", 60.0), ("b", 40.0), ("c", 0.0)]).check(&BOUNDS),
            Ok(())
        );
    }

    #[test]
    fn every_bound_refuses_with_its_own_reason() {
        let reason = |r: StatsReport| r.check(&BOUNDS).unwrap_err().reason();
        assert_eq!(
            reason(report(&[("a", 1.0), ("b", 1.0), ("c", 1.0), ("d", 1.0)])),
            "too_many_models"
        );
        assert_eq!(reason(report(&[("a", f64::NAN)])), "invalid_rate");
        assert_eq!(reason(report(&[("a", f64::INFINITY)])), "invalid_rate");
        assert_eq!(reason(report(&[("a", -1.0)])), "invalid_rate");
        assert_eq!(reason(report(&[("a", 60.0), ("b", 40.5)])), "rate_too_high");
        // The push: 2,000 models at 10^9 req/s.
        let flood = StatsReport {
            proxy: "p".into(),
            models: (0..2).map(|i| (format!("m{i}"), 1e9)).collect(),
        };
        assert_eq!(reason(flood), "rate_too_high");
        assert_eq!(reason(report(&[("../x", 1.0)])), "invalid_model");
        let mut bad_source = report(&[]);
        bad_source.proxy = String::new();
        assert_eq!(reason(bad_source), "invalid_source");
        for r in StatsRefusal::REASONS {
            assert!(r.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
        }
    }

    #[test]
    fn the_message_names_the_key_to_raise() {
        let error = report(&[("a", 1e9)]).check(&BOUNDS).unwrap_err();
        assert!(
            error.to_string().contains("stats.max_source_rate"),
            "{error}"
        );
    }
}
