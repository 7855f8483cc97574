//! Synthetic ONNX models for manymodels' scale tests and benchmarks, written fast.
//!
//! This crate generates valid ONNX regressors from a small [`Spec`] — an
//! `ai.onnx.ml.LinearRegressor` or an `ai.onnx.ml.TreeEnsembleRegressor` with random trees —
//! encoding the `ModelProto` directly with a minimal built-in protobuf writer, and keeps a
//! pure-Rust reference evaluator ([`GeneratedModel::predict`], [`GeneratedModel::predict_batch`])
//! that reproduces ONNX Runtime's CPU results bit for bit (forests everywhere, linear models on
//! x86-64 with AVX2/FMA3 or AVX-512), so tests can check scores end to end. Every model has input `"input"`
//! FP32 `[N, F]` and output `"variable"` FP32 `[N, 1]`, as skl2onnx names regressors.
//! [`spec_for`] gives a deterministic, realistic mix of sizes by index, and [`write_store`]
//! writes thousands of models into a `<dir>/<model_id>/1/model.onnx` tree on all cores.
//!
//! It does not read or validate ONNX, does not run ONNX Runtime, and has no dependencies.
//! The generated models are random (not trained): their predictions are meaningful only as
//! numbers to compare. Output is a pure function of the spec and seed (bytes are identical
//! across runs, platforms and thread counts).

mod forest;
mod linear;
mod onnx;
mod pb;
mod rng;
mod store;

#[cfg(test)]
mod ort_check;

pub use store::{
    KindStats, Mix, SizeClass, StoreStats, model_id, model_path, spec_for, write_store,
};

/// Name of every generated model's single input (FP32 `[N, features]`).
pub const INPUT_NAME: &str = "input";
/// Name of every generated model's single output (FP32 `[N, 1]`).
pub const OUTPUT_NAME: &str = "variable";

/// What to generate. Everything about the model is a pure function of its spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Spec {
    /// `LinearRegressor` with `features` random coefficients and an intercept in `[-1, 1)`.
    Linear { features: usize, seed: u64 },
    /// `TreeEnsembleRegressor` of `trees` random `BRANCH_LEQ` trees at most `depth` splits
    /// deep (`depth` <= 20), splitting on features in `0..features` at thresholds in
    /// `[-2, 2)`. The seed also picks, per forest: full trees (half the seeds) or randomly
    /// pruned ones (a node becomes a leaf early with probability 5–30%), `SUM` or `AVERAGE`,
    /// and whether `nodes_missing_value_tracks_true` is present.
    Forest {
        features: usize,
        trees: usize,
        depth: usize,
        seed: u64,
    },
}

impl Spec {
    /// The input width F.
    pub fn features(&self) -> usize {
        match *self {
            Spec::Linear { features, .. } | Spec::Forest { features, .. } => features,
        }
    }

    /// `"linear"` or `"forest"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Spec::Linear { .. } => "linear",
            Spec::Forest { .. } => "forest",
        }
    }
}

#[derive(Debug, Clone)]
enum Eval {
    Linear(linear::Linear),
    Forest(forest::Forest),
}

/// A generated model: its spec, its ONNX bytes, and a reference evaluator.
#[derive(Debug, Clone)]
pub struct GeneratedModel {
    pub spec: Spec,
    /// The serialized `ModelProto`, ready to write as `model.onnx`.
    pub bytes: Vec<u8>,
    eval: Eval,
}

impl GeneratedModel {
    /// The model's output for one input row, as ONNX Runtime (CPU) returns it when that row
    /// is scored alone, i.e. for an input of shape `[1, F]`.
    ///
    /// Forests are exact in every case: leaf weights are chosen so that their sum is exact
    /// in any order and grouping, so ORT's tree-parallel accumulation cannot change it; NaN
    /// features follow `nodes_missing_value_tracks_true`.
    ///
    /// Linear models reproduce the MLAS kernel ORT uses on x86-64 (bit for bit with
    /// ONNX Runtime 1.31). ORT uses a *different* kernel for batches of two or more rows
    /// (see [`predict_batch`](Self::predict_batch)), and the two can differ in the last
    /// bits, by up to ~1e-4 relative when the dot product cancels. On other architectures
    /// expect differences of a few ulps of the sum of `|x_i * w_i|`.
    ///
    /// # Panics
    /// If `row.len() != self.features()`.
    pub fn predict(&self, row: &[f32]) -> f32 {
        assert_eq!(
            row.len(),
            self.features(),
            "row width does not match the model's input width"
        );
        match &self.eval {
            Eval::Linear(m) => m.predict_alone(row),
            Eval::Forest(m) => m.predict(row),
        }
    }

