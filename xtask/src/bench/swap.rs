//! `cargo xtask bench swap`: how long a new version of a hot model takes to go live, and
//! what a swap does to latency.
//!
//! For each store (a local directory, then Azure Blob in Azurite): one proxy in front of
//! three release scorers, one model (a forest of 120 trees) scored open-loop at a fixed rate by
//! keep-alive clients. Every 3-4 s (spread over the check's phase) a new version is written straight into the store (rename on
//! a directory, one blob put on Azure), the way a training job publishes; no admin call, so
//! the figure is the scorers' own periodic check plus the background load and swap. Delay =
//! from the write to the first answer, to a request sent after the write, that reports the
//! new version.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use manymodels_models::Spec;

use manymodels_tests::http::KeepAlive;
use manymodels_tests::process::addrs;
use manymodels_tests::reference::constant_row_body;
use manymodels_tests::{ScorerProcess, write_model};

use super::percentile;

const MODEL: &str = "hot-forest";

fn version_bytes(v: u64) -> Vec<u8> {
    manymodels_models::build(&Spec::Forest {
        features: 16,
        trees: 120,
        depth: 6,
        seed: 1_000 + v,
    })
    .bytes
}

struct Answer {
    sent: Instant,
    latency: Duration,
    status: u16,
    version: u64,
}

