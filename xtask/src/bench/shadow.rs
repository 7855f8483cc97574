//! `cargo xtask bench shadow`: what a shadow costs the live answers it rides on. One pool
//! (a proxy and two scorers, production defaults) over a store whose every id has two
//! versions of the demo model `linear-small` (version 1 pinned live, version 2 the
//! candidate), all in memory after a warm-up, so each request is a hot hit.
//!
//! Each repetition runs two phases of the same Zipf 1.0 stream from closed-loop clients,
//! in alternating order: `off` (no shadow) and `shadow` (a shadow of version 2 on
//! `--percent` of every id's requests, set through the proxy's admin API before the phase
//! and dropped after it). The live answers' throughput and p99 in `shadow` are compared
//! with the `off` of the same repetition, as ratios; the median ratio is the figure. The
//! pool and the load generator share this machine's cores.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, ensure};
use manymodels_policy::trace::{self as policy_trace, Shape, TraceSpec};
use manymodels_tests::ScorerProcess;
use manymodels_tests::http::request;
use manymodels_tests::process::ProxyProcess;
use manymodels_tests::reference::{one_row_body, reference};

use super::observe::{Phase, median_ratio, print_phases};
use super::{Job, Outcome, drive};
use crate::setup;

/// The proxy, then the scorers (no other bench uses 18_160-18_162).
const PORTS: [u16; 3] = [18_160, 18_161, 18_162];

#[derive(clap::Args, Clone, Debug)]
pub struct ShadowArgs {
    /// Distinct model ids, each with a shadow in the shadow phase.
    #[arg(long, default_value_t = 200)]
    ids: usize,
    /// Requests per phase.
    #[arg(long, default_value_t = 40_000)]
    requests: usize,
    /// Repetitions of the two phases.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Closed-loop clients.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// The shadow's share of each model's requests.
    #[arg(long, default_value_t = 20.0)]
    percent: f64,
}

fn id_of(i: usize) -> String {
    format!("sh-{i:05}")
}

