//! Tenant shares and request priority on a real scorer: tenant B's floor keeps its
//! resident models while tenant A scans (and the same scan takes B's place on a scorer
//! without shares), the cache view shows each tenant's bytes, floor and cap, and a
//! malformed `x-mm-priority` is a 400.

use manymodels_tests::reference::{LINEAR_SMALL_ROW, rows_body};
use manymodels_tests::{ScorerProcess, TempDir, get_json, write_model};
use serde_json::Value;

const B_MODELS: usize = 10;
const A_MODELS: usize = 60;

fn store() -> TempDir {
    let dir = TempDir::new("tenants-store");
    let model =
        std::fs::read(manymodels_tests::root().join("models/demo/linear-small/1/model.onnx"))
            .unwrap();
    for i in 0..B_MODELS {
        write_model(dir.path(), &format!("b-{i}"), 1, &model).unwrap();
    }
    for i in 0..A_MODELS {
        write_model(dir.path(), &format!("a-{i}"), 1, &model).unwrap();
    }
    dir
}

/// Scores `model`; returns its status, `x-mm-cache` and body.
async fn score(
    client: &reqwest::Client,
    base: &str,
    model: &str,
    priority: Option<&str>,
) -> (u16, String, Value) {
    let mut request = client
        .post(format!("{base}/v2/models/{model}/infer"))
        .json(&rows_body(&[LINEAR_SMALL_ROW.to_vec()]));
    if let Some(priority) = priority {
        request = request.header(manymodels_contract::header::PRIORITY, priority);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let cache = manymodels_tests::http::header(&response, manymodels_contract::header::CACHE);
    (status, cache, response.json().await.unwrap_or(Value::Null))
}

/// B's ten models asked for twice each, then A's sixty asked for six times each (each
/// three times as often as any of B's: without a floor A's models outrank B's). Returns the cache
/// view after the scan and how many of B's models still hit.
async fn scan_beside_b(scorer: &ScorerProcess) -> (Value, usize) {
    let client = reqwest::Client::new();
    for _ in 0..2 {
        for i in 0..B_MODELS {
            assert_eq!(
                score(&client, &scorer.url, &format!("b-{i}"), None).await.0,
                200
            );
        }
    }
    for i in 0..A_MODELS {
        for _ in 0..6 {
            let (status, _, _) =
                score(&client, &scorer.url, &format!("a-{i}"), Some("batch")).await;
            assert_eq!(status, 200, "A's scan is served");
        }
    }
    let view = get_json(&client, &format!("{}/v2/mm/cache", scorer.url)).await;
    let mut hits = 0;
    for i in 0..B_MODELS {
        let (status, cache, _) = score(&client, &scorer.url, &format!("b-{i}"), None).await;
        assert_eq!(status, 200);
        hits += usize::from(cache == "hit");
    }
    (view, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_floor_keeps_tenant_b_resident_while_tenant_a_scans() {
    let store = store();
    // One model's weight, on a roomy scorer.
    let weight = {
        let scorer = ScorerProcess::local(store.path(), &[]);
        let client = reqwest::Client::new();
        score(&client, &scorer.url, "b-0", None).await;
        let view = get_json(&client, &format!("{}/v2/mm/cache", scorer.url)).await;
        view["cache"]["resident_bytes"].as_u64().unwrap()
    };
    assert!(weight > 0);
    // Room for 16 models; B's floor is 10 of them.
    let budget = format!("cache.budget={}", 16 * weight);
    let floored = ScorerProcess::local(
        store.path(),
        &[&budget, "tenants.shares=b=b-:floor=0.625,a=a-:cap=1.0"],
    );
    let (view, hits) = scan_beside_b(&floored).await;
    let tenants = view["cache"]["tenants"].as_array().unwrap();
    let names: Vec<&str> = tenants
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["b", "a", "default"]);
    let b = &tenants[0];
    assert!((b["floor"].as_f64().unwrap() - 0.625).abs() < 1e-9, "{b}");
    assert!((b["cap"].as_f64().unwrap() - 1.0).abs() < 1e-9, "{b}");
    assert_eq!(b["floor_bytes"].as_u64().unwrap(), 10 * weight);
    assert_eq!(b["resident_bytes"].as_u64().unwrap(), 10 * weight, "{b}");
    assert_eq!(b["resident_models"].as_u64().unwrap(), 10);
    assert!(
        tenants[1]["resident_bytes"].as_u64().unwrap() > 0,
        "A has the rest"
    );
    assert_eq!(hits, B_MODELS, "every one of B's models still hits");
    let batch_loads = view["cache"]["loads_by_priority"]["batch"]
        .as_u64()
        .unwrap();
    assert!(
        batch_loads >= A_MODELS as u64,
        "A's loads were batch loads: {batch_loads}"
    );
    drop(floored);

    // The same scan on a scorer without shares takes B's place.
    let plain = ScorerProcess::local(store.path(), &[&budget]);
    let (view, hits) = scan_beside_b(&plain).await;
    assert!(
        view["cache"]["tenants"].as_array().unwrap().is_empty(),
        "no tenants configured"
    );
    assert!(
        hits < B_MODELS / 2,
        "without a floor the scan evicts B: {hits} hits"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_priority_is_a_400_with_an_error_body() {
    let store = store();
    let scorer = ScorerProcess::local(store.path(), &[]);
    let client = reqwest::Client::new();
    let (status, _, body) = score(&client, &scorer.url, "b-0", Some("urgent")).await;
    assert_eq!(status, 400, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("x-mm-priority"), "{error}");
    for good in ["batch", "interactive"] {
        assert_eq!(score(&client, &scorer.url, "b-0", Some(good)).await.0, 200);
    }
    let metrics = scorer.metrics().await;
    assert_eq!(
        metrics.get("mm_scorer_loads_started_total{priority=\"batch\"}"),
        1.0,
        "the first request (batch) started the load"
    );
}
