//! A mergeable latency sketch with a relative-error guarantee ([`Sketch`]), after
//! DDSketch (Masson, Rim and Lee, VLDB 2019).
//!
//! ## The guarantee
//! With relative accuracy `alpha` (1% by default), `gamma = (1 + alpha) / (1 - alpha)` and
//! bucket `i` counting the values in `(gamma^(i-1), gamma^i]`. A quantile is answered with
//! its bucket's midpoint `2·gamma^i / (1 + gamma)`, clamped to the exact min and max, so
//! [`Sketch::quantile`]`(q)` is within `alpha` (relative) of the exact lower q-quantile of
//! the inputs, the value of rank `floor(q·(n-1))` in sorted order (rank 0 and the last
//! rank are answered with the exact min and max). Two exceptions, both
//! stated:
//! - values at or below [`MIN_VALUE`] (1 ns as seconds; zero latencies) are counted in one
//!   zero bucket and answered with the exact minimum: an absolute error of at most 1 ns;
//! - **collapse**: at most `max_buckets` buckets are kept (1,024 by default: at 1% that
//!   spans a ratio of about 8·10^8 between the smallest and largest value, 10 µs to two
//!   hours). When a value would widen the run past that, the lowest buckets are folded into
//!   the lowest kept one. Quantiles that fall in the folded range are then overestimated
//!   (answered with the lowest kept bucket's value, never below the truth);
//!   [`Sketch::collapsed`] says whether that happened. Quantiles above it keep `alpha`.
//!
//! Values must be finite and non-negative; others are not recorded.
//!
//! ## Merge is exact by construction
//! A sketch is a function of the multiset of its inputs only: a value of bucket `i` is
//! counted in bucket `max(i, top - max_buckets + 1)`, where `top` is the highest bucket of
//! any input; the zero count, min, max and count are order-free. [`Sketch::merge`] applies
//! the same rule to both sides' buckets, so merging sketches of A and B gives bit for bit
//! the sketch of A ∪ B, whatever the order or grouping. Only sketches of the same `alpha`
//! and `max_buckets` merge.
//!
//! ## Memory and cost
//! One `u64` per bucket between the lowest and highest bucket in use (a run that only
//! grows, at most `max_buckets`), plus 64 bytes. [`Sketch::add`] costs one `ln` and one
//! increment; it allocates only when a value falls outside the run's current capacity.
//!
//! ## On the wire
//! [`LatencySketch`] (in the contract): `alpha`, `max_buckets`, the zero count, min, max,
//! the first bucket's index and the run of counts. `Sketch` serializes through it, and
//! refuses a malformed one.

use manymodels_contract::ledger::LatencySketch;
use serde::{Deserialize, Serialize};

/// Values at or below this are counted as zero (seconds: 1 ns).
pub const MIN_VALUE: f64 = 1e-9;
/// The accuracy and bucket bound the ledger uses unless configured.
pub const DEFAULT_ALPHA: f64 = 0.01;
pub const DEFAULT_MAX_BUCKETS: usize = 1024;
/// The accepted range of `alpha`, and the most buckets a sketch may keep.
pub const MIN_ALPHA: f64 = 1e-4;
pub const MAX_ALPHA: f64 = 0.5;
pub const MAX_MAX_BUCKETS: usize = 1 << 16;
/// Bucket indices beyond this are refused from the wire (ln(f64::MAX)/ln(gamma) at the
/// smallest alpha is about 3.6·10^6).
const MAX_INDEX: i64 = 1 << 24;

/// A sketch's accuracy and size bound.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SketchConfig {
    pub alpha: f64,
    pub max_buckets: usize,
}

impl Default for SketchConfig {
    fn default() -> Self {
        SketchConfig {
            alpha: DEFAULT_ALPHA,
            max_buckets: DEFAULT_MAX_BUCKETS,
        }
    }
}

/// Why a sketch was refused: from the wire, or for a merge with another configuration.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SketchError {
    #[error("sketch accuracy {0} is outside [{MIN_ALPHA}, {MAX_ALPHA}]")]
    Alpha(f64),
    #[error("sketch bucket bound {0} is outside [1, {MAX_MAX_BUCKETS}]")]
    MaxBuckets(u32),
    #[error("sketches of different accuracy or bucket bound do not merge")]
    Mismatch,
    #[error("malformed sketch: {0}")]
    Malformed(&'static str),
}