/// `.cache/bench-shadow-<ids>`: every id with versions 1 and 2 (symlinks to the demo
/// model) and version 1 pinned.
fn ensure_store(ids: usize) -> Result<PathBuf> {
    let root = setup::workspace_root();
    let store = root.join(format!(".cache/bench-shadow-{ids}"));
    let model = root.join("models/demo/linear-small/1/model.onnx");
    if store.join(id_of(ids - 1)).join("alias.json").exists() {
        return Ok(store);
    }
    if store.exists() {
        std::fs::remove_dir_all(&store)?;
    }
    for i in 0..ids {
        let dir = store.join(id_of(i));
        for v in ["1", "2"] {
            std::fs::create_dir_all(dir.join(v))?;
            std::os::unix::fs::symlink(&model, dir.join(v).join("model.onnx"))?;
        }
        std::fs::write(dir.join("alias.json"), r#"{"pinned": 1}"#)?;
    }
    Ok(store)
}

pub fn run(args: ShadowArgs) -> Result<()> {
    ensure!(
        args.reps > 0 && args.requests > 0 && args.ids > 0,
        "--reps, --requests and --ids must be positive"
    );
    let store = ensure_store(args.ids)?;
    let scorers: Vec<ScorerProcess> = PORTS[1..]
        .iter()
        .map(|&port| super::scorer(&store, port, &[]))
        .collect::<Result<_>>()?;
    let addrs: Vec<&str> = scorers.iter().map(|s| s.addr()).collect();
    let proxy: ProxyProcess = super::proxy(PORTS[0], &addrs, &[])?;
    println!(
        "`cargo xtask bench shadow --ids {} --requests {} --reps {} --concurrency {} --percent {}`\n",
        args.ids, args.requests, args.reps, args.concurrency, args.percent
    );
    println!(
        "One pool (proxy + 2 scorers, production defaults), every id `linear-small` at versions 1 (live) and 2 (the candidate), all in memory; {} closed-loop clients, {} requests per phase, Zipf 1.0 over {} ids. The pool and the load generator share this machine's {} cores.\n",
        args.concurrency,
        args.requests,
        args.ids,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let body = one_row_body(&reference("linear-small")).to_string();
    let paths: Vec<String> = (0..args.ids)
        .map(|i| format!("/v2/models/{}/infer", id_of(i)))
        .collect();
    let stream: Vec<u32> = policy_trace::generate(&TraceSpec {
        shape: Shape::Zipf(1.0),
        models: args.ids,
        requests: args.requests,
        rate: 1_000.0,
        seed: 5,
    })
    .into_iter()
    .map(|r| r.model)
    .collect();
    let run_phase = |sweep: bool| -> Result<Outcome> {
        let outcome = drive(
            proxy.addr(),
            args.concurrency,
            Duration::from_secs(300),
            |i| {
                let m = if sweep {
                    (i < args.ids).then_some(i)?
                } else {
                    *stream.get(i)? as usize
                };
                Some(Job {
                    path: paths[m].clone(),
                    body: &body,
                    due: None,
                })
            },
        )?;
        ensure!(outcome.failed == 0, "{} requests failed", outcome.failed);
        Ok(outcome)
    };
    let shadows = |on: bool| -> Result<()> {
        for i in 0..args.ids {
            let url = format!("{}/v2/admin/models/{}/shadow", proxy.url, id_of(i));
            let (status, answer) = if on {
                request(
                    "PUT",
                    &url,
                    &format!("{{\"version\": 2, \"percent\": {}}}", args.percent),
                )?
            } else {
                request("DELETE", &url, "")?
            };
            ensure!(
                status == 200,
                "shadow {on} on {}: {status} {answer}",
                id_of(i)
            );
        }
        // The proxy asks every scorer to look now; give them a moment.
        std::thread::sleep(Duration::from_millis(500));
        Ok(())
    };
    // Warm: every id once, the candidates loaded by a first shadow phase, then the stream.
    run_phase(true)?;
    shadows(true)?;
    run_phase(false)?;
    shadows(false)?;
    run_phase(false)?;
    let mut phases: Vec<Phase> = Vec::new();
    for rep in 0..args.reps {
        for k in 0..2 {
            let name = ["off", "shadow"][(k + rep) % 2];
            let outcome = if name == "shadow" {
                shadows(true)?;
                let outcome = run_phase(false);
                shadows(false)?;
                outcome?
            } else {
                run_phase(false)?
            };
            phases.push(Phase { name, rep, outcome });
        }
    }
    print_phases(&phases);
    let ratio = |of: &dyn Fn(&Phase) -> f64| -> f64 {
        median_ratio(&phases, args.reps, "shadow", "off", of)
    };
    println!(
        "\nshadow / off, median over {} repetitions: throughput {:.3}, p99 {:.3} (within 5%: throughput ≥ 0.95, p99 ≤ 1.05)",
        args.reps,
        ratio(&|p| p.throughput()),
        ratio(&|p| p.p99()),
    );
    let mut runs = [0.0; 4];
    for scorer in &scorers {
        let metrics = scorer.metrics_blocking();
        for (i, outcome) in ["agreed", "disagreed", "error", "skipped"]
            .iter()
            .enumerate()
        {
            runs[i] += metrics.get(&format!(
                "mm_scorer_shadow_runs_total{{outcome=\"{outcome}\"}}"
            ));
        }
    }
    let shadowed: usize = phases
        .iter()
        .filter(|p| p.name == "shadow")
        .map(|p| p.outcome.requests)
        .sum();
    println!(
        "shadow runs (warm-up included): {:.0} agreed, {:.0} disagreed, {:.0} errors, {:.0} skipped; {} live requests in the measured shadow phases",
        runs[0], runs[1], runs[2], runs[3], shadowed
    );
    drop(proxy);
    drop(scorers);
    std::fs::remove_dir_all(store.join("_manymodels")).ok();
    Ok(())
}
