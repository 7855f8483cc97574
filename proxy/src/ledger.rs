//! The pool's per-model ledger: `GET /v2/mm/ledger[?top=N]` and `GET /v2/mm/ledger/{id}`
//! ask every scorer in rotation for its ledger (`scorer::ledger`) and merge the answers
//! exactly (`manymodels_policy::ledger`: counters add, latency sketches merge bucket by
//! bucket, so a merged quantile is within the sketches' `alpha` of the exact quantile of
//! every request the pool answered).
//!
//! A scorer that does not answer within [`TIMEOUT`], answers something unreadable, or
//! keeps sketches of another accuracy than the first scorer's (`ledger.alpha`,
//! `ledger.max_buckets` differ during a rollout) is left out and named in `missing`, so a
//! merged figure never mixes accuracies silently. A key scoped to model-id prefixes sees
//! only its models (the scorers filter by `x-mm-model-prefixes`) and no tail.

use std::time::Duration;

use manymodels_contract::ledger::{
    LedgerReport, Missing, ModelReport, PoolLedger, PoolModelLedger,
};
use manymodels_contract::oip::ErrorBody;
use manymodels_contract::route as scorer_route;
use manymodels_policy::ledger::{
    fill_quantiles, fill_report_quantiles, merge_model_reports, merge_reports, report_totals,
};
use serde::de::DeserializeOwned;

use crate::pool::Pool;
use crate::reject::Reply;

/// How long each scorer may take to answer.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// Models listed when `top` is not given.
pub const DEFAULT_TOP: usize = 100;
/// The most models one answer lists.
pub const MAX_TOP: usize = 10_000;

/// What the caller asked: the whole ledger (with its `top`) or one model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Asked {
    Pool { top: usize },
    Model(String),
}

/// The `top` of a ledger query string (`top=N`, 1 to [`MAX_TOP`]); other parameters are
/// refused, so a typo is not silently ignored.
pub fn parse_query(query: Option<&str>) -> Result<usize, String> {
    let mut top = DEFAULT_TOP;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("top", n)) => {
                top = n
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_TOP).contains(n))
                    .ok_or_else(|| format!("top must be a whole number from 1 to {MAX_TOP}"))?;
            }
            _ => return Err(format!("unknown ledger parameter `{pair}` (only top=N)")),
        }
    }
    Ok(top)
}

/// Asks every scorer in rotation and merges. `scope` is the caller key's prefixes (empty:
/// unscoped); each scorer is sent the pool key it takes.
pub async fn serve(pool: &Pool, asked: Asked, scope: &[String]) -> Reply {
    // Every tracked model of every scorer (at most 2 × `ledger.hot_models` each), cut to
    // `top` once merged: a scorer's own cut would move a model's requests there to its
    // tail while the model is in the pool's top, and the merge would not be exact.
    let path = match &asked {
        Asked::Pool { .. } => scorer_route::LEDGER.to_string(),
        Asked::Model(id) => scorer_route::LEDGER_MODEL.path(id),
    };
    // Scorers out of rotation (unhealthy, or draining) are named, not asked.
    let prefixes = scope.join("|");
    let (asked_scorers, out) = pool.get_from_all(&path, Some(&prefixes), TIMEOUT).await;
    let (names, answers): (Vec<String>, Vec<Result<Vec<u8>, String>>) =
        asked_scorers.into_iter().unzip();
    let names = names.into_iter();
    let not_in_rotation = out.into_iter().map(|scorer| Missing {
        scorer,
        error: "not in rotation (unhealthy or draining): its requests are not counted".into(),
    });
    match asked {
        Asked::Pool { top } => {
            let (scorers, reports, mut missing) = read::<LedgerReport>(names, answers, |r| {
                (r.tail.latency.alpha, r.tail.latency.max_buckets)
            });
            missing.extend(not_in_rotation);
            match merge_reports(&reports, top).and_then(|mut report| {
                let mut pool = report_totals(&report)?;
                fill_quantiles(&mut pool);
                fill_report_quantiles(&mut report);
                Ok(PoolLedger {
                    scorers,
                    missing,
                    report,
                    pool,
                })
            }) {
                Ok(view) => Reply::json(200, &view),
                Err(e) => unmergeable(e),
            }
        }
        Asked::Model(id) => {
            let (scorers, reports, mut missing) = read::<ModelReport>(names, answers, |r| {
                r.tracked.as_ref().map_or((0.0, 0), |t| {
                    (t.counts.latency.alpha, t.counts.latency.max_buckets)
                })
            });
            missing.extend(not_in_rotation);
            match merge_model_reports(&reports) {
                Ok(merged) => {
                    let mut report = merged.unwrap_or(ModelReport {
                        model: id,
                        ..Default::default()
                    });
                    if let Some(tracked) = &mut report.tracked {
                        fill_quantiles(&mut tracked.counts);
                    }
                    Reply::json(
                        200,
                        &PoolModelLedger {
                            scorers,
                            missing,
                            report,
                        },
                    )
                }
                Err(e) => unmergeable(e),
            }
        }
    }
}

fn unmergeable(e: impl std::fmt::Display) -> Reply {
    Reply::json(
        502,
        &ErrorBody::new(format!("the scorers' ledgers do not merge: {e}")),
    )
}

