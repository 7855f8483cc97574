//! `cargo xtask bench policy`: the offline cache simulator.
//!
//! Replays generated traces (or a trace file) against the scorer's policy, LRU, moka's
//! own W-TinyLFU (the policy the scorer's cache would use by default) and Belady, and
//! prints request and byte miss ratios, each relative to LRU.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use manymodels_policy::PolicyConfig;
use manymodels_policy::sim::{self, Belady, Cache, Lru, Managed, Outcome};
use manymodels_policy::trace::{self, Request, Shape, TraceSpec};

#[derive(Args, Clone, Debug)]
pub struct SimArgs {
    /// Catalog sizes to generate traces for.
    #[arg(long, value_delimiter = ',', default_values_t = [2_000usize, 10_000])]
    models: Vec<usize>,
    /// Shapes (zipf-<alpha>, drift, scan, daynight); default all six.
    #[arg(long, value_delimiter = ',')]
    shapes: Vec<String>,
    #[arg(long, default_value_t = 400_000)]
    requests: usize,
    /// Requests per second of the generated traces.
    #[arg(long, default_value_t = 1_000.0)]
    rate: f64,
    /// The cache's budget as a fraction of all models' bytes.
    #[arg(long, default_value_t = 0.1)]
    budget: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Replay this trace file instead of generating (`<seconds> <model id>` lines).
    #[arg(long, requires = "sizes")]
    trace: Option<PathBuf>,
    /// Model sizes for `--trace` (`<model id> <bytes>` lines).
    #[arg(long)]
    sizes: Option<PathBuf>,
    /// Write each generated trace and its sizes into this directory.
    #[arg(long)]
    write: Option<PathBuf>,
    /// Half-life of the policy's counts, in requests (default: the scorer's).
    #[arg(long)]
    half_life: Option<f64>,
    /// Weight of load cost per byte in the policy (default: the scorer's).
    #[arg(long)]
    size_weight: Option<f64>,
    /// Try a grid of half-lives and size weights and print the geometric means.
    #[arg(long)]
    sweep: bool,
    /// Also run the static hindsight allocations (an offline reference).
    #[arg(long)]
    oracle: bool,
    /// Leave out moka's W-TinyLFU (the slowest to simulate).
    #[arg(long)]
    no_moka: bool,
    /// Model sizes of generated traces: `lognormal` (KB to tens of MB) or `realistic`
    /// (the realistic store's mix as the native engine holds it, heavy forests included).
    #[arg(long, default_value = "lognormal")]
    size_mix: String,
    /// Instead of the table: replay the same shapes at each of these request rates
    /// (req/s) with realistic sizes, the traffic-clock policy beside the same policy
    /// decaying by wall-clock time and LRU, and print load seconds and misses.
    #[arg(long, value_delimiter = ',')]
    rates: Vec<f64>,
    /// Only the tenant scenario (noisy neighbours), which the table is followed by.
    #[arg(long)]
    tenants_only: bool,
}

struct Trace {
    label: String,
    requests: Vec<Request>,
    sizes: Vec<u64>,
}

fn traces(args: &SimArgs) -> Result<Vec<Trace>> {
    if let (Some(path), Some(sizes)) = (&args.trace, &args.sizes) {
        let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
        let parsed = trace::parse(&text).map_err(anyhow::Error::msg)?;
        let size_text = std::fs::read_to_string(sizes)?;
        let mut by_name = std::collections::HashMap::new();
        for line in size_text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        {
            let mut f = line.split_whitespace();
            let (Some(id), Some(bytes)) = (f.next(), f.next()) else {
                bail!("bad sizes line `{line}`");
            };
            by_name.insert(id.to_string(), bytes.parse::<u64>()?);
        }
        let sizes = parsed
            .names
            .iter()
            .map(|n| {
                by_name
                    .get(n)
                    .copied()
                    .with_context(|| format!("no size for {n}"))
            })
            .collect::<Result<Vec<u64>>>()?;
        return Ok(vec![Trace {
            label: path.display().to_string(),
            requests: parsed.requests,
            sizes,
        }]);
    }
    let shapes: Vec<Shape> = if args.shapes.is_empty() {
        Shape::ALL.to_vec()
    } else {
        args.shapes
            .iter()
            .map(|s| s.parse().map_err(anyhow::Error::msg))
            .collect::<Result<_>>()?
    };
    let mut out = Vec::new();
    for &models in &args.models {
        for &shape in &shapes {
            let spec = TraceSpec {
                shape,
                models,
                requests: args.requests,
                rate: args.rate,
                seed: args.seed,
            };
            let requests = trace::generate(&spec);
            let sizes = match args.size_mix.as_str() {
                "lognormal" => trace::lognormal_sizes(models, args.seed),
                "realistic" => trace::realistic_sizes(models, args.seed),
                other => bail!("unknown --size-mix {other} (lognormal, realistic)"),
            };
            if let Some(dir) = &args.write {
                std::fs::create_dir_all(dir)?;
                let name = |m: u32| format!("m{m:05}");
                let mut file = std::io::BufWriter::new(std::fs::File::create(
                    dir.join(format!("{shape}-{models}.trace")),
                )?);
                trace::write(&mut file, &requests, name)?;
                let sizes_text: String = sizes
                    .iter()
                    .enumerate()
                    .map(|(m, b)| format!("{} {b}\n", name(m as u32)))
                    .collect();
                std::fs::write(dir.join(format!("{shape}-{models}.sizes")), sizes_text)?;
            }
            out.push(Trace {
                label: format!("{shape} / {models}"),
                requests,
                sizes,
            });
        }
    }
    Ok(out)
}

