//! Model declarations (`metadata_props`: `manymodels.columns`, `manymodels.forecast`) as
//! both engines read them: the committed forecast corpus (`models/forecast`, made by
//! `models/make_forecast.py`) declares both, and ONNX Runtime's custom metadata, the native
//! reader and the native image must all give the same declaration; a malformed one refuses
//! the model on either engine; an image written before images carried declarations is
//! refused as corrupt (so the scorer compiles the file again).

use std::path::PathBuf;

use manymodels_config::scorer::NativeEngine;
use manymodels_contract::ModelId;
use manymodels_contract::forecast::{Calendar, Feature, Frequency};
use manymodels_engine::Engine;
use manymodels_native::ImageError;
use manymodels_tests::root;

mod common;
use common::engines;

fn image_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "mm-declarations-{}-{name}.mmimg",
        std::process::id()
    ))
}

#[test]
fn both_engines_and_the_image_read_the_same_declaration() {
    let store = root().join("models/forecast");
    let mut ids: Vec<String> = std::fs::read_dir(&store)
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            e.file_type()
                .unwrap()
                .is_dir()
                .then(|| e.file_name().into_string().unwrap())
        })
        .collect();
    ids.sort();
    assert_eq!(ids.len(), 6, "{ids:?}");
    for id in ids {
        let bytes = std::fs::read(store.join(&id).join("1/model.onnx")).unwrap();
        let model_id = ModelId::parse(&id).unwrap();
        let ort = engines(NativeEngine::Off)
            .load(model_id.clone(), 1, &bytes, 0)
            .unwrap();
        let native_engines = engines(NativeEngine::Auto);
        let native = native_engines.load(model_id.clone(), 1, &bytes, 0).unwrap();
        assert_eq!(ort.engine, Engine::OnnxRuntime);
        assert_eq!(
            native.engine,
            Engine::Native,
            "{id}: {:?}",
            native.native_refusal
        );
        let declaration = &ort.declaration;
        assert_eq!(&native.declaration, declaration, "{id}");
        let columns = declaration.columns.as_ref().unwrap();
        assert_eq!(columns.len(), 7);
        assert_eq!(columns[6], "price");
        let forecast = declaration.forecast.as_ref().unwrap();
        assert_eq!(forecast.frequency, Some(Frequency::Weekly(3)));
        assert_eq!(forecast.max_horizon, 12);
        assert_eq!(forecast.max_lag(), 4);
        assert_eq!(
            forecast.features[4],
            Feature::Calendar(Calendar::WeekOfYear)
        );
        let image = native.image("tag").expect("a native model has an image");
        let path = image_path(&id);
        std::fs::write(&path, &image).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let imaged = native_engines
            .load_image(model_id, 1, &file, image.len() as u64, "tag")
            .unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(&imaged.declaration, declaration, "{id}");
    }
}

#[test]
fn a_model_without_declarations_declares_nothing() {
    let bytes = std::fs::read(root().join("models/demo/linear-small/1/model.onnx")).unwrap();
    for native in [NativeEngine::Off, NativeEngine::Auto] {
        let model = engines(native)
            .load(ModelId::parse("m").unwrap(), 1, &bytes, 0)
            .unwrap();
        assert!(model.declaration.is_empty());
    }
}

#[test]
fn a_malformed_declaration_refuses_the_model_on_either_engine() {
    let bytes = std::fs::read(root().join("models/demo/linear-small/1/model.onnx")).unwrap();
    let ten: Vec<String> = (0..10).map(|i| format!("f{i}")).collect();
    let ten = serde_json::to_string(&ten).unwrap();
    let lag_zero = format!(
        r#"{{"max_horizon": 3, "features": [{{"lag": 0}}{}]}}"#,
        r#", {"lag": 1}"#.repeat(9)
    );
    for (key, value, says) in [
        (
            "manymodels.columns",
            r#"["a", "b"]"#,
            "names 2 columns, the input has 10",
        ),
        (
            "manymodels.columns",
            "a, b",
            "expected a JSON array of strings",
        ),
        ("manymodels.forecast", lag_zero.as_str(), "lag 0"),
        (
            "manymodels.forecast",
            r#"{"max_horizon": 3, "features": [{"lag": 1}, {"weather": "rain"}]}"#,
            "unknown variant `weather`",
        ),
        (
            "manymodels.forecast",
            r#"{"max_horizon": 3, "features": [{"lag": 1}]}"#,
            "declares 1 features, the input has 10",
        ),
    ] {
        let bad = manymodels_models::with_metadata_prop(&bytes, key, value);
        for native in [NativeEngine::Off, NativeEngine::Auto] {
            let err = engines(native)
                .load(ModelId::parse("m").unwrap(), 1, &bad, 0)
                .expect_err(says);
            assert!(
                err.contains("invalid model declaration")
                    && err.contains(key)
                    && err.contains(says),
                "{native:?} {says}: {err}"
            );
        }
    }
    // A good one is read by both.
    let good = manymodels_models::with_metadata_prop(&bytes, "manymodels.columns", &ten);
    for native in [NativeEngine::Off, NativeEngine::Auto] {
        let model = engines(native)
            .load(ModelId::parse("m").unwrap(), 1, &good, 0)
            .unwrap();
        assert_eq!(model.declaration.columns.as_ref().unwrap()[9], "f9");
    }
}

#[test]
fn an_image_without_a_declaration_is_corrupt() {
    let bytes =
        std::fs::read(root().join("models/forecast/Store1000_dominicks_lr/1/model.onnx")).unwrap();
    let model = manymodels_native::Model::compile(&bytes).unwrap();
    // The annex as images wrote it before declarations.
    let old = model
        .to_image(b"tag", br#"{"file_bytes": 570, "classes": [null]}"#)
        .unwrap();
    let path = image_path("old");
    std::fs::write(&path, &old).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let err = engines(NativeEngine::Auto)
        .load_image(
            ModelId::parse("m").unwrap(),
            1,
            &file,
            old.len() as u64,
            "tag",
        )
        .unwrap_err();
    let _ = std::fs::remove_file(&path);
    match err {
        ImageError::Corrupt(message) => {
            assert!(message.contains("declaration"), "{message}")
        }
        other => panic!("expected a corrupt image, got {other:?}"),
    }
}
