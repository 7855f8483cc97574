//! `ai.onnx.ml.TreeEnsembleRegressor` (ai.onnx.ml opset 3) with random trees.
//!
//! Shape knobs that are not in [`crate::Spec`] (pruning, aggregate function, whether
//! `nodes_missing_value_tracks_true` is present) are drawn from the spec's seed, see
//! [`Shape::from_seed`].
//!
//! Leaf weights are multiples of a power of two small enough that every partial sum of
//! every subset of leaves is exactly representable in `f32`. The ensemble's sum is then
//! exact whatever order, grouping or thread split ONNX Runtime uses to accumulate it, so
//! [`Forest::predict`] matches ONNX Runtime bit for bit, not just approximately.

use crate::onnx::{Attr, AttrValue, ML_DOMAIN, ModelDef, NodeDef, encode_model};
use crate::rng::{Rng, derive};
use crate::{INPUT_NAME, OUTPUT_NAME};

/// Deepest tree we agree to build (a full tree of this depth has 2^21 - 1 nodes).
pub(crate) const MAX_DEPTH: usize = 20;
/// Thresholds are drawn uniformly from `[-THRESHOLD_RANGE, THRESHOLD_RANGE)`.
pub(crate) const THRESHOLD_RANGE: f32 = 2.0;

const LEQ: &str = "BRANCH_LEQ";
const LEAF: &str = "LEAF";

/// The per-forest knobs derived from the seed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Shape {
    /// Probability that a node below the root (and above `depth`) is a leaf; 0 = full trees.
    pub prune: f64,
    /// `aggregate_function`: AVERAGE (random-forest style) or SUM (boosting style).
    pub average: bool,
    /// Whether `nodes_missing_value_tracks_true` is written (with random 0/1 values).
    pub missing_tracks: bool,
}

impl Shape {
    /// Half the forests are full trees, half are pruned with a per-node leaf probability
    /// in [0.05, 0.30); aggregate and missing-value tracking are coin flips.
    pub(crate) fn from_seed(seed: u64) -> Self {
        let mut rng = Rng::new(derive(seed, &[0x0053_4841_5045])); // "SHAPE"
        let prune = if rng.chance(0.5) {
            0.0
        } else {
            0.05 + 0.25 * rng.unit_f64()
        };
        Shape {
            prune,
            average: rng.chance(0.5),
            missing_tracks: rng.chance(0.5),
        }
    }

    /// Expected number of nodes in one tree of this shape and `depth`.
    pub(crate) fn expected_nodes_per_tree(&self, depth: usize) -> f64 {
        // Level 0 is the root (always a split when depth > 0); a node at level
        // 1..depth-1 is a split with probability 1 - prune; level `depth` is all leaves.
        let mut total = 1.0;
        let mut splits = if depth == 0 { 0.0 } else { 1.0 };
        for level in 1..=depth {
            let nodes = 2.0 * splits;
            total += nodes;
            splits = if level < depth {
                nodes * (1.0 - self.prune)
            } else {
                0.0
            };
        }
        total
    }
}

/// Encoded bytes of a forest model besides its trees (header, names, small attributes).
pub(crate) const FOREST_OVERHEAD_BYTES: f64 = 600.0;

/// Estimated encoded size in bytes of a forest with this shape (for picking tree counts
/// that hit a target file size; typically within a few percent for more than a few trees).
#[cfg(test)]
pub(crate) fn estimate_bytes(shape: &Shape, trees: usize, depth: usize) -> f64 {
    FOREST_OVERHEAD_BYTES + trees as f64 * estimate_tree_bytes(shape, trees, depth)
}

/// Estimated mean encoded bytes per tree in a forest of `trees` trees of this shape.
pub(crate) fn estimate_tree_bytes(shape: &Shape, trees: usize, depth: usize) -> f64 {
    let nodes = shape.expected_nodes_per_tree(depth);
    let splits = (nodes - 1.0) / 2.0;
    let leaves = nodes - splits;
    // Mean varint length of node ids 0..nodes and of tree ids 0..trees.
    let mean_len =
        |count: f64| 1.0 + (count - 128.0).max(0.0) / count + (count - 16384.0).max(0.0) / count;
    let id = mean_len(nodes);
    let tree = mean_len(trees as f64);
    let missing = if shape.missing_tracks { 1.0 } else { 0.0 };
    // treeid, nodeid, featureid, mode (key + len + text), value, true id, false id, missing.
    let split = tree + id + 1.0 + (2.0 + LEQ.len() as f64) + 4.0 + 2.0 * id + missing;
    // Leaves also get a target entry: treeid, nodeid, target id, weight.
    let leaf =
        tree + id + 1.0 + (2.0 + LEAF.len() as f64) + 4.0 + 2.0 + missing + (tree + id + 1.0 + 4.0);
    splits * split + leaves * leaf
}

