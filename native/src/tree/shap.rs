//! Path-dependent TreeSHAP (Lundberg, Erion and Lee 2018, Algorithm 2) over the compiled
//! trees and their covers, without recursion: each frame of the walk copies its parent's
//! path of unique features into its own stretch of one buffer (as the paper's reference
//! implementation does on its call stack), so the walk needs only a stack of frames, and
//! a tree deeper than `MAX_DEPTH` is refused rather than followed (a hostile tree can be a
//! million nodes deep; the buffer grows with the square of the depth).

use std::borrow::Cow;

use super::ensemble::{Aggregate, Core, Covers, Mode, Node, Num, Trees};
use crate::explain::{Bounds, Contributions, ExplainError};
use crate::value::Tensor;

/// The deepest tree explained (scikit-learn forests grown without a depth limit on a few
/// million rows reach 60-80; boosted trees stay under 20).
pub(crate) const MAX_DEPTH: usize = 256;

/// The most path entries a walk holds (16 MiB): each level of a tree adds its count of
/// distinct features, so this bounds the levels of a tree whose features repeat (a deep
/// scikit-learn tree of 60 levels over 30 features takes about 2,000).
const MAX_PATH: usize = 1 << 19;

/// The feature of the path's first element, which stands for no feature.
const NO_FEATURE: u32 = u32::MAX;

/// One unique feature on the path to a node: the fraction of zero paths (this feature
/// unknown: the cover-weighted share of training rows that went this way) and one paths
/// (known: 1 if the row went this way, else 0) that flow through it, and the weight of the
/// subsets of the path's features.
#[derive(Debug, Clone, Copy, Default)]
struct Elem {
    feature: u32,
    zero: f64,
    one: f64,
    weight: f64,
}

/// A node to visit: its depth on the unique path, where its parent's path starts in the
/// buffer, and the element its parent's split adds.
#[derive(Debug, Clone, Copy)]
struct Frame {
    node: u32,
    depth: u32,
    parent: u32,
    zero: f64,
    one: f64,
    feature: u32,
}

/// The walk's buffers, kept from tree to tree and row to row, and what it adds to:
/// `single` (a single-output ensemble: each leaf's first weight) and the row's `width`.
struct Walk {
    path: Vec<Elem>,
    stack: Vec<Frame>,
    single: bool,
    width: usize,
    reciprocals: Reciprocals,
}

/// `1/k` for every path length: the walk multiplies where the paper divides (a division
/// on the unwinding's dependency chain costs four multiplications' latency).
struct Reciprocals([f64; MAX_DEPTH + 2]);

impl Reciprocals {
    fn new() -> Self {
        let mut r = [0.0; MAX_DEPTH + 2];
        for (k, v) in r.iter_mut().enumerate().skip(1) {
            *v = 1.0 / k as f64;
        }
        Reciprocals(r)
    }
}

/// Adds an element to the path `p` of `l` elements (`p[l]` is the new one).
#[inline]
fn extend(p: &mut [Elem], l: usize, zero: f64, one: f64, feature: u32, r: &Reciprocals) {
    p[l] = Elem {
        feature,
        zero,
        one,
        weight: if l == 0 { 1.0 } else { 0.0 },
    };
    let inv = r.0[l + 1];
    for i in (0..l).rev() {
        let w = p[i].weight * inv;
        p[i + 1].weight += one * w * (i + 1) as f64;
        p[i].weight = zero * w * (l - i) as f64;
    }
}

/// Removes element `k` from the path `p` whose last element is `p[l]`. A path element's
/// one fraction is 1 (the row went this way) or 0.
#[inline]
fn unwind(p: &mut [Elem], l: usize, k: usize, r: &Reciprocals) {
    let (one, zero) = (p[k].one, p[k].zero);
    let n = (l + 1) as f64;
    let inv = r.0[l + 1];
    if one != 0.0 {
        let a = n / one;
        let mut next = p[l].weight;
        for i in (0..l).rev() {
            let t = p[i].weight;
            p[i].weight = next * a * r.0[i + 1];
            next = t - p[i].weight * zero * (l - i) as f64 * inv;
        }
    } else {
        let a = n / zero;
        for i in (0..l).rev() {
            p[i].weight = p[i].weight * a * r.0[l - i];
        }
    }
    for i in k..l {
        p[i].feature = p[i + 1].feature;
        p[i].zero = p[i + 1].zero;
        p[i].one = p[i + 1].one;
    }
}

