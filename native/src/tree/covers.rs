//! Node covers, read from the file's `nodes_hitrates` (by attribute position) and laid out
//! beside the nodes. Path-dependent TreeSHAP weighs the two sides of a split by its
//! children's covers, so the column is kept only where it holds covers: every split's two
//! children add up to it (within 1e-4 of it, for covers summed in floats, such as XGBoost's
//! hessians), every cover finite, every split's positive. skl2onnx writes 1.0 for every
//! node, which fails the first rule; ONNX Runtime ignores the column either way, so a model
//! without covers is served as before and only an explanation is refused.

use super::ensemble::{Covers, Mode, NoCovers, Node, Num};
use super::weights::Decoded;
use crate::attrs::Attrs;
use crate::error::CompileError;

/// The relative gap between a split's cover and its children's sum that still counts as
/// equal.
const SUM_TOLERANCE: f32 = 1e-4;

/// The covers of `decoded`'s nodes, or why it has none.
pub(super) fn read<T: Num>(
    attrs: &Attrs<'_, '_>,
    decoded: &Decoded<T>,
) -> Result<Covers, CompileError> {
    // The tensor form is read as present (ONNX Runtime ignores it) and never used.
    attrs.has("nodes_hitrates_as_tensor");
    if !attrs.has("nodes_hitrates") {
        return Ok(Covers::Missing(NoCovers::Absent));
    }
    let listed = attrs.floats("nodes_hitrates")?;
    let n = decoded.nodes.len();
    let laid = match &decoded.placed {
        None if listed.len() == n => listed,
        Some(placed) if listed.len() == placed.len() => {
            let mut laid = vec![f32::NAN; n];
            for (&at, &cover) in placed.iter().zip(&listed) {
                if let Some(slot) = laid.get_mut(at as usize) {
                    *slot = cover;
                }
            }
            laid
        }
        _ => {
            return Ok(Covers::Missing(NoCovers::Count));
        }
    };
    Ok(match check(&decoded.nodes, &decoded.roots, &laid) {
        Ok(()) => Covers::Present(laid.into()),
        Err(why) => Covers::Missing(why),
    })
}

/// Whether `covers` (by node position) are covers of `nodes`' splits, and the nodes are
/// trees TreeSHAP can walk: roots in increasing order, each tree's nodes between its root
/// and the next, every other node the child of exactly one split of its own tree. (The
/// relayout keeps a true child shared by several splits, as ONNX Runtime does: a walk over
/// every path of such a graph can take exponential time.)
pub(crate) fn check<T>(nodes: &[Node<T>], roots: &[u32], covers: &[f32]) -> Result<(), NoCovers> {
    if covers.len() != nodes.len() {
        return Err(NoCovers::Count);
    }
    if covers.iter().any(|c| !c.is_finite() || *c < 0.0) {
        return Err(NoCovers::Value);
    }
    for (i, node) in nodes.iter().enumerate() {
        if node.mode() == Mode::Leaf as u8 {
            continue;
        }
        let (a, b) = (i + 1, node.index as usize);
        let (Some(&ca), Some(&cb)) = (covers.get(a), covers.get(b)) else {
            return Err(NoCovers::Count);
        };
        let c = covers[i];
        if c <= 0.0 {
            return Err(NoCovers::ZeroSplit);
        }
        if (ca + cb - c).abs() > SUM_TOLERANCE * c {
            return Err(NoCovers::NotSums);
        }
    }
    let n = nodes.len();
    let mut parented = vec![false; n];
    for (k, &root) in roots.iter().enumerate() {
        let (start, end) = (root as usize, roots.get(k + 1).map_or(n, |&r| r as usize));
        if start >= end || end > n {
            return Err(NoCovers::NotATree);
        }
        for (i, node) in nodes.iter().enumerate().take(end).skip(start) {
            if node.mode() == Mode::Leaf as u8 {
                continue;
            }
            let (a, b) = (i + 1, node.index as usize);
            if a == b || b <= i || b >= end || a >= end || parented[a] || parented[b] {
                return Err(NoCovers::NotATree);
            }
            parented[a] = true;
            parented[b] = true;
        }
        if parented[start] {
            return Err(NoCovers::NotATree);
        }
    }
    // Every node but the roots has its one parent.
    let roots_count = roots.len();
    if roots.first() != Some(&0) || parented.iter().filter(|&&p| p).count() + roots_count != n {
        return Err(NoCovers::NotATree);
    }
    Ok(())
}