/// One node of the evaluation layout: trees in pre-order, so a split's true child is
/// the next node and only the false child needs an index.
#[derive(Debug, Clone, Copy)]
struct EvalNode {
    /// Feature index, or `LEAF_MARK` for a leaf.
    feature: u32,
    /// Index of the false child (splits only).
    false_next: u32,
    /// Threshold (splits) or leaf weight (leaves).
    value: f32,
    /// Whether a NaN feature value goes to the true branch.
    missing_true: bool,
}

const LEAF_MARK: u32 = u32::MAX;

/// The ONNX attribute columns for the ensemble.
#[derive(Debug, Default)]
struct Columns {
    nodes_treeids: Vec<i64>,
    nodes_nodeids: Vec<i64>,
    nodes_featureids: Vec<i64>,
    nodes_modes: Vec<&'static str>,
    nodes_values: Vec<f32>,
    nodes_truenodeids: Vec<i64>,
    nodes_falsenodeids: Vec<i64>,
    nodes_missing_value_tracks_true: Vec<i64>,
    target_treeids: Vec<i64>,
    target_nodeids: Vec<i64>,
    target_ids: Vec<i64>,
    target_weights: Vec<f32>,
}

#[derive(Debug, Clone)]
pub(crate) struct Forest {
    nodes: Vec<EvalNode>,
    roots: Vec<u32>,
    average: bool,
}

/// log2 of the leaf-weight quantum's inverse: weights are `k / 2^bits`, `|k| <= 2^bits`,
/// so `|weight| <= 1` and any partial sum over `trees` leaves is an integer multiple
/// of `2^-bits` of magnitude at most `trees * 2^bits <= 2^24`: exact in `f32`.
fn weight_bits(trees: usize) -> u32 {
    let log2_trees = usize::BITS - (trees.max(1) - 1).leading_zeros(); // ceil(log2(trees))
    24u32.saturating_sub(log2_trees).min(16)
}

/// Generates the forest, returning its evaluator and its encoded ONNX model.
pub(crate) fn generate(
    features: usize,
    trees: usize,
    depth: usize,
    seed: u64,
) -> (Forest, Vec<u8>) {
    check_dimensions(features, trees, depth);
    let shape = Shape::from_seed(seed);
    let mut grower = Grower::new(shape, features, trees, depth, seed);
    for tree in 0..trees {
        grower.grow_tree(tree);
    }
    let (forest, cols) = grower.finish();
    let attrs = cols.attrs(&shape);
    let bytes = encode_model(&ModelDef {
        graph_name: "manymodels_forest",
        node: NodeDef {
            name: "TreeEnsembleRegressor",
            op_type: "TreeEnsembleRegressor",
            domain: ML_DOMAIN,
            input: INPUT_NAME,
            output: OUTPUT_NAME,
            attrs: &attrs,
        },
        input_name: INPUT_NAME,
        input_width: features as u64,
        output_name: OUTPUT_NAME,
        output_width: 1,
    });
    (forest, bytes)
}

/// Panics on a forest we refuse to build: no features, no trees, too deep, or too many
/// trees for exact `f32` accumulation.
fn check_dimensions(features: usize, trees: usize, depth: usize) {
    assert!(features > 0, "a forest needs at least one feature");
    assert!(trees > 0, "a forest needs at least one tree");
    assert!(
        depth <= MAX_DEPTH,
        "tree depth {depth} is above the supported {MAX_DEPTH}"
    );
    assert!(
        trees <= 1 << 24,
        "too many trees for exact f32 accumulation"
    );
}

/// How leaf weights are drawn: `k * scale` with `k` uniform in `[-quantum_k, quantum_k]`.
#[derive(Debug, Clone, Copy)]
struct LeafWeights {
    quantum_k: u64,
    scale: f32,
}

