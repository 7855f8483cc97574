//! `cargo xtask bench stats`: the proxy's per-request statistics cost and memory with
//! many model ids.

use std::time::{Duration, Instant};

use anyhow::Result;
use manymodels_policy::PoolStats;
use manymodels_policy::trace::{self as policy_trace, Shape, TraceSpec};

/// Times `PoolStats::record` the way the proxy calls it (through a mutex, by `&str`) on a
/// Zipf 1.0 stream over `ids` ids, then on a stream touching every id equally, and
/// prints the memory held.
pub fn run(ids: usize, requests: usize) -> Result<()> {
    use std::sync::{Arc, Mutex};
    let names: Vec<String> = (0..ids).map(|i| format!("store-{i:06}")).collect();
    println!("| stream | ids | requests | ns per request | tick (ms) | tracked ids | memory |");
    println!("|---|---|---|---|---|---|---|");
    for shape in ["zipf-1.0", "uniform"] {
        let order: Vec<usize> = if shape == "uniform" {
            (0..requests).map(|i| i * 7_919 % ids).collect()
        } else {
            policy_trace::generate(&TraceSpec {
                shape: Shape::Zipf(1.0),
                models: ids,
                requests,
                rate: 1e6,
                seed: 1,
            })
            .iter()
            .map(|r| r.model as usize)
            .collect()
        };
        let stats: Mutex<PoolStats<Arc<str>>> = Mutex::new(PoolStats::new(10.0, 16_384, 0.0));
        let started = Instant::now();
        let mut tick = Duration::ZERO;
        for (i, &m) in order.iter().enumerate() {
            stats
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .record(names[m].as_str());
            if i % 200_000 == 199_999 {
                // The proxy ticks once a second; here every 200,000 requests.
                let t = Instant::now();
                stats
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .tick(i as f64 / 1e5);
                tick += t.elapsed();
            }
        }
        let elapsed = started.elapsed() - tick;
        let ticks = (requests / 200_000).max(1) as f64;
        let stats = stats.into_inner().unwrap_or_else(|p| p.into_inner());
        let id_text: usize = stats.top(usize::MAX).iter().map(|(k, _)| k.len()).sum();
        println!(
            "| {shape} | {ids} | {requests} | {:.0} | {:.2} | {} | {:.2} MB |",
            elapsed.as_nanos() as f64 / requests as f64,
            tick.as_secs_f64() * 1e3 / ticks,
            stats.tracked(),
            (stats.memory_bytes() + id_text) as f64 / 1e6
        );
    }
    Ok(())
}