/// The total weight of the path `p` (last element `p[l]`) with element `k` unwound,
/// without changing it.
#[inline]
fn unwound_sum(p: &[Elem], l: usize, k: usize, r: &Reciprocals) -> f64 {
    let (one, zero) = (p[k].one, p[k].zero);
    let n = (l + 1) as f64;
    let mut total = 0.0;
    if one != 0.0 {
        let a = n / one;
        let b = zero * r.0[l + 1];
        let mut next = p[l].weight;
        for i in (0..l).rev() {
            let t = next * a * r.0[i + 1];
            total += t;
            next = p[i].weight - t * b * (l - i) as f64;
        }
    } else if zero != 0.0 {
        let a = n / zero;
        for i in (0..l).rev() {
            total += p[i].weight * a * r.0[l - i];
        }
    }
    total
}

impl<T: Num> Trees<T> {
    /// The two children of the split at `at`: (true, false).
    #[inline]
    fn children(node: &Node<T>, at: usize) -> (usize, usize) {
        if node.true_next() {
            (at + 1, node.index as usize)
        } else {
            (node.index as usize, at + 1)
        }
    }

    /// Calls `f` with each (target, weight) a leaf adds: its first weight alone for a
    /// single-output ensemble (as `eval` adds it).
    #[inline]
    fn each_weight(&self, leaf: &Node<T>, single: bool, mut f: impl FnMut(usize, f64)) {
        if single {
            f(0, leaf.value.to_f64());
        } else {
            let start = leaf.index as usize;
            for w in &self.weights[start..start + leaf.low() as usize] {
                f(w.target as usize, w.value.to_f64());
            }
        }
    }

    /// Adds to `phi` (`[targets, width]`) the contributions of the tree at `root` for
    /// `row`.
    fn shap_tree(
        &self,
        covers: &[f32],
        root: u32,
        row: &[T],
        phi: &mut [f64],
        walk: &mut Walk,
    ) -> Result<(), ExplainError> {
        let Walk {
            path,
            stack,
            single,
            width,
            reciprocals: r,
        } = walk;
        let (single, width) = (*single, *width);
        stack.clear();
        stack.push(Frame {
            node: root,
            depth: 0,
            parent: 0,
            zero: 1.0,
            one: 1.0,
            feature: NO_FEATURE,
        });
        while let Some(f) = stack.pop() {
            let d = f.depth as usize;
            let parent = f.parent as usize;
            let at = parent + d + 1;
            if at + d + 1 > MAX_PATH {
                return Err(ExplainError::Unexplainable(format!(
                    "a tree too deep to explain (its path buffer would pass {MAX_PATH} entries)"
                )));
            }
            if path.len() < at + d + 1 {
                path.resize(at + d + 1, Elem::default());
            }
            path.copy_within(parent..parent + d + 1, at);
            let p = &mut path[at..at + d + 1];
            extend(p, d, f.zero, f.one, f.feature, r);
            let node = &self.nodes[f.node as usize];
            if node.mode() == Mode::Leaf as u8 {
                for i in 1..=d {
                    let el = p[i];
                    if el.one == el.zero {
                        continue;
                    }
                    let scale = unwound_sum(p, d, i, r) * (el.one - el.zero);
                    let feature = el.feature as usize;
                    self.each_weight(node, single, |target, v| {
                        phi[target * width + feature] += scale * v;
                    });
                }
                continue;
            }
            let feature = node.low();
            let (t, fa) = Self::children(node, f.node as usize);
            let (hot, cold) = if Self::goes_true(node, row) {
                (t, fa)
            } else {
                (fa, t)
            };
            let cover = f64::from(covers[f.node as usize]);
            let (mut zero, mut one, mut depth) = (1.0, 1.0, d);
            if let Some(k) = p.iter().position(|e| e.feature == feature) {
                zero = p[k].zero;
                one = p[k].one;
                unwind(p, d, k, r);
                depth -= 1;
            }
            if depth + 1 > MAX_DEPTH {
                return Err(ExplainError::Unexplainable(format!(
                    "a tree deeper than {MAX_DEPTH} splits on distinct features"
                )));
            }
            for (child, one) in [(cold, 0.0), (hot, one)] {
                stack.push(Frame {
                    node: child as u32,
                    depth: (depth + 1) as u32,
                    parent: at as u32,
                    zero: f64::from(covers[child]) / cover * zero,
                    one,
                    feature,
                });
            }
        }
        Ok(())
    }

