//! The general path: any node order, any ids, shared children, any column form. Decodes
//! each node column into one record per node (`Raw`), resolves children through a
//! (tree id, node id) index, and hands the records and the weight columns to `layout`.
//! Every malformed model is refused here with the reason.

use super::ensemble::{MAX_FEATURE, MISSING_TRUE, MODE_MASK, Mode, Num, WORD_BITS};
use super::index::NodeIndex;
use super::layout::{Raw, layout};
use super::weights::{Decoded, values, weight_names};
use crate::attrs::{Attrs, invalid, unsupported};
use crate::error::CompileError;
use crate::onnx::NodeView;

/// Decodes the node and weight columns and lays the trees out.
pub(super) fn decode<T: Num>(
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
    let (nodes, roots, weights) = layout(
        node,
        &tree_ids,
        &node_ids,
        &index,
        raw,
        (&w_trees, &w_nodes, &w_ids, &w_values),
        n_outputs,
    )?;
    Ok(weights.decoded(nodes, roots, max_feature))
}
