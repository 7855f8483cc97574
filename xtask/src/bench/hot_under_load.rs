//! `cargo xtask bench hot-under-load`: a hot model's latency while cold loads of big
//! forests run on the same scorer, against the same hot model with nothing loading, in
//! one run. The cold loads are continuous: each loader client unloads a big forest and
//! asks for it again, round robin over eight of them.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use manymodels_models::Spec;

use manymodels_tests::http::{post_ok, probe};
use manymodels_tests::reference::{LINEAR_SMALL_ROW, constant_row_body, rows_body};
use manymodels_tests::write_model;

use super::percentile;

#[derive(clap::Args, Clone, Debug)]
pub struct HotUnderLoadArgs {
    /// Hot requests per phase.
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    /// Loader clients (cold loads in flight at once).
    #[arg(long, default_value_t = 2)]
    loaders: usize,
}

const BIG: usize = 8;

pub fn run(args: HotUnderLoadArgs) -> Result<()> {
    let scratch = std::env::temp_dir().join(format!("mm-bench-hot-load-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let demo = Path::new("models/demo/linear-small/1/model.onnx");
    let hot_dir = scratch.join("linear-small/1");
    std::fs::create_dir_all(&hot_dir)?;
    std::fs::copy(demo, hot_dir.join("model.onnx")).context("the demo models (cargo xtask up)")?;
    let mut file = 0usize;
    for i in 0..BIG {
        let model = manymodels_models::build(&Spec::Forest {
            features: 16,
            trees: 100,
            depth: 11,
            seed: 900 + i as u64,
        });
        file = file.max(model.bytes.len());
        write_model(&scratch, &format!("big-{i}"), 1, &model.bytes)?;
    }
    let body = rows_body(&[LINEAR_SMALL_ROW.to_vec()]).to_string();
    let big_body = constant_row_body(16, 0.5).to_string();
    println!(
        "One release scorer; a hot one-row linear model probed by one keep-alive client ({} requests per phase), first alone, then while {} clients keep cold-loading eight generated forests of up to {:.1} MB (unload, then request); CPU shared by everything on this machine's {} cores.\n",
        args.requests,
        args.loaders,
        file as f64 / 1e6,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "| engine | hot p50 alone | hot p99 alone | hot p50 during loads | hot p99 during loads | hot max during loads | cold loads done | load wall (mean) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (port, engine) in [
        (18_301u16, "engine.native=auto"),
        (18_302, "engine.native=off"),
    ] {
        let server = super::scorer(&scratch, port, &[engine, "cache.budget=2GiB"])?;
        let hot_url = format!("{}/v2/models/linear-small/infer", server.url);
        post_ok(&hot_url, &body)?;
        let mut alone = probe(&hot_url, &body, args.requests)?;
        alone.sort();
        let stop = Arc::new(AtomicBool::new(false));
        let loads = Arc::new(AtomicU64::new(0));
        let loaders: Vec<_> = (0..args.loaders)
            .map(|k| {
                let (stop, loads) = (stop.clone(), loads.clone());
                let (base, big_body) = (server.url.clone(), big_body.clone());
                std::thread::spawn(move || -> Result<()> {
                    let mut i = k;
                    while !stop.load(Ordering::Relaxed) {
                        let id = format!("big-{}", i % BIG);
                        post_ok(&format!("{base}/v2/repository/models/{id}/unload"), "{}")?;
                        post_ok(&format!("{base}/v2/models/{id}/infer"), &big_body)?;
                        loads.fetch_add(1, Ordering::Relaxed);
                        i += args.loaders;
                    }
                    Ok(())
                })
            })
            .collect();
        // Let the loaders get going before the probe starts.
        std::thread::sleep(Duration::from_millis(300));
        let load_seconds_before = server
            .metrics_blocking()
            .get("mm_scorer_model_load_duration_seconds_sum");
        let loads_before = server
            .metrics_blocking()
            .get("mm_scorer_model_load_duration_seconds_count");
        let started = Instant::now();
        let mut during = probe(&hot_url, &body, args.requests)?;
        let elapsed = started.elapsed();
        let load_seconds = server
            .metrics_blocking()
            .get("mm_scorer_model_load_duration_seconds_sum")
            - load_seconds_before;
        let loaded = server
            .metrics_blocking()
            .get("mm_scorer_model_load_duration_seconds_count")
            - loads_before;
        stop.store(true, Ordering::Relaxed);
        for loader in loaders {
            loader.join().expect("loader thread")?;
        }
        during.sort();
        println!(
            "| {} | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs | {:.1} ms | {} in {:.1} s | {:.0} ms |",
            engine.trim_start_matches("engine.native="),
            percentile(&alone, 0.5),
            percentile(&alone, 0.99),
            percentile(&during, 0.5),
            percentile(&during, 0.99),
            during.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
            loaded,
            elapsed.as_secs_f64(),
            load_seconds / loaded.max(1.0) * 1e3,
        );
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}
