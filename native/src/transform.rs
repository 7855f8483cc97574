//! ONNX Runtime's post transforms (`onnxruntime/core/providers/cpu/ml/ml_common.h`),
//! operation for operation in the same types, so results are bit-identical: `exp`, `log`
//! and `sqrt` are the same libm functions ONNX Runtime calls (`std::exp` on a `float` is
//! `expf`). The `Normalizer`'s row arithmetic (`Norm`, `normalize_row`) is here too, the
//! same kind of kernel; the operators (`tree`, `linear`, `glue`) call these, never the
//! other way round.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PostTransform {
    None,
    Logistic,
    Softmax,
    SoftmaxZero,
    Probit,
}

impl PostTransform {
    pub(crate) fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "NONE" => PostTransform::None,
            "LOGISTIC" => PostTransform::Logistic,
            "SOFTMAX" => PostTransform::Softmax,
            "SOFTMAX_ZERO" => PostTransform::SoftmaxZero,
            "PROBIT" => PostTransform::Probit,
            _ => return None,
        })
    }
}

/// `ComputeLogistic`: `1 / (1 + exp(-|x|))`, mirrored for negative `x`, in `float`.
pub(crate) fn logistic(val: f32) -> f32 {
    let v = 1.0 / (1.0 + (-val.abs()).exp());
    if val < 0.0 { 1.0 - v } else { v }
}

/// `ErfInv` as ONNX Runtime approximates it (Winitzki's formula, a = 0.147), in `float`.
fn erf_inv(x: f32) -> f32 {
    let sgn = if x < 0.0 { -1.0f32 } else { 1.0 };
    let x = (1.0 - x) * (1.0 + x);
    let log = x.ln();
    // `static_cast<float>(M_PI)` in ONNX Runtime 1.31 (older releases wrote 3.14159f).
    let v = 2.0f32 / (std::f32::consts::PI * 0.147f32) + 0.5f32 * log;
    let v2 = 1.0f32 / 0.147f32 * log;
    let v3 = -v + (v * v - v2).sqrt();
    sgn * v3.sqrt()
}

/// `ComputeProbit`: `sqrt(2) * ErfInv(2x - 1)`.
pub(crate) fn probit(val: f32) -> f32 {
    // ONNX Runtime writes 1.41421356f: the same float as `SQRT_2`.
    std::f32::consts::SQRT_2 * erf_inv(val * 2.0 - 1.0)
}

/// The running maximum ONNX Runtime's softmaxes start from `-FLT_MAX` (NaN never wins).
fn running_max(values: &[f32]) -> f32 {
    let mut v_max = -f32::MAX;
    for &v in values {
        if v > v_max {
            v_max = v;
        }
    }
    v_max
}

/// `ComputeSoftmax` on `float` scores: subtract the maximum, `exp`, sum in order, divide.
pub(crate) fn softmax(values: &mut [f32]) {
    let v_max = running_max(values);
    let mut sum = 0.0f32;
    for v in values.iter_mut() {
        *v = (*v - v_max).exp();
        sum += *v;
    }
    for v in values.iter_mut() {
        *v /= sum;
    }
}

/// `ComputeSoftmaxZero`: like `softmax`, but scores within 1e-7 of zero are only scaled
/// by `exp(-max)` and left out of the sum.
pub(crate) fn softmax_zero(values: &mut [f32]) {
    let v_max = running_max(values);
    let exp_neg_v_max = (-v_max).exp();
    let mut sum = 0.0f32;
    for v in values.iter_mut() {
        if *v > 0.000_000_1f32 || *v < -0.000_000_1f32 {
            *v = (*v - v_max).exp();
            sum += *v;
        } else {
            *v *= exp_neg_v_max;
        }
    }
    for v in values.iter_mut() {
        *v /= sum;
    }
}

/// The norm a `Normalizer` divides each row by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Norm {
    Max,
    L1,
    L2,
}

/// ONNX Runtime's `Normalizer` on one row, in `float`; `squares` holds each value squared
/// in the input's type (read by L2 only).
pub(crate) fn normalize_row(norm: Norm, row: &mut [f32], squares: &[f32]) {
    match norm {
        Norm::Max => {
            let mut max = f32::MIN;
            for &v in row.iter() {
                if v > max {
                    max = v;
                }
            }
            if max != 0.0 {
                for v in row.iter_mut() {
                    *v /= max;
                }
            }
        }
        Norm::L1 => {
            let mut sum = 0.0f32;
            for &v in row.iter() {
                sum += v.abs();
            }
            if sum != 0.0 {
                for v in row.iter_mut() {
                    *v /= sum;
                }
            }
        }
        Norm::L2 => {
            // ONNX Runtime: sign(x) * sqrt(x² / Σx²), not x / ‖x‖ (the bits differ).
            let mut sum = 0.0f32;
            for &q in squares {
                sum += q;
            }
            if sum != 0.0 {
                for (v, &q) in row.iter_mut().zip(squares) {
                    let sign = if *v < 0.0 { -1.0f32 } else { 1.0 };
                    *v = sign * (q / sum).sqrt();
                }
            }
        }
    }
}
