//! Explanations (`LoadedModel::contributions`) against the reference implementations, on the
//! committed corpus of real exports (`models/corpus`, whose tree models carry their covers
//! in `nodes_hitrates`): `shap.TreeExplainer` (tree_path_dependent) for scikit-learn
//! forests and boosting, XGBoost's `pred_contribs`, LightGBM's `pred_contrib`, and
//! `coef_ × x` for linear models, each computed by `models/make_contributions.py` on the
//! rows it committed beside them (`models/corpus/contributions/`).
//!
//! Tolerance: `1e-5 × max(1, |reference|)` per value (the files hold `float` leaf weights
//! and thresholds, the libraries `double` ones), and every model's expected value plus its
//! contributions equals its raw score to `1e-9 × max(1, |raw|)` (both summed in `f64` by
//! the engine, the raw score apart from the contributions). Each model is checked as
//! compiled and as read back from its native image.

use manymodels_config::scorer::NativeEngine;
use manymodels_contract::ModelId;
use manymodels_engine::tensor::{DataType, NamedTensor, TensorData};
use manymodels_engine::{CONTRIBUTIONS, EXPECTED_VALUE, Engine, LoadedModel, RAW_OUTPUT};
use manymodels_tests::root;
use serde_json::Value;

mod common;
use common::engines;

const TOLERANCE: f64 = 1e-5;

fn close(got: f64, want: f64, tolerance: f64) -> bool {
    (got - want).abs() <= tolerance * want.abs().max(1.0)
}

/// The rows of a reference file as the model's one input (`null` is NaN).
fn input(model: &LoadedModel, rows: &[Value]) -> Vec<NamedTensor> {
    let width = rows[0].as_array().expect("a row").len();
    let values: Vec<f64> = rows
        .iter()
        .flat_map(|r| r.as_array().expect("a row").iter())
        .map(|v| v.as_f64().unwrap_or(f64::NAN))
        .collect();
    let spec = &model.inputs[0];
    let data = match spec.datatype {
        DataType::Fp32 => TensorData::Fp32(values.iter().map(|&v| v as f32).collect()),
        DataType::Fp64 => TensorData::Fp64(values),
        DataType::Int64 => TensorData::Int64(values.iter().map(|&v| v as i64).collect()),
        other => panic!("input type {other:?}"),
    };
    vec![NamedTensor {
        name: spec.name.clone(),
        datatype: spec.datatype,
        shape: vec![rows.len() as i64, width as i64],
        data,
    }]
}

fn fp64<'a>(outputs: &'a [NamedTensor], name: &str) -> (&'a [i64], &'a [f64]) {
    let out = outputs
        .iter()
        .find(|o| o.name == name)
        .unwrap_or_else(|| panic!("no output {name}"));
    match &out.data {
        TensorData::Fp64(v) => (&out.shape, v),
        other => panic!("{name} is {other:?}"),
    }
}

/// Checks one model's contributions against its reference file; returns the largest
/// relative difference seen.
fn check(name: &str, model: &LoadedModel, reference: &Value) -> f64 {
    let rows = reference["rows"].as_array().expect("rows");
    let outputs = model
        .contributions(input(model, rows), usize::MAX, None)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let (shape, values) = fp64(&outputs, CONTRIBUTIONS);
    let (_, expected) = fp64(&outputs, EXPECTED_VALUE);
    let (_, raw) = fp64(&outputs, RAW_OUTPUT);
    let (n, targets, features) = (shape[0] as usize, shape[1] as usize, shape[2] as usize);
    assert_eq!(n, rows.len(), "{name}");
    // The sum rule, for every target of every row.
    for r in 0..n {
        for k in 0..targets {
            let at = (r * targets + k) * features;
            let sum: f64 = expected[k] + values[at..at + features].iter().sum::<f64>();
            let got = raw[r * targets + k];
            assert!(
                close(sum, got, 1e-9),
                "{name} row {r} target {k}: expected + contributions = {sum}, raw {got}"
            );
        }
    }
    let mut worst: f64 = 0.0;
    for output in reference["outputs"].as_array().expect("outputs") {
        let k = output["target"].as_u64().expect("target") as usize;
        let sign = output["sign"].as_f64().expect("sign");
        assert!(k < targets, "{name}: target {k} of {targets}");
        let mut compare = |what: String, got: f64, want: f64| {
            assert!(
                close(got, want, TOLERANCE),
                "{name} {what}: engine {got}, reference {want}"
            );
            worst = worst.max((got - want).abs() / want.abs().max(1.0));
        };
        let want_expected = output["expected_value"].as_f64().expect("expected_value");
        compare(
            format!("target {k} expected value"),
            sign * expected[k],
            want_expected,
        );
        let contributions = output["contributions"].as_array().expect("contributions");
        let raws = output["raw"].as_array().expect("raw");
        for r in 0..n {
            let row = contributions[r].as_array().expect("a row");
            assert_eq!(row.len(), features, "{name}: features");
            for (f, want) in row.iter().enumerate() {
                let got = sign * values[(r * targets + k) * features + f];
                compare(
                    format!("row {r} target {k} feature {f}"),
                    got,
                    want.as_f64().expect("a number"),
                );
            }
            compare(
                format!("row {r} target {k} raw"),
                sign * raw[r * targets + k],
                raws[r].as_f64().expect("a number"),
            );
        }
    }
    worst
}

