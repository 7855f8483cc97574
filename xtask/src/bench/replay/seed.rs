//! `cargo xtask bench replay --overcommit 1,2,5,10 [--scale 10] [--cgroup]`: the seed's
//! world, where memory holds only the hot fraction of the models.
//!
//! - **The store.** `--scale K` publishes each of the realistic store's real models under K
//!   ids (`<id>-<k>`, hard links: the same real exported ONNX files, the same mix of linear
//!   models, mid and heavy forests, K times the ids), cached in `.cache/realistic-x<K>`.
//!   For the pool every id is its own model: its own cache entry, load and image.
//! - **The working set** is the native size of every model the trace requests (forests
//!   about 0.34x their file, linear models about 1.7 KB, the simulator's sizes). Each
//!   `--overcommit` ratio R gives a pool whose memory (3 × `cache.budget`) is the working
//!   set / R: 1 is the all-fits run the others are compared with.
//! - **Images.** Every pool runs with native images on, one directory per scorer as each
//!   pod has its own `emptyDir`, shared by the runs (the same addresses rank models alike,
//!   so a model's owner is the same scorer in every run). Before the first run every model
//!   of the trace is requested once, which compiles it on its owner and writes its image:
//!   the measured runs start as a pool that has been serving for a while (images survive
//!   restarts in an `emptyDir`). That warm-up is timed and reported on its own.
//! - **Memory.** Each scorer's peak RSS against the documented bound, and with `--cgroup`
//!   each scorer runs inside a memory cgroup with the chart's limit (192 MiB + budget ×
//!   1.1): its peak usage (page cache included), its anonymous memory and its OOM kills.
//!   Residents as a share of the budget are sampled during the run; the figure is the
//!   median of the second half of the run (steady state), averaged over the scorers.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use manymodels_tests::ScorerProcess;
use manymodels_tests::cgroup::MemoryCgroup;
use serde_json::{Value, json};

use super::super::{Outcome, percentile, rss_bound, totals};
use super::{Entry, ReplayArgs, send_trace};
use crate::setup;

const MIB: u64 = 1 << 20;
/// The chart's `scorer.fixedMemoryMiB`: the memory limit is this plus budget × 1.1.
const FIXED_MEMORY: u64 = 192 * MIB;
const PROXY_PORT: u16 = 18_030;
const SCORER_PORTS: [u16; 3] = [18_031, 18_032, 18_033];