/// moka's W-TinyLFU, driven the way the scorer used it: `get`, and on a miss `insert`
/// followed by `run_pending_tasks` so the budget is applied at once.
struct Moka {
    cache: moka::sync::Cache<u32, u64>,
}

impl Moka {
    fn new(capacity: u64) -> Self {
        Moka {
            cache: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .weigher(|_: &u32, bytes: &u64| u32::try_from(*bytes).unwrap_or(u32::MAX))
                .build(),
        }
    }
}

impl Cache for Moka {
    fn name(&self) -> String {
        "moka w-tinylfu".into()
    }

    fn access(&mut self, _: usize, r: &Request, bytes: u64) -> bool {
        if self.cache.get(&r.model).is_some() {
            return true;
        }
        self.cache.insert(r.model, bytes);
        self.cache.run_pending_tasks();
        false
    }
}

fn policy_config(args: &SimArgs) -> PolicyConfig {
    let mut config = PolicyConfig::default();
    if let Some(h) = args.half_life {
        config.half_life = h;
    }
    if let Some(w) = args.size_weight {
        config.size_weight = w;
    }
    config
}

pub fn run(args: SimArgs) -> Result<()> {
    if !args.rates.is_empty() {
        return rates(&args);
    }
    if args.tenants_only {
        neighbours(policy_config(&args));
        return Ok(());
    }
    let traces = traces(&args)?;
    if args.sweep {
        return sweep(&args, &traces);
    }
    let config = policy_config(&args);
    println!(
        "policy: half-life {} requests, size weight {}, load cost {} s + {} s/byte; pool statistics pushed every 2 s; sizes {}",
        config.half_life,
        config.size_weight,
        config.cost.fixed,
        config.cost.per_byte,
        args.size_mix
    );
    println!(
        "| trace | policy | request miss | byte miss | load s | request miss / LRU | byte miss / LRU | load s / LRU |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    let mut ratios: Vec<(String, Vec<Ratios>)> = Vec::new();
    for t in &traces {
        let budget = (t.sizes.iter().sum::<u64>() as f64 * args.budget) as u64;
        let mut caches: Vec<Box<dyn Cache>> = vec![
            Box::new(Lru::new(budget)),
            Box::new(Managed::new(budget, config, Some(2.0))),
        ];
        if !args.no_moka {
            caches.push(Box::new(Moka::new(budget)));
        }
        caches.push(Box::new(Belady::new(budget, &t.requests)));
        if args.oracle {
            for w in [0.0, 0.5, 1.0] {
                caches.push(Box::new(sim::Static::new(budget, &t.requests, &t.sizes, w)));
            }
        }
        let outcomes: Vec<Outcome> = caches
            .iter_mut()
            .map(|c| sim::run(c.as_mut(), &t.requests, &t.sizes))
            .collect();
        let lru = outcomes[0].clone();
        for o in &outcomes {
            let r = (
                o.request_miss_ratio() / lru.request_miss_ratio(),
                o.byte_miss_ratio() / lru.byte_miss_ratio(),
                o.load_seconds / lru.load_seconds,
            );
            println!(
                "| {} | {} | {:.4} | {:.4} | {:.1} | {:.3} | {:.3} | {:.3} |",
                t.label,
                o.name,
                o.request_miss_ratio(),
                o.byte_miss_ratio(),
                o.load_seconds,
                r.0,
                r.1,
                r.2
            );
            match ratios.iter_mut().find(|(n, _)| *n == o.name) {
                Some((_, v)) => v.push(r),
                None => ratios.push((o.name.clone(), vec![r])),
            }
        }
    }
    println!(
        "\ngeometric mean over {} traces, relative to LRU:",
        traces.len()
    );
    for (name, v) in &ratios {
        let pairs: Vec<(f64, f64)> = v.iter().map(|r| (r.0, r.1)).collect();
        let (req, bytes) = geomean(&pairs);
        let load = (v.iter().map(|r| r.2.ln()).sum::<f64>() / v.len() as f64).exp();
        let worst_req = v.iter().map(|r| r.0).fold(0.0, f64::max);
        let worst_bytes = v.iter().map(|r| r.1).fold(0.0, f64::max);
        let worst_load = v.iter().map(|r| r.2).fold(0.0, f64::max);
        println!(
            "  {name:<45} request miss {req:.3} (worst {worst_req:.3})  byte miss {bytes:.3} (worst {worst_bytes:.3})  load s {load:.3} (worst {worst_load:.3})"
        );
    }
    neighbours(config);
    Ok(())
}

/// Noisy neighbours: tenant B's steady Zipf traffic over 500 models of 10 KB beside
/// tenant A scanning 5,000 cold models (four of A's requests per one of B's), in a budget
/// that holds B's set and a fifth more; B alone, then beside A with no shares, with B's
/// floor, and with B's floor and A's cap. Prints each tenant's hit ratio.
fn neighbours(config: PolicyConfig) {
    use manymodels_policy::sim::Neighbours;
    let spec = Neighbours {
        b_models: 500,
        a_models: 5_000,
        b_requests: 100_000,
        a_per_b: 0,
        rate: 1_000.0,
        seed: 11,
    };
    let size = |_| 10_000;
    let budget = 6_000_000;
    let alone = spec.trace();
    let noisy = Neighbours { a_per_b: 4, ..spec }.trace();
    println!(
        "\ntenants: B Zipf(1.0) over 500 models of 10 KB ({} requests), A scanning 5,000 cold models (4 requests per B request), budget {budget} bytes (B's set is 5,000,000)",
        spec.b_requests
    );
    println!("| scenario | cache | B hit ratio | A hit ratio | B / managed B alone |");
    println!("|---|---|---:|---:|---:|");
    let cases: Vec<(&str, &[Request], Box<dyn Cache>)> = vec![
        (
            "B alone",
            &alone,
            Box::new(Managed::new(budget, config, None)),
        ),
        ("B alone", &alone, Box::new(Lru::new(budget))),
        (
            "B + A scan, no shares",
            &noisy,
            Box::new(Managed::new(budget, config, None)),
        ),
        ("B + A scan, no shares", &noisy, Box::new(Lru::new(budget))),
        (
            "B + A scan, B floor 0.8",
            &noisy,
            Box::new(Managed::with_tenants(
                budget,
                config,
                None,
                Neighbours::shares(0.8, 1.0),
            )),
        ),
        (
            "B + A scan, B floor 0.8, A cap 0.2",
            &noisy,
            Box::new(Managed::with_tenants(
                budget,
                config,
                None,
                Neighbours::shares(0.8, 0.2),
            )),
        ),
        (
            "B + A scan, shares of floor 0 cap 1",
            &noisy,
            Box::new(Managed::with_tenants(
                budget,
                config,
                None,
                Neighbours::shares(0.0, 1.0),
            )),
        ),
    ];
    let mut b_alone = None;
    for (label, trace, mut cache) in cases {
        let out = sim::run_by_tenant(cache.as_mut(), trace, size, Neighbours::tenant, 3);
        let b = out[0].hit_ratio();
        let base = *b_alone.get_or_insert(b);
        let a = if out[1].requests == 0 {
            "-".to_string()
        } else {
            format!("{:.4}", out[1].hit_ratio())
        };
        println!(
            "| {label} | {} | {b:.4} | {a} | {:.3} |",
            out[0].name,
            b / base
        );
    }
}

/// The rate sweep: the same shapes at each rate, realistic sizes, three caches.
fn rates(args: &SimArgs) -> Result<()> {
    let shapes: Vec<Shape> = if args.shapes.is_empty() {
        vec![Shape::Mixed, Shape::Zipf(1.0), Shape::Drift, Shape::Scan]
    } else {
        args.shapes
            .iter()
            .map(|s| s.parse().map_err(anyhow::Error::msg))
            .collect::<Result<_>>()?
    };
    let models = args.models.first().copied().unwrap_or(2_000);
    let sizes = trace::realistic_sizes(models, args.seed);
    let budget = (sizes.iter().sum::<u64>() as f64 * args.budget) as u64;
    let config = policy_config(args);
    let wall = PolicyConfig {
        half_life: 10.0,
        ..config
    };
    println!(
        "{models} models, realistic sizes ({:.2} GB charged), budget {:.0}% ({:.0} MB), {} requests per trace; traffic clock: half-life {} requests; wall clock: half-life 10 s (the policy before); load s by the live cost model ({} s + {} s/byte)",
        sizes.iter().sum::<u64>() as f64 / 1e9,
        args.budget * 100.0,
        budget as f64 / 1e6,
        args.requests,
        config.half_life,
        config.cost.fixed,
        config.cost.per_byte
    );
    println!(
        "| shape | req/s | LRU load s | traffic clock: load s / LRU | request miss / LRU | byte miss / LRU | wall clock: load s / LRU | request miss / LRU | byte miss / LRU | hindsight best fixed set: load s / LRU |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut ours: Vec<(f64, f64, f64)> = Vec::new();
    for &shape in &shapes {
        for &rate in &args.rates {
            let spec = TraceSpec {
                shape,
                models,
                requests: args.requests,
                rate,
                seed: args.seed,
            };
            let requests = trace::generate(&spec);
            let lru = sim::run(&mut Lru::new(budget), &requests, &sizes);
            let traffic = sim::run(
                &mut Managed::new(budget, config, Some(2.0)),
                &requests,
                &sizes,
            );
            let old = sim::run(&mut Managed::wall_clock(budget, wall), &requests, &sizes);
            let oracle = sim::run(
                &mut sim::Static::by_cost(budget, &requests, &sizes, config.cost),
                &requests,
                &sizes,
            );
            let ratio = |o: &Outcome| {
                (
                    o.load_seconds / lru.load_seconds,
                    o.request_miss_ratio() / lru.request_miss_ratio(),
                    o.byte_miss_ratio() / lru.byte_miss_ratio(),
                )
            };
            let (t, w) = (ratio(&traffic), ratio(&old));
            ours.push(t);
            println!(
                "| {shape} | {rate} | {:.1} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |",
                lru.load_seconds,
                t.0,
                t.1,
                t.2,
                w.0,
                w.1,
                w.2,
                oracle.load_seconds / lru.load_seconds
            );
        }
    }
    let n = ours.len() as f64;
    let g =
        |f: fn(&(f64, f64, f64)) -> f64| (ours.iter().map(|r| f(r).ln()).sum::<f64>() / n).exp();
    println!(
        "\ntraffic clock, geometric mean over {} runs, relative to LRU: load seconds {:.3}, request misses {:.3}, byte misses {:.3}",
        ours.len(),
        g(|r| r.0),
        g(|r| r.1),
        g(|r| r.2)
    );
    Ok(())
}

/// Request misses, byte misses and load seconds, each relative to LRU.
type Ratios = (f64, f64, f64);

fn geomean(v: &[(f64, f64)]) -> (f64, f64) {
    let n = v.len() as f64;
    (
        (v.iter().map(|r| r.0.ln()).sum::<f64>() / n).exp(),
        (v.iter().map(|r| r.1.ln()).sum::<f64>() / n).exp(),
    )
}

fn sweep(args: &SimArgs, traces: &[Trace]) -> Result<()> {
    let lru: Vec<Outcome> = traces
        .iter()
        .map(|t| {
            let budget = (t.sizes.iter().sum::<u64>() as f64 * args.budget) as u64;
            sim::run(&mut Lru::new(budget), &t.requests, &t.sizes)
        })
        .collect();
    println!(
        "| half-life (requests) | size weight | request miss / LRU (geo, worst) | byte miss / LRU (geo, worst) | load s / LRU (geo) |"
    );
    println!("|---:|---:|---|---|---:|");
    for half_life in [2_000.0, 5_000.0, 10_000.0, 30_000.0] {
        for size_weight in [0.0, 0.25, 0.5, 0.75, 1.0] {
            let config = PolicyConfig {
                half_life,
                size_weight,
                ..PolicyConfig::default()
            };
            let v: Vec<Ratios> = traces
                .iter()
                .zip(&lru)
                .map(|(t, l)| {
                    let budget = (t.sizes.iter().sum::<u64>() as f64 * args.budget) as u64;
                    let o = sim::run(
                        &mut Managed::new(budget, config, Some(2.0)),
                        &t.requests,
                        &t.sizes,
                    );
                    (
                        o.request_miss_ratio() / l.request_miss_ratio(),
                        o.byte_miss_ratio() / l.byte_miss_ratio(),
                        o.load_seconds / l.load_seconds,
                    )
                })
                .collect();
            let pairs: Vec<(f64, f64)> = v.iter().map(|r| (r.0, r.1)).collect();
            let (req, bytes) = geomean(&pairs);
            let load = (v.iter().map(|r| r.2.ln()).sum::<f64>() / v.len() as f64).exp();
            let worst_req = v.iter().map(|r| r.0).fold(0.0, f64::max);
            let worst_bytes = v.iter().map(|r| r.1).fold(0.0, f64::max);
            println!(
                "| {half_life} | {size_weight} | {req:.3}, {worst_req:.3} | {bytes:.3}, {worst_bytes:.3} | {load:.3} |"
            );
        }
    }
    Ok(())
}
