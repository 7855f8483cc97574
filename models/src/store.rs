//! Model mixes, ids, and writing a whole model store to disk in parallel.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::forest::{FOREST_OVERHEAD_BYTES, Shape, estimate_tree_bytes};
use crate::rng::{Rng, derive};
use crate::{Spec, build};

/// Which population of models [`spec_for`] draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mix {
    /// Linear models only (4–32 features, a few hundred bytes each).
    Tiny,
    /// In every aligned block of 100 indices, in a seed-dependent order: 80 linear models
    /// (4–32 features, ~300 B), 15 small forests (10–50 trees of depth 4–6, ~20–160 KB),
    /// 4 forests of 0.85–1.15 MB (depth 6–8) and 1 forest of 3–6 MB (depth 8–10).
    /// Mean file size is about 100 KB.
    Realistic,
}

impl FromStr for Mix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "tiny" => Ok(Mix::Tiny),
            "realistic" => Ok(Mix::Realistic),
            other => Err(format!(
                "unknown model mix `{other}` (expected `tiny` or `realistic`)"
            )),
        }
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mix::Tiny => "tiny",
            Mix::Realistic => "realistic",
        })
    }
}

/// Coarse classes of generated models, by kind and encoded size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SizeClass {
    Linear,
    /// A forest under 512 KiB.
    SmallForest,
    /// A forest of 512 KiB up to 2 MiB (the "about 1 MB" tier).
    MediumForest,
    /// A forest of 2 MiB or more.
    LargeForest,
}

impl SizeClass {
    pub fn of(spec: &Spec, bytes: u64) -> Self {
        match spec {
            Spec::Linear { .. } => SizeClass::Linear,
            Spec::Forest { .. } if bytes < 512 << 10 => SizeClass::SmallForest,
            Spec::Forest { .. } if bytes < 2 << 20 => SizeClass::MediumForest,
            Spec::Forest { .. } => SizeClass::LargeForest,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            SizeClass::Linear => "linear",
            SizeClass::SmallForest => "forest-small",
            SizeClass::MediumForest => "forest-1mb",
            SizeClass::LargeForest => "forest-large",
        }
    }
}

impl fmt::Display for SizeClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Count and sizes of the models of one [`SizeClass`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KindStats {
    pub models: usize,
    pub bytes: u64,
    pub min_bytes: u64,
    pub max_bytes: u64,
}

impl KindStats {
    fn add(&mut self, bytes: u64) {
        self.min_bytes = if self.models == 0 {
            bytes
        } else {
            self.min_bytes.min(bytes)
        };
        self.max_bytes = self.max_bytes.max(bytes);
        self.models += 1;
        self.bytes += bytes;
    }

    fn merge(&mut self, other: &KindStats) {
        if other.models == 0 {
            return;
        }
        self.min_bytes = if self.models == 0 {
            other.min_bytes
        } else {
            self.min_bytes.min(other.min_bytes)
        };
        self.max_bytes = self.max_bytes.max(other.max_bytes);
        self.models += other.models;
        self.bytes += other.bytes;
    }

    /// Mean file size in bytes (0 if empty).
    pub fn mean_bytes(&self) -> u64 {
        if self.models == 0 {
            0
        } else {
            self.bytes / self.models as u64
        }
    }
}

/// What [`write_store`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub models: usize,
    /// Total bytes of all `model.onnx` files.
    pub bytes: u64,
    pub by_kind: BTreeMap<SizeClass, KindStats>,
}

impl StoreStats {
    /// Records one model (for callers assembling stats for their own stores).
    pub fn add(&mut self, class: SizeClass, bytes: u64) {
        self.models += 1;
        self.bytes += bytes;
        self.by_kind.entry(class).or_default().add(bytes);
    }

    fn merge(&mut self, other: &StoreStats) {
        self.models += other.models;
        self.bytes += other.bytes;
        for (class, stats) in &other.by_kind {
            self.by_kind.entry(*class).or_default().merge(stats);
        }
    }
}

