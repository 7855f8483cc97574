//! Benchmarks recorded in BENCHMARKS.md, one file each. Each prints Markdown rows to
//! paste, with the command that made them. Servers run in release mode on 127.0.0.1,
//! started through the shared harness (`manymodels-tests`); the load generator is `wrk`
//! (closed loop: the connection count is printed with every figure) or the harness's
//! keep-alive client.
//!
//! This file holds the command line, the dispatch and what several benches measure
//! with; `wrk.rs` runs wrk and the probe-and-wrk measurement two benches share.

mod autoscale;
mod batch;
mod drain;
mod engines;
mod explain;
mod freeze;
mod hot;
mod hot_under_load;
mod images;
mod import;
mod ledger;
mod load;
mod memory;
mod observe;
mod policy;
mod protocols;
mod proxy;
mod proxy_ids;
mod replay;
mod shadow;
mod sim_replay;
mod stats;
mod swap;
mod tenants;
mod wrk;

use std::ops::Deref;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Subcommand;
use manymodels_engine::tensor::{DataType, NamedTensor, TensorData};
use manymodels_tests::http::KeepAlive;
use manymodels_tests::process::Process;
use manymodels_tests::{ProxyProcess, ScorerProcess};
use serde_json::Value;

use crate::setup;

#[derive(Subcommand)]
pub enum Bench {
    /// Hot-hit latency at one connection and peak throughput, with wrk, against one
    /// release scorer.
    Hot {
        /// Demo models to measure.
        #[arg(long, default_values_t = ["linear-small".to_string(), "forest-1mb".to_string()])]
        models: Vec<String>,
        /// Seconds per wrk run.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Connections for the throughput run.
        #[arg(long, default_value_t = 32)]
        connections: usize,
        /// Scorer configuration overrides (`key=value`), applied to the server and to the
        /// in-process handler alike.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
    },
    /// ONNX Runtime's own per-call time (the floor) and cold-load cost by model size:
    /// file read, ORT session creation alone, the scorer's whole load, and a cold request
    /// over HTTP.
    Load {
        /// Repetitions per figure.
        #[arg(long, default_value_t = 7)]
        reps: usize,
    },
    /// Proxy overhead: the same hot tiny model straight to a scorer and through the proxy,
    /// same tools, same run; CPU per request of each process at saturation.
    Proxy {
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 32)]
        connections: usize,
    },
    /// The many-model route (`POST /v2/mm/batch`): 1,000 records over 200 realistic models
    /// in one call against 200 sequential single calls and the slowest owner's share; 200
    /// forecasts of 5 steps against 1,000 single calls; the proxy's RSS under a flood of
    /// maximal batches; records lost while a scorer is killed.
    Batch(batch::BatchArgs),
    /// The proxy at many model ids (1,000 and 100,000 in one run): its RSS, CPU per
    /// request, statistics push size, hot table and tracked ids through a real pool.
    ProxyIds(proxy_ids::ProxyIdsArgs),
    /// The autoscaling signal (working set against the budget) over a simulated replay
    /// whose traffic doubles, beside the pool hit ratio.
    Autoscale(autoscale::AutoscaleArgs),
    /// One scorer of three leaving under realistic traffic, drain hand-off off and on.
    Drain(drain::DrainArgs),
    Freeze(freeze::FreezeArgs),
    /// JSON REST, binary REST and gRPC through the proxy, same model, same run: a
    /// 10,000-row batch (throughput, latency, CPU per row) and single-row hot hits.
    Protocols(protocols::ProtocolsArgs),
    /// The realistic workload (real scikit-learn models, heavy forests included; Zipf 1.0
    /// with drift and scans; closed-loop clients) through the proxy and three scorers, per
    /// engine setting, beside the naive baseline in the same run.
    Replay(replay::ReplayArgs),
    /// Replays a generated trace through the proxy and three scorers and compares the pool
    /// hit ratio with the simulator's for the same trace and budget.
    SimReplay(sim_replay::SimReplayArgs),
    /// The native engine against ONNX Runtime per model size class: load time, resident
    /// bytes, peak memory during a load, hot-hit latency.
    Engines(engines::EnginesArgs),
    /// What an explanation costs per size class of the realistic store: native
    /// contributions per row against the native prediction and shap.TreeExplainer on the
    /// same model and rows.
    Explain(explain::ExplainArgs),
    /// A 20% shadow on every hot model: live answers' throughput and p99 against no shadow,
    /// in one run.
    Shadow(shadow::ShadowArgs),
    /// A miss with and without a native image, per model class: compile against image
    /// load, image sizes, the heap during an image load.
    Images(images::ImagesArgs),
    /// The offline cache simulator: the scorer's policy against LRU, moka's W-TinyLFU and
    /// Belady on generated many-model traces.
    Policy(policy::SimArgs),
    /// A hot model's latency alone and while cold loads of big forests run beside it.
    HotUnderLoad(hot_under_load::HotUnderLoadArgs),
    /// Noisy neighbours: one tenant's Zipf traffic alone, beside another tenant's batch
    /// scan with the first tenant's floor, and without tenant shares.
    Tenants(tenants::TenantsArgs),
    /// Publish-to-live delay of a hot model on a local and an Azure Blob (Azurite) store,
    /// and latency during swaps against steady state.
    Swap {
        /// Versions published per store.
        #[arg(long, default_value_t = 10)]
        publishes: u64,
        /// Requests per second on the hot model.
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
    },
    /// The per-model ledger's cost per request and memory from 1,000 to 100,000 distinct
    /// models in traffic.
    Ledger(ledger::LedgerArgs),
    /// What watching the pool costs at its hot rate: payload capture at 10% and tracing at
    /// 1% against neither, in one run.
    Observe(observe::ObserveArgs),
    /// The proxy's per-request statistics cost and memory with many model ids.
    Stats {
        /// Distinct model ids.
        #[arg(long, default_value_t = 100_000)]
        ids: usize,
        #[arg(long, default_value_t = 2_000_000)]
        requests: usize,
    },
    /// `mmctl import` of 10,000 real models into Azure Blob (Azurite), beside naive
    /// uploads of the same files in the same run, and its rerun (everything skipped).
    Import(import::ImportArgs),
    /// Resident memory per 1,000 small (linear) models.
    Memory {
        #[arg(long, default_value_t = 1000)]
        models: usize,
    },
}

