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
    Ok(match check(&decoded.nodes, &laid) {
        Ok(()) => Covers::Present(laid.into()),
        Err(why) => Covers::Missing(why),
    })
}

/// Whether `covers` (by node position) are covers of `nodes`' splits.
pub(crate) fn check<T>(nodes: &[Node<T>], covers: &[f32]) -> Result<(), NoCovers> {
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
    Ok(())
}
