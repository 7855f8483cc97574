//! `cargo xtask bench proxy-ids`: the proxy at many model ids. What it keeps per model
//! (the statistics' exact hottest ids beside a fixed-size sketch, the hot table, the share
//! of rates it pushes each scorer) must stay bounded and cheap however many distinct ids
//! pass through it. So one pool (proxy + three scorers, production defaults) per id count
//! (`--ids`: 1,000 and 100,000) takes the same requests in one run: a sweep that sends
//! every id once in random order (each scorer loads its third cold, the proxy learns every
//! id), then Zipf 1.0 over the same ids (steady state), from closed-loop clients. Every id
//! of a store is the same tiny real model (`linear-small`, one file symlinked under each
//! id), so a scorer costs the same per request at either count and what differs between
//! the rows is the proxy's state. After each phase: the proxy's RSS (`VmRSS`, `VmHWM`),
//! its CPU per request (utime + stime from /proc), the statistics pushes it sent and their
//! mean size (`mm_proxy_stats_push_bytes_total` over `mm_proxy_stats_pushes_total`), its
//! hot table (`mm_proxy_hot_models`) and the ids its statistics track exactly (the pool
//! view). The rows are compared as ratios within one run, since this machine is noisy and
//! every process shares its cores with the load generator.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use clap::Args;
use manymodels_policy::trace::{self as policy_trace, Rng, Shape, TraceSpec};
use manymodels_tests::ScorerProcess;
use manymodels_tests::http::request;
use manymodels_tests::process::ProxyProcess;
use manymodels_tests::reference::{one_row_body, reference};
use serde_json::Value;

use super::{Job, Outcome, drive};
use crate::setup;

/// The proxy's port and its scorers' (no other bench uses 18_140-18_143).
const PROXY_PORT: u16 = 18_140;
const SCORER_PORTS: [u16; 3] = [18_141, 18_142, 18_143];
/// The demo model every id serves: tiny, compiled by the native engine.
const MODEL: &str = "linear-small";

#[derive(Args, Clone, Debug)]
pub struct ProxyIdsArgs {
    /// Distinct model ids, one store and pool each, in this order; the first and the last
    /// are compared.
    #[arg(long, value_delimiter = ',', default_values_t = [1_000usize, 100_000])]
    ids: Vec<usize>,
    /// Requests per pool: the sweep (every id once), then Zipf 1.0 for the rest.
    #[arg(long, default_value_t = 300_000)]
    requests: usize,
    /// Wall-clock limit per pool, both phases together.
    #[arg(long, default_value_t = 120)]
    seconds: u64,
    /// Closed-loop clients.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

pub fn run(args: ProxyIdsArgs) -> Result<()> {
    ensure!(!args.ids.is_empty(), "--ids names no id count");
    let body = one_row_body(&reference(MODEL)).to_string();
    print_setting(&args);
    let mut rows = Vec::new();
    for &ids in &args.ids {
        rows.extend(pool(&args, ids, &body)?);
    }
    println!(
        "| ids | phase | requests | failed | req/s | ids seen | proxy RSS | proxy VmHWM | proxy CPU µs/req | pushes | bytes/push | hot table | tracked ids | stats memory |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for row in &rows {
        row.print();
    }
    if let (Some(&small), Some(&large)) = (args.ids.first(), args.ids.last())
        && small != large
    {
        compare(&rows, small, large);
    }
    Ok(())
}

fn print_setting(args: &ProxyIdsArgs) {
    let default = |key: &str| {
        manymodels_config::proxy::KEYS
            .iter()
            .find(|k| k.key == key)
            .map_or("?", |k| k.default)
    };
    let ids: Vec<String> = args.ids.iter().map(usize::to_string).collect();
    println!(
        "`cargo xtask bench proxy-ids --ids {} --requests {} --seconds {} --concurrency {} --seed {}`\n",
        ids.join(","),
        args.requests,
        args.seconds,
        args.concurrency,
        args.seed
    );
    println!(
        "Per id count: a store `.cache/proxy-ids-<ids>` where every id serves `{MODEL}` (one file, symlinked), a fresh pool (proxy + 3 scorers, production defaults: the proxy's stats.top_models {}, routing.hot_ttl {}, stats.push_interval {}), {} closed-loop clients, {} requests (every id once in random order, then Zipf 1.0 over the same ids), at most {} s. Figures per phase are the proxy's: RSS at its end, CPU, pushes and bytes over it.",
        default("stats.top_models"),
        default("routing.hot_ttl"),
        default("stats.push_interval"),
        args.concurrency,
        args.requests,
        args.seconds,
    );
    println!(
        "The proxy, its 3 scorers and the load generator share this machine's {} cores.\n",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
}

/// The id of model `i` of a store.
pub(crate) fn id_of(i: usize) -> String {
    format!("ids-{i:06}")
}

/// `.cache/proxy-ids-<ids>`, made once: `<id>/1/model.onnx` for every id, a symlink to the
/// demo model (the store follows links to a version's file; hard links would pass ext4's
/// 65,000 links per file). Written under another name and renamed into place, so an
/// interrupted run leaves no half store behind.
pub(crate) fn ensure_store(ids: usize) -> Result<PathBuf> {
    let root = setup::workspace_root();
    let store = root.join(format!(".cache/proxy-ids-{ids}"));
    let model = root.join(format!("models/demo/{MODEL}/1/model.onnx"));
    let last = store.join(id_of(ids - 1)).join("1/model.onnx");
    if last.exists() {
        return Ok(store);
    }
    eprintln!("xtask: writing {ids} model ids into {}", store.display());
    let partial = root.join(format!(".cache/proxy-ids-{ids}.partial"));
    for dir in [&partial, &store] {
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| dir.display().to_string())?;
        }
    }
    for i in 0..ids {
        let version = partial.join(id_of(i)).join("1");
        std::fs::create_dir_all(&version).with_context(|| version.display().to_string())?;
        std::os::unix::fs::symlink(&model, version.join("model.onnx"))?;
    }
    std::fs::rename(&partial, &store)?;
    Ok(store)
}

