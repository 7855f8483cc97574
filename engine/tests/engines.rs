//! The native engine against ONNX Runtime 1.31.1, both in this process as the scorer runs
//! them: every demo model and every model of the committed corpus of real exported models
//! (`models/corpus`, made by `models/make_corpus.py`), on 1,200 generated rows each that
//! include NaN, infinities, signed zeros, huge, tiny and subnormal values, as one batch, in
//! small batches and row by row.
//!
//! Every natively compiled model is also written to its image and read back
//! (`manymodels_native::image`), and that copy is compared the same way: what a scorer
//! with `images.dir` serves after the first load.
//!
//! Tolerance: none. Every output element must be bit-identical (`f32::to_bits`; NaN equals
//! NaN), labels equal; declared signatures must be equal too. The models the native
//! engine must cover are listed: one that falls back to ONNX Runtime fails the test.

use manymodels_config::scorer::NativeEngine;
use manymodels_contract::ModelId;
use manymodels_engine::tensor::{DataType, NamedTensor, TensorData};
use manymodels_engine::{Engine, LoadedModel};
use manymodels_tests::root;
use manymodels_tests::store::demo_store;

mod common;
use common::engines;

/// Corpus models whose whole graph the native engine covers. Everything else in the
/// corpus (Exp, Sigmoid, Softmax, MatMul, ... glue) must fall back to ONNX Runtime.
const NATIVE_CORPUS: &[&str] = &[
    "skl_rf_reg",
    "skl_rf_reg_multiout",
    "skl_rf_reg_int64",
    "skl_rf_bin",
    "skl_rf_bin_zipmap",
    "skl_rf_multi",
    "skl_rf_multi_str",
    "skl_rf_multi_str_zipmap",
    "skl_rf_multi_f64",
    "skl_rf_bin_nan",
    "skl_et_reg",
    "skl_et_bin",
    "skl_et_multi",
    "skl_gb_reg",
    "skl_gb_reg_huber",
    "skl_gb_reg_quantile",
    "skl_gb_reg_zero",
    "skl_gb_bin",
    "skl_gb_bin_zero",
    "skl_gb_multi",
    "skl_hgb_reg",
    "skl_hgb_reg_poisson",
    "skl_hgb_bin",
    "skl_hgb_multi",
    "skl_hgb_bin_cat",
    "lgbm_reg",
    "lgbm_reg_nan",
    "lgbm_reg_cat",
    "lgbm_reg_rf",
    "lgbm_bin",
    "lgbm_bin_zipmap",
    "lgbm_bin_cat",
    "lgbm_multi",
    "lgbm_multi_str",
    "xgb_reg",
    "xgb_reg_nan",
    "xgb_reg_cat",
    "xgb_reg_logistic",
    "xgb_bin",
    "xgb_multi",
    "xgb_multi_nan",
];

/// A small deterministic generator (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.unit().max(1e-300), self.unit());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

const SPECIALS: &[f64] = &[
    f64::NAN,
    f64::INFINITY,
    f64::NEG_INFINITY,
    0.0,
    -0.0,
    1e30,
    -1e30,
    1e-38,
    1.4e-45,
    -3.0e38,
    0.5,
    1.0,
    2.0,
    3.0,
];

/// A feature value: mostly ordinary, at three scales (models were trained on different
/// ranges), sometimes special.
fn value(rng: &mut Rng) -> f64 {
    let pick = rng.unit();
    if pick < 0.12 {
        SPECIALS[(rng.next() % SPECIALS.len() as u64) as usize]
    } else if pick < 0.2 {
        // Small integers: categorical features and BRANCH_EQ thresholds.
        (rng.next() % 8) as f64
    } else {
        let scale = [1.0, 3.0, 30.0][(rng.next() % 3) as usize];
        rng.normal() * scale
    }
}

