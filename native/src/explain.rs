//! Explanations: how much each input feature moved each of a model's raw scores away from
//! its expected value. What the operators compute (`tree::shap`, `linear`) and
//! `Model::contributions` answers.
//!
//! A raw score is the operator's score before its post transform: for a tree ensemble, the
//! sum over trees of the leaf weights for that target or class (divided by the tree count
//! for `AVERAGE`) plus its base value; for a linear model, the coefficients' dot product
//! with the row plus the intercept, computed here in `f64` apart from the contributions
//! (each leaf's weights summed for the row, the dot product), so that `expected + Σ
//! contributions = raw` (up to the rounding of the sums) is a check of them.
//!
//! - Tree ensembles: path-dependent TreeSHAP (Lundberg, Erion and Lee 2018, Algorithm 2)
//!   over the node covers the file carries (`tree::Covers`); the expected value is the
//!   cover-weighted mean leaf of every tree. The same numbers as `shap.TreeExplainer`
//!   (`tree_path_dependent`), XGBoost's `pred_contribs` and LightGBM's `pred_contrib`.
//! - Linear models: `coefficient × feature` against a zero baseline; the expected value
//!   is the intercept.

/// Contributions of `features` features to `targets` raw scores for `rows` rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Contributions {
    pub rows: usize,
    pub targets: usize,
    pub features: usize,
    /// `[rows, targets, features]`, row-major.
    pub values: Vec<f64>,
    /// `[targets]`: the raw score with no feature known.
    pub expected: Vec<f64>,
    /// `[rows, targets]`: the raw scores.
    pub raw: Vec<f64>,
}

impl Contributions {
    /// Zeros for `rows` rows, with the expected values known.
    pub(crate) fn new(rows: usize, features: usize, expected: Vec<f64>) -> Self {
        let targets = expected.len();
        Contributions {
            rows,
            targets,
            features,
            values: vec![0.0; rows * targets * features],
            expected,
            raw: vec![0.0; rows * targets],
        }
    }

    /// Row `r`'s contributions, `[targets, features]`.
    pub(crate) fn row_mut(&mut self, r: usize) -> &mut [f64] {
        let n = self.targets * self.features;
        &mut self.values[r * n..(r + 1) * n]
    }
}

/// What an explanation may cost: at most `max_values` contributions (rows × targets ×
/// features: the answer's size, which the request's size does not bound: a 100-class
/// model multiplies it by 100), and no work after `until` (checked between trees).
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub max_values: usize,
    pub until: Option<std::time::Instant>,
}

impl Bounds {
    pub(crate) fn check_size(
        &self,
        rows: usize,
        targets: usize,
        features: usize,
    ) -> Result<(), ExplainError> {
        let values = rows.saturating_mul(targets).saturating_mul(features);
        if values > self.max_values {
            return Err(ExplainError::TooLarge(format!(
                "the explanation would hold {values} values ({rows} rows × {targets} scores × \
                 {features} features), more than the limit of {}",
                self.max_values
            )));
        }
        Ok(())
    }

    #[inline]
    pub(crate) fn check_time(&self) -> Result<(), ExplainError> {
        match self.until {
            Some(until) if std::time::Instant::now() >= until => Err(ExplainError::Expired),
            _ => Ok(()),
        }
    }
}

/// Why a model's answer cannot be explained.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExplainError {
    /// The model (or this engine) cannot explain it: the reason, for a 422.
    #[error("this model cannot be explained: {0}")]
    Unexplainable(String),
    /// The inputs do not fit the model.
    #[error("{0}")]
    Run(#[from] crate::error::RunError),
    /// The answer would be larger than allowed (`Bounds::max_values`).
    #[error("{0}")]
    TooLarge(String),
    /// `Bounds::until` passed: the work stopped.
    #[error("the explanation's deadline passed")]
    Expired,
}
