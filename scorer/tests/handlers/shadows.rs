//! A model's shadow through the admin routes, read as the contract's types: set (the
//! candidate in the store and not the live version), counted on the requests that name no
//! version (compared by the background worker), listed with its verdict on
//! `/v2/mm/shadows`, narrowed by `x-mm-model-prefixes`, promoted once at its `since_ms`,
//! and dropped.

use manymodels_contract::oip::InferResponse;
use manymodels_contract::shadow::{
    ShadowDropped, ShadowPromoted, ShadowView, ShadowsReport, Verdict,
};

use super::*;

/// A store with `m` at versions 1 and 2, both the demo `linear-small`.
fn two_good_versions() -> TempDir {
    let store = TempDir::new("handlers-shadows");
    let model = std::fs::read(demo_store().join("linear-small/1/model.onnx")).unwrap();
    write_model(store.path(), "m", 1, &model).unwrap();
    write_model(store.path(), "m", 2, &model).unwrap();
    store
}

/// Scores `m` once (at `version`, or the live version); answers the version that scored.
async fn score(router: &Router, version: Option<u64>) -> String {
    let uri = match version {
        Some(v) => format!("/v2/models/m/versions/{v}/infer"),
        None => "/v2/models/m/infer".to_string(),
    };
    post_json(router, &uri, &reference_request("linear-small"))
        .await
        .ok_as::<InferResponse>()
        .model_version
}

/// A GET with the scoped caller's prefixes, as a proxy forwards it.
async fn get_scoped(router: &Router, uri: &str, prefixes: &str) -> Reply {
    let request = Request::builder()
        .method("GET")
        .uri(uri)
        .header("x-mm-model-prefixes", prefixes)
        .body(Body::empty())
        .expect("valid request");
    send(router, request).await
}