    /// The cover-weighted mean of the tree at `root`'s leaves (nodes `root..end`), added
    /// per target to `expected`.
    fn mean_leaf(
        &self,
        covers: &[f32],
        root: usize,
        end: usize,
        single: bool,
        expected: &mut [f64],
    ) {
        // A tree that is one leaf (LightGBM writes them, with cover 0) is its own mean; a
        // split's cover is positive (`covers::check`).
        let first = &self.nodes[root];
        if first.mode() == Mode::Leaf as u8 {
            self.each_weight(first, single, |target, v| expected[target] += v);
            return;
        }
        let total = f64::from(covers[root]);
        for (node, &cover) in self.nodes[root..end].iter().zip(&covers[root..end]) {
            if node.mode() == Mode::Leaf as u8 {
                let share = f64::from(cover) / total;
                self.each_weight(node, single, |target, v| expected[target] += share * v);
            }
        }
    }
}

impl<T: Num> Core<T> {
    /// The base value added to target `k`'s raw score (as `eval` finishes scores).
    fn base(&self, k: usize) -> f64 {
        let base = &self.trees.base_values;
        if base.len() == self.n_targets || (k == 0 && base.len() == 1) {
            base[k].to_f64()
        } else {
            0.0
        }
    }

    /// The covers, when the ensemble can be explained; else why not.
    pub(crate) fn explainable(&self) -> Result<&[f32], String> {
        let covers = match &self.trees.covers {
            Covers::Present(covers) => &covers[..],
            Covers::Missing(why) => return Err(why.reason().into()),
        };
        if matches!(self.aggregate, Aggregate::Min | Aggregate::Max) {
            return Err("a MIN or MAX aggregate is not a sum of trees".into());
        }
        Ok(covers)
    }

