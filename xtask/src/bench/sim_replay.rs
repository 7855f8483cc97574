//! `cargo xtask bench sim-replay`: replays a generated trace (the simulator's generator)
//! over generated models through the proxy and three scorers, paced at the trace's own
//! times, and prints the live pool hit ratio and loads beside the simulator's figures for
//! the same trace, budget and scorer names.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use manymodels_models::{Mix, Spec};
use manymodels_policy::PolicyConfig;
use manymodels_policy::sim;
use manymodels_policy::trace::{self as policy_trace, Request, Shape, TraceSpec};
use manymodels_tests::reference::constant_row_body;
use manymodels_tests::{ProxyProcess, ScorerProcess};

use super::{Job, Outcome, drive, percentile, totals};

#[derive(clap::Args, Clone, Debug)]
pub struct SimReplayArgs {
    /// Models in the generated store (realistic size mix).
    #[arg(long, default_value_t = 2_000)]
    models: usize,
    /// Traffic shape (zipf-<alpha>, drift, scan, daynight).
    #[arg(long, default_value = "zipf-1.0")]
    shape: String,
    #[arg(long, default_value_t = 60_000)]
    requests: usize,
    /// Requests per second (the trace's pace).
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Concurrent keep-alive clients.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// The pool's budget as a fraction of all models' estimated memory.
    #[arg(long, default_value_t = 0.1)]
    budget_fraction: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// The three scorers' ports; their addresses are also the simulator's scorer names.
const SCORER_PORTS: [u16; 3] = [18_021, 18_022, 18_023];
const PROXY_PORT: u16 = 18_020;

pub fn run(args: SimReplayArgs) -> Result<()> {
    let shape: Shape = args.shape.parse().map_err(anyhow::Error::msg)?;
    let store = generated_store(args.models)?;
    // What each model will be charged: measured on these generated models, about 66 KB
    // plus 8.3 × the file (BENCHMARKS.md); the pool's budget is a fraction of all of it,
    // split evenly over the three scorers.
    let specs: Vec<Spec> = (0..args.models)
        .map(|i| manymodels_models::spec_for(i, Mix::Realistic, 42))
        .collect();
    let sizes = charged_sizes(&store, args.models)?;
    let budget = (sizes.iter().sum::<u64>() as f64 * args.budget_fraction / 3.0) as u64;
    let trace = policy_trace::generate(&TraceSpec {
        shape,
        models: args.models,
        requests: args.requests,
        rate: args.rate,
        seed: args.seed,
    });
    let addrs: Vec<String> = SCORER_PORTS
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let names: Vec<String> = (0..args.models).map(manymodels_models::model_id).collect();
    let simulated = sim::run_pool(&trace, &sizes, &names, &addrs, || {
        Box::new(sim::Managed::new(
            budget,
            PolicyConfig::default(),
            Some(2.0),
        ))
    });
    let lru = sim::run_pool(&trace, &sizes, &names, &addrs, || {
        Box::new(sim::Lru::new(budget))
    });

    let budget_set = format!("cache.budget={budget}");
    let scorers: Vec<ScorerProcess> = SCORER_PORTS
        .iter()
        .map(|&p| super::scorer(&store, p, &[&budget_set]))
        .collect::<Result<_>>()?;
    let proxy = super::proxy(PROXY_PORT, &addrs, &[])?;
    let live = replay_live(&proxy, &scorers, &trace, &names, &specs, args.concurrency)?;
    print_report(&args, shape, budget, &live, &simulated, &lru);
    drop(proxy);
    Ok(())
}

/// The generated store of `models` models (the realistic mix), made once and reused while
/// its completion marker is there.
fn generated_store(models: usize) -> Result<PathBuf> {
    let store = std::env::temp_dir().join(format!("mm-replay-{models}"));
    let marker = store.join(".complete");
    if !marker.exists() {
        let _ = std::fs::remove_dir_all(&store);
        manymodels_models::write_store(&store, models, Mix::Realistic, 42)?;
        std::fs::write(&marker, "")?;
    }
    Ok(store)
}

/// What the cache will charge each model, from its file's size.
fn charged_sizes(store: &Path, models: usize) -> Result<Vec<u64>> {
    let mut sizes = Vec::with_capacity(models);
    for i in 0..models {
        let file = std::fs::metadata(manymodels_models::model_path(store, i))?.len();
        sizes.push(66_000 + file * 83 / 10);
    }
    Ok(sizes)
}

/// The live pool's figures for the trace.
struct Live {
    outcome: Outcome,
    hits: f64,
    misses: f64,
    loads: f64,
    /// Warm-up loads, the proxy-asked ones included.
    warmups: f64,
    /// Loads the proxy asked for in the background (moving a model home, replication).
    proxy_warms: f64,
    not_admitted: f64,
    displaced: f64,
}

/// Sends the trace through the proxy, open loop at the trace's own pace, and reads the
/// pool's cache figures afterwards.
fn replay_live(
    proxy: &ProxyProcess,
    scorers: &[ScorerProcess],
    trace: &[Request],
    names: &[String],
    specs: &[Spec],
    concurrency: usize,
) -> Result<Live> {
    let bodies: Vec<String> = specs
        .iter()
        .map(|spec| constant_row_body(spec.features(), 0.25).to_string())
        .collect();
    // Open loop at the trace's own pace (the policy's clock is real time).
    let outcome = drive(proxy.addr(), concurrency, Duration::MAX, |i| {
        let request = trace.get(i)?;
        let model = request.model as usize;
        Some(Job {
            path: format!("/v2/models/{}/infer", names[model]),
            body: &bodies[model],
            due: Some(Duration::from_secs_f64(request.t)),
        })
    })?;
    let [hits, misses, loads, mut warmups, not_admitted, displaced] = totals(
        scorers,
        [
            "mm_scorer_cache_hits_total",
            "mm_scorer_cache_misses_total",
            "mm_scorer_model_loads_total",
            "mm_scorer_warmup_loads_total",
            "mm_scorer_cache_evictions_total{reason=\"not_admitted\"}",
            "mm_scorer_cache_evictions_total{reason=\"capacity\"}",
        ],
    );
    // Loads the proxy asked for in the background (moving a model home, replication).
    let proxy_warms = proxy.metrics_blocking().get("mm_proxy_warm_triggers_total");
    warmups += proxy_warms;
    Ok(Live {
        outcome,
        hits,
        misses,
        loads,
        warmups,
        proxy_warms,
        not_admitted,
        displaced,
    })
}

impl Live {
    /// The pool's hit ratio.
    fn hit_ratio(&self) -> f64 {
        self.hits / (self.hits + self.misses).max(1.0)
    }

