//! Fuzz target `stats`: the statistics push a scorer takes from every proxy
//! (`PUT /v2/mm/stats`): `manymodels_contract::StatsReport` decoding and its bounds check
//! (`StatsReport::check`), then what the scorer does with a report
//! (`manymodels_policy::PoolView`, `Policy::set_pool_rates`, `hottest_absent`).
//!
//! Inputs: real and hostile push bodies (corpus), byte mutations of them, and generated
//! reports with NaN, infinite, negative, subnormal and huge rates, duplicate and invalid
//! ids and up to thousands of entries, both as values and as JSON. The property: no
//! panic; a body is decoded or refused with a message; a report that passes the check has
//! valid ids and finite non-negative rates within the bounds; whatever reaches the policy
//! leaves it with finite rates and a ranking it can answer.

use manymodels_contract::StatsReport;
use manymodels_contract::stats::Bounds;
use manymodels_fuzz::proptest::prelude::*;
use manymodels_fuzz::{Mutation, generate, mutate, mutation, peak_heap, replay};
use manymodels_policy::{Policy, PolicyConfig, PoolView};

const BOUNDS: Bounds = Bounds {
    max_models: 1_000,
    max_source_rate: 1e6,
};

fn check_report(reports: &[StatsReport]) -> Result<(), String> {
    let mut view = PoolView::default();
    for (i, report) in reports.iter().enumerate() {
        match report.check(&BOUNDS) {
            Ok(()) => {
                let total: f64 = report.models.iter().map(|(_, r)| r).sum();
                if report.models.len() > BOUNDS.max_models
                    || !(0.0..=BOUNDS.max_source_rate).contains(&total)
                    || report
                        .models
                        .iter()
                        .any(|(m, r)| !manymodels_contract::valid_model_id(m) || !r.is_finite())
                {
                    return Err(format!("passed the check: {report:?}"));
                }
                view.apply(report.clone(), i as f64, 60.0);
            }
            Err(refusal) => {
                if refusal.to_string().is_empty() || refusal.reason().is_empty() {
                    return Err(format!("a refusal without a reason: {refusal:?}"));
                }
            }
        }
    }
    let combined = view.combined();
    if let Some((m, r)) = combined.iter().find(|(_, r)| !r.is_finite() || **r < 0.0) {
        return Err(format!("checked reports combined to {m}: {r}"));
    }
    // The policy takes the checked, combined rates; and the raw ones of every report too,
    // as far as JSON can carry them (finite: NaN and infinities do not decode), in case a
    // report reaches it unchecked.
    let names: Vec<&String> = combined.keys().collect();
    let mut policy: Policy<u32> = Policy::new(1 << 30, PolicyConfig::default());
    for (k, _) in names.iter().enumerate().take(8) {
        policy.admit(k as u32, 1 << 20, Some(0.01), 1.0);
    }
    policy.set_pool_rates(
        names
            .iter()
            .enumerate()
            .map(|(k, m)| (k as u32, combined[*m])),
        2.0,
    );
    for report in reports {
        policy.set_pool_rates(
            report
                .models
                .iter()
                .enumerate()
                .filter(|(_, (_, r))| r.is_finite())
                .map(|(k, (_, r))| (k as u32, *r)),
            3.0,
        );
        let hottest = policy.hottest_absent(20, 3.0);
        if hottest.iter().any(|(_, r)| r.is_nan()) {
            return Err(format!("hottest_absent gave NaN: {hottest:?}"));
        }
        let _ = policy.residents(3.0);
        let _ = policy.lowest();
    }
    Ok(())
}

fn check_body(body: &[u8]) -> Result<(), String> {
    let (decoded, peak) = peak_heap(|| serde_json::from_slice::<StatsReport>(body));
    if peak > 16 * body.len() + (64 << 10) {
        return Err(format!(
            "a {}-byte body peaked at {peak} heap bytes",
            body.len()
        ));
    }
    match decoded {
        Ok(report) => check_report(&[report]),
        Err(e) if !e.to_string().is_empty() => Ok(()),
        Err(e) => Err(format!("a decode error without a message: {e:?}")),
    }
}

fn rate() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => 0.0..1e4f64,
        1 => any::<f64>(),
        1 => prop::sample::select(vec![
            f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.0, -1.0, f64::MAX, f64::MIN_POSITIVE,
            5e-324, 1e6, 1e6 + 1.0, 2.5e5,
        ]),
    ]
}

fn id() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => (0u32..64).prop_map(|k| format!("model-{k}")),
        1 => prop::sample::select(vec!["", "..", "../x", "a/b", "é", "-x", "a\0b"]).prop_map(str::to_string),
        1 => "[a-z]{126,130}",
    ]
}

fn report() -> impl Strategy<Value = StatsReport> {
    let size = prop_oneof![8 => 0usize..40, 1 => 990usize..1_010, 1 => 3_000usize..5_000];
    (
        prop_oneof![8 => "proxy-[0-3]", 1 => Just(String::new()), 1 => any::<String>()],
        size.prop_flat_map(|n| prop::collection::vec((id(), rate()), n..=n)),
    )
        .prop_map(|(proxy, models)| StatsReport { proxy, models })
}

#[derive(Clone, Debug)]
enum Input {
    Reports(Vec<StatsReport>),
    Json(StatsReport),
    Mutated {
        seed: usize,
        mutations: Vec<Mutation>,
    },
}

#[test]
fn stats() {
    let files = replay("stats", |_, body| check_body(body));
    println!("fuzz stats: {files} corpus files replayed");
    let seeds: Vec<Vec<u8>> = manymodels_fuzz::corpus("stats")
        .into_iter()
        .map(|(_, b)| b)
        .collect();
    let strategy = prop_oneof![
        prop::collection::vec(report(), 1..4).prop_map(Input::Reports),
        report().prop_map(Input::Json),
        (0..seeds.len(), prop::collection::vec(mutation(), 1..5))
            .prop_map(|(seed, mutations)| Input::Mutated { seed, mutations }),
    ];
    generate("stats", 1_500, strategy, |input| match input {
        Input::Reports(reports) => check_report(&reports),
        Input::Json(report) => {
            // serde_json writes NaN and infinities as null, which must not decode.
            let body = serde_json::to_vec(&report).map_err(|e| e.to_string())?;
            check_body(&body)
        }
        Input::Mutated { seed, mutations } => {
            let mut body = seeds[seed].clone();
            for m in &mutations {
                mutate(&mut body, m);
            }
            check_body(&body)
        }
    });
}
