//! `cargo xtask bench engines`: the native engine against ONNX Runtime, per model size
//! class, on real scikit-learn models (the realistic store): load time, resident bytes,
//! peak transient heap during a native load, and hot-hit latency, in this process.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use manymodels_config::scorer::NativeEngine;
use manymodels_contract::ModelId;
use manymodels_engine::{self as engine, Engines, LoadedModel};
use manymodels_tests::alloc::peak_heap;
use manymodels_tests::process::status_bytes;
use serde_json::Value;

use super::median;

#[derive(clap::Args, Clone, Debug)]
pub struct EnginesArgs {
    /// A store made by `models/make_realistic.py` (it has `.meta/<id>.json`).
    #[arg(long, default_value = ".cache/realistic")]
    store: PathBuf,
    /// Models per size class.
    #[arg(long, default_value_t = 6)]
    per_class: usize,
    /// Repetitions of each load.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Hot calls per model and engine.
    #[arg(long, default_value_t = 5_000)]
    calls: usize,
}

/// One model of a realistic store, from its `.meta/<id>.json`.
pub(super) struct Meta {
    pub id: String,
    pub tier: String,
    pub bytes: u64,
    pub request: Value,
}

/// The store's models, by tier and size.
pub(super) fn metas(store: &Path) -> Result<Vec<Meta>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(store.join(".meta")).context("the store has no .meta")? {
        let value: Value = serde_json::from_str(&std::fs::read_to_string(entry?.path())?)?;
        out.push(Meta {
            id: value["id"].as_str().context("id")?.to_string(),
            tier: value["tier"].as_str().context("tier")?.to_string(),
            bytes: value["bytes"].as_u64().context("bytes")?,
            request: value["sample_request"].clone(),
        });
    }
    out.sort_by_key(|m| (m.tier.clone(), m.bytes));
    Ok(out)
}

struct Figures {
    load: Duration,
    weight: u64,
    hot_p50: Duration,
    /// Peak resident set during a load above the process's before it, bytes (max of reps).
    peak_rss: u64,
}

fn measure(
    engines: Engines,
    meta: &Meta,
    bytes: &[u8],
    reps: usize,
    calls: usize,
) -> Result<(Figures, Option<usize>)> {
    let id = ModelId::parse(&meta.id).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut times = Vec::new();
    let mut model: Option<LoadedModel> = None;
    let mut peak = None;
    let mut peak_rss = 0u64;
    for _ in 0..reps {
        drop(model.take());
        super::trim_heap();
        // Resets VmHWM to the current resident set (Linux "clear_refs" value 5).
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        let rss_before = status_bytes("self", "VmRSS");
        let started = Instant::now();
        // The native engine allocates only through the Rust heap, which xtask counts
        // (`manymodels_tests::alloc`); ONNX Runtime's heap is measured with mallinfo2.
        let (loaded, heap_peak) = peak_heap(|| engines.load(id.clone(), 1, bytes, 0));
        let loaded = loaded.map_err(anyhow::Error::msg)?;
        times.push(started.elapsed());
        peak_rss = peak_rss.max(status_bytes("self", "VmHWM").saturating_sub(rss_before));
        peak = Some(heap_peak);
        model = Some(loaded);
    }
    let model = model.context("at least one rep")?;
    let inputs = super::one_row_tensors(&meta.request);
    let mut hot = model
        .time_runs(&inputs, calls)
        .map_err(anyhow::Error::msg)?;
    hot.sort();
    let native = model.engine == engine::Engine::Native;
    Ok((
        Figures {
            load: median(times),
            weight: model.weight,
            hot_p50: hot[hot.len() / 2],
            peak_rss,
        },
        native.then_some(peak.unwrap_or(0)),
    ))
}

