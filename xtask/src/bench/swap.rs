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

fn measure(
    label: &str,
    store: &Path,
    sets: &[&str],
    env: &[(&str, &str)],
    publishes: u64,
    rate: f64,
    mut publish: impl FnMut(u64, &[u8]) -> Result<()>,
) -> Result<String> {
    let scorers: Vec<ScorerProcess> = (0..3)
        .map(|i| super::scorer_with_env(store, 18_031 + i, sets, env))
        .collect::<Result<_>>()?;
    let proxy = super::proxy(18_030, &addrs(&scorers), &[])?;
    let body = constant_row_body(16, 0.25).to_string();
    let path = format!("/v2/models/{MODEL}/infer");
    let answers: Arc<Mutex<Vec<Answer>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let clients = 8;
    let started = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|c| {
            let (answers, stop, addr, body, path) = (
                answers.clone(),
                stop.clone(),
                proxy.addr().to_string(),
                body.clone(),
                path.clone(),
            );
            std::thread::spawn(move || -> Result<()> {
                let mut client = KeepAlive::connect(&addr)?;
                let mut n = c as u64;
                while !stop.load(Ordering::Relaxed) {
                    let due = started + Duration::from_secs_f64(n as f64 / rate);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let sent = Instant::now();
                    let (status, latency) = client.post(&path, &body)?;
                    let version = serde_json::from_slice::<serde_json::Value>(client.last_body())
                        .ok()
                        .and_then(|v| v["model_version"].as_str()?.parse().ok())
                        .unwrap_or(0);
                    answers.lock().expect("answers").push(Answer {
                        sent,
                        latency,
                        status,
                        version,
                    });
                    n += clients as u64;
                }
                Ok(())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(4));
    let mut published = Vec::new();
    for v in 2..=publishes + 1 {
        let bytes = version_bytes(v);
        let at = Instant::now();
        publish(v, &bytes)?;
        published.push((v, at));
        // Spread the publishes over the phase of the scorers' 1 s check.
        std::thread::sleep(Duration::from_millis(3_000 + v * 370 % 1_000));
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.join().expect("client thread")?;
    }
    drop(proxy);
    drop(scorers);
    let answers = std::mem::take(&mut *answers.lock().expect("answers"));
    let failed = answers.iter().filter(|a| a.status != 200).count();
    let mut delays = Vec::new();
    for (v, at) in &published {
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
