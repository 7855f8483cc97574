//! `cargo xtask bench tenants`: noisy neighbours through a real proxy and scorer. Tenant B
//! sends steady Zipf(1.0) traffic over its 500 small models from a few keep-alive clients;
//! tenant A scans 5,000 cold models as fast as its clients can, marked
//! `x-mm-priority: batch`. The scorer's budget holds B's models and a quarter more, not
//! A's scan as well. Four phases, each on freshly started processes: B alone; B beside A
//! with B's floor (`tenants.shares`); B beside A without shares; B beside A with B's floor
//! and A's key held to `--a-rate` requests per second at the proxy (`limits.rate`; A's
//! clients wait out each 429's `Retry-After`). Each tenant has its own scoped key in every
//! phase. B's hit ratio comes from each answer's `x-mm-cache` header, its latency from the
//! client.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use manymodels_contract::route;
use manymodels_policy::trace::Rng;
use manymodels_tests::reference::{LINEAR_SMALL_ROW, rows_body};
use manymodels_tests::write_model;

use super::percentile;

#[derive(clap::Args, Clone, Debug)]
pub struct TenantsArgs {
    /// Tenant B's models.
    #[arg(long, default_value_t = 500)]
    b_models: usize,
    /// Tenant A's models, scanned in order, round after round.
    #[arg(long, default_value_t = 5_000)]
    a_models: usize,
    /// Tenant B's measured requests per phase (after its warm-up).
    #[arg(long, default_value_t = 30_000)]
    requests: usize,
    /// Tenant B's clients (closed loop, keep-alive).
    #[arg(long, default_value_t = 2)]
    b_clients: usize,
    /// Tenant A's clients (closed loop, keep-alive, `x-mm-priority: batch`).
    #[arg(long, default_value_t = 2)]
    a_clients: usize,
    /// Requests A sends per model before the next (a batch scoring a few records each).
    #[arg(long, default_value_t = 3)]
    a_repeats: usize,
    /// The scorer's budget as a multiple of B's models' bytes.
    #[arg(long, default_value_t = 1.25)]
    budget: f64,
    /// B's floor with shares on (of the budget).
    #[arg(long, default_value_t = 0.8)]
    floor: f64,
    /// The fourth phase's request rate for A's key (`limits.rate`, per second): A's scan
    /// beside B with B's floor and A's key limited, A's clients waiting out each 429's
    /// `Retry-After` as a well-behaved client does.
    #[arg(long, default_value_t = 50.0)]
    a_rate: f64,
    /// Rounds of the four phases, one after another; the ratios to B alone are taken
    /// within each round and their median reported (one run's p99 on two shared cores is
    /// mostly noise).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Longest a phase's measurement may take.
    #[arg(long, default_value_t = 120)]
    seconds: u64,
}

const SCORER_PORT: u16 = 18_160;
const PROXY_PORT: u16 = 18_161;

/// What one of B's clients measured: requests sent, hits, failures, and the latencies of
/// the answered ones.
type Measured = (usize, usize, usize, Vec<Duration>);

/// What one phase measured of tenant B (and of A, when it ran).
struct Phase {
    label: String,
    b_requests: usize,
    b_hits: usize,
    b_failed: usize,
    latencies: Vec<Duration>,
    a_requests: usize,
    a_failed: usize,
    /// A's requests refused 429 by its key's rate limit.
    a_limited: usize,
    elapsed: Duration,
    /// From the scorer's `/v2/mm/cache` at the end: B's resident bytes, and loads by
    /// priority (interactive, batch).
    b_resident: u64,
    loads: (u64, u64),
}

impl Phase {
    fn hit_ratio(&self) -> f64 {
        self.b_hits as f64 / self.b_requests.max(1) as f64
    }
}

