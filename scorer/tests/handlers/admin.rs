//! The admin routes about one model that only read: a version's digest
//! (`GET /v2/mm/models/{id}/versions/{v}`) and the model's explanation
//! (`GET /v2/mm/models/{id}/explain`), their 404s and their keys.

use super::*;

use axum::http::Request;
use manymodels_config::Secret;
use manymodels_contract::explain::ScorerExplain;
use manymodels_contract::versions::Digest;

const ADMIN_KEY: &str = "admin-secret";
const POOL_KEY: &str = "pool-secret";

/// A GET with `key` as the bearer key, if any.
async fn get_with(router: &Router, uri: &str, key: Option<&str>) -> Reply {
    let mut request = Request::builder().method("GET").uri(uri);
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    send(router, request.body(Body::empty()).expect("valid request")).await
}

/// Lowercase hex SHA-256, computed here rather than by the scorer's own helper.
fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A store with two versions of `m` (the demo `linear-small` file, then it with bytes
/// appended, which the digest sees and no one loads).
fn two_versions() -> (TempDir, Vec<u8>, Vec<u8>) {
    let store = TempDir::new("handlers-admin");
    let one = std::fs::read(demo_store().join("linear-small/1/model.onnx")).unwrap();
    let mut two = one.clone();
    two.extend_from_slice(b"not a model");
    write_model(store.path(), "m", 1, &one).unwrap();
    write_model(store.path(), "m", 2, &two).unwrap();
    (store, one, two)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_digest_is_its_size_and_sha256() {
    let (store, one, two) = two_versions();
    let (_, router) = scorer_for(store.path(), |_| {});
    for (version, bytes) in [(1, &one), (2, &two)] {
        let reply = get(&router, &format!("/v2/mm/models/m/versions/{version}")).await;
        let digest: Digest = reply.ok_as();
        assert_eq!(
            (digest.version, digest.bytes),
            (version, bytes.len() as u64)
        );
        assert_eq!(digest.sha256, sha256(bytes));
        let body = reply.ok();
        assert_eq!(
            body,
            json!({
                "model": "m",
                "version": version,
                "bytes": bytes.len(),
                "sha256": sha256(bytes),
            })
        );
    }
    // No such version, no such model: 404 in the OIP error shape.
    get(&router, "/v2/mm/models/m/versions/3")
        .await
        .assert_error(StatusCode::NOT_FOUND, "has no version 3");
    get(&router, "/v2/mm/models/absent/versions/1")
        .await
        .assert_error(StatusCode::NOT_FOUND, "has no version 1");
    // The id and version rules hold as on every route.
    get(&router, "/v2/mm/models/m/versions/01")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid version");
    get(&router, "/v2/mm/models/..%2Fx/versions/1")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "");
    // Reading the digest loaded nothing.
    let explain = get(&router, "/v2/mm/models/m/explain").await.ok();
    assert_eq!(explain["resident"], json!([]), "{explain}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_explanation_says_why_it_is_or_is_not_in_memory() {
    let (store, _, _) = two_versions();
    // Version 2 is not a model: pin the live version to 1.
    std::fs::write(store.path().join("m/alias.json"), r#"{"pinned": 1}"#).unwrap();
    let (scorer, router) = scorer_for(store.path(), |c| c.name = "scorer-a".into());
    let cold = get(&router, "/v2/mm/models/m/explain").await;
    let typed: ScorerExplain = cold.ok_as();
    assert_eq!(
        (typed.scorer.as_str(), typed.explain.live),
        ("scorer-a", Some(1))
    );
    assert_eq!(typed.explain.verdict, cold.ok()["verdict"]);
    let cold = cold.ok();
    assert_eq!(cold["model"], "m");
    assert_eq!(cold["scorer"], "scorer-a");
    assert_eq!(cold["versions"], json!([1, 2]));
    assert_eq!(cold["live"], 1);
    assert_eq!(cold["resident"], json!([]));
    assert_eq!(cold["evictions"], json!([]));
    assert_eq!(cold["in_share"], false);
    assert_eq!(cold["pool_rate"], Value::Null);
    assert_eq!(cold["refused_again"], false);
    assert_eq!(cold["loading"], false);
    assert!(
        cold["verdict"]
            .as_str()
            .unwrap()
            .starts_with("Not in memory"),
        "{cold}"
    );

    let scored = post_json(
        &router,
        "/v2/models/m/infer",
        &reference_request("linear-small"),
    )
    .await;
    assert_eq!(scored.status, StatusCode::OK, "{}", scored.text());
    let warm = get(&router, "/v2/mm/models/m/explain").await;
    assert_eq!(warm.header("x-mm-scorer"), Some("scorer-a"));
    let typed: ScorerExplain = warm.ok_as();
    let resident = &typed.explain.resident;
    assert_eq!(resident.len(), 1, "{typed:?}");
    assert_eq!((resident[0].view.version, resident[0].evict_rank), (1, 0));
    let warm = warm.ok();
    let resident = warm["resident"].as_array().unwrap();
    assert_eq!(resident.len(), 1, "{warm}");
    let r = &resident[0];
    assert_eq!(r["version"], 1);
    assert_eq!(r["evict_rank"], 0);
    assert_eq!(r["residents"], 1);
    assert!(r["bytes"].as_u64().unwrap() > 0, "{r}");
    for field in [
        "engine",
        "priority",
        "idle_seconds",
        "rate",
        "pool_rate",
        "load_seconds",
    ] {
        assert!(!r[field].is_null(), "{field} in {r}");
    }
    assert!(
        warm["verdict"]
            .as_str()
            .unwrap()
            .starts_with("In memory: version 1"),
        "{warm}"
    );

    let unloaded = post_raw(&router, "/v2/repository/models/m/unload", "").await;
    assert_eq!(unloaded.status, StatusCode::OK, "{}", unloaded.text());
    let gone = get(&router, "/v2/mm/models/m/explain").await;
    let typed: ScorerExplain = gone.ok_as();
    let evicted = &typed.explain.evictions;
    assert_eq!(evicted.len(), 1, "{typed:?}");
    assert_eq!(
        evicted[0].reason,
        manymodels_contract::EvictionReason::Unload
    );
    let gone = gone.ok();
    assert_eq!(gone["resident"], json!([]), "{gone}");
    let eviction = &gone["evictions"][0];
    assert_eq!(eviction["version"], 1, "{gone}");
    assert_eq!(eviction["reason"], "unload", "{gone}");
    assert!(eviction["seconds_ago"].as_f64().unwrap() >= 0.0, "{gone}");
    assert!(
        gone["verdict"].as_str().unwrap().contains("unloaded"),
        "{gone}"
    );
    drop(scorer);

    get(&router, "/v2/mm/models/absent/explain")
        .await
        .assert_error(StatusCode::NOT_FOUND, "absent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_only_admin_routes_take_an_admin_key_or_the_pool_key() {
    let (store, _, _) = two_versions();
    let (_, router) = scorer_for(store.path(), |c| {
        c.admin_keys = vec![Secret::new(ADMIN_KEY)];
        c.pool_key = Secret::new(POOL_KEY);
    });
    for uri in ["/v2/mm/models/m/versions/1", "/v2/mm/models/m/explain"] {
        for key in [None, Some("wrong")] {
            let reply = get_with(&router, uri, key).await;
            assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{uri} {key:?}");
            assert!(reply.json()["error"].is_string(), "{}", reply.text());
        }
        for key in [ADMIN_KEY, POOL_KEY] {
            get_with(&router, uri, Some(key)).await.ok();
        }
    }
    // An admin key whose model does not exist still gets the 404, not a 401.
    get_with(&router, "/v2/mm/models/absent/explain", Some(ADMIN_KEY))
        .await
        .assert_error(StatusCode::NOT_FOUND, "absent");
}
