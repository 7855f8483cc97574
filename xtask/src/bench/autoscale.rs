//! `cargo xtask bench autoscale`: the autoscaling signal over a simulated replay whose
//! traffic doubles. The trace starts on `--models` active models (Zipf 1.0 over a fixed
//! random popularity order of twice as many, the realistic size mix) at `--rate` req/s,
//! then onboards a quarter more models per phase until twice as many are active at twice
//! the rate: new customers, each like the old ones. A fixed pool of `--scorers` scorers
//! with the scorer's own policy (`sim::Managed`, pool statistics pushed every 2 s) serves
//! it, each request at its rendezvous owner. Every window prints the pool hit ratio of
//! repeat requests (a model's first request misses at any pool size, so it says nothing
//! about capacity)
//! beside the signal the chart's KEDA ScaledObject scales on: the scorers' working sets
//! (`policy::pressure`, from the proxy's own decayed rates, as `mm_scorer_working_set_bytes`
//! is computed) over the pool budget, and the replicas KEDA would ask for at
//! `--target-fill`. The budget is set so the first phase's working set fills
//! `--start-fill` of the pool.

use anyhow::Result;
use clap::Args;
use manymodels_policy::pressure::{COVERAGE, working_set_bytes};
use manymodels_policy::sim::{Cache, Managed};
use manymodels_policy::trace::{Request, Rng, realistic_sizes};
use manymodels_policy::{PolicyConfig, PoolStats, ranking};

