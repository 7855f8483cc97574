//! `cargo xtask bench load`: ONNX Runtime's own per-call time (the floor) and cold-load
//! cost by model size: file read, ORT session creation alone, the scorer's whole load,
//! and a cold request over HTTP.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use manymodels_config::scorer::NativeEngine;
use manymodels_models::Spec;
use manymodels_engine::{self as runtime, Engines};
use manymodels_contract::ModelId;
use manymodels_tests::http::post_ok;

use super::{median, trim_heap};

pub fn run(reps: usize) -> Result<()> {
    let environment = runtime::environment(None).map_err(anyhow::Error::msg)?;
    let scratch = std::env::temp_dir().join(format!("mm-bench-load-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    // (id, file, input width)
    let mut cases: Vec<(String, PathBuf, usize)> = [
        ("linear-small", 10),
        ("gbm-store", 12),
        ("lightgbm-demand", 16),
        ("forest-1mb", 20),
    ]
    .iter()
    .map(|(id, features)| {
        (
            id.to_string(),
            PathBuf::from(format!("models/demo/{id}/1/model.onnx")),
            *features,
        )
    })
    .collect();
    let generated = [
        (
            "gen-forest-100k",
            Spec::Forest {
                features: 16,
                trees: 30,
                depth: 6,
                seed: 3,
            },
        ),
        (
            "gen-forest-1mb",
            Spec::Forest {
                features: 16,
                trees: 60,
                depth: 9,
                seed: 4,
            },
        ),
        (
            "gen-forest-5mb",
            Spec::Forest {
                features: 16,
                trees: 160,
                depth: 10,
                seed: 5,
            },
        ),
    ];
    for (id, spec) in generated {
        let dir = scratch.join(id).join("1");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("model.onnx"),
            manymodels_models::build(&spec).bytes,
        )?;
        cases.push((id.to_string(), dir.join("model.onnx"), spec.features()));
    }
    // Serve the same files over HTTP for the cold-request column.
    let store = scratch.join("store");
    for (id, path, _) in &cases {
        let dir = store.join(id).join("1");
        std::fs::create_dir_all(&dir)?;
        std::fs::copy(path, dir.join("model.onnx"))?;
    }
    let server = super::scorer(&store, 18_002, &["cache.budget=2GiB"])?;
    println!(
        "| model | file | read file | ORT session create | scorer load (read + create + measure) | measured weight | scorer load in the server (mean, from metrics) | cold request over HTTP | hot request over HTTP |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (id, path, features) in &cases {
        let features = *features;
        let bytes = std::fs::read(path)?;
        let read = median(
            (0..reps)
                .map(|_| {
                    let t = Instant::now();
                    let b = std::fs::read(path).unwrap();
                    assert_eq!(b.len(), bytes.len());
                    t.elapsed()
                })
                .collect(),
        );
        // Each repetition starts from a heap that has given its free memory back to the OS,
        // as the scorer's does after an eviction: the session's pages are faulted in fresh.
        let create = median(
            (0..reps)
                .map(|_| {
                    trim_heap();
                    let t = Instant::now();
                    let session = runtime::onnx::create_session(environment, &bytes).unwrap();
                    let elapsed = t.elapsed();
                    drop(session);
                    elapsed
                })
                .collect(),
        );
        let mut weight = 0;
        let whole = median(
            (0..reps)
                .map(|_| {
                    trim_heap();
                    let t = Instant::now();
                    let b = std::fs::read(path).unwrap();
                    let engines = Engines {
                        environment: Some(environment),
                        native: NativeEngine::Off,
                    };
                    let model = engines.load(ModelId::parse(id).unwrap(), 1, &b, 0).unwrap();
                    let elapsed = t.elapsed();
                    weight = model.weight;
                    elapsed
                })
                .collect(),
        );
        let body = serde_json::json!({"inputs":[{"name":"input","shape":[1,features],"datatype":"FP32","data":vec![0.5f32; features]}]});
        let url = format!("{}/v2/models/{id}/infer", server.url);
        let unload = format!("{}/v2/repository/models/{id}/unload", server.url);
        let load_metrics = || -> (f64, f64) {
            (
                server
                    .metrics_blocking()
                    .get("mm_scorer_model_load_duration_seconds_sum"),
                server
                    .metrics_blocking()
                    .get("mm_scorer_model_load_duration_seconds_count"),
            )
        };
        let (sum_before, count_before) = load_metrics();
        let cold = median(
            (0..reps)
                .map(|_| {
                    post_ok(&unload, "").unwrap();
                    let t = Instant::now();
                    post_ok(&url, &body.to_string()).unwrap();
                    t.elapsed()
                })
                .collect(),
        );
        let (sum_after, count_after) = load_metrics();
        let server_load_ms = (sum_after - sum_before) / (count_after - count_before).max(1.0) * 1e3;
        let hot = median(
            (0..reps)
                .map(|_| {
                    let t = Instant::now();
                    post_ok(&url, &body.to_string()).unwrap();
                    t.elapsed()
                })
                .collect(),
        );
        println!(
            "| {id} | {:.1} KB | {:.0} µs | {:.2} ms | {:.2} ms | {:.2} MB | {server_load_ms:.2} ms | {:.2} ms | {:.2} ms |",
            bytes.len() as f64 / 1e3,
            read.as_secs_f64() * 1e6,
            create.as_secs_f64() * 1e3,
            whole.as_secs_f64() * 1e3,
            weight as f64 / 1e6,
            cold.as_secs_f64() * 1e3,
            hot.as_secs_f64() * 1e3,
        );
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}
