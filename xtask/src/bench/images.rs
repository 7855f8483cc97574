//! `cargo xtask bench images`: what a miss costs with and without a native image, on the
//! realistic store's real scikit-learn models, in this process and in one run.
//!
//! For each picked model: the load a scorer without an image does (the file read from
//! the page cache, then the native compile), the image written once, and the load from
//! the image (open, read straight into the model's arrays, checksum, structure check) as
//! the scorer's load thread does it. Also the image's size against the file and against
//! the compiled model, the Rust heap's high-water mark during an image load above the
//! model it makes (the "no transient copy" claim), and whether the two copies answer
//! alike on the model's sample request.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::engines::{Meta, metas};
use anyhow::{Context, Result};
use manymodels_config::scorer::NativeEngine;
use manymodels_contract::ModelId;
use manymodels_engine::{self as engine, Engines};
use manymodels_tests::alloc::peak_heap;

#[derive(clap::Args, Clone, Debug)]
pub struct ImagesArgs {
    /// A store made by `models/make_realistic.py` (it has `.meta/<id>.json`).
    #[arg(long, default_value = ".cache/realistic")]
    store: PathBuf,
    /// Models per class (heavy forests are all those of 25-32 MB, up to this many).
    #[arg(long, default_value_t = 12)]
    per_class: usize,
    /// Loads of each model per way.
    #[arg(long, default_value_t = 9)]
    reps: usize,
}

