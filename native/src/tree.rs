//! `TreeEnsembleRegressor` and `TreeEnsembleClassifier` (ai.onnx.ml opset 1/3), as ONNX
//! Runtime 1.31 builds and evaluates them (`tree_ensemble_common.h`,
//! `tree_ensemble_aggregator.h`):
//!
//! - Trees start wherever `nodes_treeids` changes from one node to the next, in file
//!   order, and are summed in that order, one row at a time (ONNX Runtime's order when it
//!   runs a session on one intra-op thread, as the scorer does).
//! - Nodes are laid out depth first with the false child next to its parent, so a split
//!   stores only its true child; a true child may be shared (LightGBM's set membership is
//!   a chain of `BRANCH_EQ` nodes with one true child), a cycle is refused.
//! - Thresholds and sums are `float` for float and integer inputs and `double` for double
//!   inputs; outputs are `float`.
//!
//! A node costs 12 bytes for float models (16 for double ones); multi-output ensembles add
//! 8 bytes (16) per leaf weight: about 0.3x the ONNX file, against ONNX Runtime's 5-6x.
//! Exported forests compile in one pass (`fast`); everything else takes `general`.

use std::borrow::Cow;

use crate::attrs::{Attrs, unsupported};
use crate::graph::NodeInput;
use crate::onnx::NodeView;
use crate::transform::{self, PostTransform};
use crate::value::{Data, Elem, Tensor};
use crate::{CompileError, RunError};

mod fast;

/// The number type of thresholds, weights and sums.
pub(crate) trait Num:
    Copy
    + PartialOrd
    + std::fmt::Debug
    + std::ops::Add<Output = Self>
    + std::ops::AddAssign
    + std::ops::Div<Output = Self>
    + std::ops::Neg<Output = Self>
    + Default
    + 'static
{
    const BYTES: usize;
    fn from_f32(v: f32) -> Self;
    fn from_f64(v: f64) -> Self;
    fn from_count(n: usize) -> Self;
    fn to_f32(self) -> f32;
    fn is_nan(self) -> bool;
}