/// Reads each scorer's answer as a `T`; keeps those whose sketch configuration (`config`
/// of an answer; `(0, 0)` for one without a sketch, which any configuration admits)
/// matches the first configured one. Answers (scorers counted, reports, missing).
fn read<T: DeserializeOwned>(
    names: impl Iterator<Item = String>,
    answers: Vec<Result<Vec<u8>, String>>,
    config: impl Fn(&T) -> (f64, u32),
) -> (Vec<String>, Vec<T>, Vec<Missing>) {
    let (mut scorers, mut reports, mut missing) = (Vec::new(), Vec::new(), Vec::new());
    let mut reference: Option<(f64, u32)> = None;
    for (scorer, answer) in names.zip(answers) {
        let parsed = answer.and_then(|body| {
            serde_json::from_slice::<T>(&body).map_err(|e| format!("unreadable ledger: {e}"))
        });
        let report = match parsed {
            Ok(report) => report,
            Err(error) => {
                missing.push(Missing { scorer, error });
                continue;
            }
        };
        let theirs = config(&report);
        if theirs != (0.0, 0) {
            match reference {
                None => reference = Some(theirs),
                Some(reference) if reference != theirs => {
                    missing.push(Missing {
                        scorer,
                        error: format!(
                            "its sketches (alpha {}, {} buckets) differ from the pool's \
                             (alpha {}, {} buckets)",
                            theirs.0, theirs.1, reference.0, reference.1
                        ),
                    });
                    continue;
                }
                Some(_) => {}
            }
        }
        scorers.push(scorer);
        reports.push(report);
    }
    (scorers, reports, missing)
}

#[cfg(test)]
mod tests {
    use manymodels_contract::ledger::{Counts, LatencySketch};

    use super::*;

    #[test]
    fn the_query_takes_top_alone_and_refuses_the_rest() {
        assert_eq!(parse_query(None), Ok(DEFAULT_TOP));
        assert_eq!(parse_query(Some("top=7")), Ok(7));
        assert!(parse_query(Some("top=0")).is_err());
        assert!(parse_query(Some(&format!("top={}", MAX_TOP + 1))).is_err());
        assert!(parse_query(Some("tpo=3")).is_err());
    }

    fn report(alpha: f64, requests: u64) -> Vec<u8> {
        serde_json::to_vec(&LedgerReport {
            models: Vec::new(),
            tail: Counts {
                requests,
                latency: LatencySketch {
                    alpha,
                    max_buckets: 1024,
                    ..Default::default()
                },
                ..Default::default()
            },
        })
        .unwrap()
    }

    /// Three scorers' ledgers of known latencies, read and merged as `serve` does: every
    /// model's merged quantiles are within the sketch's alpha (1%) of the exact quantiles
    /// of all its requests, wherever they were served.
    #[test]
    fn merged_quantiles_are_within_alpha_of_the_exact_ones_of_every_request() {
        use manymodels_policy::ledger::{Ledger, LedgerConfig, Sample};
        let mut exact: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut uniform = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 11) as f64 / (1u64 << 53) as f64
        };
        let answers: Vec<Result<Vec<u8>, String>> = (0..3)
            .map(|scorer| {
                let mut ledger = Ledger::new(LedgerConfig::default(), 0.0);
                for i in 0..6_000 {
                    let model = format!("m{}", i % 7);
                    // Log-uniform from 50 µs to 500 ms, times 1, 2 or 3 by scorer.
                    let latency = 5e-5 * 10f64.powf(4.0 * uniform()) * (1.0 + scorer as f64);
                    exact.entry(model.clone()).or_default().push(latency);
                    let sample = Sample {
                        latency,
                        rows: 1,
                        ..Default::default()
                    };
                    ledger.record(&model, &sample, 1.0);
                }
                Ok(serde_json::to_vec(&ledger.report()).unwrap())
            })
            .collect();
        let names = ["a", "b", "c"].map(String::from).into_iter();
        let (scorers, reports, missing) = read::<LedgerReport>(names, answers, |r| {
            (r.tail.latency.alpha, r.tail.latency.max_buckets)
        });
        assert_eq!((scorers.len(), missing.len()), (3, 0));
        let mut merged = merge_reports(&reports, 100).unwrap();
        fill_report_quantiles(&mut merged);
        assert_eq!(merged.models.len(), 7);
        for model in &merged.models {
            let mut values = exact[&model.model].clone();
            values.sort_by(f64::total_cmp);
            assert_eq!(model.counts.requests, values.len() as u64);
            let q = model.counts.quantiles.expect("filled");
            for (p, got) in [(0.5, q.p50), (0.9, q.p90), (0.99, q.p99)] {
                // The sketch's rank convention: the value of rank floor(p * (n - 1)).
                let want = values[(p * (values.len() - 1) as f64) as usize];
                assert!(
                    (got - want).abs() <= 0.01 * want,
                    "{} p{p}: {got} against exact {want}",
                    model.model
                );
            }
            assert_eq!(q.max, *values.last().unwrap(), "the max is exact");
        }
    }

    #[test]
    fn a_scorer_with_other_sketches_or_an_unreadable_answer_is_left_out_and_named() {
        let names = ["a", "b", "c", "d"].map(String::from).into_iter();
        let answers = vec![
            Ok(report(0.01, 3)),
            Ok(report(0.02, 5)),
            Ok(b"{".to_vec()),
            Err("unreachable: refused".to_string()),
        ];
        let (scorers, reports, missing) = read::<LedgerReport>(names, answers, |r| {
            (r.tail.latency.alpha, r.tail.latency.max_buckets)
        });
        assert_eq!(scorers, ["a"]);
        assert_eq!(reports[0].tail.requests, 3);
        let named: Vec<&str> = missing.iter().map(|m| m.scorer.as_str()).collect();
        assert_eq!(named, ["b", "c", "d"]);
        assert!(
            missing[0].error.contains("alpha 0.02"),
            "{}",
            missing[0].error
        );
    }
}
