//! The scorer's per-model ledger: every model request it answers (REST, gRPC, each group
//! of the records routes) counted once, in fixed memory (`manymodels_policy::ledger`), and
//! served at `/v2/mm/ledger` (every tracked model and the tail) and
//! `/v2/mm/ledger/{id}` (one model); the proxies merge those across the pool.
//!
//! The scorer's error kinds (`ScorerError::kind`, 17 of them) are folded into the
//! ledger's eight ([`KINDS`]), so each model's counters stay fixed in size.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use manymodels_config::scorer::LedgerConfig as Config;
use manymodels_contract::Lookup;
use manymodels_contract::ledger::{LedgerReport, ModelReport};
use manymodels_policy::ledger::{ErrorKind, Ledger, LedgerConfig, Sample, merge_counts};
use manymodels_policy::quantiles::SketchConfig;

use crate::error::ScorerError;
use crate::model_id::ModelId;

/// The error kinds a model's ledger counts, each a family of the scorer's error kinds
/// ([`kind_of`]).
pub use manymodels_contract::ledger::ERROR_KINDS as KINDS;

/// The ledger error kind of a scorer error.
pub fn kind_of(error: &ScorerError) -> &'static str {
    match error {
        ScorerError::InvalidInput(_)
        | ScorerError::InvalidModelId(_)
        | ScorerError::BodyTooLarge { .. }
        | ScorerError::NoRoute(_)
        | ScorerError::MethodNotAllowed { .. }
        | ScorerError::Conflict(_)
        | ScorerError::StatsRefused(_)
        | ScorerError::Unauthorized
        | ScorerError::NoPoolKey
        | ScorerError::Unexplainable { .. } => "invalid",
        ScorerError::ModelNotFound(_)
        | ScorerError::VersionNotFound { .. }
        | ScorerError::NoCanary(_)
        | ScorerError::NoShadow(_) => "not_found",
        ScorerError::Load(_) | ScorerError::TooLarge { .. } => "load_failed",
        ScorerError::LoadTimeout { .. } => "load_timeout",
        ScorerError::Overloaded(_) | ScorerError::NoRoomForShadow { .. } => "overloaded",
        ScorerError::Store(_) | ScorerError::ShuttingDown => "unavailable",
        ScorerError::DeadlineExceeded { .. } => "deadline",
        ScorerError::Inference { .. } => "inference_failed",
    }
}

/// What a model request got as far as it went: the version and cache look-up once
/// resolved, the rows once scored.
#[derive(Clone, Copy, Debug, Default)]
pub struct Seen {
    pub version: Option<u64>,
    pub lookup: Option<Lookup>,
    pub rows: u64,
}

/// The ledger behind one lock: recording is a few hundred nanoseconds
/// (BENCHMARKS.md, "Operating 10,000 models one by one"), shorter than any request.
pub struct Ledgers {
    inner: Mutex<Ledger>,
    kinds: [ErrorKind; KINDS.len()],
}