    pub(crate) fn contributions(
        &self,
        x: &Tensor,
        bounds: &Bounds,
    ) -> Result<Contributions, ExplainError> {
        let trees = &self.trees;
        let covers = self.explainable().map_err(ExplainError::Unexplainable)?;
        let (rows, width) = x.rows_and_width();
        if trees.max_feature as usize >= width {
            return Err(crate::error::RunError(format!(
                "a tree reads feature {} but the input has {width} features",
                trees.max_feature
            ))
            .into());
        }
        bounds.check_size(rows, self.n_targets, width)?;
        let data: Cow<'_, [T]> = super::eval::features::<T>(&x.data);
        let single = self.n_targets == 1;
        let n = trees.nodes.len();
        let scale = match self.aggregate {
            Aggregate::Average => 1.0 / trees.roots.len().max(1) as f64,
            _ => 1.0,
        };
        let mut expected = vec![0.0; self.n_targets];
        for (k, &root) in trees.roots.iter().enumerate() {
            let end = trees.roots.get(k + 1).map_or(n, |&r| r as usize);
            trees.mean_leaf(covers, root as usize, end, single, &mut expected);
        }
        for (k, e) in expected.iter_mut().enumerate() {
            *e = *e * scale + self.base(k);
        }
        let mut out = Contributions::new(rows, width, expected);
        let mut walk = Walk {
            path: Vec::new(),
            stack: Vec::new(),
            single,
            width,
            reciprocals: Reciprocals::new(),
        };
        let mut raw = vec![0.0; self.n_targets];
        for r in 0..rows {
            let row = &data[r * width..(r + 1) * width];
            let phi = out.row_mut(r);
            raw.fill(0.0);
            for &root in trees.roots.iter() {
                bounds.check_time()?;
                trees.shap_tree(covers, root, row, phi, &mut walk)?;
                let leaf = trees.leaf(root, row);
                trees.each_weight(leaf, single, |target, v| raw[target] += v);
            }
            if scale != 1.0 {
                phi.iter_mut().for_each(|v| *v *= scale);
            }
            for (k, v) in raw.iter().enumerate() {
                out.raw[r * self.n_targets + k] = v * scale + self.base(k);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::PostTransform;
    use crate::tree::ensemble::{Aggregate, NoCovers, TRUE_NEXT, WORD_BITS};
    use crate::value::Data;

    const UNBOUNDED: Bounds = Bounds {
        max_values: usize::MAX,
        until: None,
    };

    /// xorshift64*, for reproducible random trees.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn unit(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Appends a random tree (depth at most `depth`, splits on `features` features, a
    /// feature may repeat on a path) to `nodes` and `covers`, laid out as `compile` lays
    /// trees out: one child next, the other in `index`.
    fn grow(
        rng: &mut Rng,
        depth: usize,
        features: u64,
        cover: f32,
        nodes: &mut Vec<Node<f32>>,
        covers: &mut Vec<f32>,
    ) {
        let at = nodes.len();
        covers.push(cover);
        if depth == 0 || cover < 2.0 || rng.below(5) == 0 {
            let word = (Mode::Leaf as u32) << WORD_BITS;
            nodes.push(Node {
                value: (rng.unit() * 10.0 - 5.0) as f32,
                index: 0,
                word,
            });
            return;
        }
        let mode = rng.below(4) as u32; // LEQ, LT, GTE, GT
        let mut word = (mode << WORD_BITS) | rng.below(features) as u32;
        if rng.below(2) == 0 {
            word |= u32::from(TRUE_NEXT) << WORD_BITS;
        }
        nodes.push(Node {
            value: (rng.unit() * 2.0 - 1.0) as f32,
            index: 0,
            word,
        });
        // Integer covers, so that children add up exactly as training counts do.
        let left = (1 + rng.below(cover as u64 - 1)) as f32;
        grow(rng, depth - 1, features, left, nodes, covers);
        nodes[at].index = nodes.len() as u32;
        grow(rng, depth - 1, features, cover - left, nodes, covers);
    }

    /// E[tree(x) | x_S known], path-dependent: a split on a known feature follows the
    /// row, one on an unknown feature averages both sides by their covers.
    fn conditional(trees: &Trees<f32>, covers: &[f32], at: usize, row: &[f32], known: u32) -> f64 {
        let node = &trees.nodes[at];
        if node.mode() == Mode::Leaf as u8 {
            return f64::from(node.value);
        }
        let (t, f) = Trees::children(node, at);
        if known & (1 << node.low()) != 0 {
            let next = if Trees::goes_true(node, row) { t } else { f };
            return conditional(trees, covers, next, row, known);
        }
        let c = f64::from(covers[at]);
        (f64::from(covers[t]) * conditional(trees, covers, t, row, known)
            + f64::from(covers[f]) * conditional(trees, covers, f, row, known))
            / c
    }

    fn factorial(n: usize) -> f64 {
        (1..=n).map(|k| k as f64).product()
    }

    /// Exact Shapley values by their definition, over every subset of the features.
    fn brute_force(trees: &Trees<f32>, covers: &[f32], row: &[f32], m: usize) -> Vec<f64> {
        let value = |s: u32| -> f64 {
            trees
                .roots
                .iter()
                .map(|&r| conditional(trees, covers, r as usize, row, s))
                .sum()
        };
        let mut phi = vec![0.0; m];
        for (i, p) in phi.iter_mut().enumerate() {
            for s in 0..(1u32 << m) {
                if s & (1 << i) != 0 {
                    continue;
                }
                let size = s.count_ones() as usize;
                let w = factorial(size) * factorial(m - size - 1) / factorial(m);
                *p += w * (value(s | (1 << i)) - value(s));
            }
        }
        phi
    }

    fn forest(seed: u64, n_trees: usize, features: u64) -> Core<f32> {
        let mut rng = Rng(seed);
        let (mut nodes, mut covers, mut roots) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..n_trees {
            roots.push(nodes.len() as u32);
            grow(&mut rng, 6, features, 1000.0, &mut nodes, &mut covers);
        }
        super::super::covers::check(&nodes, &roots, &covers).expect("grown covers add up");
        Core {
            trees: Trees {
                nodes: nodes.into(),
                roots: roots.into(),
                weights: Vec::new().into(),
                base_values: vec![0.25],
                max_feature: features as u32 - 1,
                covers: Covers::Present(covers.into()),
            },
            aggregate: Aggregate::Sum,
            post: PostTransform::None,
            n_targets: 1,
            classes: None,
        }
    }

    /// TreeSHAP's answer is the Shapley values of the path-dependent conditional
    /// expectation, computed here the slow way over every subset, on random trees that
    /// split on the same feature more than once on a path (which TreeSHAP unwinds).
    #[test]
    fn treeshap_equals_shapley_values_by_their_definition() {
        let m = 5;
        for seed in 1..=20u64 {
            let core = forest(seed * 7919, 3, m as u64);
            let mut rng = Rng(seed);
            let rows: Vec<f32> = (0..4 * m)
                .map(|_| (rng.unit() * 2.0 - 1.0) as f32)
                .collect();
            let x = Tensor::new(vec![4, m], Data::F32(rows.clone()));
            let got = core.contributions(&x, &UNBOUNDED).expect("explained");
            let Covers::Present(covers) = &core.trees.covers else {
                unreachable!()
            };
            for r in 0..4 {
                let row = &rows[r * m..(r + 1) * m];
                let want = brute_force(&core.trees, covers, row, m);
                for (i, w) in want.iter().enumerate() {
                    let g = got.values[r * m + i];
                    assert!(
                        (g - w).abs() < 1e-9,
                        "seed {seed} row {r} feature {i}: {g} vs {w}"
                    );
                }
                // With no feature known, every tree's mean leaf; with all, the row's score.
                let all: f64 = got.values[r * m..(r + 1) * m].iter().sum();
                assert!((got.expected[0] + all - got.raw[r]).abs() < 1e-9);
                let score: f64 = core
                    .trees
                    .roots
                    .iter()
                    .map(|&root| f64::from(core.trees.leaf(root, row).value))
                    .sum();
                assert!((got.raw[r] - (score + 0.25)).abs() < 1e-9);
            }
            let mean: f64 = core
                .trees
                .roots
                .iter()
                .map(|&root| conditional(&core.trees, covers, root as usize, &rows[..m], 0))
                .sum();
            assert!((got.expected[0] - (mean + 0.25)).abs() < 1e-9);
        }
    }

    #[test]
    fn a_model_without_covers_or_with_a_min_aggregate_is_refused_with_the_reason() {
        let mut core = forest(3, 2, 4);
        let x = Tensor::new(vec![1, 4], Data::F32(vec![0.0; 4]));
        core.aggregate = Aggregate::Max;
        let err = core.contributions(&x, &UNBOUNDED).unwrap_err();
        assert!(err.to_string().contains("MIN or MAX"), "{err}");
        core.aggregate = Aggregate::Sum;
        core.trees.covers = Covers::Missing(NoCovers::NotSums);
        let err = core.contributions(&x, &UNBOUNDED).unwrap_err();
        assert!(err.to_string().contains("exporters write 1.0"), "{err}");
        // Too few features for the trees is the caller's error, not the model's.
        core = forest(3, 2, 4);
        let narrow = Tensor::new(vec![1, 2], Data::F32(vec![0.0; 2]));
        assert!(matches!(
            core.contributions(&narrow, &UNBOUNDED),
            Err(ExplainError::Run(_))
        ));
    }

    /// Covers that do not add up (what skl2onnx writes: 1.0 everywhere) are not covers.
    #[test]
    fn exporters_placeholder_hit_rates_are_not_covers() {
        let core = forest(5, 1, 3);
        let n = core.trees.nodes.len();
        assert_eq!(
            super::super::covers::check(&core.trees.nodes, &core.trees.roots, &vec![1.0; n]),
            Err(NoCovers::NotSums)
        );
        let mut zero = vec![0.0; n];
        zero[n - 1] = 1.0;
        assert!(super::super::covers::check(&core.trees.nodes, &core.trees.roots, &zero).is_err());
        assert_eq!(
            super::super::covers::check(&core.trees.nodes, &core.trees.roots, &vec![1.0; n - 1]),
            Err(NoCovers::Count)
        );
    }

    /// A split whose two children are one node, or a node two splits share, is not a
    /// tree: TreeSHAP's walk over every path of such a graph could take exponential time.
    #[test]
    fn shared_nodes_are_not_trees() {
        let core = forest(9, 2, 3);
        let (nodes, roots) = (&core.trees.nodes, &core.trees.roots);
        let Covers::Present(covers) = &core.trees.covers else {
            unreachable!()
        };
        assert_eq!(super::super::covers::check(nodes, roots, covers), Ok(()));
        // A split whose two children are one leaf holding half its cover: the covers add
        // up, only the shape is wrong.
        let both = [
            Node {
                value: 0.5f32,
                index: 1,
                word: (Mode::Leq as u32) << WORD_BITS,
            },
            Node {
                value: 1.0,
                index: 0,
                word: (Mode::Leaf as u32) << WORD_BITS,
            },
        ];
        assert_eq!(
            super::super::covers::check(&both, &[0], &[10.0, 5.0]),
            Err(NoCovers::NotATree)
        );
        // Two splits pointing at one leaf.
        let mut shared: Vec<Node<f32>> = nodes.to_vec();
        let splits: Vec<usize> = (0..roots[1] as usize)
            .filter(|&i| nodes[i].mode() != Mode::Leaf as u8)
            .collect();
        if splits.len() >= 2 {
            let target = shared[splits[1]].index;
            shared[splits[0]].index = target;
            assert!(super::super::covers::check(&shared, roots, covers).is_err());
        }
    }

    /// A tree that is one leaf (LightGBM writes them with cover 0) adds its value to the
    /// expected value and nothing to any feature; the sum still equals the raw score.
    #[test]
    fn a_one_leaf_tree_is_its_own_mean() {
        let mut core = forest(11, 2, 4);
        let mut nodes: Vec<Node<f32>> = core.trees.nodes.to_vec();
        let Covers::Present(covers) = &core.trees.covers else {
            unreachable!()
        };
        let mut covers: Vec<f32> = covers.to_vec();
        let mut roots: Vec<u32> = core.trees.roots.to_vec();
        roots.push(nodes.len() as u32);
        nodes.push(Node {
            value: 2.5,
            index: 0,
            word: (Mode::Leaf as u32) << WORD_BITS,
        });
        covers.push(0.0);
        core.trees.nodes = nodes.into();
        core.trees.roots = roots.into();
        core.trees.covers = Covers::Present(covers.into());
        let x = Tensor::new(vec![1, 4], Data::F32(vec![0.1, -0.2, 0.3, 0.9]));
        let got = core.contributions(&x, &UNBOUNDED).expect("explained");
        assert!(got.expected[0].is_finite());
        let sum: f64 = got.values.iter().sum();
        assert!((got.expected[0] + sum - got.raw[0]).abs() < 1e-9);
    }

    /// The answer's size and the deadline bound the work.
    #[test]
    fn bounds_stop_an_explanation() {
        let core = forest(13, 3, 4);
        let x = Tensor::new(vec![3, 4], Data::F32(vec![0.5; 12]));
        let small = Bounds {
            max_values: 11,
            until: None,
        };
        assert!(matches!(
            core.contributions(&x, &small),
            Err(ExplainError::TooLarge(_))
        ));
        let past = Bounds {
            max_values: usize::MAX,
            until: Some(std::time::Instant::now()),
        };
        assert!(matches!(
            core.contributions(&x, &past),
            Err(ExplainError::Expired)
        ));
    }
}