    /// Prints the table's live row; the rate is of the trace's `requests`.
    fn print_row(&self, requests: usize) {
        let (elapsed, latencies) = (self.outcome.elapsed, &self.outcome.latencies);
        println!(
            "| live (proxy + 3 scorers) | {:.3} | {} | {} ({}) | {} | {} | {:.0} | {:.2} ms | {:.2} ms | {} |",
            self.hit_ratio(),
            self.loads,
            self.warmups,
            self.proxy_warms,
            self.not_admitted,
            self.displaced,
            requests as f64 / elapsed.as_secs_f64(),
            percentile(latencies, 0.5) / 1e3,
            percentile(latencies, 0.99) / 1e3,
            self.outcome.failed,
        );
    }
}

/// Prints the run's description, the live pool beside the simulator's two policies, and
/// how far apart live and simulated are.
fn print_report(
    args: &SimReplayArgs,
    shape: Shape,
    budget: u64,
    live: &Live,
    simulated: &sim::Outcome,
    lru: &sim::Outcome,
) {
    let SimReplayArgs {
        models,
        requests,
        rate,
        concurrency,
        budget_fraction,
        seed,
        ..
    } = *args;
    let live_hit = live.hit_ratio();
    println!(
        "trace: {shape}, {models} models, {requests} requests at {rate} req/s, seed {seed}; {concurrency} clients; budget per scorer {:.0} MB ({budget_fraction} of all models' memory over 3 scorers)",
        budget as f64 / 1e6
    );
    println!(
        "| | pool hit ratio | loads | warm-up loads (proxy-asked) | not admitted | displaced | req/s | p50 | p99 | failed |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    live.print_row(requests);
    println!(
        "| simulator, scorer policy | {:.3} | {} | | | | | | | |",
        simulated.hit_ratio(),
        simulated.misses
    );
    println!(
        "| simulator, LRU | {:.3} | {} | | | | | | | |",
        lru.hit_ratio(),
        lru.misses
    );
    println!(
        "live − simulated hit ratio: {:+.1} points; live loads − (simulated + warm-ups): {:+.0}",
        100.0 * (live_hit - simulated.hit_ratio()),
        live.loads - (simulated.misses as f64 + live.warmups)
    );
}