fn inputs(model: &LoadedModel, rows: usize, rng: &mut Rng) -> Vec<NamedTensor> {
    model
        .inputs
        .iter()
        .map(|spec| {
            let width: i64 = spec.shape.iter().skip(1).map(|&d| d.max(1)).product();
            let n = rows * width as usize;
            let data = match spec.datatype {
                DataType::Fp32 => TensorData::Fp32((0..n).map(|_| value(rng) as f32).collect()),
                DataType::Fp64 => TensorData::Fp64((0..n).map(|_| value(rng)).collect()),
                DataType::Int64 => TensorData::Int64(
                    (0..n)
                        .map(|_| {
                            let v = value(rng);
                            if v.is_finite() { v as i64 } else { i64::MAX }
                        })
                        .collect(),
                ),
                DataType::Int32 => TensorData::Int32(
                    (0..n)
                        .map(|_| {
                            let v = value(rng);
                            if v.is_finite() { v as i32 } else { i32::MIN }
                        })
                        .collect(),
                ),
                DataType::Bool => {
                    TensorData::Bool((0..n).map(|_| rng.next().is_multiple_of(2)).collect())
                }
                DataType::Bytes => unreachable!("no model takes string inputs"),
            };
            let mut shape = vec![rows as i64];
            shape.extend(spec.shape.iter().skip(1).map(|&d| d.max(1)));
            if spec.shape.len() == 1 {
                shape = vec![n as i64];
            }
            NamedTensor {
                name: spec.name.clone(),
                datatype: spec.datatype,
                shape,
                data,
            }
        })
        .collect()
}

fn slice_rows(inputs: &[NamedTensor], from: usize, to: usize) -> Vec<NamedTensor> {
    inputs
        .iter()
        .map(|t| {
            let width = t.data.len() / t.shape[0] as usize;
            let (a, b) = (from * width, to * width);
            let data = match &t.data {
                TensorData::Fp32(v) => TensorData::Fp32(v[a..b].to_vec()),
                TensorData::Fp64(v) => TensorData::Fp64(v[a..b].to_vec()),
                TensorData::Int32(v) => TensorData::Int32(v[a..b].to_vec()),
                TensorData::Int64(v) => TensorData::Int64(v[a..b].to_vec()),
                TensorData::Bool(v) => TensorData::Bool(v[a..b].to_vec()),
                TensorData::Bytes(v) => TensorData::Bytes(v[a..b].to_vec()),
            };
            let mut shape = t.shape.clone();
            shape[0] = (to - from) as i64;
            NamedTensor {
                name: t.name.clone(),
                datatype: t.datatype,
                shape,
                data,
            }
        })
        .collect()
}

/// Differences between two runs' outputs, as messages (empty when bit-identical).
fn differences(a: &[NamedTensor], b: &[NamedTensor], limit: usize) -> Vec<String> {
    let mut out = Vec::new();
    for (x, y) in a.iter().zip(b) {
        if x.shape != y.shape || x.datatype != y.datatype {
            out.push(format!(
                "{}: shape/type {:?} {:?} vs {:?} {:?}",
                x.name, x.shape, x.datatype, y.shape, y.datatype
            ));
            continue;
        }
        let mut push = |i: usize, l: String, r: String| {
            if out.len() < limit {
                out.push(format!("{}[{i}]: ort {l} native {r}", x.name));
            }
        };
        match (&x.data, &y.data) {
            (TensorData::Fp32(l), TensorData::Fp32(r)) => {
                for (i, (p, q)) in l.iter().zip(r).enumerate() {
                    if p.to_bits() != q.to_bits() && !(p.is_nan() && q.is_nan()) {
                        push(i, format!("{p:e}"), format!("{q:e}"));
                    }
                }
            }
            (TensorData::Fp64(l), TensorData::Fp64(r)) => {
                for (i, (p, q)) in l.iter().zip(r).enumerate() {
                    if p.to_bits() != q.to_bits() && !(p.is_nan() && q.is_nan()) {
                        push(i, format!("{p:e}"), format!("{q:e}"));
                    }
                }
            }
            (l, r) if l != r => push(
                0,
                format!("{l:?}").chars().take(200).collect(),
                format!("{r:?}").chars().take(200).collect(),
            ),
            _ => {}
        }
    }
    out
}