pub fn run(which: Bench) -> Result<()> {
    setup::tools(&["cmake", "wrk"])?;
    setup::onnxruntime()?;
    if cfg!(debug_assertions) {
        // Benchmarks time in-process code too: run them from a release build of xtask.
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut command = vec!["run", "--quiet", "--release", "--package", "xtask", "--"];
        command.extend(args.iter().map(String::as_str));
        return setup::cargo(&command);
    }
    match which {
        Bench::Hot {
            models,
            seconds,
            connections,
            sets,
        } => hot::run(&models, seconds, connections, &sets),
        Bench::Load { reps } => load::run(reps),
        Bench::Policy(args) => policy::run(args),
        Bench::HotUnderLoad(args) => hot_under_load::run(args),
        Bench::Tenants(args) => tenants::run(args),
        Bench::Import(args) => import::run(args),
        Bench::Memory { models } => memory::run(models),
        Bench::Proxy {
            seconds,
            connections,
        } => proxy::run(seconds, connections),
        Bench::ProxyIds(args) => proxy_ids::run(args),
        Bench::Batch(args) => batch::run(args),
        Bench::Autoscale(args) => autoscale::run(args),
        Bench::Drain(args) => drain::run(args),
        Bench::Freeze(args) => freeze::run(args),
        Bench::Protocols(args) => protocols::run(args),
        Bench::Replay(args) => replay::run(args),
        Bench::SimReplay(args) => sim_replay::run(args),
        Bench::Engines(args) => engines::run(args),
        Bench::Explain(args) => explain::run(args),
        Bench::Shadow(args) => shadow::run(args),
        Bench::Images(args) => images::run(args),
        Bench::Stats { ids, requests } => stats::run(ids, requests),
        Bench::Ledger(args) => ledger::run(args),
        Bench::Observe(args) => observe::run(args),
        Bench::Swap { publishes, rate } => swap::run(publishes, rate),
    }
}