/// The realistic store with each model published under `scale` ids, made once.
pub(super) fn scaled_store(store: &Path, scale: usize) -> Result<PathBuf> {
    let out = store.with_file_name(format!(
        "{}-x{scale}",
        store.file_name().context("a store name")?.to_string_lossy()
    ));
    if out.join("manifest.json").exists() {
        return Ok(out);
    }
    let started = Instant::now();
    let text = std::fs::read_to_string(store.join("manifest.json"))?;
    let manifest: Value = serde_json::from_str(&text)?;
    let entries = manifest["entries"]
        .as_object()
        .context("manifest entries")?;
    let mut scaled = serde_json::Map::new();
    for (id, entry) in entries {
        for k in 0..scale {
            let new_id = format!("{id}-{k}");
            let dir = out.join(&new_id).join("1");
            std::fs::create_dir_all(&dir)?;
            let target = dir.join("model.onnx");
            if !target.exists() {
                std::fs::hard_link(store.join(id).join("1/model.onnx"), &target)?;
            }
            scaled.insert(new_id, entry.clone());
        }
    }
    std::fs::write(
        out.join("manifest.json"),
        serde_json::to_vec(&json!({ "entries": scaled }))?,
    )?;
    eprintln!(
        "xtask: {} ids published in {} in {:.1} s",
        scaled.len(),
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(out)
}

/// What the cache charges a model natively, estimated from its file (the simulator's
/// sizes: forests about 0.34x the file, linear models about 1.7 KB).
fn native_size(store: &Path, id: &str) -> u64 {
    let file = std::fs::metadata(store.join(id).join("1/model.onnx"))
        .map(|m| m.len())
        .unwrap_or(0);
    if file < 20_000 {
        1_700
    } else {
        file * 34 / 100
    }
}

/// One pool run's figures.
struct Run {
    label: String,
    budget: u64,
    outcome: Outcome,
    hits: f64,
    misses: f64,
    loads: f64,
    image_loads: f64,
    load_seconds: f64,
    /// Steady-state residents / budget, mean over scorers.
    fill: f64,
    /// Sum of the scorers' and the proxy's peak RSS.
    peak_rss: u64,
    notes: Vec<String>,
    within: bool,
}

/// A pool of three scorers (each in its own memory cgroup with `--cgroup`) and a proxy.
struct Pool {
    scorers: Vec<ScorerProcess>,
    groups: Vec<Option<MemoryCgroup>>,
    proxy: manymodels_tests::ProxyProcess,
}

/// A pool at `budget` a scorer; `images`: the scorers' image directories' parent, or
/// `None` for a pool without images (every miss compiles its file, as before images).
fn start_pool(args: &ReplayArgs, store: &Path, budget: u64, images: Option<&Path>) -> Result<Pool> {
    setup::release_servers()?;
    let mut scorers = Vec::new();
    let mut groups = Vec::new();
    for (i, port) in SCORER_PORTS.iter().enumerate() {
        let group = if args.cgroup {
            Some(
                MemoryCgroup::create(&format!("replay-{port}"), FIXED_MEMORY + budget * 11 / 10)
                    .context("--cgroup needs a memory cgroup controller (v1 or v2) it can write")?,
            )
        } else {
            None
        };
        let mut sets = vec![
            format!("store.path={}", store.display()),
            "log.level=warn".to_string(),
            format!("cache.budget={budget}"),
        ];
        if let Some(images) = images {
            sets.push(format!(
                "images.dir={}",
                images.join(format!("scorer-{i}")).display()
            ));
            // Room for every image of the trace (the runs share them; the chart's default
            // is 4 GiB a scorer).
            sets.push("images.max_bytes=16GiB".to_string());
        }
        scorers.push(ScorerProcess::start_on_in(
            *port,
            &sets,
            &[],
            group.as_ref().map(MemoryCgroup::procs).as_deref(),
        ));
        groups.push(group);
    }
    let addrs: Vec<String> = SCORER_PORTS
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let proxy = super::super::proxy(PROXY_PORT, &addrs, &[])?;
    Ok(Pool {
        scorers,
        groups,
        proxy,
    })
}

/// Samples every scorer's residents / budget every 250 ms while `work` runs; returns
/// `work`'s value and the steady-state fill (median of each scorer's second half, mean
/// over scorers).
fn sampling<T>(scorers: &[ScorerProcess], work: impl FnOnce() -> T) -> (T, f64) {
    let stop = AtomicBool::new(false);
    let urls: Vec<String> = scorers.iter().map(|s| s.url.clone()).collect();
    std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut samples: Vec<Vec<f64>> = vec![Vec::new(); urls.len()];
            while !stop.load(Ordering::Relaxed) {
                for (url, samples) in urls.iter().zip(&mut samples) {
                    if let Ok((200, text)) =
                        manymodels_tests::http::request("GET", &format!("{url}/metrics"), "")
                    {
                        let metrics = manymodels_tests::Metrics::parse(&text);
                        let budget = metrics.get("mm_scorer_budget_bytes");
                        if budget > 0.0 {
                            samples.push(metrics.get("mm_scorer_resident_bytes") / budget);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            samples
        });
        let value = work();
        stop.store(true, Ordering::Relaxed);
        let samples = sampler.join().expect("the sampler");
        let medians: Vec<f64> = samples
            .into_iter()
            .filter(|s| !s.is_empty())
            .map(|s| {
                let mut half = s[s.len() / 2..].to_vec();
                half.sort_by(f64::total_cmp);
                half[half.len() / 2]
            })
            .collect();
        let fill = medians.iter().sum::<f64>() / medians.len().max(1) as f64;
        (value, fill)
    })
}

fn run_pool(
    args: &ReplayArgs,
    store: &Path,
    label: String,
    budget: u64,
    images: Option<&Path>,
    trace: &[u32],
    entries: &[Entry],
) -> Result<Run> {
    let pool = start_pool(args, store, budget, images)?;
    let idle: Vec<u64> = pool.scorers.iter().map(|s| s.rss_bytes()).collect();
    let limit = Duration::from_secs(args.seconds);
    let (outcome, fill) = sampling(&pool.scorers, || {
        send_trace(pool.proxy.addr(), trace, entries, args.concurrency, limit)
    });
    let outcome = outcome?;
    let [hits, misses, loads, image_loads, load_seconds] = totals(
        &pool.scorers,
        [
            "mm_scorer_cache_hits_total",
            "mm_scorer_cache_misses_total",
            "mm_scorer_model_loads_total",
            "mm_scorer_images_total{event=\"loaded\"}",
            "mm_scorer_model_load_duration_seconds_sum",
        ],
    );
    let mut notes = Vec::new();
    let mut within = true;
    let mut peak_rss = pool.proxy.peak_rss_bytes();
    for ((scorer, idle), group) in pool.scorers.iter().zip(&idle).zip(&pool.groups) {
        let peak = scorer.peak_rss_bytes();
        peak_rss += peak;
        let bound = rss_bound(*idle, budget);
        within &= peak <= bound;
        let mut note = format!(
            "scorer {}: peak RSS {:.0} MB of bound {:.0} MB (idle {:.0} MB)",
            scorer.addr(),
            peak as f64 / 1e6,
            bound as f64 / 1e6,
            *idle as f64 / 1e6
        );
        if let Some(group) = group {
            let usage = group.usage();
            within &= usage.oom_kills == 0 && usage.anon <= bound;
            note.push_str(&format!(
                "; cgroup limit {:.0} MB: peak usage {:.0} MB (page cache included), anonymous now {:.0} MB, page cache now {:.0} MB, OOM kills {}",
                group.limit() as f64 / 1e6,
                usage.peak as f64 / 1e6,
                usage.anon as f64 / 1e6,
                usage.file as f64 / 1e6,
                usage.oom_kills
            ));
        }
        notes.push(note);
    }
    Ok(Run {
        label,
        budget,
        outcome,
        hits,
        misses,
        loads,
        image_loads,
        load_seconds,
        fill,
        peak_rss,
        notes,
        within,
    })
}

pub(super) fn run(
    args: &ReplayArgs,
    store: &Path,
    trace: &[u32],
    entries: &[Entry],
) -> Result<Vec<super::Row>> {
    // The working set: every model the trace asks for, at its native size.
    let first_touch = first_touch(trace, entries.len());
    let working_set: u64 = first_touch
        .iter()
        .map(|&m| native_size(store, &entries[m as usize].id))
        .sum();
    print_working_set(args, first_touch.len(), working_set);
    let images = std::env::temp_dir().join(format!("mm-replay-images-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&images);
    let smallest = args.overcommit.iter().copied().fold(0.0, f64::max);
    warm_images(
        args,
        store,
        budget_for(working_set, smallest),
        &images,
        &first_touch,
        entries,
    )?;
    let runs = measured_runs(args, store, working_set, &images, trace, entries)?;
    let _ = std::fs::remove_dir_all(&images);
    print_table(&runs);
    print_notes(&runs);
    Ok(runs.into_iter().map(Run::into_row).collect())
}

/// The models of the trace in the order of their first request, each once.
fn first_touch(trace: &[u32], models: usize) -> Vec<u32> {
    let mut seen = vec![false; models];
    let mut first_touch = Vec::new();
    for &m in trace {
        if !std::mem::replace(&mut seen[m as usize], true) {
            first_touch.push(m);
        }
    }
    first_touch
}

/// Prints the working set and the fractions of it the pools get.
fn print_working_set(args: &ReplayArgs, models: usize, working_set: u64) {
    println!(
        "working set: {} distinct models in the trace, {:.2} GB at their native sizes; pools of 3 scorers at 1/{} of it",
        models,
        working_set as f64 / 1e9,
        args.overcommit
            .iter()
            .map(|r| format!("{r}"))
            .collect::<Vec<_>>()
            .join(", 1/")
    );
}

/// Each scorer's budget for a pool whose memory is the working set / `ratio` (at least
/// 32 MiB).
fn budget_for(working_set: u64, ratio: f64) -> u64 {
    ((working_set as f64 / (3.0 * ratio)).ceil() as u64).max(32 * MIB)
}

/// Warm-up: every model of the trace once, so each owner compiles it and writes its
/// image into `images` (at the smallest budget: only the images are kept); prints what
/// it took.
fn warm_images(
    args: &ReplayArgs,
    store: &Path,
    budget: u64,
    images: &Path,
    first_touch: &[u32],
    entries: &[Entry],
) -> Result<()> {
    let pool = start_pool(args, store, budget, Some(images))?;
    let started = Instant::now();
    let outcome = send_trace(
        pool.proxy.addr(),
        first_touch,
        entries,
        args.concurrency,
        Duration::from_secs(args.seconds * 4),
    )?;
    let [written, compile_seconds] = totals(
        &pool.scorers,
        [
            "mm_scorer_images_total{event=\"written\"}",
            "mm_scorer_model_load_duration_seconds_sum",
        ],
    );
    println!(
        "image warm-up (not measured below): {} models requested once in {:.1} s, {} failed; {written:.0} images written; {compile_seconds:.1} s of loads (file read + compile)",
        outcome.requests,
        started.elapsed().as_secs_f64(),
        outcome.failed
    );
    Ok(())
}

/// The measured pools: one per `--overcommit` ratio with the warmed images, then one per
/// `--without-images` ratio without them (what a miss cost before images).
fn measured_runs(
    args: &ReplayArgs,
    store: &Path,
    working_set: u64,
    images: &Path,
    trace: &[u32],
    entries: &[Entry],
) -> Result<Vec<Run>> {
    let mut runs = Vec::new();
    for &ratio in &args.overcommit {
        let budget = budget_for(working_set, ratio);
        runs.push(run_pool(
            args,
            store,
            format!("working set {ratio}x memory"),
            budget,
            Some(images),
            trace,
            entries,
        )?);
    }
    // The same pools without images, in the same run: what a miss cost before them.
    for &ratio in &args.without_images {
        runs.push(run_pool(
            args,
            store,
            format!("working set {ratio}x memory, no images"),
            budget_for(working_set, ratio),
            None,
            trace,
            entries,
        )?);
    }
    Ok(runs)
}

/// Prints the pools' table, each rate also against the first row's.
fn print_table(runs: &[Run]) {
    println!(
        "\n| pool | budget per scorer | requests | req/s | vs 1st row | p50 | p99 | p99.9 | hit ratio | loads (from images) | load seconds | residents / budget | failed | within bound |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let first = runs
        .first()
        .map(|r| r.outcome.requests as f64 / r.outcome.elapsed.as_secs_f64())
        .unwrap_or(1.0);
    for r in runs {
        let o = &r.outcome;
        let rate = o.requests as f64 / o.elapsed.as_secs_f64();
        println!(
            "| {} | {:.0} MiB | {} | {:.0} | {:.2}x | {:.1} ms | {:.1} ms | {:.1} ms | {:.3} | {:.0} ({:.0}) | {:.1} s | {:.2} | {} | {} |",
            r.label,
            r.budget as f64 / MIB as f64,
            o.requests,
            rate,
            rate / first,
            percentile(&o.latencies, 0.5) / 1e3,
            percentile(&o.latencies, 0.99) / 1e3,
            percentile(&o.latencies, 0.999) / 1e3,
            r.hits / (r.hits + r.misses).max(1.0),
            r.loads,
            r.image_loads,
            r.load_seconds,
            r.fill,
            o.failed,
            if r.within { "yes" } else { "NO" },
        );
    }
}

/// Prints every run's memory notes under the table.
fn print_notes(runs: &[Run]) {
    for r in runs {
        for note in &r.notes {
            println!("- {}: {note}", r.label);
        }
    }
}

impl Run {
    /// The run as a row of the replay's comparison with the other servers.
    fn into_row(self) -> super::Row {
        super::Row {
            name: format!("manymodels, {} (proxy + 3 scorers)", self.label),
            hit_ratio: self.hits / (self.hits + self.misses).max(1.0),
            loads: self.loads,
            extra: format!("{:.0} from images", self.image_loads),
            peak_rss: self.peak_rss,
            notes: Vec::new(),
            outcome: self.outcome,
        }
    }
}