pub fn run(publishes: u64, rate: f64) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    println!(
        "| store | publishes | publish to live, median | max | p50 steady | p99 steady | p99 within 1 s of a publish | requests | failed |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    // Local directory.
    let store = std::env::temp_dir().join(format!("mm-swap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&store);
    write_local(&store, 1, &version_bytes(1))?;
    let row = measure(
        "local directory",
        &store,
        &[],
        &[],
        publishes,
        rate,
        |v, bytes| write_local(&store, v, bytes),
    )?;
    println!("{row}");
    let _ = std::fs::remove_dir_all(&store);
    // Azure Blob through Azurite.
    crate::setup::azurite()?;
    let azurite = runtime.block_on(manymodels_tests::azurite::Azurite::start());
    runtime.block_on(azurite.create_container("models"));
    runtime.block_on(azurite.put_blob(
        "models",
        &format!("{MODEL}/1/model.onnx"),
        version_bytes(1),
    ));
    let env = [("AZURITE_BLOB_STORAGE_URL", azurite.url.as_str())];
    let sets = [
        "store.kind=azure",
        "store.azure.use_emulator=true",
        "store.azure.container=models",
    ];
    let row = measure(
        "Azure Blob (Azurite)",
        &store,
        &sets,
        &env,
        publishes,
        rate,
        |v, bytes| {
            runtime.block_on(azurite.put_blob(
                "models",
                &format!("{MODEL}/{v}/model.onnx"),
                bytes.to_vec(),
            ));
            Ok(())
        },
    )?;
    println!("{row}");
    Ok(())
}

fn write_local(store: &Path, v: u64, bytes: &[u8]) -> Result<()> {
    Ok(write_model(store, MODEL, v, bytes)?)
}

/// One store's row: a proxy and three scorers on it, open-loop clients through the
/// proxy, `publishes` new versions published with `publish` while they run.
fn measure(
    label: &str,
    store: &Path,
    sets: &[&str],
    env: &[(&str, &str)],
    publishes: u64,
    rate: f64,
    publish: impl FnMut(u64, &[u8]) -> Result<()>,
) -> Result<String> {
    let scorers: Vec<ScorerProcess> = (0..3)
        .map(|i| super::scorer_with_env(store, 18_031 + i, sets, env))
        .collect::<Result<_>>()?;
    let proxy = super::proxy(18_030, &addrs(&scorers), &[])?;
    let body = constant_row_body(16, 0.25).to_string();
    let path = format!("/v2/models/{MODEL}/infer");
    let clients = Clients::start(proxy.addr(), &body, &path, rate);
    std::thread::sleep(Duration::from_secs(4));
    let published = publish_versions(publishes, publish)?;
    let (started, answers) = clients.stop()?;
    drop(proxy);
    drop(scorers);
    row(label, started, &answers, &published)
}

/// The open-loop clients: each on its own thread and keep-alive connection, together
/// sending `rate` requests a second from `started`, each answer recorded.
struct Clients {
    started: Instant,
    answers: Arc<Mutex<Vec<Answer>>>,
    stop: Arc<AtomicBool>,
    workers: Vec<std::thread::JoinHandle<Result<()>>>,
}

impl Clients {
    /// Starts eight clients posting `body` to `path` at `addr`.
    fn start(addr: &str, body: &str, path: &str, rate: f64) -> Self {
        let answers: Arc<Mutex<Vec<Answer>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let clients = 8;
        let started = Instant::now();
        let workers: Vec<_> = (0..clients)
            .map(|c| {
                let client = Client {
                    first: c as u64,
                    clients,
                    rate,
                    started,
                    addr: addr.to_string(),
                    body: body.to_string(),
                    path: path.to_string(),
                    answers: answers.clone(),
                    stop: stop.clone(),
                };
                std::thread::spawn(move || client.run())
            })
            .collect();
        Clients {
            started,
            answers,
            stop,
            workers,
        }
    }

    /// Stops the clients and waits for them; returns when they started and every answer.
    fn stop(self) -> Result<(Instant, Vec<Answer>)> {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers {
            worker.join().expect("client thread")?;
        }
        let answers = std::mem::take(&mut *self.answers.lock().expect("answers"));
        Ok((self.started, answers))
    }
}

/// One client of [`Clients`]: requests `first`, `first + clients`, ... of the shared
/// schedule, each sent at its due time (or at once when late).
struct Client {
    first: u64,
    clients: usize,
    rate: f64,
    started: Instant,
    addr: String,
    body: String,
    path: String,
    answers: Arc<Mutex<Vec<Answer>>>,
    stop: Arc<AtomicBool>,
}

impl Client {
    /// Sends until told to stop, recording each answer's status and model version.
    fn run(self) -> Result<()> {
        let mut client = KeepAlive::connect(&self.addr)?;
        let mut n = self.first;
        while !self.stop.load(Ordering::Relaxed) {
            let due = self.started + Duration::from_secs_f64(n as f64 / self.rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let sent = Instant::now();
            let (status, latency) = client.post(&self.path, &self.body)?;
            let version = serde_json::from_slice::<serde_json::Value>(client.last_body())
                .ok()
                .and_then(|v| v["model_version"].as_str()?.parse().ok())
                .unwrap_or(0);
            self.answers.lock().expect("answers").push(Answer {
                sent,
                latency,
                status,
                version,
            });
            n += self.clients as u64;
        }
        Ok(())
    }
}

/// Publishes versions 2 to `publishes + 1`, one every 3-4 s; returns each version with
/// when its write started.
fn publish_versions(
    publishes: u64,
    mut publish: impl FnMut(u64, &[u8]) -> Result<()>,
) -> Result<Vec<(u64, Instant)>> {
    let mut published = Vec::new();
    for v in 2..=publishes + 1 {
        let bytes = version_bytes(v);
        let at = Instant::now();
        publish(v, &bytes)?;
        published.push((v, at));
        // Spread the publishes over the phase of the scorers' 1 s check.
        std::thread::sleep(Duration::from_millis(3_000 + v * 370 % 1_000));
    }
    Ok(published)
}

/// The table row for `label` from the answers of clients started at `started`.
fn row(
    label: &str,
    started: Instant,
    answers: &[Answer],
    published: &[(u64, Instant)],
) -> Result<String> {
    let failed = answers.iter().filter(|a| a.status != 200).count();
    let delays = publish_delays(label, answers, published)?;
    let first_publish = published[0].1;
    let mut steady: Vec<Duration> = answers
        .iter()
        .filter(|a| a.sent < first_publish && a.sent > started + Duration::from_secs(1))
        .map(|a| a.latency)
        .collect();
    let mut swapping: Vec<Duration> = answers
        .iter()
        .filter(|a| {
            published
                .iter()
                .any(|(_, at)| a.sent >= *at && a.sent < *at + Duration::from_secs(1))
        })
        .map(|a| a.latency)
        .collect();
    steady.sort();
    swapping.sort();
    Ok(format!(
        "| {label} | {} | {:.0} ms | {:.0} ms | {:.2} ms | {:.2} ms | {:.2} ms | {} | {failed} |",
        published.len(),
        delays[delays.len() / 2].as_secs_f64() * 1e3,
        delays[delays.len() - 1].as_secs_f64() * 1e3,
        percentile(&steady, 0.5) / 1e3,
        percentile(&steady, 0.99) / 1e3,
        percentile(&swapping, 0.99) / 1e3,
        answers.len(),
    ))
}

/// Each publish's delay to live, sorted: from its write to the first answer, to a
/// request sent after the write, that reports that version or a later one. Fails when a
/// version never answered.
fn publish_delays(
    label: &str,
    answers: &[Answer],
    published: &[(u64, Instant)],
) -> Result<Vec<Duration>> {
    let mut delays = Vec::new();
    for (v, at) in published {
        let first = answers
            .iter()
            .filter(|a| a.sent >= *at && a.version >= *v)
            .map(|a| a.sent + a.latency)
            .min();
        match first {
            Some(done) => delays.push(done - *at),
            None => bail!("{label}: version {v} never answered"),
        }
    }
    delays.sort();
    Ok(delays)
}
