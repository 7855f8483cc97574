//! `mm-scorer` as a process on 127.0.0.1: correctness, single-flight loads, bad input,
//! SIGTERM, the Azure Blob backend (Azurite) and a 10,000-model store here; the byte budget
//! and the memory bounds in [`memory`]; what a load costs the cache policy in [`load_cost`].

use std::time::Instant;

use manymodels_models::Mix;
use manymodels_tests::azurite::Azurite;
use manymodels_tests::http::post_bytes;
use manymodels_tests::{
    ScorerProcess, TOLERANCE, TempDir, assert_outputs_match, assert_predictions, demo_reference,
    generated_rows, infer_body, post_json, root, rows_body,
};
use serde_json::json;

mod load_cost;
mod memory;

#[tokio::test]
async fn every_demo_model_matches_its_reference_outputs() {
    let scorer = ScorerProcess::local(&root().join("models/demo"), &[]);
    let client = reqwest::Client::new();
    let references = demo_reference();
    assert!(references.len() >= 6, "demo store has too few models");
    for reference in &references {
        let id = reference["id"].as_str().unwrap();
        let url = format!("{}/v2/models/{id}/infer", scorer.url);
        let (status, body) = post_json(&client, &url, &infer_body(reference)).await;
        assert_eq!(status, 200, "{id}: {body}");
        assert_eq!(body["model_name"], id);
        assert_eq!(body["model_version"], "1");
        assert_eq!(body["id"], "ref");
        assert_outputs_match(&body, reference, TOLERANCE);
    }
}

#[tokio::test]
async fn hundred_concurrent_first_requests_cause_exactly_one_load() {
    let scorer = ScorerProcess::local(&root().join("models/demo"), &[]);
    let client = reqwest::Client::new();
    let reference = demo_reference()
        .into_iter()
        .find(|r| r["id"] == "forest-1mb")
        .expect("forest-1mb in the demo store");
    let url = format!("{}/v2/models/forest-1mb/infer", scorer.url);
    let body = infer_body(&reference);
    let requests = (0..100).map(|_| {
        let client = client.clone();
        let url = url.clone();
        let body = body.clone();
        async move { post_json(&client, &url, &body).await }
    });
    let results = futures::future::join_all(requests).await;
    for (status, body) in &results {
        assert_eq!(*status, 200, "{body}");
        assert_outputs_match(body, &reference, TOLERANCE);
    }
    let metrics = scorer.metrics().await;
    assert_eq!(metrics.get("mm_scorer_model_loads_total"), 1.0);
    assert_eq!(
        metrics.get("mm_scorer_cache_hits_total") + metrics.get("mm_scorer_cache_misses_total"),
        100.0
    );
}

#[tokio::test]
async fn bad_requests_are_rejected_and_the_process_keeps_serving() {
    let scorer = ScorerProcess::local(&root().join("models/demo"), &["http.max_body=4KiB"]);
    // A 413 closes its connection before the body is read; no reuse, so the next case
    // never races that close.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let good = json!({"inputs":[{"name":"input","shape":[1,10],"datatype":"FP32","data":[1,2,3,4,5,6,7,8,9,10]}]});
    let big = json!({"inputs":[{"name":"input","shape":[1000,10],"datatype":"FP32","data":vec![1.0f32; 10_000]}]});
    let good = serde_json::to_vec(&good).unwrap();
    let infer = "/v2/models/linear-small/infer";
    let cases: [(&str, Vec<u8>, u16, &str); 6] = [
        (infer, b"{not json".to_vec(), 400, "malformed"),
        (
            infer,
            serde_json::to_vec(&big).unwrap(),
            413,
            "larger than the limit",
        ),
        (
            "/v2/models/no-such-model/infer",
            good.clone(),
            404,
            "not found",
        ),
        (
            "/v2/models/..%2F..%2Fetc%2Fpasswd/infer",
            good.clone(),
            400,
            "invalid model id",
        ),
        (
            "/v2/models/a/b/infer",
            good.clone(),
            400,
            "invalid model id",
        ),
        ("/v2/models//infer", good.clone(), 400, "invalid model id"),
    ];
    for (path, body, status, message) in cases {
        let (code, _, body) = post_bytes(&client, &format!("{}{path}", scorer.url), body).await;
        assert_eq!(code, status, "{path}");
        let error = body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{path}: no error field in {body}"));
        assert!(error.contains(message), "{path}: {error}");
    }
    let (status, _, _) = post_bytes(&client, &format!("{}{infer}", scorer.url), good).await;
    assert_eq!(
        status, 200,
        "the scorer must keep serving after bad requests"
    );
}

