//! `cargo xtask bench batch`: the many-model route against what a client does without it,
//! through the proxy and three release scorers on the realistic store, same run:
//!
//! - **records**: 1,000 records over 200 models in one `POST /v2/mm/batch`, against the
//!   same records as 200 sequential single-model calls from one client (each model's
//!   records in one OIP request), and against the slowest owner's share (each scorer
//!   sent its own groups straight, at the proxy's parallelism; the slowest of the three).
//! - **forecasts**: 200 series × 5 steps in one call, against the client's own recursive
//!   loop of 1,000 single calls (each step's prediction fed back as the next step's lag).
//! - **memory**: the proxy's peak RSS while clients flood it with maximal batches, against
//!   its bound.
//! - **kill**: a stream of batches while a scorer is killed: records lost or reordered.
//!
//! Every process shares this machine's two cores with the client.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures::StreamExt;
use manymodels_contract::batch::BatchAnswer;
use manymodels_contract::forecast::ForecastSpec;
use manymodels_tests::ScorerProcess;
use manymodels_tests::process::status_bytes;
use serde_json::{Value, json};

use super::replay::{ensure_store, manifest};

#[derive(clap::Args, Clone, Debug)]
pub struct BatchArgs {
    /// The realistic store (made with `models/make_realistic.py` if it is missing).
    #[arg(long, default_value = ".cache/realistic")]
    store: PathBuf,
    /// Models the records are spread over (every k-th model of the store).
    #[arg(long, default_value_t = 200)]
    models: usize,
    /// Records per many-model call.
    #[arg(long, default_value_t = 1_000)]
    records: usize,
    /// Timed repetitions of each figure (the median is reported).
    #[arg(long, default_value_t = 7)]
    reps: usize,
    /// Clients flooding the proxy with maximal batches.
    #[arg(long, default_value_t = 8)]
    flood_clients: usize,
    /// Maximal batches each flooding client sends.
    #[arg(long, default_value_t = 6)]
    flood_batches: usize,
    /// Batches of the kill stream (a scorer is killed after the third).
    #[arg(long, default_value_t = 40)]
    kill_batches: usize,
    /// The forecast store (`models/make_forecast.py --series N`, made if missing).
    #[arg(long, default_value = ".cache/forecast-200")]
    forecast_store: PathBuf,
    /// Only the records figures (no flood, kill or forecasts).
    #[arg(long)]
    records_only: bool,
    /// Each scorer's `cache.budget`: the default holds all 200 models; a small one (e.g.
    /// `40MiB`) makes the records' working set larger than the pool's memory.
    #[arg(long, default_value = "1536MiB")]
    budget: String,
    /// Only the memory flood.
    #[arg(long)]
    flood_only: bool,
}

const PORTS: [u16; 3] = [18_061, 18_062, 18_063];
const PROXY_PORT: u16 = 18_060;
const BASELINE_PORT: u16 = 18_069;
/// The proxy's default `batch.parallelism` and `batch.groups_per_request`, used for the
/// owners' shares too.
const PARALLELISM: usize = 16;
const GROUPS_PER_REQUEST: usize = 16;

pub fn run(args: BatchArgs) -> Result<()> {
    ensure_store(&args.store, 2_000)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    println!(
        "machine: {} (every process shares its cores with the client)",
        machine()
    );
    runtime.block_on(records(&args))?;
    if !args.records_only && !args.flood_only {
        runtime.block_on(forecasts(&args))?;
    }
    Ok(())
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default();
    format!("{cpus} cores, {model}")
}

/// A pool of three release scorers (`budget` each, native images under `.cache/`) and a
/// proxy over `store`.
fn pool(
    store: &Path,
    budget: &str,
    proxy_sets: &[&str],
) -> Result<(Vec<ScorerProcess>, manymodels_tests::ProxyProcess)> {
    let sets = [
        format!("cache.budget={budget}"),
        "images.dir=.cache/images-batch".to_string(),
    ];
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    let scorers: Vec<ScorerProcess> = PORTS
        .iter()
        .map(|&p| super::scorer(store, p, &sets))
        .collect::<Result<_>>()?;
    let addrs: Vec<String> = PORTS.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let proxy = super::proxy(PROXY_PORT, &addrs, proxy_sets)?;
    Ok((scorers, proxy))
}

/// One model's records: its id and rows.
struct Group {
    id: String,
    rows: Vec<Vec<f64>>,
}

