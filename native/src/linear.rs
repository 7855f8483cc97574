//! `LinearRegressor` and `LinearClassifier`, with ONNX Runtime's arithmetic.
//!
//! ONNX Runtime computes the scores with MLAS's SGEMM, whose summation order depends on
//! the batch and the CPU (see ARCHITECTURE.md, "The native engine"):
//!
//! - one row: the AVX `M1TransposeB` kernel: eight lanes, lane `l` summing `x[k] * w[k]`
//!   for `k ≡ l (mod 8)` with separate multiplies and adds, then a reduction tree whose
//!   shape depends on where the output falls in groups of 4, 2 and 1; then `+ bias`;
//! - several rows: per output, a fused multiply-add chain over `k` in blocks of `StrideK`
//!   features, each block's sum added to the output (which starts as the bias).
//!
//! The engine reproduces both exactly on x86-64 with AVX and FMA (and the AVX-512F softmax
//! kernel where a model needs it). On any other CPU a linear model is not covered and goes
//! to ONNX Runtime, so a number is never merely close.

use crate::attrs::{Attrs, NodeInput, one_computed_input, unsupported};
use crate::error::{CompileError, RunError};
use crate::onnx::NodeView;
use crate::transform::{self, PostTransform};
use crate::value::{Data, Elem, Tensor};

#[derive(Debug)]
pub(crate) struct Linear {
    /// `[outputs, features]`, row-major.
    pub(crate) coefficients: Vec<f32>,
    /// One per output, or empty.
    pub(crate) intercepts: Vec<f32>,
    pub(crate) outputs: usize,
    pub(crate) features: usize,
    pub(crate) post: PostTransform,
    /// `Some` for a classifier.
    pub(crate) labels: Option<Labels>,
    pub(crate) input: Elem,
}

#[derive(Debug)]
pub(crate) enum Labels {
    Int(Vec<i64>),
    Str(Vec<String>),
}

