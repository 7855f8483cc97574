//! `cargo xtask bench observe`: what watching the pool costs while it serves its hot rate.
//! Two pools side by side, each a proxy and two scorers with the production defaults:
//! pool A with tracing off, pool B exporting spans to a real OTLP receiver at
//! `trace.sample_ratio` 0.01 (proxy and scorers). Every model id of the store serves the
//! same tiny model (`linear-small`, symlinked), all in memory after a warm-up sweep, so
//! each request is a hot hit and what differs between phases is the observation.
//!
//! Each repetition runs three phases of the same Zipf 1.0 stream from closed-loop
//! clients, in a rotating order: `off` (pool A), `capture` (pool A with a capture rule
//! for every id at rate 0.1, set through the proxy's admin API before the phase and
//! dropped after it) and `trace` (pool B). Throughput and p99 of `capture` and `trace` are
//! compared with the `off` of the same repetition, as ratios; the median ratio is the
//! figure. The pools and the load generator share this machine's cores.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use manymodels_policy::trace::{self as policy_trace, Shape, TraceSpec};
use manymodels_tests::ScorerProcess;
use manymodels_tests::http::request;
use manymodels_tests::process::ProxyProcess;
use manymodels_tests::reference::{one_row_body, reference};

use super::proxy_ids::{ensure_store, id_of};
use super::{Job, Outcome, drive, percentile};

/// Pool A's proxy and scorers, then pool B's (no other bench uses 18_150-18_155).
const A_PORTS: [u16; 3] = [18_150, 18_151, 18_152];
const B_PORTS: [u16; 3] = [18_153, 18_154, 18_155];

#[derive(clap::Args, Clone, Debug)]
pub struct ObserveArgs {
    /// Distinct model ids (a store `.cache/proxy-ids-<ids>`).
    #[arg(long, default_value_t = 1_000)]
    ids: usize,
    /// Requests per phase.
    #[arg(long, default_value_t = 40_000)]
    requests: usize,
    /// Repetitions of the three phases.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Closed-loop clients.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// The capture phase's sampling rate.
    #[arg(long, default_value_t = 0.1)]
    capture_rate: f64,
    /// The trace phase's `trace.sample_ratio`.
    #[arg(long, default_value_t = 0.01)]
    trace_ratio: f64,
}

struct Pool {
    proxy: ProxyProcess,
    scorers: Vec<ScorerProcess>,
}

fn pool(store: &std::path::Path, ports: [u16; 3], sets: &[&str]) -> Result<Pool> {
    let scorers = ports[1..]
        .iter()
        .map(|&port| {
            let mut all: Vec<&str> = sets.to_vec();
            // Captures reach the store within the phase.
            all.push("capture.flush_interval=2s");
            super::scorer(store, port, &all)
        })
        .collect::<Result<Vec<_>>>()?;
    let addrs: Vec<&str> = scorers.iter().map(|s| s.addr()).collect();
    let proxy = super::proxy(ports[0], &addrs, sets)?;
    Ok(Pool { proxy, scorers })
}

/// One phase's figures (also `bench shadow`'s).
pub(super) struct Phase {
    pub name: &'static str,
    pub rep: usize,
    pub outcome: Outcome,
}

impl Phase {
    pub fn throughput(&self) -> f64 {
        self.outcome.requests as f64 / self.outcome.elapsed.as_secs_f64()
    }
    pub fn p50(&self) -> f64 {
        percentile(&self.outcome.latencies, 0.50)
    }
    pub fn p99(&self) -> f64 {
        percentile(&self.outcome.latencies, 0.99)
    }
}

/// Prints `phases` as a Markdown table.
pub(super) fn print_phases(phases: &[Phase]) {
    println!("| rep | phase | requests | req/s | p50 (µs) | p99 (µs) |");
    println!("|---|---|---|---|---|---|");
    for p in phases {
        println!(
            "| {} | {} | {} | {:.0} | {:.0} | {:.0} |",
            p.rep,
            p.name,
            p.outcome.requests,
            p.throughput(),
            p.p50(),
            p.p99()
        );
    }
}