/// Every corpus model with a reference is explained natively, compiled and from its
/// image, and equals its reference.
#[test]
fn contributions_equal_the_reference_implementations_on_the_corpus() {
    let dir = root().join("models/corpus");
    let index: Value = serde_json::from_slice(
        &std::fs::read(dir.join("contributions/index.json")).expect("the references are committed"),
    )
    .expect("index.json parses");
    let engines = engines(NativeEngine::Auto);
    let (mut checked, mut served_by_ort) = (Vec::new(), Vec::new());
    for entry in index["models"].as_array().expect("models") {
        let name = entry["model"].as_str().expect("model");
        let reference: Value = serde_json::from_slice(
            &std::fs::read(dir.join("contributions").join(format!("{name}.json")))
                .expect("its reference"),
        )
        .expect("parses");
        let bytes = std::fs::read(dir.join(format!("{name}.onnx"))).expect("its file");
        let id = ModelId::parse(name).expect("a valid id");
        let model = engines
            .load(id.clone(), 1, &bytes, 0)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        if model.engine != Engine::Native {
            // A graph the native engine does not cover (an `Exp` after LightGBM's Poisson
            // trees): refused, with the reason.
            let why = model.explainable().unwrap_err();
            assert!(why.contains("ONNX Runtime"), "{name}: {why}");
            served_by_ort.push(name.to_string());
            continue;
        }
        let worst = check(name, &model, &reference);
        // The same from the model's image (its covers are in it).
        let image = model.image("tag").expect("a native model has an image");
        let file = tempfile(&image);
        let imaged = engines
            .load_image(id, 1, &file, image.len() as u64, "tag")
            .unwrap_or_else(|e| panic!("{name} from its image: {e}"));
        check(name, &imaged, &reference);
        checked.push((name.to_string(), worst));
    }
    println!("largest relative difference per model: {checked:?}");
    println!("served by ONNX Runtime, not explained: {served_by_ort:?}");
    assert!(served_by_ort.len() <= 3, "{served_by_ort:?}");
    assert!(checked.len() >= 45, "{} models checked", checked.len());
    for family in [
        "skl_rf_",
        "skl_et_",
        "skl_gb_",
        "skl_hgb_",
        "lgbm_",
        "xgb_",
        "skl_lin",
        "skl_logreg",
    ] {
        assert!(
            checked.iter().any(|(n, _)| n.starts_with(family)),
            "no {family} model checked"
        );
    }
}

/// A file without covers (what exporters write), and a model ONNX Runtime serves, are
/// refused with the reason.
#[test]
fn models_that_cannot_be_explained_say_why() {
    let engines = engines(NativeEngine::Auto);
    let corpus = root().join("models/corpus");
    // lgbm_reg_cat: categorical chains, exported without covers.
    let bytes = std::fs::read(corpus.join("lgbm_reg_cat.onnx")).expect("committed");
    let model = engines
        .load(ModelId::parse("lgbm-reg-cat").unwrap(), 1, &bytes, 0)
        .expect("loads");
    let width = model.inputs[0].shape[1].max(1) as usize;
    let inputs = vec![NamedTensor {
        name: model.inputs[0].name.clone(),
        datatype: DataType::Fp32,
        shape: vec![1, width as i64],
        data: TensorData::Fp32(vec![0.5; width]),
    }];
    let err = model
        .contributions(inputs, usize::MAX, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("nodes_hitrates"), "{err}");
    // A MatMul graph: served by ONNX Runtime.
    let bytes = std::fs::read(corpus.join("skl_linreg_f64.onnx")).expect("committed");
    let model = engines
        .load(ModelId::parse("linreg-f64").unwrap(), 1, &bytes, 0)
        .expect("loads");
    let err = model.explainable().unwrap_err();
    assert!(err.contains("ONNX Runtime"), "{err}");
}

/// `bytes` in a file (unlinked when the handle closes).
fn tempfile(bytes: &[u8]) -> std::fs::File {
    let path = std::env::temp_dir().join(format!(
        "mm-contrib-{}-{}.mmimg",
        std::process::id(),
        bytes.len()
    ));
    std::fs::write(&path, bytes).expect("temp dir writable");
    let file = std::fs::File::open(&path).expect("reopen");
    std::fs::remove_file(&path).ok();
    file
}