#[tokio::test]
async fn sigterm_finishes_and_exits_zero() {
    let mut scorer = ScorerProcess::local(&root().join("models/demo"), &[]);
    let client = reqwest::Client::new();
    let reference = &demo_reference()[0];
    let id = reference["id"].as_str().unwrap();
    let (status, _) = post_json(
        &client,
        &format!("{}/v2/models/{id}/infer", scorer.url),
        &infer_body(reference),
    )
    .await;
    assert_eq!(status, 200);
    let exit = scorer.terminate();
    assert!(
        exit.success(),
        "mm-scorer exited with {exit}:\n{}",
        scorer.logs()
    );
}

#[tokio::test]
async fn azure_blob_store_serves_every_demo_model() {
    let azurite = Azurite::start().await;
    azurite.create_container("models").await;
    azurite
        .upload_store("models", "prod/", &root().join("models/demo"))
        .await;
    // A half-written upload under another name is not a version.
    azurite
        .put_blob(
            "models",
            "prod/linear-small/2/model.onnx.partial",
            b"partial".to_vec(),
        )
        .await;
    let scorer = ScorerProcess::start(
        &[
            "store.kind=azure".into(),
            "store.azure.use_emulator=true".into(),
            "store.azure.container=models".into(),
            "store.azure.prefix=prod".into(),
        ],
        &[("AZURITE_BLOB_STORAGE_URL", azurite.url.as_str())],
    );
    let client = reqwest::Client::new();
    let references = demo_reference();
    for reference in &references {
        let id = reference["id"].as_str().unwrap();
        let (status, body) = post_json(
            &client,
            &format!("{}/v2/models/{id}/infer", scorer.url),
            &infer_body(reference),
        )
        .await;
        assert_eq!(status, 200, "{id}: {body}\n{}", scorer.logs());
        assert_eq!(body["model_version"], "1");
        assert_outputs_match(&body, reference, TOLERANCE);
    }
    let (status, index) = post_json(
        &client,
        &format!("{}/v2/repository/index", scorer.url),
        &json!({}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(index.as_array().unwrap().len(), references.len(), "{index}");
    let (status, body) = post_json(
        &client,
        &format!("{}/v2/models/absent/infer", scorer.url),
        &infer_body(&references[0]),
    )
    .await;
    assert_eq!(status, 404, "{body}");
}

/// 10,000 generated models of the realistic size mix: the index lists them all without
/// loading any, and a sample across sizes scores correctly against the generator's own
/// reference evaluator.
#[tokio::test]
async fn ten_thousand_model_store_lists_and_serves() {
    let store = TempDir::new("10k");
    let started = Instant::now();
    let stats = manymodels_models::write_store(store.path(), 10_000, Mix::Realistic, 7).unwrap();
    eprintln!(
        "generated {} models ({} bytes) in {:?}",
        stats.models,
        stats.bytes,
        started.elapsed()
    );
    let scorer = ScorerProcess::local(store.path(), &["cache.budget=256MiB"]);
    let client = reqwest::Client::new();
    let started = Instant::now();
    let (status, index) = post_json(
        &client,
        &format!("{}/v2/repository/index", scorer.url),
        &json!({}),
    )
    .await;
    eprintln!("index of 10,000 models in {:?}", started.elapsed());
    assert_eq!(status, 200);
    assert_eq!(index.as_array().unwrap().len(), 10_000);
    let metrics = scorer.metrics().await;
    assert_eq!(
        metrics.get("mm_scorer_model_loads_total"),
        0.0,
        "listing must not load models"
    );
    let mut kinds = std::collections::BTreeSet::new();
    for i in (0..10_000).step_by(97) {
        let spec = manymodels_models::spec_for(i, Mix::Realistic, 7);
        let model = manymodels_models::build(&spec);
        kinds.insert(model.size_class().as_str());
        let rows = generated_rows(spec.features(), 3, i as u64);
        let id = manymodels_models::model_id(i);
        let (status, body) = post_json(
            &client,
            &format!("{}/v2/models/{id}/infer", scorer.url),
            &rows_body(&rows),
        )
        .await;
        assert_eq!(status, 200, "{id}: {body}");
        // ONNX Runtime computes a batch of rows with another kernel than a single row;
        // predict_batch reproduces the batch kernel.
        let want = model.predict_batch(&rows.concat());
        assert_predictions(&id, &body, &want, TOLERANCE);
    }
    assert!(
        kinds.len() >= 2,
        "sample should cover several size classes: {kinds:?}"
    );
}
