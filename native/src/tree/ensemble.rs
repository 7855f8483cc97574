//! The compiled ensemble: what `compile` builds, `eval` walks, and `image` writes and serves
//! in place. A node is one packed record (`Node`: threshold or first weight, one child or
//! where the weights start, and a word holding mode, flags and feature or weight count);
//! `Node` and `Weight<f32>` are `Plain` (their bytes are their values), declared here beside
//! their `#[repr(C)]` layouts.

use crate::memory::{Array, Plain};
use crate::transform::PostTransform;

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
    fn to_f64(self) -> f64;
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
    fn to_f64(self) -> f64 {
        f64::from(self)
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
    fn to_f64(self) -> f64 {
        self
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
    pub(super) fn parse(s: &[u8]) -> Option<Mode> {
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

pub(super) const MODE_MASK: u8 = 0x7;
/// The most regression targets a model may declare.
pub(crate) const MAX_TARGETS: usize = 1 << 16;
pub(super) const MISSING_TRUE: u8 = 0x8;
/// On a split: its true child is the next node and `index` is the false child (set for
/// trees kept in the file's order; the depth-first relayout puts the false child next).
pub(super) const TRUE_NEXT: u8 = 0x10;
/// The low bits of `Node::word`: the feature of a split, the weight count of a leaf.
pub(crate) const WORD_BITS: u32 = 27;
pub(super) const WORD_MASK: u32 = (1 << WORD_BITS) - 1;
/// The largest feature index the packed layout holds (a model reading a later feature is
/// served by ONNX Runtime).
pub(super) const MAX_FEATURE: u32 = WORD_MASK;

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
    pub(super) fn missing_true(&self) -> bool {
        (self.word >> WORD_BITS) as u8 & MISSING_TRUE != 0
    }

    #[inline(always)]
    pub(super) fn true_next(&self) -> bool {
        (self.word >> WORD_BITS) as u8 & TRUE_NEXT != 0
    }
}

#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub(crate) struct Weight<T> {
    pub(crate) target: u32,
    pub(crate) value: T,
}

// `image` writes these records as their bytes and serves them in place from an image's, so
// each must have no padding and accept any bit pattern (`Plain`). Each size is the sum of
// its fields' sizes, asserted here so that a field added, removed or retyped breaks the
// build rather than an image.
const _: () = assert!(size_of::<Node<f32>>() == 12 && align_of::<Node<f32>>() == 4);
const _: () = assert!(size_of::<Node<f64>>() == 16 && align_of::<Node<f64>>() == 8);
const _: () = assert!(size_of::<Weight<f32>>() == 8 && align_of::<Weight<f32>>() == 4);

// SAFETY: `Node<f32>` is `#[repr(C)]` {f32, u32, u32}: 12 bytes, 4-aligned, no padding;
// every field accepts any bit pattern.
unsafe impl Plain for Node<f32> {}
// SAFETY: `Node<f64>` is `#[repr(C)]` {f64, u32, u32}: 16 bytes, 8-aligned, no padding;
// every field accepts any bit pattern.
unsafe impl Plain for Node<f64> {}
// SAFETY: `Weight<f32>` is `#[repr(C)]` {u32, f32}: 8 bytes, 4-aligned, no padding; both
// fields accept any bit pattern. (`Weight<f64>` has padding: it is written by columns.)
unsafe impl Plain for Weight<f32> {}

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
    /// Each node's cover, beside `nodes`, for explanations (`shap`).
    pub(crate) covers: Covers,
}

/// Each node's cover (the training weight that reached it), from the file's
/// `nodes_hitrates`: what path-dependent TreeSHAP weighs a split's two sides by. ONNX
/// Runtime ignores the column and exporters fill it with 1.0, so a model carries covers
/// only when the column holds them: every split's children add up to it
/// (`covers::read`).
#[derive(Debug)]
pub(crate) enum Covers {
    /// Why the model has none (kept for the answer to an explanation request).
    Missing(NoCovers),
    /// By node position, as `Trees::nodes`.
    Present(Array<f32>),
}

/// Why a model carries no covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoCovers {
    Absent,
    Count,
    Value,
    ZeroSplit,
    NotSums,
    NotATree,
}

impl NoCovers {
    pub(crate) fn reason(self) -> &'static str {
        match self {
            NoCovers::Absent => "the model file carries no node covers (nodes_hitrates)",
            NoCovers::Count => "nodes_hitrates does not have one entry per node",
            NoCovers::Value => "nodes_hitrates holds a negative or non-finite value",
            NoCovers::ZeroSplit => "a split's cover (nodes_hitrates) is zero",
            NoCovers::NotATree => {
                "its trees share nodes (a node reached from two splits), which TreeSHAP cannot \
                 walk"
            }
            NoCovers::NotSums => {
                "nodes_hitrates are not node covers: a split's children do not add up to it \
                 (exporters write 1.0 for every node; the conversion recipe writes covers)"
            }
        }
    }
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
