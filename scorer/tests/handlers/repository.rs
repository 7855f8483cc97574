//! Model metadata, readiness and the repository extension (index, load, unload).

use super::*;

// ---------------------------------------------------------------------------------------
// 6. Metadata
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_metadata_describes_inputs_and_outputs() {
    let router = demo_router();
    let reply = get(&router, "/v2/models/multi-input").await;
    let metadata = reply.ok();
    assert_eq!(metadata["name"], "multi-input");
    assert_eq!(metadata["versions"], json!(["1"]));
    assert_eq!(metadata["platform"], "onnxruntime_onnx");
    assert_eq!(
        metadata["inputs"],
        json!([
            { "name": "numeric", "datatype": "FP32", "shape": [-1, 4] },
            { "name": "flags", "datatype": "BOOL", "shape": [-1, 2] },
            { "name": "store_code", "datatype": "INT64", "shape": [-1, 1] },
        ])
    );
    let reference = reference("multi-input");
    let outputs = metadata["outputs"].as_array().expect("outputs");
    let expected = reference["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), expected.len());
    for (output, reference) in outputs.iter().zip(expected) {
        assert_eq!(output["name"], reference["name"]);
        assert_eq!(output["datatype"], reference["datatype"]);
        let shape = output["shape"].as_array().expect("shape");
        assert_eq!(shape.len(), reference["shape"].as_array().unwrap().len());
        assert_eq!(shape[0], -1, "the batch dimension is dynamic: {output}");
    }

    // Versioned metadata, unknown model, unknown version.
    let reply = get(&router, "/v2/models/multi-input/versions/1").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["name"], "multi-input");
    get(&router, "/v2/models/no-such-model")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not found");
    get(&router, "/v2/models/multi-input/versions/7")
        .await
        .assert_error(StatusCode::NOT_FOUND, "no version 7");
}

/// Metadata and readiness look the model up (and metadata loads it), so they take the
/// request's deadline like infer: a malformed `x-mm-timeout-ms` is a 400, a generous one
/// changes nothing. (Past it they answer 504: `tests/tests/it/reliability.rs`, with a frozen
/// store.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_and_readiness_take_the_request_deadline() {
    let router = demo_router();
    let with_deadline = |uri: &str, ms: &str| {
        Request::builder()
            .method("GET")
            .uri(uri)
            .header("x-mm-timeout-ms", ms)
            .body(Body::empty())
            .expect("valid request")
    };
    for uri in [
        "/v2/models/gbm-store",
        "/v2/models/gbm-store/versions/1",
        "/v2/models/gbm-store/ready",
        "/v2/models/gbm-store/versions/1/ready",
    ] {
        for bad in ["0", "abc", "-1", "99999999999"] {
            send(&router, with_deadline(uri, bad))
                .await
                .assert_error(StatusCode::BAD_REQUEST, "x-mm-timeout-ms");
        }
        let reply = send(&router, with_deadline(uri, "10000")).await;
        assert_eq!(reply.ok()["name"], "gbm-store", "{uri}");
    }
    send(&router, with_deadline("/v2/models/no-such-model", "10000"))
        .await
        .assert_error(StatusCode::NOT_FOUND, "not found");
}

// ---------------------------------------------------------------------------------------
// 7. Model readiness
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_ready_reports_existence_and_whether_loaded() {
    let router = demo_router();
    let reply = get(&router, "/v2/models/gbm-store/ready").await;
    let body = reply.ok();
    assert_eq!(body["name"], "gbm-store");
    assert_eq!(body["ready"], true);
    assert_eq!(body["loaded"], false);
    // Asking about readiness loads nothing.
    assert_eq!(
        metric_now(&router, "mm_scorer_model_loads_total").await,
        0.0
    );

    let reply = infer_reference(&router, "gbm-store").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());

    let body = get(&router, "/v2/models/gbm-store/ready").await.json();
    assert_eq!(body["loaded"], true, "{body}");
    let reply = get(&router, "/v2/models/gbm-store/versions/1/ready").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["loaded"], true);

    get(&router, "/v2/models/no-such-model/ready")
        .await
        .assert_error(StatusCode::NOT_FOUND, "model 'no-such-model' not found");
    get(&router, "/v2/models/gbm-store/versions/3/ready")
        .await
        .assert_error(StatusCode::NOT_FOUND, "no version 3");
}