/// A release scorer on `port` serving the local `store`, logging warnings only. xtask
/// runs benches from a release build, so the harness starts the release binaries; this
/// builds them first.
pub(crate) fn scorer(store: &Path, port: u16, sets: &[&str]) -> Result<ScorerProcess> {
    scorer_with_env(store, port, sets, &[])
}

/// The same with extra environment variables.
pub(crate) fn scorer_with_env(
    store: &Path,
    port: u16,
    sets: &[&str],
    env: &[(&str, &str)],
) -> Result<ScorerProcess> {
    setup::cargo(&["build", "--release", "-p", "manymodels-scorer"])?;
    let mut all = vec![
        format!("store.path={}", store.display()),
        "log.level=warn".to_string(),
    ];
    all.extend(sets.iter().map(|s| s.to_string()));
    Ok(ScorerProcess::start_on(port, &all, env))
}

/// A release proxy on `port` in front of `scorers` (`host:port`), with the production
/// defaults but for `sets`, logging warnings only.
pub(crate) fn proxy<S: AsRef<str>>(
    port: u16,
    scorers: &[S],
    sets: &[&str],
) -> Result<ProxyProcess> {
    setup::cargo(&["build", "--release", "-p", "manymodels-proxy"])?;
    let mut all = vec!["log.level=warn"];
    all.extend_from_slice(sets);
    Ok(ProxyProcess::with_defaults(port, scorers, &all))
}

/// The sum over `processes` of each sample of `names`, one scrape per process.
pub(crate) fn totals<P: Deref<Target = Process>, const N: usize>(
    processes: &[P],
    names: [&str; N],
) -> [f64; N] {
    let mut sums = [0.0; N];
    for process in processes {
        let metrics = process.metrics_blocking();
        for (sum, name) in sums.iter_mut().zip(names) {
            *sum += metrics.get(name);
        }
    }
    sums
}

/// One request to send: where, what, and when (`due`, from the start; `None`: at once).
pub(crate) struct Job<'a> {
    pub path: String,
    pub body: &'a str,
    pub due: Option<Duration>,
}

/// What a server did with a stream of requests.
pub(crate) struct Outcome {
    pub requests: usize,
    /// Answers other than 200, and dropped connections.
    pub failed: usize,
    pub elapsed: Duration,
    /// Round-trip times of the answered requests, sorted.
    pub latencies: Vec<Duration>,
}

/// One request [`drive_each`] sent.
pub(crate) struct Sent {
    /// The job's index.
    pub job: usize,
    /// Its status; `None` when the connection dropped before an answer.
    pub status: Option<u16>,
    /// From sending it until its answer (or the failure).
    pub latency: Duration,
}

/// Sends `job(0)`, `job(1)`, ... to `addr` with `concurrency` keep-alive clients, each
/// taking the next job as soon as its last one is answered (and its due time came),
/// until `job` returns `None` or `limit` passes. A dropped connection is a `Sent` without
/// a status; the client reconnects. Returns every request (in no order) and the time taken.
pub(crate) fn drive_each<'a>(
    addr: &str,
    concurrency: usize,
    limit: Duration,
    job: impl Fn(usize) -> Option<Job<'a>> + Sync,
) -> Result<(Vec<Sent>, Duration)> {
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    let sent: Vec<Vec<Sent>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..concurrency)
            .map(|_| {
                scope.spawn(|| -> Result<Vec<Sent>> {
                    let mut client = KeepAlive::connect(addr)?;
                    let mut sent = Vec::new();
                    while started.elapsed() < limit {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(job) = job(i) else {
                            break;
                        };
                        if let Some(wait) = job.due.and_then(|d| d.checked_sub(started.elapsed())) {
                            std::thread::sleep(wait);
                        }
                        let at = Instant::now();
                        match client.post(&job.path, job.body) {
                            Ok((status, latency)) => sent.push(Sent {
                                job: i,
                                status: Some(status),
                                latency,
                            }),
                            Err(_) => {
                                sent.push(Sent {
                                    job: i,
                                    status: None,
                                    latency: at.elapsed(),
                                });
                                client = KeepAlive::connect(addr)?;
                            }
                        }
                    }
                    Ok(sent)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("load client"))
            .collect::<Result<_>>()
    })?;
    Ok((sent.into_iter().flatten().collect(), started.elapsed()))
}

