//! `cargo xtask bench replay`: the realistic many-models workload, end to end, beside the
//! naive baseline in the same run.
//!
//! The store is real scikit-learn models (`models/make_realistic.py`: 60% linear, 30%
//! random forests of 50 KB-3 MB, 10% of 5-32 MB); the trace is Zipf 1.0 with drifting
//! popularity and scan bursts (`mixed`); `concurrency` closed-loop clients send it as fast
//! as answers come back. The same client and the same requests then go to each pool
//! (proxy + three scorers, one per engine setting) and to the baseline: one Python
//! process with ONNX Runtime and an LRU of K models by count (`models/baseline_server.py`).
//! Every process shares this machine's cores with the client.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use manymodels_policy::trace::{self as policy_trace, Shape, TraceSpec};
use serde_json::Value;

use manymodels_tests::ScorerProcess;
use manymodels_tests::http::request;
use manymodels_tests::process::status_bytes;

use super::{Job, Outcome, drive, percentile, totals};
use crate::setup;

mod seed;

#[derive(clap::Args, Clone, Debug)]
pub struct ReplayArgs {
    /// The realistic store (made with `models/make_realistic.py` if it is missing).
    #[arg(long, default_value = ".cache/realistic")]
    store: PathBuf,
    /// Models in the store, when it has to be made.
    #[arg(long, default_value_t = 2_000)]
    models: usize,
    /// Traffic shape (mixed = Zipf 1.0 with drift and scan bursts; zipf-<alpha>, drift,
    /// scan, daynight).
    #[arg(long, default_value = "mixed")]
    shape: String,
    /// Requests in the trace; each server gets at most these, and at most `seconds`.
    #[arg(long, default_value_t = 60_000)]
    requests: usize,
    /// Wall-clock limit per server.
    #[arg(long, default_value_t = 240)]
    seconds: u64,
    /// Closed-loop clients.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Each scorer's `cache.budget` (the pool has three).
    #[arg(long, default_value = "1536MiB")]
    budget: String,
    /// Engine settings to run a pool with, in order (`auto`, `off`).
    #[arg(long, value_delimiter = ',', default_values_t = ["auto".to_string(), "off".to_string()])]
    engines: Vec<String>,
    /// The baseline's LRU capacity in models (0 skips the baseline).
    #[arg(long, default_value_t = 200)]
    baseline_lru: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Publish each model of the store under this many ids (hard links, cached in
    /// `<store>-x<K>`): the seed's scale of 10,000s of models from the same real files.
    #[arg(long, default_value_t = 1)]
    scale: usize,
    /// Pools whose memory is the trace's native working set divided by each of these
    /// (e.g. `1,2,5,10`), native engine, images on, beside the baseline; replaces
    /// `--budget` and `--engines`.
    #[arg(long, value_delimiter = ',')]
    overcommit: Vec<f64>,
    /// Run each scorer of an `--overcommit` pool inside a memory cgroup with the chart's
    /// limit (192 MiB + budget × 1.1).
    #[arg(long)]
    cgroup: bool,
    /// With `--overcommit`: also run pools at these ratios without native images (every
    /// miss compiles its ONNX file, as before images), in the same run.
    #[arg(long, value_delimiter = ',')]
    without_images: Vec<f64>,
}

/// One model of the store's manifest.
pub(crate) struct Entry {
    pub id: String,
    pub body: String,
}

pub(crate) fn manifest(store: &Path) -> Result<Vec<Entry>> {
    let text = std::fs::read_to_string(store.join("manifest.json"))
        .with_context(|| format!("{}/manifest.json", store.display()))?;
    let value: Value = serde_json::from_str(&text)?;
    let entries = value["entries"].as_object().context("manifest entries")?;
    let mut out: Vec<Entry> = entries
        .iter()
        .map(|(id, e)| Entry {
            id: id.clone(),
            body: e["sample_request"].to_string(),
        })
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

pub(crate) fn ensure_store(store: &Path, models: usize) -> Result<()> {
    if store.join("manifest.json").exists() {
        return Ok(());
    }
    eprintln!(
        "xtask: writing {models} real scikit-learn models into {} (minutes)",
        store.display()
    );
    pip(&["-r", "models/requirements.txt"])?;
    let status = Command::new("python3")
        .arg("models/make_realistic.py")
        .arg("--store")
        .arg(store)
        .args(["--models", &models.to_string()])
        .status()?;
    if !status.success() {
        bail!("models/make_realistic.py failed");
    }
    Ok(())
}

fn pip(packages: &[&str]) -> Result<()> {
    let status = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet"])
        .args(packages)
        .status()?;
    if !status.success() {
        bail!("pip install {} failed", packages.join(" "));
    }
    Ok(())
}

/// Peak resident set of a process (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> u64 {
    status_bytes(&pid.to_string(), "VmHWM")
}

/// Sends the trace (indices into `entries`) with `concurrency` closed-loop clients until
/// it ends or `limit` passes.
fn send_trace(
    addr: &str,
    trace: &[u32],
    entries: &[Entry],
    concurrency: usize,
    limit: Duration,
) -> Result<Outcome> {
    drive(addr, concurrency, limit, |i| {
        let entry = &entries[*trace.get(i)? as usize];
        Some(Job {
            path: format!("/v2/models/{}/infer", entry.id),
            body: &entry.body,
            due: None,
        })
    })
}

pub(crate) struct Row {
    name: String,
    outcome: Outcome,
    hit_ratio: f64,
    loads: f64,
    extra: String,
    peak_rss: u64,
    /// Pools only: what the memory, warm-up and simulator checks found.
    notes: Vec<String>,
}

impl Row {
    fn throughput(&self) -> f64 {
        self.outcome.requests as f64 / self.outcome.elapsed.as_secs_f64()
    }
}

fn pool(args: &ReplayArgs, engine: &str, trace: &[u32], entries: &[Entry]) -> Result<Row> {
    let ports = [18_031u16, 18_032, 18_033];
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let sets = [
        format!("cache.budget={}", args.budget),
        format!("engine.native={engine}"),
    ];
    let set_refs: Vec<&str> = sets.iter().map(String::as_str).collect();
    let scorers: Vec<ScorerProcess> = ports
        .iter()
        .map(|&p| super::scorer(&args.store, p, &set_refs))
        .collect::<Result<_>>()?;
    let proxy = super::proxy(18_030, &addrs, &[])?;
    let idle: Vec<u64> = scorers.iter().map(|s| s.rss_bytes()).collect();
    let outcome = send_trace(
        proxy.addr(),
        trace,
        entries,
        args.concurrency,
        Duration::from_secs(args.seconds),
    )?;
    let [hits, misses, loads, warmups, wasted, native] = totals(
        &scorers,
        [
            "mm_scorer_cache_hits_total",
            "mm_scorer_cache_misses_total",
            "mm_scorer_model_loads_total",
            "mm_scorer_warmup_loads_total",
            "mm_scorer_warmup_wasted_total",
            "mm_scorer_engine_loads_total{engine=\"native\"}",
        ],
    );
    let (mut peak, mut cost) = (0u64, 0.0);
    let budget = manymodels_config::parse_bytes(&args.budget)
        .map_err(anyhow::Error::msg)?
        .bytes();
    let mut notes = Vec::new();
    for (scorer, idle) in scorers.iter().zip(&idle) {
        let scorer_peak = scorer.peak_rss_bytes();
        peak += scorer_peak;
        let bound = super::rss_bound(*idle, budget);
        notes.push(format!(
            "scorer {}: idle RSS {:.0} MB, peak RSS {:.0} MB, bound {:.0} MB: {}",
            scorer.addr(),
            *idle as f64 / 1e6,
            scorer_peak as f64 / 1e6,
            bound as f64 / 1e6,
            if scorer_peak <= bound {
                "within"
            } else {
                "OVER"
            }
        ));
        let (_, explain) = request("GET", &format!("{}/v2/mm/cache", scorer.url), "")?;
        let explain: Value = serde_json::from_str(&explain)?;
        for resident in explain["cache"]["resident"]
            .as_array()
            .into_iter()
            .flatten()
        {
            cost += resident["load_seconds"].as_f64().unwrap_or(0.0);
        }
    }
    peak += proxy.peak_rss_bytes();
    notes.push(format!(
        "warm-up loads {warmups:.0} of {loads:.0} ({:.1}%), evicted or refused before their first hit: {wasted:.0} ({:.1}% of warm-ups)",
        100.0 * warmups / loads.max(1.0),
        100.0 * wasted / warmups.max(1.0)
    ));
    let hit_ratio = hits / (hits + misses).max(1.0);
    let simulated = simulate(
        args,
        engine,
        trace,
        entries,
        &addrs,
        budget,
        outcome.requests,
    )?;
    notes.push(format!(
        "simulator, same trace prefix ({} requests), same budget, charged sizes estimated from the files: pool hit ratio {simulated:.3} against {hit_ratio:.3} live ({:+.1} points); load seconds of the residents (CPU + read) {cost:.1} s",
        outcome.requests,
        100.0 * (hit_ratio - simulated)
    ));
    Ok(Row {
        name: format!("manymodels, engine.native={engine} (proxy + 3 scorers)"),
        outcome,
        hit_ratio,
        loads,
        extra: format!("{warmups} warm-up, {native} native"),
        peak_rss: peak,
        notes,
    })
}

/// The pool hit ratio the simulator predicts for the first `served` requests of the
/// trace: the scorers' own policy per scorer (rendezvous over the same addresses), each
/// model charged what its engine holds (native: forests 0.34x their file, linear models
/// about 1.7 KB; ONNX Runtime: 5.4x the file plus 100 KB).
fn simulate(
    args: &ReplayArgs,
    engine: &str,
    trace: &[u32],
    entries: &[Entry],
    scorers: &[String],
    budget: u64,
    served: usize,
) -> Result<f64> {
    use manymodels_policy::sim::{self, Managed};
    let sizes: Vec<u64> = entries
        .iter()
        .map(|e| {
            let file = std::fs::metadata(args.store.join(&e.id).join("1/model.onnx"))
                .map(|m| m.len())
                .unwrap_or(0);
            if engine == "off" {
                file * 27 / 5 + 100_000
            } else if file < 20_000 {
                1_700
            } else {
                file * 34 / 100
            }
        })
        .collect();
    let names: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
    let requests: Vec<policy_trace::Request> = trace[..served.min(trace.len())]
        .iter()
        .enumerate()
        .map(|(i, &model)| policy_trace::Request {
            t: i as f64 / TRACE_RATE,
            model,
        })
        .collect();
    let outcome = sim::run_pool(&requests, &sizes, &names, scorers, || {
        Box::new(Managed::new(
            budget,
            manymodels_policy::PolicyConfig::default(),
            Some(2.0),
        ))
    });
    Ok(outcome.hit_ratio())
}

/// The naive server, killed on drop.
/// The naive baseline server, killed when dropped.
pub(crate) struct Baseline(Child);

impl Drop for Baseline {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the naive baseline (`models/baseline_server.py`: one Python process, ONNX Runtime,
/// an LRU of `lru` models by count) on `port` over `store`, and waits until it is ready.
pub(crate) fn start_baseline(store: &Path, lru: usize, port: u16) -> Result<Baseline> {
    let present = Command::new("python3")
        .args(["-c", "import fastapi, uvicorn, onnxruntime"])
        .stderr(Stdio::null())
        .status()?
        .success();
    if !present {
        pip(&["fastapi==0.165.0", "uvicorn==0.54.0", "onnxruntime==1.31.1"])?;
    }
    let child = Command::new("python3")
        .arg("models/baseline_server.py")
        .arg("--store")
        .arg(store)
        .args(["--port", &port.to_string(), "--lru", &lru.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let server = Baseline(child);
    let url = format!("http://127.0.0.1:{port}");
    setup::wait_ready(&format!("{url}/v2/health/ready"), Duration::from_secs(60))?;
    Ok(server)
}

fn baseline(args: &ReplayArgs, trace: &[u32], entries: &[Entry]) -> Result<Row> {
    let port = 18_039u16;
    let server = start_baseline(&args.store, args.baseline_lru, port)?;
    let url = format!("http://127.0.0.1:{port}");
    let outcome = send_trace(
        &format!("127.0.0.1:{port}"),
        trace,
        entries,
        args.concurrency,
        Duration::from_secs(args.seconds),
    )?;
    let (_, stats) = request("GET", &format!("{url}/v2/baseline/stats"), "")?;
    let stats: Value = serde_json::from_str(&stats).context("baseline stats")?;
    let (loads, hits) = (
        stats["loads"].as_f64().unwrap_or(0.0),
        stats["hits"].as_f64().unwrap_or(0.0),
    );
    let peak = peak_rss(server.0.id());
    Ok(Row {
        name: format!(
            "naive: one Python process, onnxruntime, LRU of {} models",
            args.baseline_lru
        ),
        outcome,
        hit_ratio: hits / (hits + loads).max(1.0),
        loads,
        extra: String::new(),
        peak_rss: peak,
        notes: Vec::new(),
    })
}

/// The pace the trace is generated at: it only places the drift and the scans (a scan
/// burst every 40 s of trace time, so every 8,000 requests); clients do not wait for it.
const TRACE_RATE: f64 = 200.0;

pub fn run(mut args: ReplayArgs) -> Result<()> {
    ensure_store(&args.store, args.models)?;
    if args.scale > 1 {
        args.store = seed::scaled_store(&args.store, args.scale)?;
    }
    let entries = manifest(&args.store)?;
    let shape: Shape = args.shape.parse().map_err(anyhow::Error::msg)?;
    let trace: Vec<u32> = policy_trace::generate(&TraceSpec {
        shape,
        models: entries.len(),
        requests: args.requests,
        rate: TRACE_RATE,
        seed: args.seed,
    })
    .into_iter()
    .map(|r| r.model)
    .collect();
    let store_bytes: u64 = walk_bytes(&args.store)?;
    println!(
        "store: {} ({} models, {:.2} GB of ONNX); trace: {shape}, {} requests, seed {}; {} closed-loop clients; at most {} s per server; {}",
        args.store.display(),
        entries.len(),
        store_bytes as f64 / 1e9,
        args.requests,
        args.seed,
        args.concurrency,
        args.seconds,
        if args.overcommit.is_empty() {
            format!("scorer budget {} each", args.budget)
        } else {
            "scorer budgets from the working set (below)".to_string()
        }
    );
    println!("Every process (servers, client) shares this machine's 2 cores.\n");
    let mut rows = Vec::new();
    if args.overcommit.is_empty() {
        for engine in &args.engines {
            rows.push(pool(&args, engine, &trace, &entries)?);
        }
    } else {
        rows = seed::run(&args, &args.store, &trace, &entries)?;
    }
    if args.baseline_lru > 0 {
        rows.push(baseline(&args, &trace, &entries)?);
    }
    println!(
        "\n| server | requests | req/s | p50 | p99 | p99.9 | hit ratio | loads | failed | peak RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for row in &rows {
        let o = &row.outcome;
        println!(
            "| {} | {} | {:.0} | {:.1} ms | {:.1} ms | {:.1} ms | {:.3} | {:.0}{} | {} | {:.2} GB |",
            row.name,
            o.requests,
            row.throughput(),
            percentile(&o.latencies, 0.5) / 1e3,
            percentile(&o.latencies, 0.99) / 1e3,
            percentile(&o.latencies, 0.999) / 1e3,
            row.hit_ratio,
            row.loads,
            if row.extra.is_empty() {
                String::new()
            } else {
                format!(" ({})", row.extra)
            },
            o.failed,
            row.peak_rss as f64 / 1e9,
        );
    }
    for row in &rows {
        for note in &row.notes {
            println!("- {}: {note}", row.name);
        }
    }
    if let (Some(first), Some(base)) = (rows.first(), rows.last())
        && rows.len() > 1
        && args.baseline_lru > 0
    {
        println!(
            "\n{} vs the naive baseline: {:.1}x the throughput, {:.2}x the p99, {:.2}x the peak RSS",
            first.name,
            first.throughput() / base.throughput(),
            percentile(&first.outcome.latencies, 0.99) / percentile(&base.outcome.latencies, 0.99),
            first.peak_rss as f64 / base.peak_rss as f64
        );
    }
    Ok(())
}

fn walk_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_dir() {
            total += walk_bytes(&entry.path())?;
        } else if entry.path().extension().is_some_and(|e| e == "onnx") {
            total += meta.len();
        }
    }
    Ok(total)
}
