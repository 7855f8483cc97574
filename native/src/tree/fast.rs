//! The shape exporters write, compiled in one pass. skl2onnx, onnxmltools and the
//! LightGBM/XGBoost converters list each tree's nodes together, ids 0, 1, 2, ... depth
//! first with one child of every split right after it, trees in increasing id order, and
//! the weights sorted by (tree, node). For such a model the file's order already is the
//! layout `layout` would make, so the columns are walked side by side and each node is
//! written once, in place: no per-node records, no id columns, no index.
//!
//! Anything else (and anything malformed) returns `None` before any error is reported:
//! the general path then compiles the model, or says why it cannot. Both paths give the
//! same `Decoded` for every model this one accepts (tested in `tree::tests`).

use super::ensemble::{MAX_FEATURE, MISSING_TRUE, Mode, Node, Num, TRUE_NEXT, WORD_BITS, Weight};
use super::weights::{Decoded, LeafWeights, weight_names};
use crate::attrs::{Attrs, Column};

pub(super) fn decode<T: Num>(
    attrs: &Attrs<'_, '_>,
    classifier: bool,
    n_outputs: usize,
) -> Option<Decoded<T>> {
    let [w_trees, w_nodes, w_ids, w_values, w_tensor] = weight_names(classifier);
    if attrs.has("nodes_values_as_tensor") || attrs.has(w_tensor) {
        return None;
    }
    let column = |name, kind| attrs.column(name, kind).unwrap_or_default();
    let modes_column = attrs.column("nodes_modes", Column::Strings)?;
    let mut modes = modes_column.byte_cursor();
    let mut tree_ids = column("nodes_treeids", Column::Ints).cursor::<u64>();
    let mut node_ids = column("nodes_nodeids", Column::Ints).cursor::<u64>();
    let mut features = column("nodes_featureids", Column::Ints).cursor::<u64>();
    let mut values = column("nodes_values", Column::Floats).cursor::<f32>();
    let mut trues = column("nodes_truenodeids", Column::Ints).cursor::<u64>();
    let mut falses = column("nodes_falsenodeids", Column::Ints).cursor::<u64>();
    let missing_column = attrs.column("nodes_missing_value_tracks_true", Column::Ints);
    let mut missing = missing_column.map(|c| c.cursor::<u64>());

    // Each node's mode takes at least six bytes on the wire ("LEAF" with key and length).
    let mut nodes: Vec<Node<T>> = crate::memory::vec_with_capacity(modes_column.bytes() / 6);
    let mut roots: Vec<u32> = Vec::new();
    // Each tree's id, beside `roots`.
    let mut trees: Vec<i64> = Vec::new();
    // The other child of every split on the path to the current node, innermost last.
    let mut pending: Vec<u32> = Vec::new();
    // Whether the last tree is complete (its walk ended at a leaf with nothing pending).
    let mut ended = true;
    let mut start = 0u32;
    let mut max_feature = 0u32;
    while let Some(mode) = modes.next().ok()? {
        let k = u32::try_from(nodes.len())
            .ok()
            .filter(|&k| k < u32::MAX / 2 - 1)?;
        let tree = tree_ids.next().ok()?? as i64;
        let id = node_ids.next().ok()?? as i64;
        let feature = features.next().ok()?? as i64;
        let value = values.next().ok()??;
        let true_id = trues.next().ok()?? as i64;
        let false_id = falses.next().ok()?? as i64;
        let missing_true = match missing.as_mut() {
            Some(column) => column.next().ok()?? == 1,
            None => false,
        };
        if ended {
            // A new tree: a larger id than the last one's, listed from its node 0.
            if trees.last().is_some_and(|&last| tree <= last) || id != 0 {
                return None;
            }
            trees.push(tree);
            roots.push(k);
            start = k;
            ended = false;
        } else if trees.last() != Some(&tree) || id != i64::from(k - start) {
            return None;
        }
        let mode = Mode::parse(mode)?;
        let mut word = u32::from(mode as u8) << WORD_BITS;
        if missing_true {
            word |= u32::from(MISSING_TRUE) << WORD_BITS;
        }
        if mode == Mode::Leaf {
            // ONNX Runtime counts a leaf's feature id toward the largest one read.
            if feature > 0 {
                max_feature = max_feature.max(u32::try_from(feature).unwrap_or(u32::MAX));
            }
            nodes.push(Node {
                value: T::from_f32(value),
                index: 0,
                word,
            });
            match pending.pop() {
                None => ended = true,
                Some(next) if next == k + 1 => {}
                Some(_) => return None,
            }
            continue;
        }
        let feature = u32::try_from(feature).ok().filter(|&f| f <= MAX_FEATURE)?;
        max_feature = max_feature.max(feature);
        word |= feature;
        let at = |id: i64| u32::try_from(id).ok().and_then(|id| start.checked_add(id));
        let (true_at, false_at) = (at(true_id)?, at(false_id)?);
        let index = if true_at == k + 1 {
            word |= u32::from(TRUE_NEXT) << WORD_BITS;
            false_at
        } else if false_at == k + 1 {
            true_at
        } else {
            return None;
        };
        pending.push(index);
        nodes.push(Node {
            value: T::from_f32(value),
            index,
            word,
        });
    }
    // Every column ends with the modes, and the last tree is whole.
    let done = tree_ids.next().ok()?.is_none()
        && node_ids.next().ok()?.is_none()
        && features.next().ok()?.is_none()
        && values.next().ok()?.is_none()
        && trues.next().ok()?.is_none()
        && falses.next().ok()?.is_none()
        && missing
            .as_mut()
            .map_or(Some(true), |c| c.next().ok().map(|v| v.is_none()))?;
    if !done || !ended || nodes.is_empty() {
        return None;
    }

    // Leaf weights, in (tree, node) order. A leaf keeps its first weight as its value,
    // its count in the word and where its weights start in `index`.
    let keep_weights = n_outputs > 1;
    let weight_values = column(w_values, Column::Floats);
    let mut w_tree = column(w_trees, Column::Ints).cursor::<u64>();
    let mut w_node = column(w_nodes, Column::Ints).cursor::<u64>();
    let mut w_id = column(w_ids, Column::Ints).cursor::<u64>();
    let mut w_value = weight_values.cursor::<f32>();
    let mut weights = LeafWeights::<T>::new(
        if keep_weights {
            crate::memory::vec_with_capacity(weight_values.bytes() / 5)
        } else {
            Vec::new()
        },
        keep_weights,
    );
    let mut last = (i64::MIN, i64::MIN);
    let mut run = 0usize;
    let n = nodes.len() as u32;
    while let Some(tree) = w_tree.next().ok()? {
        let (tree, node) = (tree as i64, w_node.next().ok()?? as i64);
        let id = w_id.next().ok()?? as i64;
        let value = T::from_f32(w_value.next().ok()??);
        if (tree, node) < last {
            return None;
        }
        last = (tree, node);
        let id = u32::try_from(id)
            .ok()
            .filter(|&id| (id as usize) < n_outputs)?;
        while run < trees.len() && trees[run] < tree {
            run += 1;
        }
        if trees.get(run) != Some(&tree) {
            return None;
        }
        let len = roots.get(run + 1).copied().unwrap_or(n) - roots[run];
        let node = u32::try_from(node).ok().filter(|&node| node < len)?;
        let leaf = &mut nodes[(roots[run] + node) as usize];
        let weight = Weight { target: id, value };
        weights
            .attach(&mut leaf.value, &mut leaf.index, &mut leaf.word, weight)
            .ok()?;
    }
    let done = w_node.next().ok()?.is_none()
        && w_id.next().ok()?.is_none()
        && w_value.next().ok()?.is_none();
    if !done {
        return None;
    }
    nodes.shrink_to_fit();
    weights.shrink_to_fit();
    Some(weights.decoded(nodes, roots, max_feature))
}