/// `records` records over `models` models of the store (every k-th), interleaved, each
/// row the model's sample row with its values nudged by the record's position.
fn workload(store: &Path, models: usize, records: usize) -> Result<(Vec<Group>, Vec<usize>)> {
    let entries = manifest(store)?;
    ensure!(
        entries.len() >= models,
        "the store has {} models",
        entries.len()
    );
    let step = entries.len() / models;
    let mut groups: Vec<Group> = (0..models)
        .map(|m| {
            let entry = &entries[m * step];
            Group {
                id: entry.id.clone(),
                rows: Vec::new(),
            }
        })
        .collect();
    let samples: Vec<Vec<f64>> = (0..models)
        .map(|m| {
            let body: Value = serde_json::from_str(&entries[m * step].body)?;
            body["inputs"][0]["data"]
                .as_array()
                .context("sample_request data")?
                .iter()
                .map(|v| v.as_f64().context("a number"))
                .collect()
        })
        .collect::<Result<_>>()?;
    let mut order = Vec::with_capacity(records);
    for r in 0..records {
        let m = (r * 7919) % models;
        let nudge = (r as f64 * 0.001).sin() * 0.1;
        groups[m]
            .rows
            .push(samples[m].iter().map(|v| v + nudge).collect());
        order.push(m);
    }
    Ok((groups, order))
}

fn batch_body(groups: &[Group], order: &[usize]) -> String {
    let mut next = vec![0usize; groups.len()];
    let records: Vec<Value> = order
        .iter()
        .map(|&m| {
            let row = &groups[m].rows[next[m]];
            next[m] += 1;
            json!({"model": groups[m].id, "features": row})
        })
        .collect();
    json!({ "records": records }).to_string()
}

fn oip_body(rows: &[Vec<f64>]) -> String {
    let data: Vec<f64> = rows.iter().flatten().copied().collect();
    json!({"inputs": [{"name": "input", "datatype": "FP32",
        "shape": [rows.len(), rows[0].len()], "data": data}]})
    .to_string()
}

async fn post(client: &reqwest::Client, url: &str, body: String) -> Result<(u16, String, String)> {
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    let status = response.status().as_u16();
    let scorer = response
        .headers()
        .get("x-mm-scorer")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    Ok((status, scorer, response.text().await?))
}

/// Sends an owner its groups straight, as the proxy sends them: `GROUPS_PER_REQUEST`
/// groups to a `POST /v2/mm/records`, `PARALLELISM` requests at once.
async fn send_share(client: &reqwest::Client, url: &str, mine: &[&Group]) -> Result<()> {
    let sends = mine.chunks(GROUPS_PER_REQUEST).map(|chunk| {
        let groups: Vec<Value> = chunk
            .iter()
            .map(|g| {
                json!({"model": g.id,
                    "records": g.rows.iter().map(|r| json!({"features": r})).collect::<Vec<_>>()})
            })
            .collect();
        let body = json!({ "groups": groups }).to_string();
        let url = format!("{url}/v2/mm/records");
        async move { post(client, &url, body).await }
    });
    let answers: Vec<_> = futures::stream::iter(sends)
        .buffer_unordered(PARALLELISM)
        .collect()
        .await;
    for answer in answers {
        let (status, _, text) = answer?;
        ensure!(status == 200, "{status} {text}");
        ensure!(!text.contains("\"error\""), "a group failed: {text}");
    }
    Ok(())
}

/// Times `f` `reps` times; the median.
async fn median<F, Fut>(reps: usize, mut f: F) -> Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let started = Instant::now();
        f().await?;
        times.push(started.elapsed());
    }
    times.sort();
    Ok(times[times.len() / 2])
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