impl fmt::Display for StoreStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mean = if self.models == 0 {
            0
        } else {
            self.bytes / self.models as u64
        };
        writeln!(
            f,
            "{} models, {} bytes, mean {} bytes",
            self.models, self.bytes, mean
        )?;
        for (class, s) in &self.by_kind {
            writeln!(
                f,
                "  {:<13} {:>6} ({:5.2}%)  total {:>12}  mean {:>9}  min {:>9}  max {:>9}",
                class.as_str(),
                s.models,
                100.0 * s.models as f64 / self.models.max(1) as f64,
                s.bytes,
                s.mean_bytes(),
                s.min_bytes,
                s.max_bytes,
            )?;
        }
        Ok(())
    }
}

/// The id of the `index`-th generated model: `gen-00042` (zero padded to at least 5 digits).
pub fn model_id(index: usize) -> String {
    format!("gen-{index:05}")
}

/// Where [`write_store`] puts the `index`-th model: `<dir>/<model_id>/1/model.onnx`.
pub fn model_path(dir: &Path, index: usize) -> PathBuf {
    dir.join(model_id(index)).join("1").join("model.onnx")
}

// Seed-derivation salts, so the streams below never overlap.
const SALT_BLOCK: u64 = 0x0042_4C4F_434B; // "BLOCK"
const SALT_PARAMS: u64 = 0x5041_5241_4D53; // "PARAMS"
const SALT_MODEL: u64 = 0x004D_4F44_454C; // "MODEL"

/// Realistic tiers, by rank within a block of 100 indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tier {
    Linear,
    Small,
    Medium,
    Large,
}

fn realistic_tier(index: usize, seed: u64) -> Tier {
    // A seed- and block-dependent permutation of 0..100; the index's rank in it picks the tier,
    // so every aligned block of 100 models has exactly 80/15/4/1.
    let mut perm: [u8; 100] = std::array::from_fn(|i| i as u8);
    let mut rng = Rng::new(derive(seed, &[SALT_BLOCK, (index / 100) as u64]));
    for i in (1..perm.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        perm.swap(i, j);
    }
    match perm[index % 100] {
        0..80 => Tier::Linear,
        80..95 => Tier::Small,
        95..99 => Tier::Medium,
        _ => Tier::Large,
    }
}

/// Number of trees that brings a forest of this depth and seed to about `target_bytes`.
fn trees_for_bytes(target_bytes: f64, depth: usize, seed: u64) -> usize {
    let shape = Shape::from_seed(seed);
    let budget = (target_bytes - FOREST_OVERHEAD_BYTES).max(1.0);
    // Tree-id varints grow with the tree count (from 128 trees on), so refine once.
    let mut trees = 1usize;
    for _ in 0..2 {
        let per_tree = estimate_tree_bytes(&shape, trees, depth);
        trees = ((budget / per_tree).round() as usize).max(1);
    }
    trees
}

/// A small forest of about `target_bytes`: depth 4-6 (random among those that reach the
/// target with 10-50 trees, else the closest), 10-50 trees.
fn small_forest(rng: &mut Rng, target_bytes: f64, seed: u64) -> (usize, usize) {
    let mut depths = [4usize, 5, 6];
    let first = rng.below(3) as usize;
    depths.rotate_left(first);
    let mut best = (usize::MAX, 0, 0);
    for depth in depths {
        let trees = trees_for_bytes(target_bytes, depth, seed);
        let miss = if trees < 10 {
            10 - trees
        } else {
            trees.saturating_sub(50)
        };
        if miss < best.0 {
            best = (miss, trees.clamp(10, 50), depth);
        }
    }
    (best.1, best.2)
}

/// The spec of the `index`-th model of a mix: a pure function of `(index, mix, seed)`.
pub fn spec_for(index: usize, mix: Mix, seed: u64) -> Spec {
    let model_seed = derive(seed, &[SALT_MODEL, index as u64]);
    let mut rng = Rng::new(derive(seed, &[SALT_PARAMS, index as u64]));
    let tier = match mix {
        Mix::Tiny => Tier::Linear,
        Mix::Realistic => realistic_tier(index, seed),
    };
    match tier {
        Tier::Linear => Spec::Linear {
            features: rng.range(4, 32),
            seed: model_seed,
        },
        Tier::Small => {
            // Log-uniform in 20-160 KB.
            let target = 20e3 * 8f64.powf(rng.unit_f64());
            let features = rng.range(8, 32);
            let (trees, depth) = small_forest(&mut rng, target, model_seed);
            Spec::Forest {
                features,
                trees,
                depth,
                seed: model_seed,
            }
        }
        // 0.85-1.15 MB.
        Tier::Medium => sized_forest(&mut rng, (6, 8), (0.85, 0.3), (16, 64), model_seed),
        // 3-6 MB.
        Tier::Large => sized_forest(&mut rng, (8, 10), (3.0, 3.0), (32, 128), model_seed),
    }
}

