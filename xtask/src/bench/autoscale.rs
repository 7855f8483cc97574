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
    let mut rng = Rng::new(args.seed);
    let world = World::new(&args, &mut rng);
    let pool_budget = pool_budget(&args, &world);
    let budget = (pool_budget / args.scorers as f64) as u64;
    print_header(&args, budget);
    let mut sim = Sim::new(&args, &world, pool_budget, budget);
    let phases = 5;
    for phase in 0..phases {
        sim.phase(phase, &mut rng);
    }
    print_summary(&args, &sim.rows);
    Ok(())
}

/// The simulated models: `2 × --models` of them, with their sizes, popularity ranks,
/// activation order and owning scorer.
struct World {
    sizes: Vec<u64>,
    /// Popularity rank of each model.
    ranks: Vec<usize>,
    /// The order in which models become active.
    order: Vec<u32>,
    /// Each model's rendezvous owner among the scorers.
    owner: Vec<usize>,
}

impl World {
    /// Realistic sizes; ranks and activation order both random, so the new customers span
    /// every popularity (drawn from `rng`); each model at its rendezvous owner.
    fn new(args: &AutoscaleArgs, rng: &mut Rng) -> Self {
        let all = args.models * 2;
        let sizes = realistic_sizes(all, args.seed);
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
        World {
            sizes,
            ranks,
            order,
            owner,
        }
    }
}

/// The pool budget: the first phase's true working set fills `--start-fill` of it.
fn pool_budget(args: &AutoscaleArgs, world: &World) -> f64 {
    let first: Vec<u32> = world.order[..args.models].to_vec();
    let mut truth: Vec<(f64, u64)> = first
        .iter()
        .map(|&m| {
            (
                1.0 / (world.ranks[m as usize] + 1) as f64,
                world.sizes[m as usize],
            )
        })
        .collect();
    working_set_bytes(&mut truth, COVERAGE) as f64 / args.start_fill
}

/// Prints the pool's description and the table's header.
fn print_header(args: &AutoscaleArgs, budget: u64) {
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
}

/// What the summary reads of one printed window.
struct Window {
    /// Requests served at its end.
    served: usize,
    hit_ratio: f64,
    replicas: usize,
}

/// The simulated pool as the replay runs: clock, caches, pool statistics and the current
/// window's counts.
struct Sim<'a> {
    args: &'a AutoscaleArgs,
    world: &'a World,
    pool_budget: f64,
    budget: u64,
    caches: Vec<Managed>,
    stats: PoolStats<u32>,
    t: f64,
    last_tick: f64,
    hits: usize,
    seen: usize,
    served: usize,
    touched: Vec<bool>,
    rows: Vec<Window>,
}

impl<'a> Sim<'a> {
    /// An empty pool of `--scorers` scorers of `budget` each, with the scorer's policy.
    fn new(args: &'a AutoscaleArgs, world: &'a World, pool_budget: f64, budget: u64) -> Self {
        let config = PolicyConfig::default();
        let caches: Vec<Managed> = (0..args.scorers)
            .map(|_| Managed::new(budget, config, Some(2.0)))
            .collect();
        let stats: PoolStats<u32> = PoolStats::new(config.half_life, 16_384, 0.0);
        Sim {
            args,
            world,
            pool_budget,
            budget,
            caches,
            stats,
            t: 0.0,
            last_tick: 0.0,
            hits: 0,
            seen: 0,
            served: 0,
            touched: vec![false; world.sizes.len()],
            rows: Vec::new(),
        }
    }

    /// Phase `phase`: a quarter more models per phase active, the rate in proportion,
    /// `--phase-requests` requests drawn from them, a row at every window's end.
    fn phase(&mut self, phase: usize, rng: &mut Rng) {
        let args = self.args;
        let world = self.world;
        let active_count = args.models + args.models * phase / 4;
        let active = &world.order[..active_count];
        let cdf = cdf(&world.ranks, active);
        let rate = args.rate * active_count as f64 / args.models as f64;
        for _ in 0..args.phase_requests {
            self.t += 1.0 / rate;
            let u = rng.unit();
            let model = active[cdf.partition_point(|&c| c < u).min(active.len() - 1)];
            self.serve(model);
            if self.served.is_multiple_of(args.window) {
                self.end_window(active_count, rate);
            }
        }
    }

    /// Serves one request for `model` at the current time at its owner, counting it
    /// toward the window's hit ratio if it is a repeat.
    fn serve(&mut self, model: u32) {
        let request = Request { t: self.t, model };
        self.stats.record(&model);
        if self.t - self.last_tick >= 1.0 {
            self.stats.tick(self.t);
            self.last_tick = self.t;
        }
        let scorer = self.world.owner[model as usize];
        let hit =
            self.caches[scorer].access(self.served, &request, self.world.sizes[model as usize]);
        // A model's first request misses at any pool size: only the others say
        // whether the pool is big enough.
        if std::mem::replace(&mut self.touched[model as usize], true) {
            self.hits += usize::from(hit);
            self.seen += 1;
        }
        self.served += 1;
    }

    /// Ends a window: the signal from the pool statistics (each scorer's working set,
    /// summed, over the pool budget) and the replicas wanted; prints and keeps the row.
    fn end_window(&mut self, active_count: usize, rate: f64) {
        let (args, world) = (self.args, self.world);
        let mut shares: Vec<Vec<(f64, u64)>> = vec![Vec::new(); args.scorers];
        for (&m, rate) in self.stats.hot() {
            shares[world.owner[m as usize]].push((rate, world.sizes[m as usize]));
        }
        let wanted: u64 = shares
            .iter_mut()
            .map(|share| working_set_bytes(share, COVERAGE))
            .sum();
        let pressure = wanted as f64 / self.pool_budget;
        let replicas = (wanted as f64 / (args.target_fill * self.budget as f64)).ceil() as usize;
        let hit_ratio = self.hits as f64 / self.seen as f64;
        let served = self.served;
        println!(
            "| {served} | {active_count} | {rate:.0} | {hit_ratio:.3} | {pressure:.2} | {replicas} |"
        );
        self.rows.push(Window {
            served,
            hit_ratio,
            replicas,
        });
        self.hits = 0;
        self.seen = 0;
    }
}

/// Prints when the signal crossed the target, and when the hit ratio fell two points under
/// its level in the first phase (after its first window, the cold start).
fn print_summary(args: &AutoscaleArgs, rows: &[Window]) {
    let first_phase: Vec<f64> = rows
        .iter()
        .skip(1)
        .take_while(|r| r.served <= args.phase_requests)
        .map(|r| r.hit_ratio)
        .collect();
    let level = first_phase.iter().sum::<f64>() / first_phase.len().max(1) as f64;
    let crossed = rows.iter().find(|r| r.replicas > args.scorers);
    let fell = rows.iter().skip(1).find(|r| r.hit_ratio < level - 0.02);
    println!();
    println!(
        "First-phase hit ratio {level:.3}. Replicas wanted first exceeded {} at request {}; \
         the hit ratio first fell 2 points under the first phase at request {}.",
        args.scorers,
        crossed.map_or("never".to_string(), |r| r.served.to_string()),
        fell.map_or("never".to_string(), |r| r.served.to_string()),
    );
}