async fn records(args: &BatchArgs) -> Result<()> {
    let (groups, order) = workload(&args.store, args.models, args.records)?;
    let (mut scorers, proxy) = pool(&args.store, &args.budget, &[])?;
    let client = reqwest::Client::new();
    let batch_url = format!("{}/v2/mm/batch", proxy.url);
    let body = batch_body(&groups, &order);
    let check = |status: u16, text: &str| -> Result<BatchAnswer> {
        ensure!(status == 200, "batch answered {status}: {text}");
        let answer: BatchAnswer = serde_json::from_str(text)?;
        ensure!(answer.failed == 0, "{} records failed", answer.failed);
        Ok(answer)
    };
    let started = Instant::now();
    let (status, _, text) = post(&client, &batch_url, body.clone()).await?;
    let cold = started.elapsed();
    let reference = check(status, &text)?;
    if args.flood_only {
        return flood(args, &proxy, &groups).await;
    }
    // Owners: each model's single call names the scorer that answered it.
    let mut owner: BTreeMap<String, String> = BTreeMap::new();
    for group in &groups {
        let url = format!("{}/v2/models/{}/infer", proxy.url, group.id);
        let (status, scorer, text) = post(&client, &url, oip_body(&group.rows)).await?;
        ensure!(status == 200, "{}: {status} {text}", group.id);
        owner.insert(group.id.clone(), scorer);
    }
    let cpu = |scorers: &[ScorerProcess]| -> (f64, f64) {
        (
            proxy.cpu_seconds(),
            scorers.iter().map(|s| s.cpu_seconds()).sum::<f64>(),
        )
    };
    let before = cpu(&scorers);
    let many = median(args.reps, || async {
        let (status, _, text) = post(&client, &batch_url, body.clone()).await?;
        let answer = check(status, &text)?;
        ensure!(
            answer.results == reference.results,
            "answers changed between calls"
        );
        Ok(())
    })
    .await?;
    let after = cpu(&scorers);
    let per_call = |a: f64, b: f64| (b - a) * 1e3 / args.reps as f64;
    let many_cpu = (per_call(before.0, after.0), per_call(before.1, after.1));
    let sequential = median(args.reps.min(3), || async {
        for group in &groups {
            let url = format!("{}/v2/models/{}/infer", proxy.url, group.id);
            let (status, _, text) = post(&client, &url, oip_body(&group.rows)).await?;
            ensure!(status == 200, "{}: {status} {text}", group.id);
        }
        Ok(())
    })
    .await?;
    // The naive baseline (one Python process, ONNX Runtime, an LRU of 200 models: all 200
    // fit) taking the same 200 calls, warmed by one pass first.
    let baseline = super::replay::start_baseline(&args.store, 200, BASELINE_PORT)?;
    let baseline_url = format!("http://127.0.0.1:{BASELINE_PORT}");
    let naive_calls = || async {
        for group in &groups {
            let url = format!("{baseline_url}/v2/models/{}/infer", group.id);
            let (status, _, text) = post(&client, &url, oip_body(&group.rows)).await?;
            ensure!(status == 200, "baseline {}: {status} {text}", group.id);
        }
        Ok(())
    };
    naive_calls().await?;
    let naive = median(args.reps.min(3), naive_calls).await?;
    drop(baseline);
    // Each owner's share: its groups straight to it, as the proxy sends them.
    let mut shares = Vec::new();
    for scorer in &scorers {
        let name = scorer.addr().to_string();
        let mine: Vec<&Group> = groups
            .iter()
            .filter(|g| owner.get(&g.id).is_some_and(|o| *o == name))
            .collect();
        let records: usize = mine.iter().map(|g| g.rows.len()).sum();
        let share = median(args.reps, || send_share(&client, &scorer.url, &mine)).await?;
        shares.push((name, mine.len(), records, share));
    }
    let slowest = shares.iter().map(|s| s.3).max().unwrap_or_default();
    // The same shares sent to the three owners at the same moment, as the many-model call
    // does: the slowest owner's finish, the proxy left out.
    let together = median(args.reps, || {
        let client = &client;
        let owner = &owner;
        let groups = &groups;
        let scorers = &scorers;
        async move {
            let sends = scorers.iter().map(|scorer| {
                let name = scorer.addr().to_string();
                let mine: Vec<&Group> = groups
                    .iter()
                    .filter(|g| owner.get(&g.id).is_some_and(|o| *o == name))
                    .collect();
                let url = scorer.url.clone();
                async move { send_share(client, &url, &mine).await }
            });
            for done in futures::future::join_all(sends).await {
                done?;
            }
            Ok(())
        }
    })
    .await?;
    println!();
    println!(
        "records: {} records over {} models of {}, proxy + 3 scorers (cache.budget={} each, native images), median of {}",
        args.records,
        args.models,
        args.store.display(),
        args.budget,
        args.reps
    );
    let loads: f64 = scorers
        .iter()
        .map(|s| s.metrics_blocking().get("mm_scorer_model_loads_total"))
        .sum();
    let mib = |b: u64| format!("{:.0} MiB", b as f64 / (1u64 << 20) as f64);
    let peaks: Vec<String> = scorers
        .iter()
        .map(|s| format!("{} (now {})", mib(s.peak_rss_bytes()), mib(s.rss_bytes())))
        .collect();
    println!(
        "model loads in the pool so far: {loads:.0}; scorers' peak RSS (VmHWM): {}",
        peaks.join(", ")
    );
    println!();
    println!("| what | time | ratio |");
    println!("|---|---|---|");
    println!(
        "| many-model call, cold (first, loads 200 models) | {} | |",
        ms(cold)
    );
    println!("| many-model call, hot | {} | 1 |", ms(many));
    for (name, models, records, share) in &shares {
        println!(
            "| owner {name}: its {models} models, {records} records, straight to it | {} | |",
            ms(*share)
        );
    }
    println!(
        "| slowest owner's share | {} | many-model call / slowest share = **{:.2}x** |",
        ms(slowest),
        many.as_secs_f64() / slowest.as_secs_f64()
    );
    println!(
        "| the three shares sent at once, straight to their owners (the fan-out without the proxy) | {} | many-model call / that = **{:.2}x** |",
        ms(together),
        many.as_secs_f64() / together.as_secs_f64()
    );
    println!(
        "| CPU per many-model call: proxy {:.1} ms, scorers {:.1} ms | | |",
        many_cpu.0, many_cpu.1
    );
    println!(
        "| {} sequential single-model calls (one client, each model's records in one OIP request) | {} | **{:.1}x** the many-model call |",
        groups.len(),
        ms(sequential),
        sequential.as_secs_f64() / many.as_secs_f64()
    );
    println!(
        "| the naive baseline (one Python process, ONNX Runtime, LRU of 200 models), the same {} sequential calls | {} | **{:.0}x** the many-model call |",
        groups.len(),
        ms(naive),
        naive.as_secs_f64() / many.as_secs_f64()
    );
    if !args.records_only {
        flood(args, &proxy, &groups).await?;
        kill(args, &proxy, &mut scorers, &body, &reference).await?;
    }
    Ok(())
}

