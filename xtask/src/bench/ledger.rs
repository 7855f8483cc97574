//! `cargo xtask bench ledger`: the per-model ledger's cost per request and its memory as
//! the number of distinct models in traffic grows (1,000 to 100,000 by default), in one
//! run. Each stream is Zipf 1.0 over its ids (as many-models traffic is), recorded the way
//! the scorer records (`scorer::ledger::Ledgers`: through a mutex, by `&str`, one wall-clock
//! read per request) with latencies spread over three decades and a few errors, ticked as
//! the scorer ticks (every 100,000 requests here, once a second there). After each stream:
//! the ledger's own count of what it holds (`heap_bytes`, ids and sketches by capacity)
//! against its bound, the models tracked, and ns per request.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Result, ensure};
use manymodels_policy::ledger::{Ledger, LedgerConfig, Sample};
use manymodels_policy::trace::{self as policy_trace, Shape, TraceSpec};

#[derive(clap::Args, Clone, Debug)]
pub struct LedgerArgs {
    /// Distinct model ids per stream, in this order; the first and the last are compared.
    #[arg(long, value_delimiter = ',', default_values_t = [1_000usize, 10_000, 100_000])]
    ids: Vec<usize>,
    /// Requests per stream.
    #[arg(long, default_value_t = 2_000_000)]
    requests: usize,
}

fn wall() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

pub fn run(args: LedgerArgs) -> Result<()> {
    ensure!(!args.ids.is_empty(), "--ids names no id count");
    println!(
        "| distinct models | requests | ns per request | tick (ms) | tracked | held (MiB) | bound (MiB) |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut held = Vec::new();
    for &ids in &args.ids {
        let names: Vec<String> = (0..ids).map(|i| format!("store-{i:06}")).collect();
        let order: Vec<usize> = policy_trace::generate(&TraceSpec {
            shape: Shape::Zipf(1.0),
            models: ids,
            requests: args.requests,
            rate: 1e6,
            seed: 7,
        })
        .iter()
        .map(|r| r.model as usize)
        .collect();
        // The scorer's configuration: its defaults and its eight error kinds.
        let config = LedgerConfig {
            error_kinds: manymodels_contract::ledger::ERROR_KINDS.to_vec(),
            ..LedgerConfig::default()
        };
        let ledger = Mutex::new(Ledger::new(config, wall()));
        let deadline = ledger.lock().unwrap().error_kind("deadline");
        let mut tick = Duration::ZERO;
        let started = Instant::now();
        for (i, &m) in order.iter().enumerate() {
            // Latencies from 0.1 ms to 100 ms, a few versions, one error in 500.
            let latency = 1e-4 * 10f64.powf((i % 997) as f64 / 332.0);
            let sample = Sample {
                latency,
                rows: 1 + (i % 4) as u64,
                lookup: Some(if i % 50 == 0 {
                    manymodels_contract::Lookup::Miss
                } else {
                    manymodels_contract::Lookup::Hit
                }),
                error: (i % 500 == 0).then_some(deadline).flatten(),
                version: Some(1 + (i % 3) as u64),
            };
            let now = wall();
            ledger
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .record(&names[m], &sample, now);
            if i % 100_000 == 99_999 {
                let t = Instant::now();
                ledger
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .tick(wall());
                tick += t.elapsed();
            }
        }
        let elapsed = started.elapsed() - tick;
        let ticks = (args.requests / 100_000).max(1) as f64;
        let ledger = ledger.into_inner().unwrap_or_else(|p| p.into_inner());
        let bytes = ledger.heap_bytes();
        held.push(bytes);
        println!(
            "| {ids} | {} | {:.0} | {:.2} | {} | {:.2} | {:.2} |",
            args.requests,
            elapsed.as_nanos() as f64 / args.requests as f64,
            tick.as_secs_f64() * 1e3 / ticks,
            ledger.tracked(),
            bytes as f64 / (1 << 20) as f64,
            ledger.bound_bytes() as f64 / (1 << 20) as f64,
        );
    }
    if let (Some(first), Some(last)) = (held.first(), held.last()) {
        println!(
            "\nheld at {} ids / at {} ids: {:.3} (flat within 10% is ≤ 1.10)",
            args.ids.last().unwrap_or(&0),
            args.ids.first().unwrap_or(&0),
            *last as f64 / *first as f64
        );
    }
    Ok(())
}
