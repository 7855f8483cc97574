//! Writes a synthetic model store and reports how long it took.
//!
//! ```text
//! cargo run -p manymodels-models --release --example gen_store -- [N] [DIR] [MIX] [SEED] [--keep]
//! ```
//!
//! Defaults: 10000 models, a fresh temp dir (deleted afterwards unless `--keep`),
//! the `realistic` mix, seed 0.

use std::time::Instant;

use manymodels_models::{Mix, write_store};

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let keep = args.iter().any(|a| a == "--keep");
    args.retain(|a| a != "--keep");
    let n: usize = args.first().map_or(10_000, |s| s.parse().expect("N"));
    let dir = args.get(1).filter(|s| !s.is_empty()).map_or_else(
        || std::env::temp_dir().join(format!("manymodels-gen-store-{}", std::process::id())),
        Into::into,
    );
    let mix: Mix = args
        .get(2)
        .map_or(Ok(Mix::Realistic), |s| s.parse())
        .expect("MIX");
    let seed: u64 = args.get(3).map_or(0, |s| s.parse().expect("SEED"));

    let threads = std::thread::available_parallelism().map_or(1, |p| p.get());
    let start = Instant::now();
    let stats = write_store(&dir, n, mix, seed).expect("write_store");
    let elapsed = start.elapsed();
    println!(
        "wrote {} ({mix}, seed {seed}) on {threads} threads in {elapsed:.2?}",
        dir.display()
    );
    print!("{stats}");
    println!(
        "throughput: {:.0} models/s, {:.0} MB/s",
        stats.models as f64 / elapsed.as_secs_f64(),
        stats.bytes as f64 / 1e6 / elapsed.as_secs_f64()
    );
    if !keep {
        std::fs::remove_dir_all(&dir).expect("remove store");
    }
}