/// Unix seconds now.
fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Ledgers {
    pub fn new(config: &Config) -> Self {
        let ledger = Ledger::new(
            LedgerConfig {
                hot_models: config.hot_models.get(),
                half_life: config.half_life_requests as f64,
                error_kinds: KINDS.to_vec(),
                sketch: SketchConfig {
                    alpha: config.alpha,
                    max_buckets: config.max_buckets.get(),
                },
                ..LedgerConfig::default()
            },
            now(),
        );
        let kinds = KINDS.map(|name| {
            ledger
                .error_kind(name)
                .expect("the ledger was made with these kinds")
        });
        Ledgers {
            inner: Mutex::new(ledger),
            kinds,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        // A panic while recording leaves counters, not broken invariants: keep counting.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts one request of `model` that took `latency` and got `seen`, and failed with
    /// `error` if it did.
    pub fn record(&self, model: &str, seen: Seen, error: Option<&ScorerError>, latency: Duration) {
        let error = error.map(|e| {
            let kind = kind_of(e);
            let i = KINDS
                .iter()
                .position(|k| *k == kind)
                .expect("kind_of answers one of KINDS");
            self.kinds[i]
        });
        let sample = Sample {
            latency: latency.as_secs_f64(),
            rows: seen.rows,
            lookup: seen.lookup,
            error,
            version: seen.version,
        };
        let now = now();
        self.lock().record(model, &sample, now);
    }

    /// Counts the request this task serves, once its model is known (a request whose
    /// model id is not even valid belongs to no model), timed from its arrival.
    pub fn observe(&self, model: Option<&ModelId>, seen: Seen, error: Option<&ScorerError>) {
        if let Some(model) = model {
            self.record(model.as_str(), seen, error, crate::request::since_arrival());
        }
    }

    /// Decays the hotness and hands the models that cooled to the tail: once a second.
    pub fn tick(&self) {
        let now = now();
        self.lock().tick(now);
    }

    /// Every tracked model and the tail; with `prefixes` (a scoped caller) only the
    /// models they admit, and no tail (it sums other tenants' models).
    pub fn report(&self, prefixes: Option<&[String]>, top: Option<usize>) -> LedgerReport {
        let mut report = self.lock().report();
        // A scoped caller's models first, so `top` keeps its busiest, not the scorer's.
        if let Some(prefixes) = prefixes {
            report
                .models
                .retain(|m| prefixes.iter().any(|p| m.model.starts_with(p.as_str())));
        }
        if let Some(top) = top {
            for cooled in report.models.drain(report.models.len().min(top)..) {
                merge_counts(&mut report.tail, &cooled.counts)
                    .expect("one ledger's sketches share a configuration");
            }
        }
        if prefixes.is_some() {
            // Empty, with the sketch's configuration kept so it still merges.
            let latency = manymodels_contract::ledger::LatencySketch {
                alpha: report.tail.latency.alpha,
                max_buckets: report.tail.latency.max_buckets,
                ..Default::default()
            };
            report.tail = manymodels_contract::ledger::Counts {
                latency,
                ..Default::default()
            };
        }
        report
    }

    /// One model's ledger and bounds.
    pub fn model(&self, model: &str) -> ModelReport {
        self.lock().model(model)
    }

    /// Bytes the ledger holds, and the most it may.
    pub fn bytes(&self) -> (usize, usize) {
        let ledger = self.lock();
        (ledger.heap_bytes(), ledger.bound_bytes())
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroUsize;

    use super::*;

    fn config() -> Config {
        Config {
            hot_models: NonZeroUsize::new(4).unwrap(),
            half_life_requests: 1_000,
            alpha: 0.01,
            max_buckets: NonZeroUsize::new(256).unwrap(),
        }
    }

    #[test]
    fn every_scorer_error_kind_has_a_ledger_kind() {
        let errors = [
            ScorerError::invalid("x"),
            ScorerError::ModelNotFound("m".into()),
            ScorerError::DeadlineExceeded { ms: 5 },
            ScorerError::Store("down".into()),
            ScorerError::Overloaded("busy".into()),
            ScorerError::Inference {
                id: "m".into(),
                message: "x".into(),
            },
        ];
        let expected = [
            "invalid",
            "not_found",
            "deadline",
            "unavailable",
            "overloaded",
            "inference_failed",
        ];
        for (error, kind) in errors.iter().zip(expected) {
            assert_eq!(kind_of(error), kind, "{error:?}");
        }
    }

    #[test]
    fn requests_errors_rows_and_versions_are_counted_per_model() {
        let ledgers = Ledgers::new(&config());
        let hit = Seen {
            version: Some(2),
            lookup: Some(Lookup::Hit),
            rows: 3,
        };
        for _ in 0..5 {
            ledgers.record("a", hit, None, Duration::from_millis(2));
        }
        ledgers.record(
            "a",
            Seen::default(),
            Some(&ScorerError::DeadlineExceeded { ms: 1 }),
            Duration::from_millis(9),
        );
        let report = ledgers.model("a");
        let tracked = report.tracked.expect("a hot model is tracked");
        assert_eq!(tracked.counts.requests, 6);
        assert_eq!(tracked.counts.hits, 5);
        assert_eq!(tracked.counts.rows, 15);
        assert_eq!(tracked.counts.errors.get("deadline"), Some(&1));
        assert_eq!(tracked.versions.versions, vec![(2, 5)]);
        assert!(report.requests_at_most >= 6);
        // A scoped caller sees its prefixes' models and no tail.
        ledgers.record("b", hit, None, Duration::from_millis(1));
        let scoped = ledgers.report(Some(&["b".to_string()]), None);
        assert_eq!(scoped.models.len(), 1);
        assert_eq!(scoped.models[0].model, "b");
        assert_eq!(scoped.tail.requests, 0);
        assert_eq!(
            scoped.tail.latency.alpha, 0.01,
            "an empty tail still merges"
        );
        // `top` keeps the busiest models and sums the rest into the tail.
        let top = ledgers.report(None, Some(1));
        assert_eq!(top.models.len(), 1);
        assert_eq!(top.models[0].model, "a");
        assert_eq!(top.tail.requests, 1);
        let (held, bound) = ledgers.bytes();
        assert!(held > 0 && held <= bound, "{held} of {bound}");
    }
}