pub fn run(args: EnginesArgs) -> Result<()> {
    if let Some(done) = super::in_release(
        "engines",
        &[
            "--store".into(),
            args.store.clone().into_os_string(),
            "--per-class".into(),
            args.per_class.to_string().into(),
            "--reps".into(),
            args.reps.to_string().into(),
            "--calls".into(),
            args.calls.to_string().into(),
        ],
    ) {
        return done;
    }
    let library = std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from);
    let environment = engine::environment(library.as_deref()).map_err(anyhow::Error::msg)?;
    engine::self_test(environment).map_err(anyhow::Error::msg)?;
    let ort = Engines {
        environment: Some(environment),
        native: NativeEngine::Off,
    };
    let native = Engines {
        environment: Some(environment),
        native: NativeEngine::Auto,
    };
    let all = metas(&args.store)?;
    println!(
        "In-process, release build, one model at a time; ONNX Runtime 1.31.1 sessions as the scorer creates them (one intra-op thread). Store: {}. Load = file bytes to a servable model (median of {}); resident = what the cache charges (ONNX Runtime: heap kept across session creation, mallinfo2; native: its own heap, exact); native peak = the Rust heap's high-water mark during the load above the file itself; peak RSS growth = the process's VmHWM during the load (reset with clear_refs) above its VmRSS before, the file buffer excluded, largest of the class; hot = one-row call p50 of {} calls through `LoadedModel::infer` (no HTTP).\n",
        args.store.display(),
        args.reps,
        args.calls
    );
    println!(
        "| class | models | file (mean) | load ORT | load native | load speed-up | resident ORT / file | resident native / file | native peak during load / file | peak RSS growth during load / file, ORT / native | hot ORT | hot native |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for tier in ["linear", "mid", "heavy"] {
        let class: Vec<&Meta> = all.iter().filter(|m| m.tier == tier).collect();
        if class.is_empty() {
            continue;
        }
        // Spread the picks over the class's sizes.
        let step = (class.len() / args.per_class.max(1)).max(1);
        let picks: Vec<&Meta> = class
            .iter()
            .step_by(step)
            .take(args.per_class)
            .copied()
            .collect();
        let (mut file, mut ort_load, mut nat_load) = (0u64, Duration::ZERO, Duration::ZERO);
        let (mut ort_weight, mut nat_weight, mut nat_peak) = (0u64, 0u64, 0usize);
        let (mut ort_hot, mut nat_hot) = (Duration::ZERO, Duration::ZERO);
        let (mut ort_rss, mut nat_rss) = (0f64, 0f64);
        for meta in &picks {
            let bytes = std::fs::read(args.store.join(&meta.id).join("1/model.onnx"))?;
            let (o, _) = measure(ort, meta, &bytes, args.reps, args.calls)?;
            let (n, peak) = measure(native, meta, &bytes, args.reps, args.calls)?;
            let peak = peak.with_context(|| format!("{} did not load natively", meta.id))?;
            file += bytes.len() as u64;
            ort_load += o.load;
            nat_load += n.load;
            ort_weight += o.weight;
            nat_weight += n.weight;
            nat_peak = nat_peak.max(peak * 1000 / bytes.len());
            ort_rss = ort_rss.max(o.peak_rss as f64 / bytes.len() as f64);
            nat_rss = nat_rss.max(n.peak_rss as f64 / bytes.len() as f64);
            ort_hot += o.hot_p50;
            nat_hot += n.hot_p50;
        }
        let k = picks.len() as u32;
        println!(
            "| {tier} | {} | {:.0} KB | {:.2} ms | {:.3} ms | {:.0}x | {:.2} | {:.2} | ≤ {:.2} | ≤ {:.1} / {:.1} | {:.1} µs | {:.1} µs |",
            picks.len(),
            file as f64 / f64::from(k) / 1e3,
            (ort_load / k).as_secs_f64() * 1e3,
            (nat_load / k).as_secs_f64() * 1e3,
            ort_load.as_secs_f64() / nat_load.as_secs_f64(),
            ort_weight as f64 / file as f64,
            nat_weight as f64 / file as f64,
            nat_peak as f64 / 1000.0,
            ort_rss,
            nat_rss,
            (ort_hot / k).as_secs_f64() * 1e6,
            (nat_hot / k).as_secs_f64() * 1e6,
        );
    }
    Ok(())
}
