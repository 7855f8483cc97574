//! The one-byte codes of enum values in an image: each value's code is its index in one
//! table, which the writer and the reader share, so the two cannot disagree.

use crate::glue::Arith;
use crate::transform::{Norm, PostTransform};
use crate::tree::{Aggregate, NoCovers};
use crate::value::Elem;

pub(super) const ELEMS: [Elem; 6] = [
    Elem::F32,
    Elem::F64,
    Elem::I32,
    Elem::I64,
    Elem::Bool,
    Elem::Str,
];
pub(super) const POSTS: [PostTransform; 5] = [
    PostTransform::None,
    PostTransform::Logistic,
    PostTransform::Softmax,
    PostTransform::SoftmaxZero,
    PostTransform::Probit,
];
pub(super) const AGGREGATES: [Aggregate; 4] = [
    Aggregate::Sum,
    Aggregate::Average,
    Aggregate::Min,
    Aggregate::Max,
];
pub(super) const NO_COVERS: [NoCovers; 6] = [
    NoCovers::Absent,
    NoCovers::Count,
    NoCovers::Value,
    NoCovers::ZeroSplit,
    NoCovers::NotSums,
    NoCovers::NotATree,
];
pub(super) const NORMS: [Norm; 3] = [Norm::Max, Norm::L1, Norm::L2];
pub(super) const ARITHS: [Arith; 4] = [Arith::Add, Arith::Sub, Arith::Mul, Arith::Div];

/// `value`'s code: its index in `table` (every variant is listed).
pub(super) fn code<T: PartialEq>(table: &[T], value: &T) -> u8 {
    table
        .iter()
        .position(|t| t == value)
        .expect("every variant is in its table") as u8
}