pub fn run(args: TenantsArgs) -> Result<()> {
    let scratch = std::env::temp_dir().join(format!("mm-bench-tenants-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let model = std::fs::read("models/demo/linear-small/1/model.onnx")
        .context("the demo models (cargo xtask up)")?;
    for i in 0..args.b_models {
        write_model(&scratch, &b_id(i), 1, &model)?;
    }
    for i in 0..args.a_models {
        write_model(&scratch, &a_id(i), 1, &model)?;
    }
    let body = rows_body(&[LINEAR_SMALL_ROW.to_vec()]).to_string();
    // One model's charged weight, to size the budget: loaded alone on a roomy scorer.
    let weight = {
        let scorer = super::scorer(&scratch, SCORER_PORT, &["cache.budget=256MiB"])?;
        let mut client = Client::connect(&scorer.url, None, B_KEY)?;
        client.infer(&b_id(0), &body)?;
        let explain = get_json(&format!("{}{}", scorer.url, route::CACHE_EXPLAIN))?;
        explain["cache"]["resident_bytes"].as_u64().unwrap_or(0)
    };
    if weight == 0 {
        bail!("could not read a model's weight from /v2/mm/cache");
    }
    let b_bytes = weight * args.b_models as u64;
    let budget = (b_bytes as f64 * args.budget) as u64;
    let shares = format!("tenants.shares=b=b-:floor={},a=a-", args.floor);
    println!(
        "One release scorer behind one release proxy; models are the demo linear-small ({weight} bytes charged each). Tenant B: Zipf(1.0) over {} models from {} keep-alive clients, {} measured requests per phase after a warm-up (one pass over B's models, then {} Zipf requests). Tenant A: {} keep-alive clients scanning {} cold models, {} requests per model, `x-mm-priority: batch`, for as long as B is measured. Budget {budget} bytes ({:.2}x B's models; A's scan is {:.0}x B's); max_concurrent_loads 2, batch_load_share 0.5. CPU: this machine's {} cores, shared with the clients and with other work on the machine.\n",
        args.b_models,
        args.b_clients,
        args.requests,
        args.requests / 4,
        args.a_clients,
        args.a_models,
        args.a_repeats,
        args.budget,
        args.a_models as f64 / args.b_models as f64,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let mut phases = Vec::new();
    let limited = format!("B + A scan, B floor, A's key {}/s", args.a_rate);
    for (label, scan, sets, a_rate) in std::iter::repeat_n(
        [
            ("B alone (shares on)", false, Some(shares.as_str()), None),
            ("B + A scan, B floor", true, Some(shares.as_str()), None),
            ("B + A scan, no shares", true, None, None),
            (
                limited.as_str(),
                true,
                Some(shares.as_str()),
                Some(args.a_rate),
            ),
        ],
        args.rounds,
    )
    .flatten()
    {
        phases.push(phase(
            &args, &scratch, &body, budget, label, scan, sets, a_rate,
        )?);
    }
    println!(
        "| phase | B requests | B hit ratio | B p50 | B p99 | B failed | A requests | A failed | A refused 429 | B resident at end | loads interactive / batch | seconds |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for p in &phases {
        println!(
            "| {} | {} | {:.4} | {:.0} µs | {:.0} µs | {} | {} | {} | {} | {:.2}x B's set | {} / {} | {:.1} |",
            p.label,
            p.b_requests,
            p.hit_ratio(),
            percentile(&p.latencies, 0.5),
            percentile(&p.latencies, 0.99),
            p.b_failed,
            p.a_requests,
            p.a_failed,
            p.a_limited,
            p.b_resident as f64 / b_bytes as f64,
            p.loads.0,
            p.loads.1,
            p.elapsed.as_secs_f64(),
        );
    }
    println!(
        "\nAgainst B alone in the same round, median over {} rounds [each round's] (target: with the floor within 5% on hit ratio and p99):",
        args.rounds
    );
    for k in 1..4 {
        let mut hit = Vec::new();
        let mut p50 = Vec::new();
        let mut p99 = Vec::new();
        for round in phases.chunks(4) {
            let (alone, p) = (&round[0], &round[k]);
            hit.push(p.hit_ratio() / alone.hit_ratio());
            p50.push(percentile(&p.latencies, 0.5) / percentile(&alone.latencies, 0.5));
            p99.push(percentile(&p.latencies, 0.99) / percentile(&alone.latencies, 0.99));
        }
        let show = |mut v: Vec<f64>| {
            let each: Vec<String> = v.iter().map(|x| format!("{x:.2}")).collect();
            v.sort_by(f64::total_cmp);
            format!("{:.3}x [{}]", v[v.len() / 2], each.join(", "))
        };
        println!(
            "  {:<36} hit ratio {}  p50 {}  p99 {}",
            phases[k].label,
            show(hit),
            show(p50),
            show(p99),
        );
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

fn b_id(i: usize) -> String {
    format!("b-{i:04}")
}

fn a_id(i: usize) -> String {
    format!("a-{i:05}")
}

/// The tenants' keys at the proxy (every phase: the key check costs B the same in each).
const A_KEY: &str = "tenant-a-key";
const B_KEY: &str = "tenant-b-key";

/// One phase on a fresh scorer and proxy: B warms up, then B is measured while A scans
/// (when `scan`), A's key limited to `a_rate` requests per second when given.
#[expect(clippy::too_many_arguments, reason = "one bench's phase knobs")]
fn phase(
    args: &TenantsArgs,
    store: &Path,
    body: &str,
    budget: u64,
    label: &str,
    scan: bool,
    shares: Option<&str>,
    a_rate: Option<f64>,
) -> Result<Phase> {
    let budget_set = format!("cache.budget={budget}");
    let mut sets = vec![
        budget_set.as_str(),
        "cache.max_concurrent_loads=2",
        "cache.batch_load_share=0.5",
    ];
    sets.extend(shares);
    let scorer = super::scorer(store, SCORER_PORT, &sets)?;
    let scorer_addr = scorer.url.trim_start_matches("http://").to_string();
    let keys = format!("auth.api_keys=a:{A_KEY}:a-,b:{B_KEY}:b-");
    let rate = a_rate.map(|r| format!("limits.rate=a={r}"));
    let mut proxy_sets = vec![keys.as_str()];
    proxy_sets.extend(rate.as_deref());
    let proxy = super::proxy(PROXY_PORT, &[scorer_addr.as_str()], &proxy_sets)?;
    let url = proxy.url.clone();
    // B's requests: a seeded Zipf(1.0) sequence over its models (rank = index).
    let zipf = Zipf::new(args.b_models);
    let mut rng = Rng::new(42);
    let warm = args.requests / 4;
    let sequence: Vec<usize> = (0..warm + args.requests)
        .map(|_| zipf.sample(&mut rng))
        .collect();
    // Warm-up: every B model once, then a quarter of the measured count.
    {
        let mut client = Client::connect(&url, None, B_KEY)?;
        for i in 0..args.b_models {
            client.infer(&b_id(i), body)?;
        }
        let next = AtomicUsize::new(0);
        run_clients(args.b_clients, &url, None, B_KEY, |client| {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= warm {
                    return Ok(());
                }
                client.infer(&b_id(sequence[i]), body)?;
            }
        })?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let a_sent = Arc::new(AtomicUsize::new(0));
    let a_failed = Arc::new(AtomicUsize::new(0));
    let a_limited = Arc::new(AtomicUsize::new(0));
    let limit = Duration::from_secs(args.seconds);
    let b_next = AtomicUsize::new(warm);
    let started = Instant::now();
    let results = std::thread::scope(|scope| -> Result<Vec<Measured>> {
        if scan {
            let next = Arc::new(AtomicUsize::new(0));
            for _ in 0..args.a_clients {
                let (stop, next, a_sent, a_failed, a_limited, url) = (
                    stop.clone(),
                    next.clone(),
                    a_sent.clone(),
                    a_failed.clone(),
                    a_limited.clone(),
                    url.clone(),
                );
                scope.spawn(move || -> Result<()> {
                    let mut client = Client::connect(&url, Some("batch"), A_KEY)?;
                    while !stop.load(Ordering::Relaxed) && started.elapsed() < limit {
                        let i = next.fetch_add(1, Ordering::Relaxed) % args.a_models;
                        let mut repeats = 0;
                        while repeats < args.a_repeats && !stop.load(Ordering::Relaxed) {
                            let (status, _, _) = client.infer(&a_id(i), body)?;
                            a_sent.fetch_add(1, Ordering::Relaxed);
                            if status == 429 {
                                // `Retry-After` is whole seconds, at least 1; the proxy
                                // closes a connection whose body it did not read.
                                a_limited.fetch_add(1, Ordering::Relaxed);
                                std::thread::sleep(Duration::from_secs(1));
                                client = Client::connect(&url, Some("batch"), A_KEY)?;
                                continue;
                            }
                            if status != 200 {
                                a_failed.fetch_add(1, Ordering::Relaxed);
                            }
                            repeats += 1;
                        }
                    }
                    Ok(())
                });
            }
            // Let the scan get going before B is measured.
            std::thread::sleep(Duration::from_secs(2));
        }
        let end = warm + args.requests;
        let measured: Vec<_> = (0..args.b_clients)
            .map(|_| {
                let (next, url, sequence) = (&b_next, url.clone(), &sequence);
                scope.spawn(move || -> Result<Measured> {
                    let mut client = Client::connect(&url, None, B_KEY)?;
                    let (mut sent, mut hits, mut failed) = (0, 0, 0);
                    let mut latencies = Vec::new();
                    while started.elapsed() < limit {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= end {
                            break;
                        }
                        let (status, hit, latency) = client.infer(&b_id(sequence[i]), body)?;
                        sent += 1;
                        if status == 200 {
                            latencies.push(latency);
                            hits += usize::from(hit);
                        } else {
                            failed += 1;
                        }
                    }
                    Ok((sent, hits, failed, latencies))
                })
            })
            .collect();
        let out = measured
            .into_iter()
            .map(|m| m.join().expect("B client"))
            .collect::<Result<Vec<_>>>();
        stop.store(true, Ordering::Relaxed);
        out
    })?;
    let elapsed = started.elapsed();
    let mut latencies: Vec<Duration> = results.iter().flat_map(|r| r.3.clone()).collect();
    latencies.sort();
    // The explain view: the summary's fields, flattened, and the residents.
    let explain = get_json(&format!("{}{}", scorer.url, route::CACHE_EXPLAIN))?;
    let cache = &explain["cache"];
    let summary = cache;
    let b_resident = summary["tenants"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["name"] == "b"))
        .and_then(|t| t["resident_bytes"].as_u64())
        .unwrap_or_else(|| {
            // Without shares the view has no tenants: count B's residents.
            cache["resident"]
                .as_array()
                .map(|r| {
                    r.iter()
                        .filter(|m| m["model"].as_str().is_some_and(|id| id.starts_with("b-")))
                        .filter_map(|m| m["bytes"].as_u64())
                        .sum()
                })
                .unwrap_or(0)
        });
    let loads = (
        summary["loads_by_priority"]["interactive"]
            .as_u64()
            .unwrap_or(0),
        summary["loads_by_priority"]["batch"].as_u64().unwrap_or(0),
    );
    drop(proxy);
    drop(scorer);
    Ok(Phase {
        label: label.to_string(),
        b_requests: results.iter().map(|r| r.0).sum(),
        b_hits: results.iter().map(|r| r.1).sum(),
        b_failed: results.iter().map(|r| r.2).sum(),
        latencies,
        a_requests: a_sent.load(Ordering::Relaxed),
        a_failed: a_failed.load(Ordering::Relaxed),
        a_limited: a_limited.load(Ordering::Relaxed),
        elapsed,
        b_resident,
        loads,
    })
}

/// Runs `work` on `clients` threads, each with its own keep-alive client.
fn run_clients(
    clients: usize,
    url: &str,
    priority: Option<&str>,
    key: &str,
    work: impl Fn(&mut Client) -> Result<()> + Sync,
) -> Result<()> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    let mut client = Client::connect(url, priority, key)?;
                    work(&mut client)
                })
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().expect("client"))
    })
}

