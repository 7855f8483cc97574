//! `cargo xtask bench import`: onboarding 10,000 models into Azure Blob (Azurite) with
//! `mmctl import`, beside naive uploads of the same files in the same run.
//!
//! The source is the realistic store's real scikit-learn models (10% of them 5-32 MB
//! random forests), each linked `--replicas` times under a new id, as flat `<id>.onnx`
//! files. Each phase gets a fresh Azurite (its data is removed after the phase, so the
//! disk holds one copy at a time):
//! - `naive`: one blob put after another, no check (a script looping over the files);
//! - `naive-parallel`: the same puts, `--jobs` at a time (what `az storage blob
//!   upload-batch` does), no check;
//! - `mmctl`: `mmctl import --to store` (every model loaded and smoke-tested as a scorer
//!   would, sha256 in the blob's metadata), then the same command again, which finds
//!   everything in place and skips it (the resume path);
//! - `mmctl-api`: `mmctl import` through the admin API of a pool on that container (a proxy
//!   and `--scorers` release scorers with `--budget` each): each file goes through the
//!   proxy to its model's owner, which checks it and writes it; then the rerun. Reports the
//!   scorers' peak RSS against the documented bound, since every upload passes through one.
//!
//! Everything shares the machine's cores with Azurite (Node), which does every write.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use manymodels_tests::azurite::{self, Azurite};
use manymodels_tests::process::{ScorerProcess, addrs, binary, free_port};
use serde_json::Value;

use super::replay::ensure_store;
use crate::setup;

#[derive(clap::Args, Clone, Debug)]
pub struct ImportArgs {
    /// The realistic store the models come from (made if missing).
    #[arg(long, default_value = ".cache/realistic")]
    store: PathBuf,
    /// Copies of each realistic model (2,000 × 5 = 10,000 models).
    #[arg(long, default_value_t = 5)]
    replicas: usize,
    /// Parallel uploads (mmctl's --jobs, and the parallel naive upload's).
    #[arg(long, default_value_t = 8)]
    jobs: usize,
    /// Phases to run, in order: naive, naive-parallel, mmctl, mmctl-api.
    #[arg(long, value_delimiter = ',', default_values_t = ["naive".to_string(), "naive-parallel".to_string(), "mmctl".to_string(), "mmctl-api".to_string()])]
    phases: Vec<String>,
    /// Scorers behind the proxy in the mmctl-api phase.
    #[arg(long, default_value_t = 2)]
    scorers: usize,
    /// Each scorer's `cache.budget` in the mmctl-api phase.
    #[arg(long, default_value = "1GiB")]
    budget: String,
}

/// One model file of the source.
struct File {
    id: String,
    path: PathBuf,
    bytes: u64,
}

fn source(args: &ImportArgs) -> Result<(PathBuf, Vec<File>)> {
    ensure_store(&args.store, 2_000)?;
    let dir = setup::workspace_root().join(format!("target/bench-import/src-x{}", args.replicas));
    let mut originals: Vec<(String, PathBuf)> = std::fs::read_dir(&args.store)?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let file = e.path().join("1/model.onnx");
            file.exists().then_some((name, file))
        })
        .collect();
    originals.sort();
    if originals.is_empty() {
        bail!("no <id>/1/model.onnx in {}", args.store.display());
    }
    std::fs::create_dir_all(&dir)?;
    let mut files = Vec::new();
    for replica in 0..args.replicas {
        for (id, original) in &originals {
            let id = format!("r{replica}-{id}");
            let path = dir.join(format!("{id}.onnx"));
            if !path.exists() {
                // A hard link: 10,000 files, one copy of the bytes.
                std::fs::hard_link(original, &path)
                    .or_else(|_| std::fs::copy(original, &path).map(|_| ()))
                    .with_context(|| format!("linking {}", path.display()))?;
            }
            let bytes = std::fs::metadata(&path)?.len();
            files.push(File { id, path, bytes });
        }
    }
    Ok((dir, files))
}

/// A phase's figures.
struct Row {
    phase: String,
    models: usize,
    bytes: u64,
    seconds: f64,
    peak_rss: Option<u64>,
    note: String,
}

