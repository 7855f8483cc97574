//! `cargo xtask bench drain`: one scorer of three leaves under steady realistic traffic
//! (a scale-in, or the first step of a rolling upgrade), with the proxy's drain hand-off
//! (`routing.drain_handoff`) on and off, rounds alternating in one run. The store is the
//! realistic one (`bench replay`: 2,000 real scikit-learn models, 10% of them 5-32 MB
//! forests); each round starts a fresh pool, fills it with the trace's head (closed loop),
//! then sends the rest open loop at `--rate` and gives scorer 0 SIGTERM `--drain-at` into
//! it (it drains for `--drain`, then exits). Compared: the requests due after the SIGTERM
//! (latency percentiles, cold loads counted by the proxy from `x-mm-cache`) against those
//! before it.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use manymodels_policy::trace::{self as policy_trace, Shape, TraceSpec};
use manymodels_tests::{ProxyProcess, ScorerProcess};

use super::replay::{Entry, ensure_store, manifest};
use super::{Job, Sent, drive, drive_each, percentile};

#[derive(Args, Clone, Debug)]
pub struct DrainArgs {
    /// The realistic store (made with `models/make_realistic.py` if it is missing).
    #[arg(long, default_value = ".cache/realistic")]
    store: PathBuf,
    /// Models in the store, when it has to be made.
    #[arg(long, default_value_t = 2_000)]
    models: usize,
    /// Rounds per setting, alternating off, on, off, on, ...
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Requests of the trace's head that fill the pool each round (closed loop, 8
    /// clients, at most `--fill-seconds`) before measuring.
    #[arg(long, default_value_t = 60_000)]
    fill_requests: usize,
    #[arg(long, default_value_t = 120)]
    fill_seconds: u64,
    /// Open-loop requests per second while measuring.
    #[arg(long, default_value_t = 150.0)]
    rate: f64,
    /// How long the open loop runs.
    #[arg(long, default_value_t = 24)]
    seconds: u64,
    /// When scorer 0 gets SIGTERM, from the start of the open loop.
    #[arg(long, default_value_t = 6)]
    drain_at: u64,
    /// Scorer 0's `shutdown.drain` (the chart's `scorer.shutdownDrainSeconds` is 6 s).
    #[arg(long, default_value = "6s")]
    drain: String,
    /// Each scorer's `cache.budget`.
    #[arg(long, default_value = "1536MiB")]
    budget: String,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// What one round measured.
struct Round {
    handoff: bool,
    /// Latencies (sorted) of the requests due before the SIGTERM.
    before: Vec<Duration>,
    /// Latencies (sorted) and failures of those due after it.
    after: (Vec<Duration>, usize),
    /// Cold loads (proxy-counted misses) among the requests after the SIGTERM.
    misses_after: f64,
    drain_routes: f64,
    /// From its SIGTERM until it refused connections.
    exited_after: Duration,
    /// The surviving scorers' peak RSS and its documented bound, in bytes.
    survivors: Vec<(u64, u64)>,
}

/// Sorted latencies and the failures (not 200, or no answer) of `sent`.
fn summary(sent: &[&Sent]) -> (Vec<Duration>, usize) {
    let mut latencies: Vec<Duration> = sent.iter().map(|s| s.latency).collect();
    latencies.sort();
    let failed = sent.iter().filter(|s| s.status != Some(200)).count();
    (latencies, failed)
}

/// One round: a fresh pool with the hand-off on or off, filled, then the open loop with
/// scorer 0 leaving part-way; what the requests after its SIGTERM saw.
fn round(args: &DrainArgs, handoff: bool, trace: &[u32], entries: &[Entry]) -> Result<Round> {
    let budget = manymodels_config::parse_bytes(&args.budget)
        .map_err(anyhow::Error::msg)?
        .bytes();
    let (mut scorers, proxy) = start_pool(args, handoff)?;
    let idle: Vec<u64> = scorers.iter().map(|s| s.rss_bytes()).collect();
    fill(args, &proxy, trace, entries)?;
    let measured = (args.rate * args.seconds as f64) as usize;
    let jobs: Vec<&Entry> = trace
        .iter()
        .skip(args.fill_requests)
        .take(measured)
        .map(|&m| &entries[m as usize])
        .collect();
    let (sent, at_drain) = open_loop_with_drain(args, &proxy, &scorers[0], &jobs)?;
    let status = scorers[0]
        .wait_exit(Duration::from_secs(60))
        .context("scorer 0 did not exit within 60 s of its SIGTERM")?;
    if !status.success() {
        bail!("scorer 0 exited with {status}");
    }
    let metrics = proxy.metrics_blocking();
    let drain_at = Duration::from_secs(args.drain_at);
    let (before, after): (Vec<&Sent>, Vec<&Sent>) =
        sent.iter().partition(|s| due(args, s.job) < drain_at);
    let survivors = scorers[1..]
        .iter()
        .zip(&idle[1..])
        .map(|(s, idle)| (s.peak_rss_bytes(), super::rss_bound(*idle, budget)))
        .collect();
    Ok(Round {
        handoff,
        before: summary(&before).0,
        after: summary(&after),
        survivors,
        misses_after: metrics.get("mm_proxy_scorer_cache_misses_total") - at_drain.misses,
        drain_routes: metrics.get("mm_proxy_drain_routes_total") - at_drain.routes,
        exited_after: at_drain.exited_after,
    })
}

/// Three scorers (with `--budget` and `--drain`) and a proxy with the hand-off on or off.
fn start_pool(args: &DrainArgs, handoff: bool) -> Result<(Vec<ScorerProcess>, ProxyProcess)> {
    let ports = [18_041u16, 18_042, 18_043];
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let sets = [
        format!("cache.budget={}", args.budget),
        format!("shutdown.drain={}", args.drain),
    ];
    let set_refs: Vec<&str> = sets.iter().map(String::as_str).collect();
    let scorers = ports
        .iter()
        .map(|&p| super::scorer(&args.store, p, &set_refs))
        .collect::<Result<Vec<_>>>()?;
    let handoff_set = format!("routing.drain_handoff={handoff}");
    let proxy = super::proxy(18_040, &addrs, &[&handoff_set])?;
    Ok((scorers, proxy))
}

/// Fill: the trace's head, closed loop, as fast as answers come; fails if any request
/// did.
fn fill(args: &DrainArgs, proxy: &ProxyProcess, trace: &[u32], entries: &[Entry]) -> Result<()> {
    let filled = drive(
        proxy.addr(),
        8,
        Duration::from_secs(args.fill_seconds),
        |i| {
            if i >= args.fill_requests {
                return None;
            }
            let entry = &entries[*trace.get(i)? as usize];
            Some(Job {
                path: format!("/v2/models/{}/infer", entry.id),
                body: &entry.body,
                due: None,
            })
        },
    )?;
    if filled.failed > 0 {
        bail!("{} requests failed while filling the pool", filled.failed);
    }
    Ok(())
}

/// When open-loop job `job` is due, from the start of the open loop.
fn due(args: &DrainArgs, job: usize) -> Duration {
    Duration::from_secs_f64(job as f64 / args.rate)
}

/// The proxy's counters at scorer 0's SIGTERM, and how long it took to stop listening.
struct AtDrain {
    misses: f64,
    routes: f64,
    exited_after: Duration,
}

/// The open loop over `jobs` with `departing` sent SIGTERM `--drain-at` into it: every
/// request sent, and the proxy's counters at the SIGTERM.
fn open_loop_with_drain(
    args: &DrainArgs,
    proxy: &ProxyProcess,
    departing: &ScorerProcess,
    jobs: &[&Entry],
) -> Result<(Vec<Sent>, AtDrain)> {
    let drain_at = Duration::from_secs(args.drain_at);
    let at_drain = Mutex::new(None);
    let (sent, _) = std::thread::scope(|scope| {
        scope.spawn(|| {
            *at_drain.lock().unwrap() = Some(terminate_and_watch(proxy, departing, drain_at));
        });
        // Open loop: job i is due i / rate after the start, whoever is free sends it.
        drive_each(
            proxy.addr(),
            32,
            Duration::from_secs(args.seconds + 60),
            |i| {
                let entry = jobs.get(i)?;
                Some(Job {
                    path: format!("/v2/models/{}/infer", entry.id),
                    body: &entry.body,
                    due: Some(due(args, i)),
                })
            },
        )
    })?;
    let at_drain = at_drain
        .into_inner()
        .unwrap()
        .context("the open loop ended before the SIGTERM")?;
    Ok((sent, at_drain))
}

/// After `drain_at`: reads the proxy's counters, sends `departing` SIGTERM and waits (at
/// most 60 s) until it refuses connections.
fn terminate_and_watch(
    proxy: &ProxyProcess,
    departing: &ScorerProcess,
    drain_at: Duration,
) -> AtDrain {
    std::thread::sleep(drain_at);
    let metrics = proxy.metrics_blocking();
    let counters = (
        metrics.get("mm_proxy_scorer_cache_misses_total"),
        metrics.get("mm_proxy_drain_routes_total"),
    );
    departing.send_term();
    // Its drain, then its in-flight requests.
    let sent = Instant::now();
    while sent.elapsed() < Duration::from_secs(60)
        && std::net::TcpStream::connect(departing.addr()).is_ok()
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    AtDrain {
        misses: counters.0,
        routes: counters.1,
        exited_after: sent.elapsed(),
    }
}

pub fn run(args: DrainArgs) -> Result<()> {
    ensure_store(&args.store, args.models)?;
    let entries = manifest(&args.store)?;
    let trace: Vec<u32> = policy_trace::generate(&TraceSpec {
        shape: Shape::Zipf(1.0),
        models: entries.len(),
        requests: args.fill_requests + (args.rate * args.seconds as f64) as usize,
        rate: args.rate,
        seed: args.seed,
    })
    .into_iter()
    .map(|r| r.model)
    .collect();
    println!(
        "store: {} ({} models); trace: zipf-1.0, seed {}; each round: a fresh pool (proxy + 3 scorers, budget {} each), filled with the trace's first {} requests (8 closed-loop clients), then {} req/s open loop for {} s (32 clients) over the next; scorer 0 gets SIGTERM at {} s and drains for {}.",
        args.store.display(),
        entries.len(),
        args.seed,
        args.budget,
        args.fill_requests,
        args.rate,
        args.seconds,
        args.drain_at,
        args.drain
    );
    println!("Every process (proxy, scorers, client) shares this machine's 2 cores.\n");
    let mut rounds = Vec::new();
    for r in 0..args.rounds * 2 {
        let handoff = r % 2 == 1;
        let result = round(&args, handoff, &trace, &entries)?;
        eprintln!(
            "round {}: hand-off {}: {} cold loads after the SIGTERM",
            r + 1,
            if handoff { "on" } else { "off" },
            result.misses_after
        );
        rounds.push(result);
    }
    println!(
        "| hand-off | requests after SIGTERM | failed | cold loads | served while draining | p50 | p99 | p99.9 | max | p99 before SIGTERM | scorer 0 stopped listening after | survivors' peak RSS / bound |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rounds {
        let (after, failed) = &r.after;
        let before = &r.before;
        let rss: Vec<String> = r
            .survivors
            .iter()
            .map(|(peak, bound)| {
                format!("{:.0} / {:.0} MB", *peak as f64 / 1e6, *bound as f64 / 1e6)
            })
            .collect();
        println!(
            "| {} | {} | {} | {:.0} | {:.0} | {:.2} ms | {:.1} ms | {:.1} ms | {:.0} ms | {:.1} ms | {:.1} s | {} |",
            if r.handoff { "on" } else { "off" },
            after.len(),
            failed,
            r.misses_after,
            r.drain_routes,
            percentile(after, 0.5) / 1e3,
            percentile(after, 0.99) / 1e3,
            percentile(after, 0.999) / 1e3,
            percentile(after, 1.0) / 1e3,
            percentile(before, 0.99) / 1e3,
            r.exited_after.as_secs_f64(),
            rss.join(", "),
        );
    }
    // Pair by pair (off then on), as farm-bench pairs runs on a noisy machine.
    println!();
    for pair in rounds.chunks(2) {
        if let [off, on] = pair {
            let (a, b) = (&off.after.0, &on.after.0);
            println!(
                "pair: on / off after the SIGTERM: cold loads {:.2}x, p99 {:.2}x, p99.9 {:.2}x",
                on.misses_after / off.misses_after.max(1.0),
                percentile(b, 0.99) / percentile(a, 0.99),
                percentile(b, 0.999) / percentile(a, 0.999),
            );
        }
    }
    Ok(())
}