/// This scorer's report, once the worker compared `compared` requests (it runs after the
/// answers, in the background).
async fn report_after(router: &Router, compared: u64) -> ShadowsReport {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let report: ShadowsReport = get(router, "/v2/mm/shadows").await.ok_as();
        let done = report.shadows.first().map_or(0, |v| v.counts.compared);
        if done >= compared || std::time::Instant::now() > deadline {
            return report;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_is_set_counted_listed_promoted_and_dropped() {
    let store = two_good_versions();
    let (_, router) = scorer_for(store.path(), |_| {});
    let uri = "/v2/mm/models/m/shadow";
    get(&router, uri)
        .await
        .assert_error(StatusCode::NOT_FOUND, "no shadow");
    let body = |version: u64, percent: f64| {
        json!({
            "version": version,
            "percent": percent,
            "tolerance": 0.0,
            "rule": {"min_requests": 5, "min_agreement": 1.0, "action": "promote"},
        })
        .to_string()
    };
    call(&router, "PUT", uri, body(2, 50.0))
        .await
        .assert_error(StatusCode::CONFLICT, "live version");
    call(&router, "PUT", uri, body(9, 50.0))
        .await
        .assert_error(StatusCode::NOT_FOUND, "no version 9");
    call(&router, "PUT", uri, body(1, 0.0))
        .await
        .assert_error(StatusCode::BAD_REQUEST, "percent");
    call(&router, "PUT", uri, "{\"percent\": 5}")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "version");
    call(&router, "PUT", "/v2/mm/models/absent/shadow", body(1, 50.0))
        .await
        .assert_error(StatusCode::NOT_FOUND, "absent");

    let set: ShadowView = call(&router, "PUT", uri, body(1, 50.0)).await.ok_as();
    assert_eq!(
        (set.model.as_str(), set.spec.version, set.live),
        ("m", 1, Some(2))
    );
    assert!(set.spec.since_ms > 0);
    assert_eq!(set.verdict, Verdict::Collecting);
    // Ten requests naming no version, half of them compared; those naming one are not.
    for _ in 0..10 {
        assert_eq!(score(&router, None).await, "2", "the live version answers");
    }
    for _ in 0..3 {
        score(&router, Some(2)).await;
    }
    let report = report_after(&router, 5).await;
    assert!(!report.scorer.is_empty());
    let [view] = &report.shadows[..] else {
        panic!("one shadow: {report:?}")
    };
    assert_eq!(
        (view.counts.compared, view.counts.agreed),
        (5, 5),
        "{view:?}"
    );
    assert_eq!((view.counts.errors, view.counts.skipped), (0, 0));
    assert_eq!(view.verdict, Verdict::Met);
    assert!(view.resident);
    let shown: ShadowView = get(&router, uri).await.ok_as();
    assert_eq!(shown.counts, view.counts);
    let text = metrics_text(&router).await;
    assert_metrics(
        &text,
        "shadow runs",
        &[
            ("mm_scorer_shadow_runs_total{outcome=\"agreed\"}", 5.0),
            ("mm_scorer_shadow_runs_total{outcome=\"disagreed\"}", 0.0),
            ("mm_scorer_shadow_runs_total{outcome=\"skipped\"}", 0.0),
        ],
    );

    // A scoped caller sees only its models.
    let scoped: ShadowsReport = get_scoped(&router, "/v2/mm/shadows", "other-")
        .await
        .ok_as();
    assert!(scoped.shadows.is_empty());
    let mine: ShadowsReport = get_scoped(&router, "/v2/mm/shadows", "m").await.ok_as();
    assert_eq!(mine.shadows.len(), 1);
    get_scoped(&router, uri, "other-")
        .await
        .assert_error(StatusCode::NOT_FOUND, "'m'");

    // Promoted only as the shadow set at its `since_ms`, once.
    let promote = format!("{uri}/promote?since_ms={}", set.spec.since_ms);
    call(
        &router,
        "POST",
        &format!("{uri}/promote?since_ms={}", set.spec.since_ms + 1),
        "",
    )
    .await
    .assert_error(StatusCode::CONFLICT, "replaced");
    let promoted: ShadowPromoted = call(&router, "POST", &promote, "").await.ok_as();
    assert_eq!(
        (promoted.model.as_str(), promoted.promoted.version),
        ("m", 1)
    );
    assert_eq!(promoted.pinned.live, 1);
    assert_eq!(score(&router, None).await, "1");
    call(&router, "POST", &promote, "")
        .await
        .assert_error(StatusCode::NOT_FOUND, "no shadow");
    let report: ShadowsReport = get(&router, "/v2/mm/shadows").await.ok_as();
    assert!(report.shadows.is_empty());

    // Dropped: answered as it was, then none.
    call(&router, "PUT", uri, body(2, 10.0))
        .await
        .ok_as::<ShadowView>();
    let dropped: ShadowDropped = call(&router, "DELETE", uri, "").await.ok_as();
    assert_eq!(dropped.dropped.map(|s| s.version), Some(2));
    call(&router, "DELETE", uri, "")
        .await
        .assert_error(StatusCode::NOT_FOUND, "no shadow");
}

/// The shadow routes take an admin key (or the pool key) when admin keys are set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shadow_routes_take_an_admin_key() {
    let store = two_good_versions();
    let (_, router) = scorer_for(store.path(), |config| {
        config.admin_keys = vec![manymodels_config::Secret::new("admin-key")];
    });
    for uri in ["/v2/mm/shadows", "/v2/mm/models/m/shadow"] {
        get(&router, uri)
            .await
            .assert_error(StatusCode::UNAUTHORIZED, "admin");
        let request = Request::builder()
            .method("GET")
            .uri(uri)
            .header("authorization", "Bearer admin-key")
            .body(Body::empty())
            .unwrap();
        let reply = send(&router, request).await;
        assert_ne!(
            reply.status,
            StatusCode::UNAUTHORIZED,
            "{uri}: {}",
            reply.text()
        );
    }
}
