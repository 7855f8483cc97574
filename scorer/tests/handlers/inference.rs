//! Inference: reference outputs, versions, output selection, single flight, response
//! headers, and where a call runs.

use super::*;

// ---------------------------------------------------------------------------------------
// 1. Reference outputs
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_demo_model_matches_its_reference_outputs() {
    let router = demo_router();
    let models = demo_reference();
    assert!(
        models.len() >= 8,
        "reference.json lists {} models",
        models.len()
    );
    for model in &models {
        let id = model["id"].as_str().unwrap();
        let request_id = format!("req-{id}");
        let body = json!({ "id": request_id, "inputs": model["inputs"].clone() });
        let reply = post_json(&router, &format!("/v2/models/{id}/infer"), &body).await;
        assert_eq!(reply.status, StatusCode::OK, "{id}: {}", reply.text());
        let response = reply.json();
        assert_eq!(response["model_name"], id);
        assert_eq!(response["model_version"], "1", "{id}");
        assert_eq!(
            response["id"],
            request_id.as_str(),
            "{id}: request id echoed"
        );
        assert_outputs_match(&response, model, TOLERANCE);
    }
    // Without an id in the request, none comes back.
    let reply = infer_reference(&router, "linear-small").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.json().get("id").is_none(), "{}", reply.text());
}

// ---------------------------------------------------------------------------------------
// 2. Versioned inference
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versioned_infer_serves_existing_versions_and_rejects_others() {
    let router = demo_router();
    let reference = reference("linear-small");
    let body = reference_request("linear-small");

    let reply = post_json(&router, "/v2/models/linear-small/versions/1/infer", &body).await;
    let response = reply.ok();
    assert_eq!(response["model_name"], "linear-small");
    assert_eq!(response["model_version"], "1");
    assert_outputs_match(&response, &reference, TOLERANCE);

    post_json(&router, "/v2/models/linear-small/versions/2/infer", &body)
        .await
        .assert_error(StatusCode::NOT_FOUND, "no version 2");
    for bad in ["abc", "0", "01", "-1"] {
        post_json(
            &router,
            &format!("/v2/models/linear-small/versions/{bad}/infer"),
            &body,
        )
        .await
        .assert_error(StatusCode::BAD_REQUEST, &format!("invalid version '{bad}'"));
    }
}

// ---------------------------------------------------------------------------------------
// 3. Output selection
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_selection_returns_only_the_requested_outputs() {
    let router = demo_router();
    let reference = reference("multi-input");
    let sum = reference["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "numeric_sum")
        .expect("reference has numeric_sum")
        .clone();

    let mut body = reference_request("multi-input");
    body["outputs"] = json!([{ "name": "numeric_sum" }]);
    let response = post_json(&router, "/v2/models/multi-input/infer", &body)
        .await
        .ok();
    assert_outputs_equal("multi-input", &response["outputs"], &[sum], TOLERANCE);

    body["outputs"] = json!([{ "name": "no_such_output" }]);
    post_json(&router, "/v2/models/multi-input/infer", &body)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "unknown output 'no_such_output'");
}

// ---------------------------------------------------------------------------------------
// 10. Single flight
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_requests_load_the_model_once() {
    let router = demo_router();
    let reference = reference("forest-1mb");
    let body = reference_request("forest-1mb").to_string();
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let router = router.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let reply = post_raw(&router, "/v2/models/forest-1mb/infer", body).await;
                (reply.status, reply.bytes)
            })
        })
        .collect();
    for task in tasks {
        let (status, bytes) = task.await.expect("task did not panic");
        assert_eq!(
            status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&bytes)
        );
        let response: Value = serde_json::from_slice(&bytes).unwrap();
        assert_outputs_match(&response, &reference, TOLERANCE);
    }
    let text = metrics_text(&router).await;
    assert_eq!(metric(&text, "mm_scorer_model_loads_total"), 1.0, "{text}");
    assert_eq!(metric(&text, "mm_scorer_resident_models"), 1.0, "{text}");
    assert_eq!(
        metric(&text, "mm_scorer_cache_hits_total") + metric(&text, "mm_scorer_cache_misses_total"),
        100.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            r#"mm_scorer_requests_total{code="200",route="infer"}"#
        ),
        100.0
    );
}

