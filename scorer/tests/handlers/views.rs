//! The views the scorer answers and `mmctl` reads, read as the contract's types: a model's
//! version status, refresh, pin, unpin and publish outcomes, its canary answers, the
//! repository index, model metadata and an inference response. (The digest, the model
//! explanation and the cache view are read so in `admin.rs` and `metrics.rs`.)

use manymodels_contract::oip::{IndexEntry, InferResponse, ModelMetadata};
use manymodels_contract::versions::{
    CanaryAnswer, CanaryDropped, CanaryPromoted, CanaryRequest, PinRequest, Refresh, VersionStatus,
};
use manymodels_tests::classifiers::{classifier_reference, classifier_store};

use super::*;

/// A store with `m` at versions 1 and 2, both the demo `linear-small`.
fn two_good_versions() -> (TempDir, Vec<u8>) {
    let store = TempDir::new("handlers-views");
    let model = std::fs::read(demo_store().join("linear-small/1/model.onnx")).unwrap();
    write_model(store.path(), "m", 1, &model).unwrap();
    write_model(store.path(), "m", 2, &model).unwrap();
    (store, model)
}

fn json_body<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap()
}

/// Scores `m` once with the reference inputs; answers the version that scored.
async fn score(router: &Router) -> String {
    post_json(
        router,
        "/v2/models/m/infer",
        &reference_request("linear-small"),
    )
    .await
    .ok_as::<InferResponse>()
    .model_version
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_status_and_refreshes_read_as_the_contract_types() {
    let (store, model) = two_good_versions();
    let (_, router) = scorer_for(store.path(), |_| {});
    let status: VersionStatus = get(&router, "/v2/mm/models/m").await.ok_as();
    assert_eq!((status.model.as_str(), status.versions), ("m", vec![1, 2]));
    assert_eq!((status.live, status.pinned), (Some(2), None));
    assert!(status.resident.is_empty() && status.refused.is_none() && status.canary.is_none());

    let answer: InferResponse = post_json(
        &router,
        "/v2/models/m/infer",
        &reference_request("linear-small"),
    )
    .await
    .ok_as();
    assert_eq!(
        (answer.model_name.as_str(), answer.model_version.as_str()),
        ("m", "2")
    );
    let output = &answer.outputs[0];
    let elements: i64 = output.shape.iter().product();
    assert_eq!(output.data.len() as i64, elements, "{output:?}");

    let pin = json_body(&PinRequest { version: 1 });
    let pinned: Refresh = call(&router, "POST", "/v2/mm/models/m/pin", pin)
        .await
        .ok_as();
    assert_eq!(
        (pinned.live, pinned.previous, pinned.swapped),
        (1, Some(2), true)
    );
    let status: VersionStatus = get(&router, "/v2/mm/models/m").await.ok_as();
    assert_eq!(
        (status.pinned, status.live, status.resident),
        (Some(1), Some(1), vec![1])
    );
    let unpinned: Refresh = call(&router, "POST", "/v2/mm/models/m/unpin", "")
        .await
        .ok_as();
    assert_eq!((unpinned.model.as_str(), unpinned.live), ("m", 2));
    let refreshed: Refresh = call(&router, "POST", "/v2/mm/models/m/refresh", "")
        .await
        .ok_as();
    assert_eq!((refreshed.live, refreshed.previous), (2, None));

    let published = call(&router, "PUT", "/v2/mm/models/m/versions/3", model).await;
    assert_eq!(
        published.status,
        StatusCode::CREATED,
        "{}",
        published.text()
    );
    let published: Refresh = published.read_as();
    assert_eq!((published.live, published.previous), (3, Some(2)));
    assert!(published.refused.is_none(), "{published:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_answers_read_as_the_contract_types() {
    let (store, _) = two_good_versions();
    let (_, router) = scorer_for(store.path(), |_| {});
    let canary = |percent| {
        json_body(&CanaryRequest {
            version: 1,
            percent,
        })
    };
    let set: CanaryAnswer = call(&router, "PUT", "/v2/mm/models/m/canary", canary(50.0))
        .await
        .ok_as();
    assert_eq!((set.model.as_str(), set.canary.version), ("m", 1));
    assert_eq!((set.canary.percent, set.canary.active), (50.0, true));
    let versions = [score(&router).await, score(&router).await];
    assert_eq!(
        versions.iter().filter(|v| *v == "1").count(),
        1,
        "{versions:?}"
    );
    let shown: CanaryAnswer = get(&router, "/v2/mm/models/m/canary").await.ok_as();
    assert_eq!((shown.canary.requests, shown.canary.to_canary), (2, 1));
    let status: VersionStatus = get(&router, "/v2/mm/models/m").await.ok_as();
    assert_eq!(status.canary, Some(shown.canary));

    let dropped: CanaryDropped = call(&router, "DELETE", "/v2/mm/models/m/canary", "")
        .await
        .ok_as();
    assert_eq!(dropped.dropped.map(|c| c.version), Some(1));
    call(&router, "DELETE", "/v2/mm/models/m/canary", "")
        .await
        .assert_error(StatusCode::NOT_FOUND, "canary");

    call(&router, "PUT", "/v2/mm/models/m/canary", canary(100.0))
        .await
        .ok();
    let promoted: CanaryPromoted = call(&router, "POST", "/v2/mm/models/m/canary/promote", "")
        .await
        .ok_as();
    assert_eq!((promoted.promoted.version, promoted.pinned.live), (1, 1));
    let status: VersionStatus = get(&router, "/v2/mm/models/m").await.ok_as();
    assert_eq!((status.pinned, status.canary), (Some(1), None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_and_metadata_read_as_the_contract_types() {
    let router = demo_router();
    infer_reference(&router, "linear-small").await.ok();
    let index: Vec<IndexEntry> = post_raw(&router, "/v2/repository/index", "{}")
        .await
        .ok_as();
    let ready: Vec<&IndexEntry> = index.iter().filter(|e| e.state == "READY").collect();
    assert_eq!(ready.len(), 1, "{index:?}");
    assert_eq!(
        (ready[0].name.as_str(), ready[0].version.as_deref()),
        ("linear-small", Some("1"))
    );
    let cold = index.iter().find(|e| e.name == "multi-input").unwrap();
    assert_eq!(
        (cold.state.as_str(), cold.reason.as_str(), &cold.version),
        ("UNAVAILABLE", "not loaded", &None)
    );

    let metadata: ModelMetadata = get(&router, "/v2/models/multi-input").await.ok_as();
    assert_eq!(
        (metadata.name.as_str(), metadata.versions),
        ("multi-input", vec!["1".to_string()])
    );
    let inputs: Vec<(&str, &str, &[i64])> = metadata
        .inputs
        .iter()
        .map(|i| (i.name.as_str(), i.datatype.as_str(), i.shape.as_slice()))
        .collect();
    assert_eq!(
        inputs,
        [
            ("numeric", "FP32", &[-1, 4][..]),
            ("flags", "BOOL", &[-1, 2][..]),
            ("store_code", "INT64", &[-1, 1][..]),
        ]
    );

    // A classifier's metadata names its ZipMap columns in the output's parameters.
    let (_, classifiers) = scorer_for(&classifier_store(), |_| {});
    let reference = classifier_reference();
    let zipmap = reference
        .iter()
        .find(|r| {
            r["outputs"]
                .as_array()
                .unwrap()
                .iter()
                .any(|o| o.get("classes").is_some())
        })
        .expect("a classifier with classes");
    let id = zipmap["id"].as_str().unwrap();
    let metadata: ModelMetadata = get(&classifiers, &format!("/v2/models/{id}")).await.ok_as();
    assert!(
        metadata.outputs.iter().any(|o| o
            .parameters
            .as_ref()
            .is_some_and(|p| p.contains_key("classes"))),
        "{metadata:?}"
    );
}