/// A mergeable quantile sketch of non-negative values (module docs: the guarantee).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(into = "LatencySketch", try_from = "LatencySketch")]
pub struct Sketch {
    config: SketchConfig,
    /// `1 / ln(gamma)`: the same for every sketch of the same `alpha`.
    inv_ln_gamma: f64,
    zeros: u64,
    /// The index of `counts[0]`.
    offset: i32,
    /// Bucket counts from `offset` up, first and last non-zero (empty without values above
    /// [`MIN_VALUE`]).
    counts: Vec<u64>,
    count: u64,
    /// `+inf` and `-inf` while empty.
    min: f64,
    max: f64,
}

impl Sketch {
    /// An empty sketch; `alpha` and `max_buckets` are clamped to the accepted ranges.
    pub fn new(config: SketchConfig) -> Self {
        let alpha = config.alpha.clamp(MIN_ALPHA, MAX_ALPHA);
        let config = SketchConfig {
            alpha,
            max_buckets: config.max_buckets.clamp(1, MAX_MAX_BUCKETS),
        };
        Sketch {
            config,
            inv_ln_gamma: 1.0 / gamma(alpha).ln(),
            zeros: 0,
            offset: 0,
            counts: Vec::new(),
            count: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }

    pub fn config(&self) -> SketchConfig {
        self.config
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The exact smallest and largest value recorded.
    pub fn min(&self) -> Option<f64> {
        (self.count > 0).then_some(self.min)
    }

    pub fn max(&self) -> Option<f64> {
        (self.count > 0).then_some(self.max)
    }

    /// Buckets in the run (the memory in use is at least this many `u64`s).
    pub fn buckets(&self) -> usize {
        self.counts.len()
    }

    /// Heap bytes held by the run.
    pub fn heap_bytes(&self) -> usize {
        self.counts.capacity() * size_of::<u64>()
    }

    /// Whether the lowest buckets were folded (module docs): low quantiles may then be
    /// overestimated.
    pub fn collapsed(&self) -> bool {
        self.min > MIN_VALUE && !self.counts.is_empty() && self.index(self.min) < self.offset
    }

    fn index(&self, value: f64) -> i32 {
        // Finite and above MIN_VALUE: |index| stays far inside i32 for any accepted alpha.
        (value.ln() * self.inv_ln_gamma).ceil() as i32
    }

    /// The value a bucket answers with: within `alpha` of every value in it.
    fn value(&self, index: i32) -> f64 {
        let gamma = gamma(self.config.alpha);
        2.0 * (f64::from(index) / self.inv_ln_gamma).exp() / (1.0 + gamma)
    }

    /// Records one value; returns false (and records nothing) for a negative, NaN or
    /// infinite one.
    pub fn add(&mut self, value: f64) -> bool {
        if !(value >= 0.0 && value.is_finite()) {
            return false;
        }
        self.count += 1;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        if value <= MIN_VALUE {
            self.zeros += 1;
        } else {
            self.add_at(self.index(value), 1);
        }
        true
    }

    /// Adds `n` to bucket `index`, keeping the run canonical: it spans
    /// `[max(lowest index, top - max_buckets + 1), top]`.
    fn add_at(&mut self, index: i32, n: u64) {
        let m = self.config.max_buckets as i32;
        if self.counts.is_empty() {
            self.offset = index;
            self.counts.push(n);
            return;
        }
        let top = self.offset + self.counts.len() as i32 - 1;
        if index > top {
            let floor = index - m + 1;
            if floor > self.offset {
                // Collapse: fold everything below `floor` into bucket `floor`.
                let cut = ((floor - self.offset) as usize).min(self.counts.len());
                let folded: u64 = self.counts.drain(..cut).sum();
                self.offset = floor;
                self.counts.resize((index - floor + 1) as usize, 0);
                self.counts[0] += folded;
            } else {
                self.counts.resize((index - self.offset + 1) as usize, 0);
            }
            *self.counts.last_mut().expect("the run reaches index") += n;
        } else {
            let at = index.max(top - m + 1);
            if at < self.offset {
                let grow = (self.offset - at) as usize;
                self.counts.splice(0..0, std::iter::repeat_n(0, grow));
                self.offset = at;
            }
            self.counts[(at - self.offset) as usize] += n;
        }
    }

    /// Adds `other`'s values: the result is the sketch of both inputs together, exactly.
    pub fn merge(&mut self, other: &Sketch) -> Result<(), SketchError> {
        if self.config != other.config {
            return Err(SketchError::Mismatch);
        }
        self.count += other.count;
        self.zeros += other.zeros;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        if other.counts.is_empty() {
            return Ok(());
        }
        if self.counts.is_empty() {
            self.offset = other.offset;
            self.counts.extend_from_slice(&other.counts);
            return Ok(());
        }
        let top_of = |s: &Sketch| s.offset + s.counts.len() as i32 - 1;
        let top = top_of(self).max(top_of(other));
        let floor = top - self.config.max_buckets as i32 + 1;
        let low = self.offset.min(other.offset).max(floor);
        let mut counts = vec![0u64; (top - low + 1) as usize];
        for side in [&*self, other] {
            for (i, &c) in side.counts.iter().enumerate() {
                let at = (side.offset + i as i32).max(floor);
                counts[(at - low) as usize] += c;
            }
        }
        self.offset = low;
        self.counts = counts;
        Ok(())
    }

    /// The lower q-quantile (`q` clamped to [0, 1]) within `alpha` of the exact one (module
    /// docs: the exceptions); `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let q = if q.is_nan() { 0.0 } else { q.clamp(0.0, 1.0) };
        let rank = ((q * (self.count - 1) as f64).floor() as u64).min(self.count - 1);
        // The extremes are known exactly.
        if rank == 0 || rank < self.zeros {
            return Some(self.min);
        }
        if rank == self.count - 1 {
            return Some(self.max);
        }
        let mut seen = self.zeros;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen > rank {
                let value = self.value(self.offset + i as i32);
                return Some(value.clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }

    /// The wire form.
    pub fn to_wire(&self) -> LatencySketch {
        LatencySketch {
            alpha: self.config.alpha,
            max_buckets: self.config.max_buckets as u32,
            zeros: self.zeros,
            offset: if self.counts.is_empty() {
                0
            } else {
                self.offset
            },
            counts: self.counts.clone(),
            min: self.min(),
            max: self.max(),
        }
    }

    /// Reads and checks a wire sketch: the accuracy and bound in range, a canonical run
    /// within the bound, counts that do not overflow, min and max present exactly when
    /// there are values, finite and ordered.
    pub fn from_wire(wire: &LatencySketch) -> Result<Sketch, SketchError> {
        if !(MIN_ALPHA..=MAX_ALPHA).contains(&wire.alpha) {
            return Err(SketchError::Alpha(wire.alpha));
        }
        let max_buckets = wire.max_buckets as usize;
        if !(1..=MAX_MAX_BUCKETS).contains(&max_buckets) {
            return Err(SketchError::MaxBuckets(wire.max_buckets));
        }
        let mut sketch = Sketch::new(SketchConfig {
            alpha: wire.alpha,
            max_buckets,
        });
        let malformed = |why| Err(SketchError::Malformed(why));
        if wire.counts.len() > max_buckets {
            return malformed("more buckets than its bound");
        }
        if let (Some(first), Some(last)) = (wire.counts.first(), wire.counts.last())
            && (*first == 0 || *last == 0)
        {
            return malformed("the run of counts starts or ends with zero");
        }
        let offset = i64::from(wire.offset);
        if offset.abs() > MAX_INDEX || (offset + wire.counts.len() as i64).abs() > MAX_INDEX {
            return malformed("bucket index out of range");
        }
        let mut count = wire.zeros;
        for &c in &wire.counts {
            count = count
                .checked_add(c)
                .ok_or(SketchError::Malformed("counts overflow"))?;
        }
        match (count, wire.min, wire.max) {
            (0, None, None) => {}
            (1.., Some(min), Some(max))
                if min.is_finite() && max.is_finite() && 0.0 <= min && min <= max =>
            {
                sketch.min = min;
                sketch.max = max;
            }
            _ => {
                return malformed(
                    "min and max must be present, finite and ordered exactly when there are values",
                );
            }
        }
        sketch.zeros = wire.zeros;
        sketch.count = count;
        sketch.offset = if wire.counts.is_empty() {
            0
        } else {
            wire.offset
        };
        sketch.counts = wire.counts.clone();
        Ok(sketch)
    }
}

impl Default for Sketch {
    fn default() -> Self {
        Sketch::new(SketchConfig::default())
    }
}

impl From<Sketch> for LatencySketch {
    fn from(sketch: Sketch) -> Self {
        sketch.to_wire()
    }
}

impl TryFrom<LatencySketch> for Sketch {
    type Error = SketchError;

    fn try_from(wire: LatencySketch) -> Result<Self, Self::Error> {
        Sketch::from_wire(&wire)
    }
}

fn gamma(alpha: f64) -> f64 {
    (1.0 + alpha) / (1.0 - alpha)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::Rng;

    /// Relative error allowed beyond `alpha`: the float error of `ln`/`exp` at bucket
    /// boundaries.
    const SLACK: f64 = 1e-9;

    type Draw = fn(&mut Rng) -> f64;

    fn uniform(rng: &mut Rng) -> f64 {
        rng.unit() * 2.0
    }
    fn log_normal(rng: &mut Rng) -> f64 {
        (0.01f64.ln() + 1.5 * rng.normal()).exp()
    }
    fn bimodal(rng: &mut Rng) -> f64 {
        // Hits around 2 ms, cold loads around 3 s, one in twenty.
        if rng.below(20) == 0 {
            3.0 * (0.3 * rng.normal()).exp()
        } else {
            0.002 * (0.2 * rng.normal()).exp()
        }
    }

    fn sketch_of(values: &[f64], config: SketchConfig) -> Sketch {
        let mut sketch = Sketch::new(config);
        for &v in values {
            assert!(sketch.add(v));
        }
        sketch
    }

    fn exact(sorted: &[f64], q: f64) -> f64 {
        sorted[(q * (sorted.len() - 1) as f64).floor() as usize]
    }

    const QS: [f64; 9] = [0.0, 0.01, 0.1, 0.25, 0.5, 0.9, 0.99, 0.999, 1.0];

    fn assert_within_alpha(sketch: &Sketch, values: &[f64], what: &str) {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let alpha = sketch.config().alpha;
        for q in QS {
            let want = exact(&sorted, q);
            let got = sketch.quantile(q).unwrap();
            let err = if want <= MIN_VALUE {
                (got - want).abs()
            } else {
                (got - want).abs() / want
            };
            assert!(
                err <= alpha + SLACK,
                "{what}, n={}, q={q}: {got} vs exact {want} (error {err})",
                values.len()
            );
        }
    }

    #[test]
    fn quantiles_are_within_alpha_of_exact_ones_on_several_distributions() {
        let mut rng = Rng::new(7);
        let dists: [(&str, Draw); 3] = [
            ("uniform", uniform),
            ("log-normal", log_normal),
            ("bimodal", bimodal),
        ];
        for (name, draw) in dists {
            for n in [1, 2, 10, 1_000, 100_000] {
                let values: Vec<f64> = (0..n).map(|_| draw(&mut rng)).collect();
                for alpha in [0.01, 0.05] {
                    let config = SketchConfig {
                        alpha,
                        max_buckets: DEFAULT_MAX_BUCKETS,
                    };
                    let sketch = sketch_of(&values, config);
                    assert!(!sketch.collapsed());
                    assert_eq!(sketch.count(), n as u64);
                    assert_within_alpha(&sketch, &values, name);
                }
            }
        }
    }

    #[test]
    fn zeros_min_and_max_are_exact() {
        let values = [0.0, 0.0, 1e-12, 0.5, 0.25, 8.0];
        let sketch = sketch_of(&values, SketchConfig::default());
        assert_eq!(sketch.min(), Some(0.0));
        assert_eq!(sketch.max(), Some(8.0));
        assert_eq!(sketch.quantile(0.0), Some(0.0));
        assert_eq!(sketch.quantile(1.0), Some(8.0));
        assert_within_alpha(&sketch, &values, "zeros");
        // Not recorded: negative, NaN, infinite.
        let mut sketch = sketch;
        for bad in [-1.0, f64::NAN, f64::INFINITY] {
            assert!(!sketch.add(bad));
        }
        assert_eq!(sketch.count(), 6);
        assert_eq!(Sketch::default().quantile(0.5), None);
    }

    #[test]
    fn collapse_keeps_the_bound_and_overestimates_only_the_folded_low_quantiles() {
        let config = SketchConfig {
            alpha: 0.01,
            max_buckets: 64,
        };
        // 1 µs .. 10 s: about 800 buckets at 1%, far beyond 64.
        let mut rng = Rng::new(3);
        let values: Vec<f64> = (0..5_000)
            .map(|_| (1e-6f64.ln() + rng.unit() * 1e7f64.ln()).exp())
            .collect();
        let sketch = sketch_of(&values, config);
        assert!(sketch.collapsed());
        assert_eq!(sketch.buckets(), 64);
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        // The kept range: the top 64 buckets, a ratio of gamma^63 below the max.
        let floor = sketch.max().unwrap() / gamma(0.01).powi(63);
        for q in QS {
            let want = exact(&sorted, q);
            let got = sketch.quantile(q).unwrap();
            if want > floor * gamma(0.01) {
                assert!((got - want).abs() / want <= 0.01 + SLACK, "q={q}");
            } else {
                assert!(got >= want * (1.0 - 0.01 - SLACK), "q={q}: {got} < {want}");
            }
        }
        assert_eq!(sketch.quantile(0.0), Some(sketch.min().unwrap()));
    }

    #[test]
    fn merging_random_splits_gives_the_sketch_of_the_union_bit_for_bit() {
        let mut rng = Rng::new(11);
        for (max_buckets, n) in [(DEFAULT_MAX_BUCKETS, 20_000), (48, 5_000), (1, 300)] {
            let config = SketchConfig {
                alpha: 0.01,
                max_buckets,
            };
            let values: Vec<f64> = (0..n)
                .map(|i| match i % 3 {
                    0 => bimodal(&mut rng),
                    1 => log_normal(&mut rng),
                    _ => 0.0,
                })
                .collect();
            let whole = sketch_of(&values, config);
            for _ in 0..8 {
                // A random split into 1-6 parts, merged in a random order and grouping.
                let parts = 1 + rng.below(6);
                let mut split = vec![Vec::new(); parts];
                for &v in &values {
                    split[rng.below(parts)].push(v);
                }
                let mut sketches: Vec<Sketch> =
                    split.iter().map(|p| sketch_of(p, config)).collect();
                rng.shuffle(&mut sketches);
                while sketches.len() > 1 {
                    let b = sketches.swap_remove(rng.below(sketches.len()));
                    let a = rng.below(sketches.len());
                    sketches[a].merge(&b).unwrap();
                }
                assert_eq!(sketches[0], whole, "max_buckets {max_buckets}");
            }
        }
    }

    #[test]
    fn sketches_of_different_configurations_do_not_merge() {
        let mut a = Sketch::default();
        let b = Sketch::new(SketchConfig {
            alpha: 0.02,
            max_buckets: DEFAULT_MAX_BUCKETS,
        });
        assert_eq!(a.merge(&b), Err(SketchError::Mismatch));
    }

    #[test]
    fn the_wire_form_round_trips_and_is_a_run_of_counts() {
        let mut rng = Rng::new(5);
        let values: Vec<f64> = (0..2_000).map(|_| bimodal(&mut rng)).collect();
        for sketch in [
            Sketch::default(),
            sketch_of(&[0.0], SketchConfig::default()),
            sketch_of(&values, SketchConfig::default()),
        ] {
            let json = serde_json::to_string(&sketch).unwrap();
            let back: Sketch = serde_json::from_str(&json).unwrap();
            assert_eq!(back, sketch);
            assert_eq!(back.quantile(0.99), sketch.quantile(0.99));
        }
        // Two values in bucket -345 (about 1 ms), one in bucket -343.
        let inside = |k: i32| ((f64::from(k) - 0.5) * gamma(0.01).ln()).exp();
        let values = [inside(-345), inside(-345), inside(-343)];
        let wire = sketch_of(&values, SketchConfig::default()).to_wire();
        assert_eq!(wire.offset, -345);
        assert_eq!(wire.counts, [2, 0, 1]);
    }

    #[test]
    fn malformed_wire_sketches_are_refused() {
        let good = sketch_of(&[0.5, 1.0], SketchConfig::default()).to_wire();
        assert!(Sketch::from_wire(&good).is_ok());
        let bad = [
            LatencySketch {
                alpha: 0.9,
                ..good.clone()
            },
            LatencySketch {
                max_buckets: 0,
                ..good.clone()
            },
            LatencySketch {
                max_buckets: 2,
                counts: vec![1, 1, 1],
                ..good.clone()
            },
            LatencySketch {
                counts: vec![0, 1],
                ..good.clone()
            },
            LatencySketch {
                counts: vec![u64::MAX, 1],
                ..good.clone()
            },
            LatencySketch {
                offset: i32::MAX,
                ..good.clone()
            },
            LatencySketch {
                min: None,
                ..good.clone()
            },
            LatencySketch {
                min: Some(2.0),
                ..good.clone()
            },
        ];
        for wire in bad {
            assert!(Sketch::from_wire(&wire).is_err(), "{wire:?}");
        }
    }
}