impl LeafWeights {
    /// The quantum for `trees` trees (see [`weight_bits`]); SUM forests get smaller leaves.
    fn new(shape: &Shape, trees: usize) -> Self {
        let bits = weight_bits(trees);
        let quantum_k = 1u64 << bits; // k in [-quantum_k, quantum_k]
        // Boosting-style (SUM) leaves are smaller: an extra factor 1/8 keeps the quantum a power of two.
        let scale = if shape.average { 1.0 } else { 0.125 } / quantum_k as f32;
        LeafWeights { quantum_k, scale }
    }

    /// Draws one leaf weight.
    fn draw(&self, rng: &mut Rng) -> f32 {
        let k = rng.below(2 * self.quantum_k + 1) as i64 - self.quantum_k as i64;
        k as f32 * self.scale
    }
}

impl Columns {
    /// Empty columns with room for about `estimate` nodes (the target columns grow as needed).
    fn with_capacity(estimate: usize, missing_tracks: bool) -> Self {
        let mut cols = Columns::default();
        for v in [
            &mut cols.nodes_treeids,
            &mut cols.nodes_nodeids,
            &mut cols.nodes_featureids,
            &mut cols.nodes_truenodeids,
            &mut cols.nodes_falsenodeids,
        ] {
            v.reserve(estimate);
        }
        cols.nodes_modes.reserve(estimate);
        cols.nodes_values.reserve(estimate);
        if missing_tracks {
            cols.nodes_missing_value_tracks_true.reserve(estimate);
        }
        cols
    }

    /// Appends a leaf's node entries (past its tree and node ids) and its target entry.
    fn push_leaf(&mut self, tree: usize, id: i64, weight: f32) {
        self.nodes_featureids.push(0);
        self.nodes_modes.push(LEAF);
        self.nodes_values.push(0.0);
        self.nodes_truenodeids.push(0);
        self.nodes_falsenodeids.push(0);
        self.target_treeids.push(tree as i64);
        self.target_nodeids.push(id);
        self.target_ids.push(0);
        self.target_weights.push(weight);
    }

    /// Appends a split's node entries (past its tree and node ids); its false child's id
    /// is patched in when that child is emitted.
    fn push_split(&mut self, id: i64, feature: u64, threshold: f32) {
        self.nodes_featureids.push(feature as i64);
        self.nodes_modes.push(LEQ);
        self.nodes_values.push(threshold);
        self.nodes_truenodeids.push(id + 1); // pre-order: the true child comes next
        self.nodes_falsenodeids.push(-1); // patched when the false child is emitted
    }

    /// The regressor's attributes, in alphabetical order of name.
    fn attrs(&self, shape: &Shape) -> Vec<Attr<'_>> {
        let aggregate = if shape.average { "AVERAGE" } else { "SUM" };
        let mut attrs = vec![
            Attr::new("aggregate_function", AttrValue::Str(aggregate)),
            Attr::new("n_targets", AttrValue::Int(1)),
            Attr::new(
                "nodes_falsenodeids",
                AttrValue::Ints(&self.nodes_falsenodeids),
            ),
            Attr::new("nodes_featureids", AttrValue::Ints(&self.nodes_featureids)),
        ];
        if shape.missing_tracks {
            attrs.push(Attr::new(
                "nodes_missing_value_tracks_true",
                AttrValue::Ints(&self.nodes_missing_value_tracks_true),
            ));
        }
        attrs.extend([
            Attr::new("nodes_modes", AttrValue::Strings(&self.nodes_modes)),
            Attr::new("nodes_nodeids", AttrValue::Ints(&self.nodes_nodeids)),
            Attr::new("nodes_treeids", AttrValue::Ints(&self.nodes_treeids)),
            Attr::new(
                "nodes_truenodeids",
                AttrValue::Ints(&self.nodes_truenodeids),
            ),
            Attr::new("nodes_values", AttrValue::Floats(&self.nodes_values)),
            Attr::new("post_transform", AttrValue::Str("NONE")),
            Attr::new("target_ids", AttrValue::Ints(&self.target_ids)),
            Attr::new("target_nodeids", AttrValue::Ints(&self.target_nodeids)),
            Attr::new("target_treeids", AttrValue::Ints(&self.target_treeids)),
            Attr::new("target_weights", AttrValue::Floats(&self.target_weights)),
        ]);
        attrs
    }
}