/// What this CPU lets the engine reproduce.
fn cpu_has_mlas_paths() -> (bool, bool) {
    #[cfg(target_arch = "x86_64")]
    {
        let base = std::arch::is_x86_feature_detected!("avx")
            && std::arch::is_x86_feature_detected!("fma");
        (base, base && std::arch::is_x86_feature_detected!("avx512f"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        (false, false)
    }
}

/// Compiles a `LinearRegressor` or (`classifier`) `LinearClassifier` where this CPU lets
/// the engine reproduce MLAS's arithmetic.
pub(crate) fn compile(
    node: &NodeView<'_>,
    attrs: &Attrs<'_, '_>,
    inputs: &[NodeInput<'_>],
    classifier: bool,
) -> Result<(Linear, Vec<Elem>), CompileError> {
    let input = one_computed_input(node, inputs)?;
    let (exact, avx512) = cpu_has_mlas_paths();
    if !exact {
        return Err(unsupported(
            node,
            "this CPU's MLAS kernels are not reproduced",
        ));
    }
    let coefficients = attrs.floats("coefficients")?;
    let intercepts_attr = attrs.floats("intercepts")?;
    let name = attrs.string("post_transform")?.unwrap_or("NONE");
    let post = PostTransform::parse(name)
        .ok_or_else(|| CompileError::Invalid(format!("unknown post_transform {name}")))?;
    if coefficients.is_empty() {
        return Err(CompileError::Invalid(
            "LinearRegressor/Classifier without coefficients".into(),
        ));
    }
    let (outputs, labels) = if classifier {
        // A classifier has one intercept per class.
        let classes = intercepts_attr.len();
        let labels = classifier_labels(node, attrs, input, coefficients.len(), classes)?;
        check_classifier_transform(node, classes, post, avx512)?;
        (classes, Some(labels))
    } else {
        let targets = regressor_targets(node, attrs, input, coefficients.len(), post)?;
        (targets, None)
    };
    let features = coefficients.len() / outputs;
    if features < 2 {
        return Err(unsupported(node, "one feature (MLAS swaps the operands)"));
    }
    // A regressor's intercepts of the wrong length are ignored, as ONNX Runtime does.
    let intercepts = if intercepts_attr.len() == outputs {
        intercepts_attr
    } else {
        Vec::new()
    };
    let elems = match &labels {
        Some(Labels::Int(_)) => vec![Elem::I64, Elem::F32],
        Some(Labels::Str(_)) => vec![Elem::Str, Elem::F32],
        None => vec![Elem::F32],
    };
    Ok((
        Linear {
            coefficients,
            intercepts,
            outputs,
            features,
            post,
            labels,
            input,
        },
        elems,
    ))
}

/// A classifier's class labels (integers or strings), checked against its `classes`
/// (one per intercept) and its `n_coefficients` coefficients.
fn classifier_labels(
    node: &NodeView<'_>,
    attrs: &Attrs<'_, '_>,
    input: Elem,
    n_coefficients: usize,
    classes: usize,
) -> Result<Labels, CompileError> {
    if !matches!(input, Elem::F32 | Elem::F64 | Elem::I64 | Elem::I32) {
        return Err(unsupported(node, "input type"));
    }
    // ONNX Runtime reads but ignores multi_class.
    let _ = attrs.int("multi_class");
    let ints = attrs.ints("classlabels_ints")?;
    let strings = attrs.strings("classlabels_strings")?;
    let labels = match (ints.is_empty(), strings.is_empty()) {
        (false, true) => Labels::Int(ints),
        (true, false) => Labels::Str(strings.into_iter().map(str::to_string).collect()),
        (true, true) => return Err(unsupported(node, "no class labels")),
        (false, false) => {
            return Err(CompileError::Invalid("both label lists are given".into()));
        }
    };
    let n_labels = match &labels {
        Labels::Int(v) => v.len(),
        Labels::Str(v) => v.len(),
    };
    if classes == 0 || !n_coefficients.is_multiple_of(classes) {
        return Err(CompileError::Invalid(format!(
            "{n_coefficients} coefficients for {classes} classes"
        )));
    }
    if (classes == 1 && n_labels != 2) || (classes > 1 && n_labels < classes) {
        return Err(CompileError::Invalid(format!(
            "{n_labels} labels for {classes} classes"
        )));
    }
    Ok(labels)
}

/// Refuses a classifier's post transform where ONNX Runtime's result is not reproduced:
/// PROBIT on one class, and SOFTMAX over several where this CPU lacks the AVX-512F kernel
/// or the classes are more than it takes.
fn check_classifier_transform(
    node: &NodeView<'_>,
    classes: usize,
    post: PostTransform,
    avx512: bool,
) -> Result<(), CompileError> {
    match (classes, post) {
        (1, PostTransform::Probit) => Err(unsupported(
            node,
            "PROBIT on one class (ONNX Runtime writes half a row)",
        )),
        (c, PostTransform::Softmax) if c > 1 && !(avx512 && c <= 16) => {
            Err(unsupported(node, "SOFTMAX over these classes on this CPU"))
        }
        _ => Ok(()),
    }
}

/// A regressor's targets (1 up to the coefficients' count): a float input, and no MLAS
/// transform over several targets.
fn regressor_targets(
    node: &NodeView<'_>,
    attrs: &Attrs<'_, '_>,
    input: Elem,
    n_coefficients: usize,
    post: PostTransform,
) -> Result<usize, CompileError> {
    if input != Elem::F32 {
        return Err(unsupported(node, "input type"));
    }
    let targets = attrs.int("targets").unwrap_or(1);
    let targets = usize::try_from(targets)
        .ok()
        .filter(|&t| t >= 1 && t <= n_coefficients)
        .ok_or_else(|| CompileError::Invalid(format!("targets {targets}")))?;
    if targets > 1 && matches!(post, PostTransform::Logistic | PostTransform::Softmax) {
        return Err(unsupported(node, "MLAS transforms on several targets"));
    }
    Ok(targets)
}

/// MLAS's `StrideK` for `n` outputs and `k` features (`sgemm.cpp`).
fn stride_k(n: usize, k: usize) -> usize {
    let (mut sn, mut sk) = (128usize, 128usize);
    if n >= k {
        while sk / 2 >= k {
            sn *= 2;
            sk /= 2;
        }
    } else {
        while sn > 16 && sn / 2 >= n {
            sk *= 2;
            sn /= 2;
        }
    }
    let _ = sn;
    sk
}

/// Eight-lane partial sums of `x · w` (separate multiply and add, as the AVX kernel).
fn m1_lanes(x: &[f32], w: &[f32]) -> [f32; 8] {
    let mut acc = [0.0f32; 8];
    for (k, (&a, &b)) in x.iter().zip(w).enumerate() {
        acc[k % 8] += a * b;
    }
    acc
}

impl Linear {
    pub(crate) fn heap_bytes(&self) -> usize {
        size_of::<Linear>()
            + (self.coefficients.capacity() + self.intercepts.capacity()) * 4
            + match &self.labels {
                Some(Labels::Int(v)) => v.capacity() * 8,
                Some(Labels::Str(v)) => v.iter().map(|s| s.capacity() + size_of::<String>()).sum(),
                None => 0,
            }
    }

    /// The raw scores `[rows, outputs]` as MLAS computes them.
    fn scores(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let (n, k) = (self.outputs, self.features);
        let bias = |t: usize| self.intercepts.get(t).copied().unwrap_or(0.0);
        let mut out = Vec::with_capacity(rows * n);
        if rows == 1 {
            let row = &x[..k];
            let mut t = 0;
            while t < n {
                let group = if n - t >= 4 {
                    4
                } else if n - t >= 2 {
                    2
                } else {
                    1
                };
                for r in 0..group {
                    let a = m1_lanes(row, &self.coefficients[(t + r) * k..(t + r + 1) * k]);
                    let s = match group {
                        4 => (((a[0] + a[1]) + a[2]) + a[3]) + (((a[4] + a[5]) + a[6]) + a[7]),
                        2 => ((a[0] + a[2]) + (a[4] + a[6])) + ((a[1] + a[3]) + (a[5] + a[7])),
                        _ => ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7])),
                    };
                    out.push(s + bias(t + r));
                }
                t += group;
            }
            return out;
        }
        let stride = stride_k(n, k);
        for r in 0..rows {
            let row = &x[r * k..(r + 1) * k];
            for t in 0..n {
                let w = &self.coefficients[t * k..(t + 1) * k];
                let mut c = bias(t);
                for start in (0..k).step_by(stride) {
                    let end = (start + stride).min(k);
                    let mut s = 0.0f32;
                    for j in start..end {
                        s = row[j].mul_add(w[j], s);
                    }
                    c += s;
                }
                out.push(c);
            }
        }
        out
    }

    /// Each feature's contribution to each score: `coefficient × feature` (the feature as
    /// the model reads it, a `float`), against a zero baseline whose score is the
    /// intercept; the raw score is the dot product, summed apart.
    pub(crate) fn contributions(
        &self,
        x: &Tensor,
        bounds: &crate::explain::Bounds,
    ) -> Result<crate::explain::Contributions, crate::explain::ExplainError> {
        let (rows, width) = x.rows_and_width();
        if x.shape.len() > 2 || width != self.features {
            return Err(RunError(format!(
                "the input has {width} features, the coefficients {}",
                self.features
            ))
            .into());
        }
        bounds.check_size(rows, self.outputs, width)?;
        let feature = |i: usize| -> Option<f64> {
            Some(match &x.data {
                Data::F32(v) => f64::from(v[i]),
                Data::F64(v) => f64::from(v[i] as f32),
                Data::I64(v) => f64::from(v[i] as f32),
                Data::I32(v) => f64::from(v[i] as f32),
                _ => return None,
            })
        };
        let (n, k) = (self.outputs, self.features);
        let expected = (0..n)
            .map(|t| f64::from(self.intercepts.get(t).copied().unwrap_or(0.0)))
            .collect();
        let mut out = crate::explain::Contributions::new(rows, k, expected);
        for r in 0..rows {
            for t in 0..n {
                let w = &self.coefficients[t * k..(t + 1) * k];
                let mut dot = 0.0;
                for (i, &c) in w.iter().enumerate() {
                    let v = feature(r * k + i).ok_or_else(|| RunError("input type".into()))?;

                    out.values[(r * n + t) * k + i] = f64::from(c) * v;
                    dot += f64::from(c) * v;
                }
                out.raw[r * n + t] = out.expected[t] + dot;
            }
        }
        Ok(out)
    }

    pub(crate) fn run(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, RunError> {
        let x = inputs[0];
        if x.shape.len() > 2 {
            return Err(RunError("a linear model's input must be 1-D or 2-D".into()));
        }
        let (rows, width) = x.rows_and_width();
        if width != self.features {
            return Err(RunError(format!(
                "the input has {width} features, the coefficients {}",
                self.features
            )));
        }
        let floats: std::borrow::Cow<'_, [f32]> = match &x.data {
            Data::F32(v) => std::borrow::Cow::Borrowed(v),
            Data::F64(v) => v.iter().map(|&a| a as f32).collect(),
            Data::I64(v) => v.iter().map(|&a| a as f32).collect(),
            Data::I32(v) => v.iter().map(|&a| a as f32).collect(),
            _ => return Err(RunError("input type".into())),
        };
        let _ = self.input;
        let mut scores = self.scores(&floats, rows);
        let n = self.outputs;
        let Some(labels) = &self.labels else {
            if n == 1 {
                if self.post == PostTransform::Probit {
                    scores.iter_mut().for_each(|v| *v = transform::probit(*v));
                }
            } else {
                for row in scores.chunks_mut(n) {
                    match self.post {
                        PostTransform::Probit => {
                            row.iter_mut().for_each(|v| *v = transform::probit(*v))
                        }
                        PostTransform::SoftmaxZero => transform::softmax_zero(row),
                        _ => {}
                    }
                }
            }
            return Ok(vec![Tensor::new(vec![rows, n], Data::F32(scores))]);
        };
        // Labels come from the raw scores.
        let picked: Vec<usize> = if n == 1 {
            scores.iter().map(|&s| usize::from(s > 0.0)).collect()
        } else {
            scores
                .chunks(n)
                .map(|row| {
                    let mut best = 0;
                    for (j, &v) in row.iter().enumerate().skip(1) {
                        if v > row[best] {
                            best = j;
                        }
                    }
                    best
                })
                .collect()
        };
        let probabilities = if n == 1 {
            let mut out = Vec::with_capacity(rows * 2);
            for &s in &scores {
                match self.post {
                    PostTransform::Logistic => {
                        out.extend([transform::logistic(-s), transform::logistic(s)])
                    }
                    _ => out.extend([1.0 - s, s]),
                }
            }
            out
        } else {
            // ONNX Runtime's batched transforms (`batched_update_scores_inplace`).
            let mlas_softmax =
                n >= 5 || (n == 2 && rows * 2 >= 32_768) || (n > 2 && rows * n >= 16_384);
            for row in scores.chunks_mut(n) {
                match self.post {
                    PostTransform::None => {}
                    PostTransform::Logistic => row.iter_mut().for_each(|v| *v = mlas_logistic(*v)),
                    PostTransform::Softmax if mlas_softmax => mlas_softmax_avx512(row),
                    PostTransform::Softmax => transform::softmax(row),
                    PostTransform::SoftmaxZero => transform::softmax_zero(row),
                    PostTransform::Probit => {
                        row.iter_mut().for_each(|v| *v = transform::probit(*v))
                    }
                }
            }
            scores
        };
        let label = match labels {
            Labels::Int(l) => Data::I64(picked.iter().map(|&p| l[p]).collect()),
            Labels::Str(l) => Data::Str(picked.iter().map(|&p| l[p].clone()).collect()),
        };
        let width = if n == 1 { 2 } else { n };
        Ok(vec![
            Tensor::new(vec![rows], label),
            Tensor::new(vec![rows, width], Data::F32(probabilities)),
        ])
    }
}

