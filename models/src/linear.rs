//! `ai.onnx.ml.LinearRegressor` with one target: `y = x · coefficients + intercept`.

use crate::onnx::{Attr, AttrValue, ML_DOMAIN, ModelDef, NodeDef, encode_model};
use crate::rng::Rng;
use crate::{INPUT_NAME, OUTPUT_NAME};

#[derive(Debug, Clone)]
pub(crate) struct Linear {
    coefficients: Vec<f32>,
    intercept: f32,
}

impl Linear {
    pub(crate) fn generate(features: usize, seed: u64) -> Self {
        assert!(features > 0, "a linear model needs at least one feature");
        let mut rng = Rng::new(seed);
        let coefficients = (0..features).map(|_| rng.signed_f32()).collect();
        let intercept = rng.signed_f32();
        Linear {
            coefficients,
            intercept,
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let intercepts = [self.intercept];
        let attrs = [
            Attr::new("coefficients", AttrValue::Floats(&self.coefficients)),
            Attr::new("intercepts", AttrValue::Floats(&intercepts)),
            Attr::new("targets", AttrValue::Int(1)),
        ];
        encode_model(&ModelDef {
            graph_name: "manymodels_linear",
            node: NodeDef {
                name: "LinearRegressor",
                op_type: "LinearRegressor",
                domain: ML_DOMAIN,
                input: INPUT_NAME,
                output: OUTPUT_NAME,
                attrs: &attrs,
            },
            input_name: INPUT_NAME,
            input_width: self.coefficients.len() as u64,
            output_name: OUTPUT_NAME,
            output_width: 1,
        })
    }

    /// ONNX Runtime's result for this row scored alone (a `[1, F]` input).
    ///
    /// ORT computes `X · coefficientsᵀ + intercept` with an MLAS SGEMM whose `C` operand
    /// (beta = 1) holds the intercept. For a single row, MLAS on x86-64 takes its M = 1
    /// kernel for a transposed B: eight lanes, lane `j` summing `x[k] * w[k]` for
    /// `k ≡ j (mod 8)` with separate multiply and add, then a pairwise horizontal sum
    /// `((l0+l1)+(l2+l3)) + ((l4+l5)+(l6+l7))`, then `+ C`.
    pub(crate) fn predict_alone(&self, row: &[f32]) -> f32 {
        let mut lanes = [0.0f32; 8];
        for (k, (&x, &w)) in row.iter().zip(&self.coefficients).enumerate() {
            lanes[k % 8] += x * w;
        }
        let low = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
        let high = (lanes[4] + lanes[5]) + (lanes[6] + lanes[7]);
        (low + high) + self.intercept
    }

    /// ONNX Runtime's result for this row as part of a batch of two or more rows.
    ///
    /// MLAS then packs B and runs its general SGEMM kernel (FMA3 or AVX-512 on current
    /// x86-64): per row, a fused multiply-add chain in feature order from zero over blocks
    /// of [`SGEMM_STRIDE_K`] features, each block's sum added to `C` (which starts as the
    /// intercept). `f32::mul_add` is a correctly rounded FMA everywhere, so this is exact.
    pub(crate) fn predict_in_batch(&self, row: &[f32]) -> f32 {
        let mut c = self.intercept;
        for (xs, ws) in row
            .chunks(SGEMM_STRIDE_K)
            .zip(self.coefficients.chunks(SGEMM_STRIDE_K))
        {
            let mut acc = 0.0f32;
            for (&x, &w) in xs.iter().zip(ws) {
                acc = x.mul_add(w, acc);
            }
            c += acc;
        }
        c
    }
}

#[cfg(test)]
impl Linear {
    /// The dot product in f64 (the "true" value, for tests).
    pub(crate) fn exact(&self, row: &[f32]) -> f64 {
        row.iter()
            .zip(&self.coefficients)
            .map(|(&x, &w)| f64::from(x) * f64::from(w))
            .sum::<f64>()
            + f64::from(self.intercept)
    }
}

/// MLAS's K stride for a single-column SGEMM: its default 128 x 128 panel reshaped to
/// 16 columns x 1024 depth when N (here 1 target) is small.
pub(crate) const SGEMM_STRIDE_K: usize = 1024;