/// Grows the trees one after another from one random stream, filling the ONNX columns
/// and the evaluation layout side by side. The order of random draws is part of the
/// output: changing it changes every generated model.
struct Grower {
    shape: Shape,
    rng: Rng,
    weights: LeafWeights,
    features: u64,
    depth: usize,
    cols: Columns,
    nodes: Vec<EvalNode>,
    roots: Vec<u32>,
    /// Pending nodes: (level, index of the parent whose false child this is, if any).
    stack: Vec<(usize, Option<usize>)>,
}

impl Grower {
    /// An empty forest with room for the expected node count (plus 5% and a little).
    fn new(shape: Shape, features: usize, trees: usize, depth: usize, seed: u64) -> Self {
        let estimate = (shape.expected_nodes_per_tree(depth) * trees as f64 * 1.05) as usize + 16;
        Grower {
            shape,
            rng: Rng::new(seed),
            weights: LeafWeights::new(&shape, trees),
            features: features as u64,
            depth,
            cols: Columns::with_capacity(estimate, shape.missing_tracks),
            nodes: Vec::with_capacity(estimate),
            roots: Vec::with_capacity(trees),
            stack: Vec::with_capacity(2 * depth + 2),
        }
    }

    /// Grows tree number `tree` in pre-order, depth first, true subtree before false.
    fn grow_tree(&mut self, tree: usize) {
        let base = self.nodes.len();
        self.roots
            .push(u32::try_from(base).expect("forest too large"));
        self.stack.push((0, None));
        while let Some((level, parent)) = self.stack.pop() {
            self.grow_node(tree, base, level, parent);
        }
    }

    /// Emits one node at `level`: links it as `parent`'s false child, draws whether it is
    /// a leaf and whether it tracks missing values, and writes it as a leaf or a split.
    fn grow_node(&mut self, tree: usize, base: usize, level: usize, parent: Option<usize>) {
        let index = self.nodes.len();
        let id = (index - base) as i64;
        if let Some(p) = parent {
            self.cols.nodes_falsenodeids[p] = id;
            self.nodes[p].false_next = u32::try_from(index).expect("forest too large");
        }
        let shape = self.shape;
        let leaf =
            level == self.depth || (level > 0 && shape.prune > 0.0 && self.rng.chance(shape.prune));
        let tracks = shape.missing_tracks && self.rng.chance(0.5);
        self.cols.nodes_treeids.push(tree as i64);
        self.cols.nodes_nodeids.push(id);
        if leaf {
            self.grow_leaf(tree, id);
        } else {
            self.grow_split(id, index, level, tracks);
        }
        if shape.missing_tracks {
            self.cols
                .nodes_missing_value_tracks_true
                .push(i64::from(tracks && !leaf));
        }
    }

    /// Draws a leaf's weight and writes the leaf.
    fn grow_leaf(&mut self, tree: usize, id: i64) {
        let weight = self.weights.draw(&mut self.rng);
        self.cols.push_leaf(tree, id, weight);
        self.nodes.push(EvalNode {
            feature: LEAF_MARK,
            false_next: 0,
            value: weight,
            missing_true: false,
        });
    }

    /// Draws a split's feature and threshold, writes the split and queues its children.
    fn grow_split(&mut self, id: i64, index: usize, level: usize, tracks: bool) {
        let feature = self.rng.below(self.features);
        let threshold = self.rng.signed_f32() * THRESHOLD_RANGE;
        self.cols.push_split(id, feature, threshold);
        self.nodes.push(EvalNode {
            feature: feature as u32,
            false_next: 0,
            value: threshold,
            missing_true: tracks,
        });
        // The false child is popped after the whole true subtree.
        self.stack.push((level + 1, Some(index)));
        self.stack.push((level + 1, None));
    }

    /// The evaluator and the finished ONNX columns.
    fn finish(self) -> (Forest, Columns) {
        debug_assert!(self.cols.nodes_falsenodeids.iter().all(|&v| v >= 0));
        let forest = Forest {
            nodes: self.nodes,
            roots: self.roots,
            average: self.shape.average,
        };
        (forest, self.cols)
    }
}

impl Forest {
    #[cfg(test)]
    pub(crate) fn trees(&self) -> usize {
        self.roots.len()
    }

    pub(crate) fn nodes(&self) -> usize {
        self.nodes.len()
    }