// ---------------------------------------------------------------------------------------
// 11. Response headers
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_say_whether_the_model_was_hot_and_which_scorer_answered() {
    let (_scorer, router) = scorer_for(&demo_store(), |config| {
        config.name = "scorer-under-test".into()
    });
    let body = reference_request("logistic-churn");

    let first = post_json(&router, "/v2/models/logistic-churn/infer", &body).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.header("x-mm-cache"), Some("miss"));
    assert_eq!(first.header("x-mm-scorer"), Some("scorer-under-test"));
    assert!(
        first
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/json"))
    );

    let second = post_json(&router, "/v2/models/logistic-churn/infer", &body).await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(second.header("x-mm-cache"), Some("hit"));
    assert_eq!(second.header("x-mm-scorer"), Some("scorer-under-test"));

    // The live version, once loaded, also answers a request naming that version.
    let versioned = post_json(&router, "/v2/models/logistic-churn/versions/1/infer", &body).await;
    assert_eq!(versioned.status, StatusCode::OK);
    assert_eq!(versioned.header("x-mm-cache"), Some("hit"));

    // Errors carry the scorer header too.
    let error = post_json(&router, "/v2/models/no-such-model/infer", &body).await;
    assert_eq!(error.status, StatusCode::NOT_FOUND);
    assert_eq!(error.header("x-mm-scorer"), Some("scorer-under-test"));
    assert_eq!(error.header("x-mm-cache"), None);

    // Without a configured name, the header is the listen address.
    let router = demo_router();
    let reply = get(&router, "/v2/models/linear-small/ready").await;
    assert_eq!(reply.header("x-mm-scorer"), Some("127.0.0.1:8001"));
}

/// A request for `/versions/1` followed by one for the live version (also 1) should reuse
/// the session, not load the same file into a second one charged to the budget again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_versioned_load_is_reused_by_live_requests() {
    let router = demo_router();
    let body = reference_request("linear-small");
    let versioned = post_json(&router, "/v2/models/linear-small/versions/1/infer", &body).await;
    assert_eq!(versioned.status, StatusCode::OK);
    let live = post_json(&router, "/v2/models/linear-small/infer", &body).await;
    assert_eq!(live.status, StatusCode::OK);
    assert_eq!(live.header("x-mm-cache"), Some("hit"));
    let text = metrics_text(&router).await;
    assert_eq!(metric(&text, "mm_scorer_model_loads_total"), 1.0, "{text}");
    assert_eq!(metric(&text, "mm_scorer_resident_models"), 1.0, "{text}");
}

// ---------------------------------------------------------------------------------------
// 12. Where ONNX Runtime runs
// ---------------------------------------------------------------------------------------

/// The first call of a model runs on a blocking thread (its cost is unknown); once measured
/// at a few microseconds, later calls run inline on the worker, with the same answers.
/// With `inference.inline_max = 0` every call goes to a blocking thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn measured_short_calls_run_inline_unless_disabled() {
    for (limit, expected_inline) in [
        (std::time::Duration::from_millis(5), 4.0),
        (std::time::Duration::ZERO, 0.0),
    ] {
        let (_, router) = scorer_for(&demo_store(), |config| config.inference_inline_max = limit);
        let reference = reference("linear-small");
        for _ in 0..5 {
            let response = infer_reference(&router, "linear-small").await.ok();
            assert_outputs_match(&response, &reference, TOLERANCE);
        }
        let text = metrics_text(&router).await;
        assert_eq!(
            metric(&text, "mm_scorer_inference_inline_total"),
            expected_inline,
            "limit {limit:?}"
        );
    }
}