/// `MlasComputeLogistic` (the FMA3 kernel): a rational approximation on `[-18, 18]`.
fn mlas_logistic(x: f32) -> f32 {
    const A9: f32 = 4.370_31e-11;
    const A7: f32 = 1.156_273_2e-7;
    const A5: f32 = 6.085_749e-5;
    const A3: f32 = 8.513_771e-3;
    const A1: f32 = 2.482_879_5e-1;
    const B10: f32 = 6.102_473_7e-13;
    const B8: f32 = 5.761_021_4e-9;
    const B6: f32 = 6.291_068e-6;
    const B4: f32 = 1.701_988_2e-3;
    const B2: f32 = 1.168_176_5e-1;
    const B0: f32 = 9.931_519e-1;
    // maxps/minps keep the second operand when the first is NaN: NaN passes through.
    let x = if x.is_nan() { x } else { x.clamp(-18.0, 18.0) };
    let x2 = x * x;
    let mut p = x2.mul_add(A9, A7);
    p = x2.mul_add(p, A5);
    p = x2.mul_add(p, A3);
    p = x2.mul_add(p, A1);
    let mut q = x2.mul_add(B10, B8);
    q = x2.mul_add(q, B6);
    q = x2.mul_add(q, B4);
    q = x2.mul_add(q, B2);
    q = x2.mul_add(q, B0);
    let r = (x * p) / q + 0.5;
    if r.is_nan() { r } else { r.max(0.0) }
}

