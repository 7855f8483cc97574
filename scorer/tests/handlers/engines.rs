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

/// A scorer with `images.dir` set, on a copy of the demo store.
fn imaging_scorer(store: &TempDir, images: &TempDir) -> (Arc<Scorer>, Router) {
    let dir = images.path().to_path_buf();
    scorer_for(store.path(), move |c| {
        c.images.dir = Some(dir);
        c.images.max_bytes = 1 << 30;
    })
}

async fn image_events(router: &Router, event: &str) -> f64 {
    let text = metrics_text(router).await;
    metric(
        &text,
        &format!("mm_scorer_images_total{{event=\"{event}\"}}"),
    )
}

/// Unloads `id` and infers it again on its reference inputs: the answer must still match.
async fn reload_and_check(router: &Router, id: &str, context: &str) {
    let reply = post_raw(router, &format!("/v2/repository/models/{id}/unload"), "").await;
    assert_eq!(reply.status, StatusCode::OK, "{context}: {}", reply.text());
    let body = infer_reference(router, id).await.ok();
    assert_outputs_match(&body, &reference(id), TOLERANCE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn natively_compiled_models_load_again_from_their_images_with_the_same_answers() {
    let (store, images) = (TempDir::copy_of_demo("images"), TempDir::new("images-dir"));
    let (_scorer, router) = imaging_scorer(&store, &images);
    let mut native = Vec::new();
    for id in demo_ids() {
        let body = infer_reference(&router, &id).await.ok();
        assert_outputs_match(&body, &reference(&id), TOLERANCE);
        let engine = get(&router, &format!("/v2/models/{id}")).await.json()["engine"].clone();
        let image = images.path().join(&id).join("1.mmimg");
        // An image exactly for what the native engine compiled; ONNX Runtime's sessions
        // keep today's path.
        assert_eq!(image.exists(), engine == "native", "{id}: {engine}");
        if engine == "native" {
            native.push(id);
        }
    }
    assert!(native.len() >= 5, "{native:?}");
    assert_eq!(image_events(&router, "written").await, native.len() as f64);
    // The policy ranks a model by what reloading it costs: for a model with an image, the
    // image's load (100 µs + 0.15 ns a byte), not the compile that made it.
    let view = get(&router, "/v2/mm/cache").await.json()["cache"].clone();
    for resident in view["resident"].as_array().expect("resident list") {
        let id = resident["model"].as_str().expect("model id");
        let cost = resident["load_seconds"].as_f64().expect("load_seconds");
        if native.iter().any(|n| n == id) {
            let image = std::fs::metadata(images.path().join(id).join("1.mmimg"))
                .unwrap()
                .len();
            let expected = 100e-6 + image as f64 * 0.15e-9;
            assert!(
                (cost - expected).abs() < 1e-9,
                "{id}: {cost} s, expected {expected} s"
            );
        }
    }
    for id in &native {
        reload_and_check(&router, id, "from its image").await;
        let metadata = get(&router, &format!("/v2/models/{id}")).await.json();
        assert_eq!(metadata["engine"], "native", "{metadata}");
    }
    assert_eq!(image_events(&router, "loaded").await, native.len() as f64);
    assert_eq!(image_events(&router, "written").await, native.len() as f64);
    // A restarted scorer finds the images its predecessor wrote.
    drop(router);
    let (_scorer, router) = imaging_scorer(&store, &images);
    for id in &native {
        let body = infer_reference(&router, id).await.ok();
        assert_outputs_match(&body, &reference(id), TOLERANCE);
    }
    assert_eq!(image_events(&router, "loaded").await, native.len() as f64);
    assert_eq!(image_events(&router, "written").await, 0.0);
}

/// Every class of damage (magic, format, engine revision, source key, annex, payload
/// length, header checksum, payload, trailer, truncation, a stray byte at the end, an
/// empty file) costs one compile and is repaired; no answer changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_or_stale_image_falls_back_to_compiling_the_file() {
    let (store, images) = (
        TempDir::copy_of_demo("images-bad"),
        TempDir::new("images-bad-dir"),
    );
    let (_scorer, router) = imaging_scorer(&store, &images);
    let id = "forest-1mb";
    infer_reference(&router, id).await.ok();
    let path = images.path().join(id).join("1.mmimg");
    let good = std::fs::read(&path).expect("the image was written");
    let key_len = u32::from_le_bytes(good[16..20].try_into().unwrap()) as usize;
    let annex_at = 20 + key_len;
    let annex_len = u32::from_le_bytes(good[annex_at..annex_at + 4].try_into().unwrap()) as usize;
    let payload_at = annex_at + 4 + annex_len + 16;
    let damage: Vec<(&str, Vec<u8>)> = {
        let flip = |at: usize| {
            let mut bad = good.clone();
            bad[at] ^= 0x5a;
            bad
        };
        vec![
            ("magic", flip(0)),
            ("format", flip(8)),
            ("engine revision", flip(12)),
            ("source key", flip(21)),
            ("annex", flip(annex_at + 5)),
            ("payload length", flip(annex_at + 4 + annex_len)),
            ("header checksum", flip(annex_at + 4 + annex_len + 8)),
            ("first payload byte", flip(payload_at)),
            ("middle of the nodes", flip(good.len() / 2)),
            ("trailer", flip(good.len() - 1)),
            ("truncated", good[..good.len() * 2 / 3].to_vec()),
            ("one byte more", [good.clone(), vec![0]].concat()),
            ("empty", Vec::new()),
        ]
    };
    let mut corrupt = 0.0;
    for (what, bytes) in damage {
        std::fs::write(&path, &bytes).unwrap();
        reload_and_check(&router, id, what).await;
        corrupt += 1.0;
        assert_eq!(image_events(&router, "corrupt").await, corrupt, "{what}");
        assert_eq!(std::fs::read(&path).unwrap(), good, "{what}: rewritten");
    }
    // An image larger than the whole budget is damage, not a model too large to serve:
    // the file is compiled (and fits), no 507.
    {
        let (_small, small_router) = scorer_for(store.path(), |c| {
            c.images.dir = Some(images.path().to_path_buf());
            c.cache.budget = ByteSize(good.len() as u64 * 4);
        });
        std::fs::write(&path, vec![0u8; good.len() * 8]).unwrap();
        let body = infer_reference(&small_router, id).await.ok();
        assert_outputs_match(&body, &reference(id), TOLERANCE);
        assert_eq!(image_events(&small_router, "corrupt").await, 1.0);
        assert_eq!(std::fs::read(&path).unwrap(), good, "rewritten");
    }
    let loaded = image_events(&router, "loaded").await;
    reload_and_check(&router, id, "repaired").await;
    assert_eq!(image_events(&router, "loaded").await, loaded + 1.0);
    // The store's file replaced behind the scorer's back (another inode and time): the
    // image names the old file, so it is stale and the new file is compiled.
    let model = store.path().join(id).join("1").join("model.onnx");
    let bytes = std::fs::read(&model).unwrap();
    std::fs::remove_file(&model).unwrap();
    std::fs::write(&model, &bytes).unwrap();
    reload_and_check(&router, id, "stale").await;
    assert_eq!(image_events(&router, "stale").await, 1.0);
    assert_eq!(image_events(&router, "loaded").await, loaded + 1.0);
    reload_and_check(&router, id, "after the stale one").await;
    assert_eq!(image_events(&router, "loaded").await, loaded + 2.0);
}