/// The proxy's RSS while clients flood it with maximal batches: realistic records, then the
/// worst case for its memory (records of zeros, the most numbers a body can carry).
async fn flood(
    args: &BatchArgs,
    proxy: &manymodels_tests::ProxyProcess,
    groups: &[Group],
) -> Result<()> {
    // A maximal batch: `batch.max_records` records (10,000) over the models.
    let order: Vec<usize> = (0..10_000).map(|r| (r * 7919) % groups.len()).collect();
    let empty = || -> Vec<Group> {
        groups
            .iter()
            .map(|g| Group {
                id: g.id.clone(),
                rows: Vec::new(),
            })
            .collect()
    };
    let mut realistic = empty();
    let mut zeros = empty();
    // Zeros: "0," is two bytes a number, so 16 MiB over 10,000 records is ~830 per record.
    let width = ((16usize << 20) - 2_000_000) / 10_000 / 2;
    for (r, &m) in order.iter().enumerate() {
        let base = &groups[m].rows[0];
        let nudge = (r as f64 * 0.37).cos() * 0.01;
        realistic[m]
            .rows
            .push(base.iter().map(|v| v + nudge).collect());
        zeros[m].rows.push(vec![0.0; width]);
    }
    let pid = proxy.pid().to_string();
    let idle = status_bytes(&pid, "VmRSS");
    let mib = |b: u64| format!("{:.0} MiB", b as f64 / (1u64 << 20) as f64);
    let max_bytes = 16u64 << 20;
    let bound = idle + 4 * 6 * max_bytes;
    println!();
    println!(
        "memory: {} clients × {} maximal batches each (10,000 records), proxy idle RSS {}; bound: idle + batch.concurrency (4) × 6 × batch.max_bytes (16 MiB) = {}",
        args.flood_clients,
        args.flood_batches,
        mib(idle),
        mib(bound)
    );
    println!();
    println!(
        "| batches | body | time | answers by status | proxy peak RSS (sampled every 20 ms) | peak / bound |"
    );
    println!("|---|---|---|---|---|---|");
    let mut worst = idle;
    for (label, rows) in [
        ("realistic records", &realistic),
        ("records of zeros (the most numbers a body holds)", &zeros),
    ] {
        let body = Arc::new(
            batch_body(rows, &order)
                .replace(".0,", ",")
                .replace(".0]", "]"),
        );
        let (peak, elapsed, by_status) = flood_with(args, proxy, &body).await?;
        worst = worst.max(peak);
        println!(
            "| {label} | {:.1} MB | {:.1} s | {by_status:?} | {} | {:.2} |",
            body.len() as f64 / 1e6,
            elapsed.as_secs_f64(),
            mib(peak),
            peak as f64 / bound as f64
        );
    }
    let hwm = status_bytes(&pid, "VmHWM");
    println!();
    println!("proxy VmHWM after both floods: {}", mib(hwm));
    if hwm.max(worst) > bound {
        bail!(
            "the proxy's peak RSS {} passed its bound {}",
            mib(hwm),
            mib(bound)
        );
    }
    Ok(())
}

