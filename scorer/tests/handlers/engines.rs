//! Which engine serves a model, and both engines answering alike.

use super::*;

// ---------------------------------------------------------------------------------------
// 13. Engines
// ---------------------------------------------------------------------------------------

fn corpus_model(name: &str) -> Vec<u8> {
    let path = root().join("models/corpus").join(format!("{name}.onnx"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One row of `features` values for the input named `input`.
fn row_request(features: usize) -> Value {
    let row = (0..features).map(|i| ((i as f64 * 0.37).sin() * 2.0) as f32);
    rows_body(&[row.collect()])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_cache_view_and_metrics_say_which_engine_serves_a_model() {
    for (setting, engine) in [
        (NativeEngine::Auto, "native"),
        (NativeEngine::Off, "onnxruntime"),
    ] {
        let (_scorer, router) = scorer_for(&demo_store(), |c| c.native_engine = setting);
        let reply = infer_reference(&router, "forest-1mb").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let metadata = get(&router, "/v2/models/forest-1mb").await.json();
        assert_eq!(metadata["engine"], engine, "{metadata}");
        let view = get(&router, "/v2/mm/cache").await.json()["cache"].clone();
        let resident = view["resident"].as_array().expect("resident list");
        assert_eq!(resident.len(), 1, "{view}");
        assert_eq!(resident[0]["engine"], engine, "{view}");
        assert_eq!(view["loads_by_engine"][engine], 1, "{view}");
        let text = metrics_text(&router).await;
        let series = format!("mm_scorer_engine_loads_total{{engine=\"{engine}\"}}");
        assert_eq!(metric(&text, &series), 1.0, "{text}");
        // A model the native engine does not cover (two inputs, MatMul/Add) still loads.
        let reply = infer_reference(&router, "multi-input").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let metadata = get(&router, "/v2/models/multi-input").await.json();
        assert_eq!(metadata["engine"], "onnxruntime");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn string_labels_and_zipmap_outputs_are_served_alike_by_both_engines() {
    let store = TempDir::copy_of_demo("handlers");
    let model = corpus_model("skl_rf_multi_str_zipmap");
    write_model(store.path(), "rf-str-zipmap", 1, &model).unwrap();
    let features = 8;
    let mut answers = Vec::new();
    for setting in [NativeEngine::Auto, NativeEngine::Off] {
        let (_scorer, router) = scorer_for(store.path(), |c| c.native_engine = setting);
        let metadata = get(&router, "/v2/models/rf-str-zipmap").await.json();
        let outputs = metadata["outputs"].as_array().expect("outputs").clone();
        assert_eq!(outputs[0]["datatype"], "BYTES", "{metadata}");
        assert_eq!(outputs[1]["datatype"], "FP32", "{metadata}");
        assert_eq!(outputs[1]["shape"], json!([-1, -1]), "{metadata}");
        let reply = post_json(
            &router,
            "/v2/models/rf-str-zipmap/infer",
            &row_request(features),
        )
        .await;
        let body = reply.ok();
        let label = &body["outputs"][0];
        assert!(label["data"][0].is_string(), "{body}");
        let probabilities = &body["outputs"][1];
        assert_eq!(probabilities["shape"], json!([1, 3]), "{body}");
        let sum: f64 = probabilities["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .sum();
        assert!((sum - 1.0).abs() < 1e-5, "{body}");
        answers.push(body["outputs"].clone());
    }
    assert_eq!(
        answers[0], answers[1],
        "native and ONNX Runtime answer differently"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zipmap_classifiers_as_exported_answer_python_onnxruntimes_labels_and_probabilities() {
    use manymodels_tests::classifiers::{
        assert_classes_in_metadata, assert_classified, classifier_reference, classifier_store,
    };
    for setting in [NativeEngine::Auto, NativeEngine::Off] {
        let (_scorer, router) = scorer_for(&classifier_store(), |c| c.native_engine = setting);
        for reference in classifier_reference() {
            let id = reference["id"].as_str().unwrap();
            let reply = post_json(
                &router,
                &format!("/v2/models/{id}/infer"),
                &inputs_body(&reference),
            )
            .await;
            assert_classified(&reply.ok(), &reference);
            let metadata = get(&router, &format!("/v2/models/{id}")).await.json();
            assert_classes_in_metadata(&metadata, &reference);
        }
    }
}