/// The indices of the ids in sending order: every id once in random order (the sweep),
/// then Zipf 1.0 over the same ids, `requests` in all.
fn streams(ids: usize, requests: usize, seed: u64) -> [(&'static str, Vec<u32>); 2] {
    let mut sweep: Vec<u32> = (0..ids as u32).collect();
    Rng::new(seed).shuffle(&mut sweep);
    sweep.truncate(requests);
    let zipf = policy_trace::generate(&TraceSpec {
        shape: Shape::Zipf(1.0),
        models: ids,
        requests: requests - sweep.len(),
        rate: 1_000.0,
        seed: seed + 1,
    })
    .into_iter()
    .map(|r| r.model)
    .collect();
    [("sweep", sweep), ("zipf-1.0", zipf)]
}

/// What the proxy holds and has done so far.
#[derive(Clone, Copy, Default)]
struct Snapshot {
    rss: u64,
    peak_rss: u64,
    cpu: f64,
    pushes: f64,
    push_bytes: f64,
    hot: f64,
    tracked: u64,
    stats_memory: u64,
}

impl Snapshot {
    /// Memory and CPU first, so the scrape and the pool view are not counted in them.
    fn take(proxy: &ProxyProcess) -> Result<Self> {
        let (rss, peak_rss, cpu) = (
            proxy.rss_bytes(),
            proxy.peak_rss_bytes(),
            proxy.cpu_seconds(),
        );
        let metrics = proxy.metrics_blocking();
        let (status, view) = request("GET", &format!("{}/v2/mm/pool", proxy.url), "")?;
        ensure!(status == 200, "the pool view answered {status}: {view}");
        let view: Value = serde_json::from_str(&view).context("the pool view")?;
        let statistics = &view["statistics"];
        Ok(Snapshot {
            rss,
            peak_rss,
            cpu,
            pushes: metrics.get("mm_proxy_stats_pushes_total"),
            push_bytes: metrics.get("mm_proxy_stats_push_bytes_total"),
            hot: metrics.get("mm_proxy_hot_models"),
            tracked: statistics["tracked_models"].as_u64().unwrap_or(0),
            stats_memory: statistics["memory_bytes"].as_u64().unwrap_or(0),
        })
    }
}

/// One phase of one pool: the snapshots around it and what was sent (`None`: idle).
struct Row {
    ids: usize,
    phase: &'static str,
    outcome: Option<Outcome>,
    /// Distinct ids sent so far in this pool.
    seen: usize,
    before: Snapshot,
    after: Snapshot,
}

impl Row {
    fn requests(&self) -> usize {
        self.outcome.as_ref().map_or(0, |o| o.requests)
    }

    fn throughput(&self) -> f64 {
        self.outcome
            .as_ref()
            .map_or(0.0, |o| o.requests as f64 / o.elapsed.as_secs_f64())
    }

    /// Proxy CPU µs per answered request over the phase.
    fn cpu_per_request(&self) -> f64 {
        (self.after.cpu - self.before.cpu) * 1e6 / self.requests() as f64
    }

    fn pushes(&self) -> f64 {
        self.after.pushes - self.before.pushes
    }

    fn bytes_per_push(&self) -> f64 {
        (self.after.push_bytes - self.before.push_bytes) / self.pushes()
    }

    fn print(&self) {
        let dash = || "-".to_string();
        let measured = self.requests() > 0;
        let (failed, throughput, cpu) = match &self.outcome {
            Some(o) if measured => (
                o.failed.to_string(),
                format!("{:.0}", self.throughput()),
                format!("{:.1}", self.cpu_per_request()),
            ),
            _ => (dash(), dash(), dash()),
        };
        println!(
            "| {} | {} | {} | {failed} | {throughput} | {} | {:.1} MB | {:.1} MB | {cpu} | {:.0} | {} | {:.0} | {} | {:.2} MB |",
            self.ids,
            self.phase,
            if self.outcome.is_some() {
                self.requests().to_string()
            } else {
                dash()
            },
            self.seen,
            self.after.rss as f64 / 1e6,
            self.after.peak_rss as f64 / 1e6,
            self.pushes(),
            if self.pushes() > 0.0 {
                format!("{:.0}", self.bytes_per_push())
            } else {
                dash()
            },
            self.after.hot,
            self.after.tracked,
            self.after.stats_memory as f64 / 1e6,
        );
    }
}

/// One fresh pool over `ids` ids: idle, then each stream in turn.
fn pool(args: &ProxyIdsArgs, ids: usize, body: &str) -> Result<Vec<Row>> {
    ensure!(ids > 0, "an id count of 0");
    let store = ensure_store(ids)?;
    let scorers: Vec<ScorerProcess> = SCORER_PORTS
        .iter()
        .map(|&port| super::scorer(&store, port, &[]))
        .collect::<Result<_>>()?;
    let addrs: Vec<&str> = scorers.iter().map(|s| s.addr()).collect();
    let proxy = super::proxy(PROXY_PORT, &addrs, &[])?;
    // Idle: started, checked its scorers, pushed its (empty) statistics once or twice.
    std::thread::sleep(Duration::from_secs(3));
    let idle = Snapshot::take(&proxy)?;
    let mut rows = vec![Row {
        ids,
        phase: "idle, before traffic",
        outcome: None,
        seen: 0,
        before: Snapshot::default(),
        after: idle,
    }];
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let mut seen = vec![false; ids];
    let mut before = idle;
    for (phase, order) in streams(ids, args.requests, args.seed) {
        let limit = deadline.saturating_duration_since(Instant::now());
        let outcome = send(proxy.addr(), &order, body, args.concurrency, limit)?;
        for &m in &order[..outcome.requests + outcome.failed] {
            seen[m as usize] = true;
        }
        let after = Snapshot::take(&proxy)?;
        rows.push(Row {
            ids,
            phase,
            outcome: Some(outcome),
            seen: seen.iter().filter(|s| **s).count(),
            before,
            after,
        });
        before = after;
    }
    Ok(rows)
}

/// Sends `order` (id indices) through the proxy until it ends or `limit` passes. Jobs are
/// handed out in order, so what was sent is the first `requests + failed` of them.
fn send(
    addr: &str,
    order: &[u32],
    body: &str,
    concurrency: usize,
    limit: Duration,
) -> Result<Outcome> {
    drive(addr, concurrency, limit, |i| {
        Some(Job {
            path: format!("/v2/models/{}/infer", id_of(*order.get(i)? as usize)),
            body,
            due: None,
        })
    })
}

/// The last phase at `large` ids against the same at `small`, as ratios.
fn compare(rows: &[Row], small: usize, large: usize) {
    let last = |ids: usize| rows.iter().rev().find(|r| r.ids == ids && r.requests() > 0);
    let (Some(s), Some(l)) = (last(small), last(large)) else {
        return;
    };
    let ratio = |a: f64, b: f64| {
        if a.is_finite() && b.is_finite() && b > 0.0 {
            format!("{:.2}x", a / b)
        } else {
            "-".to_string()
        }
    };
    println!(
        "\n{large} ids against {small} ids, {} phase (same run): proxy CPU per request {}, req/s {}, proxy RSS {}, VmHWM {}, bytes per push {}, hot table {}, tracked ids {}",
        l.phase,
        ratio(l.cpu_per_request(), s.cpu_per_request()),
        ratio(l.throughput(), s.throughput()),
        ratio(l.after.rss as f64, s.after.rss as f64),
        ratio(l.after.peak_rss as f64, s.after.peak_rss as f64),
        ratio(l.bytes_per_push(), s.bytes_per_push()),
        ratio(l.after.hot, s.after.hot),
        ratio(l.after.tracked as f64, s.after.tracked as f64),
    );
}