/// Runs both engines over generated rows; returns the mismatches.
fn compare(id: &str, bytes: &[u8], seed: u64) -> (Engine, Vec<String>) {
    let model_id = ModelId::parse(id).expect("valid id");
    let ort = engines(NativeEngine::Off)
        .load(model_id.clone(), 1, bytes, 0)
        .unwrap_or_else(|e| panic!("{id}: ONNX Runtime cannot load it: {e}"));
    let native_engines = engines(NativeEngine::Auto);
    let native = native_engines
        .load(model_id.clone(), 1, bytes, 0)
        .unwrap_or_else(|e| panic!("{id}: cannot load it: {e}"));
    // A natively compiled model is also served from its image (as a scorer with
    // `images.dir` serves it on every load after the first): that copy must answer exactly
    // as ONNX Runtime does too.
    let imaged = native.image("tag").map(|image| {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "mm-engines-{}-{}.mmimg",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::write(&path, &image).expect("image written");
        let file = std::fs::File::open(&path).expect("image opened");
        let loaded = native_engines
            .load_image(model_id, 1, &file, image.len() as u64, "tag")
            .unwrap_or_else(|e| panic!("{id}: its image does not load: {e}"));
        let _ = std::fs::remove_file(&path);
        loaded
    });
    if native.engine == Engine::Native && imaged.is_none() {
        return (
            native.engine,
            vec!["a native model without an image".into()],
        );
    }
    let mut problems = Vec::new();
    let spec = |m: &LoadedModel| {
        (
            m.inputs
                .iter()
                .map(|s| (s.name.clone(), s.datatype, s.shape.clone()))
                .collect::<Vec<_>>(),
            m.outputs
                .iter()
                .map(|s| (s.name.clone(), s.datatype, s.shape.clone()))
                .collect::<Vec<_>>(),
        )
    };
    if spec(&ort) != spec(&native) {
        problems.push(format!(
            "signatures differ: ort {:?} native {:?}",
            spec(&ort),
            spec(&native)
        ));
        return (native.engine, problems);
    }
    let mut rng = Rng(seed);
    let rows = 1200;
    let all = inputs(&ort, rows, &mut rng);
    let selected: Vec<usize> = (0..ort.outputs.len()).collect();
    let run = |m: &LoadedModel, x: Vec<NamedTensor>| m.infer(x, &selected);
    // One batch, batches of 7, and single rows (ONNX Runtime's linear kernels take other
    // paths for one row than for many).
    let mut cases: Vec<(usize, usize)> = vec![(0, rows)];
    cases.extend((0..140).step_by(7).map(|i| (i, i + 7)));
    cases.extend((140..240).map(|i| (i, i + 1)));
    let mut compared = 0;
    for (from, to) in cases {
        let x = slice_rows(&all, from, to);
        if let Some(imaged) = &imaged {
            match (run(&ort, x.clone()), run(imaged, x.clone())) {
                (Ok(a), Ok(b)) => {
                    for d in differences(&a, &b, 5) {
                        problems.push(format!("rows {from}..{to} from the image: {d}"));
                    }
                }
                (Err(_), Err(_)) => {}
                (a, b) => problems.push(format!(
                    "rows {from}..{to}: ort {:?} image {:?}",
                    a.map(|_| "ok"),
                    b.map(|_| "ok")
                )),
            }
        }
        match (run(&ort, x.clone()), run(&native, x)) {
            (Ok(a), Ok(b)) => {
                compared += 1;
                for d in differences(&a, &b, 5) {
                    problems.push(format!("rows {from}..{to}: {d}"));
                }
            }
            (Err(a), Err(b)) => {
                let _ = (a, b); // both refuse these rows: the same behaviour
            }
            (a, b) => problems.push(format!(
                "rows {from}..{to}: ort {:?} native {:?}",
                a.map(|_| "ok"),
                b.map(|_| "ok")
            )),
        }
        if problems.len() > 20 {
            break;
        }
    }
    // Both engines refusing every batch would compare nothing.
    if compared == 0 {
        problems.push("no batch ran on both engines".into());
    }
    (native.engine, problems)
}