// ---------------------------------------------------------------------------------------
// 8. Repository extension
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repository_index_load_and_unload() {
    let router = demo_router();
    let ids = demo_ids();

    // Nothing loaded yet: everything listed, nothing READY.
    let reply = post_raw(&router, "/v2/repository/index", "").await;
    let index = reply.ok();
    assert_eq!(all_names(&index), ids);
    assert!(ready_names(&index).is_empty(), "{index}");
    for entry in index.as_array().unwrap() {
        assert_eq!(entry["state"], "UNAVAILABLE", "{entry}");
        assert_eq!(entry["reason"], "not loaded", "{entry}");
    }

    // Serve one model: it alone is READY, with its version.
    let reply = infer_reference(&router, "linear-small").await;
    assert_eq!(reply.status, StatusCode::OK);
    let index = post_raw(&router, "/v2/repository/index", "{}").await.json();
    assert_eq!(all_names(&index), ids, "each model listed once");
    assert_eq!(ready_names(&index), vec!["linear-small".to_string()]);
    let entry = index
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "linear-small")
        .unwrap();
    assert_eq!(entry["version"], "1");

    let ready_only = post_json(&router, "/v2/repository/index", &json!({ "ready": true }))
        .await
        .json();
    assert_eq!(all_names(&ready_only), vec!["linear-small".to_string()]);

    // Narrowed to a scoped key's prefixes (the proxy's x-mm-model-prefixes); a malformed
    // header is refused, never read as "every model".
    let narrowed = |prefixes: &'static str| {
        let request = Request::builder()
            .method("POST")
            .uri("/v2/repository/index")
            .header("x-mm-model-prefixes", prefixes)
            .body(Body::empty())
            .expect("valid request");
        send(&router, request)
    };
    let index = narrowed("linear-|forest-1").await.ok();
    let want: Vec<String> = ids
        .iter()
        .filter(|id| id.starts_with("linear-") || id.starts_with("forest-1"))
        .cloned()
        .collect();
    assert!(want.len() >= 2, "{want:?}");
    assert_eq!(all_names(&index), want);
    assert_eq!(ready_names(&index), vec!["linear-small".to_string()]);
    for bad in ["", "linear-|", "../x"] {
        narrowed(bad)
            .await
            .assert_error(StatusCode::BAD_REQUEST, "x-mm-model-prefixes");
    }

    // Load.
    let loads_before = metric_now(&router, "mm_scorer_model_loads_total").await;
    let reply = post_raw(&router, "/v2/repository/models/forest-1mb/load", "").await;
    let body = reply.ok();
    assert_eq!(body["name"], "forest-1mb");
    assert_eq!(body["version"], "1");
    assert_eq!(body["loaded"], true);
    assert_eq!(
        metric_now(&router, "mm_scorer_model_loads_total").await,
        loads_before + 1.0
    );
    let ready_only = post_json(&router, "/v2/repository/index", &json!({ "ready": true }))
        .await
        .json();
    assert_eq!(
        all_names(&ready_only),
        vec!["forest-1mb".to_string(), "linear-small".to_string()]
    );
    // Loading again is a cache hit, not a second load.
    let reply = post_raw(&router, "/v2/repository/models/forest-1mb/load", "").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        metric_now(&router, "mm_scorer_model_loads_total").await,
        loads_before + 1.0
    );

    // Unload.
    let evictions = r#"mm_scorer_cache_evictions_total{reason="unload"}"#;
    assert_eq!(metric_now(&router, evictions).await, 0.0);
    let reply = post_raw(&router, "/v2/repository/models/forest-1mb/unload", "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["unloaded"], 1);
    let index = post_raw(&router, "/v2/repository/index", "").await.json();
    assert_eq!(ready_names(&index), vec!["linear-small".to_string()]);
    assert_eq!(all_names(&index), ids);
    let text = metrics_text(&router).await;
    assert_eq!(metric(&text, evictions), 1.0, "{text}");
    assert_eq!(metric(&text, "mm_scorer_resident_models"), 1.0, "{text}");

    // Errors.
    post_raw(&router, "/v2/repository/models/no-such-model/load", "")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not found");
    post_raw(&router, "/v2/repository/index", "{not json")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "malformed index request");
}