fn quantile(mut v: Vec<Duration>, q: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One class's figures, every rep of every model pooled.
#[derive(Default)]
struct Class {
    models: usize,
    file: u64,
    image: u64,
    weight: u64,
    compile: Vec<Duration>,
    from_image: Vec<Duration>,
    /// Largest (heap peak during an image load) / (the model's own heap).
    peak_over_model: f64,
    mismatches: usize,
}

pub fn run(args: ImagesArgs) -> Result<()> {
    if let Some(done) = super::in_release(
        "images",
        &[
            "--store".into(),
            args.store.clone().into_os_string(),
            "--per-class".into(),
            args.per_class.to_string().into(),
            "--reps".into(),
            args.reps.to_string().into(),
        ],
    ) {
        return done;
    }
    // The scorer's allocator settings (big buffers are their own mappings, never recycled
    // heap): loads allocate here as they do in `mm-scorer`.
    manymodels_boot::tune_allocator();
    let library = std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from);
    let environment = engine::environment(library.as_deref()).map_err(anyhow::Error::msg)?;
    let engines = Engines {
        environment: Some(environment),
        native: NativeEngine::Auto,
    };
    let dir = std::env::temp_dir().join(format!("mm-bench-images-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let all = metas(&args.store)?;
    println!(
        "In-process, release build, one load at a time on this machine's 2 cores (nothing else of ours running). Store: {}. Compile = the model file read (page cache) and compiled natively, as a scorer without an image loads it; image = the image file opened and mapped (1 MiB and more: the model's arrays are then the page cache's pages) or read into one buffer (smaller), checksums and structure check included, as a scorer with `images.dir` loads it after the first time. {} loads of each model each way; p50/p99 over all loads of the class. Peak heap = the Rust heap's high-water mark during an image load over the model's bytes (0 for a mapped image: nothing is allocated).\n",
        args.store.display(),
        args.reps
    );
    println!(
        "| class | models | file (mean) | image / file | image / model | compile p50 | compile p99 | image p50 | image p99 | speed-up (p50) | peak heap / model | answers differ |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    type Pick = fn(&Meta) -> bool;
    let classes: [(&str, Pick); 4] = [
        ("linear", |m| m.tier == "linear"),
        ("mid forests", |m| m.tier == "mid"),
        ("heavy forests", |m| m.tier == "heavy"),
        ("heavy forests of 25-32 MB", |m| {
            m.tier == "heavy" && m.bytes >= 25_000_000
        }),
    ];
    for (name, pick) in classes {
        let class: Vec<&Meta> = all.iter().filter(|m| pick(m)).collect();
        if class.is_empty() {
            println!("| {name} | 0 | | | | | | | | | | |");
            continue;
        }
        let step = (class.len() / args.per_class.max(1)).max(1);
        let mut figures = Class::default();
        for meta in class.iter().step_by(step).take(args.per_class) {
            measure(&engines, &args, &dir, meta, &mut figures)?;
        }
        let (compile_p50, image_p50) = (
            quantile(figures.compile.clone(), 0.5),
            quantile(figures.from_image.clone(), 0.5),
        );
        println!(
            "| {name} | {} | {:.0} KB | {:.2} | {:.2} | {:.3} ms | {:.3} ms | {:.3} ms | {:.3} ms | {:.1}x | ≤ {:.2} | {} |",
            figures.models,
            figures.file as f64 / figures.models as f64 / 1e3,
            figures.image as f64 / figures.file as f64,
            figures.image as f64 / figures.weight as f64,
            ms(compile_p50),
            ms(quantile(figures.compile.clone(), 0.99)),
            ms(image_p50),
            ms(quantile(figures.from_image.clone(), 0.99)),
            compile_p50.as_secs_f64() / image_p50.as_secs_f64(),
            figures.peak_over_model,
            figures.mismatches,
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn measure(
    engines: &Engines,
    args: &ImagesArgs,
    dir: &std::path::Path,
    meta: &Meta,
    figures: &mut Class,
) -> Result<()> {
    let id = ModelId::parse(&meta.id).map_err(|e| anyhow::anyhow!("{e}"))?;
    let path = args.store.join(&meta.id).join("1/model.onnx");
    let mut compiled = None;
    for _ in 0..args.reps {
        drop(compiled.take());
        super::trim_heap();
        let started = Instant::now();
        let bytes = std::fs::read(&path)?;
        let loaded = match engines
            .load_native(id.clone(), 1, &bytes)
            .map_err(anyhow::Error::msg)?
        {
            engine::Native::Loaded(model) => *model,
            engine::Native::Refused(why) => anyhow::bail!("{} is not native: {why:?}", meta.id),
        };
        figures.compile.push(started.elapsed());
        compiled = Some((loaded, bytes.len() as u64));
    }
    let (compiled, file) = compiled.context("at least one rep")?;
    let image = compiled
        .image("bench")
        .with_context(|| format!("{}: no image", meta.id))?;
    let image_path = dir.join(format!("{}.mmimg", meta.id));
    std::fs::write(&image_path, &image)?;
    let mut from_image = None;
    let mut peak = 0usize;
    for _ in 0..args.reps {
        drop(from_image.take());
        super::trim_heap();
        let started = Instant::now();
        let (loaded, heap) = peak_heap(|| -> Result<_> {
            let file = std::fs::File::open(&image_path)?;
            let len = file.metadata()?.len();
            engines
                .load_image(id.clone(), 1, &file, len, "bench")
                .map_err(|e| anyhow::anyhow!("{}: {e}", meta.id))
        });
        let loaded = loaded?;
        figures.from_image.push(started.elapsed());
        peak = peak.max(heap);
        from_image = Some(loaded);
    }
    let from_image = from_image.context("at least one rep")?;
    let inputs = super::one_row_tensors(&meta.request);
    let selected: Vec<usize> = (0..compiled.outputs.len()).collect();
    let a = compiled
        .infer(inputs.clone(), &selected)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let b = from_image
        .infer(inputs, &selected)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    if format!("{a:?}") != format!("{b:?}") {
        figures.mismatches += 1;
    }
    figures.models += 1;
    figures.file += file;
    figures.image += image.len() as u64;
    figures.weight += from_image.weight;
    figures.peak_over_model = figures
        .peak_over_model
        .max(peak as f64 / from_image.weight as f64);
    Ok(())
}
