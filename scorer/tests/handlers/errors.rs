//! Requests that fail: bad requests, a malformed body, a corrupted model, a model that
//! can never fit the budget.

use super::*;

// ---------------------------------------------------------------------------------------
// 4. Bad requests
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_the_right_status_and_a_helpful_error() {
    const MAX_BODY: u64 = 4096;
    const MAX_ELEMENTS: usize = 20;
    let (_scorer, router) = scorer_for(&demo_store(), |config| {
        config.http.max_body = ByteSize(MAX_BODY);
        config.http.max_elements = MAX_ELEMENTS;
    });
    let infer = "/v2/models/linear-small/infer";
    let good = rows_body(&[LINEAR_SMALL_ROW.to_vec()]);
    assert!((good.to_string().len() as u64) < MAX_BODY);

    // `good` with one field of its input replaced.
    let with = |field: &str, value: Value| {
        let mut body = good.clone();
        body["inputs"][0][field] = value;
        body.to_string()
    };
    let mut missing = reference_request("multi-input");
    missing["inputs"]
        .as_array_mut()
        .unwrap()
        .retain(|input| input["name"] != "flags");
    let too_many = format!("more than the limit of {MAX_ELEMENTS}");
    let (good_text, multi_input) = (good.to_string(), "/v2/models/multi-input/infer");
    let bad_request = StatusCode::BAD_REQUEST;
    // The second dimension is fixed at 10.
    let wrong_shape = json!({ "inputs": [{
        "name": "input", "datatype": "FP32", "shape": [1, 9], "data": [0, 1, 2, 3, 4, 5, 6, 7, 8]
    }]});
    let over_max_body = format!(
        r#"{{"inputs":[],"padding":"{}"}}"#,
        "x".repeat(MAX_BODY as usize * 2)
    );
    // One case a line: what, where, the body, the status, what the error must say.
    #[rustfmt::skip]
    let cases: [(&str, &str, String, StatusCode, String); 11] = [
        ("malformed JSON", infer, "{\"inputs\": [".into(), bad_request, "malformed inference request".into()),
        ("wrong shape", infer, wrong_shape.to_string(), bad_request, "but the model expects".into()),
        ("shape and data disagree", infer, with("shape", json!([2, 10])), bad_request, "but 10 data values".into()),
        ("wrong datatype", infer, with("datatype", json!("FP64")), bad_request, "has datatype FP64 but the model expects FP32".into()),
        ("unsupported datatype", infer, with("datatype", json!("FP16")), bad_request, "unsupported datatype 'FP16'".into()),
        ("missing input", multi_input, missing.to_string(), bad_request, "missing input 'flags'".into()),
        ("unexpected input", infer, with("name", json!("features")), bad_request, "unexpected input 'features'".into()),
        // The reference request has 30 > MAX_ELEMENTS.
        ("too many elements", infer, reference_request("linear-small").to_string(), bad_request, too_many.clone()),
        ("a shape far over the limit", infer, with("shape", json!([1_000_000_000i64, 10])), bad_request, too_many),
        ("body over max_body", infer, over_max_body, StatusCode::PAYLOAD_TOO_LARGE, format!("limit of {MAX_BODY} bytes")),
        ("unknown model", "/v2/models/no-such-model/infer", good_text.clone(), StatusCode::NOT_FOUND, "model 'no-such-model' not found".into()),
    ];
    for (case, uri, body, status, needle) in cases {
        let reply = post_raw(&router, uri, body).await;
        assert_eq!(reply.status, status, "{case}: {}", reply.text());
        reply.assert_error(status, &needle);
    }
    // Invalid ids in the path.
    for uri in [
        "/v2/models/..%2F../infer",
        "/v2/models/a/b/infer",
        "/v2/models//infer",
        "/v2/models/.hidden/infer",
        "/v2/models/-flag/infer",
    ] {
        post_raw(&router, uri, good_text.clone())
            .await
            .assert_error(StatusCode::BAD_REQUEST, "invalid model id");
    }
    // Unknown route.
    let reply = get(&router, "/v3/nothing-here").await;
    reply.assert_error(StatusCode::NOT_FOUND, "no route for GET /v3/nothing-here");
    assert!(reply.header("x-mm-scorer").is_some());
    // Wrong method on a known route.
    let reply = get(&router, infer).await;
    reply.assert_error(StatusCode::METHOD_NOT_ALLOWED, "not allowed");
    assert!(
        reply.header("x-mm-scorer").is_some(),
        "405s go through the one error path too"
    );

    // After all that, the same router still serves.
    let reply = post_json(&router, infer, &good).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let outputs = reply.json()["outputs"].clone();
    assert_eq!(outputs[0]["name"], "variable");
    assert_eq!(outputs[0]["shape"], json!([1, 1]));

    // Every request except the 405 is counted by route and status.
    let text = metrics_text(&router).await;
    // 14 bad requests; those whose path the router matched count as `infer`, the rest as
    // `other`.
    let bad = metric(
        &text,
        r#"mm_scorer_requests_total{code="400",route="infer"}"#,
    ) + metric(
        &text,
        r#"mm_scorer_requests_total{code="400",route="other"}"#,
    );
    assert_eq!(bad, 14.0, "{text}");
    assert_metrics(
        &text,
        "one of each",
        &[
            (r#"mm_scorer_requests_total{code="413",route="infer"}"#, 1.0),
            (r#"mm_scorer_requests_total{code="404",route="infer"}"#, 1.0),
            (r#"mm_scorer_requests_total{code="404",route="other"}"#, 1.0),
            (r#"mm_scorer_requests_total{code="200",route="infer"}"#, 1.0),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_body_does_not_load_the_model() {
    let router = demo_router();
    post_raw(&router, "/v2/models/forest-1mb/infer", "not json")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "malformed inference request");
    assert_metrics(
        &metrics_text(&router).await,
        "after a malformed body",
        &[
            ("mm_scorer_model_loads_total", 0.0),
            ("mm_scorer_cache_misses_total", 0.0),
        ],
    );
}

// ---------------------------------------------------------------------------------------
// 5. A corrupted model
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_model_is_422_fails_fast_and_does_not_affect_others() {
    let store = TempDir::copy_of_demo("handlers");
    let garbage = b"this is not an ONNX protobuf \x00\x01\x02\xff garbage";
    write_model(store.path(), "broken", 1, garbage).unwrap();
    let (_scorer, router) = scorer_for(store.path(), |_| {});
    let body = rows_body(&[LINEAR_SMALL_ROW.to_vec()]);

    let first = post_json(&router, "/v2/models/broken/infer", &body).await;
    // The native engine's reader refuses it before ONNX Runtime sees it.
    first.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid model");
    first.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "'broken'");
    assert_metrics(
        &metrics_text(&router).await,
        "after the first request",
        &[
            ("mm_scorer_model_load_failures_total", 1.0),
            ("mm_scorer_failed_fast_total", 0.0),
        ],
    );

    let second = post_json(&router, "/v2/models/broken/infer", &body).await;
    second.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid model");
    assert_metrics(
        &metrics_text(&router).await,
        "after the second request",
        &[
            ("mm_scorer_failed_fast_total", 1.0),
            ("mm_scorer_model_load_failures_total", 1.0),
            ("mm_scorer_model_loads_total", 0.0),
        ],
    );

    // The broken model is still listed but never READY; other models serve.
    let reply = infer_reference(&router, "linear-small").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let index = post_raw(&router, "/v2/repository/index", "").await.json();
    assert!(all_names(&index).contains(&"broken".to_string()));
    assert_eq!(ready_names(&index), vec!["linear-small".to_string()]);
    assert_eq!(
        metric_now(&router, "mm_scorer_model_load_failures_total").await,
        1.0
    );
}

/// A model that can never fit the budget answers 507 at once with a clear error, evicts
/// nothing, and is remembered: asking again neither loads nor evicts, with either engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_larger_than_the_budget_is_refused_at_once_and_remembered() {
    for engine in [NativeEngine::Auto, NativeEngine::Off] {
        // forest-1mb is a 1 MB file: natively about 0.3 MB, with ONNX Runtime about 5 MB;
        // linear-small fits either way.
        let budget = match engine {
            NativeEngine::Auto => ByteSize::kib(300),
            NativeEngine::Off => ByteSize::mib(3),
        };
        let (_scorer, router) = scorer_for(&demo_store(), |c| {
            c.cache.budget = budget;
            c.native_engine = engine;
        });
        let small = infer_reference(&router, "linear-small").await;
        assert_eq!(small.status, StatusCode::OK, "{}", small.text());
        for _ in 0..2 {
            let big = infer_reference(&router, "forest-1mb").await;
            big.assert_error(StatusCode::INSUFFICIENT_STORAGE, "can never fit");
            big.assert_error(StatusCode::INSUFFICIENT_STORAGE, "'forest-1mb'");
        }
        assert_metrics(
            &metrics_text(&router).await,
            &format!("{engine:?}"),
            &[
                ("mm_scorer_too_large_total", 1.0),
                ("mm_scorer_errors_total{kind=\"too_large_for_budget\"}", 2.0),
                ("mm_scorer_model_loads_total", 1.0),
            ],
        );
        let explain = get(&router, "/v2/mm/cache").await.json();
        let cache = &explain["cache"];
        assert_eq!(cache["resident_models"], 1, "{engine:?}: {cache}");
        assert_eq!(cache["evictions"].as_array().unwrap().len(), 0, "{cache}");
        assert_eq!(cache["too_large"], 1);
        assert_eq!(cache["reserved_bytes"], 0, "reservations are given back");
        let again = infer_reference(&router, "linear-small").await;
        assert_eq!(again.header("x-mm-cache"), Some("hit"), "{engine:?}");
    }
}