/// A forest drawn in this order: its depth in `depths`, a target of
/// `1e6 * (megabytes.0 + megabytes.1 * u)` bytes (`u` uniform in [0, 1)) and its feature
/// count in `features` (ranges inclusive); as many trees as reach the target.
fn sized_forest(
    rng: &mut Rng,
    depths: (usize, usize),
    megabytes: (f64, f64),
    features: (usize, usize),
    seed: u64,
) -> Spec {
    let depth = rng.range(depths.0, depths.1);
    let target = 1e6 * (megabytes.0 + megabytes.1 * rng.unit_f64());
    Spec::Forest {
        features: rng.range(features.0, features.1),
        trees: trees_for_bytes(target, depth, seed),
        depth,
        seed,
    }
}

/// Creates `path` (whose parent exists) unless it already exists.
fn ensure_dir(path: &Path) -> io::Result<()> {
    match fs::create_dir(path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

/// Writes the `index`-th model under `dir` (which exists) via a temporary file in the
/// model's directory and a rename, so `model.onnx` is never observed half written.
fn write_model(dir: &Path, index: usize, bytes: &[u8], pid: u32) -> io::Result<()> {
    // Two plain mkdirs rather than create_dir_all: directory creation dominates the cost
    // of writing small models.
    let model_dir = dir.join(model_id(index));
    ensure_dir(&model_dir)?;
    let version_dir = model_dir.join("1");
    ensure_dir(&version_dir)?;
    let tmp = version_dir.join(format!(".model.onnx.tmp-{pid}"));
    let result =
        fs::write(&tmp, bytes).and_then(|()| fs::rename(&tmp, version_dir.join("model.onnx")));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Generates models `0..n` of `mix` and writes each to `<dir>/<model_id>/1/model.onnx`,
/// on all available cores. Each file is written under a temporary name in its final
/// directory and renamed into place (no fsync: this is for benchmarks, not durability).
/// Existing files are replaced. Stops at the first I/O error and returns it.
pub fn write_store(dir: &Path, n: usize, mix: Mix, seed: u64) -> io::Result<StoreStats> {
    fs::create_dir_all(dir)?;
    let threads = std::thread::available_parallelism()
        .map_or(1, |p| p.get())
        .clamp(1, n.max(1));
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<io::Error>> = Mutex::new(None);
    let pid = std::process::id();

    let per_thread: Vec<StoreStats> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut stats = StoreStats::default();
                    while !failed.load(Ordering::Relaxed) {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        if index >= n {
                            break;
                        }
                        let model = build(&spec_for(index, mix, seed));
                        if let Err(e) = write_model(dir, index, &model.bytes, pid) {
                            failed.store(true, Ordering::Relaxed);
                            first_error
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .get_or_insert(e);
                            break;
                        }
                        stats.add(model.size_class(), model.bytes.len() as u64);
                    }
                    stats
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("store writer thread panicked"))
            .collect()
    });

    if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    let mut total = StoreStats::default();
    for s in &per_thread {
        total.merge(s);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_ids() {
        assert_eq!(model_id(0), "gen-00000");
        assert_eq!(model_id(42), "gen-00042");
        assert_eq!(model_id(99_999), "gen-99999");
        assert_eq!(model_id(123_456), "gen-123456");
    }

    #[test]
    fn mix_parses() {
        assert_eq!("tiny".parse::<Mix>(), Ok(Mix::Tiny));
        assert_eq!("Realistic".parse::<Mix>(), Ok(Mix::Realistic));
        assert!("huge".parse::<Mix>().is_err());
    }

    #[test]
    fn specs_are_deterministic_per_index() {
        for mix in [Mix::Tiny, Mix::Realistic] {
            for i in [0, 1, 99, 100, 12_345] {
                assert_eq!(spec_for(i, mix, 7), spec_for(i, mix, 7));
            }
        }
        let a: Vec<_> = (0..200).map(|i| spec_for(i, Mix::Realistic, 1)).collect();
        let b: Vec<_> = (0..200).map(|i| spec_for(i, Mix::Realistic, 2)).collect();
        assert_ne!(a, b, "the seed must matter");
        assert!((0..100).all(|i| matches!(spec_for(i, Mix::Tiny, 3), Spec::Linear { .. })));
    }

    #[test]
    fn realistic_mix_proportions() {
        let n = 10_000;
        let mut counts = [0usize; 4];
        for i in 0..n {
            counts[realistic_tier(i, 2024) as usize] += 1;
            match spec_for(i, Mix::Realistic, 2024) {
                Spec::Linear { features, .. } => assert!((4..=32).contains(&features)),
                Spec::Forest {
                    features,
                    trees,
                    depth,
                    ..
                } => {
                    assert!((8..=128).contains(&features));
                    assert!(trees >= 10 && (4..=10).contains(&depth), "{trees} {depth}");
                }
            }
        }
        let share = |c: usize| c as f64 / n as f64;
        // Exact by construction per block of 100; allow some slack in case that changes.
        assert!((share(counts[0]) - 0.80).abs() < 0.02, "{counts:?}");
        assert!((share(counts[1]) - 0.15).abs() < 0.015, "{counts:?}");
        assert!((share(counts[2]) - 0.04).abs() < 0.008, "{counts:?}");
        assert!((share(counts[3]) - 0.01).abs() < 0.004, "{counts:?}");
        // Kinds agree with tiers.
        let linear = (0..n)
            .filter(|&i| matches!(spec_for(i, Mix::Realistic, 2024), Spec::Linear { .. }))
            .count();
        assert_eq!(linear, counts[0]);
    }

    #[test]
    fn tier_sizes_are_roughly_right() {
        // Build a sample of each forest tier and check the encoded sizes.
        let (mut small, mut medium, mut large) = (0, 0, 0);
        for i in 0.. {
            let tier = realistic_tier(i, 5);
            let (count, range) = match tier {
                Tier::Linear => continue,
                Tier::Small => (&mut small, 12_000..230_000),
                Tier::Medium => (&mut medium, 750_000..1_300_000),
                Tier::Large => (&mut large, 2_700_000..6_600_000),
            };
            if *count < 3 {
                *count += 1;
                let bytes = build(&spec_for(i, Mix::Realistic, 5)).bytes.len();
                assert!(
                    range.contains(&bytes),
                    "{tier:?} forest {i} of {bytes} bytes"
                );
            }
            if small == 3 && medium == 3 && large == 3 {
                break;
            }
        }
    }

    #[test]
    fn write_store_layout() {
        let dir = std::env::temp_dir().join(format!(
            "manymodels-models-test-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        let n = 120;
        let stats = write_store(&dir, n, Mix::Realistic, 99).expect("write_store");
        let result = std::panic::catch_unwind(|| {
            assert_eq!(stats.models, n);
            assert_eq!(stats.by_kind.values().map(|k| k.models).sum::<usize>(), n);
            let mut total = 0u64;
            for i in 0..n {
                let path = model_path(&dir, i);
                assert_eq!(
                    path,
                    dir.join(format!("gen-{i:05}")).join("1").join("model.onnx")
                );
                let bytes = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                assert_eq!(
                    bytes,
                    build(&spec_for(i, Mix::Realistic, 99)).bytes,
                    "model {i}"
                );
                total += bytes.len() as u64;
                // Nothing but the model in the version directory (no leftover temp files).
                let entries: Vec<_> = fs::read_dir(path.parent().unwrap()).unwrap().collect();
                assert_eq!(entries.len(), 1);
            }
            assert_eq!(stats.bytes, total);
            let top: Vec<_> = fs::read_dir(&dir).unwrap().collect();
            assert_eq!(top.len(), n);
            // Rewriting replaces files in place.
            assert_eq!(
                write_store(&dir, n, Mix::Realistic, 99).expect("rewrite"),
                stats
            );
        });
        fs::remove_dir_all(&dir).expect("clean up temp store");
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }
}
