//! Health endpoints and metrics: every required family from the first scrape, no
//! per-model label, gauges that follow loads.

use manymodels_tests::metrics::missing_families;

use super::*;

/// Families every scrape must have.
const REQUIRED_FAMILIES: &[&str] = &[
    "mm_scorer_requests_total",
    "mm_scorer_cache_hits_total",
    "mm_scorer_cache_misses_total",
    "mm_scorer_model_loads_total",
    "mm_scorer_model_load_failures_total",
    "mm_scorer_cache_evictions_total",
    "mm_scorer_model_load_duration_seconds",
    "mm_scorer_inference_duration_seconds",
    "mm_scorer_resident_bytes",
    "mm_scorer_resident_models",
    "mm_scorer_budget_bytes",
    "mm_scorer_working_set_bytes",
];

// ---------------------------------------------------------------------------------------
// 9. Health and metrics
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_endpoints_answer_200() {
    let router = demo_router();
    let live = get(&router, "/v2/health/live").await;
    assert_eq!(live.status, StatusCode::OK);
    assert_eq!(live.json()["live"], true);
    let ready = get(&router, "/v2/health/ready").await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.json()["ready"], true);
    let server = get(&router, "/v2").await;
    assert_eq!(server.status, StatusCode::OK);
    assert_eq!(server.json()["name"], "manymodels");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_have_every_required_family_and_no_model_label() {
    let router = demo_router();
    // Traffic that touches every family: a load, a miss, a hit, inference, an eviction.
    for _ in 0..2 {
        infer_reference(&router, "linear-small").await.ok();
    }
    assert_eq!(
        post_raw(&router, "/v2/repository/models/linear-small/unload", "")
            .await
            .status,
        StatusCode::OK
    );

    let reply = get(&router, "/metrics").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain")),
        "{:?}",
        reply.header("content-type")
    );
    let text = reply.text();
    assert_eq!(
        missing_families(&text, REQUIRED_FAMILIES),
        Vec::<&str>::new(),
        "{text}"
    );
    for line in text.lines() {
        assert!(!line.contains("model="), "a per-model label: {line}");
    }
    assert_metrics(
        &text,
        "after two requests and an unload",
        &[
            ("mm_scorer_cache_misses_total", 1.0),
            ("mm_scorer_cache_hits_total", 1.0),
            ("mm_scorer_model_loads_total", 1.0),
            ("mm_scorer_inference_duration_seconds_count", 2.0),
            ("mm_scorer_model_load_duration_seconds_count", 1.0),
            ("mm_scorer_resident_models", 0.0),
            ("mm_scorer_budget_bytes", (512u64 << 20) as f64),
        ],
    );
}

/// Families with labels (`requests_total`, `cache_evictions_total`) must be visible from
/// the first scrape, or dashboards and alerts see "no data" instead of 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_have_every_required_family_before_any_traffic() {
    let router = demo_router();
    let text = metrics_text(&router).await;
    assert_eq!(
        missing_families(&text, REQUIRED_FAMILIES),
        Vec::<&str>::new(),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resident_gauges_follow_loads() {
    let router = demo_router();
    for id in ["linear-small", "int32-scaler"] {
        infer_reference(&router, id).await.ok();
    }
    let text = metrics_text(&router).await;
    assert_eq!(metric(&text, "mm_scorer_resident_models"), 2.0, "{text}");
    // Both tiny models are native: each is charged its own heap, a few hundred bytes
    // (an ONNX Runtime session of the same model keeps tens of KiB), never megabytes.
    let resident = metric(&text, "mm_scorer_resident_bytes");
    assert!(
        (2.0 * 100.0..=2.0 * 16.0 * 1024.0).contains(&resident),
        "{text}"
    );
}

/// The working set: the pushed models covering 95% of the pool's rate, at their sizes
/// here (the mean known size for a model never loaded); zero before any push.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_working_set_gauge_follows_pushed_rates_and_sizes() {
    // No warm-up loads after a push: one of `gbm-store` would race the scrape and change
    // its size from the mean to its own (seen in CI).
    let (_, router) = scorer_for(&demo_store(), |c| c.warmup.max_fraction = 0.0);
    assert_eq!(
        metric_now(&router, "mm_scorer_working_set_bytes").await,
        0.0
    );
    for id in ["linear-small", "forest-1mb"] {
        infer_reference(&router, id).await.ok();
    }
    let explain = get(&router, "/v2/mm/cache").await;
    let view: manymodels_contract::explain::CacheView = explain.ok_as();
    assert_eq!(view.cache.resident.len(), 2, "{view:?}");
    assert_eq!(view.cache.summary.resident_models, 2, "{view:?}");
    let explain = explain.ok();
    let size = |id: &str| -> f64 {
        explain["cache"]["resident"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["model"] == id)
            .unwrap_or_else(|| panic!("{id} not resident: {explain}"))["bytes"]
            .as_f64()
            .unwrap()
    };
    let (linear, forest) = (size("linear-small"), size("forest-1mb"));
    // The forest alone is 96% of the rate: it is the working set.
    let reply = send(
        &router,
        stats_push(json!([["forest-1mb", 96.0], ["linear-small", 4.0]])),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(
        metric_now(&router, "mm_scorer_working_set_bytes").await,
        forest
    );
    // Spread evenly over three models, one never loaded here (counted at the mean size),
    // every one is needed.
    let reply = send(
        &router,
        stats_push(json!([
            ["forest-1mb", 10.0],
            ["linear-small", 10.0],
            ["gbm-store", 10.0]
        ])),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let mean = ((linear + forest) / 2.0).floor();
    assert_eq!(
        metric_now(&router, "mm_scorer_working_set_bytes").await,
        forest + linear + mean
    );
}

/// A proxy's statistics push of `models` (`[[id, rate], ...]`).
fn stats_push(models: Value) -> Request<Body> {
    let body = json!({ "proxy": "p1", "models": models }).to_string();
    Request::builder()
        .method("PUT")
        .uri("/v2/mm/stats")
        .header("content-type", "application/json")
        .body(Body::from(body))
        .expect("valid request")
}

/// Shutting down, the scorer drains: its readiness answers 503 saying so (`x-mm-draining`,
/// which the proxies' drain hand-off reads; a warming scorer's 503 does not), it keeps
/// serving, and a statistics push warms nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_scorer_says_so_keeps_serving_and_warms_nothing() {
    let (_, warming) = scorer_for(&demo_store(), |c| {
        c.warmup.ready_timeout = std::time::Duration::from_secs(600)
    });
    let ready = get(&warming, "/v2/health/ready").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        ready.header("x-mm-draining"),
        None,
        "warming is not draining"
    );

    let (scorer, router) = scorer_for(&demo_store(), |_| {});
    scorer
        .draining
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let ready = get(&router, "/v2/health/ready").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.header("x-mm-draining"), Some("true"));
    assert_eq!(ready.json()["ready"], false);
    infer_reference(&router, "linear-small").await.ok();
    let reply = send(&router, stats_push(json!([["forest-1mb", 50.0]]))).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let cache = get(&router, "/v2/mm/cache").await.ok();
    let resident: Vec<&str> = cache["cache"]["resident"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["model"].as_str())
        .collect();
    assert_eq!(resident, ["linear-small"], "{cache}");
    assert_eq!(
        metric_now(&router, "mm_scorer_warmup_loads_total").await,
        0.0
    );
}