/// `MlasComputeSoftmax` on one row of at most 16 values, as the AVX-512F kernels compute
/// it: MLAS's polynomial `exp`, a 16-lane sum, and a multiply by the sum's reciprocal.
fn mlas_softmax_avx512(row: &mut [f32]) {
    debug_assert!(row.len() <= 16);
    let max = row
        .iter()
        .copied()
        .fold(f32::MIN, |m, v| if v > m { v } else { m });
    let neg_max = -max;
    let mut lanes = [0.0f32; 16];
    for (i, v) in row.iter_mut().enumerate() {
        *v = mlas_exp(*v, neg_max);
        lanes[i] += *v;
    }
    let s: Vec<f32> = (0..8).map(|i| lanes[i] + lanes[i + 8]).collect();
    let sum = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
    let scale = 1.0 / sum;
    row.iter_mut().for_each(|v| *v *= scale);
}

/// MLAS's AVX-512F `exp(v + neg_max)`.
fn mlas_exp(v: f32, neg_max: f32) -> f32 {
    const LOWER: f32 = -103.972_084;
    const BIAS: f32 = 12_582_912.0;
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = -6.931_457_5e-1;
    const LN2_LO: f32 = -1.428_606_8e-6;
    const P: [f32; 7] = [
        f32::from_bits(0x3ab4_a000), // 0x1.694p-10
        f32::from_bits(0x3c09_2f6e), // 0x1.125edcp-7
        f32::from_bits(0x3d2a_adad), // 0x1.555b5ap-5
        f32::from_bits(0x3e2a_aa28), // 0x1.55545p-3
        f32::from_bits(0x3eff_fffb), // 0x1.fffff6p-2
        1.0,
        1.0,
    ];
    let x = (v + neg_max).max(LOWER);
    let m = x.mul_add(LOG2E, BIAS) - BIAS;
    let r = m.mul_add(LN2_HI, x);
    let r = m.mul_add(LN2_LO, r);
    let mut p = P[0];
    for &c in &P[1..] {
        p = p.mul_add(r, c);
    }
    // vscalefps: p * 2^m rounded once (exact in f64, then one rounding to f32).
    (f64::from(p) * 2f64.powi(m as i32)) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stride_k_follows_mlas() {
        assert_eq!(stride_k(1, 1500), 1024);
        assert_eq!(stride_k(3, 100), 1024);
        assert_eq!(stride_k(40, 100), 256);
        assert_eq!(stride_k(5, 3), 4);
        assert_eq!(stride_k(128, 128), 128);
    }

    #[test]
    fn mlas_approximations_stay_close_to_the_functions() {
        assert!((mlas_exp(1.0, 0.0) - std::f32::consts::E).abs() < 1e-6);
        assert!((mlas_exp(-2.5, 0.0) - (-2.5f32).exp()).abs() < 1e-7);
        assert!((mlas_logistic(0.3) - 1.0 / (1.0 + (-0.3f32).exp())).abs() < 1e-6);
        assert!(mlas_logistic(f32::NAN).is_nan());
    }
}