/// Samples ranks 0..n with P(k) ∝ 1 / (k + 1).
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize) -> Self {
        let mut sum = 0.0;
        let mut cdf: Vec<f64> = (0..n)
            .map(|k| {
                sum += 1.0 / (k + 1) as f64;
                sum
            })
            .collect();
        for c in &mut cdf {
            *c /= sum;
        }
        Zipf { cdf }
    }

    fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.unit();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }
}

/// A keep-alive client that reads the `x-mm-cache` answer header (the harness's
/// `KeepAlive` keeps only the status).
struct Client {
    host: String,
    extra: String,
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    line: String,
    payload: Vec<u8>,
}

impl Client {
    /// Connects to `url` (`http://127.0.0.1:PORT`), sending `key` as its bearer key and
    /// `x-mm-priority: priority` with every request when given.
    fn connect(url: &str, priority: Option<&str>, key: &str) -> Result<Self> {
        let host = url.trim_start_matches("http://").to_string();
        let stream = TcpStream::connect(&host)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Client {
            extra: priority.map_or_else(String::new, |p| {
                format!("{}: {p}\r\n", manymodels_contract::header::PRIORITY)
            }) + &format!("Authorization: Bearer {key}\r\n"),
            host,
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            line: String::new(),
            payload: Vec::new(),
        })
    }

    /// One inference request for `model`: its status, whether it was a hit, its time.
    fn infer(&mut self, model: &str, body: &str) -> Result<(u16, bool, Duration)> {
        let started = Instant::now();
        write!(
            self.writer,
            "POST /v2/models/{model}/infer HTTP/1.1\r\nHost: {}\r\n{}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            self.extra,
            body.len()
        )?;
        let (mut length, mut status, mut hit) = (0usize, 0u16, false);
        loop {
            self.line.clear();
            if self.reader.read_line(&mut self.line)? == 0 {
                bail!("the connection closed");
            }
            let lower = self.line.to_ascii_lowercase();
            if let Some(rest) = self.line.strip_prefix("HTTP/1.1 ") {
                status = rest.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
            } else if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse()?;
            } else if let Some(v) =
                lower.strip_prefix(&format!("{}:", manymodels_contract::header::CACHE))
            {
                hit = v.trim() == manymodels_contract::Lookup::Hit.as_str();
            } else if self.line == "\r\n" {
                break;
            }
        }
        self.payload.resize(length, 0);
        std::io::Read::read_exact(&mut self.reader, &mut self.payload)?;
        Ok((status, hit, started.elapsed()))
    }
}

fn get_json(url: &str) -> Result<serde_json::Value> {
    let (status, text) = manymodels_tests::http::request("GET", url, "")?;
    if status != 200 {
        bail!("GET {url}: {status} {text}");
    }
    Ok(serde_json::from_str(&text)?)
}