/// Floods the proxy with `body` from `args.flood_clients` clients; its peak RSS (sampled),
/// the time taken and the answers by status.
async fn flood_with(
    args: &BatchArgs,
    proxy: &manymodels_tests::ProxyProcess,
    body: &Arc<String>,
) -> Result<(u64, Duration, BTreeMap<u16, usize>)> {
    let pid = proxy.pid().to_string();
    let url = format!("{}/v2/mm/batch", proxy.url);
    let started = Instant::now();
    let handles: Vec<_> = (0..args.flood_clients)
        .map(|_| {
            let body = body.clone();
            let url = url.clone();
            let n = args.flood_batches;
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut statuses = Vec::new();
                for _ in 0..n {
                    let (status, _, _) = post(&client, &url, (*body).clone()).await?;
                    statuses.push(status);
                }
                Ok::<_, anyhow::Error>(statuses)
            })
        })
        .collect();
    let mut peak = status_bytes(&pid, "VmRSS");
    while handles.iter().any(|h| !h.is_finished()) {
        peak = peak.max(status_bytes(&pid, "VmRSS"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    let mut by_status: BTreeMap<u16, usize> = BTreeMap::new();
    for handle in handles {
        for status in handle.await?? {
            *by_status.entry(status).or_default() += 1;
        }
    }
    Ok((peak, elapsed, by_status))
}

/// A stream of batches while a scorer is killed: every record answered, in order.
async fn kill(
    args: &BatchArgs,
    proxy: &manymodels_tests::ProxyProcess,
    scorers: &mut [ScorerProcess],
    body: &str,
    reference: &BatchAnswer,
) -> Result<()> {
    let client = reqwest::Client::new();
    let url = format!("{}/v2/mm/batch", proxy.url);
    let (mut lost, mut wrong, mut answered) = (0usize, 0usize, 0usize);
    let mut failed_calls = 0usize;
    for i in 0..args.kill_batches {
        if i == 3 {
            scorers[0].kill();
        }
        let (status, _, text) = post(&client, &url, body.to_string()).await?;
        if status != 200 {
            failed_calls += 1;
            lost += reference.results.len();
            continue;
        }
        let answer: BatchAnswer = serde_json::from_str(&text)?;
        for (got, want) in answer.results.iter().zip(&reference.results) {
            if got == want {
                answered += 1;
            } else if got.model == want.model {
                lost += 1;
            } else {
                wrong += 1;
            }
        }
        lost += reference.results.len().saturating_sub(answer.results.len());
    }
    println!();
    println!(
        "kill: {} batches of {} records, scorer {} killed (SIGKILL) before the 4th",
        args.kill_batches,
        reference.results.len(),
        scorers[0].addr()
    );
    println!();
    println!(
        "| records answered as before | lost (failed or missing) | reordered | failed calls |"
    );
    println!("|---|---|---|---|");
    println!("| {answered} | {lost} | {wrong} | {failed_calls} |");
    Ok(())
}

/// The forecast store: `models/make_forecast.py --series 200`, made once.
fn ensure_forecast_store(store: &Path, series: usize) -> Result<()> {
    if store.join("histories.json").exists() {
        return Ok(());
    }
    eprintln!(
        "xtask: writing {series} forecasting models into {}",
        store.display()
    );
    let status = std::process::Command::new("python3")
        .arg("models/make_forecast.py")
        .args(["--series", &series.to_string()])
        .arg("--out")
        .arg(store)
        .status()?;
    ensure!(status.success(), "models/make_forecast.py failed");
    Ok(())
}

/// 200 series × 5 steps: one many-model call against the client's own loop of 1,000
/// single calls, same pool, models hot.
async fn forecasts(args: &BatchArgs) -> Result<()> {
    const SERIES: usize = 200;
    const HORIZON: u32 = 5;
    ensure_forecast_store(&args.forecast_store, SERIES)?;
    let text = std::fs::read_to_string(args.forecast_store.join("histories.json"))?;
    let histories: BTreeMap<String, Value> = serde_json::from_str(&text)?;
    ensure!(histories.len() >= SERIES, "{} series", histories.len());
    let (_scorers, proxy) = pool(
        &args.forecast_store,
        "1536MiB",
        &["batch.id_template={store}_{brand}_{model_type}"],
    )?;
    let client = reqwest::Client::new();
    let records: Vec<Value> = histories
        .values()
        .take(SERIES)
        .map(|h| {
            json!({"store": h["store"], "brand": h["brand"], "model_type": h["model_type"],
                "forecast_horizon": HORIZON, "date_freq": h["date_freq"], "price": h["price"],
                "data": {"dates": h["dates"], "values": h["values"]}})
        })
        .collect();
    let body = json!({ "records": records }).to_string();
    let url = format!("{}/v2/mm/batch", proxy.url);
    let call = || async {
        let (status, _, text) = post(&client, &url, body.clone()).await?;
        ensure!(status == 200, "{status}: {text}");
        let answer: BatchAnswer = serde_json::from_str(&text)?;
        ensure!(
            answer.failed == 0,
            "{} forecasts failed: {text}",
            answer.failed
        );
        Ok(answer)
    };
    let started = Instant::now();
    call().await?;
    let cold = started.elapsed();
    let one_call = median(args.reps, || async { call().await.map(|_| ()) }).await?;
    // The client's own loop: each model's declaration from its metadata, then each step
    // one single-row call, its prediction fed back.
    let mut specs = Vec::with_capacity(SERIES);
    for id in histories.keys().take(SERIES) {
        let metadata: Value = client
            .get(format!("{}/v2/models/{id}", proxy.url))
            .send()
            .await?
            .json()
            .await?;
        let spec: ForecastSpec = serde_json::from_value(metadata["forecast"].clone())
            .with_context(|| format!("{id}: metadata declares no forecast"))?;
        specs.push((id.clone(), spec));
    }
    let single = median(args.reps.min(3), || async {
        for ((id, spec), h) in specs.iter().zip(histories.values()) {
            let dates: Vec<String> = serde_json::from_value(h["dates"].clone())?;
            let values: Vec<f64> = serde_json::from_value(h["values"].clone())?;
            let price = h["price"].as_f64().context("price")?;
            let mut plan = spec
                .plan(
                    HORIZON,
                    h["date_freq"].as_str(),
                    &dates,
                    &values,
                    &[price],
                    None,
                )
                .map_err(anyhow::Error::msg)?;
            for step in 0..HORIZON as usize {
                let row: Vec<f64> = spec.row(&plan, step).into_iter().map(f64::from).collect();
                let url = format!("{}/v2/models/{id}/infer", proxy.url);
                let (status, _, text) = post(&client, &url, oip_body(&[row])).await?;
                ensure!(status == 200, "{id}: {status} {text}");
                let answer: Value = serde_json::from_str(&text)?;
                let prediction = answer["outputs"][0]["data"][0]
                    .as_f64()
                    .context("a prediction")?;
                plan.push(prediction as f32);
            }
        }
        Ok(())
    })
    .await?;
    println!();
    println!(
        "forecasts: {SERIES} store×brand series × {HORIZON} steps (models/make_forecast.py: lr and gbr on lags 1-4, ISO week, month, price), proxy + 3 scorers, models hot, median of {}",
        args.reps
    );
    println!();
    println!("| what | time | ratio |");
    println!("|---|---|---|");
    println!(
        "| one many-model call, cold (first, loads {SERIES} models) | {} | |",
        ms(cold)
    );
    println!("| one many-model call, hot | {} | 1 |", ms(one_call));
    println!(
        "| {} single calls, the client's own recursive loop | {} | **{:.0}x** the one call |",
        SERIES * HORIZON as usize,
        ms(single),
        single.as_secs_f64() / one_call.as_secs_f64()
    );
    Ok(())
}