    /// The model's outputs for a batch: `rows` is a row-major `[N, F]` matrix, exactly the
    /// input tensor's data, and the result is ORT's `[N, 1]` output. Equal to
    /// [`predict`](Self::predict) per row when `N == 1` and for forests; for linear models
    /// with `N >= 2` it follows ORT's general SGEMM kernel (an FMA chain in feature order).
    ///
    /// (ORT's threading can, for very large and wide batches, hand a single trailing row to
    /// the one-row kernel; that is not modelled.)
    ///
    /// # Panics
    /// If `rows.len()` is not a multiple of `self.features()`.
    pub fn predict_batch(&self, rows: &[f32]) -> Vec<f32> {
        let f = self.features();
        assert!(
            rows.len().is_multiple_of(f),
            "batch length {} is not a multiple of the input width {f}",
            rows.len()
        );
        let n = rows.len() / f;
        match &self.eval {
            Eval::Linear(m) if n >= 2 => rows
                .chunks_exact(f)
                .map(|r| m.predict_in_batch(r))
                .collect(),
            _ => rows.chunks_exact(f).map(|r| self.predict(r)).collect(),
        }
    }

    /// The input width F.
    pub fn features(&self) -> usize {
        self.spec.features()
    }

    /// Total tree nodes (0 for linear models).
    pub fn tree_nodes(&self) -> usize {
        match &self.eval {
            Eval::Linear(_) => 0,
            Eval::Forest(f) => f.nodes(),
        }
    }

    /// The size class this model falls in (by kind and encoded size).
    pub fn size_class(&self) -> SizeClass {
        SizeClass::of(&self.spec, self.bytes.len() as u64)
    }
}

/// `model` (an ONNX `ModelProto`'s bytes) with one more `metadata_props` entry (field 14,
/// a `StringStringEntryProto`): protobuf lets a repeated field's entries be appended at the
/// end of the message, so any model file can be given a declaration in a test.
pub fn with_metadata_prop(model: &[u8], key: &str, value: &str) -> Vec<u8> {
    let mut entry = vec![0x0a];
    pb::put_varint(&mut entry, key.len() as u64);
    entry.extend_from_slice(key.as_bytes());
    entry.push(0x12);
    pb::put_varint(&mut entry, value.len() as u64);
    entry.extend_from_slice(value.as_bytes());
    let mut out = model.to_vec();
    out.push(0x72);
    pb::put_varint(&mut out, entry.len() as u64);
    out.extend_from_slice(&entry);
    out
}

