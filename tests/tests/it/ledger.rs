//! The per-model ledger through a real proxy in front of three real scorers: each model's
//! requests, hits, loads, rows and errors counted once, merged across the scorers exactly
//! (the proxy's merge equals the merge of what each scorer answers, sketches bucket for
//! bucket), one model's ledger on its own route, and a scoped key's view.

use std::time::{Duration, Instant};

use manymodels_contract::ledger::{LedgerReport, PoolLedger, PoolModelLedger};
use manymodels_models::Mix;
use manymodels_tests::http::call;
use manymodels_tests::process::Pool;
use manymodels_tests::reference::{infer_body, reference};
use manymodels_tests::store::{copy_tree, root};
use manymodels_tests::{TempDir, generated_rows, post_json, rows_body};
use serde_json::json;

fn store(name: &str, n: usize) -> (TempDir, Vec<usize>) {
    let store = TempDir::new(name);
    manymodels_models::write_store(store.path(), n, Mix::Tiny, 5).unwrap();
    let features = (0..n)
        .map(|i| manymodels_models::spec_for(i, Mix::Tiny, 5).features())
        .collect();
    (store, features)
}

#[tokio::test]
async fn the_pool_ledger_counts_every_model_and_merges_the_scorers_exactly() {
    let (store, features) = store("ledger-pool", 12);
    let pool = Pool::local(store.path(), 3, &[], &[]);
    let client = reqwest::Client::new();
    let url = &pool.proxy.url;
    // Model i gets i + 1 requests of i % 3 + 1 rows each.
    let mut slowest = Duration::ZERO;
    for (i, &width) in features.iter().enumerate() {
        let id = manymodels_models::model_id(i);
        for r in 0..=i {
            let rows = generated_rows(width, i % 3 + 1, r as u64);
            let started = Instant::now();
            let (status, body) = post_json(
                &client,
                &format!("{url}/v2/models/{id}/infer"),
                &rows_body(&rows),
            )
            .await;
            slowest = slowest.max(started.elapsed());
            assert_eq!(status, 200, "{body}");
        }
    }
    // Two requests model 0 cannot take (a wrong feature count): its `invalid` errors.
    let model0 = manymodels_models::model_id(0);
    for _ in 0..2 {
        let bad = rows_body(&generated_rows(features[0] + 1, 1, 9));
        let (status, _) =
            post_json(&client, &format!("{url}/v2/models/{model0}/infer"), &bad).await;
        assert_eq!(status, 400);
    }
    let (status, body) = call(
        &client,
        "GET",
        &format!("{url}/v2/mm/ledger?top=1000"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let merged: PoolLedger = serde_json::from_value(body.clone()).unwrap();
    assert_eq!(merged.scorers.len(), 3, "{body}");
    assert!(merged.missing.is_empty(), "{body}");
    for (i, _) in features.iter().enumerate() {
        let id = manymodels_models::model_id(i);
        let model = merged
            .report
            .models
            .iter()
            .find(|m| m.model == id)
            .unwrap_or_else(|| panic!("{id} is tracked: {body}"));
        let bad = if i == 0 { 2 } else { 0 };
        assert_eq!(model.counts.requests, i as u64 + 1 + bad, "{id}");
        assert_eq!(
            model.counts.rows,
            (i as u64 + 1) * (i as u64 % 3 + 1),
            "{id}"
        );
        assert_eq!(
            model.counts.hits + model.counts.loads,
            i as u64 + 1 + bad,
            "{id}"
        );
        assert!(model.counts.loads >= 1, "{id}: its first request loaded it");
        assert_eq!(
            model.versions.versions,
            vec![(1, i as u64 + 1 + bad)],
            "{id}"
        );
        let errors = model.counts.errors.get("invalid").copied().unwrap_or(0);
        assert_eq!(errors, bad, "{id}");
        let q = model.counts.quantiles.expect("quantiles are filled");
        assert!(q.p50 <= q.p90 && q.p90 <= q.p99 && q.p99 <= q.max, "{q:?}");
        assert!(
            q.max <= slowest.as_secs_f64() + 0.001,
            "a scorer's latency is within the client's: {q:?} vs {slowest:?}"
        );
    }
    let sent: u64 = (1..=12).sum::<u64>() + 2;
    assert_eq!(merged.pool.requests, sent);
    assert_eq!(merged.report.tail.requests, 0, "every model is tracked");

    // The proxy's merge is the merge of what each scorer answers, sketches included.
    let mut reports = Vec::new();
    for scorer in &pool.scorers {
        let (status, body) = call(
            &client,
            "GET",
            &format!("{}/v2/mm/ledger?top=1000", scorer.url),
            None,
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        reports.push(serde_json::from_value::<LedgerReport>(body).unwrap());
    }
    let mut ours = manymodels_policy::ledger::merge_reports(&reports, 1000).unwrap();
    manymodels_policy::ledger::fill_report_quantiles(&mut ours);
    let mut theirs = merged.report.clone();
    for report in [&mut ours, &mut theirs] {
        report.models.sort_by(|a, b| a.model.cmp(&b.model));
    }
    // Counters and bucket counts agree exactly; the floats (min, max, quantiles, times)
    // within JSON's text round trip (serde_json parses without `float_roundtrip`).
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * a.abs().max(b.abs());
    assert_eq!(ours.models.len(), theirs.models.len());
    for (a, b) in ours.models.iter_mut().zip(theirs.models.iter_mut()) {
        for (x, y) in [
            (a.counts.latency.min, b.counts.latency.min),
            (a.counts.latency.max, b.counts.latency.max),
            (a.counts.last_scored, b.counts.last_scored),
            (Some(a.since), Some(b.since)),
        ] {
            assert!(
                close(x.unwrap(), y.unwrap()),
                "{}: {x:?} against {y:?}",
                a.model
            );
        }
        let (qa, qb) = (a.counts.quantiles.unwrap(), b.counts.quantiles.unwrap());
        for (x, y) in [
            (qa.p50, qb.p50),
            (qa.p90, qb.p90),
            (qa.p99, qb.p99),
            (qa.max, qb.max),
        ] {
            assert!(close(x, y), "{}: {x} against {y}", a.model);
        }
        for m in [&mut *a, &mut *b] {
            (
                m.counts.latency.min,
                m.counts.latency.max,
                m.counts.last_scored,
            ) = (None, None, None);
            m.counts.quantiles = None;
            m.since = 0.0;
        }
        assert_eq!(a, b);
    }
    assert_eq!(ours.tail.requests, theirs.tail.requests);

    // One model on its own route.
    let id = manymodels_models::model_id(5);
    let (status, body) = call(
        &client,
        "GET",
        &format!("{url}/v2/mm/ledger/{id}"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let one: PoolModelLedger = serde_json::from_value(body.clone()).unwrap();
    let tracked = one.report.tracked.expect("tracked");
    assert_eq!(tracked.counts.requests, 6, "{body}");
    assert!(one.report.requests_at_most >= 6);
    // A bad query is a clear 400.
    let (status, body) = call(
        &client,
        "GET",
        &format!("{url}/v2/mm/ledger?top=0"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("top"), "{body}");
}

#[tokio::test]
async fn a_scoped_key_sees_only_its_models_in_the_ledger() {
    let store = TempDir::new("ledger-scoped");
    let linear = root().join("models/demo/linear-small");
    for id in ["acme-1", "globex-1"] {
        copy_tree(&linear, &store.path().join(id));
    }
    let pool = Pool::local(
        store.path(),
        2,
        &[],
        &["auth.api_keys=acme:acme-k:acme-,ops:ops-k"],
    );
    let client = reqwest::Client::new();
    let url = &pool.proxy.url;
    let body = infer_body(&reference("linear-small"));
    for (id, key) in [("acme-1", "acme-k"), ("globex-1", "ops-k")] {
        let (status, answer) = call(
            &client,
            "POST",
            &format!("{url}/v2/models/{id}/infer"),
            Some(key),
            Some(&body),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
    }
    let (status, body) = call(
        &client,
        "GET",
        &format!("{url}/v2/mm/ledger"),
        Some("acme-k"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let view: PoolLedger = serde_json::from_value(body.clone()).unwrap();
    let models: Vec<&str> = view
        .report
        .models
        .iter()
        .map(|m| m.model.as_str())
        .collect();
    assert_eq!(models, ["acme-1"], "{body}");
    assert_eq!(
        view.pool.requests, 1,
        "no other tenant's requests, not even summed"
    );
    let (status, _) = call(
        &client,
        "GET",
        &format!("{url}/v2/mm/ledger/globex-1"),
        Some("acme-k"),
        None,
    )
    .await;
    assert_eq!(status, 403);
    let (status, body) = call(
        &client,
        "GET",
        &format!("{url}/v2/mm/ledger"),
        Some("ops-k"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["pool"]["requests"], json!(2));
}