/// [`drive_each`], summed up: answers other than 200 and dropped connections are failures;
/// the latencies are those of the answered requests.
pub(crate) fn drive<'a>(
    addr: &str,
    concurrency: usize,
    limit: Duration,
    job: impl Fn(usize) -> Option<Job<'a>> + Sync,
) -> Result<Outcome> {
    let (sent, elapsed) = drive_each(addr, concurrency, limit, job)?;
    let failed = sent.iter().filter(|s| s.status != Some(200)).count();
    let mut latencies: Vec<Duration> = sent
        .iter()
        .filter(|s| s.status.is_some())
        .map(|s| s.latency)
        .collect();
    latencies.sort();
    Ok(Outcome {
        requests: latencies.len(),
        failed,
        elapsed,
        latencies,
    })
}

/// The documented bound on a scorer's process RSS (docs/cache.md, "Memory"): its idle RSS plus
/// `cache.budget` × 1.1 plus 64 MiB.
pub(crate) fn rss_bound(idle: u64, budget: u64) -> u64 {
    idle + budget * 11 / 10 + (64 << 20)
}

/// In a debug build, runs `cargo xtask bench <bench> <args>` again from a release build
/// (in-process figures need an optimised engine) and returns its outcome; `None` in a
/// release build, which measures itself.
pub(crate) fn in_release(bench: &str, args: &[std::ffi::OsString]) -> Option<Result<()>> {
    if !cfg!(debug_assertions) {
        return None;
    }
    let status = std::process::Command::new(env!("CARGO"))
        .args([
            "run",
            "--quiet",
            "--release",
            "-p",
            "xtask",
            "--",
            "bench",
            bench,
        ])
        .args(args)
        .status();
    Some(match status {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(anyhow::anyhow!("the release bench failed: {status}")),
        Err(e) => Err(e.into()),
    })
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e6
}

pub(crate) fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

pub(crate) fn trim_heap() {
    // SAFETY: malloc_trim only walks glibc's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The same row as typed tensors, for timing ONNX Runtime in-process.
pub(crate) fn one_row_tensors(body: &Value) -> Vec<NamedTensor> {
    body["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|input| {
            let datatype = DataType::parse(input["datatype"].as_str().unwrap()).unwrap();
            let values = input["data"].as_array().unwrap();
            let data = match datatype {
                DataType::Fp32 => {
                    TensorData::Fp32(values.iter().map(|v| v.as_f64().unwrap() as f32).collect())
                }
                DataType::Fp64 => {
                    TensorData::Fp64(values.iter().map(|v| v.as_f64().unwrap()).collect())
                }
                DataType::Int32 => {
                    TensorData::Int32(values.iter().map(|v| v.as_i64().unwrap() as i32).collect())
                }
                DataType::Int64 => {
                    TensorData::Int64(values.iter().map(|v| v.as_i64().unwrap()).collect())
                }
                DataType::Bool => {
                    TensorData::Bool(values.iter().map(|v| v.as_bool().unwrap()).collect())
                }
                DataType::Bytes => TensorData::Bytes(
                    values
                        .iter()
                        .map(|v| v.as_str().unwrap().to_string())
                        .collect(),
                ),
            };
            NamedTensor {
                name: input["name"].as_str().unwrap().to_string(),
                datatype,
                shape: input["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_i64().unwrap())
                    .collect(),
                data,
            }
        })
        .collect()
}