impl Num for f32 {
    const BYTES: usize = 4;
    fn from_f32(v: f32) -> Self {
        v
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn from_count(n: usize) -> Self {
        n as f32
    }
    fn to_f32(self) -> f32 {
        self
    }
    fn is_nan(self) -> bool {
        f32::is_nan(self)
    }
}

impl Num for f64 {
    const BYTES: usize = 8;
    fn from_f32(v: f32) -> Self {
        f64::from(v)
    }
    fn from_f64(v: f64) -> Self {
        v
    }
    fn from_count(n: usize) -> Self {
        n as f64
    }
    fn to_f32(self) -> f32 {
        self as f32
    }
    fn is_nan(self) -> bool {
        f64::is_nan(self)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Mode {
    Leq = 0,
    Lt = 1,
    Gte = 2,
    Gt = 3,
    Eq = 4,
    Neq = 5,
    Leaf = 6,
}

impl Mode {
    #[inline]
    fn parse(s: &[u8]) -> Option<Mode> {
        // The two modes real forests are made of, first.
        if s == b"LEAF" {
            return Some(Mode::Leaf);
        }
        if s == b"BRANCH_LEQ" {
            return Some(Mode::Leq);
        }
        Some(match s {
            b"BRANCH_LEQ" => Mode::Leq,
            b"BRANCH_LT" => Mode::Lt,
            b"BRANCH_GTE" => Mode::Gte,
            b"BRANCH_GT" => Mode::Gt,
            b"BRANCH_EQ" => Mode::Eq,
            b"BRANCH_NEQ" => Mode::Neq,
            b"LEAF" => Mode::Leaf,
            _ => return None,
        })
    }
}

const MODE_MASK: u8 = 0x7;
/// The most regression targets a model may declare.
const MAX_TARGETS: usize = 1 << 16;
const MISSING_TRUE: u8 = 0x8;
/// On a split: its true child is the next node and `index` is the false child (set for
/// trees kept in the file's order; the depth-first relayout puts the false child next).
const TRUE_NEXT: u8 = 0x10;
/// The low bits of `Node::word`: the feature of a split, the weight count of a leaf.
const WORD_BITS: u32 = 27;
const WORD_MASK: u32 = (1 << WORD_BITS) - 1;
/// The largest feature index the packed layout holds (a model reading a later feature is
/// served by ONNX Runtime).
const MAX_FEATURE: u32 = WORD_MASK;

/// One node: 12 bytes for float models, 16 for double ones. Splits: `value` is the
/// threshold, one child is the next node and `index` is the other (the true child unless
/// the `TRUE_NEXT` flag is set), the word's low bits the feature. Leaves: `value` is the first weight, `index` the first of
/// the word's count entries in `weights` (multi-output ensembles only).
#[derive(Debug, Clone, Copy)]
struct Node<T> {
    value: T,
    index: u32,
    /// Mode (3 bits), missing-tracks-true and true-next (1 bit each) on top, feature or
    /// count below.
    word: u32,
}

impl<T> Node<T> {
    #[inline(always)]
    fn mode(&self) -> u8 {
        (self.word >> WORD_BITS) as u8 & MODE_MASK
    }

    #[inline(always)]
    fn low(&self) -> u32 {
        self.word & WORD_MASK
    }

    #[inline(always)]
    fn missing_true(&self) -> bool {
        (self.word >> WORD_BITS) as u8 & MISSING_TRUE != 0
    }

    #[inline(always)]
    fn true_next(&self) -> bool {
        (self.word >> WORD_BITS) as u8 & TRUE_NEXT != 0
    }
}

#[derive(Debug, Clone, Copy)]
struct Weight<T> {
    target: u32,
    value: T,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Aggregate {
    Sum,
    Average,
    Min,
    Max,
}

#[derive(Debug)]
enum Labels {
    Int(Vec<i64>),
    Str(Vec<String>),
}

impl Labels {
    fn len(&self) -> usize {
        match self {
            Labels::Int(v) => v.len(),
            Labels::Str(v) => v.len(),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Trees<T> {
    nodes: Vec<Node<T>>,
    roots: Vec<u32>,
    weights: Vec<Weight<T>>,
    base_values: Vec<T>,
    max_feature: u32,
}

#[derive(Debug)]
pub(crate) enum Ensemble {
    F32(Box<Core<f32>>),
    F64(Box<Core<f64>>),
}

#[derive(Debug)]
pub(crate) struct Core<T> {
    trees: Trees<T>,
    aggregate: Aggregate,
    post: PostTransform,
    /// Targets (regressor) or classes (classifier) the sums are kept for.
    n_targets: usize,
    /// `Some` for a classifier.
    classes: Option<Classes>,
}

#[derive(Debug)]
struct Classes {
    labels: Labels,
    /// ONNX Runtime's `binary_case_`: two labels and every weight on class 0... see `finalize_classifier`.
    binary: bool,
    weights_all_positive: bool,
}

type Compiled = (Ensemble, Vec<Elem>);

pub(crate) fn compile(
    node: &NodeView<'_>,
    attrs: &Attrs<'_, '_>,
    inputs: &[NodeInput<'_>],
    classifier: bool,
) -> Result<Compiled, CompileError> {
    let input = match inputs {
        [x] if x.constant.is_none() => x.elem,
        _ => return Err(unsupported(node, "expects one computed input")),
    };
    match (input, classifier) {
        (Elem::F32, _) | (Elem::I64 | Elem::I32, true) => {
            let core = build::<f32>(node, attrs, classifier)?;
            let outs = core.output_elems();
            Ok((Ensemble::F32(Box::new(core)), outs))
        }
        (Elem::F64, _) => {
            let core = build::<f64>(node, attrs, classifier)?;
            let outs = core.output_elems();
            Ok((Ensemble::F64(Box::new(core)), outs))
        }
        _ => Err(unsupported(node, "input type")),
    }
}

fn invalid(node: &NodeView<'_>, why: impl std::fmt::Display) -> CompileError {
    CompileError::Invalid(format!("{} '{}': {why}", node.op_type, node.name))
}

/// Thresholds, weights or base values: the `_as_tensor` form (of exactly the threshold
/// type, as ONNX Runtime requires) or the float list, never both.
fn values<T: Num>(
    node: &NodeView<'_>,
    attrs: &Attrs<'_, '_>,
    floats: &'static str,
    tensor: &'static str,
) -> Result<Vec<T>, CompileError> {
    let listed = attrs.floats(floats)?;
    match attrs.tensor_f64(tensor, T::BYTES == 8)? {
        Some(v) if listed.is_empty() => Ok(v.into_iter().map(T::from_f64).collect()),
        Some(_) => Err(invalid(
            node,
            format!("both {floats} and {tensor} are given"),
        )),
        None => Ok(listed.into_iter().map(T::from_f32).collect()),
    }
}

/// What the node and weight columns become, by either path.
#[derive(Debug)]
struct Decoded<T> {
    nodes: Vec<Node<T>>,
    roots: Vec<u32>,
    weights: Vec<Weight<T>>,
    max_feature: u32,
    /// How many distinct output ids the weights name: 0, 1, or 2 for more.
    distinct_ids: u8,
    any_negative_weight: bool,
}

/// Tracks the weights' output ids as `Decoded` summarises them.
fn note_id(distinct: &mut u8, first: &mut u32, id: u32) {
    match *distinct {
        0 => {
            *distinct = 1;
            *first = id;
        }
        1 if id != *first => *distinct = 2,
        _ => {}
    }
}

fn build<T: Num>(
    node: &NodeView<'_>,
    attrs: &Attrs<'_, '_>,
    classifier: bool,
) -> Result<Core<T>, CompileError> {
    // The small attributes first: the outputs' count decides how leaves keep weights.
    let base_values: Vec<T> = values(node, attrs, "base_values", "base_values_as_tensor")?;
    let name = attrs.string("post_transform")?.unwrap_or("NONE");
    let post = PostTransform::parse(name)
        .ok_or_else(|| invalid(node, format!("unknown post_transform {name}")))?;
    let (aggregate, n_outputs, labels) = if classifier {
        let ints = attrs.ints("classlabels_int64s")?;
        let strings = attrs.strings("classlabels_strings")?;
        let labels = match (ints.is_empty(), strings.is_empty()) {
            (false, true) => Labels::Int(ints),
            (true, false) => Labels::Str(strings.into_iter().map(str::to_string).collect()),
            _ => {
                return Err(invalid(
                    node,
                    "needs exactly one of classlabels_int64s, classlabels_strings",
                ));
            }
        };
        let n_classes = labels.len();
        if n_classes < 2 {
            return Err(unsupported(node, "fewer than two class labels"));
        }
        if n_classes == 2 && post == PostTransform::Probit {
            return Err(unsupported(
                node,
                "PROBIT on two classes (ONNX Runtime writes half a row)",
            ));
        }
        let base_ok = if n_classes <= 2 {
            base_values.len() <= 2
        } else {
            base_values.is_empty() || base_values.len() == n_classes
        };
        if !base_ok {
            return Err(invalid(
                node,
                format!("{} base values for {n_classes} classes", base_values.len()),
            ));
        }
        (Aggregate::Sum, n_classes, Some(labels))
    } else {
        let aggregate = match attrs.string("aggregate_function")?.unwrap_or("SUM") {
            "SUM" => Aggregate::Sum,
            "AVERAGE" => Aggregate::Average,
            "MIN" => Aggregate::Min,
            "MAX" => Aggregate::Max,
            other => return Err(invalid(node, format!("unknown aggregate_function {other}"))),
        };
        // ONNX Runtime refuses a missing or non-positive n_targets; a huge one would size
        // every output row, so it is refused too.
        let n_targets = attrs.int("n_targets").unwrap_or(0);
        let n_targets = usize::try_from(n_targets)
            .ok()
            .filter(|&t| (1..=MAX_TARGETS).contains(&t))
            .ok_or_else(|| invalid(node, format!("n_targets {n_targets}")))?;
        if !base_values.is_empty() && base_values.len() != n_targets {
            return Err(invalid(
                node,
                format!("{} base values for {n_targets} targets", base_values.len()),
            ));
        }
        (aggregate, n_targets, None)
    };
    // Hit rates are documentation: ONNX Runtime reads and ignores them (never decoded).
    attrs.has("nodes_hitrates");
    attrs.has("nodes_hitrates_as_tensor");

    let decoded = match fast::decode::<T>(attrs, classifier, n_outputs) {
        Some(decoded) => decoded,
        None => general::<T>(node, attrs, classifier, n_outputs)?,
    };
    let classes = labels.map(|labels| {
        let n_classes = labels.len();
        Classes {
            labels,
            binary: n_classes == 2 && decoded.distinct_ids == 1,
            weights_all_positive: !decoded.any_negative_weight,
        }
    });
    Ok(Core {
        trees: Trees {
            nodes: decoded.nodes,
            roots: decoded.roots,
            weights: decoded.weights,
            base_values,
            max_feature: decoded.max_feature,
        },
        aggregate,
        post,
        n_targets: n_outputs,
        classes,
    })
}

/// The weight columns' names: `class_*` for a classifier, `target_*` for a regressor.
fn weight_names(classifier: bool) -> [&'static str; 5] {
    if classifier {
        [
            "class_treeids",
            "class_nodeids",
            "class_ids",
            "class_weights",
            "class_weights_as_tensor",
        ]
    } else {
        [
            "target_treeids",
            "target_nodeids",
            "target_ids",
            "target_weights",
            "target_weights_as_tensor",
        ]
    }
}

/// The general path: any node order, any ids, shared children; decodes each column into
/// per-node records, then lays the trees out (`layout`).
fn general<T: Num>(
    node: &NodeView<'_>,
    attrs: &Attrs<'_, '_>,
    classifier: bool,
    n_outputs: usize,
) -> Result<Decoded<T>, CompileError> {
    let tree_ids = attrs.ints("nodes_treeids")?;
    let node_ids = attrs.ints("nodes_nodeids")?;
    let n = node_ids.len();
    if n == 0 {
        return Err(invalid(node, "no nodes"));
    }
    if n >= u32::MAX as usize / 2 {
        return Err(invalid(node, "too many nodes"));
    }
    if tree_ids.len() != n {
        return Err(invalid(
            node,
            format!("nodes_treeids has {} entries for {n} nodes", tree_ids.len()),
        ));
    }
    // Every other node column is decoded straight into one record per node: no column is
    // ever held whole (a 30 MB forest has about 750,000 nodes).
    let mut raw: Vec<Raw<T>> = crate::memory::vec_filled(
        Raw {
            value: T::default(),
            true_at: 0,
            false_at: 0,
            word: 0,
        },
        n,
    );
    let count = |name: &str, got: Option<usize>| -> Result<(), CompileError> {
        match got {
            Some(got) if got == n => Ok(()),
            Some(got) => Err(invalid(
                node,
                format!("{name} has {got} entries for {n} nodes"),
            )),
            None => Err(invalid(node, format!("{name} is missing"))),
        }
    };
    let overflow = || invalid(node, "a node column is longer than nodes_nodeids");
    let got = attrs.each_bytes("nodes_modes", |k, m| {
        let mode = Mode::parse(m).ok_or_else(|| {
            invalid(
                node,
                format!("unknown node mode {}", String::from_utf8_lossy(m)),
            )
        })?;
        raw.get_mut(k).ok_or_else(overflow)?.word = u32::from(mode as u8) << WORD_BITS;
        Ok(())
    })?;
    count("nodes_modes", got)?;
    let is_leaf = |r: &Raw<T>| (r.word >> WORD_BITS) as u8 & MODE_MASK == Mode::Leaf as u8;
    // Only the value 1 sets the flag in ONNX Runtime.
    let got = attrs.each_int("nodes_missing_value_tracks_true", |k, v| {
        let r = raw.get_mut(k).ok_or_else(overflow)?;
        if v == 1 {
            r.word |= u32::from(MISSING_TRUE) << WORD_BITS;
        }
        Ok(())
    })?;
    if got.is_some() {
        count("nodes_missing_value_tracks_true", got)?;
    }
    let mut max_feature = 0u32;
    let got = attrs.each_int("nodes_featureids", |k, v| {
        let r = raw.get_mut(k).ok_or_else(overflow)?;
        let feature = v as i64;
        if is_leaf(r) {
            // ONNX Runtime counts a leaf's feature id toward the largest one read.
            if feature > 0 {
                max_feature = max_feature.max(u32::try_from(feature).unwrap_or(u32::MAX));
            }
            return Ok(());
        }
        let feature = u32::try_from(feature)
            .map_err(|_| invalid(node, format!("a split reads feature {feature}")))?;
        if feature > MAX_FEATURE {
            return Err(unsupported(
                node,
                "a feature index too large for the packed layout",
            ));
        }
        max_feature = max_feature.max(feature);
        r.word |= feature;
        Ok(())
    })?;
    count("nodes_featureids", got)?;
    match attrs.tensor_f64("nodes_values_as_tensor", T::BYTES == 8)? {
        Some(values) => {
            if attrs.has("nodes_values") {
                return Err(invalid(
                    node,
                    "both nodes_values and nodes_values_as_tensor are given",
                ));
            }
            count("nodes_values_as_tensor", Some(values.len()))?;
            for (r, v) in raw.iter_mut().zip(values) {
                r.value = T::from_f64(v);
            }
        }
        None => {
            let got = attrs.each_float("nodes_values", |k, v| {
                raw.get_mut(k).ok_or_else(overflow)?.value = T::from_f32(v);
                Ok(())
            })?;
            count("nodes_values", got)?;
        }
    }
    // Children, as attribute positions (leaves' ids are ignored, as in ONNX Runtime).
    let index = NodeIndex::new(node, &tree_ids, &node_ids)?;
    for (name, is_true) in [("nodes_truenodeids", true), ("nodes_falsenodeids", false)] {
        let got = attrs.each_int(name, |k, v| {
            let r = raw.get(k).ok_or_else(overflow)?;
            if is_leaf(r) {
                return Ok(());
            }
            let id = v as i64;
            let at = index.child(&tree_ids, &node_ids, k, id).ok_or_else(|| {
                invalid(
                    node,
                    format!(
                        "child {id} of node {} of tree {} does not exist",
                        node_ids[k], tree_ids[k]
                    ),
                )
            })?;
            if at as usize == k {
                return Err(invalid(
                    node,
                    format!(
                        "node {} of tree {} points to itself",
                        node_ids[k], tree_ids[k]
                    ),
                ));
            }
            let r = &mut raw[k];
            if is_true {
                r.true_at = at;
            } else {
                r.false_at = at;
            }
            Ok(())
        })?;
        count(name, got)?;
    }
    let [
        trees_name,
        nodes_name,
        ids_name,
        weights_name,
        weights_tensor,
    ] = weight_names(classifier);
    let w_trees = attrs.ints(trees_name)?;
    let w_nodes = attrs.ints(nodes_name)?;
    let w_ids = attrs.ids(ids_name)?;
    let w_values: Vec<T> = values(node, attrs, weights_name, weights_tensor)?;
    if [w_nodes.len(), w_ids.len(), w_values.len()]
        .iter()
        .any(|&l| l != w_trees.len())
    {
        let prefix = if classifier { "class" } else { "target" };
        return Err(invalid(
            node,
            format!("the {prefix}_* lists differ in length"),
        ));
    }
    if let Some(&bad) = w_ids.iter().find(|&&t| t as usize >= n_outputs) {
        return Err(invalid(
            node,
            format!("{ids_name} holds {bad} for {n_outputs} outputs"),
        ));
    }
    let (mut distinct_ids, mut first) = (0u8, 0u32);
    for &id in &w_ids {
        note_id(&mut distinct_ids, &mut first, id);
    }
    let any_negative_weight = w_values.iter().any(|&w| w < T::default());
    let (nodes, roots, weights) = layout(
        node,
        &tree_ids,
        &node_ids,
        &index,
        raw,
        (&w_trees, &w_nodes, &w_ids, &w_values),
        n_outputs,
    )?;
    Ok(Decoded {
        nodes,
        roots,
        weights,
        max_feature,
        distinct_ids,
        any_negative_weight,
    })
}

/// Where each (tree id, node id) is listed. Exporters list each tree's nodes together with
/// ids 0, 1, 2, ... in order; then a node is found by arithmetic (`Dense`). Anything else is
/// looked up in a hash map.
enum NodeIndex {
    /// Tree id -> (first position, node count); the last tree looked up is remembered.
    Dense {
        trees: std::collections::HashMap<i64, (u32, u32)>,
        last: std::cell::Cell<(i64, u32, u32)>,
    },
    Map(std::collections::HashMap<(i64, i64), u32>),
}

impl NodeIndex {
    fn new(node: &NodeView<'_>, tree_ids: &[i64], node_ids: &[i64]) -> Result<Self, CompileError> {
        let n = node_ids.len();
        let mut trees = std::collections::HashMap::new();
        let mut dense = true;
        let mut start = 0;
        while start < n && dense {
            let tree = tree_ids[start];
            let mut end = start;
            while end < n && tree_ids[end] == tree {
                dense &= node_ids[end] == (end - start) as i64;
                end += 1;
            }
            dense &= trees
                .insert(tree, (start as u32, (end - start) as u32))
                .is_none();
            start = end;
        }
        if dense {
            return Ok(NodeIndex::Dense {
                trees,
                last: std::cell::Cell::new((i64::MIN, 0, 0)),
            });
        }
        let mut map = std::collections::HashMap::with_capacity(n);
        for i in 0..n {
            if map.insert((tree_ids[i], node_ids[i]), i as u32).is_some() {
                return Err(invalid(
                    node,
                    format!(
                        "node {} of tree {} is listed twice",
                        node_ids[i], tree_ids[i]
                    ),
                ));
            }
        }
        Ok(NodeIndex::Map(map))
    }

    /// The position of node `id` of the tree that the node at position `k` belongs to.
    #[inline]
    fn child(&self, tree_ids: &[i64], node_ids: &[i64], k: usize, id: i64) -> Option<u32> {
        match self {
            // Dense: the tree starts at `k - node_ids[k]` and is one run. Whether `at` is
            // still inside that run is checked where the layout is made (`keep_in_order`
            // bounds each tree; the relayout compares tree ids), not here.
            NodeIndex::Dense { .. } => {
                let at = (k as i64 - node_ids[k]).checked_add(id)?;
                (id >= 0 && (at as u64) < tree_ids.len() as u64).then_some(at as u32)
            }
            NodeIndex::Map(map) => map.get(&(tree_ids[k], id)).copied(),
        }
    }

    fn get(&self, tree: i64, id: i64) -> Option<u32> {
        match self {
            NodeIndex::Dense { trees, last } => {
                let (t, start, len) = last.get();
                let (start, len) = if t == tree {
                    (start, len)
                } else {
                    let &(start, len) = trees.get(&tree)?;
                    last.set((tree, start, len));
                    (start, len)
                };
                (0..i64::from(len)).contains(&id).then(|| start + id as u32)
            }
            NodeIndex::Map(map) => map.get(&(tree, id)).copied(),
        }
    }
}

/// Whether a tree (attribute positions `start..end`, root first) can stay in the file's
/// order: a plain tree (every node reached exactly once) listed depth first, each split's
/// subtree right after it with one child next. Exporters write trees that way. Such a tree
/// is evaluated exactly as ONNX Runtime's relayout of it would be: the layout changes
/// where nodes sit, never which leaf a row reaches.
fn keep_in_order<T: Num>(raw: &[Raw<T>], start: usize, end: usize) -> bool {
    // Walk the tree depth first, the child listed next first, and check the walk visits
    // exactly `start..end` in order: then it is a plain tree (every node reached once)
    // listed in that order. One sequential pass and a stack of pending other children.
    let is_leaf = |r: &Raw<T>| (r.word >> WORD_BITS) as u8 & MODE_MASK == Mode::Leaf as u8;
    let mut pending: Vec<u32> = Vec::new();
    let mut i = start;
    loop {
        let r = &raw[i];
        if is_leaf(r) {
            match pending.pop() {
                None => return i + 1 == end,
                Some(next) if next as usize == i + 1 => i += 1,
                Some(_) => return false,
            }
        } else {
            let other = if r.true_at as usize == i + 1 {
                r.false_at
            } else if r.false_at as usize == i + 1 {
                r.true_at
            } else {
                return false;
            };
            pending.push(other);
            i += 1;
        }
        if i >= end {
            return false;
        }
    }
}

/// One node in attribute order with its children resolved to attribute positions: what
/// the depth-first walk reads (one 16-20 byte record instead of six columns).
#[derive(Clone, Copy)]
struct Raw<T> {
    value: T,
    true_at: u32,
    false_at: u32,
    /// Mode and missing flag on top, feature (splits) below, as in `Node::word`.
    word: u32,
}

/// Laid-out nodes, the trees' roots and the leaf weights.
type Laid<T> = (Vec<Node<T>>, Vec<u32>, Vec<Weight<T>>);

/// Lays the trees out: in the file's order where it already is a layout
/// (`keep_in_order`), else the depth-first relayout (false child next) ONNX Runtime's
/// `AddNodes` makes, without recursion (a hostile tree can be a million nodes deep).
#[allow(clippy::too_many_arguments)]
fn layout<T: Num>(
    node: &NodeView<'_>,
    tree_ids: &[i64],
    node_ids: &[i64],
    index: &NodeIndex,
    mut raw: Vec<Raw<T>>,
    (w_trees, w_nodes, w_ids, w_values): (&[i64], &[i64], &[u32], &[T]),
    n_outputs: usize,
) -> Result<Laid<T>, CompileError> {
    let n = raw.len();
    // Leaf weights, in (tree, node, attribute position) order, as ONNX Runtime sorts them
    // (exporters usually list them in that order already, which is attribute order too:
    // the records are then filled front to back). A leaf's record keeps its first weight
    // as its value, the count in its word and where its weights start in `true_at`.
    let mut order: Vec<u32> = (0..w_trees.len() as u32).collect();
    let sorted =
        (1..w_trees.len()).all(|k| (w_trees[k - 1], w_nodes[k - 1]) <= (w_trees[k], w_nodes[k]));
    if !sorted {
        order.sort_by_key(|&k| (w_trees[k as usize], w_nodes[k as usize], k));
    }
    let keep_weights = n_outputs > 1;
    let mut weights: Vec<Weight<T>> =
        Vec::with_capacity(if keep_weights { order.len() } else { 0 });
    // Weight counts per attribute position (to find weights on unreachable leaves).
    let mut leaf_weights: Vec<u8> = vec![0; n];
    for &k in &order {
        let k = k as usize;
        let at = index.get(w_trees[k], w_nodes[k]).ok_or_else(|| {
            invalid(
                node,
                format!(
                    "a weight names node {} of tree {}, which does not exist",
                    w_nodes[k], w_trees[k]
                ),
            )
        })? as usize;
        let leaf = &mut raw[at];
        if (leaf.word >> WORD_BITS) as u8 & MODE_MASK != Mode::Leaf as u8 {
            continue; // ONNX Runtime ignores weights on splits (old onnxmltools wrote them).
        }
        let count = leaf.word & WORD_MASK;
        if count == 0 {
            leaf.true_at = weights.len() as u32;
            leaf.value = w_values[k];
        } else if keep_weights && leaf.true_at as usize + count as usize != weights.len() {
            return Err(unsupported(
                node,
                "a leaf's weights are not listed together",
            ));
        }
        if count == WORD_MASK {
            return Err(unsupported(node, "a leaf with too many weights"));
        }
        leaf.word += 1;
        leaf_weights[at] = 1;
        // A single-output ensemble reads only each leaf's first weight (`value`).
        if keep_weights {
            weights.push(Weight {
                target: w_ids[k],
                value: w_values[k],
            });
        }
    }

    const UNPLACED: u32 = u32::MAX;
    enum Frame {
        Enter(u32),
        AfterFalse { at: u32, pos: u32 },
        AfterTrue { at: u32, pos: u32 },
    }
    // Where each record went; only trees the relayout places need it.
    let mut placed: Vec<u32> = Vec::new();
    let mut in_progress: Vec<bool> = Vec::new();
    let mut nodes: Vec<Node<T>> = crate::memory::vec_with_capacity(n);
    let mut roots = Vec::new();
    let mut stack = Vec::new();
    let mut start = 0;
    while start < n {
        let mut end = start + 1;
        while end < n && tree_ids[end] == tree_ids[start] {
            end += 1;
        }
        if keep_in_order(&raw, start, end) {
            // The file's order already is a layout: every split has one child right after
            // it. Copy the records over as they are.
            // Record `start + k` goes to position `base + k`.
            let base = nodes.len() as u32;
            let first = start as u32;
            roots.push(base);
            for (i, r) in raw[start..end].iter().enumerate() {
                let i = start + i;
                let node = if (r.word >> WORD_BITS) as u8 & MODE_MASK == Mode::Leaf as u8 {
                    Node {
                        value: r.value,
                        index: r.true_at,
                        word: r.word,
                    }
                } else if r.true_at as usize == i + 1 {
                    Node {
                        value: r.value,
                        index: base + (r.false_at - first),
                        word: r.word | (u32::from(TRUE_NEXT) << WORD_BITS),
                    }
                } else {
                    Node {
                        value: r.value,
                        index: base + (r.true_at - first),
                        word: r.word,
                    }
                };
                nodes.push(node);
            }
            start = end;
            continue;
        }
        // Anything else (shared true children, trees split over several runs, children
        // listed before parents): ONNX Runtime's own depth-first relayout, false child
        // next, which also finds what it would refuse.
        if placed.is_empty() {
            placed = vec![UNPLACED; n];
            in_progress = vec![false; n];
        }
        stack.push(Frame::Enter(start as u32));
        let mut ret = 0u32;
        while let Some(frame) = stack.pop() {
            match frame {
                Frame::Enter(at) => {
                    let i = at as usize;
                    if tree_ids[i] != tree_ids[start] {
                        return Err(invalid(
                            node,
                            format!(
                                "a child of tree {} lies in tree {}",
                                tree_ids[start], tree_ids[i]
                            ),
                        ));
                    }
                    if placed[i] != UNPLACED {
                        if in_progress[i] {
                            return Err(invalid(
                                node,
                                format!(
                                    "tree {} has a cycle through node {}",
                                    tree_ids[i], node_ids[i]
                                ),
                            ));
                        }
                        ret = placed[i];
                        continue;
                    }
                    let r = raw[i];
                    let pos = nodes.len() as u32;
                    placed[i] = pos;
                    nodes.push(Node {
                        value: r.value,
                        // A leaf's weights start here (a split's true child is set later).
                        index: r.true_at,
                        word: r.word,
                    });
                    if (r.word >> WORD_BITS) as u8 & MODE_MASK == Mode::Leaf as u8 {
                        ret = pos;
                        continue;
                    }
                    in_progress[i] = true;
                    stack.push(Frame::AfterFalse { at, pos });
                    stack.push(Frame::Enter(r.false_at));
                }
                Frame::AfterFalse { at, pos } => {
                    if ret != pos + 1 {
                        let i = at as usize;
                        return Err(invalid(
                            node,
                            format!(
                                "the false child of node {} of tree {} is shared",
                                node_ids[i], tree_ids[i]
                            ),
                        ));
                    }
                    stack.push(Frame::AfterTrue { at, pos });
                    stack.push(Frame::Enter(raw[at as usize].true_at));
                }
                Frame::AfterTrue { at, pos } => {
                    nodes[pos as usize].index = ret;
                    in_progress[at as usize] = false;
                    ret = pos;
                }
            }
        }
        roots.push(ret);
        start = end;
    }
    drop(raw);
    drop(in_progress);

    if !placed.is_empty()
        && placed
            .iter()
            .zip(&leaf_weights)
            .any(|(&p, &count)| p == UNPLACED && count > 0)
    {
        // ONNX Runtime would hang these on whatever node it placed first.
        return Err(unsupported(node, "weights on a leaf no root reaches"));
    }
    // A leaf without weights keeps its `nodes_values` entry as its value and has no
    // entries, as in ONNX Runtime.
    nodes.shrink_to_fit();
    Ok((nodes, roots, weights))
}

impl<T: Num> Trees<T> {
    /// The leaf `row` reaches in the tree at `root`.
    #[inline]
    fn leaf(&self, root: u32, row: &[T]) -> &Node<T> {
        let mut at = root as usize;
        loop {
            let node = &self.nodes[at];
            let mode = node.mode();
            if mode == Mode::Leaf as u8 {
                return node;
            }
            let x = row[node.low() as usize];
            let t = node.value;
            let hit = match mode {
                0 => x <= t,
                1 => x < t,
                2 => x >= t,
                3 => x > t,
                4 => x == t,
                _ => x != t,
            } || (node.missing_true() && x.is_nan());
            at = if hit != node.true_next() {
                node.index as usize
            } else {
                at + 1
            };
        }
    }

    fn leaf_weights(&self, leaf: &Node<T>) -> &[Weight<T>] {
        let start = leaf.index as usize;
        &self.weights[start..start + leaf.low() as usize]
    }

    fn heap_bytes(&self) -> usize {
        self.nodes.capacity() * size_of::<Node<T>>()
            + self.roots.capacity() * 4
            + self.weights.capacity() * size_of::<Weight<T>>()
            + self.base_values.capacity() * T::BYTES
    }
}

/// ONNX Runtime's `ScoreValue`: a sum and whether any tree contributed.
#[derive(Debug, Clone, Copy, Default)]
struct Score<T> {
    score: T,
    has: bool,
}

impl<T: Num> Core<T> {
    fn output_elems(&self) -> Vec<Elem> {
        match &self.classes {
            None => vec![Elem::F32],
            Some(c) => vec![
                match c.labels {
                    Labels::Int(_) => Elem::I64,
                    Labels::Str(_) => Elem::Str,
                },
                Elem::F32,
            ],
        }
    }

    fn add(&self, score: &mut Score<T>, w: T) {
        match self.aggregate {
            Aggregate::Sum | Aggregate::Average => score.score += w,
            Aggregate::Min => {
                if !score.has || w < score.score {
                    score.score = w;
                }
            }
            Aggregate::Max => {
                if !score.has || w > score.score {
                    score.score = w;
                }
            }
        }
        score.has = true;
    }

    /// Sums of one row: one per target/class, trees in order.
    fn accumulate(&self, row: &[T], scores: &mut [Score<T>]) {
        scores.fill(Score::default());
        let trees = &self.trees;
        if self.n_targets == 1 {
            // ONNX Runtime's single-output path adds each leaf's first weight only.
            for &root in &trees.roots {
                let leaf = trees.leaf(root, row);
                self.add(&mut scores[0], leaf.value);
            }
        } else {
            for &root in &trees.roots {
                let leaf = trees.leaf(root, row);
                for w in trees.leaf_weights(leaf) {
                    self.add(&mut scores[w.target as usize], w.value);
                }
            }
        }
    }

    fn run(&self, x: &Tensor) -> Result<Vec<Tensor>, RunError> {
        let (rows, width) = x.rows_and_width();
        if self.trees.max_feature as usize >= width {
            return Err(RunError(format!(
                "a tree reads feature {} but the input has {width} features",
                self.trees.max_feature
            )));
        }
        let data: Cow<'_, [T]> = features::<T>(&x.data);
        let mut scores = vec![Score::<T>::default(); self.n_targets];
        match &self.classes {
            None => {
                let mut out = Vec::with_capacity(rows * self.n_targets);
                for r in 0..rows {
                    self.accumulate(&data[r * width..(r + 1) * width], &mut scores);
                    self.finish_regressor(&mut scores, &mut out);
                }
                Ok(vec![Tensor::new(
                    vec![rows, self.n_targets],
                    Data::F32(out),
                )])
            }
            Some(classes) => {
                let n_out = classes.labels.len();
                let mut probabilities = Vec::with_capacity(rows * n_out);
                let mut picked = Vec::with_capacity(rows);
                for r in 0..rows {
                    self.accumulate(&data[r * width..(r + 1) * width], &mut scores);
                    picked.push(self.finish_classifier(
                        classes,
                        &mut scores,
                        &mut probabilities,
                    )?);
                }
                let label = match &classes.labels {
                    Labels::Int(l) => Data::I64(
                        picked
                            .iter()
                            .map(|p| match *p {
                                Label::Index(k) => l[k],
                                Label::Literal(v) => v as i64,
                            })
                            .collect(),
                    ),
                    Labels::Str(l) => Data::Str(
                        picked
                            .iter()
                            .map(|p| match *p {
                                Label::Index(k) | Label::Literal(k) => l[k].clone(),
                            })
                            .collect(),
                    ),
                };
                Ok(vec![
                    Tensor::new(vec![rows], label),
                    Tensor::new(vec![rows, n_out], Data::F32(probabilities)),
                ])
            }
        }
    }

    /// `TreeAggregator*::FinalizeScores1` / `FinalizeScores` of a regressor.
    fn finish_regressor(&self, scores: &mut [Score<T>], out: &mut Vec<f32>) {
        let n_trees = T::from_count(self.trees.roots.len());
        let base = &self.trees.base_values;
        if self.n_targets == 1 {
            let origin = if base.len() == 1 {
                base[0]
            } else {
                T::default()
            };
            let s = scores[0];
            let val = match self.aggregate {
                Aggregate::Sum => s.score + origin,
                Aggregate::Average => s.score / n_trees + origin,
                Aggregate::Min | Aggregate::Max => {
                    if s.has {
                        s.score + origin
                    } else {
                        origin
                    }
                }
            };
            // ONNX Runtime applies only PROBIT to a single output.
            let v = val.to_f32();
            out.push(if self.post == PostTransform::Probit {
                transform::probit(v)
            } else {
                v
            });
            return;
        }
        let use_base = base.len() == self.n_targets;
        let start = out.len();
        for (k, s) in scores.iter().enumerate() {
            let b = if use_base { base[k] } else { T::default() };
            let val = match self.aggregate {
                Aggregate::Sum => s.score + b,
                Aggregate::Average => s.score / n_trees + b,
                Aggregate::Min | Aggregate::Max => b + if s.has { s.score } else { T::default() },
            };
            // `ScoreValue`'s conversion: a target no tree reached reads 0, base value or not.
            out.push(if s.has { val.to_f32() } else { 0.0 });
        }
        post_transform(self.post, &mut out[start..]);
    }

    /// `TreeAggregatorClassifier::FinalizeScores`: appends the probabilities and returns
    /// the label.
    fn finish_classifier(
        &self,
        classes: &Classes,
        scores: &mut [Score<T>],
        out: &mut Vec<f32>,
    ) -> Result<Label, RunError> {
        let base = &self.trees.base_values;
        let value = |s: &Score<T>| if s.has { s.score.to_f32() } else { 0.0 };
        if scores.len() > 2 {
            if base.len() == scores.len() {
                for (s, &b) in scores.iter_mut().zip(base) {
                    if s.has {
                        s.score += b;
                    } else {
                        s.score = b;
                        s.has = true;
                    }
                }
            }
            // Only classes some tree scored take part; the first maximum wins.
            let mut best: Option<(usize, T)> = None;
            for (k, s) in scores.iter().enumerate() {
                if s.has && best.is_none_or(|(_, w)| s.score > w) {
                    best = Some((k, s.score));
                }
            }
            let (k, _) = best.ok_or_else(|| {
                RunError("no tree scored any class for a row (ONNX Runtime fails here too)".into())
            })?;
            let start = out.len();
            out.extend(scores.iter().map(value));
            post_transform(self.post, &mut out[start..]);
            return Ok(Label::Index(k));
        }
        // Two classes.
        let (mut p0, mut p1) = (scores[0], scores[1]);
        let mut two = true;
        let mut add_class: i32 = -1;
        match base.len() {
            2 => {
                if p1.has {
                    // ONNX Runtime reads class 0's sum here, not class 1's.
                    p1.score = base[1] + p0.score;
                    p0.score = -p1.score;
                } else {
                    p1.score += base[1];
                    p0.score += base[0];
                }
            }
            1 => {
                p0.score += base[0];
                two = p1.has;
            }
            _ => {
                add_class = 3;
                two = p1.has;
            }
        }
        let positive = if two && p1.has {
            p1.score
        } else if p0.has {
            p0.score
        } else {
            T::default()
        };
        let half = T::from_f32(0.5);
        let label = if classes.binary {
            if classes.weights_all_positive {
                add_class = if positive > half { 0 } else { 1 };
                Label::Index(if positive > half { 1 } else { 0 })
            } else {
                add_class = if positive > T::default() { 2 } else { 3 };
                Label::Index(if positive > T::default() { 1 } else { 0 })
            }
        } else {
            Label::Literal(if positive > T::default() { 1 } else { 0 })
        };
        if two {
            let start = out.len();
            out.push(value(&p0));
            out.push(value(&p1));
            post_transform(self.post, &mut out[start..]);
            return Ok(label);
        }
        let s = value(&p0);
        match (add_class, self.post) {
            (0..=3, PostTransform::Logistic) => {
                out.extend([transform::logistic(-s), transform::logistic(s)])
            }
            (0 | 1, _) => out.extend([1.0 - s, s]),
            (2 | 3, _) => out.extend([-s, s]),
            _ => {
                return Err(RunError(
                    "ONNX Runtime leaves the second probability of this row unwritten".into(),
                ));
            }
        }
        Ok(label)
    }
}

/// The label of one row: a class's index, or ONNX Runtime's literal 0/1 for a two-class
/// model that scores both classes.
#[derive(Debug, Clone, Copy)]
enum Label {
    Index(usize),
    Literal(usize),
}

fn post_transform(post: PostTransform, values: &mut [f32]) {
    match post {
        PostTransform::None => {}
        PostTransform::Logistic => values.iter_mut().for_each(|v| *v = transform::logistic(*v)),
        PostTransform::Probit => values.iter_mut().for_each(|v| *v = transform::probit(*v)),
        PostTransform::Softmax => transform::softmax(values),
        PostTransform::SoftmaxZero => transform::softmax_zero(values),
    }
}

/// The input matrix in the ensemble's number type (borrowed when it already is).
fn features<T: Num>(data: &Data) -> Cow<'_, [T]> {
    use std::any::Any;
    match data {
        Data::F32(v) => match (v as &dyn Any).downcast_ref::<Vec<T>>() {
            Some(same) => Cow::Borrowed(same.as_slice()),
            None => Cow::Owned(v.iter().map(|&a| T::from_f32(a)).collect()),
        },
        Data::F64(v) => match (v as &dyn Any).downcast_ref::<Vec<T>>() {
            Some(same) => Cow::Borrowed(same.as_slice()),
            None => Cow::Owned(v.iter().map(|&a| T::from_f64(a)).collect()),
        },
        // int64 and int32 features compare as `float` (C++'s usual conversions).
        Data::I64(v) => Cow::Owned(v.iter().map(|&a| T::from_f32(a as f32)).collect()),
        Data::I32(v) => Cow::Owned(v.iter().map(|&a| T::from_f32(a as f32)).collect()),
        _ => Cow::Owned(Vec::new()),
    }
}

impl Ensemble {
    pub(crate) fn heap_bytes(&self) -> usize {
        fn core<T: Num>(c: &Core<T>) -> usize {
            size_of::<Core<T>>()
                + c.trees.heap_bytes()
                + match &c.classes {
                    Some(Classes {
                        labels: Labels::Int(v),
                        ..
                    }) => v.capacity() * 8,
                    Some(Classes {
                        labels: Labels::Str(v),
                        ..
                    }) => v.iter().map(|s| s.capacity() + size_of::<String>()).sum(),
                    None => 0,
                }
        }
        match self {
            Ensemble::F32(c) => core(c),
            Ensemble::F64(c) => core(c),
        }
    }

    pub(crate) fn run(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, RunError> {
        match self {
            Ensemble::F32(c) => c.run(inputs[0]),
            Ensemble::F64(c) => c.run(inputs[0]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The corpus's tree ensembles (every family the exporters write, and the operator
    /// models made to stress the layout): where the one-pass path accepts a model it
    /// decodes exactly what the general path makes, and it accepts every exported one.
    #[test]
    fn the_fast_path_decodes_what_the_general_path_does() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/corpus");
        let (mut fast_paths, mut general_only) = (Vec::new(), Vec::new());
        for dir in [root.clone(), root.join("ops")] {
            let mut files: Vec<_> = std::fs::read_dir(&dir)
                .expect("the corpus is committed")
                .map(|e| e.expect("entry").path())
                .filter(|p| p.extension().is_some_and(|x| x == "onnx"))
                .collect();
            files.sort();
            for path in files {
                let bytes = std::fs::read(&path).expect("readable");
                let model = crate::onnx::parse(&bytes).expect("the corpus parses");
                let name = path.file_stem().unwrap().to_string_lossy().to_string();
                for node in &model.graph.nodes {
                    let classifier = match node.op_type {
                        "TreeEnsembleClassifier" => true,
                        "TreeEnsembleRegressor" => false,
                        _ => continue,
                    };
                    let attrs = Attrs::new(node).expect("no graphs");
                    let n_outputs = if classifier {
                        let ints = attrs.ints("classlabels_int64s").unwrap().len();
                        ints.max(attrs.strings("classlabels_strings").unwrap().len())
                    } else {
                        attrs.int("n_targets").unwrap_or(1) as usize
                    };
                    let fast32 = fast::decode::<f32>(&attrs, classifier, n_outputs);
                    let fast64 = fast::decode::<f64>(&attrs, classifier, n_outputs);
                    assert_eq!(fast32.is_some(), fast64.is_some(), "{name}");
                    let Some(fast32) = fast32 else {
                        general_only.push(name.clone());
                        continue;
                    };
                    let general32 = general::<f32>(node, &attrs, classifier, n_outputs)
                        .unwrap_or_else(|e| panic!("{name}: the general path refuses: {e}"));
                    assert_eq!(format!("{fast32:?}"), format!("{general32:?}"), "{name}");
                    let general64 = general::<f64>(node, &attrs, classifier, n_outputs)
                        .unwrap_or_else(|e| panic!("{name}: the general path refuses: {e}"));
                    assert_eq!(
                        format!("{:?}", fast64.unwrap()),
                        format!("{general64:?}"),
                        "{name}"
                    );
                    fast_paths.push(name.clone());
                }
            }
        }
        println!("one pass: {fast_paths:?}\ngeneral only: {general_only:?}");
        assert!(fast_paths.len() >= 30, "{fast_paths:?}");
        // LightGBM lists a tree's nodes in its own order, XGBoost's categorical splits
        // share children, and the operator models are made out of order on purpose.
        let expected = [
            "lgbm_",
            "xgb_reg_cat",
            "te_ids_",
            "te_order_",
            "te_tree_ids_",
        ];
        for name in &general_only {
            assert!(
                expected.iter().any(|p| name.starts_with(p)),
                "{name} takes the general path"
            );
        }
        assert!(general_only.iter().any(|n| n == "te_order_postorder"));
    }
}
