//! `cargo xtask bench load`: ONNX Runtime's own per-call time (the floor) and cold-load
//! cost by model size: file read, ORT session creation alone, the scorer's whole load,
//! and a cold request over HTTP.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;
use manymodels_config::scorer::NativeEngine;
use manymodels_contract::ModelId;
use manymodels_engine::{self as runtime, Engines};
use manymodels_models::Spec;
use manymodels_tests::ScorerProcess;
use manymodels_tests::http::post_ok;

use super::{median, trim_heap};

pub fn run(reps: usize) -> Result<()> {
    let environment = runtime::environment(None).map_err(anyhow::Error::msg)?;
    // Only carries the environment to the steps: each measurement builds its own.
    let ort = Engines {
        environment: Some(environment),
        native: NativeEngine::Off,
    };
    let scratch = std::env::temp_dir().join(format!("mm-bench-load-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let mut cases = demo_cases();
    cases.extend(generated_cases(&scratch)?);
    let store = serve_copies(&scratch, &cases)?;
    let server = super::scorer(&store, 18_002, &["cache.budget=2GiB"])?;
    print_header();
    for case in &cases {
        measure(&ort, &server, case, reps)?.print(&case.id);
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

/// One model measured: its id, its file and its input width.
struct Case {
    id: String,
    path: PathBuf,
    features: usize,
}

/// One row of the table, in column order.
struct Row {
    file_bytes: usize,
    read: Duration,
    create: Duration,
    whole: Duration,
    weight: u64,
    server_load_ms: f64,
    cold: Duration,
    hot: Duration,
}

/// The committed demo models, read where they are.
fn demo_cases() -> Vec<Case> {
    [
        ("linear-small", 10),
        ("gbm-store", 12),
        ("lightgbm-demand", 16),
        ("forest-1mb", 20),
    ]
    .iter()
    .map(|(id, features)| Case {
        id: id.to_string(),
        path: PathBuf::from(format!("models/demo/{id}/1/model.onnx")),
        features: *features,
    })
    .collect()
}

/// Generated forests of about 100 KB, 1 MB and 5 MB, written under `scratch`.
fn generated_cases(scratch: &Path) -> Result<Vec<Case>> {
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
    let mut cases = Vec::new();
    for (id, spec) in generated {
        let dir = scratch.join(id).join("1");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("model.onnx"),
            manymodels_models::build(&spec).bytes,
        )?;
        cases.push(Case {
            id: id.to_string(),
            path: dir.join("model.onnx"),
            features: spec.features(),
        });
    }
    Ok(cases)
}

/// Copies every case into a store under `scratch`, so the scorer serves the same files
/// for the columns over HTTP; returns the store's root.
fn serve_copies(scratch: &Path, cases: &[Case]) -> Result<PathBuf> {
    let store = scratch.join("store");
    for case in cases {
        let dir = store.join(&case.id).join("1");
        std::fs::create_dir_all(&dir)?;
        std::fs::copy(&case.path, dir.join("model.onnx"))?;
    }
    Ok(store)
}

/// Prints the table's header.
fn print_header() {
    println!(
        "| model | file | read file | ORT session create | scorer load (read + create + measure) | measured weight | scorer load in the server (mean, from metrics) | cold request over HTTP | hot request over HTTP |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
}

/// Measures one model, column by column: in process first, then over HTTP.
fn measure(ort: &Engines, server: &ScorerProcess, case: &Case, reps: usize) -> Result<Row> {
    let bytes = std::fs::read(&case.path)?;
    let read = time_read(&case.path, bytes.len(), reps);
    let create = time_session_create(ort, &bytes, reps);
    let (whole, weight) = time_scorer_load(ort, case, reps);
    let (cold, server_load_ms, hot) = time_requests(server, case, reps);
    Ok(Row {
        file_bytes: bytes.len(),
        read,
        create,
        whole,
        weight,
        server_load_ms,
        cold,
        hot,
    })
}

/// The median of `reps` runs of `timed`, each returning the time it measured.
fn median_of(reps: usize, mut timed: impl FnMut() -> Duration) -> Duration {
    median((0..reps).map(|_| timed()).collect())
}

/// Reading the file, which must be `len` bytes long.
fn time_read(path: &Path, len: usize, reps: usize) -> Duration {
    median_of(reps, || {
        let t = Instant::now();
        let b = std::fs::read(path).unwrap();
        assert_eq!(b.len(), len);
        t.elapsed()
    })
}

/// Creating an ONNX Runtime session from the bytes, alone.
fn time_session_create(ort: &Engines, bytes: &[u8], reps: usize) -> Duration {
    let environment = ort.environment.expect("run opens ONNX Runtime");
    // Each repetition starts from a heap that has given its free memory back to the OS,
    // as the scorer's does after an eviction: the session's pages are faulted in fresh.
    median_of(reps, || {
        trim_heap();
        let t = Instant::now();
        let session = runtime::onnx::create_session(environment, bytes).unwrap();
        let elapsed = t.elapsed();
        drop(session);
        elapsed
    })
}

/// The scorer's whole load (read, create, measure) in process; also returns the weight
/// it measured.
fn time_scorer_load(ort: &Engines, case: &Case, reps: usize) -> (Duration, u64) {
    let mut weight = 0;
    let whole = median_of(reps, || {
        trim_heap();
        let t = Instant::now();
        let b = std::fs::read(&case.path).unwrap();
        let engines = Engines {
            environment: ort.environment,
            native: NativeEngine::Off,
        };
        let model = engines
            .load(ModelId::parse(&case.id).unwrap(), 1, &b, 0)
            .unwrap();
        let elapsed = t.elapsed();
        weight = model.weight;
        elapsed
    });
    (whole, weight)
}

/// Requests over HTTP: cold ones (each after an unload), with the server's own mean load
/// time over them in milliseconds from its metrics, then hot ones.
fn time_requests(server: &ScorerProcess, case: &Case, reps: usize) -> (Duration, f64, Duration) {
    let (id, features) = (&case.id, case.features);
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
    let cold = median_of(reps, || {
        post_ok(&unload, "").unwrap();
        let t = Instant::now();
        post_ok(&url, &body.to_string()).unwrap();
        t.elapsed()
    });
    let (sum_after, count_after) = load_metrics();
    let server_load_ms = (sum_after - sum_before) / (count_after - count_before).max(1.0) * 1e3;
    let hot = median_of(reps, || {
        let t = Instant::now();
        post_ok(&url, &body.to_string()).unwrap();
        t.elapsed()
    });
    (cold, server_load_ms, hot)
}

impl Row {
    /// Prints the row for model `id`.
    fn print(&self, id: &str) {
        println!(
            "| {id} | {:.1} KB | {:.0} µs | {:.2} ms | {:.2} ms | {:.2} MB | {:.2} ms | {:.2} ms | {:.2} ms |",
            self.file_bytes as f64 / 1e3,
            self.read.as_secs_f64() * 1e6,
            self.create.as_secs_f64() * 1e3,
            self.whole.as_secs_f64() * 1e3,
            self.weight as f64 / 1e6,
            self.server_load_ms,
            self.cold.as_secs_f64() * 1e3,
            self.hot.as_secs_f64() * 1e3,
        );
    }
}
