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
//! Exported forests compile in one pass (`fast`); everything else takes `general`, which
//! decodes per-node records and lays the trees out (`layout`). Both attach leaf weights the
//! same way (`weights`); `eval` runs the compiled ensemble.

use crate::CompileError;
use crate::attrs::{Attrs, unsupported};
use crate::graph::NodeInput;
use crate::memory::Array;
use crate::onnx::NodeView;
use crate::transform::PostTransform;
use crate::value::Elem;

mod eval;
mod fast;
mod general;
mod layout;
#[cfg(test)]
mod tests;
mod weights;

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
pub(crate) enum Mode {
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
pub(crate) const MAX_TARGETS: usize = 1 << 16;
const MISSING_TRUE: u8 = 0x8;
/// On a split: its true child is the next node and `index` is the false child (set for
/// trees kept in the file's order; the depth-first relayout puts the false child next).
const TRUE_NEXT: u8 = 0x10;
/// The low bits of `Node::word`: the feature of a split, the weight count of a leaf.
pub(crate) const WORD_BITS: u32 = 27;
const WORD_MASK: u32 = (1 << WORD_BITS) - 1;
/// The largest feature index the packed layout holds (a model reading a later feature is
/// served by ONNX Runtime).
const MAX_FEATURE: u32 = WORD_MASK;

/// One node: 12 bytes for float models, 16 for double ones. Splits: `value` is the
/// threshold, one child is the next node and `index` is the other (the true child unless
/// the `TRUE_NEXT` flag is set), the word's low bits the feature. Leaves: `value` is the first weight, `index` the first of
/// the word's count entries in `weights` (multi-output ensembles only).
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub(crate) struct Node<T> {
    pub(crate) value: T,
    pub(crate) index: u32,
    /// Mode (3 bits), missing-tracks-true and true-next (1 bit each) on top, feature or
    /// count below.
    pub(crate) word: u32,
}

impl<T> Node<T> {
    #[inline(always)]
    pub(crate) fn mode(&self) -> u8 {
        (self.word >> WORD_BITS) as u8 & MODE_MASK
    }

    #[inline(always)]
    pub(crate) fn low(&self) -> u32 {
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
#[repr(C)]
pub(crate) struct Weight<T> {
    pub(crate) target: u32,
    pub(crate) value: T,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Aggregate {
    Sum,
    Average,
    Min,
    Max,
}

#[derive(Debug)]
pub(crate) enum Labels {
    Int(Vec<i64>),
    Str(Vec<String>),
}

#[derive(Debug)]
pub(crate) struct Trees<T> {
    /// Shared with an image's bytes when loaded from one (`memory::Array`).
    pub(crate) nodes: Array<Node<T>>,
    pub(crate) roots: Array<u32>,
    pub(crate) weights: Array<Weight<T>>,
    pub(crate) base_values: Vec<T>,
    pub(crate) max_feature: u32,
}

#[derive(Debug)]
pub(crate) enum Ensemble {
    F32(Box<Core<f32>>),
    F64(Box<Core<f64>>),
}

#[derive(Debug)]
pub(crate) struct Core<T> {
    pub(crate) trees: Trees<T>,
    pub(crate) aggregate: Aggregate,
    pub(crate) post: PostTransform,
    /// Targets (regressor) or classes (classifier) the sums are kept for.
    pub(crate) n_targets: usize,
    /// `Some` for a classifier.
    pub(crate) classes: Option<Classes>,
}

#[derive(Debug)]
pub(crate) struct Classes {
    pub(crate) labels: Labels,
    /// ONNX Runtime's `binary_case_`: two labels and every weight on class 0... see `finalize_classifier`.
    pub(crate) binary: bool,
    pub(crate) weights_all_positive: bool,
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
        let (n_classes, labels) = match (ints.is_empty(), strings.is_empty()) {
            (false, true) => (ints.len(), Labels::Int(ints)),
            (true, false) => (
                strings.len(),
                Labels::Str(strings.into_iter().map(str::to_string).collect()),
            ),
            _ => {
                return Err(invalid(
                    node,
                    "needs exactly one of classlabels_int64s, classlabels_strings",
                ));
            }
        };
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
        None => general::decode::<T>(node, attrs, classifier, n_outputs)?,
    };
    let classes = labels.map(|labels| Classes {
        labels,
        binary: n_outputs == 2 && decoded.distinct_ids == 1,
        weights_all_positive: !decoded.any_negative_weight,
    });
    Ok(Core {
        trees: Trees {
            nodes: decoded.nodes.into(),
            roots: decoded.roots.into(),
            weights: decoded.weights.into(),
            base_values,
            max_feature: decoded.max_feature,
        },
        aggregate,
        post,
        n_targets: n_outputs,
        classes,
    })
}
