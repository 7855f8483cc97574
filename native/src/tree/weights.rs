//! The leaf weight columns (`class_*` or `target_*`), as both decoding paths read them:
//! their names, float lists in either form (`values`, which base values share), attaching
//! each weight to its leaf while summarising them, and what either path produces
//! (`Decoded`).

use super::ensemble::{MODE_MASK, Mode, Node, Num, WORD_BITS, WORD_MASK, Weight};
use crate::attrs::{Attrs, invalid};
use crate::error::CompileError;
use crate::onnx::NodeView;

/// What the node and weight columns become, by either path.
#[derive(Debug)]
pub(super) struct Decoded<T> {
    pub(super) nodes: Vec<Node<T>>,
    pub(super) roots: Vec<u32>,
    pub(super) weights: Vec<Weight<T>>,
    pub(super) max_feature: u32,
    /// How many distinct output ids the weights name: 0, 1, or 2 for more.
    pub(super) distinct_ids: u8,
    pub(super) any_negative_weight: bool,
    /// Where each node of the file (by attribute position) was laid out, when that is not
    /// the file's order (`None`: node `k` of the file is node `k` here); `u32::MAX` for a
    /// node no root reaches. Only kept when the model carries hit rates, which follow it.
    pub(super) placed: Option<Vec<u32>>,
}

/// Thresholds, weights or base values: the `_as_tensor` form (of exactly the threshold
/// type, as ONNX Runtime requires) or the float list, never both.
pub(super) fn values<T: Num>(
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

/// The weight columns' names: `class_*` for a classifier, `target_*` for a regressor.
pub(super) fn weight_names(classifier: bool) -> [&'static str; 5] {
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

/// The weight columns decoded whole, as the general path reads them: the `k`th weight
/// names node `nodes[k]` of tree `trees[k]`, output `ids[k]`, and has the value
/// `values[k]`.
pub(super) struct WeightColumns<T> {
    pub(super) trees: Vec<i64>,
    pub(super) nodes: Vec<i64>,
    pub(super) ids: Vec<u32>,
    pub(super) values: Vec<T>,
}

impl<T: Num> WeightColumns<T> {
    /// The weight columns of a classifier or regressor with `n_outputs` outputs: all of
    /// one length, and every output id inside the outputs.
    pub(super) fn read(
        node: &NodeView<'_>,
        attrs: &Attrs<'_, '_>,
        classifier: bool,
        n_outputs: usize,
    ) -> Result<Self, CompileError> {
        let [
            trees_name,
            nodes_name,
            ids_name,
            weights_name,
            weights_tensor,
        ] = weight_names(classifier);
        let trees = attrs.ints(trees_name)?;
        let nodes = attrs.ints(nodes_name)?;
        let ids = attrs.ids(ids_name)?;
        let values: Vec<T> = values(node, attrs, weights_name, weights_tensor)?;
        if [nodes.len(), ids.len(), values.len()]
            .iter()
            .any(|&l| l != trees.len())
        {
            let prefix = if classifier { "class" } else { "target" };
            return Err(invalid(
                node,
                format!("the {prefix}_* lists differ in length"),
            ));
        }
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= n_outputs) {
            return Err(invalid(
                node,
                format!("{ids_name} holds {bad} for {n_outputs} outputs"),
            ));
        }
        Ok(WeightColumns {
            trees,
            nodes,
            ids,
            values,
        })
    }
}

/// Why a leaf cannot take another weight.
#[derive(Debug, Clone, Copy)]
pub(super) enum Refused {
    /// Its weights are not listed one after another (multi-output ensembles keep each
    /// leaf's weights as one run of `weights`).
    Scattered,
    /// More weights than the word's count holds.
    TooMany,
}

impl Refused {
    pub(super) fn reason(self) -> &'static str {
        match self {
            Refused::Scattered => "a leaf's weights are not listed together",
            Refused::TooMany => "a leaf with too many weights",
        }
    }
}

/// The weights attached so far. A leaf keeps its first weight as its value, its count in
/// its word's low bits and where its weights start in `weights`; a single-output ensemble
/// reads only each leaf's first weight (its value), so only a multi-output one (`keep`)
/// keeps the list. Every weight counts toward the summary, those on splits too.
pub(super) struct LeafWeights<T> {
    weights: Vec<Weight<T>>,
    keep: bool,
    /// How many distinct output ids the weights name: 0, 1, or 2 for more.
    distinct_ids: u8,
    first_id: u32,
    any_negative: bool,
}

impl<T: Num> LeafWeights<T> {
    /// `weights` is the (empty) list, with the capacity the caller expects to need.
    pub(super) fn new(weights: Vec<Weight<T>>, keep: bool) -> Self {
        LeafWeights {
            weights,
            keep,
            distinct_ids: 0,
            first_id: 0,
            any_negative: false,
        }
    }

    /// Attaches `weight` to the node whose value, start of weights and word (mode and
    /// count, as in `Node::word`) are given: the layout's `Node` or the general path's
    /// record before it. Returns whether the node is a leaf: ONNX Runtime ignores weights
    /// on splits (old onnxmltools wrote them). Called once per weight of a model load.
    #[inline(always)]
    pub(super) fn attach(
        &mut self,
        value: &mut T,
        start: &mut u32,
        word: &mut u32,
        weight: Weight<T>,
    ) -> Result<bool, Refused> {
        match self.distinct_ids {
            0 => {
                self.distinct_ids = 1;
                self.first_id = weight.target;
            }
            1 if weight.target != self.first_id => self.distinct_ids = 2,
            _ => {}
        }
        self.any_negative |= weight.value < T::default();
        if (*word >> WORD_BITS) as u8 & MODE_MASK != Mode::Leaf as u8 {
            return Ok(false);
        }
        let count = *word & WORD_MASK;
        if count == 0 {
            *start = self.weights.len() as u32;
            *value = weight.value;
        } else if self.keep && *start as usize + count as usize != self.weights.len() {
            return Err(Refused::Scattered);
        }
        if count == WORD_MASK {
            return Err(Refused::TooMany);
        }
        *word += 1;
        if self.keep {
            self.weights.push(weight);
        }
        Ok(true)
    }

    /// The laid-out trees with these weights: what either path decodes.
    pub(super) fn decoded(
        self,
        nodes: Vec<Node<T>>,
        roots: Vec<u32>,
        max_feature: u32,
    ) -> Decoded<T> {
        Decoded {
            nodes,
            roots,
            weights: self.weights,
            max_feature,
            distinct_ids: self.distinct_ids,
            any_negative_weight: self.any_negative,
            placed: None,
        }
    }

    /// Gives back memory reserved for weights that were never attached.
    pub(super) fn shrink_to_fit(&mut self) {
        self.weights.shrink_to_fit();
    }
}