#[test]
fn native_engine_equals_onnx_runtime_on_the_corpus_of_real_exported_models() {
    let dir = root().join("models/corpus");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let mut failures = Vec::new();
    let mut native = Vec::new();
    let entries = manifest.as_array().expect("a list");
    assert!(
        entries.len() >= 40,
        "the corpus has {} models",
        entries.len()
    );
    for (k, entry) in entries.iter().enumerate() {
        let name = entry["name"].as_str().unwrap();
        let bytes = std::fs::read(dir.join(entry["file"].as_str().unwrap())).unwrap();
        let (engine, problems) = compare(&name.replace('_', "-"), &bytes, 1000 + k as u64);
        if engine == Engine::Native {
            native.push(name.to_string());
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{name} ({}):\n  {}",
                engine.as_str(),
                problems.join("\n  ")
            ));
        }
    }
    let missing: Vec<&&str> = NATIVE_CORPUS
        .iter()
        .filter(|n| !native.iter().any(|m| m == *n))
        .collect();
    println!(
        "native: {} of {} corpus models: {native:?}",
        native.len(),
        entries.len()
    );
    assert!(
        failures.is_empty(),
        "{} models differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        missing.is_empty(),
        "these corpus models should be served natively: {missing:?}"
    );
}

#[test]
fn native_engine_equals_onnx_runtime_on_the_demo_models() {
    let dir = demo_store();
    let mut failures = Vec::new();
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path().join("1/model.onnx");
        if !path.exists() {
            continue;
        }
        count += 1;
        let id = path
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let bytes = std::fs::read(&path).unwrap();
        let (engine, problems) = compare(&id, &bytes, 7);
        println!("{id}: {}", engine.as_str());
        if !problems.is_empty() {
            failures.push(format!(
                "{id} ({}):\n  {}",
                engine.as_str(),
                problems.join("\n  ")
            ));
        }
    }
    assert!(count >= 8);
    assert!(
        failures.is_empty(),
        "{} models differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Hand-built models (`models/make_op_models.py`) for every option real exporters never
/// emit: each branch mode, aggregate, post transform, base-value and label case of the
/// ensembles, Normalizer norms, linear transforms, casts and constant arithmetic.
#[test]
fn native_engine_equals_onnx_runtime_on_every_operator_option() {
    let dir = root().join("models/corpus/ops");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let entries = manifest.as_array().expect("a list");
    assert!(entries.len() >= 80, "{} op models", entries.len());
    let mut failures = Vec::new();
    let mut fell_back = Vec::new();
    for (k, entry) in entries.iter().enumerate() {
        let name = entry["name"].as_str().unwrap();
        let bytes = std::fs::read(dir.join(entry["file"].as_str().unwrap())).unwrap();
        let (engine, problems) = compare(&name.replace('_', "-"), &bytes, 5000 + k as u64);
        if engine != Engine::Native {
            fell_back.push(name.to_string());
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{name} ({}):\n  {}",
                engine.as_str(),
                problems.join("\n  ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} models differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Trees not listed root first: ONNX Runtime takes the first listed node as the root and
    // hangs the unreachable leaves' weights on whatever it placed first; the engine sends
    // such models to ONNX Runtime rather than copy that.
    assert_eq!(
        fell_back,
        [
            "te_order_postorder",
            "te_order_subtree_first",
            "te_ids_shuffled_unordered"
        ],
        "models not served natively"
    );
}