#[derive(Args)]
pub struct AutoscaleArgs {
    /// Models active at the start; twice as many at the end.
    #[arg(long, default_value_t = 1_000)]
    models: usize,
    /// Requests per second at the start; twice as many at the end.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Requests per phase (five phases: 1, 1.25, 1.5, 1.75 and 2 times the models).
    #[arg(long, default_value_t = 60_000)]
    phase_requests: usize,
    /// Requests per printed window.
    #[arg(long, default_value_t = 10_000)]
    window: usize,
    #[arg(long, default_value_t = 3)]
    scorers: usize,
    /// The first phase's working set as a share of the pool budget.
    #[arg(long, default_value_t = 0.65)]
    start_fill: f64,
    /// The working set per scorer the ScaledObject aims at, as a share of one budget.
    #[arg(long, default_value_t = 0.8)]
    target_fill: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Popularity weights of `active` (Zipf 1.0 by a fixed rank), as a sampling CDF.
fn cdf(ranks: &[usize], active: &[u32]) -> Vec<f64> {
    let mut total = 0.0;
    let cumulative: Vec<f64> = active
        .iter()
        .map(|&m| {
            total += 1.0 / (ranks[m as usize] + 1) as f64;
            total
        })
        .collect();
    cumulative.into_iter().map(|c| c / total).collect()
}

pub fn run(args: AutoscaleArgs) -> Result<()> {
    let all = args.models * 2;
    let sizes = realistic_sizes(all, args.seed);
    let mut rng = Rng::new(args.seed);
    // Popularity rank of each model, and the order in which models become active: both
    // random, so the new customers span every popularity.
    let mut ranks: Vec<usize> = (0..all).collect();
    rng.shuffle(&mut ranks);
    let mut order: Vec<u32> = (0..all as u32).collect();
    rng.shuffle(&mut order);
    let names: Vec<String> = (0..all).map(|i| format!("gen-{i:05}")).collect();
    let scorer_names: Vec<String> = (0..args.scorers).map(|i| format!("scorer-{i}")).collect();
    let owner: Vec<usize> = names
        .iter()
        .map(|name| {
            let first = ranking::rank(name, scorer_names.iter().map(String::as_str))[0];
            scorer_names
                .iter()
                .position(|s| s == first)
                .expect("ranked")
        })
        .collect();

    // The budget: the first phase's true working set fills `start_fill` of the pool.
    let first: Vec<u32> = order[..args.models].to_vec();
    let mut truth: Vec<(f64, u64)> = first
        .iter()
        .map(|&m| (1.0 / (ranks[m as usize] + 1) as f64, sizes[m as usize]))
        .collect();
    let pool_budget = working_set_bytes(&mut truth, COVERAGE) as f64 / args.start_fill;
    let budget = (pool_budget / args.scorers as f64) as u64;

    let config = PolicyConfig::default();
    let mut caches: Vec<Managed> = (0..args.scorers)
        .map(|_| Managed::new(budget, config, Some(2.0)))
        .collect();
    let mut stats: PoolStats<u32> = PoolStats::new(config.half_life, 16_384, 0.0);
    println!(
        "{} scorers of {:.1} MiB each (the first phase's working set fills {:.0}% of the pool); \
         target {:.0}% of a scorer's budget; simulated, single-threaded.",
        args.scorers,
        budget as f64 / 1048576.0,
        args.start_fill * 100.0,
        args.target_fill * 100.0
    );
    println!();
    println!(
        "| requests | active models | req/s | hit ratio (repeat requests) | working set / pool budget | replicas wanted |"
    );
    println!("|---|---|---|---|---|---|");
    let phases = 5;
    let mut t = 0.0;
    let mut last_tick = 0.0;
    let (mut hits, mut seen) = (0usize, 0usize);
    let mut rows: Vec<(usize, f64, f64, usize)> = Vec::new();
    let mut served = 0usize;
    let mut touched = vec![false; all];
    for phase in 0..phases {
        let active_count = args.models + args.models * phase / 4;
        let active = &order[..active_count];
        let cdf = cdf(&ranks, active);
        let rate = args.rate * active_count as f64 / args.models as f64;
        for _ in 0..args.phase_requests {
            t += 1.0 / rate;
            let u = rng.unit();
            let model = active[cdf.partition_point(|&c| c < u).min(active.len() - 1)];
            let request = Request { t, model };
            stats.record(&model);
            if t - last_tick >= 1.0 {
                stats.tick(t);
                last_tick = t;
            }
            let scorer = owner[model as usize];
            let hit = caches[scorer].access(served, &request, sizes[model as usize]);
            // A model's first request misses at any pool size: only the others say
            // whether the pool is big enough.
            if std::mem::replace(&mut touched[model as usize], true) {
                hits += usize::from(hit);
                seen += 1;
            }
            served += 1;
            if served.is_multiple_of(args.window) {
                let mut shares: Vec<Vec<(f64, u64)>> = vec![Vec::new(); args.scorers];
                for (&m, rate) in stats.hot() {
                    shares[owner[m as usize]].push((rate, sizes[m as usize]));
                }
                let wanted: u64 = shares
                    .iter_mut()
                    .map(|share| working_set_bytes(share, COVERAGE))
                    .sum();
                let pressure = wanted as f64 / pool_budget;
                let replicas = (wanted as f64 / (args.target_fill * budget as f64)).ceil() as usize;
                let hit_ratio = hits as f64 / seen as f64;
                println!(
                    "| {served} | {active_count} | {rate:.0} | {hit_ratio:.3} | {pressure:.2} | {replicas} |"
                );
                rows.push((served, hit_ratio, pressure, replicas));
                hits = 0;
                seen = 0;
            }
        }
    }
    // When the signal crossed the target, and when the hit ratio fell two points under
    // its level in the first phase (after its first window, the cold start).
    let first_phase: Vec<f64> = rows
        .iter()
        .skip(1)
        .take_while(|r| r.0 <= args.phase_requests)
        .map(|r| r.1)
        .collect();
    let level = first_phase.iter().sum::<f64>() / first_phase.len().max(1) as f64;
    let crossed = rows.iter().find(|r| r.3 > args.scorers);
    let fell = rows.iter().skip(1).find(|r| r.1 < level - 0.02);
    println!();
    println!(
        "First-phase hit ratio {level:.3}. Replicas wanted first exceeded {} at request {}; \
         the hit ratio first fell 2 points under the first phase at request {}.",
        args.scorers,
        crossed.map_or("never".to_string(), |r| r.0.to_string()),
        fell.map_or("never".to_string(), |r| r.0.to_string()),
    );
    Ok(())
}