pub fn run(args: ImportArgs) -> Result<()> {
    setup::azurite()?;
    setup::cargo(&["build", "--release", "-p", "manymodels-cli"])?;
    let (dir, files) = source(&args)?;
    let total: u64 = files.iter().map(|f| f.bytes).sum();
    let heavy = files.iter().filter(|f| f.bytes >= 5 << 20).count();
    eprintln!(
        "xtask: {} models, {:.2} GB, {heavy} of them 5 MB or more",
        files.len(),
        total as f64 / 1e9
    );
    let runtime = tokio::runtime::Runtime::new()?;
    let mut rows = Vec::new();
    for phase in &args.phases {
        match phase.as_str() {
            "naive" => rows.push(runtime.block_on(naive(&files, 1))?),
            "naive-parallel" => rows.push(runtime.block_on(naive(&files, args.jobs))?),
            "mmctl" => rows.extend(runtime.block_on(mmctl(&dir, &files, args.jobs))?),
            "mmctl-api" => rows.extend(runtime.block_on(mmctl_api(&dir, &files, &args))?),
            other => bail!("unknown phase {other} (naive, naive-parallel, mmctl, mmctl-api)"),
        }
    }
    println!(
        "\n`cargo xtask bench import --replicas {} --jobs {}`: {} models, {:.2} GB ({heavy} of 5 MB or more), into Azurite on this machine (2 cores shared by Azurite, the uploader and its checks)\n",
        args.replicas,
        args.jobs,
        files.len(),
        total as f64 / 1e9
    );
    println!("| phase | models | seconds | models/s | MB/s | peak RSS of the uploader | notes |");
    println!("|---|---|---|---|---|---|---|");
    for row in &rows {
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {} | {} |",
            row.phase,
            row.models,
            row.seconds,
            row.models as f64 / row.seconds,
            row.bytes as f64 / 1e6 / row.seconds,
            row.peak_rss
                .map_or("-".into(), |b| format!("{:.0} MB", b as f64 / 1e6)),
            row.note
        );
    }
    if let Some(naive) = rows.iter().find(|r| r.phase == "naive") {
        for mm in rows.iter().filter(|r| r.phase.ends_with("(import)")) {
            println!(
                "\n{} / naive sequential upload, wall time: {:.2}",
                mm.phase,
                mm.seconds / naive.seconds
            );
        }
    }
    Ok(())
}

async fn fresh_azurite() -> Azurite {
    let azurite = Azurite::start().await;
    azurite.create_container("models").await;
    azurite
}

/// Blob puts through the harness's Shared Key client, `jobs` at a time, no check.
async fn naive(files: &[File], jobs: usize) -> Result<Row> {
    let azurite = fresh_azurite().await;
    let started = Instant::now();
    let azurite_ref = &azurite;
    futures::stream::iter(files)
        .map(|file| async move {
            let bytes = tokio::fs::read(&file.path).await.expect("reading a model");
            azurite_ref
                .put_blob("models", &format!("{}/1/model.onnx", file.id), bytes)
                .await;
        })
        .buffer_unordered(jobs)
        .collect::<Vec<()>>()
        .await;
    let seconds = started.elapsed().as_secs_f64();
    drop(azurite);
    Ok(Row {
        phase: if jobs == 1 {
            "naive".into()
        } else {
            "naive-parallel".into()
        },
        models: files.len(),
        bytes: files.iter().map(|f| f.bytes).sum(),
        seconds,
        peak_rss: None,
        note: if jobs == 1 {
            "one put after another, nothing checked".into()
        } else {
            format!("{jobs} puts at a time, nothing checked")
        },
    })
}

/// `mmctl import --to store`, twice: the import, then the rerun that skips everything.
async fn mmctl(dir: &Path, files: &[File], jobs: usize) -> Result<Vec<Row>> {
    let azurite = fresh_azurite().await;
    let to = Destination::Store {
        azurite_url: &azurite.url,
    };
    let rows = import_twice(dir, files, jobs, &to, "mmctl import")?;
    drop(azurite);
    Ok(rows)
}

/// The admin key of the mmctl-api phase's pool.
const ADMIN_KEY: &str = "bench-import-admin";

