//! `cargo xtask bench memory`: resident memory per 1,000 small (linear) models.

use std::time::Instant;

use anyhow::Result;
use manymodels_models::Mix;
use manymodels_tests::http::post_ok;

pub fn run(models: usize) -> Result<()> {
    let store = std::env::temp_dir().join(format!("mm-bench-memory-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&store);
    manymodels_models::write_store(&store, models, Mix::Tiny, 11)?;
    let server = super::scorer(&store, 18_003, &["cache.budget=4GiB"])?;
    let before = server.rss_bytes();
    let started = Instant::now();
    for i in 0..models {
        let id = manymodels_models::model_id(i);
        post_ok(
            &format!("{}/v2/repository/models/{id}/load", server.url),
            "",
        )?;
    }
    let elapsed = started.elapsed();
    let after = server.rss_bytes();
    let charged = server.metrics_blocking().get("mm_scorer_resident_bytes");
    println!(
        "| models | RSS before | RSS after | RSS per 1,000 models | charged per 1,000 models | load time per model |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| {models} tiny linear | {:.1} MB | {:.1} MB | {:.1} MB | {:.1} MB | {:.2} ms |",
        before as f64 / 1e6,
        after as f64 / 1e6,
        (after - before) as f64 / 1e6 * 1000.0 / models as f64,
        charged / 1e6 * 1000.0 / models as f64,
        elapsed.as_secs_f64() * 1e3 / models as f64
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&store);
    Ok(())
}