/// Generates the model for `spec`.
///
/// # Panics
/// On a spec with zero features or zero trees, or a depth above 20.
pub fn build(spec: &Spec) -> GeneratedModel {
    let (eval, bytes) = match *spec {
        Spec::Linear { features, seed } => {
            let m = linear::Linear::generate(features, seed);
            let bytes = m.encode();
            (Eval::Linear(m), bytes)
        }
        Spec::Forest {
            features,
            trees,
            depth,
            seed,
        } => {
            let (m, bytes) = forest::generate(features, trees, depth, seed);
            (Eval::Forest(m), bytes)
        }
    };
    GeneratedModel {
        spec: *spec,
        bytes,
        eval,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_spec_same_bytes() {
        let specs = [
            Spec::Linear {
                features: 7,
                seed: 1,
            },
            Spec::Forest {
                features: 12,
                trees: 20,
                depth: 5,
                seed: 2,
            },
            Spec::Forest {
                features: 12,
                trees: 20,
                depth: 5,
                seed: 3,
            },
        ];
        for spec in specs {
            let a = build(&spec);
            let b = build(&spec);
            assert_eq!(a.bytes, b.bytes, "{spec:?}");
            let row: Vec<f32> = (0..spec.features())
                .map(|i| i as f32 * 0.37 - 1.5)
                .collect();
            assert_eq!(a.predict(&row).to_bits(), b.predict(&row).to_bits());
        }
        // Different seeds give different models.
        assert_ne!(build(&specs[1]).bytes, build(&specs[2]).bytes);
        assert_ne!(
            build(&Spec::Linear {
                features: 7,
                seed: 1
            })
            .bytes,
            build(&Spec::Linear {
                features: 7,
                seed: 2
            })
            .bytes
        );
    }

    /// Golden hash: catches accidental changes to the generated bytes (which would silently
    /// change every benchmark's models). Update deliberately if the format changes.
    #[test]
    fn bytes_are_stable() {
        fn fnv1a(bytes: &[u8]) -> u64 {
            bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            })
        }
        let linear = build(&Spec::Linear {
            features: 4,
            seed: 42,
        });
        let forest = build(&Spec::Forest {
            features: 8,
            trees: 3,
            depth: 3,
            seed: 42,
        });
        let got = (fnv1a(&linear.bytes), fnv1a(&forest.bytes));
        assert_eq!(
            got,
            (0x00d6_2ab4_d5bc_3e9a, 0x62f0_f86a_2df8_ef0b),
            "golden hashes changed: {got:#x?}"
        );
    }

    #[test]
    fn model_header_is_as_specified() {
        let m = build(&Spec::Linear {
            features: 3,
            seed: 9,
        });
        // ir_version = 8, then producer_name.
        assert_eq!(&m.bytes[..4], &[0x08, 0x08, 0x12, 14]);
        assert_eq!(&m.bytes[4..18], b"manymodels-gen");
        let tail_ml = [0x42, 0x0E, 0x0A, 0x0A];
        let ml = b"ai.onnx.ml";
        let pos = m
            .bytes
            .windows(4)
            .rposition(|w| w == tail_ml)
            .expect("ml opset import");
        assert_eq!(&m.bytes[pos + 4..pos + 14], ml);
        assert_eq!(&m.bytes[pos + 14..], &[0x10, 0x03]);
        // The default-domain import precedes it: {domain: "", version: 15}.
        assert_eq!(&m.bytes[pos - 6..pos], &[0x42, 0x04, 0x0A, 0x00, 0x10, 15]);
    }

    #[test]
    fn linear_predict_is_dot_plus_intercept() {
        let m = build(&Spec::Linear {
            features: 5,
            seed: 3,
        });
        let zero = [0.0f32; 5];
        let intercept = m.predict(&zero);
        let mut e0 = zero;
        e0[0] = 1.0;
        let c0 = m.predict(&e0) - intercept;
        assert!((-1.0..1.0).contains(&intercept));
        assert!((-1.0..1.0).contains(&c0));
    }

    #[test]
    fn batch_and_single_predictions() {
        let mut rng = rng::Rng::new(77);
        for spec in [
            Spec::Linear {
                features: 29,
                seed: 4,
            },
            Spec::Forest {
                features: 9,
                trees: 40,
                depth: 5,
                seed: 8,
            },
        ] {
            let m = build(&spec);
            let f = m.features();
            let rows: Vec<f32> = (0..f * 64).map(|_| rng.signed_f32() * 3.0).collect();
            let batch = m.predict_batch(&rows);
            assert_eq!(batch.len(), 64);
            for (r, &b) in rows.chunks_exact(f).zip(&batch) {
                let alone = m.predict(r);
                assert_eq!(m.predict_batch(r), [alone]);
                // Both are the model's value; for linear models they may differ in rounding.
                let tolerance = if spec.kind() == "linear" {
                    1e-5 * (1.0 + r.iter().map(|x| x.abs()).sum::<f32>())
                } else {
                    0.0
                };
                assert!((alone - b).abs() <= tolerance, "{spec:?}: {alone} vs {b}");
            }
        }
    }

    #[test]
    fn linear_matches_f64_dot_product() {
        let m = build(&Spec::Linear {
            features: 32,
            seed: 12,
        });
        let Eval::Linear(lin) = &m.eval else {
            unreachable!()
        };
        let mut rng = rng::Rng::new(1);
        for _ in 0..100 {
            let row: Vec<f32> = (0..32).map(|_| rng.signed_f32() * 2.0).collect();
            let exact = lin.exact(&row);
            let scale: f64 = 1.0 + row.iter().map(|&x| f64::from(x).abs()).sum::<f64>();
            assert!((f64::from(m.predict(&row)) - exact).abs() < 1e-6 * scale);
            assert!(
                (f64::from(m.predict_batch(&[row.clone(), row].concat())[0]) - exact).abs()
                    < 1e-6 * scale
            );
        }
    }

    #[test]
    fn forest_predictions_vary_and_stay_bounded() {
        let m = build(&Spec::Forest {
            features: 6,
            trees: 50,
            depth: 6,
            seed: 11,
        });
        let mut rng = rng::Rng::new(5);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let row: Vec<f32> = (0..6).map(|_| rng.signed_f32() * 2.5).collect();
            let y = m.predict(&row);
            assert!(y.is_finite() && y.abs() <= 50.0);
            seen.insert(y.to_bits());
        }
        assert!(seen.len() > 50, "only {} distinct predictions", seen.len());
    }

    #[test]
    #[should_panic(expected = "row width")]
    fn predict_rejects_wrong_width() {
        build(&Spec::Linear {
            features: 3,
            seed: 0,
        })
        .predict(&[1.0, 2.0]);
    }
}
