//! `cargo xtask bench explain`: what an explanation costs, per size class of the realistic
//! store: the native engine's contributions per row as a multiple of its own prediction,
//! beside `shap.TreeExplainer` (tree_path_dependent) on the same scikit-learn model and
//! rows, one thread each. `models/bench_shap.py` trains each class's model as
//! `models/make_realistic.py` does, exports it with its covers and times shap; this file
//! loads the exported ONNX natively and times the engine on the same rows.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use manymodels_config::scorer::NativeEngine;
use manymodels_contract::ModelId;
use manymodels_engine::tensor::{DataType, NamedTensor, TensorData};
use manymodels_engine::{self as engine, Engines, LoadedModel};
use serde_json::Value;

#[derive(clap::Args, Clone, Debug)]
pub struct ExplainArgs {
    /// Where `models/bench_shap.py` writes its models, rows and times (made when missing).
    #[arg(long, default_value = ".cache/bench-explain")]
    dir: PathBuf,
    /// Rows timed per model.
    #[arg(long, default_value_t = 64)]
    rows: usize,
    /// Run `models/bench_shap.py` again even when its times exist.
    #[arg(long)]
    fresh: bool,
}

const CLASSES: [&str; 4] = ["linear", "forest_small", "forest_medium", "forest_heavy"];

pub fn run(args: ExplainArgs) -> Result<()> {
    let times_file = args.dir.join("shap_times.json");
    if args.fresh || !times_file.exists() {
        crate::setup::shap_deps()?;
        let status = std::process::Command::new("python3")
            .arg("models/bench_shap.py")
            .arg("--out")
            .arg(&args.dir)
            .arg("--rows")
            .arg(args.rows.to_string())
            .status()
            .context("running models/bench_shap.py")?;
        if !status.success() {
            bail!("models/bench_shap.py failed: {status}");
        }
    }
    let times: Value = serde_json::from_slice(&std::fs::read(&times_file)?)?;
    let library = std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from);
    let environment = engine::environment(library.as_deref()).map_err(anyhow::Error::msg)?;
    let engines = Engines {
        environment: Some(environment),
        native: NativeEngine::Auto,
    };
    println!(
        "explanations: native contributions per row against the native prediction and shap.TreeExplainer \
         (tree_path_dependent), one thread each, best of 3; the same model and rows; held: the \
         native model's bytes, covers included"
    );
    println!(
        "{:<14} {:>9} {:>9} {:>6} {:>9} {:>5} | {:>11} {:>11} {:>8} | {:>11} {:>12} {:>10}",
        "class",
        "bytes",
        "held",
        "trees",
        "nodes",
        "feat",
        "predict/row",
        "explain/row",
        "x pred",
        "shap/row",
        "shap batch",
        "shap/ours"
    );
    for class in CLASSES {
        let Some(t) = times.get(class) else {
            continue;
        };
        let file = args.dir.join(t["file"].as_str().context("file")?);
        let bytes = std::fs::read(&file).with_context(|| file.display().to_string())?;
        let rows: Vec<Vec<f32>> =
            serde_json::from_slice(&std::fs::read(args.dir.join(format!("{class}.rows.json")))?)?;
        let model = engines
            .load(
                ModelId::parse(&class.replace('_', "-")).map_err(anyhow::Error::msg)?,
                1,
                &bytes,
                0,
            )
            .map_err(anyhow::Error::msg)?;
        if model.engine != engine::Engine::Native {
            println!(
                "{class:<14} served by ONNX Runtime ({:?}): not explained",
                model.native_refusal
            );
            continue;
        }
        let one = |row: &[f32]| input(&model, std::slice::from_ref(&row.to_vec()));
        let all_outputs: Vec<usize> = (0..model.outputs.len()).collect();
        // One row a call, as one request's row is explained.
        let predict = best_of(3, || {
            for row in &rows {
                model.infer(one(row), &all_outputs).expect("predicts");
            }
        }) / rows.len() as u32;
        let explain = best_of(3, || {
            for row in &rows {
                model
                    .contributions(one(row), usize::MAX, None)
                    .expect("explains");
            }
        }) / rows.len() as u32;
        let shap = t["shap_seconds_per_row"].as_f64();
        let shap_batch = t["shap_batch_seconds_per_row"].as_f64();
        let micros = |d: Duration| d.as_secs_f64() * 1e6;
        let show = |s: Option<f64>| s.map_or("-".to_string(), |s| format!("{:.1} µs", s * 1e6));
        println!(
            "{:<14} {:>9} {:>9} {:>6} {:>9} {:>5} | {:>8.2} µs {:>8.1} µs {:>7.1}x | {:>11} {:>12} {:>10}",
            class,
            t["bytes"].as_u64().unwrap_or(bytes.len() as u64),
            model.weight,
            t["trees"].as_u64().map_or("-".into(), |v| v.to_string()),
            t["nodes"].as_u64().map_or("-".into(), |v| v.to_string()),
            t["features"].as_u64().unwrap_or(0),
            micros(predict),
            micros(explain),
            explain.as_secs_f64() / predict.as_secs_f64(),
            show(shap),
            show(shap_batch),
            shap.map_or("-".to_string(), |s| format!(
                "{:.1}x",
                s / explain.as_secs_f64()
            )),
        );
    }
    Ok(())
}

/// The fastest of `n` runs of `f`.
fn best_of(n: usize, mut f: impl FnMut()) -> Duration {
    (0..n)
        .map(|_| {
            let started = Instant::now();
            f();
            started.elapsed()
        })
        .min()
        .expect("n > 0")
}

/// `rows` as the model's one input, in its datatype.
fn input(model: &LoadedModel, rows: &[Vec<f32>]) -> Vec<NamedTensor> {
    let width = rows[0].len();
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    let spec = &model.inputs[0];
    let data = match spec.datatype {
        DataType::Fp64 => TensorData::Fp64(flat.iter().map(|&v| f64::from(v)).collect()),
        DataType::Int64 => TensorData::Int64(flat.iter().map(|&v| v as i64).collect()),
        _ => TensorData::Fp32(flat),
    };
    vec![NamedTensor {
        name: spec.name.clone(),
        datatype: spec.datatype,
        shape: vec![rows.len() as i64, width as i64],
        data,
    }]
}