/// The median over `reps` repetitions of `of(name) / of(base)` within each repetition.
pub(super) fn median_ratio(
    phases: &[Phase],
    reps: usize,
    name: &str,
    base: &str,
    of: &dyn Fn(&Phase) -> f64,
) -> f64 {
    let mut ratios: Vec<f64> = (0..reps)
        .filter_map(|rep| {
            let find = |n: &str| phases.iter().find(|p| p.rep == rep && p.name == n);
            Some(of(find(name)?) / of(find(base)?))
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    ratios[ratios.len() / 2]
}

pub fn run(args: ObserveArgs) -> Result<()> {
    ensure!(
        args.reps > 0 && args.requests > 0,
        "--reps and --requests must be positive"
    );
    let store = ensure_store(args.ids)?;
    let receiver = manymodels_tests::otlp::start();
    let endpoint = format!("trace.endpoint={}", receiver.endpoint());
    let ratio = format!("trace.sample_ratio={}", args.trace_ratio);
    let a = pool(&store, A_PORTS, &[])?;
    let b = pool(&store, B_PORTS, &[&endpoint, &ratio])?;
    println!(
        "`cargo xtask bench observe --ids {} --requests {} --reps {} --concurrency {} --capture-rate {} --trace-ratio {}`\n",
        args.ids, args.requests, args.reps, args.concurrency, args.capture_rate, args.trace_ratio
    );
    println!(
        "Two pools (proxy + 2 scorers each, production defaults), every id `linear-small` and in memory; {} closed-loop clients, {} requests per phase, Zipf 1.0 over {} ids. Both pools, the OTLP receiver and the load generator share this machine's {} cores.\n",
        args.concurrency,
        args.requests,
        args.ids,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let body = one_row_body(&reference("linear-small")).to_string();
    let paths: Vec<String> = (0..args.ids)
        .map(|i| format!("/v2/models/{}/infer", id_of(i)))
        .collect();
    // Warm both pools: every id once, then a short Zipf run.
    for pool in [&a, &b] {
        let sweep = drive(
            pool.proxy.addr(),
            args.concurrency,
            Duration::from_secs(120),
            |i| {
                (i < args.ids).then(|| Job {
                    path: paths[i].clone(),
                    body: &body,
                    due: None,
                })
            },
        )?;
        ensure!(
            sweep.failed == 0,
            "{} requests of the warm-up failed",
            sweep.failed
        );
    }
    let stream: Vec<u32> = policy_trace::generate(&TraceSpec {
        shape: Shape::Zipf(1.0),
        models: args.ids,
        requests: args.requests,
        rate: 1_000.0,
        seed: 3,
    })
    .into_iter()
    .map(|r| r.model)
    .collect();
    let run_phase = |pool: &Pool| -> Result<Outcome> {
        let outcome = drive(
            pool.proxy.addr(),
            args.concurrency,
            Duration::from_secs(300),
            |i| {
                stream.get(i).map(|&m| Job {
                    path: paths[m as usize].clone(),
                    body: &body,
                    due: None,
                })
            },
        )?;
        ensure!(outcome.failed == 0, "{} requests failed", outcome.failed);
        Ok(outcome)
    };
    // Warm the measuring path once per pool (connections, caches).
    run_phase(&a)?;
    run_phase(&b)?;
    let rule = format!("{}/v2/mm/capture/{}", a.proxy.url, "ids-");
    let capture = |on: bool| -> Result<()> {
        let (status, answer) = if on {
            request(
                "PUT",
                &rule,
                &format!("{{\"rate\": {}}}", args.capture_rate),
            )?
        } else {
            request("DELETE", &rule, "")?
        };
        ensure!(status == 200, "capture {on}: {status} {answer}");
        // The proxy asks every scorer to re-read the rules; give them a moment.
        std::thread::sleep(Duration::from_millis(300));
        Ok(())
    };
    let mut phases: Vec<Phase> = Vec::new();
    let names = ["off", "capture", "trace"];
    for rep in 0..args.reps {
        for k in 0..names.len() {
            let name = names[(k + rep) % names.len()];
            let outcome = match name {
                "off" => run_phase(&a)?,
                "capture" => {
                    capture(true)?;
                    let outcome = run_phase(&a);
                    capture(false)?;
                    outcome?
                }
                _ => run_phase(&b)?,
            };
            phases.push(Phase { name, rep, outcome });
        }
    }
    print_phases(&phases);
    let ratio = |name: &str, of: &dyn Fn(&Phase) -> f64| -> f64 {
        median_ratio(&phases, args.reps, name, "off", of)
    };
    println!();
    for name in ["capture", "trace"] {
        println!(
            "{name} / off, median over {} repetitions: throughput {:.3}, p99 {:.3} (within 5%: throughput ≥ 0.95, p99 ≤ 1.05)",
            args.reps,
            ratio(name, &|p| p.throughput()),
            ratio(name, &|p| p.p99()),
        );
    }
    // What was observed: capture lines (the last batch written within the flush
    // interval) and spans.
    std::thread::sleep(Duration::from_secs(3));
    let mut counters = [0.0; 3];
    for scorer in &a.scorers {
        let metrics = scorer.metrics_blocking();
        for (i, outcome) in ["queued", "dropped", "written"].iter().enumerate() {
            counters[i] +=
                metrics.get(&format!("mm_scorer_capture_total{{outcome=\"{outcome}\"}}"));
        }
    }
    let spans = receiver.spans();
    let traces: std::collections::HashSet<&str> =
        spans.iter().map(|s| s.trace_id.as_str()).collect();
    println!(
        "capture lines: {:.0} queued, {:.0} dropped, {:.0} written; spans received: {} in {} traces",
        counters[0],
        counters[1],
        counters[2],
        spans.len(),
        traces.len()
    );
    drop(b);
    drop(a);
    // The captures and the rules live in the shared store: leave it as it was.
    for dir in ["_captures", "_manymodels"] {
        let dir = store.join(dir);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| dir.display().to_string())?;
        }
    }
    Ok(())
}
