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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use manymodels_policy::trace::{self as policy_trace, Shape, TraceSpec};
use manymodels_tests::http::KeepAlive;

use super::replay::{Entry, ensure_store, manifest};
use super::{Job, drive, percentile};

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

/// One request of the open loop.
struct Sent {
    due: Duration,
    latency: Duration,
    ok: bool,
}

/// What one round measured.
struct Round {
    handoff: bool,
    before: Vec<Sent>,
    after: Vec<Sent>,
    /// Cold loads (proxy-counted misses) among the requests after the SIGTERM.
    misses_after: f64,
    drain_routes: f64,
    /// From its SIGTERM until it refused connections.
    exited_after: Duration,
}

/// Sends `jobs` open loop: job `i` is due at `i / rate` from the start; `clients` blocking
/// keep-alive connections take them in order. `at` runs once, on its own thread, at
/// `at_offset`.
fn open_loop(
    addr: &str,
    jobs: &[&Entry],
    rate: f64,
    clients: usize,
    at_offset: Duration,
    at: impl FnOnce() + Send,
) -> Result<Vec<Sent>> {
    let next = AtomicUsize::new(0);
    let sent = Mutex::new(Vec::with_capacity(jobs.len()));
    let started = Instant::now();
    std::thread::scope(|scope| -> Result<()> {
        scope.spawn(move || {
            std::thread::sleep(at_offset);
            at();
        });
        let workers: Vec<_> = (0..clients)
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    let mut client = KeepAlive::connect(addr)?;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(entry) = jobs.get(i) else {
                            return Ok(());
                        };
                        let due = Duration::from_secs_f64(i as f64 / rate);
                        if let Some(wait) = due.checked_sub(started.elapsed()) {
                            std::thread::sleep(wait);
                        }
                        let path = format!("/v2/models/{}/infer", entry.id);
                        let sent_at = Instant::now();
                        let (ok, latency) = match client.post(&path, &entry.body) {
                            Ok((status, latency)) => (status == 200, latency),
                            Err(_) => {
                                let latency = sent_at.elapsed();
                                client = KeepAlive::connect(addr)?;
                                (false, latency)
                            }
                        };
                        sent.lock().unwrap().push(Sent { due, latency, ok });
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().expect("load client")?;
        }
        Ok(())
    })?;
    let mut sent = sent.into_inner().unwrap();
    sent.sort_by_key(|s| s.due);
    Ok(sent)
}

fn round(args: &DrainArgs, handoff: bool, trace: &[u32], entries: &[Entry]) -> Result<Round> {
    let ports = [18_041u16, 18_042, 18_043];
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let sets = [
        format!("cache.budget={}", args.budget),
        format!("shutdown.drain={}", args.drain),
    ];
    let set_refs: Vec<&str> = sets.iter().map(String::as_str).collect();
    let mut scorers = ports
        .iter()
        .map(|&p| super::scorer(&args.store, p, &set_refs))
        .collect::<Result<Vec<_>>>()?;
    let handoff_set = format!("routing.drain_handoff={handoff}");
    let proxy = super::proxy(18_040, &addrs, &[&handoff_set])?;
    // Fill: the trace's head, closed loop, as fast as answers come.
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
    let measured = (args.rate * args.seconds as f64) as usize;
    if filled.failed > 0 {
        bail!("{} requests failed while filling the pool", filled.failed);
    }
    let jobs: Vec<&Entry> = trace
        .iter()
        .skip(args.fill_requests)
        .take(measured)
        .map(|&m| &entries[m as usize])
        .collect();
    let drain_at = Duration::from_secs(args.drain_at);
    // The proxy's counters and the time when scorer 0 got SIGTERM.
    let at_drain = Mutex::new(None);
    let departing = &scorers[0];
    let sent = open_loop(proxy.addr(), &jobs, args.rate, 32, drain_at, || {
        let metrics = proxy.metrics_blocking();
        let counters = (
            metrics.get("mm_proxy_scorer_cache_misses_total"),
            metrics.get("mm_proxy_drain_routes_total"),
        );
        departing.send_term();
        // When it stopped taking connections: its drain, then its in-flight requests.
        let sent = Instant::now();
        while sent.elapsed() < Duration::from_secs(60)
            && std::net::TcpStream::connect(departing.addr()).is_ok()
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        *at_drain.lock().unwrap() = Some((counters.0, counters.1, sent.elapsed()));
    })?;
    let (misses_before, routes_before, exited_after) = at_drain
        .into_inner()
        .unwrap()
        .context("the open loop ended before the SIGTERM")?;
    let status = scorers[0]
        .wait_exit(Duration::from_secs(60))
        .context("scorer 0 did not exit within 60 s of its SIGTERM")?;
    if !status.success() {
        bail!("scorer 0 exited with {status}");
    }
    let metrics = proxy.metrics_blocking();
    let (before, after): (Vec<Sent>, Vec<Sent>) = sent.into_iter().partition(|s| s.due < drain_at);
    Ok(Round {
        handoff,
        before,
        after,
        misses_after: metrics.get("mm_proxy_scorer_cache_misses_total") - misses_before,
        drain_routes: metrics.get("mm_proxy_drain_routes_total") - routes_before,
        exited_after,
    })
}

fn latencies(sent: &[Sent]) -> Vec<Duration> {
    let mut l: Vec<Duration> = sent.iter().map(|s| s.latency).collect();
    l.sort();
    l
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
        "| hand-off | requests after SIGTERM | failed | cold loads | served while draining | p50 | p99 | p99.9 | max | p99 before SIGTERM | scorer 0 stopped listening after |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rounds {
        let after = latencies(&r.after);
        let before = latencies(&r.before);
        println!(
            "| {} | {} | {} | {:.0} | {:.0} | {:.2} ms | {:.1} ms | {:.1} ms | {:.0} ms | {:.1} ms | {:.1} s |",
            if r.handoff { "on" } else { "off" },
            r.after.len(),
            r.after.iter().filter(|s| !s.ok).count(),
            r.misses_after,
            r.drain_routes,
            percentile(&after, 0.5) / 1e3,
            percentile(&after, 0.99) / 1e3,
            percentile(&after, 0.999) / 1e3,
            percentile(&after, 1.0) / 1e3,
            percentile(&before, 0.99) / 1e3,
            r.exited_after.as_secs_f64(),
        );
    }
    // Pair by pair (off then on), as farm-bench pairs runs on a noisy machine.
    println!();
    for pair in rounds.chunks(2) {
        if let [off, on] = pair {
            let (a, b) = (latencies(&off.after), latencies(&on.after));
            println!(
                "pair: on / off after the SIGTERM: cold loads {:.2}x, p99 {:.2}x, p99.9 {:.2}x",
                on.misses_after / off.misses_after.max(1.0),
                percentile(&b, 0.99) / percentile(&a, 0.99),
                percentile(&b, 0.999) / percentile(&a, 0.999),
            );
        }
    }
    Ok(())
}