/// `mmctl import` through the admin API of a pool serving a fresh Azurite container, twice,
/// with every scorer's peak RSS against its documented bound.
async fn mmctl_api(dir: &Path, files: &[File], args: &ImportArgs) -> Result<Vec<Row>> {
    setup::release_servers()?;
    let azurite = fresh_azurite().await;
    let env = [("AZURITE_BLOB_STORAGE_URL", azurite.url.as_str())];
    let sets = [
        "store.kind=azure".to_string(),
        "store.azure.use_emulator=true".into(),
        "store.azure.container=models".into(),
        format!("cache.budget={}", args.budget),
        format!("auth.admin_keys={ADMIN_KEY}"),
        "log.level=warn".into(),
    ];
    let scorers: Vec<ScorerProcess> = (0..args.scorers)
        .map(|_| ScorerProcess::start(&sets, &env))
        .collect();
    let idle: Vec<u64> = scorers.iter().map(|s| s.rss_bytes()).collect();
    let proxy = super::proxy(
        free_port(),
        &addrs(&scorers),
        &[&format!("auth.admin_keys={ADMIN_KEY}")],
    )?;
    let to = Destination::Api { proxy: &proxy.url };
    let mut rows = import_twice(dir, files, args.jobs, &to, "mmctl import --to api")?;
    let budget = scorers[0].metrics().await.get("mm_scorer_budget_bytes") as u64;
    let within: Vec<String> = scorers
        .iter()
        .zip(&idle)
        .map(|(scorer, idle)| {
            let peak = scorer.peak_rss_bytes();
            let bound = super::rss_bound(*idle, budget);
            format!(
                "scorer peak RSS {:.0} MB of bound {:.0} MB{}",
                peak as f64 / 1e6,
                bound as f64 / 1e6,
                if peak <= bound { "" } else { " (OVER)" }
            )
        })
        .collect();
    if let Some(first) = rows.first_mut() {
        first.note.push_str(&format!("; {}", within.join(", ")));
    }
    drop(proxy);
    drop(scorers);
    drop(azurite);
    Ok(rows)
}

/// Where an import goes.
enum Destination<'a> {
    /// `--to store` on the Azurite at this URL.
    Store { azurite_url: &'a str },
    /// `--to api` through this proxy, with [`ADMIN_KEY`].
    Api { proxy: &'a str },
}

/// The import, then the rerun that finds everything in place and skips it.
fn import_twice(
    dir: &Path,
    files: &[File],
    jobs: usize,
    to: &Destination<'_>,
    label: &str,
) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for pass in ["import", "rerun"] {
        let started = Instant::now();
        let (report, peak) = run_mmctl(dir, to, jobs)?;
        let seconds = started.elapsed().as_secs_f64();
        let summary = &report["summary"];
        let count = |k: &str| summary[k].as_u64().unwrap_or(0);
        let refused: Vec<String> = report["models"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["outcome"] == "refused" || r["outcome"] == "failed")
            .take(3)
            .map(|r| format!("{}: {}", r["model"], r["detail"]))
            .collect();
        let engines = |engine: &str| {
            report["models"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|r| r["engine"] == engine)
                .count()
        };
        rows.push(Row {
            phase: format!("{label} ({pass})"),
            models: files.len(),
            bytes: files.iter().map(|f| f.bytes).sum(),
            seconds,
            peak_rss: Some(peak),
            note: format!(
                "published {}, skipped {}, refused {}, failed {}{}{}",
                count("published"),
                count("skipped"),
                count("refused"),
                count("failed"),
                if pass == "import" {
                    format!(
                        "; checked: {} native, {} ONNX Runtime",
                        engines("native"),
                        engines("onnxruntime")
                    )
                } else {
                    String::new()
                },
                if refused.is_empty() {
                    String::new()
                } else {
                    format!("; e.g. {}", refused.join("; "))
                }
            ),
        });
    }
    Ok(rows)
}

/// Runs the release mmctl and samples its resident memory every 100 ms.
fn run_mmctl(dir: &Path, to: &Destination<'_>, jobs: usize) -> Result<(Value, u64)> {
    let mut command = Command::new(binary("mmctl"));
    let to = match to {
        Destination::Store { azurite_url } => {
            command
                .args([
                    "--store",
                    "azure://models",
                    "--azure-account",
                    azurite::ACCOUNT,
                    "--azure-access-key",
                    azurite::KEY,
                    "--azure-emulator",
                ])
                .env("AZURITE_BLOB_STORAGE_URL", azurite_url);
            "store"
        }
        Destination::Api { proxy } => {
            command.args(["--proxy", proxy, "--key", ADMIN_KEY]);
            "api"
        }
    };
    let mut child = command
        .args(["--timeout", "120", "--json", "import"])
        .arg(dir)
        .args(["--to", to, "--no-progress", "--jobs", &jobs.to_string()])
        .env("XDG_CONFIG_HOME", dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting mmctl")?;
    let pid = child.id().to_string();
    let peak = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Some(rss) = rss(&pid) {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let mut stdout = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().expect("piped"), &mut stdout)?;
    let status = child.wait()?;
    done.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let report: Value = serde_json::from_str(&stdout)
        .with_context(|| format!("mmctl's report ({status}): {stdout}"))?;
    Ok((report, peak.load(Ordering::Relaxed)))
}

/// A process's resident memory from `/proc`, or `None` once it has exited.
fn rss(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}