    /// What ONNX Runtime computes: each tree is walked with `x <= threshold` (or a NaN
    /// on a node tracking missing values to true) going to the true branch; leaf weights
    /// are summed in `f32` (exactly, see the module docs); AVERAGE divides the sum by the
    /// tree count in `f32`; there are no base values and no post transform.
    pub(crate) fn predict(&self, row: &[f32]) -> f32 {
        let mut sum = 0.0f32;
        for &root in &self.roots {
            let mut i = root as usize;
            loop {
                let node = self.nodes[i];
                if node.feature == LEAF_MARK {
                    sum += node.value;
                    break;
                }
                let x = row[node.feature as usize];
                i = if x <= node.value || (node.missing_true && x.is_nan()) {
                    i + 1
                } else {
                    node.false_next as usize
                };
            }
        }
        if self.average {
            sum / self.roots.len() as f32
        } else {
            sum
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_quantum_keeps_sums_exact() {
        assert_eq!(weight_bits(1), 16);
        assert_eq!(weight_bits(256), 16);
        assert_eq!(weight_bits(257), 15);
        assert_eq!(weight_bits(1 << 20), 4);
        for trees in [1usize, 7, 100, 300, 5000, 1 << 20] {
            let bits = weight_bits(trees);
            // Worst case: every leaf at the largest magnitude.
            let max_units = trees as u64 * (1u64 << bits);
            assert!(max_units <= 1 << 24, "trees={trees}");
        }
    }

    #[test]
    fn expected_nodes_of_full_trees() {
        let full = Shape {
            prune: 0.0,
            average: false,
            missing_tracks: false,
        };
        assert_eq!(full.expected_nodes_per_tree(0), 1.0);
        assert_eq!(full.expected_nodes_per_tree(1), 3.0);
        assert_eq!(full.expected_nodes_per_tree(6), 127.0);
    }

    #[test]
    fn full_trees_have_exact_node_counts() {
        for seed in 0..64u64 {
            if Shape::from_seed(seed).prune == 0.0 {
                let (forest, _) = generate(5, 3, 4, seed);
                assert_eq!(forest.nodes(), 3 * 31);
                assert_eq!(forest.trees(), 3);
                return;
            }
        }
        panic!("no full-tree seed found");
    }

    #[test]
    fn pruned_sizes_follow_expectation() {
        let mut checked = 0;
        for seed in 0..64u64 {
            let shape = Shape::from_seed(seed);
            if shape.prune > 0.0 {
                let (forest, _) = generate(5, 400, 6, seed);
                let expected = shape.expected_nodes_per_tree(6) * 400.0;
                let got = forest.nodes() as f64;
                assert!(
                    (got - expected).abs() < 0.1 * expected,
                    "seed {seed}: {got} vs {expected}"
                );
                checked += 1;
            }
        }
        assert!(checked > 10);
    }

    #[test]
    fn size_estimate_is_close() {
        for (seed, trees, depth) in [
            (1u64, 50usize, 6usize),
            (2, 300, 8),
            (3, 120, 10),
            (4, 2000, 4),
            (5, 40, 5),
        ] {
            let (_, bytes) = generate(16, trees, depth, seed);
            let estimate = estimate_bytes(&Shape::from_seed(seed), trees, depth);
            let ratio = estimate / bytes.len() as f64;
            assert!(
                (0.93..1.07).contains(&ratio),
                "seed {seed}: estimate {estimate} vs {}",
                bytes.len()
            );
        }
    }

    #[test]
    fn walks_a_known_tree() {
        // Depth-1 stump: root on feature f with threshold t, leaves w_true, w_false.
        let forest = Forest {
            nodes: vec![
                EvalNode {
                    feature: 1,
                    false_next: 2,
                    value: 0.5,
                    missing_true: true,
                },
                EvalNode {
                    feature: LEAF_MARK,
                    false_next: 0,
                    value: 1.0,
                    missing_true: false,
                },
                EvalNode {
                    feature: LEAF_MARK,
                    false_next: 0,
                    value: -2.0,
                    missing_true: false,
                },
            ],
            roots: vec![0, 0],
            average: true,
        };
        assert_eq!(forest.predict(&[9.0, 0.5]), 1.0); // equal goes true
        assert_eq!(forest.predict(&[9.0, 0.6]), -2.0);
        assert_eq!(forest.predict(&[9.0, f32::NAN]), 1.0); // tracked missing goes true
    }
}
